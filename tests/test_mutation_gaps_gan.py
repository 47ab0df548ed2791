"""Gaps found by mutating the GAN's training loop and sampling, the image study's run planning
(compare.image_models / image_baselines / _image_to_cache), train.train_missing and viz's
prose_checks / glue (mutation_gan.md)."""
import copy
import sys

import pytest
import torch
import torch.nn.functional as F

from ddpm_core import baselines, compare, runtime, viz
from ddpm_core import train as tr
from test_baselines import images
from test_train import toy

pytestmark = pytest.mark.usefixtures("one_thread")


def _states_equal(a, b):
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_gan_fit_equals_a_hand_written_alternating_loop():
    """Three fit() updates of the image GAN equal an independent loop: one generator seeded with the
    run's seed gives the batch order and then each step's z; D takes an Adam step (lr 2e-4, betas
    (0.5, 0.999), DCGAN's) on the gradient of L_D with respect to D's parameters only (fake detached);
    then G takes one on the gradient of L_G through the *updated* D, with respect to G's parameters
    only; the history's "loss" is L_D."""
    x = images(24, (1, 8, 8))
    model = baselines.build("gan", (1, 8, 8), size="cpu", seed=0)
    ref = copy.deepcopy(model).train()
    g_before, d_before = model.G.to_image.weight.detach().clone(), model.D.logit.weight.detach().clone()
    history = baselines.train(model, x, steps=3, batch_size=8, seed=4, progress=False)

    gen = torch.Generator().manual_seed(4)
    d_params, g_params = list(ref.D.parameters()), list(ref.G.parameters())
    opt_d = torch.optim.Adam(d_params, 2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g_params, 2e-4, betas=(0.5, 0.999))
    perm = torch.randperm(24, generator=gen)
    want_d, want_g = [], []
    for i in range(3):
        xb = x[perm[8 * i:8 * i + 8]]
        z = torch.randn(8, ref.z_dim, generator=gen)
        fake = ref.G(z)
        loss_d = F.softplus(-ref.D(xb)).mean() + F.softplus(ref.D(fake.detach())).mean()
        for p, g in zip(d_params, torch.autograd.grad(loss_d, d_params)):
            p.grad = g
        opt_d.step()
        loss_g = F.softplus(-ref.D(fake)).mean()
        for p, g in zip(g_params, torch.autograd.grad(loss_g, g_params)):
            p.grad = g
        opt_g.step()
        want_d.append(loss_d.item())
        want_g.append(loss_g.item())
    assert history["loss_d"] == pytest.approx(want_d, abs=1e-6)
    assert history["loss_g"] == pytest.approx(want_g, abs=1e-6)
    assert history["loss"] == history["loss_d"]
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    assert not torch.equal(model.G.to_image.weight, g_before) and not torch.equal(model.D.logit.weight, d_before)


def test_fit_trains_a_model_left_in_eval_mode_as_a_training_model():
    """fit() puts the model in training mode: a GAN that was switched to eval (as get_baseline returns
    its models) trains exactly like a fresh one (batch norm on batch statistics, running stats updated)."""
    x = images(16, (1, 8, 8))
    fresh = baselines.build("gan", (1, 8, 8), size="cpu", seed=0)
    evaled = baselines.build("gan", (1, 8, 8), size="cpu", seed=0).eval()
    h1 = baselines.train(fresh, x, steps=2, batch_size=8, progress=False)
    h2 = baselines.train(evaled, x, steps=2, batch_size=8, progress=False)
    assert h1["loss_g"] == h2["loss_g"] and _states_equal(fresh, evaled)
    assert evaled.training


def test_gan_sample_uses_running_statistics_and_restores_the_mode():
    """GAN.sample runs G in eval mode (each sample depends on its own z only: one sample equals the first
    of five from the same generator, and the running statistics are not touched) and leaves the model
    in the mode it was in."""
    model = baselines.build("gan", (1, 8, 8), size="cpu", seed=0)
    baselines.train(model, images(16, (1, 8, 8)), steps=2, batch_size=8, progress=False)
    buffers = [b.clone() for b in model.buffers()]
    assert model.training
    five = baselines.sample(model, 5, torch.Generator().manual_seed(1))
    assert model.training, "sample must restore training mode"
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers())), "sample changed running statistics"
    one = baselines.sample(model, 1, torch.Generator().manual_seed(1))
    torch.testing.assert_close(one, five[:1], rtol=0, atol=1e-6)
    model.eval()
    baselines.sample(model, 2)
    assert not model.training


def _plan(monkeypatch, tmp_path, cached_ddpm_seeds, cached_baselines):
    """Run compare.image_models with training faked; return the prefetch calls and its output."""
    monkeypatch.setenv("DDPM_CACHE", str(tmp_path))
    config = compare.image_config(steps=3)
    assert config.batch_size != 256  # so a cache key without it would differ
    for fam, seed in cached_baselines:
        path = compare.baseline_path(fam, config.dataset, config.steps, seed, batch_size=config.batch_size)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    calls = []
    monkeypatch.setattr(runtime, "prefetch", lambda fn, jobs, **kw: calls.append((fn, list(jobs))))
    monkeypatch.setattr(tr, "is_cached", lambda c: c.seed in cached_ddpm_seeds)
    monkeypatch.setattr(tr, "get_trained", lambda c, progress=True: ("ddpm", c.seed))
    monkeypatch.setattr(compare, "image_baselines",
                        lambda c, families, seed, progress=True: {f: (f, seed) for f in families})
    return config, calls, compare.image_models(config, seeds=(0, 1, 2), progress=False)


