"""Tests written by a mutation audit of toy.py (Markov chains, forward chain, scores, distances),
segmentation.py (batches, evaluate) and the internals of the flow and VAE baselines (coupling
masks, actnorm's data-dependent init, sampling temperature and variance). Each test checks a value
against an independent computation (numpy, scipy, torch.distributions, a definition) and fails on
a bug that the rest of the suite let through."""
import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from ddpm_core import baselines, segmentation, toy
from ddpm_core.baselines import flow as flow_mod

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- toy.py: discrete chains
@pytest.mark.parametrize("P,pi", [
    ([[0.0, 1.0], [1.0, 0.0]], [0.5, 0.5]),                                   # period 2, eigenvalues 1, -1
    ([[0.0, 0.5, 0.5], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [0.5, 0.25, 0.25]),  # bipartite, eigenvalues 1, -1, 0
    ([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]], [0.25, 0.25, 0.5]),  # bipartite: |-1| rounds above |1|
    ([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], [1 / 3, 1 / 3, 1 / 3]),  # 3-cycle: all |lambda| = 1
])
def test_stationary_distribution_of_periodic_chains(P, pi):
    """Irreducible periodic chains have other eigenvalues of modulus 1 (-1, complex roots of unity),
    and in floating point |-1| can come out larger than |1| (the 4th case, LAPACK on CPU); the
    stationary distribution is the eigenvector of the eigenvalue nearest 1, summing to 1 (checked
    against the hand-solved pi and against pi P = pi)."""
    got = toy.stationary_distribution(P)
    P = torch.tensor(P, dtype=torch.float64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, torch.tensor(pi, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(got @ P, got, atol=1e-9, rtol=0)


def test_total_variation_is_the_largest_difference_over_events():
    """TV(p, q) = max over events A of |p(A) - q(A)| (its definition), found here by enumerating all
    2^K events; it equals 0.5 * sum |p - q|, and 1 for distributions on disjoint states."""
    g = torch.Generator().manual_seed(0)
    p, q = (torch.rand(5, generator=g, dtype=torch.float64) for _ in range(2))
    p, q = p / p.sum(), q / q.sum()
    best = max(abs(float(p[list(A)].sum() - q[list(A)].sum()))
               for r in range(6) for A in itertools.combinations(range(5), r))
    assert float(toy.total_variation(p, q)) == pytest.approx(best, abs=1e-12)
    assert float(toy.total_variation(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]))) == pytest.approx(1.0)
    rows = toy.total_variation(torch.stack([p, q]), q)  # over the last dimension, one per row
    assert rows.shape == (2,) and float(rows[1]) == 0.0 and float(rows[0]) == pytest.approx(best, abs=1e-12)


