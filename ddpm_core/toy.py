"""Small worlds in which every formula of the diffusion chain can be checked by simulation.

* Discrete Markov chains: a transition matrix, its stationary distribution, the state
  distribution ``p_k = p_0 P^k`` and simulated chains to compare with it.
* The Gaussian forward chain on 2-D points, step by step (Ho et al. 2020, eq. 2), and linear
  fits that measure its marginal (eq. 4) and its posterior (eqs. 6-7) from simulated states.
* The exact one-step reverse density of a 1-D Gaussian mixture, to see when it is close to Gaussian.
* Scores: ``score = -eps / sqrt(1 - alpha_bar)``, exact scores of Gaussian mixtures, the optimal
  noise prediction of an empirical data set, annealed Langevin dynamics (Song & Ermon 2019).
* The weight that turns ``L_simple`` into the bound's term ``L_t`` and a distance between 2-D samples.

Step convention (the package's, see ``ddpm_core``): the state after the 0-indexed noising step
``t`` is ``x_t = q_sample(x0, t)``. A trajectory array holds the states ``[x_0 (data), after step
0, after step 1, ...]``, so its index ``k`` is the state after step ``k - 1``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch

from . import viz as _viz
from .diffusion import GaussianDiffusion, _randn

# ---------------------------------------------------------------------- discrete Markov chains


def check_transition_matrix(P) -> torch.Tensor:
    """Return ``P`` as float64 [K, K] after checking it is row-stochastic (rows: from-state)."""
    P = torch.as_tensor(P, dtype=torch.float64)
    if P.ndim != 2 or P.shape[0] != P.shape[1]:
        raise ValueError(f"a transition matrix must be square [K, K], got shape {tuple(P.shape)}")
    if bool((P < 0).any()) or not torch.allclose(P.sum(1), torch.ones(len(P), dtype=torch.float64), atol=1e-9):
        raise ValueError("every row of a transition matrix must hold probabilities that sum to 1 "
                         f"(P[i, j] = P(next = j | now = i)); row sums are {P.sum(1).tolist()}")
    return P


def stationary_distribution(P) -> torch.Tensor:
    """The distribution pi with ``pi P = pi`` (left eigenvector of eigenvalue 1), float64 [K].

    Unique when the chain is irreducible; otherwise one of several is returned.
    """
    P = check_transition_matrix(P)
    vals, vecs = torch.linalg.eig(P.T)
    k = int(torch.argmin((vals - 1).abs()))
    pi = vecs[:, k].real
    return pi / pi.sum()


def propagate(p0, P, steps: int) -> torch.Tensor:
    """State distributions ``p_k = p_0 P^k`` for k = 0..steps, float64 [steps + 1, K]."""
    P = check_transition_matrix(P)
    p = torch.as_tensor(p0, dtype=torch.float64)
    if p.shape != (len(P),) or abs(float(p.sum()) - 1) > 1e-9:
        raise ValueError(f"p0 must be a distribution over the {len(P)} states, got {p.tolist()}")
    out = [p]
    for _ in range(steps):
        out.append(out[-1] @ P)
    return torch.stack(out)


def simulate_chain(P, p0, steps: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` independent runs of the chain: long [n, steps + 1], column 0 drawn from ``p0``."""
    P = check_transition_matrix(P)
    p0 = torch.as_tensor(p0, dtype=torch.float64)
    states = torch.empty(n, steps + 1, dtype=torch.long)
    states[:, 0] = torch.multinomial(p0.expand(n, -1), 1, replacement=True, generator=generator)[:, 0]
    for k in range(steps):
        states[:, k + 1] = torch.multinomial(P[states[:, k]], 1, generator=generator)[:, 0]
    return states


