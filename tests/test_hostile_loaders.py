"""Hostile model files in the loaders: no code runs, no memory bomb, one sentence each.

Every case below is a file a user might download or be sent; what the user sees instead of
code running, memory running out or a traceback. Add new cases here, one line each.

TorchScript
- a TorchScript ``.pt``/``.pth`` upscaler (its ``__setstate__`` writes a file) in models/ESRGAN:
  "X is a TorchScript file, which can run code when loaded: sdtui does not load TorchScript;
  use a .safetensors or .pth state dict of this upscaler" (Extras and the hires-fix upscaler),
  and nothing is written
- a TorchScript archive named ``.ckpt``: the same sentence for "this model", from the loader and
  in its ``sdtui models`` row
Memory bombs (refused before anything is allocated; memory stays flat)
- a 1 KB zip ``.ckpt`` whose pickle says LONG_BINPUT 2**26 (CPython grows its memo to that):
  "X is damaged or crafted: its pickle asks for memo slot 67,108,864 in a N-byte pickle; ..."
- the same as a raw (non-zip) pickle ``.ckpt``, and with PUT/BINPUT in protocol 0
- BINBYTES8 / BINUNICODE8 of 2**62 bytes, and FRAME 2**40: "... claims N bytes where M follow"
- a deflated zip whose pickle unpacks to far more than the file: "its zip claims to unpack to ..."
- a safetensors header length over 100 MB or past the end of the file: "not a valid safetensors
  file (its header length N is impossible / the header says N bytes but the file has M)"
- an upscaler key naming block 9,999,999 (spandrel would build them all): "damaged or crafted"
Damaged or odd safetensors headers ("X is not a valid safetensors file (why): re-download it",
the same sentence from the listing and the loader: one reader, sdtui.safetensors_header)
- a null shape, Infinity / NaN / 1e400 in a shape, a string where a number goes, a bool dim,
  negative or reversed or out-of-range data offsets, offsets that do not fit the shape,
  JSON nested 10,000 deep, a JSON list instead of an object, invalid UTF-8, __metadata__ that is
  not text, a tensor entry that is a number
- a scalar or 1-D ``conv_in`` / attention weight (family detection indexes shapes):
  "its UNet weight 'input_blocks.0.0.weight' has shape (), which no Stable Diffusion model has"
Zips torch cannot read
- an encrypted zip ``.ckpt``: "X is an encrypted zip, which sdtui cannot read: ..."
- a PPMd (or other unsupported method) zip ``.ckpt``: "X is a zip packed with ppmd, which torch
  cannot read: ..."
Pickles that ask for code
- a raw protocol-0 pickle calling os.system: "refused to load X: its pickle tries to run code
  (posix.system). ..." (not "not a checkpoint ... re-download")
- a pickle calling ``codecs.encode``: "... tries to run code (codecs.encode)"; one feeding
  ``_codecs.encode`` a made-up codec: "... tries to run code (_codecs.encode)"
- Lightning's ModelCheckpoint with a strange state or arguments: the weights load
- a Lightning class outside the allow-list: "... tries to run code (pytorch_lightning...)"
- a pickle whose state_dict contains itself: "X holds no weights" (no endless loop)
Listings
- one bad file beside good ones: ``discover_models`` lists every good file and flags the bad one
  (family "?", ``ModelEntry.error`` says why); resolving a good name still works
- a named pipe (FIFO) in models/Stable-diffusion, Lora, embeddings, VAE and ESRGAN: skipped by
  every listing, never opened; loading it by path says "X is a named pipe, not a file: ..."
- a tampered model-hashes.json (escape sequences, wrong lengths, a list, not JSON, nested
  deep): ignored; the real hash is computed again
- a LoRA whose metadata ``sshs_model_hash`` holds escape sequences: the computed hash is used
- a damaged LoRA (alpha of many numbers, a 1-D up weight, rank 0): "LoRA 'x' is damaged: ..."
Fuzz
- a few hundred seeded mutations of a tiny safetensors file and a tiny .ckpt (bit flips,
  truncations, random JSON values, random opcode streams): every reader either succeeds or
  raises UserError with a one-line message naming the file
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import threading
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from sdtui.engine import upscale as up
from sdtui.engine.checkpoint_files import read_checkpoint, read_shapes
from sdtui.engine.models import load_pipeline
from sdtui.errors import UserError
from sdtui.extra_networks_index import (
    embedding_vectors,
    list_embeddings,
    list_loras,
    list_vaes,
    lora_hash,
)
from sdtui.model_index import (
    cached_model_hash,
    discover_models,
    entry_for_path,
    model_hash,
    old_model_hash,
    read_safetensors_header,
    resolve_model,
    sha256_file,
)
from sdtui.params import UpscaleParams
from sdtui.upscalers import list_upscalers

U = "model.diffusion_model."
CONV_IN = U + "input_blocks.0.0.weight"
ATTN2 = U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
TORCHSCRIPT = (
    "{name} is a TorchScript file, which can run code when loaded: sdtui does not load "
    "TorchScript; use a .safetensors or .pth state dict of this {what}"
)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDTUI_CACHE_DIR", str(cache))
    return cache


def _one_sentence(err: pytest.ExceptionInfo[UserError], name: str) -> str:
    message = str(err.value)
    assert "\n" not in message and name in message, message
    assert "Traceback" not in message
    return message


# -- builders -------------------------------------------------------------------------------


def _safetensors_bytes(header: Any, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _sd_header(conv_in: Any = (320, 4, 3, 3), attn: Any = (320, 768)) -> dict[str, Any]:
    return {
        CONV_IN: {"dtype": "F16", "shape": list(conv_in), "data_offsets": [0, 0]},
        ATTN2: {"dtype": "F16", "shape": list(attn), "data_offsets": [0, 0]},
    }


def _tiny_weights() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        CONV_IN: torch.randn(4, 4, 3, 3, generator=g),
        ATTN2: torch.randn(4, 8, generator=g),
        "first_stage_model.decoder.conv_in.bias": torch.randn(4, generator=g),
    }


def _sd15(path: Path) -> Path:
    """The two tensors that make a file "SD1" to the family detection (0.5 MB)."""
    f16 = torch.float16
    save_file(
        {CONV_IN: torch.zeros(320, 4, 3, 3, dtype=f16), ATTN2: torch.zeros(320, 768, dtype=f16)},
        str(path),
    )
    return path


def _zip_ckpt(path: Path, pickle_bytes: bytes, *, method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("archive/data.pkl", pickle_bytes)
        zf.writestr("archive/data/0", b"\0" * 16)
        zf.writestr("archive/version", b"3\n")
    return path


def _patch_zip(path: Path, *, flag: int | None = None, method: int | None = None) -> None:
    """Set general-purpose flag bits / the method in every local and central header."""
    data = bytearray(path.read_bytes())
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        start = 0
        while (i := data.find(sig, start)) >= 0:
            if flag is not None:
                old = struct.unpack_from("<H", data, i + flag_at)[0]
                struct.pack_into("<H", data, i + flag_at, old | flag)
            if method is not None:
                struct.pack_into("<H", data, i + method_at, method)
            start = i + 4
    path.write_bytes(bytes(data))


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def _torchscript(path: Path, marker: Path) -> Path:
    """A scripted module whose ``__setstate__`` (run by torch.jit.load) writes into
    ``marker`` through a shared memory map."""

    class Writes(torch.nn.Module):
        def __init__(self, target: str) -> None:
            super().__init__()
            self.target = target

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        @torch.jit.export
        def __getstate__(self) -> tuple[str, bool]:
            return (self.target, self.training)

        @torch.jit.export
        def __setstate__(self, state: tuple[str, bool]) -> None:
            self.target = state[0]
            t = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8)
            t.fill_(65)
            self.training = bool(int(t.sum()) > 0) and state[1]

    torch.jit.save(torch.jit.script(Writes(str(marker))), str(path))
    return path


@pytest.fixture(scope="module")
def torchscript_proof(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TorchScript file that really writes when loaded (so the refusal tests mean something)."""
    folder = tmp_path_factory.mktemp("ts")
    marker = folder / "marker"
    path = _torchscript(folder / "proof.pt", marker)
    marker.write_bytes(bytes(4))
    torch.jit.load(str(path))
    assert marker.read_bytes() == b"AAAA", "the TorchScript payload did not run: test is void"
    return path


