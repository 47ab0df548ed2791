"""Tests of ddpm_core.evaluation: bits/dim (exact and strided), rate-distortion, sample-quality
tables, the ablation configurations and the claims table. Tiny models, T = 100, 8x8 digits; the
offline classifier is trained for one epoch in a private cache."""
import math

import pytest
import torch

from ddpm_core import data, diffusion, evaluation, features, paper, schedules, toy, train, unet
from ddpm_core.features import ClassifierConfig, get_extractor


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def extractor(ddpm_cache):
    torch.set_num_threads(1)
    return get_extractor("classifier:digits", device="cpu", config=ClassifierConfig(epochs=2))


@pytest.fixture(scope="module")
def digits16():
    return data.load_dataset("digits", "test").x[:16].double()


def make_oracle(d, points):
    """The best possible eps prediction when x_0 is uniform over ``points`` (empirical Tweedie)."""
    flat = points.reshape(len(points), -1)

    def oracle(x_t, t):
        ab = d.alpha_bar[d.timestep_map[t] if d.timestep_map is not None else t].to(x_t.dtype)
        return toy.empirical_optimal_eps(x_t.reshape(len(x_t), -1), ab, flat).reshape(x_t.shape)

    return oracle


def cosine(T=100):
    return diffusion.GaussianDiffusion(schedules.get_betas("cosine", T))


def test_bits_per_dim_of_an_oracle_is_below_8_bits_with_the_prior_near_0(digits16):
    d = cosine()
    b = evaluation.bits_per_dim(make_oracle(d, digits16), d, digits16, progress=False,
                                generator=torch.Generator().manual_seed(0))
    assert b["n"] == 16 and b["steps"] == 100 and b["method"].startswith("exact")
    assert 0 < b["bpd"] < 8.0  # a uniform model over the 256 grey levels needs exactly 8
    assert b["prior_bpd"] < 1e-4
    assert b["vb"].shape == (100,) and b["x0_mse"].shape == (100,)
    # the bound is the sum of its terms; the KL terms of a 16-point data set add up to about log2(16) / D
    assert b["bpd"] == pytest.approx(float(b["vb"].sum()) + b["prior_bpd"], rel=1e-9)
    assert float(b["vb"][1:].sum()) == pytest.approx(math.log2(16) / 64, rel=0.25)
    assert 0 < b["bpd_se"] < b["bpd"]


def test_bits_per_dim_scores_images_off_the_8bit_grid_as_their_nearest_8bit_levels(digits16):
    # the 17 grey levels v/16 of the digits are 8-bit values only at v = 0 and v = 16 (255 v / 16 is an
    # integer only there), so every pixel strictly between -1 and 1 is off the grid
    d = cosine()
    grid = data.to_8bit_grid(digits16)
    oracle = make_oracle(d, grid)
    seed = lambda: torch.Generator().manual_seed(5)
    raw = evaluation.bits_per_dim(oracle, d, digits16, progress=False, generator=seed())
    on = evaluation.bits_per_dim(oracle, d, grid, progress=False, generator=seed())
    assert torch.equal(raw["total_bpd"], on["total_bpd"]) and raw["bpd"] == on["bpd"]
    inside = ((digits16 > -1 + 1e-9) & (digits16 < 1 - 1e-9)).double().mean()
    assert 0.2 < float(inside) < 0.8 and raw["off_grid"] == pytest.approx(float(inside), abs=1e-12)
    assert on["off_grid"] == 0
    # scored as they are, the unrounded digits would get other decoder bins, and another bound
    direct = d.bpd(oracle, digits16, noise_generator=seed())
    assert not torch.allclose(direct["total_bpd"].double(), raw["total_bpd"], rtol=1e-6)


