"""Tests added by a mutation audit of the code that decides what the book says: the claims table's
rules (evaluation.claims_table, CLAIM_RULES), measure_ablations and _loss_spikes, the results and
rate-distortion tables, fid_sample_size_curve, compare's seed summaries, image study and report
verdicts, baselines' fit loop, and paper.compare.

Each test builds small inputs by hand (result dicts, fake runs, monkeypatched samplers) and checks
the documented rule or an exact invariant; none trains a model. Each kills a mutant that the
existing tests let through.
"""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from ddpm_core import compare, data, evaluation, features, metrics, paper
from ddpm_core.baselines import _common

from test_evaluation import fake_results as _claims  # every claim (a)-(e) holds; keywords change models
from test_mutation_gaps_models import _PixelExtractor  # features: 4x4 block means

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- claims_table
def test_claims_a_b_d_e_follow_the_rules_at_the_values_that_separate_them():
    """(a) needs FID *below* (a tie does not hold); (b) 'in part' needs mu-simple's FID above both
    mu-vlb-fixed's and eps-simple's; (d) needs cosine-simple's FID below eps-simple's (not another
    model's) besides its bits/dim; (e) compares each model's few-step FID with its own full-step FID."""
    base = evaluation.claims_table(_claims()).verdicts
    assert base["a"] is True and base["b"] == evaluation.PARTLY and base["d"] is True and base["e"] is True
    tie = evaluation.claims_table(_claims(**{"eps-vlb-fixed": dict(fid=5.0)}))
    assert tie.verdicts["a"] is False and tie.rows[0][-1] == "no"
    # mu-simple worse than mu-vlb-fixed but better than eps-simple: not even "in part"
    b = evaluation.claims_table(_claims(**{"mu-vlb-fixed": dict(fid=4.0), "mu-simple": dict(fid=4.5)}))
    assert b.verdicts["b"] is False and b.rows[1][-1] == "no"
    # cosine-simple: lower bits/dim, but FID 6.0 above eps-simple's 5.0 (and below eps-vlb-fixed's 9.0)
    d = evaluation.claims_table(_claims(**{"cosine-simple": dict(fid=6.0, bpd=2.9)}))
    assert d.verdicts["d"] is False and d.rows[3][-1] == "no"
    # hybrid FID 20 -> 40 (x2) against eps-simple 5 -> 20 (x4): 2 < 0.85 * 4, the claim holds
    e = evaluation.claims_table(_claims(**{"hybrid-learned": dict(fid=20.0, fid_few=40.0)}))
    assert e.verdicts["e"] is True and "×2.00, hybrid-learned" in e.rows[4][2] and "×4.00, eps-simple" in e.rows[4][2]
    assert e.few_step_ratios == {"eps-simple": 4.0, "hybrid-learned": 2.0}  # the ratios the verdict used
    assert evaluation.claims_table(_claims(**{"hybrid-learned": dict(fid_few=None)})).few_step_ratios is None


def _rd(rate, rmse, distortion=0.4, n=16):
    rate = torch.tensor(rate, dtype=torch.float64)
    return {"reverse_step": torch.arange(1, len(rate) + 1), "rate_bpd": rate, "rmse": torch.tensor(rmse, dtype=torch.float64),
            "rate_final": float(rate[-1]), "distortion_bpd": distortion, "total_bpd": float(rate[-1]) + distortion,
            "method": "exact", "n": n}


def test_claim_f_holds_for_a_falling_rmse_and_a_rate_mostly_spent_in_the_last_tenth():
    """(f) with K = 10 steps: the rate after 9 of 10 steps (0.45 of the final 1.0) leaves 55 % for the
    last tenth, and the RMSE falls, so the claim holds; 0.55 after 9 steps (45 % late) does not, nor
    does an RMSE that grows."""
    rmse = [50.0 - 5 * k for k in range(10)]
    rate = [0.05 * k for k in range(1, 10)] + [1.0]  # 0.05 .. 0.45, then 1.0
    held = evaluation.claims_table({**_claims(), "rate_distortion": _rd(rate, rmse)})
    assert held.verdicts["f"] is True and "55% of the rate in the last 10%" in held.rows[5][2]
    early = [0.55 * k / 9 for k in range(1, 10)] + [1.0]
    assert evaluation.claims_table({**_claims(), "rate_distortion": _rd(early, rmse)}).verdicts["f"] is False
    growing = evaluation.claims_table({**_claims(), "rate_distortion": _rd(rate, rmse[::-1])})
    assert growing.verdicts["f"] is False


