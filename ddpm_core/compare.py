"""Side-by-side measurements of GANs, VAEs, flows and DDPM for the comparison chapter.

Three kinds of helpers:

* **Mode coverage on 2-D mixtures** (the ring and the grid of ``data.load_dataset``). A sample is of
  *high quality* if it lies within ``n_std`` standard deviations (default 3) of the nearest mixture
  centre; a mode is *covered* if it receives at least ``min_fraction`` of the high-quality samples
  it would get under the true, equally weighted mixture (the protocol of Srivastava et al. 2017,
  VEEGAN, and Metz et al. 2017, unrolled GANs, with the threshold stated as a share).
* **Cached training** of the baselines (``get_baseline``) and of the 2-D DDPMs (``get_ddpm``), one
  run per (family, data, steps, seed), so the book and its tests train each model once.
* **Seeds and timing**: ``summarize`` (mean, std, min, max over seeds), ``timed``, and
  ``sample_baseline`` / ``score_baseline`` (seconds per sample; FID, IS, KID with one extractor).
* **The image study** (``image_study``): every family and seed trained with one budget and scored
  alike, as an ``ImageStudy`` that saves to JSON + npz and loads back; ``colour_study`` is the one
  on colour crops of photographs that chapter 1 runs in the GPU profile.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from . import baselines, runtime

CACHE_VERSION = 1  # bump when a change here makes the cached baselines stale


# ---------------------------------------------------------------------- modes of 2-D mixtures
def nearest_mode(samples: torch.Tensor, modes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index [N] (long) and Euclidean distance [N] of the nearest mode of each sample.

    :param samples: points [N, 2] (any dimension d works: [N, d]).
    :param modes: mixture centres [K, d].
    """
    samples, modes = _points(samples, "samples"), _points(modes, "modes")
    if samples.shape[1] != modes.shape[1]:
        raise ValueError(f"samples have {samples.shape[1]} coordinates but modes have {modes.shape[1]}")
    if len(modes) == 0:
        raise ValueError("modes is empty: give the [K, d] mixture centres (dataset.modes)")
    dist = torch.cdist(samples.double(), modes.double())  # (N, K)
    if len(samples) == 0:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    d, idx = dist.min(dim=1)
    return idx, d


@dataclass(frozen=True)
class ModeStats:
    """Mode coverage and sample quality of one set of 2-D samples.

    :ivar counts: high-quality samples per mode, long [K].
    :ivar covered: modes with ``counts >= min_fraction * n_samples / K``.
    :ivar num_modes: K.
    :ivar high_quality: share of all samples within ``n_std`` standard deviations of a mode.
    :ivar n_samples: N. :ivar n_std, min_fraction: the thresholds used.
    """

    counts: torch.Tensor
    covered: int
    num_modes: int
    high_quality: float
    n_samples: int
    n_std: float
    min_fraction: float

    @property
    def covered_mask(self) -> torch.Tensor:
        """bool [K]: which modes are covered."""
        return self.counts >= self.min_fraction * self.n_samples / self.num_modes

    @property
    def mode_tv(self) -> float:
        """Total variation between the high-quality samples' spread over modes and the uniform
        spread (0: perfectly balanced, near 1: all on one mode); NaN with no high-quality sample."""
        total = int(self.counts.sum())
        if total == 0:
            return float("nan")
        share = self.counts.double() / total
        return float(0.5 * (share - 1.0 / self.num_modes).abs().sum())


def mode_stats(samples: torch.Tensor, modes: torch.Tensor, mode_std: float, n_std: float = 3.0,
               min_fraction: float = 0.1) -> ModeStats:
    """Which modes of a mixture the samples cover, and how many samples are of high quality.

    A sample is of high quality if its distance to the nearest mode is below ``n_std * mode_std``
    (for an isotropic 2-D Gaussian 98.9 % of its own samples are, at ``n_std = 3``). A mode is
    covered if it holds at least ``min_fraction`` of its expected count ``N / K`` of high-quality
    samples (mixtures with equal weights, such as the ring and the grid).

    :param samples: [N, 2] points. :param modes: [K, 2] centres (``dataset.modes``).
    :param mode_std: standard deviation of each component (``dataset.mode_std``).
    :return: a :class:`ModeStats`.
    """
    if not (mode_std > 0 and n_std > 0):
        raise ValueError(f"mode_std and n_std must be positive, got {mode_std} and {n_std}")
    if not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction is a share of the expected count, between 0 and 1; got {min_fraction}")
    idx, dist = nearest_mode(samples, modes)
    good = dist < n_std * mode_std
    counts = torch.bincount(idx[good], minlength=len(modes))
    n = len(idx)
    covered = int((counts >= min_fraction * n / len(modes)).sum()) if n else 0
    return ModeStats(counts=counts, covered=covered, num_modes=len(modes),
                     high_quality=float(good.double().mean()) if n else float("nan"), n_samples=n,
                     n_std=float(n_std), min_fraction=float(min_fraction))


def uniform_floor(modes: torch.Tensor, mode_std: float, n: int = 2000, seed: int = 0,
                  n_std: float = 3.0) -> ModeStats:
    """:func:`mode_stats` of ``n`` points drawn uniformly over the square that holds the modes (their
    bounding box widened by ``n_std * mode_std``): what a model that learned nothing about where
    the modes are would score. A model's mode coverage means something only where its high-quality
    share is above this floor.
    """
    modes = _points(modes, "modes")
    lo, hi = modes.min(0).values - n_std * mode_std, modes.max(0).values + n_std * mode_std
    pts = lo + (hi - lo) * torch.rand(n, modes.shape[1], generator=torch.Generator().manual_seed(seed),
                                      dtype=modes.dtype)
    return mode_stats(pts, modes, mode_std, n_std=n_std)


