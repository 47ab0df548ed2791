"""Evaluating a trained diffusion model: sample quality (FID, IS, KID), likelihood (bits/dim),
progressive lossy compression (rate-distortion), and the book's table of reproduced claims.

The ablation models behind the claims table are defined once, in :func:`ablation_configs`, so that
the chapter that trains and discusses them (chapter 7) and the chapter that tabulates them
(chapter 8) share the same cached models through ``train.get_trained``.
"""
from __future__ import annotations

import html
import math
import numbers
import re
import time
import warnings
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np
import torch

from . import data as _data
from . import features as _features
from . import metrics as _metrics
from . import paper as _paper
from . import runtime as _runtime
from . import sampling as _sampling
from . import train as _train
from .diffusion import GaussianDiffusion, check_generator

# ---------------------------------------------------------------------- the ablation models
ABLATION_TRAIN_STEPS = 600  # training updates of every ablation model (the same for all, so they compare)
ABLATION_BATCH = 32  # batch size of every ablation model (small, so that all of them train in minutes on a CPU)
# the sampling seed of the Improved DDPM chapter's comparison of step counts; the evaluation chapter
# redraws claim (e)'s samples with it to show how far an FID moves from one draw of noise to another
STEPS_STUDY_SEED = 5

ABLATIONS = {
    # name: (changes to book_config("digits"), one-line meaning)
    "eps-simple": (dict(),
                   "eps prediction, L_simple, fixed variance beta~_t (Ho et al.'s L_simple recipe, "
                   "with the smaller of their two fixed variances)"),
    "eps-vlb-fixed": (dict(loss_type="vlb"),
                      "eps prediction trained on the true bound L_vlb, fixed variance beta~_t"),
    "mu-simple": (dict(mean_type="mu"),
                  "predicts the posterior mean mu~ with a squared error on mu~, fixed variance"),
    "mu-vlb-fixed": (dict(mean_type="mu", loss_type="vlb"),
                     "predicts mu~, trained on the true bound L_vlb, fixed variance"),
    "hybrid-learned": (dict(var_type="learned_range", loss_type="hybrid"),
                       "eps prediction, learned (interpolated) variance, L_hybrid = L_simple + 0.001 L_vlb"),
    "vlb-learned": (dict(var_type="learned_range", loss_type="vlb", timestep_sampler="loss-second-moment"),
                    "eps prediction, learned variance, L_vlb, t from the importance sampler "
                    "(uniform until it holds 10 losses of every step)"),
    "cosine-simple": (dict(schedule="cosine"),
                      "as eps-simple but with the cosine schedule of Nichol & Dhariwal"),
}

# which ablation models each claim compares: (claim, models)
CLAIM_MODELS = {
    "a": ("eps-simple", "eps-vlb-fixed"),
    "b": ("mu-simple", "mu-vlb-fixed", "eps-simple"),
    "c": ("hybrid-learned", "vlb-learned", "eps-simple"),
    "d": ("cosine-simple", "eps-simple"),
    "e": ("hybrid-learned", "eps-simple"),
}


def ablation_configs(steps: int = ABLATION_TRAIN_STEPS, batch_size: int = ABLATION_BATCH) -> dict[str, _train.TrainConfig]:
    """The named training configurations behind the reproduced claims (a)-(e), on 8x8 ``digits``.

    Every configuration is ``train.book_config("digits", steps=steps, batch_size=batch_size,
    **changes)``: the book's digits run (the ``cpu-digits`` U-Net, T = 1000, its learning rate,
    EMA and seed; linear schedule unless noted) shortened to ``steps`` updates (default
    :data:`ABLATION_TRAIN_STEPS`) of ``batch_size`` examples (default :data:`ABLATION_BATCH`). Only the
    fields in ``changes`` differ, so two models differ only in the choices a claim is about. Train or load each with
    ``train.get_trained(cfg)`` (cached on disk by configuration: the book trains each once)::

        cfgs = evaluation.ablation_configs()
        runs = {name: train.get_trained(cfg) for name, cfg in cfgs.items()}

    The models (see :data:`ABLATIONS` for the one-line meanings):

    ========================  ==============================================================
    ``eps-simple``            eps, ``fixed_small``, L_simple (Ho et al. Table 2, last row)
    ``eps-vlb-fixed``         eps, ``fixed_small``, L_vlb (Table 2, "L, fixed isotropic Sigma")
    ``mu-simple``             mu~, ``fixed_small``, squared error on mu~ (Table 2, "unstable")
    ``mu-vlb-fixed``          mu~, ``fixed_small``, L_vlb (Table 2, mu~ row that trains)
    ``hybrid-learned``        eps, ``learned_range``, L_hybrid (Nichol & Dhariwal)
    ``vlb-learned``           eps, ``learned_range``, L_vlb, importance sampler of t (uniform until warmed up)
    ``cosine-simple``         eps, ``fixed_small``, L_simple, cosine schedule
    ========================  ==============================================================

    Which models each claim compares (:data:`CLAIM_MODELS`):
    (a) eps + L_simple gives better samples (FID) than the true bound with a fixed variance:
    ``eps-simple`` vs ``eps-vlb-fixed``; (b) predicting mu~ with a squared error is unstable:
    ``mu-simple`` vs ``mu-vlb-fixed`` (and ``eps-simple``); (c) L_hybrid and L_vlb give a lower NLL
    than L_simple: ``hybrid-learned``, ``vlb-learned`` vs ``eps-simple``; (d) the cosine schedule
    beats the linear one at low resolution: ``cosine-simple`` vs ``eps-simple``; (e) learned
    variances keep their FID with fewer sampling steps: ``hybrid-learned`` vs ``eps-simple``, each
    sampled over a moderate and a small number of respaced steps (see :func:`measure_ablations`).

    Two conventions differ from the reference code, the same for every model: the L_vlb loss is
    T times the drawn step's term (improved-diffusion's "rescaled KL"; Ho et al.'s code uses the
    term itself), and every update clips the gradient's norm at ``grad_clip`` = 1.0 as Ho et al.
    do (improved-diffusion does not clip). With the larger loss, clipping acts on almost every
    update of the L_vlb models (at initialisation their gradient norm is ten times that of
    ``eps-simple`` or more, about 10^5 times for ``mu-vlb-fixed``; each run's
    ``history["grad_norm"]`` records it before clipping). Adam divides
    by the gradient's running scale, so this reweights their updates (a batch with a large
    gradient counts less) more than it shrinks them.

    :param steps: training updates of every model (the same for all).
    :param batch_size: examples per update (the same for all).
    :return: dict name -> ``TrainConfig``, in the order above.
    """
    return {name: _train.book_config("digits", steps=steps, batch_size=batch_size, **changes)
            for name, (changes, _meaning) in ABLATIONS.items()}


# ---------------------------------------------------------------------- helpers
def _device(model) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def _as_images(data_or_tensor, n: int | None, split: str = "test") -> torch.Tensor:
    """[N, C, H, W] images in [-1, 1] from a tensor, a ``data.Dataset`` or a dataset name (its ``split``)."""
    if isinstance(data_or_tensor, str):
        x = _data.load_dataset(data_or_tensor, split).x
    elif isinstance(data_or_tensor, torch.Tensor):
        x = data_or_tensor
    elif hasattr(data_or_tensor, "x"):
        x = data_or_tensor.x
    else:
        raise TypeError(f"expected images [N, C, H, W], a data.Dataset or a dataset name, "
                        f"got {type(data_or_tensor).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(x.shape)}")
    if n is not None:
        if n < 1 or n > len(x):
            raise ValueError(f"n = {n} examples asked for, but there are {len(x)}; pass 1 <= n <= {len(x)}")
        x = x[:n]
    _runtime.check_image_range(float(x.min()), float(x.max()), 1.0 + 1e-6)
    return x


