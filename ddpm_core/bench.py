"""How fast ddpm_core trains and samples, side by side with diffusers' ``UNet2DModel``.

The book trains its models when it is built (and again for a reader without the cache of trained
models), so speed decides what it can show. On a shared machine an absolute
time is noise but a ratio is not, so every number here comes from one process that builds both
networks with the identical configuration (same preset, batch, precision and device; parameter
counts checked equal) and times them in alternation: warm-up steps first (excluded), then
``repeats`` rounds in which each variant runs ``inner`` steps; the median step time of each
variant over the rounds gives its throughput. Wall time and process CPU time are both recorded;
on a loaded CPU the CPU-time ratio is the steadier one.

What is measured:
  training   one update as the trainer does it: forward, L_simple, backward, gradient clipping,
             Adam (fused, as ddpm_core.train) and the foreach EMA update; images / s.
  sampling   one ancestral reverse step (``sampling.ddpm_step``) under ``torch.inference_mode``;
             images / s per reverse step.
  evaluation the exact bits/dim (``GaussianDiffusion.bpd``, T network calls) against a strided
             estimate, and feature extraction one image at a time against batches.
On CUDA also the model FLOPs utilisation (FLOPs of one step counted by PyTorch's
``FlopCounterMode``, over the step time and the chip's dense bf16 peak) and the peak memory.

Variants: ``ddpm_core`` is the package's network called eagerly (channels-last weights; on CUDA bf16
autocast); on CUDA also ``ddpm_core+graph`` (training: the whole update captured as one CUDA graph
and replayed; sampling: the network replayed), ``ddpm_core+compile`` (training, ``torch.compile``)
and ``ddpm_core+compile+graph`` (both: what ``TrainConfig(compile=True, cuda_graph=True)`` and the
GPU profile's ``book_config("cifar10")`` do); on a CPU with ``--cpu-compile`` also
``ddpm_core+compile`` for sampling (what ``sampling.Compiled`` does). ``diffusers`` is UNet2DModel as shipped (contiguous
NCHW, eager). Informative variants isolate one setting (``-nchw``, ``-cl``). Captured variants are
built and timed one at a time, each in alternation with ``ddpm_core`` and ``diffusers``: capturing
a graph frees the cuBLAS workspaces that an earlier, still living graph points to, and replaying
that one then ended in an illegal memory access.

Command line: ``python -m ddpm_core.bench [--quick] [--out FILE]`` prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import diffusion as _diffusion
from . import sampling, schedules, unet

SCHEMA = "ddpm_core.bench/1"
# (preset, batch[, network overrides]) as the CPU profile trains them: book_config("mnist5k") (batch 32,
# no dropout), book_config("digits") (batch 64; the preset has no dropout); the paper's network at a
# batch a CPU holds. (Runs before 2026-12-06 timed cpu-mnist at 64 with dropout 0.1, cpu-digits at 128.)
CPU_CASES = [("cpu-mnist", 32, {"dropout": 0.0}), ("cpu-digits", 64), ("ddpm-cifar10", 4)]
GPU_CASES = [("ddpm-cifar10", 128), ("cpu-mnist", 64), ("cpu-digits", 128)]
# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from the vendors' data sheets, by device name.
BF16_PEAKS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("H800", 989e12),
              ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L4", 121e12), ("A10G", 70e12),
              ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12)]
TARGETS = {"cpu": {"training_ratio": 1.2, "sampling_ratio": 1.2},
           "cuda": {"training_ratio": 1.3, "mfu": 0.35, "preset": "ddpm-cifar10", "batch": 128}}


# ---------------------------------------------------------------------- the two networks
def diffusers_config(config: dict[str, Any]) -> dict[str, Any]:
    """``UNet2DModel`` keyword arguments for a ddpm_core ``UNet.config`` (the inverse of
    ``UNet.from_diffusers``): the same blocks, widths, attention places, norms and embedding."""
    sides = [config["image_size"] // 2 ** i for i in range(len(config["channel_mult"]))]
    attn = [s in config["attention_resolutions"] for s in sides]
    widths = [config["base_channels"] * m for m in config["channel_mult"]]
    attended = [w for w, a in zip(widths, attn) if a] + [widths[-1]]
    heads = config["num_heads"]
    iddpm = config["time_embedding"] == "iddpm"
    out = dict(sample_size=config["image_size"], in_channels=config["in_channels"],
               out_channels=config["out_channels"] * (2 if config["learn_sigma"] else 1),
               block_out_channels=tuple(widths), layers_per_block=config["num_res_blocks"],
               down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
               up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
               norm_num_groups=config["norm_groups"], norm_eps=config["norm_eps"], act_fn="silu",
               time_embedding_type="positional", flip_sin_to_cos=iddpm, freq_shift=0 if iddpm else 1,
               downsample_padding=0 if config["downsample_padding"] == "asymmetric" else 1,
               attention_head_dim=None if heads == 1 else attended[0] // heads, dropout=config["dropout"])
    if config["use_scale_shift_norm"]:
        out.update(resnet_time_scale_shift="scale_shift", attn_norm_num_groups=config["norm_groups"])
    return out


def build_pair(preset: str, **overrides: Any) -> tuple[nn.Module, nn.Module]:
    """(ddpm_core UNet, diffusers UNet2DModel) of the same configuration, in float32 on the CPU.

    :raises AssertionError: if their parameter counts differ (the configurations do not match).
    """
    from diffusers import UNet2DModel

    ours = unet.UNet.from_preset(preset, **overrides)
    theirs = UNet2DModel(**diffusers_config(ours.config))
    n_ours, n_theirs = unet.count_parameters(ours), unet.count_parameters(theirs)
    assert n_ours == n_theirs, f"{preset}: {n_ours:,} parameters in ddpm_core, {n_theirs:,} in diffusers"
    return ours, theirs


@dataclass
class Variant:
    """One way of running a network: the module, its memory layout and compilation."""

    name: str
    net: nn.Module
    diffusers: bool = False           # the output is ``.sample`` of a diffusers output
    channels_last: bool | None = None  # None: leave the module's own layout
    compile: bool = False              # torch.compile (inductor)
    compile_mode: str | None = None    # e.g. "reduce-overhead": compiled and replayed as CUDA graphs
    cuda_graph: bool = False           # replay from a captured CUDA graph (sampling: the network; training: the update)
    info: dict = field(default_factory=dict)


def _prepare(v: Variant, device: torch.device) -> Callable:
    """The module moved to ``device`` in the variant's layout, and a ``fn(x_t, t) -> tensor``."""
    net = v.net.to(device)
    if v.channels_last is not None:
        net = net.to(memory_format=torch.channels_last if v.channels_last else torch.contiguous_format)
    v.net = net
    # static shapes: each preset and batch compiles its own code (after a first shape, PyTorch would
    # otherwise compile symbolic shapes, which failed in inductor for the CPU training step)
    fn = torch.compile(net, mode=v.compile_mode, dynamic=False) if v.compile else net
    if v.diffusers:
        return lambda x_t, t: fn(x_t, t).sample
    return fn


