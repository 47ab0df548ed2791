"""Tests of ddpm_core.bench: the diffusers twin of every preset, the end-to-end benchmark on a tiny
configuration (table and JSON), and the strided bits/dim estimate."""
import json
import re
import statistics
from pathlib import Path

import pytest
import torch

from ddpm_core import bench, diffusion, schedules, unet
from ddpm_core.unet import PRESETS, UNet

diffusers = pytest.importorskip("diffusers")

TINY = dict(base_channels=16, norm_groups=4)  # cpu-digits, narrower: a benchmark run in seconds


@pytest.mark.parametrize("preset", sorted(set(PRESETS) - {"ddpm-cifar10", "iddpm-cifar10"}))
def test_diffusers_twin_of_each_small_preset_has_the_same_configuration_and_parameter_count(preset):
    ours, theirs = bench.build_pair(preset)
    assert unet.count_parameters(ours) == unet.count_parameters(theirs)
    # reading the twin's configuration back gives the preset (diffusers' models start from PyTorch's init)
    back = unet._config_from_diffusers(theirs.config, ours.config["learn_sigma"])
    assert {**back, "init": ours.config["init"]} == ours.config


def test_diffusers_twin_of_the_improved_ddpm_design_computes_the_same_function():
    torch.manual_seed(0)
    ours, theirs = bench.build_pair("cpu-digits", num_heads=2, time_embedding="iddpm", downsample_padding="symmetric",
                                    use_scale_shift_norm=True, learn_sigma=True, norm_eps=1e-5)
    assert theirs.config.resnet_time_scale_shift == "scale_shift" and theirs.config.out_channels == 2
    with torch.no_grad():
        for p in theirs.parameters():  # move every weight away from zero so all paths carry signal
            p.add_(0.05 * torch.randn_like(p))
    ours.load_state_dict(UNet.from_diffusers(theirs, learn_sigma=True).state_dict())
    x_t, t = torch.randn(3, 1, 8, 8), torch.tensor([0, 500, 999])
    with torch.no_grad():
        diff = (ours.eval()(x_t, t) - theirs.eval()(x_t, t).sample).abs().max().item()
    assert diff < 1e-5


def test_the_paper_preset_twin_is_the_released_google_ddpm_cifar10_32_configuration():
    assert bench.diffusers_config(UNet.from_preset("ddpm-cifar10").config) == {
        **unet.DDPM_CIFAR10_DIFFUSERS_CONFIG, "dropout": 0.1}


