"""A1111 sampler and schedule-type names (pure data, shared by the UI, the CLI and the engine).

The engine runs A1111's algorithm of each name (``sdtui.engine.ksampling``); everything that
only needs the names (the form, argument checks, infotext) imports this module, which needs
no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSpec:
    name: str  # the name A1111 shows (the engine runs A1111's algorithm of that name)
    # what A1111's "Automatic" picks for this sampler: samplers_k_diffusion's 'scheduler'
    # option (sd_samplers_kdiffusion.py, A1111 >= 1.9); none there means model.get_sigmas(n),
    # which is the "Normal" schedule here. DDIM, PLMS and UniPC take A1111's own timesteps
    # whatever the schedule type says.
    default_schedule: str = "Normal"


SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec("Euler a"),
        SamplerSpec("Euler"),
        SamplerSpec("LMS"),
        SamplerSpec("Heun"),
        SamplerSpec("DPM2", default_schedule="Karras"),
        SamplerSpec("DPM2 a", default_schedule="Karras"),
        SamplerSpec("DPM++ 2M", default_schedule="Karras"),
        SamplerSpec("DPM++ 2M SDE", default_schedule="Exponential"),
        SamplerSpec("DPM++ SDE", default_schedule="Karras"),
        SamplerSpec("DDIM"),
        SamplerSpec("PLMS"),
        SamplerSpec("UniPC"),
    ]
}

SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)

# A1111's own timestep samplers: they work in SD's discrete timesteps (alphas_cumprod), which
# a flow-matching model (Flux.1, SD3.5) does not have; Forge runs the others on those models
TIMESTEP_SAMPLERS: tuple[str, ...] = ("DDIM", "PLMS", "UniPC")
FLOW_SAMPLER_NAMES: tuple[str, ...] = tuple(
    name for name in SAMPLER_NAMES if name not in TIMESTEP_SAMPLERS
)
# the schedules a flow model runs, as Forge computes them over the model's own shifted sigmas
# (sdtui.engine.flow_samplers.flow_schedule); "Automatic" as Forge resolves it
# (resolve_flow_schedule)
FLOW_SCHEDULE_TYPES: tuple[str, ...] = ("Automatic", "Simple", "Karras", "Exponential")

# "Automatic" = the sampler's own default; the rest map to diffusers sigma options.
SCHEDULE_TYPES: tuple[str, ...] = (
    "Automatic",
    "Karras",
    "Exponential",
    "SGM Uniform",
    "Simple",
    "Normal",
)

_SCHEDULE_SUFFIXES = {
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm uniform": "SGM Uniform",
}

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


def resolve_flow_schedule(sampler: str, schedule: str = "Automatic") -> str:
    """The schedule a sampler runs on a flow model (Flux.1, SD3.5). Forge's
    ``KDiffusionSampler.get_sigmas`` resolves "Automatic" to the sampler's own 'scheduler'
    option, as A1111 does: DPM++ 2M on Flux runs Karras and its infotext says so. Samplers
    without one (Euler, Euler a, LMS, Heun) fail there ("Wrong scheduler!"), and Forge's Flux
    preset picks Simple for them: here they run Simple."""
    name, sched = normalize_sampler(sampler, schedule)
    if sched != "Automatic":
        return sched
    default = SAMPLERS[name].default_schedule
    return default if default in FLOW_SCHEDULE_TYPES else "Simple"


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
    if lowered in ("sgm_uniform", "sgmuniform"):  # A1111's name and its alias "SGMUniform"
        return "SGM Uniform"
    raise UnknownSamplerError(
        f"unknown schedule type {schedule!r}: choose one of {', '.join(SCHEDULE_TYPES)}"
    )
