"""The Med-DDPM denoiser: a 3-D port of the guided-diffusion U-Net, written from the reference facts.

Module tree and attribute names reproduce the official ones exactly (``input_blocks.<i>.<j>``,
``in_layers``, ``emb_layers``, ``out_layers``, ``skip_connection``, ``qkv``, ``proj_out``, ``op``,
``conv``, ``out``), so official state dicts load with ``strict=True``. Every size comes from
:class:`UNetConfig`; nothing is specific to one model family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GROUPS = 32  # hard-coded in the official GroupNorm: every normalised width must be a multiple of 32


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of one denoiser. ``attention_ds``: downsample factors (1, 2, 4, ...) whose
    res-blocks carry self-attention; the middle block always has attention."""

    in_channels: int
    out_channels: int
    model_channels: int = 64
    channel_mult: tuple[int, ...] = (1, 1, 2, 3, 4)
    num_res_blocks: int = 1
    attention_ds: tuple[int, ...] = (8,)
    num_heads: int = 1
    dropout: float = 0.0

    @property
    def levels(self) -> int:
        return len(self.channel_mult)

    @property
    def divisor(self) -> int:
        """Every spatial size must be a multiple of this (one halving per level transition)."""
        return 2 ** (self.levels - 1)

    def check(self) -> None:
        widths = [self.model_channels * m for m in self.channel_mult]
        if any(w % GROUPS for w in widths):
            raise ValueError(
                f"channel widths {widths} must be multiples of {GROUPS} (GroupNorm with {GROUPS} groups)"
            )
        if self.num_res_blocks < 1 or self.levels < 1 or self.num_heads < 1:
            raise ValueError("num_res_blocks, channel_mult and num_heads must be non-empty/positive")


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the input dtype (numerically stable under autocast)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(GROUPS, channels, eps=1e-5, affine=True)


class SiLU(nn.SiLU):
    """SiLU that overwrites its input when no gradient is recorded (inference). Used only right after a
    GroupNorm, whose fresh output nothing else reads, so a full-size activation is never allocated twice;
    the values are those of the out-of-place kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


def _inference() -> bool:
    """No autograd graph is recorded: intermediate tensors may be updated in place."""
    return not torch.is_grad_enabled()


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs oneDNN (mkldnn) for fp32 CPU inference on large inputs with few channels.

    For a batch of one ATen picks its own im2col + GEMM kernel (``slow_conv3d_forward``) whenever the input's
    N*C*D*H is at most 20480 and the kernel at most 3 wide: in the Med-DDPM U-Nets the stem (3 input
    channels: 1*3*48*64 at the demo grid), every convolution of the deepest levels and the 1x1x1 skips
    there - 19 of the demo network's 54 convolutions, 25 of 65 at 64^3 (benchmarks/bench_network.py
    --profile). On the stem's large volume oneDNN is 1.6-2.5x faster (1 or 2 threads); on the deepest
    levels' few voxels it is faster on one thread but slower on two threads of a busy machine, so those keep
    ATen's choice. Results differ from ATen's by rounding only (~5e-7 relative), inside the parity
    tolerances. With autograd, autocast (bf16 already runs oneDNN) or off the CPU the standard path runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.dim() == 5 and x.shape[2] * x.shape[3] * x.shape[4] >= ONEDNN_MIN_VOXELS
                and torch.backends.mkldnn.enabled and not torch.is_grad_enabled()
                and not torch.is_autocast_enabled("cpu") and self.padding_mode == "zeros"):
            return torch.ops.aten.mkldnn_convolution(
                x, self.weight, self.bias, list(self.padding), list(self.stride), list(self.dilation), self.groups)
        return super().forward(x)


#: below this many voxels ATen's own kernel choice stands (see Conv3d)
ONEDNN_MIN_VOXELS = 32**3
#: False gives ATen's own kernel choice back (benchmarks/bench_network.py --variants ours-aten)
_ONEDNN = torch.backends.mkldnn.is_available()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding of raw integer steps: [cos(t f_k), sin(t f_k)], f_k = max_period^(-k/half)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepBlock(nn.Module):
    """A module whose forward also takes the timestep embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class TimestepEmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to the children that need it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, TimestepBlock) else layer(x)
        return x