def test_strided_bound_with_all_steps_equals_the_exact_one_and_fewer_steps_is_cheaper(digits16):
    d = cosine()
    oracle = make_oracle(d, digits16)
    calls = []

    def counted(x_t, t):
        calls.append(len(x_t))  # network evaluations (several steps can share a call)
        return oracle(x_t, t)

    exact = evaluation.bits_per_dim(counted, d, digits16, progress=False, generator=torch.Generator().manual_seed(3))
    n_exact = sum(calls)
    full = evaluation.bits_per_dim(oracle, d, digits16, strided=100, progress=False,
                                   generator=torch.Generator().manual_seed(3))
    assert full["bpd"] == pytest.approx(exact["bpd"], rel=1e-9, abs=1e-12)
    assert torch.allclose(full["vb"], exact["vb"], rtol=1e-9, atol=1e-12)
    calls.clear()
    k10 = evaluation.bits_per_dim(counted, d, digits16, strided=10, progress=False,
                                  generator=torch.Generator().manual_seed(3))
    assert sum(calls) * 10 == n_exact == len(digits16) * d.num_timesteps and k10["steps"] == 10
    assert k10["method"].startswith("strided over K = 10")
    assert k10["timesteps"][0] == 0 and k10["timesteps"][-1] == 99
    assert k10["bpd"] > exact["bpd"]  # ten coarse steps bound the NLL less tightly


def test_rate_grows_and_distortion_falls_as_more_reverse_steps_are_sent(digits16):
    d = cosine()
    rd = evaluation.rate_distortion(make_oracle(d, digits16), d, digits16, progress=False,
                                    generator=torch.Generator().manual_seed(1))
    rate, rmse = rd["rate_bpd"], rd["rmse"]
    assert list(rd["reverse_step"][[0, -1]]) == [1, 100] and list(rd["t"][[0, -1]]) == [99, 0]
    assert bool((rate[1:] >= rate[:-1] - 1e-12).all())  # KL terms are >= 0 (up to rounding)
    assert float(rate[0]) < 1e-4 < float(rate[-1])
    assert rd["rate_final"] + rd["distortion_bpd"] == pytest.approx(rd["total_bpd"], rel=1e-12)
    thirds = [float(rmse[i * 33:(i + 1) * 33].mean()) for i in range(3)]
    assert thirds[0] > thirds[1] > thirds[2]
    assert float(rmse[0]) > 40 and float(rmse[-1]) < 1  # 0..255 scale: from a blur to the exact image
    table = evaluation.rate_distortion_table(rd)
    assert "1.77581" in table and "100 of 100" in table and "Marks: P, read in the paper." in table


def test_rate_distortion_table_has_one_steps_column_when_the_book_sends_the_papers_steps():
    """With K = 1000 reverse steps (the paper's T) "900 of 1000" would repeat the paper's step: one
    column of steps, and the book's rate and RMSE after exactly that many steps."""
    K = 1000
    rate = torch.linspace(0.001, 1.0, K, dtype=torch.float64)
    rd = {"reverse_step": torch.arange(1, K + 1), "rate_bpd": rate, "rmse": torch.linspace(90.0, 0.5, K).double(),
          "rate_final": 1.0, "distortion_bpd": 0.4, "total_bpd": 1.4, "method": "exact", "n": 4}
    table = evaluation.rate_distortion_table(rd)
    lines = str(table).splitlines()
    assert lines[0].startswith("| reverse steps sent (of 1000) | paper rate") and "book: steps sent" not in table
    row900 = next(line for line in lines if line.startswith("| 900 |"))
    assert row900.rstrip(" |").endswith(f"{float(rate[899]):.5f} | {float(rd['rmse'][899]):.3f}")
    assert " of 1000" not in table.html.split("</thead>")[1]


def test_fid_and_kid_of_real_test_images_are_far_below_noise(extractor):
    test = evaluation.evaluate_reference("digits", "test", n=200, extractor=extractor)
    noise = evaluation.evaluate_reference("digits", "noise", n=200, extractor=extractor)
    assert test.fid < noise.fid / 10
    assert test.kid_mean < noise.kid_mean / 10
    assert test.is_mean > noise.is_mean
    with pytest.raises(ValueError, match="reference kind"):
        evaluation.evaluate_reference("digits", "blurred", n=10, extractor=extractor)


def test_fid_is_biased_upward_at_small_sample_counts_and_kid_is_not(extractor):
    curve = evaluation.fid_sample_size_curve("digits", sizes=(40, 300), extractor=extractor, repeats=2)
    assert curve["fid_mean"][0] > 2 * curve["fid_mean"][1]
    assert abs(curve["kid_mean"][0]) < 0.5 * curve["fid_mean"][0]


