"""Command line: ``python -m ddpm_core train ...`` and ``python -m ddpm_core sample ...``.

Examples::

    python -m ddpm_core train --book-config mnist5k --out runs/mnist
    python -m ddpm_core train --book-config mnist5k --steps 3000 --seed 1 --out runs/x
    python -m ddpm_core sample --checkpoint runs/x/last.pt --n 64 --steps 250 --out grid.png
    python -m ddpm_core sample --checkpoint runs/x/last.pt --sampler ddim --ddim-steps 50 --out grid.png
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".tif", ".tiff", ".webp")  # what save_samples can write


class _NoneValue:
    """What ``--flag none`` gives for a field that may be None (argparse's own None means "not given")."""

    def __repr__(self):
        return "none"


NONE = _NoneValue()


def _may_be_none(annotation: str) -> bool:
    """Whether a TrainConfig field's (string) annotation admits None, e.g. ``float | None``."""
    return "None" in (part.strip() for part in annotation.split("|"))


def _field_type(annotation: str):
    """The argparse type of a TrainConfig field from its (string) annotation; a field that may be
    None also takes the word ``none``."""
    base = {"int": int, "float": float, "str": str}.get(annotation.split("|")[0].strip(), str)
    if not _may_be_none(annotation):
        return base

    def parse(text: str):
        return NONE if text.strip().lower() == "none" else base(text)
    parse.__name__ = base.__name__  # argparse names the type in "invalid float value: 'x'"
    return parse


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from .train import BOOK_CONFIGS, TrainConfig

    p.add_argument("--out", required=True, metavar="DIR",
                   help="run folder: holds last.pt (the checkpoint) and config.json; a run already there is resumed "
                        "(refused if its configuration or training data differ; see --no-resume)")
    p.add_argument("--book-config", choices=sorted(BOOK_CONFIGS), default=None,
                   help="start from this configuration of the book; the options below change single fields "
                        "(without it, TrainConfig's defaults; --book-config cifar10 is the DDPM paper's CIFAR-10 run)")
    p.add_argument("--no-resume", action="store_true",
                   help="start afresh even if DIR/last.pt exists (it is overwritten)")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    from . import diffusion, resample, schedules
    from .train import PRECISIONS

    choices = {"schedule": schedules.SCHEDULES, "mean_type": diffusion.MEAN_TYPES, "var_type": diffusion.VAR_TYPES,
               "loss_type": diffusion.LOSS_TYPES, "timestep_sampler": resample.SAMPLERS, "precision": PRECISIONS}
    g = p.add_argument_group("configuration (fields of ddpm_core.train.TrainConfig)",
                             "each (default: ...) is TrainConfig's; with --book-config, the options left out take "
                             "that configuration's values (ddpm_core.train.BOOK_CONFIGS)")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} (default: {getattr(defaults, f.name)!r}"
        help_text += "; the word none gives None)" if _may_be_none(f.type) else ")"
        if f.type == "bool":
            g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            options = list(choices[f.name]) if f.name in choices else None
            g.add_argument(flag, dest=f.name, type=_field_type(f.type), default=None, choices=options,
                           metavar=f.name.upper() if options is None else None, help=help_text)


def _eta(text: str) -> float:
    """The argparse type of --eta: a number in [0, 1]."""
    try:
        eta = float(text)
    except ValueError:
        eta = math.nan
    if not 0.0 <= eta <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like "
                                         f"variance); got {text}")
    return eta


