"""Settings (one TOML file a person can read) and the A1111 folder layout."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "sdtui"


def cache_dir() -> Path:
    """Where built things live (demo model, config folders, hash cache). SDTUI_CACHE_DIR wins."""
    env = os.environ.get("SDTUI_CACHE_DIR")
    path = Path(env) if env else Path(platformdirs.user_cache_dir(APP))
    path.mkdir(parents=True, exist_ok=True)
    return path
