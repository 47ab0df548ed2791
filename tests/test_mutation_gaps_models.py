"""Tests added by a mutation audit of unet.py, baselines/, compare.py, features.py and evaluation.py.

Each test compares the code with an independent computation (diffusers' UNet2DModel, a formula
written out again here, torch.distributions, scipy) on tiny inputs, and kills a mutant that the
existing tests let through.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddpm_core import baselines, compare, data, evaluation, features, unet
from ddpm_core.unet import TimeMLP, UNet

try:
    import diffusers
except ImportError:  # pragma: no cover
    diffusers = None

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DDPM = dict(  # google/ddpm-cifar10-32's design (config.json), two levels, 8x8 and narrow
    sample_size=8, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, norm_eps=1e-6,
    act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    attention_head_dim=None,
)


@pytest.mark.skipif(diffusers is None, reason="needs diffusers")
def test_from_diffusers_reads_old_checkpoints_with_1x1_conv_attention_projections():
    """Very old checkpoints stored the attention projections as [C, C, 1, 1] conv weights with the
    legacy names (query/key/value/proj_attn); the converted UNet must still equal diffusers' model."""
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**TINY_DDPM).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    legacy = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}
    old = {}
    for key, value in model.state_dict().items():
        for new, name in legacy.items():
            key = key.replace(new, name)
        if any(n in key for n in legacy.values()) and key.endswith("weight"):
            value = value[:, :, None, None]  # a 1x1 conv
        old[key] = value
    assert sum(v.dim() == 4 and v.shape[-1] == 1 and "query" in k for k, v in old.items()) == 6  # 2 down, 1 middle, 3 up
    net = UNet.from_diffusers_state_dict(old, dict(TINY_DDPM)).eval()
    g = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3, 700])
    with torch.no_grad():
        assert (net(x_t, t) - model(x_t, t).sample).abs().max() < 1e-5


def test_time_mlp_blocks_follow_their_documented_formula():
    """TimeMLP: emb = MLP(sinusoid(t)); h = inp(x); each block h += lin2(SiLU(lin1(SiLU(h)) + time_proj(emb)));
    out = Linear(SiLU(h)), recomputed here from the module's weights."""
    torch.manual_seed(0)
    net = TimeMLP(dim=2, hidden=16, num_blocks=2).eval()
    x, t = torch.randn(5, 2), torch.tensor([0, 3, 50, 400, 999])
    half = 8  # iddpm embedding: [cos, sin] at exp(-ln(10000) i / half)
    args = t.float()[:, None] * torch.exp(-math.log(10000.0) * torch.arange(half) / half)[None]
    s = torch.cat([args.cos(), args.sin()], 1)
    lin = lambda m, v: v @ m.weight.T + m.bias  # noqa: E731
    emb = lin(net.time_mlp[2], F.silu(lin(net.time_mlp[0], s)))
    h = lin(net.inp, x)
    for b in net.blocks:
        h = h + lin(b["lin2"], F.silu(lin(b["lin1"], F.silu(h)) + lin(b["time_proj"], emb)))
    expected = lin(net.out[1], F.silu(h))
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), expected, rtol=1e-5, atol=1e-6)


def test_vae_elbo_is_the_reparameterised_log_likelihood_minus_the_analytic_kl():
    """ELBO = log N(x; dec(z)) - KL(N(mu, sigma^2) || N(0, I)) with z = mu + sigma * eps, eps from the
    same generator; the KL from torch.distributions, the likelihood from Normal.log_prob."""
    model = baselines.build("vae", (2,), size="cpu", seed=0).eval()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.mul_(3.0)  # posterior far from N(0, I): log_var well away from 0 so sigma != sigma^2
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = model.elbo(x, torch.Generator().manual_seed(7))
        mu, log_var = model.encode(x)
        assert (log_var.abs() > 0.1).float().mean() > 0.5
        std = torch.exp(0.5 * log_var)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
        mean, dec_log_var = model.decode(mu + std * eps)
        lik = torch.distributions.Normal(mean, torch.exp(0.5 * dec_log_var)).log_prob(x).sum(1)
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(mu, std),
                                               torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(got, lik - kl, rtol=1e-5, atol=1e-5)


