"""Lower-priority bad input: each case gets a clear error that says what was given, what is accepted
and what to do, before any work is done; valid input next to it still works and gives the same numbers.
Tiny models: T = 25, an 8x8 U-Net with 8 base channels, or plain functions."""
import re

import numpy as np
import pytest
import torch

from ddpm_core import bench, data, denoise, diffusion, evaluation, features, metrics, sampling, schedules, unet
from ddpm_core import train as tr

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 1, 8, 8)


def process(T=25):
    return diffusion.GaussianDiffusion(schedules.get_betas("linear", T))


def tiny_net():
    torch.manual_seed(0)
    return unet.build_model("cpu-digits", base_channels=8, norm_groups=4).eval()


def images(n=2):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1


def seeded():
    return torch.Generator().manual_seed(0)


def toy_model(x, t):
    return torch.tanh(x)


class FlatPixels(features.FeatureExtractor):
    """A cheap extractor: the pixels are the features (no network to train)."""
    name, key, feature_dim, num_classes = "flat pixels", None, 64, 10

    def _forward(self, batch_uint8):
        x = batch_uint8.float().flatten(1) / 255
        return x, x[:, :10]


# ---------------------------------------------------------------- 2. T as a numpy or 0-d tensor integer
def test_get_betas_takes_numpy_and_0d_tensor_integers_and_names_what_it_takes():
    for name in ("linear", "cosine"):
        expected = schedules.get_betas(name, 50)
        for T in (np.int64(50), np.int32(50), torch.tensor(50), torch.tensor(50, dtype=torch.int32)):
            assert torch.equal(schedules.get_betas(name, T), expected), (name, T)
    for T in (50.0, torch.tensor(50.0), torch.tensor([50]), "50", 0, True):
        with pytest.raises(ValueError, match="T must be a positive integer number of steps"):
            schedules.get_betas("cosine", T)


# ---------------------------------------------------------------- 3. q_posterior with x_t of another shape
def test_q_posterior_names_an_x_t_of_another_shape():
    d, x0, t = process(), images(), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"x_t has shape \(2, 1, 4, 4\) but x0 has \(2, 1, 8, 8\); "
                                         r"q\(x_\{t-1\} \| x_t, x_0\) needs x_t and x0 of the same shape"):
        d.q_posterior(x0, torch.zeros(2, 1, 4, 4), t)
    mean, var, log_var = d.q_posterior(x0, x0 + 0.1, t)  # the same shape still works
    assert mean.shape == var.shape == log_var.shape == x0.shape


# ---------------------------------------------------------------- 4. samplers: generator, x_T, swapped arguments
GENERATOR = r"generator must be a torch.Generator or None, got int 0; pass torch.Generator\(\).manual_seed\(0\)"


def test_an_int_generator_is_refused_by_the_samplers_and_the_evaluation():
    d, net = process(), tiny_net()
    calls = {
        "ddpm": lambda: sampling.ddpm_sample(net, d, SHAPE, generator=0),
        "ddim": lambda: sampling.ddim_sample(net, d, SHAPE, steps=5, generator=0),
        "ddpm progressive": lambda: list(sampling.ddpm_sample_progressive(net, d, SHAPE, generator=0)),
        "ddim progressive": lambda: list(sampling.ddim_sample_progressive(net, d, SHAPE, steps=5, generator=0)),
        "sample_images": lambda: evaluation.sample_images(net, d, 2, generator=0, progress=False),
        "bits_per_dim": lambda: evaluation.bits_per_dim(net, d, images(), generator=0, progress=False),
        "bpd": lambda: d.bpd(net, images(), noise_generator=0),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=GENERATOR):
            call()


def test_an_x_T_of_another_shape_is_refused_and_a_matching_one_still_works():
    d = process()
    x_T = torch.randn(3, 1, 8, 8, generator=seeded())
    match = (r"x_T has shape \(3, 1, 8, 8\) but shape is \(2, 1, 8, 8\); x_T is the start of the chain: "
             r"pass shape=x_T.shape")
    for call in (lambda: sampling.ddpm_sample(toy_model, d, SHAPE, x_T=x_T),
                 lambda: sampling.ddim_sample(toy_model, d, SHAPE, steps=5, x_T=x_T),
                 lambda: list(sampling.ddpm_sample_progressive(toy_model, d, SHAPE, x_T=x_T)),
                 lambda: list(sampling.ddim_sample_progressive(toy_model, d, SHAPE, steps=5, x_T=x_T))):
        with pytest.raises(ValueError, match=match):
            call()
    a = sampling.ddpm_sample(toy_model, d, list(x_T.shape), x_T=x_T, generator=seeded())
    b = sampling.ddpm_sample(toy_model, d, x_T.shape, x_T=x_T, generator=seeded())
    assert a.shape == x_T.shape and torch.equal(a, b)