# ---------------------------------------------------------------------- _loss_spikes, measure_ablations
def test_loss_spikes_count_losses_above_three_times_the_median_of_the_previous_fifty():
    """A spike is a loss above 3x the *median* of the previous 50 (defaults): a window with a few
    large losses does not raise the bar; 2.5x is no spike, 3.5x is; nothing within the first 50."""
    window = torch.cat([torch.ones(40), torch.full((10,), 10.0)])  # median 1, mean 2.8
    assert evaluation._loss_spikes(torch.cat([window, torch.tensor([5.0])])) == 1
    ones = torch.ones(50)
    assert evaluation._loss_spikes(torch.cat([ones, torch.tensor([2.5])])) == 0
    assert evaluation._loss_spikes(torch.cat([ones, torch.tensor([3.5])])) == 1
    assert evaluation._loss_spikes(torch.cat([torch.ones(49), torch.tensor([100.0])])) == 0


def test_measure_ablations_records_each_models_kid_and_its_few_step_fid(monkeypatch):
    """measure_ablations samples every model with ``steps`` and the few-step models again with
    ``few_steps``; ``fid_few`` is the FID of the latter, ``kid`` the KID mean (not its std)."""
    calls = []

    def sample(model, d, n, sampler, steps, generator, progress):
        calls.append((model, steps))
        return torch.full((n, 1, 8, 8), float(steps) / 100)

    def score(images, dataset, extractor, seed):
        steps = round(float(images[0, 0, 0, 0]) * 100)
        return SimpleNamespace(fid=100.0 + steps, kid_mean=0.03, kid_std=0.002)

    monkeypatch.setattr(evaluation, "sample_images", sample)
    monkeypatch.setattr(evaluation, "score_images", score)
    monkeypatch.setattr(evaluation, "_test_bpd", lambda *a: (2.0, 0.1, "fake"))
    monkeypatch.setattr(evaluation, "_prepare_scoring", lambda model, d, dataset, extractor, *a: extractor)
    runs = {name: SimpleNamespace(history={"loss": torch.ones(60)}, ema=name, diffusion=None)
            for name in ("eps-simple", "mu-simple")}
    m = evaluation.measure_ablations(runs, extractor=_PixelExtractor(), n_samples=4, steps=50,
                                     few_steps=10, progress=False)
    assert calls == [("eps-simple", 50), ("eps-simple", 10), ("mu-simple", 50)]
    assert m["eps-simple"]["fid"] == 150.0 and m["eps-simple"]["fid_few"] == 110.0
    assert m["eps-simple"]["kid"] == 0.03 and m["mu-simple"]["fid_few"] is None
    assert m["mu-simple"]["bpd"] is None and m["eps-simple"]["bpd"] == 2.0  # bpd_models default


def test_ablation_bound_standard_error_is_the_spread_over_sqrt_n(monkeypatch):
    """_test_bpd (the strided T-step bound of measure_ablations): mean and std(ddof=1)/sqrt(n) of the
    per-image bounds."""
    from ddpm_core import bench

    per = torch.tensor([3.0, 3.4, 2.8, 3.9, 3.1, 2.6, 3.3, 3.5, 3.0], dtype=torch.float64)
    seen = []
    monkeypatch.setattr(bench, "strided_bpd", lambda d, model, x, stride, noise_generator: seen.append(x) or per[:len(x)])
    d = SimpleNamespace(num_timesteps=100)
    mean, se, method = evaluation._test_bpd(lambda x, t: x, d, "digits", 9, 10, 0)
    from ddpm_core import data
    # the digits' 17 levels are rounded to the 8-bit grid first, as bits_per_dim does
    assert torch.equal(seen[0], data.to_8bit_grid(data.load_dataset("digits", "test").x[:9]))
    assert mean == pytest.approx(float(per.mean()))
    assert se == pytest.approx(float(np.std(per.numpy(), ddof=1)) / 3.0, rel=1e-9)
    assert method.startswith("stratified estimate")


