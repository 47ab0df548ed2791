"""Tests written by a mutation audit of denoise, segmentation, paper, features, viz, bench and the
CLI: each one kills a realistic bug that the other tests let through (see /tmp/review/mutation_rest.md).
Every check is against an independent computation or an exact invariant."""
import math
import re
import statistics
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpm_core import denoise, diffusion, features, paper, sampling, schedules, segmentation, viz


def _proc(schedule="linear", T=1000):
    return diffusion.GaussianDiffusion(schedules.get_betas(schedule, T))


# ---------------------------------------------------------------------------------------- denoise
def test_add_noise_adds_sigma_times_the_generators_normal_draws():
    """y - x0 is exactly sigma * eps on the [-1, 1] scale (not 2 sigma, not sigma / 2)."""
    x0 = torch.rand(3, 2, 5, 4, dtype=torch.float64) * 2 - 1
    y = denoise.add_noise(x0, 0.3, torch.Generator().manual_seed(7))
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(y - x0, 0.3 * eps, atol=1e-12)


def test_step_for_sigma_is_nearest_in_log_sigma():
    """Between steps 0 and 1 of the linear schedule, a sigma above their geometric mean but below
    their arithmetic mean belongs to step 1 in log scale (step 0 if matched linearly)."""
    d = _proc()
    ab = np.cumprod(1.0 - schedules.get_betas("linear", 1000).double().numpy())
    sig = np.sqrt((1.0 - ab) / ab)
    geo, arith = math.sqrt(sig[0] * sig[1]), 0.5 * (sig[0] + sig[1])
    assert geo < arith
    sigma = 0.5 * (geo + arith)
    expected = int(np.argmin(np.abs(np.log(sig) - math.log(sigma))))
    assert expected == 1 and int(np.argmin(np.abs(sig - sigma))) == 0
    assert denoise.step_for_sigma(d, sigma) == expected


def test_truncate_keeps_the_first_model_indices_of_a_respaced_process():
    """truncate(d, t) of a respaced process keeps its steps 0..t and their original model indices."""
    d = sampling.respace(_proc("linear", 100), 10)
    p = denoise.truncate(d, 3)
    assert torch.equal(p.timestep_map, d.timestep_map[:4])
    assert torch.allclose(p.alpha_bar, d.alpha_bar[:4], rtol=1e-12, atol=0)


def test_benchmark_tunes_the_blur_on_the_tuning_images_only(monkeypatch):
    """benchmark() tunes the blur width on x0_tune (never on the scored images x0)."""
    d, s = _proc("linear", 100), 0.3
    gen = torch.Generator().manual_seed(5)
    x0 = (s * torch.randn(4, 1, 8, 8, generator=gen)).clamp(-1, 1)
    x0_tune = (s * torch.randn(4, 1, 8, 8, generator=gen)).clamp(-1, 1)
    seen, tune = [], denoise.tune_blur_width
    monkeypatch.setattr(denoise, "tune_blur_width", lambda y, ref, *a, **k: (seen.append(ref), tune(y, ref, *a, **k))[1])

    def oracle(x_t, t):
        ab = d.alpha_bar.to(x_t.dtype)[t].view(-1, 1, 1, 1)
        return torch.sqrt(1 - ab) * x_t / (ab * s ** 2 + 1 - ab)
    denoise.benchmark(oracle, d, x0, x0_tune, [0.4], seed=0, chain_steps=3)
    assert len(seen) == 1 and torch.equal(seen[0], x0_tune)


# ----------------------------------------------------------------------------------- segmentation
def test_center_crop_takes_the_central_window():
    """center_crop of a 7x8 map to 3x4 is rows 2..4 and columns 2..5 (numpy slicing)."""
    x = torch.arange(2 * 7 * 8).view(1, 2, 7, 8)
    out = segmentation.center_crop(x, (3, 4))
    assert np.array_equal(out.numpy(), x.numpy()[..., 2:5, 2:6])


