"""ddpm_core.toy: discrete chains, the simulated Gaussian chain, exact reverse steps, scores,
annealed Langevin dynamics, the L_simple weights and point-set distances."""
import math

import pytest
import torch

from ddpm_core import diffusion, losses, sampling, schedules, toy

P3 = torch.tensor([[0.9, 0.075, 0.025], [0.15, 0.8, 0.05], [0.25, 0.25, 0.5]], dtype=torch.float64)


def process(T=100, var_type="fixed_small"):
    return diffusion.GaussianDiffusion(schedules.get_betas("linear", T), var_type=var_type)


# ---------------------------------------------------------------------- discrete chains
def test_stationary_distribution_is_a_fixed_point_of_the_chain():
    pi = toy.stationary_distribution(P3)
    assert torch.allclose(pi @ P3, pi, atol=1e-12)
    assert abs(float(pi.sum()) - 1) < 1e-12 and bool((pi > 0).all())


def test_propagate_equals_matrix_powers_and_converges():
    p0 = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    p = toy.propagate(p0, P3, 60)
    assert p.shape == (61, 3)
    assert torch.allclose(p[7], p0 @ torch.linalg.matrix_power(P3, 7), atol=1e-12)
    tv = toy.total_variation(p, toy.stationary_distribution(P3))
    assert tv[0] > 0.5 and tv[-1] < 1e-4 and bool((tv[1:] <= tv[:-1] + 1e-12).all())


def test_simulated_chains_match_the_propagated_distribution():
    p0 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    states = toy.simulate_chain(P3, p0, 10, 40_000, generator=torch.Generator().manual_seed(0))
    assert states.shape == (40_000, 11) and bool((states[:, 0] == 0).all())
    emp = toy.empirical_distribution(states, 3)
    assert float(toy.total_variation(emp, toy.propagate(p0, P3, 10)).max()) < 0.01
    # a wrong chain is told apart: simulate with the transpose
    wrong = toy.empirical_distribution(toy.simulate_chain(P3.T / P3.T.sum(1, keepdim=True), p0, 10, 40_000,
                                                          generator=torch.Generator().manual_seed(0)), 3)
    assert float(toy.total_variation(wrong, toy.propagate(p0, P3, 10)).max()) > 0.05


def test_bad_transition_matrix_is_rejected_with_a_reason():
    with pytest.raises(ValueError, match="sum to 1"):
        toy.stationary_distribution([[0.5, 0.4], [0.5, 0.5]])
    with pytest.raises(ValueError, match="square"):
        toy.propagate([1.0, 0.0], [[1.0, 0.0, 0.0]], 3)


# ---------------------------------------------------------------------- the Gaussian chain
def test_step_by_step_chain_has_the_closed_form_marginal():
    d = process(100)
    x0 = torch.tensor([[0.7, -0.4]]).expand(10_000, 2).contiguous()
    traj = toy.forward_trajectories(d, x0, keep=[0, 10, 100], generator=torch.Generator().manual_seed(1))
    assert traj.shape == (3, 10_000, 2) and torch.equal(traj[0], x0)
    for idx, k in ((1, 10), (2, 100)):
        ab = float(d.alpha_bar[k - 1])  # index k = state after step k - 1
        mean, var = traj[idx].mean(0), traj[idx].var(0)
        assert torch.allclose(mean, math.sqrt(ab) * x0[0], atol=0.03)
        assert torch.allclose(var, torch.full((2,), 1 - ab), rtol=0.05)
    # the same from many different x0: regression of x_t on x_0
    many = torch.rand(40_000, 2, generator=torch.Generator().manual_seed(11)) * 2 - 1  # slope s.e. ~0.008
    fit = toy.linear_fit(toy.forward_trajectories(d, many, keep=[50], generator=torch.Generator().manual_seed(12))[0], many)
    ab = float(d.alpha_bar[49])
    assert torch.allclose(fit["slope"], torch.full((2,), math.sqrt(ab), dtype=torch.float64), atol=0.04)
    assert torch.allclose(fit["residual_var"], torch.full((2,), 1 - ab, dtype=torch.float64), rtol=0.05)


def test_chain_with_a_wrong_step_fails_the_marginal_check():
    d = process(100)
    x0 = torch.ones(2000, 2)
    g = torch.Generator().manual_seed(2)
    x = x0
    for t in range(100):  # forgot the sqrt(1 - beta) shrinkage
        x = x + math.sqrt(float(d.betas[t])) * torch.randn(x.shape, generator=g)
    assert abs(float(x.mean()) - math.sqrt(float(d.alpha_bar[-1]))) > 0.2


