"""Shared building blocks for the 2-D / 3-D networks: convs, norms, residual and attention blocks.

Every block takes ``dims`` (2 or 3) so one code path builds both the 2-D engines (deviation,
deformation) and the 3-D latent model (paired).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def check_dims(dims: int) -> int:
    """Return ``dims`` if it is 2 or 3, else raise ValueError."""
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    return dims


def conv_nd(
    dims: int, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, **kw
) -> nn.Module:
    """A Conv2d / Conv3d with 'same' padding for odd kernels."""
    conv = nn.Conv2d if check_dims(dims) == 2 else nn.Conv3d
    kw.setdefault("padding", kernel_size // 2)
    return conv(c_in, c_out, kernel_size, stride=stride, **kw)


class ChannelNorm(nn.Module):
    """LayerNorm over channels at each voxel (affine per channel): a norm with no spatial extent.

    Unlike GroupNorm its statistics do not depend on the rest of the volume, so a network built
    with it gives the same result on a slab as on the whole volume (away from the slab edges).
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x`` [B, C, *spatial] over C."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        shape = (1, -1) + (1,) * (x.ndim - 2)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight.reshape(shape) + self.bias.reshape(shape)


NORMS = ("group", "channel", "none")


def norm_layer(channels: int, groups: int = 8, kind: str = "group") -> nn.Module:
    """A norm layer: "group" (GroupNorm), "channel" (ChannelNorm) or "none".

    GroupNorm takes the largest group count ≤ ``groups`` that divides ``channels`` (groups ≤ 0
    means no norm).
    """
    if kind not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
    if kind == "none" or (kind == "group" and groups <= 0):
        return nn.Identity()
    if kind == "channel":
        return ChannelNorm(channels)
    # gcd keeps any channel count legal (e.g. decoder inputs that concatenate skip channels)
    return nn.GroupNorm(math.gcd(groups, channels), channels, eps=1e-6)