def test_test_split_has_its_own_scratches_from_seed_plus_one(monkeypatch):
    """The test split's scratches are drawn from seed + 1, so they differ from the train split's
    (the digits are replaced by blank images: only the seeding is under test)."""
    from ddpm_core import data
    monkeypatch.setattr(data, "load_dataset", lambda name, split, max_images=None:
                        types.SimpleNamespace(x=-torch.ones(max_images, 1, 28, 28)))
    n = 6
    train = segmentation.scratched_digits("train", n=n)
    test = segmentation.scratched_digits("test", n=n)
    g = torch.Generator().manual_seed(segmentation.SEED + 1)
    assert torch.equal(test.scratches, segmentation.draw_scratches(n, 28, 3, g))
    assert not torch.equal(test.scratches, train.scratches)


# ------------------------------------------------------------------------------------------ paper
def test_render_table_legend_lists_only_the_marks_of_the_rows_shown():
    """A filtered render_table explains only the marks of its own rows."""
    shown = paper.render_table("nichol2021_nll", model="DDPM")
    assert [r["mark"] for r in paper.table("nichol2021_nll", model="DDPM")] == ["S"]
    assert "S, from agreeing transcriptions" in shown.html and "U, often cited" not in shown.html


def test_setting_returns_the_value_of_the_named_row():
    """setting(name, key) is the 'value' of the row whose 'setting' is key, for every row."""
    for r in paper.table("ho2020_settings"):
        assert paper.setting("ho2020_settings", r["setting"]) == r["value"], r["setting"]


# --------------------------------------------------------------------------------------- features
def test_inception_weights_in_the_hub_cache_come_before_the_project_cache(tmp_path, monkeypatch):
    """With the file in both caches, the torch hub copy is found first (documented order)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    cache = tmp_path / "cache"
    for folder in (hub, cache):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / features.INCEPTION_FILE).write_bytes(b"x")
    assert features.find_inception_weights(download=False) == hub / features.INCEPTION_FILE


# -------------------------------------------------------------------------------------------- viz
def test_to_uint8_inverts_the_uint8_to_float_map_for_every_level():
    """Every uint8 level v, mapped to v / 127.5 - 1, comes back as v (so the scale is 127.5)."""
    v = np.arange(256)
    x = torch.from_numpy(v / 127.5 - 1.0).view(1, 1, 16, 16)
    assert np.array_equal(viz.to_uint8(x)[0, ..., 0].reshape(-1), v)


def test_image_grid_pad_value_is_on_the_image_scale():
    """pad_value is in [-1, 1]: 0 gives the grey 128, 0.5 gives round(191.25) = 191."""
    x = -torch.ones(2, 1, 3, 3)
    for pad_value, fill in [(0.0, 128), (0.5, 191)]:
        g = viz.image_grid(x, nrow=2, padding=1, pad_value=pad_value)
        assert (g[0] == fill).all() and (g[1:4, 1:4] == 0).all()


# ------------------------------------------------------------------------------------------ bench
def test_bench_case_ratios_and_mfu_follow_from_the_timings(monkeypatch):
    """ratio, ratio_cpu_time, ratio_paired and MFU of a case, recomputed from planted timings
    (time_alternating replaced by fixed per-round times; the peak patched to 1e12 FLOP/s)."""
    pytest.importorskip("diffusers")
    from ddpm_core import bench
    rounds = {"ddpm_core": ([1.0, 2.0, 4.0], [3.0, 3.0, 3.0]), "diffusers": ([2.0, 3.0, 5.0], [6.0, 6.0, 6.0])}

    def planted(steps, device, repeats=5, inner=1, warmup=2):
        out = {}
        for i, name in enumerate(steps):
            wall, cpu = rounds.get(name, ([1.0 + i] * 3, [1.0 + i] * 3))
            out[name] = dict(wall_s=wall, cpu_s=cpu, step_s=statistics.median(wall),
                             cpu_step_s=statistics.median(cpu), warmup_s=0.0)
        return out
    monkeypatch.setattr(bench, "time_alternating", planted)
    monkeypatch.setattr(bench, "bf16_peak", lambda device: 1e12)
    case = bench.bench_case("cpu-digits", 2, "sampling", torch.device("cpu"), compile_ok=False,
                            overrides=dict(base_channels=16, norm_groups=4))
    v = case["variants"]
    assert case["ratio"] == pytest.approx(3.0 / 2.0)  # images/s of ddpm_core over diffusers: median steps 2 s, 3 s
    assert case["ratio_cpu_time"] == pytest.approx(6.0 / 3.0)
    assert case["ratio_paired"] == pytest.approx(statistics.median([2.0, 1.5, 1.25]))
    for r in v.values():
        assert r["flops_per_step"] > 0 and r["mfu"] == pytest.approx(r["flops_per_step"] / r["step_s"] / 1e12)


def test_bf16_peak_matches_the_most_specific_device_name(monkeypatch):
    """An H100 PCIe gets its own peak (756 TFLOP/s), not the SXM one; an A10G is not an A10."""
    from ddpm_core import bench
    for name, peak in [("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
                       ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A10G", 70e12), ("NVIDIA A10", 125e12)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert bench.bf16_peak(torch.device("cuda")) == peak, name


def test_machine_info_names_the_cpu_model():
    """machine_info's cpu is the 'model name' of /proc/cpuinfo (not the numeric 'model' line)."""
    from ddpm_core import bench
    info = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.*)$", info.read_text(), re.M) if info.exists() else []
    if not names:
        pytest.skip("no 'model name' in /proc/cpuinfo")
    assert bench.machine_info(torch.device("cpu"))["cpu"] == names[0].strip()


