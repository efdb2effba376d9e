"""The form's values: parsing what was typed, checking it, and remembering it between runs.

Pure Python (no textual): the settings form shows what ``parse_form`` finds, the app submits
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

from sdtui.config import MEMORY_MODES, state_dir
from sdtui.params import GenerationParams, UpscaleParams

MODES: tuple[str, ...] = ("txt2img", "img2img", "extras")
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

INT_FIELDS = (
    "steps",
    "seed",
    "width",
    "height",
    "batch_count",
    "batch_size",
    "clip_skip",
    "subseed",
    "hr_second_pass_steps",
)
FLOAT_FIELDS = (
    "cfg_scale",
    "denoising_strength",
    "subseed_strength",
    "hr_scale",
    "hr_denoising_strength",
)
TEXT_FIELDS = ("sampler", "schedule_type", "vae", "hr_upscaler")
BOOL_FIELDS = ("enable_hr",)
# the GenerationParams fields the form edits (the rest keep their defaults or loaded values)
FORM_PARAM_FIELDS = INT_FIELDS + FLOAT_FIELDS + TEXT_FIELDS + BOOL_FIELDS + ("model", "init_image")
# how a field is named in a message
FIELD_WORDS = {
    "clip_skip": "clip skip",
    "subseed": "variation seed",
    "subseed_strength": "variation strength",
    "hr_second_pass_steps": "hires steps",
    "hr_scale": "hires upscale",
    "hr_denoising_strength": "hires denoise",
}


@dataclass(frozen=True)
class FormState:
    mode: str = "txt2img"
    params: GenerationParams = field(default_factory=GenerationParams)
    upscaler: str = "Lanczos"
    upscale_scale: float = 2.0
    extras_image: str = ""
    # None: the settings' memory mode; set once the user picks one in the TUI
    memory_mode: str | None = None

    def replace(self, **changes: Any) -> FormState:
        return dataclasses.replace(self, **changes)

    def with_params(self, **changes: Any) -> FormState:
        return self.replace(params=self.params.replace(**changes))

    def generation_params(self) -> GenerationParams:
        """What Generate submits: the init image only counts in img2img mode."""
        init = self.params.init_image if self.mode == "img2img" else None
        return self.params.replace(init_image=init or None)

    def upscale_params(self) -> UpscaleParams:
        return UpscaleParams(
            image=self.extras_image, upscaler=self.upscaler, scale=self.upscale_scale
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
    p = state.params
    values = {name: _text(getattr(p, name)) for name in FORM_PARAM_FIELDS}
    values.update(
        mode=state.mode,
        upscaler=state.upscaler,
        upscale_scale=_text(state.upscale_scale),
        extras_image=state.extras_image,
        memory_mode=state.memory_mode or "",
    )
    return values


def parse_form(raw: Mapping[str, str], base: FormState) -> tuple[FormState, dict[str, str]]:
    """Read the fields' text onto ``base``. Returns the new state (a field that does not parse
    keeps its value from ``base``) and every problem, keyed by field."""
    errors: dict[str, str] = {}
    changes: dict[str, Any] = {}
    for name in INT_FIELDS:
        if name in raw:
            text = raw[name].strip()
            try:
                changes[name] = int(text)
            except ValueError:
                word = FIELD_WORDS.get(name, name.replace("_", " "))
                errors[name] = f"{word} {text!r} is not a whole number"
    for name in FLOAT_FIELDS:
        if name in raw:
            text = raw[name].strip()
            try:
                changes[name] = float(text)
            except ValueError:
                word = FIELD_WORDS.get(name, name.replace("_", " "))
                errors[name] = f"{word} {text!r} is not a number, e.g. 7 or 0.5"
    for name in TEXT_FIELDS:
        if name in raw and raw[name]:
            changes[name] = raw[name]
    for name in BOOL_FIELDS:
        if name in raw:
            changes[name] = raw[name].strip().lower() in ("1", "true", "on", "yes")
    if "model" in raw:
        changes["model"] = raw["model"] or None
    if "init_image" in raw:
        changes["init_image"] = raw["init_image"].strip() or None
    state = base.with_params(**changes)
    extra: dict[str, Any] = {}
    if raw.get("mode") in MODES:
        extra["mode"] = raw["mode"]
    if raw.get("upscaler"):
        extra["upscaler"] = raw["upscaler"]
    if "extras_image" in raw:
        extra["extras_image"] = raw["extras_image"].strip()
    if raw.get("memory_mode") in MEMORY_MODES:
        extra["memory_mode"] = raw["memory_mode"]
    if "upscale_scale" in raw:
        text = raw["upscale_scale"].strip()
        try:
            extra["upscale_scale"] = float(text)
        except ValueError:
            errors["upscale_scale"] = f"scale {text!r} is not a number, e.g. 2 or 4"
    state = state.replace(**extra)
    for name, message in state.errors().items():
        errors.setdefault(name, message)
    return state, errors


# -- memory ----------------------------------------------------------------------------------


def state_path() -> Path:
    return state_dir() / STATE_FILE


def to_json(state: FormState) -> dict[str, Any]:
    params = dataclasses.asdict(state.params)
    params.pop("extra", None)
    return {
        "version": STATE_VERSION,
        "mode": state.mode,
        "params": params,
        "upscaler": state.upscaler,
        "upscale_scale": state.upscale_scale,
        "extras_image": state.extras_image,
        "memory_mode": state.memory_mode,
    }


def from_json(data: Mapping[str, Any]) -> FormState:
    """Tolerant: an unknown or mistyped value falls back to its default."""
    defaults = GenerationParams()
    kinds = {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(GenerationParams)}
    changes: dict[str, Any] = {}
    raw_params = data.get("params")
    for name, value in (raw_params if isinstance(raw_params, Mapping) else {}).items():
        if name not in kinds or name == "extra":
            continue
        kind = kinds[name]
        if name in ("model", "init_image"):
            if value is None or isinstance(value, str):
                changes[name] = value
        elif kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            changes[name] = float(value)
        elif isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            changes[name] = value
    state = FormState(params=defaults.replace(**changes))
    mode = data.get("mode")
    if mode in MODES:
        state = state.replace(mode=mode)
    if isinstance(data.get("upscaler"), str):
        state = state.replace(upscaler=data["upscaler"])
    scale = data.get("upscale_scale")
    if isinstance(scale, int | float) and not isinstance(scale, bool):
        state = state.replace(upscale_scale=float(scale))
    if isinstance(data.get("extras_image"), str):
        state = state.replace(extras_image=data["extras_image"])
    if data.get("memory_mode") in MEMORY_MODES:
        state = state.replace(memory_mode=data["memory_mode"])
    return state


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