def test_alternating_timer_reports_medians_of_each_function():
    calls = []
    result = bench.time_alternating({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                    torch.device("cpu"), repeats=3, inner=2, warmup=1)
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3  # warm-up, then rounds in alternation
    for r in result.values():
        assert len(r["wall_s"]) == 3 and r["step_s"] == sorted(r["wall_s"])[1] and r["warmup_s"] >= 0


def test_benchmark_runs_end_to_end_on_a_tiny_config_and_writes_valid_json(tmp_path):
    out = tmp_path / "bench.json"
    torch.manual_seed(0)
    result = bench.run("cpu", cases=[("cpu-digits", 4, TINY)], repeats=2, warmup=1, settings=False,
                       evaluation=False, progress=False, partial=out)
    saved = json.loads(out.read_text())  # written after each case
    assert saved["schema"] == bench.SCHEMA and len(saved["training"]) == len(saved["sampling"]) == 1
    m = result["machine"]
    assert m["device"] == "cpu" and m["date"][:2] == "20" and len(m["load_average"]) == 3 and m["torch"]
    assert result["gpu"].startswith("not measured")
    for kind in ("training", "sampling"):
        case = result[kind][0]
        assert case["preset"] == "cpu-digits" and case["batch"] == 4 and case["precision"] == "fp32"
        v = case["variants"]
        assert {"ddpm_core", "ddpm_core-nchw", "diffusers", "diffusers-cl"} <= set(v)
        for r in v.values():
            assert r["images_per_s"] == pytest.approx(4 / r["step_s"]) and r["step_s"] > 0 and r["cpu_step_s"] > 0
            assert r["mfu"] is None and r["memory"] is None  # CUDA only
        assert v["ddpm_core"]["channels_last"] and not v["diffusers"]["channels_last"] and v["diffusers-cl"]["channels_last"]
        assert case["ratio"] == pytest.approx(v["ddpm_core"]["images_per_s"] / v["diffusers"]["images_per_s"])
        # the same network: the FLOP counter sees the same work in both libraries
        assert v["ddpm_core"]["flops_per_step"] > 0
        assert v["ddpm_core"]["flops_per_step"] == pytest.approx(v["diffusers"]["flops_per_step"], rel=0.02)
    # a training step (forward + backward) counts about three forward passes
    ratio = result["training"][0]["variants"]["ddpm_core"]["flops_per_step"] / \
        result["sampling"][0]["variants"]["ddpm_core"]["flops_per_step"]
    assert 2.5 < ratio < 3.5
    table = bench.format_table(result)
    assert "ddpm_core / diffusers" in table and "cpu-digits" in table and m["date"] in table
    rows = bench.summary_rows(result)
    assert [r["kind"] for r in rows] == ["training", "sampling"] and rows[0]["ratio"] == result["training"][0]["ratio"]
    html = bench.summary_html(rows, bench.machine_text(result))
    assert html.count("<tr><td>") == 2  # a row per kind
    # every variant: grouped by kind, the package's first, names that may wrap after + and -
    variants = bench.variants_html(result)
    heads = re.findall(r"<th><code>(.*?)</code></th>", variants)
    assert heads == ["ddpm_core", "ddpm_core-<wbr>nchw", "diffusers", "diffusers-<wbr>cl"], heads
    assert variants.count('<th colspan="5">') == 2 and _body_widths(variants) == {5}
    assert 'class="ddpm-table"' in html and m["date"][:10] in html and "cores" in html  # caption: where and when


def test_strided_bpd_with_stride_one_is_the_exact_bound_and_larger_strides_estimate_it():
    torch.manual_seed(0)
    net = UNet.from_preset("cpu-digits", **TINY).eval()
    with torch.no_grad():
        net.conv_out.weight.normal_(0, 0.01)  # a non-zero prediction
    d = diffusion.GaussianDiffusion(schedules.get_betas("linear", 40))
    x0 = torch.rand(3, 1, 8, 8) * 2 - 1
    exact = d.bpd(net, x0, noise_generator=torch.Generator().manual_seed(1))["total_bpd"]
    same = bench.strided_bpd(d, net, x0, 1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(same, exact, rtol=1e-5, atol=1e-6)
    # with every step exact the blocks are gone: the exact bound again
    torch.testing.assert_close(bench.strided_bpd(d, net, x0, 4, torch.Generator().manual_seed(1), exact_steps=40),
                               exact, rtol=1e-5, atol=1e-6)
    estimate = bench.strided_bpd(d, net, x0, 4, torch.Generator().manual_seed(2))
    assert not torch.allclose(estimate, exact)  # an estimate, from 18 calls instead of 40
    assert bench.strided_bpd_calls(40, 4) == 18 and bench.strided_bpd_calls(40, 1) == 40
    # unbiased: the means of independent estimates and of exact bounds (each with its own noise) agree
    # within three standard errors (the last step of each block instead lands 15 errors low)
    exacts = torch.stack([d.bpd(net, x0, noise_generator=torch.Generator().manual_seed(100 + s))["total_bpd"].mean()
                          for s in range(6)])
    strided = torch.stack([bench.strided_bpd(d, net, x0, 4, torch.Generator().manual_seed(s)).mean() for s in range(24)])
    se = (exacts.var() / len(exacts) + strided.var() / len(strided)).sqrt()
    assert (strided.mean() - exacts.mean()).abs() < 3 * se
    # each image draws its own steps: the spread over images holds the noise of the draw, so the
    # standard error of one estimate's mean covers the exact bound (here: within four of them)
    seen = []

    def recording(x, t):
        seen.append(t.clone())
        return net(x, t)

    x_many = torch.rand(64, 1, 8, 8) * 2 - 1
    bench.strided_bpd(d, recording, x_many, 4, torch.Generator().manual_seed(6))
    assert len(seen) == 18 and all(len(t.unique()) == 1 for t in seen[-10:])  # the first 10 steps: exact
    assert all(len(t.unique()) > 1 for t in seen[:-10])  # every block: the images draw their own steps
    # and over 64 images every step of each block is drawn, none outside it (blocks from T-1 down)
    blocks = list(range(10, 40, 4))[::-1]
    assert [set(t.tolist()) for t in seen[:-10]] == [set(range(b, min(b + 4, 40))) for b in blocks]
    exact_many = d.bpd(net, x_many, noise_generator=torch.Generator().manual_seed(5))["total_bpd"]
    one = bench.strided_bpd(d, net, x_many, 4, torch.Generator().manual_seed(6))
    assert (one.mean() - exact_many.mean()).abs() < 4 * one.std() / 8
    with pytest.raises(ValueError, match="stride"):
        bench.strided_bpd(d, net, x0, 0)
    with pytest.raises(ValueError, match="exact_steps"):
        bench.strided_bpd(d, net, x0, 4, exact_steps=0)


def test_evaluation_cost_reports_exact_and_strided_bpd_and_feature_batches():
    from ddpm_core import features

    torch.manual_seed(0)
    extractor = features.ClassifierExtractor(features.SmallClassifier(1, 28, 10), "random classifier", None,
                                             device="cpu")
    model = UNet.from_preset("cpu-digits", **TINY)
    out = bench.bench_evaluation(torch.device("cpu"), strides=(5,), extractor=extractor, feature_images=40,
                                 model=model, images=torch.rand(2, 1, 8, 8) * 2 - 1, T=30)
    b, f = out["bpd"], out["features"]
    assert b["exact"]["calls"] == 30 and b["strided"][0]["calls"] == 10 + len(range(10, 30, 5)) == 14
    assert b["exact"]["bpd"] > 0 and b["strided"][0]["speedup"] > 0
    assert [x["batch_size"] for x in f["batches"]] == [1, 32, 256] and f["speedup"] > 0


def test_saved_results_of_an_installed_copy_come_from_the_repository(tmp_path, monkeypatch):
    """Colab installs the package without benchmarks/: saved_results then downloads the saved runs
    of the book's repository into the cache (here from a fake GitHub), and finds none offline."""
    import io
    import urllib.request

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "_config.yml").read_text())
    assert bench.REPOSITORY == config["repository"]["url"].rstrip("/")
    saved = json.dumps({"schema": bench.SCHEMA, "machine": {"date": "2026-01-02T00:00:00"}}).encode()
    api = "https://api.github.com/repos/ddpm-book/ddpm-book/contents/benchmarks"
    files = {api: json.dumps([{"name": "cpu-2026-01-02.json", "download_url": "https://raw/cpu-2026-01-02.json"},
                              {"name": "gpu-2026-01-02.json", "download_url": "https://raw/gpu-2026-01-02.json"},
                              {"name": "README.md", "download_url": "https://raw/README.md"}]).encode(),
             "https://raw/cpu-2026-01-02.json": saved}
    asked = []

    def fake_urlopen(url, timeout=None):
        asked.append(url)
        if url not in files:
            raise OSError(f"no route to {url}")
        return io.BytesIO(files[url])

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    monkeypatch.setattr(bench, "__file__", str(tmp_path / "site" / "ddpm_core" / "bench.py"))  # no benchmarks/ beside it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    results = bench.saved_results("cpu")
    assert [p.name for p, _ in results] == ["cpu-2026-01-02.json"] and results[0][1]["schema"] == bench.SCHEMA
    assert (tmp_path / "cache" / "benchmarks" / "cpu-2026-01-02.json").read_bytes() == saved
    asked.clear()
    assert len(bench.saved_results("cpu")) == 1 and not asked  # cached: no second download
    assert bench.saved_results("gpu") == []                    # the listed file cannot be fetched: none, no error
    files.clear()
    assert bench.download_saved_results("cpu", tmp_path) == 0   # offline