def _add_sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="a checkpoint written by train (e.g. runs/x/last.pt)")
    p.add_argument("--out", required=True, metavar="PNG",
                   help="output image: a grid of samples, or a scatter plot for 2-D data")
    p.add_argument("--n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("--batch-size", type=int, default=256,
                   help="most samples drawn at once, in batches whose sizes differ by at most one; lower it if the device runs out "
                        "of memory (the samples of a --seed depend on it when --n exceeds it) (default: 256)")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), default="ddpm",
                   help="ddpm: ancestral sampling (Algorithm 2 of Ho et al.), respaced when --steps < T; "
                        "ddim: DDIM (Song et al.) with --ddim-steps steps, deterministic unless --eta > 0 (default: ddpm)")
    p.add_argument("--steps", type=int, default=None,
                   help="ddpm sampler: number of evenly spaced reverse steps (default: all T)")
    p.add_argument("--ddim-steps", type=int, default=50, help="ddim sampler: number of steps (default: 50)")
    p.add_argument("--eta", type=_eta, default=0.0, help="ddim sampler: noise scale eta, 0 is deterministic (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (default: 0)")
    p.add_argument("--no-ema", action="store_true", help="sample with the last weights instead of their EMA")
    p.add_argument("--device", default=None, help="device to sample on (default: runtime.get_device())")
    p.add_argument("--nrow", type=int, default=None, help="images per row of the grid (default: about sqrt(n))")
    p.add_argument("--no-progress", action="store_true", help="do not show the progress bar")
    p.add_argument("--compile", action="store_true",
                   help="run the network through torch.compile (sampling.Compiled): the first step compiles "
                        "(tens of seconds on a small CPU), later steps run up to ~1.3x faster; with an empty "
                        "compiler cache it pays only after a few thousand steps, not in one 1000-step run")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m ddpm_core`` parser with the ``train`` and ``sample`` commands."""
    parser = argparse.ArgumentParser(prog="python -m ddpm_core", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False,  # `train --t 50` is not --timestep-sampler
                                     epilog="Run 'python -m ddpm_core COMMAND --help' for the options of a command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_train_options(sub.add_parser(
        "train", allow_abbrev=False, help="train a diffusion model and write checkpoints (resumes a run in --out)",
        description="Train a DDPM (Algorithm 1 of Ho et al. 2020) with Adam, learning-rate warm-up, gradient "
                    "clipping and an EMA of the weights. Ctrl-C saves a checkpoint; running the same command "
                    "again resumes it exactly. Under torchrun every process trains a shard of each batch."))
    _add_sample_options(sub.add_parser(
        "sample", allow_abbrev=False, help="draw samples from a checkpoint and save them as a PNG",
        description="Draw samples from a trained model (its EMA weights by default) and save a PNG."))
    return parser


def _train(args) -> int:
    from .train import TrainConfig, book_config, train

    changes = {f.name: None if getattr(args, f.name) is NONE else getattr(args, f.name)
               for f in dataclasses.fields(TrainConfig) if getattr(args, f.name) is not None}
    config = book_config(args.book_config, **changes) if args.book_config else TrainConfig(**changes)
    result = train(config, out_dir=args.out, resume=not args.no_resume, progress=not args.no_progress)
    loss = result.history["loss"]
    tail = float(loss[-min(len(loss), 100):].mean()) if len(loss) else float("nan")
    print(f"trained {result.step} steps in {result.history['wall_time']:.1f} s; mean loss of the last "
          f"{min(len(loss), 100)} steps {tail:.4f}; checkpoint {result.checkpoint}")
    return 0


def save_samples(x, path: str | Path, nrow: int | None = None) -> None:
    """Save samples as a PNG: images [N, C, H, W] in [-1, 1] as a grid, points [N, 2] as a scatter plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = x.detach().float().cpu()
    if x.dim() == 4:
        from torchvision.utils import save_image
        save_image((x.clamp(-1, 1) + 1) / 2, path, nrow=nrow or math.ceil(math.sqrt(len(x))), padding=2)
    elif x.dim() == 2 and x.shape[1] == 2:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.scatter(x[:, 0], x[:, 1], s=3)
        ax.set_aspect("equal")
        fig.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(fig)
    else:
        raise ValueError(f"cannot draw samples of shape {tuple(x.shape)}: expected [N, C, H, W] or [N, 2]")


def _check_out(out: str) -> None:
    """Refuse an --out that :func:`save_samples` could not write; creates its folder."""
    path, need = Path(out), f"--out must be an image file such as samples.png; got {out!r}"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{need} ({'no file extension' if not path.suffix else 'extension ' + path.suffix}); "
                         f"use one of {', '.join(IMAGE_SUFFIXES)}")
    if path.is_dir():
        raise ValueError(f"{need} (a folder)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out!r} cannot be written: its folder {str(path.parent)!r} cannot be created "
                         f"({e.strerror or e}); choose another path") from None