def mode_table(stats: dict[str, dict[str, ModeStats]]):
    """A ``pandas.DataFrame`` of mode coverage, one row per (mixture, kind of points).

    :param stats: ``{kind of points: {mixture: ModeStats}}``, e.g. ``{"held-out data": ...,
        "uniform cloud": ...}``.
    :return: index (mixture, points); columns "modes covered" ("8 of 8") and "high-quality share".
    """
    import pandas as pd

    mixtures = list(dict.fromkeys(name for by_mixture in stats.values() for name in by_mixture))
    rows = [{"mixture": name, "points": kind, "modes covered": f"{s.covered} of {s.num_modes}",
             "high-quality share": f"{s.high_quality:.1%}"}
            for name in mixtures for kind, by_mixture in stats.items() if name in by_mixture
            for s in [by_mixture[name]]]
    return pd.DataFrame(rows).set_index(["mixture", "points"])


def _points(x: torch.Tensor, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a [N, d] tensor of points, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x.detach().cpu()


# ---------------------------------------------------------------------- seeds and timing
def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (ddof 1; 0 for one value), min and max of per-seed values."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        raise ValueError("summarize needs at least one value")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(fn(), seconds)``, synchronising CUDA before reading the clock."""
    _sync()
    start = time.perf_counter()
    out = fn()
    _sync()
    return out, time.perf_counter() - start


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------- cached training
def baseline_key(family: str, dataset: str, steps: int, seed: int = 0, batch_size: int = 256,
                 lr: float | None = None, size: str | None = None, **options: Any) -> str:
    """Cache name ``<family>-<dataset>-<steps>steps-seed<seed>-<8 hex>`` of a baseline run; the hash
    covers every argument (and ``CACHE_VERSION``), so a changed setting trains a new model."""
    size = size or runtime.get_profile()
    spec = dict(family=family, dataset=dataset, steps=int(steps), seed=int(seed), batch_size=int(batch_size),
                lr=lr, size=size, options=options, version=CACHE_VERSION)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{family}-{dataset}-{int(steps)}steps-seed{int(seed)}-{digest}"


def baseline_path(family: str, dataset: str, steps: int, seed: int = 0, **kw: Any) -> Path:
    """``runtime.cache_dir()/baselines/<baseline_key(...)>.pt``."""
    return runtime.cache_dir() / "baselines" / f"{baseline_key(family, dataset, steps, seed, **kw)}.pt"


def get_baseline(family: str, dataset: str, steps: int, seed: int = 0, batch_size: int = 256,
                 lr: float | None = None, size: str | None = None, progress: bool = True,
                 **options: Any) -> baselines.Baseline:
    """A GAN, VAE or flow trained for ``steps`` updates on ``dataset``'s training split, from the cache.

    The first call trains it (``baselines.build(family, shape, size, seed)`` then
    ``baselines.train(model, x, steps, batch_size, lr, seed)``) and writes the checkpoint with
    ``baselines.save_checkpoint`` to :func:`baseline_path`; later calls load it with
    ``baselines.load``. Fixed step counts, not time budgets, so a run is the same on every machine.

    :param family: "gan", "vae" or "flow". :param dataset: a ``data.load_dataset`` name.
    :param options: family options passed to ``baselines.build`` (part of the cache key).
    :return: the model on ``runtime.get_device()`` in eval mode; ``model.history`` holds the training
        history (``loss`` per step, ``loss_d``/``loss_g`` for the GAN, ``wall_time`` in seconds).
    """
    from .data import load_dataset

    if family not in baselines.FAMILIES:
        raise ValueError(f"unknown baseline family {family!r}; choose one of {sorted(baselines.FAMILIES)}")
    size = size or runtime.get_profile()
    path = baseline_path(family, dataset, steps, seed, batch_size=batch_size, lr=lr, size=size, **options)
    device = runtime.get_device()
    if path.is_file():
        model = baselines.load(path).to(device)
    else:
        x = load_dataset(dataset, "train").x.to(device)
        model = baselines.build(family, tuple(x.shape[1:]), size=size, seed=seed, **options).to(device)
        history = baselines.train(model, x, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  progress=progress)
        baselines.save_checkpoint(model, path, history)
        model.history = history
    return model.eval()


def get_ddpm(dataset: str, steps: int, seed: int = 0, progress: bool = True, **changes: Any):
    """A 2-D DDPM: ``train.get_trained(train.book_config("toy-ring", dataset=..., steps=..., seed=...))``
    (the time-conditioned MLP of the ring configuration, on ``"ring"``, ``"grid"`` or ``"swissroll"``)."""
    from . import train

    return train.get_trained(ddpm_config(dataset, steps, seed, **changes), progress=progress)


def ddpm_config(dataset: str, steps: int, seed: int = 0, **changes: Any):
    """The ``train.TrainConfig`` of :func:`get_ddpm`: ``book_config("toy-ring")`` with these changes."""
    from . import train

    return train.book_config("toy-ring", dataset=dataset, steps=steps, seed=seed, **changes)


# ---------------------------------------------------------------------- the 2-D study
FAMILIES = ("gan", "vae", "flow", "ddpm")
FAMILY_NAMES = {"gan": "GAN", "vae": "VAE", "flow": "flow", "ddpm": "DDPM"}
# 2-D DDPMs that differ from the study's in their network only, trained with its budget and seeds
# (chapter 1: what holds the DDPM back on the plane): ``{name: changes to its config}``.
TOY_DDPM_VARIANTS = {"ddpm-fourier": {"preset": "toy-mlp-fourier"}}
FAMILY_NAMES["ddpm-fourier"] = "DDPM, Fourier features"


def _is_ddpm(family: str) -> bool:
    return family == "ddpm" or family in TOY_DDPM_VARIANTS


def _toy_budget(family: str) -> dict:
    """The entry of :data:`TOY_BUDGET` a family trains with (the DDPM's for its variants)."""
    return TOY_BUDGET["ddpm" if _is_ddpm(family) else family]


# One budget for every family on the 2-D mixtures: the same number of updates on batches of the
# same size (so every model sees the same number of points), each family with its own default
# learning rate (1e-3 for all four: the baselines' default for points and book_config("toy-ring")).
TOY_BUDGET = {fam: {"steps": 1000, "batch_size": 256, "lr": None} for fam in FAMILIES}
# The image study's budget: updates of the DDPM of chapter 6 (book_config("mnist5k"), batch 32),
# which chapter 6 trains on to 2,000; the GAN, VAE and flow get the same updates on batches of the
# same size. With 1,000, three seeds of each family (12 runs, two at a time, one core each) train
# in about 8 minutes of the 2-core CPU; the DDPM's are half of that.
IMAGE_STEPS = 1000
# The 2-D DDPMs (T = 1000) sample with 250 respaced ancestral steps: every seed covers every mode of
# the ring and the grid, and the high-quality shares (0.42-0.43) equal those of all 1,000 steps
# within the sampling noise of 2,000 points (chapter 1 checks it on the ring's first seed), in 11 s
# instead of the ~50 s that full chains of the 6 models cost.
# 100 steps are not enough: one grid seed then covered only 23 of the 25 modes.
TOY_SAMPLE_STEPS = 250
# The image study reports the GAN's losses as means over its last GAN_LOSS_WINDOW updates, and the
# VAE's bits/dim as the importance-weighted bound with IW_SAMPLES samples.
GAN_LOSS_WINDOW = 100
IW_SAMPLES = 64


def image_config(steps: int = IMAGE_STEPS):
    """The DDPM of the image study: ``train.book_config("mnist5k")`` stopped after ``steps`` updates
    (exactly the first ``steps`` updates of the longer run, see ``train.shorter_cached_run``)."""
    from . import train

    return train.book_config("mnist5k", steps=steps)


@dataclass
class ToyRun:
    """One trained 2-D model of any family, behind one interface.

    :ivar family: "gan", "vae", "flow" or "ddpm". :ivar dataset: "ring" or "grid". :ivar seed: its seed.
    :ivar model: the baseline, or the DDPM's ``train.TrainResult``.
    :ivar history: ``loss`` per update (D's loss for the GAN; L_simple for the DDPM), ``loss_g`` for the GAN.
    :ivar steps, batch_size: the training budget. :ivar train_seconds: measured training time.
    """

    family: str
    dataset: str
    seed: int
    model: Any
    history: dict
    steps: int
    batch_size: int
    train_seconds: float

    def sample(self, n: int, generator: torch.Generator | None = None, steps: int | None = None) -> torch.Tensor:
        """[n, 2] points on the CPU: ``baselines.sample``, or the DDPM's ancestral sampling (Algorithm 2
        of Ho et al. 2020) with the EMA network, over all T steps or over ``steps`` respaced ones
        (``sampling.respace``, Nichol & Dhariwal 2021); the baselines ignore ``steps``."""
        with torch.no_grad():
            if _is_ddpm(self.family):
                from .sampling import ddpm_sample, respace

                d = self.model.diffusion
                x = ddpm_sample(self.model.ema, d if steps is None else respace(d, steps),
                                (n, *self.model.sample_shape), generator=generator)
            else:
                x = baselines.sample(self.model, n, generator=generator)
        return x.float().cpu()


def train_toy(family: str, dataset: str, seed: int = 0, steps: int | None = None, batch_size: int | None = None,
              progress: bool = True) -> ToyRun:
    """Train (or load from the cache) one 2-D model with the budget of :data:`TOY_BUDGET`.

    Baselines go through :func:`get_baseline`, the DDPM through :func:`get_ddpm`
    (``book_config("toy-ring")`` with the dataset, seed, steps, batch size and learning rate changed),
    and so do the DDPMs of :data:`TOY_DDPM_VARIANTS` (with the DDPM's budget and their own changes).
    """
    if family not in FAMILIES and family not in TOY_DDPM_VARIANTS:
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES + tuple(TOY_DDPM_VARIANTS)}")
    budget = _toy_budget(family)
    steps = budget["steps"] if steps is None else steps
    batch_size = budget["batch_size"] if batch_size is None else batch_size
    if _is_ddpm(family):
        run = get_ddpm(dataset, steps, seed, progress=progress, **_toy_ddpm_changes(batch_size, family))
        history = {"loss": [float(v) for v in run.history["loss"]]}
        return ToyRun(family, dataset, seed, run, history, steps, batch_size, float(run.history["wall_time"]))
    model = get_baseline(family, dataset, steps, seed, batch_size=batch_size, lr=budget["lr"], progress=progress)
    return ToyRun(family, dataset, seed, model, model.history, steps, batch_size, float(model.history["wall_time"]))


