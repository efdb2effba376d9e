"""A1111's sampling over the diffusers UNet: its CFG denoiser, its noise, its step counts.

A1111 samples with k-diffusion (and its own DDIM / PLMS) over the model, not with diffusers'
schedulers; to give the same picture for the same seed this does the same
(``sdtui.engine.ksampling`` holds the algorithms). What each part follows:

- ``Denoiser``: k-diffusion's ``CompVisDenoiser`` / ``CompVisVDenoiser`` (``c_in``, ``c_out``,
  ``c_skip``; sigma -> continuous timestep through the model's log sigmas) for the sigma
  samplers, A1111's ``CompVisTimestepsDenoiser`` for DDIM / PLMS, and A1111's ``CFGDenoiser``
  around either: the composable parts and the negative in one batch (apart when their token
  counts differ), ``uncond + sum(weight * cfg * (cond_i - uncond))``, the conditioning picked
  per model call from the prompt-editing schedule (``JobConds.at(call)``).
- ``sample``: txt2img starts from ``noise * sigmas[0]`` (DDIM / PLMS: the noise itself);
  img2img and the hires pass run ``sigmas[schedule - run:]`` from ``init + noise * sigma``
  (DDIM / PLMS: ``timesteps[:t_enc]`` from ``init`` noised to ``timesteps[t_enc]``), as A1111's
  ``sample_img2img``; step noise comes from each image's generator after its first draw
  (``ImageRNG.next``), or from per-image Brownian trees for the SDE samplers.
- UniPC: A1111's own port of it (bh1, order 3, time-uniform grid), a timestep sampler too.
- Inpainting: an inpainting UNet's image conditioning (``Denoiser.image_cond``, from
  sdtui.engine.inpaint) joins its input on every call, for the negative as for the prompt;
  with a mask (``Denoiser.blend``) the original latents replace the unmasked ones, as A1111's
  ``CFGDenoiser``: in the denoised latents after each call for the sigma samplers, in the
  input before each call for DDIM / PLMS / UniPC (``mask_before_denoising``), and in the
  pass's result (``StableDiffusionProcessingImg2Img.sample``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdtui.engine import ksampling
from sdtui.engine.conditioning import JobConds
from sdtui.engine.samplers import _ldm_alphas_cumprod, _model_sigmas, _sigma_to_t, a1111_sigmas
from sdtui.samplers import normalize_sampler

OnCall = Callable[[int, int, torch.Tensor], None]  # (call, calls in this pass, denoised)


@dataclass
class Plan:
    """One sampling pass: ``schedule`` steps long, the last ``run`` of them run (img2img and
    hires: A1111's ``t_enc + 1``; txt2img: all), from ``init`` latents or from noise."""

    sampler: str
    schedule_type: str
    schedule: int
    run: int
    cfg_scale: float
    width: int
    height: int
    img2img: bool = False  # from init latents (img2img, the hires pass)
    cfg_rescale: float = 0.0  # rescaled CFG's phi (0 = plain CFG)


@dataclass
class LatentBlend:
    """A1111's latent mask blend: ``latents * nmask + init * mask`` where ``nmask`` is the
    rounded latent mask (1 = resampled) and ``mask`` its complement."""

    init: torch.Tensor  # (B, C, h, w): the pass's init latents
    nmask: torch.Tensor  # (1, 1, h, w)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        init = self.init.to(latents)
        nmask = self.nmask.to(latents)
        return latents * nmask + init * (1 - nmask)


class Denoiser:
    """A1111's CFG denoiser over a diffusers UNet; counts its model calls (the prompt-editing
    step) and reports each one.

    ``image_cond``: an inpainting UNet's extra input, (1 or B, 5, h, w), joined to the scaled
    latents in ``guided`` (``_unet`` sees the joined input); ``blend``: the latent mask blend
    of an inpainting pass. A job sets them after making the denoiser."""

    def __init__(
        self,
        unet: Any,
        conds: JobConds,
        cfg_scale: float,
        *,
        scheduler_config: dict[str, Any],
        alphas_cumprod: torch.Tensor,
        device: torch.device,
        size: tuple[int, int],
        on_call: OnCall | None = None,
        calls: int = 0,
        cfg_rescale: float = 0.0,
    ):
        self.unet, self.conds, self.cfg = unet, conds, float(cfg_scale)
        self.cfg_rescale = float(cfg_rescale)
        self.device = device
        self.dtype = unet.dtype
        self.v = scheduler_config.get("prediction_type") == "v_prediction"
        ac = _ldm_alphas_cumprod(scheduler_config, alphas_cumprod)
        self.alphas_cumprod = ac.float()
        self.log_sigmas = _model_sigmas(ac).log().float()
        self.xl = getattr(unet.config, "addition_embed_type", None) == "text_time"
        h, w = size
        self.time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)
        self.on_call, self.calls = on_call, calls
        self.step = 0
        self.in_channels = getattr(getattr(unet, "config", None), "in_channels", None)
        self.image_cond: torch.Tensor | None = None
        self.blend: LatentBlend | None = None

    # -- one guided model call --------------------------------------------------------------

    def _unet(
        self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor, pooled: torch.Tensor | None
    ) -> torch.Tensor:
        n = x.shape[0]
        kwargs: dict[str, Any] = {}
        if self.xl:
            if pooled is None:
                raise ValueError("SDXL needs pooled text embeddings")
            kwargs["added_cond_kwargs"] = {
                "text_embeds": pooled.to(self.device, self.dtype),
                "time_ids": self.time_ids.to(self.device, self.dtype).expand(n, -1),
            }
        out = self.unet(
            x.to(self.device, self.dtype),
            t.to(self.device),
            encoder_hidden_states=z.to(self.device, self.dtype),
            return_dict=False,
            **kwargs,
        )[0]
        return out.float()

    def guided(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The model's output (noise or v) for the scaled input, under CFG."""
        conds, (uz, upooled) = self.conds.at(self.step)
        b = x_in.shape[0]
        if self.image_cond is not None:
            # A1111's c_concat: the same image conditioning for the prompt and the negative
            cond = self.image_cond.to(x_in.device, x_in.dtype)
            if cond.shape[0] != b:
                cond = cond.repeat(b, 1, 1, 1)
            x_in = torch.cat([x_in, cond], dim=1)
        elif self.in_channels is not None and self.in_channels != x_in.shape[1]:
            raise ValueError(
                f"the UNet takes {self.in_channels} input channels and the latents have "
                f"{x_in.shape[1]}: an inpainting UNet needs its image conditioning "
                "(sdtui.engine.inpaint.image_conditioning)"
            )
        k = len(conds)

        # repeat, not expand: a fresh tensor (an inference tensor under inference mode, which
        # the compiled fast path guards on), one row per image
        def rows(z: torch.Tensor) -> torch.Tensor:
            return z.repeat(b, 1, 1)

        def pooled_rows(p: torch.Tensor | None) -> torch.Tensor | None:
            return None if p is None else p.repeat(b, 1)

        skip_uncond = self.cfg == 1.0 and k == 1 and conds[0][0] == 1.0
        cz = torch.cat([rows(z) for _, z, _ in conds])
        cp = None if conds[0][2] is None else torch.cat([pooled_rows(p) for _, _, p in conds])  # type: ignore[misc]
        if skip_uncond:
            return self._unet(x_in, t.repeat(1), cz, cp)
        if cz.shape[1] == uz.shape[1]:
            z = torch.cat([cz, rows(uz)])
            pooled = None if cp is None else torch.cat([cp, pooled_rows(upooled)])  # type: ignore[list-item]
            out = self._unet(x_in.repeat(k + 1, 1, 1, 1), t.repeat(k + 1), z, pooled)
        else:  # token counts differ: cond and uncond apart, as A1111
            out_c = self._unet(x_in.repeat(k, 1, 1, 1), t.repeat(k), cz, cp)
            out_u = self._unet(x_in, t, rows(uz), pooled_rows(upooled))
            out = torch.cat([out_c, out_u])
        uncond = out[k * b :]
        result = uncond.clone()
        for i, (weight, _, _) in enumerate(conds):
            result += (out[i * b : (i + 1) * b] - uncond) * (weight * self.cfg)
        if self.cfg_rescale > 0:
            # rescaled CFG (Lin et al. 2023, eq. 15-16; diffusers' rescale_noise_cfg): bring the
            # guided output's spread back to the text prediction's, then mix by phi
            text = uncond.clone()
            for i, (weight, _, _) in enumerate(conds):
                text += (out[i * b : (i + 1) * b] - uncond) * weight
            dims = list(range(1, result.ndim))
            std_text = text.std(dim=dims, keepdim=True)
            std_cfg = result.std(dim=dims, keepdim=True).clamp_min(1e-12)
            rescaled = result * (std_text / std_cfg)
            result = self.cfg_rescale * rescaled + (1 - self.cfg_rescale) * result
        return result

    def _called(self, denoised: torch.Tensor) -> None:
        self.step += 1
        if self.on_call is not None:
            self.on_call(self.step - 1, self.calls, denoised)

    # -- the two model views ----------------------------------------------------------------

    def _on(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """A schedule table on ``t``'s device, moved once (no host sync per model call)."""
        table = getattr(self, name)
        if table.device != t.device:
            table = table.to(t.device)
            setattr(self, name, table)
        return table

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        return _sigma_to_t(self._on("log_sigmas", sigma), sigma.float())

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """k-diffusion's model: the denoised latents at noise level ``sigma`` (per image)."""
        s = sigma.view(-1, 1, 1, 1).to(x)
        c_in = 1 / (s**2 + 1) ** 0.5
        out = self.guided(x * c_in, self.sigma_to_t(sigma))
        if self.v:
            denoised = x / (s**2 + 1) + out * (-s * c_in)
        else:
            denoised = x - out * s
        if self.blend is not None:
            denoised = self.blend(denoised)
        self._called(denoised)
        return denoised

    def eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A1111's timestep model: the predicted noise at integer timestep ``t``."""
        if self.blend is not None:  # CFGDenoiserTimesteps blends the input, before the call
            x = self.blend(x)
        out = self.guided(x, t.float())
        a = self._on("alphas_cumprod", t)[t.long()].view(-1, 1, 1, 1).to(x)
        if self.v:  # CompVisTimestepsVDenoiser.predict_eps_from_z_and_v
            out = a.sqrt() * out + (1 - a).sqrt() * x
        self._called((x - (1 - a).sqrt() * out) / a.sqrt())
        return out


def model_calls(plan: Plan) -> int:
    name, _ = normalize_sampler(plan.sampler)
    if name in ksampling.TIMESTEP_SAMPLERS:  # counted in timesteps: img2img has t_enc of them
        n = len(ksampling.a1111_timesteps(plan.schedule))
        return ksampling.model_calls(name, min(n, plan.run - 1) if plan.img2img else n)
    return ksampling.model_calls(name, plan.run)


def sample(
    denoiser: Denoiser,
    plan: Plan,
    noise: torch.Tensor,
    generators: list[Any],
    init: torch.Tensor | None = None,
    scheduler_config: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Run one pass; ``noise`` is each image's first draw (B, C, H, W) on the CPU, the
    generators continue from there; returns the latents (float32)."""
    name, _ = normalize_sampler(plan.sampler)
    device = denoiser.device
    noise = noise.to(device, torch.float32)
    init = None if init is None else init.to(device, torch.float32)
    shape = tuple(noise.shape[1:])
    if name in ksampling.SIGMA_SAMPLERS:
        ac = _ldm_alphas_cumprod(scheduler_config or {}, denoiser.alphas_cumprod)
        # on the CPU, as 0-d scalars beside the latents: the samplers' per-step branches
        # (sigma_next == 0?) then never wait for the GPU
        sigmas = a1111_sigmas(name, plan.schedule_type, plan.schedule, ac).float()
        tail = sigmas[plan.schedule - plan.run :] if init is not None else sigmas
        x = noise * tail[0] if init is None else init + noise * tail[0]
        if name in ksampling.BROWNIAN:
            seeds = [g.initial_seed() for g in generators]
            step_noise: Any = ksampling.brownian_noise(x, sigmas, seeds)
        else:
            step_noise = ksampling.ImageNoise(generators, shape)
        return _blended(
            denoiser, ksampling.SIGMA_SAMPLERS[name](denoiser.denoise, x, tail, step_noise)
        )
    if name in ksampling.TIMESTEP_SAMPLERS:
        timesteps = ksampling.a1111_timesteps(plan.schedule)
        if init is None:
            x = noise
        else:
            t_enc = plan.run - 1
            a = float(denoiser.alphas_cumprod[timesteps[t_enc]])
            x = init * a**0.5 + noise * (1 - a) ** 0.5
            timesteps = timesteps[:t_enc]
        if name == "UniPC":
            out = ksampling.unipc(
                denoiser.eps, x, timesteps, denoiser.alphas_cumprod, img2img=init is not None
            )
        else:
            out = ksampling.TIMESTEP_SAMPLERS[name](
                denoiser.eps, x, timesteps, denoiser.alphas_cumprod
            )
        return _blended(denoiser, out)
    raise ValueError(f"no sampler {plan.sampler!r}")


def _blended(denoiser: Denoiser, samples: torch.Tensor) -> torch.Tensor:
    """The pass's result with the original latents back over the unmasked ones (A1111
    ``StableDiffusionProcessingImg2Img.sample``: ``samples * nmask + init_latent * mask``)."""
    return samples if denoiser.blend is None else denoiser.blend(samples)
