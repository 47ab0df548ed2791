"""Where a CPU training step of the book's MNIST network goes (cpu-mnist, batch 32, no dropout, fp32,
as book_config("mnist5k") trains it): torch.profiler tables of ddpm_core (channels-last weights) and
diffusers' UNet2DModel (NCHW, as shipped) with the same weights, operators sorted by their own CPU time,
and the time of GroupNorm alone on activations of the network's shapes in both memory layouts.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/profile_cpu.py > benchmarks/cpu-<date>-profile.txt

benchmarks/cpu-2026-12-06-profile.txt is its output on the project's 2-core Xeon (2026-12-06)."""
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from ddpm_core import bench, schedules, unet
from ddpm_core import diffusion as D

torch.manual_seed(0)
print(torch.__version__, bench.machine_info(torch.device("cpu"))["cpu"], torch.get_num_threads(), "threads")
ours, theirs = bench.build_pair("cpu-mnist", dropout=0.0)
ours.load_state_dict(unet.UNet.from_diffusers(theirs).state_dict())
d = D.GaussianDiffusion(schedules.get_betas("linear", 1000))
x = torch.rand(32, 1, 28, 28) * 2 - 1
for name, net, cl, df in [("ddpm_core (channels-last)", ours, True, False), ("diffusers (NCHW)", theirs, False, True)]:
    v = bench.Variant(name, net, diffusers=df, channels_last=cl)
    step = bench.make_train_step(bench._prepare(v, torch.device("cpu")), v.net, d, x, None, 0)
    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    print(f"\n===== {name}: 10 training steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=16, max_name_column_width=48))


def timed(fn, n=30):
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


print("\nGroupNorm (8 groups) alone, forward / forward+backward in ms, by memory layout of the activations")
for shape in [(32, 16, 28, 28), (32, 48, 28, 28), (32, 32, 14, 14), (32, 64, 14, 14)]:
    w, b = torch.randn(shape[1], requires_grad=True), torch.randn(shape[1], requires_grad=True)
    row = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        a = torch.randn(shape).to(memory_format=fmt).requires_grad_()
        row += [timed(lambda: F.group_norm(a, 8, w, b, 1e-6)),
                timed(lambda: F.group_norm(a, 8, w, b, 1e-6).sum().backward())]
    print(f"  {str(shape):18s} NCHW {row[0]:.2f} / {row[1]:.2f}   channels-last {row[2]:.2f} / {row[3]:.2f}")
