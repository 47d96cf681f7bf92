"""Deformation-driven DDIM (D3M, METHODS.md §3): model bundle, losses and the warp hook.

The diffusion state holds the contrast-enhanced image x and the enhancing-tumour mask m as two
channels in [−1, 1]. A U-Net over [x_t, m_t, c] with time t (c = T1, T2, FLAIR on 2k + 1
slices) predicts v for both; with ``decoder="dual"`` each has its own decoder over the shared
encoder (the paper's dual-stream DSIMD). The deformation net U maps the mask estimate m̂0 to a
displacement û, and φ_û warps (`synthbrain.nets.warp`). Sampling is the shared loop
(`synthbrain.diffusion.sample`) with `WarpHook`; this module knows no files — the commands
(`train`, `enhance`) live in `deformation_run` and are re-exported here for `engines.load`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from synthbrain.diffusion import (
    Hook,
    Schedule,
    StepState,
    make_schedule,
    q_sample,
    randn,
    sample,
    timesteps_for,
    to_x0_eps,
    v_from_x0_eps,
    x0_from_v,
)
from synthbrain.engines.deformation.config import DeformationConfig
from synthbrain.engines.deformation.data import crop_batch, flip_batch
from synthbrain.engines.deformation.losses import (
    mask_probability,
    region_weights,
    soft_dice_loss,
    task_scores,
    tumour_region,
    weighted_error,
)
from synthbrain.errors import InputError
from synthbrain.nets import UNet, pad_to_multiple, smoothness, unpad, warp

MASK = 1  # channel of the mask in the diffusion state


def build_schedule(config: DeformationConfig) -> Schedule:
    """The noise schedule of a config (sigmoid, T = 1000 by default, as the published code)."""
    return make_schedule(config.schedule, config.timesteps)


class DeformationModel(nn.Module):
    """D3M's networks: the (dual-stream) v-denoiser and the deformation net U.

    Args:
        config: the model settings (`DeformationConfig`); ``config.train`` is not read here.
        enhancing_label: label value of the enhancing tumour in the training set (recorded
            for the metadata; the data module already turns labels into a 0/1 mask).
    """

    def __init__(self, config: DeformationConfig, enhancing_label: int = 3) -> None:
        super().__init__()
        self.config = config
        self.enhancing_label = int(enhancing_label)
        self.schedule = build_schedule(config)
        s = config.state_channels
        in_ch = s + config.cond_channels + (s if config.self_condition else 0)
        if config.regression:  # the baseline sees the condition only
            in_ch = config.cond_channels
        heads: int | tuple[int, ...] = 1
        if config.mask_stream:
            heads = (1, 1) if config.decoder == "dual" else 2
        net = config.denoiser
        self.denoiser = UNet(
            2, in_ch, heads, base_channels=net.base_channels, channel_mults=net.channel_mults,
            num_res_blocks=net.num_res_blocks, attention_levels=net.attention_levels,
            groups=net.groups, dropout=net.dropout, separate_decoders=config.decoder == "dual",
            time_embedding=not config.regression,
        )  # fmt: skip
        self.warp_net: UNet | None = None
        if config.deform:
            u = config.warp_net
            # No time embedding; small initial output so training starts near the identity.
            self.warp_net = UNet(
                2, 1, 2, base_channels=u.base_channels, channel_mults=u.channel_mults,
                num_res_blocks=u.num_res_blocks, attention_levels=u.attention_levels,
                groups=u.groups, dropout=u.dropout, time_embedding=False,
                zero_init_out=False, out_init_std=1e-5,
            )  # fmt: skip

    # ------------------------------------------------------------------ networks

    def predict_v(
        self, x_t: Tensor, t: Tensor, cond: Tensor, x0_prev: Tensor | None = None
    ) -> Tensor:
        """v̂ for every state channel, [B, S, H, W] (the dual heads concatenated)."""
        parts = [x_t, cond]
        if self.config.self_condition:
            parts.append(torch.zeros_like(x_t) if x0_prev is None else x0_prev)
        # channels-last convolutions run ~1.5x faster on CPUs (oneDNN) and suit CUDA AMP too
        x = torch.cat(parts, dim=1).contiguous(memory_format=torch.channels_last)
        out = self.denoiser(x, t)
        return torch.cat(out, dim=1) if isinstance(out, tuple) else out

    def regress(self, cond: Tensor) -> Tensor:
        """The regression baseline's x̂0 [B, S, H, W] straight from the condition."""
        out = self.denoiser(cond.contiguous(memory_format=torch.channels_last))
        return torch.cat(out, dim=1) if isinstance(out, tuple) else out

    def displacement(self, x0: Tensor) -> Tensor:
        """û = U(m̂0): the displacement (voxels, [B, 2, H, W]) from the mask channel of x̂0."""
        if self.warp_net is None:
            raise ValueError("this model has no deformation module (deform = false)")
        return self.warp_net(x0[:, MASK : MASK + 1].contiguous(memory_format=torch.channels_last))

    def loss_weight(self, t: Tensor, like: Tensor) -> Tensor:
        """w_t = SNR/(SNR + 1), with the SNR clipped at min_snr_gamma when set; flat [B]."""
        snr = self.schedule.snr(t, like).flatten()
        gamma = self.config.min_snr_gamma
        clipped = snr.clamp(max=gamma) if gamma is not None else snr
        return clipped / (snr + 1.0)

    # ------------------------------------------------------------------ training

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Same as `training_step` (so DistributedDataParallel sees the call)."""
        return self.training_step(batch, generator)

    def training_step(
        self, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """One batch of the D3M loss: w_t·‖φ_û(v̂) − v‖²_W + λ·w_t·‖∇û‖² (+ μ·w_t·Dice).

        W is 1 + tumour_weight around the tumour (1 everywhere by default); the Dice term on the
        mask stream's warped x̂0 is added when dice_weight > 0 (METHODS.md §3, issue 15).

        Args:
            batch: ``cond``, ``target``, ``mask`` (and ``brain``) as `EnhanceSlices` gives
                them, values in [0, 1].
            generator: the source of crops, flips, timesteps, noise and self-conditioning.

        Returns:
            "loss" plus the logged parts: "syn" (weighted v loss), "flow" (weighted smoothness),
            "v_img" / "v_mask" (unweighted per-stream v errors), "dice" (soft Dice loss).
        """
        batch = self._augment(batch, generator)
        if self.config.regression:
            return self._regression_step(batch)
        cond, x0 = self.model_inputs(batch)
        b, device = x0.shape[0], x0.device
        draw = {"generator": generator, "device": generator.device}  # a CUDA run draws on CUDA
        t = torch.randint(0, self.schedule.T, (b,), **draw).to(device)
        noise = randn(x0.shape, generator, device, x0.dtype)
        x_t = q_sample(self.schedule, x0, t, noise)
        x0_prev = self._self_condition(x_t, t, cond, generator)
        v_hat = self.predict_v(x_t, t, cond, x0_prev)
        v = v_from_x0_eps(self.schedule, x0, t, noise)
        w = self.loss_weight(t, x0)
        flow = torch.zeros((), device=device)
        x0_raw = x0_from_v(self.schedule, x_t, t, v_hat)
        u: Tensor | None = None
        if self.warp_net is not None:
            # û from the mask channel of the clipped x̂0; φ_û(v̂) is compared with v.
            u = self.displacement(self._clip(x0_raw))
            v_hat = warp(v_hat, u, exact=False)
            smooth = torch.stack([smoothness(u[i : i + 1]) for i in range(b)])
            flow = (w * smooth).mean()
        err = (v_hat - v).pow(2)
        syn = (w * weighted_error(err, self._pixel_weights(batch))).mean()
        out = {"loss": syn + self.config.smooth_weight * flow, "syn": syn.detach()}
        out["flow"] = flow.detach()
        self._add_mask_terms(out, err, x0_raw[:, MASK : MASK + 1], u, batch, w)
        return out

    def _pixel_weights(self, batch: dict[str, Tensor]) -> Tensor:
        """The image loss's per-pixel weights (1 + tumour_weight near the tumour)."""
        cfg = self.config
        return region_weights(tumour_region(batch), cfg.tumour_weight, cfg.tumour_margin)

    def _add_mask_terms(
        self,
        out: dict[str, Tensor],
        err: Tensor,
        m0: Tensor,
        u: Tensor | None,
        batch: dict[str, Tensor],
        item_weight: Tensor | None,
    ) -> None:
        """Log the per-stream errors and add the Dice loss on m̂0 (warped like the output)."""
        out["v_img"] = err[:, :1].mean().detach()
        if not self.config.mask_stream:
            return
        out["v_mask"] = err[:, MASK:].mean().detach()
        if self.config.dice_weight <= 0:
            return
        # The unclipped x̂0 keeps gradients where it overshoots; warped as sampling warps it.
        m0 = (warp(m0, u, exact=False) if u is not None else m0).float()  # sums in fp32 (bf16)
        dice = soft_dice_loss(mask_probability(m0), batch["mask"], item_weight)
        out["loss"] = out["loss"] + self.config.dice_weight * dice
        out["dice"] = dice.detach()

    def _regression_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The regression baseline's loss: weighted ‖x̂0 − x0‖² (+ Dice on the mask head)."""
        cond, x0 = self.model_inputs(batch)
        x0_hat = self.regress(cond)
        err = (x0_hat - x0).pow(2)
        syn = weighted_error(err, self._pixel_weights(batch)).mean()
        out = {"loss": syn, "syn": syn.detach()}
        self._add_mask_terms(out, err, x0_hat[:, MASK : MASK + 1], None, batch, None)
        return out

    @torch.no_grad()
    def validation_step(
        self, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """The training losses plus the task: ET Dice and tumour PSNR of whole-slice samples.

        The batch's whole slices are sampled with val_steps DDIM steps from noise drawn with
        `generator` (the loop passes the same one at every validation, so values compare).
        """
        out = self.training_step(batch, generator)
        cond, _ = self.model_inputs(batch)
        padded, pad = pad_to_multiple(cond, self.config.multiple, value=-1.0)  # background
        shape = (cond.shape[0], self.config.state_channels, *padded.shape[2:])
        x_T = randn(shape, generator, cond.device, cond.dtype)
        state = unpad(self.sample(padded, x_T, steps=self.config.val_steps), pad)
        out.update(task_scores(state, batch, self.config.mask_stream))
        return out

    def _augment(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Crop windows (centred on tumour at the configured rate) and left-right flips."""
        cfg = self.config
        if cfg.crop is not None:
            batch = crop_batch(batch, cfg.crop, generator, cfg.crop_centre_fraction)
        if cfg.flip:
            batch = flip_batch(batch, generator)
        return batch

    def model_inputs(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(condition, clean state) in [−1, 1] from a [0, 1] batch."""
        cond = batch["cond"] * 2.0 - 1.0
        parts = [batch["target"]] + ([batch["mask"]] if self.config.mask_stream else [])
        return cond, torch.cat(parts, dim=1) * 2.0 - 1.0

    def _self_condition(
        self, x_t: Tensor, t: Tensor, cond: Tensor, generator: torch.Generator
    ) -> Tensor | None:
        """Half of the time, x̂0 from a gradient-free first pass (self-conditioning)."""
        if not self.config.self_condition:
            return None
        if float(torch.rand((), generator=generator, device=generator.device)) < 0.5:
            return None
        with torch.no_grad():
            return self._clip(x0_from_v(self.schedule, x_t, t, self.predict_v(x_t, t, cond)))

    def _clip(self, x0: Tensor) -> Tensor:
        """x̂0 clamped to [−1, 1] when the config asks for it."""
        return x0.clamp(-1.0, 1.0) if self.config.clip_x0 else x0

    # ------------------------------------------------------------------ sampling

    def denoiser_for(self, cond: Tensor) -> tuple[Callable[[Tensor, Tensor], Any], Callable]:
        """The loop's denoiser ``(x_t, t) -> (x̂0, ε̂)`` for a condition, and its step callback.

        The callback keeps the step's final x̂0 for self-conditioning the next step.
        """
        memory: dict[str, Tensor | None] = {"x0": None}

        def denoise(x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            v_hat = self.predict_v(x_t, t, cond, memory["x0"])
            return to_x0_eps(self.schedule, x_t, t, v_hat, "v")

        def remember(state: StepState) -> None:
            memory["x0"] = self._clip(state.x0)

        return denoise, remember

    @torch.no_grad()
    def sample(
        self,
        cond: Tensor,
        x_T: Tensor,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        warp_mode: str | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        callback: Callable[[StepState], None] | None = None,
    ) -> Tensor:
        """Denoise ``x_T`` [B, S, H, W] given ``cond`` [B, C, H, W] (both in [−1, 1]).

        Options default to ``config.sampling``. Returns the clean state [B, S, H, W]: channel 0
        the synthetic T1Gd, channel 1 (with a mask stream) the enhancing-tumour mask, in [−1, 1].
        """
        if self.config.regression:  # one forward pass; x_T and the sampler are not used
            return self.regress(cond).clamp(-1.0, 1.0)
        cfg = self.config.sampling
        steps = steps or cfg.steps
        sampler = sampler or cfg.sampler
        ts = timesteps_for(sampler, self.schedule.T, steps, spacing=cfg.spacing,
                           schedule=self.schedule)  # fmt: skip
        denoise, remember = self.denoiser_for(cond)
        hook = WarpHook(self.warp_net, clip=self.config.clip_x0, mode=warp_mode or cfg.warp_mode)

        def on_step(state: StepState) -> None:
            remember(state)
            if callback is not None:
                callback(state)

        return sample(
            denoise, x_T, self.schedule, ts, sampler=sampler,
            eta=cfg.eta if eta is None else eta, generator=generator, hooks=[hook],
            callback=on_step,
        )  # fmt: skip


class WarpHook(Hook):
    """D3M's per-step deformation (METHODS.md §3) as a hook of the shared sampling loop.

    ``mode="x0"`` (the published code, default): x̂0 is clipped, then warped,
    x̂0 ← φ_û(x̂0) with û = U(mask channel of x̂0); the loop re-derives ε̂ from the warped x̂0
    and takes the plain DDIM step. ``mode="combined"`` (the paper's equation): x̂0 is clipped,
    the DDIM step combines it with ε̂, and x_{t−1} ← φ_û(x_{t−1}). Without a deformation net
    the hook only clips (the ablation and the plain DDIM baseline).

    Args:
        warp_net: U, mapping a mask [B, 1, H, W] to a displacement [B, 2, H, W] in voxels.
        clip: clamp x̂0 to [−1, 1] first.
        mode: "x0" or "combined".
        mask_channel: the state channel U reads.
    """

    def __init__(
        self,
        warp_net: Callable[[Tensor], Tensor] | None,
        *,
        clip: bool = True,
        mode: str = "x0",
        mask_channel: int = MASK,
    ) -> None:
        if mode not in ("x0", "combined"):
            raise InputError(f"unknown warp mode {mode!r}; choose x0 or combined")
        self.warp_net, self.clip, self.mode, self.mask_channel = warp_net, clip, mode, mask_channel
        self._u: Tensor | None = None

    def field(self, x0: Tensor) -> Tensor:
        """û = U(mask channel of x̂0)."""
        assert self.warp_net is not None
        return self.warp_net(x0[:, self.mask_channel : self.mask_channel + 1])

    def on_prediction(self, state: StepState) -> StepState:
        """Clip x̂0, then (mode "x0") warp it; the loop re-derives ε̂ from the new x̂0."""
        x0 = state.x0.clamp(-1.0, 1.0) if self.clip else state.x0
        if self.warp_net is not None:
            self._u = self.field(x0)
            if self.mode == "x0":
                x0 = warp(x0, self._u)
        if x0 is not state.x0:
            state.x0 = x0
        return state

    def on_step(self, state: StepState) -> StepState:
        """Mode "combined": x_{t−1} ← φ_û(√ᾱ_{t−1} x̂0 + √(1−ᾱ_{t−1}) ε̂) (the paper's Eq.)."""
        if self.warp_net is not None and self.mode == "combined" and state.x_next is not None:
            state.x_next = warp(state.x_next, self._u)
        return state
