"""A1111 sampler and schedule-type names (pure data, shared by the UI, the CLI and the engine).

The engine turns a name into a diffusers scheduler in ``sdtui.engine.samplers``; everything
that only needs the names (the form, argument checks, infotext) imports this module, which
needs no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # the name A1111 shows
    scheduler_class: str  # diffusers class name
    options: dict[str, object] = field(default_factory=dict)
    # what A1111's "Automatic" picks for this sampler: samplers_k_diffusion's 'scheduler'
    # option (sd_samplers_kdiffusion.py, A1111 >= 1.9); none there means model.get_sigmas(n),
    # which is the "Normal" schedule here
    default_schedule: str = "Normal"


SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec("Euler a", "EulerAncestralDiscreteScheduler"),
        SamplerSpec("Euler", "EulerDiscreteScheduler"),
        SamplerSpec("LMS", "LMSDiscreteScheduler"),
        SamplerSpec("Heun", "HeunDiscreteScheduler"),
        SamplerSpec("DPM2", "KDPM2DiscreteScheduler", default_schedule="Karras"),
        SamplerSpec("DPM2 a", "KDPM2AncestralDiscreteScheduler", default_schedule="Karras"),
        SamplerSpec("DPM++ 2M", "DPMSolverMultistepScheduler", default_schedule="Karras"),
        SamplerSpec(
            "DPM++ 2M SDE",
            "DPMSolverMultistepScheduler",
            {"algorithm_type": "sde-dpmsolver++"},
            default_schedule="Exponential",
        ),
        SamplerSpec("DPM++ SDE", "DPMSolverSinglestepScheduler", default_schedule="Karras"),
        SamplerSpec("DDIM", "DDIMScheduler"),
        SamplerSpec("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),  # plain PLMS, as SD used
        # A1111: its own UniPC, variant bh1, order 3, time-uniform from t=1 to 1/N, ending at
        # the model's smallest sigma (not 0); diffusers' rounds the timesteps to integers
        SamplerSpec(
            "UniPC",
            "UniPCMultistepScheduler",
            {
                "solver_type": "bh1",
                "solver_order": 3,
                "timestep_spacing": "linspace",
                "final_sigmas_type": "sigma_min",
            },
        ),
    ]
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# "Automatic" = the sampler's own default; the rest map to diffusers sigma options.
SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Karras", "Exponential", "SGM Uniform", "Normal")

_SCHEDULE_SUFFIXES = {"karras": "Karras", "exponential": "Exponential", "sgm uniform": "SGM Uniform"}

# Spellings seen in old infotexts, APIs and other tools.
_ALIASES = {
    "euler_a": "Euler a",
    "euler ancestral": "Euler a",
    "k_euler_a": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_2_a": "DPM2 a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
    "unipc": "UniPC",
}


class UnknownSamplerError(ValueError):
    pass


def normalize_sampler(name: str, schedule: str = "Automatic") -> tuple[str, str]:
    """Return (sampler, schedule type) for an A1111 sampler name, old or new.

    "DPM++ 2M Karras" becomes ("DPM++ 2M", "Karras"), as A1111 >= 1.9 reads it.
    """
    raw = " ".join(name.strip().split())
    lowered = raw.lower()
    by_lower = {n.lower(): n for n in SAMPLERS}
    if lowered in by_lower:
        return by_lower[lowered], normalize_schedule(schedule)
    if lowered in _ALIASES:
        return _ALIASES[lowered], normalize_schedule(schedule)
    for suffix, sched in _SCHEDULE_SUFFIXES.items():
        if lowered.endswith(" " + suffix):
            base = lowered[: -len(suffix) - 1]
            if base in by_lower:
                return by_lower[base], sched
    choices = ", ".join(SAMPLER_NAMES)
    raise UnknownSamplerError(f"unknown sampler {name!r}: choose one of {choices}")


def resolve_schedule(sampler: str, schedule: str = "Automatic") -> str:
    """The schedule a sampler runs: "Automatic" becomes A1111's per-sampler default."""
    name, sched = normalize_sampler(sampler, schedule)
    return SAMPLERS[name].default_schedule if sched == "Automatic" else sched


def infotext_schedule(sampler: str, schedule: str = "Automatic") -> str:
    """What A1111 writes as "Schedule type": processing.create_infotext writes p.scheduler
    ("Automatic"), and KDiffusionSampler.get_sigmas overwrites it with the resolved label when
    the sampler's table entry names a scheduler (DPM++ 2M -> "Karras"). Samplers without one
    (Euler a, Euler, LMS, Heun, DDIM, ...) keep "Automatic"."""
    name, sched = normalize_sampler(sampler, schedule)
    if sched != "Automatic":
        return sched
    default = SAMPLERS[name].default_schedule
    return "Automatic" if default == "Normal" else default


def normalize_schedule(schedule: str) -> str:
    lowered = " ".join(schedule.strip().split()).lower()
    for s in SCHEDULE_TYPES:
        if s.lower() == lowered:
            return s
    if lowered in ("simple", "sgm_uniform"):
        return "SGM Uniform"
    raise UnknownSamplerError(
        f"unknown schedule type {schedule!r}: choose one of {', '.join(SCHEDULE_TYPES)}"
    )