def test_empirical_posterior_recovers_the_closed_form_posterior():
    d = process(50)
    x0 = torch.tensor([[0.5, -0.8]]).expand(40_000, 2).contiguous()
    t = 20  # pairs: state after step t - 1 (index t) and after step t (index t + 1)
    traj = toy.forward_trajectories(d, x0, keep=[t, t + 1], generator=torch.Generator().manual_seed(3))
    fit = toy.linear_fit(traj[0], traj[1])
    tab = d._tables64
    assert torch.allclose(fit["slope"], tab["posterior_mean_coef2"][t].expand(2), atol=0.01)
    assert torch.allclose(fit["intercept"], tab["posterior_mean_coef1"][t] * x0[0].double(), atol=0.01)
    assert torch.allclose(fit["residual_var"], tab["posterior_variance"][t].expand(2), rtol=0.03)
    for key, true in (("slope", tab["posterior_mean_coef2"][t]), ("intercept", tab["posterior_mean_coef1"][t] * x0[0]),
                      ("residual_var", tab["posterior_variance"][t])):  # within 5 standard errors
        assert bool(((fit[key] - true).abs() < 5 * fit[key + "_se"]).all()), key
    assert float(fit["slope_se"].max()) < 0.01  # and the standard errors are not vacuous
    mean, var, _ = d.q_posterior(x0[:1], traj[1][:1], torch.tensor([t]))
    assert torch.allclose(mean[0].double(), fit["slope"] * traj[1][0].double() + fit["intercept"], atol=0.02)


def test_stacked_fits_give_the_largest_deviation_in_standard_errors():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5000, 2, generator=g)
    fits = [toy.linear_fit(a * x + 0.3 * torch.randn(x.shape, generator=g), x) for a in (0.5, 2.0)]
    stacked = toy.stack_fits(fits)
    assert set(stacked) == set(fits[0]) and stacked["slope"].shape == (2, 2)
    assert torch.equal(stacked["slope"][1], fits[1]["slope"])
    truth = {"slope": torch.tensor([[0.5], [2.0]]), "residual_var": 0.09}  # [S, 1] and a scalar broadcast
    z = toy.max_z(stacked, truth)
    want = max(float(((f["slope"] - a) / f["slope_se"]).abs().max()) for f, a in zip(fits, (0.5, 2.0)))
    assert z["slope"] == pytest.approx(want) and 0 < z["slope"] < 5 and z["residual_var"] < 5
    # a wrong prediction is many standard errors off
    assert toy.max_z(stacked, {"slope": torch.tensor([[0.55], [2.0]])})["slope"] > 8
    with pytest.raises(KeyError, match="missing"):
        toy.max_z(stacked, {"slope_se": 1.0})
    with pytest.raises(ValueError, match="at least one"):
        toy.stack_fits([])


# ---------------------------------------------------------------------- reverse step, 1-D
def test_reverse_step_of_gaussian_data_is_exactly_the_gaussian_posterior():
    d = process(100)
    t, x_t, s = 30, 0.3, 0.5
    grid, p = toy.reverse_step_density(x_t, d.betas[t], d.alpha_bar[t - 1], modes=[0.0], mode_std=s)
    assert abs(float(torch.trapezoid(p, grid)) - 1) < 1e-9
    assert toy.gaussian_gap(grid, p) < 1e-6
    # closed form: prior N(0, v), likelihood N(x_t; sqrt(a) y, beta)
    beta, ab_prev = float(d.betas[t]), float(d.alpha_bar[t - 1])
    v = ab_prev * s ** 2 + 1 - ab_prev
    prec = 1 / v + (1 - beta) / beta
    mean = (math.sqrt(1 - beta) * x_t / beta) / prec
    assert abs(float(torch.trapezoid(p * grid, grid)) - mean) < 1e-6


def test_reverse_step_is_nearly_gaussian_for_small_steps_only():
    d = process(1000)
    small = toy.gaussian_gap(*toy.reverse_step_density(0.0, d.betas[500], d.alpha_bar[499], [-1.0, 1.0], 0.1))
    big = sampling.respace(d, 4)
    large = toy.gaussian_gap(*toy.reverse_step_density(0.0, big.betas[1], big.alpha_bar[0], [-1.0, 1.0], 0.1))
    assert small < 1e-3 and large > 0.05
    with pytest.raises(ValueError, match="beta"):
        toy.reverse_step_density(0.0, 1.5, 0.5, [0.0], 0.1)


