"""Small GAN, VAE and normalizing flow, trained side by side with diffusion in the comparison chapter.

One signature for every family::

    from ddpm_core import baselines
    model = baselines.build("vae", (1, 28, 28))            # "gan" | "vae" | "flow"; (2,) for points
    history = baselines.train(model, x, steps=500)          # x: tensor [N, *data_shape]
    images = baselines.sample(model, 64)                    # [64, 1, 28, 28] in [-1, 1]
    bpd = baselines.bits_per_dim(model, x_test)             # [N]; a GAN raises NoLikelihoodError

What each family shows: the GAN gives sharp samples but no likelihood, trains as a two-player
game and may drop modes; the VAE gives a bound on the likelihood (ELBO, or the tighter
importance-weighted bound) and blurry mean samples; the flow gives an exact (dequantized)
likelihood but needs an invertible architecture and gives weaker samples for its size.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable

import torch

from ._common import LN2, Baseline, fit, save_checkpoint
from .flow import Flow
from .gan import GAN, NoLikelihoodError
from .vae import VAE, discretized_logistic_log_prob

FAMILIES: dict[str, type[Baseline]] = {"gan": GAN, "vae": VAE, "flow": Flow}

__all__ = ["FAMILIES", "GAN", "VAE", "Flow", "Baseline", "NoLikelihoodError", "build", "train", "sample",
           "bits_per_dim", "load", "save_checkpoint", "discretized_logistic_log_prob"]


def build(family: str, data_shape: tuple[int, ...], size: str | None = None, seed: int = 0,
          **options: Any) -> Baseline:
    """A freshly initialised baseline on the CPU (move it with ``.to(device)``).

    :param family: "gan", "vae" or "flow".
    :param data_shape: ``(C, H, W)`` for images in [-1, 1] (e.g. (1, 28, 28), (3, 32, 32), (1, 8, 8))
        or ``(2,)`` for points in the plane.
    :param size: "cpu" (trains on two cores in a minute or two) or "gpu"; default: the runtime profile.
    :param seed: seeds the weight initialisation (the global RNG is left as it was).
    :param options: family-specific options, e.g. ``actnorm=False`` or ``preprocess="plain"`` for the flow.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown baseline family {family!r}; choose one of {sorted(FAMILIES)}")
    data_shape = tuple(int(s) for s in data_shape)
    if len(data_shape) not in (1, 3):
        raise ValueError(f"data_shape must be (C, H, W) for images or (d,) for points, got {data_shape}")
    if size is None:
        from .. import runtime
        size = runtime.get_profile()
    if size not in ("cpu", "gpu"):
        raise ValueError(f"size must be 'cpu' or 'gpu', got {size!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FAMILIES[family](data_shape, size=size, **options)


def train(model: Baseline, data: torch.Tensor | Iterable, steps: int | None = 1000, batch_size: int = 64,
          lr: float | None = None, seed: int = 0, progress: bool = True,
          checkpoint: str | os.PathLike | None = None, time_budget: float | None = None) -> dict[str, Any]:
    """Train any baseline with the same conventions; see :func:`ddpm_core.baselines._common.fit`.

    Stops after ``steps`` updates or ``time_budget`` seconds, whichever comes first (``steps=None``:
    only the budget). ``lr=None`` takes the family's default (GAN 2e-4 for images, 1e-3 otherwise).
    :return: ``{"loss": [per step], "wall_time": s, "steps": n}`` (+ ``loss_d``, ``loss_g`` for the
        GAN); the loss is bits/dim for the VAE (-ELBO) and the flow on images, D's loss for the GAN.
    """
    return fit(model, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress,
               checkpoint=checkpoint, time_budget=time_budget)


def sample(model: Baseline, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` samples: images [n, C, H, W] in [-1, 1] (the VAE gives its decoder mean), or points [n, d]."""
    return model.sample(n, generator=generator)


@torch.no_grad()
def bits_per_dim(model: Baseline, x: torch.Tensor, generator: torch.Generator | None = None,
                 batch_size: int = 256, iw_samples: int | None = None) -> torch.Tensor:
    """Per-example bits/dim [N] on the CPU.

    VAE: the negative ELBO (or, with ``iw_samples=k``, the importance-weighted bound L_k), an upper
    bound. Flow: exact up to the uniform dequantization. GAN: raises :class:`NoLikelihoodError`.
    For 8-bit images in [-1, 1] the numbers are comparable with DDPM's ``d.bpd``; for points they are
    differential (per-coordinate, in bits) and can be negative.
    """
    if isinstance(model, GAN):
        model.bpd(x)  # raises NoLikelihoodError with the explanation
    if iw_samples is not None and not isinstance(model, VAE):
        raise ValueError(f"iw_samples applies only to the VAE, not to a {model.family}")
    was_training = model.training
    model.eval()
    model.check_data(x)
    d = math.prod(model.data_shape)
    out = []
    for xb in x.split(batch_size):
        xb = xb.to(model.device)
        if iw_samples is not None:
            ll = model.log_likelihood_iw(xb, iw_samples, generator=generator)
            out.append(-ll / (d * LN2))
        else:
            out.append(model.bpd(xb, generator=generator))
    model.train(was_training)
    return torch.cat(out).cpu()


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Baseline:
    """Rebuild a baseline from a checkpoint written by :func:`train`; its history is ``model.history``."""
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no baseline checkpoint at {path}; baselines.train writes one") from None
    except Exception as e:  # a truncated or foreign file: torch's zip or unpickling error
        raise ValueError(f"{path} is not a readable baseline checkpoint ({type(e).__name__}); retrain it "
                         "with baselines.train (a DDPM checkpoint loads with train.load_checkpoint)") from None
    if not isinstance(ckpt, dict) or "family" not in ckpt.get("config", {}):
        raise ValueError(f"{path} is not a baseline checkpoint (no 'family' in its config); a DDPM "
                         "checkpoint loads with train.load_checkpoint")
    config = dict(ckpt["config"])
    family, data_shape = config.pop("family"), config.pop("data_shape")
    model = FAMILIES[family](data_shape, **config)
    model.load_state_dict(ckpt["state_dict"])
    model.history = ckpt.get("history")
    return model
