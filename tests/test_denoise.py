"""Denoising with a diffusion model: the sigma <-> step map, the truncated chain, and the baselines,
checked against closed forms (Gaussian data, a single data point) and scipy."""
import math

import numpy as np
import pytest
import torch

from ddpm_core import denoise, diffusion, schedules


def proc(schedule="linear", T=1000, **kw):
    return diffusion.GaussianDiffusion(schedules.get_betas(schedule, T), **kw)


def gaussian_oracle(d, s):
    """The exact eps-predictor for data x0 ~ N(0, s^2 I): E[eps | x_t] (Tweedie / Wiener)."""
    def model(x_t, t):
        ab = d.alpha_bar.to(x_t.dtype)[t].view(-1, *([1] * (x_t.ndim - 1)))
        return torch.sqrt(1 - ab) * x_t / (ab * s ** 2 + 1 - ab)
    return model


def point_oracle(d, x_star):
    """The exact eps-predictor when the data is the single image x_star."""
    def model(x_t, t):
        ab = d.alpha_bar.to(x_t.dtype)[t].view(-1, *([1] * (x_t.ndim - 1)))
        return (x_t - ab.sqrt() * x_star) / (1 - ab).sqrt()
    return model


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_step_for_sigma_inverts_sigma_at_step(schedule):
    d = proc(schedule)
    for t in [0, 3, 50, 200, 600, 900]:
        assert denoise.step_for_sigma(d, denoise.sigma_at_step(d, t)) == t
    ab = float(d.alpha_bar[123])
    assert denoise.sigma_at_step(d, 123) == pytest.approx(math.sqrt((1 - ab) / ab), rel=1e-12)


def test_scaled_observation_is_the_forward_process_state():
    d = proc()
    t = 250
    sigma = denoise.sigma_at_step(d, t)
    x0 = torch.rand(3, 1, 5, 5, dtype=torch.float64) * 2 - 1
    eps = torch.randn_like(x0)
    y = x0 + sigma * eps
    x_t = d.q_sample(x0, torch.full((3,), t), eps)
    assert torch.allclose(math.sqrt(float(d.alpha_bar[t])) * y, x_t, atol=1e-12)


def test_step_for_sigma_rejects_bad_levels():
    d = proc()
    with pytest.raises(ValueError, match="positive"):
        denoise.step_for_sigma(d, 0.0)
    with pytest.raises(ValueError, match="noisier than the last step"):
        denoise.step_for_sigma(d, 1e4)
    with pytest.raises(ValueError, match="non-negative"):
        denoise.add_noise(torch.zeros(1, 1, 2, 2), -1.0)


def test_truncated_process_has_the_prefix_tables():
    d = proc("cosine")
    p = denoise.truncate(d, 99)
    assert p.num_timesteps == 100
    for name in ("alpha_bar", "posterior_variance", "posterior_mean_coef1", "posterior_log_variance_clipped"):
        assert torch.allclose(p.table(name), d.table(name)[:100], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="0..999"):
        denoise.truncate(d, 1000)


