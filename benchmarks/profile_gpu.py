"""Where a training step of the paper's network (ddpm-cifar10, batch 128, bf16 autocast) spends its
time on a GPU: ddpm_core eagerly (with and without cuDNN autotuning, channels-last or NCHW), diffusers
eagerly, the whole update replayed from a CUDA graph, torch.compile, and both; a torch.profiler table
of the eager, compiled and compiled+graphed steps (the kernels sorted by their own GPU time).

    OUT=/tmp python benchmarks/profile_gpu.py     # writes $OUT/explore.txt (about 3 minutes on an H100)

benchmarks/gpu-2026-11-27-profile.txt is its output on an H100 (2026-11-27)."""
import copy, os, time
import torch
from ddpm_core import bench, unet, schedules, diffusion as D

OUT = os.environ.get("OUT", "/tmp"); T0 = time.time()
log = open(f"{OUT}/explore.txt", "w")
def p(*a):
    s = " ".join(str(x) for x in a); print(s, flush=True); log.write(s + "\n"); log.flush()
dev = torch.device("cuda")
p(torch.__version__, torch.cuda.get_device_name(), "cudnn", torch.backends.cudnn.version())
torch.manual_seed(0)
ours, theirs = bench.build_pair("ddpm-cifar10")
ours.load_state_dict(unet.UNet.from_diffusers(theirs).state_dict())
d = D.GaussianDiffusion(schedules.get_betas("linear", 1000))
x = (torch.rand(128, 3, 32, 32) * 2 - 1).to(dev)
amp = torch.bfloat16
PEAK = bench.bf16_peak(dev) or 989e12

def timeit(step, n=8):
    """Median step time of 3 rounds of n steps, after 3 warm-up steps."""
    return bench.time_alternating({"step": step}, dev, repeats=3, inner=n, warmup=3)["step"]["step_s"]

_net = copy.deepcopy(ours).to(dev)
FLOPS = bench.count_flops(bench.make_train_step(_net, _net, d, x, amp, 0))  # one step, forward and backward
del _net


def report(name, s):
    p(f"{name:44s} {s*1e3:8.2f} ms {128/s:8.1f} img/s MFU {FLOPS/s/PEAK:6.1%}  [t={time.time()-T0:.0f}s]")

def variant(net, diffusers=False, compile=False, graph=False, cl=None, mode=None):
    v = bench.Variant("x", copy.deepcopy(net), diffusers=diffusers, compile=compile, compile_mode=mode, channels_last=cl)
    fn = bench._prepare(v, dev)
    return bench.make_train_step(fn, v.net, d, x, amp, 0, graph=graph)

def profile(name, step, rows=30):
    from torch.profiler import profile as prof, ProfilerActivity
    for _ in range(2): step()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as pr:
        for _ in range(3): step()
        torch.cuda.synchronize()
    ka = pr.key_averages()
    kernels = [e for e in ka if e.device_type == torch.autograd.DeviceType.CUDA]  # not the operators' rows too
    dev_total = sum(e.self_device_time_total for e in kernels) / 3 / 1e3
    p(f"\n=== profile {name}: GPU busy {dev_total:.2f} ms per step (sum of kernel times)")
    p(ka.table(sort_by="self_device_time_total", row_limit=rows, max_name_column_width=70))
    # categories
    cats = {}
    for e in ka:
        if e.self_device_time_total <= 0: continue
        n = e.key.lower()
        c = ("conv/gemm" if any(k in n for k in ("conv", "gemm", "xmma", "cutlass", "sm90", "implicit", "wgrad", "dgrad", "mm"))
             else "norm" if "norm" in n else "attention" if ("flash" in n or "attention" in n or "fmha" in n)
             else "copy/cast" if any(k in n for k in ("copy", "cast", "contiguous", "to_copy", "clone")) else "other")
        cats[c] = cats.get(c, 0) + e.self_device_time_total / 3 / 1e3
    p("categories (ms/step, CPU+CUDA keys mixed, indicative):", {k: round(v, 2) for k, v in sorted(cats.items(), key=lambda kv: -kv[1])})

s_e = variant(ours); report("ours eager (cudnn.benchmark=False)", timeit(s_e))
s_d = variant(theirs, diffusers=True); report("diffusers eager (benchmark=False)", timeit(s_d))
torch.backends.cudnn.benchmark = True
s_e = variant(ours); report("ours eager (benchmark=True)", timeit(s_e))
s_n = variant(ours, cl=False); report("ours eager NCHW", timeit(s_n))
s_d = variant(theirs, diffusers=True); report("diffusers eager", timeit(s_d))
profile("ours eager", s_e)
del s_n, s_d
s_g = variant(ours, graph=True); report("ours eager + whole-step CUDA graph", timeit(s_g))
del s_g
t = time.time(); s_c = variant(ours, compile=True); s_c(); report(f"ours compiled (first step {time.time()-t:.0f}s)", timeit(s_c))
profile("ours compiled", s_c, rows=25)
t = time.time(); s_cg = variant(ours, compile=True, graph=True); report(f"ours compiled + graph (built {time.time()-t:.0f}s)", timeit(s_cg))
profile("ours compiled + graph", s_cg, rows=12)
p(f"explore done in {time.time()-T0:.0f}s")
