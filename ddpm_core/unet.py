"""The noise-prediction network: the U-Net of Ho et al. 2020 (Appendix B), with the options of
Improved DDPM (Nichol & Dhariwal 2021), small presets for CPU chapters, and a converter from the
released `google/ddpm-cifar10-32` weights (diffusers' ``UNet2DModel``).

Structure (Ho et al.'s ``diffusion_tf/models/unet.py``, also that of diffusers' ``UNet2DModel``):

    t -> sinusoidal embedding -> Linear -> SiLU -> Linear = emb          (added in every res block)
    x -> conv_in -> [res block (+ attention)] x num_res_blocks -> downsample  ... per resolution
      -> middle: res block, attention, res block
      -> [concat skip, res block (+ attention)] x (num_res_blocks + 1) -> upsample ... per resolution
      -> GroupNorm -> SiLU -> conv_out

Every output of the down path (conv_in, each res block, each downsample) is a skip connection,
consumed in reverse order by the up path. ``net(x_t, t)`` takes ``t`` as a tensor [N] of
0-indexed steps. diffusers is only an oracle: it is imported inside the converters, never here.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

TIME_EMBEDDINGS = {
    "ddpm": "[sin, cos], frequencies exp(-ln(10000) i / (half - 1)) (Ho's code; diffusers freq_shift=1)",
    "iddpm": "[cos, sin], frequencies exp(-ln(10000) i / half) (improved-diffusion)",
}
DOWNSAMPLE_PADDINGS = {
    "asymmetric": "pad right/bottom by one, then a stride-2 3x3 conv: TensorFlow 'SAME' (Ho's code)",
    "symmetric": "stride-2 3x3 conv with padding 1 on every side (improved-diffusion)",
}
INITS = {
    "ddpm": "Xavier-uniform weights (TF variance_scaling fan_avg), zero biases (Ho's code)",
    "pytorch": "PyTorch's default initialisation (improved-diffusion)",
}


def timestep_embedding(t: torch.Tensor, dim: int, kind: str = "ddpm") -> torch.Tensor:
    """Sinusoidal embedding of the steps ``t`` (Vaswani et al. 2017, Sec. 3.5; Ho et al. Appendix B).

    :param t: a [N] tensor of (0-indexed) steps; integer or float.
    :param dim: embedding width; an odd ``dim`` gets one zero column at the end.
    :param kind: ``"ddpm"`` or ``"iddpm"``, see ``TIME_EMBEDDINGS``.
    :return: a float32 [N x dim] tensor.
    """
    if kind not in TIME_EMBEDDINGS:
        raise ValueError(f"time embedding {kind!r} is unknown; choose one of {sorted(TIME_EMBEDDINGS)}")
    half = dim // 2
    shift = 1 if kind == "ddpm" else 0
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - shift))
    args = t.float()[:, None] * freqs[None, :]  # (N, half)
    parts = [args.sin(), args.cos()] if kind == "ddpm" else [args.cos(), args.sin()]
    return F.pad(torch.cat(parts, dim=1), (0, dim % 2))


def _check_dtype_and_t(x_t: torch.Tensor, t, weight: torch.Tensor) -> None:
    """Clear errors for an ``x_t`` of a dtype that the network's weights cannot take (float64 or
    integers; lower precision is autocast's business) and for a step ``t`` that is not a tensor."""
    if x_t.dtype != weight.dtype and (x_t.dtype == torch.float64 or not x_t.is_floating_point()):
        fix = "x.float()" if weight.dtype == torch.float32 else f"x.to({weight.dtype})"
        x_type, w_type = (str(d).removeprefix("torch.") for d in (x_t.dtype, weight.dtype))
        raise TypeError(f"x_t is {x_type} but the network's weights are {w_type}; pass {fix}")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"t must be a tensor [N] of 0-indexed steps, got {type(t).__name__} {t!r}; "
                        f"use torch.full(({len(x_t)},), step) for a shared step")