def _warn_if_unit_range(x: torch.Tensor, what: str) -> None:
    """Images in [0, 1] pass the [-1, 1] range check and give wrong numbers: warn when a batch of
    several images has no pixel below 0 (real images in [-1, 1] have dark pixels)."""
    if len(x) >= 4 and x.is_floating_point() and float(x.min()) >= 0:
        warnings.warn(f"{what}: no pixel of these {len(x)} images is below 0, as if they were in [0, 1] "
                      "(e.g. torchvision's ToTensor); the book's images are in [-1, 1]: map them with 2 * x - 1")


def _check_count(name: str, value, least: int, why: str = "") -> None:
    """Reject a count (of samples, of a batch) below ``least`` before any work is done."""
    if not isinstance(value, numbers.Integral) or value < least:
        raise ValueError(f"{name} must be at least {least}{why}; got {value!r}")


def _sample_shape(model, shape) -> tuple:
    """One sample's shape (C, H, W) (or (D,) for points), by default from the model's attributes."""
    channels, size = getattr(model, "in_channels", None), getattr(model, "image_size", None)
    if shape is None:
        if channels is None or size is None:
            raise ValueError("pass shape=(C, H, W): the model has no in_channels/image_size attributes")
        return (channels, size, size)
    shape = tuple(shape)
    if len(shape) not in (1, 3) or (channels is not None and (len(shape) != 3 or shape[0] != channels)):
        example = f"{(channels, size or 8, size or 8)} for this model" if channels else "(1, 8, 8), or (D,) for points"
        raise ValueError(f"shape is the shape of one sample, (C, H, W), e.g. {example}; got {shape}. "
                         "The number of samples is n.")
    return shape


# ---------------------------------------------------------------------- likelihood
def bits_per_dim(model: Callable, diffusion: GaussianDiffusion, data_or_tensor, n: int | None = None,
                 batch_size: int = 256, strided: int | str | None = None, progress: bool = True,
                 generator: torch.Generator | None = None, clip_denoised: bool = True) -> dict:
    """The variational bound on the negative log-likelihood, in bits per dimension (Ho et al. 2020, eq. 5).

    ``L = L_T + sum_{t>1} L_{t-1} + L_0``: the prior term KL(q(x_T|x_0) || N(0, I)), one KL term per
    reverse step and the discretised decoder NLL -log p(x_0|x_1) on the 8-bit grid, each divided by
    ``D ln 2`` (D = C*H*W). Every term is evaluated once per example at one x_t ~ q(x_t|x_0) (the
    reference code's estimator, ``GaussianDiffusion.bpd``), so the mean over examples is an unbiased
    estimate of the bound, with a standard error from the spread over examples.

    ``strided=None`` evaluates the exact bound of the model over all T steps (T network calls per
    example). ``strided=K`` evaluates instead the bound of the K-step process
    ``sampling.respace(diffusion, K)`` (Nichol & Dhariwal 2021, section 4: K evenly spaced steps
    s_1 < ... < s_K, betas recomputed as ``1 - alpha_bar_{s_k} / alpha_bar_{s_{k-1}}``), with the
    same network called at the original steps. That is an exact (not approximate) variational
    bound, but of a different model: the K-step reverse chain p(x_{s_{k-1}} | x_{s_k}) that samples
    with ``ddpm_sample(model, respace(diffusion, K))``. It upper-bounds the NLL of that K-step
    model, not of the T-step one; for a network trained with T steps it is usually larger (looser)
    than the T-step bound, because each of its steps has to bridge T/K of the original ones. It costs
    K/T of the exact bound. With K = T it equals the exact bound (same steps, same noise).

    :param model: callable ``model(x_t, t)`` (the EMA network of a ``train.TrainResult``); an
        ``nn.Module`` is evaluated in eval mode (no dropout) and then gets its mode back.
    :param diffusion: the ``GaussianDiffusion`` the model was trained with.
    :param data_or_tensor: [N, C, H, W] images in [-1, 1], a ``data.Dataset``, or a dataset name
        (its test split). The bound is the code length of 8-bit images, so images off the 8-bit
        grid (the 17 grey levels of ``digits``, resized photographs) are first rounded to the
        nearest of its 256 levels (``data.to_8bit_grid``), as the VAE and the flow of
        ``baselines`` quantise theirs; ``off_grid`` in the result says how many values moved.
    :param n: use the first ``n`` examples (default: all).
    :param batch_size: examples per network call.
    :param strided: None (exact, all T steps) or K (an int or a ``respace`` spec).
    :param progress: show a ``tqdm`` bar over the steps.
    :param generator: a ``torch.Generator`` for the noise (reproducible estimates).
    :return: a dict with ``bpd`` (mean total bound, float), ``bpd_se`` (its standard error),
        ``prior_bpd`` and ``decoder_bpd`` (means of L_T and L_0), ``total_bpd`` float64 [N] (per
        example), ``vb`` float64 [K] (each step's term, mean over examples; index 0 is the decoder
        NLL), ``x0_mse`` float64 [K] (mean squared error of the predicted x_0 from the x_t of each
        step, on the [-1, 1] scale), ``timesteps`` long [K] (the original 0-indexed step of each
        column), ``n``, ``steps`` (K), ``method`` (a sentence), ``off_grid`` (the fraction of pixel
        values that were off the 8-bit grid and rounded to it; 0 for 8-bit data) and ``seconds``.
    """
    _check_count("batch_size", batch_size, 1)
    check_generator(generator)
    raw = _as_images(data_or_tensor, n)
    _warn_if_unit_range(raw, "bits_per_dim")
    x = _data.to_8bit_grid(raw)
    off_grid = float(((x - raw).abs() > 1e-4).double().mean())  # a level is 2/255 ~ 0.0078 apart
    d = diffusion if strided is None else _sampling.respace(diffusion, strided)
    K, T = d.num_timesteps, diffusion.num_timesteps
    device = _device(model)
    start = time.perf_counter()
    totals, priors, vbs, mses = [], [], [], []
    with _sampling.eval_mode(model):  # no dropout
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device)
            out = d.bpd(model, xb, clip_denoised=clip_denoised, noise_generator=generator, progress=progress)
            totals.append(out["total_bpd"].double().cpu())
            priors.append(out["prior_bpd"].double().cpu())
            vbs.append(out["vb"].double().cpu())
            mses.append(out["x0_mse"].double().cpu())
    total, prior, vb, mse = torch.cat(totals), torch.cat(priors), torch.cat(vbs), torch.cat(mses)
    n_ex = len(total)
    se = float(total.std() / math.sqrt(n_ex)) if n_ex > 1 else float("nan")
    if strided is None or (K == T and d.timestep_map is not None and torch.equal(d.timestep_map, torch.arange(T))):
        method = f"exact, all T = {T} steps"
    else:
        method = (f"strided over K = {K} of T = {T} steps: the bound of the K-step respaced process "
                  "(Nichol & Dhariwal 2021, section 4), an upper bound on the NLL of the K-step model")
    timesteps = d.timestep_map.clone() if d.timestep_map is not None else torch.arange(K)
    return {
        "bpd": float(total.mean()), "bpd_se": se, "prior_bpd": float(prior.mean()),
        "decoder_bpd": float(vb[:, 0].mean()), "total_bpd": total, "vb": vb.mean(0), "x0_mse": mse.mean(0),
        "timesteps": timesteps, "n": n_ex, "steps": K, "method": method, "off_grid": off_grid,
        "seconds": time.perf_counter() - start,
    }


