"""Samplers: ancestral DDPM sampling (Algorithm 2 of Ho et al. 2020), respaced sampling over a
subset of steps (Nichol & Dhariwal 2021, section 4) and DDIM (Song et al. 2021a, eq. 12).

Every sampler has a ``..._progressive`` twin that yields each intermediate state; figures and
animations use those instead of writing their own loop. Any callable ``model(x_t, t)`` works.
"""
from __future__ import annotations

import contextlib
import numbers
import operator
from typing import Callable, Iterator

import torch

from . import runtime
from .diffusion import GaussianDiffusion, _randn, check_generator


# ---------------------------------------------------------------------- respacing
def space_timesteps(num_timesteps: int, section_counts) -> list[int]:
    """Choose which original steps a respaced process keeps.

    :param section_counts: an int (that many evenly spaced steps; numpy integers too), a list of ints or a string
        ``"10,20,30"`` (the T steps are cut into equal sections, each gets its count, evenly
        spaced within it), or ``"ddimN"`` (N steps at a fixed integer stride, as in DDIM).
    :return: sorted list of 0-indexed original steps.
    """
    T = num_timesteps
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        if spec.startswith("ddim"):
            try:
                n = int(spec[4:])
            except ValueError:
                raise ValueError(f"bad respacing {spec!r}: expected 'ddimN' with an integer N") from None
            if not 2 <= n <= T:  # one step would leave no reverse step before the decoder
                raise ValueError(f"{n} DDIM steps asked for, but the process has T = {T}: pass 2 <= N <= {T}")
            for stride in range(1, T + 1):
                if len(range(0, T, stride)) == n:
                    return list(range(0, T, stride))
            raise ValueError(f"cannot take exactly {n} steps of T = {T} at an integer stride; "
                             "pick N that divides T, or use a plain count")
        try:
            section_counts = [int(s) for s in spec.split(",")]
        except ValueError:
            raise ValueError(f"bad respacing {spec!r}: expected an int, 'a,b,c' or 'ddimN'") from None
    elif isinstance(section_counts, numbers.Integral):  # numpy integers too
        section_counts = [section_counts]
    try:
        counts = [operator.index(c) for c in section_counts]
    except TypeError:
        raise TypeError("steps must be an int count, a list of ints, or a spec such as '10,20,30' or 'ddim50'; "
                        f"got {section_counts!r} ({type(section_counts).__name__}); use an int such as T // 4, "
                        "not T / 4") from None
    if not counts or any(c < 1 for c in counts):
        raise ValueError(f"every section needs at least one step, got {counts}")
    size, extra = divmod(T, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        section = size + (1 if i < extra else 0)
        if count > section:
            raise ValueError(f"cannot take {count} steps from a section of {section} steps (T = {T})")
        stride = 1.0 if count == 1 else (section - 1) / (count - 1)
        # a running sum of the stride, rounded, as improved-diffusion's respace.py does: round(k *
        # stride) picks the other neighbour where k * stride is exactly x.5 (e.g. T = 1000, 21 steps)
        position = 0.0
        for _ in range(count):
            steps.append(start + round(position))
            position += stride
        start += section
    return sorted(set(steps))


def respace(d: GaussianDiffusion, steps) -> GaussianDiffusion:
    """A process over a subset of ``d``'s steps (Nichol & Dhariwal 2021, section 4).

    Betas are recomputed from alpha_bar, ``beta'_k = 1 - alpha_bar_{s_k} / alpha_bar_{s_{k-1}}``,
    so the marginals q(x_{s_k} | x_0) are unchanged; the model is called with original indices
    through ``timestep_map``.

    :param steps: an int count, a section spec ``"10,20,30"`` or ``"ddimN"``
        (see ``space_timesteps``).
    """
    keep = torch.tensor(space_timesteps(d.num_timesteps, steps))
    alpha_bar = d.alpha_bar[keep]
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    base_map = d.timestep_map if d.timestep_map is not None else torch.arange(d.num_timesteps)
    return GaussianDiffusion(1.0 - alpha_bar / alpha_bar_prev, d.mean_type, d.var_type,
                             d.loss_type, timestep_map=base_map[keep])


# ---------------------------------------------------------------------- shared loop
def check_model(model) -> None:
    """Reject a ``train.TrainResult`` (or the like) passed where the network is expected."""
    if hasattr(model, "ema") and hasattr(model, "model") and not callable(model):
        raise TypeError(f"model must be a network, got a {type(model).__name__}; pass result.ema (the EMA weights, "
                        "for sampling and evaluation) or result.model")


def check_diffusion(d, model=None) -> None:
    """Reject anything but a ``GaussianDiffusion`` where the process is expected (the network and the
    process passed the other way round, most likely)."""
    if not isinstance(d, GaussianDiffusion):
        why = ("the model and the diffusion are swapped: call it as (model, diffusion, ...)"
               if isinstance(model, GaussianDiffusion) else "the samplers take (model, diffusion, ...)")
        raise TypeError(f"diffusion must be a GaussianDiffusion, got {type(d).__name__}; {why}")


def check_sampler_args(model, d, shape, generator=None, x_T=None) -> None:
    """The argument checks of every sampler, before any work: the model, the process, the generator
    and a given start ``x_T`` (a tensor of ``shape``). Types and shapes only: no host synchronisation."""
    check_model(model)
    check_diffusion(d, model)
    check_generator(generator)
    if x_T is not None:
        if not isinstance(x_T, torch.Tensor):
            raise TypeError(f"x_T must be a tensor of shape {tuple(shape)} (the start of the chain) or None, "
                            f"got {type(x_T).__name__}")
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)} but shape is {tuple(shape)}; x_T is the start "
                             "of the chain: pass shape=x_T.shape")


