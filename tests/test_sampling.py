"""Samplers: respacing semantics, reproducibility, errors, and the diffusers schedulers as oracle."""
import copy
import os
import shutil
import warnings

import pytest
import torch

from ddpm_core import diffusion, sampling, schedules

diffusers = pytest.importorskip("diffusers")


def toy_model(channels_out_factor=1):
    """A fixed, smooth function of (x_t, t): stands in for a trained network."""
    def model(x_t, t):
        scale = (t.to(x_t.dtype) / 1000.0 + 0.5).view(-1, *([1] * (x_t.ndim - 1)))
        out = torch.tanh(x_t * scale)
        return torch.cat([out, torch.sin(x_t)], 1) if channels_out_factor == 2 else out
    return model


def test_space_timesteps_sections_and_ddim():
    assert sampling.space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert sampling.space_timesteps(100, 10) == [0, 11, 22, 33, 44, 55, 66, 77, 88, 99]
    steps = sampling.space_timesteps(300, "10,15,20")
    assert len(steps) == 45 and steps[0] == 0 and steps[-1] == 299
    assert sum(s < 100 for s in steps) == 10 and sum(100 <= s < 200 for s in steps) == 15
    with pytest.raises(ValueError, match="cannot take"):
        sampling.space_timesteps(10, 11)
    with pytest.raises(ValueError, match="integer stride"):
        sampling.space_timesteps(1000, "ddim300")
    with pytest.raises(ValueError, match="ddimN"):
        sampling.space_timesteps(1000, "fast")
    for n in (0, -5, 1, 1001):  # out of range, not a stride problem
        with pytest.raises(ValueError, match=rf"{n} DDIM steps asked for, but the process has T = 1000: "
                                             r"pass 2 <= N <= 1000"):
            sampling.space_timesteps(1000, f"ddim{n}")


def _running_sum_steps(T, counts):
    """improved-diffusion's respace.py rule, written out: in each section, a running sum of the
    fractional stride, rounded (Python's round: ties to even)."""
    size, extra = divmod(T, len(counts))
    steps, start = [], 0
    for i, count in enumerate(counts):
        section = size + (i < extra)
        stride = 1 if count <= 1 else (section - 1) / (count - 1)
        cur = 0.0
        for _ in range(count):
            steps.append(start + round(cur))
            cur += stride
        start += section
    return sorted(set(steps))


@pytest.mark.parametrize("T, counts", [(1000, [21]), (1000, [23]), (4000, [31]), (1000, [7, 21, 23]),
                                       (1000, [250]), (4000, [100]), (1000, [1])])
def test_space_timesteps_rounds_a_running_sum_like_the_reference(T, counts):
    """Where k * stride is exactly x.5 (T = 1000 with 21 steps: k = 10 gives 499.5) the running sum
    lands a few ulps off the tie; rounding k * stride directly would keep 500 instead of 499."""
    spec = ",".join(map(str, counts))
    assert sampling.space_timesteps(T, spec) == _running_sum_steps(T, counts)
    if counts == [21]:
        assert 499 in sampling.space_timesteps(T, 21) and 500 not in sampling.space_timesteps(T, 21)