# ---------------------------------------------------------------------- rate and distortion
def rate_distortion(model: Callable, diffusion: GaussianDiffusion, x0, n: int | None = None,
                    strided: int | str | None = None, batch_size: int = 256, progress: bool = True,
                    generator: torch.Generator | None = None, bpd: dict | None = None,
                    label: str | None = None) -> dict:
    """Progressive lossy compression (Ho et al. 2020, section 4.3, Algorithms 3-4, Table 4).

    A sender who shares the model transmits x_T ~ N(0, I) and then x_{T-1}, ..., x_1, each drawn
    from q(x_{t-1} | x_t, x_0) and coded with p(x_{t-1} | x_t), which costs the bound's terms:
    after ``k`` reverse steps the receiver holds x_t with t = T - k + 1 (1-indexed) and has received
    ``rate_k = L_T + sum_{s=t}^{T-1} L_s`` bits/dim; its best guess of the image is the network's
    x_0 prediction from x_t, whose root mean squared error on the 0..255 scale is the distortion.
    After all T steps the rate is the bound minus the decoder term L_0, which Ho et al. call the
    distortion in bits (rate + distortion = the NLL bound).

    Uses the per-step outputs of ``GaussianDiffusion.bpd`` (``vb`` and ``x0_mse``) through
    :func:`bits_per_dim`; pass its result as ``bpd`` to reuse one evaluation. The x_t of each step
    are drawn from q(x_t | x_0), which has the same law as the transmitted chain's states.

    :param x0: [N, C, H, W] images in [-1, 1], a ``data.Dataset`` or a dataset name (test split).
    :param strided: None (all T steps) or K (the K-step respaced process, see :func:`bits_per_dim`).
    :param label: what the images are, for tables (default: from a dataset name or ``Dataset``,
        else "images").
    :return: a dict of float64 [K] arrays indexed by ``reverse_step`` = 1..K (steps sent):
        ``t`` (original 0-indexed step of the state the receiver holds), ``rate_bpd`` (cumulative
        bits/dim), ``rmse`` (0..255 scale), and floats ``distortion_bpd`` (L_0), ``total_bpd``,
        ``rate_final``, plus ``method``, ``n`` and ``images`` (``label``).
    """
    if bpd is None:
        bpd = bits_per_dim(model, diffusion, x0, n=n, batch_size=batch_size, strided=strided,
                           progress=progress, generator=generator)
    vb, mse, K = bpd["vb"], bpd["x0_mse"], bpd["steps"]
    # column i holds L_i (i >= 1: the cost of sending the state at column i - 1; column 0: L_0)
    rate_desc = torch.zeros(K, dtype=torch.float64)  # rate after receiving the state at column i
    running = bpd["prior_bpd"]
    for i in range(K - 1, -1, -1):
        rate_desc[i] = running
        running = running + float(vb[i]) if i >= 1 else running
    order = torch.arange(K - 1, -1, -1)  # reverse step k = 1..K holds the state at column K - k
    rmse = mse.clamp_min(0).sqrt() * 127.5
    return {
        "reverse_step": torch.arange(1, K + 1), "t": bpd["timesteps"][order], "rate_bpd": rate_desc[order],
        "rmse": rmse[order], "distortion_bpd": bpd["decoder_bpd"], "total_bpd": bpd["bpd"],
        "rate_final": float(rate_desc[0]), "method": bpd["method"], "n": bpd["n"],
        "images": label or (f"{x0} test images" if isinstance(x0, str) else
                            f"{x0.name} {x0.split} images" if isinstance(x0, _data.Dataset) else "images"),
    }


def rate_distortion_table(rd: dict) -> _paper.Table:
    """Ho et al.'s Table 4 beside the book's curve at the same reverse steps.

    For a curve with K != 1000 steps the book's column shows the step at the same fraction of the
    chain (k = round(K * step / 1000)), named in its own column ("k of K"); with K = 1000 the book's
    steps are the paper's, and one column of steps serves both.
    """
    K = len(rd["reverse_step"])
    rows = _paper.table("ho2020_table4")
    steps = [max(1, min(K, round(K * int(r["reverse_step"]) / 1000))) for r in rows]
    same_steps = all(k == int(r["reverse_step"]) for k, r in zip(steps, rows))
    header = ["reverse steps sent (paper)", "paper rate (bits/dim)", "paper RMSE", "book: steps sent",
              "book rate (bits/dim)", "book RMSE"]
    body = []
    for r, k in zip(rows, steps):
        body.append([str(r["reverse_step"]), str(r["rate_bpd"]), str(r["rmse"]), f"{k} of {K}",
                     f"{float(rd['rate_bpd'][k - 1]):.5f}", f"{float(rd['rmse'][k - 1]):.3f}"])
    if same_steps:  # "900 of 1000" would repeat the first column
        header = [f"reverse steps sent (of {K})"] + header[1:3] + header[4:]
        body = [cells[:3] + cells[4:] for cells in body]
    caption = (f"Progressive lossy compression. Paper: {_paper.cite('ho2020_table4')}, CIFAR-10 test set, T = 1000. "
               f"Book: {rd['n']} test images, {rd['method']}. RMSE on the 0..255 scale. "
               + _paper.mark_legend(r["mark"] for r in rows))
    return _paper.html_table(header, body, caption)


# ---------------------------------------------------------------------- sampling
def sample_images(model: Callable, diffusion: GaussianDiffusion, n: int, batch_size: int = 256,
                  sampler: str = "ddpm", steps: int | str | None = None, generator: torch.Generator | None = None,
                  progress: bool = True, shape: tuple | None = None, eta: float = 0.0) -> torch.Tensor:
    """``n`` samples in batches, with ancestral DDPM sampling or DDIM.

    :param sampler: ``"ddpm"`` (Algorithm 2 of Ho et al.; over ``respace(diffusion, steps)`` when
        ``steps`` is given) or ``"ddim"`` (Song et al. 2021a, ``eta`` = 0: deterministic).
    :param steps: None (all T steps) or a count / respacing spec (see ``sampling.space_timesteps``;
        for DDIM an int N means N steps at an integer stride).
    :param shape: one example's shape (C, H, W) (or (D,) for points); default from the model's
        ``in_channels`` and ``image_size``.
    :return: float32 [n, C, H, W] samples in [-1, 1] on the CPU.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(SAMPLERS)}")
    _sampling.check_model(model)
    _sampling.check_diffusion(diffusion, model)
    check_generator(generator)
    _check_count("n", n, 1)
    _check_count("batch_size", batch_size, 1)
    shape = _sample_shape(model, shape)
    d = diffusion
    if sampler == "ddpm" and steps is not None:
        d = _sampling.respace(diffusion, steps)
    out = []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        if sampler == "ddpm":
            x = _sampling.ddpm_sample(model, d, (b, *shape), generator=generator, progress=progress)
        else:
            x = _sampling.ddim_sample(model, d, (b, *shape), steps=steps, eta=eta, generator=generator,
                                      progress=progress)
        out.append(x.float().cpu())
    return torch.cat(out).clamp(-1, 1)


SAMPLERS = {"ddpm": "ancestral sampling (Ho et al. 2020, Algorithm 2), respaced when steps < T",
            "ddim": "DDIM (Song et al. 2021a), deterministic (eta = 0)"}


# ---------------------------------------------------------------------- tables
def _three_digits(x: float) -> str:
    """Three significant digits without an exponent from 1e-4 up ("0.0742", "12.3", "1,615")."""
    if abs(float(format(x, ".3g"))) >= 1000:  # 999.5 rounds to 1e+03 at three digits
        return f"{x:,.0f}"
    return format(x, ".3g")


def _pm(mean: float | None, std: float | None, fmt: str) -> str:
    """``mean ± std``: the mean in ``fmt`` (a format spec, or "3 digits" for :func:`_three_digits`),
    the std with as many decimals as the mean shows ("1,615 ± 2", "0.0742 ± 0.0031")."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    text = _three_digits(mean) if fmt == "3 digits" else format(mean, fmt)
    if std is None or math.isnan(std):
        return text
    decimals = len(text.split(".")[1]) if "." in text else 0
    return f"{text} ± {std:,.{decimals}f}"


