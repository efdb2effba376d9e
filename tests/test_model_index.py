from __future__ import annotations

import builtins
import hashlib
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest

from sdtui.errors import UserError
from sdtui.model_index import (
    ModelEntry,
    cached_model_hash,
    discover_models,
    entry_for_path,
    find_vae_beside,
    model_hash,
    old_model_hash,
    read_ckpt_shapes,
    read_safetensors_shapes,
    resolve_model,
    sha256_file,
)

U = "model.diffusion_model."


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("SDTUI_CACHE_DIR", str(cache))
    return cache


def sd_shapes(family: str = "SD1", in_channels: int = 4) -> dict[str, list[int]]:
    context = {"SD1": 768, "SD2": 1024, "SDXL": 2048}[family]
    shapes = {
        U + "input_blocks.0.0.weight": [320, in_channels, 3, 3],
        U + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, context],
    }
    if family == "SDXL":
        shapes["conditioner.embedders.1.model.ln_final.weight"] = [1280]
    if family == "SD2":
        shapes["cond_stage_model.model.ln_final.weight"] = [1024]
    return shapes


def write_safetensors(
    path: Path, shapes: dict[str, list[int]], tail: bytes = b"", metadata: bool = True
) -> Path:
    """A header-only safetensors file (data offsets are not checked by header readers)."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}} if metadata else {}
    for i, (name, shape) in enumerate(shapes.items()):
        header[name] = {"dtype": "F16", "shape": shape, "data_offsets": [i, i]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + tail)
    return path


def write_diffusers(folder: Path, cross: int = 768, cls: str = "StableDiffusionPipeline") -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls}))
    (folder / "unet" / "config.json").write_text(
        json.dumps({"cross_attention_dim": cross, "in_channels": 4})
    )
    return folder


# -- headers ---------------------------------------------------------------------------------


def test_read_safetensors_shapes(tmp_path: Path) -> None:
    path = write_safetensors(tmp_path / "m.safetensors", sd_shapes("SD2"), tail=b"\0" * 16)
    shapes = read_safetensors_shapes(path)
    assert shapes[U + "input_blocks.0.0.weight"] == (320, 4, 3, 3)
    assert "__metadata__" not in shapes
    assert len(shapes) == 3


@pytest.mark.parametrize(
    "data,why",
    [
        (b"\x01\x02", "only 2 bytes"),
        (struct.pack("<Q", 10**12), "impossible"),
        (struct.pack("<Q", 500) + b"{}", "truncated"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_bad_safetensors_header(tmp_path: Path, data: bytes, why: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(
        UserError, match=rf"bad\.safetensors is not a valid safetensors file .*{why}"
    ):
        read_safetensors_shapes(path)


def _fake_torch_ckpt(
    path: Path, shapes: dict[str, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zip-format torch checkpoint, written without torch: fake torch modules let pickle
    record the same globals torch.save records."""
    torch_mod = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class HalfStorage:
        pass

    HalfStorage.__module__ = "torch"
    HalfStorage.__qualname__ = "HalfStorage"
    torch_mod.HalfStorage = HalfStorage  # type: ignore[attr-defined]

    def _rebuild_tensor_v2(*args: Any) -> None:  # pragma: no cover - never called
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]

    class Evil:  # a checkpoint trying to run code while loading
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned > " + str(path.parent / "pwned"),))

    class T:
        def __init__(self, shape: list[int]) -> None:
            self.shape = shape

        def __reduce__(self) -> tuple[Any, ...]:
            return (
                _rebuild_tensor_v2,
                (("storage",), 0, tuple(self.shape), (1,), False, OrderedDict()),
            )

    class P(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if obj == ("storage",):
                return ("storage", HalfStorage, "0", "cpu", 4)
            return None

    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    sd = OrderedDict((k, T(v)) for k, v in shapes.items())
    payload = {"state_dict": sd, "global_step": 1, "evil": Evil()}
    import io

    buf = io.BytesIO()
    P(buf, protocol=2).dump(payload)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/data/0", b"\0" * 8)


def test_ckpt_shapes_without_running_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.ckpt"
    _fake_torch_ckpt(path, sd_shapes("SD1", in_channels=9), monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    shapes = read_ckpt_shapes(path)
    assert shapes[U + "input_blocks.0.0.weight"] == (320, 9, 3, 3)
    assert not (tmp_path / "pwned").exists()
    entry = entry_for_path(path, tmp_path)
    assert (entry.family, entry.error) == ("SD1 inpainting", None)


def test_old_pickle_ckpt_family_unknown(tmp_path: Path) -> None:
    path = tmp_path / "old.ckpt"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError):
        read_ckpt_shapes(path)
    entry = entry_for_path(path, tmp_path)
    assert (entry.family, entry.error) == ("?", None)


# -- discovery -------------------------------------------------------------------------------


@pytest.fixture
def models(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    sd = root / "Stable-diffusion"
    write_safetensors(sd / "v1-5-pruned-emaonly.safetensors", sd_shapes("SD1"))
    write_safetensors(sd / "sd2" / "768-v-ema.safetensors", sd_shapes("SD2"))
    (sd / "sd2" / "768-v-ema.yaml").write_text("parameterization: v\n")
    write_safetensors(sd / "xl" / "deep" / "sdXL_base.safetensors", sd_shapes("SDXL"))
    write_safetensors(sd / "inpaint" / "v1-5-inpainting.safetensors", sd_shapes("SD1", 9))
    write_safetensors(
        sd / "v1-5-pruned-emaonly.vae.safetensors", {"decoder.conv_in.weight": [512, 4, 3, 3]}
    )
    write_safetensors(sd / "lora_in_wrong_place.safetensors", {"lora_unet_x.alpha": []})
    (sd / "broken.safetensors").write_bytes(b"\x05\x00")
    (sd / "old.ckpt").write_bytes(pickle.dumps({"x": 1}))
    (sd / "readme.txt").write_text("hi")
    (sd / ".hidden.safetensors").write_bytes(b"")
    write_diffusers(sd / "diffusers" / "dreamshaper")
    (sd / "diffusers" / "dreamshaper" / "unet" / "w.safetensors").write_bytes(b"x" * 10)
    return root


def test_discover_models(models: Path) -> None:
    entries = {e.name: e for e in discover_models(models)}
    assert sorted(entries) == sorted(
        [
            "broken",
            "diffusers/dreamshaper",
            "inpaint/v1-5-inpainting",
            "lora_in_wrong_place",
            "old",
            "sd2/768-v-ema",
            "v1-5-pruned-emaonly",
            "xl/deep/sdXL_base",
        ]
    )
    assert [e.name for e in discover_models(models)][0] == "broken"  # sorted by name
    sd2 = entries["sd2/768-v-ema"]
    assert (sd2.kind, sd2.family, sd2.config, sd2.error) == ("file", "SD2", "sd21-768-v", None)
    assert sd2.yaml == models / "Stable-diffusion/sd2/768-v-ema.yaml"
    assert sd2.stem == "768-v-ema" and sd2.filename == "sd2/768-v-ema.safetensors"
    assert sd2.size_bytes == sd2.path.stat().st_size
    assert entries["xl/deep/sdXL_base"].family == "SDXL"
    assert entries["inpaint/v1-5-inpainting"].family == "SD1 inpainting"
    assert entries["v1-5-pruned-emaonly"].family == "SD1"
    assert entries["broken"].family == "?" and "only 2 bytes" in (entries["broken"].error or "")
    assert "models/Lora" in (entries["lora_in_wrong_place"].error or "")
    assert (entries["old"].family, entries["old"].error) == ("?", None)
    d = entries["diffusers/dreamshaper"]
    assert (d.kind, d.family, d.size_bytes) == ("diffusers", "SD1", d.size_bytes)
    assert d.size_bytes > 10


def test_discover_missing_folder(tmp_path: Path) -> None:
    assert discover_models(tmp_path / "nothing") == []


def test_discover_survives_symlink_loop(models: Path) -> None:
    (models / "Stable-diffusion" / "sd2" / "loop").symlink_to(models / "Stable-diffusion")
    names = [e.name for e in discover_models(models)]
    assert names.count("sd2/768-v-ema") == 1


def test_find_vae_beside(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.safetensors"
    ckpt.write_bytes(b"")
    assert find_vae_beside(ckpt) is None
    (tmp_path / "model.vae.pt").write_bytes(b"")
    assert find_vae_beside(ckpt) == tmp_path / "model.vae.pt"
    (tmp_path / "model.vae.safetensors").write_bytes(b"")
    assert find_vae_beside(ckpt) == tmp_path / "model.vae.safetensors"
    (tmp_path / "other.ckpt").write_bytes(b"")
    (tmp_path / "other.vae.ckpt").write_bytes(b"")
    assert find_vae_beside(tmp_path / "other.ckpt") == tmp_path / "other.vae.ckpt"


# -- hashes ----------------------------------------------------------------------------------


def _known_file(path: Path) -> bytes:
    data = bytes((i * 7 + 3) % 251 for i in range(0x100000 + 0x10000 + 12345))
    path.write_bytes(data)
    return data


def test_hashes_match_hashlib(tmp_path: Path) -> None:
    data = _known_file(tmp_path / "m.safetensors")
    full = hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "m.safetensors") == full
    assert model_hash(tmp_path / "m.safetensors") == full[:10]
    old = hashlib.sha256(data[0x100000 : 0x100000 + 0x10000]).hexdigest()[:8]
    assert old_model_hash(tmp_path / "m.safetensors") == old


def test_old_hash_of_small_file_is_hash_of_nothing(tmp_path: Path) -> None:
    (tmp_path / "tiny.ckpt").write_bytes(b"abc")
    assert old_model_hash(tmp_path / "tiny.ckpt") == hashlib.sha256(b"").hexdigest()[:8]


def test_hash_cache_hit_does_not_read_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _cache: Path
) -> None:
    path = tmp_path / "m.safetensors"
    data = _known_file(path)
    progress: list[tuple[int, int]] = []
    first = model_hash(path, progress=lambda done, total: progress.append((done, total)))
    assert progress[-1] == (len(data), len(data)) and len(progress) == 2  # 1 MiB chunks
    assert cached_model_hash(path) == first
    assert (_cache / "model-hashes.json").is_file()

    opened: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file) == str(path):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    assert model_hash(path) == first
    old = old_model_hash(path)
    assert old_model_hash(path) == old
    assert len(opened) == 1  # only the first old hash read the file

    # a changed file (new size / mtime) is hashed again
    path.write_bytes(data + b"more")
    assert model_hash(path) == hashlib.sha256(data + b"more").hexdigest()[:10]
    assert len(opened) == 2


