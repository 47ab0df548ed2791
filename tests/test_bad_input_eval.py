"""Bad input to the samplers, the evaluation entry points, the features and the pictures: each gets
a clear error that says what was wrong and what to do (or, for a model left in training mode, the
right result). Tiny models: T = 25, an 8x8 U-Net with 8 base channels."""
import numpy as np
import pytest
import torch

from ddpm_core import diffusion, evaluation, features, metrics, sampling, schedules, train, unet, viz

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (2, 1, 8, 8)


def process(T=25):
    return diffusion.GaussianDiffusion(schedules.get_betas("linear", T))


def tiny_net(dropout=0.0):
    """A small U-Net whose output depends on every layer (a fresh one outputs zeros, which hides dropout)."""
    torch.manual_seed(0)
    net = unet.build_model("cpu-digits", base_channels=8, norm_groups=4, dropout=dropout)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return net


def seeded():
    return torch.Generator().manual_seed(0)


class FlatPixels(features.FeatureExtractor):
    """A cheap extractor: the pixels are the features (no network to train)."""
    name, key, feature_dim, num_classes = "flat pixels", None, 64, 10

    def _forward(self, batch_uint8):
        x = batch_uint8.float().flatten(1) / 255
        return x, x[:, :10]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    return tmp_path


# ---------------------------------------------------------------- 1. a model left in training mode
def test_a_model_in_training_mode_samples_without_dropout_and_keeps_its_mode():
    net, d = tiny_net(dropout=0.5), process()
    runs = {
        "ddpm": lambda: sampling.ddpm_sample(net, d, SHAPE, generator=seeded()),
        "ddim": lambda: sampling.ddim_sample(net, d, SHAPE, steps=5, eta=1.0, generator=seeded()),
        "ddpm progressive": lambda: list(sampling.ddpm_sample_progressive(net, d, SHAPE, generator=seeded()))[-1]["x_t"],
        "ddim progressive": lambda: list(sampling.ddim_sample_progressive(net, d, SHAPE, steps=5,
                                                                          generator=seeded()))[-1]["x_t"],
        "sample_images": lambda: evaluation.sample_images(net, d, 2, steps=5, generator=seeded(), progress=False),
        "bits_per_dim": lambda: evaluation.bits_per_dim(net, d, torch.zeros(SHAPE), progress=False,
                                                        generator=seeded())["total_bpd"],
    }
    for name, run in runs.items():
        net.eval()
        expected = run()
        net.train()
        first, second = run(), run()
        assert torch.equal(first, second) and torch.equal(first, expected), name
        assert all(m.training for m in net.modules()), name  # back in training mode afterwards


def test_eval_mode_restores_each_submodule_and_leaves_plain_callables_alone():
    net = tiny_net()
    net.train()
    net.conv_in.eval()  # a mixed state is restored as it was, not to net.train()
    with sampling.eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert net.training and not net.conv_in.training
    fn = lambda x, t: x  # noqa: E731
    with sampling.eval_mode(fn) as same:
        assert same is fn


# ---------------------------------------------------------------- 5. sample_images(shape=...)
@pytest.mark.parametrize("shape", [(4, 1, 8, 8), (8, 8), (3, 8, 8)])
def test_sample_images_says_that_shape_is_one_sample(shape):
    with pytest.raises(ValueError, match=r"shape of one sample, \(C, H, W\).*\(1, 8, 8\).*The number of samples is n"):
        evaluation.sample_images(tiny_net(), process(), 4, shape=shape, progress=False)


# ---------------------------------------------------------------- 8. step counts
def test_numpy_ints_count_as_step_counts_and_floats_or_none_are_named():
    d = process()
    assert torch.equal(sampling.respace(d, np.int64(5)).timestep_map, sampling.respace(d, 5).timestep_map)
    assert sampling.space_timesteps(20, [np.int64(2), 3]) == sampling.space_timesteps(20, [2, 3])
    model = lambda x, t: torch.tanh(x)  # noqa: E731
    a = sampling.ddim_sample(model, d, SHAPE, steps=np.int64(5), generator=seeded())
    assert torch.equal(a, sampling.ddim_sample(model, d, SHAPE, steps=5, generator=seeded()))
    message = r"steps must be an int count, a list of ints, or a spec such as '10,20,30' or 'ddim50'; got "
    with pytest.raises(TypeError, match=message + r"12.5 \(float\).*T // 4"):
        sampling.respace(d, 12.5)
    with pytest.raises(TypeError, match=message + r"None \(NoneType\)"):
        sampling.respace(d, None)
    with pytest.raises(TypeError, match=message + r"10.0 \(float\)"):
        sampling.ddim_sample(model, d, SHAPE, steps=10.0)
    with pytest.raises(TypeError, match=message + r"4.0 \(float\)"):
        evaluation.sample_images(model, d, 2, steps=20 / 5, shape=(1, 8, 8), progress=False)


