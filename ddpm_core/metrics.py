"""Sample-quality metrics computed from features: FID, Inception Score and KID.

The functions here are pure mathematics on arrays; which network produced the features (the
Inception-v3 of the FID literature or the project's small classifier) is decided in
:mod:`ddpm_core.features`, and every reported number carries that name (:class:`FIDResult`).

* Fréchet distance (Heusel et al. 2017, "GANs trained by a two time-scale update rule"):
  ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})`` between two Gaussians fitted to features.
* Inception Score (Salimans et al. 2016): ``exp(E_x KL(p(y|x) || p(y)))``, averaged over splits.
* Kernel Inception Distance (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased
  MMD^2 estimate with the cubic kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over subsets.

FID is biased upward at small sample counts (a D-dimensional covariance needs more than D samples
to be full rank); KID is unbiased, which makes it the honest number for small samples.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from . import runtime

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_float64(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """Convert a numpy array or torch tensor to a float64 numpy array with ``ndim`` dimensions."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(x.shape)}")
    if not np.isfinite(x).all():
        hint = ("; a covariance of fewer than 2 samples is NaN (np.cov of one row): use at least 2 samples, "
                "and many more than the feature dimension for a useful FID") if name.startswith("sigma") else ""
        raise ValueError(f"{name} contains NaN or infinite values{hint}")
    return x


def _drop_noise(eig: np.ndarray) -> np.ndarray:
    """Set eigenvalues below the rounding floor (``D * eps * max|eig|``) to 0: in a singular matrix
    they are zeros that rounding moved by ~1e-15, and their square roots (~3e-8 each) would add up."""
    floor = eig.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(eig).max()), 1e-300)
    return np.where(eig > floor, eig, 0.0)


def _check_psd(eig: np.ndarray, what: str) -> None:
    """Raise if eigenvalues show a matrix that is not positive semi-definite beyond rounding."""
    if eig.min() < -1e-6 * max(float(np.abs(eig).max()), 1e-300):
        raise ValueError(f"{what} has eigenvalue {eig.min():.3g} < 0 (largest {eig.max():.3g}): "
                         "a covariance is not positive semi-definite")


