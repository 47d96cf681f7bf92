"""PatchGAN discriminator (pix2pix / latent-diffusion style) and hinge losses, 2-D or 3-D.

Optional adversarial term for the autoencoder: sharper reconstructions than L1 + SSIM alone.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from synthbrain.nets.layers import check_dims, conv_nd, norm_layer


class PatchDiscriminator(nn.Module):
    """Fully convolutional critic returning one logit per patch.

    Args:
        dims: 2 or 3.
        in_channels: image channels.
        base_channels: width of the first conv; doubles per stride-2 layer (capped at 8x).
        n_layers: stride-2 layers (4x4 kernels); inputs should be at least 2**(n_layers + 1)
            voxels per axis so the logit map is not empty.
        groups: GroupNorm groups (batch-size independent, unlike pix2pix's BatchNorm).
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        *,
        base_channels: int = 32,
        n_layers: int = 3,
        groups: int = 8,
    ) -> None:
        super().__init__()
        check_dims(dims)
        layers: list[nn.Module] = [
            conv_nd(dims, in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        ch = base_channels
        for i in range(1, n_layers):
            nxt = base_channels * min(2**i, 8)
            layers += [
                conv_nd(dims, ch, nxt, 4, stride=2, padding=1),
                norm_layer(nxt, groups),
                nn.LeakyReLU(0.2),
            ]
            ch = nxt
        nxt = base_channels * min(2**n_layers, 8)
        layers += [conv_nd(dims, ch, nxt, 3), norm_layer(nxt, groups), nn.LeakyReLU(0.2)]
        layers.append(conv_nd(dims, nxt, 1, 3))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits [B, 1, *spatial / 2**n_layers]."""
        return self.layers(x)


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """Discriminator hinge loss: ½ (E[relu(1 − D(real))] + E[relu(1 + D(fake))])."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """Generator (autoencoder) adversarial loss: −E[D(fake)]."""
    return -logits_fake.mean()
