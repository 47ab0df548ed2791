"""Timestep samplers for training: which t each example of a batch is trained at.

A sampler returns steps and importance weights; the training loss of a batch is
``(losses["loss"] * weights).mean()``, an unbiased estimate of the uniform-t objective.
"""
from __future__ import annotations

import torch

SAMPLERS = {
    "uniform": "t uniform over 0..T-1 (Ho et al. 2020)",
    "loss-second-moment": "p_t proportional to sqrt(E[L_t^2]) over each step's last 10 losses, "
                          "uniform until every step has 10, mixed with 0.001 uniform (Nichol & Dhariwal 2021, eq. 18)",
}


def create_sampler(name: str, num_timesteps: int):
    """Build the sampler ``name`` (a key of ``SAMPLERS``) over ``num_timesteps`` steps."""
    if name == "uniform":
        return UniformSampler(num_timesteps)
    if name == "loss-second-moment":
        return LossSecondMomentSampler(num_timesteps)
    raise ValueError(f"unknown timestep sampler {name!r}; valid: {', '.join(SAMPLERS)}")


class UniformSampler:
    """t ~ U{0..T-1}, all weights 1."""

    def __init__(self, num_timesteps: int):
        self.num_timesteps = num_timesteps

    def probabilities(self, device=None) -> torch.Tensor:
        return torch.full((self.num_timesteps,), 1.0 / self.num_timesteps, dtype=torch.float64, device=device)

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        """:return: (t long [N], weights float [N])."""
        gen_device = generator.device if generator is not None else device
        t = torch.randint(0, self.num_timesteps, (batch_size,), generator=generator, device=gen_device).to(device)
        return t, torch.ones(batch_size, device=device)

    def update_with_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Uniform sampling learns nothing from the losses."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class LossSecondMomentSampler(UniformSampler):
    """Importance sampling of t for L_vlb (Nichol & Dhariwal 2021, section 3.3).

    Keeps the last ``history`` losses of every step in a ring buffer on the losses' device; every
    operation stays on that device, so training makes no host synchronisation for it.
    """

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__(num_timesteps)
        self.history, self.uniform_prob = history, uniform_prob
        self.losses = torch.zeros(num_timesteps, history, dtype=torch.float64)
        self.counts = torch.zeros(num_timesteps, dtype=torch.long)  # losses seen per step

    def warmed_up(self) -> torch.Tensor:
        """Bool tensor: every step holds a full history."""
        return (self.counts >= self.history).all()

    def probabilities(self, device=None) -> torch.Tensor:
        """p_t: uniform until warmed up, then proportional to sqrt(mean of squared losses)."""
        w = torch.sqrt((self.losses ** 2).mean(dim=1))
        w = w / w.sum().clamp(min=1e-300)
        w = w * (1.0 - self.uniform_prob) + self.uniform_prob / self.num_timesteps
        uniform = torch.full_like(w, 1.0 / self.num_timesteps)
        return torch.where(self.warmed_up(), w, uniform).to(device)

    def sample(self, batch_size: int, device=None, generator: torch.Generator | None = None):
        p = self.probabilities()
        gen_device = generator.device if generator is not None else p.device
        t = torch.multinomial(p.to(gen_device), batch_size, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p.to(gen_device)[t])
        return t.to(device), weights.float().to(device)

    def update_with_losses(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Record the per-example ``losses`` [N] seen at steps ``t`` [N] (in batch order)."""
        t = t.detach().long().to(self.losses.device)
        losses = losses.detach().to(self.losses.device, torch.float64)
        if self.losses.device != t.device:
            self.losses, self.counts = self.losses.to(t.device), self.counts.to(t.device)
        order = torch.sort(t, stable=True).indices          # batch order kept within each step
        ts, ls = t[order], losses[order]
        group = torch.bincount(ts, minlength=self.num_timesteps)        # occurrences per step
        first = torch.cumsum(group, 0) - group                         # index of each step's first entry
        rank = torch.arange(len(ts), device=ts.device) - first[ts]      # 0, 1, ... within a step
        keep = rank >= group[ts] - self.history                         # only the last `history` count
        slot = (self.counts[ts] + rank) % self.history                  # ring-buffer position
        self.losses[ts[keep], slot[keep]] = ls[keep]
        self.counts += group

    def state_dict(self) -> dict:
        return {"losses": self.losses.clone(), "counts": self.counts.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.losses = state["losses"].clone().to(torch.float64)
        self.counts = state["counts"].clone().long()
