"""A small variational autoencoder (Kingma & Welling 2014) with a discretized decoder.

The encoder gives q(z|x) = N(mu(x), diag sigma(x)^2), the prior is p(z) = N(0, I), and

    log p(x) >= ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z))                    (Kingma & Welling 2014)
    log p(x) >= L_k(x)  = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],  z_i ~ q(z|x)    (Burda et al. 2016, IWAE)

with ELBO = L_1 <= L_k <= L_{k+1} -> log p(x). For images the decoder is a *discretized logistic*
over the 256 levels of 8-bit data scaled to [-1, 1] (Salimans et al. 2017, PixelCNN++): bins of
width 2/255 around each level and open-ended edge bins at -1 and 1. So p(x|z) is a probability,
and -ELBO / (D ln 2) is an upper bound on the bits/dim of the data, comparable with DDPM's bound.
For points in the plane the decoder is a Gaussian density; its "bits/dim" is then a differential
quantity (it can be negative) and is not comparable with the images' numbers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as _data
from ._common import LN2, Baseline, mlp, n_halvings, optimizer_step

SIZES = {  # size -> (latent dim, base channels / hidden width)
    "cpu": {"image": (16, 16), "point": (2, 128)},
    "gpu": {"image": (64, 64), "point": (8, 256)},
}
LOG_SCALE_MIN = -7.0  # floor of the decoder's log-scale (the bins have half-width 1/255 = e^-5.5)
# Ceiling of the log-scale: a logistic scale of e^3 ~ 20 already spreads a pixel's mass far beyond
# [-1, 1]; above ~e^98 the bin width 2/255 / scale underflows to 0 in float32 and log P(x) is -inf.
LOG_SCALE_MAX = 3.0


def discretized_logistic_log_prob(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Elementwise log P(x) of a logistic(mean, e^log_scale) discretized to the 8-bit grid in [-1, 1].

    The level ``x`` owns the bin [x - 1/255, x + 1/255]; the level -1 owns (-inf, -1 + 1/255] and the
    level 1 owns [1 - 1/255, inf), so the 256 probabilities sum to one. With a = (x - 1/255 - m) / s
    and b = (x + 1/255 - m) / s, the bin's mass is sigma(b) - sigma(a), computed stably as
    sigma(b) sigma(-a) (1 - e^{-(b - a)}).

    :param x: data on the grid {k / 127.5 - 1}, any shape; ``mean`` and ``log_scale`` broadcast to it.
    :return: log-probabilities in nats, the shape of ``x``.
    """
    inv_s = torch.exp(-log_scale)
    a = (x - mean - 1.0 / 255) * inv_s
    b = (x - mean + 1.0 / 255) * inv_s
    log_mid = F.logsigmoid(b) + F.logsigmoid(-a) + torch.log(-torch.expm1(-(2.0 / 255) * inv_s))
    log_left = F.logsigmoid(b)   # P(X <= -1 + 1/255)
    log_right = F.logsigmoid(-a)  # P(X >= 1 - 1/255)
    return torch.where(x < -0.999, log_left, torch.where(x > 0.999, log_right, log_mid))


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, e^log_var), nats."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


class ConvEncoder(nn.Module):
    """images [N, C, H, W] -> (mu, log_var) of q(z|x), each [N, z_dim]."""

    def __init__(self, data_shape: tuple[int, int, int], z_dim: int, width: int) -> None:
        super().__init__()
        c, h, _ = data_shape
        k = n_halvings(h)
        layers, ch = [nn.Conv2d(c, width, 3, padding=1), nn.SiLU()], width
        for _ in range(k):
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1), nn.SiLU()]
            ch *= 2
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * (h // 2 ** k) ** 2, 2 * z_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x).chunk(2, dim=1)


class ConvDecoder(nn.Module):
    """z [N, z_dim] -> (mean, log_scale) of the discretized logistic, each [N, C, H, W]."""

    def __init__(self, data_shape: tuple[int, int, int], z_dim: int, width: int) -> None:
        super().__init__()
        c, h, _ = data_shape
        k = n_halvings(h)
        self.c0, self.s0 = width * 2 ** k, h // 2 ** k
        self.project = nn.Sequential(nn.Linear(z_dim, self.c0 * self.s0 ** 2), nn.SiLU())
        layers, ch = [], self.c0
        for _ in range(k):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1), nn.SiLU()]
            ch //= 2
        self.net = nn.Sequential(*layers, nn.Conv2d(ch, 2 * c, 3, padding=1))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.net(self.project(z).view(-1, self.c0, self.s0, self.s0)).chunk(2, dim=1)
        return mean, log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)


