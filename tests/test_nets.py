"""Tests of synthbrain.nets: U-Net, KL autoencoder, SSIM, sliding encode/decode, warp, configs."""

from __future__ import annotations

import contextlib
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from synthbrain.nets import (
    ENGINE_BUDGET_BYTES,
    KLAutoencoder,
    PatchDiscriminator,
    UNet,
    autoencoder_loss,
    compose,
    count_params,
    default_configs,
    engine_bytes_fp16,
    hinge_d_loss,
    hinge_g_loss,
    integrate_velocity,
    jacobian_determinant,
    pad_to_multiple,
    sliding_apply,
    smoothness,
    ssim,
    unpad,
    warp,
)
from synthbrain.nets.autoencoder import DiagonalGaussian
from synthbrain.nets.layers import AttentionBlock

DOCS = Path(__file__).resolve().parents[1] / "docs" / "networks.md"
SIZE = {2: (16, 24), 3: (16, 16, 24)}  # non-cubic on purpose: catches swapped axes


def gen(seed: int = 0) -> torch.Generator:
    """A seeded CPU generator."""
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int = 0):
    """Seeded parameter initialisation that leaves the global RNG state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    """Reproducible uniform noise."""
    return torch.rand(*shape, generator=gen(seed))


def tiny_unet(dims: int, in_ch: int = 2, out=1, **kw) -> UNet:
    """A small U-Net for tests (base 8, two levels)."""
    kw = {"base_channels": 8, "channel_mults": (1, 2), "num_heads": 2, **kw}
    return UNet(dims, in_ch, out, **kw)


# ---------------------------------------------------------------- U-Net


@pytest.mark.parametrize("dims", [2, 3])
def test_unet_shapes_with_time_and_cond(dims):
    net = tiny_unet(dims, in_ch=3, out=2).eval()
    x, c = rand(2, 1, *SIZE[dims]), rand(2, 2, *SIZE[dims], seed=1)
    t = torch.tensor([3, 700])
    assert net(x, t, cond=c).shape == (2, 2, *SIZE[dims])
    assert net(torch.cat([x, c], 1), t).shape == (2, 2, *SIZE[dims])
    assert net(x, 5, cond=c).shape == (2, 2, *SIZE[dims])  # scalar t broadcast
    with pytest.raises(ValueError, match="pass t"):
        net(x, cond=c)
    with pytest.raises(ValueError, match="expects 3 channels"):
        net(x, t)


@pytest.mark.parametrize("dims", [2, 3])
def test_plain_unet_ignores_t(dims):
    net = tiny_unet(dims, time_embedding=False, attention_levels=(), zero_init_out=False).eval()
    x = rand(1, 2, *SIZE[dims])
    y = net(x)
    assert y.shape == (1, 1, *SIZE[dims])
    assert torch.equal(y, net(x, torch.tensor([999])))
    assert net.time_embed is None


def test_time_embedding_changes_output():
    net = tiny_unet(2, zero_init_out=False).eval()
    x = rand(1, 2, 16, 16)
    assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([500])))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("separate", [False, True])
def test_multi_head(dims, separate):
    net = tiny_unet(dims, out=(1, 3), separate_decoders=separate, zero_init_out=False).eval()
    a, b = net(rand(2, 2, *SIZE[dims]), torch.tensor([1, 2]))
    assert a.shape == (2, 1, *SIZE[dims]) and b.shape == (2, 3, *SIZE[dims])
    assert len(net.decoders) == (2 if separate else 1) and len(net.heads) == 2


def test_separate_decoders_are_independent():
    with seeded():
        net = tiny_unet(2, out=(1, 1), separate_decoders=True, zero_init_out=False).eval()
    x, t = rand(1, 2, 16, 16), torch.tensor([10])
    a0, b0 = net(x, t)
    with torch.no_grad():
        for p in net.decoders[1].parameters():
            p.add_(0.1)
    a1, b1 = net(x, t)
    assert torch.equal(a0, a1)  # head 0 sees only the shared encoder and its own decoder
    assert not torch.allclose(b0, b1)


@pytest.mark.parametrize("dims", [2, 3])
def test_indivisible_shape_raises_clear_error(dims):
    net = tiny_unet(dims, channel_mults=(1, 2, 2))  # needs multiples of 4
    bad = (*SIZE[dims][:-1], 18)
    with pytest.raises(ValueError, match=r"not divisible by 4") as info:
        net(rand(1, 2, *bad), torch.tensor([1]))
    assert str(bad) in str(info.value) and "pad_to_multiple" in str(info.value)
    with pytest.raises(ValueError, match="must be"):
        net(rand(2, *SIZE[dims]), torch.tensor([1]))  # missing channel axis


@pytest.mark.parametrize("shape", [(1, 2, 13, 18), (2, 1, 9, 16, 7)])
def test_pad_unpad_round_trip(shape):
    x = rand(*shape)
    padded, pad = pad_to_multiple(x, 8)
    assert all(s % 8 == 0 for s in padded.shape[2:])
    assert all(b <= a <= b + 1 for b, a in pad)  # split evenly, odd voxel after
    assert torch.equal(unpad(padded, pad), x)
    dims = x.ndim - 2
    net = tiny_unet(dims, in_ch=shape[1], channel_mults=(1, 2, 2, 2), attention_levels=())
    y = unpad(net(padded, torch.tensor([1] * shape[0])), pad)
    assert y.shape == (shape[0], 1, *shape[2:])


def test_attention_block_matches_reference():
    with seeded():
        blk = AttentionBlock(2, 8, num_heads=2, groups=4)
    x = rand(2, 8, 4, 6)
    h = blk.norm(x)
    q, k, v = blk.qkv(h).reshape(2, 3, 2, 4, 24).unbind(1)  # [B, heads, d, N]
    w = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(4), dim=-1)
    out = torch.einsum("bhnm,bhdm->bhdn", w, v).reshape(2, 8, 4, 6)
    assert torch.allclose(blk(x), x + blk.proj(out), atol=1e-5)


@pytest.mark.parametrize("dims", [2, 3])
def test_gradients_reach_every_parameter(dims):
    net = tiny_unet(dims, out=(1, 1), attention_levels=(0, -1), zero_init_out=False)
    assert sum(isinstance(m, AttentionBlock) for m in net.modules()) == 5  # 2 enc, 1 mid, 2 dec
    a, b = net(rand(2, 2, *(8,) * dims), torch.tensor([3, 9]))  # attention at full resolution
    (a.square().mean() + b.square().mean()).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_zero_init_out_starts_at_zero_and_still_learns():
    net = tiny_unet(2)
    y = net(rand(1, 2, 16, 16), torch.tensor([4]))
    assert not y.abs().sum()
    (y - 1).square().mean().backward()
    assert net.heads[0].conv.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- autoencoder, SSIM, sliding


@pytest.mark.parametrize("dims", [2, 3])
def test_autoencoder_shapes_and_loss(dims):
    ae = KLAutoencoder(dims, 1, latent_channels=3, base_channels=8)
    x = rand(2, 1, *SIZE[dims])
    post = ae.encode(x)
    assert post.mean.shape == (2, 3, *(s // 4 for s in SIZE[dims]))
    recon, post = ae(x, gen(1))
    assert recon.shape == x.shape
    assert torch.equal(post.sample(gen(5)), post.sample(gen(5)))
    assert torch.equal(ae(x, sample=False)[0], ae.decode(post.mode()))
    losses = autoencoder_loss(x, recon, post)
    assert set(losses) == {"loss", "l1", "ssim", "kl"}
    losses["loss"].backward()
    assert ae.encoder.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible by 4"):
        ae.encode(rand(1, 1, *SIZE[dims][:-1], 10))


def test_diagonal_gaussian_kl_matches_torch():
    mean, logvar = rand(2, 3, 4, 4) - 0.5, rand(2, 3, 4, 4, seed=1) - 0.5
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    ref = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(DiagonalGaussian(mean, logvar).kl(), ref, atol=1e-5)


def _ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM as scikit-image computes it (Gaussian σ 1.5, truncate 3.5, borders cropped)."""
    filt = lambda z: ndimage.gaussian_filter(z, 1.5, truncate=3.5)  # noqa: E731
    mu_a, mu_b = filt(a), filt(b)
    va, vb = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2))
    return float(s[(slice(5, -5),) * a.ndim].mean())


