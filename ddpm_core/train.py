"""Training: the configuration, the trainer, checkpoints and the cache of trained models.

One step is Algorithm 1 of Ho et al. 2020: draw x0 from the data, t from the timestep sampler
(uniform, or importance-sampled for L_vlb), eps ~ N(0, I), and take a gradient step on the
per-example loss of ``GaussianDiffusion.training_losses`` weighted by the sampler's weights.
The recipe around it is the released DDPM code's: Adam, a linear learning-rate warm-up, gradient
clipping at global norm 1.0, and an exponential moving average (EMA) of the weights, which is the
model that samples.

Step numbering: ``step`` counts completed updates. Update number ``s + 1`` uses the learning rate
``lr_at(s)`` and the EMA decay ``ema_decay_at(s)``; its loss is ``history["loss"][s]``.

Resuming is exact: a checkpoint holds the weights, the EMA, Adam's moments, the step, the timestep
sampler's state and every random state (torch CPU and CUDA, the noise generator, the data stream's
generator, permutation and position), so on the CPU ``N steps + resume + N steps`` equals ``2N``
steps bit for bit. It also records the configuration and the training data it saw (``data``: the
number of examples, their shape and ``data.data_identity``, which tells one CelebA-HQ folder from
another), and a resume refuses a checkpoint whose configuration or data differ. Several processes (``torchrun``) train with DistributedDataParallel; each takes
its share of every epoch's permutation and rank 0 writes the checkpoints.

Speed on a GPU: ``compile`` (torch.compile) fuses the element-wise work around the convolutions and
``cuda_graph`` captures a whole update (forward, backward, clipping, Adam, EMA) once and replays it,
so that the host no longer launches each of its hundreds of kernels; the learning rate and the EMA
decay live in device tensors that are refilled before each replay, and the data, t and the noise
are drawn as before and copied into the graph's input buffers. Neither changes what is computed
beyond float rounding (the EMA is updated as ``(ema - w) * decay + w`` instead of a lerp); the
dropout masks of a captured update come from the graph's own random stream.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import diffusion as _diffusion
from . import resample, runtime, schedules
from . import unet as _unet

PRECISIONS = {
    "auto": "bf16 autocast on a CUDA device that supports bf16, else fp32",
    "fp32": "float32 throughout",
    "bf16": "bf16 autocast for the network (weights, optimiser and loss stay float32)",
}
CHECKPOINT_FORMAT = "ddpm_core.train/1"
CHECKPOINT_NAME = "last.pt"
CACHE_VERSION = 1  # bump when a change in the trainer makes cached models stale
# Fields that change how a run is carried out but not what it computes: not part of the cache key,
# and free to differ when a run resumes.
BOOKKEEPING_FIELDS = ("steps", "checkpoint_every", "log_every", "device", "compile", "cuda_graph")
# Fields a run may change when it resumes from its checkpoint, to recover from a divergence (the
# continuation is then another run from that step on, and a warning says so).
RECOVERY_FIELDS = ("lr", "grad_clip", "precision")


def _opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults follow the DDPM paper's CIFAR-10 run
    (network, T, schedule, learning rate, batch, warm-up, clipping, EMA decay, 800k updates) with
    these differences: ``flip`` is False (the paper flips), ``var_type`` is ``fixed_small`` (the
    posterior variance beta~_t, which the book's small runs use; the released CIFAR-10 code samples
    with ``fixed_large``, beta_t, and Ho et al. found the two to give similar samples),
    ``precision`` is ``auto`` (bf16 on CUDA; the paper trained in float32) and ``ema_warmup`` is on.
    ``book_config("cifar10")`` is the paper's run."""

    dataset: str = _opt("cifar10", "dataset name for data.load_dataset (e.g. mnist5k, digits, ring, cifar10)")
    preset: str = _opt("ddpm-cifar10", "network preset for unet.build_model (e.g. cpu-mnist, ddpm-cifar10, toy-mlp)")
    T: int = _opt(1000, "number of diffusion steps T")
    schedule: str = _opt("linear", "beta schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal)")
    mean_type: str = _opt("eps", "what the network predicts: eps, x0 or mu")
    var_type: str = _opt("fixed_small", "reverse variance: fixed_small, fixed_large, learned or learned_range")
    loss_type: str = _opt("simple", "objective: simple (L_simple), vlb (L_vlb) or hybrid (L_simple + 0.001 L_vlb)")
    timestep_sampler: str = _opt("uniform", "how t is drawn: uniform or loss-second-moment (importance sampling)")
    batch_size: int = _opt(128, "global batch size (split evenly across processes under DDP)")
    lr: float = _opt(2e-4, "Adam learning rate after the warm-up")
    warmup_steps: int = _opt(5000, "steps of linear learning-rate warm-up (0: none)")
    grad_clip: float | None = _opt(1.0, "clip the gradient at this global norm (0 or None: no clipping)")
    ema_decay: float = _opt(0.9999, "decay of the exponential moving average of the weights")
    ema_warmup: bool = _opt(True, "use the decay min(ema_decay, (1+step)/(10+step)) so that short runs "
                                  "have a useful EMA (no effect on the final EMA of a long run)")
    steps: int = _opt(800_000, "number of training steps (updates)")
    precision: str = _opt("auto", "auto (bf16 on CUDA with bf16 support, else fp32), fp32 or bf16")
    seed: int = _opt(0, "seed of the initial weights, the data order, the noise and dropout")
    flip: bool = _opt(False, "random horizontal flips of the training images (image presets only; the paper "
                             "flips CIFAR-10)")
    image_size: int | None = _opt(None, "resize the images to this size (image presets only, at a size the preset "
                                        "can be built for; default: the dataset's own)")
    dropout: float | None = _opt(None, "dropout rate of the network (default: the preset's)")
    checkpoint_every: int = _opt(1000, "write out_dir/last.pt every this many steps (and at the end)")
    log_every: int = _opt(100, "update the progress bar and check for NaN/inf losses every this many steps")
    device: str | None = _opt(None, "device to train on (default: runtime.get_device())")
    compile: bool = _opt(False, "torch.compile the network (pays on a GPU at paper scale; not on a small CPU); "
                                "falls back to eager, with a warning, where compilation fails")
    cuda_graph: bool = _opt(False, "capture each update (forward, backward, clipping, Adam, EMA) as one CUDA graph "
                                   "and replay it: no per-kernel launch cost (CUDA, one process; elsewhere ignored "
                                   "with a warning). With compile, an update of the paper's network took 29.8 ms "
                                   "instead of 67.9 ms on an H100 (benchmarks/gpu-2026-11-27.json)")

    def __post_init__(self):
        for name in ("lr", "ema_decay", "grad_clip", "dropout"):  # accept ints such as lr=1
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, name, float(value))
        if self.grad_clip == 0.0:
            self.grad_clip = None
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field with an invalid value and what it accepts."""
        def need(ok: bool, name: str, what: str):
            if not ok:
                raise ValueError(f"TrainConfig.{name} = {getattr(self, name)!r} is invalid: {what}")

        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v):
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name in ("dataset", "preset"):
            need(isinstance(getattr(self, name), str) and getattr(self, name), name, "expected a non-empty name")
        need(self.preset in _unet.preset_names(), "preset", f"expected one of {_unet.preset_names()}")
        need(is_int(self.T) and self.T >= 2, "T", "expected an int >= 2")
        need(self.schedule in schedules.SCHEDULES, "schedule", f"expected one of {list(schedules.SCHEDULES)}")
        try:  # the schedule's own limits, e.g. linear betas need T > 20
            schedules.get_betas(self.schedule, self.T)
        except ValueError as e:
            raise ValueError(f"TrainConfig.T = {self.T} with schedule {self.schedule!r}: {e}") from None
        need(self.mean_type in _diffusion.MEAN_TYPES, "mean_type", f"expected one of {list(_diffusion.MEAN_TYPES)}")
        need(self.var_type in _diffusion.VAR_TYPES, "var_type", f"expected one of {list(_diffusion.VAR_TYPES)}")
        need(self.loss_type in _diffusion.LOSS_TYPES, "loss_type", f"expected one of {list(_diffusion.LOSS_TYPES)}")
        need(self.timestep_sampler in resample.SAMPLERS, "timestep_sampler",
             f"expected one of {list(resample.SAMPLERS)}")
        learned = self.var_type in ("learned", "learned_range")
        need(not (learned and self.loss_type == "simple"), "var_type",
             "a learned variance gets no gradient from loss_type 'simple'; use 'hybrid' or 'vlb'")
        need(is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "expected an int >= 1")
        need(is_num(self.lr) and self.lr > 0, "lr", "expected a positive learning rate")
        need(is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", "expected an int >= 0")
        need(self.grad_clip is None or (is_num(self.grad_clip) and self.grad_clip > 0), "grad_clip",
             "expected a positive norm, or None/0 for no clipping")
        need(is_num(self.ema_decay) and 0.0 <= self.ema_decay < 1.0, "ema_decay", "expected 0 <= decay < 1")
        need(isinstance(self.ema_warmup, bool), "ema_warmup", "expected True or False")
        need(is_int(self.steps) and self.steps >= 0, "steps", "expected an int >= 0")
        need(self.precision in PRECISIONS, "precision", f"expected one of {list(PRECISIONS)}")
        need(is_int(self.seed) and self.seed >= 0, "seed", "expected an int >= 0")
        need(isinstance(self.flip, bool), "flip", "expected True or False")
        need(self.image_size is None or (is_int(self.image_size) and self.image_size >= 1), "image_size",
             "expected None or an int >= 1")
        need(self.image_size is None or self.preset not in _unet.MLP_PRESETS, "image_size",
             f"preset {self.preset!r} is an MLP for 2-D points, so image_size (and flip) apply only to the "
             "image presets; leave it None")
        need(not self.flip or self.preset not in _unet.MLP_PRESETS, "flip",
             f"preset {self.preset!r} is an MLP for 2-D points, which cannot be mirrored; leave flip False")
        need(self.dropout is None or (is_num(self.dropout) and 0.0 <= self.dropout < 1.0), "dropout",
             "expected None (the preset's rate) or 0 <= rate < 1")
        need(is_int(self.checkpoint_every) and self.checkpoint_every >= 1, "checkpoint_every", "expected an int >= 1")
        need(is_int(self.log_every) and self.log_every >= 1, "log_every", "expected an int >= 1")
        for name in ("compile", "cuda_graph", "flip", "ema_warmup"):
            need(isinstance(getattr(self, name), bool), name, "expected True or False")
        if self.device is not None:
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise ValueError(f"TrainConfig.device = {self.device!r} is not a device name: {e}") from None

    def to_dict(self) -> dict:
        """A JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo would otherwise be ignored)."""
        cls._check_field_names(d)
        return cls(**d)

    @classmethod
    def _check_field_names(cls, names) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {unknown}; known fields: {sorted(known)}")

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated; a misspelt field is an error that lists them)."""
        self._check_field_names(changes)
        return dataclasses.replace(self, **changes)


