"""A1111 sampler name + schedule type -> a diffusers scheduler built from the checkpoint's own
scheduler config, so prediction type and betas carry over."""

from __future__ import annotations

import inspect
from typing import Any

import diffusers

from sdtui.samplers import SAMPLERS, normalize_sampler

_SCHEDULE_OPTION = {
    "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Normal": {},
}
# Keys a previous sampler may have left in a config and that must not leak into the next one.
_RESET = {"use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}


def make_scheduler(
    base_config: dict[str, Any], sampler: str, schedule_type: str = "Automatic"
) -> tuple[Any, list[str]]:
    """Return (scheduler, warnings). ``base_config`` is the checkpoint's scheduler config."""
    name, schedule = normalize_sampler(sampler, schedule_type)
    spec = SAMPLERS[name]
    cls = getattr(diffusers, spec.scheduler_class)
    if schedule == "Automatic":
        schedule = spec.default_schedule
    accepted = set(inspect.signature(cls.__init__).parameters)
    options: dict[str, Any] = {k: v for k, v in _RESET.items() if k in accepted}
    options.update(spec.options)
    warnings: list[str] = []
    for key, value in _SCHEDULE_OPTION[schedule].items():
        if key in accepted:
            options[key] = value
        else:
            warnings.append(f"{name} has no {schedule} schedule here; using its normal schedule")
    config = {k: v for k, v in base_config.items() if not k.startswith("_")}
    # A1111's "leading" spacing with steps_offset is the SD default; keep what the model says.
    return cls.from_config(config, **options), warnings
