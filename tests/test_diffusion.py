"""GaussianDiffusion against closed forms and independent computations."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ddpm_core import diffusion, losses, schedules

GaussianDiffusion = diffusion.GaussianDiffusion


def make(T=100, schedule="linear", **kw):
    return GaussianDiffusion(schedules.get_betas(schedule, T), **kw)


def test_q_sample_empirical_moments_match_closed_form():
    d = make(1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([0.8, -0.3, 0.0], dtype=torch.float64).repeat(200_000, 1)
    for step in (0, 250, 999):
        t = torch.full((len(x0),), step, dtype=torch.long)
        x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        ab = float(np.prod(1 - schedules.get_betas("linear", 1000).numpy()[: step + 1]))
        np.testing.assert_allclose(x_t.mean(0).numpy(), math.sqrt(ab) * x0[0].numpy(), atol=4e-3)
        np.testing.assert_allclose(x_t.var(0).numpy(), np.full(3, 1 - ab), rtol=1.5e-2, atol=1e-6)


def test_posterior_matches_formula_and_direct_gaussian_product():
    d = make(200, "cosine")
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(6, 2, dtype=torch.float64, generator=g)
    x_t = torch.randn(6, 2, dtype=torch.float64, generator=g)
    t = torch.tensor([1, 5, 50, 100, 150, 199])
    mean, var, log_var = d.q_posterior(x0, x_t, t)
    b = schedules.get_betas("cosine", 200).numpy()
    ab = np.cumprod(1 - b)
    for k, s in enumerate(t.tolist()):
        ab_prev = ab[s - 1]
        # q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(ab_{t-1}) x_0, 1 - ab_{t-1})
        precision = (1 - b[s]) / b[s] + 1 / (1 - ab_prev)
        mu = (math.sqrt(1 - b[s]) * x_t[k].numpy() / b[s] + math.sqrt(ab_prev) * x0[k].numpy() / (1 - ab_prev)) / precision
        np.testing.assert_allclose(mean[k].numpy(), mu, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(var[k].numpy(), 1 / precision, rtol=1e-10)
        # the formula of Ho et al. eq. 7
        np.testing.assert_allclose(var[k].numpy(), (1 - ab_prev) / (1 - ab[s]) * b[s], rtol=1e-12)
        np.testing.assert_allclose(log_var[k].numpy(), np.log(1 / precision), rtol=1e-10)


def test_posterior_at_first_step_returns_x0_and_clipped_log_variance():
    d = make(100)
    x0, x_t = torch.randn(3, 4), torch.randn(3, 4)
    mean, var, log_var = d.q_posterior(x0, x_t, torch.zeros(3, dtype=torch.long))
    assert torch.allclose(mean, x0, atol=1e-6) and bool((var == 0).all())
    assert torch.allclose(log_var, torch.full_like(x0, math.log(float(d.table("posterior_variance")[1]))))


@pytest.mark.parametrize("mean_type", ["eps", "x0", "mu"])
def test_p_mean_variance_of_a_perfect_model_equals_the_posterior(mean_type):
    d = make(100, mean_type=mean_type)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 40, 99])
    x_t = d.q_sample(x0, t, noise)
    target = {"eps": noise, "x0": x0, "mu": d.q_posterior(x0, x_t, t)[0]}[mean_type]
    out = d.p_mean_variance(target, x_t, t, clip_denoised=False)
    assert torch.allclose(out["pred_x0"], x0, atol=1e-8)
    assert torch.allclose(out["mean"], d.q_posterior(x0, x_t, t)[0], atol=1e-8)


def test_variance_types_follow_the_reference_definitions():
    T = 50
    b = schedules.get_betas("linear", T)
    tab = schedules.derived(b)
    x_t = torch.zeros(3, 2, dtype=torch.float64)
    t = torch.tensor([0, 1, 49])
    large = GaussianDiffusion(b, var_type="fixed_large").p_mean_variance(torch.zeros_like(x_t), x_t, t)
    assert torch.allclose(large["variance"][:, 0], torch.stack([tab["posterior_variance"][1], b[1], b[49]]))
    # and its log (which the decoder term L_0 uses at t = 0) is that of the same table, not log beta_0
    assert torch.allclose(large["log_variance"][:, 0],
                          torch.log(torch.stack([tab["posterior_variance"][1], b[1], b[49]])), rtol=1e-12)
    small = GaussianDiffusion(b, var_type="fixed_small").p_mean_variance(torch.zeros_like(x_t), x_t, t)
    assert torch.allclose(small["variance"][:, 0], tab["posterior_variance"][t])
    v = torch.tensor([[-1.0, -1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]], dtype=torch.float64)
    rng = GaussianDiffusion(b, var_type="learned_range", loss_type="hybrid").p_mean_variance(v, x_t, t)
    lo, hi = tab["posterior_log_variance_clipped"][t], torch.log(b[t])
    frac = (v[:, 2:] + 1) / 2
    assert torch.allclose(rng["log_variance"], frac * hi[:, None] + (1 - frac) * lo[:, None])
    learned = GaussianDiffusion(b, var_type="learned", loss_type="vlb").p_mean_variance(v, x_t, t)
    assert torch.allclose(learned["variance"], v[:, 2:].exp())


def test_vb_terms_at_first_step_equal_decoder_nll():
    d = make(100)
    g = torch.Generator().manual_seed(3)
    x0 = (torch.randint(0, 256, (5, 1, 4, 4), generator=g).double() / 127.5) - 1
    x_t = d.q_sample(x0, torch.zeros(5, dtype=torch.long))
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.zeros(5, dtype=torch.long)
    out = d.p_mean_variance(eps, x_t, t)
    nll = -losses.discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
    expected = nll.mean(dim=(1, 2, 3)) / math.log(2)
    assert torch.allclose(d.vb_terms_bpd(eps, x0, x_t, t), expected)
    # and the KL for t > 0
    t1 = torch.full((5,), 7)
    x_t1 = d.q_sample(x0, t1)
    out1 = d.p_mean_variance(eps, x_t1, t1)
    qm, _, qlv = d.q_posterior(x0, x_t1, t1)
    kl = losses.normal_kl(qm, qlv, out1["mean"], out1["log_variance"]).mean(dim=(1, 2, 3)) / math.log(2)
    assert torch.allclose(d.vb_terms_bpd(eps, x0, x_t1, t1), kl)


def test_bpd_of_a_perfect_oracle_equals_the_analytic_bound():
    """Data: one known 8-bit image. The oracle predicts x_0 exactly, so every KL term is 0 and the
    bound is the prior KL plus the decoder's mass of the true bin under N(x_0, beta~_1)."""
    T = 100
    d = make(T, mean_type="x0")
    x0 = torch.tensor([[-1.0, -0.2, 27 / 127.5 - 1, 1.0]], dtype=torch.float64).reshape(1, 1, 2, 2)
    oracle = lambda x_t, t: x0.expand_as(x_t)
    out = d.bpd(oracle, x0, noise_generator=torch.Generator().manual_seed(0))
    assert out["vb"].shape == (1, T) and out["mse"].shape == (1, T)
    assert torch.allclose(out["vb"][:, 1:], torch.zeros(1, T - 1, dtype=torch.float64), atol=1e-9)
    ab_T = float(d.alpha_bar[-1])
    prior = np.mean([0.5 * (-1 - math.log(1 - ab_T) + (1 - ab_T) + ab_T * v ** 2) for v in x0.flatten().tolist()]) / math.log(2)
    sigma = math.sqrt(float(d.table("posterior_variance")[1]))
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
    inner = cdf(1 / 255 / sigma) - cdf(-1 / 255 / sigma)   # interior pixels: the bin around x0
    edge = cdf(1 / 255 / sigma)                            # edge pixels: the open-ended bin
    decoder = -(2 * math.log(inner) + 2 * math.log(edge)) / 4 / math.log(2)
    assert float(out["prior_bpd"]) == pytest.approx(prior, rel=1e-9)
    assert float(out["total_bpd"]) == pytest.approx(prior + decoder, rel=5e-3)  # tanh CDF approximation


