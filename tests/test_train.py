"""Tests of ddpm_core.train: exact resume, Ctrl-C, divergence, bad checkpoints, EMA and learning-rate
schedules, configuration, the model cache and two-process DDP training (gloo)."""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import re
import socket

import numpy as np

import pytest
import torch

from ddpm_core import train as tr

# A tiny run: the 2-D toy MLP on the ring of Gaussians, T = 50 (each step takes milliseconds).
TOY = dict(dataset="ring", preset="toy-mlp", T=50, batch_size=32, lr=1e-3, warmup_steps=3, ema_decay=0.99,
           steps=12, log_every=4, checkpoint_every=6, seed=3)


def toy(**changes) -> tr.TrainConfig:
    return tr.TrainConfig(**{**TOY, **changes})


pytestmark = pytest.mark.usefixtures("one_thread")


def state_of(result_or_ckpt) -> dict:
    """Every tensor that defines a run's state, flattened: weights, EMA, Adam moments and steps."""
    if isinstance(result_or_ckpt, dict):
        raw = result_or_ckpt
    else:
        raw = tr.read_checkpoint(result_or_ckpt.checkpoint)
    flat = {f"model.{k}": v for k, v in raw["model"].items()}
    flat.update({f"ema.{k}": v for k, v in raw["ema"].items()})
    for pid, st in raw["optimizer"]["state"].items():
        flat.update({f"adam.{pid}.{k}": torch.as_tensor(v) for k, v in st.items()})
    flat.update({f"sampler.{k}": v for k, v in raw["sampler"].items()})
    flat["loss"] = raw["history"]["loss"]
    return flat


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs"


# ---------------------------------------------------------------------- resume and interrupt
RESUME_CASES = {
    "eps-simple-dropout": dict(dropout=0.1),
    "hybrid-importance": dict(var_type="learned_range", loss_type="hybrid", timestep_sampler="loss-second-moment"),
    "images-flip": dict(dataset="digits", preset="cpu-digits", batch_size=4, flip=True, dropout=0.1, steps=6,
                        checkpoint_every=2),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path, case):
    config = toy(**RESUME_CASES[case])
    full = tr.train(config, out_dir=tmp_path / "full", progress=False)
    n = config.steps // 2
    half = tr.train(config.replace(steps=n), out_dir=tmp_path / "split", progress=False)
    assert half.step == n and tr.read_checkpoint(half.checkpoint)["step"] == n
    resumed = tr.train(config, out_dir=tmp_path / "split", progress=False)
    assert resumed.step == full.step == config.steps
    assert_same_state(state_of(full), state_of(resumed))
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters()):
        assert torch.equal(a, b)


def test_ctrl_c_saves_a_checkpoint_that_resumes_exactly(tmp_path):
    config = toy()
    full = tr.train(config, out_dir=tmp_path / "full", progress=False)

    def interrupt_at_7(info: tr.StepInfo):
        if info.step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(config, out_dir=tmp_path / "run", progress=False, callback=interrupt_at_7)
    assert tr.read_checkpoint(tmp_path / "run" / "last.pt")["step"] == 7
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "last.pt"]  # no temp files
    resumed = tr.train(config, out_dir=tmp_path / "run", progress=False)
    assert_same_state(state_of(full), state_of(resumed))


