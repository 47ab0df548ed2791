"""A small generative adversarial network (Goodfellow et al. 2014) for the comparison chapter.

Images use a DCGAN-style pair (Radford et al. 2016): the generator maps a Gaussian latent through a
linear layer to a ``[C0, s0, s0]`` map and doubles the resolution with transposed convolutions
until it reaches ``H``; the discriminator mirrors it with strided convolutions. Points in the plane
use two MLPs. Both train with the non-saturating loss

    L_D = softplus(-D(x)) + softplus(D(G(z)))          (= -log sigma(D(x)) - log(1 - sigma(D(G(z)))))
    L_G = softplus(-D(G(z)))                           (= -log sigma(D(G(z))), Goodfellow et al.'s non-saturating G loss)

A GAN has no likelihood: :meth:`GAN.bpd` raises and says so.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._common import Baseline, mlp, n_halvings, optimizer_step

SIZES = {  # size -> (latent dim, base channels / hidden width)
    "cpu": {"image": (64, 16), "point": (2, 128)},
    "gpu": {"image": (128, 128), "point": (8, 256)},
}


class NoLikelihoodError(NotImplementedError):
    """Raised when a likelihood is asked of a model that has none (a GAN)."""


class DCGenerator(nn.Module):
    """z [N, z_dim] -> images [N, C, H, W] in (-1, 1)."""

    def __init__(self, data_shape: tuple[int, int, int], z_dim: int, width: int) -> None:
        super().__init__()
        c, h, w = data_shape
        if h != w:
            raise ValueError(f"the DCGAN expects square images, got {h}x{w}")
        k = n_halvings(h)
        self.c0, self.s0 = width * 2 ** k, h // 2 ** k
        self.project = nn.Sequential(
            nn.Linear(z_dim, self.c0 * self.s0 ** 2, bias=False), nn.BatchNorm1d(self.c0 * self.s0 ** 2), nn.ReLU()
        )
        ups, ch = [], self.c0
        for _ in range(k):  # each block doubles the resolution and halves the channels
            ups += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU()]
            ch //= 2
        self.up = nn.Sequential(*ups)
        self.to_image = nn.Conv2d(ch, c, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).view(-1, self.c0, self.s0, self.s0)  # (N, C0, s0, s0)
        return torch.tanh(self.to_image(self.up(h)))


class DCDiscriminator(nn.Module):
    """images [N, C, H, W] -> logits [N]."""

    def __init__(self, data_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, _ = data_shape
        k = n_halvings(h)
        layers, ch = [nn.Conv2d(c, width, 3, padding=1), nn.LeakyReLU(0.2)], width
        for _ in range(k):  # each block halves the resolution and doubles the channels
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2)]
            ch *= 2
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(ch * (h // 2 ** k) ** 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(x).flatten(1)).squeeze(1)


class GAN(Baseline):
    """A generator ``G`` and a discriminator ``D`` trained with the non-saturating loss.

    :param data_shape: ``(C, H, W)`` images in [-1, 1] (DCGAN) or ``(2,)`` points (MLP GAN).
    :param size: "cpu" (small, trains on two cores in a minute or two) or "gpu" (wider).
    """

    family = "gan"

    def __init__(self, data_shape: tuple[int, ...], size: str = "cpu") -> None:
        super().__init__(data_shape, size=size)
        kind = "image" if len(data_shape) == 3 else "point"
        self.z_dim, width = SIZES[size][kind]
        if kind == "image":
            self.G = DCGenerator(self.data_shape, self.z_dim, width)
            self.D = DCDiscriminator(self.data_shape, width)
            self.default_lr, self.betas = 2e-4, (0.5, 0.999)  # Radford et al. 2016
        else:
            (d,) = self.data_shape
            self.G = mlp(self.z_dim, d, width, act=nn.ReLU)
            self.D = nn.Sequential(mlp(d, 1, width, act=lambda: nn.LeakyReLU(0.2)), nn.Flatten(0))
            self.default_lr, self.betas = 1e-3, (0.5, 0.999)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.D.parameters(), lr, betas=self.betas),
                torch.optim.Adam(self.G.parameters(), lr, betas=self.betas)]

    def training_step(self, x, optimizers, generator):
        opt_d, opt_g = optimizers
        z = torch.randn(x.shape[0], self.z_dim, generator=generator, device=x.device)
        fake = self.G(z)
        # discriminator: real -> 1, fake -> 0
        loss_d = F.softplus(-self.D(x)).mean() + F.softplus(self.D(fake.detach())).mean()
        optimizer_step(opt_d, loss_d)
        # generator: non-saturating, maximise log D(G(z)) with the updated D
        loss_g = F.softplus(-self.D(fake)).mean()
        optimizer_step(opt_g, loss_g)
        return {"loss": loss_d.detach(), "loss_d": loss_d.detach(), "loss_g": loss_g.detach()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` samples ``G(z)``, z ~ N(0, I): images [n, C, H, W] in [-1, 1], or points [n, 2]."""
        was_training = self.training
        self.eval()  # batch norm uses its running statistics
        z = torch.randn(n, self.z_dim, generator=generator, device=self.device)
        x = self.G(z)
        self.train(was_training)
        return x.clamp(-1, 1) if self.is_image else x

    def bpd(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NoLikelihoodError(
            "a GAN defines no likelihood (its generator maps a low-dimensional latent to data and has no "
            "density on the data space), so it has no bits/dim; compare GANs by sample metrics such as "
            "FID or KID, and use the VAE or the flow for likelihoods"
        )