def test_target_case_is_the_newest_saved_run_of_the_targets_network_and_batch():
    def result(date, cases):
        mk = lambda preset, batch, ratio: {
            "preset": preset, "batch": batch, "precision": "bf16 autocast", "parameters": 1, "ratio": ratio,
            "ratio_cpu_time": ratio, "best": "ddpm_core", "ratio_best": ratio, "load_before": [0.0, 0.0, 0.0],
            "variants": {n: {"images_per_s": 1.0, "wall_s": [1.0], "mfu": 0.1, "memory": None}
                         for n in ("ddpm_core", "diffusers")}}
        return {"machine": {"date": date}, "targets": dict(bench.TARGETS["cuda"]),
                "training": [mk(*c) for c in cases], "sampling": [mk(*c) for c in cases]}
    t = bench.TARGETS["cuda"]
    old = result("2026-01-01", [(t["preset"], t["batch"], 1.1)])
    new = result("2026-02-01", [("cpu-mnist", 64, 0.9), (t["preset"], t["batch"], 1.4)])
    newest_small = result("2026-03-01", [("cpu-mnist", 64, 1.0)])
    found = bench.target_case([("a", old), ("b", new), ("c", newest_small)])
    assert found["path"] == "b" and found["case"]["ratio"] == 1.4 and found["row"]["ratio"] == 1.4
    assert bench.target_case([("c", newest_small)]) is None
    assert bench.target_case([("a", old)], "sampling")["case"]["ratio"] == 1.1


