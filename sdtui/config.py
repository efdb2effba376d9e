"""Settings (one TOML file a person can read) and the A1111 folder layout.

Precedence, lowest first: built-in defaults, the settings file, environment variables
(SDTUI_HOME, SDTUI_MODELS_DIR, SDTUI_OUTPUTS_DIR, SDTUI_A1111_DIR, SDTUI_DEVICE,
SDTUI_MEMORY_MODE), command-line flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import platformdirs

from sdtui.errors import UserError
from sdtui.params import MemoryMode
from sdtui.styles import default_styles_path

APP = "sdtui"
DEVICES = ("auto", "cuda", "mps", "cpu")  # and cuda:N, one card of several; mps: Apple GPU
_CUDA_N = re.compile(r"^cuda:\d{1,2}$")
DEFAULT_IDLE_MINUTES = 30.0
DEFAULT_MAX_IMAGE_MEGAPIXELS = 64.0  # 8192x8192: a 4x upscale of 2048x2048
MAX_IMAGE_MEGAPIXELS_LIMIT = 1024.0
MEMORY_MODES: tuple[str, ...] = get_args(MemoryMode)
GRAPHICS = ("auto", "kitty", "sixel", "halfcell", "unicode", "none")
FAST_PATHS = ("auto", "nocompile", "off")


def valid_device(name: str) -> bool:
    return name in DEVICES or bool(_CUDA_N.match(name))


def apple_silicon() -> bool:
    """A Mac with an Apple GPU (Metal: torch's "mps" device), known without importing torch."""
    return sys.platform == "darwin" and platform.machine() == "arm64"


def cache_dir() -> Path:
    """Where built things live (demo model, config folders, hash cache). SDTUI_CACHE_DIR wins."""
    env = os.environ.get("SDTUI_CACHE_DIR")
    path = Path(env) if env else Path(platformdirs.user_cache_dir(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_path() -> Path:
    env = os.environ.get("SDTUI_CONFIG")
    return Path(env) if env else Path(platformdirs.user_config_dir(APP)) / "config.toml"


def state_dir() -> Path:
    """Small state that is not settings: the form's last values."""
    env = os.environ.get("SDTUI_STATE_DIR")
    return Path(env) if env else Path(platformdirs.user_state_dir(APP))


def default_home() -> Path:
    env = os.environ.get("SDTUI_HOME")
    return Path(env).expanduser() if env else Path.home() / "sdtui"


@dataclass(frozen=True)
class Settings:
    # An existing A1111 install: its models/, embeddings/ and outputs/ are used as they are.
    a1111_dir: Path | None = None
    models_dir: Path | None = None
    outputs_dir: Path | None = None
    embeddings_dir: Path | None = None
    default_model: str | None = None
    device: str = "auto"
    memory_mode: str = "auto"
    graphics: str = "auto"
    # CUDA only: auto = channels_last + torch.compile of the UNet blocks; nocompile; off
    fast_path: str = "auto"
    preview_every: int = 1
    # the engine daemon: one worker per device (default: every visible GPU, else the CPU)
    devices: tuple[str, ...] = ()
    # it exits after this many minutes with no client attached and no job (0 = never)
    daemon_idle_minutes: float = DEFAULT_IDLE_MINUTES
    # the largest image sdtui opens or makes (init images, upscale sources and results):
    # a 41 KB PNG can claim 12000x12000 and take gigabytes once decoded
    max_image_megapixels: float = DEFAULT_MAX_IMAGE_MEGAPIXELS

    # -- resolved folders -------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.a1111_dir if self.a1111_dir else default_home()

    @property
    def models(self) -> Path:
        return self.models_dir or self.root / "models"

    @property
    def outputs(self) -> Path:
        return self.outputs_dir or self.root / "outputs"

    @property
    def embeddings(self) -> Path:
        return self.embeddings_dir or self.root / "embeddings"

    @property
    def checkpoints(self) -> Path:
        return self.models / "Stable-diffusion"

    @property
    def styles_file(self) -> Path:
        """The prompt styles: A1111's ``styles.csv`` in its folder (its default, with no
        ``--styles-file`` and no ``--data-dir``), else sdtui's own beside its models/ and
        outputs/ (SDTUI_HOME). A separate models or outputs folder does not move it."""
        return default_styles_path(self.root)

    def ensure_folders(self) -> None:
        """Create the A1111 model folders so a user sees where files go."""
        for sub in (
            "Stable-diffusion",
            "Lora",
            "VAE",
            "ESRGAN",
            "RealESRGAN",
            "GFPGAN",
            "Codeformer",
        ):
            try:
                (self.models / sub).mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # a read-only shared models folder is fine

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check(self) -> None:
        if not valid_device(self.device):
            raise UserError(
                f"device {self.device!r} is unknown: use one of {', '.join(DEVICES)} or cuda:N"
            )
        for d in self.devices:
            if d == "auto" or not valid_device(d):
                raise UserError(
                    f"device {d!r} in devices is unknown: list cpu, cuda or cuda:N entries"
                )
        mp = self.max_image_megapixels
        if (
            not isinstance(mp, int | float)
            or not math.isfinite(mp)
            or not 1 <= mp <= MAX_IMAGE_MEGAPIXELS_LIMIT
        ):
            raise UserError(
                f"max_image_megapixels {mp!r} is out of range: use 1 to {MAX_IMAGE_MEGAPIXELS_LIMIT:g}"
            )
        idle = self.daemon_idle_minutes
        if not isinstance(idle, int | float) or not math.isfinite(idle) or idle < 0:
            raise UserError(
                f"daemon_idle_minutes {idle!r} is not a number of minutes: use 0 (never) or more"
            )
        if self.memory_mode not in MEMORY_MODES:
            raise UserError(
                f"memory mode {self.memory_mode!r} is unknown: use one of {', '.join(MEMORY_MODES)}"
            )
        if self.graphics not in GRAPHICS:
            raise UserError(
                f"graphics {self.graphics!r} is unknown: use one of {', '.join(GRAPHICS)}"
            )
        if self.fast_path not in FAST_PATHS:
            raise UserError(
                f"fast path {self.fast_path!r} is unknown: use one of {', '.join(FAST_PATHS)}"
            )
        if self.a1111_dir and not self.a1111_dir.is_dir():
            raise UserError(
                f"A1111 folder {self.a1111_dir} does not exist: point --a1111-dir at the "
                "stable-diffusion-webui folder that holds models/"
            )


_PATH_KEYS = ("a1111_dir", "models_dir", "outputs_dir", "embeddings_dir")
_ENV = {
    "SDTUI_A1111_DIR": "a1111_dir",
    "SDTUI_MODELS_DIR": "models_dir",
    "SDTUI_OUTPUTS_DIR": "outputs_dir",
    "SDTUI_EMBEDDINGS_DIR": "embeddings_dir",
    "SDTUI_MODEL": "default_model",
    "SDTUI_DEVICE": "device",
    "SDTUI_MEMORY_MODE": "memory_mode",
    "SDTUI_GRAPHICS": "graphics",
    "SDTUI_FAST_PATH": "fast_path",
    "SDTUI_DEVICES": "devices",
    "SDTUI_DAEMON_IDLE_MINUTES": "daemon_idle_minutes",
    "SDTUI_MAX_IMAGE_MEGAPIXELS": "max_image_megapixels",
}


_STR_KEYS = ("default_model", "device", "memory_mode", "graphics", "fast_path")
MAX_PREVIEW_EVERY = 1000


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return "a number" if isinstance(value, int | float) else "text"


def _number(
    key: str, value: Any, source: str, *, integer: bool, low: float, high: float, hint: str
) -> Any:
    """A finite number in [low, high] (TOML gives ints and floats; the environment gives text)."""
    given = value
    if isinstance(value, str):
        try:
            value = int(value) if integer else float(value)
        except ValueError:
            value = None
    bad_type = value is None or isinstance(value, bool) or not isinstance(value, int | float)
    if not bad_type and integer and isinstance(value, float):
        bad_type = not value.is_integer()
        value = int(value) if not bad_type else value
    if bad_type or not math.isfinite(value) or not low <= value <= high:
        raise UserError(f"{key} in {source} is {given!r}: {hint}")
    return value


def _coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Settings from a file or the environment, each of the type it must be: a wrong type
    is refused in one sentence (``models_dir = 123`` must not become a folder named 123)."""
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(
                f"unknown setting {key!r} in {source}: known settings are {', '.join(fields)}"
            )
        if key in _PATH_KEYS:
            if not isinstance(value, str):
                raise UserError(
                    f"{key} in {source} is {_type_name(value)}: give a folder path in quotes, "
                    f'e.g. {key} = "/data/sd"'
                )
            if "\x00" in value:
                raise UserError(f"{key} in {source} holds a NUL character: give a folder path")
            out[key] = Path(value).expanduser() if value else None
        elif key == "preview_every":
            out[key] = _number(
                key,
                value,
                source,
                integer=True,
                low=0,
                high=MAX_PREVIEW_EVERY,
                hint=f"use a whole number of steps from 0 (no previews) to {MAX_PREVIEW_EVERY}",
            )
        elif key == "max_image_megapixels":
            out[key] = _number(
                key,
                value,
                source,
                integer=False,
                low=1,
                high=MAX_IMAGE_MEGAPIXELS_LIMIT,
                hint=f"use a number of megapixels from 1 to {MAX_IMAGE_MEGAPIXELS_LIMIT:g}",
            )
        elif key == "devices":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(d, str) for d in items):
                raise UserError(f'devices in {source} must be a list like ["cuda:0", "cuda:1"]')
            out[key] = tuple(d.strip() for d in items if d.strip())
        elif key == "daemon_idle_minutes":
            out[key] = float(
                _number(
                    key,
                    value,
                    source,
                    integer=False,
                    low=0,
                    high=10**7,
                    hint="use a number of minutes (0 = never stop)",
                )
            )
        elif key in _STR_KEYS:
            if value is not None and not isinstance(value, str):
                raise UserError(
                    f'{key} in {source} is {_type_name(value)}: give text in quotes, e.g. {key} = "..."'
                )
            out[key] = value
        else:  # pragma: no cover - every field is named above
            out[key] = value
    return out


def _read_settings_file(path: Path) -> dict[str, Any]:
    if path.is_dir():
        raise UserError(
            f"settings file {path} is a folder: point SDTUI_CONFIG / --config at a file"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(
            f"settings file {path} cannot be read ({e.strerror or e}): fix its permissions"
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(
            f"settings file {path} is not UTF-8 text (byte {e.start}): save it as UTF-8"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"settings file {path} is not valid TOML ({e}): fix or delete it") from None


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Defaults < settings file < environment < overrides (flags; None means not given)."""
    path = path or config_path()
    values: dict[str, Any] = {}
    if path.exists():
        values.update(_coerce(_read_settings_file(path), str(path)))
    values.update(
        _coerce({f: os.environ[e] for e, f in _ENV.items() if os.environ.get(e)}, "environment")
    )
    values.update({k: v for k, v in overrides.items() if v is not None})
    for key in _PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = Path(values[key]).expanduser()
    settings = Settings(**values)
    settings.check()
    return settings


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    import tomli_w

    path = path or config_path()
    data = {}
    for f in dataclasses.fields(Settings):
        v = getattr(settings, f.name)
        if v is None or v == f.default:
            continue
        if isinstance(v, tuple):
            v = list(v)
        data[f.name] = str(v) if isinstance(v, Path) else v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
    return path


def settings_to_dict(settings: Settings) -> dict[str, Any]:
    """Plain JSON values (paths as strings), e.g. for the daemon's command line."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        v = getattr(settings, f.name)
        if v is None:
            continue
        out[f.name] = str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
    return out


def settings_from_dict(values: dict[str, Any], source: str) -> Settings:
    settings = Settings(**_coerce(values, source))
    settings.check()
    return settings
