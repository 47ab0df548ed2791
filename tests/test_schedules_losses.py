"""Schedules and likelihood pieces against closed forms computed independently."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from ddpm_core import losses, schedules


@settings(max_examples=25, deadline=None)
@given(T=st.integers(2, 4000), name=st.sampled_from(["linear", "cosine"]))
def test_alpha_bar_strictly_decreasing_and_in_unit_interval(T, name):
    if name == "linear" and T <= 20:
        with pytest.raises(ValueError, match="T > 20"):
            schedules.get_betas(name, T)
        return
    tab = schedules.derived(schedules.get_betas(name, T))
    ab = tab["alpha_bar"]
    assert ab.dtype == torch.float64 and ab.shape == (T,)
    assert bool((ab[1:] < ab[:-1]).all())
    assert 0 <= float(ab[-1]) and float(ab[0]) < 1


def test_linear_schedule_matches_ho_et_al():
    b = schedules.get_betas("linear", 1000)
    assert float(b[0]) == pytest.approx(1e-4, abs=1e-15) and float(b[-1]) == pytest.approx(0.02, abs=1e-15)
    b4000 = schedules.get_betas("linear", 4000)  # scaled by 1000 / T
    assert float(b4000[0]) == pytest.approx(2.5e-5) and float(b4000[-1]) == pytest.approx(0.005)


def test_cosine_alpha_bar_follows_the_closed_form():
    T, s = 4000, 0.008
    ab = schedules.derived(schedules.get_betas("cosine", T))["alpha_bar"].numpy()
    f = lambda t: np.cos((t / T + s) / (1 + s) * np.pi / 2) ** 2
    expected = f(np.arange(1, T + 1)) / f(0)
    # equal wherever no beta was clipped at 0.999 (only the very last steps are)
    np.testing.assert_allclose(ab[:-2], expected[:-2], rtol=1e-10, atol=1e-14)
    assert float(schedules.get_betas("cosine", T).max()) <= 0.999


def test_derived_tables_agree_with_definitions():
    tab = schedules.derived(schedules.get_betas("linear", 50))
    b = tab["betas"].numpy()
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(tab["posterior_variance"].numpy(), b * (1 - ab_prev) / (1 - ab))
    np.testing.assert_allclose(tab["snr"].numpy(), ab / (1 - ab))
    # log-variance at t = 0 is replaced by the t = 1 value
    assert float(tab["posterior_log_variance_clipped"][0]) == float(tab["posterior_log_variance_clipped"][1])


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="linear.*cosine"):
        schedules.get_betas("quadratic", 10)
    with pytest.raises(ValueError, match="positive integer"):
        schedules.get_betas("linear", 0)


def test_normal_kl_zero_for_equal_gaussians_and_matches_monte_carlo():
    m, lv = torch.tensor([0.3, -1.0]), torch.tensor([0.2, -0.5])
    assert torch.allclose(losses.normal_kl(m, lv, m, lv), torch.zeros(2), atol=1e-7)
    g = torch.Generator().manual_seed(0)
    m1, lv1, m2, lv2 = 0.5, math.log(0.7), -0.2, math.log(1.8)
    x = m1 + math.exp(0.5 * lv1) * torch.randn(400_000, generator=g, dtype=torch.float64)
    logp = lambda x, m, lv: -0.5 * (math.log(2 * math.pi) + lv + (x - m) ** 2 / math.exp(lv))
    mc = (logp(x, m1, lv1) - logp(x, m2, lv2)).mean()
    exact = losses.normal_kl(torch.tensor(m1, dtype=torch.float64), lv1, m2, lv2)
    assert float(exact) == pytest.approx(float(mc), abs=3e-3)
    assert float(exact) > 0


@pytest.mark.parametrize("mean,log_scale", [(0.0, math.log(0.1)), (0.7, math.log(0.02)), (-0.99, math.log(0.5))])
def test_discretized_likelihood_sums_to_one_over_256_values(mean, log_scale):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    logp = losses.discretized_gaussian_log_likelihood(
        x, torch.full_like(x, mean), torch.full_like(x, log_scale))
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_discretized_likelihood_floors_a_vanishing_bin_probability_at_1e_minus_12():
    # the reference code clamps each bin's probability at 1e-12 before the log: an interior bin, the
    # lowest one (x = -1, mass below -1 + 1/255) and the highest (x = 1), each far from a sharp Gaussian
    x = torch.tensor([0.2, -1.0, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.9, 0.9, -0.9], dtype=torch.float64)
    logp = losses.discretized_gaussian_log_likelihood(x, mean, torch.full_like(x, math.log(0.01)))
    assert torch.equal(logp, torch.full_like(x, math.log(1e-12)))


def test_discretized_likelihood_of_interior_bin_matches_exact_gaussian_mass():
    x = torch.tensor([0.2], dtype=torch.float64)
    sigma = 0.05
    logp = losses.discretized_gaussian_log_likelihood(x, torch.tensor([0.18], dtype=torch.float64),
                                                      torch.tensor([math.log(sigma)], dtype=torch.float64))
    cdf = lambda v: 0.5 * (1 + math.erf(v / math.sqrt(2)))
    exact = cdf((0.02 + 1 / 255) / sigma) - cdf((0.02 - 1 / 255) / sigma)
    assert float(logp.exp()) == pytest.approx(exact, rel=2e-3)  # tanh approximation of the CDF