def test_a_real_sigint_finishes_the_update_then_saves(tmp_path, monkeypatch):
    import signal

    real_update = tr._Trainer.update

    def update_hit_by_ctrl_c(self, model_fn):
        if self.step == 2:  # Ctrl-C (or a notebook's interrupt) arrives in the middle of update 3
            os.kill(os.getpid(), signal.SIGINT)
        return real_update(self, model_fn)

    monkeypatch.setattr(tr._Trainer, "update", update_hit_by_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        tr.train(toy(), out_dir=tmp_path, progress=False)
    assert tr.read_checkpoint(tmp_path / "last.pt")["step"] == 3  # the update finished, then it saved
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_the_same_interrupt_delivered_twice_still_finishes_the_update_and_saves(tmp_path, monkeypatch):
    """A kernel's interrupt reaches a prefetch worker twice (from the kernel and from the pool),
    a moment apart: that is one Ctrl-C, not the "second Ctrl-C" that stops at once without saving."""
    import signal

    real_update = tr._Trainer.update

    def update_hit_twice(self, model_fn):
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_update(self, model_fn)

    monkeypatch.setattr(tr._Trainer, "update", update_hit_twice)
    with pytest.raises(KeyboardInterrupt):
        tr.train(toy(), out_dir=tmp_path, progress=False)
    assert tr.read_checkpoint(tmp_path / "last.pt")["step"] == 3


def test_progress_bar_shows_the_loss(capsys):
    tr.train(toy(steps=8, log_every=4), progress=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "8/8" in err


def test_resume_refuses_a_different_configuration(tmp_path):
    tr.train(toy(steps=4), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"ema_decay: 0.99 in the checkpoint, 0.9 now"):
        tr.train(toy(ema_decay=0.9), out_dir=tmp_path, progress=False)
    fresh = tr.train(toy(ema_decay=0.9, steps=2), out_dir=tmp_path, resume=False, progress=False)
    assert fresh.step == 2 and tr.read_checkpoint(tmp_path / "last.pt")["config"]["ema_decay"] == 0.9


# ---------------------------------------------------------------------- divergence and bad files
def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = toy(steps=20, log_every=4, checkpoint_every=5)

    def poison_at_7(info: tr.StepInfo):
        if info.step == 7:
            with torch.no_grad():
                next(info.model.parameters()).fill_(float("nan"))

    with pytest.raises(tr.TrainingDivergedError, match=r"NaN/inf at step 8") as err:
        tr.train(config, out_dir=tmp_path, progress=False, callback=poison_at_7)
    assert err.value.step == 8
    assert err.value.checkpoint == tmp_path / "last.pt"
    assert "step 5" in str(err.value)
    good = tr.load_checkpoint(tmp_path / "last.pt", map_location="cpu")
    assert good.step == 5 and len(good.history["loss"]) == 5
    for p in list(good.model.parameters()) + list(good.ema.parameters()):
        assert torch.isfinite(p).all()
    assert torch.isfinite(good.history["loss"]).all()


def test_a_diverged_run_resumes_from_its_last_good_checkpoint_with_a_lower_lr(tmp_path):
    config = toy(steps=20, grad_clip=None, log_every=1, checkpoint_every=5)

    def poison_at_7(info: tr.StepInfo):
        if info.step == 7:
            with torch.no_grad():
                next(info.model.parameters()).fill_(float("nan"))

    with pytest.raises(tr.TrainingDivergedError) as err:
        tr.train(config, out_dir=tmp_path, progress=False, callback=poison_at_7)
    message = str(err.value)
    # the advice fits the run: its lr, clipping off (so: clip), fp32 already (so nothing about precision)
    assert "To go on, lower lr (now 0.001) or clip the gradient (grad_clip=1.0); then call train again with " \
           "the same out_dir" in message and "fp32" not in message
    assert tr.read_checkpoint(tmp_path / "last.pt")["step"] == 5
    # following it works: lr and grad_clip may change on resume (with a warning), other fields may not
    with pytest.warns(UserWarning, match=r"resuming .* at step 5 with another lr and grad_clip"):
        r = tr.train(config.replace(lr=5e-4, grad_clip=1.0), out_dir=tmp_path, progress=False)
    assert r.step == 20 and all(torch.isfinite(p).all() for p in r.ema.parameters())
    assert tr.read_checkpoint(tmp_path / "last.pt")["config"]["lr"] == 5e-4  # the new values are recorded
    with pytest.raises(ValueError, match=r"configuration differs \(T: .*continue it with the checkpoint's values "
                                         r"\(T=50; .*Only lr, grad_clip, precision may change"):
        tr.train(config.replace(lr=5e-4, grad_clip=1.0, T=60, steps=30), out_dir=tmp_path, progress=False)
    # a finished run is not relabelled with another lr (its weights were trained with the old one)
    with pytest.raises(ValueError, match=r"configuration differs \(lr: 0.0005 in the checkpoint, 0.002 now\)"):
        tr.train(config.replace(lr=2e-3, grad_clip=1.0), out_dir=tmp_path, progress=False)


def test_the_divergence_advice_lists_only_changes_and_knows_a_cached_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))

    def poison_at_3(info: tr.StepInfo):
        if info.step == 3:
            with torch.no_grad():
                next(info.model.parameters()).fill_(float("nan"))

    config = toy(steps=8, log_every=1, checkpoint_every=2)  # grad_clip 1.0, fp32: only lr is left to change
    with pytest.raises(tr.TrainingDivergedError) as err:
        tr.train(config, out_dir=tr.cached_run_dir(config), progress=False, callback=poison_at_3)
    assert "To go on, lower lr (now 0.001); get_trained then trains the changed configuration afresh" in str(err.value)
    assert "grad_clip" not in str(err.value)


