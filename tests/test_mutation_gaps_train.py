"""Tests from a mutation audit of the trainer, the data loaders and the runtime: each pins behaviour that
a realistic bug changed without any other test noticing (clipping, the EMA warm-up inside the trainer,
atomic checkpoints, the NaN/inf checks, the cache key, resume refusals, profiles, resizing, flips)."""
from __future__ import annotations

import dataclasses
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_core import data, runtime
from ddpm_core import train as tr

from test_train import toy  # the tiny run of test_train.py: the 2-D toy MLP on the ring, T = 50


pytestmark = pytest.mark.usefixtures("one_thread")


def _grad_norm(model) -> float:
    grads = [p.grad.detach().double() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))


# ---------------------------------------------------------------------- the recipe inside the trainer
def test_trainer_ema_follows_the_warmup_decay_of_each_update():
    """With ema_warmup the trainer's EMA equals e_i = d_i e_(i-1) + (1 - d_i) w_i with
    d_i = min(ema_decay, i / (9 + i)) for update i = 1, 2, ... (w_i: the weights after update i),
    computed here from the weights the callback sees; the decay reaches its cap 0.3 at update 4."""
    d, k = 0.3, 8
    config = toy(ema_decay=d, ema_warmup=True, steps=k, lr=0.1)  # large steps: a decay off by one update moves the EMA by ~2e-5
    seen = []
    result = tr.train(config, progress=False, callback=lambda info: seen.append(
        [p.detach().double().clone() for p in info.model.parameters()]))
    torch.manual_seed(config.seed)  # the trainer's initial weights
    ema = [p.detach().double() for p in tr.build_network(config).parameters()]
    for i in range(1, k + 1):
        d_i = min(d, i / (9 + i))
        ema = [d_i * e + (1 - d_i) * w for e, w in zip(ema, seen[i - 1])]
    for e, expected in zip(result.ema.parameters(), ema):
        torch.testing.assert_close(e.double(), expected, rtol=0, atol=1e-6)


def test_gradients_are_clipped_to_the_global_norm_and_the_history_keeps_the_norm_before():
    """The gradient the optimiser used (left in .grad after each update) has global norm
    min(g, clip) where g is the history's grad_norm, the norm before clipping; without clipping it is g.
    The first update's g is the same with and without clipping (same weights, batch and noise)."""
    plain_norms, clipped_norms = [], []
    plain = tr.train(toy(grad_clip=None, steps=6), progress=False,
                     callback=lambda info: plain_norms.append(_grad_norm(info.model)))
    g = plain.history["grad_norm"].double()
    assert plain_norms == pytest.approx(g.tolist(), rel=1e-5)
    clip = 0.5 * float(g.min())
    clipped = tr.train(toy(grad_clip=clip, steps=6), progress=False,
                       callback=lambda info: clipped_norms.append(_grad_norm(info.model)))
    gc = clipped.history["grad_norm"].double()
    assert float(gc[0]) == pytest.approx(float(g[0]), rel=1e-6)  # recorded before clipping
    assert (gc > clip).any()
    assert clipped_norms == pytest.approx(torch.clamp(gc, max=clip).tolist(), rel=1e-5)