# ---------------------------------------------------------------------- sample quality
@dataclass
class EvalResult:
    """FID, IS, KID and bits/dim of one set of images, with how they were measured.

    :ivar label: what was evaluated (e.g. ``"DDPM (EMA)"``, ``"test images"``, ``"noise"``).
    :ivar dataset: the dataset whose training split is the FID/KID reference.
    :ivar n_samples: images evaluated. :ivar n_reference: training images in the reference.
    :ivar extractor: the feature extractor's name. :ivar profile: ``runtime.get_profile()``.
    :ivar sampler, steps: how the images were made (``"real"``/``"noise"`` for reference rows).
    :ivar fid: FID against the training set. :ivar is_mean, is_std: Inception Score (of the
        extractor's classes) over ``is_splits`` splits. :ivar kid_mean, kid_std: KID (unbiased).
    :ivar bpd, bpd_se, bpd_method, bpd_examples: bits/dim on the test set (None if not measured).
    :ivar seconds: wall-clock seconds of each part (sampling, features, fid, is, kid, bpd).
    :ivar samples: the evaluated images [N, C, H, W] (not printed).
    :ivar bpd_detail: the full :func:`bits_per_dim` dict (per-step terms, for :func:`rate_distortion`).
    """

    label: str
    dataset: str
    n_samples: int
    n_reference: int
    extractor: str
    profile: str
    sampler: str
    steps: int | str | None
    fid: float
    is_mean: float
    is_std: float
    kid_mean: float
    kid_std: float
    is_splits: int = 10
    bpd: float | None = None
    bpd_se: float | None = None
    bpd_method: str | None = None
    bpd_examples: int | None = None
    seconds: dict = field(default_factory=dict)
    samples: torch.Tensor | None = field(default=None, repr=False)
    bpd_detail: dict | None = field(default=None, repr=False)

    HEADER = ["what", "made by", "samples", "FID (vs train)", "IS", "KID (vs train)", "bits/dim (test)",
              "feature extractor", "profile", "seconds"]

    def row(self) -> list[str]:
        """This result as the cells of :attr:`HEADER`."""
        made = self.sampler if self.steps is None else f"{self.sampler}, {self.steps} steps"
        bpd = "" if self.bpd is None else _pm(self.bpd, self.bpd_se, ".3f") + f" ({self.bpd_examples} images)"
        return [self.label, made, f"{self.n_samples:,}", f"{self.fid:,.2f}", _pm(self.is_mean, self.is_std, ".2f"),
                _pm(self.kid_mean, self.kid_std, "3 digits"), bpd, self.extractor, self.profile,
                f"{sum(self.seconds.values()):.1f}"]

    def as_dict(self) -> dict:
        """The numbers as a plain dict (no samples), e.g. for ``viz.glue`` or JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("samples", "bpd_detail")}

    def table(self) -> _paper.Table:
        """A one-row table (see :func:`results_table`)."""
        return results_table([self])


# Columns that the default caption states once when every row has the same value.
SHARED_COLUMNS = ("feature extractor", "profile")
# Shorter headers under the default caption, which says what FID and KID are measured against.
_SHORT_HEADER = {"FID (vs train)": "FID", "KID (vs train)": "KID"}
_NBSP = "\u00a0"


def _compact_cells(header: list[str], rows: list[list[str]], results: list[EvalResult]) -> tuple[list, list, int | None]:
    """The table's cells for the book's narrow page: short FID/KID headers, "± std" kept together
    (a non-breaking space; a narrow column wraps before the ±, never inside "± std"), and the
    bits/dim cells without "(N images)" when every bound used the same N (returned, for the caption
    to state once; None otherwise)."""
    counts = {r.bpd_examples for r in results if r.bpd is not None}
    shared_n = counts.pop() if len(counts) == 1 else None
    j_bpd = header.index("bits/dim (test)") if "bits/dim (test)" in header else None
    out = []
    for cells in rows:
        cells = list(cells)
        if shared_n is not None and j_bpd is not None:
            cells[j_bpd] = cells[j_bpd].removesuffix(f" ({shared_n} images)")
        out.append([c.replace(" ± ", f" ±{_NBSP}") for c in cells])  # may wrap before the ±
    return [_SHORT_HEADER.get(h, h) for h in header], out, shared_n


def results_table(results: list[EvalResult], caption: str | None = None) -> _paper.Table:
    """One row per :class:`EvalResult`; the caption names the dataset, the reference set and how
    FID/IS/KID were computed, so the numbers cannot be read without their extractor and sample count.
    With the default caption, the feature-extractor and profile columns are left out when every row
    has the same value (the caption states it), FID and KID get short headers, "± std" stays
    together and a bits/dim image count shared by every row moves to the caption; a given
    ``caption`` keeps every column and cell as :meth:`EvalResult.row` writes it."""
    if not results:
        raise ValueError("results_table needs at least one EvalResult")
    r0 = results[0]
    header, rows = list(EvalResult.HEADER), [r.row() for r in results]
    if caption is None:
        header, rows, shared = _paper.drop_shared_columns(header, rows, SHARED_COLUMNS)
        header, rows, bpd_n = _compact_cells(header, rows, results)
        bpd = next((r for r in results if r.bpd_method), None)
        if "feature extractor" not in shared:
            features = "see the column"
        elif r0.extractor == _features.PAPER_INCEPTION_NAME:
            features = (f"{r0.extractor}, the papers' network (their FID uses "
                        f"{_paper.setting('ho2020_settings', 'fid_samples'):,} samples; FID grows "
                        "as the sample count falls)")
        else:
            features = f"{r0.extractor} (not Inception, so not comparable with the papers' numbers)"
        caption = (f"Dataset {r0.dataset}; FID and KID against its {r0.n_reference:,} training images; IS over "
                   f"{r0.is_splits} splits; features: {features}"
                   + (f"; profile {r0.profile}." if "profile" in shared else ".")
                   + (f" Bits/dim{f' on {bpd_n} test images' if bpd_n else ''}: {bpd.bpd_method}." if bpd else "")
                   + " ±: the standard deviation of IS over its splits and of KID over its random subsets"
                   + (", the standard error of bits/dim over the test images" if bpd else "")
                   + "; seconds: the whole evaluation (sampling, features, scores"
                   + (", bits/dim)." if bpd else ")."))
    return _paper.html_table(header, rows, caption)


_REFERENCE_FEATURES: dict = {}


def _reference(dataset: str, extractor: _features.FeatureExtractor) -> tuple[_metrics.FeatureStats, torch.Tensor]:
    """(statistics, features) of the training split of ``dataset``; features kept per process for KID."""
    key = (dataset, extractor.key or id(extractor))
    if key not in _REFERENCE_FEATURES:
        stats = _features.reference_stats(dataset, "train", extractor)
        feats = extractor.features(_data.load_dataset(dataset, "train").x)
        _REFERENCE_FEATURES[key] = (stats, feats)
    return _REFERENCE_FEATURES[key]


def score_images(images: torch.Tensor, dataset: str = "mnist5k", extractor: str | _features.FeatureExtractor |
                 None = None, label: str = "images", sampler: str = "real", steps=None,
                 is_splits: int = 10, kid_subsets: int = 100, seed: int = 0,
                 seconds: dict | None = None) -> EvalResult:
    """FID, IS and KID of ``images`` [N, C, H, W] in [-1, 1] against the training split of ``dataset``.

    FID (Heusel et al. 2017) uses the extractor's features of the whole training split
    (``features.reference_stats``); KID (Binkowski et al. 2018) subsets of min(1000, N) images of
    both sets; IS (Salimans et al. 2016) the extractor's class probabilities over ``is_splits`` splits.
    ``extractor`` defaults to the dataset's own classifier, ``classifier:<dataset>``.
    """
    if len(images) < 2:
        raise ValueError(f"score_images needs at least 2 images (FID needs a covariance); got {len(images)}")
    ext = _features.resolve_extractor(extractor, dataset)
    if isinstance(images, torch.Tensor):
        _warn_if_unit_range(images, "score_images")
    seconds = dict(seconds or {})
    start = time.perf_counter()
    ref_stats, ref_feats = _reference(dataset, ext)
    seconds["reference"] = time.perf_counter() - start
    start = time.perf_counter()
    feats, logits = ext.extract(images)
    seconds["features"] = time.perf_counter() - start
    start = time.perf_counter()
    fid = _metrics.fid_result(feats, ref_stats, ext.name)
    seconds["fid"] = time.perf_counter() - start
    start = time.perf_counter()
    is_mean, is_std = _metrics.inception_score(logits, splits=min(is_splits, len(images)))
    seconds["is"] = time.perf_counter() - start
    start = time.perf_counter()
    kid_mean, kid_std = _metrics.kid(feats, ref_feats, num_subsets=kid_subsets, seed=seed)
    seconds["kid"] = time.perf_counter() - start
    return EvalResult(label=label, dataset=dataset, n_samples=len(images), n_reference=ref_stats.n,
                      extractor=ext.name, profile=_runtime.get_profile(), sampler=sampler, steps=steps,
                      fid=fid.fid, is_mean=is_mean, is_std=is_std, kid_mean=kid_mean, kid_std=kid_std,
                      is_splits=min(is_splits, len(images)), seconds=seconds, samples=images)


def _prepare_scoring(model, diffusion, dataset: str, extractor, bpd_examples: int = 0,
                     strided_bpd: int | str | None = None) -> _features.FeatureExtractor:
    """Check, before any sampling, what would otherwise fail only after it (and lose the samples): the
    dataset's name, the extractor (default ``classifier:<dataset>``) and that it takes this dataset's
    and this model's images, the number of test images for the bound and the bound's respacing."""
    ext = _features.resolve_extractor(extractor, dataset)
    test = _data.load_dataset(dataset, "test").x  # an unknown name fails here, with the list of names
    try:
        shape = _sample_shape(model, None)
    except ValueError:  # a plain callable: its samples' shape is not known here
        shape = tuple(test.shape[1:])
    if shape != tuple(test.shape[1:]):
        raise ValueError(f"the model makes images of shape {shape}, but {dataset!r} holds "
                         f"{tuple(test.shape[1:])}: pass the dataset the model was trained on")
    ext.extract(test[:2])  # an extractor for other images fails here, with what it takes
    if bpd_examples:
        if not 0 < bpd_examples <= len(test):
            raise ValueError(f"bpd_examples = {bpd_examples}, but {dataset!r} has {len(test)} test images; "
                             f"pass 1 <= bpd_examples <= {len(test)}, or 0 to skip the bound")
        if strided_bpd is not None:
            _sampling.respace(diffusion, strided_bpd)  # the process the bound is taken of (at least 2 steps)
    return ext


def evaluate(model: Callable, diffusion: GaussianDiffusion, dataset: str = "mnist5k", n_samples: int = 256,
             extractor: str | None = None, sampler: str = "ddim", steps: int | str | None = 50,
             bpd_examples: int = 64, strided_bpd: int | str | None = 50, seed: int = 0, batch_size: int = 256,
             progress: bool = True, label: str = "DDPM (EMA weights)") -> EvalResult:
    """Sample ``n_samples`` images and measure FID, IS and KID against the training set, and the
    bits/dim bound on the first ``bpd_examples`` test images (:func:`bits_per_dim`: by default the
    bound of the process respaced to ``strided_bpd`` steps, a cheap but looser bound of that K-step
    model, not of this one; ``strided_bpd=None`` gives this model's exact bound over all T steps;
    ``bpd_examples=0`` skips it).

    Seeded: the samples come from a generator on the model's device seeded with ``seed`` (the same
    seed gives other samples on another device), the bound's noise from ``seed + 1``. The result's ``samples`` holds the images (for a figure) and ``bpd_detail`` the
    per-step terms of the bound (for :func:`rate_distortion`). ``extractor`` defaults to the
    dataset's own classifier, ``classifier:<dataset>``. Everything that scoring needs is checked
    before sampling starts, so a wrong name or count costs no samples.
    """
    _check_count("n_samples", n_samples, 2, " (FID needs a covariance)")
    _check_count("batch_size", batch_size, 1)
    extractor = _prepare_scoring(model, diffusion, dataset, extractor, bpd_examples, strided_bpd)
    seconds = {}
    start = time.perf_counter()
    gen = torch.Generator(device=_device(model)).manual_seed(seed)
    images = sample_images(model, diffusion, n_samples, batch_size=batch_size, sampler=sampler, steps=steps,
                           generator=gen, progress=progress)
    seconds["sampling"] = time.perf_counter() - start
    result = score_images(images, dataset, extractor, label=label, sampler=sampler, steps=steps,
                          seed=seed, seconds=seconds)
    if bpd_examples:
        gen = torch.Generator(device=_device(model)).manual_seed(seed + 1)
        b = bits_per_dim(model, diffusion, dataset, n=bpd_examples, batch_size=batch_size, strided=strided_bpd,
                         progress=progress, generator=gen)
        result.bpd, result.bpd_se, result.bpd_method, result.bpd_examples = b["bpd"], b["bpd_se"], b["method"], b["n"]
        result.seconds["bpd"] = b["seconds"]
        result.bpd_detail = b
    return result


REFERENCE_KINDS = {
    "test": "real images from the test split (the best a model can hope for at this sample count)",
    "train": "real images from the training split (the reference itself: FID's floor at this sample count)",
    "noise": "Gaussian noise N(0, I) clipped to [-1, 1]: what x_T looks like",
}


def evaluate_reference(dataset: str = "mnist5k", kind: str = "test", n: int = 256,
                       extractor: str | None = None, seed: int = 0) -> EvalResult:
    """FID, IS and KID of reference images, with the same rows as :func:`evaluate`: ``n`` test
    images, ``n`` training images or ``n`` noise images (see :data:`REFERENCE_KINDS`). ``extractor``
    defaults to the dataset's own classifier, ``classifier:<dataset>``."""
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"unknown reference kind {kind!r}; choose one of {list(REFERENCE_KINDS)}")
    start = time.perf_counter()
    if kind == "noise":
        shape = _data.load_dataset(dataset, "test").x.shape[1:]
        gen = torch.Generator().manual_seed(seed)
        images = torch.randn((n, *shape), generator=gen).clamp(-1, 1)
        label, made = "noise", "N(0, I) clipped"
    else:
        x = _data.load_dataset(dataset, kind).x
        if n > len(x):
            raise ValueError(f"{dataset} has {len(x)} {kind} images, {n} asked for")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
        images = x[idx]
        label, made = f"{kind} images", "real"
    seconds = {"loading": time.perf_counter() - start}
    return score_images(images, dataset, extractor, label=label, sampler=made, steps=None, seed=seed,
                        seconds=seconds)