# ---------------------------------------------------------------- 12. a TrainResult as the model
def test_a_train_result_passed_as_the_model_points_to_its_ema_weights():
    net, d = tiny_net(), process()
    result = train.TrainResult(model=net, ema=net, diffusion=d, config=None, history={}, checkpoint=None,
                               step=0, sample_shape=(1, 8, 8))
    calls = [lambda: sampling.ddpm_sample(result, d, SHAPE),
             lambda: sampling.ddim_sample(result, d, SHAPE, steps=5),
             lambda: list(sampling.ddpm_sample_progressive(result, d, SHAPE)),
             lambda: evaluation.sample_images(result, d, 2, progress=False),
             lambda: evaluation.bits_per_dim(result, d, torch.zeros(SHAPE), progress=False)]
    for call in calls:
        with pytest.raises(TypeError, match=r"got a TrainResult; pass result.ema \(the EMA weights, for sampling "
                                            r"and evaluation\) or result.model"):
            call()


# ---------------------------------------------------------------- 14. DDIM's eta
@pytest.mark.parametrize("eta", [2.0, float("nan"), -1.0])
def test_ddim_eta_outside_0_1_is_rejected(eta):
    d, model = process(), (lambda x, t: torch.tanh(x))
    message = r"eta must lie in \[0, 1\] \(0: deterministic DDIM, 1: DDPM-like variance\); got " + str(eta)
    with pytest.raises(ValueError, match=message):
        sampling.ddim_sample(model, d, SHAPE, steps=5, eta=eta)
    with pytest.raises(ValueError, match=message):
        list(sampling.ddim_sample_progressive(model, d, SHAPE, steps=5, eta=eta))
    with pytest.raises(ValueError, match=message):
        evaluation.sample_images(model, d, 2, sampler="ddim", steps=5, eta=eta, shape=(1, 8, 8), progress=False)


# ---------------------------------------------------------------- 15. pictures of 0..255 images, no images
def test_pictures_reject_images_on_the_0_255_scale_and_empty_batches():
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    pixels = (x + 1) * 127.5
    for show in (viz.to_uint8, viz.image_grid, viz.show_grid):
        with pytest.raises(ValueError, match=r"expected images in \[-1, 1\], got min .* and max .*; map 0..255 "
                                             r"pixels with x / 127.5 - 1"):
            show(pixels)
    with pytest.raises(ValueError, match="image_grid needs at least one image"):
        viz.image_grid(x[:0])
    noisy = x + 1.5 * torch.randn(x.shape)  # a noised x_t (about N(0, 1)) is still shown, clipped
    assert viz.image_grid(noisy).dtype == np.uint8


# ---------------------------------------------------------------- 16. NaN images
def test_nan_or_inf_images_get_no_features():
    x = torch.zeros(4, 1, 8, 8)
    for bad in (float("nan"), float("inf")):
        x[1, 0, 2, 3] = bad
        with pytest.raises(ValueError, match=r"images hold NaN or inf values \(a diverged model\?\); "
                                             "cannot compute features"):
            features.quantize(x)
        with pytest.raises(ValueError, match="NaN or inf"):
            FlatPixels("cpu").features(x)


# ---------------------------------------------------------------- 17. counts of zero or less
def test_counts_of_zero_or_less_are_rejected_up_front(cache):
    net, d = tiny_net(), process()
    x = torch.zeros(SHAPE)
    ext = FlatPixels("cpu")
    for n in (0, -3):
        with pytest.raises(ValueError, match=rf"n must be at least 1; got {n}"):
            evaluation.sample_images(net, d, n, progress=False)
    for batch_size in (0, -1):
        with pytest.raises(ValueError, match=rf"batch_size must be at least 1; got {batch_size}"):
            evaluation.sample_images(net, d, 2, batch_size=batch_size, progress=False)
        with pytest.raises(ValueError, match=rf"batch_size must be at least 1; got {batch_size}"):
            evaluation.bits_per_dim(net, d, x, batch_size=batch_size, progress=False)
    for n in (0, 1):
        with pytest.raises(ValueError, match=rf"n_samples must be at least 2 \(FID needs a covariance\); got {n}"):
            evaluation.evaluate(net, d, dataset="digits", n_samples=n, extractor=ext, progress=False)
        with pytest.raises(ValueError, match=rf"at least 2 images \(FID needs a covariance\); got {n}"):
            evaluation.score_images(torch.zeros(n, 1, 8, 8), "digits", ext)
    with pytest.raises(ValueError, match=r"batch_size must be at least 1; got 0"):
        evaluation.evaluate(net, d, dataset="digits", n_samples=4, extractor=ext, batch_size=0, progress=False)
    f = torch.randn(10, 3)
    with pytest.raises(ValueError, match="num_subsets must be at least 1; got 0"):
        metrics.kid(f, f, num_subsets=0)


