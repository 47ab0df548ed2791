"""The U-Net where it began: the segmentation network of Ronneberger et al. 2015, scaled down,
with a small offline segmentation task, its training loop and metrics, and tools that look inside
any U-Net (the DDPM one of ``unet.py`` included).

* :class:`SegmentationUNet`: contracting path (two 3x3 conv + ReLU, then 2x2 max-pool, channels
  doubling), expanding path (2x2 up-convolution halving the channels, concatenation with the
  feature map of the same level, two 3x3 conv + ReLU), a 1x1 conv to per-pixel class logits.
  ``padding="valid"`` is the paper's unpadded variant (the output is smaller than the input and
  the skips are centre-cropped); ``"same"`` (the default here) pads, so output size = input size.
* :func:`scratched_digits`: the task. MNIST digits (``mnist5k``) under long straight scratches and
  Gaussian noise; the target marks the pixels of the digit's strokes, not the scratches.
* :func:`train_segmentation`, :func:`predict`, :func:`iou`, :func:`dice`, :func:`evaluate`.
* Inspection: :func:`unet_parameter_table` (the DDPM U-Net's parameters by component),
  :func:`trace_shapes` (output shapes through forward hooks), :func:`input_gradient_map` and
  :func:`receptive_field_extent` (which input pixels can change one output pixel),
  :func:`chain_receptive_field` (the same, analytically, along a chain of layers).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PADDINGS = {
    "same": "3x3 convs padded by 1: every level keeps its size and output size = input size",
    "valid": "unpadded 3x3 convs as in Ronneberger et al.: each conv trims 2 pixels, skips are centre-cropped",
}
SEED = 1505  # seeds the scratches and the noise of the task (arXiv 1505.04597)
# the scratches of draw_scratches: half-width in pixels (MNIST strokes are about 2-3 pixels wide)
# and brightness on the digits' [0, 1] scale, each uniform in its range
SCRATCH_HALF_WIDTH = (0.6, 1.4)
SCRATCH_BRIGHTNESS = (0.6, 1.0)


# ------------------------------------------------------------------------------------------------
# the network


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by a ReLU (one "level" of Ronneberger et al., Fig. 1)."""

    def __init__(self, in_ch: int, out_ch: int, padding: str):
        pad = 1 if padding == "same" else 0
        super().__init__(nn.Conv2d(in_ch, out_ch, 3, padding=pad), nn.ReLU(inplace=True),
                         nn.Conv2d(out_ch, out_ch, 3, padding=pad), nn.ReLU(inplace=True))