def test_prior_bpd_is_near_zero_for_the_paper_schedule():
    d = make(1000)
    x0 = torch.rand(8, 3, 4, 4) * 2 - 1
    assert float(d.prior_bpd(x0).max()) < 1e-4


def test_training_losses_targets_and_scales():
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(4, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 200, 399])
    zero = lambda x, t: torch.zeros_like(x)
    d = make(400)
    assert torch.allclose(d.training_losses(zero, x0, t, noise)["loss"], (noise ** 2).mean(dim=(1, 2, 3)))
    dx0 = make(400, mean_type="x0")
    assert torch.allclose(dx0.training_losses(zero, x0, t, noise)["loss"], (x0 ** 2).mean(dim=(1, 2, 3)))
    dmu = make(400, mean_type="mu")
    mu = dmu.q_posterior(x0, dmu.q_sample(x0, t, noise), t)[0]
    assert torch.allclose(dmu.training_losses(zero, x0, t, noise)["loss"], (mu ** 2).mean(dim=(1, 2, 3)))
    dv = make(400, loss_type="vlb")
    x_t = dv.q_sample(x0, t, noise)
    vlb = dv.training_losses(zero, x0, t, noise)["loss"]
    assert torch.allclose(vlb, 400 * dv.vb_terms_bpd(torch.zeros_like(x0), x0, x_t, t, clip_denoised=False))


