"""The settings form's fields, in one table: adding an A1111 option to the form is one row.

Each row names a field of ``GenerationParams`` (or of the form's own ``FormState``: mode,
extras upscaler, memory mode), the label the form shows, the widget that edits it and how
its text parses. The settings form lays rows out in table order (``beside`` puts a field on
the row above), ``form_state`` parses, shows and remembers them, and an image's infotext
fills them by ``infotext`` key. Type and default are the dataclass field's own; ranges are
checked once, by ``GenerationParams.field_errors``.

Pure Python (no textual).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sdtui.config import MEMORY_MODES
from sdtui.params import GenerationParams
from sdtui.samplers import SAMPLER_NAMES, SCHEDULE_TYPES

MODES: tuple[str, ...] = ("txt2img", "img2img", "extras")

# int / float: a text input of that number; path: a text input of a file path (empty is
# none); choice: a drop-down; check: a checkbox
Kind = Literal["int", "float", "path", "choice", "check"]
# main: always unfolded; hires, more: the two folded sections below it
Section = Literal["main", "hires", "more"]
# which modes show a main-section row: gen = txt2img and img2img, i2i = img2img only
Shown = Literal["all", "gen", "i2i", "extras"]
SECTIONS: tuple[Section, ...] = ("main", "hires", "more")
TRUE_WORDS = ("1", "true", "on", "yes")

_PARAM_FIELDS = {f.name: f for f in dataclasses.fields(GenerationParams)}


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
    FieldSpec("vae", "VAE", "choice", section="more", infotext="VAE"),
    FieldSpec(
        "clip_skip", "Clip skip", "int", section="more", infotext="Clip skip", word="clip skip"
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
