"""Bad input to the diffusion, the networks, the trainer, the runtime and the command line gets a clear
error that says what was wrong and what to do (the audit's items 2-19), before any work is lost."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddpm_core import baselines, runtime, schedules, unet
from ddpm_core import train as tr
from ddpm_core.__main__ import main
from ddpm_core.diffusion import GaussianDiffusion

pytestmark = pytest.mark.usefixtures("one_thread")

T = 50
TINY = dict(T=T, batch_size=8, steps=2, warmup_steps=0, dropout=0.0, log_every=1, checkpoint_every=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    return tmp_path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished two-step run of the toy MLP on the ring: run_dir/last.pt."""
    folder = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DDPM_CACHE", str(folder / "cache"))
        tr.train(tr.TrainConfig(dataset="ring", preset="toy-mlp", **TINY), out_dir=folder / "x", progress=False)
    return folder / "x"


def small_net():
    return unet.build_model("cpu-digits", base_channels=8, norm_groups=4).eval()


def images(n=4):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def diffusion():
    return GaussianDiffusion(schedules.get_betas("cosine", T))


# ---------------------------------------------------------------------- 2, 3: x0 in the diffusion
def test_pixels_in_0_255_are_refused_by_training_losses_q_sample_and_bpd():
    d, net, x0, t = diffusion(), small_net(), images(), torch.tensor([1, 2, 3, 4])
    pixels = (x0 + 1) * 127.5
    match = r"x0 must hold images in \[-1, 1\]; got min .* and max 2\d\d.*x / 127.5 - 1"
    with pytest.raises(ValueError, match=match):
        d.training_losses(net, pixels, t)
    with pytest.raises(ValueError, match=match):
        d.q_sample(pixels, t)
    with pytest.raises(ValueError, match=match):
        d.bpd(net, pixels[:1])
    # standard normal "images" (values up to ~5) and 2-D points slightly outside [-1, 1] stay valid
    assert d.training_losses(net, 2 * torch.randn(4, 1, 8, 8), t)["loss"].shape == (4,)
    assert d.q_sample(torch.full((4, 2), 1.5), t).shape == (4, 2)


def test_uint8_images_and_float64_inputs_get_clear_type_errors():
    d, net, x0, t = diffusion(), small_net(), images(), torch.tensor([1, 2, 3, 4])
    pixels = ((x0 + 1) * 127.5).round().to(torch.uint8)
    match = r"x0 must be a float tensor of images in \[-1, 1\], got dtype torch.uint8; convert with x.float\(\)"
    for call in (lambda: d.training_losses(net, pixels, t), lambda: d.q_sample(pixels, t)):
        with pytest.raises(TypeError, match=match):
            call()
    match = r"x_t is float64 but the network's weights are float32; pass x.float\(\)"
    with pytest.raises(TypeError, match=match):
        d.training_losses(net, x0.double(), t)
    with pytest.raises(TypeError, match=match):
        unet.TimeMLP()(torch.randn(4, 2, dtype=torch.float64), t)


# ---------------------------------------------------------------------- 4: layouts the networks cannot take
@pytest.mark.parametrize("layout", ["channels-last", "one image", "H x W"])
def test_unet_names_the_layout_it_expects(layout):
    x = images()
    x_t, t = {"channels-last": (x.permute(0, 2, 3, 1), torch.arange(4)),
              "one image": (x[0], torch.arange(1)), "H x W": (x[0, 0], torch.arange(1))}[layout]
    with pytest.raises(ValueError, match=r"UNet expects x_t of shape \[N, C, H, W\] with C = 1 \(channels first\); "
                                         r"got \(.*\)\. Use x.permute\(0, 3, 1, 2\) .* x\[None\]"):
        small_net()(x_t, t)


def test_unet_and_time_mlp_refuse_an_int_step_and_a_wrong_point_shape():
    with pytest.raises(TypeError, match=r"t must be a tensor \[N\] .* got int 5; use torch.full\(\(4,\), step\)"):
        small_net()(images(), 5)
    with pytest.raises(ValueError, match=r"TimeMLP expects x_t of shape \[N, dim\] with dim = 2; got \(4, 2, 1\)"):
        unet.TimeMLP()(torch.randn(4, 2, 1), torch.arange(4))


def test_unet_names_the_image_sides_it_can_take():
    net = unet.build_model("cpu-digits")  # 8x8, one downsampling
    assert net.side_multiple == 2 and net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2])).shape == (2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"halves the image sides 1 times, so it takes sides that are multiples of 2 "
                                         r"\(it was built for 8x8\); got 7x7"):
        net(torch.randn(2, 1, 7, 7), torch.tensor([1, 2]))
    crops = unet.build_model("cpu-crops")  # 32x32, three downsamplings: 28 = 3.5 x 8 cannot go down and up
    assert crops.side_multiple == 8 == 2 ** (len(unet.PRESETS["cpu-crops"]["channel_mult"]) - 1)
    with pytest.raises(ValueError, match=r"multiples of 8 \(it was built for 32x32\); got 28x28"):
        crops(torch.randn(1, 3, 28, 28), torch.tensor([1]))