@contextlib.contextmanager
def eval_mode(model):
    """Run an ``nn.Module`` in eval mode (no dropout) inside the block, then give every submodule
    back the mode it had. Other callables are left alone."""
    check_model(model)
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, torch.nn.Module) else []
    if modes:
        model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


class Compiled(torch.nn.Module):
    """``net`` compiled with ``torch.compile``, for sampling: pass it to any sampler (or
    ``evaluation.sample_images``) in place of the network; the samples are the same to float
    precision. On a CPU a compiled reverse step of the book's small networks at their training
    batches (32 and 64 images) ran 1.15-1.31x faster than an eager one, the paper's network at
    batch 4 1.03-1.06x (``python -m ddpm_core.bench --cpu-compile``, benchmarks/cpu-2026-12-07*.json).
    But the first call compiles, 18-35 s per network on two cores with an empty compiler cache
    (seconds when the cache holds the code), and every new batch shape compiles again (static
    shapes; past PyTorch's limit of cached shapes it runs eagerly): on a cold cache the compiled
    network came out ahead only after 2,300-3,300 reverse steps at one batch shape, so it pays for
    several long runs, not for one. Where compiling fails (no C++ compiler) it warns once and
    samples eagerly.

    ``net`` stays the module's only submodule: ``state_dict``, ``eval()`` and the device follow it;
    a copy compiles its own network.
    """

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        check_model(net)
        if not isinstance(net, torch.nn.Module):
            raise TypeError(f"Compiled takes a network (an nn.Module), got {type(net).__name__}")
        self.net = net
        self._call = None  # compiled at the first call, from this module's own net

    def __getstate__(self):  # deepcopy and pickle: the copy compiles its own net
        return {**self.__dict__, "_call": None}

    @property
    def in_channels(self):  # the sample shape that evaluation.sample_images reads
        return getattr(self.net, "in_channels", None)

    @property
    def image_size(self):
        return getattr(self.net, "image_size", None)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._call is None:
            self._call = runtime.compiled_or_eager(self.net, "sampling", dynamic=False)
        return self._call(x_t, t)


def _model_device(model, device):
    if device is not None:
        return torch.device(device)
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _steps(T: int, progress: bool, desc: str):
    steps = range(T - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc=desc)
    return steps


class NonFiniteSampleError(FloatingPointError):
    """The model produced NaN or inf while sampling."""


def _raise_non_finite(step: int, T: int):
    raise NonFiniteSampleError(
        f"the model output holds NaN or inf at step t = {step} (of 0..{T - 1}, counted from the data side); "
        "check the checkpoint (a diverged run?) and the input range [-1, 1]")