# ---------------------------------------------------------------------- results tables
def _result(**kw):
    base = dict(label="x", dataset="digits", n_samples=10, n_reference=20, extractor="e", profile="cpu",
                sampler="real", steps=None, fid=1.0, is_mean=2.5, is_std=0.25, kid_mean=0.07421, kid_std=0.00311)
    return evaluation.EvalResult(**{**base, **kw})


def test_results_table_states_the_reference_count_and_each_bound_with_its_own_image_count():
    """The caption's 'against its N training images' is ``n_reference``; the bits/dim cell names
    ``bpd_examples`` (not the sample count) and shows no '± nan' where one image gives no error."""
    one = _result(bpd=3.0, bpd_se=float("nan"), bpd_method="exact", bpd_examples=1)
    eight = _result(bpd=3.25, bpd_se=0.05, bpd_method="exact", bpd_examples=8)
    cell = evaluation.EvalResult.HEADER.index("bits/dim (test)")
    assert one.row()[cell] == "3.000 (1 images)" and eight.row()[cell] == "3.250 ± 0.050 (8 images)"
    table = evaluation.results_table([one, eight])
    assert "against its 20 training images" in table and "nan" not in table
    assert evaluation._pm(1.5, float("nan"), ".2f") == "1.50"


def test_three_digit_cells_have_no_exponent_from_1e4_down_to_1e_minus_4():
    """_three_digits (the KID cells): no exponent anywhere in [1e-4, 1e4], including 1000 itself."""
    for x, text in [(1000.0, "1,000"), (1234.5, "1,234"), (0.0001, "0.0001"), (12.34, "12.3"), (0.07421, "0.0742"),
                    (999.6, "1,000"), (-999.5, "-1,000"), (999.4, "999")]:  # 999.5..1000 round up to four digits
        assert evaluation._three_digits(x) == text
    kid = evaluation.EvalResult.HEADER.index("KID (vs train)")
    assert _result(kid_mean=1000.0, kid_std=2.0).row()[kid] == "1,000 ± 2"


def test_rate_distortion_table_puts_the_books_curve_at_the_papers_steps():
    """Each row of Ho et al.'s Table 4 (reverse steps 100..1000) gets the book's rate and RMSE after
    k = round(K * steps / 1000) of its K steps: the entries k - 1 of rate_bpd and rmse."""
    K = 20
    rd = _rd([0.01 * k for k in range(1, K + 1)], [100.0 - 3 * k for k in range(K)])
    rd["reverse_step"] = torch.arange(1, K + 1)
    lines = [line for line in str(evaluation.rate_distortion_table(rd)).splitlines() if " of 20 " in line]
    assert len(lines) == 10
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        k = round(K * int(cells[0]) / 1000)
        assert cells[3] == f"{k} of {K}"
        assert cells[4] == f"{0.01 * k:.5f}" and cells[5] == f"{100.0 - 3 * (k - 1):.3f}"


def test_fid_sample_size_curve_measures_the_named_split():
    """With N = the whole test split, every repeat takes all of it: FID is exactly that of the test
    images' features against the training statistics, with no spread over repeats."""
    ext = _PixelExtractor(device="cpu")
    test = data.load_dataset("digits", "test").x
    curve = evaluation.fid_sample_size_curve("digits", sizes=(len(test),), split="test", extractor=ext,
                                             repeats=2, kid_subsets=2)
    ref = features.reference_stats("digits", "train", ext)
    expected = metrics.fid_result(ext.features(test), ref, ext.name).fid
    assert curve["fid_mean"][0] == pytest.approx(expected, rel=1e-6) and curve["fid_std"][0] < 1e-9 * (1 + expected)
    with pytest.raises(ValueError, match="test images"):
        evaluation.fid_sample_size_curve("digits", sizes=(len(test) + 1,), split="test", extractor=ext, repeats=1)


