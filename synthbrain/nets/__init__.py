"""Networks, 2-D or 3-D by argument: U-Net, KL autoencoder, spatial transformer.

See docs/networks.md for the default configurations, their sizes and their speed.
"""

from synthbrain.nets.autoencoder import DiagonalGaussian, KLAutoencoder, autoencoder_loss
from synthbrain.nets.configs import (
    ENGINE_BUDGET_BYTES,
    NetConfig,
    build_net,
    count_params,
    default_configs,
    engine_bytes_fp16,
)
from synthbrain.nets.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss
from synthbrain.nets.layers import pad_to_multiple, unpad
from synthbrain.nets.sliding import sliding_apply
from synthbrain.nets.ssim import ssim
from synthbrain.nets.unet import UNet
from synthbrain.nets.warp import (
    compose,
    integrate_velocity,
    jacobian_determinant,
    smoothness,
    warp,
)

__all__ = [
    "ENGINE_BUDGET_BYTES",
    "DiagonalGaussian",
    "KLAutoencoder",
    "NetConfig",
    "PatchDiscriminator",
    "UNet",
    "autoencoder_loss",
    "build_net",
    "compose",
    "count_params",
    "default_configs",
    "engine_bytes_fp16",
    "hinge_d_loss",
    "hinge_g_loss",
    "integrate_velocity",
    "jacobian_determinant",
    "pad_to_multiple",
    "sliding_apply",
    "smoothness",
    "ssim",
    "unpad",
    "warp",
]