def _sample(args) -> int:
    import torch

    from . import runtime, sampling
    from .train import load_checkpoint

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.nrow is not None and args.nrow < 1:
        raise ValueError(f"--nrow must be >= 1 (images per row of the grid), got {args.nrow}")
    _check_out(args.out)  # before the sampling, which may take minutes
    try:
        device = torch.device(args.device) if args.device else runtime.get_device()
    except RuntimeError:
        raise ValueError(f"--device {args.device!r} is not a device name; use cpu or cuda (e.g. cuda:0)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device is visible; use --device cpu")
    result = load_checkpoint(args.checkpoint, map_location=device)
    model = result.model if args.no_ema else result.ema
    if args.compile:
        model = sampling.Compiled(model)
    d = result.diffusion
    generator = torch.Generator(device=device).manual_seed(args.seed)
    progress = not args.no_progress
    k = -(-args.n // args.batch_size)  # batches of equal size (at most two sizes: one compilation each)
    batches = [args.n // k + (i < args.n % k) for i in range(k)]
    if args.sampler == "ddim":
        x = torch.cat([sampling.ddim_sample(model, d, (b, *result.sample_shape), args.ddim_steps, eta=args.eta,
                                            generator=generator, progress=progress) for b in batches])
        how = f"DDIM, {args.ddim_steps} steps, eta {args.eta}"
    else:
        steps = d.num_timesteps if args.steps is None else args.steps
        if not 2 <= steps <= d.num_timesteps:
            raise ValueError(f"--steps must be in 2..{d.num_timesteps} (T of this model), got {steps}")
        process = d if steps == d.num_timesteps else sampling.respace(d, steps)
        x = torch.cat([sampling.ddpm_sample(model, process, (b, *result.sample_shape), generator=generator,
                                            progress=progress) for b in batches])
        how = f"DDPM, {steps} of {d.num_timesteps} steps"
    how += f", in {len(batches)} batches" if len(batches) > 1 else ""
    save_samples(x, args.out, args.nrow)
    how += ", compiled" if args.compile else ""
    print(f"wrote {args.n} samples ({how}, {'last' if args.no_ema else 'EMA'} weights of step {result.step}) "
          f"to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m ddpm_core`` and of the ``ddpm-core`` script.

    From the command line (``argv`` None), a value that the library refuses (a ``ValueError``, a
    missing or unreadable checkpoint, samples that are not finite) is reported as argparse reports
    its own errors: one line ``error: ...`` and exit code 2 (a training run that diverged: the same
    line, exit code 1; its last good checkpoint is kept). A ``RuntimeError`` or ``OSError`` (no CUDA
    device, a failed download, a folder that refuses writes) is one line with exit code 1, Ctrl-C
    exit code 130 (a training run saves its checkpoint first). Called with an ``argv`` list (from
    Python: tests, notebooks), ``main`` raises the exception instead."""
    from .sampling import NonFiniteSampleError
    from .train import CheckpointError, TrainingDivergedError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"train": _train, "sample": _sample}[args.command](args)
    except (ValueError, FileNotFoundError, CheckpointError, NonFiniteSampleError, TrainingDivergedError) as e:
        if argv is not None:
            raise
        # a refused value is a usage error (2); a run that diverged ran and failed (1)
        code = 1 if isinstance(e, TrainingDivergedError) else 2
        parser.exit(code, f"{parser.prog} {args.command}: error: {e}\n")
    except (RuntimeError, OSError) as e:  # no CUDA, a failed download, a folder that refuses writes
        if argv is not None:
            raise
        parser.exit(1, f"{parser.prog} {args.command}: error: {type(e).__name__}: {e}\n")
    except KeyboardInterrupt:  # Ctrl-C: the trainer has saved its checkpoint and said so
        if argv is not None:
            raise
        parser.exit(130, f"{parser.prog} {args.command}: interrupted\n")


if __name__ == "__main__":
    sys.exit(main())