def test_gan_losses_are_the_non_saturating_ones():
    """With a zero learning rate (no update), the reported losses are L_D = -log s(D(x)) - log(1 - s(D(G(z))))
    and L_G = -log s(D(G(z))) (non-saturating), for the z drawn from the step's generator (recomputed here
    from the logits with sigmoid and log)."""
    model = baselines.build("gan", (2,), size="cpu", seed=0)
    model.train()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = torch.randn(16, model.z_dim, generator=torch.Generator().manual_seed(3))
        d_real, d_fake = model.D(x).double(), model.D(model.G(z)).double()
    want_d = -(torch.sigmoid(d_real).log().mean() + (1 - torch.sigmoid(d_fake)).log().mean())
    want_g = -torch.sigmoid(d_fake).log().mean()
    out = model.training_step(x, model.configure_optimizers(0.0), torch.Generator().manual_seed(3))
    assert abs(out["loss_d"].item() - want_d.item()) < 1e-5
    assert abs(out["loss_g"].item() - want_g.item()) < 1e-5
    assert abs(want_g.item() - want_d.item()) > 1e-2  # the two losses differ here, so a mix-up shows


def test_covered_mask_agrees_with_covered_at_the_threshold():
    """A mode holding exactly min_fraction * N / K high-quality samples is covered, in ``covered`` and
    in ``covered_mask`` alike."""
    ring = data.load_dataset("ring", n=10)
    x = torch.cat([ring.modes[0].repeat(790, 1), ring.modes[1].repeat(10, 1)])  # N / K = 100; threshold 10
    st = compare.mode_stats(x, ring.modes, ring.mode_std)
    assert st.covered == 2
    assert st.covered_mask.tolist() == [True, True] + [False] * 6
    assert int(st.covered_mask.sum()) == st.covered


def _rows(covered, hq, mixtures=("ring",)):
    return [dict(dataset=ds, family=f, seed=s, covered=c, num_modes=8, high_quality=h)
            for ds in mixtures for f in compare.FAMILIES
            for s, (c, h) in enumerate(zip(covered[ds][f], hq[f]))]


def test_report_verdicts_on_two_mixtures_and_between_vae_and_flow_bounds():
    """'GANs cover fewer modes' holds when it holds on *some* mixture; 'likelihood matches VAEs and
    flows' holds when the DDPM's bound is at most the larger of the two."""
    hq = {f: [0.5, 0.5] for f in compare.FAMILIES}
    covered = {"ring": {f: [8, 8] for f in compare.FAMILIES},
               "grid": {**{f: [8, 8] for f in compare.FAMILIES}, "gan": [8, 6]}}  # only on the grid
    rows = _rows(covered, hq, ("ring", "grid"))
    fid = {"gan": 20.0, "vae": 50.0, "flow": 35.0, "ddpm": 30.0}
    bpd = {"gan": None, "vae": 1.6, "flow": 2.4, "ddpm": 2.0}  # between the VAE's and the flow's
    v = {k: ok for k, (ok, _) in compare.report_verdicts(rows, fid, fid, bpd).items()}
    assert v["GANs cover fewer modes"] is True
    assert v["diffusion's likelihood matches VAEs and flows (the book's added check)"] is True
    bpd = {**bpd, "ddpm": 2.5}
    v = {k: ok for k, (ok, _) in compare.report_verdicts(rows, fid, fid, bpd).items()}
    assert v["diffusion's likelihood matches VAEs and flows (the book's added check)"] is False


def test_rate_distortion_columns_from_the_per_step_terms():
    """rate_distortion from a given ``bits_per_dim`` dict: rate after k steps = L_T + sum of the KL
    terms L_{K-1} .. L_{K-k+1} (L_0 never), RMSE = sqrt(x0_mse) * 127.5 on the 0..255 scale."""
    vb = torch.tensor([0.5, 0.1, 0.2, 0.3], dtype=torch.float64)  # L_0 (decoder), L_1, L_2, L_3
    mse = torch.tensor([1e-4, 0.01, 0.04, 0.25], dtype=torch.float64)
    bpd = {"vb": vb, "x0_mse": mse, "steps": 4, "prior_bpd": 0.05, "decoder_bpd": 0.5, "bpd": 1.15,
           "timesteps": torch.arange(4), "method": "exact", "n": 1}
    rd = evaluation.rate_distortion(None, None, None, bpd=bpd)
    torch.testing.assert_close(rd["rate_bpd"], torch.tensor([0.05, 0.35, 0.55, 0.65], dtype=torch.float64))
    torch.testing.assert_close(rd["rmse"], torch.tensor([0.5, 0.2, 0.1, 0.01], dtype=torch.float64) * 127.5)
    assert rd["rate_final"] == pytest.approx(0.65) and rd["t"].tolist() == [3, 2, 1, 0]


