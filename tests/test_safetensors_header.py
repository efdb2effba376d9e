"""The one safetensors header reader (sdtui.safetensors_header) and the hash module that reads
headers for LoRA hashes (sdtui.hashes), on real files written by the safetensors library."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from sdtui.errors import UserError
from sdtui.hashes import addnet_hash, cached_sha256, sha256_file
from sdtui.safetensors_header import (
    METADATA,
    read_header_length,
    read_safetensors_header,
    read_safetensors_shapes,
    safetensors_metadata,
)

TENSORS = {
    "lora_unet_down.lora_down.weight": np.arange(32, dtype=np.float16).reshape(4, 8),
    "lora_unet_down.alpha": np.array(4.0, dtype=np.float32),
    "conv.weight": np.zeros((2, 3, 3, 3), dtype=np.float32),
}
META = {"ss_network_dim": "4", "note": "ü, 猫"}


@pytest.fixture
def real_file(tmp_path: Path) -> Path:
    path = tmp_path / "small.safetensors"
    save_file(TENSORS, str(path), metadata=META)
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDTUI_CACHE_DIR", str(cache))
    return cache


def test_header_of_a_real_file_matches_the_safetensors_library(real_file: Path) -> None:
    header = read_safetensors_header(real_file, complete=True)
    assert header == read_safetensors_header(real_file)  # the full check changes nothing here
    assert header[METADATA] == META
    with safe_open(str(real_file), framework="numpy") as f:
        assert set(f.keys()) == set(header) - {METADATA}
        assert f.metadata() == META
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            assert tuple(header[name]["shape"]) == tuple(f.get_slice(name).get_shape())
    assert header["lora_unet_down.lora_down.weight"]["dtype"] == "F16"
    assert read_safetensors_shapes(real_file) == {k: v.shape for k, v in TENSORS.items()}
    assert safetensors_metadata(real_file) == META


def test_header_length_and_the_lora_hash_of_what_follows(real_file: Path) -> None:
    data = real_file.read_bytes()
    with real_file.open("rb") as f:
        n = read_header_length(f)
    assert n is not None and json.loads(data[8 : 8 + n])[METADATA] == META
    after = hashlib.sha256(data[8 + n :]).hexdigest()
    assert addnet_hash(real_file) == after
    assert sha256_file(real_file) == hashlib.sha256(data).hexdigest()
    assert cached_sha256(real_file) == hashlib.sha256(data).hexdigest()


def test_no_metadata_is_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"x": np.ones(3, dtype=np.float32)}, str(path))
    assert safetensors_metadata(path) == {}
    assert read_safetensors_shapes(path) == {"x": (3,)}


def test_a_truncated_real_file_is_named_with_both_sizes(real_file: Path) -> None:
    data = real_file.read_bytes()
    cut = real_file.with_name("cut.safetensors")
    cut.write_bytes(data[:-40])
    assert read_safetensors_header(cut) == read_safetensors_header(real_file)  # a listing reads it
    with pytest.raises(UserError) as err:
        read_safetensors_header(cut, complete=True)
    assert str(err.value) == (
        f"cut.safetensors is truncated: {len(data) - 40} B of {len(data)} B — re-download it"
    )
    cut.write_bytes(data[:20])  # inside the JSON
    with pytest.raises(
        UserError,
        match=r"cut\.safetensors is not a valid safetensors file "
        r"\(the header says \d+ bytes but the file has 20; it is truncated\)",
    ):
        read_safetensors_header(cut)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "m.safetensors is empty (0 bytes): re-download it"),
        (
            b"\x01\x02",
            "m.safetensors is not a valid safetensors file (it is only 2 bytes long): "
            "re-download it",
        ),
        (
            b"<html><body>404 Not Found</body></html>",
            "m.safetensors is not a safetensors file (it starts with '<html><body>404 ...'): "
            "re-download it",
        ),
        (
            struct.pack("<Q", 2**40) + b"{}",
            "m.safetensors is not a valid safetensors file "
            "(its header length 1099511627776 is impossible): re-download it",
        ),
        (
            struct.pack("<Q", 4) + b"nope",
            "m.safetensors is not a valid safetensors file "
            "(its header is not JSON): re-download it",
        ),
        (
            struct.pack("<Q", 2) + b"[]",
            "m.safetensors is not a valid safetensors file "
            "(its header is not a JSON object): re-download it",
        ),
    ],
)
def test_what_is_wrong_is_one_sentence(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(data)
    for complete in (False, True):
        with pytest.raises(UserError) as err:
            read_safetensors_header(path, complete=complete)
        assert str(err.value) == message


def test_a_named_pipe_is_never_opened(tmp_path: Path) -> None:
    path = tmp_path / "pipe.safetensors"
    os.mkfifo(path)
    with pytest.raises(UserError, match="is a named pipe, not a file"):
        read_safetensors_header(path)


def test_the_new_homes_import_no_torch() -> None:
    code = (
        "import sys\n"
        "import sdtui.safetensors_header, sdtui.hashes, sdtui.regular_files, sdtui.units\n"
        "import sdtui.infotext, sdtui.model_index\n"
        "print(' '.join(m for m in ('torch', 'safetensors', 'textual') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == []
