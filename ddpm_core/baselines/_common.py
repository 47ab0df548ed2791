"""What the three baseline families share: a base class, the training loop, checkpoints.

Every baseline is an ``nn.Module`` subclass of :class:`Baseline`. It knows its own optimizers and
how to take one training step; :func:`fit` owns everything else (batches, seeds, the progress bar,
the time budget, the history and the checkpoint), so the GAN, the VAE and the flow train with the
same conventions and can be compared side by side.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import data as _data
from .. import runtime
from ..train import check_finite

LN2 = math.log(2.0)


class Baseline(nn.Module):
    """Base class of the baselines.

    Subclasses set ``family`` ("gan", "vae" or "flow"), store the keyword arguments that rebuild
    them in ``self.config`` and implement :meth:`configure_optimizers` and :meth:`training_step`.
    ``data_shape`` is ``(2,)`` for points in the plane or ``(C, H, W)`` for images in [-1, 1].
    """

    family: str = ""
    default_lr: float = 1e-3

    def __init__(self, data_shape: tuple[int, ...], **config: Any) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.config = {"family": self.family, "data_shape": self.data_shape, **config}

    @property
    def is_image(self) -> bool:
        return len(self.data_shape) == 3

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def training_step(
        self, x: torch.Tensor, optimizers: list[torch.optim.Optimizer], generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """One update on the batch ``x``; returns detached scalar tensors, always with ``"loss"``."""
        raise NotImplementedError

    def check_data(self, x: torch.Tensor) -> None:
        """Raise a clear error if ``x`` does not have this model's shape (and range, for images)."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise ValueError(
                f"this {self.family} was built for data of shape [N, {', '.join(map(str, self.data_shape))}], "
                f"got a tensor of shape {list(x.shape)}; build a model for this shape with "
                f"baselines.build({self.family!r}, {tuple(x.shape[1:])})"
            )
        if self.is_image and x.numel() and (x.min() < -1.0 - 1e-4 or x.max() > 1.0 + 1e-4):
            raise ValueError(
                f"expected images in [-1, 1], got min {x.min().item():.3g} and max {x.max().item():.3g}; "
                "scale 8-bit data as x / 127.5 - 1"
            )


def n_halvings(h: int) -> int:
    """How many times an ``h x h`` image can be halved while staying >= 4 and even (28 -> 2, 32 -> 3, 8 -> 1)."""
    k = 0
    while h % 2 == 0 and h // 2 >= 4:
        h //= 2
        k += 1
    return k


def mlp(d_in: int, d_out: int, width: int, depth: int = 3, act: Callable[[], nn.Module] = nn.ReLU) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units."""
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), act()]
        d = width
    return nn.Sequential(*layers, nn.Linear(d, d_out))


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None = None) -> None:
    """zero_grad, backward, optional global-norm gradient clipping, step."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Map images in [-1, 1] to their 8-bit levels ``k`` in {0, ..., 255} (as floats)."""
    return _data.to_8bit_levels(x)


def _batches(data: torch.Tensor | Iterable, batch_size: int, generator: torch.Generator):
    """Yield batches forever: random permutations of a tensor, or cycles over an iterable."""
    if isinstance(data, torch.Tensor):
        n = data.shape[0]
        if n == 0:
            raise ValueError("the training tensor is empty")
        while True:
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                yield data[perm[i:i + batch_size]]
    else:
        while True:
            empty = True
            for batch in data:
                empty = False
                yield batch[0] if isinstance(batch, (tuple, list)) else batch
            if empty:
                raise ValueError("the training iterable yielded no batches")