def _toy_ddpm_changes(batch_size: int, family: str = "ddpm") -> dict:
    """The changes to ``book_config("toy-ring")`` that give a 2-D DDPM (or a variant) the toy budget."""
    lr = TOY_BUDGET["ddpm"]["lr"]
    return {"batch_size": batch_size, **({} if lr is None else {"lr": lr}), **TOY_DDPM_VARIANTS.get(family, {})}


def _toy_cached(family: str, dataset: str, seed: int) -> bool:
    """Whether :func:`train_toy` with the default budget would only load from the cache."""
    from . import train

    budget = _toy_budget(family)
    if _is_ddpm(family):
        return train.is_cached(ddpm_config(dataset, budget["steps"], seed, **_toy_ddpm_changes(budget["batch_size"], family)))
    return baseline_path(family, dataset, budget["steps"], seed, batch_size=budget["batch_size"], lr=budget["lr"],
                         size=runtime.get_profile()).is_file()


def _toy_to_cache(family: str, dataset: str, seed: int) -> None:
    train_toy(family, dataset, seed, progress=False)


def toy_study(datasets: Sequence[str] = ("ring", "grid"), families: Sequence[str] = FAMILIES,
              seeds: Sequence[int] = (0, 1, 2), n_samples: int = 2000, ddpm_steps: int | None = TOY_SAMPLE_STEPS,
              progress: bool = True) -> list[dict]:
    """Train every family on every 2-D mixture with every seed, sample, and measure the modes.

    Samples are drawn with a generator seeded ``1000 + seed`` on ``runtime.get_device()``; the DDPMs
    with ``ddpm_steps`` respaced ancestral steps (None: all T).
    :return: one dict per run: dataset, family, seed, covered, num_modes, high_quality, mode_tv,
        train_seconds, sample_seconds (per 1,000 points), steps, batch_size, samples [n, 2], run (:class:`ToyRun`).
    """
    from tqdm.auto import tqdm

    from .data import load_dataset

    jobs = [(ds, fam, s) for ds in datasets for fam in families for s in seeds]
    missing = [(fam, ds, s) for ds, fam, s in jobs if not _toy_cached(fam, ds, s)]
    if len(missing) > 1:  # train the missing ones side by side (one process per core), then load below
        runtime.prefetch(_toy_to_cache, missing, desc="2-D models", progress=progress)
    rows = []
    for ds, fam, seed in tqdm(jobs, desc="2-D models", disable=not progress):
        mix = load_dataset(ds, "test")
        run = train_toy(fam, ds, seed, progress=False)
        gen = torch.Generator(device=runtime.get_device()).manual_seed(1000 + seed)  # on the models' device
        x, sec = timed(lambda: run.sample(n_samples, gen, steps=ddpm_steps))
        st = mode_stats(x, mix.modes, mix.mode_std)
        rows.append(dict(dataset=ds, family=fam, seed=seed, covered=st.covered, num_modes=st.num_modes,
                         high_quality=st.high_quality, mode_tv=st.mode_tv, train_seconds=run.train_seconds,
                         sample_seconds=1000 * sec / n_samples, steps=run.steps, batch_size=run.batch_size,
                         samples=x, run=run))
    return rows