@pytest.mark.parametrize("shape", [(24, 28), (16, 18, 20)])
def test_ssim_matches_reference(shape):
    a = rand(*shape).double()
    b = (a + 0.2 * rand(*shape, seed=1).double()).clamp(0, 1)
    ours = ssim(a[None, None], b[None, None])
    assert ours.item() == pytest.approx(_ssim_reference(a.numpy(), b.numpy()), abs=1e-8)
    assert ssim(a[None, None], a[None, None]).item() == pytest.approx(1.0)
    same = ssim(a[None, None], b[None, None], padding="same", reduction="map")
    assert same.shape == (1, 1, *shape)


def test_sliding_apply_is_exact_for_a_local_net():
    with seeded():
        conv = torch.nn.Conv3d(1, 2, 5, padding=2)  # receptive radius 2, then /4 pooling
    fn = lambda v: F.avg_pool3d(conv(v), 4)  # noqa: E731
    x = rand(1, 1, 8, 8, 64)
    out = sliding_apply(fn, x, slab=24, overlap=16, scale=Fraction(1, 4), align=4)
    assert torch.allclose(out, fn(x), atol=1e-6)  # margin 1 latent = 4 voxels ≥ radius 2
    up = lambda z: conv(F.interpolate(z, scale_factor=4.0))  # noqa: E731
    z = rand(1, 1, 4, 4, 20)
    assert torch.allclose(sliding_apply(up, z, 8, 4, scale=4), up(z), atol=1e-6)
    with pytest.raises(ValueError, match="multiples of 4"):
        sliding_apply(fn, x, slab=22, overlap=8, scale=Fraction(1, 4), align=4)