# ---------------------------------------------------------------------- scores
def test_mixture_score_is_the_gradient_of_the_log_density():
    modes, s = torch.tensor([[0.8, 0.0], [-0.8, 0.0], [0.0, 0.8]]), 0.1
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64).requires_grad_()
    ab = torch.rand(64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    (grad,) = torch.autograd.grad(toy.mixture_log_density(x, ab, modes, s).sum(), x)
    assert torch.allclose(toy.mixture_score(x.detach(), ab, modes, s), grad, atol=1e-10)


def test_optimal_eps_is_minus_scaled_score_tweedie():
    """E[eps | x_t] from many data points equals -sqrt(1 - abar) * exact score of q(x_t)."""
    g = torch.Generator().manual_seed(6)
    modes, s = torch.tensor([[0.8, 0.0], [-0.8, 0.0]], dtype=torch.float64), 0.1
    data = modes[torch.randint(2, (20_000,), generator=g)] + s * torch.randn(20_000, 2, generator=g, dtype=torch.float64)
    x_t = torch.randn(50, 2, generator=g, dtype=torch.float64)
    ab = 0.3
    eps_opt = toy.empirical_optimal_eps(x_t, ab, data)
    exact = -math.sqrt(1 - ab) * toy.mixture_score(x_t, ab, modes, s)
    assert (eps_opt - exact).abs().max() < 0.05
    d = process(100)
    t = torch.full((50,), 40)
    sc = toy.score_from_eps(d, exact, t)
    assert torch.allclose(toy.eps_from_score(d, sc, t), exact, atol=1e-12)


def test_model_score_uses_the_eps_output():
    d = process(50)
    x = torch.randn(5, 2)
    t = torch.full((5,), 30)
    got = toy.model_score(lambda x_t, t: 2 * x_t, d, x, t)
    assert torch.allclose(got, -2 * x / math.sqrt(1 - float(d.alpha_bar[30])), atol=1e-6)
    with pytest.raises(ValueError, match="predicts eps"):
        toy.model_score(lambda x_t, t: x_t, diffusion.GaussianDiffusion(d.betas, mean_type="x0"), x, t)


def test_annealed_langevin_with_the_exact_score_samples_the_data():
    d = process(200)
    modes, s = torch.tensor([[0.8, 0.0], [-0.8, 0.0]]), 0.1

    def score(x, t):
        return toy.mixture_score(x, d.alpha_bar[t].to(x.dtype), modes, s)

    levels = toy.langevin_levels(d, 40)
    assert levels[0] == 199 and levels[-1] == 0 and levels == sorted(set(levels), reverse=True)
    x = toy.annealed_langevin(score, d, (2000, 2), levels=levels, steps_per_level=10, step_scale=1.0,
                              generator=torch.Generator().manual_seed(7))
    spread = (x - modes[(x[:, 0] < 0).long()]).std(0)  # data: std 0.1 around each mode
    assert bool((spread > 0.09).all() and (spread < 0.115).all()), spread
    assert abs(float((x[:, 0] > 0).float().mean()) - 0.5) < 0.05  # both modes, equally
    with pytest.raises(ValueError, match="decreasing"):
        toy.annealed_langevin(score, d, (4, 2), levels=[0, 10])


# ---------------------------------------------------------------------- L_simple and the bound
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_vb_term_is_weighted_eps_mse_plus_constant(var_type):
    d = process(100, var_type)
    g = torch.Generator().manual_seed(8)
    x0 = torch.rand(16, 2, generator=g) * 2 - 1
    t = torch.randint(1, 100, (16,), generator=g)
    noise = torch.randn(16, 2, generator=g)
    x_t = d.q_sample(x0, t, noise)
    eps_pred = noise + 0.3 * torch.randn(16, 2, generator=g)
    vb_nats = d.vb_terms_bpd(eps_pred.double(), x0.double(), x_t.double(), t, clip_denoised=False) * losses.LOG2
    mse = ((eps_pred - noise) ** 2).double().mean(1)
    expected = toy.vb_weight(d)[t] * mse + toy.vb_constant(d)[t]
    assert torch.allclose(vb_nats, expected, rtol=1e-4, atol=1e-9)
    if var_type == "fixed_small":
        assert float(toy.vb_constant(d)[1:].abs().max()) < 1e-12
    else:
        assert bool((toy.vb_constant(d)[1:] > 0).all())


# ---------------------------------------------------------------------- distances, animation
def test_energy_distance_separates_distributions():
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(800, 2, generator=g), torch.randn(800, 2, generator=g)
    assert abs(toy.energy_distance(a, b)) < 0.02
    assert toy.energy_distance(a, b + 1.0) > 0.5
    plug_in = toy.energy_distance(a, b, unbiased=False)  # never negative, biased up
    assert 0 < plug_in < 0.02 and plug_in > toy.energy_distance(a, b)
    assert torch.allclose(toy.nearest_distance(torch.zeros(1, 2), torch.tensor([[3.0, 4.0], [1.0, 0.0]])),
                          torch.tensor([1.0], dtype=torch.float64))


def test_normal_energy_null_is_the_spread_of_two_normal_samples():
    ref = torch.randn(500, 2, generator=torch.Generator().manual_seed(7))
    null = toy.normal_energy_null(ref, n_pairs=5, seed=100)
    assert len(null) == 5 and max(abs(v) for v in null) < 0.02
    first = torch.randn(500, 2, generator=torch.Generator().manual_seed(100))  # sample k: seed + k
    assert null[0] == toy.energy_distance(first, ref)
    assert toy.normal_energy_null(ref, n_pairs=5, seed=100) == null  # seeded
    assert toy.energy_distance(ref + 0.5, torch.randn(500, 2)) > 5 * max(null)
    with pytest.raises(ValueError, match="n_pairs"):
        toy.normal_energy_null(ref, n_pairs=0)


def test_animate_points_makes_jshtml():
    frames = [torch.randn(30, 2) for _ in range(3)]
    html = toy.animate_points(frames, titles=["a", "b", "c"], reference=torch.randn(10, 2)).data
    assert "<script" in html and html.count("data:image/png") >= 3
    with pytest.raises(ValueError, match="one per frame"):
        toy.animate_points(frames, titles=["a"])
