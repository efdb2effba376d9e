"""A1111's noise schedules: the sigmas its k-diffusion samplers run for each schedule type,
from the model's own alphas_cumprod (sdtui.engine.sampling runs them; no diffusers scheduler
is involved).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sdtui.samplers import normalize_sampler, resolve_schedule

# A1111 sd_samplers_kdiffusion.samplers_k_diffusion: those with 'discard_next_to_last_sigma'
DISCARD_NEXT_TO_LAST_SIGMA = ("DPM2", "DPM2 a")


# --- k-diffusion's formulas (crowsonkb/k-diffusion, k_diffusion/external.py DiscreteSchedule,
# k_diffusion/sampling.py get_sigmas_karras / get_sigmas_exponential) and A1111's
# modules/sd_schedulers.py sgm_uniform. float64 here; A1111 runs them in float32.


def _model_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - a) / a) ** 0.5


def _t_to_sigma(log_sigmas: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def _sigma_to_t(log_sigmas: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    log_sigma = sigma.log()
    dists = log_sigma - log_sigmas[:, None]
    low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
    high = low + 1
    lo, hi = log_sigmas[low], log_sigmas[high]
    w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
    return ((1 - w) * low + w * high).view(sigma.shape)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_karras(n, sigma_min, sigma_max, rho=7.)`` without the
    trailing 0, float64."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """k-diffusion's ``get_sigmas_exponential(n, sigma_min, sigma_max)`` without the trailing
    0, float64."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


def a1111_sigmas(
    sampler: str, schedule: str, steps: int, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """The sigmas A1111 samples ``steps`` steps with (trailing 0 included), float64.

    ``schedule`` may be "Automatic" (resolved as A1111 does). DPM2 / DPM2 a take ``steps + 1``
    sigmas and drop the next-to-last one (A1111 ``discard_next_to_last_sigma``).
    """
    name, _ = normalize_sampler(sampler)
    schedule = resolve_schedule(name, schedule)
    sigmas = _model_sigmas(alphas_cumprod)
    log_sigmas = sigmas.log()
    sigma_min, sigma_max = float(sigmas[0]), float(sigmas[-1])
    discard = name in DISCARD_NEXT_TO_LAST_SIGMA
    n = steps + 1 if discard else steps
    if schedule == "Normal":  # DiscreteSchedule.get_sigmas(n)
        out = _t_to_sigma(log_sigmas, torch.linspace(len(sigmas) - 1, 0, n, dtype=torch.float64))
    elif schedule == "Karras":
        out = karras_sigmas(n, sigma_min, sigma_max)
    elif schedule == "Exponential":
        out = exponential_sigmas(n, sigma_min, sigma_max)
    elif schedule == "Simple":  # sd_schedulers.simple_scheduler (ComfyUI's "simple")
        stride = len(sigmas) / n
        out = torch.stack([sigmas[-(1 + int(x * stride))] for x in range(n)])
    elif schedule == "SGM Uniform":  # sd_schedulers.sgm_uniform
        start = _sigma_to_t(log_sigmas, torch.tensor([sigma_max], dtype=torch.float64))[0]
        end = _sigma_to_t(log_sigmas, torch.tensor([sigma_min], dtype=torch.float64))[0]
        ts = torch.linspace(float(start), float(end), n + 1, dtype=torch.float64)[:-1]
        out = _t_to_sigma(log_sigmas, ts)
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    out = torch.cat([out, out.new_zeros(1)])
    if discard:
        out = torch.cat([out[:-2], out[-1:]])
    return out


def _ldm_alphas_cumprod(config: dict[str, Any], fallback: torch.Tensor) -> torch.Tensor:
    """alphas_cumprod as SD's LDM builds it (float64 betas, then cumprod) for the
    scaled_linear schedule; otherwise the scheduler's own. With ``rescale_betas_zero_snr``
    (a zero-terminal-SNR checkpoint) A1111's "Zero Terminal SNR" noise schedule on top."""
    if config.get("beta_schedule") == "scaled_linear" and not config.get("trained_betas"):
        n = int(config.get("num_train_timesteps", 1000))
        b0, b1 = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
        betas = torch.linspace(b0**0.5, b1**0.5, n, dtype=torch.float64) ** 2
        ac = torch.cumprod(1 - betas, dim=0)
    else:
        ac = torch.as_tensor(fallback, dtype=torch.float64)
    return zero_terminal_snr(ac) if config.get("rescale_betas_zero_snr") else ac


# A1111 modules/sd_models.py rescale_zero_terminal_snr_abar: the last alpha bar is not 0 (the
# sigma would be infinite) but this, sigma_max ~ 4519
ZTSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """A1111's ``rescale_zero_terminal_snr_abar``: shift sqrt(alpha bar) so the last is 0,
    scale it so the first keeps its value, then the last alpha bar set to a tiny number."""
    s = alphas_cumprod.double().sqrt()
    first, last = s[0].clone(), s[-1].clone()
    s = (s - last) * (first / (first - last))
    out = s**2
    out[-1] = ZTSNR_LAST_ALPHA_BAR
    return out
