"""Wide-ResNet U-Net, 2-D or 3-D, with optional time embedding, attention and several output heads.

One class serves every engine: the PathoSyn denoiser ε_θ([r_t, x_sub, m], t) and its plain substrate
net f_sub (METHODS.md §1, Eq. 3 and 6–10), the USB latent denoisers ε^x_θ, ε^y_θ (§2, Eq. 10–11),
and D3M's dual-stream denoiser plus its deformation net U (§3).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthbrain.nets.layers import (
    AttentionBlock,
    Downsample,
    OutputHead,
    ResBlock,
    TimeEmbedding,
    Upsample,
    check_dims,
    check_spatial,
    conv_nd,
    spatial_multiple,
)


def _resolve_levels(levels: Sequence[int], n: int) -> set[int]:
    """Turn possibly negative level indices into a set of non-negative ones, checking range."""
    out = set()
    for i in levels:
        if not -n <= i < n:
            raise ValueError(f"attention level {i} out of range for {n} levels")
        out.add(i % n)
    return out


class _Skip(nn.Module):
    """Marker in the encoder list: store the current features as a skip connection."""

    def forward(self, x: Tensor) -> Tensor:
        """Identity."""
        return x


def _encoder(
    dims: int, widths: list[int], num_res_blocks: int, attn: set[int], blk: dict
) -> nn.ModuleList:
    """Down path: per level ResBlocks (+ attention), a skip marker after each, then downsample."""
    layers = nn.ModuleList()
    ch = widths[0]
    for level, width in enumerate(widths):
        for _ in range(num_res_blocks):
            layers.append(ResBlock(dims, ch, width, **blk["res"]))
            ch = width
            if level in attn:
                layers.append(AttentionBlock(dims, ch, **blk["attn"]))
            layers.append(_Skip())
        if level < len(widths) - 1:
            layers.append(Downsample(dims, ch))
    return layers


class _Decoder(nn.Module):
    """Up path: per level (coarse → fine) ResBlocks over [h, skip], optional attention, upsample."""

    def __init__(
        self, dims: int, widths: list[int], num_res_blocks: int, attn: set[int], blk: dict
    ) -> None:
        super().__init__()
        self.levels = nn.ModuleList()
        ch = widths[-1]
        for level in reversed(range(len(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(dims, ch + widths[level], widths[level], **blk["res"]))
                ch = widths[level]
                if level in attn:
                    blocks.append(AttentionBlock(dims, ch, **blk["attn"]))
            if level > 0:
                blocks.append(Upsample(dims, ch))
            self.levels.append(blocks)

    def forward(self, h: Tensor, skips: list[Tensor], emb: Tensor | None) -> Tensor:
        """Consume ``skips`` (finest first) from the end; returns finest-level features."""
        skips = list(skips)
        for blocks in self.levels:
            for block in blocks:
                if isinstance(block, ResBlock):
                    h = block(torch.cat([h, skips.pop()], dim=1), emb)
                else:
                    h = block(h)
        return h


class UNet(nn.Module):
    """Wide-ResNet U-Net for 2-D or 3-D inputs.

    Args:
        dims: 2 or 3 spatial dimensions.
        in_channels: channels of ``x`` plus those of ``cond`` (concatenated on channels).
        out_channels: an int for one output tensor, or a sequence for several heads (a tuple of
            tensors is returned, one per head, in order).
        base_channels: width of the first level; level i has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per resolution level; there are ``len(channel_mults) - 1``
            stride-2 downsamplings, so spatial sizes must be divisible by ``2**(len - 1)``.
        num_res_blocks: ResBlocks per level in the encoder and in each decoder.
        attention_levels: level indices (negative counts from the coarsest) that get
            self-attention after each ResBlock.
        groups: GroupNorm groups (reduced automatically where a channel count is not divisible).
        norm: "group" (GroupNorm, default), "channel" (per-voxel LayerNorm) or "none".
        dropout: dropout before the second conv of every ResBlock.
        time_embedding: False builds a plain U-Net (``t`` is ignored), e.g. PathoSyn's f_sub or
            D3M's deformation net U.
        separate_decoders: with several heads, give each head its own decoder over the shared
            encoder and middle block (D3M's dual-stream decoder); else one shared decoder and one
            output conv per head.
        num_heads: attention heads (reduced to a divisor of the channel count if needed).
        middle_attention: attention between the two middle ResBlocks; None → on when
            ``attention_levels`` is non-empty.
        zero_init_out: zero the output convs (the net starts by predicting 0: common for diffusion).
        out_init_std: if given, output convs start from N(0, std²) weights instead (small warps).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        out_channels: int | Sequence[int],
        *,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: Sequence[int] = (-1,),
        groups: int = 8,
        norm: str = "group",
        dropout: float = 0.0,
        time_embedding: bool = True,
        separate_decoders: bool = False,
        num_heads: int = 4,
        middle_attention: bool | None = None,
        zero_init_out: bool = True,
        out_init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.dims = check_dims(dims)
        self.in_channels = in_channels
        self.multi_head = not isinstance(out_channels, int)
        self.out_channels = tuple(out_channels) if self.multi_head else (out_channels,)
        if not self.out_channels or min(self.out_channels) < 1 or num_res_blocks < 1:
            raise ValueError("out_channels must be ≥ 1 per head and num_res_blocks ≥ 1")
        widths = [base_channels * m for m in channel_mults]
        self.multiple = spatial_multiple(len(widths))
        attn = _resolve_levels(attention_levels, len(widths))
        middle_attention = bool(attn) if middle_attention is None else middle_attention

        emb_dim = 4 * base_channels if time_embedding else None
        self.time_embed = TimeEmbedding(base_channels, emb_dim) if time_embedding else None
        blk = {
            "res": {"emb_dim": emb_dim, "groups": groups, "dropout": dropout, "norm": norm},
            "attn": {"num_heads": num_heads, "groups": groups, "norm": norm},
        }
        self.stem = conv_nd(dims, in_channels, widths[0], 3)
        self.encoder = _encoder(dims, widths, num_res_blocks, attn, blk)
        middle = [ResBlock(dims, widths[-1], widths[-1], **blk["res"])]
        if middle_attention:
            middle.append(AttentionBlock(dims, widths[-1], **blk["attn"]))
        middle.append(ResBlock(dims, widths[-1], widths[-1], **blk["res"]))
        self.middle = nn.ModuleList(middle)

        n_dec = len(self.out_channels) if separate_decoders else 1
        self.separate_decoders = separate_decoders and n_dec > 1
        self.decoders = nn.ModuleList(
            _Decoder(dims, widths, num_res_blocks, attn, blk) for _ in range(n_dec)
        )
        head = {
            "groups": groups,
            "norm": norm,
            "zero_init_out": zero_init_out,
            "out_init_std": out_init_std,
        }
        self.heads = nn.ModuleList(
            OutputHead(dims, widths[0], c, **head) for c in self.out_channels
        )

    def _embed(self, t: Tensor | float | None, batch: int, device: torch.device) -> Tensor | None:
        """Time embedding [B, emb] (None for a plain U-Net); a scalar t is broadcast."""
        if self.time_embed is None:
            return None
        if t is None:
            raise ValueError("this UNet has a time embedding: pass t (timesteps [B])")
        t = torch.as_tensor(t, device=device)
        if t.ndim == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must be a scalar or shape [{batch}], got {tuple(t.shape)}")
        return self.time_embed(t)

    def _encode(self, x: Tensor, emb: Tensor | None) -> tuple[Tensor, list[Tensor]]:
        """Encoder + middle block; returns the coarsest features and the skips (finest first)."""
        h, skips = self.stem(x), []
        for block in self.encoder:
            if isinstance(block, _Skip):
                skips.append(h)
            elif isinstance(block, ResBlock):
                h = block(h, emb)
            else:
                h = block(h)
        for block in self.middle:
            h = block(h, emb)
        return h, skips

    def forward(
        self, x: Tensor, t: Tensor | float | None = None, cond: Tensor | None = None
    ) -> Tensor | tuple[Tensor, ...]:
        """Run the network.

        Args:
            x: input [B, C_x, *spatial]; spatial sizes divisible by ``self.multiple``.
            t: timesteps [B] (long or float) or a scalar; ignored when time_embedding=False.
            cond: optional conditioning [B, C_c, *spatial], concatenated to ``x`` on channels.

        Returns:
            one tensor [B, out_channels, *spatial], or a tuple with one tensor per head.
        """
        if cond is not None:
            x = torch.cat([x, cond], dim=1)
        check_spatial(x, self.dims, self.multiple, "UNet input")
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects {self.in_channels} channels (x and cond together), got {x.shape[1]}"
            )
        emb = self._embed(t, x.shape[0], x.device)
        h, skips = self._encode(x, emb)
        if self.separate_decoders:
            outs = tuple(
                head(dec(h, skips, emb))
                for dec, head in zip(self.decoders, self.heads, strict=True)
            )
        else:
            feats = self.decoders[0](h, skips, emb)
            outs = tuple(head(feats) for head in self.heads)
        return outs if self.multi_head else outs[0]