# ---------------------------------------------------------------------- toy.py: linear_fit
def test_linear_fit_matches_ordinary_least_squares_on_few_points():
    """On m = 6 pairs, slope and intercept equal numpy's least squares fit, the residual variance is
    RSS / m, and the slope and intercept standard errors are the OLS ones, sqrt of the diagonal of
    RSS / (m - 2) * (X^T X)^-1 (X = [x, 1]), per dimension."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64) + 1.5  # mean far from 0: the 1/m term matters
    y = 0.7 * x - 0.3 + 0.2 * torch.randn(6, 2, generator=g, dtype=torch.float64)
    fit = toy.linear_fit(y, x)
    for j in range(2):
        xs, ys = x[:, j].numpy(), y[:, j].numpy()
        X = np.stack([xs, np.ones_like(xs)], 1)
        coef, rss, *_ = np.linalg.lstsq(X, ys, rcond=None)
        cov = rss[0] / (len(xs) - 2) * np.linalg.inv(X.T @ X)
        assert float(fit["slope"][j]) == pytest.approx(coef[0], rel=1e-10)
        assert float(fit["intercept"][j]) == pytest.approx(coef[1], rel=1e-10)
        assert float(fit["residual_var"][j]) == pytest.approx(rss[0] / len(xs), rel=1e-10)
        assert float(fit["slope_se"][j]) == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-10)
        assert float(fit["intercept_se"][j]) == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-10)


# ---------------------------------------------------------------------- toy.py: mixture densities
def test_mixture_log_density_and_score_match_torch_distributions_with_unequal_weights():
    """log q(x_t) of a Gaussian mixture (unequal weights, per-point alpha_bar) equals
    torch.distributions' MixtureSameFamily log_prob of N(sqrt(abar) m_k, (abar s^2 + 1 - abar) I),
    and the closed-form score equals the autograd gradient of that independent log-density."""
    D = torch.distributions
    modes = torch.tensor([[0.8, 0.0], [-0.8, 0.3], [0.0, 0.8]], dtype=torch.float64)
    w, s = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64), 0.2
    g = torch.Generator().manual_seed(2)
    x = torch.randn(16, 2, generator=g, dtype=torch.float64)
    ab = torch.rand(16, generator=g, dtype=torch.float64) * 0.9 + 0.05
    got = toy.mixture_log_density(x, ab, modes, s, weights=w)
    xr = x.clone().requires_grad_()
    std = (ab * s ** 2 + 1 - ab).sqrt()[:, None, None].expand(16, 3, 2)
    comp = D.Independent(D.Normal(ab.sqrt()[:, None, None] * modes[None], std), 1)
    want = D.MixtureSameFamily(D.Categorical(probs=w.expand(16, 3)), comp).log_prob(xr)
    torch.testing.assert_close(got, want.detach(), rtol=1e-10, atol=1e-10)
    (grad,) = torch.autograd.grad(want.sum(), xr)
    torch.testing.assert_close(toy.mixture_score(x, ab, modes, s, weights=w), grad, rtol=1e-9, atol=1e-10)
    # equal weights by default, and abar = 1 gives the data density itself
    data = D.MixtureSameFamily(D.Categorical(probs=torch.full((3,), 1 / 3, dtype=torch.float64)),
                               D.Independent(D.Normal(modes, torch.full_like(modes, s)), 1))
    torch.testing.assert_close(toy.mixture_log_density(x, 1.0, modes, s), data.log_prob(x), rtol=1e-10, atol=1e-10)


def test_empirical_optimal_eps_is_tweedie_on_the_empirical_distribution():
    """For x_0 uniform over 5 points, E[eps | x_t] = -sqrt(1 - abar) grad log q(x_t), with
    q(x_t) = mean_i N(x_t; sqrt(abar) x_i, (1 - abar) I) from torch.distributions and its gradient
    by autograd; per-point abar, and chunks smaller than the batch."""
    D = torch.distributions
    g = torch.Generator().manual_seed(10)
    data = torch.randn(5, 2, generator=g, dtype=torch.float64)
    x_t = torch.randn(8, 2, generator=g, dtype=torch.float64).requires_grad_()
    ab = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    comp = D.Independent(D.Normal(ab.sqrt()[:, None, None] * data[None], (1 - ab).sqrt()[:, None, None].expand(8, 5, 2)), 1)
    log_q = D.MixtureSameFamily(D.Categorical(probs=torch.full((8, 5), 0.2, dtype=torch.float64)), comp).log_prob(x_t)
    (score,) = torch.autograd.grad(log_q.sum(), x_t)
    want = -(1 - ab).sqrt()[:, None] * score
    torch.testing.assert_close(toy.empirical_optimal_eps(x_t.detach(), ab, data, chunk=3), want, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------- toy.py: energy distance
def test_energy_distance_with_sets_of_different_sizes():
    """Sets of 7 and 12 points: the plug-in (V-statistic) value equals scipy's energy distance squared
    (1-D), and the unbiased one leaves the zero diagonals out, each set's with its own size: both
    recomputed from the definition with numpy."""
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 1, generator=g, dtype=torch.float64), torch.randn(12, 1, generator=g, dtype=torch.float64) + 0.5
    assert toy.energy_distance(x, y, unbiased=False) == pytest.approx(
        scipy.stats.energy_distance(x[:, 0].numpy(), y[:, 0].numpy()) ** 2, rel=1e-10)
    x2, y2 = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(12, 3, generator=g, dtype=torch.float64)
    a, b = x2.numpy(), y2.numpy()
    dist = lambda u, v: np.linalg.norm(u[:, None] - v[None], axis=-1)  # noqa: E731
    n, m = len(a), len(b)
    want = 2 * dist(a, b).mean() - dist(a, a).sum() / (n * (n - 1)) - dist(b, b).sum() / (m * (m - 1))
    assert toy.energy_distance(x2, y2) == pytest.approx(want, rel=1e-10)
    assert toy.energy_distance(y2, x2) == pytest.approx(want, rel=1e-10)  # symmetric


# ---------------------------------------------------------------------- segmentation
class _Threshold(torch.nn.Module):
    """A 'model' whose class-1 logit is the input and class-0 logit its negative: pred = (x > 0)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.cat([-x, x], 1) + 0 * self.dummy


