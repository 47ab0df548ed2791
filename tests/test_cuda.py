"""Tests that need a CUDA device (skipped elsewhere; run them on a GPU machine with
``python -m pytest tests/test_cuda.py``): the trainer's captured CUDA-graph updates against eager
ones, resume with graphs, torch.compile with graphs, and the benchmark's captured variants."""
from __future__ import annotations

import pytest
import torch

from ddpm_core import bench
from ddpm_core import train as tr

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# The 8x8 digits with the small U-Net: fp32 so that graph and eager runs use the same kernels.
SMALL = dict(dataset="digits", preset="cpu-digits", T=100, batch_size=32, lr=1e-3, warmup_steps=5, ema_decay=0.99,
             dropout=0.0, steps=30, log_every=10, checkpoint_every=10, seed=1, precision="fp32", device="cuda")


def small(**changes) -> tr.TrainConfig:
    return tr.TrainConfig(**{**SMALL, **changes})


@pytest.fixture(autouse=True)
def deterministic_convolutions():
    before = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before


def assert_close_runs(a: tr.TrainResult, b: tr.TrainResult, atol: float) -> None:
    assert a.step == b.step
    torch.testing.assert_close(a.history["loss"], b.history["loss"], rtol=1e-3, atol=atol)
    for net_a, net_b in ((a.model, b.model), (a.ema, b.ema)):
        for (name, p), q in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=atol, msg=lambda m: f"{name}: {m}")


def test_graphed_updates_equal_eager_updates():
    """The same run with and without CUDA graphs: the same inputs (data, t, noise), the same
    kernels; only the EMA's arithmetic differs (sub/mul/add against lerp), at float rounding."""
    eager = tr.train(small(), progress=False)
    graphed = tr.train(small(cuda_graph=True), progress=False)
    assert torch.isfinite(graphed.history["loss"]).all()
    assert not torch.equal(graphed.model.conv_out.weight.cpu(), tr.build_network(small()).conv_out.weight)  # it trained
    assert_close_runs(eager, graphed, atol=1e-5)


def test_graphed_run_resumes_like_an_uninterrupted_one(tmp_path):
    whole = tr.train(small(cuda_graph=True, steps=20), progress=False)
    tr.train(small(cuda_graph=True, steps=10), out_dir=tmp_path, progress=False)
    resumed = tr.train(small(cuda_graph=True, steps=20), out_dir=tmp_path, progress=False)
    assert_close_runs(whole, resumed, atol=1e-5)
    # an eager run continues a graphed checkpoint (float learning rate again, capturable off)
    eager = tr.train(small(steps=25), out_dir=tmp_path, progress=False)
    assert eager.step == 25 and all(not g["capturable"] and isinstance(g["lr"], float)
                                    for g in tr.read_checkpoint(eager.checkpoint)["optimizer"]["param_groups"])


def test_compiled_and_graphed_bf16_training_learns():
    cfg = small(precision="bf16", compile=True, cuda_graph=True, steps=60, dropout=0.1)
    result = tr.train(cfg, progress=False)
    loss = result.history["loss"]
    assert torch.isfinite(loss).all() and loss[-10:].mean() < loss[:10].mean()


def test_bench_times_two_captured_training_variants_one_after_the_other():
    """Two captured graphs replayed in turn ended in an illegal memory access (a capture frees the
    cuBLAS workspace an earlier graph uses): the benchmark captures one at a time."""
    pytest.importorskip("diffusers")  # the bench times diffusers beside ddpm_core
    torch.backends.cudnn.benchmark = True
    case = bench.bench_case("cpu-digits", 32, "training", torch.device("cuda"), repeats=2, inner=2, warmup=1,
                            compile_ok=True)
    names = list(case["variants"])
    assert {"ddpm_core+graph", "ddpm_core+compile+graph", "diffusers"} <= set(names)
    assert all(case["variants"][n]["images_per_s"] > 0 for n in names)
    assert case["variants"]["ddpm_core+graph"]["ratio_paired_diffusers"] > 0