def _count_range(low: float, high: float) -> str:
    """Counts over seeds as a table shows them: "8" when every seed agrees, else "18–21"."""
    return f"{low:.0f}" if low == high else f"{low:.0f}–{high:.0f}"


def toy_table(rows: list[dict]):
    """A ``pandas.DataFrame``, one row per (dataset, family): modes covered (the range over seeds,
    "18–21 of 25"), high-quality share and mode imbalance (total variation), each as mean ± standard
    deviation over the seeds, and the mean training time. The budget (updates, batch size) and the
    number of seeds are the same in every row of a study, so the text states them."""
    import pandas as pd

    out = []
    keys = list(dict.fromkeys((r["dataset"], r["family"]) for r in rows))
    for ds, fam in keys:
        rs = [r for r in rows if r["dataset"] == ds and r["family"] == fam]
        cov, hq = summarize([r["covered"] for r in rs]), summarize([r["high_quality"] for r in rs])
        tv, sec = summarize([r["mode_tv"] for r in rs]), summarize([r["train_seconds"] for r in rs])
        out.append({
            "data": ds, "model": FAMILY_NAMES[fam],
            "modes covered": f"{_count_range(cov['min'], cov['max'])} of {rs[0]['num_modes']}",
            "high-quality share": f"{hq['mean']:.1%} ± {hq['std']:.1%}",
            "imbalance (TV)": f"{tv['mean']:.2f} ± {tv['std']:.2f}",
            "training time (s)": f"{sec['mean']:.1f}",
        })
    return pd.DataFrame(out).set_index(["data", "model"])


# ---------------------------------------------------------------------- the image study
def image_baselines(config, families: Sequence[str] = ("gan", "vae", "flow"), seed: int = 0,
                    progress: bool = True) -> dict[str, baselines.Baseline]:
    """GAN, VAE and flow trained on the DDPM's data with the DDPM's budget: the same number of
    updates (``config.steps``) on batches of the same size (``config.batch_size``), so every model
    sees the same training images. Cached by :func:`get_baseline`.

    :param config: the DDPM's ``train.TrainConfig`` (e.g. ``train.book_config("mnist5k")``).
    """
    return {fam: get_baseline(fam, config.dataset, config.steps, seed, batch_size=config.batch_size,
                              progress=progress) for fam in families}


IMAGE_SEEDS = (0, 1, 2)  # training seeds of every family in the image study (the DDPM's seed 0 is chapter 6's run)


def image_models(config, seeds: Sequence[int] = IMAGE_SEEDS, families: Sequence[str] = ("gan", "vae", "flow"),
                 progress: bool = True) -> tuple[list, dict[str, list[baselines.Baseline]]]:
    """Every model of the image study: the DDPM of ``config`` trained once per seed
    (``train.get_trained(config.replace(seed=s))``; seed ``config.seed`` is the run that chapter 6
    continues) and each baseline family trained once per seed with the DDPM's budget
    (:func:`image_baselines`).

    Models missing from the cache are first trained side by side in :func:`runtime.prefetch`
    workers (one core each, the longest runs first), so their training times are those of one core
    while another model trains on the other.

    :return: ``([DDPM TrainResult of each seed], {family: [model of each seed]})``.
    """
    from . import train

    ddpm_configs = [config.replace(seed=seed) for seed in seeds]
    jobs = [("ddpm", c, c.seed) for c in ddpm_configs if not train.is_cached(c)]
    by_cost = sorted(families, key=lambda f: -_IMAGE_COST.get(f, 0))
    jobs += [(fam, config, seed) for fam in by_cost for seed in seeds
             if not baseline_path(fam, config.dataset, config.steps, seed, batch_size=config.batch_size).is_file()]
    if len(jobs) > 1:
        runtime.prefetch(_image_to_cache, jobs, desc="image models", progress=progress)
    ddpms = [train.get_trained(c, progress=progress) for c in ddpm_configs]
    per_seed = [image_baselines(config, families, seed, progress=progress) for seed in seeds]
    return ddpms, {fam: [models[fam] for models in per_seed] for fam in families}


# relative cost of one baseline update on mnist5k (one core), to start the longest runs first
_IMAGE_COST = {"flow": 93.0, "gan": 47.0, "vae": 25.0}


def _image_to_cache(family: str, config, seed: int) -> None:
    """Train one model of :func:`image_models` into the cache (run in a worker process); a DDPM job
    carries its seed in ``config``."""
    from . import train

    if family == "ddpm":
        train.get_trained(config, progress=False)
    else:
        image_baselines(config, (family,), seed, progress=False)


def score_baseline(model: baselines.Baseline, n: int, extractor, dataset: str = "mnist5k", seed: int = 0):
    """``n`` samples of a baseline scored against ``dataset`` (``evaluation.score_images``) and the
    seconds per sample: ``(EvalResult, seconds)``."""
    from . import evaluation

    x, sec = sample_baseline(model, n, seed=seed)
    return evaluation.score_images(x, dataset, extractor, label=FAMILY_NAMES[model.family]), sec