def _compact_upscaler(path: Path) -> Path:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(1)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
    torch.save({"params": net.state_dict()}, path)
    return path


# -- TorchScript ----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pt", ".pth"])
def test_torchscript_upscaler_is_refused_and_never_runs(
    suffix: str, tmp_path: Path, torchscript_proof: Path
) -> None:
    models = tmp_path / "models"
    (models / "ESRGAN").mkdir(parents=True)
    marker = tmp_path / "marker"
    marker.write_bytes(bytes(4))
    path = _torchscript(models / "ESRGAN" / f"4x-Evil{suffix}", marker)
    up.unload_upscaler()
    with pytest.raises(UserError) as err:
        up.load_upscaler(path)
    assert str(err.value) == TORCHSCRIPT.format(name=path.name, what="upscaler")
    # the Extras upscale and the hires fix (which calls upscale_pil) both resolve by name
    from PIL import Image

    params = UpscaleParams(image="", upscaler="4x-Evil", target_width=32, target_height=32)
    with pytest.raises(UserError, match="is a TorchScript file"):
        up.upscale_pil(Image.new("RGB", (16, 16)), params, models)
    assert marker.read_bytes() == bytes(4)


def test_good_upscaler_still_loads_beside_a_torchscript_one(tmp_path: Path) -> None:
    path = _compact_upscaler(tmp_path / "2x-Compact.pth")
    up.unload_upscaler()
    model = up.load_upscaler(path)
    assert model.scale == 2
    up.unload_upscaler()