def test_evaluate_averages_per_image_iou_and_dice_and_counts_every_pixel():
    """evaluate() = mean over images of IoU and Dice of each image's mask, and the fraction of all
    pixels (background included) classified right; recomputed with numpy on masks whose images
    differ in size of foreground (so per-image mean != pooled IoU, recall != accuracy)."""
    g = torch.Generator().manual_seed(4)
    pred = torch.rand(4, 8, 8, generator=g) < torch.tensor([0.1, 0.3, 0.6, 0.9])[:, None, None]
    target = torch.rand(4, 8, 8, generator=g) < torch.tensor([0.2, 0.2, 0.5, 0.8])[:, None, None]
    x = torch.where(pred, 1.0, -1.0)[:, None]
    data = segmentation.SegmentationSet(x=x, mask=target.long(), clean=x, scratches=torch.zeros_like(x), split="test")
    got = segmentation.evaluate(_Threshold(), data)
    p, t = pred.numpy(), target.numpy()
    inter, union = (p & t).sum((1, 2)), (p | t).sum((1, 2))
    assert got["iou"] == pytest.approx(float(np.mean(inter / union)), rel=1e-12)
    assert got["dice"] == pytest.approx(float(np.mean(2 * inter / (p.sum((1, 2)) + t.sum((1, 2))))), rel=1e-12)
    assert got["pixel_accuracy"] == pytest.approx(float((p == t).mean()), rel=1e-12)


def test_batches_are_one_shuffled_epoch_without_the_incomplete_last_batch():
    """10 examples in batches of 4: two full batches (the incomplete third is dropped), 8 distinct
    examples with their own masks; the order is shuffled (depends on the generator's seed)."""
    x = torch.arange(10.0).view(10, 1, 1, 1)
    data = segmentation.SegmentationSet(x=x, mask=torch.arange(10).view(10, 1, 1), clean=x, scratches=x)
    firsts = set()
    for seed in range(8):
        batches = list(data.batches(4, torch.Generator().manual_seed(seed)))
        assert [len(b[0]) for b in batches] == [4, 4]
        ids = torch.cat([b[0].flatten() for b in batches]).long()
        assert len(set(ids.tolist())) == 8
        assert all(torch.equal(b[0].flatten().long(), b[1].flatten()) for b in batches)  # x and mask stay paired
        firsts.add(tuple(batches[0][0].flatten().long().tolist()))
    assert len(firsts) > 1  # shuffled: the first batch changes with the seed


# ---------------------------------------------------------------------- flow: masks, actnorm, temperature
def _coupling_blocks(model):
    """The masks of the flow's couplings, grouped into blocks separated by Squeeze / Split."""
    blocks, cur = [], []
    for step in model.steps:
        if isinstance(step, flow_mod.AffineCoupling):
            cur.append(step.mask)
        elif isinstance(step, (flow_mod.Squeeze, flow_mod.Split)) and cur:
            blocks.append(cur)
            cur = []
    return blocks + [cur]


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 8)])
def test_image_flow_couplings_alternate_checkerboards_and_channel_halves(shape):
    """Dinh et al.'s multi-scale flow: at each scale couplings on checkerboards (1 where (i + j) is
    even, then odd, ...), then after the squeeze on channel halves (first, second, ...), and a final
    block of checkerboards; consecutive masks are complementary, so every entry is transformed."""
    model = baselines.build("flow", shape, size="cpu")
    blocks = _coupling_blocks(model)
    assert len(blocks) == 2 * model.config["n_scales"] + 1
    for b, masks in enumerate(blocks):
        _, c, h, w = masks[0].shape
        ij = (torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2
        for i, m in enumerate(masks):
            if b % 2 == 0:  # checkerboard block
                want = (ij == i % 2).float().expand(1, c, h, w)
            else:           # channel block, after a squeeze
                want = torch.zeros(1, c, h, w)
                want[:, : c // 2] = 1.0
                want = want if i % 2 == 0 else 1 - want
            assert torch.equal(m, want), (b, i)


def test_point_flow_mixes_both_coordinates():
    """With masks that alternate between the two coordinates, each output coordinate of a (perturbed)
    point flow depends on both inputs: the autograd Jacobian has no zero entry. A flow whose couplings
    always condition on the same coordinate leaves that coordinate untouched (dz0/dx1 = 0)."""
    model = baselines.build("flow", (2,), size="cpu").double()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    masks = [s.mask for s in model.steps]
    assert all(torch.equal(a + b, torch.ones(1, 2)) for a, b in zip(masks, masks[1:]))
    x = torch.tensor([0.3, -0.4], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, 2))[0][0], x)
    assert bool((jac.abs() > 1e-4).all()), jac