def empirical_distribution(states: torch.Tensor, num_states: int) -> torch.Tensor:
    """Fraction of runs in each state at each step: float64 [steps + 1, K] from states [n, steps + 1]."""
    counts = torch.nn.functional.one_hot(states, num_states).sum(0).to(torch.float64)
    return counts / len(states)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Total-variation distance ``0.5 * sum |p - q|`` over the last dimension."""
    return 0.5 * (torch.as_tensor(p) - torch.as_tensor(q)).abs().sum(-1)


# ---------------------------------------------------------------------- the Gaussian forward chain


def forward_step(d: GaussianDiffusion, x_prev: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """One step of the forward chain, ``x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) noise``
    (Ho et al. eq. 2) with the 0-indexed step ``t``; ``x_prev`` and ``noise`` are [N, ...]."""
    beta = float(d.betas[t])
    return math.sqrt(1.0 - beta) * x_prev + math.sqrt(beta) * noise


def forward_trajectories(d: GaussianDiffusion, x0: torch.Tensor, keep: Sequence[int] | None = None,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """Run the forward chain step by step from ``x0`` [N, D] (up to the last index in ``keep``).

    :param keep: trajectory indices to store (0 = the data, k = the state after step k - 1;
        default all ``0..T``). Storing few indices keeps memory small for many points.
    :return: float [len(keep), N, D], the states at the ``keep`` indices in the order given.
    """
    T = d.num_timesteps
    keep = list(range(T + 1)) if keep is None else [int(k) for k in keep]
    if any(k < 0 or k > T for k in keep):
        raise ValueError(f"keep holds trajectory indices 0..{T} (0 = data, k = after step k - 1), got {keep}")
    where = {k: i for i, k in enumerate(keep)}
    out = torch.empty(len(keep), *x0.shape, dtype=x0.dtype)
    x = x0
    if 0 in where:
        out[where[0]] = x0
    for t in range(max(keep, default=0)):  # no need to run past the last stored state
        x = forward_step(d, x, t, _randn(x0.shape, generator, x0.device, x0.dtype))
        if t + 1 in where:
            out[where[t + 1]] = x
    return out


def linear_fit(y: torch.Tensor, x: torch.Tensor) -> dict:
    """Least-squares fit, per dimension, of ``y = slope * x + intercept + residual`` over [M, D] pairs.

    Two checks of the chain use it. With ``y = x_t`` and ``x = x_0`` over many data points, the
    closed form q(x_t | x_0) says slope = sqrt(alpha_bar_t), intercept = 0 and residual variance
    = 1 - alpha_bar_t (Ho et al. eq. 4). With ``y = x_{t-1}`` and ``x = x_t`` over chains that share
    one x_0, the fit is the posterior q(x_{t-1} | x_t, x_0) itself: slope = the coefficient of x_t
    in mu~_t, intercept = the coefficient of x_0 times x_0, residual variance = beta~_t (eqs. 6-7).

    :return: dict of float64 [D] tensors ``slope``, ``intercept``, ``residual_var`` and their
        standard errors ``slope_se``, ``intercept_se``, ``residual_var_se`` (ordinary least squares;
        the last assumes Gaussian residuals), so that a check can say "within k standard errors".
    """
    a, b = y.double(), x.double()
    m = len(a)
    if m < 3 or a.shape != b.shape:
        raise ValueError(f"need y and x of one shape [M, D] with M >= 3, got {tuple(a.shape)} and {tuple(b.shape)}")
    var_x = b.var(0, unbiased=False)
    cov = ((a - a.mean(0)) * (b - b.mean(0))).mean(0)
    slope = cov / var_x
    intercept = a.mean(0) - slope * b.mean(0)
    residual_var = (a - (slope * b + intercept)).var(0, unbiased=False)
    s2 = residual_var * m / (m - 2)
    return {"slope": slope, "intercept": intercept, "residual_var": residual_var,
            "slope_se": torch.sqrt(s2 / (m * var_x)),
            "intercept_se": torch.sqrt(s2 * (1 / m + b.mean(0) ** 2 / (m * var_x))),
            "residual_var_se": residual_var * math.sqrt(2 / m)}


def stack_fits(fits: Sequence[dict]) -> dict:
    """Stack several ``linear_fit`` results key by key: S dicts of [D] tensors -> one dict of [S, D]."""
    if len(fits) == 0:
        raise ValueError("stack_fits needs at least one linear_fit result, got none")
    return {key: torch.stack([f[key] for f in fits]) for key in fits[0]}


def max_z(fits: dict, truth: dict) -> dict:
    """The largest deviation of fitted values from their predictions, in standard errors.

    :param fits: a ``linear_fit`` result, or several stacked by ``stack_fits``: tensors under each
        key of ``truth`` and under ``key + "_se"``.
    :param truth: ``{key: predicted value}``, each broadcastable to ``fits[key]`` (e.g. [S, 1]
        against [S, D]).
    :return: ``{key: max |fits[key] - truth[key]| / fits[key + "_se"]}`` as floats, so that a
        check can say "within k standard errors" for every step and coordinate at once.
    """
    missing = [k for k in truth if k not in fits or k + "_se" not in fits]
    if missing:
        raise KeyError(f"max_z needs fits[key] and fits[key + '_se'] for every key of truth; missing {missing}")
    return {key: float(((fits[key] - torch.as_tensor(value, dtype=fits[key].dtype))
                        / fits[key + "_se"]).abs().max())
            for key, value in truth.items()}


# ---------------------------------------------------------------------- the true reverse step (1-D)


def reverse_step_density(x_t: float, beta: float, alpha_bar_prev: float, modes, mode_std: float,
                         weights=None, num: int = 4001) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact density of one reverse step q(x_{t-1} | x_t) for 1-D data from a Gaussian mixture.

    By Bayes, ``q(x_{t-1} | x_t) ~ N(x_t; sqrt(1 - beta) x_{t-1}, beta) q(x_{t-1})``, where the
    marginal ``q(x_{t-1})`` is again a mixture, with means ``sqrt(abar_prev) m_k`` and variances
    ``abar_prev s^2 + 1 - abar_prev``. For a process ``d`` and 0-indexed step t, pass
    ``beta = d.betas[t]`` and ``alpha_bar_prev = d.alpha_bar[t - 1]`` (1 at t = 0).

    :param modes: the K component means; :param mode_std: their common standard deviation s.
    :return: (grid [num], density [num]) in float64, normalised on the grid.
    """
    beta, ab_prev = float(beta), float(alpha_bar_prev)
    if not (0 < beta < 1 and 0 < ab_prev <= 1):
        raise ValueError(f"need 0 < beta < 1 and 0 < alpha_bar_prev <= 1, got {beta} and {ab_prev}")
    m = torch.as_tensor(modes, dtype=torch.float64).reshape(-1)
    w = torch.full_like(m, 1 / len(m)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    prior_mean, prior_var = math.sqrt(ab_prev) * m, ab_prev * mode_std ** 2 + 1 - ab_prev
    lik_mean, lik_sd = x_t / math.sqrt(1 - beta), math.sqrt(beta / (1 - beta))
    lo = max(lik_mean - 12 * lik_sd, float(prior_mean.min()) - 12 * math.sqrt(prior_var))
    hi = min(lik_mean + 12 * lik_sd, float(prior_mean.max()) + 12 * math.sqrt(prior_var))
    if lo >= hi:  # x_t far out in the tails: fall back to the likelihood's range
        lo, hi = lik_mean - 12 * lik_sd, lik_mean + 12 * lik_sd
    grid = torch.linspace(lo, hi, num, dtype=torch.float64)
    log_lik = -0.5 * (x_t - math.sqrt(1 - beta) * grid) ** 2 / beta
    log_prior = torch.logsumexp(torch.log(w) - 0.5 * (grid[:, None] - prior_mean) ** 2 / prior_var, dim=1)
    log_p = log_lik + log_prior
    p = torch.exp(log_p - log_p.max())
    return grid, p / torch.trapezoid(p, grid)


def gaussian_gap(grid: torch.Tensor, density: torch.Tensor) -> float:
    """KL(p || N(mean_p, var_p)) in nats: how far a 1-D density on a grid is from the Gaussian with
    its own mean and variance (0 exactly when it is Gaussian)."""
    mean = torch.trapezoid(density * grid, grid)
    var = torch.trapezoid(density * (grid - mean) ** 2, grid)
    log_q = -0.5 * torch.log(2 * math.pi * var) - 0.5 * (grid - mean) ** 2 / var
    log_p = torch.log(density.clamp(min=1e-300))
    return float(torch.trapezoid(torch.where(density > 0, density * (log_p - log_q), torch.zeros_like(density)), grid))


# ---------------------------------------------------------------------- scores


def _abar(d: GaussianDiffusion, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return d._extract("alpha_bar", t.long(), x)


def score_from_eps(d: GaussianDiffusion, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``grad log q(x_t) = -E[eps | x_t] / sqrt(1 - alpha_bar_t)`` (denoising score matching,
    Vincent 2011): the score the eps-network implies, same shape as ``eps``."""
    return -eps / torch.sqrt(1 - _abar(d, t, eps))


def eps_from_score(d: GaussianDiffusion, score: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`score_from_eps`: ``eps = -sqrt(1 - alpha_bar_t) * score``."""
    return -torch.sqrt(1 - _abar(d, t, score)) * score


def model_score(model: Callable, d: GaussianDiffusion, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The learned score ``-eps_pred / sqrt(1 - alpha_bar_t)`` of an eps-predicting ``model``
    (a learned-variance output keeps its first, mean half)."""
    if d.mean_type != "eps":
        raise ValueError(f"model_score needs a model that predicts eps, this process has mean_type {d.mean_type!r}")
    eps_pred, _ = d.split_model_output(d.model_call(model, x_t, t), x_t)
    return score_from_eps(d, eps_pred, t)


def _mixture_parts(x, alpha_bar, modes, mode_std, weights):
    m = torch.as_tensor(modes, dtype=x.dtype, device=x.device).reshape(-1, x.shape[-1])  # [K, D]
    ab = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device).reshape(-1, 1)        # [N or 1, 1]
    var = ab * mode_std ** 2 + 1 - ab                                                     # [., 1]
    w = (torch.full((len(m),), 1 / len(m), dtype=x.dtype, device=x.device) if weights is None
         else torch.as_tensor(weights, dtype=x.dtype, device=x.device))
    diff = x[:, None, :] - ab.sqrt()[:, :, None] * m[None]                                # [N, K, D]
    log_comp = torch.log(w) - 0.5 * (diff ** 2).sum(-1) / var - 0.5 * x.shape[-1] * torch.log(2 * math.pi * var)
    return diff, var, log_comp


def mixture_log_density(x: torch.Tensor, alpha_bar, modes, mode_std: float, weights=None) -> torch.Tensor:
    """``log q(x_t)`` [N] when the data are a Gaussian mixture (equal weights unless given):
    ``q(x_t) = sum_k w_k N(sqrt(abar) m_k, (abar s^2 + 1 - abar) I)``. ``x`` is [N, D],
    ``alpha_bar`` a number or [N] tensor (abar = 1 gives the data density)."""
    return torch.logsumexp(_mixture_parts(x, alpha_bar, modes, mode_std, weights)[2], dim=1)


def mixture_score(x: torch.Tensor, alpha_bar, modes, mode_std: float, weights=None) -> torch.Tensor:
    """The exact score ``grad_x log q(x_t)`` [N, D] of :func:`mixture_log_density`, in closed form:
    ``sum_k r_k(x) (sqrt(abar) m_k - x) / (abar s^2 + 1 - abar)`` with responsibilities r_k."""
    diff, var, log_comp = _mixture_parts(x, alpha_bar, modes, mode_std, weights)
    r = torch.softmax(log_comp, dim=1)                                                    # [N, K]
    return -(r[:, :, None] * diff).sum(1) / var


def empirical_optimal_eps(x_t: torch.Tensor, alpha_bar, data: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """The best possible noise prediction ``E[eps | x_t]`` [N, D] when x_0 is uniform over the
    points ``data`` [M, D]: a softmax-weighted average of ``(x_t - sqrt(abar) x_0^(i)) /
    sqrt(1 - abar)`` with weights ``q(x_t | x_0^(i))``. It minimises L_simple on that data set."""
    ab = torch.as_tensor(alpha_bar, dtype=x_t.dtype).reshape(-1, 1)
    ab = ab.expand(len(x_t), 1) if len(ab) == 1 else ab
    data = data.to(x_t.dtype)
    out = []
    for i in range(0, len(x_t), chunk):
        x, a = x_t[i:i + chunk], ab[i:i + chunk]
        diff = x[:, None, :] - a.sqrt()[:, :, None] * data[None]                          # [n, M, D]
        r = torch.softmax(-0.5 * (diff ** 2).sum(-1) / (1 - a), dim=1)                    # [n, M]
        out.append((r[:, :, None] * diff).sum(1) / (1 - a).sqrt())
    return torch.cat(out)


# ---------------------------------------------------------------------- annealed Langevin dynamics


def langevin_levels(d: GaussianDiffusion, num: int = 50) -> list[int]:
    """About ``num`` steps t, decreasing, whose noise levels ``sigma_t = sqrt(1 - alpha_bar_t)`` are
    evenly spaced on a log scale from the largest to the smallest (the geometric sequence of Song &
    Ermon 2019). Steps that coincide are merged, so fewer than ``num`` may come back."""
    if num < 2:
        raise ValueError(f"need at least 2 noise levels, got {num}")
    sigma = torch.sqrt(1 - d.alpha_bar)
    target = torch.logspace(math.log10(float(sigma[-1])), math.log10(float(sigma[0])), num, dtype=torch.float64)
    idx = torch.searchsorted(sigma, target).clamp(max=len(sigma) - 1)
    return sorted(set(idx.tolist()), reverse=True)


@torch.no_grad()
def annealed_langevin_progressive(score_fn: Callable, d: GaussianDiffusion, shape, levels: Sequence[int],
                                  steps_per_level: int = 10, step_scale: float = 0.1,
                                  generator: torch.Generator | None = None, progress: bool = False,
                                  x_init: torch.Tensor | None = None) -> Iterator[dict]:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1) over the marginals q(x_t).

    For each level t in ``levels`` (decreasing noise), ``steps_per_level`` updates
    ``x <- x + (a / 2) score_fn(x, t) + sqrt(a) z`` with ``a = step_scale * (1 - alpha_bar_t)``,
    the step proportional to the noise variance at that level. Starts from N(0, I) (or ``x_init``).
    Levels from :func:`langevin_levels` (geometric in sigma) keep the chain close to each q(x_t).
    Yields ``{"t": level, "x_t": x}`` after each level.

    :param score_fn: ``score_fn(x, t)`` with t a long [N] tensor, e.g. ``lambda x, t:
        model_score(model, d, x, t)``.
    """
    levels = [int(v) for v in levels]
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"levels must be strictly decreasing steps (most noise first), got {levels}")
    if steps_per_level < 1 or step_scale <= 0:
        raise ValueError(f"need steps_per_level >= 1 and step_scale > 0, got {steps_per_level}, {step_scale}")
    x = _randn(shape, generator, torch.device("cpu")) if x_init is None else x_init.clone()
    it = levels
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(levels, desc="annealed Langevin")
    for level in it:
        t = torch.full((shape[0],), level, dtype=torch.long)
        a = step_scale * (1 - float(d.alpha_bar[level]))
        for _ in range(steps_per_level):
            x = x + 0.5 * a * score_fn(x, t) + math.sqrt(a) * _randn(shape, generator, x.device, x.dtype)
        yield {"t": level, "x_t": x}


def annealed_langevin(score_fn: Callable, d: GaussianDiffusion, shape, levels: Sequence[int],
                      steps_per_level: int = 10, step_scale: float = 0.1,
                      generator: torch.Generator | None = None, progress: bool = False,
                      x_init: torch.Tensor | None = None) -> torch.Tensor:
    """The final state of :func:`annealed_langevin_progressive` (same arguments), [N, D]."""
    out = None
    for out in annealed_langevin_progressive(score_fn, d, shape, levels, steps_per_level, step_scale,
                                             generator, progress, x_init):
        pass
    return out["x_t"]


# ---------------------------------------------------------------------- the bound and L_simple


def vb_weight(d: GaussianDiffusion) -> torch.Tensor:
    """float64 [T]: the factor ``lambda_t`` with ``L_t = lambda_t * E||eps - eps_pred||^2 / D`` (nats
    per dimension) for an eps-network and a fixed reverse variance sigma_t^2 (Ho et al. eq. 12):
    ``lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - abar_t))``. ``fixed_large`` adds a constant
    (see :func:`vb_constant`). At t = 0 the bound uses the decoder instead; the entry is the value
    with the clipped variance the sampler uses."""
    tab = d._tables64
    if d.var_type == "fixed_small":
        sigma2 = torch.exp(tab["posterior_log_variance_clipped"])
    elif d.var_type == "fixed_large":
        sigma2 = tab["fixed_large_variance"]
    else:
        raise ValueError(f"vb_weight needs a fixed variance, this process has var_type {d.var_type!r}")
    return tab["betas"] ** 2 / (2 * sigma2 * tab["alphas"] * (1 - tab["alpha_bar"]))


def vb_constant(d: GaussianDiffusion) -> torch.Tensor:
    """float64 [T]: the part of L_t (nats per dimension) that does not depend on the network,
    ``0.5 * (log(sigma_t^2 / beta~_t) - 1 + beta~_t / sigma_t^2)``: zero for ``fixed_small``
    (for t >= 1), positive for ``fixed_large``."""
    tab = d._tables64
    true_log = tab["posterior_log_variance_clipped"]
    model_log = true_log if d.var_type == "fixed_small" else tab["fixed_large_log_variance"]
    if d.var_type not in ("fixed_small", "fixed_large"):
        raise ValueError(f"vb_constant needs a fixed variance, this process has var_type {d.var_type!r}")
    return 0.5 * (model_log - true_log - 1 + torch.exp(true_log - model_log))


# ---------------------------------------------------------------------- distances between point sets


def energy_distance(x: torch.Tensor, y: torch.Tensor, unbiased: bool = True) -> float:
    """The energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` between point sets [N, D] and
    [M, D] (Szekely & Rizzo 2013); zero exactly when the distributions agree.

    :param unbiased: leave the zero diagonal out of the within-set means (U-statistics): zero in
        expectation for one distribution, so an estimate may come out slightly negative. With
        ``False`` the plug-in (V-statistic) estimate, never negative, with a small positive bias.
    """
    x, y = x.double(), y.double()
    n, m = len(x), len(y)
    if n < 2 or m < 2:
        raise ValueError(f"energy_distance needs at least 2 points in each set, got {n} and {m}")
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1) if unbiased else n * n)
    yy = torch.cdist(y, y).sum() / (m * (m - 1) if unbiased else m * m)
    return float(2 * xy - xx - yy)


def normal_energy_null(ref: torch.Tensor, n_pairs: int, seed: int = 0) -> list[float]:
    """Energy distances between ``ref`` [N, D] and ``n_pairs`` fresh standard-normal samples of its
    shape; sample ``k`` is drawn with the seed ``seed + k``.

    When ``ref`` is itself a sample of N(0, I), they show how far apart two samples of one
    distribution come out by chance: a cloud whose distance to ``ref`` lies in their range cannot
    be told apart from N(0, I) with this many points.
    """
    if n_pairs < 1:
        raise ValueError(f"normal_energy_null needs n_pairs >= 1, got {n_pairs}")
    return [energy_distance(torch.randn(tuple(ref.shape), generator=torch.Generator().manual_seed(seed + k)),
                            ref)
            for k in range(n_pairs)]


def nearest_distance(points: torch.Tensor, data: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """Distance [N] from each of ``points`` [N, D] to the nearest of ``data`` [M, D]."""
    return torch.cat([torch.cdist(points[i:i + chunk].double(), data.double()).min(1).values
                      for i in range(0, len(points), chunk)])


# ---------------------------------------------------------------------- animations of 2-D points


def animate_points(frames: Sequence[torch.Tensor], titles: Sequence[str] | None = None, lim: float = 3.0,
                   reference: torch.Tensor | None = None, interval: int = 120, size: float = 4.0,
                   point_size: float = 2.0, alt: str = "An animation of points in the plane, frame by frame"):
    """A jshtml animation (plays in the static HTML book) of 2-D point clouds.

    :param frames: a list of [N, 2] tensors, one per frame.
    :param titles: one title per frame, optional.
    :param lim: axes run from -lim to lim.
    :param reference: optional [M, 2] points drawn in light grey behind every frame (e.g. the data).
    :param alt: what the frames show, for readers who cannot see them (``viz.label_animation``).
    :return: ``IPython.display.HTML``.
    """
    import matplotlib.pyplot as plt
    from IPython.display import HTML
    from matplotlib import animation

    if len(frames) == 0:
        raise ValueError("animate_points needs at least one frame")
    _viz._check_alt(alt)
    if titles is not None and len(titles) != len(frames):
        raise ValueError(f"got {len(titles)} titles for {len(frames)} frames; give one per frame or none")
    fig, ax = plt.subplots(figsize=(size, size), dpi=80)
    if reference is not None:
        ax.scatter(*reference.T.cpu(), s=point_size, c="0.7", linewidths=0)
    scat = ax.scatter(*frames[0].T.cpu(), s=point_size, c="C0", linewidths=0)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", xticks=[], yticks=[])
    title = ax.set_title(titles[0] if titles else "")

    def update(k):
        scat.set_offsets(frames[k].cpu().numpy())
        if titles:
            title.set_text(titles[k])
        return (scat,)

    anim = animation.FuncAnimation(fig, update, frames=len(frames), interval=interval, blit=False)
    html = _viz.label_animation(anim.to_jshtml(default_mode="once"), alt)
    plt.close(fig)
    return HTML(html)