# ---------------------------------------------------------------------- compare
def _toy(ds, fam, seed, covered=8, hq=0.5, tv=0.1):
    return dict(dataset=ds, family=fam, seed=seed, covered=covered, num_modes=8, high_quality=hq, mode_tv=tv,
                train_seconds=2.0, steps=1000, batch_size=256)


def test_toy_table_high_quality_share_is_its_mean_and_seed_std():
    """toy_table's high-quality share: mean ± std (ddof 1) of the per-seed shares, not of the TV."""
    row = compare.toy_table([_toy("ring", "gan", 0, hq=0.5), _toy("ring", "gan", 1, hq=0.7)]).iloc[0]
    assert row["high-quality share"] == "60.0% ± 14.1%" and row["imbalance (TV)"] == "0.10 ± 0.00"


def test_toy_study_rows_measure_each_runs_samples(monkeypatch):
    """toy_study: samples drawn with a generator seeded 1000 + seed, mode statistics of exactly those
    samples, and sample_seconds per 1,000 points."""
    ring = data.load_dataset("ring", "test")
    seeds_seen = []

    class FakeRun:
        steps, batch_size, train_seconds = 1000, 256, 3.0

        def sample(self, n, generator, steps=None):
            seeds_seen.append(generator.initial_seed())
            return ring.modes[torch.arange(n) % 4]  # on 4 of the 8 modes

    monkeypatch.setattr(compare, "_toy_cached", lambda *a: True)
    monkeypatch.setattr(compare, "train_toy", lambda fam, ds, seed, progress=False: FakeRun())
    monkeypatch.setattr(compare, "timed", lambda fn: (fn(), 0.5))
    rows = compare.toy_study(["ring"], families=["gan"], seeds=[2], n_samples=200, progress=False)
    assert seeds_seen == [1002] and len(rows) == 1
    r = rows[0]
    assert r["covered"] == 4 and r["num_modes"] == 8 and r["high_quality"] == 1.0 and r["mode_tv"] == pytest.approx(0.5)
    assert r["sample_seconds"] == pytest.approx(1000 * 0.5 / 200)


def _study():
    def ev(label, fid):
        return _result(label=label, fid=fid, samples=torch.linspace(-1, 1, 32).reshape(2, 1, 4, 4))

    fams = compare.FAMILIES
    bpd = {f: [{"bpd": None if f == "gan" else 2.0 + i, "bpd_se": None if f == "gan" else 0.1 * (i + 1),
                "method": "m", "n": 4, "seconds": 0.5}] for i, f in enumerate(fams)}
    return compare.ImageStudy(
        dataset="digits", config={"steps": 10, "batch_size": 4}, seeds=[0], extractor="e", n_eval=2, sample_steps=5,
        n_bpd=4, evals={f: [ev(f, 10.0 + i)] for i, f in enumerate(fams)},
        refs={"test": ev("test images", 1.0), "noise": ev("noise", 900.0)}, bpd=bpd,
        train_seconds={f: [1.0] for f in fams}, sample_seconds={f: 0.01 for f in fams}, gan_losses={},
        machine={"cpu": "x", "date": "2026-01-01"})


def test_image_study_rows_and_its_saved_files_keep_every_bits_per_dim_field(tmp_path):
    """ImageStudy.rows: the test-images row holds refs['test'] and the noise row refs['noise'];
    save + load keep every field of each bits/dim dict (bpd_se too) and every score."""
    study = _study()
    rows = {r["model"]: r for r in study.rows(test_label="test digits")}
    assert rows["test digits"]["eval"].fid == 1.0 and rows["noise"]["eval"].fid == 900.0
    back = compare.ImageStudy.load(study.save(tmp_path / "s"))
    assert back.bpd == study.bpd
    assert back.refs["test"].fid == 1.0 and back.refs["noise"].fid == 900.0
    one_seed = compare.image_table(back.rows())
    assert one_seed.loc["VAE", "bits/dim (test)"] == "3.00 ± 0.20"