def zero_init(module: nn.Module) -> nn.Module:
    """Set all parameters of ``module`` to zero and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B, dim] of (possibly fractional) timesteps ``t`` [B]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimeEmbedding(nn.Module):
    """Sinusoidal features of t followed by a two-layer MLP (the embedding fed to every block)."""

    def __init__(self, base_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.base_dim = base_dim
        self.mlp = nn.Sequential(
            nn.Linear(base_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

    def forward(self, t: Tensor) -> Tensor:
        """Map timesteps [B] to embeddings [B, emb_dim]."""
        return self.mlp(timestep_embedding(t, self.base_dim))


class ResBlock(nn.Module):
    """Wide-ResNet block: GN, SiLU, conv, + Linear(t emb), GN, SiLU, dropout, conv; residual."""

    def __init__(
        self,
        dims: int,
        c_in: int,
        c_out: int,
        *,
        emb_dim: int | None = None,
        groups: int = 8,
        dropout: float = 0.0,
        norm: str = "group",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(c_in, groups, norm)
        self.conv1 = conv_nd(dims, c_in, c_out, 3)
        self.emb_proj = nn.Linear(emb_dim, c_out) if emb_dim else None
        self.norm2 = norm_layer(c_out, groups, norm)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv_nd(dims, c_out, c_out, 3)
        # a 1x1 conv only when the channel count changes; identity otherwise
        self.skip = conv_nd(dims, c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Apply the block; ``emb`` [B, emb_dim] is required when the block was built with one."""
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb_proj is not None:
            if emb is None:
                raise ValueError("this ResBlock was built with a time embedding; pass emb")
            e = self.emb_proj(F.silu(emb))
            h = h + e.reshape(*e.shape, *([1] * (h.ndim - 2)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all voxels: GN, qkv 1x1 conv, SDPA, proj 1x1; residual."""

    def __init__(
        self, dims: int, channels: int, *, num_heads: int = 4, groups: int = 8, norm: str = "group"
    ) -> None:
        super().__init__()
        heads = math.gcd(num_heads, channels)  # never fails on odd channel counts
        self.num_heads = heads
        self.norm = norm_layer(channels, groups, norm)
        self.qkv = conv_nd(dims, channels, 3 * channels, 1)
        self.proj = conv_nd(dims, channels, channels, 1)

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        """Attend over the flattened spatial axes; ``emb`` is accepted and ignored."""
        b, c, *spatial = x.shape
        n, heads = math.prod(spatial), self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(b, 3, heads, c // heads, n)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))  # [B, heads, N, d]
        h = F.scaled_dot_product_attention(q, k, v)
        h = h.transpose(-1, -2).reshape(b, c, *spatial)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Halve every spatial size with a stride-2 3x3 conv."""

    def __init__(self, dims: int, c_in: int, c_out: int | None = None) -> None:
        super().__init__()
        self.conv = conv_nd(dims, c_in, c_out or c_in, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``x`` by 2."""
        return self.conv(x)


class Upsample(nn.Module):
    """Double every spatial size: nearest-neighbour interpolation, then a 3x3 conv."""

    def __init__(self, dims: int, c_in: int, c_out: int | None = None) -> None:
        super().__init__()
        self.conv = conv_nd(dims, c_in, c_out or c_in, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` by 2."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class OutputHead(nn.Module):
    """GN → SiLU → 3x3 conv to ``c_out`` channels, zero- or small-initialised on request."""

    def __init__(
        self,
        dims: int,
        c_in: int,
        c_out: int,
        *,
        groups: int = 8,
        norm: str = "group",
        zero_init_out: bool = False,
        out_init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.norm = norm_layer(c_in, groups, norm)
        self.conv = conv_nd(dims, c_in, c_out, 3)
        if out_init_std is not None:
            # tiny random weights (VoxelMorph style): near-identity warps yet non-zero gradients
            nn.init.normal_(self.conv.weight, std=out_init_std)
            nn.init.zeros_(self.conv.bias)
        elif zero_init_out:
            zero_init(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        """Map features to the output channels."""
        return self.conv(F.silu(self.norm(x)))


def spatial_multiple(levels: int) -> int:
    """The factor every spatial size must be divisible by for ``levels`` resolution levels."""
    return 2 ** max(levels - 1, 0)


def check_spatial(x: Tensor, dims: int, multiple: int, what: str = "input") -> None:
    """Raise ValueError unless ``x`` is [B, C, *spatial] with sizes divisible by ``multiple``."""
    if x.ndim != dims + 2:
        raise ValueError(
            f"{what} must be [B, C, {', '.join('XYZ'[:dims])}] for dims={dims}, "
            f"got shape {tuple(x.shape)}"
        )
    spatial = tuple(x.shape[2:])
    if any(s % multiple for s in spatial):
        raise ValueError(
            f"{what} spatial shape {spatial} is not divisible by {multiple} "
            f"(required by the network's downsampling levels); pad it, e.g. with "
            f"synthbrain.nets.pad_to_multiple(x, {multiple}), and unpad the result"
        )


def pad_to_multiple(
    x: Tensor, multiple: int, *, mode: str = "constant", value: float = 0.0
) -> tuple[Tensor, tuple[tuple[int, int], ...]]:
    """Pad the spatial axes of ``x`` [B, C, *spatial] up to a multiple of ``multiple``.

    Args:
        x: tensor with batch and channel axes first.
        multiple: every spatial size of the result is divisible by it.
        mode: ``torch.nn.functional.pad`` mode ("constant", "replicate", "reflect").
        value: fill value for mode="constant" (0 matches the skull-stripped background).

    Returns:
        (padded, pad) where pad holds (before, after) per spatial axis; ``unpad(padded, pad)``
        gives ``x`` back. The padding is split evenly, the odd voxel going after.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be ≥ 1, got {multiple}")
    pad = []
    for s in x.shape[2:]:
        total = (-s) % multiple
        pad.append((total // 2, total - total // 2))
    flat: list[int] = []
    for before, after in reversed(pad):  # F.pad wants the last axis first
        flat += [before, after]
    if not any(flat):
        return x, tuple(pad)
    kw = {"value": value} if mode == "constant" else {}
    return F.pad(x, flat, mode=mode, **kw), tuple(pad)


def unpad(x: Tensor, pad: Sequence[Sequence[int]]) -> Tensor:
    """Undo ``pad_to_multiple``: crop (before, after) voxels from each spatial axis."""
    index = [slice(None), slice(None)]
    for (before, after), s in zip(pad, x.shape[2:], strict=True):
        index.append(slice(before, s - after))
    return x[tuple(index)]