def test_an_error_between_updates_keeps_the_updates_made_and_is_raised(tmp_path, capsys):
    def broken_callback(info: tr.StepInfo):
        if info.step == 4:
            raise RuntimeError("bug in my plotting callback")

    with pytest.raises(RuntimeError, match="plotting callback"):
        tr.train(toy(checkpoint_every=100), out_dir=tmp_path, progress=False, callback=broken_callback)
    assert tr.read_checkpoint(tmp_path / "last.pt")["step"] == 4  # not lost (checkpoints come every 100)
    assert "stopped by RuntimeError: saved step 4" in capsys.readouterr().err
    full = tr.train(toy(), out_dir=tmp_path / "full", progress=False)
    again = tr.train(toy(), out_dir=tmp_path, progress=False)  # and the run goes on as if nothing happened
    assert_same_state(state_of(again), state_of(full))


def test_when_the_save_after_an_error_fails_too_the_error_says_what_was_lost(tmp_path, monkeypatch):
    disk_full = [False]
    real = tr.runtime.atomic_write

    def atomic_write(path, write, durable=False):
        if disk_full[0]:
            raise OSError(28, "No space left on device")
        return real(path, write, durable)

    def callback(info: tr.StepInfo):
        disk_full[0] = info.step >= 7  # the disk fills after the checkpoint of step 6
        if info.step == 8:
            raise RuntimeError("bug in my plotting callback")

    monkeypatch.setattr(tr.runtime, "atomic_write", atomic_write)
    with pytest.raises(RuntimeError, match="plotting callback") as err:  # the caller's error, not the disk's
        tr.train(toy(checkpoint_every=6), out_dir=tmp_path, progress=False, callback=callback)
    assert any("the updates since step 6 were not saved" in n and "No space left" in n for n in err.value.__notes__)
    assert tr.read_checkpoint(tmp_path / "last.pt")["step"] == 6


def test_a_checkpoint_that_cannot_be_written_says_where_and_that_the_last_one_is_kept(tmp_path, monkeypatch):
    tr.train(toy(steps=6), out_dir=tmp_path, progress=False)

    def full_disk(path, write, durable=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tr.runtime, "atomic_write", full_disk)
    with pytest.raises(OSError, match=rf"could not write the checkpoint of step 12 to {tmp_path}.*No space left"
                                      r".*disk full.*at step 6, is kept"):
        tr.train(toy(steps=12), out_dir=tmp_path, progress=False)
    assert tr.read_checkpoint(tmp_path / "last.pt")["step"] == 6


