"""PathoSyn's model bundle: substrate net f_sub, residual denoiser ε_θ, losses (Eq. 3–15), hooks.

Shapes: images x [B, C, *spatial] in [0, 1] (C contrasts, 2 or 3 spatial axes), lesion mask
m [B, 1, *spatial] in {0, 1}, contrast availability a [B, C] in {0, 1} (1 = the contrast was
given). The diffusion state is the normalised deviation z = r / δ (Eq. 5 bounds it to (−1, 1)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from synthbrain.diffusion import (
    Generators,
    Hook,
    StepState,
    make_schedule,
    q_sample,
    randn,
    sample,
    timesteps_for,
    x0_from_eps,
)
from synthbrain.engines.deviation.config import DeviationConfig
from synthbrain.engines.deviation.ops import (
    blend_map,
    crop,
    harmonic_fill,
    lesion_window,
    masked_mean,
    ring_weight,
)
from synthbrain.engines.deviation.validation import implant_metrics
from synthbrain.nets import UNet


class MaskProjection(Hook):
    """r_t ← r_t ⊙ m after every reverse step (Eq. 8 and Alg. 2), and x̂0 ← x̂0 ⊙ m."""

    def __init__(self, m: Tensor) -> None:
        self.m = m

    def on_step(self, state: StepState) -> StepState:
        """Project the next state and the clean estimate onto the lesion support."""
        state.x_next = state.x_next * self.m
        state.x0 = state.x0 * self.m
        return state


class ClampX0(Hook):
    """Clamp x̂0 to [−1, 1], the range of r0/δ after Eq. 5 (and of images scaled to [−1, 1])."""

    def on_prediction(self, state: StepState) -> StepState:
        """Replace x̂0 by its clamped copy (the loop re-derives ε̂ from it)."""
        state.x0 = state.x0.clamp(-1.0, 1.0)
        return state


def planes(a: Tensor, like: Tensor) -> Tensor:
    """Availability a [B, C] as constant planes [B, C, *spatial of like]."""
    return a.reshape(*a.shape, *([1] * (like.ndim - 2))).expand(-1, -1, *like.shape[2:])


class DeviationModel(nn.Module):
    """f_sub and ε_θ trained jointly (Eq. 15); ``space="image"`` builds the image-space baseline.

    Args:
        config: the engine config (contrasts, dims, δ, λ's, network widths, schedule).
    """

    def __init__(self, config: DeviationConfig) -> None:
        super().__init__()
        self.config = config
        c, dims = config.n_contrasts, config.dims
        den = config.denoiser
        # ε_θ([r_t, x_sub, m], t): input r_t (C) + x_sub ⊙ a (C) + m (1) + a planes (C)
        self.denoiser = UNet(
            dims, 3 * c + 1, c, base_channels=den.base_channels, channel_mults=den.channel_mults,
            num_res_blocks=den.num_res_blocks, attention_levels=den.attention_levels,
            groups=den.groups, dropout=den.dropout,
        )  # fmt: skip
        self.substrate: UNet | None = None
        multiple = self.denoiser.multiple
        if config.space == "deviation":
            sub, residual = config.substrate, config.substrate_mode == "residual"
            # f_sub(x ⊙ m̄, m̄): input x ⊙ m̄ ⊙ a (C) + m̄ (1) + a planes (C), plus Inp(x, m) ⊙ a
            # (C) in residual mode; 4 downsamplings. A residual f_sub starts from a zero output,
            # so before any training the substrate is Inp itself (it cannot start worse).
            self.substrate = UNet(
                dims, (3 if residual else 2) * c + 1, c, base_channels=sub.base_channels,
                channel_mults=sub.channel_mults, num_res_blocks=sub.num_res_blocks,
                attention_levels=sub.attention_levels, groups=sub.groups, dropout=sub.dropout,
                time_embedding=False, zero_init_out=residual,
            )  # fmt: skip
            multiple = max(multiple, self.substrate.multiple)
        self.multiple = multiple
        self.schedule = make_schedule(
            config.schedule, config.timesteps, config.beta_start, config.beta_end
        )

    # ------------------------------------------------------------ the two networks

    def substrate_raw(self, x: Tensor, m: Tensor, a: Tensor) -> Tensor:
        """f_sub(x ⊙ m̄, m̄) (Eq. 3) on the whole window; residual mode: Inp(x, m) + f_sub(…)."""
        if self.substrate is None:
            raise RuntimeError("an image-space model has no substrate network")
        keep, av = 1.0 - m, planes(a, x)
        if self.config.substrate_mode == "direct":
            return self.substrate(torch.cat([x * keep * av, keep, av], dim=1))
        x_ph = harmonic_fill(x, m, iterations=self.config.inpaint_iterations)
        return x_ph + self.substrate(torch.cat([x * keep * av, x_ph * av, keep, av], dim=1))

    @staticmethod
    def compose(x: Tensor, m: Tensor, fill: Tensor) -> Tensor:
        """x outside m, `fill` inside: the substrate that keeps the anatomy voxel for voxel."""
        return x * (1.0 - m) + fill * m

    def substrate_of(self, x: Tensor, m: Tensor, a: Tensor) -> Tensor:
        """x_sub used at inference: the input outside m and f_sub inside m (our reading)."""
        return self.compose(x, m, self.substrate_raw(x, m, a))

    def recompose_map(self, m: Tensor) -> Tensor:
        """The weight of the drawn deviation at inference: S (Eq. 14) or m (`recompose`)."""
        if self.config.sampling.recompose == "mask":
            return m
        return blend_map(m, self.config.blend_sigma)

    def recompose(self, x_sub: Tensor, m: Tensor, r: Tensor, severity: float = 1.0) -> Tensor:
        """x̂ = x_sub + severity · (S or m) ⊙ r (Eq. 14); with `clamp_image`, x̂ on m is kept in
        [0, 1], the intensity range every training image lives in (off m x̂ is x_sub as given)."""
        image = x_sub + severity * self.recompose_map(m) * r
        if not self.config.sampling.clamp_image:
            return image
        return torch.where(m.expand_as(image) > 0, image.clamp(0.0, 1.0), image)

    def eps(self, z_t: Tensor, t: Tensor, context: Tensor, m: Tensor, a: Tensor) -> Tensor:
        """ε_θ([z_t, context ⊙ a, m, a], t); context is x_sub (or x ⊙ m̄ for image space)."""
        cond = torch.cat([context * planes(a, z_t), m, planes(a, z_t)], dim=1)
        return self.denoiser(z_t, t, cond)

    # ------------------------------------------------------------ training

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict[str, Tensor]:
        """Calls training_step, so DistributedDataParallel sees the forward pass."""
        return self.training_step(batch, generator)

    def training_step(
        self, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        """One joint step of Alg. 1 on a batch {images [B,C,...], mask [B,1,...]}: all losses."""
        x, m, healthy = self.window(batch["images"], batch["mask"], generator,
                                    batch.get("healthy"))  # fmt: skip
        a = self.draw_availability(x.shape[0], generator, x.device)
        if self.config.space == "image":
            return self.image_losses(x, m, a, generator)
        return self.deviation_losses(x, m, a, generator, healthy)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Tensor], generator: torch.Generator) -> dict:
        """The training losses on a validation batch, as floats; with a true substrate in the
        batch also the in-lesion L1 of the substrate (sub_l1) and of Inp alone (inp_l1), the
        task metric that selects the substrate (all contrasts given, as heal sees them), and with
        `[sampling] val_steps` the realism of lesions implanted into the true substrate (or,
        where the set has none, into the model's own substrate; `validation.implant_metrics`)."""
        out = {k: float(v) for k, v in self.training_step(batch, generator).items()}
        steps = self.config.sampling.val_steps
        if self.substrate is None or ("healthy" not in batch and not steps):
            return out  # nothing below to measure
        x, m, healthy = self.window(batch["images"], batch["mask"], generator, batch.get("healthy"))
        a = torch.ones(x.shape[0], self.config.n_contrasts, device=x.device)
        x_sub = self.compose(x, m, self.substrate_raw(x, m, a))
        if healthy is not None:
            inside = m.expand_as(x)
            x_ph = harmonic_fill(x, m, iterations=self.config.inpaint_iterations)
            out["sub_l1"] = float(masked_mean((x_sub - healthy).abs(), inside))
            out["inp_l1"] = float(masked_mean((x_ph - healthy).abs(), inside))
        if steps:
            # real cohorts store no true substrate: implant into the model's own heal instead
            base = x_sub if healthy is None else healthy
            out.update(implant_metrics(self, x, m, base, generator, steps))
        return out

    def window(
        self, x: Tensor, m: Tensor, generator: torch.Generator, healthy: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """A `crop`-sized window around each element's lesion (random jitter), as in inference;
        the true substrate (if given) is cut from the same place."""
        size = (self.config.crop,) * (x.ndim - 2)
        xs, ms, hs = [], [], []
        for b in range(x.shape[0]):
            start = lesion_window(m[b, 0], size, generator)
            xs.append(crop(x[b], start, size))
            ms.append(crop(m[b], start, size))
            if healthy is not None:
                hs.append(crop(healthy[b], start, size))
        m_out = (torch.stack(ms) > 0.5).to(x.dtype)
        return torch.stack(xs), m_out, torch.stack(hs) if hs else None

    def draw_availability(self, batch: int, generator: torch.Generator, device) -> Tensor:  # noqa: ANN001
        """Contrast dropout: each contrast hidden with probability p, at least one kept."""
        c, p = self.config.n_contrasts, self.config.contrast_dropout
        where = generator.device
        keep = (torch.rand(batch, c, generator=generator, device=where) >= p).float()
        forced = torch.randint(0, c, (batch,), generator=generator, device=where)
        keep[torch.arange(batch, device=where), forced] = 1.0
        return keep.to(device)

    def _noised(self, z0: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(t, ε, z_t) for the forward process (Eq. 7) with t ~ U{0, …, T−1}."""
        where = generator.device
        t = torch.randint(0, self.schedule.T, (z0.shape[0],), generator=generator, device=where)
        noise = randn(z0.shape, generator, z0.device, z0.dtype)
        t = t.to(z0.device)
        return t, noise, q_sample(self.schedule, z0, t, noise)

    def substrate_loss(
        self, x: Tensor, m: Tensor, a: Tensor, raw: Tensor, healthy: Tensor | None
    ) -> Tensor:
        """L_sub (Eq. 3); residual mode: in-lesion L1 against the true substrate where known."""
        cfg, lam, av = self.config, self.config.lambdas, planes(a, x)
        x_ph = harmonic_fill(x, m, iterations=cfg.inpaint_iterations)  # Eq. 3: Inp(x, m)
        if cfg.substrate_mode == "direct":
            return lam.out * masked_mean((raw - x) ** 2, (1.0 - m) * av) + (
                lam.inside * masked_mean((raw - x_ph) ** 2, m * av)
            )
        # Off m the composite is x by construction, so only m is fitted; L1 because heal is
        # judged (and the substrate selected) by in-lesion L1. Without a true substrate the
        # target is Inp and the correction is pulled to 0: never worse than Inp.
        target = x_ph if healthy is None else healthy
        return lam.inside * masked_mean((raw - target).abs(), m * av)

    def deviation_losses(
        self, x: Tensor, m: Tensor, a: Tensor, generator: torch.Generator,
        healthy: Tensor | None = None,
    ) -> dict[str, Tensor]:  # fmt: skip
        """L = L_sub + λ_diff L_diff + λ_dev L_dev + λ_syn L_syn (Eq. 15)."""
        cfg, lam = self.config, self.config.lambdas
        av = planes(a, x)
        raw = self.substrate_raw(x, m, a)
        loss_sub = self.substrate_loss(x, m, a, raw, healthy)
        x_sub = self.compose(x, m, raw)
        if cfg.detach_substrate:
            x_sub = x_sub.detach()
        r0 = cfg.delta * torch.tanh((x - x_sub) * m / cfg.delta)  # Eq. 4-5
        t, noise, z_t = self._noised(r0 / cfg.delta, generator)
        z_t = z_t * m  # Eq. 8: projection in training too
        eps_hat = self.eps(z_t, t, x_sub, m, a)
        loss_diff = masked_mean((noise - eps_hat) ** 2, m)  # Eq. 9, on m (Alg. 1)
        # Eq. 12, clamped to the range of r0 so the 1/√ᾱ_t blow-up at large t cannot dominate
        r_raw = cfg.delta * x0_from_eps(self.schedule, z_t, t, eps_hat).clamp(-1.0, 1.0)
        r_hat = r_raw * m
        s = blend_map(m, cfg.blend_sigma)
        err = (r_hat - r0).abs()
        loss_dev = (
            lam.pat * masked_mean(err, m)
            + lam.ring * masked_mean(err, ring_weight(s))
            + lam.leak * masked_mean(r_raw.abs(), 1.0 - m)
        )  # Eq. 13 (leak on r̂0 before its projection, else it would be 0 by construction)
        if cfg.substrate_mode == "residual":
            # the substrate's target is the healthy tissue: L_syn (towards the lesion image)
            # must not pull it back, and off m inference uses the composite, not raw
            raw = x_sub if cfg.detach_substrate else self.compose(x, m, raw)
        x_hat = raw + s * r_hat  # Eq. 14: seam-aware recomposition
        loss_syn = masked_mean((x_hat - x).abs(), s * av)
        loss = loss_sub + lam.diff * loss_diff + lam.dev * loss_dev + lam.syn * loss_syn
        return {
            "loss": loss, "sub": loss_sub.detach(), "diff": loss_diff.detach(),
            "dev": loss_dev.detach(), "syn": loss_syn.detach(),
        }  # fmt: skip

    def image_losses(
        self, x: Tensor, m: Tensor, a: Tensor, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Baseline: ε loss of a diffusion over the whole window, conditioned on x ⊙ m̄ and m."""
        t, noise, z_t = self._noised(2.0 * x - 1.0, generator)
        eps_hat = self.eps(z_t, t, x * (1.0 - m), m, a)
        loss = self.config.lambdas.diff * ((noise - eps_hat) ** 2).mean()
        return {"loss": loss, "diff": loss.detach()}

    # ------------------------------------------------------------ sampling

    def _denoiser(self, context: Tensor, m: Tensor, a: Tensor):  # noqa: ANN202
        """The (z_t, t) -> (x̂0, ε̂) callable the shared loop wants."""

        def denoise(z_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            eps_hat = self.eps(z_t, t, context, m, a)
            return x0_from_eps(self.schedule, z_t, t, eps_hat), eps_hat

        return denoise

    def _steps(self, steps: int | None, sampler: str) -> Tensor:
        """Descending timesteps: every step for ddpm, else `steps` by `sampling.spacing`."""
        n = steps or self.config.sampling.steps
        spacing = self.config.sampling.spacing
        return timesteps_for(sampler, self.schedule.T, n, spacing=spacing, schedule=self.schedule)

    @torch.no_grad()
    def sample_deviation(
        self,
        x_sub: Tensor,
        m: Tensor,
        a: Tensor,
        generator: Generators,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        callback=None,  # noqa: ANN001
    ) -> Tensor:
        """r ~ p(r | x_sub, m) by Alg. 2: r_T ~ N(0, I) ⊙ m, reverse steps each followed by ⊙ m.

        Returns:
            the deviation r = δ · z_0 [B, C, *spatial], exactly 0 off m.
        """
        sampler = sampler or self.config.sampling.sampler
        eta = self.config.sampling.eta if eta is None else eta
        z_T = randn(x_sub.shape, generator, x_sub.device, x_sub.dtype) * m  # noqa: N806
        hooks: list[Hook] = [ClampX0()] if self.config.clip_x0 else []
        hooks.append(MaskProjection(m))
        z0 = sample(
            self._denoiser(x_sub, m, a), z_T, self.schedule, self._steps(steps, sampler),
            sampler=sampler, eta=eta, generator=generator, hooks=hooks, callback=callback,
        )  # fmt: skip
        delta = self.config.delta
        if self.config.sampling.invert_tanh:  # Eq. 5 undone; deviations beyond ±1 cannot be
            bound = math.tanh(1.0 / delta)  # in [0, 1] intensities, so |Δ| ≤ 1
            return delta * torch.atanh(z0.clamp(-bound, bound)) * m
        return delta * z0 * m

    @torch.no_grad()
    def sample_image(
        self,
        x: Tensor,
        m: Tensor,
        a: Tensor,
        generator: Generators,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        eta: float | None = None,
    ) -> Tensor:
        """Image-space baseline: the whole window drawn given x ⊙ m̄ and m, in [0, 1] (unpasted)."""
        sampler = sampler or self.config.sampling.sampler
        eta = self.config.sampling.eta if eta is None else eta
        z_T = randn(x.shape, generator, x.device, x.dtype)  # noqa: N806
        hooks: Sequence[Hook] = [ClampX0()] if self.config.clip_x0 else []
        z0 = sample(
            self._denoiser(x * (1.0 - m), m, a), z_T, self.schedule,
            self._steps(steps, sampler), sampler=sampler, eta=eta, generator=generator,
            hooks=hooks,
        )  # fmt: skip
        return ((z0 + 1.0) / 2.0).clamp(0.0, 1.0)