def test_model_and_diffusion_swapped_are_named():
    d, net = process(), tiny_net()
    match = (r"diffusion must be a GaussianDiffusion, got UNet; the model and the diffusion are swapped: "
             r"call .*\(model, diffusion, \.\.\.\)")
    for call in (lambda: sampling.ddpm_sample(d, net, SHAPE),
                 lambda: sampling.ddim_sample(d, net, SHAPE, steps=5),
                 lambda: list(sampling.ddpm_sample_progressive(d, net, SHAPE)),
                 lambda: list(sampling.ddim_sample_progressive(d, net, SHAPE)),
                 lambda: evaluation.sample_images(d, net, 2, progress=False)):
        with pytest.raises(TypeError, match=match):
            call()
    with pytest.raises(TypeError, match=r"diffusion must be a GaussianDiffusion, got str; the samplers take "
                                        r"\(model, diffusion, \.\.\.\)"):
        sampling.ddpm_sample(net, "linear", SHAPE)


# ---------------------------------------------------------------- 5. denoising: the step range, PSNR's scale
def test_denoise_one_step_names_the_step_range():
    d, y = process(), images()
    for t in (25, -1):
        with pytest.raises(ValueError, match=rf"t must be a 0-indexed step in 0\.\.24, got {t}"):
            denoise.denoise_one_step(toy_model, d, y, 0.5, t=t)
    assert denoise.denoise_one_step(toy_model, d, y, 0.5, t=24).shape == y.shape


def test_the_denoisers_refuse_noisy_images_on_another_scale():
    d, x0 = process(), images()
    y = denoise.add_noise(x0, 0.3, torch.Generator().manual_seed(0))
    for fn in (denoise.denoise_one_step, denoise.denoise_chain):
        assert fn(toy_model, d, y, 0.3).shape == y.shape  # in range: 1 + 10 sigma = 4
        with pytest.raises(ValueError, match=r"y reaches \d\d\d, beyond what images in \[-1, 1\] with noise of "
                                             r"sigma = 0.3 reach \(1 \+ 10 sigma = 4\).*x / 127.5 - 1"):
            fn(toy_model, d, (y + 1) * 127.5, 0.3)
        with pytest.raises(ValueError, match="y holds NaN"):
            fn(toy_model, d, torch.full_like(y, float("nan")), 0.3)
        with pytest.raises(TypeError, match=r"y must be a tensor .*got ndarray"):
            fn(toy_model, d, y.numpy(), 0.3)


def test_psnr_refuses_0_255_images_at_the_default_range_and_keeps_its_numbers_in_minus_1_1():
    x, ref = images(), images() * 0.9
    pixels = (x + 1) * 127.5
    match = r"expected images in \[-1, 1\], got min .* and max 2\d\d; map 0..255 pixels with x / 127.5 - 1"
    with pytest.raises(ValueError, match=match):
        denoise.psnr(pixels, (ref + 1) * 127.5)
    with pytest.raises(ValueError, match=match):
        denoise.psnr(x, (ref + 1) * 127.5)
    # [-1, 1] images (and noisy ones beyond it, which are clipped) give the same numbers as before
    mse = ((x - ref) ** 2).flatten(1).mean(1)
    assert torch.allclose(denoise.psnr(x, ref), 10 * torch.log10(4 / mse))
    noisy = x + 3 * torch.randn(x.shape, generator=seeded())
    assert torch.allclose(denoise.psnr(noisy, ref), 10 * torch.log10(4 / ((noisy.clamp(-1, 1) - ref) ** 2)
                                                                         .flatten(1).mean(1)))
    assert torch.isfinite(denoise.psnr(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2) + 1e-7)).all()


