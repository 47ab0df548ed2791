"""Noise schedules: the betas of Ho et al. 2020 (linear) and Nichol & Dhariwal 2021 (cosine),
and the quantities derived from them.

Every table is float64 (as in the reference code) and indexed by the 0-based step ``t``.
"""
from __future__ import annotations

import math

import torch

from . import runtime

SCHEDULES = {
    "linear": "Ho et al. 2020: betas linear from 1e-4 to 0.02 at T = 1000, scaled by 1000 / T",
    "cosine": "Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0), "
              "f(t) = cos^2((t/T + s) / (1 + s) * pi/2), s = 0.008, betas clipped at 0.999",
}


def get_betas(name: str, T: int) -> torch.Tensor:
    """Return the betas of schedule ``name`` for ``T`` steps as a float64 tensor [T].

    :param name: ``"linear"`` or ``"cosine"`` (see ``SCHEDULES``).
    :param T: number of diffusion steps (a Python or numpy integer, or a 0-d integer tensor): more
        than 20 for ``linear`` (its last beta, 0.02 * 1000 / T, must stay below 1), at least 1 for
        ``cosine`` (a ``GaussianDiffusion`` needs at least 2).
    """
    if isinstance(T, torch.Tensor) and T.ndim == 0 and not T.is_floating_point() and not T.is_complex() \
            and T.dtype != torch.bool:
        T = int(T)
    if not runtime.is_int(T) or T < 1:
        raise ValueError(f"T must be a positive integer number of steps, got {T!r}")
    T = int(T)
    if name == "linear":
        scale = 1000.0 / T  # keeps the schedule's shape for any T, as in improved-diffusion
        if T <= 20:
            raise ValueError(f"the linear schedule needs T > 20 (its last beta, 0.02 * 1000 / T = {20 / T:.3g}, "
                             "must stay below 1); use more steps or the 'cosine' schedule")
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64)
    if name == "cosine":
        return betas_from_alpha_bar(lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2, T)
    raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")


def betas_from_alpha_bar(alpha_bar_fn, T: int, max_beta: float = 0.999) -> torch.Tensor:
    """Discretise a continuous ``alpha_bar(u)``, ``u in [0, 1]``, into T betas:
    ``beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T)``, clipped at ``max_beta``."""
    betas = [min(1.0 - alpha_bar_fn((t + 1) / T) / alpha_bar_fn(t / T), max_beta) for t in range(T)]
    return torch.tensor(betas, dtype=torch.float64)


def derived(betas: torch.Tensor) -> dict[str, torch.Tensor]:
    """All float64 tables derived from ``betas`` [T].

    :return: a dict with keys ``betas``, ``alphas``, ``alpha_bar``, ``alpha_bar_prev``
        (``alpha_bar_{t-1}``, 1 at t = 0), ``alpha_bar_next``, ``sqrt_alpha_bar``,
        ``sqrt_one_minus_alpha_bar``, ``log_one_minus_alpha_bar``, ``sqrt_recip_alpha_bar``,
        ``sqrt_recipm1_alpha_bar``, ``posterior_variance`` (beta~_t, eq. 7 of Ho et al.),
        ``posterior_log_variance_clipped`` (t = 0 replaced by t = 1, as the reference code),
        ``posterior_mean_coef1`` (on x0), ``posterior_mean_coef2`` (on x_t) and ``snr``
        (alpha_bar / (1 - alpha_bar)).
    """
    betas = torch.as_tensor(betas, dtype=torch.float64)
    if betas.ndim != 1 or len(betas) == 0:
        raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}")
    if not bool(((betas > 0) & (betas <= 1)).all()):
        raise ValueError("betas must lie in (0, 1]; got values from "
                         f"{float(betas.min()):.3g} to {float(betas.max()):.3g}")
    alphas = 1.0 - betas
    alpha_bar = torch.cumprod(alphas, 0)
    one = torch.ones(1, dtype=torch.float64)
    alpha_bar_prev = torch.cat([one, alpha_bar[:-1]])
    alpha_bar_next = torch.cat([alpha_bar[1:], torch.zeros(1, dtype=torch.float64)])
    posterior_variance = betas * (1.0 - alpha_bar_prev) / (1.0 - alpha_bar)
    # beta~_0 = 0: its log is replaced by the t = 1 value (the reference code does the same)
    clipped = torch.cat([posterior_variance[1:2], posterior_variance[1:]]) if len(betas) > 1 \
        else posterior_variance.clamp(min=1e-20)
    return {
        "betas": betas,
        "alphas": alphas,
        "alpha_bar": alpha_bar,
        "alpha_bar_prev": alpha_bar_prev,
        "alpha_bar_next": alpha_bar_next,
        "sqrt_alpha_bar": alpha_bar.sqrt(),
        "sqrt_one_minus_alpha_bar": (1.0 - alpha_bar).sqrt(),
        "log_one_minus_alpha_bar": torch.log(1.0 - alpha_bar),
        "sqrt_recip_alpha_bar": (1.0 / alpha_bar).sqrt(),
        "sqrt_recipm1_alpha_bar": (1.0 / alpha_bar - 1.0).sqrt(),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": torch.log(clipped),
        "posterior_mean_coef1": betas * alpha_bar_prev.sqrt() / (1.0 - alpha_bar),
        "posterior_mean_coef2": (1.0 - alpha_bar_prev) * alphas.sqrt() / (1.0 - alpha_bar),
        "snr": alpha_bar / (1.0 - alpha_bar),
    }