def test_torchscript_checkpoint_is_refused_everywhere(
    tmp_path: Path, torchscript_proof: Path
) -> None:
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    marker = tmp_path / "marker"
    marker.write_bytes(bytes(4))
    path = _torchscript(sd / "evil.ckpt", marker)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert str(err.value) == TORCHSCRIPT.format(name="evil.ckpt", what="model")
    (entry,) = discover_models(tmp_path / "models")
    assert entry.family == "?" and entry.error == TORCHSCRIPT.format(name="evil.ckpt", what="model")
    emb = tmp_path / "emb.pt"
    shutil.copy(path, emb)
    assert embedding_vectors(emb) is None
    assert marker.read_bytes() == bytes(4)


# -- memory bombs ---------------------------------------------------------------------------


def _peak_while(action: Callable[[], Any]) -> tuple[int, BaseException | None]:
    tracemalloc.start()
    error: BaseException | None = None
    try:
        action()
    except BaseException as e:  # noqa: BLE001 - returned to the test
        error = e
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, error


MEMO_BOMB = b"\x80\x02}r\x00\x00\x00\x04."  # LONG_BINPUT 2**26 (0x04000000)
BOMBS = {
    "long_binput": (MEMO_BOMB, "asks for memo slot 67,108,864"),
    "binput_put_text": (b"(dp99999999999\n.", "asks for memo slot 99,999,999,999"),
    "binbytes8": (b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"x" * 16 + b".", "claims 4,611,"),
    "binunicode8": (b"\x80\x04\x8d" + struct.pack("<Q", 2**62) + b"x" * 16 + b".", "claims 4,611,"),
    "frame": (
        b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.",
        "claims a 1,099,511,627,776-byte frame",
    ),
}


@pytest.mark.parametrize("layout", ["zip", "raw"])
@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_pickle_memory_bombs_are_refused_before_allocating(
    bomb: str, layout: str, tmp_path: Path
) -> None:
    payload, words = BOMBS[bomb]
    payload = payload + b"\0" * (900 - len(payload)) if layout == "raw" else payload
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    path = sd / "bomb.ckpt"
    if layout == "zip":
        _zip_ckpt(path, payload)
    else:
        path.write_bytes(payload)
    peak, error = _peak_while(lambda: read_checkpoint(path))
    assert isinstance(error, UserError), error
    assert peak < 20_000_000, peak
    message = str(error)
    assert message.startswith("bomb.ckpt is damaged or crafted: its pickle ") and words in message
    assert message.endswith("re-download it or use a .safetensors version")
    peak, error = _peak_while(lambda: discover_models(tmp_path / "models"))
    assert error is None and peak < 20_000_000, (error, peak)
    if layout == "zip":  # only zips are unpickled (shapes only) by the listing
        (entry,) = discover_models(tmp_path / "models")
        assert entry.family == "?" and entry.error == message
        assert embedding_vectors(path) is None


def test_memo_bomb_in_sdtui_models_stays_small(tmp_path: Path) -> None:
    """The tester's case end to end: `sdtui models` in its own process, a 1 KB bomb beside a
    real model; the listing finishes, flags the bomb and grows by a few MB at most."""
    home = tmp_path / "home"
    sd = home / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    _sd15(sd / "good.safetensors")
    _zip_ckpt(sd / "bomb.ckpt", MEMO_BOMB)
    code = (
        "import resource, sys, json\n"
        "from sdtui import cli\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "rc = cli.main(['models', '--json', '--no-hash'])\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(json.dumps({'rc': rc, 'grew_kb': after - before}), file=sys.stderr)\n"
    )
    env = {**os.environ, "SDTUI_HOME": str(home), "SDTUI_CONFIG": str(tmp_path / "c.toml")}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    stats = json.loads(proc.stderr.strip().splitlines()[-1])
    assert stats["rc"] == 0 and stats["grew_kb"] < 100_000, stats
    rows = {r["name"]: r for r in json.loads(proc.stdout)["checkpoints"]}
    assert rows["good"]["family"].startswith("SD1") and rows["good"]["error"] is None
    assert rows["bomb"]["family"] == "?" and "memo slot 67,108,864" in rows["bomb"]["error"]


def test_zip_bomb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", b"N" * 20_000_000 + b".")
    assert path.stat().st_size < 100_000
    peak, error = _peak_while(lambda: read_checkpoint(path))
    assert isinstance(error, UserError) and peak < 20_000_000, (error, peak)
    assert "its zip claims to unpack to 19 MiB from" in str(error)  # 20_000_001 bytes
    assert entry_for_path(path).error == str(error)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (struct.pack("<Q", 2**40) + b"{}", "header length 1099511627776 is impossible"),
        (struct.pack("<Q", 5000) + b"{}", "the header says 5008 bytes but the file has 10"),
    ],
)
def test_safetensors_header_length_is_checked_before_reading(
    data: bytes, why: str, tmp_path: Path
) -> None:
    path = tmp_path / "big.safetensors"
    path.write_bytes(data)
    peak, error = _peak_while(lambda: read_safetensors_header(path))
    assert isinstance(error, UserError) and why in str(error) and peak < 1_000_000
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    _one_sentence(err, "big.safetensors")


# -- safetensors headers --------------------------------------------------------------------