def fid_sample_size_curve(dataset: str = "mnist5k", sizes=(50, 100, 200, 400, 1000), split: str = "test",
                          extractor: str | None = None, repeats: int = 3, kid_subsets: int = 20,
                          seed: int = 0) -> dict:
    """FID and KID of ``N`` real ``split`` images against the training set, for each N in ``sizes``.

    Both sets come from the same distribution, so the true distance is ~0: what FID shows at small
    N is its upward bias (the sample covariance of N < D features is singular and noisy, and the
    Fréchet distance of noisy estimates is biased upward), while KID's unbiased estimate stays near 0.

    :return: dict with ``sizes`` [S], ``fid_mean``/``fid_std`` and ``kid_mean``/``kid_std`` [S]
        over ``repeats`` random subsets, ``feature_dim`` and ``extractor``. The extractor defaults to
        the dataset's own classifier, ``classifier:<dataset>``.
    """
    ext = _features.resolve_extractor(extractor, dataset)
    ref_stats, ref_feats = _reference(dataset, ext)
    x = _data.load_dataset(dataset, split).x
    feats = ext.features(x)
    gen = torch.Generator().manual_seed(seed)
    fid_m, fid_s, kid_m, kid_s = [], [], [], []
    for n in sizes:
        if n > len(feats):
            raise ValueError(f"size {n} is larger than the {len(feats)} {split} images of {dataset}")
        fids, kids = [], []
        for r in range(repeats):
            sub = feats[torch.randperm(len(feats), generator=gen)[:n]]
            fids.append(_metrics.fid_result(sub, ref_stats, ext.name).fid)
            kids.append(_metrics.kid(sub, ref_feats, num_subsets=kid_subsets, seed=seed + r)[0])
        fid_m.append(float(np.mean(fids)))
        fid_s.append(float(np.std(fids)))
        kid_m.append(float(np.mean(kids)))
        kid_s.append(float(np.std(kids)))
    return {"sizes": list(sizes), "fid_mean": fid_m, "fid_std": fid_s, "kid_mean": kid_m, "kid_std": kid_s,
            "feature_dim": ext.feature_dim, "extractor": ext.name}