def _reach(fn, inp: torch.Tensor, out_index: int) -> tuple[int, int]:
    """(first, last) index on the last axis of ``inp`` that output ``out_index`` depends on."""
    inp = inp.clone().requires_grad_(True)
    fn(inp)[..., out_index].sum().backward()
    hit = (inp.grad.flatten(0, -2).abs().sum(0) > 0).nonzero().flatten()
    return int(hit.min()), int(hit.max())


def test_sliding_autoencoder_exact_when_margin_covers_receptive_field():
    with seeded():
        ae = KLAutoencoder(3, 1, latent_channels=2, base_channels=8, norm="channel").eval()
    x = rand(1, 1, 8, 8, 224)
    lo, hi = _reach(ae._moments, x[..., :160], 20)  # latent 20 ↔ voxels 80..83
    enc_margin = math.ceil(max(80 - lo, hi - 83) / 4)  # latent voxels
    z = ae.encode(x).mean.detach()
    reach = [_reach(ae.decoder, z[..., :40], p) for p in range(80, 84)]
    dec_margin = max(
        max(p - 4 * a, 4 * b + 3 - p) for p, (a, b) in zip(range(80, 84), reach, strict=True)
    )
    with torch.no_grad():
        whole = ae.encode(x).mean
        enc_overlap = 8 * enc_margin + 16  # input voxels: two margins and a ramp
        slid = ae.encode_sliding(x, 128, enc_overlap, margin=enc_margin).mean
        assert (slid - whole).abs().max() <= 1e-5 * whole.abs().max()
        rough = ae.encode_sliding(x, 32, 16).mean  # margin 1 latent: far below the radius
        assert (rough - whole).abs().max() > 1e-3 * whole.abs().max()
        dec = ae.decode(z)
        dec_overlap = math.ceil(dec_margin / 2) + 4  # latent voxels
        dec_slid = ae.decode_sliding(z, dec_overlap + 8, dec_overlap, margin=dec_margin)
        assert (dec_slid - dec).abs().max() <= 1e-5 * dec.abs().max()


def test_sliding_groupnorm_autoencoder_single_slab_is_encode():
    ae = KLAutoencoder(2, 1, latent_channels=2, base_channels=8, norm="group").eval()
    x = rand(1, 1, 16, 32)
    with torch.no_grad():
        assert torch.equal(ae.encode_sliding(x, 32, 0).mean, ae.encode(x).mean)
        assert ae.encode_sliding(x, 16, 8).mean.shape == (1, 2, 4, 8)


@pytest.mark.parametrize("dims", [2, 3])
def test_patch_discriminator_and_hinge(dims):
    disc = PatchDiscriminator(dims, 1, base_channels=8, n_layers=2)
    logits = disc(rand(2, 1, *(32,) * dims))
    assert logits.shape == (2, 1, *(8,) * dims)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 0.5))
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)


