"""The one place that decides where the book runs: profile, device and cache directory.

Profiles:
  ``cpu``  the default; every chapter runs in a few minutes on two CPU cores.
  ``gpu``  picked when CUDA is available; larger models, paper datasets where they can be downloaded.
The environment variable ``DDPM_PROFILE`` overrides the choice; ``DDPM_CACHE`` moves the cache
of trained models and statistics (default ``~/.cache/ddpm_core``).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

PROFILES = {
    "cpu": "small models and offline datasets; each chapter in minutes on two CPU cores",
    "gpu": "paper-scale models on a CUDA device; CIFAR-10 where it can be downloaded",
}


def get_profile() -> str:
    """Return ``"cpu"`` or ``"gpu"``: ``$DDPM_PROFILE`` if set, else ``"gpu"`` when CUDA is available."""
    name = os.environ.get("DDPM_PROFILE", "").strip().lower()
    if name:
        if name not in PROFILES:
            raise ValueError(
                f"DDPM_PROFILE={name!r} is not a profile; choose one of {sorted(PROFILES)} "
                "or unset the variable to pick automatically"
            )
        if name == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("DDPM_PROFILE=gpu but no CUDA device is visible; unset it or use 'cpu'")
        return name
    return "gpu" if torch.cuda.is_available() else "cpu"


def get_device(profile: str | None = None) -> torch.device:
    """The device that the given (or current) profile computes on."""
    profile = profile or get_profile()
    return torch.device("cuda" if profile == "gpu" else "cpu")


def cache_dir() -> Path:
    """Directory for trained models, reference statistics and datasets (``$DDPM_CACHE``)."""
    path = Path(os.environ.get("DDPM_CACHE", Path.home() / ".cache" / "ddpm_core")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
