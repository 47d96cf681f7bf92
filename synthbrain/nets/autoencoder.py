"""KL-regularised autoencoder (latent-diffusion style), 2-D or 3-D, for USB's latent space (§2)."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthbrain.nets.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    check_dims,
    check_spatial,
    conv_nd,
    norm_layer,
    spatial_multiple,
)
from synthbrain.nets.sliding import sliding_apply
from synthbrain.nets.ssim import ssim


class DiagonalGaussian:
    """Posterior q(z | x) = N(mean, diag(exp(logvar))) returned by ``KLAutoencoder.encode``."""

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        self.mean = mean
        # the clamp keeps exp() finite early in training (as in latent diffusion)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Draw z = mean + std · ε with ε from ``generator``."""
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        """The posterior mean (deterministic encoding)."""
        return self.mean

    def kl(self) -> Tensor:
        """KL(q ‖ N(0, I)) per batch element [B], summed over channels and voxels."""
        kl = 0.5 * (self.mean**2 + torch.exp(self.logvar) - 1.0 - self.logvar)
        return kl.flatten(1).sum(1)


def _res_stack(dims: int, c_in: int, c_out: int, n: int, nk: dict) -> list[nn.Module]:
    """``n`` ResBlocks (no time embedding) taking ``c_in`` to ``c_out`` channels."""
    return [ResBlock(dims, c_in if i == 0 else c_out, c_out, **nk) for i in range(n)]


def _middle(dims: int, ch: int, nk: dict, attention: bool) -> list[nn.Module]:
    """Middle block: ResBlock, optional attention, ResBlock."""
    attn = [AttentionBlock(dims, ch, **nk)] if attention else []
    return [ResBlock(dims, ch, ch, **nk), *attn, ResBlock(dims, ch, ch, **nk)]


def _out(dims: int, ch: int, c_out: int, nk: dict) -> list[nn.Module]:
    """Final norm, SiLU and 3x3 conv."""
    return [norm_layer(ch, nk["groups"], nk["norm"]), nn.SiLU(), conv_nd(dims, ch, c_out, 3)]


