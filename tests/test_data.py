"""Tests of ddpm_core.data: offline datasets, splits, flips, batches, and the CIFAR-10 / CelebA-HQ
loaders through tiny files written in their real on-disk formats."""
from __future__ import annotations

import io
import pickle
import struct
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_core import data
from ddpm_core.data import DATASETS, Dataset, list_datasets, load_dataset

IMAGE_SETS = {  # name -> (item shape, train size, test size)
    "digits": ((1, 8, 8), 1438, 359),
    "mnist5k": ((1, 28, 28), 4000, 1000),
    "photo-crops": ((3, 32, 32), 3950, 875),
    "faces": ((1, 32, 32), 80, 20),
}
TOYS = ("swissroll", "ring", "grid")


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.reshape(len(x), -1)}


# ------------------------------------------------------------------------------------------
# offline datasets


@pytest.mark.parametrize("name", list(IMAGE_SETS))
def test_image_dataset_shape_range_and_split_sizes(name):
    shape, n_train, n_test = IMAGE_SETS[name]
    train, test = load_dataset(name, "train"), load_dataset(name, "test")
    for ds, n in ((train, n_train), (test, n_test)):
        assert isinstance(ds, Dataset) and ds.name == name
        assert ds.x.dtype == torch.float32 and ds.x.shape == (n, *shape) and ds.shape == shape
        assert len(ds) == n
        assert ds.x.min() >= -1 and ds.x.max() <= 1
    assert train.x.min() < -0.99 and train.x.max() > 0.99  # the whole range is used
    if train.y is not None:
        assert train.y.dtype == torch.long and len(train.y) == n_train
        assert set(train.y.tolist()) == set(range(train.num_classes))
        assert set(test.y.tolist()) == set(range(test.num_classes))  # every class in each split
    assert not _rows(train.x) & _rows(test.x), "a test item also occurs in the train split"


@pytest.mark.parametrize("name", list(IMAGE_SETS) + list(TOYS))
def test_two_loads_are_identical(name):
    a, b = load_dataset(name, "test"), load_dataset(name, "test")
    assert torch.equal(a.x, b.x)
    assert (a.y is None and b.y is None) or torch.equal(a.y, b.y)


def test_to_8bit_grid_keeps_8bit_images_and_rounds_other_levels_to_the_nearest_8bit_one():
    mnist = data.load_dataset("mnist5k", "test").x[:64]
    assert float((data.to_8bit_grid(mnist) - mnist).abs().max()) < 1e-6  # already 8-bit
    digits = data.load_dataset("digits", "test").x[:64].double()
    levels = torch.round((digits + 1) * 8)  # the digits' 17 grey levels v = 0..16
    assert torch.allclose(levels, (digits + 1) * 8, atol=1e-5)
    want = torch.round(levels * 255 / 16) / 127.5 - 1  # the nearest 8-bit value 255 v / 16, rounded
    got = data.to_8bit_grid(digits)
    assert got.dtype == torch.float64 and torch.allclose(got, want, atol=1e-12)
    assert float((got - digits).abs().max()) <= 1 / 255 + 1e-12  # at most half a level
    assert torch.equal(data.to_8bit_grid(got), got)  # idempotent
    assert float(data.to_8bit_grid(torch.tensor([-1.5, 1.2])).abs().max()) == 1.0  # clamped


def test_stratified_splits_keep_class_balance():
    train = load_dataset("mnist5k", "train")
    assert torch.bincount(train.y).tolist() == [400] * 10
    assert len(set(train.y[:50].tolist())) > 5  # stored in a shuffled order, so max_images mixes classes


def test_photo_crops_hold_colour():
    x = load_dataset("photo-crops", "test").x
    channel_spread = (x[:, 0] - x[:, 2]).abs().mean()
    assert channel_spread > 0.05, "crops look grey: colour channels were lost"


@pytest.mark.parametrize("name", TOYS)
def test_toys_shape_and_range(name):
    train, test = load_dataset(name), load_dataset(name, "test")
    assert train.x.shape == (10_000, 2) and test.x.shape == (2_000, 2)
    assert train.x.dtype == torch.float32 and train.shape == (2,)
    assert train.x.abs().max() < 1.2 and train.x.abs().max() > 0.8
    assert not torch.equal(train.x[:2000], test.x)  # independent draws
    assert load_dataset(name, n=123).x.shape == (123, 2)