# ---------------------------------------------------------------------- the ablations and the claims
def load_ablations(configs: dict | None = None, progress: bool = True) -> dict:
    """``train.get_trained`` of each ablation configuration (trained once, then read from the cache).

    :return: dict name -> ``TrainResult``, or the ``TrainingDivergedError`` where training diverged
        (a NaN/inf loss), so that a claim about instability can be recorded instead of crashing.
    """
    configs = ablation_configs() if configs is None else configs
    runs = {}
    _train.train_missing(list(configs.values()), desc="ablations", progress=progress)  # side by side, then load
    for name, cfg in configs.items():
        try:
            runs[name] = _train.get_trained(cfg, progress=progress)
        except _train.TrainingDivergedError as e:
            runs[name] = e
    return runs


#: The measurement settings of :func:`measure_ablations` (its defaults). Module constants, so that
#: chapter 7 can quote them before chapter 8 measures.
ABLATION_SAMPLES = 200
ABLATION_STEPS = 50  # the respaced sampling steps of every ablation model's FID (training: ABLATION_TRAIN_STEPS)
ABLATION_FEW_STEPS = 10
#: The loss-spike rule of :func:`_loss_spikes`: a loss above ``SPIKE_FACTOR`` x the median of the
#: previous ``SPIKE_WINDOW`` losses.
SPIKE_WINDOW = 50
SPIKE_FACTOR = 3.0


def _loss_spikes(loss: torch.Tensor, window: int = SPIKE_WINDOW, factor: float = SPIKE_FACTOR) -> int:
    """Updates (after the first ``window``) whose loss exceeds ``factor`` x the median of the
    previous ``window`` losses: a simple count of training instabilities."""
    loss = loss.double()
    count = 0
    for i in range(window, len(loss)):
        if loss[i] > factor * loss[i - window:i].median():
            count += 1
    return count


def measure_ablations(runs: dict, dataset: str = "digits", extractor: str = "classifier:digits",
                      n_samples: int = ABLATION_SAMPLES, steps: int = ABLATION_STEPS,
                      few_steps: int = ABLATION_FEW_STEPS, bpd_examples: int = 64,
                      bpd_stride: int | None = 10, few_step_models=("eps-simple", "hybrid-learned"),
                      bpd_models=("eps-simple", "hybrid-learned", "vlb-learned", "cosine-simple"),
                      seed: int = 0, progress: bool = True) -> dict:
    """What :func:`claims_table` needs, measured on the ablation models of :func:`load_ablations`.

    Every model draws ``n_samples`` samples with the ancestral sampler over ``steps`` respaced steps
    (the same seed for all) and gets FID/KID against the training set; the models in
    ``few_step_models`` are also sampled with ``few_steps`` steps (claim e). The models in
    ``bpd_models`` (None: all) get the T-step bound in bits/dim on the first ``bpd_examples`` test
    images: exact with ``bpd_stride=None`` (T network calls), otherwise the unbiased stratified
    estimate of ``bench.strided_bpd`` (the first ``bench.STRIDED_EXACT_STEPS`` steps exactly, then
    one step per image drawn from every block of ``bpd_stride``: ``bench.strided_bpd_calls`` calls,
    about T / stride). Not the bound of a respaced process: that bounds a different, K-step model
    and favours learned variances. All models see the same images, steps and noise, so their
    bounds differ by less noise than each one's standard error suggests (a paired comparison).

    :return: dict name -> {``fid``, ``kid``, ``fid_few`` (or None), ``bpd``, ``bpd_se``,
        ``diverged`` (training or sampling produced NaN/inf), ``loss_spikes`` (see
        ``_loss_spikes``), ``final_loss``, ``seconds``}, plus the key ``"_settings"`` with the
        measurement settings (dataset, extractor, n_samples, steps, few_steps, bpd method, seed, and
        the loss-spike rule's ``spike_window`` and ``spike_factor``).
    """
    out: dict = {}
    method = None
    if bpd_stride is not None and (not isinstance(bpd_stride, numbers.Integral) or bpd_stride < 1):
        raise ValueError(f"bpd_stride is a number of steps (>= 1), or None for the exact bound; got {bpd_stride!r}")
    trained = [run for run in runs.values() if not isinstance(run, Exception)]
    if trained:  # names, extractor and counts checked before the first model samples
        extractor = _prepare_scoring(trained[0].ema, trained[0].diffusion, dataset, extractor, bpd_examples)
    items = runs.items()
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(items, desc="ablation models", total=len(runs))
    for name, run in items:
        start = time.perf_counter()
        rec = {"fid": None, "kid": None, "fid_few": None, "bpd": None, "bpd_se": None, "diverged": False,
               "loss_spikes": None, "final_loss": None}
        if isinstance(run, Exception):
            rec["diverged"] = True
            out[name] = rec
            continue
        loss = run.history["loss"]
        rec["loss_spikes"] = _loss_spikes(loss, SPIKE_WINDOW, SPIKE_FACTOR)  # the rule recorded in _settings
        rec["final_loss"] = float(loss[-50:].double().mean())
        model, d = run.ema, run.diffusion
        try:
            for key, k in (("", steps), ("_few", few_steps)):
                if key and name not in few_step_models:
                    continue
                gen = torch.Generator(device=_device(model)).manual_seed(seed)
                images = sample_images(model, d, n_samples, sampler="ddpm", steps=k, generator=gen, progress=False)
                r = score_images(images, dataset, extractor, seed=seed)
                rec["fid" + key] = r.fid
                if not key:
                    rec["kid"] = r.kid_mean
            if bpd_models is None or name in bpd_models:
                rec["bpd"], rec["bpd_se"], method = _test_bpd(model, d, dataset, bpd_examples, bpd_stride,
                                                              seed + 1)
                if not math.isfinite(rec["bpd"]):
                    rec["diverged"] = True
        except (_sampling.NonFiniteSampleError, ValueError) as e:
            if "NaN" not in str(e) and "non-finite" not in str(e).lower() and "infinite" not in str(e):
                raise
            rec["diverged"] = True
        rec["seconds"] = time.perf_counter() - start
        out[name] = rec
    out["_settings"] = dict(dataset=dataset, extractor=_features.resolve_extractor(extractor, dataset).name, n_samples=n_samples,
                            steps=steps, few_steps=few_steps, bpd_examples=bpd_examples, bpd_stride=bpd_stride,
                            bpd_method=method, seed=seed, spike_window=SPIKE_WINDOW, spike_factor=SPIKE_FACTOR,
                            profile=_runtime.get_profile())
    return out