def test_actnorm_initialises_to_zero_mean_unit_variance_and_counts_each_position():
    """On its first training batch, ActNorm sets bias = -mean and log_scale = -log std per channel
    (numpy recomputation), so its output has mean 0 and std 1 per channel; the log-det is
    H * W * sum(log_scale); later batches and eval mode keep the parameters."""
    g = torch.Generator().manual_seed(6)
    x = (torch.tensor([2.0, -1.0, 0.5])[None, :, None, None]
         + torch.tensor([3.0, 0.5, 1.5])[None, :, None, None] * torch.randn(16, 3, 4, 5, generator=g))
    an = flow_mod.ActNorm(3, 4).train()
    y, logdet = an(x)
    a = x.numpy()
    mean, std = a.mean((0, 2, 3)), a.std((0, 2, 3), ddof=1)
    np.testing.assert_allclose(an.bias.detach().flatten().numpy(), -mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(an.log_scale.detach().flatten().numpy(), -np.log(std), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3), atol=1e-5, rtol=0)
    assert logdet.shape == (16,)
    torch.testing.assert_close(logdet, torch.full((16,), -20 * float(np.log(std).sum())), rtol=1e-5, atol=1e-5)
    before = [an.bias.detach().clone(), an.log_scale.detach().clone()]
    an(x * 3 + 1)
    assert torch.equal(an.bias, before[0]) and torch.equal(an.log_scale, before[1])


def test_flow_sample_scales_the_prior_by_the_temperature():
    """An untrained point flow is the identity (zero last layers), so sample(n, temperature=T) is
    exactly T times the standard normal draws of the same generator."""
    model = baselines.build("flow", (2,), size="cpu")
    got = model.sample(64, generator=torch.Generator().manual_seed(7), temperature=0.5)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(got, 0.5 * z)


# ---------------------------------------------------------------------- VAE: sampling of points
def test_vae_point_samples_have_the_decoder_variance():
    """p(x|z) = N(mean(z), exp(decoder_log_var)): with a constant decoder mean c and log-variance
    log 0.25, a sample is c + 0.5 * eps, eps the normal draws that follow z in the same generator;
    and 20,000 samples have std 0.5 per coordinate."""
    model = baselines.build("vae", (2,), size="cpu", seed=0)
    c = torch.tensor([0.3, -0.2])
    with torch.no_grad():
        model.decoder[-1].weight.zero_()
        model.decoder[-1].bias.copy_(c)
        model.decoder_log_var.fill_(math.log(0.25))
    got = model.sample(8, generator=torch.Generator().manual_seed(8))
    g = torch.Generator().manual_seed(8)
    torch.randn(8, model.z_dim, generator=g)  # z, unused by a constant decoder
    torch.testing.assert_close(got, c + 0.5 * torch.randn(8, 2, generator=g))
    many = model.sample(20_000, generator=torch.Generator().manual_seed(9))
    assert bool(((many.std(0) - 0.5).abs() < 0.02).all()), many.std(0)


def test_vae_elbo_and_importance_weighted_bound_with_a_narrow_posterior():
    """An encoder fixed to mu = 0.4 and log sigma^2 = -3 (a posterior much narrower than the prior):
    the ELBO and L_k (k = 5) equal their definitions recomputed with torch.distributions, from the same
    eps draws: z = mu + sigma eps, L_k = logmeanexp_i [log p(x|z_i) + log N(z_i; 0, I) - log q(z_i|x)]."""
    D = torch.distributions
    model = baselines.build("vae", (2,), size="cpu", seed=0).eval()
    zd = model.z_dim
    with torch.no_grad():
        model.encoder[-1].weight.zero_()
        model.encoder[-1].bias.copy_(torch.cat([torch.full((zd,), 0.4), torch.full((zd,), -3.0)]))
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(11))
    mu, sigma = torch.full((6, zd), 0.4), torch.full((6, zd), math.exp(-1.5))
    q, prior = D.Normal(mu, sigma), D.Normal(0.0, 1.0)

    def log_px(z):
        mean, log_var = model.decode(z)
        return D.Normal(mean, torch.exp(0.5 * log_var)).log_prob(x).sum(1)

    with torch.no_grad():
        elbo = model.elbo(x, torch.Generator().manual_seed(12))
        iw = model.log_likelihood_iw(x, 5, torch.Generator().manual_seed(13))
        z = mu + sigma * torch.randn(6, zd, generator=torch.Generator().manual_seed(12))
        want_elbo = log_px(z) - D.kl_divergence(q, prior).sum(1)
        g = torch.Generator().manual_seed(13)
        log_w = []
        for _ in range(5):
            z = mu + sigma * torch.randn(6, zd, generator=g)
            log_w.append(log_px(z) + prior.log_prob(z).sum(1) - q.log_prob(z).sum(1))
        want_iw = torch.logsumexp(torch.stack(log_w), 0) - math.log(5)
    torch.testing.assert_close(elbo, want_elbo, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(iw, want_iw, rtol=1e-5, atol=1e-5)