@pytest.mark.parametrize("name, k", [("ring", 8), ("grid", 25)])
def test_mixture_toys_expose_modes(name, k):
    ds = load_dataset(name)
    assert ds.modes.shape == (k, 2) and ds.num_classes == k and ds.mode_std == pytest.approx(0.05)
    dist = torch.cdist(ds.x, ds.modes)                       # (N, K)
    assert (dist.argmin(1) == ds.y).float().mean() > 0.999   # points sit at their own mode
    assert (dist.min(1).values < 5 * ds.mode_std).all()
    assert torch.bincount(ds.y, minlength=k).min() > 0.5 * len(ds) / k   # all modes populated
    gaps = torch.cdist(ds.modes, ds.modes) + torch.eye(k) * 10
    assert gaps.min() > 6 * ds.mode_std                      # modes are well separated


def test_a_toy_with_a_count_that_is_not_positive_is_refused():
    for n in (0, -5, 2.5, "3"):
        with pytest.raises(ValueError, match=rf"n is the number of points to draw, a positive int; got {n!r}"):
            load_dataset("ring", n=n)
    assert len(load_dataset("ring", n=3)) == 3


def test_swissroll_is_a_spiral():
    x = load_dataset("swissroll").x
    radius = x.norm(dim=1)
    assert radius.min() > 0.2 and radius.max() < 1.1
    angle = torch.atan2(x[:, 1], x[:, 0])
    assert torch.histc(angle, bins=8, min=-np.pi, max=np.pi).min() > 500  # it winds all round


def test_image_size_and_max_images():
    ds = load_dataset("digits", image_size=16, max_images=100)
    assert ds.x.shape == (100, 1, 16, 16) and ds.y.shape == (100,)
    assert ds.x.min() >= -1 and ds.x.max() <= 1
    full = load_dataset("digits")
    assert torch.equal(ds.y, full.y[:100])
    assert load_dataset("faces", image_size=24).shape == (1, 24, 24)


# ------------------------------------------------------------------------------------------
# flips and batches


def test_batches_flip_each_example_independently():
    ds = load_dataset("photo-crops", "test", flip=True)
    g = torch.Generator().manual_seed(0)
    xb = next(ds.batches(256, generator=g, shuffle=False))
    same = (xb == ds.x[:256]).flatten(1).all(1)
    mirrored = (xb == ds.x[:256].flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all()
    assert 0.3 < mirrored.float().mean() < 0.7  # both kinds inside one batch
    plain = next(load_dataset("photo-crops", "test").batches(256, shuffle=False))
    assert torch.equal(plain, ds.x[:256])


def test_getitem_flips_at_random():
    ds = load_dataset("faces", flip=True)
    torch.manual_seed(0)
    draws = [ds[3] for _ in range(40)]
    n_flipped = sum(torch.equal(d, ds.x[3].flip(-1)) for d in draws)
    assert all(torch.equal(d, ds.x[3]) or torch.equal(d, ds.x[3].flip(-1)) for d in draws)
    assert 5 < n_flipped < 35
    assert torch.equal(load_dataset("faces")[3], ds.x[3])


def _indexed(n: int) -> Dataset:
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Dataset(x=x, y=torch.arange(n), name="indexed", num_classes=n)


def test_batches_cover_the_data_once_per_epoch():
    ds = _indexed(103)
    g = torch.Generator().manual_seed(1)
    seen = torch.cat([b[:, 0, 0, 0] for b in ds.batches(10, generator=g, drop_last=False)])
    assert sorted(seen.long().tolist()) == list(range(103))
    assert not torch.equal(seen.long(), torch.arange(103))  # shuffled
    full = list(ds.batches(10, generator=g))
    assert len(full) == 10 and all(b.shape == (10, 1, 2, 2) for b in full)
    assert len(set(torch.cat(full)[:, 0, 0, 0].tolist())) == 100


def test_batches_repeat_with_a_seeded_generator_and_carry_labels():
    ds = _indexed(50)
    run = lambda: [b for b in ds.batches(8, generator=torch.Generator().manual_seed(3))]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(run(), run()))
    for xb, yb in ds.batches(8, with_labels=True, device="cpu"):
        assert torch.equal(xb[:, 0, 0, 0].long(), yb)


def test_batches_reject_bad_sizes():
    with pytest.raises(ValueError, match="exceeds"):
        next(_indexed(5).batches(8))
    with pytest.raises(ValueError, match="no labels"):
        next(load_dataset("faces").batches(4, with_labels=True))