def test_cpu_settings_time_each_thread_and_layout_variant_of_the_book_network():
    # defaults: the first CPU case, with the CPU profile's network changes recorded
    preset, batch, overrides = bench.CPU_CASES[0]
    out = bench.bench_cpu_settings(preset="cpu-digits", batch=4, repeats=1)
    assert out["overrides"] == {} and out["preset"] == "cpu-digits" and out["batch"] == 4
    assert set(out["variants"]) == {"channels-last, 2 threads", "channels-last, 1 thread", "NCHW, 2 threads"}
    for r in out["variants"].values():
        assert r["step_s"] > 0 and r["images_per_s"] == pytest.approx(4 / r["step_s"])
    import inspect
    sig = inspect.signature(bench.bench_cpu_settings).parameters
    assert (sig["preset"].default, sig["batch"].default) == (preset, batch) and overrides == {"dropout": 0.0}


def test_summary_html_fits_a_text_column():
    """The appendix's summary tables: the house table class with a caption, rows grouped by kind,
    compact parameter counts (exact on hover) under the preset name, which does not break at its
    hyphen; on a CPU the three ratios, none of them set apart in bold; on a GPU the fastest mode,
    its MFU with at least two significant digits, and no CPU-time ratios."""
    row = dict(kind="training", preset="ddpm-cifar10", batch=128, precision="bf16", parameters=35_746_307,
               ddpm_core=1885.6, diffusers=1664.9, ratio=1.13, ratio_cpu_time=1.1, ratio_paired=1.12,
               best="ddpm_core+compile+graph", ratio_best=2.58, mfu=0.163, peak_gib=3.93, load=0.8)
    gpu = bench.summary_html([row, dict(row, kind="sampling", mfu=0.00037)], caption="Measured then.")
    assert gpu.startswith('<table class="ddpm-table"') and "Measured then.</caption>" in gpu
    assert '<span title="35,746,307 parameters">35.7M</span>, batch 128' in gpu
    assert '<code style="white-space: nowrap">ddpm-cifar10</code>' in gpu
    assert "<code>compile+<wbr>graph</code>" in gpu and "16.3%" in gpu and "0.037%" in gpu  # ddpm_core+compile+graph
    assert ">training</th>" in gpu and ">sampling</th>" in gpu and gpu.count("<tr><td>") == 2
    assert "CPU time" not in gpu and "paired" not in gpu and "<b>" not in gpu
    eager = dict(row, preset="cpu-mnist", parameters=280_177, best="ddpm_core", best_rate=1885.6, mfu=None,
                 peak_gib=None, ratio_best=1.13, ratio_best_cpu_time=1.1, ratio_best_paired=1.12)
    cpu = bench.summary_html([eager])
    assert ">280k</span>" in cpu and "<th>CPU time</th>" in cpu and "<th>paired rounds</th>" in cpu
    assert "<td>1.13x</td><td>1.10x</td><td>1.12x</td>" in cpu and "<b>" not in cpu
    assert "fastest mode" in gpu and "fastest mode" not in cpu and "MFU" not in cpu and "mode" not in cpu
    assert ">eager ratio</th>" in gpu and ">its ratio</th>" in gpu  # the two GPU ratios named apart
    # a compiled CPU row: the mode is named and its throughput and three ratios are shown, not the eager ones
    compiled = dict(eager, kind="sampling", best="ddpm_core+compile", best_rate=3000.0, ratio_best=1.61,
                    ratio_best_cpu_time=1.35, ratio_best_paired=1.63)
    both = bench.summary_html([eager, compiled])
    assert '<th rowspan="2">mode</th>' in both
    for table, width, kinds in [(cpu, 6, 1), (both, 7, 2), (gpu, 8, 2)]:  # a kind's row spans every column
        assert _body_widths(table) == {width} and table.count(f'<th colspan="{width}">') == kinds, (width, table)
    assert "<td><code>eager</code></td><td>1,886</td>" in both
    assert "<td><code>compile</code></td><td>3,000</td>" in both and "<td>1.61x</td><td>1.35x</td><td>1.63x</td>" in both


