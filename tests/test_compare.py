"""Tests of ddpm_core.compare: mode coverage and sample quality on 2-D mixtures, seed summaries,
the cache of trained baselines."""
import math
from pathlib import Path

import pytest
import torch

from ddpm_core import baselines, compare, data, train

RING = data.load_dataset("ring", n=10)  # only the modes and their std are used
MODES, STD = RING.modes, RING.mode_std


def around(mode: int, n: int, radius: float, seed: int = 0) -> torch.Tensor:
    """n points at distance exactly ``radius`` from mode ``mode``, at random angles."""
    angle = 2 * math.pi * torch.rand(n, generator=torch.Generator().manual_seed(seed))
    return MODES[mode] + radius * torch.stack([angle.cos(), angle.sin()], 1)


def test_data_from_the_mixture_covers_every_mode_with_high_quality():
    ring = data.load_dataset("ring", split="test")
    st = compare.mode_stats(ring.x, ring.modes, ring.mode_std)
    assert st.num_modes == 8 and st.covered == 8
    # 1 - exp(-9/2) = 98.9 % of an isotropic 2-D Gaussian lies within 3 std of its centre
    assert abs(st.high_quality - (1 - math.exp(-4.5))) < 0.01
    assert st.mode_tv < 0.05
    grid = data.load_dataset("grid", split="test")
    assert compare.mode_stats(grid.x, grid.modes, grid.mode_std).covered == 25


def test_samples_on_one_mode_cover_exactly_that_mode():
    x = around(3, 400, 0.5 * STD)
    st = compare.mode_stats(x, MODES, STD)
    assert st.covered == 1 and st.high_quality == 1.0
    assert st.counts.tolist() == [0, 0, 0, 400, 0, 0, 0, 0]
    assert st.covered_mask.tolist() == [False, False, False, True, False, False, False, False]
    assert st.mode_tv == pytest.approx(7 / 8)


def test_outliers_lower_the_quality_share_but_not_the_coverage():
    good = torch.cat([around(k, 30, 2.9 * STD, seed=k) for k in range(8)])      # 240 just inside 3 std
    bad = torch.cat([around(k, 20, 3.1 * STD, seed=10 + k) for k in range(8)])  # 160 just outside
    st = compare.mode_stats(torch.cat([good, bad]), MODES, STD)
    assert st.covered == 8
    assert st.high_quality == pytest.approx(240 / 400)
    assert st.counts.tolist() == [30] * 8
    # the origin is 0.8 from every mode: no mode, no quality
    st0 = compare.mode_stats(torch.zeros(50, 2), MODES, STD)
    assert st0.covered == 0 and st0.high_quality == 0.0 and math.isnan(st0.mode_tv)


def test_a_mode_needs_its_minimum_share_to_count_as_covered():
    # 800 samples: the expected count per mode is 100; min_fraction 0.1 asks for 10
    x = torch.cat([around(0, 791, 0.1), around(1, 9, 0.1)])
    assert compare.mode_stats(x, MODES, STD).covered == 1
    x = torch.cat([around(0, 790, 0.1), around(1, 10, 0.1)])
    assert compare.mode_stats(x, MODES, STD).covered == 2
    assert compare.mode_stats(x, MODES, STD, min_fraction=0.2).covered == 1
    assert compare.mode_stats(x, MODES, STD, n_std=1.0).covered == 0  # 0.1 is 2 std away


def test_nearest_mode_and_input_checks():
    idx, dist = compare.nearest_mode(torch.tensor([[0.8, 0.0], [0.0, -0.7]]), MODES)
    assert idx.tolist() == [0, 6] and torch.allclose(dist, torch.tensor([0.0, 0.1], dtype=torch.float64))
    with pytest.raises(ValueError, match="coordinates"):
        compare.nearest_mode(torch.zeros(3, 3), MODES)
    with pytest.raises(ValueError, match="NaN"):
        compare.mode_stats(torch.full((3, 2), float("nan")), MODES, STD)
    with pytest.raises(ValueError, match="min_fraction"):
        compare.mode_stats(torch.zeros(3, 2), MODES, STD, min_fraction=2)


