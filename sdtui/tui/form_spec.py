"""The settings form's fields, in one table: adding an A1111 option to the form is one row.

Each row names a field of ``GenerationParams`` (or of the form's own ``FormState``: mode,
the Extras fields, which go into ``UpscaleParams``, memory mode), the label the form shows,
the widget that edits it and how its text parses. The settings form lays rows out in table
order (``beside`` puts a field on the row above), ``form_state`` parses, shows and remembers
them, and an image's infotext fills them by ``infotext`` key. Type and default are the
dataclass field's own; ranges are checked once, by ``GenerationParams.field_errors``
(``UpscaleParams.field_errors`` for Extras).

Pure Python (no textual).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sdtui.config import MEMORY_MODES
from sdtui.params import (
    FACE_RESTORERS,
    MASKED_CONTENT,
    OUTPAINT_SIDES,
    RNG_SOURCES,
    GenerationParams,
)
from sdtui.samplers import SAMPLER_NAMES, SCHEDULE_TYPES

MODES: tuple[str, ...] = ("txt2img", "img2img", "extras")

# int / float: a text input of that number; path: a text input of a file path (empty is
# none); choice: a drop-down; check: a checkbox
Kind = Literal["int", "float", "path", "choice", "check"]
# main: always unfolded; hires, inpaint, more: the folded sections below it
Section = Literal["main", "hires", "inpaint", "more"]
# which modes show a main-section row: gen = txt2img and img2img, i2i = img2img only
Shown = Literal["all", "gen", "i2i", "extras"]
SECTIONS: tuple[Section, ...] = ("main", "hires", "inpaint", "more")
TRUE_WORDS = ("1", "true", "on", "yes")

_PARAM_FIELDS = {f.name: f for f in dataclasses.fields(GenerationParams)}


def _side_choices() -> tuple[str, ...]:
    """Every non-empty set of OUTPAINT_SIDES as the comma list the params take: all four,
    the two pairs of opposite sides and each side first (the usual picks), then the rest."""
    from itertools import combinations

    sides = OUTPAINT_SIDES
    usual = [",".join(sides), "left,right", "up,down", *sides]
    every = [",".join(c) for n in (2, 3) for c in combinations(sides, n)]
    return tuple(dict.fromkeys([*usual, *every]))


OUTPAINT_SIDE_CHOICES = _side_choices()


@dataclass(frozen=True)
class FieldSpec:
    name: str  # the GenerationParams (or FormState) field, and the widget's id
    label: str  # A1111's word, shortened to fit 80 columns
    kind: Kind
    section: Section = "main"
    shown: Shown = "all"
    beside: bool = False  # on the row above, after a small label
    tooltip: str = ""
    hint: str = ""  # an input's placeholder, a checkbox's caption
    # choices: fixed options; empty = the form is given them (models, upscalers, VAEs found
    # on disk). closed: a value outside them is not taken (else the params check it)
    choices: tuple[str, ...] = ()
    closed: bool = False
    infotext: str | None = None  # the key A1111 writes this value under, alone
    word: str = ""  # how a message names it; default: the name, spaced
    example: str = "7 or 0.5"  # of a number, in "not a number, e.g. ..."

    @property
    def on_params(self) -> bool:
        """A GenerationParams field (else one of FormState's)."""
        return self.name in _PARAM_FIELDS

    @property
    def default(self) -> Any:
        """GenerationParams' default. The form's own fields have theirs in FormState (None
        here: form_state imports this table, so it does not import form_state)."""
        return _PARAM_FIELDS[self.name].default if self.on_params else None

    @property
    def optional(self) -> bool:
        """None is a value (no model: the configured default; no init image)."""
        return self.on_params and self.default is None

    @property
    def message_word(self) -> str:
        return self.word or self.name.replace("_", " ")


FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("mode", "Mode", "choice", choices=MODES, closed=True),
    FieldSpec("model", "Model", "choice", shown="gen", infotext="Model"),
    FieldSpec(
        "sampler", "Sampler", "choice", shown="gen", choices=SAMPLER_NAMES, infotext="Sampler"
    ),
    FieldSpec(
        "schedule_type",
        "Schedule",
        "choice",
        shown="gen",
        choices=SCHEDULE_TYPES,
        infotext="Schedule type",
    ),
    FieldSpec("steps", "Steps", "int", shown="gen", infotext="Steps"),
    FieldSpec("cfg_scale", "CFG", "float", shown="gen", beside=True, infotext="CFG scale"),
    # Forge's "Distilled CFG Scale": Flux.1 dev's guidance. Shown for Flux dev only: the rows
    # a model's family does not have are hidden (sdtui.family_presets.hidden_fields)
    FieldSpec(
        "distilled_cfg_scale",
        "Dist. CFG",
        "float",
        shown="gen",
        tooltip="Distilled CFG Scale (Forge): Flux.1 dev's guidance, 3.5 by default",
        infotext="Distilled CFG Scale",
        word="distilled CFG",
        example="3.5",
    ),
    FieldSpec("seed", "Seed", "int", shown="gen", infotext="Seed"),
    # A1111 writes width and height together, as "Size: 512x768"
    FieldSpec("width", "Size", "int", shown="gen"),
    FieldSpec("height", "x", "int", shown="gen", beside=True),
    # A1111's words: batch count (batches one after another), batch size (images made
    # together, in one pass)
    FieldSpec(
        "batch_count",
        "Batch count",
        "int",
        shown="gen",
        tooltip="batches, one after another",
    ),
    FieldSpec(
        "batch_size",
        "Batch size",
        "int",
        shown="gen",
        beside=True,
        tooltip="Batch size: images made together, in one pass",
    ),
    FieldSpec("denoising_strength", "Denoise", "float", shown="i2i", infotext="Denoising strength"),
    FieldSpec("init_image", "Init img", "path", shown="i2i", hint="path of a PNG"),
    FieldSpec("extras_image", "Image", "path", shown="extras", hint="path of a PNG"),
    FieldSpec("upscaler", "Upscaler", "choice", shown="extras"),
    FieldSpec("upscale_scale", "Scale", "float", shown="extras", word="scale", example="2 or 4"),
    # A1111's Extras face restoration (postprocessing_gfpgan / _codeformer): 0 = off
    FieldSpec(
        "gfpgan_visibility",
        "GFPGAN",
        "float",
        shown="extras",
        tooltip="GFPGAN visibility: 0 off, 1 the restored faces only",
        word="GFPGAN visibility",
        example="0.5",
    ),
    FieldSpec(
        "codeformer_visibility",
        "CodeFormer",
        "float",
        shown="extras",
        tooltip="CodeFormer visibility: 0 off, 1 the restored faces only",
        word="CodeFormer visibility",
        example="0.5",
    ),
    FieldSpec(
        "codeformer_weight",
        "weight",
        "float",
        shown="extras",
        beside=True,
        tooltip="CodeFormer weight: 0 the strongest restoration, 1 the weakest",
        word="CodeFormer weight",
        example="0.5",
    ),
    FieldSpec(
        "upscale_first",
        "Order",
        "check",
        shown="extras",
        hint="upscale before faces",
        tooltip='A1111\'s "Upscale Before Restoring Faces"',
    ),
    FieldSpec(
        "enable_hr",
        "Enable",
        "check",
        section="hires",
        hint="second pass, larger",
        tooltip="txt2img, then upscale and denoise again (A1111's hires fix)",
    ),
    FieldSpec(
        "hr_scale",
        "Upscale",
        "float",
        section="hires",
        infotext="Hires upscale",
        word="hires upscale",
    ),
    FieldSpec(
        "hr_second_pass_steps",
        "steps",
        "int",
        section="hires",
        beside=True,
        tooltip="0: as many as the first pass",
        infotext="Hires steps",
        word="hires steps",
    ),
    FieldSpec("hr_upscaler", "Upscaler", "choice", section="hires", infotext="Hires upscaler"),
    # written as "Denoising strength" when the image had a hires pass
    FieldSpec("hr_denoising_strength", "Denoise", "float", section="hires", word="hires denoise"),
    # inpainting (img2img): A1111's inpaint tab, with the mask given as a file (alt+m draws one)
    FieldSpec(
        "mask",
        "Mask",
        "path",
        section="inpaint",
        hint="PNG, white = change (alt+m draws)",
        tooltip="white: repaint, black: keep (A1111's inpaint upload); alt+m draws one",
    ),
    FieldSpec(
        "mask_blur", "Blur", "int", section="inpaint", infotext="Mask blur", word="mask blur"
    ),
    FieldSpec(
        "inpaint_full_res_padding",
        "padding",
        "int",
        section="inpaint",
        beside=True,
        tooltip="Only masked padding, pixels",
        infotext="Masked area padding",
        word="only masked padding",
    ),
    FieldSpec(
        "inpainting_fill",
        "Content",
        "choice",
        section="inpaint",
        choices=MASKED_CONTENT,
        closed=True,
        tooltip="Masked content: what the masked area starts from",
        infotext="Masked content",
    ),
    FieldSpec(
        "inpaint_full_res",
        "Area",
        "check",
        section="inpaint",
        hint="only masked",
        tooltip="Inpaint area: only the masked part, at full resolution (else the whole picture)",
    ),
    FieldSpec(
        "inpainting_mask_invert",
        "Invert",
        "check",
        section="inpaint",
        hint="not masked",
        tooltip="Mask mode: inpaint not masked",
    ),
    # outpainting: the init image grows by this many pixels on these sides, the new part is
    # inpainted (the mask is made for it)
    FieldSpec(
        "outpaint_pixels",
        "Outpaint",
        "int",
        section="inpaint",
        tooltip="pixels to add on each chosen side (0: off)",
        word="outpaint pixels",
    ),
    FieldSpec(
        "outpaint_sides",
        "Sides",
        "choice",
        section="inpaint",
        choices=OUTPAINT_SIDE_CHOICES,
        tooltip="the sides outpainting extends",
        word="outpaint sides",
    ),
    FieldSpec("vae", "VAE", "choice", section="more", infotext="VAE"),
    FieldSpec(
        "clip_skip", "Clip skip", "int", section="more", infotext="Clip skip", word="clip skip"
    ),
    # A1111's "Random number generator source" setting; an image without the key is GPU's
    FieldSpec(
        "rng",
        "RNG",
        "choice",
        section="more",
        beside=True,
        choices=RNG_SOURCES,
        closed=True,
        tooltip="noise source: CPU, the same on any machine; GPU, A1111's default (an NVIDIA "
        "card's noise, drawn the same here without one); NV",
        infotext="RNG",
    ),
    FieldSpec(
        "subseed",
        "Var. seed",
        "int",
        section="more",
        infotext="Variation seed",
        word="variation seed",
    ),
    FieldSpec(
        "subseed_strength",
        "str",
        "float",
        section="more",
        beside=True,
        infotext="Variation seed strength",
        word="variation strength",
    ),
    FieldSpec(
        "cfg_rescale",
        "CFG resc.",
        "float",
        section="more",
        tooltip="rescaled CFG (phi): 0 off, 0.7 for v-prediction / zero-SNR models",
        infotext="CFG Rescale",
        word="CFG rescale",
    ),
    # A1111's "Restore faces" checkbox; the restorer and CodeFormer's weight are its settings
    FieldSpec("restore_faces", "Faces", "check", section="more", hint="restore faces"),
    FieldSpec(
        "face_restoration_model",
        "Restorer",
        "choice",
        section="more",
        choices=FACE_RESTORERS,
        closed=True,
        infotext="Face restoration",
    ),
    # A1111 writes no CodeFormer weight with an image (it is a setting): no infotext key
    FieldSpec(
        "code_former_weight",
        "CF weight",
        "float",
        section="more",
        tooltip="CodeFormer weight: 0 the strongest restoration, 1 the weakest",
        word="CodeFormer weight",
        example="0.5",
    ),
    # the SDXL refiner: a checkpoint that takes over for the last steps ("" = none). A1111
    # writes it as "name [hash]": no infotext key of the value alone
    FieldSpec(
        "refiner_checkpoint",
        "Refiner",
        "choice",
        section="more",
        tooltip="a second checkpoint for the last steps (none: off)",
    ),
    FieldSpec(
        "refiner_switch_at",
        "Switch at",
        "float",
        section="more",
        tooltip="the fraction of the steps after which the refiner takes over",
        infotext="Refiner switch at",
        word="refiner switch at",
        example="0.8",
    ),
    FieldSpec("memory_mode", "Memory", "choice", section="more", choices=MEMORY_MODES, closed=True),
)


def field_spec(name: str) -> FieldSpec | None:
    return next((spec for spec in FIELDS if spec.name == name), None)


def rows(section: Section) -> Iterator[list[FieldSpec]]:
    """The section's fields, one list per row of the form."""
    row: list[FieldSpec] = []
    for spec in FIELDS:
        if spec.section != section:
            continue
        if row and not spec.beside:
            yield row
            row = []
        row.append(spec)
    if row:
        yield row


def infotext_numbers() -> dict[str, tuple[str, type[int] | type[float]]]:
    """Infotext key -> the GenerationParams field its number sets, and the number's type."""
    return {
        spec.infotext: (spec.name, int if spec.kind == "int" else float)
        for spec in FIELDS
        if spec.infotext and spec.on_params and spec.kind in ("int", "float")
    }