# ---------------------------------------------------------------------- 6, 7, 13: the trainer
@pytest.mark.parametrize("dataset,preset,match", [
    ("digits", "toy-mlp", r"dataset 'digits' holds examples of shape \(1, 8, 8\) but preset 'toy-mlp' takes points "
                          r"of dimension 2; choose a preset that takes images with 1 input channel \(e.g. .*cpu-digits"),
    ("ring", "cpu-digits", r"dataset 'ring' holds examples of shape \(2,\) but preset 'cpu-digits' takes images with "
                           r"1 input channel; choose a preset that takes points of dimension 2 \(e.g. toy-mlp"),
])
def test_a_dataset_and_a_preset_that_do_not_fit_are_refused_before_training(cache, dataset, preset, match):
    with pytest.raises(ValueError, match=match):
        tr.train(tr.TrainConfig(dataset=dataset, preset=preset, **TINY), out_dir=cache / "run", progress=False)
    assert not (cache / "run" / "last.pt").exists()


def test_an_image_size_the_preset_cannot_take_is_refused_before_the_data_is_loaded(cache, monkeypatch):
    monkeypatch.setattr(tr, "load_train_data", lambda config: pytest.fail("the data was loaded"))
    with pytest.raises(ValueError, match=r"the network of preset 'cpu-crops' cannot be built with image_size 8: "
                                         r"attention_resolutions \(16,\) must be feature-map sides of this network, "
                                         r"\[8, 4, 2, 1\]; the preset is made for 32x32 images"):
        tr.train(tr.TrainConfig(dataset="celebahq", preset="cpu-crops", image_size=8, **TINY), progress=False)
    with pytest.raises(ValueError, match=r"cpu-crops' cannot be built with image_size 20: image_size 20 cannot be "
                                         r"halved 3 times"):
        tr.train(tr.TrainConfig(dataset="photo-crops", preset="cpu-crops", image_size=20, **TINY), progress=False)
    for field in ({"image_size": 8}, {"flip": True}):  # an MLP preset: a clear ValueError, also on the command line
        name = next(iter(field))
        with pytest.raises(ValueError, match=rf"TrainConfig.{name} = .* preset 'toy-mlp' is an MLP for 2-D points"):
            tr.TrainConfig(dataset="ring", preset="toy-mlp", **field, **TINY)
    with pytest.raises(ValueError, match=r"TrainConfig.image_size = 8 is invalid: preset 'toy-mlp' is an MLP"):
        main(["train", "--book-config", "toy-ring", "--image-size", "8", "--out", str(cache / "mlp")])


def test_nan_training_data_is_reported_as_a_data_problem(cache, monkeypatch):
    load = tr.load_train_data

    def with_nan(config):
        x = load(config).clone()
        x[3, 0, 0, 0], x[5, 0, 1, 1] = float("nan"), float("inf")
        return x
    monkeypatch.setattr(tr, "load_train_data", with_nan)
    with pytest.raises(ValueError, match=r"the training data of 'digits' holds 2 NaN/inf values \(first in example "
                                         r"3\); clean the data before training"):
        tr.train(tr.TrainConfig(dataset="digits", preset="cpu-digits", **TINY), progress=False)


def test_nan_data_is_refused_by_the_baselines_too():
    x = torch.randn(64, 2) * 0.5
    x[10, 1] = float("nan")
    model = baselines.build("vae", (2,), size="cpu")
    with pytest.raises(ValueError, match=r"the training data holds 1 NaN/inf values \(first in example 10\)"):
        baselines.train(model, x, steps=2, batch_size=16, progress=False)


def test_train_with_a_book_config_name_points_to_book_config():
    with pytest.raises(TypeError, match=r"train\(\) takes a TrainConfig or a dict.*train.book_config\('mnist5k'\)"):
        tr.train("mnist5k")


# ---------------------------------------------------------------------- 11: a run folder as the checkpoint
def test_load_checkpoint_accepts_a_run_folder(run_dir):
    result = tr.load_checkpoint(run_dir, map_location="cpu")
    assert result.step == 2 and result.checkpoint == run_dir / "last.pt"
    assert tr.read_checkpoint(run_dir)["step"] == 2
    with pytest.raises(FileNotFoundError, match=r"a folder without last.pt"):
        tr.read_checkpoint(run_dir.parent)


# ---------------------------------------------------------------------- 9, 10, 14, 19: the command line
def sample(run_dir, *extra):
    return main(["sample", "--checkpoint", str(run_dir / "last.pt"), "--n", "2", "--no-progress", *extra])


def test_cli_sample_steps_0_is_refused(run_dir, tmp_path):
    for steps in ("0", "1"):  # one step leaves no reverse step before the decoder
        with pytest.raises(ValueError, match=rf"--steps must be in 2\.\.50 \(T of this model\), got {steps}"):
            sample(run_dir, "--steps", steps, "--out", str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"--nrow must be >= 1 \(images per row of the grid\), got -1"):
        sample(run_dir, "--nrow", "-1", "--out", str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("out,why", [("grid", r"\(no file extension\)"), ("x.jpgg", r"\(extension .jpgg\)"),
                                     ("folder.png", r"\(a folder\)"), ("afile/x.png", "its folder .* cannot be created")])
def test_cli_sample_out_is_checked_before_the_checkpoint_is_loaded(tmp_path, out, why):
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ValueError, match=rf"--out .*{why}"):  # the checkpoint does not even exist
        main(["sample", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / out)])