def test_summarize_over_seeds():
    s = compare.summarize([1.0, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3}
    assert compare.summarize([5])["std"] == 0.0
    with pytest.raises(ValueError):
        compare.summarize([])


def test_baseline_cache_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    first = compare.get_baseline("vae", "ring", steps=20, seed=3, batch_size=64, progress=False, size="cpu")
    path = compare.baseline_path("vae", "ring", 20, 3, batch_size=64, size="cpu")
    assert path.is_file() and path.parent == tmp_path / "baselines"
    assert path.name.startswith("vae-ring-20steps-seed3-")
    assert len(first.history["loss"]) == 20 and first.history["steps"] == 20

    def explode(*a, **k):
        raise AssertionError("a cached baseline must not be trained again")

    monkeypatch.setattr(baselines, "train", explode)
    again = compare.get_baseline("vae", "ring", steps=20, seed=3, batch_size=64, progress=False, size="cpu")
    assert again.history["loss"] == first.history["loss"]
    for (k, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu()), k
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(baselines.sample(first, 5, g1), baselines.sample(again, 5, g2))
    # any changed setting is another model
    assert compare.baseline_path("vae", "ring", 20, 4, batch_size=64, size="cpu") != path
    assert compare.baseline_path("vae", "ring", 21, 3, batch_size=64, size="cpu") != path
    assert compare.baseline_path("gan", "ring", 20, 3, batch_size=64, size="cpu") != path
    with pytest.raises(ValueError, match="family"):
        compare.get_baseline("pixelcnn", "ring", steps=1)


def test_verdicts_of_two_measures_and_the_claims_frame():
    assert compare.agree(True, True) == "yes" and compare.agree(False, False) == "no"
    assert compare.agree(True, False) == "mixed" == compare.agree(False, True)
    frame = compare.claims_frame({"a": (True, "rule a"), "b": (False, "rule b"), "c": ("mixed", "rule c")})
    assert frame["supported here"].tolist() == ["yes", "no", "mixed"]
    assert frame.loc["b", "rule (book's measurements)"] == "rule b"


def toy_rows(covered: dict, hq: dict, num_modes: int = 8) -> list[dict]:
    """Rows as toy_study returns them, from {family: [covered per seed]} and {family: [hq per seed]}."""
    return [dict(dataset="ring", family=f, seed=s, covered=c, num_modes=num_modes, high_quality=h)
            for f in compare.FAMILIES for s, (c, h) in enumerate(zip(covered[f], hq[f]))]


def test_paper_rows_set_the_papers_numbers_beside_the_studys_means():
    from types import SimpleNamespace

    from ddpm_core import paper

    def ev(fid):
        return SimpleNamespace(fid=fid, is_mean=fid / 10, kid_mean=fid / 1000)

    study = SimpleNamespace(
        evals={f: [ev(10.0 + i), ev(12.0 + i)] for i, f in enumerate(compare.FAMILIES)},
        bpd={"gan": [{"bpd": None}] * 2, **{f: [{"bpd": b}, {"bpd": b + 0.2}]
                                             for f, b in [("vae", 1.5), ("flow", 1.7), ("ddpm", 2.0)]}})
    study.stat = lambda q: compare.ImageStudy.stat(study, q)
    rows = compare.paper_rows(study)
    samples = {r["quantity"]: r for r in rows["samples"]}
    # the book's means over the seeds, with the digits of image_table: FID one decimal, IS and bits/dim two
    assert samples["GAN (paper: SNGAN): FID"]["book"] == "11.0" and samples["DDPM: IS"]["book"] == "1.40"
    assert samples["GAN (paper: SNGAN): FID"]["paper"].value == paper.value("ho2020_table1", "FID", model="SNGAN")
    assert str(samples["DDPM: FID"]["paper"]) == "3.17" and samples["DDPM: FID"]["paper"].mark == "P"
    bits = {r["quantity"]: r for r in rows["likelihood"]}
    assert bits["VAE (paper: NVAE): bits/dim"]["book"] == "1.60" and bits["DDPM: bits/dim (bound)"]["book"] == "2.10"
    assert bits["DDPM: bits/dim (bound)"]["paper"].value == paper.value("ho2020_table1", "NLL", model="DDPM, L_simple")
    assert all(r["paper"] is not None for rs in rows.values() for r in rs)  # no row without a paper number


def test_report_verdicts_follow_their_rules():
    rows = toy_rows({"gan": [8, 5, 8], "vae": [8, 8, 8], "flow": [8, 8, 7], "ddpm": [8, 8, 8]},
                    {"gan": [0.9, 0.4, 0.7], "vae": [0.4, 0.42, 0.41], "flow": [0.6, 0.62, 0.6], "ddpm": [0.5, 0.5, 0.52]})
    fid = {"gan": 20.0, "vae": 50.0, "flow": 35.0, "ddpm": 30.0}
    kid = {"gan": 0.2, "vae": 0.8, "flow": 0.3, "ddpm": 0.7}   # flow vs DDPM: KID disagrees with FID
    bpd = {"gan": None, "vae": 1.6, "flow": 1.8, "ddpm": 2.1}
    v = {k: ok for k, (ok, _) in compare.report_verdicts(rows, fid, kid, bpd).items()}
    assert v["GANs cover fewer modes"] is True and v["GAN training is unstable"] is True
    assert v["VAEs give blurrier samples"] == "yes" and v["flows give weaker samples"] == "mixed"
    assert v["diffusion covers all modes"] is True and v["diffusion samples match GANs"] == "no"
    assert v["diffusion gives a likelihood"] is True and v["diffusion's likelihood matches VAEs and flows (the book's added check)"] is False
    # a DDPM that drops a mode, a GAN that does not, and a DDPM ahead of the GAN by both metrics
    rows = toy_rows({"gan": [8, 8, 8], "vae": [8, 8, 8], "flow": [8, 8, 8], "ddpm": [8, 7, 8]},
                    {"gan": [0.9, 0.9, 0.9], "vae": [0.4, 0.5, 0.6], "flow": [0.6, 0.6, 0.6], "ddpm": [0.5, 0.5, 0.5]})
    v = {k: ok for k, (ok, _) in compare.report_verdicts(rows, {**fid, "ddpm": 10.0}, {**kid, "ddpm": 0.1}, bpd).items()}
    assert v["GANs cover fewer modes"] is False and v["GAN training is unstable"] is False
    assert v["diffusion covers all modes"] is False and v["diffusion samples match GANs"] == "yes"
    rules = {k: rule for k, (_, rule) in compare.report_verdicts(rows, fid, kid, bpd).items()}
    assert all(rules[k].startswith("on digits") for k in ("VAEs give blurrier samples", "flows give weaker samples",
                                                           "diffusion samples match GANs"))  # not the 2-D mixtures
    # with a floor: covering every mode is not enough where a uniform cloud scores more high-quality points
    rows = toy_rows({f: [8, 8, 8] for f in compare.FAMILIES}, {f: [0.5, 0.45, 0.5] for f in compare.FAMILIES})
    assert compare.report_verdicts(rows, fid, kid, bpd)["diffusion covers all modes"][0] is True
    ok, rule = compare.report_verdicts(rows, fid, kid, bpd, floor={"ring": 0.47})["diffusion covers all modes"]
    assert ok is False and "uniform cloud" in rule
    assert compare.report_verdicts(rows, fid, kid, bpd, floor={"ring": 0.4})["diffusion covers all modes"][0] is True


def test_uniform_floor_covers_every_mode_of_both_mixtures():
    """Points spread uniformly over the modes' square cover every mode under the 10 % rule: coverage
    alone cannot tell a model that learned the modes from one that learned nothing."""
    for name, hq_range in [("ring", (0.10, 0.22)), ("grid", (0.42, 0.56))]:
        mix = data.load_dataset(name, split="test")
        st = compare.uniform_floor(mix.modes, mix.mode_std, n=4000, seed=1)
        assert st.covered == st.num_modes and st.n_samples == 4000, (name, st)
        # the share of the square within 3 std of a mode: 25 discs of radius 0.15 fill about half of the grid's
        assert hq_range[0] < st.high_quality < hq_range[1], (name, st.high_quality)
    assert compare.uniform_floor(MODES, STD, n=50, seed=3).high_quality == \
        compare.uniform_floor(MODES, STD, n=50, seed=3).high_quality  # seeded


def test_toy_cache_check_matches_what_train_toy_stores(tmp_path, monkeypatch):
    """toy_study trains only the runs that _toy_cached reports missing (in worker processes), so the
    check must agree with where train_toy puts each family's model."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDPM_WORKERS", "1")
    monkeypatch.setattr(compare, "TOY_BUDGET", {f: {"steps": 4, "batch_size": 16, "lr": None} for f in compare.FAMILIES})
    for fam in compare.FAMILIES:
        assert not compare._toy_cached(fam, "ring", 0)
        run = compare.train_toy(fam, "ring", 0, progress=False)
        assert run.steps == 4 and compare._toy_cached(fam, "ring", 0), fam
        assert not compare._toy_cached(fam, "ring", 1) and not compare._toy_cached(fam, "grid", 0)


def test_toy_table_gives_mode_counts_as_their_range_over_seeds():
    def row(seed, covered, seconds=4.0):
        return dict(dataset="grid", family="gan", seed=seed, covered=covered, num_modes=25, high_quality=0.5,
                    mode_tv=0.1, train_seconds=seconds, steps=1000, batch_size=256)
    agree = compare.toy_table([row(0, 25), row(1, 25, 5.0)]).iloc[0]
    assert agree["modes covered"] == "25 of 25" and agree["training time (s)"] == "4.5"
    differ = compare.toy_table([row(0, 20), row(1, 18), row(2, 21)]).iloc[0]
    assert differ["modes covered"] == "18–21 of 25"  # no mean that no seed reached
    # the budget and the number of seeds are the same in every row: the text states them
    assert list(differ.index) == ["modes covered", "high-quality share", "imbalance (TV)", "training time (s)"]


def test_mode_table_has_one_row_per_mixture_and_kind_of_points():
    ring, grid = (data.load_dataset(n, split="test") for n in ("ring", "grid"))
    held = {m: compare.mode_stats(d.x, d.modes, d.mode_std) for m, d in [("ring", ring), ("grid", grid)]}
    floor = {m: compare.uniform_floor(d.modes, d.mode_std) for m, d in [("ring", ring), ("grid", grid)]}
    table = compare.mode_table({"held-out data": held, "uniform cloud": floor})
    assert list(table.index) == [("ring", "held-out data"), ("ring", "uniform cloud"),
                                 ("grid", "held-out data"), ("grid", "uniform cloud")]
    assert table.loc[("grid", "held-out data"), "modes covered"] == "25 of 25"
    assert table.loc[("ring", "uniform cloud"), "high-quality share"] == f"{floor['ring'].high_quality:.1%}"


def test_toy_ddpm_variant_differs_from_the_ddpm_in_its_network_only(tmp_path, monkeypatch):
    """"ddpm-fourier" trains with the DDPM's budget and settings, its own cache entry, and a network
    with Fourier features of its input; toy_study and toy_table take it like a family."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDPM_WORKERS", "1")
    monkeypatch.setattr(compare, "TOY_BUDGET", {f: {"steps": 4, "batch_size": 16, "lr": None} for f in compare.FAMILIES})
    assert not compare._toy_cached("ddpm-fourier", "ring", 0)
    plain, fourier = (compare.train_toy(f, "ring", 0, progress=False) for f in ("ddpm", "ddpm-fourier"))
    assert compare._toy_cached("ddpm-fourier", "ring", 0) and fourier.steps == plain.steps == 4
    assert plain.model.ema.config["fourier_features"] == 0 and fourier.model.ema.config["fourier_features"] == 3
    diff = {k for k, v in fourier.model.config.to_dict().items() if plain.model.config.to_dict()[k] != v}
    assert diff == {"preset"} and fourier.model.config.preset == "toy-mlp-fourier"
    rows = compare.toy_study(["ring"], families=["ddpm-fourier"], seeds=[0], n_samples=20, ddpm_steps=5, progress=False)
    assert rows[0]["family"] == "ddpm-fourier" and rows[0]["samples"].shape == (20, 2)
    assert compare.toy_table(rows).index[0] == ("ring", "DDPM, Fourier features")
    with pytest.raises(ValueError, match="ddpm-fourier"):
        compare.train_toy("ddpm-wavelet", "ring", 0)