def sample_baseline(model: baselines.Baseline, n: int, seed: int = 0, batch_size: int = 500) -> tuple[torch.Tensor, float]:
    """``n`` samples [n, C, H, W] on the CPU and the seconds per sample (one network pass each)."""
    gen = torch.Generator(device=model.device).manual_seed(seed)

    def run():
        return torch.cat([baselines.sample(model, min(batch_size, n - i), generator=gen).cpu()
                          for i in range(0, n, batch_size)])

    x, sec = timed(run)
    return x, sec / n


def baseline_bits_per_dim(model: baselines.Baseline, x: torch.Tensor, seed: int = 0,
                          iw_samples: int = IW_SAMPLES) -> dict[str, Any]:
    """Bits/dim of 8-bit test images under a baseline, as comparable as the families allow.

    VAE: the importance-weighted bound L_k with ``k = iw_samples`` (Burda et al. 2016), an upper
    bound on the NLL. Flow: the exact change of variables of the uniformly dequantized data, an
    upper bound on the discrete NLL (Theis et al. 2016). GAN: no likelihood (``bpd`` None).

    :return: ``bpd`` (mean), ``bpd_se`` (standard error over images), ``per_image`` [N] (or None),
        ``method`` (a phrase), ``seconds``.
    """
    if model.family == "gan":
        return {"bpd": None, "bpd_se": None, "per_image": None, "seconds": 0.0,
                "method": "none: a GAN defines no likelihood"}
    gen = torch.Generator(device=model.device).manual_seed(seed)
    iw = iw_samples if model.family == "vae" else None
    per, sec = timed(lambda: baselines.bits_per_dim(model, x, generator=gen, iw_samples=iw).double())
    method = (f"importance-weighted bound, k = {iw_samples}" if model.family == "vae"
              else "exact (dequantized) change of variables")
    se = float(per.std() / math.sqrt(len(per))) if len(per) > 1 else float("nan")
    return {"bpd": float(per.mean()), "bpd_se": se, "per_image": per, "method": method, "seconds": sec}


