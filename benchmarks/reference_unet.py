"""The official Med-DDPM denoiser's layer structure, as a benchmark comparison case.

Written only from the layer-by-layer description in the project's reference notes (the official code is
GPL and is not copied): the same modules, in the same order, with the official forward order - every
GroupNorm on an fp32 copy cast back, SiLU out of place, the embedding added out of place, ``skip(x) + h``
at the end of each res-block, attention as two einsum products with c^-1/4 on q and k and the softmax in
fp32, and each output block fed ``h = cat([h, skip])`` before it runs. Attribute names equal ours, so
the same state dict loads into both with ``strict=True`` and the two are compared on equal weights.

It is never used by the product: ``benchmarks/bench_network.py`` times it and measures its peak memory
beside :class:`MedDDPMSynthLib.model.unet.UNet3D`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Norm(nn.GroupNorm):
    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-5, affine=True)

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def _sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class _Steps(nn.Sequential):
    def forward(self, x, emb):  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _Res) else layer(x)
        return x


class _Res(nn.Module):
    def __init__(self, cin: int, emb: int, cout: int):
        super().__init__()
        self.in_layers = nn.Sequential(_Norm(cin), nn.SiLU(), nn.Conv3d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, cout))
        self.out_layers = nn.Sequential(_Norm(cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv3d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)
        while e.ndim < h.ndim:
            e = e[..., None]
        h = h + e
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class _Attn(nn.Module):
    def __init__(self, channels: int, heads: int = 1):
        super().__init__()
        self.heads = heads
        self.norm = _Norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(x))
        bs, width, length = qkv.shape
        ch = width // (3 * self.heads)
        q, k, v = qkv.reshape(bs * self.heads, 3 * ch, length).split(ch, dim=1)
        scale = 1 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class _Down(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv3d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class _Up(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, size=tuple(2 * s for s in x.shape[2:]), mode="trilinear"))


class ReferenceUNet(nn.Module):
    """Assembly rule of the reference notes (section 2.3) for any config with the fields of UNetConfig."""

    def __init__(self, in_channels, out_channels, model_channels=64, channel_mult=(1, 1, 2, 3, 4),
                 num_res_blocks=1, attention_ds=(8,), num_heads=1, **_):
        super().__init__()
        mc, emb = model_channels, 4 * model_channels
        self.model_channels = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = mc * channel_mult[0]
        self.input_blocks = nn.ModuleList([_Steps(nn.Conv3d(in_channels, ch, 3, padding=1))])
        widths, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [_Res(ch, emb, mc * mult)]
                ch = mc * mult
                if ds in attention_ds:
                    layers.append(_Attn(ch, num_heads))
                self.input_blocks.append(_Steps(*layers))
                widths.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_Steps(_Down(ch)))
                widths.append(ch)
                ds *= 2
        self.middle_block = _Steps(_Res(ch, emb, ch), _Attn(ch, num_heads), _Res(ch, emb, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [_Res(ch + widths.pop(), emb, mc * mult)]
                ch = mc * mult
                if ds in attention_ds:
                    layers.append(_Attn(ch, num_heads))
                if level and i == num_res_blocks:
                    layers.append(_Up(ch))
                    ds //= 2
                self.output_blocks.append(_Steps(*layers))
        self.out = nn.Sequential(_Norm(ch), nn.SiLU(), nn.Conv3d(ch, out_channels, 3, padding=1))

    def forward(self, x, t):
        emb = self.time_embed(_sinusoid(t, self.model_channels))
        h = x.float()
        hs = []
        for module in self.input_blocks:
            h = module(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for module in self.output_blocks:
            h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, emb)
        return self.out(h)