# ---------------------------------------------------------------- 6. KID's subset parameters
def test_kid_names_a_subset_size_or_count_that_cannot_work():
    f = torch.randn(10, 3, generator=seeded())
    for size in (0, 1, -5):
        with pytest.raises(ValueError, match=rf"subset_size must be at least 2 \(the unbiased MMD\^2 needs two "
                                             rf"samples per subset\); got {size}"):
            metrics.kid(f, f, subset_size=size)
    for count in (0, 2.5):
        with pytest.raises(ValueError, match=rf"num_subsets must be at least 1; got {count}"):
            metrics.kid(f, f, num_subsets=count)
    assert metrics.kid(f, f, num_subsets=np.int64(3), subset_size=np.int64(5)) == metrics.kid(
        f, f, num_subsets=3, subset_size=5)


# ---------------------------------------------------------------- 8. features of a numpy array
def test_features_accept_numpy_arrays_and_name_other_types():
    ext, x = FlatPixels("cpu"), images(4)
    expected = ext.extract(x)
    for arr in (x.numpy(), x.numpy().astype(np.float64)):
        got = ext.extract(arr)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        assert torch.equal(ext.features(arr), expected[0])
    readonly = x.numpy().copy()
    readonly.flags.writeable = False
    assert torch.equal(ext.features(readonly), expected[0])
    assert torch.equal(ext.features(features.quantize(x).numpy()), expected[0])  # uint8 pixels
    with pytest.raises(TypeError, match=r"images must be a tensor or a numpy array \[N, C, H, W\] "
                                        r"\(floats in \[-1, 1\] or uint8\), got str"):
        ext.features("samples.png")


# ---------------------------------------------------------------- 9. image sizes and batch sizes of a dataset
@pytest.mark.parametrize("size", [0, -4, 16.0, "16"])
def test_load_dataset_names_a_bad_image_size(size):
    with pytest.raises(ValueError, match=rf"image_size must be None \(the dataset's own size\) or an int >= 1; "
                                         rf"got {size!r}"):
        data.load_dataset("digits", image_size=size)


def test_batches_name_a_batch_size_that_is_not_a_positive_int():
    ds = data.load_dataset("digits", max_images=64)
    for size in (32.0, 0, "32"):
        with pytest.raises(ValueError, match=rf"batch_size must be an int >= 1; got {size!r}"):
            next(iter(ds.batches(size)))
    assert len(next(iter(ds.batches(np.int64(32))))) == 32
    assert data.load_dataset("digits", image_size=np.int64(16), max_images=2).x.shape == (2, 1, 16, 16)


# ---------------------------------------------------------------- 10. out_dir that is a file
def test_train_refuses_an_out_dir_that_is_a_file_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    file = tmp_path / "run.txt"
    file.write_text("notes")
    config = tr.TrainConfig(dataset="ring", preset="toy-mlp", T=50, batch_size=8, steps=2, warmup_steps=0,
                            log_every=1, checkpoint_every=2)
    steps = []
    for out_dir, where in ((file, "is a file"), (file / "sub", f"lies inside {file}, which is a file")):
        with pytest.raises(ValueError, match=re.escape(f"out_dir {out_dir} {where}, not a folder; pass a folder "
                                                       "for the run's checkpoints (it is created if missing)")):
            tr.train(config, out_dir=out_dir, progress=False, callback=steps.append)
    assert steps == [] and file.read_text() == "notes"


# ---------------------------------------------------------------- 11. the benchmark's --presets
@pytest.mark.parametrize("spec, why", [
    ("cpu-digits", r"'cpu-digits' is not preset:batch"),
    ("cpu-digits:", r"'cpu-digits:' is not preset:batch"),
    ("cpu-digits:big", r"batch 'big' of 'cpu-digits:big' is not an int >= 1"),
    ("cpu-digits:0", r"batch '0' of 'cpu-digits:0' is not an int >= 1"),
    ("cpu-digts:8", r"unknown preset 'cpu-digts'; choose one of \[.*'cpu-digits'"),
])
def test_bench_presets_must_be_preset_colon_batch(spec, why, capsys):
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--presets", spec, "--out", "-"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "--presets: " in err and "(expected comma-separated preset:batch pairs, e.g. cpu-digits:64)" in err
    assert re.search(why, err), err
