"""The one place that decides where the book runs: profile, device and cache directory.

Profiles:
  ``cpu``  the default; small models and offline data, sized for two CPU cores (a chapter's first run
          trains its models, longest in chapter 1; later runs load them from the cache).
  ``gpu``  picked when CUDA is available; chapter 6 trains the paper's CIFAR-10 model, chapter 1 wider
          baselines and its colour study (see ``PROFILES``).
The environment variable ``DDPM_PROFILE`` overrides the choice; ``DDPM_CACHE`` moves the cache
of trained models and statistics (default ``~/.cache/ddpm_core``).
"""
from __future__ import annotations

import contextlib
import numbers
import os
import signal
import warnings
from pathlib import Path
from typing import BinaryIO, Callable

import torch

PROFILES = {
    "cpu": "small models and offline datasets; each chapter in minutes on two CPU cores",
    "gpu": "a CUDA device: chapter 6 trains the paper's CIFAR-10 model (downloads CIFAR-10), chapter 1 "
           "wider baselines; the other chapters run their small models on the GPU",
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


def is_int(v) -> bool:
    """A Python or numpy integer, not a bool (``numbers.Integral`` counts ``True`` as 1)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_image_range(lo: float, hi: float, limit: float = 1.0) -> None:
    """Raise ``ValueError`` where images whose smallest and largest values are ``lo`` and ``hi`` reach
    beyond [-limit, limit]: they are not on the [-1, 1] scale (0..255 pixels, most likely). Each
    caller picks its own ``limit``: clean data 1, images to quantise 2, noisy images to draw 10."""
    if lo < -limit or hi > limit:
        raise ValueError(f"expected images in [-1, 1], got min {lo:.3g} and max {hi:.3g}; "
                         "map 0..255 pixels with x / 127.5 - 1")


def cache_dir() -> Path:
    """Directory for trained models, reference statistics and datasets (``$DDPM_CACHE``; a blank
    value counts as unset), created if needed."""
    env = os.environ.get("DDPM_CACHE", "").strip()
    path = Path(env or Path.home() / ".cache" / "ddpm_core").expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where, fix = ("from $DDPM_CACHE", " or unset it (default ~/.cache/ddpm_core)") if env else ("the default", "")
        raise OSError(f"cannot use the cache folder {path} ({where}): {e.strerror or e}; "
                      f"point DDPM_CACHE at a writable folder{fix}") from e
    return path


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object], durable: bool = False) -> Path:
    """Write ``path`` so that a reader sees the old file or the new one, never half of one.

    ``write(f)`` fills a temporary file (an open binary file) in the same folder, which then
    replaces ``path`` with ``os.replace``. If ``write`` raises, the temporary file is removed and
    ``path`` is left as it was. ``durable`` also fsyncs the file and then its folder, so that the
    new version survives a crash of the machine (training checkpoints). Parallel writers (notebooks
    that share a cache) each use their own temporary file; the last one to finish wins.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        with contextlib.suppress(OSError):  # make the rename itself durable where the OS allows
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    return path


# ---------------------------------------------------------------------- parallel training of small models
def workers(n_jobs: int) -> int:
    """How many worker processes :func:`prefetch` uses for ``n_jobs`` jobs: one per CPU core (at most
    ``n_jobs``) in the cpu profile, 1 (no workers) on a GPU. ``$DDPM_WORKERS`` overrides it; set it to
    1 to train everything in the calling process."""
    env = os.environ.get("DDPM_WORKERS", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"DDPM_WORKERS={env!r} must be a positive integer (1 turns workers off)")
        n = int(env)
    else:
        n = (os.cpu_count() or 1) if get_device().type == "cpu" else 1
    return max(1, min(n, n_jobs))


_STOP = None  # in a prefetch worker: the pool's "interrupted" event


def _worker_init(env: dict, stop=None) -> None:
    global _STOP
    _STOP = stop
    os.environ.update(env)
    torch.set_num_threads(1)  # one core per worker: these small models gain little from a second thread
    # Ctrl-C in a terminal, and a Jupyter kernel's interrupt, reach the whole process group: an idle
    # worker ignores it (prefetch stops the pool itself); _call lets it interrupt a job
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def prefetch(fn, jobs: list[tuple], desc: str = "training", progress: bool = True) -> list:
    """Run ``fn(*job)`` for every job in :func:`workers` processes at once, one torch thread each,
    and return what each call returned (or the exception it raised, as a string).

    Meant for filling the model cache with many small models (2-D toys, the 8x8-digit ablations,
    chapter 1's image study): two one-thread processes on two cores beat one two-thread process
    (the smallest models about halve the wall time). It is
    best effort: a job that fails here is simply not cached, and the caller's own in-process call
    trains it again and raises the error with its full traceback. ``fn`` must be importable (a
    module-level function); the workers see the caller's ``DDPM_CACHE`` and profile.

    Ctrl-C (or the kernel's interrupt) stops it: jobs not yet started are dropped, running ones get
    the interrupt too (a training run saves its checkpoint and stops), and ``KeyboardInterrupt`` is
    raised. Where worker processes cannot start (a script without ``if __name__ == "__main__":``),
    it warns and leaves the jobs to the caller.
    """
    n = workers(len(jobs))
    if n < 2:
        return [None] * len(jobs)
    import concurrent.futures as cf
    import multiprocessing

    from tqdm.auto import tqdm

    env = {"DDPM_CACHE": str(cache_dir()), "DDPM_PROFILE": get_profile(), "DDPM_WORKERS": "1",
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    results: list = [None] * len(jobs)
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe after torch has started its threads
    stop = ctx.Event()  # set on an interrupt: a job the pool had already queued then does not start
    pool = cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_worker_init, initargs=(env, stop))
    futures: dict = {}
    try:
        futures = {pool.submit(_call, fn, job): i for i, job in enumerate(jobs)}
        for fut in tqdm(cf.as_completed(futures), total=len(jobs), desc=f"{desc} ({n} processes)",
                        disable=not progress):
            results[futures[fut]] = fut.result()
    except KeyboardInterrupt:  # queued jobs: cancelled below; running ones: interrupted here
        stop.set()
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            try:
                os.kill(proc.pid, signal.SIGINT)
            except (ProcessLookupError, OSError):
                pass
        raise
    except cf.process.BrokenProcessPool as err:
        warnings.warn(f"the worker processes of {desc!r} could not run ({err}); training in this process instead. "
                      "In a script, put the code under `if __name__ == \"__main__\":`, or set DDPM_WORKERS=1")
        return results
    finally:  # also after an interrupt or an unexpected error (an unpicklable fn): no worker outlives the call
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def _call(fn, job: tuple):
    if _STOP is not None and _STOP.is_set():
        return "KeyboardInterrupt: not started, the pool was interrupted"
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a running job can be interrupted
    try:                                                                 # (a trainer installs its own handler)
        return fn(*job)
    except Exception as e:  # noqa: BLE001 - reported to the caller, who retries in-process
        return f"{type(e).__name__}: {e}"
    except KeyboardInterrupt:
        return "KeyboardInterrupt: interrupted"
    finally:
        signal.signal(signal.SIGINT, previous)


def compiled_or_eager(net: torch.nn.Module, what: str = "running", dynamic: bool | None = None) -> Callable:
    """``torch.compile(net, dynamic=dynamic)``, or ``net`` itself where compiling fails (no C++
    compiler, an unsupported platform): compilation happens at the first call, so the first call
    falls back to the eager network with a warning and every later call uses it. An error that the
    eager network raises too (a wrong input shape) is raised as usual.

    :param what: what the network is used for, in the warnings ("training", "sampling").
    :param dynamic: ``torch.compile``'s: None compiles the first shape statically and a second one
        with symbolic shapes; False compiles each new shape statically.
    """
    try:
        compiled = torch.compile(net, dynamic=dynamic)
    except Exception as e:  # torch.compile itself unavailable (e.g. an unsupported Python)
        warnings.warn(f"torch.compile is unavailable ({type(e).__name__}: {e}); {what} eagerly")
        return net
    chosen = {}  # "fn": the compiled network once its first call worked, else the eager one

    def forward(x_t, t):
        if "fn" in chosen:
            return chosen["fn"](x_t, t)
        try:
            out, chosen["fn"] = compiled(x_t, t), compiled
        except Exception as e:
            warnings.warn(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}); {what} eagerly")
            out, chosen["fn"] = net(x_t, t), net
        return out
    return forward