def test_respaced_process_keeps_the_marginals_and_maps_steps():
    d = diffusion.GaussianDiffusion(schedules.get_betas("cosine", 1000))
    r = sampling.respace(d, 25)
    keep = torch.tensor(sampling.space_timesteps(1000, 25))
    assert torch.allclose(r.alpha_bar, d.alpha_bar[keep], rtol=1e-12)
    assert torch.equal(r.timestep_map, keep)
    seen = []
    r.model_call(lambda x, t: seen.append(t.clone()) or x, torch.zeros(2, 1), torch.tensor([0, 24]))
    assert seen[0].tolist() == [0, 999]
    # original_step: the same map for one step (an int) and for a tensor; the identity unrespaced
    assert r.original_step(24) == 999 and isinstance(r.original_step(24), int) and r.original_step(1) == int(keep[1])
    assert torch.equal(r.original_step(torch.tensor([0, 1, 24])), keep[[0, 1, 24]])
    assert d.original_step(7) == 7 and torch.equal(d.original_step(torch.tensor([3, 5])), torch.tensor([3, 5]))
    rr = sampling.respace(r, 5)  # respacing twice maps to the original steps
    assert torch.equal(rr.timestep_map, keep[torch.tensor(sampling.space_timesteps(25, 5))])


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
def test_respacing_with_all_steps_reproduces_the_original_samples(var_type):
    loss = "hybrid" if var_type == "learned_range" else "simple"
    d = diffusion.GaussianDiffusion(schedules.get_betas("linear", 50), var_type=var_type, loss_type=loss)
    model = toy_model(2 if var_type == "learned_range" else 1)
    a = sampling.ddpm_sample(model, d, (3, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    b = sampling.ddpm_sample(model, sampling.respace(d, 50), (3, 1, 4, 4), generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-6)


def test_generator_makes_runs_reproducible_and_progressive_matches():
    d = diffusion.GaussianDiffusion(schedules.get_betas("linear", 40))
    model = toy_model()
    run = lambda seed: sampling.ddpm_sample(model, d, (2, 3, 4, 4), generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    states = list(sampling.ddpm_sample_progressive(model, d, (2, 3, 4, 4), generator=torch.Generator().manual_seed(1)))
    assert [s["t"] for s in states] == list(range(39, -1, -1))
    assert torch.equal(states[-1]["x_t"], run(1))
    ddim = sampling.ddim_sample(model, d, (2, 3, 4, 4), steps=10, generator=torch.Generator().manual_seed(3))
    prog = list(sampling.ddim_sample_progressive(model, d, (2, 3, 4, 4), steps=10, generator=torch.Generator().manual_seed(3)))
    assert len(prog) == 10 and torch.equal(prog[-1]["x_t"], ddim)


def test_ddim_with_eta_zero_is_deterministic_given_x_T():
    d = diffusion.GaussianDiffusion(schedules.get_betas("linear", 100))
    x_T = torch.randn(2, 1, 4, 4)
    a = sampling.ddim_sample(toy_model(), d, x_T.shape, steps=20, x_T=x_T, generator=torch.Generator().manual_seed(0))
    b = sampling.ddim_sample(toy_model(), d, x_T.shape, steps=20, x_T=x_T, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_non_finite_model_output_names_the_step():
    d = diffusion.GaussianDiffusion(schedules.get_betas("linear", 30))

    def bad(x_t, t):
        out = torch.zeros_like(x_t)
        return torch.where((t == 17).view(-1, 1, 1, 1), torch.full_like(out, float("nan")), out)

    for fn in (sampling.ddpm_sample, sampling.ddim_sample):
        with pytest.raises(sampling.NonFiniteSampleError, match="t = 17"):
            fn(bad, d, (2, 1, 2, 2))
    with pytest.raises(sampling.NonFiniteSampleError, match="t = 17"):
        list(sampling.ddpm_sample_progressive(bad, d, (2, 1, 2, 2)))


def test_sampling_loop_makes_a_single_host_synchronisation():
    """Tensor -> Python conversions (.item(), bool(), int()) force a device sync; count them."""
    from torch.overrides import TorchFunctionMode

    class CountSyncs(TorchFunctionMode):
        count = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in ("item", "__bool__", "__int__", "__float__", "tolist"):
                CountSyncs.count += 1
                CountSyncs.names.append(getattr(func, "__qualname__", str(func)))
            return func(*args, **(kwargs or {}))

    d = diffusion.GaussianDiffusion(schedules.get_betas("linear", 60))
    r = sampling.respace(d, "ddim20")  # building a process validates its tables once, on the host
    model = lambda x, t: torch.tanh(x)
    for fn in (lambda: sampling.ddpm_sample(model, d, (2, 1, 3, 3)),
               lambda: sampling.ddpm_sample(model, r, (2, 1, 3, 3)),
               lambda: sampling.ddim_sample(model, r, (2, 1, 3, 3), eta=1.0)):
        CountSyncs.count, CountSyncs.names = 0, []
        with CountSyncs():
            fn()
        assert CountSyncs.count == 1, CountSyncs.names  # the final NaN check, not one per step


# ---------------------------------------------------------------- diffusers as the oracle
def _ours_and_theirs(schedule, T):
    betas = schedules.get_betas(schedule, T)
    kw = dict(beta_schedule="linear", beta_start=float(betas[0]), beta_end=float(betas[-1])) \
        if schedule == "linear" else dict(beta_schedule="squaredcos_cap_v2")
    return betas, kw


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_add_noise_matches_diffusers(schedule):
    betas, kw = _ours_and_theirs(schedule, 1000)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, **kw)
    assert torch.allclose(sched.betas.double(), betas, atol=1e-7)
    d = diffusion.GaussianDiffusion(betas)
    x0, noise = torch.rand(8, 3, 4, 4) * 2 - 1, torch.randn(8, 3, 4, 4)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    assert torch.allclose(d.q_sample(x0, t, noise), sched.add_noise(x0, noise, t), atol=1e-5)


def _in_float64(sched, betas):
    """diffusers keeps its tables in float32, where 1 - alpha_bar_t / alpha_bar_{t-1} loses ~1e-3 of
    beta_t near t = 1. Compare the mathematics, not the rounding: both sides in float64, from the
    same betas (that the two schedules agree is checked by ``test_add_noise_matches_diffusers``)."""
    assert torch.allclose(sched.betas.double(), betas, atol=1e-7)
    sched.betas = betas.clone()
    sched.alphas = 1.0 - sched.betas
    sched.alphas_cumprod = torch.cumprod(sched.alphas, 0)
    if hasattr(sched, "final_alpha_cumprod"):
        sched.final_alpha_cumprod = torch.as_tensor(sched.final_alpha_cumprod, dtype=torch.float64)
    return sched


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large", "learned_range"])
def test_ddpm_step_matches_diffusers_scheduler(schedule, var_type):
    T = 1000
    betas, kw = _ours_and_theirs(schedule, T)
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, variance_type=var_type, clip_sample=True, **kw)
    _in_float64(sched, betas)
    learned = var_type == "learned_range"
    d = diffusion.GaussianDiffusion(betas, var_type=var_type, loss_type="hybrid" if learned else "simple")
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    for step in (999, 600, 100, 10, 1, 0):
        model_out = torch.randn(4, 6 if learned else 3, 8, 8, generator=g, dtype=torch.float64)
        if learned:
            model_out[:, 3:] = torch.tanh(model_out[:, 3:])
        theirs = sched.step(model_out, step, x_t, generator=torch.Generator().manual_seed(step)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
        ours, _, _ = sampling.ddpm_step(lambda x, t: model_out, d, x_t, step, noise)
        assert torch.allclose(ours, theirs, atol=1e-5), (step, float((ours - theirs).abs().max()))


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_ddim_step_matches_diffusers_scheduler(eta, schedule):
    T, n = 1000, 50
    betas, kw = _ours_and_theirs(schedule, T)
    sched = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=True, set_alpha_to_one=True,
                                    timestep_spacing="leading", **kw)
    sched.set_timesteps(n)
    _in_float64(sched, betas)
    d = sampling.respace(diffusion.GaussianDiffusion(betas), f"ddim{n}")
    assert d.timestep_map.flip(0).tolist() == sched.timesteps.tolist()
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    for i, step in enumerate(sched.timesteps.tolist()):
        model_out = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        noise = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        theirs = sched.step(model_out, step, x_t, eta=eta, use_clipped_model_output=True,
                            variance_noise=noise).prev_sample
        ours, _, _ = sampling.ddim_step(lambda x, t: model_out, d, x_t, n - 1 - i, noise, eta=eta)
        assert torch.allclose(ours, theirs, atol=1e-5), (step, float((ours - theirs).abs().max()))
        x_t = theirs


@pytest.mark.parametrize("var_type", ["fixed_small", "fixed_large"])
def test_ddpm_step_matches_diffusers_in_float32_away_from_the_first_steps(var_type):
    """In float32 as shipped, the two agree to 1e-5 wherever diffusers' rounding allows (t >= 100)."""
    betas = schedules.get_betas("linear", 1000)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, variance_type=var_type, clip_sample=True)
    d = diffusion.GaussianDiffusion(betas, var_type=var_type)
    g = torch.Generator().manual_seed(2)
    x_t = torch.randn(4, 3, 8, 8, generator=g)
    for step in (999, 500, 100):
        model_out = torch.randn(4, 3, 8, 8, generator=g)
        theirs = sched.step(model_out, step, x_t, generator=torch.Generator().manual_seed(step)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(step))
        ours, _, _ = sampling.ddpm_step(lambda x, t: model_out, d, x_t, step, noise)
        assert torch.allclose(ours, theirs, atol=1e-5), (step, float((ours - theirs).abs().max()))


# ---------------------------------------------------------------------- compiled sampling
def _perturbed_digits_net():
    from ddpm_core.unet import UNet
    torch.manual_seed(0)
    net = UNet.from_preset("cpu-digits", base_channels=16, channel_mult=(1,), attention_resolutions=())
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))  # the zero-initialised output layers predict something
    return net


