"""The form's values: parsing what was typed, checking it, and remembering it between runs.

Pure Python (no textual). The fields, and how each one's text parses, are the rows of
``form_spec.FIELDS``. The settings form shows what ``parse_form`` finds, the app submits
``FormState.generation_params()`` / ``upscale_params()``, and ``save_form_state`` writes the
last values as JSON in ``config.state_dir()`` (atomically: a temporary file, then a rename),
so the next start comes back where the user left off.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtui.config import state_dir
from sdtui.family_presets import at_a_preset, at_stock, preset_for, with_preset, with_stock
from sdtui.params import GenerationParams, UpscaleParams
from sdtui.tui import form_spec
from sdtui.tui.form_spec import FieldSpec

SIZE_PRESETS: tuple[tuple[int, int], ...] = (
    (512, 512),
    (768, 768),
    (1024, 1024),
    (512, 768),
    (768, 512),
    (832, 1216),
    (1216, 832),
    (896, 1152),
    (1152, 896),
    (640, 640),
)
STATE_FILE = "form.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class FormState:
    mode: str = "txt2img"
    params: GenerationParams = field(default_factory=GenerationParams)
    upscaler: str = "Lanczos"
    upscale_scale: float = 2.0
    extras_image: str = ""
    # Extras face restoration (UpscaleParams' own: A1111's postprocessing scripts)
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    upscale_first: bool = False
    # None: the settings' memory mode; set once the user picks one in the TUI
    memory_mode: str | None = None
    # A1111's styles (styles.csv), applied in this order to the prompts on Generate; the
    # prompt boxes keep what was typed
    styles: tuple[str, ...] = ()

    def replace(self, **changes: Any) -> FormState:
        return dataclasses.replace(self, **changes)

    def with_params(self, **changes: Any) -> FormState:
        return self.replace(params=self.params.replace(**changes))

    def generation_params(self) -> GenerationParams:
        """What Generate submits: the init image, the mask and outpainting only count in
        img2img mode (the form keeps them for when it comes back)."""
        if self.mode != "img2img":
            return self.params.replace(init_image=None, mask=None, outpaint_pixels=0)
        return self.params.replace(
            init_image=self.params.init_image or None, mask=self.params.mask or None
        )

    def upscale_params(self) -> UpscaleParams:
        return UpscaleParams(
            image=self.extras_image,
            upscaler=self.upscaler,
            scale=self.upscale_scale,
            gfpgan_visibility=self.gfpgan_visibility,
            codeformer_visibility=self.codeformer_visibility,
            codeformer_weight=self.codeformer_weight,
            upscale_first=self.upscale_first,
        )

    def errors(self) -> dict[str, str]:
        """Every problem that blocks Generate in the current mode, keyed by form field."""
        if self.mode == "extras":
            errors = {
                ("upscale_scale" if k == "scale" else k): v
                for k, v in self.upscale_params().field_errors().items()
            }
            problem = _image_problem(self.extras_image, "image to upscale")
            if problem:
                errors["extras_image"] = problem
            return errors
        errors = self.generation_params().field_errors()
        if self.mode == "img2img":
            problem = _image_problem(self.params.init_image or "", "init image")
            if problem:
                errors["init_image"] = problem
            if self.params.mask:
                problem = _image_problem(self.params.mask, "mask")
                if problem:
                    errors["mask"] = problem
        return errors


# -- the built-in demo model -------------------------------------------------------------------

DEMO_MODEL_NAMES = ("demo", "sdtui-demo")
# the demo makes a 256x256 image in 8 steps in under a second on a 2-core CPU; 512x512 in
# 20 steps takes half a minute
DEMO_SIZE = 256
DEMO_STEPS = 8


def is_demo_model(name: str | None) -> bool:
    return bool(name) and str(name).lower() in DEMO_MODEL_NAMES


def with_demo_defaults(state: FormState) -> FormState:
    """``state`` with a size and step count the demo model makes in seconds, when it still
    has the stock ones (512x512, 20 steps); a form the user changed is left as it is."""
    p, stock = state.params, GenerationParams()
    if (p.width, p.height, p.steps) != (stock.width, stock.height, stock.steps):
        return state
    return state.with_params(width=DEMO_SIZE, height=DEMO_SIZE, steps=DEMO_STEPS)


# -- a model family's defaults (Flux.1, SD3.5: Forge's presets) ------------------------------


def _untouched(p: GenerationParams) -> bool:
    """At sdtui's stock values, or at the demo model's quick form (256x256, 8 steps)."""
    if (p.width, p.height, p.steps) == (DEMO_SIZE, DEMO_SIZE, DEMO_STEPS):
        stock = GenerationParams()
        p = p.replace(width=stock.width, height=stock.height, steps=stock.steps)
    return at_stock(p)


def with_family_defaults(state: FormState, family: str | None) -> tuple[FormState, str]:
    """``state`` for a model of ``family`` (a label: "Flux.1 schnell", "SDXL"), and the line
    that says what changed ("" for nothing). A form still at sdtui's stock sampler, CFG,
    steps and size (or the demo's quick form), or at another family's preset, takes the
    family's preset; back on an SD
    model, a form still at a preset gets the stock values again. A form the user changed,
    or an unknown family, is left as it is."""
    p = state.params
    if not family or family == "?":
        return state, ""
    preset = preset_for(family)
    if preset is not None:
        if not (_untouched(p) or at_a_preset(p) is not None):
            return state, ""
        new = state.replace(params=with_preset(p, preset))
        if new == state:
            return state, ""
        line = f"{preset.describe()}: the form is set to it"
        if family.startswith("Flux"):
            line += " (a negative prompt needs CFG above 1)"
        return new, line
    if at_a_preset(p) is None:
        return state, ""
    back = with_stock(p)
    return state.replace(params=back), (
        f"{family}: the form is back at sdtui's defaults ({back.sampler}, {back.steps} steps, "
        f"CFG {back.cfg_scale:g}, {back.width}x{back.height})"
    )


def _image_problem(path: str, what: str) -> str | None:
    if not path.strip():
        return f"{what}: give the path of a PNG/JPEG/WebP file (select an image and press F2)"
    p = Path(path).expanduser()
    if not p.exists():
        return f"{what} {p} does not exist: check the path"
    if p.is_dir():
        return f"{what} {p} is a folder: give an image file"
    from sdtui.tui.files import file_problem

    problem = file_problem(p, what)
    if problem:  # a named pipe would hang whoever opens it
        return problem
    return None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return "" if value is None else str(value)


def form_fields(state: FormState) -> dict[str, str]:
    """The text each form field shows for ``state``."""
    return {
        spec.name: _text(getattr(state.params if spec.on_params else state, spec.name))
        for spec in form_spec.FIELDS
    }


_KEEP = object()  # the text says nothing: the field keeps its value


def _parse(spec: FieldSpec, text: str) -> Any:
    """The value ``text`` means for ``spec``'s field, or ``_KEEP``; ValueError says why not."""
    if spec.kind in ("int", "float"):
        text = text.strip()
        try:
            return int(text) if spec.kind == "int" else float(text)
        except ValueError:
            what = "a whole number" if spec.kind == "int" else f"a number, e.g. {spec.example}"
            raise ValueError(f"{spec.message_word} {text!r} is not {what}") from None
    if spec.kind == "check":
        return text.strip().lower() in form_spec.TRUE_WORDS
    if spec.kind == "path":
        text = text.strip()
    if not text:
        return None if spec.optional else (_KEEP if spec.kind == "choice" else "")
    if spec.closed and text not in spec.choices:
        return _KEEP
    return text


def parse_form(raw: Mapping[str, str], base: FormState) -> tuple[FormState, dict[str, str]]:
    """Read the fields' text onto ``base``. Returns the new state (a field that does not parse
    keeps its value from ``base``) and every problem, keyed by field."""
    errors: dict[str, str] = {}
    params: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for spec in form_spec.FIELDS:
        if spec.name not in raw:
            continue
        try:
            value = _parse(spec, raw[spec.name])
        except ValueError as e:
            errors[spec.name] = str(e)
            continue
        if value is not _KEEP:
            (params if spec.on_params else own)[spec.name] = value
    state = base.with_params(**params).replace(**own)
    for name, message in state.errors().items():
        errors.setdefault(name, message)
    return state, errors


# -- memory ----------------------------------------------------------------------------------


def state_path() -> Path:
    return state_dir() / STATE_FILE


def to_json(state: FormState) -> dict[str, Any]:
    data: dict[str, Any] = {"version": STATE_VERSION}
    for f in dataclasses.fields(FormState):
        data[f.name] = getattr(state, f.name)
    data["styles"] = list(state.styles)
    params = dataclasses.asdict(state.params)
    params.pop("extra", None)
    data["params"] = params
    return data


def _restored(name: str, default: Any, value: Any) -> Any:
    """``value`` read from the JSON file for the field ``name``, or ``_KEEP`` when it is not
    one that field takes."""
    spec = form_spec.field_spec(name)
    if spec is not None and spec.closed and value not in spec.choices:
        return _KEEP
    if default is None:  # model, init image: a name or None
        ok = value is None or isinstance(value, str)
    elif isinstance(value, bool) or isinstance(default, bool):  # JSON's true is no number
        ok = type(value) is type(default)
    elif isinstance(default, float):  # 5 is 5.0
        ok = isinstance(value, int | float)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    return value if ok else _KEEP


def from_json(data: Mapping[str, Any]) -> FormState:
    """Tolerant: an unknown or mistyped value falls back to its default."""
    stock = FormState()
    known = {f.name for f in dataclasses.fields(GenerationParams)} - {"extra"}
    raw_params = data.get("params")
    saved = raw_params.items() if isinstance(raw_params, Mapping) else ()
    params = {
        name: _restored(name, getattr(stock.params, name), value)
        for name, value in saved
        if name in known
    }
    own = {
        f.name: _restored(f.name, getattr(stock, f.name), data[f.name])
        for f in dataclasses.fields(FormState)
        if f.name not in ("params", "styles") and f.name in data
    }
    own["styles"] = _style_names(data.get("styles"))
    return stock.with_params(**_taken(params)).replace(**_taken(own))


def _style_names(value: Any) -> Any:
    """The style names a JSON list holds (one name once, in order), or ``_KEEP``."""
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        return _KEEP
    return tuple(dict.fromkeys(value))


def _taken(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not _KEEP}


def load_form_state(path: Path | None = None) -> FormState | None:
    """The last saved form, or None when there is none (or it cannot be read)."""
    path = path or state_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return from_json(data) if isinstance(data, Mapping) else None


def save_form_state(state: FormState, path: Path | None = None) -> Path | None:
    """Write atomically; returns the path, or None when the folder is not writable (the form
    is a convenience: failing to remember it must never stop a job)."""
    path = path or state_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".form-", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(to_json(state), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        return None
    return path
