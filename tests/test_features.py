"""Tests of ddpm_core.features: the Inception path without its weights, the offline classifier,
and cached reference statistics. Nothing here downloads; caches live in temporary folders."""
import time

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from ddpm_core import features
from ddpm_core.features import ClassifierConfig, InceptionExtractor, SmallClassifier, quantize
from ddpm_core.metrics import FeatureStats, fid_from_stats, kid

FAST = ClassifierConfig(epochs=1)  # ~96 % on mnist5k in a few seconds: enough to rank FIDs


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(ddpm_cache):
    """conftest's private DDPM_CACHE, with a private torch hub folder and no Inception file named."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(ddpm_cache / "torch"))
        mp.delenv(features.INCEPTION_ENV, raising=False)
        yield ddpm_cache


@pytest.fixture(scope="module")
def mnist(cache):
    from ddpm_core.data import load_dataset

    return load_dataset("mnist5k", "train"), load_dataset("mnist5k", "test")


@pytest.fixture(scope="module")
def classifier(cache, mnist):
    torch.set_num_threads(1)
    return features.get_extractor("classifier:mnist5k", device="cpu", config=FAST)


@pytest.fixture(scope="module")
def random_inception():
    torch.set_num_threads(1)
    return InceptionExtractor(random_init=True, device="cpu")


def test_quantize_rounds_to_uint8_and_rejects_other_scales():
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    x = pixels.float() / 127.5 - 1.0  # how data.py scales 8-bit images
    assert torch.equal(quantize(x), pixels)
    assert torch.equal(quantize(pixels), pixels)
    assert quantize(torch.tensor([[[[-1.3, 1.4]]]])).tolist() == [[[[0, 255]]]]  # clipped
    with pytest.raises(ValueError, match=r"expected images in \[-1, 1\]"):
        quantize(pixels.float())


def test_inception_without_weights_maps_uint8_batch_to_2048_features_and_1008_logits(random_inception):
    rgb = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    feats, logits = random_inception.extract(rgb)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all() and torch.isfinite(logits).all()
    assert not torch.equal(feats[0], feats[1])
    # float images in [-1, 1] take the same path after uint8 quantisation; grey becomes RGB
    as_float = rgb.float() / 127.5 - 1.0
    assert torch.equal(random_inception.features(as_float), feats)
    grey = random_inception.features(as_float[:, :1])
    assert torch.equal(grey, random_inception.features(as_float[:, :1].expand(-1, 3, -1, -1)))
    assert random_inception.key is None and "RANDOM" in random_inception.name


def test_missing_inception_weights_error_names_the_file_the_places_and_the_remedy(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as info:
        features.get_extractor("inception", device="cpu", download=False)
    message = str(info.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in message  # a place it looked
    assert "DDPM_INCEPTION_WEIGHTS" in message and "weights_path" in message  # how to supply it
    with pytest.raises(FileNotFoundError, match="does not exist"):
        features.find_inception_weights(tmp_path / "nowhere.pth")


def test_failed_inception_download_prints_nothing_and_a_successful_one_says_where_it_went(tmp_path, monkeypatch,
                                                                                          capsys):
    """torch hub announces "Downloading: <url> to <path>" before it tries: offline that line (with
    the machine's paths) would only precede the error, so it is shown only when the download worked."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    tried = []

    def offline(url, model_dir=None, **kwargs):
        tried.append(url)
        print(f'Downloading: "{url}" to {model_dir}')
        raise OSError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError) as info:
        features.find_inception_weights()
    assert tried == list(features.INCEPTION_URLS) and "Downloading" not in capsys.readouterr().out
    assert str(info.value).splitlines()[0] == f"Inception-v3 weights for FID/IS not found: {features.INCEPTION_FILE}"
    assert "Name or service not known" in str(info.value)  # the reason stays in the error

    def online(url, model_dir=None, **kwargs):
        print(f'Downloading: "{url}" to {model_dir}')
        return {}

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", online)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    assert features.find_inception_weights() == hub / features.INCEPTION_URLS[0].rsplit("/", 1)[1]
    assert capsys.readouterr().out.startswith("Downloading:")


def test_inception_weights_are_looked_up_in_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(features.INCEPTION_ENV, raising=False)
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "weights-inception-2015-12-05-6726825d.pth").write_bytes(b"x")  # torch-fidelity's name
    assert features.find_inception_weights(download=False) == hub / "weights-inception-2015-12-05-6726825d.pth"
    env_file = tmp_path / "elsewhere.pth"
    env_file.write_bytes(b"x")
    monkeypatch.setenv(features.INCEPTION_ENV, str(env_file))
    assert features.find_inception_weights(download=False) == env_file
    arg_file = tmp_path / "given.pth"
    arg_file.write_bytes(b"x")
    assert features.find_inception_weights(arg_file, download=False) == arg_file