def test_report_verdicts_gan_instability_on_every_mixture_and_vae_against_all_four():
    """'GAN training is unstable' needs the GAN's HQ spread to be the largest on *every* mixture;
    'VAEs give blurrier samples' needs the VAE's FID and KID to be the highest of all four families,
    the GAN's included."""
    rows = []
    for ds in ("ring", "grid"):
        for f in compare.FAMILIES:
            wide = (f == "gan") if ds == "ring" else (f == "vae")  # the GAN varies most on the ring only
            rows += [_toy(ds, f, s, hq=h) for s, h in enumerate([0.2, 0.8] if wide else [0.5, 0.55])]
    fid = {"gan": 60.0, "vae": 50.0, "flow": 35.0, "ddpm": 30.0}  # the GAN, not the VAE, is the worst
    v = {k: ok for k, (ok, _) in compare.report_verdicts(rows, fid, fid, {"gan": None, "vae": 2, "flow": 2, "ddpm": 2}).items()}
    assert v["GAN training is unstable"] is False
    assert v["VAEs give blurrier samples"] == "no"


# ---------------------------------------------------------------------- baselines' fit
def _nan_after(model, update):
    real, calls = model.training_step, []

    def step(x, optimizers, generator):
        calls.append(len(x))
        out = real(x, optimizers, generator)
        return {"loss": out["loss"] * float("nan")} if len(calls) >= update else out

    model.training_step = step
    return calls


def _ring(n, seed=0):
    return data.load_dataset("ring", "train").x[:n]


def test_a_checkpoint_step_checks_for_nan_even_between_the_regular_checks(tmp_path):
    """With checkpoint_every = 4 and the default NAN_CHECK_EVERY (100), a NaN at update 6 stops fit at
    the checkpoint step 8, before that checkpoint is written: the file keeps the 4 good updates."""
    from ddpm_core import baselines

    assert _common.NAN_CHECK_EVERY % 4 == 0 and _common.NAN_CHECK_EVERY > 8
    model = baselines.build("vae", (2,), size="cpu")
    calls = _nan_after(model, 6)
    path = tmp_path / "vae.pt"
    with pytest.raises(FloatingPointError, match="at update 6"):
        _common.fit(model, _ring(64), steps=200, batch_size=16, checkpoint=path, checkpoint_every=4, progress=False)
    assert len(calls) == 8
    saved = torch.load(path, weights_only=False)
    assert saved["history"]["steps"] == 4 and all(math.isfinite(v) for v in saved["history"]["loss"])


def test_fit_trains_on_full_batches_of_distinct_examples_each_epoch():
    """Tensor data: every update gets exactly batch_size examples (70 points, batches of 16: four per
    epoch, the 6 left over are not a batch), and the batches of one epoch do not repeat an example."""
    from ddpm_core import baselines

    x = _ring(70)
    model = baselines.build("vae", (2,), size="cpu")
    real, seen = model.training_step, []

    def step(batch, optimizers, generator):
        seen.append(batch.clone())
        return real(batch, optimizers, generator)

    model.training_step = step
    history = _common.fit(model, x, steps=8, batch_size=16, progress=False)
    assert history["steps"] == 8 and [len(b) for b in seen] == [16] * 8
    for epoch in (seen[:4], seen[4:]):
        rows = torch.cat(epoch)
        assert len(torch.unique(rows, dim=0)) == 64


# ---------------------------------------------------------------------- paper.compare
def test_compare_prints_the_books_number_with_the_given_decimals():
    """paper.compare's 'this book' cell has ``digits`` decimals (1.8 -> '1.80', 41.23456 -> '41.235')."""
    def cell(book, digits):
        t = paper.compare([{"quantity": "NLL", "paper": 3.75, "book": book}], profile="cpu", dataset="d",
                          extractor="none", n_samples=8, digits=digits)
        return [c.strip() for c in str(t).splitlines()[2].strip("|").split("|")][3]

    assert cell(1.8, 2) == "1.80" and cell(41.23456, 3) == "41.235" and cell(1234.5678, 1) == "1234.6"