# ---------------------------------------------------------------- 18. scoring checked before sampling
def test_evaluate_checks_what_scoring_needs_before_it_samples(cache, monkeypatch):
    """A typo in the dataset or extractor, an extractor for other images, a model for other images,
    too many test images for the bound or a bad respacing of it: each fails before any sample is
    drawn (at paper scale, hours of sampling would otherwise be lost)."""
    net, d = tiny_net(), process()

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the arguments were checked")

    monkeypatch.setattr(evaluation, "sample_images", no_sampling)
    ext = FlatPixels("cpu")
    run = lambda **kw: evaluation.evaluate(net, d, **{"dataset": "digits", "n_samples": 4, "extractor": ext,
                                                      "progress": False, **kw})
    with pytest.raises(ValueError, match="unknown dataset 'digit'"):
        run(dataset="digit")
    with pytest.raises(ValueError, match="classifer:digits"):
        run(extractor="classifer:digits")
    with pytest.raises(ValueError, match=r"the model makes images of shape \(1, 8, 8\), but 'mnist5k' holds "
                                         r"\(1, 28, 28\)"):
        run(dataset="mnist5k")
    with pytest.raises(ValueError, match=r"bpd_examples = 100000, but 'digits' has 359 test images"):
        run(bpd_examples=100_000)
    with pytest.raises(ValueError, match="at least one step"):
        run(strided_bpd=0)
    with pytest.raises(ValueError, match="at least one step"):  # the bound's respacing, checked before sampling
        run(strided_bpd="0")
    for one in (1, "1", [1]):  # a one-step process has no bound to take
        with pytest.raises(ValueError, match="at least 2 steps"):
            run(strided_bpd=one)
    runs = {"a": train.TrainResult(model=net, ema=net, diffusion=d, config=train.book_config("digits"),
                                   history={"loss": torch.ones(60)}, checkpoint=None, step=60,
                                   sample_shape=(1, 8, 8))}
    with pytest.raises(ValueError, match="bpd_examples = 100000"):
        evaluation.measure_ablations(runs, extractor=ext, bpd_examples=100_000, progress=False)
    for stride in (0, -2, 2.5):
        with pytest.raises(ValueError, match=rf"bpd_stride is a number of steps \(>= 1\).*got {stride!r}"):
            evaluation.measure_ablations(runs, extractor=ext, bpd_stride=stride, progress=False)
    # with no extractor named, a dataset's own classifier scores it (it was the MNIST one for every dataset)
    seen = []
    monkeypatch.setattr(features, "get_extractor", lambda name: seen.append(name) or ext)
    monkeypatch.setattr(evaluation, "sample_images", lambda *a, **k: torch.full((4, 1, 8, 8), -1.0))
    ref = torch.randn(20, 64, dtype=torch.float64)
    monkeypatch.setattr(evaluation, "_reference", lambda dataset, e: (metrics.FeatureStats().update(ref), ref))
    evaluation.evaluate(net, d, dataset="digits", n_samples=4, bpd_examples=0, progress=False)
    assert seen[0] == "classifier:digits"


# ---------------------------------------------------------------- 19. images in [0, 1], probabilities as logits
def test_images_in_0_1_and_probabilities_passed_as_logits_are_warned_about(cache, recwarn):
    """The most common scale mistakes pass the range checks: images in [0, 1] (torchvision's ToTensor)
    and softmax probabilities where inception_score takes logits. Each gets a warning that says what
    to do; images in [-1, 1] and real logits get none."""
    net, d = tiny_net(), process()
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    ext = FlatPixels("cpu")
    ref = torch.randn(20, 64, dtype=torch.float64)
    evaluation._REFERENCE_FEATURES[("digits", id(ext))] = (metrics.FeatureStats().update(ref), ref)
    evaluation.score_images(x, "digits", ext)
    evaluation.bits_per_dim(net, d, x, progress=False)
    logits = torch.randn(50, 10)
    metrics.inception_score(logits, splits=5)
    assert not [w for w in recwarn if "[0, 1]" in str(w.message) or "logits" in str(w.message)]
    with pytest.warns(UserWarning, match=r"score_images: no pixel of these 8 images is below 0.*2 \* x - 1"):
        evaluation.score_images((x + 1) / 2, "digits", ext)
    with pytest.warns(UserWarning, match=r"bits_per_dim: no pixel of these 8 images is below 0"):
        evaluation.bits_per_dim(net, d, (x + 1) / 2, progress=False)
    with pytest.warns(UserWarning, match=r"takes logits.*np\.log\(p\)"):
        metrics.inception_score(torch.softmax(logits, 1), splits=5)
    del evaluation._REFERENCE_FEATURES[("digits", id(ext))]


def test_an_extractor_of_the_wrong_kind_is_refused_by_name():
    """Every metric entry point takes ``extractor`` through ``features.resolve_extractor``: an
    object that is neither a FeatureExtractor nor a name is refused before any data is loaded."""
    ext = FlatPixels()
    assert features.resolve_extractor(ext, "digits") is ext
    images = torch.zeros(4, 1, 8, 8)
    for bad in (42, FlatPixels):  # a number; the class instead of an instance
        with pytest.raises(TypeError, match=f"extractor must be a FeatureExtractor.*got {type(bad).__name__}"):
            evaluation.score_images(images, "digits", extractor=bad)