def test_bits_per_dim_standard_error_is_the_spread_over_sqrt_n():
    """bits_per_dim's ``bpd_se`` = std(total_bpd, ddof=1) / sqrt(N) (numpy), with a trivial model."""
    from ddpm_core import diffusion, schedules

    d = diffusion.GaussianDiffusion(schedules.get_betas("cosine", 4))
    x = torch.rand(9, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    b = evaluation.bits_per_dim(lambda x_t, t: torch.zeros_like(x_t), d, x, progress=False,
                                generator=torch.Generator().manual_seed(1))
    per = b["total_bpd"].numpy()
    assert per.std() > 0
    assert b["bpd_se"] == pytest.approx(per.std(ddof=1) / math.sqrt(9), rel=1e-9)


def _result(**kw):
    base = dict(label="x", dataset="digits", n_samples=10, n_reference=20, extractor="e", profile="cpu",
                sampler="real", steps=None, fid=1.0, is_mean=2.5, is_std=0.25, kid_mean=0.07421, kid_std=0.00311)
    return evaluation.EvalResult(**{**base, **kw})


def test_results_row_puts_each_number_in_its_own_column():
    """EvalResult.row: FID, IS mean ± IS std, KID mean ± KID std in the columns HEADER names."""
    row = dict(zip(evaluation.EvalResult.HEADER, _result(fid=12.345, is_mean=3.21, is_std=0.12).row()))
    assert row["FID (vs train)"] == "12.35"
    assert row["IS"] == "3.21 ± 0.12"
    assert row["KID (vs train)"] == "0.0742 ± 0.0031"  # the std with the mean's decimals
    assert row["samples"] == "10"


class _PixelExtractor(features.FeatureExtractor):
    """Features: the mean of each 4x4 block of the image (4 numbers); logits: the first 3 of them."""
    name, key, feature_dim, num_classes = "pixel blocks", None, 4, 3

    def _forward(self, batch):
        f = F.avg_pool2d(batch.float() / 255, 4).flatten(1)
        return f, f[:, :3] * 5


def test_score_images_measures_fid_against_the_training_split():
    """score_images' FID equals the Frechet distance (scipy sqrtm) between the samples' features and
    those of the *training* split, and ``n_reference`` is the training split's size."""
    from scipy import linalg

    ext = _PixelExtractor(device="cpu")
    train = data.load_dataset("digits", "train").x
    images = data.load_dataset("digits", "test").x[:40]
    r = evaluation.score_images(images, "digits", ext, kid_subsets=2)
    assert r.n_reference == len(train)
    a, b = ext.features(images).double().numpy(), ext.features(train).double().numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    fid = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real)
    assert r.fid == pytest.approx(fid, rel=1e-4, abs=1e-6)


def test_ddpm_cifar10_preset_is_the_released_configuration_without_building_it():
    """The preset's architecture equals what google/ddpm-cifar10-32's config.json (written out here)
    converts to; parameter counts cannot see where attention sits (16x16 and 8x8 have equal widths)."""
    config_json = dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32, norm_eps=1e-6,
        act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
        attention_head_dim=None, mid_block_scale_factor=1, center_input_sample=False)
    converted = unet._config_from_diffusers(config_json, learn_sigma=False)
    preset = unet.PRESETS["ddpm-cifar10"]
    for key in ("image_size", "base_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
                "num_heads", "norm_groups", "norm_eps", "time_embedding", "downsample_padding",
                "use_scale_shift_norm", "learn_sigma"):
        assert preset[key] == converted[key], key
    assert preset["attention_resolutions"] == (16,)