def test_corrupt_cache_is_ignored(tmp_path: Path, _cache: Path) -> None:
    _cache.mkdir(parents=True, exist_ok=True)
    (_cache / "model-hashes.json").write_text("{not json")
    (tmp_path / "a.ckpt").write_bytes(b"hello")
    assert model_hash(tmp_path / "a.ckpt") == hashlib.sha256(b"hello").hexdigest()[:10]
    assert json.loads((_cache / "model-hashes.json").read_text())["version"] == 1


def test_hash_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        model_hash(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="is not a file"):
        model_hash(tmp_path)
    assert cached_model_hash(tmp_path / "missing.safetensors") is None


# -- resolve ---------------------------------------------------------------------------------


def test_resolve_rules(models: Path, tmp_path: Path) -> None:
    entries = discover_models(models)
    by = {e.name: e for e in entries}
    sd2 = by["sd2/768-v-ema"]
    # exact name, name with extension, A1111 model_name, stem
    assert resolve_model("sd2/768-v-ema", entries) is sd2
    assert resolve_model("sd2/768-v-ema.safetensors", entries) is sd2
    assert resolve_model("sd2_768-v-ema", entries) is sd2
    assert resolve_model("768-v-ema", entries) is sd2
    assert resolve_model("768-V-EMA", entries) is sd2
    # A1111 title form, with a hash in brackets
    assert resolve_model("sd2/768-v-ema.safetensors [2c02b20a12]", entries) is sd2
    assert resolve_model("768-v-ema [abc]", entries) is sd2
    # unique substring, any case
    assert resolve_model("sdxl", entries) is by["xl/deep/sdXL_base"]
    assert resolve_model("dreamsh", entries) is by["diffusers/dreamshaper"]
    # a path inside the folder maps to its entry; a path elsewhere becomes a new entry
    assert resolve_model(str(sd2.path), entries) is sd2
    outside = write_safetensors(tmp_path / "elsewhere" / "mine.safetensors", sd_shapes("SD1"))
    e = resolve_model(str(outside), entries)
    assert (e.name, e.path, e.family) == ("mine", outside, "SD1")
    d = write_diffusers(
        tmp_path / "elsewhere" / "dfolder", cross=2048, cls="StableDiffusionXLPipeline"
    )
    assert resolve_model(str(d), entries).kind == "diffusers"