def _test_bpd(model, d, dataset: str, n: int, stride: int | None, seed: int) -> tuple[float, float, str]:
    """(mean, standard error, method) of the T-step bound on the first ``n`` test images."""
    gen = torch.Generator(device=_device(model)).manual_seed(seed)
    if stride is None:
        b = bits_per_dim(model, d, dataset, n=n, progress=False, generator=gen)
        return b["bpd"], b["bpd_se"], b["method"]
    from . import bench

    x = _data.to_8bit_grid(_as_images(dataset, n)).to(_device(model))  # as bits_per_dim scores them
    per_image = bench.strided_bpd(d, model, x, stride, noise_generator=gen).double().cpu()
    method = (f"stratified estimate of the exact T = {d.num_timesteps}-step bound: the first "
              f"{bench.STRIDED_EXACT_STEPS} steps exactly, then one random step per image in every {stride} "
              "(bench.strided_bpd)")
    return float(per_image.mean()), float(per_image.std() / math.sqrt(n)), method


# Claim (e) holds only if the learned variance's FID ratio (few steps / full steps) is below this
# times the fixed variance's ratio.
FEW_STEP_MARGIN = 0.85

CLAIMS = {
    "a": "eps prediction with L_simple gives better samples than the true bound with a fixed variance",
    "b": "predicting the mean mu~ with a squared error is unstable",
    "c": "L_hybrid and L_vlb (learned variances) give a lower NLL than L_simple",
    "d": "the cosine schedule beats the linear one at low resolution",
    "e": "learned variances keep their FID with fewer sampling steps better than fixed ones",
    "f": "the NLL splits into rate and distortion; most of the rate goes to the last, imperceptible steps",
}

# each claim's decision rule in a sentence, listed under the table (the docstring of claims_table
# gives them in full; they were fixed before any number was measured)
CLAIM_RULES = {
    "a": "eps-simple's FID is below eps-vlb-fixed's",
    "b": "mu-simple diverges (in part: it trains, but its FID is above mu-vlb-fixed's and eps-simple's)",
    "c": "hybrid-learned's and vlb-learned's bits/dim are both below eps-simple's",
    "d": "cosine-simple's bits/dim and FID are both below eps-simple's",
    "e": (f"hybrid-learned's FID ratio (few steps / full steps) is below {FEW_STEP_MARGIN} × eps-simple's "
          "ratio (a smaller difference is within the noise of FIDs from a few hundred samples)"),
    "f": ("rate plus distortion equals the bound, the rate grows and the RMSE falls over the steps, and "
          "more than half of the rate comes in the last tenth of the steps"),
}


def _spikes(n: int | None) -> str:
    return "loss spikes not measured" if n is None else f"{n} loss spike" + ("" if n == 1 else "s")


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "n/a" if x is None else format(x, fmt)


PARTLY = "partly"  # a verdict of claims_table: the claim's measurable consequence holds, its letter not


def _rules(fmt: str) -> str:
    """:data:`CLAIM_RULES` as a list under the claims table, ``fmt`` "md" or "html"; run names
    (``eps-simple``, ...) in code font."""
    names = re.compile("|".join(sorted(map(re.escape, ABLATIONS), key=len, reverse=True)))
    lead = "A claim holds here if (rules fixed before any number was measured):"
    if fmt == "md":
        items = [f"- ({k}) " + names.sub(lambda m: f"`{m.group(0)}`", _paper.notation(rule))
                 for k, rule in CLAIM_RULES.items()]
        return "\n".join([lead, ""] + items)
    items = [f"<li>({k}) " + names.sub(lambda m: f"<code>{m.group(0)}</code>", html.escape(_paper.notation(rule)))
             + "</li>" for k, rule in CLAIM_RULES.items()]
    return f"<p>{lead}</p>\n<ul>\n" + "\n".join(items) + "\n</ul>"


def _verdict(ok: bool | str | None) -> str:
    if ok == PARTLY:
        return "in part"
    return "not measured" if ok is None else ("yes" if ok else "no")


