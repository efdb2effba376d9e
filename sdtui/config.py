"""Settings (one TOML file a person can read) and the A1111 folder layout.

Precedence, lowest first: built-in defaults, the settings file, environment variables
(SDTUI_HOME, SDTUI_MODELS_DIR, SDTUI_OUTPUTS_DIR, SDTUI_A1111_DIR, SDTUI_DEVICE,
SDTUI_MEMORY_MODE), command-line flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from sdtui.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

APP = "sdtui"
DEVICES = ("auto", "cuda", "cpu")
MEMORY_MODES = ("auto", "normal", "low", "lowest")
GRAPHICS = ("auto", "kitty", "sixel", "halfcell", "unicode", "none")
FAST_PATHS = ("auto", "nocompile", "off")


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

    def ensure_folders(self) -> None:
        """Create the A1111 model folders so a user sees where files go."""
        for sub in ("Stable-diffusion", "Lora", "VAE", "ESRGAN", "RealESRGAN"):
            try:
                (self.models / sub).mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # a read-only shared models folder is fine

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def check(self) -> None:
        if self.device not in DEVICES:
            raise UserError(f"device {self.device!r} is unknown: use one of {', '.join(DEVICES)}")
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
}


def _coerce(values: dict[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise UserError(
                f"unknown setting {key!r} in {source}: known settings are {', '.join(fields)}"
            )
        if key in _PATH_KEYS:
            out[key] = Path(str(value)).expanduser() if value else None
        elif key == "preview_every":
            out[key] = int(value)
        else:
            out[key] = str(value) if value is not None else None
    return out


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Defaults < settings file < environment < overrides (flags; None means not given)."""
    path = path or config_path()
    values: dict[str, Any] = {}
    if path.exists():
        try:
            values.update(_coerce(tomllib.loads(path.read_text(encoding="utf-8")), str(path)))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"settings file {path} is not valid TOML ({e}): fix or delete it") from None
    values.update(_coerce({f: os.environ[e] for e, f in _ENV.items() if os.environ.get(e)}, "environment"))
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
        data[f.name] = str(v) if isinstance(v, Path) else v
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(data), encoding="utf-8")
    os.replace(tmp, path)
    return path