@pytest.mark.parametrize("eta", ["2", "-1", "nan"])
def test_cli_eta_outside_0_1_is_a_parser_error(eta, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--checkpoint", "x.pt", "--out", "x.png", "--sampler", "ddim", "--eta", eta])
    assert exit_.value.code == 2
    assert f"eta must be a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like variance); got {eta}" \
        in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["train", "--dataset", "digits", "--preset", "cpu-digits", "--batch-size", "0"], "TrainConfig.batch_size = 0"),
    (["train", "--dataset", "mnist", "--preset", "cpu-digits", "--T", "50", "--steps", "1"], "mnist"),
    (["sample", "--checkpoint", "{tmp}/missing.pt", "--out", "{tmp}/x.png"], "no checkpoint at"),
])
def test_cli_usage_errors_are_one_line_with_exit_code_2(tmp_path, monkeypatch, capsys, args, message):
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "run"), "--no-progress"]
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys, "argv", ["ddpm-core", *(a.format(tmp=tmp_path) for a in args)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and err.startswith("python -m ddpm_core")


def test_cli_options_are_not_abbreviated(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # was taken as --timestep-sampler 50
        main(["train", "--dataset", "digits", "--t", "50", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "unrecognized arguments: --t 50" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_says_to_use_the_cpu(run_dir, tmp_path):
    with pytest.raises(ValueError, match=r"no CUDA device is visible; use --device cpu"):
        sample(run_dir, "--device", "cuda", "--out", str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"TrainConfig.device = 'cuda' but no CUDA device is visible; use device 'cpu'"):
        main(["train", "--dataset", "ring", "--preset", "toy-mlp", "--device", "cuda", "--out", str(tmp_path / "r")])


def test_cli_program_reports_a_missing_checkpoint_without_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ddpm_core", "sample", "--checkpoint", str(tmp_path / "no.pt"),
                          "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"python -m ddpm_core sample: error: no checkpoint at {tmp_path / 'no.pt'}"


def test_cli_program_reports_a_runtime_error_in_one_line(tmp_path):
    # DDPM_PROFILE=gpu on a machine without CUDA: the library's RuntimeError, not a traceback
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {**os.environ, "DDPM_PROFILE": "gpu", "DDPM_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "ddpm_core", "train", "--book-config", "toy-ring", "--steps", "1",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines() == [
        "python -m ddpm_core train: error: RuntimeError: DDPM_PROFILE=gpu but no CUDA device is visible; "
        "unset it or use 'cpu'"]


# ---------------------------------------------------------------------- 18: DDPM_CACHE
def test_blank_ddpm_cache_means_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DDPM_CACHE", "  ")
    assert runtime.cache_dir() == tmp_path / ".cache" / "ddpm_core"


def test_ddpm_cache_that_cannot_be_a_folder_names_the_variable(tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    for bad in (tmp_path / "afile", tmp_path / "afile" / "sub"):
        monkeypatch.setenv("DDPM_CACHE", str(bad))
        with pytest.raises(OSError, match=rf"cannot use the cache folder {bad} \(from \$DDPM_CACHE\): .*; point "
                                          r"DDPM_CACHE at a writable folder or unset it \(default ~/.cache/ddpm_core\)"):
            runtime.cache_dir()


# ---------------------------------------------------------------------- low priority: schedules and betas
def test_numpy_integer_steps_and_a_schedule_name_instead_of_betas():
    assert torch.equal(schedules.get_betas("cosine", np.int64(T)), schedules.get_betas("cosine", T))
    with pytest.raises(ValueError, match="positive integer"):
        schedules.get_betas("cosine", 50.0)
    with pytest.raises(TypeError, match=r"GaussianDiffusion takes betas \(a 1-D tensor\); for a named schedule use "
                                        r"GaussianDiffusion\(schedules.get_betas\('linear', T\)\)"):
        GaussianDiffusion("linear")


def test_denoise_step_out_of_range_and_foreign_baseline_checkpoints(run_dir, tmp_path):
    from ddpm_core import denoise
    with pytest.raises(ValueError, match=r"t must be a 0-indexed step in 0\.\.49, got 50"):
        denoise.sigma_at_step(diffusion(), T)
    with pytest.raises(FileNotFoundError, match="no baseline checkpoint at"):
        baselines.load(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="train.load_checkpoint"):
        baselines.load(run_dir / "last.pt")      # a DDPM checkpoint
    model = baselines.build("vae", (2,))
    path = tmp_path / "vae.pt"
    baselines.train(model, torch.randn(64, 2) * 0.3, steps=2, batch_size=16, progress=False, checkpoint=path)
    assert baselines.load(path).history is not None
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable baseline checkpoint"):
        baselines.load(tmp_path / "cut.pt")
