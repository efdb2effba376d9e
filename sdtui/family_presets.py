"""Per model family: the settings a first job starts from, and the fields the family has.

Forge shows other defaults for Flux than for SD (its "UI" radio: sd / xl / flux) and hides the
fields a family does without. sdtui does the same from the checkpoint's family (its label,
``ModelFamily.label``: "Flux.1 dev", "SD3.5 large", ...), which ``sdtui.model_index`` reads from
a file's header without torch. The CLI fills the flags not given from a preset, the TUI's form
takes a preset while it is still at sdtui's stock values and hides the rows a family lacks.
SD 1.x, 2.x and SDXL keep sdtui's stock defaults (A1111's) and every field.

Torch-free, like ``sdtui.params``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdtui.params import GenerationParams
from sdtui.samplers import (
    FLOW_SAMPLER_NAMES,
    FLOW_SCHEDULE_TYPES,
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
)


@dataclass(frozen=True)
class FamilyPreset:
    family: str  # ModelFamily.label: "Flux.1 schnell"
    sampler: str
    # Forge's "Simple": the flow-matching schedule Forge's presets pick for these families
    schedule_type: str
    cfg_scale: float
    steps: int
    width: int
    height: int
    distilled_cfg_scale: float | None  # Flux dev's guidance; None: the family has none
    source: str  # where the values come from, said with them

    schedule_label = "Simple"  # Forge's name of the schedule these families run

    def describe(self) -> str:
        """'Flux.1 schnell: Euler, Simple, 4 steps, CFG 1, 896x1152 (Forge's preset)'"""
        parts = [
            self.sampler,
            self.schedule_label,
            f"{self.steps} steps",
            f"CFG {self.cfg_scale:g}",
        ]
        if self.distilled_cfg_scale is not None:
            parts.append(f"Distilled CFG {self.distilled_cfg_scale:g}")
        parts.append(f"{self.width}x{self.height}")
        return f"{self.family}: {', '.join(parts)} ({self.source})"

    def values(self) -> dict[str, object]:
        """The GenerationParams fields the preset sets."""
        out: dict[str, object] = {
            "sampler": self.sampler,
            "schedule_type": self.schedule_type,
            "cfg_scale": self.cfg_scale,
            "steps": self.steps,
            "width": self.width,
            "height": self.height,
        }
        if self.distilled_cfg_scale is not None:
            out["distilled_cfg_scale"] = self.distilled_cfg_scale
        return out


# Forge's "flux" UI preset (lllyasviel/stable-diffusion-webui-forge, modules_forge/main_entry.py,
# on_preset_change and the "UI defaults 'flux'" options): txt2img 896x1152, CFG 1, Distilled
# CFG 3.5, Sampler Euler, Schedule type Simple. The preset leaves Steps at A1111's 20.
def _forge_flux(family: str, steps: int, distilled: float | None, source: str) -> FamilyPreset:
    return FamilyPreset(family, "Euler", "Simple", 1.0, steps, 896, 1152, distilled, source)


PRESETS: dict[str, FamilyPreset] = {
    p.family: p
    for p in (
        _forge_flux("Flux.1 dev", 20, 3.5, "Forge's preset"),
        # schnell is timestep-distilled for 1-4 steps: Black Forest Labs' model card and
        # diffusers' FluxPipeline example run it with num_inference_steps=4 (and no guidance:
        # Forge's CFG 1 is the same); it has no guidance input, so no Distilled CFG
        _forge_flux(
            "Flux.1 schnell", 4, None, "Forge's preset, 4 steps as Black Forest Labs run it"
        ),
        # Forge has no SD3.5 preset: Stability AI's model cards (stabilityai/stable-diffusion-3.5-
        # medium and -large, README: StableDiffusion3Pipeline example) run medium at 40 steps,
        # guidance 4.5 and large at 28 steps, guidance 3.5, both at the 1024x1024 they were
        # trained for; their scheduler is flow-matching Euler (FlowMatchEulerDiscreteScheduler)
        FamilyPreset(
            "SD3.5 medium",
            sampler="Euler",
            schedule_type="Simple",
            cfg_scale=4.5,
            steps=40,
            width=1024,
            height=1024,
            distilled_cfg_scale=None,
            source="Stability AI's settings",
        ),
        FamilyPreset(
            "SD3.5 large",
            sampler="Euler",
            schedule_type="Simple",
            cfg_scale=3.5,
            steps=28,
            width=1024,
            height=1024,
            distilled_cfg_scale=None,
            source="Stability AI's settings",
        ),
    )
}