def test_to_returns_a_copy_on_the_device():
    ds = load_dataset("ring", max_images=64)
    moved = ds.to("cpu")
    assert moved is not ds and moved.device == torch.device("cpu")
    assert torch.equal(moved.x, ds.x) and moved.mode_std == ds.mode_std and moved.name == "ring"
    if torch.cuda.is_available():
        gpu = load_dataset("faces", flip=True).to("cuda")
        xb = next(gpu.batches(16, generator=torch.Generator().manual_seed(0)))
        assert xb.device.type == "cuda" and xb.shape == (16, 1, 32, 32)


# ------------------------------------------------------------------------------------------
# CIFAR-10 through its on-disk format


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), as the real CIFAR files hold."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(obj, path) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    raw = buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(raw)


def _fake_image(label: int) -> np.ndarray:
    """One CIFAR row: [R plane | G plane | B plane], 1024 bytes each; R = 255, G = 10 * label, B = 0."""
    return np.concatenate([np.full(1024, 255), np.full(1024, 10 * label), np.zeros(1024)]).astype(np.uint8)


def write_fake_cifar10(root, per_batch: int = 2, n_test: int = 3, py2: bool = True):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    dump = _dump_py2 if py2 else (lambda obj, path: path.write_bytes(pickle.dumps(obj)))
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    label = 0
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        labels = [(label + j) % 10 for j in range(n)]
        label += n
        dump({b"batch_label": name.encode(), b"labels": labels,
              b"data": np.stack([_fake_image(c) for c in labels]),
              b"filenames": [f"img{j}.png".encode() for j in range(n)]}, folder / name)
    classes = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
               b"ship", b"truck"]
    dump({b"num_cases_per_batch": per_batch, b"label_names": classes, b"num_vis": 3072},
         folder / "batches.meta")
    return folder


@pytest.mark.parametrize("py2", [True, False])
def test_cifar10_reads_the_real_format(tmp_path, py2):
    write_fake_cifar10(tmp_path, py2=py2)
    train = load_dataset("cifar10", "train", root=tmp_path, download=False)
    test = load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert train.x.shape == (10, 3, 32, 32) and test.x.shape == (3, 3, 32, 32)
    assert train.y.tolist() == [j % 10 for j in range(10)] and test.y.tolist() == [0, 1, 2]
    assert train.num_classes == 10 and train.classes[3] == "cat"
    assert torch.equal(train.x[:, 0], torch.ones(10, 32, 32))      # R plane first: 255 -> 1
    assert torch.equal(train.x[:, 2], -torch.ones(10, 32, 32))     # B plane: 0 -> -1
    green = train.x[:, 1, 0, 0]
    assert torch.allclose(green, (10 * train.y.float()) / 127.5 - 1)  # x / 127.5 - 1, per label


def test_cifar10_root_options(tmp_path, monkeypatch):
    folder = write_fake_cifar10(tmp_path / "cifar10")
    via_folder = load_dataset("cifar10", root=folder, download=False, image_size=16, flip=True)
    assert via_folder.shape == (3, 16, 16) and via_folder.flip
    monkeypatch.setenv("DDPM_DATA", str(tmp_path))  # default root: $DDPM_DATA/cifar10
    assert len(load_dataset("cifar10", "test", download=False)) == 3