def test_hybrid_loss_scales_vb_and_stops_its_gradient_into_the_mean():
    T = 400
    d = make(T, var_type="learned_range", loss_type="hybrid")
    x0 = torch.rand(3, 1, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 5, 300])
    w = torch.zeros(1, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    model = lambda x, t: w.expand(len(x), 2, 4, 4) + 0 * torch.cat([x, x], 1)
    terms = d.training_losses(model, x0, t, noise)
    x_t = d.q_sample(x0, t, noise)
    vb = d.vb_terms_bpd(model(x_t, t).detach(), x0, x_t, t, clip_denoised=False)
    assert torch.allclose(terms["vb"], vb * T / 1000)
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    grad_vb, = torch.autograd.grad(terms["vb"].sum(), w, retain_graph=True)
    assert float(grad_vb[0, 0]) == 0.0 and float(grad_vb[0, 1]) != 0.0  # the mean gets none of L_vlb


def test_respaced_bound_with_all_steps_is_the_original():
    from ddpm_core import sampling
    d = make(60, "cosine", var_type="learned_range", loss_type="hybrid")
    r = sampling.respace(d, 60)
    assert torch.allclose(r.betas, d.betas, rtol=1e-12) and torch.equal(r.timestep_map, torch.arange(60))
    for k in ("posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2"):
        assert torch.allclose(r.table(k), d.table(k), rtol=1e-10)


def test_clear_errors_for_bad_names_steps_and_outputs():
    with pytest.raises(ValueError, match="'eps'.*'x0'.*'mu'"):
        make(mean_type="epsilon")
    with pytest.raises(ValueError, match="fixed_small"):
        make(var_type="small")
    with pytest.raises(ValueError, match="hybrid"):
        make(loss_type="l2")
    with pytest.raises(ValueError, match="no gradient"):
        make(var_type="learned_range", loss_type="simple")
    with pytest.raises(ValueError, match="at least 2 steps.*respace to 2"):
        GaussianDiffusion(torch.tensor([0.5], dtype=torch.float64), var_type="fixed_large")
    from ddpm_core import sampling
    with pytest.raises(ValueError, match="at least 2 steps"):
        sampling.respace(make(100), 1)
    assert sampling.respace(make(100), 2).num_timesteps == 2
    d = make(100)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"0\.\.99"):
        d.q_sample(x, torch.tensor([0, 100]))
    with pytest.raises(ValueError, match=r"shape \[2\]"):
        d.q_sample(x, torch.tensor([0]))
    with pytest.raises(TypeError, match="integer tensor"):
        d.q_sample(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="expected \\(2, 3, 4, 4\\)"):
        d.p_mean_variance(torch.zeros(2, 6, 4, 4), x, torch.tensor([1, 2]))
    learned = make(100, var_type="learned_range", loss_type="hybrid")
    with pytest.raises(ValueError, match="2 x 3 channels"):
        learned.p_mean_variance(torch.zeros(2, 3, 4, 4), x, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="expected"):
        learned.p_mean_variance(torch.zeros(2, 6, 4), x, torch.tensor([1, 2]))


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(1, 3), h=st.integers(1, 6), w=st.integers(1, 6),
       T=st.integers(21, 300), var_type=st.sampled_from(["fixed_small", "fixed_large", "learned_range"]))
