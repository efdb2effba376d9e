"""Complete offline diffusers config folders (configs + CLIP tokenizer files, no weights).

``from_single_file(..., config=folder, local_files_only=True)`` needs a local folder that holds
every component's config and the tokenizer files; the package bundles the configs and the BPE
vocabulary, and this module joins them into such a folder in the cache, once per content.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from sdtui.clip_vocab import BPE_FILE, write_tokenizer_files
from sdtui.config import cache_dir
from sdtui.engine.t5_tokenizer import is_t5_folder, t5_assets_bytes, write_t5_tokenizer_files

BUNDLED = Path(__file__).parent / "assets" / "configs"
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2", "tokenizer_3")
_LAYOUT_VERSION = b"1"  # bump when the way the folder is assembled changes


def bundled_names() -> list[str]:
    """Names of the config folders that ship with sdtui (e.g. "sd15", "sdxl-base")."""
    return sorted(p.name for p in BUNDLED.iterdir() if (p / "model_index.json").is_file())


def _content_hash(source: Path) -> str:
    digest = hashlib.sha256(_LAYOUT_VERSION)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(path.relative_to(source).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    # The tokenizer files derive from the BPE file: a new vocabulary is a new folder.
    digest.update(BPE_FILE.read_bytes())
    digest.update(t5_assets_bytes())  # Flux.1 / SD3.5 T5 tokenizer folders
    return digest.hexdigest()[:10]


def config_dir(name: str) -> Path:
    """The cached, complete config folder for bundled config ``name``; built on first use."""
    source = BUNDLED / name
    if not (source / "model_index.json").is_file():
        raise ValueError(f"no bundled model config named {name!r}; have {bundled_names()}")
    root = cache_dir() / "configs"
    target = root / f"{name}-{_content_hash(source)}"
    if (target / "model_index.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: readers never see a half-written folder.
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        for sub in TOKENIZER_FOLDERS:
            if is_t5_folder(staging / sub):
                write_t5_tokenizer_files(staging / sub)
            elif (staging / sub).is_dir():
                write_tokenizer_files(staging / sub)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first; its folder is identical, keep it.
            if not (target / "model_index.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