def test_resolve_by_hash(models: Path) -> None:
    entries = discover_models(models)
    target = {e.name: e for e in entries}["v1-5-pruned-emaonly"]
    old = old_model_hash(target.path)
    # all the test files are shorter than 1 MiB, so their old hashes collide, as in A1111
    with pytest.raises(UserError, match="matches several"):
        resolve_model(old, entries)
    short = model_hash(target.path)  # now in the cache
    assert resolve_model(short, entries) is target
    # the hash in a title breaks a tie between models with the same file name
    sd = models / "Stable-diffusion"
    a = write_safetensors(sd / "a" / "twin.safetensors", sd_shapes("SD1"), tail=b"a")
    b = write_safetensors(sd / "b" / "twin.safetensors", sd_shapes("SD1"), tail=b"b")
    entries = discover_models(models)
    with pytest.raises(UserError, match="matches several models with that file name"):
        resolve_model("twin", entries)
    assert resolve_model(f"twin [{model_hash(b)}]", entries).path == b
    assert resolve_model(f"twin.safetensors [{model_hash(a)}]", entries).path == a
    assert resolve_model("a/twin", entries).path == a


def test_resolve_ambiguous_substring(models: Path) -> None:
    entries = discover_models(models)
    with pytest.raises(UserError) as err:
        resolve_model("v1-5", entries)
    msg = str(err.value)
    assert "matches several models" in msg
    assert "inpaint/v1-5-inpainting.safetensors" in msg and "v1-5-pruned-emaonly.safetensors" in msg