def test_image_table_leaves_cells_blank_where_a_row_has_no_training():
    from types import SimpleNamespace

    e = SimpleNamespace(fid=12.345, is_mean=3.21, kid_mean=0.0123, kid_std=0.002)
    table = compare.image_table([
        dict(model="DDPM", eval=e, bpd={"bpd": 2.0, "bpd_se": 0.1}, train_seconds=270.55, updates="700 x 32",
             sample_seconds=0.1, sampler="50 ancestral steps"),
        dict(model="noise", eval=SimpleNamespace(fid=1207.7, is_mean=1.0, kid_mean=1615.4815, kid_std=1.992))])
    assert table.loc["noise", "KID × 10³ ↓"] == "1,615,482 ± 1,992"  # not 1615481.5 ± 1992.0
    assert table.loc["DDPM", "training time (s)"] == "270.6" and table.loc["DDPM", "ms per sample"] == "100.00"
    assert table.loc["DDPM", "bits/dim (test)"] == "2.00 ± 0.10" and table.loc["DDPM", "KID × 10³ ↓"] == "12.3 ± 2.0"
    assert table.loc["DDPM", "FID ↓"] == 12.3 and table.loc["DDPM", "IS ↑"] == 3.21  # FID to one decimal
    assert table.loc["noise", "training time (s)"] == "" and table.loc["noise", "ms per sample"] == ""
    assert table.loc["noise", "bits/dim (test)"] == "" and not table.isna().any().any()  # no model, no likelihood