def _with(field: str, value: Any) -> dict[str, Any]:
    header = _sd_header()
    header[CONV_IN] = {**header[CONV_IN], field: value}
    return header


BAD_HEADERS: dict[str, tuple[bytes, str]] = {
    "null shape": (json.dumps(_with("shape", None)).encode(), "has no valid shape"),
    "infinity": (
        json.dumps(_sd_header()).replace("320, 4", "Infinity, 4").encode(),
        "has no valid shape",
    ),
    "nan": (json.dumps(_sd_header()).replace("320, 4", "NaN, 4").encode(), "has no valid shape"),
    "1e400": (json.dumps(_sd_header()).replace("320, 4", "1e400, 4").encode(), "no valid shape"),
    "string dim": (json.dumps(_with("shape", ["320", 4, 3, 3])).encode(), "has no valid shape"),
    "bool dim": (json.dumps(_with("shape", [True, 4, 3, 3])).encode(), "has no valid shape"),
    "negative dim": (json.dumps(_with("shape", [-1, 4, 3, 3])).encode(), "has no valid shape"),
    "string offsets": (json.dumps(_with("data_offsets", "0-0")).encode(), "invalid data offsets"),
    "reversed offsets": (
        json.dumps(_with("data_offsets", [5, 1])).encode(),
        "invalid data offsets",
    ),
    "inf offset": (
        json.dumps(_with("data_offsets", [0, 1])).replace("[0, 1]", "[0, 1e400]").encode(),
        "invalid data offsets",
    ),
    "dtype number": (json.dumps(_with("dtype", 16)).encode(), "has no valid dtype"),
    "entry is a number": (json.dumps({CONV_IN: 5}).encode(), "is not described"),
    "metadata not text": (
        json.dumps({"__metadata__": {"a": {"b": 1}}, **_sd_header()}).encode(),
        "__metadata__ is not a table of text",
    ),
    "nested 10000 deep": (b'{"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested too deeply"),
    "a list": (b"[1, 2, 3]", "not a JSON object"),
    "invalid utf-8": (b'{"\xff\xfe": 1}', "not JSON"),
    "huge number": (b'{"a": ' + b"9" * 5000 + b"}", "not JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_safetensors_header_is_one_sentence(case: str, tmp_path: Path) -> None:
    raw, why = BAD_HEADERS[case]
    sd = tmp_path / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    path = sd / "bad.safetensors"
    path.write_bytes(_safetensors_bytes(raw))
    with pytest.raises(UserError) as err:
        read_safetensors_header(path)
    message = _one_sentence(err, "bad.safetensors")
    assert why in message, message
    entry = entry_for_path(path, sd)
    assert entry.family == "?" and why in (entry.error or "")
    for action in (read_checkpoint, read_shapes, load_pipeline):
        with pytest.raises(UserError) as err:
            action(path)
        _one_sentence(err, "bad.safetensors")
        if action is not load_pipeline:  # one reader: the listing and the engine agree
            assert str(err.value) == message


def test_offsets_past_the_file_and_offsets_that_do_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(_safetensors_bytes(_with("data_offsets", [0, 2**62]), b"\0" * 8))
    with pytest.raises(UserError, match=r"m\.safetensors is truncated.*re-download"):
        read_checkpoint(path)
    path.write_bytes(_safetensors_bytes(_with("data_offsets", [0, 8]), b"\0" * 8))
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert "has data offsets that do not fit its shape" in _one_sentence(err, "m.safetensors")


@pytest.mark.parametrize("shape", [(), (320,)])
def test_scalar_or_flat_unet_input_is_named_not_indexed(
    shape: tuple[int, ...], tmp_path: Path
) -> None:
    sd = tmp_path / "Stable-diffusion"
    sd.mkdir()
    path = sd / "flat.safetensors"
    weights = {CONV_IN: torch.zeros(shape), ATTN2: torch.zeros(4, 8)}
    save_file(weights, str(path))
    message = (
        f"its UNet weight 'input_blocks.0.0.weight' has shape {shape}, which no Stable "
        "Diffusion model has: the file is damaged; re-download it"
    )
    assert entry_for_path(path, sd).error == message
    with pytest.raises(UserError) as err:
        load_pipeline(path)
    assert str(err.value) == f"cannot load flat.safetensors: {message}"
    save_file({CONV_IN: torch.zeros(4, 4, 3, 3), ATTN2: torch.zeros(4)}, str(path))
    assert "attn2.to_k.weight' has shape (4,)" in (entry_for_path(path, sd).error or "")


# -- zips torch cannot read -----------------------------------------------------------------


def test_encrypted_and_ppmd_zips(tmp_path: Path) -> None:
    good = pickle.dumps({"state_dict": {}}, protocol=2)
    enc = _zip_ckpt(tmp_path / "locked.ckpt", good)
    _patch_zip(enc, flag=0x1)
    with pytest.raises(RuntimeError):  # what zipfile itself does with it
        zipfile.ZipFile(enc).read("archive/data.pkl")
    with pytest.raises(UserError) as err:
        read_checkpoint(enc)
    message = _one_sentence(err, "locked.ckpt")
    assert message == (
        "locked.ckpt is an encrypted zip, which sdtui cannot read: re-download it or use a "
        ".safetensors version"
    )
    assert entry_for_path(enc).error == message

    ppmd = _zip_ckpt(tmp_path / "ppmd.ckpt", good)
    _patch_zip(ppmd, method=98)
    with pytest.raises(NotImplementedError):
        zipfile.ZipFile(ppmd).read("archive/data.pkl")
    with pytest.raises(UserError) as err:
        read_checkpoint(ppmd)
    assert str(err.value) == (
        "ppmd.ckpt is a zip packed with ppmd, which torch cannot read: re-download it or use a "
        ".safetensors version"
    )
    assert entry_for_path(ppmd).error == str(err.value)


# -- pickles that ask for code --------------------------------------------------------------


def test_protocol_0_pickle_calling_os_system_is_refused_not_called_text(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"x": _RunsShell(f"touch {marker}")}, protocol=0))
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert str(err.value) == (
        f"refused to load evil.ckpt: its pickle tries to run code ({os.system.__module__}.system). "
        "Use a .safetensors version of this model."
    )
    assert not marker.exists()


@pytest.mark.parametrize(
    ("raw", "culprit"),
    [
        (
            b"\x80\x02ccodecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00nope\x86R.",
            "codecs.encode",
        ),
        (
            b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00nope\x86R.",
            "_codecs.encode",
        ),
        (b"\x80\x02c_codecs\nencode\nK\x01K\x02\x86R.", "_codecs.encode"),
    ],
)
def test_codecs_encode_is_refused_in_a_sentence(raw: bytes, culprit: str, tmp_path: Path) -> None:
    for path in (tmp_path / "c.ckpt", _zip_ckpt(tmp_path / "z.ckpt", raw)):
        if path.name == "c.ckpt":
            path.write_bytes(raw)
        with pytest.raises(UserError) as err:
            read_checkpoint(path)
        assert str(err.value) == (
            f"refused to load {path.name}: its pickle tries to run code ({culprit}). "
            "Use a .safetensors version of this model."
        )


def _lightning_pickle(state: bytes, args: bytes = b")") -> bytes:
    """{"cb": ModelCheckpoint(*args), BUILD with ``state``}"""
    return (
        b"\x80\x02}X\x02\x00\x00\x00cbcpytorch_lightning.callbacks.model_checkpoint\n"
        b"ModelCheckpoint\n" + args + b"R" + state + b"bs."
    )


@pytest.mark.parametrize(
    ("args", "state"),
    [
        (b")", b"]K\x01a"),  # BUILD with a list
        (b"K\x01K\x02\x86", b"}X\x01\x00\x00\x00kK\x01s"),  # called with arguments
        (b")", b"N"),
    ],
)
def test_lightning_callback_with_odd_state_loads_or_says_so(
    args: bytes, state: bytes, tmp_path: Path
) -> None:
    from sdtui.engine.checkpoint_files import _read_pickled

    path = _zip_ckpt(tmp_path / "cb.ckpt", _lightning_pickle(state, args))
    obj = _read_pickled(path)  # harmless stand-in: it loads
    assert set(obj) == {"cb"}


def test_lightning_class_outside_the_allow_list_is_refused(tmp_path: Path) -> None:
    raw = b"\x80\x02}X\x01\x00\x00\x00fcpytorch_lightning.trainer.states\nTrainerFn\n)Rs."
    path = _zip_ckpt(tmp_path / "fn.ckpt", raw)
    with pytest.raises(UserError) as err:
        read_checkpoint(path)
    assert "tries to run code (pytorch_lightning.trainer.states.TrainerFn)" in str(err.value)


def test_state_dict_that_contains_itself_ends(tmp_path: Path) -> None:
    # d = {}; d["state_dict"] = d
    path = _zip_ckpt(tmp_path / "loop.ckpt", b"\x80\x02}q\x00X\n\x00\x00\x00state_dicth\x00s.")
    with pytest.raises(UserError, match=r"^loop\.ckpt holds no weights: re-download it$"):
        read_checkpoint(path)


# -- listings: one bad file, named pipes, the hash cache ------------------------------------


def test_one_bad_file_does_not_hide_the_others(tmp_path: Path) -> None:
    models = tmp_path / "models"
    sd = models / "Stable-diffusion"
    sd.mkdir(parents=True)
    save_file(_tiny_weights(), str(sd / "good.safetensors"))
    _sd15(sd / "sd15.safetensors")
    (sd / "null.safetensors").write_bytes(_safetensors_bytes(_with("shape", None)))
    (sd / "deep.safetensors").write_bytes(_safetensors_bytes(b"[" * 10_000 + b"]" * 10_000))
    _zip_ckpt(sd / "bomb.ckpt", MEMO_BOMB)
    (sd / "text.ckpt").write_bytes(pickle.dumps({"x": _RunsShell("true")}, protocol=0))
    os.mkfifo(sd / "pipe.safetensors")
    (sd / "broken-diffusers").mkdir()
    (sd / "broken-diffusers" / "model_index.json").write_bytes(b"[" * 10_000)
    entries = {e.name: e for e in discover_models(models)}
    assert sorted(entries) == [
        "bomb",
        "broken-diffusers",
        "deep",
        "good",
        "null",
        "sd15",
        "text",
    ]
    assert entries["sd15"].family == "SD1" and entries["sd15"].error is None
    assert entries["good"].family == "?"  # unknown width: listed, with the reason
    for bad in ("bomb", "deep", "null", "broken-diffusers"):
        assert entries[bad].family == "?" and entries[bad].error, bad
        assert "\n" not in entries[bad].error
    with pytest.raises(UserError, match=r"model_index\.json is damaged: re-download the model$"):
        load_pipeline(sd / "broken-diffusers")
    assert resolve_model("sd15", list(entries.values())).path == sd / "sd15.safetensors"
    assert resolve_model("good", list(entries.values())).path == sd / "good.safetensors"


def _finishes(action: Callable[[], Any], seconds: float = 20) -> Any:
    """``action()`` in a thread; fails (instead of hanging the suite) if it blocks."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(action())
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{action} blocked on a named pipe"
    if errors:
        raise errors[0]
    return result[0]


def test_named_pipes_are_never_opened(tmp_path: Path) -> None:
    models = tmp_path / "models"
    folders = {
        "sd": models / "Stable-diffusion",
        "lora": models / "Lora",
        "vae": models / "VAE",
        "esrgan": models / "ESRGAN",
        "emb": tmp_path / "embeddings",
    }
    for f in folders.values():
        f.mkdir(parents=True)
    pipes = {
        "sd": folders["sd"] / "pipe.safetensors",
        "sd_ckpt": folders["sd"] / "pipe.ckpt",
        "vae_beside": folders["sd"] / "pipe.vae.pt",
        "lora": folders["lora"] / "pipe.safetensors",
        "vae": folders["vae"] / "pipe.safetensors",
        "esrgan": folders["esrgan"] / "4x-pipe.pth",
        "emb": folders["emb"] / "pipe.pt",
    }
    for p in pipes.values():
        os.mkfifo(p)
    save_file(_tiny_weights(), str(folders["sd"] / "good.safetensors"))
    (folders["sd"] / "diff").mkdir()
    os.mkfifo(folders["sd"] / "diff" / "model_index.json")
    names = [e.name for e in _finishes(lambda: discover_models(models))]
    assert names == ["good"]  # a folder whose model_index.json is a pipe is no model
    assert _finishes(lambda: list_loras(models)) == []
    assert _finishes(lambda: list_vaes(models)) == []
    assert _finishes(lambda: list_embeddings(folders["emb"])) == []
    assert [u.name for u in _finishes(lambda: list_upscalers(models))] == ["Lanczos", "Nearest"]
    assert _finishes(lambda: embedding_vectors(pipes["emb"])) is None
    for key, action in (
        ("sd", read_checkpoint),
        ("sd_ckpt", read_checkpoint),
        ("sd", read_safetensors_header),
        ("sd", entry_for_path),
        ("esrgan", up.load_upscaler),
        ("sd", load_pipeline),
    ):
        with pytest.raises(UserError) as err:
            _finishes(lambda a=action, k=key: a(pipes[k]))  # type: ignore[misc]
        message = _one_sentence(err, pipes[key].name)
        assert "is a named pipe, not a file" in message, message


def test_tampered_hash_cache_is_not_trusted(tmp_path: Path, _cache: Path) -> None:
    import hashlib

    path = tmp_path / "m.safetensors"
    path.write_bytes(b"weights" * 1000)
    real = hashlib.sha256(path.read_bytes()).hexdigest()
    st = path.stat()
    key = str(path.resolve())
    _cache.mkdir(parents=True, exist_ok=True)
    cache_file = _cache / "model-hashes.json"
    for evil in (
        "\x1b]52;c;ZXZpbA==\x07" + "0" * 50,  # OSC 52 + padding to 64
        "\x1b[2J" + "a" * 60,
        "A" * 64,  # uppercase: not what sdtui writes
        "0" * 63,
        12345,
    ):
        record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": evil, "old_hash": evil}
        cache_file.write_text(json.dumps({"version": 1, "files": {key: record}}))
        assert cached_model_hash(path) is None
        assert old_model_hash(path) == hashlib.sha256(b"").hexdigest()[:8]
        assert model_hash(path) == real[:10]
    for junk in ("[1, 2]", "{not json", "[" * 10_000, '{"files": [1]}', '{"files": {"k": 5}}'):
        cache_file.write_text(junk)
        assert cached_model_hash(path) is None
        assert sha256_file(path) == real
    cache_file.unlink()
    os.mkfifo(cache_file)  # not even a pipe in the cache folder blocks
    assert _finishes(lambda: cached_model_hash(path)) is None


def test_lora_metadata_hash_with_escapes_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "style.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"sshs_model_hash": "\x1b[31mred"})
    from sdtui.extra_networks_index import addnet_hash

    assert lora_hash(path) == addnet_hash(path)[:12]
    save_file({"w": torch.zeros(2)}, str(path), metadata={"sshs_model_hash": "ab" * 32})
    assert lora_hash(path) == "ab" * 6


@pytest.mark.parametrize(
    "tensors",
    [
        {"alpha": torch.ones(3), "up": torch.zeros(4, 2), "down": torch.zeros(2, 4)},
        {"alpha": torch.tensor(1.0), "up": torch.zeros(4), "down": torch.zeros(2, 4)},
        {"alpha": torch.tensor(1.0), "up": torch.zeros(4, 0), "down": torch.zeros(0, 4)},
        {"alpha": torch.tensor(float("nan")), "up": torch.zeros(4, 2), "down": torch.zeros(2, 4)},
    ],
)
def test_damaged_lora_is_one_sentence(tensors: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from sdtui.engine.lora import LoraRequest, ModuleIndex, plan_patches

    layer = torch.nn.Linear(4, 4)
    index = ModuleIndex()
    index.add("lora_unet_x", "unet", layer)
    path = tmp_path / "bad.safetensors"
    save_file(
        {
            "lora_unet_x.alpha": tensors["alpha"],
            "lora_unet_x.lora_up.weight": tensors["up"],
            "lora_unet_x.lora_down.weight": tensors["down"],
        },
        str(path),
    )
    with pytest.raises(UserError) as err:
        plan_patches([LoraRequest("bad", path, 1.0, 1.0)], index, lambda _: None)
    assert str(err.value).startswith("LoRA 'bad' is damaged: layer lora_unet_x ")


def test_upscaler_key_naming_millions_of_blocks_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "4x-huge.pth"
    weights = {
        "model.0.weight": torch.zeros(8, 3, 3, 3),
        "model.0.bias": torch.zeros(8),
        "model.1.sub.9999999.RDB1.conv1.0.weight": torch.zeros(8, 8, 3, 3),
    }
    torch.save(weights, path)
    up.unload_upscaler()
    peak, error = _peak_while(lambda: up.load_upscaler(path))
    assert isinstance(error, UserError), error
    assert "4x-huge.pth is damaged or crafted" in str(error) and "9999999" in str(error)


def test_sdtui_models_cli_lists_good_and_flags_bad(tmp_path: Path) -> None:
    home = tmp_path / "home"
    sd = home / "models" / "Stable-diffusion"
    sd.mkdir(parents=True)
    _sd15(sd / "good.safetensors")
    (sd / "bad.safetensors").write_bytes(_safetensors_bytes(_with("shape", [None, "x"])))
    os.mkfifo(sd / "pipe.ckpt")
    env = {**os.environ, "SDTUI_HOME": str(home), "SDTUI_CONFIG": str(tmp_path / "c.toml")}
    proc = subprocess.run(
        [sys.executable, "-m", "sdtui", "models"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "good" in proc.stdout and "SD1" in proc.stdout
    assert "bad.safetensors is not a valid safetensors file (tensor" in proc.stdout


# -- fuzz -----------------------------------------------------------------------------------


def _ok_or_user_error(action: Callable[[], Any], name: str, case: str) -> None:
    try:
        action()
    except UserError as e:
        message = str(e)
        assert "\n" not in message, (case, message)
        assert name in message or "LoRA" in message, (case, message)
    except Exception as e:  # pragma: no cover - the failure this test exists to find
        raise AssertionError(f"{case}: {type(e).__name__}: {e}") from e


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.randint(-(2**70), 2**70)
    if kind == 3:
        return rng.choice([0, 1, 4, 320, 2**63, -1])
    if kind == 4:
        return rng.choice([float("inf"), float("nan"), 1.5, -0.0])
    if kind == 5:
        return rng.choice(["", "F16", "x\x1b[2J", "320", "é"])
    if kind == 6:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {
            str(rng.randrange(5)): _random_json(rng, depth + 1) for _ in range(rng.randrange(3))
        }
    return [rng.randrange(400) for _ in range(rng.randrange(5))]


def _mutated_headers(rng: random.Random, n: int) -> list[bytes]:
    out = []
    fields = ("dtype", "shape", "data_offsets")
    for _ in range(n):
        header: dict[str, Any] = {
            CONV_IN: {"dtype": "F32", "shape": [4, 4, 3, 3], "data_offsets": [0, 576]},
            ATTN2: {"dtype": "F32", "shape": [4, 8], "data_offsets": [576, 704]},
        }
        for _ in range(rng.randrange(1, 3)):
            target = rng.choice([CONV_IN, ATTN2, "__metadata__"])
            if target == "__metadata__":
                header[target] = _random_json(rng)
            else:
                header[target][rng.choice(fields)] = _random_json(rng)
        raw = json.dumps(header, allow_nan=True).encode()
        out.append(_safetensors_bytes(raw, b"\0" * 704))
    return out


def _mutations(rng: random.Random, data: bytes, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(data)
        how = rng.randrange(4)
        if how == 0:  # bit flips
            for _ in range(rng.randrange(1, 8)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif how == 1:  # truncation
            del b[rng.randrange(len(b)) :]
        elif how == 2:  # random bytes over a slice
            i = rng.randrange(len(b))
            b[i : i + 8] = bytes(rng.randrange(256) for _ in range(8))
        else:  # a 4/8-byte length somewhere set huge
            i = rng.randrange(max(1, len(b) - 8))
            b[i : i + 8] = struct.pack("<Q", rng.choice([2**31, 2**40, 2**62, 2**64 - 1]))
        out.append(bytes(b))
    return out


def _random_pickles(rng: random.Random, n: int) -> list[bytes]:
    """Short random opcode streams from pickle's own opcodes, with random arguments."""
    import pickletools

    ops = [op for op in pickletools.opcodes if op.code not in "\n"]
    out = []
    for _ in range(n):
        b = bytearray(b"\x80" + bytes([rng.randrange(6)]))
        for _ in range(rng.randrange(1, 20)):
            op = rng.choice(ops)
            b += op.code.encode("latin-1")
            arg = op.arg
            if arg is None:
                continue
            if arg.n > 0:
                b += bytes(rng.randrange(256) for _ in range(arg.n))
            elif arg.n in (-2, -3, -4, -5):
                width = {-2: 1, -3: 4, -4: 4, -5: 8}[arg.n]
                payload = rng.choice([b"x", b"torch", b"os", b"\xff\xfe"])
                length = rng.choice([len(payload), 2 ** (8 * width) // 3, 2 ** (8 * width) - 1])
                b += length.to_bytes(width, "little") + payload
            else:
                b += rng.choice([b"os\nsystem\n", b"123\n", b"'x'\n", b"\n", b"x" * 5])
        b += b"."
        out.append(bytes(b))
    return out


def _rezipped(rng: random.Random, zipped: bytes, n: int) -> list[bytes]:
    """The zip rebuilt around a mutated ``data.pkl``: the unpicklers see the damage, not
    zipfile's CRC check."""
    with zipfile.ZipFile(io.BytesIO(zipped)) as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    pkl = next(k for k in members if k.endswith("data.pkl"))
    out = []
    for mutated in _mutations(rng, members[pkl], n):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members.items():
                zf.writestr(name, mutated if name == pkl else data)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def fuzz_seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("seed")
    save_file(
        {CONV_IN: torch.randn(4, 4, 3, 3), ATTN2: torch.randn(4, 8)}, str(folder / "s.safetensors")
    )
    torch.save({"state_dict": _tiny_weights()}, folder / "z.ckpt")
    torch.save(
        {"state_dict": _tiny_weights()}, folder / "o.ckpt", _use_new_zipfile_serialization=False
    )
    return {p.name: p.read_bytes() for p in folder.iterdir()}


FUZZ_SEED = int(os.environ.get("SDTUI_FUZZ_SEED", "20240607"))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pickletools on bad escapes
def test_fuzz_loaders_raise_only_user_errors(tmp_path: Path, fuzz_seeds: dict[str, bytes]) -> None:
    """Seeded: a failure names its case; SDTUI_FUZZ_SEED=N runs another sample."""
    rng = random.Random(FUZZ_SEED)
    root = tmp_path / "models"
    sd = root / "Stable-diffusion"
    sd.mkdir(parents=True)
    cases: list[tuple[str, bytes]] = []
    cases += [(".safetensors", d) for d in _mutated_headers(rng, 300)]
    cases += [(".safetensors", d) for d in _mutations(rng, fuzz_seeds["s.safetensors"], 200)]
    cases += [(".ckpt", d) for d in _mutations(rng, fuzz_seeds["z.ckpt"], 100)]
    cases += [(".ckpt", d) for d in _rezipped(rng, fuzz_seeds["z.ckpt"], 300)]
    cases += [(".ckpt", d) for d in _mutations(rng, fuzz_seeds["o.ckpt"], 150)]
    cases += [(".ckpt", d) for d in _random_pickles(rng, 300)]
    for d in _random_pickles(rng, 200):  # the same inside a torch zip: read by the unpicklers
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("archive/data.pkl", d)
            zf.writestr("archive/data/0", b"\0" * 16)
        cases.append((".ckpt", buf.getvalue()))
    for i, (suffix, data) in enumerate(cases):
        path = sd / f"f{i:03}{suffix}"
        path.write_bytes(data)
        case = f"case {i} ({suffix}, seed {FUZZ_SEED})"
        _ok_or_user_error(lambda p=path: entry_for_path(p, sd), path.name, case)
        if suffix == ".safetensors":
            _ok_or_user_error(lambda p=path: read_safetensors_header(p), path.name, case)
        _ok_or_user_error(lambda p=path: read_checkpoint(p), path.name, case)
        _ok_or_user_error(lambda p=path: embedding_vectors(p), path.name, case)
        _ok_or_user_error(lambda p=path: up.load_upscaler(p), path.name, case)
    up.unload_upscaler()
    entries = discover_models(root)
    assert len(entries) == len(cases)
    assert all(e.error is None or "\n" not in e.error for e in entries)