def test_shapes_and_finiteness_over_batches_images_and_T(n, c, h, w, T, var_type):
    loss = "hybrid" if var_type == "learned_range" else "simple"
    d = make(T, var_type=var_type, loss_type=loss)
    g = torch.Generator().manual_seed(n * 1000 + T)
    x0 = torch.rand(n, c, h, w, generator=g) * 2 - 1
    t = torch.randint(0, T, (n,), generator=g)
    out_c = 2 * c if var_type == "learned_range" else c
    model = lambda x_t, t: torch.tanh(torch.randn(n, out_c, h, w, generator=g))
    terms = d.training_losses(model, x0, t)
    assert terms["loss"].shape == (n,) and bool(torch.isfinite(terms["loss"]).all())
    x_t = d.q_sample(x0, t)
    out = d.p_mean_variance(model(x_t, t), x_t, t)
    for k in ("mean", "variance", "log_variance", "pred_x0"):
        assert out[k].shape == x0.shape and out[k].dtype == x0.dtype
    assert float(out["pred_x0"].abs().max()) <= 1.0
    assert d.vb_terms_bpd(model(x_t, t), x0, x_t, t).shape == (n,)


def test_tables_are_cached_per_device_and_dtype():
    d = make(50)
    a = d.table("alpha_bar", "cpu", torch.float32)
    assert a is d.table("alpha_bar", "cpu", torch.float32) and a.dtype == torch.float32
    assert d.table("alpha_bar").dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_use_float32_tables(dtype):
    """The cosine schedule at T = 4000 has 1/sqrt(alpha_bar_{T-1}) ~ 81,165, above float16's
    largest number (65,504): tables of at least float32 (as the reference's .float()) keep the
    last step finite; the result is float32."""
    d = make(4000, "cosine")
    assert float(d.table("sqrt_recip_alpha_bar")[-1]) > torch.finfo(torch.float16).max
    x_t = torch.randn(2, 3, 4, 4).to(dtype)
    t = torch.full((2,), 3999)
    out = d.p_mean_variance(torch.zeros_like(x_t), x_t, t)
    assert out["mean"].dtype == torch.float32
    assert all(bool(torch.isfinite(out[k]).all()) for k in ("mean", "pred_x0", "variance"))
    ref = d.p_mean_variance(torch.zeros(2, 3, 4, 4), x_t.float(), t)
    torch.testing.assert_close(out["mean"], ref["mean"])


def test_bpd_with_steps_batched_together_equals_one_step_per_network_call():
    """Several steps share a network call when the batch is small; the noise is still drawn step by
    step, so the bound, its terms and the errors equal those of one step per call (float64)."""
    T = 50
    d = make(T)
    torch.manual_seed(0)
    w = torch.randn(4, 4, dtype=torch.float64) * 0.1
    calls = []

    def net(x_t, t):  # a fixed, time-dependent linear "network" on 2 x 2 images
        calls.append(len(x_t))
        return (x_t.flatten(1) @ w).view_as(x_t) * (1 + t.double().view(-1, 1, 1, 1) / T)

    x0 = torch.rand(3, 1, 2, 2, dtype=torch.float64) * 2 - 1
    one = d.bpd(net, x0, noise_generator=torch.Generator().manual_seed(7), max_batch=3)
    assert calls == [3] * T
    calls.clear()
    many = d.bpd(net, x0, noise_generator=torch.Generator().manual_seed(7), max_batch=64)
    assert calls == [63] * (T // 21) + [3 * (T % 21)]  # 21 steps per call
    for key in ["total_bpd", "vb", "mse", "x0_mse", "prior_bpd"]:
        torch.testing.assert_close(many[key], one[key], rtol=1e-12, atol=1e-12)