def _sqrt_psd(sigma: np.ndarray, what: str) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix via ``eigh``; eigenvalues at the
    rounding floor (or slightly negative) count as 0, so singular covariances are fine."""
    w, v = np.linalg.eigh(sigma)
    _check_psd(w, what)
    return (v * np.sqrt(_drop_noise(w))) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (the FID formula).

    ``d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^{1/2})``.

    The trace of the matrix square root is computed without a general (complex) ``sqrtm``:
    ``sigma1 sigma2`` is similar to the symmetric PSD matrix ``M = sqrt(sigma1) sigma2 sqrt(sigma1)``,
    so ``Tr((sigma1 sigma2)^{1/2}) = sum_i sqrt(lambda_i(M))``. Both steps use ``eigh``, which stays
    real and finite when a covariance is singular (fewer samples than dimensions). The analogue of
    the usual imaginary-part check: a clearly negative eigenvalue of ``sigma1`` or of ``M`` means
    an input was not a covariance matrix, and raises.

    :param mu1: [D] mean of the first set of features.
    :param sigma1: [D x D] covariance of the first set (symmetric positive semi-definite).
    :param mu2: [D] mean of the second set.
    :param sigma2: [D x D] covariance of the second set.
    :return: the squared Fréchet distance as a Python float (float64 arithmetic throughout).
    """
    mu1, mu2 = _as_float64(mu1, "mu1", 1), _as_float64(mu2, "mu2", 1)
    sigma1, sigma2 = _as_float64(sigma1, "sigma1", 2), _as_float64(sigma2, "sigma2", 2)
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {sigma2.shape}; expected [D] means and [D, D] covariances of the same D"
        )
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        scale = max(float(np.abs(s).max()), 1e-300)
        if np.abs(s - s.T).max() > 1e-6 * scale:
            raise ValueError(f"{name} is not symmetric; pass a covariance matrix (e.g. np.cov(x, rowvar=False))")
    sigma1 = 0.5 * (sigma1 + sigma1.T)
    sigma2 = 0.5 * (sigma2 + sigma2.T)

    root1 = _sqrt_psd(sigma1, "sigma1")
    m = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh(0.5 * (m + m.T))
    _check_psd(eig, "sqrt(sigma1) sigma2 sqrt(sigma1)")  # PSD if sigma2 is (on the range of sigma1)
    tr_covmean = float(np.sqrt(_drop_noise(eig)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


class FeatureStats:
    """Mean and covariance of features, accumulated batch by batch without storing the features.

    Each :meth:`update` folds a batch in with the parallel form of Welford's algorithm
    (Chan et al. 1979): the running mean and the running sum of centred outer products
    ``M2 = sum_i (f_i - mean)(f_i - mean)^T`` are kept in float64, so chunked accumulation
    matches ``np.mean`` / ``np.cov`` of all features to float64 rounding even when the mean is
    large compared with the spread.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self.meta: dict[str, str] = {}

    def update(self, features: ArrayLike) -> "FeatureStats":
        """Add a batch of features [N x D] (numpy or torch, any float dtype); returns ``self``."""
        f = _as_float64(features, "features", 2)
        if self.dim is None:
            self.dim = f.shape[1]
        if f.shape[1] != self.dim:
            raise ValueError(f"features have dimension {f.shape[1]}, these statistics have {self.dim}")
        nb = f.shape[0]
        if nb == 0:
            return self
        mean_b = f.mean(axis=0)
        centred = f - mean_b
        m2_b = centred.T @ centred
        if self.n == 0:
            self._mean, self._m2 = mean_b, m2_b
        else:
            n = self.n + nb
            delta = mean_b - self._mean
            self._mean = self._mean + delta * (nb / n)
            self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.n * nb / n)
        self.n += nb
        return self

    @property
    def mean(self) -> np.ndarray:
        """[D] float64 mean of all features seen."""
        if self.n == 0:
            raise ValueError("no features were added; call update(features) first")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """[D x D] float64 unbiased covariance (divides by N - 1, as ``np.cov``)."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.n}")
        return self._m2 / (self.n - 1)

    def save(self, path: str | Path, **meta: Any) -> None:
        """Write n, mean and covariance (and string metadata) to a ``.npz`` file."""
        np.savez(path, n=self.n, mean=self.mean, m2=self._m2, **{f"meta_{k}": str(v) for k, v in meta.items()})

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        """Read statistics written by :meth:`save`; metadata is in ``.meta``."""
        with np.load(path) as data:
            stats = cls(dim=int(data["mean"].shape[0]))
            stats.n = int(data["n"])
            stats._mean, stats._m2 = data["mean"], data["m2"]
            stats.meta = {k[5:]: str(data[k]) for k in data.files if k.startswith("meta_")}
        return stats

    def __repr__(self) -> str:
        return f"FeatureStats(n={self.n}, dim={self.dim})"


def fid_from_stats(stats1: FeatureStats, stats2: FeatureStats) -> float:
    """FID between two :class:`FeatureStats` (see :func:`frechet_distance`)."""
    return frechet_distance(stats1.mean, stats1.cov, stats2.mean, stats2.cov)


@dataclass(frozen=True)
class FIDResult:
    """An FID value with what it was measured with, so tables can print all of it."""

    fid: float
    n_samples: int
    n_reference: int
    extractor: str

    def __str__(self) -> str:
        return (f"FID {self.fid:.2f} ({self.n_samples} samples against {self.n_reference} reference "
                f"images; features: {self.extractor})")


def fid_result(samples: FeatureStats | ArrayLike, reference: FeatureStats, extractor: str) -> FIDResult:
    """FID of samples against reference statistics, reported with both sample counts.

    :param samples: a :class:`FeatureStats` or an [N x D] array of sample features.
    :param reference: statistics of the reference set (e.g. the training set, as in the papers).
    :param extractor: the name of the feature extractor (its ``.name``), carried into the result.
    """
    if not isinstance(samples, FeatureStats):
        samples = FeatureStats().update(samples)
    return FIDResult(fid_from_stats(samples, reference), samples.n, reference.n, extractor)


def inception_score(logits: ArrayLike, splits: int = 10) -> tuple[float, float]:
    """Inception Score of Salimans et al. (2016) from class logits [N x K].

    The samples are cut, in order, into ``splits`` parts; in each part
    ``IS = exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the part's mean of ``p(y|x)``.
    Ranges from 1 (every sample the same class distribution) to K (confident and balanced).

    :return: (mean, std) over the splits, as the papers report ``mean ± std``.
    """
    x = _as_float64(logits, "logits", 2)
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be between 1 and the number of samples ({n}), got {splits}")
    if x.shape[1] > 1 and (x >= 0).all() and np.allclose(x.sum(axis=1), 1.0, atol=1e-4):
        warnings.warn("inception_score takes logits, but every row of these is non-negative and sums to 1, "
                      "like probabilities: pass their log (np.log(p)), or the score comes out near 1")
    log_p = x - x.max(axis=1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))  # log softmax
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        lo, hi = i * n // splits, (i + 1) * n // splits
        p_y = p[lo:hi].mean(axis=0)
        kl = (p[lo:hi] * (log_p[lo:hi] - np.log(p_y))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 between equal-size samples with ``k(a, b) = (a.b / d + 1)^3``
    (Gretton et al. 2012, eq. 3; the diagonals of K_xx and K_yy are left out)."""
    m, d = x.shape
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid(features1: ArrayLike, features2: ArrayLike, num_subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) between features [N1 x D] and [N2 x D].

    Draws ``num_subsets`` pairs of subsets of ``m = min(subset_size, N1, N2)`` rows without
    replacement and averages the unbiased MMD^2 estimate with the cubic polynomial kernel.
    The estimate is unbiased at every ``m``, so it can be slightly negative for equal distributions.
    The subsets are drawn like torch-fidelity's (``np.random.RandomState(seed)``, first set then
    second), so the same seed gives the same subsets.

    :return: (mean, std) over the subsets.
    """
    f1, f2 = _as_float64(features1, "features1", 2), _as_float64(features2, "features2", 2)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} and {f2.shape[1]}")
    if not runtime.is_int(num_subsets) or num_subsets < 1:
        raise ValueError(f"num_subsets must be at least 1; got {num_subsets!r}")
    if not runtime.is_int(subset_size) or subset_size < 2:
        raise ValueError(f"subset_size must be at least 2 (the unbiased MMD^2 needs two samples per subset); "
                         f"got {subset_size!r}")
    m = min(int(subset_size), f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {f1.shape[0]} and {f2.shape[0]}")
    rng = np.random.RandomState(seed)
    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        mmds[i] = _mmd2_unbiased(x, y)
    return float(mmds.mean()), float(mmds.std())