class VAE(Baseline):
    """Convolutional VAE with a discretized-logistic decoder for images; MLP VAE with a Gaussian
    decoder (learned variance per coordinate) for points.

    :param data_shape: ``(C, H, W)`` images in [-1, 1] or ``(2,)`` points.
    :param size: "cpu" or "gpu" (wider, larger latent).
    """

    family = "vae"
    default_lr = 1e-3

    def __init__(self, data_shape: tuple[int, ...], size: str = "cpu") -> None:
        super().__init__(data_shape, size=size)
        kind = "image" if len(data_shape) == 3 else "point"
        self.z_dim, width = SIZES[size][kind]
        if kind == "image" and size == "gpu":
            # the wide image VAE (7M parameters) diverged to a NaN loss at 1e-3 on colour crops (H100)
            self.default_lr = 5e-4
        if kind == "image":
            self.encoder = ConvEncoder(self.data_shape, self.z_dim, width)
            self.decoder = ConvDecoder(self.data_shape, self.z_dim, width)
        else:
            (d,) = self.data_shape
            self.encoder = mlp(d, 2 * self.z_dim, width)
            self.decoder = mlp(self.z_dim, d, width)
            # One learned variance per coordinate, started small (std 0.1). A z-dependent or a large
            # initial variance lets the decoder explain the data as noise and leave latents unused
            # (posterior collapse: on the ring of 8 Gaussians the KL went to zero).
            self.decoder_log_var = nn.Parameter(torch.full((d,), 2 * math.log(0.1)))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log_var) of q(z|x), each [N, z_dim]."""
        mu, log_var = self.encoder(x) if self.is_image else self.encoder(x).chunk(2, dim=1)
        return mu, log_var.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters of p(x|z): (mean, log_scale) for images, (mean, log_var) for points."""
        if self.is_image:
            return self.decoder(z)
        mean = self.decoder(z)
        return mean, self.decoder_log_var.clamp(min=-10.0).expand_as(mean)

    def log_px_given_z(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over dimensions, nats [N]; ``x`` on the 8-bit grid for images."""
        mean, log_s = self.decode(z)
        if self.is_image:
            return discretized_logistic_log_prob(x, mean, log_s).flatten(1).sum(1)
        return gaussian_log_prob(x, mean, log_s).sum(1)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Images are snapped to the 8-bit grid so that p(x|z) is a probability of the data."""
        return _data.to_8bit_grid(x) if self.is_image else x

    def elbo(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """ELBO(x) in nats [N]: one reparameterised sample for E_q[log p(x|z)], analytic KL."""
        x = self._prepare(x)
        mu, log_var = self.encode(x)
        z = mu + torch.exp(0.5 * log_var) * torch.randn(mu.shape, generator=generator, device=mu.device)
        kl = 0.5 * (mu ** 2 + log_var.exp() - 1.0 - log_var).sum(1)
        return self.log_px_given_z(x, z) - kl

    @torch.no_grad()
    def log_likelihood_iw(self, x: torch.Tensor, k: int = 64, generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted bound L_k(x) (Burda et al. 2016) in nats [N]; L_1 is an ELBO sample."""
        if k < 1:
            raise ValueError(f"k must be >= 1 importance samples, got {k}")
        x = self._prepare(x)
        mu, log_var = self.encode(x)
        std = torch.exp(0.5 * log_var)
        log_w = []
        for _ in range(k):  # one sample at a time keeps memory at one batch
            eps = torch.randn(mu.shape, generator=generator, device=mu.device)
            z = mu + std * eps
            log_q = gaussian_log_prob(z, mu, log_var).sum(1)
            log_p = gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
            log_w.append(self.log_px_given_z(x, z) + log_p - log_q)
        return torch.logsumexp(torch.stack(log_w), dim=0) - math.log(k)

    def bpd(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """-ELBO(x) / (D ln 2): an upper bound on the bits/dim of each example [N]."""
        return -self.elbo(x, generator) / (math.prod(self.data_shape) * LN2)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr)]

    def training_step(self, x, optimizers, generator):
        loss = self.bpd(x, generator).mean()  # bits/dim for images, (differential) bits/coordinate for points
        optimizer_step(optimizers[0], loss, clip=100.0)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode z ~ N(0, I). Images: the decoder mean [n, C, H, W] clamped to [-1, 1] (per-pixel
        logistic noise would only add speckle). Points: a draw from p(x|z) [n, 2]."""
        z = torch.randn(n, self.z_dim, generator=generator, device=self.device)
        mean, log_s = self.decode(z)
        if self.is_image:
            return mean.clamp(-1.0, 1.0)
        return mean + torch.exp(0.5 * log_s) * torch.randn(mean.shape, generator=generator, device=mean.device)
