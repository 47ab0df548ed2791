"""Tests of ddpm_core.unet: paper parameter counts, presets, and equality with diffusers' UNet2DModel."""
import inspect
import math

import pytest
import torch

from ddpm_core import unet
from ddpm_core.unet import PRESETS, TimeMLP, UNet, build_model, count_parameters, timestep_embedding

diffusers = pytest.importorskip("diffusers")

# google/ddpm-cifar10-32's config.json (see /work/shared/TRAPS.md)
CIFAR10_DIFFUSERS = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32, norm_eps=1e-6,
    act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    attention_head_dim=None, mid_block_scale_factor=1, center_input_sample=False,
)
SMALL_DDPM = dict(CIFAR10_DIFFUSERS, sample_size=16, block_out_channels=(32, 64, 64, 64), norm_num_groups=8)
# The Improved DDPM design in diffusers' terms: scale-shift norm, [cos, sin] embedding, symmetric padding,
# 2 heads here, attention at two resolutions, 2C outputs.
SMALL_IDDPM = dict(SMALL_DDPM, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, norm_eps=1e-5,
                   resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8, attention_head_dim=32,
                   down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), out_channels=6)
LEGACY_ATTENTION_NAMES = {"to_q.": "query.", "to_k.": "key.", "to_v.": "value.", "to_out.0.": "proj_attn."}