@pytest.mark.slow
def test_inception_loads_weights_from_the_environment_variable(tmp_path, monkeypatch, random_inception):
    state = random_inception.net.state_dict()
    state["fc.weight"] = torch.full_like(state["fc.weight"], 0.5)
    path = tmp_path / features.INCEPTION_FILE
    torch.save(state, path)
    monkeypatch.setenv(features.INCEPTION_ENV, str(path))
    loaded = InceptionExtractor(device="cpu", download=False)
    assert loaded.weights_path == path and loaded.key is not None
    assert torch.equal(loaded.net.fc.weight, state["fc.weight"])
    assert torch.equal(loaded.net.Conv2d_1a_3x3.conv.weight, state["Conv2d_1a_3x3.conv.weight"])


def test_a_wrong_inception_weights_file_is_named_with_where_to_get_the_right_one(tmp_path, monkeypatch):
    path = tmp_path / features.INCEPTION_FILE
    monkeypatch.setenv(features.INCEPTION_ENV, str(path))
    for content in (b"<html>404</html>", None):  # an error page saved as the file; another network's weights
        if content is None:
            torch.save({"conv.weight": torch.zeros(3)}, path)
        else:
            path.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{path} is not the FID Inception weights .*delete it and download "
                                             rf"the file from https://.*or point \$DDPM_INCEPTION_WEIGHTS"):
            InceptionExtractor(device="cpu", download=False)


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
def test_small_classifier_gives_features_and_logits_for_each_dataset_shape(channels, size):
    net = SmallClassifier(channels, size, num_classes=7).eval()
    feats, logits = net.features_and_logits(torch.rand(3, channels, size, size) * 2 - 1)
    assert feats.shape == (3, 128) and logits.shape == (3, 7)


def test_classifier_is_trained_once_cached_on_disk_and_reloaded(classifier, cache, mnist, monkeypatch):
    assert classifier.test_accuracy > 0.9
    assert "mnist5k" in classifier.name and f"{classifier.test_accuracy:.1%}" in classifier.name
    files = list((cache / "classifiers").glob("classifier-mnist5k-*.pt"))
    assert len(files) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(features, "train_classifier", no_training)
    again = features.classifier_extractor("mnist5k", FAST, device="cpu")
    assert again.test_accuracy == classifier.test_accuracy
    x = mnist[1].x[:16]
    assert torch.equal(again.features(x), classifier.features(x))
    assert torch.equal(again.logits(x), classifier.logits(x))
    other = features.ClassifierConfig(epochs=2)  # a different configuration is a different file
    assert features.get_extractor("classifier:mnist5k", "cpu", config=FAST) is classifier
    with pytest.raises(AssertionError, match="cached classifier"):
        features.classifier_extractor("mnist5k", other, device="cpu")


def test_fid_of_the_test_split_is_far_below_noise_and_blurred_images(classifier, mnist):
    train, test = mnist
    reference = features.reference_stats("mnist5k", "train", classifier)
    assert reference.n == len(train) and reference.dim == classifier.feature_dim
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(1000, 1, 28, 28, generator=gen) * 2 - 1
    blurred = TF.gaussian_blur(train.x[:1000], kernel_size=5, sigma=1.5)
    fid_test = fid_from_stats(classifier.stats(test.x), reference)
    fid_noise = fid_from_stats(classifier.stats(noise), reference)
    fid_blur = fid_from_stats(classifier.stats(blurred), reference)
    assert fid_test * 20 < fid_blur < fid_noise, (fid_test, fid_blur, fid_noise)
    # KID agrees: real test digits are close to the training digits, noise is not
    f_train, f_test, f_noise = (classifier.features(x[:500]) for x in (train.x, test.x, noise))
    assert kid(f_train, f_test, num_subsets=10, subset_size=200)[0] * 20 < kid(f_train, f_noise, 10, 200)[0]


def test_reference_stats_are_computed_once_and_cached(classifier, cache, mnist, monkeypatch):
    first = features.reference_stats("mnist5k", "test", classifier)
    files = list((cache / "reference_stats").glob("mnist5k-test-*.npz"))
    assert len(files) == 1 and classifier.key in files[0].name
    assert first.meta["extractor"] == classifier.name

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cached statistics should have been loaded")

    monkeypatch.setattr(classifier, "stats", no_recompute)
    again = features.reference_stats("mnist5k", "test", classifier)
    assert isinstance(again, FeatureStats) and again.n == first.n == len(mnist[1])
    np.testing.assert_array_equal(again.mean, first.mean)
    np.testing.assert_array_equal(again.cov, first.cov)
    assert again.meta["split"] == "test"


def test_get_extractor_rejects_unknown_names_and_unlabelled_datasets(cache):
    with pytest.raises(ValueError, match="unknown extractor"):
        features.get_extractor("vgg16", device="cpu")
    with pytest.raises(ValueError, match="no class labels"):
        features.get_extractor("classifier:swissroll", device="cpu")


@pytest.mark.slow
def test_default_classifier_trains_on_mnist5k_in_well_under_a_minute(tmp_path, monkeypatch, mnist):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    start = time.perf_counter()
    extractor = features.classifier_extractor("mnist5k", device="cpu")
    elapsed = time.perf_counter() - start
    print(f"default mnist5k classifier: {elapsed:.1f} s, {extractor.name}")
    assert extractor.test_accuracy >= 0.97
    assert elapsed < 60