def _is_channels_last(net: nn.Module) -> bool:
    """Whether the network's convolution weights are stored channels-last (NHWC)."""
    w = next(p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1)
    return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


# ---------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _ratio_paired(variants: dict, name: str = "ddpm_core") -> float:
    """``name`` / diffusers throughput as the median over rounds of each round's ratio: the two
    steps of a round ran seconds apart, under nearly the same load from other programs. A
    captured variant, timed in rounds of its own, has its ratio over those (``ratio_paired_diffusers``)."""
    if "ratio_paired_diffusers" in variants[name]:
        return variants[name]["ratio_paired_diffusers"]
    ours, theirs = variants[name]["wall_s"], variants["diffusers"]["wall_s"]
    return statistics.median(b / a for a, b in zip(ours, theirs))


def time_alternating(steps: dict[str, Callable[[], Any]], device: torch.device, repeats: int = 5,
                     inner: int = 1, warmup: int = 2) -> dict[str, dict[str, Any]]:
    """Time each step function in alternation: ``warmup`` untimed calls each, then ``repeats``
    rounds in which every function runs ``inner`` times in a row (one device synchronisation at
    the end of each run, none per step).

    :return: per name ``wall_s`` and ``cpu_s`` (per-step times of each round), their medians
        ``step_s`` and ``cpu_step_s``, and ``warmup_s`` (time of the first warm-up call: includes
        compilation and graph capture).
    """
    out = {name: {"wall_s": [], "cpu_s": []} for name in steps}
    for name, step in steps.items():
        for k in range(warmup):
            start = time.perf_counter()
            step()
            _sync(device)
            if k == 0:
                out[name]["warmup_s"] = time.perf_counter() - start
    for _ in range(repeats):
        for name, step in steps.items():
            _sync(device)
            wall, cpu = time.perf_counter(), time.process_time()
            for _ in range(inner):
                step()
            _sync(device)
            out[name]["wall_s"].append((time.perf_counter() - wall) / inner)
            out[name]["cpu_s"].append((time.process_time() - cpu) / inner)
    for r in out.values():
        r["step_s"], r["cpu_step_s"] = statistics.median(r["wall_s"]), statistics.median(r["cpu_s"])
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` (PyTorch's ``FlopCounterMode``: matrix
    products, convolutions and attention, forward and backward; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bf16_peak(device: torch.device) -> float | None:
    """The dense bf16 peak (FLOP/s) of a CUDA device from ``BF16_PEAKS``; None if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAKS if key in name), None)


def _peak_memory(step: Callable[[], Any], device: torch.device) -> dict[str, float] | None:
    """GiB held by the process at the peak of one step, and the part that the step itself adds."""
    if device.type != "cuda":
        return None
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    _sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"peak_gib": peak / 2 ** 30, "step_transient_gib": (peak - before) / 2 ** 30}


# ---------------------------------------------------------------------- steps
def _autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)  # no weight-cast cache in a CUDA graph


def make_train_step(fn: Callable, net: nn.Module, d: _diffusion.GaussianDiffusion, x0: torch.Tensor,
                    amp: torch.dtype | None, seed: int = 0, graph: bool = False) -> Callable[[], torch.Tensor]:
    """One training update of ``net`` as ``ddpm_core.train`` does it (Algorithm 1 of Ho et al.):
    t ~ U{0..T-1}, eps ~ N(0, I), L_simple, backward, clip at norm 1, Adam, EMA (foreach lerp).

    :param graph: (CUDA) capture the whole update (forward, backward, clipping, Adam, EMA) in one
        CUDA graph and replay it; t and eps are drawn into its fixed input buffers before each replay.
    """
    from .train import ema_update

    device = x0.device
    params = [p for p in net.parameters() if p.requires_grad]
    ema = [p.detach().clone() for p in params]
    fused = device.type in ("cuda", "cpu")  # as ddpm_core.train
    opt = torch.optim.Adam(params, lr=1e-4, fused=fused or None, foreach=None if fused else True,
                           capturable=graph)
    gen = torch.Generator(device).manual_seed(seed)
    t_buf = torch.zeros(len(x0), dtype=torch.long, device=device)
    noise_buf = torch.zeros_like(x0)

    def model(x_t, t):
        with _autocast(device, amp, cache=not graph):
            out = fn(x_t, t)
        return out.float()

    def update() -> torch.Tensor:
        loss = d.training_losses(model, x0, t_buf, noise=noise_buf)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        ema_update(ema, params, 0.999)
        return loss.detach()

    if graph:
        net.train()
        update = cuda_graphed_update(update)

    def step() -> torch.Tensor:
        net.train()
        torch.randint(0, d.num_timesteps, (len(x0),), device=device, generator=gen, out=t_buf)
        noise_buf.normal_(generator=gen)
        return update()
    return step


def cuda_graphed_update(update: Callable[[], torch.Tensor], warmup: int = 3) -> Callable[[], torch.Tensor]:
    """A whole training update (no arguments: it reads fixed buffers) captured as one CUDA graph
    (``train.capture_cuda_graph``); each call replays it. The returned loss tensor is overwritten by
    the next call. The optimiser must be ``capturable``."""
    from .train import capture_cuda_graph

    graph, static_loss = capture_cuda_graph(update, warmup)

    def replay() -> torch.Tensor:
        graph.replay()
        return static_loss
    return replay


def cuda_graphed(fn: Callable, x_t: torch.Tensor, t: torch.Tensor) -> Callable:
    """``fn(x_t, t)`` for inputs of this fixed shape, replayed from a captured CUDA graph (no
    per-kernel launch cost). The returned tensor is overwritten by the next call."""
    from .train import capture_cuda_graph

    static_x, static_t = x_t.clone(), t.clone()

    def call():
        with torch.inference_mode():
            return fn(static_x, static_t)
    graph, static_out = capture_cuda_graph(call)  # warm-up: cuDNN autotuning, workspaces

    def replay(x, t):
        static_x.copy_(x)
        static_t.copy_(t)
        graph.replay()
        return static_out
    return replay


def make_sample_step(fn: Callable, net: nn.Module, d: _diffusion.GaussianDiffusion, x_T: torch.Tensor,
                     amp: torch.dtype | None, graph: bool = False, seed: int = 0) -> Callable[[], torch.Tensor]:
    """One ancestral reverse step (``sampling.ddpm_step``, Algorithm 2 line 4) at a step that walks
    down from T-1, on a fixed batch ``x_T`` (so every call does the same work)."""
    device = x_T.device
    net.eval()
    gen = torch.Generator(device).manual_seed(seed)
    step_index = [d.num_timesteps - 1]

    def model(x_t, t):
        with _autocast(device, amp, cache=not graph):
            return fn(x_t, t).float()
    if graph:
        model = cuda_graphed(model, x_T, torch.zeros(len(x_T), dtype=torch.long, device=device))

    def step() -> torch.Tensor:
        i = step_index[0]
        step_index[0] = (i - 1) % d.num_timesteps
        with torch.inference_mode():
            noise = torch.randn(x_T.shape, device=device, generator=gen)
            return sampling.ddpm_step(model, d, x_T, i, noise)[0]
    return step


# ---------------------------------------------------------------------- one case
def _variants(ours: nn.Module, theirs: nn.Module, kind: str, device: torch.device, compile_ok: bool) -> list[Variant]:
    """The variants timed for one preset: the package's ways of running first, then the informative
    ones that change one setting (``-nchw``: ours without channels-last; ``-cl``: diffusers with it)."""
    cuda = device.type == "cuda"
    vs = [Variant("ddpm_core", ours)]
    if cuda and kind == "sampling":
        vs.append(Variant("ddpm_core+graph", copy.deepcopy(ours), cuda_graph=True))
    if cuda and kind == "training":  # compiled training does not pay on a small CPU (bench_cpu_settings)
        vs.append(Variant("ddpm_core+graph", copy.deepcopy(ours), cuda_graph=True))
        if compile_ok:
            vs.append(Variant("ddpm_core+compile", copy.deepcopy(ours), compile=True))
            vs.append(Variant("ddpm_core+compile+graph", copy.deepcopy(ours), compile=True, cuda_graph=True))
    if not cuda and kind == "sampling" and compile_ok:  # on a CPU a compiled step is faster in sampling only
        vs.append(Variant("ddpm_core+compile", copy.deepcopy(ours), compile=True))
    vs.append(Variant("ddpm_core-nchw", copy.deepcopy(ours), channels_last=False))
    vs.append(Variant("diffusers", theirs, diffusers=True))
    vs.append(Variant("diffusers-cl", copy.deepcopy(theirs), diffusers=True, channels_last=True))
    return vs


def bench_case(preset: str, batch: int, kind: str, device: torch.device, repeats: int = 5, inner: int = 1,
               warmup: int = 2, compile_ok: bool = True, overrides: dict | None = None, seed: int = 0) -> dict:
    """Training (``kind="training"``) or sampling throughput of ddpm_core and diffusers for one
    preset, as a JSON-ready dict (see the module docstring)."""
    overrides = overrides or {}
    torch.manual_seed(seed)
    ours, theirs = build_pair(preset, **overrides)
    ours.load_state_dict(unet.UNet.from_diffusers(theirs).state_dict())  # same weights: same arithmetic
    cfg = ours.config
    amp = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    d = _diffusion.GaussianDiffusion(schedules.get_betas("linear", 1000))
    g = torch.Generator().manual_seed(seed)
    shape = (batch, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
    x = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    steps, flops, memory, infos = {}, {}, {}, {}

    def build(v: Variant) -> Callable:
        fn = _prepare(v, device)
        if kind == "training":
            step = make_train_step(fn, v.net, d, x, amp, seed, graph=v.cuda_graph)
        else:
            step = make_sample_step(fn, v.net, d, x, amp, graph=v.cuda_graph, seed=seed)
        infos[v.name] = dict(channels_last=_is_channels_last(v.net),
                             compile=v.compile, cuda_graph=v.cuda_graph, library="diffusers" if v.diffusers else "ddpm_core")
        if not (v.compile or v.cuda_graph):  # the counter sees eager operators only
            flops[v.name] = count_flops(make_train_step(fn, v.net, d, x, amp, seed) if kind == "training" else step)
        return step

    variants_list = _variants(ours, theirs, kind, device, compile_ok)
    for v in variants_list:
        if not v.cuda_graph:
            steps[v.name] = build(v)
    load_before = os.getloadavg()
    timings = time_alternating(steps, device, repeats, inner, warmup)
    for name, step in steps.items():
        memory[name] = _peak_memory(step, device)
    # Captured variants one at a time, each timed in alternation with ddpm_core and diffusers and
    # released before the next capture: a capture frees the cuBLAS workspaces that an earlier live
    # graph still points to (two live graphs replayed in turn ended in an illegal memory access).
    for v in variants_list:
        if v.cuda_graph:
            step = build(v)
            t = time_alternating({v.name: step, "ddpm_core": steps["ddpm_core"], "diffusers": steps["diffusers"]},
                                 device, repeats, inner, warmup)
            timings[v.name] = t[v.name]
            timings[v.name]["ratio_paired_diffusers"] = statistics.median(  # rounds of this variant's own run
                b / a for a, b in zip(t[v.name]["wall_s"], t["diffusers"]["wall_s"]))
            memory[v.name] = _peak_memory(step, device)
            v.net, step = None, None
            gc.collect()
    timings = {v.name: timings[v.name] for v in variants_list}  # the listing order
    peak = bf16_peak(device)
    step_flops = flops.get("ddpm_core")
    variants = {}
    for name, r in timings.items():
        r.update(infos[name], images_per_s=batch / r["step_s"], flops_per_step=flops.get(name, step_flops),
                 memory=memory[name])
        r["mfu"] = (r["flops_per_step"] / r["step_s"] / peak) if peak and r["flops_per_step"] else None
        variants[name] = r
    # the package's own ways of running (not the informative ones that drop a setting)
    best = max((n for n in variants if n.startswith("ddpm_core") and "-" not in n),
               key=lambda n: variants[n]["images_per_s"])
    base = variants["diffusers"]
    return dict(kind=kind, preset=preset, batch=batch, overrides=overrides, image_shape=list(shape[1:]),
                precision="bf16 autocast" if amp else "fp32", device=device.type,
                parameters=unet.count_parameters(ours), load_before=list(load_before), load_after=list(os.getloadavg()),
                variants=variants, best=best,
                ratio=variants["ddpm_core"]["images_per_s"] / base["images_per_s"],
                ratio_cpu_time=base["cpu_step_s"] / variants["ddpm_core"]["cpu_step_s"],
                ratio_paired=_ratio_paired(variants),
                ratio_best=variants[best]["images_per_s"] / base["images_per_s"],
                ratio_best_cpu_time=base["cpu_step_s"] / variants[best]["cpu_step_s"],
                ratio_best_paired=_ratio_paired(variants, best))


# ---------------------------------------------------------------------- CPU settings
def bench_cpu_settings(preset: str = CPU_CASES[0][0], batch: int = CPU_CASES[0][1], repeats: int = 5,
                       compile_too: bool = False, seed: int = 0, overrides: dict | None = None) -> dict:
    """What helps training on a small CPU: 1 vs 2 threads, channels-last vs NCHW weights and,
    with ``compile_too``, ``torch.compile`` (its compile time is ``warmup_s``). ddpm_core only.
    The defaults are the first of ``CPU_CASES`` (the network as the CPU profile trains it)."""
    device = torch.device("cpu")
    if overrides is None:
        overrides = dict(CPU_CASES[0][2]) if preset == CPU_CASES[0][0] else {}
    torch.manual_seed(seed)
    net = unet.UNet.from_preset(preset, **overrides)
    d = _diffusion.GaussianDiffusion(schedules.get_betas("linear", 1000))
    x = torch.rand(batch, net.in_channels, net.image_size, net.image_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    threads = torch.get_num_threads()

    def with_threads(step, n):
        def run():
            torch.set_num_threads(n)
            try:
                return step()
            finally:
                torch.set_num_threads(threads)
        return run
    steps = {}
    for name, fmt, n, comp in [("channels-last, 2 threads", True, 2, False), ("channels-last, 1 thread", True, 1, False),
                               ("NCHW, 2 threads", False, 2, False)] + ([("channels-last, compiled", True, 2, True)]
                                                                        if compile_too else []):
        v = Variant(name, copy.deepcopy(net), channels_last=fmt, compile=comp)
        steps[name] = with_threads(make_train_step(_prepare(v, device), v.net, d, x, None, seed), n)
    load_before = os.getloadavg()
    timings = time_alternating(steps, device, repeats, 1, 2)
    for r in timings.values():
        r["images_per_s"] = batch / r["step_s"]
    return dict(preset=preset, batch=batch, overrides=overrides, kind="training", load_before=list(load_before),
                load_after=list(os.getloadavg()), variants=timings)


# ---------------------------------------------------------------------- evaluation
# strided_bpd computes the first terms of the bound exactly (the largest, fastest-changing ones)
STRIDED_EXACT_STEPS = 10


@torch.no_grad()
def strided_bpd(d: _diffusion.GaussianDiffusion, model: Callable, x0: torch.Tensor, stride: int,
                noise_generator: torch.Generator | None = None,
                exact_steps: int = STRIDED_EXACT_STEPS) -> torch.Tensor:
    """An unbiased, strided estimate of the bound ``d.bpd(model, x0)["total_bpd"]`` (Ho et al.
    eq. 5) from about T / stride + ``exact_steps`` network calls: the prior and the terms
    L_0 .. L_{exact_steps - 1} exactly (the first steps carry the largest and fastest-changing terms);
    the terms from ``exact_steps`` on cut into consecutive blocks of ``stride`` steps, and from each
    block one step drawn uniformly for each image on its own (stratified sampling), weighted by the
    block's length. Each image's estimate is independent of the others', so their spread (and the
    standard error over images) includes the noise of drawing the steps. ``stride=1`` is the exact
    bound (with the same noise as ``d.bpd`` for the same generator). A fixed step per block would be
    biased: the terms change fastest at small t.

    :param x0: the [N x C x H x W] images in [-1, 1], on the 8-bit grid for bits of 8-bit data
        (``data.to_8bit_grid``; ``evaluation.bits_per_dim`` rounds them itself). :return: [N] bits/dim.
    """
    if stride < 1:
        raise ValueError(f"stride must be a positive number of steps, got {stride}")
    if exact_steps < 1:
        raise ValueError(f"exact_steps must be at least 1 (the decoder term L_0), got {exact_steps}")
    n, T = len(x0), d.num_timesteps
    first = min(exact_steps, T)
    total = d.prior_bpd(x0)
    # from T-1 down, as d.bpd draws its noise: the blocks, then the exact first steps
    starts = list(range(first, T, stride))[::-1] + list(range(first - 1, -1, -1))
    device = noise_generator.device if noise_generator is not None else "cpu"
    for start in starts:
        weight = 1 if start < first else min(start + stride, T) - start
        t = torch.full((n,), start, dtype=torch.long, device=x0.device)
        if weight > 1:
            t = t + torch.randint(weight, (n,), generator=noise_generator, device=device).to(x0.device)
        noise = _diffusion._randn(x0.shape, noise_generator, x0.device, x0.dtype)
        x_t = d.q_sample(x0, t, noise)
        total = total + weight * d.vb_terms_bpd(d.model_call(model, x_t, t), x0, x_t, t)
    return total


def strided_bpd_calls(T: int, stride: int, exact_steps: int = STRIDED_EXACT_STEPS) -> int:
    """Network calls per image of :func:`strided_bpd`: the exact first steps and one per block."""
    first = min(exact_steps, T)
    return first + len(range(first, T, stride))


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def bench_evaluation(device: torch.device, n_images: int = 32, strides: tuple[int, ...] = (10, 50),
                     extractor: Any = "classifier:mnist5k", feature_images: int = 512, model: nn.Module | None = None,
                     images: torch.Tensor | None = None, T: int = 1000, seed: int = 0) -> dict:
    """The cost of evaluation: exact bits/dim (T network calls) against strided estimates, and
    feature extraction one image at a time against batches.

    :param model: the network for bits/dim; default the book's trained ``digits`` model if it is
        cached, else a fresh ``cpu-digits`` network (the times are the same, the values are not).
    :param images: test images for bits/dim (default: ``n_images`` of the digits test split).
    :param extractor: a ``features.get_extractor`` name or a ``FeatureExtractor`` (then the
        feature images are random 28x28 ones).
    :param T: steps of the linear-schedule process whose bound is computed.
    """
    from . import data, features, train

    source = "given"
    if model is None:
        cfg = train.book_config("digits")
        cached = train.cached_run_dir(cfg) / train.CHECKPOINT_NAME
        if cached.exists():
            model, source = train.load_checkpoint(cached, map_location=device).ema, "trained digits model of the book"
        else:
            torch.manual_seed(seed)
            model, source = unet.UNet.from_preset("cpu-digits"), "untrained cpu-digits network"
    model = model.to(device).eval()
    if images is None:
        images = data.load_dataset("digits", "test").x[:n_images]
    x0 = images.to(device)
    d = _diffusion.GaussianDiffusion(schedules.get_betas("linear", T))
    exact, wall, cpu = _timed(lambda: d.bpd(model, x0, noise_generator=torch.Generator(device).manual_seed(seed)))
    bpd = dict(model=source, images=len(x0), image_shape=list(x0.shape[1:]), T=d.num_timesteps,
               exact=dict(calls=d.num_timesteps, wall_s=wall, cpu_s=cpu, bpd=float(exact["total_bpd"].mean())),
               strided=[])
    for stride in strides:
        est, wall, cpu = _timed(lambda: strided_bpd(d, model, x0, stride, torch.Generator(device).manual_seed(seed)))
        bpd["strided"].append(dict(stride=stride, calls=strided_bpd_calls(d.num_timesteps, stride), wall_s=wall,
                                   cpu_s=cpu, bpd=float(est.mean()), speedup=bpd["exact"]["wall_s"] / wall))
    ext = features.get_extractor(extractor, device) if isinstance(extractor, str) else extractor
    imgs = data.load_dataset("mnist5k", "test").x[:feature_images] if isinstance(extractor, str) else \
        torch.rand(feature_images, 1, 28, 28) * 2 - 1
    feats = dict(extractor=getattr(ext, "name", str(ext)), images=len(imgs), batches=[])
    ext.features(imgs[:8], batch_size=8)  # warm-up
    for bs in (1, 32, 256):
        n = len(imgs) if bs > 1 else min(len(imgs), 128)
        _, wall, cpu = _timed(lambda: ext.features(imgs[:n], batch_size=bs))
        feats["batches"].append(dict(batch_size=bs, images=n, wall_s=wall, cpu_s=cpu, images_per_s=n / wall))
    feats["speedup"] = feats["batches"][-1]["images_per_s"] / feats["batches"][0]["images_per_s"]
    return dict(bpd=bpd, features=feats)


# ---------------------------------------------------------------------- the whole run
def machine_info(device: torch.device) -> dict:
    """Where and when the numbers were measured."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                device=device.type, cpu=cpu, cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), load_average=list(os.getloadavg()),
                python=platform.python_version(), torch=torch.__version__, platform=platform.platform())
    with contextlib.suppress(md.PackageNotFoundError):
        info["diffusers"] = md.version("diffusers")
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2 ** 30,
                    bf16_peak_tflops=(bf16_peak(device) or 0) / 1e12 or None, cuda=torch.version.cuda)
    return info


def run(device: str | torch.device | None = None, cases: list | None = None, kinds: tuple[str, ...] = ("training", "sampling"),
        repeats: int = 5, inner: int = 1, warmup: int = 2, compile_presets: tuple[str, ...] = ("ddpm-cifar10",),
        settings: bool = True,
        cpu_compile: bool = False, evaluation: bool = True, eval_kwargs: dict | None = None,
        progress: bool = True, partial: str | Path | None = None) -> dict:
    """The whole benchmark as a JSON-ready dict.

    :param cases: ``(preset, batch)`` or ``(preset, batch, overrides)``; default ``CPU_CASES`` or
        ``GPU_CASES`` by device.
    :param partial: write the result so far to this JSON file after every case (a crash or a
        time limit then loses only the case in progress).
    :param compile_presets: presets that also get a ``torch.compile`` variant on CUDA (compiling
        takes a minute or more per network and kind).
    :param cpu_compile: on a CPU, time compiled sampling (``ddpm_core+compile``, every preset) and
        compiled training (in the CPU settings); each compiles for tens of seconds on two cores.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # for both libraries: fixed shapes, pick the fastest kernels
    cases = cases if cases is not None else (GPU_CASES if device.type == "cuda" else CPU_CASES)
    result = dict(schema=SCHEMA, machine=machine_info(device), targets=TARGETS[device.type if device.type == "cuda" else "cpu"],
                  settings=dict(repeats=repeats, inner=inner, warmup=warmup), training=[], sampling=[])
    if device.type != "cuda":
        result["gpu"] = "not measured (no CUDA device); see benchmarks/ for a GPU run"
    for case in cases:
        preset, batch, overrides = (tuple(case) + ({},))[:3]
        for kind in kinds:
            if progress:
                print(f"[bench] {kind} {preset} batch {batch} on {device.type} ...", file=sys.stderr, flush=True)
            compile_ok = preset in compile_presets if device.type == "cuda" else cpu_compile
            result[kind].append(bench_case(preset, batch, kind, device, repeats, inner, warmup, compile_ok, overrides))
            if partial is not None:
                Path(partial).write_text(json.dumps(result, indent=1) + "\n")
    if settings and device.type == "cpu":
        if progress:
            print("[bench] CPU settings ...", file=sys.stderr, flush=True)
        result["cpu_settings"] = bench_cpu_settings(repeats=repeats, compile_too=cpu_compile)
    if evaluation:
        if progress:
            print("[bench] evaluation ...", file=sys.stderr, flush=True)
        result["evaluation"] = bench_evaluation(device, **(eval_kwargs or {}))
    result["machine"]["load_average_end"] = list(os.getloadavg())
    return result


def format_table(result: dict) -> str:
    """A plain-text table of a :func:`run` result: throughput per variant and the ratios."""
    m = result["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} threads"
    lines = [f"measured {m['date']} on {where}; torch {m['torch']}, diffusers {m.get('diffusers')}; "
             f"load average {m['load_average'][0]:.1f} at the start"]
    for kind in ("training", "sampling"):
        unit = "img/s" if kind == "training" else "img/s per reverse step"
        for case in result.get(kind, []):
            lines.append(f"\n{kind}: {case['preset']}, batch {case['batch']}, {case['precision']}, "
                         f"{case['parameters']:,} parameters ({unit}); load {case['load_before'][0]:.1f}")
            for name, r in case["variants"].items():
                extra = ""
                if r.get("mfu"):
                    extra += f"  MFU {r['mfu']:.1%}"
                if r.get("memory"):
                    extra += f"  peak {r['memory']['peak_gib']:.2f} GiB"
                lines.append(f"  {name:20s} {r['images_per_s']:10.1f}  step {r['step_s'] * 1e3:9.2f} ms"
                             f"  (cpu {r['cpu_step_s'] * 1e3:9.2f} ms){extra}")
            lines.append(f"  ddpm_core / diffusers: {case['ratio']:.2f}x (wall), {case['ratio_cpu_time']:.2f}x (cpu time), "
                         f"{_ratio_paired(case['variants']):.2f}x (paired rounds);"
                         f" best ({case['best']}): {case['ratio_best']:.2f}x")
            if case["best"] != "ddpm_core" and "ratio_best_cpu_time" in case:
                lines[-1] += f", {case['ratio_best_cpu_time']:.2f}x (cpu time), {case['ratio_best_paired']:.2f}x (paired)"
    if "cpu_settings" in result:
        s = result["cpu_settings"]
        lines.append(f"\nCPU settings, ddpm_core training {s['preset']} batch {s['batch']} (img/s):")
        for name, r in s["variants"].items():
            lines.append(f"  {name:26s} {r['images_per_s']:8.1f}  (first step {r['warmup_s']:.1f} s)")
    if "evaluation" in result:
        b, f = result["evaluation"]["bpd"], result["evaluation"]["features"]
        lines.append(f"\nbits/dim on {b['images']} images ({b['model']}): exact {b['exact']['bpd']:.3f} in "
                     f"{b['exact']['wall_s']:.1f} s ({b['exact']['calls']} calls)")
        for e in b["strided"]:
            lines.append(f"  stride {e['stride']:3d}: {e['bpd']:.3f} in {e['wall_s']:.1f} s ({e['calls']} calls, "
                         f"{e['speedup']:.1f}x faster)")
        lines.append(f"features ({f['extractor']}): " + ", ".join(
            f"batch {b_['batch_size']}: {b_['images_per_s']:.0f} img/s" for b_ in f["batches"])
            + f"; batched {f['speedup']:.1f}x faster")
    return "\n".join(lines)


def summary_rows(result: dict) -> list[dict]:
    """One row per (kind, preset) of a :func:`run` result: the package called eagerly against
    diffusers (``ratio``, ``ratio_cpu_time``, ``ratio_paired``), the fastest of the package's ways
    of running (``best``, its throughput ``best_rate`` and the same three ratios ``ratio_best...``),
    and (on CUDA) MFU and peak memory."""
    rows = []
    for kind in ("training", "sampling"):
        for case in result.get(kind, []):
            ours, theirs, best = (case["variants"][n] for n in ("ddpm_core", "diffusers", case["best"]))
            paired = _ratio_paired(case["variants"])
            if case["best"] == "ddpm_core":
                best_cpu, best_paired = case["ratio_cpu_time"], paired
            else:  # runs saved before these were stored: from the variant's own times
                best_cpu, best_paired = case.get("ratio_best_cpu_time"), case.get("ratio_best_paired")
                if best_cpu is None:  # (a captured variant's CPU time comes from its own rounds)
                    best_cpu = theirs["cpu_step_s"] / best["cpu_step_s"]
                if best_paired is None:
                    best_paired = _ratio_paired(case["variants"], case["best"])
            rows.append(dict(kind=kind, preset=case["preset"], batch=case["batch"], precision=case["precision"],
                             parameters=case["parameters"], ddpm_core=ours["images_per_s"],
                             diffusers=theirs["images_per_s"], ratio=case["ratio"], ratio_cpu_time=case["ratio_cpu_time"],
                             ratio_paired=paired, best=case["best"], best_rate=best["images_per_s"],
                             ratio_best=case["ratio_best"], ratio_best_cpu_time=best_cpu, ratio_best_paired=best_paired,
                             mfu=best.get("mfu"), peak_gib=(best.get("memory") or {}).get("peak_gib"),
                             load=case["load_before"][0]))
    return rows


def _html_table(head: list[str], body: list[list[str]], caption: str = "", head_rows: list[str] | None = None) -> str:
    """An HTML table in the book's house style (class ``ddpm-table``: padded cells, caption under
    the table); cells are trusted HTML (numbers, ``<code>``, ``<span>``). The text is at 0.9 of the
    page's also through an inline style, which holds in Jupyter and Colab too.

    :param head_rows: header rows given as whole ``<tr>...</tr>`` HTML (for spanning headers);
        default one row of ``head``. A body cell that starts with ``<td`` or ``<th`` is taken whole
        (a cell with a rowspan, or a row header).
    """
    rows = head_rows or ["<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    out = ['<table class="ddpm-table" style="font-size: 0.9em">']
    if caption:
        out.append(f"<caption>{caption}</caption>")
    out.append("<thead>" + "".join(rows) + "</thead><tbody>")
    out += ["<tr>" + "".join(c if c.startswith(("<td", "<th")) else f"<td>{c}</td>" for c in r) + "</tr>" for r in body]
    out.append("</tbody></table>")
    return "".join(out)


def _name(text: str) -> str:
    """A preset or variant name as code that does not break at its hyphens."""
    return f'<code style="white-space: nowrap">{text}</code>'


def _wrapping_name(text: str) -> str:
    """A variant or mode name as code that may wrap after its ``+`` and ``-`` (narrow columns)."""
    return f"<code>{text.replace('+', '+<wbr>').replace('-', '-<wbr>')}</code>"


def mode_name(best: str) -> str:
    """A variant of the package as the tables name its mode: "eager" for ``ddpm_core``, "compile"
    for ``ddpm_core+compile``, "compile+graph" for ``ddpm_core+compile+graph``."""
    return best.removeprefix("ddpm_core").lstrip("+") or "eager"


def _compact_count(n: int) -> str:
    """A parameter count as the table shows it: 280k, 1.62M, 35.7M (the exact count on hover)."""
    short = f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.0f}k"
    return f'<span title="{n:,} parameters">{short}</span>'


def _rate(x: float) -> str:
    """A throughput with three or more significant digits and no needless decimals: 1,945, 174, 2.5."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _percent(x: float) -> str:
    """A fraction as a percentage with at least two significant digits: 16.3%, 1.2%, 0.21%, 0.037%."""
    p = 100 * x
    digits = 1 if p <= 0 else max(1, 1 - math.floor(math.log10(p)))
    return f"{p:.{digits}f}%"


def cpu_name(result: dict) -> str:
    """The processor of a :func:`run` result without trademark signs ("Intel Xeon Processor")."""
    name = re.sub(r"\((?:R|TM|r|tm)\)", "", result["machine"].get("cpu") or "")
    return re.sub(r"\s+", " ", name).strip() or "unknown CPU"


def _when(machine: dict) -> str:
    """A run's date as ``YYYY-MM-DD HH:MM`` (UTC)."""
    return machine["date"][:16].replace("T", " ")


def _threads(n: int, what: str = "thread") -> str:
    """"1 thread", "2 threads" (or another ``what``)."""
    return f"{n} {what}{'s' if n != 1 else ''}"


def wait_policy(result: dict) -> str:
    """How OpenMP's idle threads waited in a CPU run: ``"passive"`` or ``"active"`` where the run set
    ``OMP_WAIT_POLICY``, else ``"default"`` (spin a while, then sleep). Passive threads sleep at the
    end of every parallel region, which slows two-thread steps of small networks on an idle machine
    (e.g. ``benchmarks/cpu-2026-12-07-b.json`` against ``-c.json``)."""
    policy = (result["machine"].get("omp_wait_policy") or "").strip().lower()
    return policy if policy in ("passive", "active") else "default"


def machine_text(result: dict) -> str:
    """Where and when a :func:`run` result was measured, as one caption sentence: the date (UTC)
    and the GPU, or the processor, its cores, PyTorch's threads, OpenMP's wait policy and the load
    average at the start."""
    m = result["machine"]
    when = _when(m) + " UTC"
    if m.get("gpu"):
        return f"Measured {when} on an {m['gpu']}."
    return (f"Measured {when} on an {cpu_name(result)}, {m['cpu_count']} cores, "
            f"{_threads(m['torch_threads'], 'PyTorch thread')} ({wait_policy(result)} OpenMP waiting), "
            f"load average {m['load_average'][0]:.1f} at the start.")


def summary_html(rows: list[dict], caption: str = "") -> str:
    """:func:`summary_rows` as an HTML table (images / s; ratios ddpm_core over diffusers), narrow
    enough for the book's text column: the rows grouped by kind, each preset with its compact
    parameter count and batch. On a CPU the three ratios (wall clock, CPU time, paired rounds) side
    by side, of the package's fastest mode (named in a mode column where one row is not eager); on a
    GPU the eager ratio, the fastest of the package's modes and its ratio, MFU and peak memory.
    ``caption`` (e.g. :func:`machine_text`) follows the caption's sentence on units."""
    gpu = any(r["mfu"] is not None for r in rows)
    others = any(r["best"] != "ddpm_core" for r in rows)  # a compiled or graphed variant was fastest somewhere
    span = lambda h: f'<th rowspan="2">{h}</th>'
    if gpu:  # the host's CPU time and the paired rounds add nothing to the wall-clock ratio
        # short headers (the table must fit the book's text column; "(fastest)" made it 23 px too
        # wide): "its ratio" is the ratio of the fastest mode named in the column before it
        tail = (["fastest mode", "its ratio"] if others else []) + ["MFU", "peak GiB"]
        head_rows = ["<tr>" + span("preset") + '<th colspan="2">images / s</th>' + span("eager ratio")
                     + "".join(span(h) for h in tail) + "</tr>", "<tr><th>ddpm_core</th><th>diffusers</th></tr>"]
        width = 4 + len(tail)
    else:
        ratios = ["wall clock", "CPU time", "paired rounds"]
        head_rows = ["<tr>" + span("preset") + (span("mode") if others else "") + '<th colspan="2">images / s</th>'
                     + '<th colspan="3">ratio ddpm_core / diffusers</th></tr>',
                     "<tr><th>ddpm_core</th><th>diffusers</th>" + "".join(f"<th>{h}</th>" for h in ratios) + "</tr>"]
        width = 6 + others  # preset, [mode], two rates, three ratios
    body = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        body.append([f'<th colspan="{width}">{kind}</th>'])
        for r in (r for r in rows if r["kind"] == kind):
            cells = [f'{_name(r["preset"])}<br><span style="white-space: nowrap">{_compact_count(r["parameters"])}, '
                     f'batch {r["batch"]}</span>']
            if gpu:
                cells += [_rate(r["ddpm_core"]), _rate(r["diffusers"]), f"{r['ratio']:.2f}x"]
                if others:
                    cells += [_wrapping_name(mode_name(r["best"])), f"{r['ratio_best']:.2f}x"]
                cells += [_percent(r["mfu"]) if r["mfu"] is not None else "-",
                          f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"]
            else:
                cells += ([_wrapping_name(mode_name(r["best"]))] if others else []) + [_rate(r["best_rate"]), _rate(r["diffusers"])]
                cells += [f"{r[k]:.2f}x" for k in ("ratio_best", "ratio_best_cpu_time", "ratio_best_paired")]
            body.append(cells)
    units = ("Throughput in images per second (sampling: images through one reverse step); under each "
             "preset its parameter count (exact on hover) and batch.")
    if others and gpu:
        units += (" Fastest mode: the fastest way the package ran, eager or with compile (torch.compile) "
                  "and graph (replayed from a CUDA graph).")
    elif others:
        units += (" Mode: the fastest way the package ran, eager or compile (torch.compile); its throughput "
                  "and ratios are shown.")
    return _html_table([], body, f"{units} {caption}".strip(), head_rows)


def variants_html(result: dict, caption: str = "") -> str:
    """Every variant's throughput relative to diffusers as shipped, per (kind, preset): what each
    setting (channels-last, compile, CUDA graphs) is worth. Rows grouped by kind; the package's
    variants first (its ways of running, then the informative ones), then diffusers'; the variant
    names may wrap after their ``+`` and ``-``, so that the table fits the book's text column."""
    kinds = [k for k in ("training", "sampling") if result.get(k)]
    names = list(dict.fromkeys(n for k in kinds for c in result[k] for n in c["variants"]))
    names.sort(key=lambda n: (n.startswith("diffusers"), "-" in n))  # stable: first-seen order within a group
    body = []
    for kind in kinds:
        body.append([f'<th colspan="{1 + len(names)}">{kind}</th>'])
        for c in result[kind]:
            base = c["variants"]["diffusers"]["images_per_s"]
            body.append([_name(c["preset"])] + [
                f"{c['variants'][n]['images_per_s'] / base:.2f}x" if n in c["variants"] else "-" for n in names])
    head = ["preset"] + [_wrapping_name(n) for n in names]
    text = f"Throughput of each variant over that of diffusers as shipped. {caption}".strip()
    return _html_table(head, body, text)


def history_html(saved: list[tuple[Path, dict]], caption: str = "") -> str:
    """The saved runs of :func:`saved_results`, one compact table: a row per run and kind, a column
    per preset, each cell the three ratios ddpm_core / diffusers (wall clock · CPU time · paired
    rounds); the run's threads, load average and (CPU) OpenMP wait policy beside its date."""
    presets = list(dict.fromkeys(c["preset"] for _, res in saved for kind in ("training", "sampling")
                                 for c in res.get(kind, [])))
    body = []
    for _, res in saved:
        m = res["machine"]
        rows = {(r["kind"], r["preset"]): r for r in summary_rows(res)}
        kinds = [k for k in ("training", "sampling") if res.get(k)]
        for i, kind in enumerate(kinds):
            cells = []
            if i == 0:
                cells.append(f'<td rowspan="{len(kinds)}" style="white-space: nowrap">{_when(m)}'
                             f'<br>{_threads(m["torch_threads"])}, '
                             f'load {m["load_average"][0]:.1f}'
                             + ("" if m.get("gpu") else f'<br>OpenMP {wait_policy(res)}') + '</td>')
            cells.append(kind)
            for p in presets:
                r = rows.get((kind, p))
                cells.append("-" if r is None else '<span style="white-space: nowrap">'
                             f"{r['ratio']:.2f} · {r['ratio_cpu_time']:.2f} · {r['ratio_paired']:.2f}</span>")
            body.append(cells)
    changes = []  # a preset whose network or batch changed between runs, under the same name
    for p in presets:
        seen = network_history(saved, p)
        if len(seen) > 1:
            changes.append(f"{_name(p)}: " + ", ".join(
                f"{_compact_count(n)} parameters at batch {b} from {date}" for date, n, b in seen))
    text = ("Each cell: ddpm_core's throughput (eager) over diffusers' by wall clock · by CPU time · by "
            "paired rounds. Run dates in UTC. "
            + (f"The presets changed between runs ({'; '.join(changes)}). " if changes else "") + caption).strip()
    return _html_table(["run", "kind"] + [_name(p) for p in presets], body, text)


def network_history(saved: list[tuple[Path, dict]], preset: str) -> list[tuple[str, int, int]]:
    """How a preset was timed over the saved runs: ``(date of the first run, parameters, batch)``
    each time its network or batch changed (dates as ``YYYY-MM-DD HH:MM``, UTC)."""
    out = []
    for _, res in saved:
        case = next((c for c in res.get("training", []) + res.get("sampling", []) if c["preset"] == preset), None)
        if case is not None and (not out or out[-1][1:] != (case["parameters"], case["batch"])):
            out.append((_when(res["machine"]), case["parameters"], case["batch"]))
    return out


def settings_html(result: dict, caption: str = "") -> str:
    """The CPU settings of a :func:`run` result (threads, memory format, compile) as an HTML table."""
    s = result["cpu_settings"]
    body = [[name, f"{r['images_per_s']:.1f}", f"{r['warmup_s']:.1f}"] for name, r in s["variants"].items()]
    text = (f"ddpm_core alone, training {_name(s['preset'])} at batch {s['batch']}; the first step "
            f"(untimed) includes compiling. {caption}").strip()
    return _html_table(["setting", "images / s", "first step (s)"], body, text)


def evaluation_html(result: dict, caption: str = "") -> str:
    """The evaluation costs of a :func:`run` result as an HTML table: bits/dim exact and strided,
    feature extraction one image at a time and in batches."""
    b, f = result["evaluation"]["bpd"], result["evaluation"]["features"]
    body = [["bits/dim, exact", str(b["images"]), f"{b['exact']['calls']:,}", "-", f"{b['exact']['wall_s']:.1f}",
             f"{b['exact']['bpd']:.3f} bits/dim", "1x"]]
    for e in b["strided"]:
        body.append([f"bits/dim, stride {e['stride']}", str(b["images"]), f"{e['calls']:,}", "-", f"{e['wall_s']:.1f}",
                     f"{e['bpd']:.3f} bits/dim", f"{e['speedup']:.0f}x"])
    one = f["batches"][0]["images_per_s"]
    for x in f["batches"]:
        body.append(["features", str(x["images"]), "1", str(x["batch_size"]), f"{x['wall_s']:.2f}",
                     f"{x['images_per_s']:,.0f} img/s", f"{x['images_per_s'] / one:.0f}x"])
    text = ("calls per image: how often the network runs for each image; seconds: wall-clock time of the "
            "whole computation; speed-up "
            f"over the first row of its kind. Features from the {f['extractor']}. {caption}").strip()
    return _html_table(["computation", "images", "calls per image", "batch", "seconds", "result", "speed-up"], body,
                       text)


def saved_results(kind: str = "cpu", folder: str | Path | None = None,
                  required: bool = False) -> list[tuple[Path, dict]]:
    """The saved runs ``benchmarks/<kind>-*.json`` as (path, result), the latest measured last.

    :param folder: default: the repository's ``benchmarks/`` (beside the package, or beside the
        current directory, e.g. ``book/``); an empty list where there is none (an installed copy).
    :param required: raise ``FileNotFoundError`` (saying where to run) instead of returning no runs."""
    if folder is None:
        candidates = [Path(__file__).resolve().parent.parent / "benchmarks", Path.cwd().parent / "benchmarks",
                      Path.cwd() / "benchmarks"]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:  # an installed copy (Colab): the saved runs live in the book's repository
            from . import runtime

            folder = runtime.cache_dir() / "benchmarks"
            folder.mkdir(parents=True, exist_ok=True)
            if not any(folder.glob(f"{kind}-*.json")):
                download_saved_results(kind, folder)
    folder = Path(folder)
    out = []
    for path in folder.glob(f"{kind}-*.json"):
        result = json.loads(path.read_text())
        if result.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not a ddpm_core.bench result (schema {result.get('schema')!r}, "
                             f"expected {SCHEMA!r}); re-run python -m ddpm_core.bench")
        out.append((path, result))
    if required and not out:
        raise FileNotFoundError(f"no saved {kind} benchmark results in {folder}: run this in a clone of the "
                                "book's repository (its benchmarks/ folder), where GitHub can be reached, "
                                f"or measure with python -m ddpm_core.bench")
    return sorted(out, key=lambda pr: pr[1]["machine"]["date"])


def target_case(saved: list[tuple[Path, dict]], kind: str = "training") -> dict | None:
    """The newest saved case of the targets' network and batch (``result["targets"]``: on a GPU the
    paper's ``ddpm-cifar10`` at batch 128) of one ``kind``: ``{"path", "result", "case", "row"}``
    (``row`` as in :func:`summary_rows`), or None where no saved run measured it."""
    for path, result in reversed(saved):
        t = result.get("targets") or {}
        for i, case in enumerate(result.get(kind, [])):
            if case["preset"] == t.get("preset") and case["batch"] == t.get("batch"):
                row = [r for r in summary_rows(result) if r["kind"] == kind][i]
                return {"path": path, "result": result, "case": case, "row": row}
    return None


REPOSITORY = "https://github.com/ddpm-book/ddpm-book"  # the book's repository (_config.yml: repository.url)


def download_saved_results(kind: str, folder: Path, repository: str = REPOSITORY, timeout: float = 20.0) -> int:
    """Copy ``benchmarks/<kind>-*.json`` of the book's repository into ``folder`` (where there is
    internet, e.g. Colab, whose installed package has no ``benchmarks/``). :return: files written
    (0 offline: nothing is raised, the caller finds no results)."""
    import urllib.request

    api = repository.rstrip("/").replace("https://github.com/", "https://api.github.com/repos/") + "/contents/benchmarks"
    written = 0
    try:
        with urllib.request.urlopen(api, timeout=timeout) as response:
            listing = json.load(response)
        for item in listing:
            name = str(item.get("name", ""))
            if name.startswith(f"{kind}-") and name.endswith(".json") and "/" not in name:
                with urllib.request.urlopen(item["download_url"], timeout=timeout) as response:
                    (Path(folder) / name).write_bytes(response.read())
                written += 1
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return written


def default_output(result: dict) -> Path:
    """``benchmarks/<cpu|gpu>-<YYYY-MM-DD>.json`` next to the package."""
    kind = "gpu" if result["machine"]["device"] == "cuda" else "cpu"
    return Path(__file__).resolve().parent.parent / "benchmarks" / f"{kind}-{result['machine']['date'][:10]}.json"


def _preset_case(spec: str, parser: argparse.ArgumentParser) -> tuple[str, int]:
    """``(preset, batch)`` of one ``--presets`` entry ``preset:batch``; a usage error otherwise."""
    def fail(why: str):
        parser.error(f"--presets: {why} (expected comma-separated preset:batch pairs, e.g. cpu-digits:64)")

    preset, sep, batch = spec.strip().partition(":")
    if not sep or not preset or not batch:
        fail(f"{spec!r} is not preset:batch")
    if not batch.isdigit() or int(batch) < 1:
        fail(f"batch {batch!r} of {spec!r} is not an int >= 1")
    if preset not in unet.PRESETS:
        fail(f"unknown preset {preset!r}; choose one of {sorted(unet.PRESETS)}")
    return preset, int(batch)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m ddpm_core.bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--presets", default=None, help="comma-separated preset:batch pairs, e.g. cpu-mnist:64")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per variant (median taken)")
    parser.add_argument("--inner", type=int, default=1, help="steps per timed run")
    parser.add_argument("--threads", type=int, default=None, help="PyTorch CPU threads (default: PyTorch's choice)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--compile-presets", default="ddpm-cifar10",
                        help="comma-separated presets with a torch.compile variant on CUDA ('' for none)")
    parser.add_argument("--cpu-compile", action="store_true", help="also time torch.compile on the CPU: compiled sampling of every preset and compiled "
                             "training in the CPU settings (each first step compiles: seconds to minutes)")
    parser.add_argument("--kinds", default="training,sampling",
                        help="what to time: training, sampling or both (comma-separated)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation costs")
    parser.add_argument("--quick", action="store_true", help="cpu-digits only, 3 rounds, small evaluation")
    parser.add_argument("--out", default=None, help="JSON file (default benchmarks/<cpu|gpu>-<date>.json; '-' for none)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = None
    if args.presets:
        cases = [_preset_case(p, parser) for p in args.presets.split(",")]
    eval_kwargs = {}
    if args.quick:
        cases = cases or [("cpu-digits", 32)]
        args.repeats = min(args.repeats, 3)
        eval_kwargs = dict(n_images=8, strides=(50,), feature_images=64)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or set(kinds) - {"training", "sampling"}:
        parser.error(f"--kinds {args.kinds!r}: name training, sampling or both, comma-separated")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = None
    if args.out != "-":
        today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        path = Path(args.out) if args.out else default_output({"machine": {"device": device.type, "date": today}})
        path.parent.mkdir(parents=True, exist_ok=True)
    result = run(device, cases, kinds=kinds, repeats=args.repeats, inner=args.inner, warmup=args.warmup,
                 compile_presets=tuple(p for p in args.compile_presets.split(",") if p), cpu_compile=args.cpu_compile,
                 evaluation=not args.no_eval, eval_kwargs=eval_kwargs, settings=not args.quick, partial=path)
    print(format_table(result))
    if path is not None:
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