# ---------------------------------------------------------------------- a whole image study, saved or live
@dataclass
class ImageStudy:
    """Every measurement of an image study (:func:`image_study`): all families, every seed, one
    feature extractor, the same number of samples and the same test images.

    :ivar dataset: the training data. :ivar config: the DDPM's ``TrainConfig`` as a dict (its
        ``steps`` and ``batch_size`` are every family's budget). :ivar seeds: training seeds.
    :ivar extractor: the feature extractor's name. :ivar n_eval: samples scored per model.
    :ivar sample_steps: respaced ancestral steps of the DDPM's sampler. :ivar n_bpd: test images
        of the bits/dim. :ivar evals: ``{family: [EvalResult per seed]}``; ``refs``: test images and
        noise scored alike. :ivar bpd: ``{family: [bits/dim dict per seed]}`` (the GAN's hold None).
    :ivar train_seconds: ``{family: [seconds per seed]}``. :ivar sample_seconds: ``{family: seconds
        per sample}`` (mean over seeds). :ivar gan_losses: the GAN's D and G losses, means over the last
        100 updates and the seeds. :ivar machine: where and when it was measured.
    :ivar ddpms, runs: the trained models (live studies only; a loaded one has None).
    """

    dataset: str
    config: dict
    seeds: list
    extractor: str
    n_eval: int
    sample_steps: int
    n_bpd: int
    evals: dict
    refs: dict
    bpd: dict
    train_seconds: dict
    sample_seconds: dict
    gan_losses: dict
    machine: dict
    ddpms: list | None = None
    runs: dict | None = None

    SAMPLES_KEPT = 36  # samples of each model (and test images) that a saved study keeps, for the grids

    def rows(self, sampled_with: dict[str, str] | None = None, test_label: str = "test images") -> list[dict]:
        """The rows of :func:`image_table` and :func:`seed_table`: the four families, then the test
        images (named ``test_label``) and noise."""
        made = {"gan": "one pass of G", "vae": "one pass of the decoder", "flow": "one pass of f⁻¹",
                "ddpm": f"{self.sample_steps} ancestral steps", **(sampled_with or {})}
        updates = f"{self.config['steps']:,} × {self.config['batch_size']}"
        out = [dict(model=FAMILY_NAMES[f], eval=self.evals[f], bpd=self.bpd[f], train_seconds=self.train_seconds[f],
                    updates=updates, sample_seconds=self.sample_seconds[f], sampler=made[f]) for f in FAMILIES]
        return out + [dict(model=test_label, eval=self.refs["test"]), dict(model="noise", eval=self.refs["noise"])]

    def describe(self):
        """How the study was measured, as a ``pandas.Series`` for the book: data, budget, seeds,
        extractor, samples, the DDPM's sampler, the bits/dim images, the machine and the date."""
        import pandas as pd

        m = self.machine
        machine = m.get("gpu") or f"{m.get('cpu', '?')} ({m.get('cpu_count', '?')} cores, {m.get('torch_threads', '?')} torch threads)"
        return pd.Series({
            "data": f"{self.dataset} (training split)",
            "budget of every model": f"{self.config['steps']:,} updates × {self.config['batch_size']} images",
            "training seeds": ", ".join(str(s) for s in self.seeds),
            "model sizes": f"{self.evals['ddpm'][0].profile} profile",
            "features (FID, IS, KID)": self.extractor,
            "samples scored per model": self.n_eval,
            "DDPM sampler": f"ancestral, {self.sample_steps} respaced steps",
            "bits/dim on": f"{self.n_bpd} test images",
            "measured on": machine,
            "date": m.get("date", "?")[:10],
            "torch": m.get("torch", "?"),
        }, name="colour study" if self.dataset == "photo-crops" else "image study")

    def stat(self, quantity: str) -> dict[str, dict[str, float]]:
        """``{family: summarize(...)}`` of ``"fid"``, ``"kid_mean"`` or ``"is_mean"`` over the seeds,
        or of ``"bpd"`` (families with a likelihood only)."""
        if quantity == "bpd":
            return {f: summarize([b["bpd"] for b in bs]) for f, bs in self.bpd.items() if bs[0]["bpd"] is not None}
        return {f: summarize([getattr(e, quantity) for e in es]) for f, es in self.evals.items()}

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.json`` (every number) and ``<path>.npz`` (the first :attr:`SAMPLES_KEPT`
        samples of each model and of the test images, uint8). Both are written atomically."""
        from dataclasses import asdict, fields

        from .features import quantize

        path = Path(path).with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)

        def result(e):
            return {k: v for k, v in asdict(e).items() if k not in ("samples", "bpd_detail")}

        def likelihood(b):
            return {k: b.get(k) for k in ("bpd", "bpd_se", "method", "n", "seconds")}

        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("ddpms", "runs")}
        record.update(schema="ddpm_core.compare.ImageStudy/1",
                      evals={f: [result(e) for e in es] for f, es in self.evals.items()},
                      refs={k: result(e) for k, e in self.refs.items()},
                      bpd={f: [likelihood(b) for b in bs] for f, bs in self.bpd.items()})
        arrays = {f"{f}_{i}": quantize(e.samples[:self.SAMPLES_KEPT]).numpy()
                  for f, es in self.evals.items() for i, e in enumerate(es)}
        arrays.update({f"ref_{k}": quantize(e.samples[:self.SAMPLES_KEPT]).numpy() for k, e in self.refs.items()})
        for suffix, write in ((".json", lambda f: f.write(json.dumps(record, indent=1).encode())),
                              (".npz", lambda f: np.savez_compressed(f, **arrays))):
            runtime.atomic_write(path.with_suffix(suffix), write)
        return path.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> "ImageStudy":
        """A study written by :meth:`save`; its results hold the kept samples as float images in [-1, 1]."""
        from .evaluation import EvalResult

        path = Path(path).with_suffix("")
        js, npz = path.with_suffix(".json"), path.with_suffix(".npz")
        for f in (js, npz):
            if not f.is_file():
                raise FileNotFoundError(f"saved image study {f} not found; write one with "
                                        "compare.image_study(...).save(path) (see compare.colour_study)")
        record = json.loads(js.read_text())
        if record.pop("schema", None) != "ddpm_core.compare.ImageStudy/1":
            raise ValueError(f"{js} is not a saved image study (schema ddpm_core.compare.ImageStudy/1)")
        with np.load(npz) as arrays:
            images = {k: torch.from_numpy(arrays[k]).float() / 127.5 - 1.0 for k in arrays.files}

        def result(d, key):
            return EvalResult(**d, samples=images[key])

        record["evals"] = {f: [result(d, f"{f}_{i}") for i, d in enumerate(ds)] for f, ds in record["evals"].items()}
        record["refs"] = {k: result(d, f"ref_{k}") for k, d in record["refs"].items()}
        return cls(**record)


def image_study(config, seeds: Sequence[int] = IMAGE_SEEDS, extractor: str | None = None, n_eval: int = 200,
                sample_steps: int = 50, n_bpd: int = 8, progress: bool = True) -> ImageStudy:
    """Train (or load) every family with every seed on ``config.dataset`` (:func:`image_models`) and
    measure them alike.

    FID, IS and KID of ``n_eval`` samples of each model against the training set, with one feature
    extractor (default ``"classifier:<dataset>"``); the same for ``n_eval`` test images and noise.
    The DDPM samples with ``sample_steps`` respaced ancestral steps (Algorithm 2 of Ho et al. 2020)
    with the EMA weights. Bits/dim of the first ``n_bpd`` test images: the VAE's importance-weighted
    bound, the flow's exact dequantised likelihood, the DDPM's variational bound over all T steps
    (:func:`baseline_bits_per_dim`, ``evaluation.bits_per_dim``); noise seeded 1.
    """
    from dataclasses import asdict

    from . import bench, evaluation, features
    from .data import load_dataset

    ddpms, runs = image_models(config, seeds, progress=progress)
    ext = features.get_extractor(extractor or f"classifier:{config.dataset}")
    evals, sample_seconds = {}, {}
    for fam, ms in runs.items():  # every seed's model, the same number of samples
        scored = [score_baseline(m, n_eval, ext, dataset=config.dataset) for m in ms]
        evals[fam], sample_seconds[fam] = [e for e, _ in scored], float(np.mean([s for _, s in scored]))
    evals["ddpm"] = [evaluation.evaluate(r.ema, r.diffusion, config.dataset, n_samples=n_eval, extractor=ext,
                                         sampler="ddpm", steps=sample_steps, bpd_examples=0, label="DDPM",
                                         progress=progress) for r in ddpms]
    sample_seconds["ddpm"] = float(np.mean([e.seconds["sampling"] for e in evals["ddpm"]])) / n_eval
    refs = {kind: evaluation.evaluate_reference(config.dataset, kind, n=n_eval, extractor=ext)
            for kind in ["test", "noise"]}
    test_x = load_dataset(config.dataset, "test").x[:n_bpd]
    bpd = {fam: [baseline_bits_per_dim(m, test_x, seed=1) for m in ms] for fam, ms in runs.items()}
    bpd["ddpm"] = [evaluation.bits_per_dim(r.ema, r.diffusion, test_x, strided=None, progress=progress,
                                           generator=torch.Generator(device=evaluation._device(r.ema)).manual_seed(1))
                   for r in ddpms]
    train_seconds = {fam: [float(m.history["wall_time"]) for m in ms] for fam, ms in runs.items()}
    train_seconds["ddpm"] = [float(r.history["wall_time"]) for r in ddpms]
    gan = runs.get("gan", [])
    gan_losses = {k: float(np.mean([m.history[k][-GAN_LOSS_WINDOW:] for m in gan])) for k in ("loss_d", "loss_g")} if gan else {}
    return ImageStudy(dataset=config.dataset, config=asdict(config), seeds=list(seeds), extractor=ext.name,
                      n_eval=n_eval, sample_steps=sample_steps, n_bpd=n_bpd, evals=evals, refs=refs, bpd=bpd,
                      train_seconds=train_seconds, sample_seconds=sample_seconds, gan_losses=gan_losses,
                      machine=bench.machine_info(runtime.get_device()), ddpms=ddpms, runs=runs)


# The colour study: the image study on 32x32 colour crops of photographs (data "photo-crops"), with
# the GPU profile's larger baselines and book_config("photo-crops"). It runs live in the GPU profile;
# elsewhere chapter 1 shows the saved run of COLOUR_STUDY_FILE (measured on a GPU).
COLOUR_STUDY_FILE = Path(__file__).resolve().parent / "data" / "colour_study"
COLOUR_EVAL = dict(n_eval=800, sample_steps=250, n_bpd=64)  # 800 of the 875 test crops


def colour_study(progress: bool = True, **changes: Any) -> ImageStudy:
    """Run the colour study (in the GPU profile: minutes on one GPU); ``changes`` go to
    ``book_config("photo-crops")`` (e.g. ``steps`` for a quick test)."""
    from . import train

    evaluation_kw = {k: changes.pop(k) for k in list(changes) if k in COLOUR_EVAL or k == "seeds"}
    return image_study(train.book_config("photo-crops", **changes), progress=progress,
                       **{**COLOUR_EVAL, **evaluation_kw})


def load_colour_study(path: str | Path | None = None) -> ImageStudy:
    """The saved colour study shipped with the package (or the one at ``path``)."""
    return ImageStudy.load(COLOUR_STUDY_FILE if path is None else path)


def book_colour_study(progress: bool = True, path: str | Path | None = None) -> ImageStudy | None:
    """Chapter 1's colour study: trained and measured here in the GPU profile (:func:`colour_study`);
    elsewhere the saved run of ``COLOUR_STUDY_FILE`` (or ``path``), or None where none is saved
    (the study is sized for a GPU: on a 2-core CPU one training update of its DDPM takes ~1.5 s)."""
    if runtime.get_profile() == "gpu":
        return colour_study(progress=progress)
    path = Path(COLOUR_STUDY_FILE if path is None else path)
    return ImageStudy.load(path) if path.with_suffix(".json").is_file() else None


def paper_rows(study: ImageStudy) -> dict[str, list[dict]]:
    """The rows of ``paper.compare`` that set the papers' CIFAR-10 numbers beside a study's means
    over its seeds.

    :return: ``"samples"``: FID and IS of the GAN (paper: SNGAN) and of the DDPM (paper: its
        L_simple model), both from Table 1 of Ho et al. 2020; ``"likelihood"``: bits/dim of the VAE
        (paper: NVAE) and the flow (paper: Glow), as listed by Nichol & Dhariwal 2021, and the DDPM's
        bound (Ho et al. 2020, Table 1). Each row: ``quantity``, ``paper`` (a ``paper.ref``) and
        ``book``, the study's number as text with the digits of :func:`image_table` (FID one decimal,
        IS and bits/dim two).
    """
    from . import paper

    fid, is_ = ({f: s["mean"] for f, s in study.stat(q).items()} for q in ("fid", "is_mean"))
    bpd = {f: s["mean"] for f, s in study.stat("bpd").items()}
    gan, ddpm = dict(model="SNGAN"), dict(model="DDPM, L_simple")
    samples = [dict(quantity=f"{who}: {q}", paper=paper.ref("ho2020_table1", q, **where), book=f"{book[fam]:.{d}f}")
               for fam, who, where in [("gan", "GAN (paper: SNGAN)", gan), ("ddpm", "DDPM", ddpm)]
               for q, book, d in [("FID", fid, 1), ("IS", is_, 2)]]
    likelihood = [
        dict(quantity="VAE (paper: NVAE): bits/dim", paper=paper.ref("nichol2021_nll", "NLL", model="NVAE"),
             book=f"{bpd['vae']:.2f}"),
        dict(quantity="flow (paper: Glow): bits/dim", paper=paper.ref("nichol2021_nll", "NLL", model="Glow"),
             book=f"{bpd['flow']:.2f}"),
        dict(quantity="DDPM: bits/dim (bound)", paper=paper.ref("ho2020_table1", "NLL", **ddpm),
             book=f"{bpd['ddpm']:.2f}"),
    ]
    return {"samples": samples, "likelihood": likelihood}


def _seeds(v) -> list:
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _kid_text(kid: float) -> str:
    """KID x 1e3 as the image tables show it: one decimal, thousands separated without one (noise)."""
    v = 1e3 * kid
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.1f}"


def image_table(rows: list[dict]):
    """A ``pandas.DataFrame`` of the image study, one row per model.

    :param rows: dicts with ``model``, ``eval`` (an ``evaluation.EvalResult``, or a list of them,
        one per training seed), ``bpd`` (a dict from :func:`baseline_bits_per_dim` or
        ``evaluation.bits_per_dim``, or a list of them), ``train_seconds`` (one value or a list),
        ``updates`` (e.g. "700 x 32": the budget, said in the text; a row with it is a trained
        model), ``sample_seconds`` (per image) and ``sampler``. A model with
        several seeds shows the means over them (:func:`seed_table` shows their range); a single
        KID comes with its standard deviation over the estimator's subsets, a single bits/dim with
        its standard error over the test images. FID and KID are better when lower, IS when
        higher (the headers' arrows). A row without a model (test images, noise) leaves the
        bits/dim, training and sampling cells blank; the GAN's bits/dim read "none".
    """
    import pandas as pd

    def mean(values):
        return summarize(values)["mean"]

    out = []
    for r in rows:
        evals = _seeds(r["eval"])
        bpds = [b for b in _seeds(r.get("bpd") or {}) if b.get("bpd") is not None]
        one = len(evals) == 1
        kid = f"{_kid_text(evals[0].kid_mean)} ± {_kid_text(evals[0].kid_std)}" if one else \
            _kid_text(mean([e.kid_mean for e in evals]))
        if r.get("bpd") is None:  # no model (test images, noise): no likelihood to give
            bpd = ""
        elif not bpds:  # a model without a likelihood (the GAN)
            bpd = "none"
        elif len(bpds) == 1:
            bpd = f"{bpds[0]['bpd']:.2f} ± {bpds[0]['bpd_se']:.2f}"
        else:
            bpd = f"{mean([b['bpd'] for b in bpds]):.2f}"
        train_s = r.get("train_seconds")
        out.append({
            "model": r["model"], "seeds": len(evals) if r.get("updates") else "",
            "FID ↓": round(mean([e.fid for e in evals]), 1), "IS ↑": round(mean([e.is_mean for e in evals]), 2),
            "KID × 10³ ↓": kid, "bits/dim (test)": bpd,
            # "" where a row has no training or sampling (test digits, noise): no NaN in the table
            "training time (s)": "" if train_s is None else f"{mean(_seeds(train_s)):.1f}",
            "ms per sample": "" if r.get("sample_seconds") is None else f"{1e3 * r['sample_seconds']:.2f}",
            "sampled with": r.get("sampler", ""),
        })
    return pd.DataFrame(out).set_index("model")


def seed_table(rows: list[dict]):
    """The spread over training seeds of the rows of :func:`image_table` that have several: the
    lowest and highest FID and KID (x 1e3), one decimal, and bits/dim, two, as :func:`image_table`
    gives them, of each model's runs ("none" for the bits/dim of a model without a likelihood)."""
    import pandas as pd

    out = []
    for r in rows:
        evals = _seeds(r["eval"])
        if len(evals) < 2:
            continue
        row = {"model": r["model"], "seeds": len(evals)}
        for name, values in [("FID", [e.fid for e in evals]), ("KID × 10³", [1e3 * e.kid_mean for e in evals]),
                             ("bits/dim", [b["bpd"] for b in _seeds(r.get("bpd") or {}) if b.get("bpd") is not None])]:
            st, digits = (summarize(values) if values else None), (2 if name == "bits/dim" else 1)
            row[f"{name} min"] = "none" if st is None else round(st["min"], digits)
            row[f"{name} max"] = "none" if st is None else round(st["max"], digits)
        out.append(row)
    return pd.DataFrame(out).set_index("model")


def agree(first: bool, second: bool) -> str:
    """Verdict of a statement checked by two measures: "yes" (both hold), "no" (neither) or "mixed"."""
    return "yes" if first and second else "no" if not (first or second) else "mixed"


def report_verdicts(toy: list[dict], fid: dict[str, float], kid: dict[str, float],
                    bpd: dict[str, float | None], floor: dict[str, float] | None = None
                    ) -> dict[str, tuple[bool | str, str]]:
    """The report's statements about GANs, VAEs, flows and diffusion, each checked by a stated rule.

    :param toy: rows of :func:`toy_study` (every family, mixture and seed).
    :param fid, kid: FID and KID of each family's image samples (keys "gan", "vae", "flow", "ddpm").
    :param bpd: bits/dim of each family on the same test images (None for the GAN).
    :param floor: the high-quality share of :func:`uniform_floor` per mixture; with it, "diffusion
        covers all modes" also needs every DDPM seed's high-quality share above the floor (points
        spread uniformly over the modes' square cover every mode too).
    :return: ``{statement: (verdict, rule)}``; sample-quality statements need FID and KID to agree
        (:func:`agree`), the others are True/False. Feed it to :func:`claims_frame`.
    """
    mixtures = list(dict.fromkeys(r["dataset"] for r in toy))
    modes = {r["dataset"]: r["num_modes"] for r in toy}

    def per_seed(ds, fam, key):
        return [r[key] for r in toy if r["dataset"] == ds and r["family"] == fam]

    worst = {(ds, f): min(per_seed(ds, f, "covered")) for ds in mixtures for f in FAMILIES}
    spread = {(ds, f): summarize(per_seed(ds, f, "high_quality"))["std"] for ds in mixtures for f in FAMILIES}
    others = [f for f in FAMILIES if f != "gan"]

    def both(better):  # a sample-quality statement holds if FID and KID both say so
        return agree(better(fid), better(kid))

    return {
        "GANs cover fewer modes": (
            any(worst[ds, "gan"] < min(worst[ds, f] for f in others) for ds in mixtures),
            "on some mixture the GAN's worst seed covers fewer modes than every other family's"),
        "GAN training is unstable": (
            all(spread[ds, "gan"] == max(spread[ds, f] for f in FAMILIES) for ds in mixtures),
            "the GAN's HQ share varies most over seeds, on every mixture"),
        "VAEs give blurrier samples": (
            both(lambda m: m["vae"] == max(m[f] for f in FAMILIES)),
            "on digits, the VAE's mean FID and KID are the highest of the four"),
        "flows give weaker samples": (
            both(lambda m: m["flow"] > max(m["gan"], m["ddpm"])),
            "on digits, the flow's mean FID and KID are above the GAN's and the DDPM's"),
        "diffusion covers all modes": (
            all(worst[ds, "ddpm"] == modes[ds] for ds in mixtures)
            and (floor is None or all(min(per_seed(ds, "ddpm", "high_quality")) > floor[ds] for ds in mixtures)),
            "every DDPM seed covers every mode of every mixture" + (
                "" if floor is None else ", with more high-quality samples than a uniform cloud over the modes")),
        "diffusion samples match GANs": (
            both(lambda m: m["ddpm"] <= m["gan"]), "on digits, the DDPM's mean FID and KID are at most the GAN's"),
        "diffusion gives a likelihood": (
            bpd["ddpm"] is not None and bpd["ddpm"] < 8.0,
            "the DDPM's bound is below 8 bits/dim (the cost of storing raw pixels)"),
        "diffusion's likelihood matches VAEs and flows (the book's added check)": (
            bpd["ddpm"] is not None and bpd["ddpm"] <= max(bpd["vae"], bpd["flow"]),
            "the DDPM's bound is at most the VAE's or the flow's, on the same test digits"),
    }


def claims_frame(verdicts: dict[str, tuple[bool | str, str]]):
    """A ``pandas.DataFrame`` of the report's statements: ``{statement: (verdict, rule)}``, the verdict
    a bool or a word such as :func:`agree` gives -> columns ``rule`` and ``supported here``."""
    import pandas as pd

    def word(v):
        return v if isinstance(v, str) else ("yes" if v else "no")

    rows = [{"statement (report)": s, "rule (book's measurements)": rule, "supported here": word(v)}
            for s, (v, rule) in verdicts.items()]
    return pd.DataFrame(rows).set_index("statement (report)")
