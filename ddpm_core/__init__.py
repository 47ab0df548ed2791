"""ddpm_core: a small, exact PyTorch implementation of DDPM (Ho et al. 2020) and
Improved DDPM (Nichol & Dhariwal 2021), written to be read beside the book.

Timestep convention, stated once for the whole package: ``t`` is 0-indexed, ``t in 0..T-1``,
and ``t = 0`` is the first noising step (as in openai/improved-diffusion). Images are float
tensors in [-1, 1] of shape ``[N, C, H, W]``.
"""
from importlib import import_module as _import_module

__version__ = "0.1.0"

_SUBMODULES = (
    "runtime", "schedules", "losses", "diffusion", "resample", "sampling", "unet", "data",
    "train", "metrics", "features", "evaluation", "baselines", "viz", "paper", "bench",
    "compare", "toy", "denoise", "segmentation",
)


def __getattr__(name):  # lazy submodules: `import ddpm_core` stays fast
    if name in _SUBMODULES:
        return _import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'ddpm_core' has no attribute {name!r}")
