"""Tests added by a mutation audit: each pins a piece of the diffusion maths that the other tests
let change unnoticed, against an independent computation (a closed form, a float64 numpy
recomputation of the paper's formula, or diffusers' DDIMScheduler as the oracle)."""
import math

import numpy as np
import pytest
import torch

from ddpm_core import diffusion, resample, sampling, schedules

try:  # imported here, not in the test, so that the test's time is the step's and not the import's
    import diffusers
except ImportError:  # pragma: no cover - diffusers is a test dependency (pyproject's [test] extra)
    diffusers = None

GaussianDiffusion = diffusion.GaussianDiffusion


@pytest.mark.skipif(diffusers is None, reason="diffusers (the oracle) is not installed")
def test_ddim_step_with_fractional_eta_matches_diffusers():
    """eta = 0.5 (the other tests use only 0 and 1, where eta and eta**2 agree): our DDIM step equals
    diffusers' DDIMScheduler.step in float64, i.e. sigma = eta * sqrt((1-a')/(1-a)) sqrt(1-a/a')."""
    T, n, eta = 1000, 10, 0.5
    betas = schedules.get_betas("cosine", T)
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, beta_schedule="squaredcos_cap_v2", clip_sample=True,
                                    set_alpha_to_one=True, timestep_spacing="leading")
    sched.set_timesteps(n)
    assert torch.allclose(sched.betas.double(), betas, atol=1e-7)
    sched.betas = betas.clone()  # compare the mathematics in float64, not diffusers' float32 rounding
    sched.alphas = 1.0 - betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    d = sampling.respace(GaussianDiffusion(betas), f"ddim{n}")
    assert d.timestep_map.flip(0).tolist() == sched.timesteps.tolist()
    g = torch.Generator().manual_seed(3)
    x_t = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    for i, step in enumerate(sched.timesteps.tolist()):
        model_out = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
        noise = torch.randn(x_t.shape, generator=g, dtype=torch.float64)
        theirs = sched.step(model_out, step, x_t, eta=eta, use_clipped_model_output=True,
                            variance_noise=noise).prev_sample
        ours, _, _ = sampling.ddim_step(lambda x, t: model_out, d, x_t, n - 1 - i, noise, eta=eta)
        torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
        x_t = theirs


def test_second_moment_sampler_uses_root_mean_square_of_varying_losses():
    """p_t is proportional to sqrt(mean of L_t^2) over the history (Nichol & Dhariwal eq. 18), not to
    the mean |L_t|: here every step has mean loss 2 but different second moments, so p is not uniform."""
    T = 3
    s = resample.LossSecondMomentSampler(T)
    history = np.array([[1.0, 3.0] * 5, [2.0] * 10, [0.0, 4.0] * 5])  # [T x 10], each row's mean is 2
    for k in range(10):
        s.update_with_losses(torch.arange(T), torch.from_numpy(history[:, k]))
    rms = np.sqrt((history ** 2).mean(axis=1))
    expected = rms / rms.sum() * (1 - 0.001) + 0.001 / T
    np.testing.assert_allclose(s.probabilities().numpy(), expected, rtol=1e-12)
    t, w = s.sample(50, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(w.double().numpy(), 1.0 / (T * expected[t.numpy()]), rtol=1e-6)


def test_bpd_error_columns_follow_the_closed_form_for_an_offset_x0_predictor():
    """A model predicting x_0 + c (mean_type "x0", no clipping) has, at every step, x0_mse = mean(c^2)
    and eps error -c sqrt(snr_t), so mse = mean(c^2) * snr_t, whatever the noise: pins that bpd's
    ``x0_mse`` (the rate-distortion RMSE) and ``mse`` are squared errors of x_0 and eps."""
    T = 25
    d = GaussianDiffusion(schedules.get_betas("cosine", T), mean_type="x0")
    x0 = torch.tensor([[-0.5, 0.25, 0.0, 0.75], [0.5, -0.25, 1.0, -1.0]], dtype=torch.float64).view(2, 1, 2, 2)
    c = torch.tensor([[0.1, -0.3, 0.2, 0.0], [-0.4, 0.1, 0.1, 0.05]], dtype=torch.float64).view(2, 1, 2, 2)
    model = lambda x_t, t: (x0 + c).repeat(len(x_t) // len(x0), 1, 1, 1)  # bpd stacks steps as x0.repeat(k)
    out = d.bpd(model, x0, clip_denoised=False, noise_generator=torch.Generator().manual_seed(0))
    c2 = (c.numpy() ** 2).reshape(2, -1).mean(axis=1)                                   # [N]
    ab = np.cumprod(1.0 - schedules.get_betas("cosine", T).numpy())
    snr = ab / (1.0 - ab)                                                                # [T]
    np.testing.assert_allclose(out["x0_mse"].numpy(), np.repeat(c2[:, None], T, axis=1), rtol=1e-10)
    np.testing.assert_allclose(out["mse"].numpy(), c2[:, None] * snr[None, :], rtol=1e-8)


def _tanh_cdf(v):
    """The reference code's tanh approximation of the standard normal CDF, in numpy float64."""
    return 0.5 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))


def test_decoder_nll_of_a_mu_model_uses_its_raw_mean_even_when_x0_is_clipped():
    """mean_type "mu": at t = 0 the decoder is N(model output, beta~_1) (the reference keeps the
    network's mean; only pred_x0 is clipped), recomputed in numpy from Ho et al. eq. 13. Outputs
    outside [-1, 1] make a decoder fed the clipped pred_x0 give a different NLL."""
    T = 30
    d = GaussianDiffusion(schedules.get_betas("linear", T), mean_type="mu")
    x0 = torch.tensor([0, 40, 128, 255, 3, 250], dtype=torch.float64).view(1, 1, 2, 3) / 127.5 - 1
    mu = torch.tensor([-1.02, -0.7, 0.01, 1.03, -0.95, 1.2], dtype=torch.float64).view(1, 1, 2, 3)
    t = torch.zeros(1, dtype=torch.long)
    x_t = d.q_sample(x0, t, torch.zeros_like(x0))
    got = d.vb_terms_bpd(mu, x0, x_t, t)  # clip_denoised=True by default
    b = schedules.get_betas("linear", T).numpy()
    ab = np.cumprod(1 - b)
    sigma = math.sqrt(b[1] * (1 - ab[0]) / (1 - ab[1]))  # beta~_0 = 0 is replaced by beta~_1
    x, m = x0.numpy().ravel(), mu.numpy().ravel()
    plus, minus = _tanh_cdf((x - m + 1 / 255) / sigma), _tanh_cdf((x - m - 1 / 255) / sigma)
    p = np.where(x < -0.999, plus, np.where(x > 0.999, 1 - minus, plus - minus))
    expected = -np.log(np.maximum(p, 1e-12)).mean() / math.log(2)
    assert float(got) == pytest.approx(expected, rel=1e-9)
