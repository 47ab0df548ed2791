"""Timestep samplers: uniform, and the loss-second-moment importance sampler of Improved DDPM."""
import pytest
import torch

from ddpm_core import resample


def reference_history(T, batches, history=10):
    """Plain-Python ring of the last `history` losses per step, in batch order."""
    hist = {t: [] for t in range(T)}
    for ts, ls in batches:
        for t, l in zip(ts.tolist(), ls.tolist()):
            hist[t] = (hist[t] + [l])[-history:]
    return hist


def test_uniform_sampler_covers_every_step_with_unit_weights():
    s = resample.create_sampler("uniform", 7)
    t, w = s.sample(5000, generator=torch.Generator().manual_seed(0))
    assert set(t.tolist()) == set(range(7)) and bool((w == 1).all())


def test_second_moment_sampler_is_uniform_until_every_step_has_ten_losses():
    s = resample.create_sampler("loss-second-moment", 4)
    for k in range(9):
        s.update_with_losses(torch.arange(4), torch.full((4,), float(k + 1)))
    assert torch.allclose(s.probabilities(), torch.full((4,), 0.25, dtype=torch.float64))
    s.update_with_losses(torch.tensor([0, 1, 2]), torch.ones(3))
    assert not bool(s.warmed_up())
    s.update_with_losses(torch.tensor([3]), torch.ones(1))
    assert bool(s.warmed_up())


def test_second_moment_history_keeps_the_last_ten_losses_with_repeated_steps():
    T = 5
    g = torch.Generator().manual_seed(1)
    s = resample.LossSecondMomentSampler(T)
    batches = []
    for _ in range(12):
        ts = torch.randint(0, T, (23,), generator=g)  # many repeats of each step per batch
        ls = torch.rand(23, generator=g)
        s.update_with_losses(ts, ls)
        batches.append((ts, ls))
    ref = reference_history(T, batches)
    for t in range(T):
        assert sorted(s.losses[t].tolist()) == pytest.approx(sorted(ref[t]))


def test_second_moment_probabilities_and_unbiased_weights():
    T = 6
    s = resample.LossSecondMomentSampler(T)
    scale = torch.arange(1, T + 1, dtype=torch.float64)
    for _ in range(10):
        s.update_with_losses(torch.arange(T), scale)
    p = s.probabilities()
    expected = scale / scale.sum() * (1 - 0.001) + 0.001 / T
    assert torch.allclose(p, expected)
    # E_p[w(t) L_t] = mean_t L_t: the importance weights keep the uniform objective
    w = 1.0 / (T * p)
    assert float((p * w * scale).sum()) == pytest.approx(float(scale.mean()))
    t, weights = s.sample(20000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(t, minlength=T).double() / len(t)
    assert torch.allclose(freq, p, atol=0.015)
    assert torch.allclose(weights.double(), w[t], rtol=1e-6)


def test_sampler_state_round_trip_and_unknown_name():
    s = resample.LossSecondMomentSampler(3)
    s.update_with_losses(torch.tensor([0, 2]), torch.tensor([1.0, 2.0]))
    s2 = resample.LossSecondMomentSampler(3)
    s2.load_state_dict(s.state_dict())
    assert torch.equal(s.losses, s2.losses) and torch.equal(s.counts, s2.counts)
    with pytest.raises(ValueError, match="uniform"):
        resample.create_sampler("importance", 3)