def test_image_models_sends_exactly_the_missing_runs_to_the_workers_longest_first(tmp_path, monkeypatch):
    """image_models prefetches the DDPM seeds the cache lacks, then each missing (family, seed) with
    the DDPM's batch size in the cache key, flows first, then GANs, then VAEs (_IMAGE_COST); with
    everything cached it starts no workers."""
    config, calls, (ddpms, runs) = _plan(monkeypatch, tmp_path, {0}, [("gan", 0), ("vae", 2)])
    assert len(calls) == 1 and calls[0][0] is compare._image_to_cache
    assert calls[0][1] == [("ddpm", config.replace(seed=1), 1), ("ddpm", config.replace(seed=2), 2),
                           ("flow", config, 0), ("flow", config, 1), ("flow", config, 2),
                           ("gan", config, 1), ("gan", config, 2), ("vae", config, 0), ("vae", config, 1)]
    assert ddpms == [("ddpm", 0), ("ddpm", 1), ("ddpm", 2)]
    assert runs == {f: [(f, s) for s in (0, 1, 2)] for f in ("gan", "vae", "flow")}
    all_cached = [(f, s) for f in ("gan", "vae", "flow") for s in (0, 1, 2)]
    _, calls, _ = _plan(monkeypatch, tmp_path / "b", {0, 1, 2}, all_cached)
    assert calls == []


def test_image_baselines_and_worker_jobs_train_with_the_ddpm_budget_and_the_jobs_seed(monkeypatch):
    """image_baselines asks get_baseline for the DDPM's dataset, steps and batch size and the given
    seed; a worker job (_image_to_cache) trains the baseline of its own seed, or the DDPM config it carries."""
    config = compare.image_config(steps=7)
    got = []
    monkeypatch.setattr(compare, "get_baseline", lambda *a, **k: got.append((a, k)) or a[0])
    assert compare.image_baselines(config, ("gan", "vae"), 2, progress=False) == {"gan": "gan", "vae": "vae"}
    assert got == [(("gan", config.dataset, 7, 2), {"batch_size": config.batch_size, "progress": False}),
                   (("vae", config.dataset, 7, 2), {"batch_size": config.batch_size, "progress": False})]
    got.clear()
    compare._image_to_cache("flow", config, 1)
    assert got == [(("flow", config.dataset, 7, 1), {"batch_size": config.batch_size, "progress": False})]
    trained = []
    monkeypatch.setattr(tr, "get_trained", lambda c, progress=True: trained.append(c))
    compare._image_to_cache("ddpm", config.replace(seed=2), 2)
    assert trained == [config.replace(seed=2)]


def test_train_missing_sends_each_missing_run_once_to_the_workers(monkeypatch):
    """train_missing hands runtime.prefetch one job per distinct configuration the cache lacks:
    duplicates are merged and cached runs left out."""
    calls = []
    monkeypatch.setattr(runtime, "prefetch", lambda fn, jobs, **kw: calls.append((fn, list(jobs))))
    monkeypatch.setattr(tr, "is_cached", lambda c: c.seed == 3)
    a, b, c = toy(seed=1), toy(seed=2), toy(seed=3)
    tr.train_missing([a, toy(seed=1), b, c, b], progress=False)
    assert calls == [(tr._train_to_cache, [(a,), (b,)])]
    calls.clear()
    tr.train_missing([a, c, c], progress=False)  # one missing run trains in the caller's process
    assert calls == []


def test_prose_checks_raise_in_the_profile_named_by_checked_in(monkeypatch):
    """prose_checks(checked_in=p) fails in profile p and warns in any other (not always 'cpu')."""
    monkeypatch.setattr(runtime, "get_profile", lambda: "gpu")
    with pytest.raises(AssertionError, match="claim"):
        with viz.prose_checks(checked_in="gpu"):
            assert False, "claim"
    monkeypatch.setattr(runtime, "get_profile", lambda: "cpu")
    with pytest.warns(UserWarning, match="written for the gpu profile.*this cpu run"):
        with viz.prose_checks(checked_in="gpu"):
            assert False, "claim"


def test_glue_without_myst_nb_shows_figures_and_asked_for_values_only(monkeypatch):
    """Where myst-nb is missing (Colab), glue shows a figure right away (and closes it), shows a value
    only with display=True, and still keeps numbers for glue_sci."""
    import IPython.display
    import matplotlib.pyplot as plt

    monkeypatch.setitem(sys.modules, "myst_nb", None)  # import fails
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda v: shown.append(v))
    fig = plt.figure()
    viz.glue("gap_fig", fig)
    assert shown == [fig] and not plt.fignum_exists(fig.number)
    viz.glue("gap_value", 2.5e-6)
    assert shown == [fig]
    viz.glue("gap_value", 2.5e-6, display=True)
    assert shown == [fig, 2.5e-6]
    assert viz._GLUED["gap_value"] == 2.5e-6