def test_mode_name_is_the_variant_without_the_package_prefix():
    assert [bench.mode_name(v) for v in ("ddpm_core", "ddpm_core+compile", "ddpm_core+compile+graph")] == \
        ["eager", "compile", "compile+graph"]


def _body_widths(table: str) -> set[int]:
    """The number of cells of each body row (the rows that start with a <td>) of an HTML table."""
    rows = re.findall(r"<tr>(<td.*?)</tr>", table)
    return {len(re.findall(r"<td", r)) for r in rows}


def test_percentages_keep_two_significant_digits():
    assert [bench._percent(x) for x in (0.163, 0.012, 0.0021, 0.00037, 0.0)] == \
        ["16.3%", "1.2%", "0.21%", "0.037%", "0.0%"]


def _saved_run(date, threads, load, cases):
    """A saved CPU result with the given (kind, preset, parameters, batch, wall, cpu, paired) cases."""
    out = {"schema": bench.SCHEMA, "machine": {"date": date, "cpu": "Intel(R) Xeon(R) Processor", "cpu_count": 2,
                                               "torch_threads": threads, "load_average": [load, 0, 0]},
           "training": [], "sampling": []}
    for kind, preset, n, batch, wall, cpu_time, paired in cases:
        out[kind].append({"preset": preset, "batch": batch, "precision": "fp32", "parameters": n, "ratio": wall,
                          "ratio_cpu_time": cpu_time, "best": "ddpm_core", "ratio_best": wall, "load_before": [load],
                          "variants": {"ddpm_core": {"images_per_s": wall, "wall_s": [1.0]},
                                       "diffusers": {"images_per_s": 1.0, "wall_s": [paired]}}})
    return out