def test_one_step_is_the_wiener_filter_for_gaussian_data():
    d, s, sigma = proc(), 0.3, 0.2
    y = denoise.add_noise(torch.zeros(4, 1, 6, 6), 1.0, torch.Generator().manual_seed(0)) * 0.4
    t = denoise.step_for_sigma(d, sigma)
    out = denoise.denoise_one_step(gaussian_oracle(d, s), d, y, sigma)
    sig_t = denoise.sigma_at_step(d, t)  # the step's own noise level
    wiener = s ** 2 / (s ** 2 + sig_t ** 2) * y
    assert torch.allclose(out, wiener.clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("steps", [None, 20])
def test_chain_samples_the_gaussian_posterior(steps):
    d, s, sigma = proc(), 0.3, 0.25
    gen = torch.Generator().manual_seed(1)
    y = torch.full((1, 1, 40, 50), 0.2).expand(40, -1, -1, -1).contiguous()  # 80,000 equal pixels
    out = denoise.denoise_chain(gaussian_oracle(d, s), d, y, sigma, steps=steps, generator=gen)
    sig_t = denoise.sigma_at_step(d, denoise.step_for_sigma(d, sigma))
    post_mean = s ** 2 / (s ** 2 + sig_t ** 2) * 0.2
    post_var = s ** 2 * sig_t ** 2 / (s ** 2 + sig_t ** 2)
    assert float(out.mean()) == pytest.approx(post_mean, abs=0.01)
    if steps is None:
        assert float(out.var()) == pytest.approx(post_var, rel=0.1)
    else:  # coarse steps with the variance beta~ under-disperse: the spread shrinks, but not by half
        assert 0.6 * post_var < float(out.var()) < 0.95 * post_var


def test_chain_and_one_step_recover_a_single_data_point():
    d = proc("cosine", 200)
    x_star = torch.linspace(-0.9, 0.9, 16).view(1, 1, 4, 4)
    y = denoise.add_noise(x_star.expand(3, -1, -1, -1), 0.5, torch.Generator().manual_seed(2))
    model = point_oracle(d, x_star)
    assert torch.allclose(denoise.denoise_one_step(model, d, y, 0.5), x_star.expand_as(y), atol=1e-5)
    chain = denoise.denoise_chain(model, d, y, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(chain, x_star.expand_as(y), atol=1e-4)


def test_psnr_known_values():
    ref = torch.zeros(2, 1, 4, 4)
    x = ref.clone()
    x[0] += 0.2  # MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB
    x[1] += 0.02  # 40 dB
    assert torch.allclose(denoise.psnr(x, ref), torch.tensor([20.0, 40.0]), atol=1e-4)
    assert float(denoise.psnr(ref + 5, ref)[0]) == pytest.approx(10 * math.log10(4), abs=1e-5)  # clipped at 1
    with pytest.raises(ValueError, match="shape"):
        denoise.psnr(x, ref[:1])


@pytest.mark.parametrize("width", [0.5, 1.3])
def test_gaussian_blur_matches_scipy(width):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randn(2, 3, 9, 11, dtype=torch.float64)
    r = math.ceil(3 * width)
    ours = denoise.gaussian_blur(x, width).numpy()
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, width, width), mode="mirror", truncate=r / width)
    assert np.allclose(ours, ref, atol=1e-10)
    assert torch.equal(denoise.gaussian_blur(x, 0.0), x)


def test_median_filter_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randn(2, 2, 7, 8, dtype=torch.float64)
    ref = ndimage.median_filter(x.numpy(), size=(1, 1, 3, 3), mode="mirror")
    assert np.allclose(denoise.median_filter(x, 3).numpy(), ref)
    with pytest.raises(ValueError, match="odd"):
        denoise.median_filter(x, 2)


def test_blur_width_is_tuned_to_the_noise():
    gen = torch.Generator().manual_seed(4)
    u = torch.linspace(-1, 1, 16)
    x0 = (0.8 * torch.sin(3 * u)[:, None] * torch.cos(2 * u)[None, :]).expand(8, 1, 16, 16).contiguous()
    assert denoise.tune_blur_width(x0, x0) == 0.0
    assert denoise.tune_blur_width(denoise.add_noise(x0, 0.5, gen), x0) >= 0.8


def test_benchmark_rows_and_images():
    d, s = proc("linear", 100), 0.3
    gen = torch.Generator().manual_seed(5)
    x0 = (s * torch.randn(6, 1, 8, 8, generator=gen)).clamp(-1, 1)
    rows, images = denoise.benchmark(gaussian_oracle(d, s), d, x0, x0.flip(0), [0.2, 0.6], seed=0, chain_steps=10)
    assert [r["sigma"] for r in rows] == [0.2, 0.6] and set(images) == {0.2, 0.6}
    for r in rows:
        assert set(denoise.METHODS) <= set(r) and r["t"] == denoise.step_for_sigma(d, r["sigma"])
        assert r["DDPM one step"] > r["noisy"] + 1          # the Wiener filter beats the raw input
        assert r["DDPM one step"] > r["DDPM chain"]         # the posterior mean beats a posterior sample
    assert set(images[0.6]) == set(denoise.METHODS) | {"clean"}
    assert images[0.6]["DDPM chain"].shape == x0.shape