# the fields a preset sets, and sdtui's stock values of them (GenerationParams' defaults)
PRESET_FIELDS = ("sampler", "schedule_type", "cfg_scale", "steps", "width", "height")

# what Flux.1 and SD3.5 run without in sdtui for now (sdtui.engine.dit refuses each): clip
# skip (CLIP-L's last layer is what they read), rescaled CFG, the refiner
DIT_LACKS = frozenset(
    {
        "clip_skip",
        "cfg_rescale",
        "refiner_checkpoint",
        "refiner_switch_at",
    }
)
DISTILLED = "distilled_cfg_scale"


def preset_for(family: str | None) -> FamilyPreset | None:
    """The preset of a family label ("Flux.1 dev"), or None (SD 1.x/2.x/SDXL, unknown)."""
    return PRESETS.get(family or "")


def is_dit(family: str | None) -> bool:
    """A Flux.1 / SD3.5 label, whichever variant (a new one still hides what they lack)."""
    return bool(family) and str(family).startswith(("Flux.1", "SD3"))


def sampler_names(family: str | None) -> tuple[str, ...]:
    """The samplers a family runs: all of A1111's, or on Flux.1 / SD3.5 (flow matching)
    the k-diffusion ones, as Forge (not DDIM, PLMS, UniPC)."""
    return FLOW_SAMPLER_NAMES if is_dit(family) else SAMPLER_NAMES


def t5_limit(family: str | None) -> int | None:
    """The T5 sequence a family's prompt is read as (diffusers' max_sequence_length, as the
    engine passes it: Flux.1 dev 512, schnell and SD3.5 256); None: CLIP's 75-token chunks."""
    if not is_dit(family):
        return None
    return 512 if str(family) == "Flux.1 dev" else 256


def schedule_names(family: str | None) -> tuple[str, ...]:
    """The schedule types a family runs: A1111's, or on Flux.1 / SD3.5 Forge's flow ones."""
    return FLOW_SCHEDULE_TYPES if is_dit(family) else SCHEDULE_TYPES


def hidden_fields(family: str | None) -> frozenset[str]:
    """The GenerationParams fields a family does not have (the form hides their rows).
    Distilled CFG is Flux dev's alone; an unknown family (None, "?") is shown as SD."""
    if not is_dit(family):
        return frozenset({DISTILLED})
    preset = preset_for(family)
    has_distilled = preset is not None and preset.distilled_cfg_scale is not None
    return DIT_LACKS if has_distilled else DIT_LACKS | {DISTILLED}


def without_hidden(params: GenerationParams, family: str | None) -> GenerationParams:
    """``params`` with the fields the family lacks at their defaults: values the form keeps
    for an SD model (hires on, a mask) are not sent to a model that would refuse them."""
    if not is_dit(family):
        return params
    stock = GenerationParams()
    changes = {
        name: getattr(stock, name)
        for name in hidden_fields(family) - {DISTILLED}
        if getattr(params, name) != getattr(stock, name)
    }
    return params.replace(**changes) if changes else params


def _key(params: GenerationParams) -> tuple[object, ...]:
    return tuple(getattr(params, name) for name in PRESET_FIELDS)


def at_stock(params: GenerationParams) -> bool:
    """Sampler, schedule, CFG, steps and size are still sdtui's stock ones (512x512, ...)."""
    return _key(params) == _key(GenerationParams())


def at_a_preset(params: GenerationParams) -> FamilyPreset | None:
    """The preset whose values ``params`` still has (untouched since a preset set them)."""
    key = _key(params)
    return next((p for p in PRESETS.values() if key == _key(with_preset(params, p))), None)


def with_preset(params: GenerationParams, preset: FamilyPreset) -> GenerationParams:
    return params.replace(**preset.values())


def with_stock(params: GenerationParams) -> GenerationParams:
    """The preset fields (and Distilled CFG) back at sdtui's stock values."""
    stock = GenerationParams()
    names = (*PRESET_FIELDS, DISTILLED)
    return params.replace(**{name: getattr(stock, name) for name in names})


__all__ = [
    "PRESETS",
    "FamilyPreset",
    "at_a_preset",
    "at_stock",
    "hidden_fields",
    "is_dit",
    "preset_for",
    "with_preset",
    "with_stock",
    "without_hidden",
]