# ---------------------------------------------------------------- warp


@pytest.mark.parametrize("dims", [2, 3])
def test_zero_field_is_identity(dims):
    img = rand(2, 3, *SIZE[dims])
    zero = torch.zeros(2, dims, *SIZE[dims])
    assert torch.equal(warp(img, zero), img)
    assert (warp(img, zero, exact=False) - img).abs().max() <= 1e-5  # float32 coordinate rounding


@pytest.mark.parametrize("dims", [2, 3])
def test_integer_shift_equals_roll(dims):
    img = rand(1, 2, *SIZE[dims])
    for axis in range(dims):
        for k in (1, -3):
            u = torch.zeros(1, dims, *SIZE[dims])
            u[:, axis] = k
            ref = torch.roll(img, -k, dims=2 + axis)  # out(p) = img(p + k)
            inner = [slice(None), slice(None)] + [slice(3, -3)] * dims
            got = warp(img, u)[tuple(inner)]
            assert torch.equal(got, ref[tuple(inner)]), (axis, k)


def test_half_shift_interpolates_and_nearest_keeps_labels():
    img = rand(1, 1, 8, 10)
    u = torch.zeros(1, 2, 8, 10)
    u[:, 1] = 0.5
    ref = 0.5 * (img[..., :-1] + img[..., 1:])
    assert torch.allclose(warp(img, u)[..., :-1], ref, atol=1e-6)
    labels = torch.randint(0, 4, (2, 1, 8, 10), generator=gen()).float()
    out = warp(labels, 2.3 * rand(1, 2, 8, 10), mode="nearest")  # batch-1 field broadcasts
    assert out.shape == labels.shape and set(out.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_smoothness():
    assert smoothness(torch.full((1, 3, 6, 7, 8), 2.5)).item() == 0.0
    u = torch.zeros(1, 2, 8, 9)
    u[:, 0] = 0.3 * torch.arange(8.0)[:, None]  # u_0 = 0.3 x_0
    assert smoothness(u).item() == pytest.approx(0.3**2 / 4)  # (channels, axes) = (2, 2)


def test_integrate_velocity_diffeomorphic():
    v = torch.full((1, 2, 16, 16), 1.5)
    assert torch.allclose(integrate_velocity(v), v, atol=1e-5)  # constant field: exact
    v = 6.0 * torch.from_numpy(ndimage.gaussian_filter(rand(2, 24, 24).numpy(), (0, 4, 4)))
    v = (v - v.mean())[None]
    u, u_inv = integrate_velocity(v), integrate_velocity(-v)
    assert jacobian_determinant(u).min() > 0
    residual = compose(u, u_inv)[..., 4:-4, 4:-4].abs().max()
    assert residual < 0.05 * u.abs().max()
    w = torch.zeros(1, 3, 5, 6, 7)
    assert torch.allclose(jacobian_determinant(w), torch.ones(1, 5, 6, 7))
    w[:, 0] = 0.2 * torch.arange(5.0)[:, None, None]
    assert torch.allclose(jacobian_determinant(w), torch.full((1, 5, 6, 7), 1.2))


# ---------------------------------------------------------------- default configs


def _documented_params() -> dict[str, int]:
    """Parse the config table of docs/networks.md: | `name` | engine | params | ..."""
    rows = re.findall(r"^\| `([\w.-]+)` \| \w+ \| ([\d,]+) \|", DOCS.read_text(), re.M)
    return {name: int(n.replace(",", "")) for name, n in rows}


def test_documented_parameter_counts_and_budgets():
    configs, documented = default_configs(), _documented_params()
    assert set(documented) == set(configs)
    for name, config in configs.items():
        assert count_params(config.build()) == documented[name], name
    for engine, budget in ENGINE_BUDGET_BYTES.items():
        assert 0 < engine_bytes_fp16(engine) <= budget, engine


@pytest.mark.parametrize("name", sorted(default_configs()))
def test_default_configs_run_small(name):
    config = default_configs()[name]
    net = config.build().eval()
    mult = 16 if config.kind == "unet" else net.factor
    x = rand(1, config.input_shape[0], *(mult,) * config.dims)
    with torch.no_grad():
        out = net(x, torch.tensor([7])) if config.timed else net(x)
    first = out[0] if isinstance(out, tuple) else out
    assert first.shape[2:] == x.shape[2:]
