"""Feature extractors for FID, IS and KID, and cached reference statistics of datasets.

Two extractors share one interface (:class:`FeatureExtractor`):

* ``"inception"``: the Inception-v3 of the FID literature (the TensorFlow "2015-12-05" graph as
  ported by torch-fidelity's ``FeatureExtractorInceptionV3``): 2048-d pool features for FID/KID
  and 1008-way logits for IS. Images are quantised to uint8 and resized to 299x299 with
  torch-fidelity's exact copy of TensorFlow 1.x bilinear resize, as the papers' numbers were.
  Its weights (``pt_inception-2015-12-05-6726825d.pth``) come from a path, ``$DDPM_INCEPTION_WEIGHTS``,
  the torch hub cache or the project cache, or a download where there is internet.
* ``"classifier:<dataset>"``: the offline default, a small LeNet-style network trained by the
  project on the dataset's training split (about 20 s on one CPU core for mnist5k, once), cached on disk by dataset and
  configuration. Its penultimate layer gives the features, its head the class logits.

Numbers from the two are not comparable; every table prints the extractor's ``.name``.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import runtime
from .metrics import FeatureStats

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
# The names pytorch-fid and torch-fidelity give their conversions of the TF 2015-12-05 weights;
# both use the same state-dict layout (checked: pytorch-fid's network loads into torch-fidelity's).
INCEPTION_FILE_ALIASES = (INCEPTION_FILE, "weights-inception-2015-12-05-6726825d.pth")
INCEPTION_URLS = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE,
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
)
INCEPTION_ENV = "DDPM_INCEPTION_WEIGHTS"


def _as_tensor(images) -> torch.Tensor:
    """A tensor of ``images``: a numpy array is taken as it is (no copy unless it is read-only)."""
    if isinstance(images, torch.Tensor):
        return images
    if isinstance(images, np.ndarray):
        arr = np.ascontiguousarray(images)  # torch takes no negative strides (a flipped view)
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())
    raise TypeError(f"images must be a tensor or a numpy array [N, C, H, W] (floats in [-1, 1] or uint8), "
                    f"got {type(images).__name__}")


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Map float images in [-1, 1] to uint8 ``round((x + 1) * 127.5)``, as saved samples are.

    uint8 input is returned unchanged (a numpy array as a tensor). Values outside [-1, 1] are clipped;
    values far outside (beyond [-2, 2]) raise, since they mean the images are on another scale, and so
    do NaN and inf.
    """
    images = _as_tensor(images)
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [-1, 1] or uint8 images, got dtype {images.dtype}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images hold NaN or inf values (a diverged model?); cannot compute features")
    runtime.check_image_range(float(images.min()), float(images.max()), 2.0)
    return ((images.float() + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


# The name of the network the papers' FID and IS use (InceptionExtractor with its real weights).
PAPER_INCEPTION_NAME = "Inception-v3 (TF 2015-12-05 weights, torch-fidelity port)"


class FeatureExtractor:
    """Common interface: ``features(images) -> [N, D]``, ``logits(images) -> [N, K]``.

    ``images`` are ``[N, C, H, W]`` floats in [-1, 1] (or uint8), tensors or numpy arrays; they are
    quantised to uint8 first, so generated samples and dataset images go through the same pipeline.
    Results are float32 CPU tensors. Subclasses implement :meth:`_forward` on a uint8 batch.

    :ivar name: a description that tables print.
    :ivar key: a short string identifying the network and its weights in cache file names
        (None when the weights are random and nothing may be cached).
    :ivar feature_dim: D. :ivar num_classes: K. :ivar test_accuracy: for a classifier, else None.
    """

    name: str
    key: str | None
    feature_dim: int
    num_classes: int
    test_accuracy: float | None = None
    batch_size: int = 256

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else runtime.get_device()

    def _forward(self, batch_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _batches(self, images: torch.Tensor | np.ndarray, batch_size: int | None) -> Iterator[torch.Tensor]:
        images = _as_tensor(images)
        if images.dim() != 4:
            raise ValueError(f"expected images of shape [N, C, H, W], got {tuple(images.shape)}")
        bs = batch_size or self.batch_size
        for i in range(0, images.shape[0], bs):
            yield quantize(images[i:i + bs]).to(self.device)

    @torch.no_grad()
    def extract(self, images: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [N, D], logits [N, K]) from one pass over the images."""
        feats, logits = [], []
        for batch in self._batches(images, batch_size):
            f, l = self._forward(batch)
            feats.append(f.float().cpu())
            logits.append(l.float().cpu())
        if not feats:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, self.num_classes)
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """[N, D] features (FID, KID) of ``[N, C, H, W]`` images in [-1, 1]."""
        return self.extract(images, batch_size)[0]

    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """[N, K] class logits (Inception Score) of ``[N, C, H, W]`` images in [-1, 1]."""
        return self.extract(images, batch_size)[1]

    @torch.no_grad()
    def stats(self, images: torch.Tensor, batch_size: int | None = None) -> FeatureStats:
        """Streaming :class:`FeatureStats` of the images' features (features are not kept)."""
        stats = FeatureStats(self.feature_dim)
        for batch in self._batches(images, batch_size):
            stats.update(self._forward(batch)[0])
        return stats

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, D={self.feature_dim}, K={self.num_classes})"


# ----------------------------------------------------------------------------------------------
# Inception-v3 (torch-fidelity's port of the TensorFlow FID network)


def _inception_net() -> nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` with 2048-d features and bias-free logits.

    Its constructor always loads weights; we hand it an empty state dict and skip that load, so
    the network is built with random initialisation and the real weights are loaded afterwards.
    """
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as err:
        raise ImportError("the Inception extractor uses torch-fidelity: pip install torch-fidelity") from err

    class _Inception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # noqa: D401
            if getattr(self, "_ddpm_skip_load", True):
                return None
            return super().load_state_dict(state_dict, *args, **kwargs)

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    # "logits_unbiased" (pool features times the fc weight, no bias) is what torch-fidelity and
    # the original TensorFlow Inception Score code feed to the softmax.
    net = _Inception("inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=empty)
    object.__setattr__(net, "_ddpm_skip_load", False)
    return net


def inception_weight_locations(weights_path: str | Path | None = None) -> list[Path]:
    """Where the Inception weights are looked for, in order."""
    places = []
    if weights_path is not None:
        places.append(Path(weights_path).expanduser())
    if os.environ.get(INCEPTION_ENV):
        places.append(Path(os.environ[INCEPTION_ENV]).expanduser())
    for folder in (Path(torch.hub.get_dir()) / "checkpoints", runtime.cache_dir()):
        places.extend(folder / name for name in INCEPTION_FILE_ALIASES)
    return places


def find_inception_weights(weights_path: str | Path | None = None, download: bool = True) -> Path:
    """Path of the Inception weights: the first file of :func:`inception_weight_locations` that
    exists, else a download into the torch hub cache (where there is internet).

    :raises FileNotFoundError: naming the file, the places looked in and how to supply it.
    """
    places = inception_weight_locations(weights_path)
    if weights_path is not None and not places[0].is_file():
        raise FileNotFoundError(f"Inception weights file {places[0]} (weights_path) does not exist")
    for place in places:
        if place.is_file():
            return place
    failure = "download disabled (download=False)"
    if download:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        for url in INCEPTION_URLS:
            said = io.StringIO()  # torch hub's "Downloading: ... to ..." line: shown only if it worked
            try:
                with contextlib.redirect_stdout(said):
                    torch.hub.load_state_dict_from_url(url, model_dir=str(hub), map_location="cpu",
                                                       progress=False)
                print(said.getvalue(), end="")
                return hub / url.rsplit("/", 1)[1]
            except Exception as err:  # no internet, or the host refused
                failure = f"download from {url} failed: {type(err).__name__}: {err}"
    looked = "\n  ".join(str(p) for p in places)
    raise FileNotFoundError(
        f"Inception-v3 weights for FID/IS not found: {INCEPTION_FILE}\n"
        f"Looked in:\n  {looked}\n{failure}.\n"
        f"To supply them, download {INCEPTION_URLS[0]} on a machine with internet, then either "
        f"pass weights_path=..., set {INCEPTION_ENV}=/path/to/{INCEPTION_FILE}, or copy the file "
        f"to {Path(torch.hub.get_dir()) / 'checkpoints'}. Offline, use the project's classifier "
        f"instead: get_extractor('classifier:<dataset>')."
    )


class InceptionExtractor(FeatureExtractor):
    """Inception-v3 features of the FID literature: 2048-d pool features, 1008 logits.

    :param weights_path: the weights file; default: see :func:`find_inception_weights`.
    :param random_init: build the network with random weights (tests only: its numbers mean nothing).
    :param download: allow a download when no file is found.
    """

    feature_dim = 2048
    num_classes = 1008
    batch_size = 50

    def __init__(self, weights_path: str | Path | None = None, device: torch.device | str | None = None,
                 *, random_init: bool = False, download: bool = True) -> None:
        super().__init__(device)
        self.weights_path = None if random_init else find_inception_weights(weights_path, download)
        self.net = _inception_net()
        if random_init:
            self.name = "Inception-v3 with RANDOM weights (a test network, not the FID one)"
            self.key = None
        else:
            try:
                state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
                self.net.load_state_dict(state)
            except Exception as err:  # not a torch file, a truncated download, another network's weights
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(f"{self.weights_path} is not the FID Inception weights {INCEPTION_FILE} "
                                 f"({type(err).__name__}: {first}); delete it and download the file from "
                                 f"{INCEPTION_URLS[0]}, or point ${INCEPTION_ENV} at a good copy") from err
            self.name = PAPER_INCEPTION_NAME
            self.key = "inception-2015-12-05"
        self.net.to(self.device).eval()

    def _forward(self, batch_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if batch_uint8.shape[1] == 1:  # grey -> RGB
            batch_uint8 = batch_uint8.expand(-1, 3, -1, -1)
        if batch_uint8.shape[1] != 3:
            raise ValueError(f"Inception takes 1 or 3 channels, got {batch_uint8.shape[1]}")
        return self.net(batch_uint8.contiguous())


# ----------------------------------------------------------------------------------------------
# the offline default: a small classifier trained on the dataset itself


class SmallClassifier(nn.Module):
    """A LeNet-style classifier: two conv-BN-ReLU-maxpool blocks, a hidden layer, a linear head.

    :param in_channels: C of the ``[N, C, H, W]`` input in [-1, 1].
    :param image_size: H = W (at least 4).
    :param num_classes: K, the number of logits.
    :param width: channels of the first conv (the second has twice as many).
    :param feature_dim: D, the size of the penultimate layer used as features.
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, width: int = 16,
                 feature_dim: int = 128) -> None:
        super().__init__()
        if image_size < 4:
            raise ValueError(f"image_size must be at least 4, got {image_size}")
        self.in_channels, self.image_size, self.num_classes = in_channels, image_size, num_classes
        side = image_size // 4
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * side * side, feature_dim), nn.BatchNorm1d(feature_dim), nn.ReLU(),
        )  # batch norm keeps every feature unit alive (without it about half never fire)
        self.head = nn.Linear(feature_dim, num_classes)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([N, D] penultimate activations, [N, K] logits) of ``[N, C, H, W]`` images."""
        h = self.body(x)
        return h, self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]


@dataclass(frozen=True)
class ClassifierConfig:
    """How the offline classifier is trained (part of its cache key)."""

    width: int = 16
    feature_dim: int = 128
    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    max_shift: int = 2  # random translations of up to this many pixels (data augmentation)
    seed: int = 0


def _fingerprint(*tensors: torch.Tensor) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def _random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate a batch [N, C, H, W] by one random offset in [-max_shift, max_shift]^2, filling with -1."""
    if max_shift == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    i, j = torch.randint(0, 2 * max_shift + 1, (2,), generator=gen).tolist()
    return padded[..., i:i + h, j:j + w]


def train_classifier(x: torch.Tensor, y: torch.Tensor, num_classes: int, config: ClassifierConfig = ClassifierConfig(),
                     device: torch.device | str | None = None) -> SmallClassifier:
    """Train a :class:`SmallClassifier` on uint8-quantised images ``x`` [N, C, H, W] and labels ``y``
    with Adam, a cosine learning-rate decay and random shifts of up to ``config.max_shift`` pixels
    (capped at H // 8); seeded, so the same inputs give the same network."""
    device = torch.device(device) if device is not None else runtime.get_device()
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"expected square images [N, C, H, H], got {tuple(x.shape)}")
    x = quantize(x).float().div_(127.5).sub_(1.0).to(device)
    y = y.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = SmallClassifier(x.shape[1], x.shape[-1], num_classes, config.width, config.feature_dim)
    model.to(device).train()
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # Batches of 64 tiny images gain little from intra-op threads, and on a shared CPU the
        # threads' spinning makes training ~8x slower (measured: 170 s with 2 threads, 21 s with 1).
        torch.set_num_threads(1)
    try:
        _fit(model, x, y, config)
    finally:
        torch.set_num_threads(threads)
    return model.eval()


def _fit(model: SmallClassifier, x: torch.Tensor, y: torch.Tensor, config: ClassifierConfig) -> None:
    gen = torch.Generator().manual_seed(config.seed)
    max_shift = min(config.max_shift, x.shape[-1] // 8)
    steps = config.epochs * (len(x) // config.batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    for _ in range(config.epochs):
        order = torch.randperm(len(x), generator=gen).to(x.device)
        for i in range(0, len(x) - config.batch_size + 1, config.batch_size):
            idx = order[i:i + config.batch_size]
            loss = F.cross_entropy(model(_random_shift(x[idx], max_shift, gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def _accuracy(model: SmallClassifier, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    correct = 0
    for i in range(0, len(x), 512):
        xb = quantize(x[i:i + 512]).float().div_(127.5).sub_(1.0).to(device)
        correct += int((model(xb).argmax(1).cpu() == y[i:i + 512]).sum())
    return correct / max(len(x), 1)


class ClassifierExtractor(FeatureExtractor):
    """Features and logits of a trained :class:`SmallClassifier` (the offline default)."""

    def __init__(self, model: SmallClassifier, name: str, key: str | None, test_accuracy: float | None = None,
                 device: torch.device | str | None = None) -> None:
        super().__init__(device)
        self.model = model.to(self.device).eval()
        self.name, self.key, self.test_accuracy = name, key, test_accuracy
        self.feature_dim = model.head.in_features
        self.num_classes = model.num_classes

    def _forward(self, batch_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        if tuple(batch_uint8.shape[1:]) != (m.in_channels, m.image_size, m.image_size):
            raise ValueError(f"this classifier takes [N, {m.in_channels}, {m.image_size}, {m.image_size}] "
                             f"images, got {tuple(batch_uint8.shape)}")
        return m.features_and_logits(batch_uint8.float().div_(127.5).sub_(1.0))


def classifier_extractor(dataset: str = "mnist5k", config: ClassifierConfig = ClassifierConfig(),
                         device: torch.device | str | None = None, verbose: bool = False) -> ClassifierExtractor:
    """The classifier trained on ``dataset``'s training split, loaded from the cache or trained once.

    The cache file ``runtime.cache_dir()/classifiers/classifier-<dataset>-<hash>.pt`` is keyed by the dataset
    name, a hash of its training data and the :class:`ClassifierConfig`; it stores the weights and
    the accuracy on the dataset's test split.
    """
    from .data import load_dataset

    device = torch.device(device) if device is not None else runtime.get_device()
    train = load_dataset(dataset, "train")
    if train.y is None or not train.num_classes or train.x.dim() != 4:
        raise ValueError(f"dataset {dataset!r} has no class labels (or no images), so no classifier can be "
                         "trained on it; use get_extractor('classifier:mnist5k') or 'inception'")
    spec = dict(dataset=dataset, data=_fingerprint(train.x, train.y), config=asdict(config), version=2)
    key = f"classifier-{dataset}-" + hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    path = runtime.cache_dir() / "classifiers" / f"{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = SmallClassifier(*saved["shape"], config.width, config.feature_dim)
        model.load_state_dict(saved["state_dict"])
        acc = float(saved["test_accuracy"])
    else:
        start = time.perf_counter()
        model = train_classifier(train.x, train.y, train.num_classes, config, device)
        test = load_dataset(dataset, "test")
        acc = _accuracy(model, test.x, test.y, device)
        if verbose:
            print(f"trained the {dataset} classifier in {time.perf_counter() - start:.1f} s, test accuracy {acc:.1%}")
        saved = dict(state_dict={k: v.cpu() for k, v in model.state_dict().items()},
                     shape=[model.in_channels, model.image_size, model.num_classes],
                     test_accuracy=acc, spec=json.dumps(spec))
        runtime.atomic_write(path, lambda f: torch.save(saved, f))  # parallel notebooks never read half a file
    name = f"LeNet-style classifier trained on {dataset} (test acc {acc:.1%})"
    return ClassifierExtractor(model, name, key, acc, device)


_EXTRACTORS: dict[tuple, FeatureExtractor] = {}


def get_extractor(name: str = "classifier:mnist5k", device: torch.device | str | None = None, *,
                  weights_path: str | Path | None = None, download: bool = True,
                  config: ClassifierConfig = ClassifierConfig()) -> FeatureExtractor:
    """A feature extractor by name, built once per process.

    :param name: ``"classifier:<dataset>"`` (the offline default; trained and cached on first use)
        or ``"inception"`` (needs the Inception weights, see :func:`find_inception_weights`).
    :param device: default: ``runtime.get_device()``.
    :param weights_path: Inception only: the weights file.
    :param download: Inception only: allow a download when the file is not found.
    :param config: classifier only: how it is trained.
    """
    device = torch.device(device) if device is not None else runtime.get_device()
    cache_key = (name, str(device), str(weights_path), str(runtime.cache_dir()), config)
    if cache_key in _EXTRACTORS:
        return _EXTRACTORS[cache_key]
    if name == "inception":
        extractor: FeatureExtractor = InceptionExtractor(weights_path, device, download=download)
    elif name.startswith("classifier:"):
        extractor = classifier_extractor(name.split(":", 1)[1], config, device)
    else:
        raise ValueError(f"unknown extractor {name!r}; use 'classifier:<dataset>' (e.g. 'classifier:mnist5k') "
                         "or 'inception'")
    _EXTRACTORS[cache_key] = extractor
    return extractor


def resolve_extractor(extractor: FeatureExtractor | str | None, dataset: str) -> FeatureExtractor:
    """The extractor that the metric functions take ``extractor`` to mean: None is the offline
    default ``"classifier:<dataset>"``, a name goes through :func:`get_extractor`, and an extractor
    is itself. Anything else is refused, naming what was passed."""
    if extractor is None:
        return get_extractor(f"classifier:{dataset}")
    if isinstance(extractor, str):
        return get_extractor(extractor)
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(f"extractor must be a FeatureExtractor, a name such as 'classifier:{dataset}' or "
                        f"'inception', or None (the default); got {type(extractor).__name__}")
    return extractor


def reference_stats(dataset: str, split: str = "train", extractor: FeatureExtractor | str | None = None,
                    batch_size: int | None = None) -> FeatureStats:
    """Feature statistics of a whole dataset split, computed once and cached on disk.

    FID is measured against the training set, as in Ho et al. 2020 (Table 1).

    :param dataset: a name for :func:`ddpm_core.data.load_dataset`.
    :param split: ``"train"`` (default) or ``"test"``.
    :param extractor: an extractor or its name; default ``"classifier:<dataset>"``.
    :return: :class:`FeatureStats`; its ``meta`` holds dataset, split and extractor name.
        Cached under ``runtime.cache_dir()/reference_stats/`` keyed by dataset, split, a hash of
        the data and the extractor's key (extractors with random weights are not cached).
    """
    from .data import load_dataset

    extractor = resolve_extractor(extractor, dataset)
    data = load_dataset(dataset, split)
    path = None
    if extractor.key is not None:
        path = (runtime.cache_dir() / "reference_stats"
                / f"{dataset}-{split}-{_fingerprint(data.x)}-{extractor.key}.npz")
        if path.is_file():
            return FeatureStats.load(path)
    stats = extractor.stats(data.x, batch_size)
    stats.meta = dict(dataset=dataset, split=split, extractor=extractor.name)
    if path is not None:
        runtime.atomic_write(path, lambda f: stats.save(f, **stats.meta))
    return stats