class ResBlock(nn.Module):
    """Pre-activation residual block with the time embedding injected after the first conv.

    ``use_scale_shift_norm`` (Improved DDPM): ``GroupNorm(h) * (1 + scale) + shift`` with
    (scale, shift) from the embedding, instead of adding the embedding before the second norm.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_ch: int, dropout: float, groups: int, eps: float,
                 use_scale_shift_norm: bool):
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(emb_ch, 2 * out_ch if use_scale_shift_norm else out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()  # Ho's "nin_shortcut"

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        # In-place adds on fresh conv outputs (a conv's backward does not need its output) and, when no
        # graph is recorded (sampling), in-place SiLU: fewer allocations, ~1.1x faster sampling on CPU.
        inplace = not torch.is_grad_enabled()
        h = self.conv1(F.silu(self.norm1(x), inplace=inplace))  # (N, out_ch, H, W)
        e = self.time_proj(F.silu(emb))[:, :, None, None]      # (N, out_ch or 2 out_ch, 1, 1)
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # GroupNorm(h) * (1 + scale) + shift
        else:
            h = self.norm2(h.add_(e))
        h = self.conv2(self.dropout(F.silu(h, inplace=inplace)))
        return h.add_(self.skip(x))


class Attention(nn.Module):
    """Self-attention over the H*W positions with a residual connection (Ho et al. Appendix B).

    softmax(q k^T / sqrt(d)) v per head, d = C / num_heads; heads split the channels in
    contiguous groups (as diffusers does).
    """

    def __init__(self, ch: int, num_heads: int, groups: int, eps: float):
        super().__init__()
        if ch % num_heads:
            raise ValueError(f"{ch} channels cannot be split into {num_heads} attention heads; "
                             "choose num_heads dividing every attended width")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, ch, eps=eps)
        self.q, self.k, self.v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.proj_out = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)  # (N, HW, C)
        q, k, v = (p(y).unflatten(2, (self.num_heads, -1)).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)  # (N, heads, HW, C / heads)
        y = self.proj_out(y.transpose(1, 2).flatten(2))  # (N, HW, C)
        return y.transpose(1, 2).reshape(n, c, h, w).add_(x)  # (N, C, H, W); a channels-last view of y


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 conv; ``padding`` is a key of ``DOWNSAMPLE_PADDINGS``."""

    def __init__(self, ch: int, padding: str):
        super().__init__()
        self.asymmetric = padding == "asymmetric"
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0 if self.asymmetric else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.asymmetric else x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour repetition, then a 3x3 conv.

    (Ho's TF1 resize used ``align_corners=True``; PyTorch's and diffusers' nearest repeat each pixel
    2x2, which the released PyTorch weights assume.)
    """

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The blocks of one resolution: res blocks, each followed by attention or Identity, then a resampler."""

    def __init__(self, res: list[nn.Module], attn: list[nn.Module], resample: nn.Module):
        super().__init__()
        self.res, self.attn, self.resample = nn.ModuleList(res), nn.ModuleList(attn), resample


