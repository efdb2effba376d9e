"""A1111 sampler name + schedule type -> a diffusers scheduler built from the checkpoint's own
scheduler config, so prediction type and betas carry over.

The k-diffusion family (Euler a, Euler, LMS, Heun, DPM2, DPM2 a) runs A1111's own sigma
sequence (``a1111_sigmas``): A1111 samples them with k-diffusion, whose sigmas come from the
model's alphas_cumprod, not from diffusers' "leading" timestep spacing. The scheduler is a small
subclass of the diffusers one whose ``set_timesteps(n)`` puts those sigmas in, so the pipelines
(txt2img, img2img's ``strength`` tail, the hires pass) run them with no change on their side.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import diffusers
import torch

from sdtui.samplers import SAMPLERS, normalize_sampler, resolve_schedule

_SCHEDULE_OPTION = {
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Normal": {},
}
# Keys a previous sampler may have left in a config and that must not leak into the next one.
_RESET = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}

# A1111 sd_samplers_kdiffusion.samplers_k_diffusion: the samplers run by k-diffusion with
# sigmas from KDiffusionSampler.get_sigmas, and those with 'discard_next_to_last_sigma'.
K_DIFFUSION_SAMPLERS = ("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a")
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
    elif schedule == "Karras":  # get_sigmas_karras(n, sigma_min, sigma_max, rho=7.)
        rho = 7.0
        ramp = torch.linspace(0, 1, n, dtype=torch.float64)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        out = (hi + ramp * (lo - hi)) ** rho
    elif schedule == "Exponential":  # get_sigmas_exponential(n, sigma_min, sigma_max)
        out = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
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


class _A1111Sigmas:
    """Mixin: ``set_timesteps(n)`` runs A1111's sigmas. The diffusers class's own
    exponential-sigmas branch carries them (``_convert_to_exponential`` returns them), so its
    interleaving (Heun, DPM2) and sigma -> timestep code stay the library's."""

    _a1111_sampler = "Euler"
    _a1111_schedule = "Normal"

    def a1111_sigmas(self, steps: int) -> torch.Tensor:
        ac = _ldm_alphas_cumprod(dict(self.config), self.alphas_cumprod)
        return a1111_sigmas(self._a1111_sampler, self._a1111_schedule, steps, ac)

    def set_timesteps(self, num_inference_steps=None, device=None, *args, **kwargs):
        if kwargs.get("timesteps") is not None or kwargs.get("sigmas") is not None:
            raise ValueError("A1111 schedulers set their own sigmas: pass num_inference_steps")
        self._a1111_steps = int(num_inference_steps)
        super().set_timesteps(num_inference_steps, device, *args, **kwargs)

    def _convert_to_exponential(self, in_sigmas, num_inference_steps=None):
        return self.a1111_sigmas(self._a1111_steps)[:-1].numpy()


class _A1111EulerAncestral(_A1111Sigmas):
    """EulerAncestralDiscreteScheduler has no sigma options: replace what it set."""

    def set_timesteps(self, num_inference_steps=None, device=None, *args, **kwargs):
        super().set_timesteps(num_inference_steps, device, *args, **kwargs)
        sigmas = self.a1111_sigmas(self._a1111_steps)
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64)
        t = _sigma_to_t(_model_sigmas(ac).log(), sigmas[:-1])
        self.sigmas = sigmas.to(torch.float32)  # on the CPU, as diffusers keeps them
        self.timesteps = t.to(dtype=torch.float32, device=device)
        self._step_index = None
        self._begin_index = None


_SUBCLASSES: dict[tuple[str, str, str], type] = {}


def _a1111_class(cls: type, sampler: str, schedule: str) -> type:
    key = (cls.__name__, sampler, schedule)
    if key not in _SUBCLASSES:
        mixin = _A1111EulerAncestral if sampler == "Euler a" else _A1111Sigmas
        _SUBCLASSES[key] = type(
            cls.__name__,  # the library's name: config files and logs read as before
            (mixin, cls),
            {"_a1111_sampler": sampler, "_a1111_schedule": schedule, "__module__": __name__},
        )
    return _SUBCLASSES[key]


def make_scheduler(
    base_config: dict[str, Any], sampler: str, schedule_type: str = "Automatic"
) -> tuple[Any, list[str]]:
    """Return (scheduler, warnings). ``base_config`` is the checkpoint's scheduler config."""
    name, _ = normalize_sampler(sampler, schedule_type)
    spec = SAMPLERS[name]
    cls = getattr(diffusers, spec.scheduler_class)
    schedule = resolve_schedule(name, schedule_type)
    accepted = set(inspect.signature(cls.__init__).parameters)
    options: dict[str, Any] = {k: v for k, v in _RESET.items() if k in accepted}
    options.update(spec.options)
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    warnings: list[str] = []
    if name in K_DIFFUSION_SAMPLERS:
        # A1111's sigmas for every schedule; "linspace" only so that init_noise_sigma is
        # sigmas[0] (k-diffusion: x = noise * sigmas[0]), the timesteps are replaced.
        options["timestep_spacing"] = "linspace"
        if "use_exponential_sigmas" in accepted:
            options["use_exponential_sigmas"] = True  # carries a1111_sigmas (_A1111Sigmas)
        return _a1111_class(cls, name, schedule).from_config(config, **options), warnings
    for key, value in _SCHEDULE_OPTION[schedule].items():
        if key in accepted:
            options[key] = value
        else:
            warnings.append(f"{name} has no {schedule} schedule here; using its normal schedule")
    # A1111's "leading" spacing with steps_offset is the SD default; keep what the model says.
    return cls.from_config(config, **options), warnings