class ResBlock(TimestepBlock):
    """GN-SiLU-conv, add the projected embedding, GN-SiLU-dropout-conv, plus a (1x1x1) skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(
            normalization(channels), SiLU(), Conv3d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            normalization(out_channels),
            SiLU(),
            nn.Dropout(p=dropout),
            Conv3d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else Conv3d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[(...,) + (None,) * 3]
        # in inference the sums go in place (same values: IEEE addition is commutative), so no third
        # full-size tensor exists beside x and h; with autograd they stay out of place
        h = h.add_(e) if _inference() else h + e
        h = self.out_layers(h)
        skip = self.skip_connection(x)
        if _inference() and skip.dtype == h.dtype:
            return h.add_(skip)
        return skip + h


class AttentionBlock(nn.Module):
    """Self-attention over all voxels of a level, in the legacy head order (q, k, v consecutive per head).

    Uses ``scaled_dot_product_attention`` (memory-lean, fused); its 1/sqrt(c) logit scale equals the
    official c^(-1/4) applied to both q and k.
    """

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels cannot be split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        n = qkv.shape[-1]
        qkv = qkv.reshape(b, self.num_heads, 3 * c // self.num_heads, n)
        # (b, heads, n, ch); contiguous because strided inputs make CPU SDPA ~8x slower
        q, k, v = (part.transpose(-1, -2).contiguous() for part in qkv.chunk(3, dim=2))
        a = F.scaled_dot_product_attention(q, k, v)
        a = a.transpose(-1, -2).reshape(b, c, n).type(flat.dtype)
        return (flat + self.proj_out(a)).reshape(b, c, *spatial)


class Downsample(nn.Module):
    """Strided 3x3x3 convolution halving every axis."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Trilinear x2 (align_corners=False) followed by a 3x3x3 convolution - not nearest-neighbour."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(2 * s for s in x.shape[2:])
        return self.conv(F.interpolate(x, size=size, mode="trilinear"))


class UNet3D(nn.Module):
    """Conditional 3-D U-Net: input = cat([noisy image, condition]), output = predicted noise."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        config.check()
        self.config = config
        mc, nrb = config.model_channels, config.num_res_blocks
        emb_ch = 4 * mc
        attn = set(config.attention_ds)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        ch = mc * config.channel_mult[0]
        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(Conv3d(config.in_channels, ch, 3, padding=1))]
        )
        skips, ds = [ch], 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(nrb):
                layers: list[nn.Module] = [ResBlock(ch, emb_ch, mc * mult, config.dropout)]
                ch = mc * mult
                if ds in attn:
                    layers.append(AttentionBlock(ch, config.num_heads))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skips.append(ch)
            if level != config.levels - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skips.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_ch, ch, config.dropout),
            AttentionBlock(ch, config.num_heads),
            ResBlock(ch, emb_ch, ch, config.dropout),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(nrb + 1):
                layers = [ResBlock(ch + skips.pop(), emb_ch, mc * mult, config.dropout)]
                ch = mc * mult
                if ds in attn:
                    layers.append(AttentionBlock(ch, config.num_heads))
                if level and i == nrb:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            normalization(ch), SiLU(), Conv3d(ch, config.out_channels, 3, padding=1)
        )

    def embed(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_embed(timestep_embedding(t, self.config.model_channels))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.embed(t)
        h = x.float()
        hs = []
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            # concatenate first, then run the block: the pre-concatenation h and the popped skip are
            # freed before the block allocates its own activations (peak memory of the official order)
            h = torch.cat([h, hs.pop()], dim=1)
            h = block(h, emb)
        return self.out(h)