def test_evaluate_table_names_the_extractor_the_sample_count_and_the_profile(extractor):
    torch.manual_seed(0)
    net = unet.build_model("cpu-digits", base_channels=8, norm_groups=4).eval()
    d = cosine()
    r = evaluation.evaluate(net, d, dataset="digits", n_samples=24, extractor=extractor, sampler="ddim", steps=5,
                            bpd_examples=8, strided_bpd=5, progress=False, label="untrained net")
    assert r.samples.shape == (24, 1, 8, 8) and r.n_samples == 24 and r.steps == 5
    assert r.bpd is not None and r.bpd_method.startswith("strided over K = 5") and r.bpd_examples == 8
    assert {"sampling", "features", "fid", "is", "kid", "bpd"} <= set(r.seconds)
    table = r.table()
    for text in (extractor.name, "24", r.profile, "untrained net", "ddim, 5 steps", "strided over K = 5"):
        assert text in table, text
    assert "<table" in table._repr_html_()
    real = evaluation.evaluate_reference("digits", "test", n=24, extractor=extractor)
    both = evaluation.results_table([r, real])
    assert both.count("\n| ") == 2 and "test images" in both  # two rows below the header and separator
    # one extractor and profile for all rows: stated once in the caption, not repeated in columns
    assert "feature extractor" not in both and "| profile" not in both
    assert f"features: {extractor.name} (not Inception" in both and f"profile {r.profile}." in both
    from dataclasses import replace
    mixed = evaluation.results_table([r, replace(real, extractor="another network")])
    assert "| feature extractor | profile |" not in mixed and "feature extractor" in mixed
    assert "features: see the column" in mixed and "another network" in mixed
    # what ± and seconds mean: IS splits, KID subsets, bits/dim standard error (only with a bound)
    assert "of KID over its random subsets, the standard error of bits/dim" in both and "seconds: the whole" in both
    assert "bits/dim" not in evaluation.results_table([real]).split("\n\n")[-1]
    paper_net = evaluation.results_table([replace(real, extractor=features.PAPER_INCEPTION_NAME)])
    assert "the papers' network" in paper_net and "not Inception" not in paper_net
    assert f"their FID uses {paper.setting('ho2020_settings', 'fid_samples'):,} samples" in paper_net
    given = evaluation.results_table([r, real], caption="my caption")  # a given caption keeps every column
    assert "feature extractor" in given and "| profile |" in given
    # KID in plain digits, large (noise) or small: no "1.62e+03" in a table whose prose says 1,615;
    # the std with as many decimals as the mean
    kid = evaluation.EvalResult.HEADER.index("KID (vs train)")
    assert replace(real, kid_mean=1615.2, kid_std=1.99).row()[kid] == "1,615 ± 2"
    assert replace(real, kid_mean=0.07421, kid_std=0.00311).row()[kid] == "0.0742 ± 0.0031"
    assert replace(real, fid=1207.744).row()[evaluation.EvalResult.HEADER.index("FID (vs train)")] == "1,207.74"
    # the book's table: short FID/KID headers, "± std" kept together, one bits/dim image count in
    # the caption instead of every cell
    html = both._repr_html_()
    assert "<th>FID</th>" in html and "<th>KID</th>" in html and "(vs train)" not in html
    body = html.split("</caption>")[1]
    assert " ±\u00a0" in body and " ± " not in body and "±\n" not in body
    assert "(8 images)" not in html and "Bits/dim on 8 test images: strided over K = 5" in html
    assert "(8 images)" in given and "FID (vs train)" in given  # a given caption keeps the cells as they are


def test_sample_images_runs_both_samplers_and_checks_its_arguments():
    torch.manual_seed(0)
    net = unet.build_model("cpu-digits", base_channels=8, norm_groups=4).eval()
    d = cosine()
    x = evaluation.sample_images(net, d, 5, batch_size=3, sampler="ddpm", steps=4, progress=False,
                                 generator=torch.Generator().manual_seed(0))
    y = evaluation.sample_images(net, d, 5, batch_size=3, sampler="ddpm", steps=4, progress=False,
                                 generator=torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 8, 8) and torch.equal(x, y) and float(x.abs().max()) <= 1
    z = evaluation.sample_images(net, d, 2, sampler="ddim", steps=4, progress=False)
    assert z.shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown sampler"):
        evaluation.sample_images(net, d, 2, sampler="euler")