class UNet(nn.Module):
    """The DDPM U-Net ``eps_pred = net(x_t, t)`` (Ho et al. 2020, Appendix B).

    :param in_channels: image channels C.
    :param out_channels: channels per predicted quantity (default C); ``learn_sigma`` doubles it.
    :param image_size: side of the square input; needed to place attention by resolution.
    :param base_channels: width of the first level; also the sinusoid width (the MLP is 4x wider).
    :param channel_mult: width multiplier per resolution; one resolution per entry.
    :param num_res_blocks: res blocks per resolution on the way down (the way up has one more).
    :param attention_resolutions: sides (in pixels, e.g. 16 for 16x16) where attention follows each res block.
    :param num_heads: attention heads (1 in DDPM, 4 in Improved DDPM).
    :param dropout: dropout rate inside res blocks (0.1 for DDPM CIFAR-10).
    :param norm_groups: GroupNorm groups (32 in the papers; fewer for tiny models).
    :param norm_eps: GroupNorm epsilon (1e-6 in Ho's code, 1e-5 in improved-diffusion).
    :param time_embedding: a key of ``TIME_EMBEDDINGS``.
    :param downsample_padding: a key of ``DOWNSAMPLE_PADDINGS``.
    :param use_scale_shift_norm: Improved DDPM's scale-shift GroupNorm conditioning.
    :param learn_sigma: output 2 * out_channels: the mean part first, the variance part second.
    :param init: a key of ``INITS``; both zero the last layer of each residual branch and the output
        conv (Ho's ``init_scale=0``), so a fresh network outputs zeros.
    """

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, image_size: int = 32,
                 base_channels: int = 128, channel_mult: tuple[int, ...] = (1, 2, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: tuple[int, ...] = (16,), num_heads: int = 1, dropout: float = 0.1,
                 norm_groups: int = 32, norm_eps: float = 1e-6, time_embedding: str = "ddpm",
                 downsample_padding: str = "asymmetric", use_scale_shift_norm: bool = False,
                 learn_sigma: bool = False, init: str = "ddpm"):
        super().__init__()
        for value, options, what in ((time_embedding, TIME_EMBEDDINGS, "time_embedding"),
                                     (downsample_padding, DOWNSAMPLE_PADDINGS, "downsample_padding"),
                                     (init, INITS, "init")):
            if value not in options:
                raise ValueError(f"{what}={value!r} is unknown; choose one of {sorted(options)}")
        resolutions = [image_size]  # side of the feature maps at each level
        for _ in channel_mult[1:]:
            if resolutions[-1] % 2:
                raise ValueError(f"image_size {image_size} cannot be halved {len(channel_mult) - 1} times "
                                 f"(reached {resolutions[-1]}); use fewer channel_mult entries")
            resolutions.append(resolutions[-1] // 2)
        if set(attention_resolutions) - set(resolutions):
            raise ValueError(f"attention_resolutions {tuple(attention_resolutions)} must be feature-map sides of "
                             f"this network, {resolutions}")
        self.config = dict(in_channels=in_channels, out_channels=out_channels or in_channels,
                           image_size=image_size, base_channels=base_channels, channel_mult=tuple(channel_mult),
                           num_res_blocks=num_res_blocks, attention_resolutions=tuple(attention_resolutions),
                           num_heads=num_heads, dropout=dropout, norm_groups=norm_groups, norm_eps=norm_eps,
                           time_embedding=time_embedding, downsample_padding=downsample_padding,
                           use_scale_shift_norm=use_scale_shift_norm, learn_sigma=learn_sigma, init=init)
        self.in_channels, self.image_size = in_channels, image_size
        self.out_channels = (out_channels or in_channels) * (2 if learn_sigma else 1)
        self.base_channels, self.time_embedding = base_channels, time_embedding
        emb_ch = 4 * base_channels

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_ch, dropout, norm_groups, norm_eps, use_scale_shift_norm)

        def attn(ch: int, side: int) -> nn.Module:
            return Attention(ch, num_heads, norm_groups, norm_eps) if side in attention_resolutions else nn.Identity()

        self.time_mlp = nn.Sequential(nn.Linear(base_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        ch, skips, last = base_channels, [base_channels], len(channel_mult) - 1
        self.down = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            blocks, attns = [], []
            for _ in range(num_res_blocks):
                blocks.append(res(ch, base_channels * mult))
                ch = base_channels * mult
                attns.append(attn(ch, resolutions[level]))
                skips.append(ch)
            if level != last:
                skips.append(ch)
            resample = Downsample(ch, downsample_padding) if level != last else nn.Identity()
            self.down.append(Level(blocks, attns, resample))
        self.mid_block1 = res(ch, ch)
        self.mid_attn = Attention(ch, num_heads, norm_groups, norm_eps)
        self.mid_block2 = res(ch, ch)
        self.up = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            blocks, attns = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(res(ch + skips.pop(), base_channels * channel_mult[level]))
                ch = base_channels * channel_mult[level]
                attns.append(attn(ch, resolutions[level]))
            self.up.append(Level(blocks, attns, Upsample(ch) if level != 0 else nn.Identity()))
        self.norm_out = nn.GroupNorm(norm_groups, ch, eps=norm_eps)
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)
        self._init_weights(init)
        # Channels-last (NHWC) weights: every convolution then runs in NHWC whatever the input's layout,
        # ~1.1x faster training and sampling on CPU (oneDNN) and the layout of GPU tensor-core kernels.
        # Kept by .to(), deepcopy and load_state_dict; net.to(memory_format=torch.contiguous_format) undoes it.
        self.to(memory_format=torch.channels_last)
        # each downsampling halves the sides, and the way up must meet the same sizes again
        self.side_multiple = 2 ** sum(not isinstance(level.resample, nn.Identity) for level in self.down)

    def _init_weights(self, init: str) -> None:
        if init == "ddpm":  # TF variance_scaling(1, fan_avg, uniform) == Xavier uniform, biases zero
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        zeroed = [self.conv_out] + [m.conv2 for m in self.modules() if isinstance(m, ResBlock)]
        zeroed += [m.proj_out for m in self.modules() if isinstance(m, Attention)]
        for m in zeroed:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """:param x_t: the [N x C x H x W] noisy images; :param t: a [N] tensor of 0-indexed steps.
        :return: [N x out_channels x H x W] (eps_pred; with learn_sigma, then the variance output v)."""
        if x_t.dim() != 4 or x_t.shape[1] != self.in_channels:
            raise ValueError(f"UNet expects x_t of shape [N, C, H, W] with C = {self.in_channels} (channels first); "
                             f"got {tuple(x_t.shape)}. Use x.permute(0, 3, 1, 2) for channels-last images and "
                             "x[None] for a single image.")
        _check_dtype_and_t(x_t, t, self.conv_in.weight)
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be a 1-D tensor with one step per image, shape ({x_t.shape[0]},); "
                             f"got shape {tuple(t.shape)}. Use torch.full((N,), step) for a shared step")
        m = self.side_multiple
        if x_t.shape[-2] % m or x_t.shape[-1] % m:
            raise ValueError(f"this UNet halves the image sides {m.bit_length() - 1} times, so it takes sides that "
                             f"are multiples of {m} (it was built for {self.image_size}x{self.image_size}); got "
                             f"{x_t.shape[-2]}x{x_t.shape[-1]}. Resize the images (data.load_dataset(..., "
                             f"image_size=...)) or build a network for that size")
        t_emb = timestep_embedding(t, self.base_channels, self.time_embedding)
        emb = self.time_mlp(t_emb.to(self.conv_in.weight.dtype))  # (N, 4 base_channels)
        h = self.conv_in(x_t)
        hs = [h]
        for level in self.down:
            for block, attn in zip(level.res, level.attn):
                h = attn(block(h, emb))
                hs.append(h)
            if not isinstance(level.resample, nn.Identity):
                h = level.resample(h)
                hs.append(h)
        h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb)), emb)
        for level in self.up:
            for block, attn in zip(level.res, level.attn):
                h = attn(block(torch.cat([h, hs.pop()], dim=1), emb))
            h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h))).contiguous()  # NCHW, whatever the weights' layout

    # -- construction helpers -------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "UNet":
        """A U-Net from ``PRESETS[name]``, with any constructor argument overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown U-Net preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_diffusers(cls, model: Any, config: Mapping[str, Any] | None = None, *, learn_sigma: bool = False,
                       dropout: float | None = None) -> "UNet":
        """Convert a diffusers ``UNet2DModel`` (or its ``state_dict()`` plus ``config``) into a UNet
        with the same outputs. Accepts the attention names of current (``to_q``, ``to_out.0``) and old
        (``query``, ``proj_attn``) checkpoints. ``learn_sigma=True`` reads the output as [mean, variance];
        ``dropout`` overrides the config's (diffusers defaults to 0; DDPM trained with 0.1)."""
        if config is None:
            if not hasattr(model, "config") or not hasattr(model, "state_dict"):
                raise TypeError("from_diffusers expects a diffusers UNet2DModel, or a state dict and its config")
            model, config = model.state_dict(), model.config
        kwargs = _config_from_diffusers(config, learn_sigma)
        if dropout is not None:
            kwargs["dropout"] = dropout
        net = cls(**kwargs)
        state = {_rename_diffusers_key(k): v for k, v in model.items()}
        own = net.state_dict()
        state = {k: v.reshape(own[k].shape) if k in own and v.dim() == 4 and own[k].dim() == 2 else v
                 for k, v in state.items()}  # very old checkpoints stored attention projections as 1x1 convs
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"the diffusers weights do not fit the converted architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}; is this the state dict of the config's UNet2DModel?")
        net.load_state_dict(state)
        return net

    from_diffusers_state_dict = from_diffusers  # from_diffusers_state_dict(state_dict, config)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "google/ddpm-cifar10-32", *, learn_sigma: bool = False,
                        dropout: float | None = None, **hub_kwargs: Any) -> "UNet":
        """Load released diffusers weights (a Hugging Face id, or a local diffusers-format folder holding
        ``config.json`` or ``unet/config.json``) and convert them. Downloads need internet (e.g. Colab);
        ``hub_kwargs`` (``cache_dir``, ``local_files_only``, ...) go to ``UNet2DModel.from_pretrained``."""
        try:
            from diffusers import UNet2DModel
        except ImportError as err:
            raise ImportError("UNet.from_pretrained reads diffusers checkpoints: pip install diffusers") from err
        path = Path(name_or_path)
        if path.is_dir() and not (path / "config.json").exists() and (path / "unet" / "config.json").exists():
            hub_kwargs.setdefault("subfolder", "unet")  # a saved DDPMPipeline folder
        if not path.is_dir() and "local_files_only" not in hub_kwargs and not _hub_reachable():
            # no internet: only a copy in the Hugging Face cache can load, and asking the hub would
            # retry for half a minute before failing
            hub_kwargs["local_files_only"] = True
        if importlib.util.find_spec("accelerate") is None:
            # what diffusers falls back to anyway, without its warning that accelerate is missing
            hub_kwargs.setdefault("low_cpu_mem_usage", False)
        try:
            with warnings.catch_warnings():  # a deprecation inside diffusers' own hub call, not the reader's
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
                model = UNet2DModel.from_pretrained(str(name_or_path), **hub_kwargs)
        except Exception as err:  # hub and file errors differ across huggingface_hub versions
            if path.is_dir():
                raise OSError(f"{str(path)!r} is not a diffusers UNet2DModel folder (config.json plus "
                              f"diffusion_pytorch_model.*): {type(err).__name__}: {err}") from err
            raise OSError(
                f"could not load {str(name_or_path)!r} from the Hugging Face Hub ({type(err).__name__}: {err}). "
                "There is no internet access here or no copy in the Hugging Face cache. Download the model "
                "where there is internet (`huggingface-cli download google/ddpm-cifar10-32 --local-dir "
                "ddpm-cifar10-32`, or `UNet2DModel.from_pretrained(...).save_pretrained(folder)`), copy the "
                "folder here and pass its path: UNet.from_pretrained('path/to/ddpm-cifar10-32')."
            ) from err
        return cls.from_diffusers(model, learn_sigma=learn_sigma, dropout=dropout)


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hugging Face Hub (``$HF_ENDPOINT``) opens within ``timeout``
    seconds. Behind a proxy (``HTTPS_PROXY`` and the like) it answers True and leaves it to the hub."""
    import os
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout).close()
        return True
    except OSError:
        return False


# -- diffusers conversion ---------------------------------------------------------------------------

# UNet2DModel's defaults, for keys an older config.json leaves out (tested against diffusers).
DIFFUSERS_DEFAULTS = dict(
    sample_size=None, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="positional",
    time_embedding_dim=None, freq_shift=0, flip_sin_to_cos=True, mid_block_type="UNetMidBlock2D",
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(224, 448, 672, 896), layers_per_block=2, mid_block_scale_factor=1, downsample_padding=1,
    downsample_type="conv", upsample_type="conv", dropout=0.0, act_fn="silu", attention_head_dim=8,
    norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5, resnet_time_scale_shift="default",
    add_attention=True, class_embed_type=None, num_class_embeds=None,
)
_DIFFUSERS_FIXED = dict(center_input_sample=False, time_embedding_type="positional", mid_block_type="UNetMidBlock2D",
                        mid_block_scale_factor=1, downsample_type="conv", upsample_type="conv", add_attention=True,
                        class_embed_type=None, num_class_embeds=None)
_DIFFUSERS_KEYS = [  # (diffusers name piece, our name piece), applied in order
    ("time_embedding.linear_1.", "time_mlp.0."), ("time_embedding.linear_2.", "time_mlp.2."),
    ("down_blocks.", "down."), ("up_blocks.", "up."), ("resnets.", "res."), ("attentions.", "attn."),
    ("downsamplers.0.", "resample."), ("upsamplers.0.", "resample."), ("time_emb_proj.", "time_proj."),
    ("conv_shortcut.", "skip."), ("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
    ("to_out.0.", "proj_out."), ("query.", "q."), ("key.", "k."), ("value.", "v."), ("proj_attn.", "proj_out."),
    ("mid_block.res.0.", "mid_block1."), ("mid_block.attn.0.", "mid_attn."), ("mid_block.res.1.", "mid_block2."),
    ("conv_norm_out.", "norm_out."),
]


def _rename_diffusers_key(key: str) -> str:
    for old, new in _DIFFUSERS_KEYS:
        key = key.replace(old, new)
    return key


def _config_from_diffusers(config: Mapping[str, Any], learn_sigma: bool) -> dict[str, Any]:
    """UNet constructor arguments for a UNet2DModel config; raises for what the UNet cannot express."""
    cfg = {**DIFFUSERS_DEFAULTS, **{k: v for k, v in dict(config).items() if not k.startswith("_")}}

    def unsupported(what: str) -> ValueError:
        return ValueError(f"cannot convert this UNet2DModel: {what} (only the DDPM / Improved DDPM U-Net is supported)")

    for key, value in _DIFFUSERS_FIXED.items():
        if cfg[key] != value:
            raise unsupported(f"{key}={cfg[key]!r}, expected {value!r}")
    if cfg["act_fn"] not in ("silu", "swish"):
        raise unsupported(f"act_fn={cfg['act_fn']!r}")
    embeddings = {(False, 1): "ddpm", (True, 0): "iddpm"}
    if (bool(cfg["flip_sin_to_cos"]), cfg["freq_shift"]) not in embeddings:
        raise unsupported(f"flip_sin_to_cos={cfg['flip_sin_to_cos']}, freq_shift={cfg['freq_shift']}")
    if cfg["downsample_padding"] not in (0, 1) or cfg["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise unsupported(f"downsample_padding={cfg['downsample_padding']}, "
                          f"resnet_time_scale_shift={cfg['resnet_time_scale_shift']!r}")
    scale_shift = cfg["resnet_time_scale_shift"] == "scale_shift"
    allowed_attn_groups = (cfg["norm_num_groups"],) if scale_shift else (None, cfg["norm_num_groups"])
    if cfg["attn_norm_num_groups"] not in allowed_attn_groups:  # else diffusers' middle attention has no norm
        raise unsupported(f"attn_norm_num_groups={cfg['attn_norm_num_groups']} differs from norm_num_groups")
    size = cfg["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise unsupported(f"non-square sample_size {size}")
        size = size[0]
    if size is None:
        raise unsupported("sample_size is missing; it places the attention layers")
    chans = list(cfg["block_out_channels"])
    base = chans[0]
    if any(c % base for c in chans) or (cfg["time_embedding_dim"] not in (None, 4 * base)):
        raise unsupported(f"block_out_channels {chans} are not multiples of the first, "
                          f"or time_embedding_dim != 4 * {base}")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    if set(down) - {"DownBlock2D", "AttnDownBlock2D"} or set(up) - {"UpBlock2D", "AttnUpBlock2D"}:
        raise unsupported(f"block types {down} / {up}")
    attn_down = [b == "AttnDownBlock2D" for b in down]
    if len(up) != len(down) or [b == "AttnUpBlock2D" for b in reversed(up)] != attn_down:
        raise unsupported(f"up blocks {up} do not mirror down blocks {down}")
    head_dim = cfg["attention_head_dim"]
    attended = [c for c, a in zip(chans, attn_down) if a] + [chans[-1]]
    heads = {1 if head_dim is None else c // head_dim for c in attended}
    if len(heads) != 1 or (head_dim is not None and any(c % head_dim for c in attended)):
        raise unsupported(f"attention_head_dim={head_dim} gives different head counts across widths {attended}")
    out_ch = cfg["out_channels"]
    if learn_sigma and out_ch % 2:
        raise ValueError(f"learn_sigma=True needs an even number of output channels, the model has {out_ch}")
    return dict(in_channels=cfg["in_channels"], out_channels=out_ch // 2 if learn_sigma else out_ch, image_size=size,
                base_channels=base, channel_mult=tuple(c // base for c in chans),
                num_res_blocks=cfg["layers_per_block"], num_heads=heads.pop(),
                attention_resolutions=tuple(size // 2 ** i for i, a in enumerate(attn_down) if a),
                dropout=cfg["dropout"], norm_groups=cfg["norm_num_groups"], norm_eps=cfg["norm_eps"],
                time_embedding=embeddings[(bool(cfg["flip_sin_to_cos"]), cfg["freq_shift"])],
                downsample_padding="asymmetric" if cfg["downsample_padding"] == 0 else "symmetric",
                use_scale_shift_norm=scale_shift, learn_sigma=learn_sigma, init="pytorch")


# -- a network for two-dimensional toy data ----------------------------------------------------------

class TimeMLP(nn.Module):
    """A time-conditioned residual MLP, ``eps_pred = net(x_t, t)`` for points x_t of shape [N x dim].

    Each block: ``h = h + Linear(SiLU(Linear(SiLU(h)) + Linear(emb)))`` with emb the embedded step.

    With ``fourier_features = n > 0`` the input layer sees, besides the coordinates, the sine and
    cosine of each coordinate at the n frequencies pi * 2^k, k = 0..n-1 (Tancik et al. 2020). An MLP
    on raw coordinates is slow to learn what changes quickly in space (spectral bias, Rahaman et
    al. 2019), and the denoiser of narrow modes at small noise levels is such a function.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, num_blocks: int = 3, dropout: float = 0.0,
                 time_embedding: str = "iddpm", learn_sigma: bool = False, fourier_features: int = 0):
        super().__init__()
        if not (isinstance(fourier_features, int) and fourier_features >= 0):
            raise ValueError(f"fourier_features is a number of frequencies, 0 or more; got {fourier_features!r}")
        self.config = dict(dim=dim, hidden=hidden, num_blocks=num_blocks, dropout=dropout,
                           time_embedding=time_embedding, learn_sigma=learn_sigma, fourier_features=fourier_features)
        self.hidden, self.time_embedding = hidden, time_embedding
        self.out_channels = dim * (2 if learn_sigma else 1)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(fourier_features, dtype=torch.float32),
                             persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(dim * (1 + 2 * fourier_features), hidden)
        self.blocks = nn.ModuleList(nn.ModuleDict(dict(
            lin1=nn.Linear(hidden, hidden), time_proj=nn.Linear(hidden, hidden), drop=nn.Dropout(dropout),
            lin2=nn.Linear(hidden, hidden))) for _ in range(num_blocks))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, self.out_channels))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """:param x_t: [N x dim] points; :param t: [N] 0-indexed steps. :return: [N x out_channels]."""
        if x_t.dim() != 2 or x_t.shape[1] != self.config["dim"]:
            raise ValueError(f"TimeMLP expects x_t of shape [N, dim] with dim = {self.config['dim']}; "
                             f"got {tuple(x_t.shape)}. Use x[None] for a single point.")
        _check_dtype_and_t(x_t, t, self.inp.weight)
        if t.shape != (x_t.shape[0],):
            raise ValueError(f"t must be a 1-D tensor with one step per point, shape ({x_t.shape[0]},); "
                             f"got shape {tuple(t.shape)}")
        emb = self.time_mlp(timestep_embedding(t, self.hidden, self.time_embedding).to(x_t.dtype))
        h = self.inp(self.input_features(x_t))
        for b in self.blocks:
            h = h + b["lin2"](b["drop"](F.silu(b["lin1"](F.silu(h)) + b["time_proj"](emb))))
        return self.out(h)

    def input_features(self, x_t: torch.Tensor) -> torch.Tensor:
        """What the input layer sees: ``x_t``, then (with Fourier features) sin and cos of every
        coordinate at every frequency, [N x dim * (1 + 2 * fourier_features)]."""
        if not len(self.freqs):
            return x_t
        z = (x_t[..., None] * self.freqs.to(x_t.dtype)).flatten(1)  # [N, dim * n]: coordinate-major
        return torch.cat([x_t, z.sin(), z.cos()], dim=1)