def _finish(first_bad: torch.Tensor, T: int):
    bad = int(first_bad)  # the loop's single host synchronisation
    if bad >= 0:
        _raise_non_finite(bad, T)


def _track(first_bad: torch.Tensor, out: torch.Tensor, i: int) -> torch.Tensor:
    """Remember the first (highest) step whose model output is not finite, on the device."""
    bad = ~torch.isfinite(out).all()
    return torch.where(bad & (first_bad < 0), torch.full_like(first_bad, i), first_bad)


# ---------------------------------------------------------------------- DDPM
def ddpm_step(model: Callable, d: GaussianDiffusion, x_t: torch.Tensor, i: int,
              noise: torch.Tensor, clip_denoised: bool = True) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """One ancestral step x_t -> x_{t-1} at step index ``i`` (Algorithm 2, line 4).

    :return: (x_{t-1}, the ``p_mean_variance`` dict, the raw model output).
    """
    t = torch.full((len(x_t),), i, dtype=torch.long, device=x_t.device)
    model_out = d.model_call(model, x_t, t)
    out = d._p_mean_variance(model_out, x_t, t, clip_denoised=clip_denoised)
    if i > 0:  # no noise at the last step
        x_prev = out["mean"] + torch.exp(0.5 * out["log_variance"]) * noise
    else:
        x_prev = out["mean"]
    return x_prev, out, model_out


@torch.no_grad()
def ddpm_sample_progressive(model: Callable, d: GaussianDiffusion, shape, generator=None,
                            progress: bool = False, clip_denoised: bool = True, device=None,
                            x_T: torch.Tensor | None = None) -> Iterator[dict]:
    """Ancestral sampling (Algorithm 2 of Ho et al. 2020), yielding after every step a dict with
    ``t`` (the step just taken), ``x_t`` (the new state, i.e. x_{t-1} in the paper's 1-indexed
    notation) and ``pred_x0``. Checks each step's model output for NaN/inf. A model in training
    mode runs in eval mode until the generator is exhausted or closed."""
    check_sampler_args(model, d, shape, generator, x_T)
    device = _model_device(model, device)
    x = _randn(shape, generator, device) if x_T is None else x_T.to(device)
    with eval_mode(model):
        for i in _steps(d.num_timesteps, progress, "DDPM sampling"):
            noise = _randn(shape, generator, device, x.dtype)
            x, out, model_out = ddpm_step(model, d, x, i, noise, clip_denoised)
            if not bool(torch.isfinite(model_out).all()):
                _raise_non_finite(i, d.num_timesteps)
            yield {"t": i, "x_t": x, "pred_x0": out["pred_x0"]}


