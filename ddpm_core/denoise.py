"""Denoising real noisy images with a trained diffusion model, and two classical baselines.

An image observed with additive Gaussian noise, ``y = x0 + sigma * eps`` (``x0`` in [-1, 1]),
is, up to a scale, a state of the forward process: ``x_t = sqrt(alpha_bar_t) x0 +
sqrt(1 - alpha_bar_t) eps`` equals ``sqrt(alpha_bar_t) * y`` when

    sigma^2 = (1 - alpha_bar_t) / alpha_bar_t,   i.e.   alpha_bar_t = 1 / (1 + sigma^2).

So a model trained to generate can denoise: pick the step ``t`` whose noise level matches
``sigma``, scale ``y`` by ``sqrt(alpha_bar_t)``, and either read the network's one-step estimate
of x0 (``pred_x0``, an estimate of the posterior mean E[x0 | y]) or run the reverse chain
(Algorithm 2 of Ho et al. 2020) from step ``t`` down to 0, which draws a sample of p(x0 | y).

The baselines are a Gaussian blur (its width tuned on other images) and a median filter.
PSNR is ``10 log10(range^2 / MSE)`` per image with range 2 for [-1, 1] images.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from . import runtime, sampling
from .diffusion import GaussianDiffusion

__all__ = [
    "add_noise", "step_for_sigma", "sigma_at_step", "truncate", "denoise_one_step", "denoise_chain",
    "psnr", "gaussian_blur", "median_filter", "tune_blur_width", "benchmark",
]


# ---------------------------------------------------------------------- noise and steps
def add_noise(x0: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The noisy observation ``y = x0 + sigma * eps``, eps ~ N(0, I) (no clipping).

    :param x0: the [N x C x H x W] clean images in [-1, 1].
    :param sigma: noise standard deviation on the [-1, 1] scale (half of it on a [0, 1] scale).
    """
    if not sigma >= 0:
        raise ValueError(f"sigma must be a non-negative noise level, got {sigma!r}")
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                      device=generator.device if generator is not None else x0.device).to(x0.device)
    return x0 + sigma * eps


def sigma_at_step(d: GaussianDiffusion, t: int) -> float:
    """The noise level of step ``t`` measured on the data's scale: sqrt((1 - alpha_bar_t) / alpha_bar_t)."""
    _check_step(d, t)
    ab = float(d.alpha_bar[t])
    return math.sqrt((1.0 - ab) / ab)


def step_for_sigma(d: GaussianDiffusion, sigma: float) -> int:
    """The step t whose noise level ``sigma_at_step(d, t)`` is closest to ``sigma`` (in log scale).

    :raises ValueError: sigma is not positive, or beyond the last step's noise level.
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be positive (sigma = 0 needs no denoising), got {sigma!r}")
    ab = d.alpha_bar
    log_sigma = 0.5 * (torch.log1p(-ab) - torch.log(ab))  # log of sigma_at_step, [T]
    if math.log(sigma) > float(log_sigma[-1]):
        raise ValueError(f"sigma = {sigma} is noisier than the last step (sigma_T = {math.exp(float(log_sigma[-1])):.3g}); "
                         "the image holds no information the process can recover")
    return int(torch.argmin((log_sigma - math.log(sigma)).abs()))


def _check_step(d: GaussianDiffusion, t: int) -> None:
    """Reject a step outside ``d``'s 0-indexed steps 0..T-1."""
    if not 0 <= t < d.num_timesteps:
        raise ValueError(f"t must be a 0-indexed step in 0..{d.num_timesteps - 1}, got {t}; step_for_sigma(d, sigma) "
                         "picks the step of a noise level")


def truncate(d: GaussianDiffusion, t: int) -> GaussianDiffusion:
    """The process over steps 0..t of ``d``: same betas (hence the same alpha_bar and posterior),
    same model indices, so that ``ddpm_sample`` on it runs the reverse chain from step t only."""
    _check_step(d, t)
    timestep_map = None if d.timestep_map is None else d.timestep_map[: t + 1]
    return GaussianDiffusion(d.betas[: t + 1], d.mean_type, d.var_type, d.loss_type, timestep_map=timestep_map)