# -- presets ---------------------------------------------------------------------------------------

_DDPM = dict(time_embedding="ddpm", downsample_padding="asymmetric", use_scale_shift_norm=False,
             learn_sigma=False, norm_eps=1e-6, num_heads=1, init="ddpm")
PRESETS: dict[str, dict[str, Any]] = {
    # Ho et al. 2020 CIFAR-10: 35,746,307 parameters (the google/ddpm-cifar10-32 architecture).
    "ddpm-cifar10": dict(_DDPM, in_channels=3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2),
                         num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, norm_groups=32),
    # Nichol & Dhariwal 2021 CIFAR-10 (improved-diffusion flags of the paper's CIFAR-10 runs).
    "iddpm-cifar10": dict(in_channels=3, image_size=32, base_channels=128, channel_mult=(1, 2, 2, 2),
                          num_res_blocks=3, attention_resolutions=(16, 8), num_heads=4, dropout=0.3, norm_groups=32,
                          norm_eps=1e-5, time_embedding="iddpm", downsample_padding="symmetric",
                          use_scale_shift_norm=True, learn_sigma=True, init="pytorch"),
    # CPU profile: same design, narrower and shallower. cpu-mnist is sized for updates per minute:
    # at an equal ~4 minutes of CPU training, 16 base channels and one res block per level (2,500
    # updates) gave a classifier-feature FID of 7.5 on mnist5k, against 12.4 for 32 channels and two
    # blocks (700 updates), whose samples were mostly not recognisable (issue 3's exploration).
    "cpu-mnist": dict(_DDPM, in_channels=1, image_size=28, base_channels=16, channel_mult=(1, 2, 2),
                      num_res_blocks=1, attention_resolutions=(7,), dropout=0.1, norm_groups=8),
    "cpu-digits": dict(_DDPM, in_channels=1, image_size=8, base_channels=32, channel_mult=(1, 2),
                       num_res_blocks=1, attention_resolutions=(4,), dropout=0.0, norm_groups=8),
    "cpu-crops": dict(_DDPM, in_channels=3, image_size=32, base_channels=32, channel_mult=(1, 2, 2, 2),
                      num_res_blocks=2, attention_resolutions=(16,), dropout=0.1, norm_groups=8),
}
MLP_PRESETS: dict[str, dict[str, Any]] = {
    "toy-mlp": dict(dim=2, hidden=128, num_blocks=3),
    # the same MLP with sin/cos of each coordinate at pi, 2 pi and 4 pi. Chosen on seeds 0 and 1 with
    # 1,000 updates of 256 points: high-quality shares (chapter 1) of 83-86% on the ring and 63-65%
    # on the grid, against about 42% on both without; 2, 4, 6 and 8 frequencies gave less.
    "toy-mlp-fourier": dict(dim=2, hidden=128, num_blocks=3, fourier_features=3),
}


def preset_names() -> list[str]:
    """Every preset :func:`build_model` takes: the U-Nets', then the MLPs'."""
    return sorted(PRESETS) + sorted(MLP_PRESETS)


def build_model(preset: str, **overrides: Any) -> nn.Module:
    """Any preset by name: a ``UNet`` for ``PRESETS``, a ``TimeMLP`` for ``MLP_PRESETS``."""
    if preset in MLP_PRESETS:
        return TimeMLP(**{**MLP_PRESETS[preset], **overrides})
    if preset in PRESETS:
        return UNet.from_preset(preset, **overrides)
    raise ValueError(f"unknown model preset {preset!r}; choose one of {preset_names()}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# The configuration of the released google/ddpm-cifar10-32 weights, in diffusers' UNet2DModel terms
# (its config.json); UNet2DModel(**DDPM_CIFAR10_DIFFUSERS_CONFIG) has 35,746,307 parameters.
DDPM_CIFAR10_DIFFUSERS_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32, norm_eps=1e-6,
    act_fn="silu", time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, downsample_padding=0,
    attention_head_dim=None,
)