def perturbed(net, seed=0):
    """``net`` with every parameter moved away from its initial value (zeros and ones included),
    by noise proportional to the spread of each weight, so outputs stay of order one."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 1:  # biases and norm scales
                spread = 0.5
            else:  # weights; zero-initialised ones get the scale of a default init
                spread = p.std().item() or p[0].numel() ** -0.5
            p.add_(0.1 * spread * torch.randn_like(p))
    return net


def random_diffusers_unet(config, seed=0):
    """A UNet2DModel in eval mode with random, perturbed weights."""
    torch.manual_seed(seed)
    return perturbed(diffusers.UNet2DModel(**config).eval(), seed)


def random_inputs(config, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = config["sample_size"]
    x_t = torch.randn(n, config["in_channels"], size, size, generator=g)
    return x_t, torch.randint(0, 1000, (n,), generator=g)


def max_abs_diff(ours, model, x_t, t):
    with torch.no_grad():
        return (ours.eval()(x_t, t) - model(x_t, t).sample).abs().max().item()


def iddpm_parameter_count(ch, mult, num_res_blocks, attention_ds, in_ch, out_ch, scale_shift):
    """Parameters of improved-diffusion's UNetModel, counted layer by layer from its description
    (input_blocks / middle_block / output_blocks, attention placed by downsampling factor ds)."""
    emb = 4 * ch
    conv = lambda i, o, k: i * o * k * k + o  # noqa: E731
    norm = lambda c: 2 * c  # noqa: E731

    def res(i, o):
        return (norm(i) + conv(i, o, 3) + conv(emb, 2 * o if scale_shift else o, 1) + norm(o) + conv(o, o, 3)
                + (conv(i, o, 1) if i != o else 0))

    def attn(c):
        return norm(c) + conv(c, 3 * c, 1) + conv(c, c, 1)  # qkv and proj_out as 1x1 conv1d

    total = conv(ch, emb, 1) + conv(emb, emb, 1) + conv(in_ch, ch, 3)
    chans, c, ds = [ch], ch, 1
    for level, m in enumerate(mult):
        for _ in range(num_res_blocks):
            total += res(c, m * ch) + (attn(m * ch) if ds in attention_ds else 0)
            c = m * ch
            chans.append(c)
        if level != len(mult) - 1:
            total += conv(c, c, 3)
            chans.append(c)
            ds *= 2
    total += res(c, c) + attn(c) + res(c, c)
    for level, m in reversed(list(enumerate(mult))):
        for i in range(num_res_blocks + 1):
            total += res(c + chans.pop(), m * ch) + (attn(m * ch) if ds in attention_ds else 0)
            c = m * ch
            if level and i == num_res_blocks:
                total += conv(c, c, 3)
                ds //= 2
    return total + norm(c) + conv(c, out_ch, 3)


@pytest.fixture(scope="module")
def ddpm_cifar10():
    return UNet.from_preset("ddpm-cifar10")


@pytest.fixture(scope="module")
def iddpm_cifar10():
    return UNet.from_preset("iddpm-cifar10")


# -- parameter counts -----------------------------------------------------------------------------

def test_ddpm_cifar10_preset_has_the_papers_35_746_307_parameters(ddpm_cifar10):
    net = ddpm_cifar10
    assert count_parameters(net) == 35_746_307
    assert net.config["dropout"] == 0.1 and net.out_channels == 3
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32), torch.tensor([999])).shape == (1, 3, 32, 32)
    # the independent layer-by-layer count agrees on the DDPM design
    assert iddpm_parameter_count(128, (1, 2, 2, 2), 2, (2,), 3, 3, scale_shift=False) == 35_746_307


def test_iddpm_cifar10_parameter_count_matches_a_layer_by_layer_count(iddpm_cifar10):
    net = iddpm_cifar10
    expected = iddpm_parameter_count(128, (1, 2, 2, 2), 3, (2, 4), 3, 6, scale_shift=True)
    assert count_parameters(net) == expected == 52_546_438
    assert net.config["num_heads"] == 4 and net.config["dropout"] == 0.3
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32), torch.tensor([3999]))
    assert out.shape == (1, 6, 32, 32)


@pytest.mark.slow
def test_iddpm_cifar10_parameter_count_equals_the_same_design_built_by_diffusers(iddpm_cifar10):
    oracle = diffusers.UNet2DModel(**dict(
        CIFAR10_DIFFUSERS, layers_per_block=3, out_channels=6, flip_sin_to_cos=True, freq_shift=0,
        downsample_padding=1, norm_eps=1e-5, resnet_time_scale_shift="scale_shift", attn_norm_num_groups=32,
        attention_head_dim=64, down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")))
    assert count_parameters(oracle) == count_parameters(iddpm_cifar10)


# -- presets ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(set(PRESETS) - {"ddpm-cifar10", "iddpm-cifar10"}) + ["toy-mlp", "toy-mlp-fourier"])
def test_every_small_preset_maps_x_t_to_its_output_shape(name):
    torch.manual_seed(0)
    net = build_model(name).eval()
    if isinstance(net, TimeMLP):
        x_t, expected = torch.randn(5, 2), (5, 2)
    else:
        cfg = net.config
        x_t = torch.randn(2, cfg["in_channels"], cfg["image_size"], cfg["image_size"])
        expected = (2, cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1), cfg["image_size"], cfg["image_size"])
    with torch.no_grad():
        out = net(x_t, torch.randint(0, 1000, (x_t.shape[0],)))
    assert out.shape == expected and torch.isfinite(out).all()


def test_cpu_presets_stay_small():
    sizes = {name: count_parameters(UNet.from_preset(name)) for name in ("cpu-mnist", "cpu-digits", "cpu-crops")}
    assert 200_000 <= sizes["cpu-mnist"] <= 400_000  # sized for updates per minute on 2 cores (issue 3)
    assert sizes["cpu-digits"] < 1_000_000 and sizes["cpu-crops"] < 3_000_000


def test_unknown_preset_names_list_the_choices():
    with pytest.raises(ValueError, match="ddpm-cifar10"):
        build_model("ddpm-imagenet")
    with pytest.raises(ValueError, match="cpu-mnist"):
        UNet.from_preset("toy-mlp")


def test_overrides_replace_preset_values():
    net = UNet.from_preset("cpu-digits", dropout=0.3, learn_sigma=True)
    assert net.config["dropout"] == 0.3 and net.out_channels == 2


def test_fresh_network_outputs_zero_like_hos_zero_initialised_output_conv():
    net = UNet.from_preset("cpu-digits")
    assert net(torch.randn(2, 1, 8, 8), torch.tensor([0, 999])).abs().max().item() == 0.0


# -- equality with diffusers --------------------------------------------------------------------------

@pytest.mark.parametrize("config", [SMALL_DDPM, SMALL_IDDPM], ids=["ddpm", "iddpm"])
@pytest.mark.parametrize("naming", ["current", "legacy"])
def test_from_diffusers_reproduces_the_diffusers_outputs(config, naming):
    model = random_diffusers_unet(config)
    state = model.state_dict()
    if naming == "legacy":  # the names of checkpoints saved before diffusers' attention refactor
        renamed = {}
        for key, value in state.items():
            for new, old in LEGACY_ATTENTION_NAMES.items():
                key = key.replace(new, old)
            renamed[key] = value
        assert any("proj_attn" in k for k in renamed) and not any("to_q" in k for k in renamed)
        net = UNet.from_diffusers_state_dict(renamed, dict(config))
    else:
        net = UNet.from_diffusers(model)
    assert count_parameters(net) == count_parameters(model)
    x_t, t = random_inputs(config)
    assert max_abs_diff(net, model, x_t, t) < 1e-5
    # in float64 the two computations agree to rounding: no systematic difference hides under 1e-5
    assert max_abs_diff(net.double(), model.double(), x_t.double(), t) < 1e-12


def test_from_diffusers_reads_improved_ddpm_structure():
    net = UNet.from_diffusers(random_diffusers_unet(SMALL_IDDPM), learn_sigma=True, dropout=0.3)
    cfg = net.config
    assert (cfg["time_embedding"], cfg["downsample_padding"], cfg["use_scale_shift_norm"]) == ("iddpm", "symmetric", True)
    assert cfg["num_heads"] == 2 and cfg["attention_resolutions"] == (8, 4)
    assert cfg["out_channels"] == 3 and net.out_channels == 6 and cfg["dropout"] == 0.3


@pytest.mark.slow
def test_from_diffusers_matches_full_google_ddpm_cifar10_32_configuration(ddpm_cifar10):
    model = random_diffusers_unet(CIFAR10_DIFFUSERS)
    state = model.state_dict()
    assert len(state) == 328
    net = UNet.from_diffusers(model)
    assert count_parameters(net) == 35_746_307
    assert net.config == {**ddpm_cifar10.config, "dropout": 0.0, "init": "pytorch"}
    x_t, t = random_inputs(CIFAR10_DIFFUSERS, n=2)
    assert max_abs_diff(net, model, x_t, t) < 1e-5


def test_from_diffusers_refuses_architectures_it_cannot_express():
    with pytest.raises(ValueError, match="mirror"):
        unet._config_from_diffusers(dict(SMALL_DDPM, up_block_types=("AttnUpBlock2D",) + SMALL_DDPM["up_block_types"][1:]), False)
    with pytest.raises(ValueError, match="freq_shift"):
        unet._config_from_diffusers(dict(SMALL_DDPM, flip_sin_to_cos=True), False)
    with pytest.raises(ValueError, match="missing"):
        UNet.from_diffusers_state_dict({"conv_in.weight": torch.zeros(32, 3, 3, 3)}, SMALL_DDPM)


def test_defaults_table_matches_installed_diffusers():
    params = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    for key, value in unet.DIFFUSERS_DEFAULTS.items():
        assert params[key].default == value, key


def test_from_pretrained_reads_a_local_diffusers_folder(tmp_path):
    model = random_diffusers_unet(SMALL_DDPM)
    model.save_pretrained(tmp_path / "plain")
    model.save_pretrained(tmp_path / "pipeline" / "unet")  # the layout of a saved DDPMPipeline
    x_t, t = random_inputs(SMALL_DDPM)
    for folder in (tmp_path / "plain", tmp_path / "pipeline"):
        assert max_abs_diff(UNet.from_pretrained(folder), model, x_t, t) < 1e-5


def test_from_pretrained_offline_says_how_to_supply_a_local_folder(tmp_path):
    with pytest.raises(OSError, match="internet") as info:
        UNet.from_pretrained("google/ddpm-cifar10-32", cache_dir=tmp_path, local_files_only=True)
    assert "UNet.from_pretrained('path/to/" in str(info.value)


def test_from_pretrained_prints_no_library_warnings(tmp_path):
    """The book shows a cell's stderr: loading a local folder, or failing offline, must print only
    what ddpm_core says (no diffusers warning about accelerate, no huggingface_hub deprecation).
    A fresh interpreter, as a notebook kernel: warnings print once per process."""
    import subprocess
    import sys

    random_diffusers_unet(SMALL_DDPM).save_pretrained(tmp_path / "plain")
    code = ("import warnings; warnings.simplefilter('default')\n"
            "from ddpm_core.unet import UNet\n"
            f"UNet.from_pretrained({str(tmp_path / 'plain')!r})\n"
            "try:\n"
            f"    UNet.from_pretrained('google/ddpm-cifar10-32', cache_dir={str(tmp_path / 'hub')!r}, local_files_only=True)\n"
            "except OSError as err:\n"
            "    print(str(err).split('(')[0])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("could not load 'google/ddpm-cifar10-32'"), proc.stdout
    assert proc.stderr == "", proc.stderr


def test_from_pretrained_without_internet_asks_only_the_local_cache(monkeypatch):
    """Offline, the hub would retry for half a minute: an unreachable hub means local_files_only."""
    import time
    from diffusers import UNet2DModel

    seen = {}

    def fake(name, **kwargs):
        seen.update(kwargs)
        raise OSError("not in the cache")
    monkeypatch.setattr(UNet2DModel, "from_pretrained", fake)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://no-such-host.invalid")
    start = time.perf_counter()
    assert unet._hub_reachable() is False and time.perf_counter() - start < 5
    with pytest.raises(OSError, match="no internet access"):
        UNet.from_pretrained("google/ddpm-cifar10-32")
    assert seen["local_files_only"] is True
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")  # behind a proxy: left to the hub
    seen.clear()
    assert unet._hub_reachable() is True
    with pytest.raises(OSError):
        UNet.from_pretrained("google/ddpm-cifar10-32")
    assert "local_files_only" not in seen


# -- time embedding --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,flip,shift", [("ddpm", False, 1), ("iddpm", True, 0)])
@pytest.mark.parametrize("dim", [128, 33])
def test_time_embedding_matches_diffusers(kind, flip, shift, dim):
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.tensor([0, 1, 17, 500, 999, 3999])
    ours = timestep_embedding(t, dim, kind)
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
    assert ours.shape == (6, dim)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_ddpm_time_embedding_is_sin_then_cos_with_half_minus_one_denominator():
    emb = timestep_embedding(torch.tensor([10]), 8, "ddpm")[0]
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(4)]
    expected = [math.sin(10 * f) for f in freqs] + [math.cos(10 * f) for f in freqs]
    torch.testing.assert_close(emb, torch.tensor(expected), rtol=0, atol=1e-5)


# -- behaviour --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cpu-digits", "toy-mlp", "toy-mlp-fourier"])
def test_gradients_reach_every_parameter(name):
    net = perturbed(build_model(name, dropout=0.0))
    x_t = torch.randn(4, 2) if name.startswith("toy-mlp") else torch.randn(4, 1, 8, 8)
    net(x_t, torch.tensor([0, 10, 500, 999])).square().mean().backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_fourier_features_of_the_time_mlp():
    net = TimeMLP(dim=2, fourier_features=3)
    x = torch.tensor([[0.25, -0.5]])
    freqs = [math.pi, 2 * math.pi, 4 * math.pi]  # pi * 2^k
    z = [0.25 * f for f in freqs] + [-0.5 * f for f in freqs]  # coordinate-major
    expected = [0.25, -0.5] + [math.sin(v) for v in z] + [math.cos(v) for v in z]
    torch.testing.assert_close(net.input_features(x), torch.tensor([expected]), rtol=0, atol=1e-6)
    assert net.inp.in_features == 2 * (1 + 2 * 3) and "freqs" not in net.state_dict()
    # with the Fourier columns of the input layer at zero it is the plain MLP with the same weights
    plain = TimeMLP(dim=2)
    with torch.no_grad():
        net.inp.weight.zero_()
        net.inp.weight[:, :2] = plain.inp.weight
        net.inp.bias.copy_(plain.inp.bias)
    rest = {k: v for k, v in plain.state_dict().items() if not k.startswith("inp.")}
    net.load_state_dict({**net.state_dict(), **rest})
    x_t, t = torch.randn(6, 2), torch.tensor([0, 1, 10, 100, 500, 999])
    torch.testing.assert_close(net(x_t, t), plain(x_t, t))
    assert TimeMLP().input_features(x_t) is x_t  # no features: the coordinates as they are
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="fourier_features"):
            TimeMLP(fourier_features=bad)


@pytest.mark.parametrize("bad_t", [torch.tensor(5), torch.zeros(3, 1, dtype=torch.long), torch.zeros(2, dtype=torch.long)])
def test_wrong_t_shape_raises_a_clear_error(bad_t):
    with pytest.raises(ValueError, match=r"t must be a 1-D tensor .* shape \(3,\)"):
        UNet.from_preset("cpu-digits")(torch.randn(3, 1, 8, 8), bad_t)
    with pytest.raises(ValueError, match="t must be a 1-D tensor"):
        TimeMLP()(torch.randn(3, 2), bad_t)


def test_channels_last_input_gives_the_same_output():
    net = perturbed(UNet.from_preset("cpu-digits")).eval()
    x_t, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 3])
    with torch.no_grad():
        ref = net(x_t, t)
        out = net.to(memory_format=torch.channels_last)(x_t.to(memory_format=torch.channels_last), t)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_dropout_is_active_in_training_mode_only():
    net = perturbed(UNet.from_preset("cpu-digits", dropout=0.5))
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 6])
    assert not torch.equal(net.train()(x_t, t), net(x_t, t))
    assert torch.equal(net.eval()(x_t, t), net(x_t, t))


@pytest.mark.slow  # dynamo tracing takes a few seconds on two cores
def test_torch_compile_traces_the_whole_forward_without_graph_breaks():
    net = perturbed(UNet.from_preset("cpu-digits")).eval()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 900])
    with torch.no_grad():
        torch.testing.assert_close(compiled(x_t, t), net(x_t, t))


@pytest.mark.parametrize("kwargs,match", [
    (dict(image_size=28, channel_mult=(1, 2, 2, 2)), "cannot be halved"),
    (dict(time_embedding="fourier"), "time_embedding"),
    (dict(downsample_padding="same"), "downsample_padding"),
    (dict(num_heads=3), "heads"),
    (dict(attention_resolutions=(8,)), "attention_resolutions"),
])
def test_invalid_arguments_are_refused_with_the_choices(kwargs, match):
    base = dict(PRESETS["cpu-digits"], image_size=28, channel_mult=(1, 2, 2), attention_resolutions=(7,))
    with pytest.raises(ValueError, match=match):
        UNet(**{**base, **kwargs})


def test_mnist_sizes_halve_28_to_14_to_7_and_come_back():
    net = UNet.from_preset("cpu-mnist")
    assert isinstance(net.up[0].attn[0], unet.Attention)  # attention at 7x7, the bottom level
    with torch.no_grad():
        assert net(torch.randn(1, 1, 28, 28), torch.tensor([0])).shape == (1, 1, 28, 28)