def _device(model: Callable) -> torch.device:
    """The device of a module's parameters (CPU for a plain function)."""
    params = getattr(model, "parameters", None)
    for p in (params() if callable(params) else ()):
        return p.device
    return torch.device("cpu")


def _check_noisy(y, sigma: float) -> None:
    """Refuse a noisy ``y`` that cannot be ``x0 + sigma * eps`` for images x0 in [-1, 1]: not a
    tensor, NaN/inf, or values beyond 1 + 10 sigma (more than ten standard deviations out: another
    scale, most likely 0..255 pixels)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor [N, C, H, W] of noisy images, got {type(y).__name__}; "
                        "use torch.as_tensor(y)")
    if y.numel() and not bool(torch.isfinite(y).all()):
        raise ValueError("y holds NaN or infinite values; pass the noisy images x0 + sigma * eps")
    reach = 1.0 + 10.0 * float(sigma)
    peak = float(y.abs().max()) if y.numel() else 0.0
    if peak > reach:
        raise ValueError(f"y reaches {peak:.3g}, beyond what images in [-1, 1] with noise of "
                         f"sigma = {sigma:g} reach (1 + 10 sigma = {reach:.3g}): are they on another scale? Map "
                         "0..255 pixels with x / 127.5 - 1 before adding the noise, and give sigma on that scale")


def _scaled(d: GaussianDiffusion, y: torch.Tensor, t: int) -> torch.Tensor:
    return math.sqrt(float(d.alpha_bar[t])) * y


# ---------------------------------------------------------------------- the two diffusion denoisers
@torch.no_grad()
def denoise_one_step(model: Callable, d: GaussianDiffusion, y: torch.Tensor, sigma: float,
                     t: int | None = None) -> torch.Tensor:
    """One network call: the predicted x0 at the step matching ``sigma`` (an estimate of E[x0 | y]).

    :param y: the [N x C x H x W] noisy images ``x0 + sigma * eps``.
    :param t: the step to use (default ``step_for_sigma(d, sigma)``).
    :return: [N x C x H x W] denoised images in [-1, 1].
    """
    t = step_for_sigma(d, sigma) if t is None else t
    _check_step(d, t)
    _check_noisy(y, sigma)
    x_t = _scaled(d, y.to(_device(model)), t)
    steps = torch.full((len(y),), t, dtype=torch.long, device=x_t.device)
    out = d.p_mean_variance(d.model_call(model, x_t, steps), x_t, steps)
    return out["pred_x0"]


@torch.no_grad()
def denoise_chain(model: Callable, d: GaussianDiffusion, y: torch.Tensor, sigma: float,
                  steps: int | None = None, generator: torch.Generator | None = None,
                  t: int | None = None, progress: bool = False) -> torch.Tensor:
    """Run the reverse chain (Algorithm 2 of Ho et al.) from x_t = sqrt(alpha_bar_t) y down to x0.

    :param steps: None walks every step t, t-1, ..., 0; an int K walks K evenly spaced steps
        (respaced as in ``sampling.respace``; the first is t and the last 0).
    :return: [N x C x H x W] samples of p(x0 | y) in [-1, 1].
    """
    t = step_for_sigma(d, sigma) if t is None else t
    _check_noisy(y, sigma)
    proc = truncate(d, t)
    if steps is not None and steps < t + 1:
        proc = sampling.respace(proc, steps)
    return sampling.ddpm_sample(model, proc, tuple(y.shape), generator=generator, progress=progress,
                                x_T=_scaled(d, y, t))


# ---------------------------------------------------------------------- PSNR and baselines
def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each image in dB, [N]: ``10 log10(data_range^2 / MSE)``.

    ``x`` is clipped to [-1, 1] first (a displayed image cannot leave that range); with the default
    ``data_range`` the reference ``ref`` must lie in [-1, 1] (0..255 pixels raise instead of giving
    a PSNR near -37 dB).
    """
    if x.shape != ref.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but ref has {tuple(ref.shape)}")
    if data_range == 2.0 and ref.numel():  # the same bound as evaluation's clean images
        runtime.check_image_range(*(float(v) for v in torch.aminmax(ref)), limit=1 + 1e-6)
    mse = ((x.clamp(-1, 1) - ref) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp(min=1e-12))