@torch.no_grad()
def ddpm_sample(model: Callable, d: GaussianDiffusion, shape, generator=None, progress: bool = False,
                clip_denoised: bool = True, device=None, x_T: torch.Tensor | None = None) -> torch.Tensor:
    """Ancestral sampling over all of ``d``'s steps (Algorithm 2 of Ho et al. 2020).

    Works for a respaced ``d`` too (strided sampling). The loop makes no host synchronisation per
    step: non-finite model outputs are tracked on the device and reported, with their step, at the end.
    An ``nn.Module`` in training mode samples in eval mode (no dropout) and gets its mode back.

    :param shape: the output shape [N, C, H, W] (or [N, D] for vectors).
    :param generator: a ``torch.Generator`` for reproducible noise.
    :return: the [N x C x H x W] samples.
    """
    check_sampler_args(model, d, shape, generator, x_T)
    device = _model_device(model, device)
    x = _randn(shape, generator, device) if x_T is None else x_T.to(device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    with eval_mode(model):
        for i in _steps(d.num_timesteps, progress, "DDPM sampling"):
            noise = _randn(shape, generator, device, x.dtype)
            x, _, model_out = ddpm_step(model, d, x, i, noise, clip_denoised)
            first_bad = _track(first_bad, model_out, i)
    _finish(first_bad, d.num_timesteps)
    return x


# ---------------------------------------------------------------------- DDIM
def ddim_step(model: Callable, d: GaussianDiffusion, x_t: torch.Tensor, i: int, noise: torch.Tensor | None,
              eta: float = 0.0, clip_denoised: bool = True) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """One DDIM step (Song et al. 2021a, eq. 12) at step index ``i`` of ``d``.

    sigma = eta * sqrt((1 - a_prev) / (1 - a)) * sqrt(1 - a / a_prev);
    x_prev = sqrt(a_prev) x0_pred + sqrt(1 - a_prev - sigma^2) eps + sigma * noise.
    """
    t = torch.full((len(x_t),), i, dtype=torch.long, device=x_t.device)
    model_out = d.model_call(model, x_t, t)
    out = d._p_mean_variance(model_out, x_t, t, clip_denoised=clip_denoised)
    eps = d.predict_eps_from_x0(x_t, t, out["pred_x0"])  # consistent with the clipped x0
    a = d._extract("alpha_bar", t, x_t)
    a_prev = d._extract("alpha_bar_prev", t, x_t)
    sigma = eta * torch.sqrt((1 - a_prev) / (1 - a)) * torch.sqrt(1 - a / a_prev)
    x_prev = a_prev.sqrt() * out["pred_x0"] + torch.sqrt(1 - a_prev - sigma ** 2) * eps
    if i > 0 and eta > 0:
        x_prev = x_prev + sigma * noise
    return x_prev, out, model_out


def _check_eta(eta: float) -> None:
    if not 0.0 <= eta <= 1.0:  # also rejects NaN
        raise ValueError(f"eta must lie in [0, 1] (0: deterministic DDIM, 1: DDPM-like variance); got {eta}")


def _ddim_process(d: GaussianDiffusion, steps) -> GaussianDiffusion:
    if steps is None:
        return d
    return respace(d, f"ddim{int(steps)}" if isinstance(steps, numbers.Integral) else steps)


@torch.no_grad()
def ddim_sample_progressive(model: Callable, d: GaussianDiffusion, shape, steps=None, eta: float = 0.0,
                            generator=None, progress: bool = False, clip_denoised: bool = True,
                            device=None, x_T: torch.Tensor | None = None) -> Iterator[dict]:
    """DDIM sampling yielding ``t``, ``x_t`` and ``pred_x0`` after every step (see ``ddim_sample``)."""
    _check_eta(eta)
    check_sampler_args(model, d, shape, generator, x_T)
    device = _model_device(model, device)
    d = _ddim_process(d, steps)
    x = _randn(shape, generator, device) if x_T is None else x_T.to(device)
    with eval_mode(model):
        for i in _steps(d.num_timesteps, progress, "DDIM sampling"):
            noise = _randn(shape, generator, device, x.dtype) if eta > 0 else None
            x, out, model_out = ddim_step(model, d, x, i, noise, eta, clip_denoised)
            if not bool(torch.isfinite(model_out).all()):
                _raise_non_finite(i, d.num_timesteps)
            yield {"t": i, "x_t": x, "pred_x0": out["pred_x0"]}


@torch.no_grad()
def ddim_sample(model: Callable, d: GaussianDiffusion, shape, steps=None, eta: float = 0.0,
                generator=None, progress: bool = False, clip_denoised: bool = True, device=None,
                x_T: torch.Tensor | None = None) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021a): deterministic at ``eta = 0``, ancestral-like at ``eta = 1``.

    :param steps: ``None`` (all of ``d``'s steps), an int N (respaced as ``"ddimN"``) or a
        respacing spec string (see ``space_timesteps``).
    :param eta: in [0, 1]; the scale of the noise added at each step.
    """
    _check_eta(eta)
    check_sampler_args(model, d, shape, generator, x_T)
    device = _model_device(model, device)
    d = _ddim_process(d, steps)
    x = _randn(shape, generator, device) if x_T is None else x_T.to(device)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)
    with eval_mode(model):
        for i in _steps(d.num_timesteps, progress, "DDIM sampling"):
            noise = _randn(shape, generator, device, x.dtype) if eta > 0 else None
            x, _, model_out = ddim_step(model, d, x, i, noise, eta, clip_denoised)
            first_bad = _track(first_bad, model_out, i)
    _finish(first_bad, d.num_timesteps)
    return x