def center_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The central ``size = (h, w)`` window of ``x`` [N, C, H, W] (the paper's cropping of skips)."""
    h, w = size
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot crop a {tuple(x.shape[-2:])} map to {(h, w)}: the crop is larger")
    return x[..., top:top + h, left:left + w]


class SegmentationUNet(nn.Module):
    """The U-Net of Ronneberger et al. 2015 (Fig. 1): ``logits = net(x)``.

    :param in_channels: image channels.
    :param num_classes: classes per pixel; the output is [N x num_classes x H' x W'] logits
        (a pixel-wise softmax with cross-entropy trains it, as in the paper).
    :param base_channels: width of the first level (64 in the paper), doubled at each pooling.
    :param depth: number of 2x2 max-poolings (4 in the paper).
    :param skips: concatenate the contracting path's maps into the expanding path. ``False`` gives
        a plain encoder-decoder with the same layers, except that the expanding convs see only the
        upsampled map (half the input channels).
    :param padding: a key of ``PADDINGS``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 16, depth: int = 2,
                 skips: bool = True, padding: str = "same"):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r} is unknown; choose one of {sorted(PADDINGS)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1 (the number of poolings), got {depth}")
        self.config = dict(in_channels=in_channels, num_classes=num_classes, base_channels=base_channels,
                           depth=depth, skips=skips, padding=padding)
        self.depth, self.skips, self.padding = depth, skips, padding
        widths = [base_channels * 2 ** level for level in range(depth + 1)]  # 64, 128, ..., 1024 in the paper
        self.down = nn.ModuleList(DoubleConv(i, o, padding) for i, o in zip([in_channels] + widths[:-2], widths[:-1]))
        self.pool = nn.MaxPool2d(2)
        self.bottom = DoubleConv(widths[-2], widths[-1], padding)
        self.upconv = nn.ModuleList(nn.ConvTranspose2d(widths[l + 1], widths[l], 2, stride=2)
                                    for l in reversed(range(depth)))
        self.up = nn.ModuleList(DoubleConv(widths[l] * (2 if skips else 1), widths[l], padding)
                                for l in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: [N x in_channels x H x W] images. :return: [N x num_classes x H' x W'] logits
        (H' = H with ``"same"`` padding; see :func:`output_size` for ``"valid"``)."""
        for side in x.shape[-2:]:
            output_size(side, self.depth, self.padding)  # raises, with the reason, on a size that does not fit
        features = []
        h = x
        for block in self.down:
            h = block(h)
            features.append(h)          # (N, width_l, H_l, W_l): the skip of level l
            h = self.pool(h)
        h = self.bottom(h)
        for upconv, block in zip(self.upconv, self.up):
            h = upconv(h)               # (N, width_l, 2 H_{l+1}, 2 W_{l+1})
            skip = features.pop()
            if self.skips:
                h = torch.cat([center_crop(skip, h.shape[-2:]), h], dim=1)
            h = block(h)
        return self.head(h)

    def receptive_field(self) -> int:
        """Side of the square of input pixels that one output pixel depends on (analytic, ignoring
        image borders): the deepest path, down through every pooling and back up."""
        return chain_receptive_field(self._deepest_path())

    def _deepest_path(self) -> list[tuple[int, float]]:
        conv2 = [(3, 1), (3, 1)]
        layers = []
        for _ in range(self.depth):
            layers += conv2 + [(2, 2)]           # double conv, max-pool
        layers += conv2                          # bottom
        for _ in range(self.depth):
            layers += [(2, 0.5)] + conv2         # 2x2 up-convolution (stride 1/2), double conv
        return layers


def output_size(input_size: int, depth: int, padding: str = "same") -> int:
    """Side of the output map for a square input of side ``input_size``.

    With ``"valid"`` padding each 3x3 conv trims 2 pixels; Ronneberger et al.'s 572 -> 388 (depth 4).
    :raises ValueError: when a max-pool would meet an odd side (choose the input size so it does not).
    """
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is unknown; choose one of {sorted(PADDINGS)}")
    trim = 4 if padding == "valid" else 0   # two 3x3 convs per level
    s = input_size
    for level in range(depth):
        s -= trim
        if s <= 0 or s % 2:
            raise ValueError(f"an input of side {input_size} reaches side {s} before max-pool {level + 1} of {depth}; "
                             f"with {padding!r} padding the side before every pooling must be even and positive "
                             f"(e.g. a multiple of {2 ** depth} for 'same' padding)")
        s //= 2
    s -= trim
    for _ in range(depth):
        s = 2 * s - trim
    if s <= 0:
        raise ValueError(f"an input of side {input_size} is too small for depth {depth} with {padding!r} padding")
    return s


def chain_receptive_field(layers: Iterable[tuple[int, float]]) -> int:
    """Receptive field (in input pixels) of one output of a chain of layers ``(kernel, stride)``:
    ``r = 1 + sum_l (k_l - 1) * prod_{m < l} s_m``. An up-sampling by 2 is stride 1/2; a 2x2
    up-convolution of stride 2 is ``(2, 0.5)`` and adds nothing (each output sees one input)."""
    r, jump = 1.0, 1.0
    for kernel, stride in layers:
        if kernel == 2 and stride == 0.5:
            kernel = 1      # transposed conv with kernel = stride: one input pixel per output pixel
        r += (kernel - 1) * jump
        jump *= stride
    return int(round(r))


# ------------------------------------------------------------------------------------------------
# the task: digit strokes under scratches and noise


@dataclass(eq=False)
class SegmentationSet:
    """Images and their masks.

    :param x: float32 [N x 1 x H x W] corrupted images in [-1, 1] (the network's input).
    :param mask: long [N x H x W], 1 on the digit's strokes, 0 elsewhere (the target).
    :param clean: float32 [N x 1 x H x W] the digit alone, in [-1, 1].
    :param scratches: float32 [N x 1 x H x W] the scratch layer alone, in [0, 1].
    """

    x: torch.Tensor
    mask: torch.Tensor
    clean: torch.Tensor
    scratches: torch.Tensor
    split: str = "train"

    def __len__(self) -> int:
        return self.x.shape[0]

    def batches(self, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One shuffled epoch of ``(x, mask)`` batches, dropping the last incomplete one."""
        if not 1 <= batch_size <= len(self):
            raise ValueError(f"batch_size must be in 1..{len(self)}, got {batch_size}")
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield self.x[idx], self.mask[idx]


def draw_scratches(n: int, size: int, per_image: int, generator: torch.Generator) -> torch.Tensor:
    """``per_image`` straight lines across each of ``n`` images, anti-aliased: [n x 1 x size x size] in [0, 1].

    Each line passes through a uniform point of the central half of the image at a uniform angle;
    half-width uniform in ``SCRATCH_HALF_WIDTH`` (0.6 to 1.4 pixels; MNIST strokes are about 2-3
    pixels wide), brightness uniform in ``SCRATCH_BRIGHTNESS`` (0.6 to 1).
    """
    coords = torch.arange(size, dtype=torch.float32) + 0.5
    py, px = torch.meshgrid(coords, coords, indexing="ij")                   # (size, size)
    u = torch.rand(n, per_image, 5, generator=generator)
    cy, cx = size * (0.25 + 0.5 * u[..., 0]), size * (0.25 + 0.5 * u[..., 1])
    angle = torch.pi * u[..., 2]
    (w_lo, w_hi), (b_lo, b_hi) = SCRATCH_HALF_WIDTH, SCRATCH_BRIGHTNESS
    half_width, bright = w_lo + (w_hi - w_lo) * u[..., 3], b_lo + (b_hi - b_lo) * u[..., 4]
    # distance of every pixel centre to every line: |(p - c) x direction|
    dist = ((px - cx[..., None, None]) * torch.sin(angle)[..., None, None]
            - (py - cy[..., None, None]) * torch.cos(angle)[..., None, None]).abs()   # (n, k, size, size)
    ink = (half_width[..., None, None] + 0.5 - dist).clamp(0, 1) * bright[..., None, None]
    return ink.amax(dim=1, keepdim=True)


def scratched_digits(split: str = "train", n: int | None = None, scratches: int = 3, noise_std: float = 0.25,
                     threshold: float = 0.5, seed: int = SEED) -> SegmentationSet:
    """The book's segmentation task: find the digit under the scratches.

    Each ``mnist5k`` digit d (in [0, 1]) gets ``scratches`` long straight lines s (:func:`draw_scratches`)
    and Gaussian noise: ``x = clip(max(d, s) + noise_std * z, 0, 1)``, mapped to [-1, 1]. The mask is
    ``d > threshold``: the strokes of the digit, including where a scratch crosses them. A line
    that looks like the stroke of a 1 or a 7 is told apart only by its length and its context.

    :param split: ``"train"`` (4,000 digits) or ``"test"`` (1,000), the fixed splits of ``mnist5k``.
    :param n: keep the first ``n`` digits of the split.
    :param seed: seeds scratches and noise (the test split uses ``seed + 1``); the same arguments
        give the same tensors.
    :return: a :class:`SegmentationSet`.
    """
    from .data import load_dataset

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    digits = load_dataset("mnist5k", split, max_images=n).x                      # (N, 1, 28, 28) in [-1, 1]
    g = torch.Generator().manual_seed(seed + (split == "test"))
    d = (digits + 1) / 2
    s = draw_scratches(len(d), d.shape[-1], scratches, g) if scratches else torch.zeros_like(d)
    noisy = (torch.maximum(d, s) + noise_std * torch.randn(d.shape, generator=g)).clamp(0, 1)
    return SegmentationSet(x=noisy * 2 - 1, mask=(d[:, 0] > threshold).long(), clean=digits, scratches=s, split=split)


# ------------------------------------------------------------------------------------------------
# training and metrics


@contextmanager
def _one_cpu_thread(model: nn.Module) -> Iterator[None]:
    """Run on one intra-op thread when ``model`` is on the CPU: these small convolutions gain little
    from threads, and on a shared CPU the threads' spinning made training ~10x slower (measured:
    30 steps in 7.8 s with 2 threads, 0.74 s with 1). The previous setting is restored."""
    threads = torch.get_num_threads()
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_segmentation(model: nn.Module, data: SegmentationSet, steps: int = 300, batch_size: int = 32,
                       lr: float = 2e-3, seed: int = 0, progress: bool = False) -> list[float]:
    """Train ``model`` with Adam on the pixel-wise softmax cross-entropy (Ronneberger et al., Eq. 1,
    without the border weight map), for ``steps`` updates of ``batch_size`` images.

    The batch order is seeded by ``seed``; the losses stay on the device until the end (no host sync
    per step). :return: the training loss of every step.
    """
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    losses = []
    device = next(model.parameters()).device
    bar = tqdm(total=steps, desc="segmentation U-Net", disable=not progress)
    with _one_cpu_thread(model):
        while len(losses) < steps:
            for x, mask in data.batches(batch_size, g):
                logits = model(x.to(device))
                loss = F.cross_entropy(logits, center_crop(mask.to(device), logits.shape[-2:]))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.detach())
                bar.update()
                if len(losses) == steps:
                    break
    bar.close()
    model.eval()
    return torch.stack(losses).tolist()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Per-pixel class (argmax of the logits) for images ``x`` [N x C x H x W]: long [N x H' x W']."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with _one_cpu_thread(model):
        out = torch.cat([model(x[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def _overlap(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.dim() < 2:
        raise ValueError(f"expected masks [H, W] or [N, H, W], got shape {tuple(pred.shape)}")
    p, t = pred.bool(), target.bool()
    dims = (-2, -1)
    return (p & t).sum(dims).double(), p.sum(dims).double(), t.sum(dims).double()


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union |P and T| / |P or T| per mask ([H, W] -> scalar, [N, H, W] -> [N]);
    1 where both masks are empty. Nonzero entries count as foreground."""
    inter, p, t = _overlap(pred, target)
    union = p + t - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dice coefficient 2 |P and T| / (|P| + |T|) per mask, 1 where both are empty (= 2 IoU / (1 + IoU))."""
    inter, p, t = _overlap(pred, target)
    total = p + t
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def evaluate(model: nn.Module, data: SegmentationSet) -> dict[str, float]:
    """Mean IoU and Dice of ``model``'s masks on ``data`` (per image, then averaged), and the pixel accuracy."""
    pred = predict(model, data.x)
    target = center_crop(data.mask, pred.shape[-2:])
    return dict(iou=iou(pred, target).mean().item(), dice=dice(pred, target).mean().item(),
                pixel_accuracy=(pred == target).double().mean().item())


# ------------------------------------------------------------------------------------------------
# looking inside a U-Net


def unet_parameter_table(net: nn.Module) -> list[dict[str, Any]]:
    """The parameters of a DDPM ``unet.UNet`` by component, in the order data flows.

    :return: rows with ``stage`` ("time embedding", "input", "down", "middle", "up", "output"),
        ``resolution`` (side of the feature maps, or None), ``component`` ("residual blocks",
        "attention", "downsample", ...), ``modules`` (how many) and ``parameters``. Their sum is
        ``count_parameters(net)``.
    """
    from .unet import Attention

    def n_params(modules: Iterable[nn.Module]) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    def blocks(level: nn.Module, stage: str, side: int) -> list[dict[str, Any]]:
        res = list(level.res)
        attn = [a for a in level.attn if isinstance(a, Attention)]
        rows = [dict(stage=stage, resolution=side, component="residual blocks", modules=len(res), parameters=n_params(res))]
        if attn:
            rows.append(dict(stage=stage, resolution=side, component="attention", modules=len(attn), parameters=n_params(attn)))
        if not isinstance(level.resample, nn.Identity):
            kind = "downsample" if stage == "down" else "upsample"
            rows.append(dict(stage=stage, resolution=side, component=kind, modules=1, parameters=n_params([level.resample])))
        return rows

    side0 = net.config["image_size"]
    sides = [side0 // 2 ** i for i in range(len(net.down))]
    rows = [dict(stage="time embedding", resolution=None, component="sinusoid → MLP", modules=1,
                 parameters=n_params([net.time_mlp])),
            dict(stage="input", resolution=side0, component="3×3 conv", modules=1, parameters=n_params([net.conv_in]))]
    for level, side in zip(net.down, sides):
        rows += blocks(level, "down", side)
    mid = [net.mid_block1, net.mid_block2]
    rows += [dict(stage="middle", resolution=sides[-1], component="residual blocks", modules=2, parameters=n_params(mid)),
             dict(stage="middle", resolution=sides[-1], component="attention", modules=1, parameters=n_params([net.mid_attn]))]
    for level, side in zip(net.up, reversed(sides)):
        rows += blocks(level, "up", side)
    rows.append(dict(stage="output", resolution=side0, component="GroupNorm, SiLU, 3×3 conv", modules=1,
                     parameters=n_params([net.norm_out, net.conv_out])))
    total = sum(r["parameters"] for r in rows)
    expected = sum(p.numel() for p in net.parameters())
    if total != expected:
        raise RuntimeError(f"the table holds {total} parameters but the network has {expected}: "
                           f"a module of {type(net).__name__} is not covered by unet_parameter_table")
    return rows


def trace_shapes(model: nn.Module, *inputs: torch.Tensor, types: tuple[type, ...] | None = None) -> list[dict[str, Any]]:
    """Run ``model(*inputs)`` once and record, through forward hooks, each block's input and output shape.

    :param types: module classes to trace; a module inside a traced one is not traced again.
        Default: the DDPM ``UNet``'s blocks (ResBlock, Attention, Downsample, Upsample and the
        outer convs) plus the segmentation U-Net's (DoubleConv, MaxPool2d, ConvTranspose2d).
    :return: rows in execution order with ``name``, ``type``, ``input`` and ``output`` shapes and
        ``parameters`` of the module (each once, also when called several times).
    """
    from .unet import Attention, Downsample, ResBlock, Upsample

    types = types or (ResBlock, Attention, Downsample, Upsample, DoubleConv, nn.MaxPool2d, nn.ConvTranspose2d, nn.Conv2d)
    traced: list[str] = []
    rows: list[dict[str, Any]] = []
    handles = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            rows.append(dict(name=name, type=type(module).__name__, input=tuple(args[0].shape),
                             output=tuple(output.shape), parameters=sum(p.numel() for p in module.parameters())))
        return record

    for name, module in model.named_modules():
        if name and isinstance(module, types) and not any(name.startswith(t + ".") for t in traced):
            traced.append(name)
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return rows


def randomize_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Draw every conv and linear weight afresh (PyTorch's default Kaiming-uniform rule) and set the
    biases to zero, from a seeded generator. The DDPM U-Net zero-initialises the last layer of each
    residual branch and its output conv, so the input gradient of a fresh network is exactly zero
    and shows nothing; this gives every layer a say. Returns ``model``."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=5 ** 0.5, generator=g)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model


def input_gradient_map(model: nn.Module, x: torch.Tensor, pixel: tuple[int, int],
                       t: torch.Tensor | None = None) -> torch.Tensor:
    """How strongly each input pixel moves one output pixel: ``|d out[n, :, i, j].sum() / d x[n]|``,
    summed over input channels and averaged over the batch (eval mode, so no dropout).

    Nonzero exactly where the input can influence output pixel ``pixel = (i, j)`` (for generic
    weights): the receptive field, measured. Max-pooling passes the gradient to one pixel of each
    window, so average over a batch of several random inputs to see every reachable pixel.

    :param x: [N x C x H x W] inputs. :param t: [N] steps for a DDPM ``UNet`` (None for a network ``model(x)``).
    :return: float64 [H x W].
    """
    was_training = model.training
    model.eval()
    x = x.detach().clone().requires_grad_(True)
    try:
        out = model(x) if t is None else model(x, t)
        i, j = pixel
        if not (0 <= i < out.shape[-2] and 0 <= j < out.shape[-1]):
            raise ValueError(f"pixel {pixel} lies outside the {tuple(out.shape[-2:])} output")
        (grad,) = torch.autograd.grad(out[:, :, i, j].sum(), x)
    finally:
        model.train(was_training)
    return grad.abs().sum(1).double().mean(0)


def receptive_field_extent(grad_map: torch.Tensor, rel_tol: float = 0.0) -> dict[str, Any]:
    """Where a gradient map (from :func:`input_gradient_map`) is nonzero (above ``rel_tol`` times its maximum).

    :return: dict with ``height`` and ``width`` of the bounding box of those pixels, ``coverage``
        (their fraction of the image) and ``mask`` (bool [H x W]).
    """
    mask = grad_map > rel_tol * grad_map.max()
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if len(rows) == 0:
        return dict(height=0, width=0, coverage=0.0, mask=mask)
    return dict(height=int(rows[-1] - rows[0] + 1), width=int(cols[-1] - cols[0] + 1),
                coverage=mask.double().mean().item(), mask=mask)
