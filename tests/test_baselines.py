"""The GAN, VAE and flow baselines: training, sampling, exact flow Jacobians, VAE bounds, seeds."""
import math

import pytest
import torch

from ddpm_core import baselines
from ddpm_core.baselines import NoLikelihoodError, discretized_logistic_log_prob, vae


pytestmark = pytest.mark.usefixtures("one_thread")


def ring(n, seed=0):
    """8 Gaussians on a circle of radius 0.8, std 0.05: [n, 2]."""
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.randint(8, (n,), generator=g) / 8
    centre = 0.8 * torch.stack([angle.cos(), angle.sin()], 1)
    return centre + 0.05 * torch.randn(n, 2, generator=g)


def images(n, shape, seed=0):
    """8-bit images in [-1, 1]: smooth random blobs, quantized."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    low = torch.rand(n, c, max(h // 4, 1), max(w // 4, 1), generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return torch.round((x.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1


def perturbed(model, scale=0.1, seed=0):
    """Random non-zero parameters, so that every coupling is far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


@pytest.mark.parametrize("family", ["gan", "vae", "flow"])
@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_each_family_trains_without_nan_and_samples_shape_and_range(family, shape):
    model = baselines.build(family, shape, size="cpu")
    x = ring(32) if shape == (2,) else images(16, shape)
    before = [p.detach().clone() for p in model.parameters()]
    history = baselines.train(model, x, steps=3, batch_size=8, progress=False)
    assert history["steps"] == 3 and len(history["loss"]) == 3
    assert all(math.isfinite(v) for v in history["loss"])
    assert history["wall_time"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "no parameter moved"
    out = baselines.sample(model, 5, generator=torch.Generator().manual_seed(1))
    assert out.shape == (5, *shape) and torch.isfinite(out).all()
    if len(shape) == 3:
        assert out.min() >= -1 and out.max() <= 1
    if family == "gan":
        assert set(history) >= {"loss_d", "loss_g"}


def test_gan_has_no_bits_per_dim_and_says_why():
    model = baselines.build("gan", (1, 8, 8), size="cpu")
    with pytest.raises(NoLikelihoodError, match="no likelihood") as info:
        baselines.bits_per_dim(model, images(4, (1, 8, 8)))
    assert isinstance(info.value, NotImplementedError)
    assert "FID" in str(info.value)


@pytest.mark.parametrize("shape,options", [((1, 4, 4), {}), ((1, 4, 4), {"preprocess": "plain"}),
                                           ((2, 4, 4), {"actnorm": False}), ((2,), {})])
def test_flow_logdet_equals_autograd_jacobian_logdet(shape, options):
    model = baselines.build("flow", shape, size="cpu", **options).double()
    model.train()
    model(torch.rand(8, *shape, dtype=torch.float64) * 1.6 - 0.8)  # data-dependent actnorm init
    perturbed(model).eval()
    x = torch.rand(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 1.8 - 0.9
    z, logdet = model(x)
    jac = torch.autograd.functional.jacobian(lambda v: model(v.view(1, *shape))[0].flatten(), x.flatten(),
                                             vectorize=True)
    assert jac.shape == (x.numel(), x.numel())
    sign, logabsdet = torch.linalg.slogdet(jac)
    assert sign != 0
    assert abs(logdet.item()) > 1e-3  # the map is not volume-preserving, so the test can fail
    torch.testing.assert_close(logdet[0], logabsdet, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(2,), (1, 8, 8), (3, 32, 32)])
def test_flow_inverse_inverts_forward(shape):
    model = perturbed(baselines.build("flow", shape, size="cpu"), scale=0.05).eval()
    x = ring(16) if shape == (2,) else torch.rand(4, *shape, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    z, _ = model(x)
    assert z.shape == (x.shape[0], math.prod(shape))
    assert (z - x.flatten(1)).abs().max() > 1e-2  # the flow is not the identity
    torch.testing.assert_close(model.inverse(z), x, atol=1e-5, rtol=0)
    # and forward inverts inverse (float64: random z can land where the logit saturates float32)
    model.double()
    z2 = torch.randn(4, math.prod(shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(model(model.inverse(z2))[0], z2, atol=1e-6, rtol=1e-6)


def test_flow_bits_per_dim_counts_the_dequantization_jacobian():
    # An untrained flow with "plain" preprocessing and no actnorm is the identity, so the density of
    # v = k + u in [0, 256)^D is prod_i N(v_i / 128 - 1; 0, 1) / 128.
    model = baselines.build("flow", (1, 4, 4), size="cpu", preprocess="plain", actnorm=False).eval()
    x = images(6, (1, 4, 4))
    got = baselines.bits_per_dim(model, x, generator=torch.Generator().manual_seed(5))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    v = torch.round((x + 1) * 127.5) + u
    log_pv = (torch.distributions.Normal(0.0, 1.0).log_prob(v / 128 - 1) - math.log(128)).flatten(1).sum(1)
    torch.testing.assert_close(got, -log_pv / (16 * math.log(2)))


@pytest.mark.parametrize("mean,log_scale", [(0.0, -3.0), (0.37, -6.0), (-0.99, -1.0), (1.5, -7.0), (0.2, 2.0)])
def test_discretized_logistic_probabilities_over_256_levels_sum_to_one(mean, log_scale):
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    logp = discretized_logistic_log_prob(levels, torch.tensor(mean, dtype=torch.float64),
                                         torch.tensor(log_scale, dtype=torch.float64))
    assert torch.isfinite(logp).all()
    torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    # a bin's mass is the logistic CDF difference over its edges
    k = 100
    cdf = lambda y: torch.sigmoid((y - mean) / math.exp(log_scale))  # noqa: E731
    want = cdf(levels[k] + 1 / 255) - cdf(levels[k] - 1 / 255)
    torch.testing.assert_close(logp[k].exp(), want, rtol=1e-6, atol=1e-12)


def test_vae_elbo_is_below_importance_weighted_bound_which_grows_with_k():
    # Toy problem with a 2-D latent, where log p(x) = log int p(x|z) p(z) dz is computable by quadrature.
    model = baselines.build("vae", (2,), size="cpu", seed=0)
    with torch.no_grad():  # a decoder that depends strongly on z, so q(z|x) is far from p(z|x)
        for p in model.decoder.parameters():
            p.mul_(3.0)
        model.decoder_log_var.fill_(0.0)  # unit decoder noise: sharp enough for a gap, L_1000 still converges
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(40, 2, generator=g)
    with torch.no_grad():
        grid = torch.linspace(-7, 7, 201)
        z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
        mean, log_var = model.decode(z)  # p(x|z) on the grid, once for all x
        log_joint = vae.gaussian_log_prob(x[:, None], mean, log_var).sum(2) + log_pz  # [40, grid]
        log_px = (torch.logsumexp(log_joint, 1) + 2 * math.log(grid[1] - grid[0])).mean()
        elbo = torch.stack([model.elbo(x, g) for _ in range(50)]).mean()
        iw = {k: model.log_likelihood_iw(x.repeat(10, 1), k, g).mean() for k in (1, 2, 8, 32)}
        iw[1000] = model.log_likelihood_iw(x, 1000, g).mean()
    assert elbo < iw[2] < iw[8] < iw[32] < iw[1000]  # L_1 <= L_k <= L_{k+1}, on average
    assert iw[1] < iw[2]
    assert elbo < log_px - 1.0  # a real gap, so the ordering above could have failed
    assert all(v < log_px + 0.02 for v in iw.values())  # every bound stays below log p(x) ...
    assert abs(iw[1000] - log_px) < 0.05, (iw, log_px)  # ... and L_k -> log p(x)


def test_vae_importance_weighted_bits_per_dim_is_below_the_elbo_on_images():
    # bits/dim are upper bounds, so the importance-weighted one is the lower
    img = baselines.build("vae", (1, 8, 8), size="cpu")
    x = images(32, (1, 8, 8))
    baselines.train(img, x, steps=10, batch_size=16, progress=False)
    b1 = baselines.bits_per_dim(img, x, generator=torch.Generator().manual_seed(0)).mean()
    b20 = baselines.bits_per_dim(img, x, generator=torch.Generator().manual_seed(0), iw_samples=20).mean()
    assert 0 < b20 < b1 < 9


def test_flow_and_vae_bits_per_dim_drop_when_trained():
    x = images(64, (1, 8, 8))
    for family in ("vae", "flow"):
        model = baselines.build(family, (1, 8, 8), size="cpu")
        g = torch.Generator().manual_seed(0)
        before = baselines.bits_per_dim(model, x, generator=g).mean()
        baselines.train(model, x, steps=15, batch_size=32, lr=3e-3, progress=False)
        after = baselines.bits_per_dim(model, x, generator=torch.Generator().manual_seed(0)).mean()
        assert after < before - 0.5, f"{family}: {before:.3f} -> {after:.3f} bits/dim"


def test_same_seed_reproduces_and_other_seed_differs():
    x = images(32, (1, 8, 8))

    def run(seed):
        model = baselines.build("gan", (1, 8, 8), size="cpu", seed=seed)
        history = baselines.train(model, x, steps=4, batch_size=8, seed=seed, progress=False)
        return history["loss_g"], baselines.sample(model, 3, generator=torch.Generator().manual_seed(seed))

    (h1, s1), (h2, s2), (h3, s3) = run(0), run(0), run(1)
    assert h1 == h2 and torch.equal(s1, s2)
    assert h1 != h3 and not torch.equal(s1, s3)


def test_checkpoint_is_written_atomically_and_reloads(tmp_path):
    model = baselines.build("flow", (2,), size="cpu")
    path = tmp_path / "ckpt" / "flow.pt"
    history = baselines.train(model, ring(64), steps=5, batch_size=16, checkpoint=path, progress=False)
    assert [p.name for p in path.parent.iterdir()] == ["flow.pt"]  # no temporary file left behind
    loaded = baselines.load(path)
    assert loaded.history["loss"] == history["loss"]
    x = ring(8, seed=2)
    torch.testing.assert_close(baselines.bits_per_dim(loaded, x), baselines.bits_per_dim(model, x))


def test_train_accepts_an_iterable_and_a_time_budget():
    x = images(24, (1, 8, 8))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=8, shuffle=True)
    model = baselines.build("vae", (1, 8, 8), size="cpu")
    history = baselines.train(model, loader, steps=None, time_budget=0.3, progress=False)
    assert history["steps"] >= 1 and len(history["loss"]) == history["steps"]
    assert history["wall_time"] >= 0.3


def test_clear_errors_for_wrong_family_shape_and_range():
    with pytest.raises(ValueError, match="unknown baseline family"):
        baselines.build("diffusion", (2,))
    model = baselines.build("vae", (1, 8, 8), size="cpu")
    with pytest.raises(ValueError, match=r"shape \[N, 1, 8, 8\]"):
        baselines.train(model, torch.zeros(8, 1, 28, 28), steps=1, progress=False)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        baselines.train(model, torch.full((8, 1, 8, 8), 255.0), steps=1, progress=False)


def test_a_diverged_run_stops_at_the_next_check_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    """A NaN loss stops fit() within NAN_CHECK_EVERY updates (not after all of them) with an error
    that names the update, and the checkpoint written before the divergence stays as it was."""
    from ddpm_core.baselines import _common

    monkeypatch.setattr(_common, "NAN_CHECK_EVERY", 4)
    model = baselines.build("vae", (2,))
    real, calls = model.training_step, []

    def step(x, optimizers, generator):
        calls.append(1)
        out = real(x, optimizers, generator)
        return {"loss": out["loss"] * float("nan")} if len(calls) >= 6 else out

    model.training_step = step
    path = tmp_path / "vae.pt"
    with pytest.raises(FloatingPointError, match="at update 6 of training"):
        _common.fit(model, ring(64), steps=100, batch_size=16, checkpoint=path, checkpoint_every=4, progress=False)
    assert len(calls) == 8  # stopped at the check after update 8, not at update 100
    saved = torch.load(path, weights_only=False)
    assert saved["history"]["steps"] == 4 and all(math.isfinite(v) for v in saved["history"]["loss"])


def test_vae_decoder_log_scale_is_bounded_so_log_probabilities_stay_finite():
    """A decoder pushed to an absurd scale is held at LOG_SCALE_MAX, where every 8-bit level keeps a
    finite log-probability (above ~e^98 the bin mass underflows to 0 in float32)."""
    from ddpm_core.baselines import vae

    model = baselines.build("vae", (1, 8, 8))
    with torch.no_grad():
        model.decoder.net[-1].bias.fill_(500.0)
        mean, log_s = model.decode(torch.zeros(2, model.z_dim))
    assert float(log_s.max()) == vae.LOG_SCALE_MAX and float(log_s.min()) >= vae.LOG_SCALE_MIN
    x = torch.linspace(-1, 1, 256).view(1, 1, 16, 16)
    assert torch.isfinite(vae.discretized_logistic_log_prob(x, torch.zeros_like(x), torch.full_like(x, vae.LOG_SCALE_MAX))).all()
    assert not torch.isfinite(vae.discretized_logistic_log_prob(x, torch.zeros_like(x), torch.full_like(x, 110.0))).all()
    assert baselines.build("vae", (3, 32, 32), size="gpu").default_lr < baselines.build("vae", (3, 32, 32)).default_lr