def test_resolve_not_found_lists_names_and_folder(models: Path) -> None:
    entries = discover_models(models)
    with pytest.raises(UserError) as err:
        resolve_model("nope", entries)
    msg = str(err.value)
    assert "model 'nope' not found in " + str(models / "Stable-diffusion") in msg
    assert "sd2/768-v-ema" in msg and "diffusers/dreamshaper" in msg
    with pytest.raises(UserError, match="there are no checkpoints in /x"):
        resolve_model("nope", [], folder=Path("/x"))
    with pytest.raises(UserError, match="no model given"):
        resolve_model("  ", entries)


def test_entry_title_and_size_label(tmp_path: Path) -> None:
    e = ModelEntry("sub/m", tmp_path / "sub/m.safetensors", "file", 2 * 1024**3)
    assert e.title("0123456789") == "sub/m.safetensors [0123456789]"
    assert e.title() == "sub/m.safetensors"
    assert e.size_label == "2.0 GiB"  # 2 * 1024**3 bytes: binary units, honestly named
    assert e.model_name == "sub_m"


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="without model_index.json"):
        entry_for_path(tmp_path)


def test_no_heavy_imports() -> None:
    """These modules serve the CLI and the UI: importing them must not pull in torch/textual."""
    import subprocess

    code = (
        "import sys, sdtui.infotext, sdtui.outputs, sdtui.model_index; "
        "bad = {'torch', 'textual', 'diffusers'} & set(sys.modules); "
        "print(*sorted(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
