"""A small normalizing flow: affine coupling layers (RealNVP, Dinh et al. 2017) with optional
actnorm (Glow, Kingma & Dhariwal 2018).

A flow is an invertible map f with a tractable Jacobian, so the change of variables is exact:

    log p(x) = log N(f(x); 0, I) + log |det df/dx|

An affine coupling keeps the entries where the binary ``mask`` is 1 and transforms the others,

    y = mask * x + (1 - mask) * (x * exp(s(mask * x)) + t(mask * x)),    log|det| = sum (1 - mask) * s

(the masked form of Dinh et al.), so its inverse and log-determinant cost one network call.
Images use checkerboard masks, then a squeeze (each 2x2 patch to 4 channels) and channel masks,
and factor half of the channels out at each scale (their multi-scale architecture). Points in the
plane use alternating masks over the two coordinates and MLPs.

Bits/dim of 8-bit images (uniform dequantization, Theis et al. 2016): the level k in {0..255} of
each pixel becomes v = k + u, u ~ U[0, 1), and E_u[log p(v)] is a lower bound on log P(k).
``bpd`` maps v to the model space x = v / 128 - 1 and counts the Jacobian of that map (-D log 128)
and, with ``preprocess="logit"``, of the logit (as Dinh et al. do). The result bounds the bits of
the 8-bit data, as DDPM's discrete decoder does (Ho et al. 2020, Sec. 3.3), so the two compare.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._common import LN2, Baseline, mlp, optimizer_step, quantize

SIZES = {  # size -> (hidden channels at full resolution, doubled at each scale / hidden units; couplings per block)
    "cpu": {"image": (16, 3), "point": (64, 8)},
    "gpu": {"image": (64, 4), "point": (256, 12)},
}


class ActNorm(nn.Module):
    """Per-channel affine y = (x + bias) * exp(log_scale), initialised from the first training
    batch so that y has zero mean and unit variance per channel (Kingma & Dhariwal 2018)."""

    def __init__(self, channels: int, ndim: int) -> None:
        super().__init__()
        shape = (1, channels) + (1,) * (ndim - 2)
        self.bias = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and not self.initialized:
            with torch.no_grad():
                dims = [0] + list(range(2, x.dim()))
                self.bias.copy_(-x.mean(dims, keepdim=True))
                self.log_scale.copy_(-torch.log(x.std(dims, keepdim=True) + 1e-6))
                self.initialized.fill_(True)
        per_position = x[0, 0].numel()  # H * W for images, 1 for vectors
        logdet = (self.log_scale.sum() * per_position).expand(x.shape[0])
        return (x + self.bias) * torch.exp(self.log_scale), logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class AffineCoupling(nn.Module):
    """The masked affine coupling of RealNVP; ``mask`` is 1 where x conditions and is kept.

    :param mask: [1, C, H, W] or [1, d] of zeros and ones.
    :param net: maps ``cat([mask * x, mask])`` (2C channels / 2d units) to (s, t) (2C / 2d).
    """

    def __init__(self, mask: torch.Tensor, net: nn.Module) -> None:
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)
        self.net = net
        self.s_scale = nn.Parameter(torch.ones(1, mask.shape[1], *[1] * (mask.dim() - 2)))

    def _s_t(self, x_kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(torch.cat([x_kept, self.mask.expand_as(x_kept)], dim=1))
        s, t = h.chunk(2, dim=1)
        s = self.s_scale * torch.tanh(s)  # bounded log-scale keeps early training stable (Dinh et al.)
        return s * (1 - self.mask), t * (1 - self.mask)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._s_t(x * self.mask)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        s, t = self._s_t(y * self.mask)  # the kept part of y equals that of x
        return (y - t) * torch.exp(-s)


class Squeeze(nn.Module):
    """[N, C, H, W] -> [N, 4C, H/2, W/2]: every 2x2 patch becomes 4 channels (log|det| = 0)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = x.shape
        y = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
        return y, x.new_zeros(n)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        n, c4, h, w = y.shape
        return y.view(n, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c4 // 4, 2 * h, 2 * w)


class Split(nn.Module):
    """Factor out the channels from ``keep`` on: they go straight to z (the multi-scale architecture)."""

    def __init__(self, keep: int) -> None:
        super().__init__()
        self.keep = keep


def checkerboard(c: int, h: int, w: int, parity: int) -> torch.Tensor:
    """[1, C, H, W] mask, 1 where (i + j) % 2 == parity."""
    ij = torch.arange(h)[:, None] + torch.arange(w)[None, :]
    return ((ij % 2) == parity).float().expand(1, c, h, w).clone()


def channel_mask(c: int, h: int, w: int, first_half: bool) -> torch.Tensor:
    """[1, C, H, W] mask, 1 on the first (or second) half of the channels."""
    m = torch.zeros(1, c, h, w)
    m[:, : c // 2] = 1.0
    return m if first_half else 1.0 - m


def conv_net(c: int, hidden: int) -> nn.Sequential:
    """s, t network of an image coupling: 2C -> hidden -> hidden -> 2C channels, last layer zero
    (so each coupling starts as the identity)."""
    last = nn.Conv2d(hidden, 2 * c, 3, padding=1)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Conv2d(2 * c, hidden, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last)


class Flow(Baseline):
    """RealNVP-style flow. ``forward(x) -> (z, logdet)`` with z flat [N, D]; ``inverse(z) -> x``.

    :param data_shape: ``(C, H, W)`` images in [-1, 1] or ``(2,)`` points.
    :param size: "cpu" or "gpu" (wider networks, more couplings).
    :param n_scales: image scales, each: couplings on checkerboards, squeeze, couplings on channel
        halves, factor out half. Default: 2 when H is divisible by 4 and H >= 8, else 1.
    :param actnorm: an ActNorm before every coupling (images).
    :param preprocess: "logit": x -> logit(alpha + (1 - 2 alpha)(x + 1) / 2) before the flow
        (Dinh et al. 2017; alpha = 0.05); "plain": no preprocessing.
    """

    family = "flow"
    default_lr = 1e-3

    def __init__(self, data_shape: tuple[int, ...], size: str = "cpu", n_scales: int | None = None,
                 actnorm: bool = True, preprocess: str = "logit", alpha: float = 0.05) -> None:
        if preprocess not in ("logit", "plain"):
            raise ValueError(f"preprocess must be 'logit' or 'plain', got {preprocess!r}")
        if len(data_shape) == 3:
            h = data_shape[1]
            if n_scales is None:
                n_scales = 2 if h % 4 == 0 and h >= 8 else 1
            if data_shape[1] % 2 ** n_scales or data_shape[2] % 2 ** n_scales:
                raise ValueError(f"{n_scales} scales need H and W divisible by {2 ** n_scales}, got {data_shape}")
        super().__init__(data_shape, size=size, n_scales=n_scales, actnorm=actnorm,
                         preprocess=preprocess, alpha=alpha)
        self.preprocess, self.alpha = preprocess, alpha
        hidden, k = SIZES[size]["image" if self.is_image else "point"]
        steps: list[nn.Module] = []
        if self.is_image:
            c, h, w = self.data_shape

            def block(masks, c, hidden):
                for m in masks:
                    if actnorm:
                        steps.append(ActNorm(c, 4))
                    steps.append(AffineCoupling(m, conv_net(c, hidden)))

            for _ in range(n_scales):
                block([checkerboard(c, h, w, i % 2) for i in range(k)], c, hidden)
                steps.append(Squeeze())
                c, h, w, hidden = 4 * c, h // 2, w // 2, 2 * hidden  # more features at coarser scales
                block([channel_mask(c, h, w, i % 2 == 0) for i in range(k)], c, hidden)
                steps.append(Split(c // 2))
                c //= 2
            block([checkerboard(c, h, w, i % 2) for i in range(k + 1)], c, hidden)
        else:
            (d,) = self.data_shape
            for i in range(k):
                m = torch.zeros(1, d)
                m[:, i % 2::2] = 1.0  # alternate which coordinates condition
                net = mlp(2 * d, 2 * d, hidden, depth=2)
                nn.init.zeros_(net[-1].weight)
                nn.init.zeros_(net[-1].bias)
                steps.append(AffineCoupling(m, net))
        self.steps = nn.ModuleList(steps)
        self._z_shapes = self._trace_shapes()

    def _trace_shapes(self) -> list[tuple[int, ...]]:
        """Shapes (without N) of the parts of z, in the order ``forward`` concatenates them."""
        shape, shapes = self.data_shape, []
        for step in self.steps:
            if isinstance(step, Squeeze):
                shape = (4 * shape[0], shape[1] // 2, shape[2] // 2)
            elif isinstance(step, Split):
                shapes.append((shape[0] - step.keep,) + shape[1:])
                shape = (step.keep,) + shape[1:]
        return shapes + [shape]

    # -- the bijection ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, *data_shape] (continuous; images in (-1, 1)) -> (z [N, D], log|det dz/dx| [N])."""
        logdet = x.new_zeros(x.shape[0])
        h = x
        if self.is_image and self.preprocess == "logit":
            y = self.alpha + (1 - 2 * self.alpha) * (x + 1) / 2  # in (alpha, 1 - alpha)
            h = torch.log(y) - torch.log1p(-y)
            dlogit = math.log((1 - 2 * self.alpha) / 2) - torch.log(y) - torch.log1p(-y)
            logdet = logdet + dlogit.flatten(1).sum(1)
        zs = []
        for step in self.steps:
            if isinstance(step, Split):
                zs.append(h[:, step.keep:].flatten(1))
                h = h[:, : step.keep]
            else:
                h, ld = step(h)
                logdet = logdet + ld
        zs.append(h.flatten(1))
        return torch.cat(zs, dim=1), logdet

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, D] (or [N, *data_shape]) -> x [N, *data_shape], the inverse of ``forward``."""
        z = z.flatten(1)
        sizes = [math.prod(s) for s in self._z_shapes]
        parts = list(torch.split(z, sizes, dim=1))
        h = parts.pop().view(-1, *self._z_shapes[-1])
        for step in reversed(self.steps):
            if isinstance(step, Split):
                h = torch.cat([h, parts.pop().view(-1, *self._z_shapes[len(parts)])], dim=1)
            else:
                h = step.inverse(h)
        if self.is_image and self.preprocess == "logit":
            h = (torch.sigmoid(h) - self.alpha) / (1 - 2 * self.alpha) * 2 - 1
        return h

    # -- likelihood -------------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) in nats [N] of continuous ``x`` in the model space (the change of variables)."""
        z, logdet = self.forward(x)
        return -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(1) + logdet

    def bpd(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bits/dim [N]. Images: 8-bit data in [-1, 1], uniformly dequantized (one draw of u), i.e.
        -log p(v) / (D ln 2) with v = k + u in [0, 256)^D, an upper bound on -log2 P(k) / D in
        expectation over u. Points: -log p(x) / (d ln 2), a differential quantity."""
        d = math.prod(self.data_shape)
        if not self.is_image:
            return -self.log_prob(x) / (d * LN2)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        v = quantize(x) + u                   # [0, 256)
        log_pv = self.log_prob(v / 128.0 - 1.0) - d * math.log(128.0)  # dx/dv = 1/128 per dimension
        return -log_pv / (d * LN2)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr)]

    def training_step(self, x, optimizers, generator):
        loss = self.bpd(x, generator).mean()
        optimizer_step(optimizers[0], loss, clip=100.0)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, temperature: float = 1.0) -> torch.Tensor:
        """x = f^{-1}(z), z ~ N(0, temperature^2 I): images [n, C, H, W] clamped to [-1, 1], or points.
        A temperature below 1 (Glow used 0.7) trades diversity for cleaner samples."""
        was_training = self.training
        self.eval()
        z = temperature * torch.randn(n, math.prod(self.data_shape), generator=generator, device=self.device)
        x = self.inverse(z)
        self.train(was_training)
        return x.clamp(-1.0, 1.0) if self.is_image else x