# ---------------------------------------------------------------------- checkpoints and divergence
def test_a_checkpoint_write_that_fails_half_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Checkpoints go through atomic_write: when writing the second one fails after half of its bytes
    (a full disk), last.pt is still the whole first checkpoint and no temporary file is left."""
    real_save, calls = torch.save, []

    def save_that_fails_the_second_time(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            buf = io.BytesIO()
            real_save(obj, buf)
            half = buf.getvalue()[: len(buf.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(half)
            else:
                with open(f, "wb") as out:
                    out.write(half)
            raise OSError("disk full")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_that_fails_the_second_time)
    with pytest.raises(OSError, match="disk full"):
        tr.train(toy(), out_dir=tmp_path, progress=False)  # checkpoints at steps 6 and 12
    monkeypatch.setattr(torch, "save", real_save)
    assert tr.read_checkpoint(tmp_path / "last.pt")["step"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "last.pt"]


def test_an_infinite_gradient_with_a_finite_loss_stops_training_at_that_update(tmp_path):
    """From update 2 on one parameter's gradient is inf while the loss (computed before the backward
    pass) stays finite: the divergence is reported at step 2, from the gradient norm, not one update
    later when the corrupted weights first give a NaN loss."""
    def blow_up_from_update_2(info):
        if info.step == 1:
            next(info.model.parameters()).register_hook(lambda grad: torch.full_like(grad, float("inf")))

    with pytest.raises(tr.TrainingDivergedError, match=r"NaN/inf at step 2\b") as err:
        tr.train(toy(log_every=4, checkpoint_every=6), out_dir=tmp_path, progress=False,
                 callback=blow_up_from_update_2)
    assert err.value.step == 2 and err.value.checkpoint is None and not (tmp_path / "last.pt").exists()


def test_weights_that_turn_nan_at_a_checkpoint_step_are_not_saved(tmp_path):
    """Weights poisoned after update 6 (a checkpoint step; the losses up to it are finite) stop the
    run when it saves: the error names step 6, and last.pt stays the good checkpoint of step 3."""
    def poison_after_6(info):
        if info.step == 6:
            with torch.no_grad():
                next(info.model.parameters()).fill_(float("nan"))

    with pytest.raises(tr.TrainingDivergedError, match=r"weights hold NaN/inf after step 6") as err:
        tr.train(toy(log_every=3, checkpoint_every=3), out_dir=tmp_path, progress=False, callback=poison_after_6)
    assert err.value.step == 6 and err.value.checkpoint == tmp_path / "last.pt"
    good = tr.load_checkpoint(tmp_path / "last.pt", map_location="cpu")
    assert good.step == 3
    assert all(torch.isfinite(p).all() for p in list(good.model.parameters()) + list(good.ema.parameters()))


# ---------------------------------------------------------------------- configuration, resume and cache
# A different value for every field that changes what a run computes.
CHANGED = dict(dataset="grid", preset="toy-mlp-fourier", T=60, schedule="cosine", mean_type="x0",
               var_type="fixed_large", loss_type="vlb", timestep_sampler="loss-second-moment", batch_size=16,
               lr=2e-3, warmup_steps=4, grad_clip=0.5, ema_decay=0.98, ema_warmup=False, steps=13,
               precision="bf16", seed=4, flip=True, image_size=16, dropout=0.2)
BOOKKEEPING = dict(checkpoint_every=7, log_every=5, device="cpu", compile=True, cuda_graph=True)


def test_cache_key_changes_with_every_field_that_changes_the_result_and_with_no_other():
    """config_key differs when any result-defining field (steps included) changes and stays the same
    when only a bookkeeping field (checkpoint_every, log_every, device, compile, cuda_graph) does;
    every field of TrainConfig is in one of the two lists."""
    fields = {f.name for f in dataclasses.fields(tr.TrainConfig)}
    assert set(CHANGED) | set(BOOKKEEPING) == fields and not set(CHANGED) & set(BOOKKEEPING)
    assert set(BOOKKEEPING) | {"steps"} == set(tr.BOOKKEEPING_FIELDS)
    base = tr.config_key(toy())
    images = dict(dataset="digits", preset="cpu-digits")  # flip and image_size apply to image presets only
    for name, value in CHANGED.items():
        if name in ("flip", "image_size"):
            assert tr.config_key(toy(**images, **{name: value})) != tr.config_key(toy(**images)), name
            continue
        assert tr.config_key(toy(**{name: value})) != base, f"{name} is not part of the cache key"
    for name, value in BOOKKEEPING.items():
        assert tr.config_key(toy(**{name: value})) == base, f"{name} changes the cache key"


@pytest.mark.parametrize("name, value", [("seed", 4), ("ema_decay", 0.98), ("ema_warmup", False),
                                         ("warmup_steps", 4), ("batch_size", 16), ("dropout", 0.2),
                                         ("timestep_sampler", "loss-second-moment")])
def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path, name, value):
    """A run folder trained with one configuration is not continued by a run that differs in any
    result-defining field (here the seed and the recipe's fields): the error names the field."""
    tr.train(toy(steps=2), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=rf"configuration differs \({name}: "):
        tr.train(toy(steps=4, **{name: value}), out_dir=tmp_path, progress=False)


@pytest.mark.parametrize("lr", [0.0, -1e-3])
def test_a_learning_rate_that_is_not_positive_is_refused(lr):
    """lr = 0 (no training at all) and negative rates are invalid configurations."""
    with pytest.raises(ValueError, match=r"TrainConfig.lr = .* positive"):
        toy(lr=lr)


# ---------------------------------------------------------------------- runtime profiles
def test_profile_from_the_environment(monkeypatch):
    """DDPM_PROFILE is read case- and space-insensitively, an unknown name is refused, 'gpu' needs a
    visible CUDA device, and without the variable the profile is 'gpu' exactly when CUDA is available."""
    monkeypatch.setenv("DDPM_PROFILE", " CPU ")
    assert runtime.get_profile() == "cpu" and runtime.get_device() == torch.device("cpu")
    monkeypatch.setenv("DDPM_PROFILE", "tpu")
    with pytest.raises(ValueError, match="tpu"):
        runtime.get_profile()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("DDPM_PROFILE", "gpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        runtime.get_profile()
    monkeypatch.delenv("DDPM_PROFILE")
    assert runtime.get_profile() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_profile() == "gpu" and runtime.get_device() == torch.device("cuda")


# ---------------------------------------------------------------------- data
def test_resize_is_antialiased_bilinear_like_pil():
    """data.resize downscales like PIL's BILINEAR resize (which filters over the whole footprint of
    each output pixel) on float images, 8x8 -> 4x4 and 12x12 -> 5x5."""
    g = torch.Generator().manual_seed(0)
    for size_in, size_out in ((8, 4), (12, 5)):
        x = torch.rand(3, 1, size_in, size_in, generator=g) * 2 - 1
        ref = np.stack([np.asarray(Image.fromarray(img[0].numpy(), mode="F").resize((size_out, size_out),
                                                                                    Image.BILINEAR))
                        for img in x])[:, None]
        np.testing.assert_allclose(data.resize(x, size_out).numpy(), ref, rtol=0, atol=1e-5)


def _write_cifar10(root):
    """Minimal CIFAR-10 files (Python 3 pickles) with left-right asymmetric images."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    ramp = np.tile(np.arange(32, dtype=np.uint8) * 8, (3, 32, 1)).reshape(3072)  # brighter to the right
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({"labels": [0, 1], "data": np.stack([ramp, ramp])}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))


def test_no_dataset_split_is_flipped_unless_asked(tmp_path):
    """flip defaults to False for every split (CIFAR-10's test split included, although the paper
    flips its training images): batches in order return the stored images unchanged; flip=True is kept."""
    _write_cifar10(tmp_path)
    for split in ("train", "test"):
        ds = data.load_dataset("cifar10", split, root=tmp_path, download=False)
        assert not ds.flip
        assert torch.equal(next(ds.batches(len(ds), shuffle=False)), ds.x)
        assert data.load_dataset("cifar10", split, root=tmp_path, download=False, flip=True).flip


def test_each_example_is_flipped_in_about_half_of_the_epochs():
    """With flip, every example is mirrored with probability 1/2 anew in each epoch: over 200 epochs
    (batches in order) each of 8 examples is mirrored 60-140 times, so no position of a batch and no
    example is always (or never) flipped."""
    x = torch.tensor([[-1.0, 1.0]]).expand(8, 1, 1, 2).contiguous()  # asymmetric: a flip is visible
    ds = data.Dataset(x=x, name="pairs", flip=True)
    g = torch.Generator().manual_seed(0)
    mirrored = torch.stack([(xb[:, 0, 0, 0] == 1.0) for _ in range(200) for xb in ds.batches(4, generator=g, shuffle=False)])
    counts = mirrored.view(200, 8).sum(0)
    assert ((counts > 60) & (counts < 140)).all(), counts.tolist()