def save_checkpoint(model: Baseline, path: str | os.PathLike, history: dict | None = None) -> Path:
    """Write ``{config, state_dict, history}`` atomically: a temporary file, then ``os.replace``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    saved = {"config": dict(model.config), "state_dict": state, "history": history}
    return runtime.atomic_write(path, lambda f: torch.save(saved, f))


NAN_CHECK_EVERY = 100  # updates between checks for a NaN or infinite loss (one host sync each)


def fit(
    model: Baseline,
    data: torch.Tensor | Iterable,
    steps: int | None = 1000,
    batch_size: int = 64,
    lr: float | None = None,
    seed: int = 0,
    progress: bool = True,
    checkpoint: str | os.PathLike | None = None,
    time_budget: float | None = None,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``steps`` updates or ``time_budget`` seconds, whichever ends first.

    :param data: a tensor ``[N, *data_shape]`` (random minibatches, reshuffled every epoch) or an
        iterable of batches (a DataLoader; ``(x, y)`` tuples give ``x``), cycled when exhausted.
    :param seed: seeds a ``torch.Generator`` for minibatch order and for all training noise
        (latents, reparameterisation, dequantisation), so a run is reproducible on one device.
    :param checkpoint: where to write the model, written atomically at the end (and every
        ``checkpoint_every`` steps if given); reload it with ``baselines.load``.
    :return: ``{"loss": [float per step], ..., "wall_time": seconds, "steps": int}``; the GAN also
        records ``loss_d`` and ``loss_g``.
    """
    if steps is None and time_budget is None:
        raise ValueError("give a number of steps, a time_budget in seconds, or both")
    if steps is not None and steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(data, torch.Tensor):  # once, before training; of an iterable, the first batch below
        check_finite(data, "the training data")
    device = model.device
    cpu_gen = torch.Generator().manual_seed(seed)
    noise_gen = cpu_gen if device.type == "cpu" else torch.Generator(device=device).manual_seed(seed)
    optimizers = model.configure_optimizers(model.default_lr if lr is None else lr)
    batches = _batches(data, batch_size, cpu_gen)
    records: dict[str, list[torch.Tensor]] = {}
    model.train()
    bar = tqdm(total=steps, desc=f"train {model.family}", disable=not progress, leave=False)
    start = time.perf_counter()
    step = checked = 0
    while (steps is None or step < steps) and (time_budget is None or time.perf_counter() - start < time_budget):
        x = next(batches).to(device, non_blocking=True)
        if step == 0:
            model.check_data(x)
            if not isinstance(data, torch.Tensor):  # a tensor was checked whole, above
                check_finite(x, "the first training batch")
        out = model.training_step(x, optimizers, noise_gen)
        for key, value in out.items():
            records.setdefault(key, []).append(value.detach())
        step += 1
        bar.update(1)
        if progress and (step % 10 == 0 or step == 1):  # one host sync every 10 steps, not every step
            bar.set_postfix({k: f"{v.item():.4g}" for k, v in out.items()})
        saving = checkpoint is not None and checkpoint_every and step % checkpoint_every == 0
        if step % NAN_CHECK_EVERY == 0 or saving:  # a diverged run stops now and is never saved (raised below)
            if not bool(torch.isfinite(torch.stack(records["loss"][checked:])).all()):
                break
            checked = step
        if saving:
            save_checkpoint(model, checkpoint, _history(records, start, step))
    bar.close()
    history = _history(records, start, step)
    bad = next((i for i, v in enumerate(history.get("loss", [])) if not math.isfinite(v)), None)
    if bad is not None:
        lr_used = model.default_lr if lr is None else lr
        raise FloatingPointError(
            f"the {model.family} loss became NaN or infinite at update {bad + 1} of training (lr {lr_used:g}); "
            "lower lr or batch noise" + ("" if checkpoint is None else f"; nothing after the divergence was written to {checkpoint}")
        )
    if checkpoint is not None:
        save_checkpoint(model, checkpoint, history)
    return history


def _history(records: dict[str, list[torch.Tensor]], start: float, step: int) -> dict[str, Any]:
    history: dict[str, Any] = {"loss": []}
    history.update({k: torch.stack(v).float().cpu().tolist() for k, v in records.items()})
    history["wall_time"] = time.perf_counter() - start
    history["steps"] = step
    return history
