"""Gaussian diffusion of Ho et al. 2020 with the learned variances and hybrid objective of
Nichol & Dhariwal 2021: forward process, posterior, reverse mean/variance, training losses and the
variational bound in bits per dimension.

Timesteps are 0-indexed: ``t in 0..T-1``, ``t = 0`` is the first noising step. Coefficient tables
are computed once in float64 and kept, per device, in the dtype of the data they are used with.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import losses, schedules

MEAN_TYPES = {
    "eps": "the network predicts the noise eps (Ho et al. 2020, eq. 11)",
    "x0": "the network predicts the clean image x_0",
    "mu": "the network predicts the posterior mean mu~_t(x_t, x_0) directly",
}
VAR_TYPES = {
    "fixed_small": "Sigma = beta~_t, the posterior variance (lower bound of Ho et al.)",
    "fixed_large": "Sigma = beta_t, with beta~_1 at the first step as in the reference code",
    "learned": "the network outputs log Sigma directly",
    "learned_range": "the network outputs v; log Sigma = v' log beta_t + (1 - v') log beta~_t, v' = (v + 1) / 2",
}
LOSS_TYPES = {
    "simple": "L_simple: mean squared error on what the network predicts (Ho et al. eq. 14)",
    "vlb": "the true bound: T * L_t, in bits per dimension",
    "hybrid": "L_simple + (T / 1000) * L_t with the mean detached inside L_t (Nichol & Dhariwal, L_hybrid)",
}


def _choose(value: str, valid: dict, what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: "
                         + "; ".join(f"{k!r} ({v})" for k, v in valid.items()))
    return value


class GaussianDiffusion:
    """The diffusion process over a fixed beta schedule.

    :param betas: float [T] noise schedule (see ``schedules.get_betas``).
    :param mean_type: what the network predicts, a key of ``MEAN_TYPES``.
    :param var_type: how the reverse variance is chosen, a key of ``VAR_TYPES``.
    :param loss_type: the training objective, a key of ``LOSS_TYPES``.
    :param timestep_map: for a respaced process, the original step index of each of its steps;
        the network is always called with original indices.
    """

    def __init__(self, betas, mean_type: str = "eps", var_type: str = "fixed_small",
                 loss_type: str = "simple", timestep_map=None):
        if isinstance(betas, str):
            raise TypeError(f"GaussianDiffusion takes betas (a 1-D tensor); for a named schedule use "
                            f"GaussianDiffusion(schedules.get_betas({betas!r}, T))")
        self.mean_type = _choose(mean_type, MEAN_TYPES, "mean_type")
        self.var_type = _choose(var_type, VAR_TYPES, "var_type")
        self.loss_type = _choose(loss_type, LOSS_TYPES, "loss_type")
        if loss_type == "simple" and self.learned_variance:
            raise ValueError(f"loss_type 'simple' gives the variance of var_type {var_type!r} no "
                             "gradient; use loss_type 'hybrid' or 'vlb' to learn it")
        if loss_type == "hybrid" and not self.learned_variance:
            raise ValueError("loss_type 'hybrid' only adds a term that trains a learned variance; "
                             "with a fixed variance use 'simple' (or 'vlb' for the true bound)")
        self._tables64 = schedules.derived(betas)
        t64 = self._tables64
        self.num_timesteps = len(t64["betas"])
        if self.num_timesteps < 2:
            raise ValueError("a diffusion needs at least 2 steps: with one, the reverse process has no "
                             "step between x_T and the decoder, and the first step's posterior variance "
                             "(0) has no successor to stand in for it, as the reference code needs; "
                             "use T >= 2 (or respace to 2 or more steps)")
        # fixed_large: beta_t, but the posterior variance at the first step (reference code)
        large = torch.cat([t64["posterior_variance"][1:2], t64["betas"][1:]])
        t64["fixed_large_variance"] = large
        t64["fixed_large_log_variance"] = torch.log(large)
        t64["log_betas"] = torch.log(t64["betas"])
        self.timestep_map = None if timestep_map is None else torch.as_tensor(timestep_map, dtype=torch.long)
        self._cache: dict = {}

    # ------------------------------------------------------------------ tables
    @property
    def betas(self) -> torch.Tensor:
        return self._tables64["betas"]

    @property
    def alpha_bar(self) -> torch.Tensor:
        return self._tables64["alpha_bar"]

    @property
    def learned_variance(self) -> bool:
        return self.var_type in ("learned", "learned_range")

    def table(self, name: str, device=None, dtype=torch.float64) -> torch.Tensor:
        """The float64 table ``name`` (see ``schedules.derived``) on ``device`` in ``dtype``, cached."""
        key = (name, torch.device(device or "cpu"), dtype)
        if key not in self._cache:
            self._cache[key] = self._tables64[name].to(device=key[1], dtype=dtype)
        return self._cache[key]

    def _extract(self, name: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Table ``name`` at steps ``t`` [N], shaped [N, 1, ..., 1] to broadcast against ``x``."""
        # float32 at least, as the reference does: in float16 the cosine schedule's 1/sqrt(alpha_bar)
        # at T = 4000 (81,165) is inf, and alpha_bar underflows to 0 near t = T
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        if x.device.type == "mps" and dtype == torch.float64:
            dtype = torch.float32
        out = self.table(name, x.device, dtype)[t]
        return out.reshape(len(t), *([1] * (x.ndim - 1)))

    def check_t(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """Validate a step tensor: long, shape [n], values in 0..T-1."""
        if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"t must be an integer tensor of 0-indexed steps, got {type(t).__name__}"
                            + (f" of dtype {t.dtype}" if isinstance(t, torch.Tensor) else ""))
        if t.shape != (n,):
            raise ValueError(f"t must have shape [{n}] (one step per example), got {tuple(t.shape)}")
        if t.device.type == "cpu":
            if n and (int(t.min()) < 0 or int(t.max()) >= self.num_timesteps):
                raise ValueError(f"t must lie in 0..{self.num_timesteps - 1} (0-indexed steps), "
                                 f"got values from {int(t.min())} to {int(t.max())}")
        else:  # no host synchronisation on accelerators
            torch._assert_async(((t >= 0) & (t < self.num_timesteps)).all(),
                                f"t must lie in 0..{self.num_timesteps - 1}")
        return t.long()

    @staticmethod
    def check_x0(x0: torch.Tensor) -> torch.Tensor:
        """Validate clean data: a float tensor and, for image batches [N, C, H, W] on the CPU (no host
        synchronisation on accelerators), values near [-1, 1]. The bound is loose (|x0| <= 10) so
        that tests may use standard normal "images"; it catches 0..255 pixels."""
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            got = f"dtype {x0.dtype}" if isinstance(x0, torch.Tensor) else type(x0).__name__
            raise TypeError(f"x0 must be a float tensor of images in [-1, 1], got {got}; "
                            "convert with x.float() / 127.5 - 1")
        if x0.dim() == 4 and x0.device.type == "cpu" and x0.numel():
            lo, hi = (float(v) for v in torch.aminmax(x0))
            if max(-lo, hi) > 10:
                raise ValueError(f"x0 must hold images in [-1, 1]; got min {lo:.4g} and max {hi:.4g}. "
                                 "Map 0..255 pixels with x / 127.5 - 1")
        return x0

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0) (Ho et al. eq. 4)."""
        t = self.check_t(t, len(self.check_x0(x0)))
        mean = self._extract("sqrt_alpha_bar", t, x0) * x0
        var = self._extract("sqrt_one_minus_alpha_bar", t, x0) ** 2
        return mean, var.expand_as(x0), self._extract("log_one_minus_alpha_bar", t, x0).expand_as(x0)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

        :param x0: the [N x C x H x W] clean images.
        :param t: long [N] steps.
        :param noise: optional standard normal noise, same shape as ``x0``.
        """
        t = self.check_t(t, len(self.check_x0(x0)))
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x0.shape)}")
        return self._q_sample(x0, t, noise)

    def _q_sample(self, x0, t, noise):
        return self._extract("sqrt_alpha_bar", t, x0) * x0 + self._extract("sqrt_one_minus_alpha_bar", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eqs. 6-7)."""
        if isinstance(x0, torch.Tensor) and isinstance(x_t, torch.Tensor) and x_t.shape != x0.shape:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)} but x0 has {tuple(x0.shape)}; "
                             "q(x_{t-1} | x_t, x_0) needs x_t and x0 of the same shape (one x_t per x0)")
        return self._q_posterior(x0, x_t, self.check_t(t, len(x0)))

    def _q_posterior(self, x0, x_t, t):
        mean = self._extract("posterior_mean_coef1", t, x_t) * x0 + self._extract("posterior_mean_coef2", t, x_t) * x_t
        var = self._extract("posterior_variance", t, x_t).expand_as(x_t)
        log_var = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        return mean, var, log_var

    def predict_x0_from_eps(self, x_t, t, eps):
        return self._extract("sqrt_recip_alpha_bar", t, x_t) * x_t - self._extract("sqrt_recipm1_alpha_bar", t, x_t) * eps

    def predict_eps_from_x0(self, x_t, t, x0):
        return (self._extract("sqrt_recip_alpha_bar", t, x_t) * x_t - x0) / self._extract("sqrt_recipm1_alpha_bar", t, x_t)

    def _predict_x0_from_mean(self, x_t, t, mean):
        # invert mu~ = coef1 * x0 + coef2 * x_t
        return (mean - self._extract("posterior_mean_coef2", t, x_t) * x_t) / self._extract("posterior_mean_coef1", t, x_t)

    # ------------------------------------------------------------------ reverse process
    def original_step(self, t):
        """The step of the process the model was trained on that step ``t`` of this one stands for
        (itself unless respaced); ``t`` an int or a tensor of steps, returned as the same kind."""
        if self.timestep_map is None:
            return t
        if isinstance(t, torch.Tensor):
            return self.timestep_map.to(t.device)[t]
        return int(self.timestep_map[t])

    def model_call(self, model: Callable, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Call ``model(x_t, t)`` with the step indices it was trained on (original ones when respaced).

        The network sees the integer step, 0..T-1, as in Ho et al.'s code. improved-diffusion by
        default (``rescale_timesteps=True``) passes ``t * 1000 / T`` instead, the same numbers at
        T = 1000 but not for its T = 4000 CIFAR-10 runs: a network trained here with T = 4000
        embeds steps up to 3999, and weights trained there expect 0..999.75."""
        return model(x_t, self.original_step(t))

    def split_model_output(self, model_out: torch.Tensor, x_t: torch.Tensor):
        """Check the model output's shape and split it into (mean part, variance part or None)."""
        c = x_t.shape[1] if x_t.ndim > 1 else 1
        expected = (x_t.shape[0], 2 * c, *x_t.shape[2:]) if self.learned_variance else tuple(x_t.shape)
        if not isinstance(model_out, torch.Tensor) or tuple(model_out.shape) != expected:
            got = tuple(model_out.shape) if isinstance(model_out, torch.Tensor) else type(model_out).__name__
            why = (f"var_type {self.var_type!r} needs 2 x {c} channels: the mean part first, the variance part second"
                   if self.learned_variance else f"var_type {self.var_type!r} needs one output per input value")
            raise ValueError(f"model output has shape {got}, expected {expected}: {why}")
        if self.learned_variance:
            return model_out[:, :c], model_out[:, c:]
        return model_out, None

    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = True, denoised_fn: Callable | None = None) -> dict:
        """Mean and variance of p(x_{t-1} | x_t) from the network's output.

        :param model_out: ``model(x_t, t)``: [N x C x ...], or [N x 2C x ...] with a learned variance.
        :param x_t: the [N x C x ...] tensor at step t.
        :param t: long [N] steps.
        :param clip_denoised: clamp the predicted x_0 to [-1, 1].
        :param denoised_fn: optional function applied to the predicted x_0 before clipping.
        :return: a dict with keys ``mean``, ``variance``, ``log_variance``, ``pred_x0``.
        """
        return self._p_mean_variance(model_out, x_t, self.check_t(t, len(x_t)), clip_denoised, denoised_fn)

    def _p_mean_variance(self, model_out, x_t, t, clip_denoised=True, denoised_fn=None) -> dict:
        """``p_mean_variance`` without validating ``t`` (for loops that build ``t`` themselves)."""
        out, v = self.split_model_output(model_out, x_t)
        if self.var_type == "learned":
            log_var = v
        elif self.var_type == "learned_range":
            min_log = self._extract("posterior_log_variance_clipped", t, x_t)
            max_log = self._extract("log_betas", t, x_t)
            frac = (v + 1) / 2
            log_var = frac * max_log + (1 - frac) * min_log
        elif self.var_type == "fixed_large":
            log_var = self._extract("fixed_large_log_variance", t, x_t).expand_as(x_t)
        else:
            log_var = self._extract("posterior_log_variance_clipped", t, x_t).expand_as(x_t)
        if self.var_type in ("learned", "learned_range"):
            variance = torch.exp(log_var)
        elif self.var_type == "fixed_large":
            variance = self._extract("fixed_large_variance", t, x_t).expand_as(x_t)
        else:
            variance = self._extract("posterior_variance", t, x_t).expand_as(x_t)

        def process(x):
            if denoised_fn is not None:
                x = denoised_fn(x)
            return x.clamp(-1, 1) if clip_denoised else x

        if self.mean_type == "mu":
            pred_x0 = process(self._predict_x0_from_mean(x_t, t, out))
            mean = out
        else:
            pred_x0 = process(out if self.mean_type == "x0" else self.predict_x0_from_eps(x_t, t, out))
            mean, _, _ = self._q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "variance": variance, "log_variance": log_var, "pred_x0": pred_x0}

    # ------------------------------------------------------------------ the bound
    def _vb_terms(self, model_out, x0, x_t, t, clip_denoised=True) -> dict:
        true_mean, _, true_log_var = self._q_posterior(x0, x_t, t)
        out = self._p_mean_variance(model_out, x_t, t, clip_denoised=clip_denoised)
        kl = losses.mean_flat(losses.normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"])) / losses.LOG2
        nll = -losses.discretized_gaussian_log_likelihood(x0, out["mean"], 0.5 * out["log_variance"])
        nll = losses.mean_flat(nll) / losses.LOG2
        return {"output": torch.where(t == 0, nll, kl), "pred_x0": out["pred_x0"]}

    def vb_terms_bpd(self, model_out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                     t: torch.Tensor, clip_denoised: bool = True) -> torch.Tensor:
        """The bound's term L_t in bits per dimension, [N]: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t))
        for t > 0, and the decoder NLL -log p(x_0 | x_1) (discretised, eq. 13 of Ho et al.) at t == 0."""
        return self._vb_terms(model_out, self.check_x0(x0), x_t, self.check_t(t, len(x0)), clip_denoised)["output"]

    def prior_bpd(self, x0: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits per dimension, [N]. Not trained; near 0 for a good schedule."""
        t = torch.full((len(x0),), self.num_timesteps - 1, dtype=torch.long, device=x0.device)
        mean, _, log_var = self.q_mean_variance(x0, t)
        return losses.mean_flat(losses.normal_kl(mean, log_var, 0.0, 0.0)) / losses.LOG2

    # ------------------------------------------------------------------ training
    def training_losses(self, model: Callable, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor | None = None) -> dict:
        """Per-example training losses at steps ``t``.

        :param model: callable ``model(x_t, t)``.
        :param x0: the [N x C x ...] clean batch in [-1, 1].
        :param t: long [N] steps.
        :param noise: optional noise for ``q_sample``.
        :return: a dict of [N] tensors: ``loss``; ``mse`` (simple, hybrid); ``vb`` (vlb, hybrid).
        """
        t = self.check_t(t, len(self.check_x0(x0)))
        if noise is None:
            noise = torch.randn_like(x0)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {tuple(x0.shape)}")
        x_t = self._q_sample(x0, t, noise)
        model_out = self.model_call(model, x_t, t)
        terms = {}
        if self.loss_type == "vlb":
            terms["vb"] = self._vb_terms(model_out, x0, x_t, t, clip_denoised=False)["output"] * self.num_timesteps
            terms["loss"] = terms["vb"]
            return terms
        out, v = self.split_model_output(model_out, x_t)
        target = {"eps": noise, "x0": x0, "mu": None}[self.mean_type]
        if target is None:
            target = self._q_posterior(x0, x_t, t)[0]
        terms["mse"] = losses.mean_flat((target - out) ** 2)
        terms["loss"] = terms["mse"]
        if self.loss_type == "hybrid":
            frozen = torch.cat([out.detach(), v], dim=1)  # only the variance learns from L_vlb
            terms["vb"] = self._vb_terms(frozen, x0, x_t, t, clip_denoised=False)["output"] * (self.num_timesteps / 1000.0)
            terms["loss"] = terms["mse"] + terms["vb"]
        return terms

    @torch.no_grad()
    def bpd(self, model: Callable, x0: torch.Tensor, clip_denoised: bool = True,
            noise_generator: torch.Generator | None = None, progress: bool = False,
            max_batch: int = 256) -> dict:
        """The full variational bound in bits per dimension: every step t of every image, one
        network evaluation each.

        Small batches share network calls: ``max_batch // N`` steps go through the network together
        (the noise is drawn step by step from T-1 down, as for one step at a time), which keeps a
        CPU busy when N is a few test images.

        :param x0: the [N x C x H x W] images in [-1, 1]. :param max_batch: examples per network call.
        :return: a dict with ``total_bpd`` [N] (sum of ``vb`` and ``prior_bpd``), ``prior_bpd`` [N],
            ``vb`` [N x T] (L_t per step; column 0 is the decoder NLL), ``mse`` [N x T] (eps error)
            and ``x0_mse`` [N x T] (error of the predicted x_0, for rate-distortion curves).
        """
        check_generator(noise_generator, "noise_generator")
        n, T = len(self.check_x0(x0)), self.num_timesteps
        vb, eps_mse, x0_mse = (torch.zeros(n, T, device=x0.device, dtype=x0.dtype) for _ in range(3))
        per_call = max(1, max_batch // max(n, 1))
        order = list(range(T - 1, -1, -1))
        from tqdm.auto import tqdm

        bar = tqdm(total=T, desc="bits/dim", disable=not progress)
        for j in range(0, T, per_call):
            steps = order[j:j + per_call]                                       # k steps, largest first
            k = len(steps)
            t = torch.tensor(steps, dtype=torch.long, device=x0.device).repeat_interleave(n)   # [k*N]
            noise = torch.cat([_randn(x0.shape, noise_generator, x0.device, x0.dtype) for _ in steps])
            x0_k = x0.repeat(k, *([1] * (x0.dim() - 1)))                       # [k*N x C x H x W]
            x_t = self._q_sample(x0_k, t, noise)
            terms = self._vb_terms(self.model_call(model, x_t, t), x0_k, x_t, t, clip_denoised)
            vb[:, steps] = terms["output"].view(k, n).T
            x0_mse[:, steps] = losses.mean_flat((terms["pred_x0"] - x0_k) ** 2).view(k, n).T
            eps = self.predict_eps_from_x0(x_t, t, terms["pred_x0"])
            eps_mse[:, steps] = losses.mean_flat((eps - noise) ** 2).view(k, n).T
            bar.update(k)
        bar.close()
        prior = self.prior_bpd(x0)
        return {"total_bpd": vb.sum(1) + prior, "prior_bpd": prior, "vb": vb, "mse": eps_mse, "x0_mse": x0_mse}


def check_generator(generator, name: str = "generator") -> None:
    """Reject anything but a ``torch.Generator`` or None (a seed passed as ``generator=0``, say)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        seed = generator if isinstance(generator, int) and not isinstance(generator, bool) else 0
        raise TypeError(f"{name} must be a torch.Generator or None, got {type(generator).__name__} {generator!r}; "
                        f"pass torch.Generator().manual_seed({seed}) for reproducible noise")


def _randn(shape, generator, device, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise; drawn on the generator's device (reproducible across devices)."""
    if generator is None:
        return torch.randn(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