# -------------------------------------------------------------------------------------------- CLI
def _fake_run(monkeypatch, tmp_path):
    """A loaded run with a tiny process (cosine, T = 12) and two different networks (EMA and last)."""
    from ddpm_core import __main__ as cli
    from ddpm_core import train as tr
    d = diffusion.GaussianDiffusion(schedules.get_betas("cosine", 12))
    run = types.SimpleNamespace(model=lambda x, t: 0.5 * x, ema=lambda x, t: torch.zeros_like(x), diffusion=d,
                                sample_shape=(1, 4, 4), step=7)
    monkeypatch.setattr(tr, "load_checkpoint", lambda path, map_location=None: run)
    saved = []
    monkeypatch.setattr(cli, "save_samples", lambda x, path, nrow=None: saved.append(x))

    def sample(*extra):
        saved.clear()
        assert cli.main(["sample", "--checkpoint", "x.pt", "--n", "3", "--out", str(tmp_path / "s.png"),
                         "--device", "cpu", "--no-progress", *extra]) == 0
        return saved[0]
    return run, d, sample


def test_cli_sample_uses_seed_steps_and_ema(monkeypatch, tmp_path):
    """CLI samples equal ddpm_sample with the EMA network (last weights with --no-ema), the
    respaced process of --steps, and a generator seeded with --seed."""
    run, d, sample = _fake_run(monkeypatch, tmp_path)

    def expected(model, process, seed):
        return sampling.ddpm_sample(model, process, (3, 1, 4, 4), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(sample("--seed", "5"), expected(run.ema, d, 5))
    assert not torch.equal(sample("--seed", "5"), sample("--seed", "6"))
    assert torch.equal(sample("--steps", "4", "--seed", "2"), expected(run.ema, sampling.respace(d, 4), 2))
    assert torch.equal(sample("--no-ema", "--seed", "3"), expected(run.model, d, 3))


def test_save_samples_maps_minus_one_to_one_onto_0_to_255(tmp_path):
    """A saved PNG holds round((x + 1) * 127.5) of the [-1, 1] samples (checked by reading it with PIL)."""
    from PIL import Image
    from ddpm_core.__main__ import save_samples
    vals = torch.tensor([-1.0, -0.6, 0.0, 0.5, 1.0, 0.9])
    x = vals.view(1, 1, 2, 3).expand(1, 3, 2, 3)
    save_samples(x, tmp_path / "one.png")
    got = np.asarray(Image.open(tmp_path / "one.png").convert("RGB"))[..., 0]
    assert np.array_equal(got.reshape(-1), np.rint((vals.numpy() + 1) * 127.5).astype(np.uint8))