def test_truncated_or_corrupted_checkpoint_names_the_file(tmp_path):
    tr.train(toy(steps=2), out_dir=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "last.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    for load in (lambda: tr.load_checkpoint(path), lambda: tr.train(toy(), out_dir=tmp_path / "run", progress=False)):
        with pytest.raises(tr.CheckpointError, match="truncated or corrupted") as err:
            load()
        assert str(path) in str(err.value) and "delete it" in str(err.value)
    path.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(tr.CheckpointError, match=str(path)):
        tr.load_checkpoint(path)
    path.write_bytes(b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>")  # a failed download
    with pytest.raises(tr.CheckpointError, match=r"is not a PyTorch file \(it starts with '<!DOCTYPE html>'"):
        tr.load_checkpoint(path)
    path.write_text('{"lr": 0.001}')  # the run's config.json picked by mistake
    with pytest.raises(tr.CheckpointError, match=r"not a PyTorch file .*pick the run's last.pt"):
        tr.load_checkpoint(path)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(tr.CheckpointError, match="not a ddpm_core training checkpoint"):
        tr.load_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        tr.load_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------------- the recipe's schedules
def test_ema_after_k_steps_equals_the_closed_form():
    """With a constant decay d: ema_k = d^k w_0 + (1 - d) sum_i d^(k-i) w_i (w_i: weights after update i)."""
    d, k = 0.9, 10
    config = toy(ema_warmup=False, ema_decay=d, steps=k)
    seen = []
    result = tr.train(config, progress=False, callback=lambda info: seen.append(
        [p.detach().double().clone() for p in info.model.parameters()]))
    torch.manual_seed(config.seed)  # the trainer's initial weights
    w0 = [p.detach().double() for p in tr.build_network(config).parameters()]
    assert len(seen) == k
    for j, e in enumerate(result.ema.parameters()):
        expected = d ** k * w0[j] + (1 - d) * sum(d ** (k - i) * seen[i - 1][j] for i in range(1, k + 1))
        torch.testing.assert_close(e.double(), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(next(result.ema.parameters()), next(result.model.parameters()))


def test_ema_update_is_a_lerp_and_the_warmup_decay():
    ema, w = [torch.zeros(3)], [torch.ones(3)]
    tr.ema_update(ema, w, 0.75)
    assert torch.equal(ema[0], torch.full((3,), 0.25))
    config = toy(ema_decay=0.999)
    assert tr.ema_decay_at(0, config) == pytest.approx(0.1)
    assert tr.ema_decay_at(90, config) == pytest.approx(91 / 100)
    assert tr.ema_decay_at(10**6, config) == 0.999
    assert tr.ema_decay_at(0, config.replace(ema_warmup=False)) == 0.999


def test_learning_rate_warms_up_linearly():
    config = toy(lr=1.0, warmup_steps=4, steps=6)
    assert [tr.lr_at(s, config) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert tr.lr_at(0, config.replace(warmup_steps=0)) == 1.0
    seen = []
    tr.train(config.replace(lr=1e-3), progress=False,
             callback=lambda info: seen.append((info.lr, info.optimizer.param_groups[0]["lr"])))
    assert seen == [(1e-3 * f, 1e-3 * f) for f in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)]


# ---------------------------------------------------------------------- configuration
def test_config_round_trips_through_json():
    config = toy(dropout=0.2, image_size=None, grad_clip=0.5, flip=False)
    again = tr.TrainConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.to_dict() == config.to_dict()
    assert tr.TrainConfig(lr=1).lr == 1.0 and isinstance(tr.TrainConfig(lr=1).lr, float)
    assert tr.TrainConfig(grad_clip=0).grad_clip is None
    assert tr.TrainConfig() == tr.TrainConfig(lr=2e-4, batch_size=128, warmup_steps=5000, ema_decay=0.9999,
                                              steps=800_000, T=1000, schedule="linear")  # the paper's run


@pytest.mark.parametrize("changes, message", [
    (dict(T=0), r"TrainConfig.T = 0 .* int >= 2"),
    (dict(T=1, schedule="cosine"), r"TrainConfig.T = 1 .* int >= 2"),
    (dict(preset="cpu-minst"), r"TrainConfig.preset = .cpu-minst. is invalid: expected one of \[.cpu-crops., .cpu-digits., .cpu-mnist."),
    (dict(T=20), r"TrainConfig.T = 20 with schedule 'linear'.*T > 20"),
    (dict(schedule="quadratic"), r"schedule = 'quadratic'.*linear"),
    (dict(mean_type="v"), r"mean_type"),
    (dict(var_type="learned_range", loss_type="simple"), r"no gradient .* 'hybrid' or 'vlb'"),
    (dict(timestep_sampler="importance"), r"loss-second-moment"),
    (dict(precision="fp16"), r"precision = 'fp16'.*bf16"),
    (dict(ema_decay=1.0), r"ema_decay"),
    (dict(batch_size=0), r"batch_size"),
    (dict(grad_clip=-1.0), r"grad_clip"),
    (dict(lr=float("nan")), r"lr"),
    (dict(dropout=1.5), r"dropout"),
    (dict(steps=2.5), r"steps"),
    (dict(device="quantum"), r"device"),
])
def test_invalid_config_names_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        toy(**changes)


def test_a_blank_out_dir_is_refused_rather_than_read_as_the_current_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for blank in ("", "  "):
        with pytest.raises(ValueError, match="out_dir is blank"):
            tr.train(toy(steps=1), out_dir=blank, progress=False)
    assert not list(tmp_path.iterdir())


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['learning_rate'\]"):
        tr.TrainConfig.from_dict({"learning_rate": 1e-3})
    # so do replace and book_config, with the list of fields (a bare TypeError before)
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['stepz'\]; known fields: .*'steps'"):
        tr.book_config("mnist5k", stepz=3)
    with pytest.raises(ValueError, match=r"unknown TrainConfig fields \['stepz'\]"):
        toy().replace(stepz=3)


def test_bf16_precision_trains_on_the_cpu_and_auto_means_fp32_there():
    assert tr.resolve_precision(toy(), torch.device("cpu")) is None
    assert tr.resolve_precision(toy(precision="bf16"), torch.device("cpu")) is torch.bfloat16
    result = tr.train(toy(precision="bf16", steps=4), progress=False)
    assert torch.isfinite(result.history["loss"]).all() and result.history["loss"].dtype == torch.float32
    assert next(result.model.parameters()).dtype == torch.float32


def test_batch_stream_shards_each_epoch_and_flips(tmp_path):
    x = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 1, 2).clone()
    x[:, :, :, 1] = -1  # column 0 holds the index, column 1 a marker
    streams = [tr.BatchStream(x, 2, seed=5, rank=r, world=2) for r in range(2)]
    seen = [torch.cat([next(s)[:, 0, 0, 0] for _ in range(2)]) for s in streams]
    assert set(seen[0].tolist()).isdisjoint(seen[1].tolist())
    assert len(set(seen[0].tolist()) | set(seen[1].tolist())) == 8  # one epoch of 10 rows, 4 per rank
    flips = tr.BatchStream(x, 10, seed=5, flip=True)
    batch = next(flips)
    mirrored = batch[:, 0, 0, 0] == -1
    assert 0 < int(mirrored.sum()) < 10
    with pytest.raises(ValueError, match="flip=True needs images"):
        tr.BatchStream(torch.zeros(10, 2), 2, seed=0, flip=True)


# ---------------------------------------------------------------------- model cache
def test_cache_trains_once_then_loads_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    config = toy(steps=6)
    updates = []
    real_update = tr._Trainer.update
    monkeypatch.setattr(tr._Trainer, "update", lambda self, fn: updates.append(1) or real_update(self, fn))
    first = tr.get_trained(config, progress=False)
    assert len(updates) == 6
    assert (tmp_path / "models" / tr.config_key(config) / "last.pt").is_file()
    second = tr.get_trained(config.replace(log_every=2, checkpoint_every=3), progress=False)  # same key
    assert len(updates) == 6  # no training step ran
    for a, b in zip(first.ema.state_dict().values(), second.ema.state_dict().values()):
        assert torch.equal(a, b)
    assert tr.config_key(config.replace(lr=2e-3)) != tr.config_key(config)
    assert tr.config_key(config.replace(steps=7)) != tr.config_key(config)


def test_cache_resumes_a_partially_trained_run(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    config = toy(steps=10)

    def stop_at_4(info):
        if info.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tr.train(config, out_dir=tr.cached_run_dir(config), progress=False, callback=stop_at_4)
    updates = []
    real_update = tr._Trainer.update
    monkeypatch.setattr(tr._Trainer, "update", lambda self, fn: updates.append(1) or real_update(self, fn))
    result = tr.get_trained(config, progress=False)
    assert result.step == 10 and len(updates) == 6


def test_cache_continues_a_shorter_run_of_the_same_configuration_bit_for_bit(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    short = tr.get_trained(toy(steps=5), progress=False)
    tr.get_trained(toy(steps=3, lr=2e-3), progress=False)      # another configuration: never continued
    assert tr.shorter_cached_run(toy(steps=12)) == short.checkpoint
    assert tr.shorter_cached_run(toy(steps=12, seed=4)) is None
    assert tr.shorter_cached_run(toy(steps=5)) is None          # not shorter
    assert tr.shorter_cached_run(toy(steps=4)) is None          # longer runs are not cut
    updates = []
    real_update = tr._Trainer.update
    monkeypatch.setattr(tr._Trainer, "update", lambda self, fn: updates.append(1) or real_update(self, fn))
    longer = tr.get_trained(toy(steps=12), progress=False)
    assert len(updates) == 7 and longer.step == 12
    monkeypatch.setattr(tr._Trainer, "update", real_update)
    fresh = tr.train(toy(steps=12), out_dir=tmp_path / "fresh", progress=False)
    assert_same_state(state_of(longer), state_of(fresh))
    assert tr.load_checkpoint(short.checkpoint).step == 5      # the short run stays in the cache


# ---------------------------------------------------------------------- DDP on the CPU
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, folder: str):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    config = toy(steps=5, batch_size=16, dropout=0.1, device="cpu")
    result = tr.train(config, out_dir=folder, progress=False)
    torch.save({"model": result.model.state_dict(), "ema": result.ema.state_dict(),
                "loss": result.history["loss"]}, os.path.join(folder, f"rank{rank}.pt"))


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    import torch.multiprocessing as mp

    # fork: the workers inherit the imported modules (spawn would import torch twice more)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    for part in ("model", "ema"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), f"{part}.{k} differs between ranks"
    assert not torch.equal(r0["loss"], r1["loss"])  # each rank saw its own shard and noise
    raw = tr.read_checkpoint(tmp_path / "last.pt")
    assert raw["step"] == 5 and raw["world_size"] == 2 and len(raw["rng"]) == 2
    assert_same_state({k: v for k, v in raw["model"].items()}, {k: v for k, v in r0["model"].items()})
    torch.manual_seed(TOY["seed"])
    init = tr.build_network(toy())
    assert not torch.equal(next(init.parameters()), next(iter(r0["model"].values())))  # it trained


def test_training_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tr.train(toy(steps=2, dropout=0.1), progress=False)
    assert torch.equal(torch.rand(3), expected)


def test_cuda_device_without_index_is_set_to_the_current_device(monkeypatch):
    """``device="cuda"`` carries no index; torch.cuda.set_device refuses such a device, so the setup
    must resolve it to the current CUDA device first (checked here with the CUDA calls faked)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(d))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rank, world, device, created = tr._distributed_setup(toy(device="cuda"))
    assert (rank, world, created) == (0, 1, False)
    assert device == torch.device("cuda", 0) and calls == [torch.device("cuda", 0)]


@pytest.mark.slow
def test_models_trained_side_by_side_in_workers_equal_in_process_training(tmp_path, monkeypatch):
    """get_trained_many trains the missing runs in two worker processes (one thread each); the cached
    models are bit for bit those that one-thread training in this process gives."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DDPM_WORKERS", "2")
    configs = [toy(seed=5), toy(seed=6)]
    updates = []
    real_update = tr._Trainer.update
    monkeypatch.setattr(tr._Trainer, "update", lambda self, fn: updates.append(1) or real_update(self, fn))
    results = tr.get_trained_many(configs, progress=False)
    assert not updates  # both were trained in the workers; this process only loaded them
    assert all(tr.is_cached(c) for c in configs)
    for config, result in zip(configs, results):
        assert result.step == config.steps
        here = tr.train(config, out_dir=None, progress=False)  # this module runs with one thread
        for name in ("model", "ema"):
            for (k, a), b in zip(getattr(result, name).state_dict().items(), getattr(here, name).state_dict().values()):
                assert torch.equal(a, b), f"{name}.{k} differs"
    assert not torch.equal(next(iter(results[0].ema.state_dict().values())),
                           next(iter(results[1].ema.state_dict().values())))  # two different seeds


def test_an_interrupt_stops_prefetch_without_starting_the_jobs_still_queued(tmp_path, monkeypatch):
    """SIGINT to this process only (``kill -INT``; a kernel's interrupt or a terminal's Ctrl-C reach
    the workers too) while two workers run the first two of four jobs: the queued two never start,
    the running ones are interrupted by the pool, and KeyboardInterrupt reaches the caller (before,
    the pool went on with every queued job)."""
    import signal
    import subprocess
    import threading

    from ddpm_core import runtime

    monkeypatch.setenv("DDPM_WORKERS", "2")
    jobs = [(["sh", "-c", f"sleep 6 && touch {tmp_path}/done{i}"],) for i in range(4)]
    # Python's own Ctrl-C handler, as in a terminal or a kernel (a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and then the interrupt would never arrive)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(4.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        with pytest.raises(KeyboardInterrupt):
            runtime.prefetch(subprocess.run, jobs, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not list(tmp_path.glob("done*"))  # the running ones were interrupted, the queued ones never started


def test_prefetch_reports_failures_and_respects_ddpm_workers(monkeypatch):
    from ddpm_core import runtime

    monkeypatch.setenv("DDPM_WORKERS", "1")
    assert runtime.workers(5) == 1 and runtime.prefetch(math.sqrt, [(4.0,), (9.0,)], progress=False) == [None, None]
    monkeypatch.setenv("DDPM_WORKERS", "2")
    assert runtime.workers(1) == 1 and runtime.workers(7) == 2
    assert runtime.prefetch(math.sqrt, [(4.0,), (-1.0,)], progress=False) == [2.0, "ValueError: math domain error"]
    monkeypatch.setenv("DDPM_WORKERS", "two")
    with pytest.raises(ValueError, match="DDPM_WORKERS"):
        runtime.workers(3)


# ---------------------------------------------------------------------- torch.compile
def test_compile_falls_back_to_eager_when_compilation_fails(compile_fails):
    """A platform where inductor cannot build (no C++ compiler) fails at the first call: the run
    warns and trains eagerly, giving exactly the eager run's weights."""
    eager = tr.train(toy(), progress=False)
    with pytest.warns(UserWarning, match="torch.compile failed.*no working C\\+\\+ compiler.*training eagerly"):
        fallback = tr.train(toy(compile=True), progress=False)
    assert compile_fails == [1]  # tried once, then eager for every later step
    for p, q in zip(eager.model.parameters(), fallback.model.parameters()):
        assert torch.equal(p, q)


def test_compile_uses_the_compiled_network_and_is_not_part_of_the_cache_key(monkeypatch):
    seen = []

    def recording_compile(net, *args, **kwargs):
        def fn(*a, **k):
            seen.append(1)
            return net(*a, **k)
        return fn
    monkeypatch.setattr(torch, "compile", recording_compile)
    tr.train(toy(compile=True), progress=False)
    assert len(seen) == TOY["steps"]
    assert tr.config_key(toy(compile=True)) == tr.config_key(toy())


def test_cuda_graph_is_ignored_with_a_warning_off_cuda_and_changes_nothing():
    plain = tr.train(toy(), progress=False)
    with pytest.warns(UserWarning, match="cuda_graph is ignored: it needs a CUDA device"):
        graphed = tr.train(toy(cuda_graph=True), progress=False)
    for net_a, net_b in ((plain.model, graphed.model), (plain.ema, graphed.ema)):
        for (k, p), q in zip(net_a.state_dict().items(), net_b.state_dict().values()):
            assert torch.equal(p, q), k
    assert torch.equal(plain.history["loss"], graphed.history["loss"])
    with pytest.raises(ValueError, match="cuda_graph.*True or False"):
        toy(cuda_graph="yes")


@pytest.mark.parametrize("durable", [False, True])
def test_atomic_write_replaces_whole_files_and_keeps_the_old_one_on_failure(tmp_path, durable):
    from ddpm_core import runtime

    path = tmp_path / "sub" / "file.bin"
    assert runtime.atomic_write(path, lambda f: f.write(b"first"), durable=durable) == path
    assert path.read_bytes() == b"first"

    def failing(f):
        f.write(b"half of the second")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        runtime.atomic_write(path, failing, durable=durable)
    assert path.read_bytes() == b"first"  # the old version, whole
    assert [p.name for p in path.parent.iterdir()] == ["file.bin"]  # no temporary file left behind
    runtime.atomic_write(path, lambda f: f.write(b"second"), durable=durable)
    assert path.read_bytes() == b"second"


# ---------------------------------------------------------------------- data that the package does not fix
def write_faces(folder, n: int, shade: int = 0):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.full((12, 12, 3), (shade + 7 * i) % 256, np.uint8)
        Image.fromarray(img).save(folder / f"{i:03d}.png")


FACES = dict(dataset="celebahq", preset="cpu-crops", image_size=16, T=30, batch_size=4, steps=2, warmup_steps=0,
             dropout=0.0, log_every=1, checkpoint_every=2)


def test_the_model_cache_tells_one_celebahq_folder_from_another(tmp_path, monkeypatch):
    from ddpm_core import data

    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    write_faces(tmp_path / "a", 12, shade=0)
    write_faces(tmp_path / "b", 12, shade=128)
    config = tr.TrainConfig(**FACES)
    monkeypatch.setenv("DDPM_CELEBAHQ", str(tmp_path / "a"))
    key_a, first = tr.config_key(config), tr.get_trained(config, progress=False)
    assert data.data_identity("celebahq").startswith("12 images, ")
    monkeypatch.setenv("DDPM_CELEBAHQ", str(tmp_path / "b"))
    assert tr.config_key(config) != key_a and not tr.is_cached(config)
    assert tr.shorter_cached_run(config.replace(steps=3)) is None  # a's run is not continued on b's data
    second = tr.get_trained(config, progress=False)
    assert second.checkpoint != first.checkpoint
    assert not all(torch.equal(p, q) for p, q in zip(first.model.parameters(), second.model.parameters()))
    monkeypatch.setenv("DDPM_CELEBAHQ", str(tmp_path / "a"))
    assert tr.config_key(config) == key_a and tr.is_cached(config)
    (tmp_path / "a" / "000.png").write_bytes((tmp_path / "b" / "005.png").read_bytes() + b"\0")  # one file replaced by one of another size
    assert tr.config_key(config) != key_a
    # the fixed datasets keep the names they always had (the book's cache stays valid)
    assert data.data_identity("mnist5k") is None and data.data_identity("cifar10") is None
    monkeypatch.delenv("DDPM_CELEBAHQ")
    assert data.data_identity("celebahq") is None


def test_resume_refuses_training_data_that_changed_since_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path / "cache"))
    write_faces(tmp_path / "faces", 40)
    monkeypatch.setenv("DDPM_CELEBAHQ", str(tmp_path / "faces"))
    run = tmp_path / "run"
    tr.train(tr.TrainConfig(**FACES), out_dir=run, progress=False)
    for i in range(10, 40):  # 36 training images become 9
        (tmp_path / "faces" / f"{i:03d}.png").unlink()
    with pytest.raises(ValueError, match=r"the training data of 'celebahq' changed since the checkpoint was "
                                         r"written \(examples 36 then, 9 now; data '40 images, \w+' then, "
                                         r"'10 images, \w+' now\)"):
        tr.train(tr.TrainConfig(**{**FACES, "steps": 6}), out_dir=run, progress=False)
    raw = tr.read_checkpoint(run)  # a checkpoint of an older version records no data: its epoch order tells
    del raw["data"]
    torch.save(raw, run / "last.pt")
    with pytest.raises(ValueError, match=r"changed since the checkpoint was written \(its epoch order covers 36 "
                                         r"examples, the data now has 9\)"):
        tr.train(tr.TrainConfig(**{**FACES, "steps": 6}), out_dir=run, progress=False)
    write_faces(tmp_path / "faces", 60)  # grown to 54 training images: caught as well
    with pytest.raises(ValueError, match=r"its epoch order covers 36 examples, the data now has 54"):
        tr.train(tr.TrainConfig(**{**FACES, "steps": 6}), out_dir=run, progress=False)
    write_faces(tmp_path / "faces", 40)
    for i in range(40, 60):
        (tmp_path / "faces" / f"{i:03d}.png").unlink()
    assert tr.train(tr.TrainConfig(**{**FACES, "steps": 3}), out_dir=run, progress=False).step == 3  # the same data again


def test_a_broken_link_in_the_celebahq_folder_changes_its_identity_without_an_error(tmp_path, monkeypatch):
    from ddpm_core import data

    write_faces(tmp_path / "faces", 3)
    monkeypatch.setenv("DDPM_CELEBAHQ", str(tmp_path / "faces"))
    before = data.data_identity("celebahq")
    (tmp_path / "faces" / "zz.jpg").symlink_to(tmp_path / "missing.jpg")
    after = data.data_identity("celebahq")
    assert after.startswith("4 images, ") and after != before
    with pytest.raises(OSError, match=r"cannot read the image .*zz.jpg"):
        data.load_dataset("celebahq", "test", image_size=8)  # the last image by path: the test split


def test_a_checkpoint_this_version_cannot_use_is_named_with_its_file(tmp_path):
    tr.train(toy(steps=2), out_dir=tmp_path / "run", progress=False)
    path = tmp_path / "run" / "last.pt"
    good = tr.read_checkpoint(path)
    with pytest.raises(ValueError, match=r"map_location='cuda' but no CUDA device is visible") if \
            not torch.cuda.is_available() else contextlib.nullcontext():
        tr.load_checkpoint(path, map_location="cuda")
    cases = {"an unknown field": lambda raw: raw["config"].update(ema_start=10),
             "a refused value": lambda raw: raw["config"].update(lr=-1.0)}
    for what, change in cases.items():
        raw = copy.deepcopy(good)
        change(raw)
        torch.save(raw, path)
        for load in (lambda: tr.load_checkpoint(path), lambda: tr.train(toy(), out_dir=path.parent, progress=False)):
            with pytest.raises(tr.CheckpointError, match=rf"checkpoint {re.escape(str(path))} records a configuration "
                                                         r"this version of ddpm_core cannot use .*another version"):
                load()
    raw = copy.deepcopy(good)
    del raw["history"]["loss"]
    torch.save(raw, path)
    for load in (lambda: tr.load_checkpoint(path), lambda: tr.train(toy(), out_dir=path.parent, progress=False)):
        with pytest.raises(tr.CheckpointError, match=rf"{re.escape(str(path))} lacks the training history's \['loss'\]"):
            load()