@pytest.mark.slow  # inductor compiles C++ for tens of seconds on two cores
@pytest.mark.skipif(not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")),
                    reason="no C++ compiler: torch.compile cannot build (the fallback is tested below)")
def test_compiled_network_samples_what_the_eager_one_does():
    net = _perturbed_digits_net().train()
    fast = sampling.Compiled(net)
    d = sampling.respace(diffusion.GaussianDiffusion(schedules.get_betas("linear", 1000)), 10)
    eager = sampling.ddpm_sample(net, d, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compiled = sampling.ddpm_sample(fast, d, (3, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    assert not [w for w in seen if "torch.compile failed" in str(w.message)]  # no fallback: it really compiled
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    assert net.training and fast.training  # sampling gave back the training mode
    assert (fast.in_channels, fast.image_size) == (1, 8)  # what evaluation.sample_images reads
    assert list(fast.state_dict()) == ["net." + k for k in net.state_dict()]


def test_compiled_falls_back_to_eager_sampling_with_a_warning(compile_fails):
    net = _perturbed_digits_net()
    d = sampling.respace(diffusion.GaussianDiffusion(schedules.get_betas("linear", 1000)), 5)
    eager = sampling.ddpm_sample(net, d, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    with pytest.warns(UserWarning, match="torch.compile failed.*no working C\\+\\+ compiler.*sampling eagerly") as seen:
        fallback = sampling.ddpm_sample(sampling.Compiled(net), d, (2, 1, 8, 8),
                                        generator=torch.Generator().manual_seed(1))
    assert compile_fails == [1] and len(seen) == 1  # tried and warned once, then eager for every later step
    assert torch.equal(fallback, eager)


def test_compiled_takes_a_network_only():
    with pytest.raises(TypeError, match="Compiled takes a network"):
        sampling.Compiled(lambda x_t, t: x_t)


def test_a_copy_of_a_compiled_network_compiles_its_own_network(monkeypatch):
    """deepcopy (and pickling) drop the compiled callable: the copy compiles, and then runs, its own
    network, not the original's (which a copied closure would keep calling)."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(net) or net)
    net = _perturbed_digits_net()
    fast = sampling.Compiled(net)
    x_t, t = torch.randn(2, 1, 8, 8), torch.tensor([5, 700])
    fast(x_t, t)
    twin = copy.deepcopy(fast)
    with torch.no_grad():
        for p in twin.net.parameters():
            p.mul_(2)  # the copy's weights differ from the original's
    assert not torch.equal(twin(x_t, t), fast(x_t, t))
    assert compiled == [net, twin.net] and twin.net is not net