def test_image_study_uses_chapter_6s_ddpm_stopped_early():
    from ddpm_core import train

    config = compare.image_config()
    full = train.book_config("mnist5k")
    assert config.steps == compare.IMAGE_STEPS < full.steps
    assert config.replace(steps=full.steps) == full  # the same run, stopped earlier


def test_image_table_shows_seed_means_and_seed_table_their_range():
    from types import SimpleNamespace

    evals = [SimpleNamespace(fid=f, is_mean=2.0 + f / 10, kid_mean=f / 1000, kid_std=0.001) for f in (10.0, 14.0, 12.0)]
    bpds = [{"bpd": b, "bpd_se": 0.1} for b in (1.5, 1.7, 1.6)]
    rows = [dict(model="GAN", eval=evals, bpd=[{"bpd": None}] * 3, train_seconds=[40.0, 44.0, 42.0],
                 updates="1,000 x 32", sample_seconds=0.001, sampler="one pass"),
            dict(model="VAE", eval=evals, bpd=bpds, train_seconds=[40.0, 44.0, 42.0], updates="1,000 x 32"),
            dict(model="DDPM", eval=evals[:1], bpd=bpds[:1], train_seconds=[100.0], updates="1,000 x 32")]
    table = compare.image_table(rows)
    assert table.loc["GAN", "FID ↓"] == 12.0 and table.loc["GAN", "KID × 10³ ↓"] == "12.0" and table.loc["GAN", "IS ↑"] == 3.2
    assert table.loc["VAE", "bits/dim (test)"] == "1.60" and table.loc["GAN", "bits/dim (test)"] == "none"
    assert table.loc["GAN", "training time (s)"] == "42.0" and table.loc["GAN", "seeds"] == 3 and table.loc["DDPM", "seeds"] == 1
    assert table.loc["DDPM", "KID × 10³ ↓"] == "10.0 ± 1.0" and table.loc["DDPM", "bits/dim (test)"] == "1.50 ± 0.10"
    seeds = compare.seed_table(rows)
    assert list(seeds.index) == ["GAN", "VAE"]  # the DDPM has one run
    assert seeds.loc["VAE", "FID min"] == 10.0 and seeds.loc["VAE", "FID max"] == 14.0
    worse = [SimpleNamespace(fid=f, is_mean=2.0, kid_mean=0.01, kid_std=0.001) for f in (22.949, 26.26)]
    spread = compare.seed_table([dict(model="GAN", eval=worse, bpd=[{"bpd": None}] * 2)])
    assert (spread.loc["GAN", "FID min"], spread.loc["GAN", "FID max"]) == (22.9, 26.3)  # as the text rounds
    assert seeds.loc["VAE", "KID × 10³ max"] == 14.0 and seeds.loc["VAE", "bits/dim min"] == 1.5
    kid = [SimpleNamespace(fid=10.0, is_mean=2.0, kid_mean=k, kid_std=0.001) for k in (0.22981, 0.31049)]
    one_decimal = compare.seed_table([dict(model="GAN", eval=kid, bpd=[{"bpd": None}] * 2)])
    assert (one_decimal.loc["GAN", "KID × 10³ min"], one_decimal.loc["GAN", "KID × 10³ max"]) == (229.8, 310.5)
    assert seeds.loc["GAN", "bits/dim min"] == "none" and not seeds.isna().any().any()  # as image_table says it