def test_ablation_configs_differ_only_in_the_choice_each_claim_compares():
    cfgs = evaluation.ablation_configs()
    assert set(cfgs) == set(evaluation.ABLATIONS)
    assert len({train.config_key(c) for c in cfgs.values()}) == len(cfgs)  # one cached model each
    base = cfgs["eps-simple"].to_dict()
    assert cfgs["eps-simple"].dataset == "digits" and cfgs["eps-simple"].loss_type == "simple"
    for name, cfg in cfgs.items():
        changed = {k for k, v in cfg.to_dict().items() if base[k] != v}
        assert changed == set(evaluation.ABLATIONS[name][0]), name
    for models in evaluation.CLAIM_MODELS.values():
        assert set(models) <= set(cfgs)


def fake_results(**over):
    res = {name: dict(fid=10.0, kid=0.01, fid_few=None, bpd=3.0, bpd_se=0.1, diverged=False, loss_spikes=0,
                      final_loss=0.1) for name in evaluation.ABLATIONS}
    res["eps-simple"].update(fid=5.0, fid_few=20.0, bpd=3.0)
    res["eps-vlb-fixed"].update(fid=9.0)
    res["mu-simple"].update(fid=30.0)
    res["hybrid-learned"].update(fid=6.0, fid_few=7.0, bpd=2.5)
    res["vlb-learned"].update(bpd=2.4)
    res["cosine-simple"].update(fid=4.0, bpd=2.9)
    for name, changes in over.items():
        res[name].update(changes)
    res["_settings"] = dict(dataset="digits", extractor="clf", n_samples=100, steps=50, few_steps=10,
                            bpd_examples=50, bpd_method="exact", profile="cpu")
    return res


def test_claims_table_has_a_row_per_claim_and_applies_its_rules(digits16):
    d = cosine()
    res = fake_results()
    res["rate_distortion"] = evaluation.rate_distortion(make_oracle(d, digits16), d, digits16, progress=False,
                                                        generator=torch.Generator().manual_seed(0))
    table = evaluation.claims_table(res)
    assert len(table.rows) == 6 and [r[0][:3] for r in table.rows] == [f"({c})" for c in "abcdef"]
    # mu-simple trained (no divergence) but has the worst FID: (b) holds only in part
    assert table.verdicts == {"a": True, "b": evaluation.PARTLY, "c": True, "d": True, "e": True, "f": False}
    assert table.rows[1][-1] == "in part" and "<td>in part</td>" in table.html
    assert "3.17" in table and "13.51" in table and "5.00" in table  # paper and book numbers side by side
    # (f) names the images the curve was measured on (it said "mnist5k" whatever they were)
    n_rd = res["rate_distortion"]["n"]
    assert table.rows[5][2].endswith(f"({n_rd} images)") and "mnist5k" not in table.rows[5][2]
    bpd = evaluation.bits_per_dim(make_oracle(d, digits16), d, digits16[:2], progress=False,
                                  generator=torch.Generator().manual_seed(0))
    assert evaluation.rate_distortion(None, d, "digits", bpd=bpd)["images"] == "digits test images"
    rd = evaluation.rate_distortion(None, d, digits16[:2], bpd=bpd, label="two digits")
    assert evaluation.claims_table({**res, "rate_distortion": rd}).rows[5][2].endswith("(2 two digits)")
    # (e)'s cell ends with the ratio of the two FID ratios that its rule compares with the margin:
    # hybrid 6 -> 7 (x1.17) against eps-simple 5 -> 20 (x4.00)
    assert table.rows[4][2].endswith(f"ratio of the two {(7 / 6) / 4:.2f}")
    # the caption states the setting; every claim's rule, with (e)'s margin, is listed under the table
    caption = table.html.split("<caption>")[1].split("</caption>")[0]
    assert "8×8 digits, 100 samples with 50 respaced" in caption and "(e) " not in caption
    rules = table.html.split("</table>")[1]
    assert all(f"<li>({c}) " in rules for c in "abcdef") and f"below {evaluation.FEW_STEP_MARGIN} × " in rules
    assert "<code>hybrid-learned</code>" in rules and "- (e) `hybrid-learned`'s FID ratio" in table
    flipped = evaluation.claims_table(fake_results(**{"eps-vlb-fixed": dict(fid=4.0), "vlb-learned": dict(bpd=3.5),
                                                      "hybrid-learned": dict(fid_few=60.0)}))
    assert flipped.verdicts["a"] is False and flipped.verdicts["c"] is False and flipped.verdicts["e"] is False
    assert flipped.verdicts["f"] is None and flipped.rows[5][-1] == "not measured"
    # (e) needs a clear margin: FID x3.6 against x4.0 is "similar factors" (chapter 7's word), not a hold
    close = evaluation.claims_table(fake_results(**{"hybrid-learned": dict(fid=6.0, fid_few=21.6)}))
    assert close.verdicts["e"] is False and evaluation.FEW_STEP_MARGIN == 0.85
    diverged = evaluation.claims_table(fake_results(**{"mu-simple": dict(fid=None, diverged=True)}))
    assert diverged.verdicts["b"] is True and "diverged" in diverged.rows[1][2] and diverged.rows[1][-1] == "yes"
    better = evaluation.claims_table(fake_results(**{"mu-simple": dict(fid=8.0)}))  # trained, better than mu-vlb
    assert better.verdicts["b"] is False