def gaussian_blur(x: torch.Tensor, width: float) -> torch.Tensor:
    """Blur each channel with a Gaussian of standard deviation ``width`` pixels (reflect padding).

    ``width = 0`` returns ``x`` unchanged.
    """
    if width < 0:
        raise ValueError(f"width must be >= 0 pixels, got {width}")
    if width == 0:
        return x
    r = max(1, int(math.ceil(3 * width)))
    k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / width) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    h = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(h, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def median_filter(x: torch.Tensor, size: int = 3) -> torch.Tensor:
    """The median of each ``size x size`` neighbourhood (reflect padding), per channel."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"size must be an odd number of pixels >= 1, got {size}")
    r = size // 2
    n, c, h, w = x.shape
    padded = F.pad(x, (r, r, r, r), mode="reflect") if r else x
    patches = F.unfold(padded.reshape(n * c, 1, h + 2 * r, w + 2 * r), size)  # (N*C, size^2, H*W)
    return patches.median(dim=1).values.reshape(n, c, h, w)


def tune_blur_width(y: torch.Tensor, x0: torch.Tensor,
                    widths: Sequence[float] = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0, 1.2, 1.5, 2.0)) -> float:
    """The blur width with the best mean PSNR on (``y``, ``x0``): tune it on images that are not
    the ones the baseline is then scored on."""
    scores = [float(psnr(gaussian_blur(y, w), x0).mean()) for w in widths]
    return float(widths[max(range(len(widths)), key=scores.__getitem__)])


# ---------------------------------------------------------------------- the whole comparison
METHODS = ("noisy", "median 3x3", "Gaussian blur", "DDPM one step", "DDPM chain")


def benchmark(model: Callable, d: GaussianDiffusion, x0: torch.Tensor, x0_tune: torch.Tensor,
              sigmas: Sequence[float], seed: int = 0, chain_steps: int | None = None,
              progress: bool = False) -> tuple[list[dict], dict]:
    """Denoise ``x0 + sigma * eps`` for every sigma with every method of ``METHODS`` and score it.

    :param x0: [N x C x H x W] clean test images in [-1, 1] (the model never saw them); moved to
        the model's device.
    :param x0_tune: other clean images, used only to tune the blur width per sigma.
    :param chain_steps: steps of the reverse chain (None: all t + 1 of them).
    :return: (rows, images): one row per sigma with ``sigma``, ``t``, ``sigma_t`` (the step's own
        noise level), ``blur_width`` and the mean PSNR (dB) of each method; ``images[sigma]`` maps
        each method to its [N x C x H x W] output (``"clean"`` too).
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    device = _device(model)
    x0, x0_tune = x0.to(device), x0_tune.to(device)
    rows, images = [], {}
    for sigma in sigmas:
        y = add_noise(x0, sigma, gen)
        width = tune_blur_width(add_noise(x0_tune, sigma, gen), x0_tune)
        t = step_for_sigma(d, sigma)
        out = {"clean": x0, "noisy": y, "median 3x3": median_filter(y, 3), "Gaussian blur": gaussian_blur(y, width),
               "DDPM one step": denoise_one_step(model, d, y, sigma, t=t),
               "DDPM chain": denoise_chain(model, d, y, sigma, steps=chain_steps, generator=gen, t=t,
                                           progress=progress)}
        rows.append(dict(sigma=float(sigma), t=t, sigma_t=sigma_at_step(d, t), blur_width=width,
                         **{m: float(psnr(out[m], x0).mean()) for m in METHODS}))
        images[sigma] = out
    return rows, images