def test_image_models_trains_every_seed_side_by_side_and_then_loads_them(tmp_path, monkeypatch):
    """The image study's models come from worker processes the first time (DDPM_WORKERS=2) and from
    the cache afterwards: the same weights, one distinct model per seed, for the DDPM too (whose
    seed-0 run is the configuration's own, the one chapter 6 continues)."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDPM_WORKERS", "2")
    config = compare.image_config(steps=3).replace(checkpoint_every=3, log_every=1)
    ddpms, runs = compare.image_models(config, seeds=(0, 1), families=("gan", "vae"), progress=False)
    assert [r.step for r in ddpms] == [3, 3] and [r.config.seed for r in ddpms] == [0, 1]
    assert ddpms[0].config == config and train.is_cached(config)
    assert not torch.equal(next(iter(ddpms[0].ema.state_dict().values())), next(iter(ddpms[1].ema.state_dict().values())))
    assert sorted(runs) == ["gan", "vae"] and all(len(ms) == 2 for ms in runs.values())
    for fam in ("gan", "vae"):
        for seed in (0, 1):
            assert compare.baseline_path(fam, "mnist5k", 3, seed, batch_size=config.batch_size).is_file()
        first = [next(iter(m.state_dict().values())) for m in runs[fam]]
        assert not torch.equal(first[0], first[1]), fam  # two seeds, two models
    monkeypatch.setenv("DDPM_WORKERS", "1")
    again_ddpms, again = compare.image_models(config, seeds=(0, 1), families=("gan", "vae"), progress=False)
    for fam in ("gan", "vae"):
        for m, n in zip(runs[fam], again[fam]):
            assert all(torch.equal(p, q) for p, q in zip(m.state_dict().values(), n.state_dict().values()))
    for r, r_again in zip(ddpms, again_ddpms):
        assert all(torch.equal(p, q) for p, q in zip(r.ema.state_dict().values(), r_again.ema.state_dict().values()))


def test_toy_ddpm_samples_with_respaced_steps_when_asked(tmp_path, monkeypatch):
    """ToyRun.sample: all T steps by default, ``steps`` respaced ones when given (toy_study's
    TOY_SAMPLE_STEPS), which is a different, shorter chain."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDPM_WORKERS", "1")
    run = compare.train_toy("ddpm", "ring", 0, steps=3, batch_size=16, progress=False)
    calls = []
    real = run.model.ema.forward
    monkeypatch.setattr(run.model.ema, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    full = run.sample(5, torch.Generator().manual_seed(0))
    n_full = len(calls)
    short = run.sample(5, torch.Generator().manual_seed(0), steps=10)
    assert n_full == run.model.diffusion.num_timesteps and len(calls) - n_full == 10
    assert full.shape == short.shape == (5, 2) and not torch.equal(full, short)
    assert 0 < compare.TOY_SAMPLE_STEPS < run.model.diffusion.num_timesteps


def test_image_study_measures_every_family_alike_and_round_trips_through_its_files(tmp_path, monkeypatch):
    """compare.image_study on the 8x8 digits with a tiny budget: every family and seed is scored with
    the same extractor and number of samples; save + load keep every number and the first samples
    (as 8-bit images), and the tables come out the same."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDPM_WORKERS", "1")
    config = train.book_config("digits", steps=2, log_every=1, checkpoint_every=2)
    study = compare.image_study(config, seeds=(0, 1), n_eval=10, sample_steps=3, n_bpd=2, progress=False)
    assert study.dataset == "digits" and study.config["steps"] == 2 and study.seeds == [0, 1]
    assert sorted(study.evals) == sorted(compare.FAMILIES) and all(len(v) == 2 for v in study.evals.values())
    assert {e.extractor for es in study.evals.values() for e in es} == {study.extractor}
    assert all(e.n_samples == 10 and e.samples.shape == (10, 1, 8, 8) for es in study.evals.values() for e in es)
    assert study.evals["ddpm"][0].steps == 3 and len(study.ddpms) == 2
    assert all(b["bpd"] is None for b in study.bpd["gan"])
    assert all(0 < b["bpd"] < 20 for f in ("vae", "flow", "ddpm") for b in study.bpd[f])
    assert study.bpd["ddpm"][0]["method"].startswith("exact") and study.bpd["ddpm"][0]["n"] == 2
    assert set(study.gan_losses) == {"loss_d", "loss_g"} and study.machine["device"] == "cpu"
    assert sorted(study.stat("bpd")) == ["ddpm", "flow", "vae"] and study.stat("fid")["gan"]["n"] == 2

    path = study.save(tmp_path / "study")
    assert path == tmp_path / "study.json" and (tmp_path / "study.npz").is_file()
    back = compare.ImageStudy.load(tmp_path / "study")
    assert back.ddpms is None and back.runs is None
    for f in compare.FAMILIES:
        for e, b in zip(study.evals[f], back.evals[f]):
            assert (b.fid, b.kid_mean, b.is_mean, b.seconds) == (e.fid, e.kid_mean, e.is_mean, e.seconds)
            assert (b.samples - e.samples).abs().max() <= 0.5 / 127.5 + 1e-6  # kept as 8-bit images
        assert [x["bpd"] for x in back.bpd[f]] == [x["bpd"] for x in study.bpd[f]]
    assert back.refs["noise"].fid == study.refs["noise"].fid
    assert compare.image_table(back.rows()).equals(compare.image_table(study.rows()))
    about = back.describe()
    assert about["budget of every model"] == "2 updates × 64 images" and about["samples scored per model"] == 10
    assert about["model sizes"] == "cpu profile" and "cores" in about["measured on"] and about["date"][:2] == "20"
    assert compare.seed_table(back.rows()).equals(compare.seed_table(study.rows()))
    monkeypatch.setenv("DDPM_PROFILE", "cpu")  # the chapter's colour section: the saved run, or None
    shown = compare.book_colour_study(path=tmp_path / "study")
    assert shown.evals["ddpm"][0].fid == study.evals["ddpm"][0].fid
    assert compare.book_colour_study(path=tmp_path / "nothing") is None

    with pytest.raises(FileNotFoundError, match="compare.image_study"):
        compare.ImageStudy.load(tmp_path / "nothing")
    (tmp_path / "bad.json").write_text('{"schema": "something else"}')
    (tmp_path / "bad.npz").write_bytes((tmp_path / "study.npz").read_bytes())
    with pytest.raises(ValueError, match="not a saved image study"):
        compare.ImageStudy.load(tmp_path / "bad.json")


def test_colour_study_configuration_is_the_crop_data_with_a_colour_u_net():
    """book_config("photo-crops"): 3x32x32 colour crops, a network of that shape, and evaluation
    settings the crops allow (no more samples than test crops)."""
    config = train.book_config("photo-crops")
    test = data.load_dataset("photo-crops", "test")
    net = train.build_network(config)
    x = test.x[:2]
    assert x.shape[1:] == (3, 32, 32) and net(x, torch.tensor([0, 999])).shape == x.shape
    assert compare.COLOUR_EVAL["n_eval"] <= len(test.x) and compare.COLOUR_EVAL["n_bpd"] <= len(test.x)
    assert config.cuda_graph and not config.compile and test.num_classes == len(data.PHOTOS)
    with pytest.raises(FileNotFoundError):
        compare.load_colour_study(Path("/nonexistent/colour_study"))


def test_colour_study_runs_end_to_end_on_colour_crops(tmp_path, monkeypatch):
    """The GPU profile's colour study, shrunk to seconds on the CPU (2 updates of 8 crops, T = 50):
    every family trains on 3x32x32 crops and is scored with the crop classifier's features."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    monkeypatch.setenv("DDPM_WORKERS", "1")
    study = compare.colour_study(steps=2, batch_size=8, T=50, log_every=1, checkpoint_every=2, cuda_graph=False,
                                 seeds=(0,), n_eval=8, sample_steps=3, n_bpd=2, progress=False)
    assert study.dataset == "photo-crops" and study.config["T"] == 50 and study.seeds == [0]
    assert "photo-crops" in study.extractor and (study.n_eval, study.sample_steps, study.n_bpd) == (8, 3, 2)
    for f in compare.FAMILIES:
        (e,) = study.evals[f]
        assert e.samples.shape == (8, 3, 32, 32) and math.isfinite(e.fid) and e.extractor == study.extractor
    assert all(0 < b["bpd"] < 20 for f in ("vae", "flow", "ddpm") for b in study.bpd[f])
    assert study.refs["test"].samples.shape == (8, 3, 32, 32)