def claims_table(results: dict) -> _paper.Table:
    """The reproduced claims (a)-(f): each claim, the paper's numbers, the book's measured numbers
    and whether the claim holds here.

    :param results: the dict of :func:`measure_ablations` (keys are the names of
        :func:`ablation_configs`), optionally with ``"rate_distortion"``: the dict of
        :func:`rate_distortion` (claim f). A claim whose models are missing is listed as not measured.
    :return: a ``paper.Table`` with columns claim, paper, this book, holds here, followed by the
        list of rules (:data:`CLAIM_RULES`). Its attribute ``verdicts`` maps each claim letter to
        True/False/None (not measured) or :data:`PARTLY`, ``rows`` holds the cells and
        ``few_step_ratios`` the FID ratios of claim (e), FID(few steps) / FID(full steps), of
        ``eps-simple`` and ``hybrid-learned`` (None where not measured).

    Decision rules, fixed before measuring: (a) FID(eps-simple) < FID(eps-vlb-fixed); (b) holds if
    mu-simple diverged, and holds in part (verdict :data:`PARTLY`, shown "in part") if it trained
    but its FID is worse than both mu-vlb-fixed's and eps-simple's: Ho et al. call it unstable,
    and worse samples alone do not show instability; (c) the bits/dim of
    hybrid-learned and of vlb-learned are both below eps-simple's; (d) cosine-simple has lower
    bits/dim and lower FID than eps-simple; (e) hybrid-learned's FID ratio FID(``few_steps``) /
    FID(``steps``) is below ``FEW_STEP_MARGIN`` (0.85) times eps-simple's ratio (the margin chapter
    7 uses: a smaller difference is within the noise of FIDs from a few hundred samples); (f) the rate grows and
    the RMSE falls from the first to the last step, rate + distortion equals the bound, and more
    than half of the rate is spent in the last tenth of the steps (as in Ho et al. Table 4).
    """
    s = results.get("_settings", {})
    m = {k: v for k, v in results.items() if not k.startswith("_") and isinstance(v, dict) and "fid" in v}

    def get(name, key):
        return m.get(name, {}).get(key)

    ps = _paper.value
    rows, verdicts = [], {}
    # (a)
    fa, fb = get("eps-simple", "fid"), get("eps-vlb-fixed", "fid")
    verdicts["a"] = None if fa is None or fb is None else fa < fb
    rows.append(["(a) " + CLAIMS["a"],
                 f"FID {ps('ho2020_table2', 'FID', predicts='eps', objective='L_simple')} (L_simple) vs "
                 f"{ps('ho2020_table2', 'FID', predicts='eps', objective='L, fixed isotropic Sigma')} (true bound, "
                 "fixed Sigma); Ho et al. Table 2",
                 f"FID {_f(fa)} (eps-simple) vs {_f(fb)} (eps-vlb-fixed)"])
    # (b)
    fm, fmv = get("mu-simple", "fid"), get("mu-vlb-fixed", "fid")
    div = get("mu-simple", "diverged")
    if div:
        verdicts["b"] = True
    elif fm is None or fmv is None or fa is None:
        verdicts["b"] = None
    else:  # trained without diverging: worse samples support the claim only in part
        verdicts["b"] = PARTLY if (fm > fmv and fm > fa) else False
    rows.append(["(b) " + CLAIMS["b"],
                 f"mu~ with squared error: {ps('ho2020_table2', 'FID', predicts='mu~', objective='squared error on mu~')}"
                 f"; mu~ with the true bound: FID {ps('ho2020_table2', 'FID', predicts='mu~', objective='L, fixed isotropic Sigma')}"
                 "; Ho et al. Table 2",
                 ("diverged" if div else f"FID {_f(fm)}") + f" (mu-simple, {_spikes(get('mu-simple', 'loss_spikes'))}) "
                 f"vs {_f(fmv)} (mu-vlb-fixed) and {_f(fa)} (eps-simple)"])
    # (c)
    bs, bh, bv = get("eps-simple", "bpd"), get("hybrid-learned", "bpd"), get("vlb-learned", "bpd")
    verdicts["c"] = None if None in (bs, bh, bv) else (bh < bs and bv < bs)
    c10 = dict(T=4000, schedule="cosine")
    rows.append(["(c) " + CLAIMS["c"],
                 f"NLL {ps('nichol2021_cifar10', 'NLL', objective='L_simple', **c10)} (L_simple), "
                 f"{ps('nichol2021_cifar10', 'NLL', objective='L_hybrid', **c10)} (L_hybrid), "
                 f"{ps('nichol2021_cifar10', 'NLL', objective='L_vlb', **c10)} (L_vlb) bits/dim; "
                 "Nichol & Dhariwal, CIFAR-10, T = 4000, cosine",
                 f"bits/dim {_f(bs, '.3f')} (eps-simple), {_f(bh, '.3f')} (hybrid-learned), "
                 f"{_f(bv, '.3f')} (vlb-learned)"])
    # (d)
    bc, fc = get("cosine-simple", "bpd"), get("cosine-simple", "fid")
    verdicts["d"] = None if None in (bc, fc, bs, fa) else (bc < bs and fc < fa)
    im = dict(iterations=200000, T=4000, objective="L_simple")
    rows.append(["(d) " + CLAIMS["d"],
                 f"ImageNet 64×64: NLL {ps('nichol2021_imagenet64', 'NLL', schedule='linear', **im)} -> "
                 f"{ps('nichol2021_imagenet64', 'NLL', schedule='cosine', **im)}, FID "
                 f"{ps('nichol2021_imagenet64', 'FID', schedule='linear', **im)} -> "
                 f"{ps('nichol2021_imagenet64', 'FID', schedule='cosine', **im)} (linear -> cosine, L_simple); "
                 "Nichol & Dhariwal",
                 f"bits/dim {_f(bs, '.3f')} -> {_f(bc, '.3f')}, FID {_f(fa)} -> {_f(fc)} (linear -> cosine, 8×8 digits)"])
    # (e)
    fs_few, fh, fh_few = get("eps-simple", "fid_few"), get("hybrid-learned", "fid"), get("hybrid-learned", "fid_few")
    if None in (fa, fs_few, fh, fh_few):
        verdicts["e"], few_step_ratios = None, None
        book_e = "n/a"
    else:
        ratio_s, ratio_h = fs_few / max(fa, 1e-12), fh_few / max(fh, 1e-12)
        verdicts["e"] = ratio_h < FEW_STEP_MARGIN * ratio_s
        few_step_ratios = {"eps-simple": ratio_s, "hybrid-learned": ratio_h}
        book_e = (f"FID {s.get('steps')} -> {s.get('few_steps')} steps: {_f(fa)} -> {_f(fs_few)} (×{ratio_s:.2f}, "
                  f"eps-simple) vs {_f(fh)} -> {_f(fh_few)} (×{ratio_h:.2f}, hybrid-learned); "
                  f"ratio of the two {ratio_h / ratio_s:.2f}")
    rows.append(["(e) " + CLAIMS["e"],
                 "shown as a figure (FID against sampling steps): learned-variance models stay near their "
                 "full-step FID at about 100 steps, fixed-variance L_simple models degrade; Nichol & Dhariwal",
                 book_e])
    # (f)
    rd = results.get("rate_distortion")
    if rd is None:
        verdicts["f"], book_f = None, "n/a"
    else:
        rate, rmse, K = rd["rate_bpd"], rd["rmse"], len(rd["rate_bpd"])
        late = 1.0 - float(rate[int(0.9 * K) - 1]) / max(rd["rate_final"], 1e-12)
        adds_up = abs(rd["rate_final"] + rd["distortion_bpd"] - rd["total_bpd"]) < 1e-4 * max(1.0, rd["total_bpd"])
        monotone = bool((rate[1:] >= rate[:-1] - 1e-12).all()) and float(rmse[-1]) < float(rmse[0])
        verdicts["f"] = bool(adds_up and monotone and late > 0.5)
        book_f = (f"rate {rd['rate_final']:.3f} + distortion {rd['distortion_bpd']:.3f} = {rd['total_bpd']:.3f} "
                  f"bits/dim (RMSE {float(rmse[-1]):.2f}); {100 * late:.0f}% of the rate in the last 10% of the steps "
                  f"({rd['n']} {rd.get('images', 'test images')})")
    t4 = {int(r["reverse_step"]): r for r in _paper.table("ho2020_table4")}
    late_paper = 1.0 - float(t4[900]["rate_bpd"]) / float(t4[1000]["rate_bpd"])
    rows.append(["(f) " + CLAIMS["f"],
                 f"rate {ps('ho2020_rate_distortion', 'value', quantity='rate')} + distortion "
                 f"{ps('ho2020_rate_distortion', 'value', quantity='distortion')} bits/dim (RMSE "
                 f"{ps('ho2020_rate_distortion', 'value', quantity='distortion RMSE')}); "
                 f"{100 * late_paper:.0f}% of the rate in the last 100 of 1000 steps; Ho et al. Table 4",
                 book_f])
    body = [r + [_verdict(verdicts[r[0][1]])] for r in rows]
    caption = ("Claims of the papers (CIFAR-10 / ImageNet, Inception features) beside the book's measurements"
               + (f" (8×8 digits, {s.get('n_samples')} samples with {s.get('steps')} respaced ancestral steps, "
                  f"features: {s.get('extractor')}; bits/dim on {s.get('bpd_examples')} test images, "
                  f"{s.get('bpd_method')}; profile {s.get('profile')})" if s else "")
               + ". Different datasets, extractors and model sizes: compare directions, not values. "
               + "The rule behind each verdict is listed below the table.")
    grid = _paper.html_table(["claim", "paper", "this book", "holds here"], body, caption)
    table = _paper.Table(str(grid) + "\n\n" + _rules("md"), grid.html + "\n" + _rules("html"))
    table.verdicts = verdicts
    table.few_step_ratios = few_step_ratios
    table.rows = body
    return table