def test_history_html_gives_each_run_and_kind_the_three_ratios_and_says_when_a_preset_changed():
    old = _saved_run("2026-01-01T09:08:00+00:00", 1, 8.8, [("training", "cpu-mnist", 1_623_169, 64, 0.85, 1.07, 1.29),
                                                           ("sampling", "cpu-mnist", 1_623_169, 64, 0.82, 1.21, 1.18)])
    new = _saved_run("2026-02-01T10:22:00+00:00", 2, 1.0, [("training", "cpu-mnist", 280_177, 32, 1.22, 1.18, 1.02),
                                                           ("sampling", "cpu-mnist", 280_177, 32, 1.10, 1.04, 1.13)])
    old["machine"]["omp_wait_policy"] = "PASSIVE"
    saved = [(Path("a.json"), old), (Path("b.json"), new)]
    assert bench.network_history(saved, "cpu-mnist") == [("2026-01-01 09:08", 1_623_169, 64),
                                                          ("2026-02-01 10:22", 280_177, 32)]
    html = bench.history_html(saved)
    assert html.startswith('<table class="ddpm-table"') and html.count('rowspan="2"') == 2
    assert "2026-01-01 09:08<br>1 thread, load 8.8<br>OpenMP passive" in html
    assert "2 threads, load 1.0<br>OpenMP default" in html
    assert "0.85 · 1.07 · 1.29" in html and "1.22 · 1.18 · 1.02" in html  # wall · CPU time · paired
    assert "1.62M</span> parameters at batch 64 from 2026-01-01 09:08" in html and "batch 32 from 2026-02-01" in html
    assert "changed" not in bench.history_html(saved[1:])  # one run: nothing changed


def test_machine_text_names_the_date_and_the_machine_without_trademark_signs():
    run = _saved_run("2026-02-01T10:22:00+00:00", 2, 1.04, [])
    assert bench.cpu_name(run) == "Intel Xeon Processor"
    assert bench.machine_text(run) == ("Measured 2026-02-01 10:22 UTC on an Intel Xeon Processor, 2 cores, "
                                       "2 PyTorch threads (default OpenMP waiting), load average 1.0 at the start.")
    run["machine"]["omp_wait_policy"] = "PASSIVE"
    assert "2 PyTorch threads (passive OpenMP waiting), load" in bench.machine_text(run)
    run["machine"]["gpu"] = "NVIDIA H200"
    assert bench.machine_text(run) == "Measured 2026-02-01 10:22 UTC on an NVIDIA H200."


def test_wait_policy_reads_the_runs_omp_setting_and_calls_anything_else_the_default():
    run = _saved_run("2026-02-01T10:22:00+00:00", 2, 1.0, [])
    for value, policy in [(None, "default"), ("", "default"), ("PASSIVE", "passive"), (" active ", "active"),
                          ("bogus", "default")]:
        run["machine"]["omp_wait_policy"] = value
        assert bench.wait_policy(run) == policy, value
    del run["machine"]["omp_wait_policy"]
    assert bench.wait_policy(run) == "default"


def test_evaluation_html_separates_calls_per_image_from_the_batch():
    result = {"evaluation": {
        "bpd": {"model": "untrained cpu-digits network", "images": 32,
                "exact": {"calls": 1000, "wall_s": 11.8, "bpd": 7.301},
                "strided": [{"stride": 10, "calls": 109, "wall_s": 3.2, "bpd": 7.329, "speedup": 3.7}]},
        "features": {"extractor": "classifier", "speedup": 2.0,
                     "batches": [{"batch_size": 1, "images": 128, "wall_s": 0.1, "images_per_s": 1280.0},
                                 {"batch_size": 256, "images": 512, "wall_s": 0.2, "images_per_s": 2560.0}]}}}
    html = bench.evaluation_html(result, caption="Measured then.")
    assert "<th>calls per image</th><th>batch</th>" in html and 'class="ddpm-table"' in html
    assert "<td>bits/dim, exact</td><td>32</td><td>1,000</td><td>-</td>" in html
    assert "<td>features</td><td>512</td><td>1</td><td>256</td>" in html and "2,560 img/s" in html
    assert "Measured then.</caption>" in html