def test_measure_ablations_records_scores_bounds_and_divergence(extractor):
    from types import SimpleNamespace

    torch.manual_seed(0)
    net = unet.build_model("cpu-digits", base_channels=8, norm_groups=4).eval()
    run = SimpleNamespace(history={"loss": torch.cat([torch.ones(60), torch.full((1,), 10.0)])}, ema=net,
                          diffusion=cosine())
    runs = {"eps-simple": run, "mu-simple": train.TrainingDivergedError("loss is nan", 3, None)}
    m = evaluation.measure_ablations(runs, extractor=extractor, n_samples=16, steps=4, few_steps=2,
                                     bpd_examples=6, bpd_stride=10, progress=False)
    rec = m["eps-simple"]
    assert rec["loss_spikes"] == 1 and not rec["diverged"]
    assert math.isfinite(rec["fid"]) and math.isfinite(rec["fid_few"]) and math.isfinite(rec["kid"])
    assert 0 < rec["bpd"] and rec["bpd_se"] > 0
    assert m["mu-simple"]["diverged"] and m["mu-simple"]["fid"] is None
    assert m["_settings"]["bpd_method"].startswith("stratified") and m["_settings"]["n_samples"] == 16
    assert m["_settings"]["seed"] == 0  # the default, recorded for chapter 8's paragraph on its redraw
    # the loss-spike rule is recorded (chapter 8 quotes it) and is the one that counted the spike above;
    # the constants are the defaults that chapter 7 quotes before chapter 8 measures
    s = m["_settings"]
    assert (s["spike_window"], s["spike_factor"]) == (evaluation.SPIKE_WINDOW, evaluation.SPIKE_FACTOR) == (50, 3.0)
    assert evaluation._loss_spikes(run.history["loss"], s["spike_window"], s["spike_factor"]) == 1
    assert evaluation._loss_spikes(run.history["loss"], s["spike_window"], 11.0) == 0
    import inspect
    defaults = {k: v.default for k, v in inspect.signature(evaluation.measure_ablations).parameters.items()}
    assert (defaults["n_samples"], defaults["steps"], defaults["few_steps"]) == (
        evaluation.ABLATION_SAMPLES, evaluation.ABLATION_STEPS, evaluation.ABLATION_FEW_STEPS)
    # the training updates are another constant (one name held both, the later one winning)
    train_default = inspect.signature(evaluation.ablation_configs).parameters["steps"].default
    assert train_default == evaluation.ABLATION_TRAIN_STEPS != evaluation.ABLATION_STEPS
    assert all(c.steps == train_default for c in evaluation.ablation_configs().values())