class TrainingDivergedError(FloatingPointError):
    """The loss, the gradient norm or the weights became NaN or inf."""

    def __init__(self, message: str, step: int, checkpoint: Path | None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupted or not a ddpm_core training checkpoint."""


@dataclass
class TrainResult:
    """A trained (or loaded) run.

    :param model: the network with the last weights (eval mode).
    :param ema: the EMA of the weights (eval mode): the model to sample with.
    :param diffusion: the ``GaussianDiffusion`` it was trained for (``build_diffusion(config)``).
    :param history: ``loss`` float32 [step] (rank 0's loss per update), ``grad_norm`` float32 [step]
        (before clipping) and ``wall_time`` (seconds spent training, over all resumes).
    :param checkpoint: the checkpoint file, or None for a run without ``out_dir``.
    :param step: completed updates. :param sample_shape: shape of one example, e.g. (1, 28, 28).
    """

    model: nn.Module
    ema: nn.Module
    diffusion: Any
    config: TrainConfig
    history: dict
    checkpoint: Path | None
    step: int
    sample_shape: tuple


@dataclass
class StepInfo:
    """What a ``callback`` sees after each update (``loss`` is a detached 0-d device tensor:
    reading it with ``.item()`` costs a host synchronisation)."""

    step: int
    loss: torch.Tensor
    lr: float
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer


# ---------------------------------------------------------------------- schedules of the recipe
def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of update ``step + 1``: ``lr * min(1, (step + 1) / warmup_steps)``.

    (The DDPM code uses ``step / warmup``, whose first update has learning rate 0.)"""
    if config.warmup_steps <= 0:
        return config.lr
    return config.lr * min(1.0, (step + 1) / config.warmup_steps)


def ema_decay_at(step: int, config: TrainConfig) -> float:
    """EMA decay of update ``step + 1``: ``min(ema_decay, (1 + step) / (10 + step))`` with the
    warm-up, else ``ema_decay``. ema <- decay * ema + (1 - decay) * weights."""
    if not config.ema_warmup:
        return config.ema_decay
    return min(config.ema_decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema_params: list, params: list, decay: float) -> None:
    """In place, ``ema = decay * ema + (1 - decay) * params`` for every tensor, in one fused call."""
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def capture_cuda_graph(fn: Callable[[], Any], warmup: int = 3) -> tuple[Any, Any]:
    """Capture ``fn()`` (no arguments: it reads fixed buffers) as a CUDA graph on the current device:
    ``warmup`` eager calls on a side stream first (cuDNN autotuning, compilation, state created
    lazily, e.g. the optimiser's), then the capture, which runs nothing.

    :return: (the ``torch.cuda.CUDAGraph``, what ``fn`` returned during the capture: tensors that
        each ``graph.replay()`` overwrites).
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


def resolve_precision(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the network's forward pass, or None for float32."""
    if config.precision == "fp32":
        return None
    if config.precision == "bf16":
        return torch.bfloat16
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if cuda_bf16 else None


# ---------------------------------------------------------------------- building blocks
def build_diffusion(config: TrainConfig) -> _diffusion.GaussianDiffusion:
    """The ``GaussianDiffusion`` of a configuration (schedule, T, mean/variance/loss types)."""
    betas = schedules.get_betas(config.schedule, config.T)
    return _diffusion.GaussianDiffusion(betas, mean_type=config.mean_type, var_type=config.var_type,
                                        loss_type=config.loss_type)


def build_network(config: TrainConfig) -> nn.Module:
    """A freshly initialised network of ``config.preset`` (``unet.build_model``) with the
    configuration's dropout and image size and, for a learned variance, twice the output
    channels. Draws its initial weights from the global torch RNG."""
    kwargs = {"learn_sigma": config.var_type in ("learned", "learned_range")}
    if config.dropout is not None:
        kwargs["dropout"] = config.dropout
    if config.image_size is not None:
        kwargs["image_size"] = config.image_size
    return _unet.build_model(config.preset, **kwargs)


def _data_identity(config: TrainConfig) -> str | None:
    from . import data

    return data.data_identity(config.dataset)


def load_train_data(config: TrainConfig) -> torch.Tensor:
    """The training examples of ``config.dataset``: float32 [N, C, H, W] in [-1, 1] or [N, D]."""
    from . import data

    ds = data.load_dataset(config.dataset, split="train", image_size=config.image_size)
    return ds.x


class BatchStream:
    """Endless mini-batches of the rows of ``x`` for process ``rank`` of ``world``.

    Each epoch is a random permutation of the rows (the same on every process, cut to a multiple
    of ``world``), of which process ``rank`` takes every ``world``-th; the incomplete last batch is
    dropped. With ``flip`` each image is mirrored left-right with probability 1/2. An epoch's order
    and flips are drawn at its start and moved to ``x``'s device once, so a batch makes no
    host-device transfer. The state (generator, epoch order and flips, position) restores exactly.
    """

    def __init__(self, x: torch.Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 flip: bool = False):
        if len(x) // world < batch_size:
            raise ValueError(f"the dataset has {len(x)} examples, fewer than one batch of {batch_size} "
                             f"per process ({world} processes); lower batch_size")
        if flip and x.dim() != 4:
            raise ValueError(f"flip=True needs images [N, C, H, W], got data of shape {tuple(x.shape)}")
        self.x, self.batch_size, self.rank, self.world, self.flip = x, batch_size, rank, world, flip
        self.generator = torch.Generator().manual_seed(seed)
        self._set_epoch(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.bool), 0)

    def _set_epoch(self, perm: torch.Tensor, mirror: torch.Tensor, pos: int) -> None:
        self.perm, self.mirror, self.pos = perm, mirror, pos  # on the CPU, for the state
        self._perm_dev = perm.to(self.x.device)
        self._mirror_dev = mirror.to(self.x.device).view(-1, *([1] * (self.x.dim() - 1)))

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        b = self.batch_size
        if self.pos + b > len(self.perm):
            n = len(self.x) // self.world * self.world
            perm = torch.randperm(len(self.x), generator=self.generator)[:n][self.rank::self.world]
            mirror = torch.rand(n, generator=self.generator)[self.rank::self.world] < 0.5 if self.flip else \
                torch.zeros(len(perm), dtype=torch.bool)
            self._set_epoch(perm, mirror, 0)
        x0 = self.x[self._perm_dev[self.pos:self.pos + b]]
        if self.flip:
            x0 = torch.where(self._mirror_dev[self.pos:self.pos + b], x0.flip(-1), x0)
        self.pos += b
        return x0

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "mirror": self.mirror.clone(),
                "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self._set_epoch(state["perm"].clone(), state["mirror"].clone(), int(state["pos"]))


def _seed(*parts) -> int:
    """A 63-bit seed derived from ``parts`` (so the streams of one run are independent)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# ---------------------------------------------------------------------- checkpoints
def _atomic_save(obj: dict, path: Path) -> None:
    """``torch.save`` through ``runtime.atomic_write`` (fsynced): a reader sees the old checkpoint
    or the new one, never half of one, even after a crash of the machine."""
    runtime.atomic_write(path, lambda f: torch.save(obj, f), durable=True)


_REQUIRED_KEYS = ("format", "config", "step", "model", "ema", "optimizer", "sampler", "rng", "history",
                  "sample_shape")


def checkpoint_file(path: str | Path) -> Path:
    """``path``, or ``path/last.pt`` where ``path`` is a run folder holding one."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() and (path / CHECKPOINT_NAME).is_file() else path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict (tensors on the CPU), with clear errors for bad files. ``path`` is a
    checkpoint file or a run folder (for its ``last.pt``)."""
    path = checkpoint_file(path)
    if not path.is_file():
        folder = f" (a folder without {CHECKPOINT_NAME})" if path.is_dir() else ""
        raise FileNotFoundError(f"no checkpoint at {path}{folder}")
    advice = "delete it (a run in that folder then starts afresh) or pick another checkpoint"
    with open(path, "rb") as f:
        head = f.read(64)
    if head and not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):  # torch's zip, or a legacy pickle
        shown = head[:24].decode("utf-8", "replace").split("\n")[0]
        raise CheckpointError(f"{path} is not a PyTorch file (it starts with {shown!r}; a checkpoint of "
                              f"ddpm_core.train is a zip archive written by torch.save): pick the run's "
                              f"{CHECKPOINT_NAME}, or download it again if it came from the web")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # zip, pickle, EOF and unpickler errors all mean the same thing here
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"{path} holds Python objects other than tensors and plain values, so it was "
                                  f"not written by ddpm_core.train and is not loaded (unsafe); {advice}") from e
        raise CheckpointError(f"checkpoint {path} cannot be read, it is truncated or corrupted "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {advice}") from e
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path} is not a ddpm_core training checkpoint (format {found!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}); {advice}")
    missing = [k for k in _REQUIRED_KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}; {advice}")
    return raw


def load_checkpoint(path: str | Path, map_location: str | torch.device | None = None) -> TrainResult:
    """Load a checkpoint written by :func:`train` as a :class:`TrainResult` (models in eval mode).

    :param path: a checkpoint file, or a run folder (``out_dir`` of :func:`train`) for its ``last.pt``.
    :param map_location: device for the models; default ``runtime.get_device()``.
    """
    path = checkpoint_file(path)
    device = torch.device(map_location) if map_location is not None else runtime.get_device()
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"map_location={map_location!r} but no CUDA device is visible; "
                         "pass 'cpu' (or None for runtime.get_device())")
    raw = read_checkpoint(path)
    config = config_of(raw, path)
    with torch.random.fork_rng(devices=[]):  # building draws initial weights: leave the caller's RNG alone
        model = build_network(config)
    ema = copy.deepcopy(model)
    try:
        model.load_state_dict(raw["model"])
        ema.load_state_dict(raw["ema"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit the network of preset {config.preset!r} "
                              f"(the preset changed since it was written?): {e}") from e
    return TrainResult(model=model.to(device).eval(), ema=ema.to(device).eval(), diffusion=build_diffusion(config),
                       config=config, history=_history_from(raw, path), checkpoint=Path(path), step=int(raw["step"]),
                       sample_shape=tuple(raw["sample_shape"]))


def config_of(raw: dict, path: str | Path) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint dict records; a CheckpointError naming ``path`` when
    this version of ddpm_core cannot take it (a field it does not know, or a value it refuses)."""
    try:
        return TrainConfig.from_dict(raw["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path} records a configuration this version of ddpm_core cannot use "
                              f"({e}); was it written by another version? Load it with that version, or "
                              "train the run again") from e


def _history_from(raw: dict, path: str | Path = "the checkpoint") -> dict:
    h = raw["history"]
    missing = [k for k in ("loss", "grad_norm", "wall_time") if not isinstance(h, dict) or k not in h]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks the training history's {missing}; it was not written by "
                              "this version of ddpm_core.train (train the run again)")
    return {"loss": h["loss"].clone(), "grad_norm": h["grad_norm"].clone(), "wall_time": float(h["wall_time"])}


# ---------------------------------------------------------------------- the trainer
@contextlib.contextmanager
def _deferred_interrupt():
    """Turn Ctrl-C (SIGINT) into a flag that the loop reads between updates, so a checkpoint never
    holds half an update. A second Ctrl-C interrupts at once (and nothing is saved); signals less
    than half a second apart count as one (a kernel's interrupt reaches a ``runtime.prefetch``
    worker twice: from the kernel and from the pool)."""
    hit = [False]
    first = [0.0]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: hit[0]
        return
    previous = signal.getsignal(signal.SIGINT)
    if not callable(previous) and previous not in (signal.SIG_DFL, signal.SIG_IGN):
        yield lambda: hit[0]
        return

    def handler(signum, frame):
        if hit[0]:
            if time.monotonic() - first[0] < 0.5:
                return  # the same interrupt, delivered twice
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        hit[0] = True
        first[0] = time.monotonic()

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: hit[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def _distributed_setup(config: TrainConfig):
    """(rank, world, device, created): joins the process group that ``torchrun`` describes in the
    environment (nccl on CUDA, gloo on the CPU) unless one is already initialised."""
    import torch.distributed as dist

    created = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        wants_cuda = (config.device or runtime.get_device().type).startswith("cuda")
        dist.init_process_group("nccl" if wants_cuda and torch.cuda.is_available() else "gloo")
        created = True
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, world = 0, 1
    device = torch.device(config.device) if config.device else runtime.get_device()
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count())))
    if device.type == "cuda":
        if device.index is None:  # set_device needs an index: "cuda" means the current device
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return rank, world, device, created