class Encoder(nn.Module):
    """x [B, C, *S] → moments [B, 2·latent, *S/f] (mean and log-variance stacked on channels)."""

    def __init__(self, dims, in_channels, latent_channels, widths, num_res_blocks, nk, attention):
        super().__init__()
        layers: list[nn.Module] = [conv_nd(dims, in_channels, widths[0], 3)]
        ch = widths[0]
        for level, width in enumerate(widths):
            layers += _res_stack(dims, ch, width, num_res_blocks, nk)
            ch = width
            if level < len(widths) - 1:
                layers.append(Downsample(dims, ch))
        layers += _middle(dims, ch, nk, attention) + _out(dims, ch, 2 * latent_channels, nk)
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Encode to stacked (mean, logvar)."""
        return self.layers(x)


class Decoder(nn.Module):
    """z [B, latent, *S/f] → reconstruction [B, C, *S]."""

    def __init__(self, dims, out_channels, latent_channels, widths, num_res_blocks, nk, attention):
        super().__init__()
        ch = widths[-1]
        layers: list[nn.Module] = [conv_nd(dims, latent_channels, ch, 3)]
        layers += _middle(dims, ch, nk, attention)
        for level in reversed(range(len(widths))):
            layers += _res_stack(dims, ch, widths[level], num_res_blocks, nk)
            ch = widths[level]
            if level > 0:
                # the upsampling conv already narrows to the finer level: at full resolution it
                # is the costliest layer, so this halves the decoder's work there
                layers.append(Upsample(dims, ch, widths[level - 1]))
                ch = widths[level - 1]
        layers += _out(dims, ch, out_channels, nk)
        self.layers = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """Decode a latent."""
        return self.layers(z)


class KLAutoencoder(nn.Module):
    """KL autoencoder: encoder → DiagonalGaussian posterior → decoder.

    Args:
        dims: 2 or 3.
        in_channels: image channels (reconstructed channels are the same).
        latent_channels: channels of the latent z.
        base_channels: width of the first level; level i has ``base_channels * channel_mults[i]``.
        channel_mults: one per level; ``len - 1`` stride-2 downsamplings, so (1, 2, 4) gives a
            latent 4x smaller per axis, and inputs must be divisible by that factor.
        num_res_blocks: ResBlocks per level in encoder and decoder.
        groups: GroupNorm groups (norm="group").
        norm: "channel" (default: per-voxel LayerNorm, so slabs see the statistics the whole
            volume would and ``encode_sliding`` matches ``encode`` once the overlap covers the
            receptive field), "group" (GroupNorm as in latent diffusion; slab statistics then
            differ from the whole volume's) or "none".
        attention: self-attention in the middle blocks (costly on 3-D latents; off by default).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        latent_channels: int = 4,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2, 4),
        *,
        num_res_blocks: int = 1,
        groups: int = 8,
        norm: str = "channel",
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.dims = check_dims(dims)
        self.in_channels, self.latent_channels = in_channels, latent_channels
        self.factor = spatial_multiple(len(channel_mults))
        widths = [base_channels * m for m in channel_mults]
        nk = {"groups": groups, "norm": norm}
        args = (latent_channels, widths, num_res_blocks, nk, attention)
        self.encoder = Encoder(dims, in_channels, *args)
        self.decoder = Decoder(dims, in_channels, *args)

    def _moments(self, x: Tensor) -> Tensor:
        """Checked encoder pass returning stacked (mean, logvar)."""
        check_spatial(x, self.dims, self.factor, "autoencoder input")
        return self.encoder(x)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Posterior over z for ``x`` [B, C, *spatial] (sizes divisible by ``self.factor``)."""
        mean, logvar = self._moments(x).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor) -> Tensor:
        """Reconstruct images from latents ``z`` [B, latent_channels, *spatial / factor]."""
        check_spatial(z, self.dims, 1, "latent")
        return self.decoder(z)

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, *, sample: bool = True
    ) -> tuple[Tensor, DiagonalGaussian]:
        """Encode, draw z (or take the mean when sample=False), decode → (recon, posterior)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    def encode_sliding(
        self, x: Tensor, slab: int, overlap: int, *, margin: int | None = None
    ) -> DiagonalGaussian:
        """``encode`` in slabs of ``slab`` voxels along the last axis, overlapping by ``overlap``.

        slab and overlap are in image voxels, multiples of ``self.factor``; ``margin`` (latent
        voxels, default overlap / (4 · factor)) is discarded next to each inner slab edge and
        the rest of the overlap cross-fades (``sliding_apply``). With norm="channel" the result
        equals ``encode(x)`` once margin · factor covers the encoder's receptive radius
        (docs/networks.md); with GroupNorm the slab statistics differ and it only approximates.
        """
        check_spatial(x, self.dims, self.factor, "autoencoder input")
        moments = sliding_apply(
            self._moments,
            x,
            slab,
            overlap,
            scale=Fraction(1, self.factor),
            align=self.factor,
            margin=margin,
        )
        mean, logvar = moments.chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def decode_sliding(
        self, z: Tensor, slab: int, overlap: int, *, margin: int | None = None
    ) -> Tensor:
        """``decode`` in slabs of ``slab`` latent voxels along the last axis.

        ``overlap`` is in latent voxels, ``margin`` in output voxels (default overlap · factor
        / 4); exact (norm="channel") once margin covers the decoder's receptive radius.
        """
        check_spatial(z, self.dims, 1, "latent")
        return sliding_apply(self.decoder, z, slab, overlap, scale=self.factor, margin=margin)


def autoencoder_loss(
    x: Tensor,
    recon: Tensor,
    posterior: DiagonalGaussian,
    *,
    kl_weight: float = 1e-6,
    ssim_weight: float = 0.2,
    data_range: float = 1.0,
) -> dict[str, Tensor]:
    """Reconstruction + structure + KL loss of the autoencoder.

    loss = L1(x, recon) + ssim_weight · (1 − SSIM(recon, x)) + kl_weight · KL, where KL is the
    per-sample sum averaged over the batch (latent-diffusion convention). Returns a dict with
    "loss" (differentiable) and the parts "l1", "ssim" (the similarity, not 1 − it) and "kl".
    """
    l1 = F.l1_loss(recon, x)
    s = ssim(recon, x, data_range=data_range)
    kl = posterior.kl().mean()
    loss = l1 + ssim_weight * (1.0 - s) + kl_weight * kl
    return {"loss": loss, "l1": l1, "ssim": s, "kl": kl}
