"""The T5 tokenizer files that Flux.1 and SD3.5 folders need, from the copy sdtui bundles
(``assets/t5``: InvokeAI's Apache-2.0 files, see its NOTICE), so nothing comes from the Hub."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

T5_ASSETS = Path(__file__).parent / "assets" / "t5"
T5_FILES = ("tokenizer.json.gz", "tokenizer_config.json", "special_tokens_map.json")


def is_t5_folder(folder: Path) -> bool:
    """A bundled tokenizer folder whose tokenizer_config.json names a T5 tokenizer."""
    config = folder / "tokenizer_config.json"
    if not config.is_file():
        return False
    return str(json.loads(config.read_text()).get("tokenizer_class", "")).startswith("T5")


def write_t5_tokenizer_files(folder: Path) -> None:
    """tokenizer.json, special_tokens_map.json and tokenizer_config.json into ``folder``; the
    folder's own tokenizer_config.json keeps its model_max_length (512 Flux, 256 SD3.5)."""
    own = json.loads((folder / "tokenizer_config.json").read_text())
    with gzip.open(T5_ASSETS / "tokenizer.json.gz", "rb") as src:
        (folder / "tokenizer.json").write_bytes(src.read())
    shutil.copyfile(T5_ASSETS / "special_tokens_map.json", folder / "special_tokens_map.json")
    config = json.loads((T5_ASSETS / "tokenizer_config.json").read_text())
    config["model_max_length"] = own.get("model_max_length", config.get("model_max_length"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def t5_assets_bytes() -> bytes:
    """The bundled T5 files' content, for the config cache's content hash."""
    return b"".join((T5_ASSETS / name).read_bytes() for name in T5_FILES)