def compiled_or_eager(net: nn.Module) -> Callable:
    """``runtime.compiled_or_eager(net, "training")``: ``torch.compile(net)``, eager where compiling fails."""
    return runtime.compiled_or_eager(net, "training")


def check_finite(x: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` if the examples ``x`` [N, ...] hold NaN or inf values (``what``: whose data)."""
    bad = ~torch.isfinite(x)
    if bad.any():
        first = int(bad.reshape(len(x), -1).any(1).nonzero()[0])
        raise ValueError(f"{what} holds {int(bad.sum())} NaN/inf values (first in example {first}); "
                         "clean the data before training")


def _check_network(config: TrainConfig) -> None:
    """Refuse, before the data is loaded, a configuration whose network cannot be built, e.g. an
    ``image_size`` that the preset cannot halve as often as it needs or attend at (built on the
    meta device: no memory, no weights, no random numbers drawn)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            build_network(config)
    except (ValueError, TypeError) as e:  # TypeError: a setting the preset's network does not take
        own = _unet.PRESETS.get(config.preset, {}).get("image_size")  # an MLP preset has no image size
        size = f"image_size {config.image_size}" if config.image_size is not None else "these settings"
        hint = f"; the preset is made for {own}x{own} images" if own and config.image_size is not None else ""
        raise ValueError(f"the network of preset {config.preset!r} cannot be built with {size}: {e}{hint}") from e


def _check_fits(config: TrainConfig, shape: tuple) -> None:
    """Raise ``ValueError`` if examples of ``shape`` do not fit the network of ``config.preset``."""
    def words(kind: str, n: int) -> str:
        return f"points of dimension {n}" if kind == "points" else f"images with {n} input channel" + "s" * (n > 1)

    def takes(settings: dict) -> str:  # what a preset's network takes
        return words("points", settings["dim"]) if "dim" in settings else words("images", settings["in_channels"])

    presets = {**_unet.PRESETS, **_unet.MLP_PRESETS}
    need = words("points" if len(shape) == 1 else "images", shape[0]) if len(shape) in (1, 3) else None
    if takes(presets[config.preset]) != need:
        fitting = [name for name, settings in presets.items() if takes(settings) == need]
        raise ValueError(f"dataset {config.dataset!r} holds examples of shape {shape} but preset "
                         f"{config.preset!r} takes {takes(presets[config.preset])}; "
                         + (f"choose a preset that takes {need} (e.g. {', '.join(fitting)})" if fitting
                            else "no preset takes such examples"))


class _Trainer:
    def __init__(self, config: TrainConfig, out_dir: Path | None, progress: bool, callback, setup):
        self.config, self.out_dir, self.progress, self.callback = config, out_dir, progress, callback
        self.rank, self.world, self.device = setup
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} does not split evenly over {self.world} processes")
        c = config
        self.diffusion = build_diffusion(c)
        self.sampler = resample.create_sampler(c.timestep_sampler, c.T)
        x = load_train_data(c)
        self.data_info = {"examples": len(x), "shape": list(x.shape[1:]), "identity": _data_identity(c)}
        check_finite(x, f"the training data of {c.dataset!r}")
        if x.dim() == 4 and x.numel() and (x.min() < -1.0001 or x.max() > 1.0001):  # images only
            raise ValueError(f"training data must lie in [-1, 1], got min {float(x.min()):.3g}, max {float(x.max()):.3g}")
        self.sample_shape = tuple(x.shape[1:])
        self.batches = BatchStream(x.to(self.device), c.batch_size // self.world, _seed(c.seed, "data"),
                                   self.rank, self.world, c.flip)
        torch.manual_seed(c.seed)  # the initial weights: the same on every process
        self.net = build_network(c).to(self.device)
        _check_fits(c, self.sample_shape)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        torch.manual_seed(_seed(c.seed, "dropout", self.rank))
        self.noise_gen = torch.Generator(device=self.device).manual_seed(_seed(c.seed, "noise", self.rank))
        self.params = [p for p in self.net.parameters() if p.requires_grad]
        self.ema_params = [p for p, q in zip(self.ema.parameters(), self.net.parameters()) if q.requires_grad]
        # Fused Adam (one kernel per tensor instead of ~6) on CUDA and on the CPU, where it halves the
        # optimiser's time for the book's small U-Nets (2.9 ms against 5.8 ms per step for cpu-digits).
        fused = self.device.type in ("cuda", "cpu")
        self.graphed = c.cuda_graph and self._graph_possible()
        # A captured update reads the learning rate and the EMA decay from device tensors, refilled before each replay.
        self.lr_t = torch.tensor(lr_at(0, c), device=self.device) if self.graphed else None
        self.decay_t = torch.tensor(ema_decay_at(0, c), device=self.device) if self.graphed else None
        self.opt = torch.optim.Adam(self.params, lr=self.lr_t if self.graphed else lr_at(0, c), fused=fused or None,
                                    foreach=None if fused else True, capturable=self.graphed)
        self.graph = None  # the captured update (see _capture), while run() is running
        self.autocast_dtype = resolve_precision(c, self.device)
        self.step, self.wall_time, self.saved_step = 0, 0.0, None
        self.loss_hist = torch.full((c.steps,), float("nan"), device=self.device)
        self.gnorm_hist = torch.full((c.steps,), float("nan"), device=self.device)
        self.checked = 0  # history entries already checked for NaN/inf
        self.in_update = False
        self.save_failed = False
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel
            cuda = self.device.type == "cuda"
            self.ddp = DistributedDataParallel(self.net, device_ids=[self.device.index] if cuda else None)

    # -- state -----------------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"device": self.device.type, "torch": torch.get_rng_state(), "noise": self.noise_gen.get_state(),
                 "data": self.batches.state_dict()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _checkpoint(self, gather: bool) -> dict | None:
        """The checkpoint dict (on rank 0; None elsewhere). ``gather`` collects every rank's random
        state (a collective: every rank must call it); without it only rank 0's is stored."""
        rng = [self._rng_state()]
        if self.world > 1 and gather:
            import torch.distributed as dist
            rng = [None] * self.world
            dist.all_gather_object(rng, self._rng_state())
        if self.rank != 0:
            return None
        n = self.step
        return {
            "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "step": n,
            "model": self.net.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
            "sampler": self.sampler.state_dict(), "rng": rng, "world_size": self.world,
            "history": {"loss": self.loss_hist[:n].cpu(), "grad_norm": self.gnorm_hist[:n].cpu(),
                        "wall_time": self.wall_time},
            "sample_shape": list(self.sample_shape), "data": self.data_info,
            "versions": {"torch": str(torch.__version__)},
        }

    def restore(self, raw: dict, path: Path) -> None:
        saved = config_of(raw, path).to_dict()
        history = _history_from(raw, path)
        mine = self.config.to_dict()
        differ = [k for k in mine if k not in BOOKKEEPING_FIELDS and saved[k] != mine[k]]
        detail = lambda keys: ", ".join(f"{k}: {saved[k]!r} in the checkpoint, {mine[k]!r} now" for k in keys)
        unfinished = int(raw["step"]) < self.config.steps  # a finished run is not relabelled
        fixed = [k for k in differ if k not in RECOVERY_FIELDS or not unfinished]
        if fixed:
            keep = ", ".join(f"{k}={saved[k]!r}" for k in fixed)
            raise ValueError(f"cannot resume from {path}: the configuration differs ({detail(fixed)}); "
                             f"continue it with the checkpoint's values ({keep}; on the command line the option "
                             "of the same name), use another out_dir, or pass resume=False (--no-resume) to start "
                             f"afresh, which overwrites the checkpoint. Only {', '.join(RECOVERY_FIELDS)} may "
                             "change when a run resumes before its last step")
        then = raw.get("data")  # older checkpoints do not record it; their epoch order has one share per process
        n_now, saved_world = self.data_info["examples"], int(raw.get("world_size", len(raw["rng"])))
        shares = [len(r["data"]["perm"]) for r in raw["rng"] if isinstance(r, dict) and "data" in r]
        misfit = [k for k in shares if k and k != n_now // saved_world]  # each share holds N // world examples
        if (then is not None and then != self.data_info) or (then is None and misfit):
            what = {"examples": "examples", "shape": "example shape", "identity": "data"}
            changes = ("; ".join(f"{what[k]} {then.get(k)!r} then, {self.data_info[k]!r} now"
                                 for k in what if then.get(k) != self.data_info[k]) if then is not None else
                       f"its epoch order covers {misfit[0] * saved_world} examples"
                       f"{' (over ' + str(saved_world) + ' processes)' if saved_world > 1 else ''}, "
                       f"the data now has {n_now}")
            raise ValueError(f"cannot resume from {path}: the training data of {self.config.dataset!r} changed since "
                             f"the checkpoint was written ({changes}); point the dataset back at the data it "
                             "was trained on, use another out_dir, or pass resume=False (--no-resume) to start "
                             "afresh, which overwrites the checkpoint")
        if differ:
            warnings.warn(f"resuming {path} at step {int(raw['step'])} with another {' and '.join(differ)} "
                          f"({detail(differ)}): the run goes on from there as a different run, and its "
                          "checkpoints record the new values")
        n = int(raw["step"])
        if n > self.config.steps:
            self.config = self.config.replace(steps=n)
            self.loss_hist = torch.full((n,), float("nan"), device=self.device)
            self.gnorm_hist = torch.full((n,), float("nan"), device=self.device)
        self.net.load_state_dict(raw["model"])
        self.ema.load_state_dict(raw["ema"])
        self.opt.load_state_dict(raw["optimizer"])
        for group in self.opt.param_groups:  # this run's way of stepping, whichever run wrote the checkpoint
            group["capturable"] = self.graphed
            group["lr"] = self.lr_t if self.graphed else float(group["lr"])
        self.sampler.load_state_dict(raw["sampler"])
        self.step = self.checked = self.saved_step = n
        self.loss_hist[:n] = history["loss"].to(self.device)
        self.gnorm_hist[:n] = history["grad_norm"].to(self.device)
        self.wall_time = history["wall_time"]
        rngs = raw["rng"]
        same_device = all(r.get("device") == self.device.type for r in rngs)
        if len(rngs) == self.world and same_device:
            state = rngs[self.rank]
            torch.set_rng_state(state["torch"])
            if self.device.type == "cuda" and "cuda" in state:
                torch.cuda.set_rng_state(state["cuda"], self.device)
            self.noise_gen.set_state(state["noise"])
            self.batches.load_state_dict(state["data"])
        else:  # another number of processes or device type: continue, but not bit for bit
            warnings.warn(f"{path} was written by {len(rngs)} process(es) on {rngs[0].get('device')}, this run has "
                          f"{self.world} on {self.device.type}: the random streams restart from fresh seeds "
                          "(the continuation is not bit-exact)")
            torch.manual_seed(_seed(self.config.seed, "dropout", self.rank, n))
            self.noise_gen.manual_seed(_seed(self.config.seed, "noise", self.rank, n))
            self.batches = BatchStream(self.batches.x, self.batches.batch_size, _seed(self.config.seed, "data", n),
                                       self.rank, self.world, self.config.flip)

    # -- one update ------------------------------------------------------------------------------
    def _graph_possible(self) -> bool:
        why = ("it needs a CUDA device" if self.device.type != "cuda" else
               "it does not support several processes (DistributedDataParallel)" if self.world > 1 else None)
        if why:
            warnings.warn(f"TrainConfig.cuda_graph is ignored: {why}; training without CUDA graphs")
        return why is None

    def _model_fn(self):
        net = self.ddp if self.ddp is not None else self.net
        if self.config.compile:
            net = compiled_or_eager(net)
        if self.autocast_dtype is None:
            return net
        dtype, kind, cache = self.autocast_dtype, self.device.type, not self.graphed

        def forward(x_t, t):  # the network in low precision, the loss in float32
            with torch.autocast(kind, dtype=dtype, cache_enabled=cache):  # no weight-cast cache in a CUDA graph
                out = net(x_t, t)
            return out.float()
        return forward

    def _step_body(self, model_fn, x0, t, weights, noise, lr, decay):
        """Forward, loss, backward, clipping, Adam and EMA: the part of an update that a CUDA graph
        can hold. :return: (per-example losses, loss, gradient norm before clipping)."""
        out = self.diffusion.training_losses(model_fn, x0, t, noise=noise)
        loss = (out["loss"] * weights).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip, foreach=True)
        else:
            gnorm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(
                [p.grad for p in self.params if p.grad is not None])))
        if not self.graphed:
            for group in self.opt.param_groups:
                group["lr"] = lr
        self.opt.step()
        with torch.no_grad():
            if self.graphed:  # decay * ema + (1 - decay) * w with decay a device tensor (read at each replay)
                torch._foreach_sub_(self.ema_params, self.params)
                torch._foreach_mul_(self.ema_params, decay)
                torch._foreach_add_(self.ema_params, self.params)
            else:
                ema_update(self.ema_params, self.params, decay)
            for b_ema, b in zip(self.ema.buffers(), self.net.buffers()):
                b_ema.copy_(b)
        return out["loss"].detach(), loss.detach(), gnorm.detach()

    def _capture(self, model_fn) -> dict:
        """Capture :meth:`_step_body` as a CUDA graph reading fixed input buffers
        (:func:`capture_cuda_graph`). Its warm-up updates change the weights, EMA and optimiser
        state: they are put back afterwards, in place (the graph holds their addresses), so the
        capture changes no result."""
        n = self.config.batch_size // self.world
        bufs = {"x0": torch.zeros(n, *self.sample_shape, device=self.device),
                "t": torch.zeros(n, dtype=torch.long, device=self.device),
                "weights": torch.ones(n, device=self.device)}
        bufs["noise"] = torch.zeros_like(bufs["x0"])
        tensors = self.params + self.ema_params

        def args():
            return model_fn, bufs["x0"], bufs["t"], bufs["weights"], bufs["noise"], self.lr_t, self.decay_t
        saved_opt = copy.deepcopy(self.opt.state_dict())
        saved = [p.detach().clone() for p in tensors]
        lr, decay = self.lr_t.clone(), self.decay_t.clone()
        self.lr_t.zero_()
        graph, (bufs["losses"], bufs["loss"], bufs["gnorm"]) = capture_cuda_graph(lambda: self._step_body(*args()))
        with torch.no_grad():
            torch._foreach_copy_(tensors, saved)
            self.lr_t.copy_(lr)
            self.decay_t.copy_(decay)
            index = 0  # state_dict numbers the parameters in group order
            for group in self.opt.param_groups:
                for p in group["params"]:
                    old = saved_opt["state"].get(index)
                    for key, value in self.opt.state.get(p, {}).items():
                        if torch.is_tensor(value):  # a state the warm-up created starts at zero, as Adam's own
                            value.copy_(old[key]) if old is not None else value.zero_()
                    index += 1
        bufs["graph"] = graph
        return bufs

    def update(self, model_fn) -> torch.Tensor:
        s = self.step
        x0 = next(self.batches)
        t, weights = self.sampler.sample(len(x0), self.device, generator=self.noise_gen)
        noise = torch.randn(x0.shape, generator=self.noise_gen, device=self.device)
        if self.graph is not None:
            g = self.graph
            for key, value in (("x0", x0), ("t", t), ("weights", weights), ("noise", noise)):
                g[key].copy_(value)
            self.lr_t.fill_(lr_at(s, self.config))
            self.decay_t.fill_(ema_decay_at(s, self.config))
            g["graph"].replay()
            losses, loss, gnorm = g["losses"], g["loss"], g["gnorm"]
        else:
            losses, loss, gnorm = self._step_body(model_fn, x0, t, weights, noise, lr_at(s, self.config),
                                                  ema_decay_at(s, self.config))
        if self.config.timestep_sampler != "uniform":
            if self.world > 1:  # every rank keeps the same sampler state
                import torch.distributed as dist
                ts, ls = [torch.empty_like(t) for _ in range(self.world)], [torch.empty_like(losses) for _ in range(self.world)]
                dist.all_gather(ts, t)
                dist.all_gather(ls, losses)
                t, losses = torch.cat(ts), torch.cat(ls)
            self.sampler.update_with_losses(t, losses)
        self.loss_hist[s] = loss
        self.gnorm_hist[s] = gnorm
        self.step = s + 1
        return loss.clone() if self.graph is not None else loss  # the graph's buffer changes at the next replay

    # -- checks and saving -----------------------------------------------------------------------
    def check(self, bar=None, collective: bool = True) -> None:
        """Raise ``TrainingDivergedError`` if a loss or gradient norm since the last check is not
        finite (one host synchronisation per call); update the progress bar's loss."""
        a, b = self.checked, self.step
        if b == a:
            return
        losses, gnorms = self.loss_hist[a:b], self.gnorm_hist[a:b]
        bad = ~(torch.isfinite(losses) & torch.isfinite(gnorms))
        flag = bad.any().to(torch.int32)
        if self.world > 1 and collective:
            import torch.distributed as dist
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if int(flag):
            local = torch.nonzero(bad)
            first = a + int(local[0]) + 1 if len(local) else b
            self._diverged(f"the loss or gradient norm became NaN/inf at step {first}", first)
        self.checked = b
        if bar is not None:
            bar.set_postfix(loss=f"{float(losses.mean()):.4f}", lr=f"{lr_at(b - 1, self.config):.2g}", refresh=False)

    def _diverged(self, what: str, step: int):
        path = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None and self.saved_step is not None else None
        keep = (f"the last good checkpoint, at step {self.saved_step}, is kept at {path}" if path
                else "no checkpoint was written")
        c = self.config
        advice = [f"lower lr (now {c.lr:g})"]  # only changes: the same settings diverge again, bit for bit
        if c.grad_clip is None:
            advice.append("clip the gradient (grad_clip=1.0)")
        if self.autocast_dtype is not None:
            advice.append("train in float32 (precision='fp32')")
        from .viz import and_list  # numpy only: no plotting library is imported

        change = and_list(advice, "or")
        in_cache = path is not None and (runtime.cache_dir() / "models") in path.parents
        again = ("; get_trained then trains the changed configuration afresh (it is cached under its own name)"
                 if in_cache else "; then call train again with the same out_dir (or the command line with the "
                 "same --out): it resumes from that checkpoint with the new values" if path else "")
        raise TrainingDivergedError(f"training diverged: {what}; {keep}. To go on, {change}{again}.", step, path)

    def _saved_text(self) -> str:
        return f"step {self.saved_step}" if self.saved_step is not None else "the start (nothing was saved)"

    def save(self, gather: bool = True) -> None:
        if self.out_dir is None:
            return
        norms = torch.stack(torch._foreach_norm(self.params + self.ema_params))
        if not bool(torch.isfinite(norms).all()):
            self._diverged(f"the weights hold NaN/inf after step {self.step}", self.step)
        ckpt = self._checkpoint(gather)
        if ckpt is not None:
            try:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                _atomic_save(ckpt, self.out_dir / CHECKPOINT_NAME)
            except OSError as err:
                self.save_failed = True  # not to be tried again on the way out
                kept = (f"the last good checkpoint, at step {self.saved_step}, is kept there"
                        if self.saved_step is not None else "no checkpoint of this run was written yet")
                raise OSError(err.errno, f"could not write the checkpoint of step {self.step} to {self.out_dir} "
                              f"({err.strerror or err}): is the disk full or the folder read-only? {kept}") from err
        self.saved_step = self.step

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        from tqdm.auto import tqdm

        c = self.config
        model_fn = self._model_fn()
        self.net.train()
        if self.graphed and self.step < c.steps:
            self.graph = self._capture(model_fn)
        bar = tqdm(total=c.steps, initial=self.step, desc=f"training {c.preset} on {c.dataset}",
                   disable=not self.progress or self.rank != 0, dynamic_ncols=True)
        start = time.perf_counter()
        try:
            with _deferred_interrupt() as interrupted:
                while self.step < c.steps:
                    self.in_update = True
                    loss = self.update(model_fn)
                    self.in_update = False
                    bar.update(1)
                    if self.callback is not None:
                        self.callback(StepInfo(self.step, loss, lr_at(self.step - 1, c), self.net, self.ema, self.opt))
                    if interrupted():
                        raise KeyboardInterrupt
                    if self.step % c.log_every == 0:
                        self.check(bar)
                    if self.step % c.checkpoint_every == 0:
                        self.wall_time += time.perf_counter() - start
                        start = time.perf_counter()
                        self.check(bar)
                        self.save()
                self.wall_time += time.perf_counter() - start
                start = time.perf_counter()
                self.check(bar)
                if self.saved_step != self.step:
                    self.save()
        except KeyboardInterrupt:
            self.wall_time += time.perf_counter() - start
            if self.in_update or self.out_dir is None:
                raise
            self.check(collective=False)
            self.save(gather=False)
            bar.write(f"interrupted: saved step {self.step} to {self.out_dir / CHECKPOINT_NAME}; "
                      "run the same training again to continue from there", file=sys.stderr)
            raise
        except TrainingDivergedError:
            raise  # its last good checkpoint is kept; the current state is not good
        except Exception as err:  # e.g. a callback's bug, between two updates: keep the updates made
            self.wall_time += time.perf_counter() - start
            if self.in_update or self.out_dir is None or self.saved_step == self.step or self.save_failed:
                raise
            try:
                self.check(collective=False)
                self.save(gather=False)
            except Exception as failed:  # the caller's error is the one to see; it says what was lost
                note = f"the updates since {self._saved_text()} were not saved: {failed}"
                err.add_note(note) if hasattr(err, "add_note") else warnings.warn(note)  # add_note: Python 3.11+
            else:
                bar.write(f"stopped by {type(err).__name__}: saved step {self.step} to "
                          f"{self.out_dir / CHECKPOINT_NAME}; fix the cause and run again to continue",
                          file=sys.stderr)
            raise  # err, with its own traceback and context
        finally:
            bar.close()
            self.net.eval()
            self.graph = None  # release the graph's memory (and the workspaces it points to) before any other capture

    def result(self) -> TrainResult:
        n = self.step
        path = self.out_dir / CHECKPOINT_NAME if self.out_dir is not None and self.saved_step is not None else None
        history = {"loss": self.loss_hist[:n].cpu(), "grad_norm": self.gnorm_hist[:n].cpu(),
                   "wall_time": self.wall_time}
        return TrainResult(model=self.net.eval(), ema=self.ema.eval(), diffusion=self.diffusion, config=self.config,
                           history=history, checkpoint=path, step=n, sample_shape=self.sample_shape)


def _check_out_dir(out_dir: Path) -> None:
    """Refuse, before any training, a run folder that is a file or lies inside one (it could not be created)."""
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                where = "is a file" if folder == out_dir else f"lies inside {folder}, which is a file"
                raise ValueError(f"out_dir {out_dir} {where}, not a folder; pass a folder for the run's "
                                 "checkpoints (it is created if missing)")
            return


def train(config: TrainConfig, out_dir: str | Path | None = None, resume: bool = True, progress: bool = True,
          callback: Callable[[StepInfo], None] | None = None) -> TrainResult:
    """Train a model as ``config`` describes (Algorithm 1 of Ho et al. 2020, with the recipe of
    the module docstring).

    :param out_dir: folder for ``last.pt`` (every ``checkpoint_every`` steps, at the end and on
        Ctrl-C); None trains without checkpoints.
    :param resume: continue from ``out_dir/last.pt`` if it exists. Its configuration must match,
        except ``steps`` and the bookkeeping fields, and, for a run that had not reached its last
        step, ``lr``, ``grad_clip`` and ``precision``, which may change to recover from a divergence,
        with a warning; its training data must be the same (see the module docstring). A checkpoint
        at or past ``steps`` is returned as it is, with its own step count. False starts afresh and
        overwrites it.
    :param progress: show a ``tqdm`` bar with the loss (refreshed every ``log_every`` steps).
    :param callback: called after each update with a :class:`StepInfo`.
    :return: a :class:`TrainResult`.
    :raises TrainingDivergedError: a loss, gradient norm or weight became NaN/inf (the last good
        checkpoint is left in place).
    :raises ValueError: an invalid configuration or ``out_dir``, a network the preset cannot build,
        or a checkpoint whose configuration or training data differ (the message names the
        difference and the ways out).
    :raises CheckpointError: ``out_dir/last.pt`` exists but cannot be read, or was written by a
        version of ddpm_core whose configuration this one cannot take.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls ``train`` with the same arguments;
    the checkpoint folder must be visible to all of them to resume.
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    if not isinstance(config, TrainConfig):
        hint = f"train.book_config({config!r})" if isinstance(config, str) else "train.book_config(name)"
        raise TypeError(f"train() takes a TrainConfig or a dict, got {type(config).__name__}; "
                        f"for a configuration of the book use {hint}")
    config.validate()
    _check_network(config)
    if config.device and torch.device(config.device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"TrainConfig.device = {config.device!r} but no CUDA device is visible; "
                         "use device 'cpu' (or None for runtime.get_device())")
    if out_dir is not None and not str(out_dir).strip():  # Path("") is the current folder
        raise ValueError("out_dir is blank; pass a folder for the run's checkpoints, or None to keep none")
    out_dir = Path(out_dir) if out_dir is not None else None
    if out_dir is not None:
        _check_out_dir(out_dir)
    rank, world, device, created_group = _distributed_setup(config)
    try:
        # the run seeds and draws from the global RNG (initial weights, dropout): the caller's is restored after
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            trainer = _Trainer(config, out_dir, progress, callback, (rank, world, device))
            path = out_dir / CHECKPOINT_NAME if out_dir is not None else None
            if resume and path is not None and path.exists():
                trainer.restore(read_checkpoint(path), path)
            if out_dir is not None and rank == 0:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "config.json").write_text(json.dumps(trainer.config.to_dict(), indent=2) + "\n")
            trainer.run()
            return trainer.result()
    finally:
        if created_group:
            import torch.distributed as dist
            dist.destroy_process_group()


# ---------------------------------------------------------------------- the model cache
def config_key(config: TrainConfig) -> str:
    """A stable name for the trained model of ``config``: ``<dataset>-<preset>-<16 hex digits>``,
    a hash of every field except the bookkeeping ones (:data:`BOOKKEEPING_FIELDS`:
    ``checkpoint_every``, ``log_every``, ``device``, ``compile``, ``cuda_graph``), with ``steps`` included, and, for data that the package does not fix (a CelebA-HQ
    folder), of ``data.data_identity``: another folder is another model."""
    fields = {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING_FIELDS or k == "steps"}
    fields["_cache_version"] = CACHE_VERSION
    identity = _data_identity(config)  # which CelebA-HQ folder; None for the fixed datasets
    if identity is not None:
        fields["_data"] = identity
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return f"{config.dataset}-{config.preset}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def cached_run_dir(config: TrainConfig) -> Path:
    """``runtime.cache_dir()/models/<config_key(config)>``."""
    return runtime.cache_dir() / "models" / config_key(config)


def get_trained(config: TrainConfig, progress: bool = True) -> TrainResult:
    """The trained model of ``config``, shared by every chapter that asks for it.

    Loaded from ``cached_run_dir(config)`` when a finished run is there; otherwise trained there
    (a partially trained run, e.g. one interrupted with Ctrl-C, is resumed; a shorter cached run of
    the same configuration is continued, see :func:`shorter_cached_run`). A cached checkpoint that
    no longer fits its preset's network is retrained, with a warning.
    """
    folder = cached_run_dir(config)
    path = folder / CHECKPOINT_NAME
    shorter = shorter_cached_run(config) if not path.exists() else None
    if shorter is not None:  # continue it: bit for bit the same as training from scratch
        with open(shorter, "rb") as src:
            runtime.atomic_write(path, lambda f: shutil.copyfileobj(src, f))
    if path.exists():
        try:
            result = load_checkpoint(path)
        except CheckpointError as e:
            if "does not fit the network" not in str(e):
                raise
            warnings.warn(f"{e}; retraining it")
            return train(config, out_dir=folder, resume=False, progress=progress)
        if result.step >= config.steps:
            return result
    return train(config, out_dir=folder, resume=True, progress=progress)


def shorter_cached_run(config: TrainConfig) -> Path | None:
    """The checkpoint of the longest cached run of ``config`` with fewer steps, or None.

    The learning rate and the EMA decay depend on the step alone (constant after the warm-up), and
    a checkpoint holds every random state, so the first N updates of any run are an N-update run:
    continuing a cached 1,000-step run to 2,000 steps gives exactly the weights of a fresh
    2,000-step run (chapter 1 trains the digits DDPM for its comparison, chapter 6 continues it).
    """
    mine = {k: v for k, v in config.to_dict().items() if k not in BOOKKEEPING_FIELDS}
    best, best_step = None, -1
    for cfg_file in (runtime.cache_dir() / "models").glob(f"{config.dataset}-{config.preset}-*/config.json"):
        try:
            other = TrainConfig.from_dict(json.loads(cfg_file.read_text()))
        except (ValueError, TypeError, OSError):
            continue
        theirs = {k: v for k, v in other.to_dict().items() if k not in BOOKKEEPING_FIELDS}
        ckpt = cfg_file.parent / CHECKPOINT_NAME
        if (theirs != mine or cfg_file.parent.name != config_key(other) or not ckpt.exists()
                or not best_step < other.steps < config.steps):
            continue
        best, best_step = ckpt, other.steps
    return best


def is_cached(config: TrainConfig) -> bool:
    """True when the model cache holds a finished run of ``config`` (``get_trained`` would only load it)."""
    path = cached_run_dir(config) / CHECKPOINT_NAME
    if not path.exists():
        return False
    try:
        return load_checkpoint(path).step >= config.steps
    except CheckpointError:
        return False


def _train_to_cache(config: TrainConfig) -> int:
    return get_trained(config, progress=False).step


def train_missing(configs: list[TrainConfig], desc: str = "training", progress: bool = True) -> None:
    """Train the runs of ``configs`` that the cache lacks side by side, one process per CPU core with
    one thread each (``runtime.prefetch``: by default in the cpu profile only; ``DDPM_WORKERS``
    overrides it), so that ``get_trained`` then only loads them. Small models (the 8x8-digit
    ablations, 2-D toys) train as fast on one thread as on two, so on two cores this halves the wall
    time. A run that fails in a worker stays missing: ``get_trained`` trains it again in the
    caller's process and raises there."""
    unique = {cached_run_dir(c): c for c in configs}
    missing = [c for c in unique.values() if not is_cached(c)]
    if len(missing) > 1:
        runtime.prefetch(_train_to_cache, [(c,) for c in missing], desc=desc, progress=progress)


def get_trained_many(configs: list[TrainConfig], progress: bool = True) -> list[TrainResult]:
    """``[get_trained(c) for c in configs]``, the missing runs trained side by side first (:func:`train_missing`)."""
    train_missing(configs, progress=progress)
    return [get_trained(c, progress=progress) for c in configs]


# ---------------------------------------------------------------------- the book's configurations
BOOK_CONFIGS: dict[str, TrainConfig] = {}  # filled below; see book_config


def book_config(name: str, **changes) -> TrainConfig:
    """A configuration the book trains, by name (see ``BOOK_CONFIGS``), with optional changes."""
    if name not in BOOK_CONFIGS:
        raise ValueError(f"unknown book configuration {name!r}; choose one of {sorted(BOOK_CONFIGS)}")
    return BOOK_CONFIGS[name].replace(**changes)


# The CPU profile's runs. Measured on the project's 2-core machine (Xeon with AVX-512, 2 torch
# threads, fp32): cpu-mnist (0.28M parameters) takes 0.15-0.18 s per update at batch 32
# (benchmarks/cpu-2026-12-06*.json), so "mnist5k" is 2,000 updates, about 5 minutes (chapter 6 shows
# the measured time; on 2026-12-07, with OpenMP's default wait policy instead of PASSIVE, a fresh run
# trained in 250 s). Its size came from an exploration at equal CPU time (issue 3, 2026-11, when an
# update took 0.10-0.13 s; the minutes below are of that time): more updates of a narrower network beat fewer updates of a wider one. Runs with these
# update counts, trained on a GPU for speed, scored an FID (mnist5k classifier features, 500
# samples) of 7.5 at 2,500 updates against 12.4 for the 1.6M-parameter network at 700 updates;
# 16 channels with two blocks reached 5.4 at 3,500 updates, which would take ~8 minutes here.
# Trained on this CPU (same FID protocol): 6.55 at 2,000 updates, 5.53 at 2,600 (~5-6 minutes);
# two blocks per level at 2,000 updates, 6.75 in 1.3x the time.
# T = 1000 with the paper's linear schedule keeps the forward process the paper's; sample it with
# ~250 respaced steps (sampling.respace), which looks like full 1000-step sampling at a quarter of
# the cost. Dropout is off: it regularises long runs, and its random masks cost ~23% of a cpu-mnist
# step on this CPU (100 vs 130 ms at p = 0.1, measured in 2026-11), which a short run needs for updates. The EMA decay of 0.995
# (half-life ~140 steps, with the warm-up of ema_decay_at) suits runs of a few thousand steps.
# The learning rate is constant after the warm-up, so the first N updates of a run are a complete
# N-update run: get_trained continues a shorter cached run of the same configuration.
# On a busy machine, two torch threads can be several times slower than one (threads wait on each other).
CPU_PRESETS: dict[str, TrainConfig] = {
    "mnist5k": TrainConfig(dataset="mnist5k", preset="cpu-mnist", T=1000, schedule="linear", batch_size=32,
                           lr=1e-3, warmup_steps=50, ema_decay=0.995, dropout=0.0, steps=2000,
                           checkpoint_every=250, log_every=50),
    # 8x8 scikit-learn digits with the tiny cpu-digits U-Net: ~165 s of one busy core, clear digits.
    "digits": TrainConfig(dataset="digits", preset="cpu-digits", T=1000, batch_size=64, lr=1e-3,
                          warmup_steps=50, ema_decay=0.995, dropout=0.0, steps=1500, checkpoint_every=500,
                          log_every=50),
    # 2-D toys with the time-conditioned MLP: about a minute (chapter 4 shows the measured time of
    # toy-swissroll). At 3,000 steps only 36% of the
    # ring's samples lie within 0.1 of one of its 8 centres; at 6,000, 87% (the data: 86%).
    "toy-ring": TrainConfig(dataset="ring", preset="toy-mlp", T=1000, batch_size=512, lr=1e-3, warmup_steps=100,
                            ema_decay=0.995, steps=6000, checkpoint_every=1000, log_every=100),
    "toy-swissroll": TrainConfig(dataset="swissroll", preset="toy-mlp", T=1000, batch_size=512, lr=1e-3,
                                 warmup_steps=100, ema_decay=0.995, steps=6000, checkpoint_every=1000, log_every=100),
}
GPU_PRESETS: dict[str, TrainConfig] = {
    # Ho et al. 2020, CIFAR-10: the paper's settings (lr 2e-4, batch 128, 5,000 warm-up steps,
    # EMA 0.9999, dropout 0.1, random flips, 800k steps), and the sampling variance beta_t
    # (fixed_large) of their released CIFAR-10 run (run_cifar.py; the paper found beta_t and
    # beta~_t to give similar samples; L_simple does not depend on it, so training is the same
    # either way). compile and cuda_graph change the speed, not
    # the run (both are bookkeeping fields): on an H100 in bf16 an update took 29.8 ms with both against
    # 67.9 ms eagerly and 76.9 ms for diffusers' UNet2DModel (benchmarks/gpu-2026-11-27.json).
    "cifar10": TrainConfig(dataset="cifar10", preset="ddpm-cifar10", var_type="fixed_large", flip=True, dropout=0.1,
                           checkpoint_every=5000, compile=True, cuda_graph=True),
    # Chapter 1's colour study (GPU profile): the cpu-crops U-Net (2.2M parameters) on 32x32 colour
    # crops of photographs, T = 1000 with the paper's schedule; 1,000 updates of 64 crops (~16 passes
    # over the 3,950 training crops), each captured as a CUDA graph. The GAN, VAE and flow of the
    # study train with the same updates and batches (compare.image_study). On an H100 (2026-11-27) the
    # twelve models trained in 237 s, 132 s of it the flow's (~900 small kernels per update);
    # see benchmarks/colour_study.py.
    "photo-crops": TrainConfig(dataset="photo-crops", preset="cpu-crops", T=1000, batch_size=64, lr=5e-4,
                               warmup_steps=100, ema_decay=0.995, dropout=0.0, steps=1000, checkpoint_every=1000,
                               log_every=100, cuda_graph=True),
}
BOOK_CONFIGS.update(CPU_PRESETS)
BOOK_CONFIGS.update(GPU_PRESETS)
