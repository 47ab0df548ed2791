"""Log-likelihood pieces of the variational bound: Gaussian KL, the discretised Gaussian decoder
of Ho et al. 2020 (section 3.3) and the conversion from nats to bits per dimension."""
from __future__ import annotations

import math

import torch

LOG2 = math.log(2.0)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats.

    Arguments broadcast against each other; at least one must be a tensor.
    """
    tensor = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if tensor is None:
        raise TypeError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (torch.as_tensor(v, dtype=tensor.dtype, device=tensor.device)
                        for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF used by the reference code."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor,
                                        log_scales: torch.Tensor) -> torch.Tensor:
    """Log-probability, in nats, of 8-bit data ``x`` under a Gaussian discretised into 256 bins.

    ``x`` holds values of a uint8 image mapped to [-1, 1] (``v / 127.5 - 1``); each bin has width
    2/255 and the two edge bins are open-ended (Ho et al. 2020, eq. 13).

    :param x: the [N x C x H x W] target images.
    :param means: Gaussian means, same shape.
    :param log_scales: log standard deviations, broadcastable to ``x``.
    :return: elementwise log-probabilities, same shape as ``x``.
    """
    if x.shape != means.shape:
        raise ValueError(f"x and means must have one shape, got {tuple(x.shape)} and {tuple(means.shape)}")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, torch.log((cdf_plus - cdf_min).clamp(min=1e-12))),
    )
    return log_probs


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch one: [N, ...] -> [N]."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def nats_to_bits_per_dim(nats: torch.Tensor, num_dims: int | None = None) -> torch.Tensor:
    """Convert nats to bits; divide by ``num_dims`` when given (total nats -> bits/dim)."""
    bits = nats / LOG2
    return bits / num_dims if num_dims else bits