def test_cifar10_missing_files_name_the_folder_and_url(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("cifar10", root=tmp_path / "nowhere", download=False)
    assert str(tmp_path / "nowhere") in str(err.value) and data.CIFAR10_URL in str(err.value)


def test_cifar10_failed_download_says_how_to_get_the_data(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.CIFAR10, "download", offline)
    with pytest.raises(RuntimeError) as err:
        load_dataset("cifar10", root=tmp_path)
    message = str(err.value)
    assert "downloading it failed" in message and "no network" in message
    assert str(tmp_path) in message and data.CIFAR10_URL in message


# ------------------------------------------------------------------------------------------
# CelebA-HQ from an image folder


def write_fake_celebahq(folder, n: int = 10):
    """n images, PNG and JPEG, portrait and landscape; the parts a center crop drops are red."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        wide = i % 2 == 0
        w, h = (48, 32) if wide else (32, 40)
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 2] = 200 + i                                  # blue centre square
        if wide:
            img[:, :8, :] = img[:, -8:, :] = (255, 0, 0)       # red side bands, cropped away
        else:
            img[:4, :, :] = img[-4:, :, :] = (255, 0, 0)
        suffix = ".png" if i % 3 else ".jpg"
        Image.fromarray(img).save(folder / f"{i:05d}{suffix}", quality=95)
    (folder / "notes.txt").write_text("not an image")


def test_celebahq_reads_a_folder(tmp_path):
    write_fake_celebahq(tmp_path / "celeba")
    train = load_dataset("celebahq", root=tmp_path / "celeba", image_size=16)
    test = load_dataset("celebahq", "test", root=tmp_path / "celeba", image_size=16)
    assert train.x.shape == (9, 3, 16, 16) and test.x.shape == (1, 3, 16, 16)
    assert train.x.dtype == torch.float32 and train.y is None
    red = train.x[:, 0]
    assert red.max() < -0.8, "the center crop kept the red bands"      # R ~ 0 -> -1
    assert train.x[:, 2].min() > 0.5                                    # blue ~ 200 -> > 0.5
    capped = load_dataset("celebahq", root=tmp_path / "celeba", image_size=8, max_images=4)
    assert capped.x.shape == (4, 3, 8, 8)


def test_celebahq_env_variable_and_default_size(tmp_path, monkeypatch):
    write_fake_celebahq(tmp_path / "faces", n=4)
    monkeypatch.setenv("DDPM_CELEBAHQ", str(tmp_path / "faces"))
    ds = load_dataset("celebahq", "test")
    assert ds.shape == (3, 256, 256) and len(ds) == 1


def test_a_blank_celebahq_folder_is_refused_rather_than_read_as_the_current_folder(tmp_path, monkeypatch):
    write_fake_celebahq(tmp_path, n=4)  # images in the current folder, which a blank value would mean
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DDPM_CELEBAHQ", " ")
    with pytest.raises(FileNotFoundError, match=r"needs a folder of images \(\$DDPM_CELEBAHQ is blank\)"):
        load_dataset("celebahq", image_size=8)
    with pytest.raises(FileNotFoundError, match=r"\(root is blank\)"):
        load_dataset("celebahq", root="", image_size=8)


def test_an_unreadable_image_or_cifar10_file_is_named(tmp_path):
    write_fake_celebahq(tmp_path / "celeba")
    bad = tmp_path / "celeba" / "00002.png"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated download
    with pytest.raises(OSError, match=rf"cannot read the image {bad} .*replace or remove it"):
        load_dataset("celebahq", root=tmp_path / "celeba", image_size=8)
    folder = write_fake_cifar10(tmp_path / "cifar")
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    with pytest.raises(OSError, match=rf"the CIFAR-10 file {batch} is corrupt or truncated.*delete the folder"):
        load_dataset("cifar10", root=tmp_path / "cifar", download=False)
    assert load_dataset("cifar10", "test", root=tmp_path / "cifar", download=False).x.shape[0] == 3


def test_celebahq_missing_folder_names_folder_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_CELEBAHQ", raising=False)
    with pytest.raises(FileNotFoundError, match="DDPM_CELEBAHQ"):
        load_dataset("celebahq")
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("celebahq", root=tmp_path / "absent")
    assert str(tmp_path / "absent") in str(err.value) and "DDPM_CELEBAHQ" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="found 0"):
        load_dataset("celebahq", root=tmp_path / "empty")


# ------------------------------------------------------------------------------------------
# names and errors


def test_list_datasets_matches_descriptions():
    assert list_datasets() == list(DATASETS)
    assert {"digits", "mnist5k", "photo-crops", "faces", "swissroll", "ring", "grid", "cifar10",
            "celebahq"} == set(DATASETS)
    assert all(isinstance(v, str) and v for v in DATASETS.values())


def test_errors_name_the_valid_choices():
    with pytest.raises(ValueError, match="mnist5k"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="'train' or 'test'"):
        load_dataset("digits", split="val")
    with pytest.raises(TypeError, match="stride"):
        load_dataset("photo-crops", n=3)
    with pytest.raises(ValueError, match="only used by"):
        load_dataset("digits", root="/tmp")
    for stride in (0, -1, 2.5):
        with pytest.raises(ValueError, match=rf"stride must be an int >= 1 \(pixels between crops.*got {stride}"):
            load_dataset("photo-crops", stride=stride)
    for cap in ("3", 0, 2.0):
        with pytest.raises(ValueError, match=rf"max_images must be None \(every item\) or an int >= 1, got {cap!r}"):
            load_dataset("digits", max_images=cap)
    assert len(load_dataset("digits", max_images=np.int64(3))) == 3
    with pytest.raises(ValueError, match="images only"):
        load_dataset("ring", flip=True)