def test_saved_results_can_require_at_least_one_run(tmp_path):
    assert bench.saved_results("cpu", tmp_path) == []
    with pytest.raises(FileNotFoundError, match="python -m ddpm_core.bench"):
        bench.saved_results("cpu", tmp_path, required=True)


def test_cpu_compile_adds_a_compiled_sampling_variant_whose_three_ratios_the_summary_shows(monkeypatch):
    """With --cpu-compile, CPU sampling also times ``ddpm_core+compile`` (training does not: it does
    not pay there); the fastest mode's wall-clock, CPU-time and paired ratios are recomputed from
    planted per-round times, and summary_rows shows them."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(net) or net)  # no real compile
    rounds = {"ddpm_core": ([2.0, 2.0, 4.0], [3.0, 3.0, 3.0]), "ddpm_core+compile": ([1.0, 2.0, 1.0], [2.0, 2.0, 2.0]),
              "diffusers": ([3.0, 3.0, 3.0], [4.0, 4.0, 4.0])}

    def planted(steps, device, repeats=5, inner=1, warmup=2):
        out = {}
        for name in steps:
            wall, cpu = rounds.get(name, ([5.0] * 3, [5.0] * 3))
            out[name] = dict(wall_s=wall, cpu_s=cpu, step_s=statistics.median(wall), cpu_step_s=statistics.median(cpu),
                             warmup_s=0.0)
        return out
    monkeypatch.setattr(bench, "time_alternating", planted)
    monkeypatch.setattr(bench, "count_flops", lambda fn: 1)
    result = bench.run("cpu", cases=[("cpu-digits", 2, TINY)], repeats=3, warmup=1, settings=False,
                       evaluation=False, progress=False, cpu_compile=True)
    assert "ddpm_core+compile" not in result["training"][0]["variants"] and len(compiled) == 1
    case = result["sampling"][0]
    assert case["best"] == "ddpm_core+compile" and case["variants"]["ddpm_core+compile"]["compile"]
    assert case["ratio_best"] == pytest.approx(3.0 / 1.0)         # median wall 1 s against 3 s
    assert case["ratio_best_cpu_time"] == pytest.approx(4.0 / 2.0)
    assert case["ratio_best_paired"] == pytest.approx(statistics.median([3.0, 1.5, 3.0]))
    row = [r for r in bench.summary_rows(result) if r["kind"] == "sampling"][0]
    assert (row["ratio"], row["best_rate"]) == (pytest.approx(3.0 / 2.0), pytest.approx(2.0))  # eager kept apart
    assert (row["ratio_best_cpu_time"], row["ratio_best_paired"]) == (case["ratio_best_cpu_time"], case["ratio_best_paired"])
    heads = re.findall(r"<th><code>(.*?)</code></th>", bench.variants_html(result))  # the package's modes first
    assert heads[:3] == ["ddpm_core", "ddpm_core+<wbr>compile", "ddpm_core-<wbr>nchw"], heads
    html = bench.summary_html(bench.summary_rows(result))
    assert "<td><code>compile</code></td><td>2.0</td><td>0.7</td><td>3.00x</td><td>2.00x</td><td>3.00x</td>" in html
    # a run saved before the fastest mode's CPU-time and paired ratios were stored: recomputed the same
    for key in ("ratio_best_cpu_time", "ratio_best_paired"):
        del case[key]
    old = [r for r in bench.summary_rows(result) if r["kind"] == "sampling"][0]
    assert (old["ratio_best_cpu_time"], old["ratio_best_paired"]) == (pytest.approx(2.0), pytest.approx(3.0))
    assert "ddpm_core+compile" not in bench.run("cpu", cases=[("cpu-digits", 2, TINY)], repeats=3, warmup=1,
                                                settings=False, evaluation=False, progress=False,
                                                kinds=("sampling",))["sampling"][0]["variants"]  # not by default
