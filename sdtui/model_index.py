"""The checkpoints in ``models/Stable-diffusion``: finding them, naming them as A1111 does,
telling their family from the file header, and resolving what a user typed.

No torch: a safetensors header is read as JSON (``sdtui.safetensors_header``); a ``.ckpt`` (a
zip holding a pickle) is read with an unpickler that builds nothing but shapes, so no code in
the file ever runs. Hashes and their cache live in ``sdtui.hashes``.

Names follow A1111 (modules/sd_models.py ``CheckpointInfo``): ``name`` is the path relative to
the Stable-diffusion folder without extension, ``/``-separated; the infotext's "Model" value
is the file stem; a "title" is ``relative/path.safetensors [shorthash]``.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import dataclasses
import io
import json
import os
import pickle
import pickletools
import re
import stat
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# ``X as X``: moved to sdtui.hashes / sdtui.safetensors_header, still importable from here for
# the callers not yet switched (cli.py, engine/worker.py, engine/lora.py)
from sdtui.errors import UserError
from sdtui.hashes import cached_model_hash as cached_model_hash
from sdtui.hashes import cached_sha256, old_model_hash
from sdtui.hashes import model_hash as model_hash
from sdtui.hashes import sha256_file as sha256_file
from sdtui.model_family import UNET, ModelFamily, UnknownArchitectureError, detect_family
from sdtui.regular_files import open_regular, regular_stat, shown
from sdtui.safetensors_header import MAX_TENSOR_RANK, dims_ok, read_safetensors_shapes, tensor_label
from sdtui.safetensors_header import read_safetensors_header as read_safetensors_header
from sdtui.units import format_bytes

CHECKPOINTS_SUBDIR = "Stable-diffusion"
# where ComfyUI and Forge users keep transformer-only Flux.1 / SD3.5 files (listed beside the
# checkpoints; their text encoders and VAE come from models/text_encoder and models/VAE)
TRANSFORMER_SUBDIRS = ("unet", "diffusion_models")
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", ".ckpt")
# A1111 keeps VAEs beside checkpoints out of the checkpoint list
VAE_SUFFIXES: tuple[str, ...] = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
DIFFUSERS_MARKER = "model_index.json"
CKPT_MAX_PICKLE = 64 * 1024 * 1024
_RE_TITLE_HASH = re.compile(r"\s*\[([^]]+)]\s*$")  # A1111's re_strip_checksum
_HEX = re.compile(r"^[0-9a-fA-F]+$")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # "sub/dir/model" (relative, no extension) or a diffusers folder's relative path
    path: Path
    kind: str  # "file" | "diffusers"
    size_bytes: int
    family: str = "?"  # "SD1", "SD2", "SDXL", "SD1 inpainting", ... or "?" (unknown)
    error: str | None = None  # why the header could not be read or classified
    config: str | None = None  # bundled config folder name from model_family, when known
    yaml: Path | None = None  # A1111's same-name .yaml beside a checkpoint

    @property
    def stem(self) -> str:
        """What A1111 writes as the infotext "Model" value."""
        return self.name.rsplit("/", 1)[-1]

    @property
    def filename(self) -> str:
        """A1111's checkpoint name: the relative path with its extension."""
        return self.name + (self.path.suffix if self.kind == "file" else "")

    @property
    def model_name(self) -> str:
        """A1111's ``model_name``: the relative path with ``/`` turned into ``_``."""
        return self.name.replace("/", "_")

    def title(self, shorthash: str | None = None) -> str:
        """A1111's dropdown title, ``sub/model.safetensors [0123456789]``."""
        return f"{self.filename} [{shorthash}]" if shorthash else self.filename

    @property
    def size_label(self) -> str:
        """2.0 GiB, 512 MiB (``sdtui.units.format_bytes``)."""
        return format_bytes(self.size_bytes)


# -- refusing files -------------------------------------------------------------------------


class RefusedFile(UserError):
    """A file sdtui will not load because loading it could run code or exhaust memory: a
    TorchScript archive, a pickle that names code, a pickle or zip that claims far more than
    the file holds. Callers that turn other read errors into "not a model" let these through."""


# -- pickles and zips, read without running them ---------------------------------------------


@dataclass
class PickleScan:
    """What a pickle's opcodes say, read without unpickling anything."""

    globals: list[str] = field(default_factory=list)  # every "module.name" it imports, in order
    complete: bool = False  # the first pickle parsed cleanly up to its STOP


_STRING_OPS = frozenset(
    {
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
        "UNICODE",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
    }
)
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MAX_LINE = 1 << 16


class _Bounded:
    """A file seen through a window of ``limit`` bytes: a read asking for more than is left
    gets what is left, and the claim is remembered (an unpickler would allocate it first)."""

    def __init__(self, f: BinaryIO, limit: int) -> None:
        self.f = f
        self.left = limit
        self.claimed = 0  # the largest read asked past the end, and what was left then
        self.had = 0

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.left
        if n > self.left:
            if n > self.claimed:
                self.claimed, self.had = n, self.left
            n = self.left
        data = self.f.read(n)
        self.left -= len(data)
        return data

    def readline(self) -> bytes:
        data = self.f.readline(max(0, min(self.left, _MAX_LINE)))
        self.left -= len(data)
        return data


def _overclaim(path: Path, what: str) -> RefusedFile:
    return RefusedFile(
        f"{shown(path.name)} is damaged or crafted: its pickle {what}; re-download it or use "
        "a .safetensors version"
    )


def _global_name(module: str, name: str) -> str:
    """ "module.name" as the unpickler resolves it (Python 2 names, as protocols 0-2 write
    them, mapped the way ``fix_imports`` maps them: ``__builtin__.eval`` is builtins.eval)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def scan_pickle(f: BinaryIO, limit: int, path: Path, *, pickles: int = 1) -> PickleScan:
    """Walk up to ``pickles`` consecutive pickles in ``f`` (reading at most ``limit`` bytes)
    opcode by opcode; nothing is built or run. Raises RefusedFile when the pickle claims more
    than its bytes can hold, before any unpickler allocates it: a length or frame past the
    end, or a memo index past what the pickle can fill (CPython grows its memo to the index).
    A pickle that does not parse is not an error here: the loader reports it."""
    reader = _Bounded(f, limit)
    memo_cap = max(limit // 2, 256)  # each memo entry costs a push and a put: >= 2 bytes
    scan = PickleScan()
    for index in range(pickles):
        if reader.left <= 0:
            break
        strings: list[str] = []
        memo: dict[int, str] = {}  # slot -> the string put there (for STACK_GLOBAL via GET)
        puts = 0
        prev_string = False
        refused: RefusedFile | None = None
        parsed = False
        try:
            for op, arg, _ in pickletools.genops(reader):
                name = op.name
                pushed_string = False
                if name in _PUT_OPS or name == "MEMOIZE":
                    slot = puts if name == "MEMOIZE" else arg  # MEMOIZE: the next free slot
                    puts += 1
                    if not isinstance(slot, int) or not 0 <= slot <= memo_cap:
                        refused = _overclaim(
                            path, f"asks for memo slot {slot:,} in a {limit:,}-byte pickle"
                        )
                        break
                    if prev_string and strings:
                        memo[slot] = strings[-1]
                elif name in _GET_OPS:
                    if isinstance(arg, int) and arg in memo:
                        strings.append(memo[arg])
                        pushed_string = True
                elif name == "FRAME" and isinstance(arg, int) and arg > reader.left:
                    refused = _overclaim(
                        path, f"claims a {arg:,}-byte frame where {reader.left:,} bytes follow"
                    )
                    break
                elif name in _STRING_OPS and isinstance(arg, str):
                    strings.append(arg)
                    pushed_string = True
                elif name in ("GLOBAL", "INST") and isinstance(arg, str):
                    scan.globals.append(_global_name(*arg.partition(" ")[::2]))
                elif name == "STACK_GLOBAL" and len(strings) >= 2:
                    scan.globals.append(f"{strings[-2]}.{strings[-1]}")
                prev_string = pushed_string
            else:
                parsed = True
        except Exception:  # noqa: BLE001 - not a pickle, or damaged: the loader says which
            parsed = False
        if refused is not None:
            raise refused
        if reader.claimed:
            raise _overclaim(path, f"claims {reader.claimed:,} bytes where {reader.had:,} follow")
        if not parsed:
            break
        if index == 0:
            scan.complete = True
    return scan


_TORCHSCRIPT_RECORDS = frozenset({"constants.pkl", "bytecode.pkl", "attributes.pkl", "model.json"})
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what torch's zip reader reads
ZIP_MAGIC = b"PK\x03\x04"  # torch.load's own test for its zip format


def is_torchscript(names: Iterable[str]) -> bool:
    """Whether zip member names are a TorchScript archive's: torch.jit.save writes
    ``NAME/constants.pkl`` and ``NAME/code/...`` (older ones ``attributes.pkl``/``model.json``,
    mobile ones ``bytecode.pkl``); torch.save writes none of these."""
    for n in names:
        parts = n.split("/")
        rel = parts[1:] if len(parts) > 1 else parts
        if rel and (rel[0] in _TORCHSCRIPT_RECORDS or (rel[0] == "code" and len(rel) > 1)):
            return True
    return False


def torchscript_refusal(path: Path, what: str = "model") -> RefusedFile:
    return RefusedFile(
        f"{shown(path.name)} is a TorchScript file, which can run code when loaded: sdtui does "
        f"not load TorchScript; use a .safetensors or .pth state dict of this {what}"
    )


def _damaged(path: Path, size: int, e: BaseException) -> UserError:
    return UserError(
        f"{shown(path.name)} is damaged or truncated ({format_bytes(size)}): re-download it",
        detail=f"{type(e).__name__}: {e}",
    )


def _data_pkl(names: list[str]) -> str | None:
    """The pickle torch.load reads: ``data.pkl`` in the folder of the archive's first record."""
    if not names:
        return None
    top = names[0].split("/", 1)[0] if "/" in names[0] else ""
    wanted = f"{top}/data.pkl" if top else "data.pkl"
    if wanted in names:
        return wanted
    return next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)


def read_zip_pickle(path: Path | str, what: str = "model") -> bytes:
    """The ``data.pkl`` bytes of a zip-format torch file (torch >= 1.6), after checking the
    zip: a TorchScript archive, an encrypted zip, one packed with a method torch cannot read
    and a zip bomb are refused (UserError / RefusedFile). Raises ValueError when the file is
    not such a zip (an old pickle-only file) or its pickle is too large to inspect."""
    path = Path(path)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if f.read(4) != ZIP_MAGIC:
            raise ValueError("not a zip-format torch checkpoint")
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
            infos = zf.infolist()
        except Exception as e:  # noqa: BLE001 - zipfile raises many types on a damaged file
            raise _damaged(path, size, e) from None
        with zf:
            names = [i.filename for i in infos]
            if is_torchscript(names):
                raise torchscript_refusal(path, what)
            for info in infos:
                if info.flag_bits & 0x1:
                    raise UserError(
                        f"{shown(path.name)} is an encrypted zip, which sdtui cannot read: "
                        "re-download it or use a .safetensors version"
                    )
                if info.compress_type not in _ZIP_METHODS:
                    method = zipfile.compressor_names.get(
                        info.compress_type, f"method {info.compress_type}"
                    )
                    raise UserError(
                        f"{shown(path.name)} is a zip packed with {method}, which torch cannot "
                        "read: re-download it or use a .safetensors version"
                    )
            unpacked = sum(i.file_size for i in infos)
            if unpacked > 4 * size + (1 << 20):
                raise RefusedFile(
                    f"{shown(path.name)} is damaged or crafted: its zip claims to unpack to "
                    f"{format_bytes(unpacked)} from {format_bytes(size)}; re-download it or use a "
                    ".safetensors version"
                )
            pkl = _data_pkl(names)
            if pkl is None:
                raise ValueError("no data.pkl inside")
            info = zf.getinfo(pkl)
            if info.file_size > CKPT_MAX_PICKLE:
                raise ValueError("its pickle is too large to inspect")
            try:
                return zf.read(info)
            except Exception as e:  # noqa: BLE001 - bad CRC, bad header, short read ...
                raise _damaged(path, size, e) from None


class _TensorShape:
    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


class _Stub:
    """Stands in for any class a checkpoint pickle names; absorbs all construction and keeps
    only the state it is given (a torch ParameterDict's ``_parameters``, say)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


def _rebuild_tensor(storage: Any, offset: Any, size: Any, *args: Any) -> _TensorShape:
    if not isinstance(size, (tuple, list)):
        return _TensorShape(())
    dims = list(size)
    if not dims_ok(dims) or len(dims) > MAX_TENSOR_RANK:
        raise pickle.UnpicklingError("a tensor with an impossible shape")
    return _TensorShape(tuple(dims))


def _rebuild_parameter(data: Any, *args: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    return func(*args) if callable(func) else None


class _ShapeUnpickler(pickle.Unpickler):
    """Reads a torch checkpoint's pickle into {name: _TensorShape} without importing or
    running anything: every global resolves to a harmless stand-in."""

    _FUNCS: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
        ("collections", "OrderedDict"): OrderedDict,
    }

    def find_class(self, module: str, name: str) -> Any:
        found = self._FUNCS.get((module, name))
        if found is not None:
            return found
        return type("Stub", (_Stub,), {})

    def persistent_load(self, pid: Any) -> Any:
        return None


def stub_state(obj: Any) -> Any:
    """What a pickle gave a stand-in object (e.g. a ParameterDict's attributes), else None."""
    return getattr(obj, "state", None) if isinstance(obj, _Stub) else None


def read_pickle_structure(path: Path | str, what: str = "model") -> Any:
    """The object a zip-format ``.ckpt``/``.pt``/``.bin`` (torch >= 1.6) pickles, with every
    tensor as a ``.shape``-only stand-in and every class a stub: nothing is imported or run.
    Its opcodes are scanned first, so a pickle claiming more memory than it holds is refused
    before the unpickler allocates anything.

    Raises ValueError when the file is not such a zip (old pickle-only checkpoints) or its
    pickle cannot be read; UserError / RefusedFile for a zip that must not be read at all.
    """
    path = Path(path)
    data = read_zip_pickle(path, what)
    scan_pickle(io.BytesIO(data), len(data), path)
    try:
        return _ShapeUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # noqa: BLE001 - a damaged pickle can raise almost anything
        raise ValueError(f"its pickle cannot be read ({type(e).__name__})") from None


def read_ckpt_shapes(path: Path | str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a zip-format ``.ckpt``/``.pt`` (torch >= 1.6), nothing run.

    Raises ValueError when the file is not such a zip (old pickle-only checkpoints).
    """
    obj = read_pickle_structure(path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError("it holds no state dict")
    return {
        k: v.shape for k, v in obj.items() if isinstance(k, str) and isinstance(v, _TensorShape)
    }


_UNET_IN = UNET + "input_blocks.0.0.weight"


def family_from_shapes(
    shapes: Mapping[str, Sequence[int]],
    detect: Callable[[Mapping[str, Sequence[int]]], ModelFamily] = detect_family,
) -> ModelFamily:
    """``detect_family``, with shapes no model has (a scalar or 1-D UNet input weight, a
    flat attention weight) reported as UnknownArchitectureError instead of an IndexError."""
    for name, shape in shapes.items():
        is_attn = name.startswith(UNET) and name.endswith("attn2.to_k.weight")
        if (name == _UNET_IN or is_attn) and len(shape) < 2:
            raise UnknownArchitectureError(
                f"its UNet weight {tensor_label(name[len(UNET) :])} has shape {tuple(shape)}, "
                "which no Stable Diffusion model has: the file is damaged; re-download it"
            )
    try:
        return detect(shapes)
    except UnknownArchitectureError:
        raise
    except (IndexError, KeyError, TypeError, ValueError, OverflowError) as e:
        raise UnknownArchitectureError(
            "its tensor shapes fit no Stable Diffusion model: the file is damaged; re-download it"
        ) from e


def _family_of(path: Path) -> tuple[str, str | None, str | None]:
    """(family label, bundled config, error) of a checkpoint file; cheap: headers only.
    Never raises: whatever is wrong with one file becomes its error text."""
    try:
        if path.suffix.lower() == ".safetensors":
            shapes = read_safetensors_shapes(path)
        else:
            try:
                shapes = read_ckpt_shapes(path)
            except ValueError:
                return "?", None, None  # an old pickle: the engine finds out when it loads
        fam: ModelFamily = family_from_shapes(shapes)
    except UserError as e:
        return "?", None, e.message
    except UnknownArchitectureError as e:
        return "?", None, str(e)
    except OSError as e:
        return "?", None, f"{shown(path)} cannot be read ({e.strerror or e})"
    except Exception as e:  # noqa: BLE001 - one odd file must not stop the listing
        return "?", None, f"{shown(path.name)} cannot be read ({type(e).__name__}): re-download it"
    return fam.label, fam.config, None


def dit_folder_family(folder: Path, cls: str) -> tuple[str, str | None, str | None]:
    """(label, bundled config, error) of a Flux.1 / SD3.5 diffusers folder."""
    try:
        cfg = read_small_json(folder / "transformer" / "config.json")
    except Exception as e:  # noqa: BLE001 - a folder without its transformer: say so
        return "?", None, f"{shown(folder.name)} has no readable transformer/config.json ({e})"
    if cls == "FluxPipeline":
        variant = "dev" if cfg.get("guidance_embeds") else "schnell"
        config = f"flux1-{variant}"
    else:
        variant = "large" if cfg.get("num_layers", 0) >= 38 else "medium"
        config = f"sd35-{variant}"
    family = "Flux" if cls == "FluxPipeline" else "SD3"
    return ModelFamily(family, config, variant=variant).label, config, None


def read_small_json(path: Path, limit: int = 16 * 1024 * 1024) -> Any:
    """A config file's JSON; UserError for a missing or special file, ValueError for one
    that is too large or not JSON, RecursionError for one nested too deeply."""
    with open_regular(path) as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError("larger than any config file")
    return json.loads(raw.decode("utf-8"))


def _diffusers_family(folder: Path) -> tuple[str, str | None, str | None]:
    marker = folder / DIFFUSERS_MARKER
    try:
        index = read_small_json(marker)
    except UserError as e:
        return "?", None, e.message
    except Exception as e:  # noqa: BLE001 - OSError, bad JSON, nesting: all "cannot be read"
        return (
            "?",
            None,
            f"{shown(marker)} cannot be read ({type(e).__name__}): re-download the model",
        )
    cls = str(index.get("_class_name", "")) if isinstance(index, dict) else ""
    if cls in ("FluxPipeline", "StableDiffusion3Pipeline"):
        return dit_folder_family(folder, cls)
    if "XL" in cls:
        return "SDXL", "sdxl-base", None
    try:
        unet = read_small_json(folder / "unet" / "config.json")
        width = int(unet.get("cross_attention_dim", 0))
        inpaint = int(unet.get("in_channels", 4)) == 9
    except Exception:  # noqa: BLE001 - no or odd UNet config: family unknown, not an error
        return "?", None, None
    family = {768: "SD1", 1024: "SD2", 2048: "SDXL"}.get(width, "?")
    return family + (" inpainting" if inpaint and family != "?" else ""), None, None


# -- discovery -------------------------------------------------------------------------------


def checkpoints_folder(models_dir: Path | str) -> Path:
    return Path(models_dir).expanduser() / CHECKPOINTS_SUBDIR


def is_checkpoint_file(path: Path) -> bool:
    lower = path.name.lower()
    return lower.endswith(CHECKPOINT_SUFFIXES) and not lower.endswith(VAE_SUFFIXES)


def _relative_name(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.relative_to(root).as_posix()
        except ValueError:
            pass
    return path.name


def entry_for_path(path: Path | str, root: Path | None = None) -> ModelEntry:
    """A ModelEntry for one checkpoint file or diffusers folder; named relative to ``root``
    when it lies inside it, else by its own name. A file that cannot be read or classified
    still gets an entry, with family "?" and ``error`` saying why; UserError only when the
    path is missing or not a regular file (a named pipe is never opened)."""
    path = Path(path).expanduser()
    rel = _relative_name(path, root)
    if path.is_dir():
        if not (path / DIFFUSERS_MARKER).is_file():
            raise UserError(
                f"{shown(path)} is a folder without {DIFFUSERS_MARKER}, so not a diffusers "
                "model: give a .safetensors/.ckpt file or a diffusers folder"
            )
        family, config, error = _diffusers_family(path)
        size = _folder_size(path)
        return ModelEntry(rel, path, "diffusers", size, family, error, config)
    size = regular_stat(path).st_size
    family, config, error = _family_of(path)
    name = rel[: -len(path.suffix)] if path.suffix else rel
    yaml = path.with_suffix(".yaml")
    return ModelEntry(
        name, path, "file", size, family, error, config, yaml if yaml.is_file() else None
    )


def _listed_entry(path: Path, root: Path) -> ModelEntry | None:
    """entry_for_path for discovery: None for a file that vanished meanwhile; an entry
    flagged with its error (family "?") for anything else that goes wrong."""
    try:
        return entry_for_path(path, root)
    except UserError:
        return None  # gone between listing and reading, or turned into a pipe
    except Exception as e:  # noqa: BLE001 - one bad file must not hide the others
        rel = _relative_name(path, root)
        is_dir = path.is_dir()
        name = rel if is_dir or not path.suffix else rel[: -len(path.suffix)]
        try:
            size = _folder_size(path) if is_dir else path.stat().st_size
        except OSError:
            size = 0
        why = f"{shown(path.name)} cannot be read ({type(e).__name__}): re-download it"
        return ModelEntry(name, path, "diffusers" if is_dir else "file", size, "?", why)


def _folder_size(folder: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(folder):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, f)).st_size
    return total


def discover_models(models_dir: Path | str) -> list[ModelEntry]:
    """Every checkpoint under ``models_dir/Stable-diffusion``, nested folders included, sorted
    by name (case-insensitive). A folder holding ``model_index.json`` is one diffusers model.

    Never raises for one file: a file that cannot be read or classified is listed with family
    "?" and ``ModelEntry.error`` saying why, so every good file is still there. Named pipes,
    devices and other non-regular entries are skipped without being opened."""
    root = checkpoints_folder(models_dir)
    if not root.is_dir():
        return []
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        here = Path(dirpath)
        if here != root and DIFFUSERS_MARKER in filenames:
            entry = _listed_entry(here, root)
            if entry is not None:
                entries.append(entry)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = here / name
            if name.startswith(".") or not is_checkpoint_file(p):
                continue
            try:
                mode = os.stat(p).st_mode
            except OSError:
                continue  # vanished, or a link to nothing
            if not stat.S_ISREG(mode):
                continue  # a named pipe or a device: opening it could block forever
            entry = _listed_entry(p, root)
            if entry is not None:
                entries.append(entry)
    entries += _transformer_entries(Path(models_dir).expanduser(), {e.name for e in entries})
    entries.sort(key=lambda e: e.name.lower())
    return entries


def _transformer_entries(models_dir: Path, taken: set[str]) -> list[ModelEntry]:
    """The Flux.1 / SD3.5 transformers in models/unet and models/diffusion_models, named
    relative to their folder ("unet/" in front where a checkpoint has that name already);
    text encoders, VAEs and SD UNets kept there are not models sdtui loads alone."""
    from sdtui.model_family_dit import FAMILY_LABELS

    out: list[ModelEntry] = []
    for sub in TRANSFORMER_SUBDIRS:
        folder = models_dir / sub
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*.safetensors")):
            try:
                if not stat.S_ISREG(os.stat(p).st_mode):
                    continue  # a named pipe or a device: never opened
            except OSError:
                continue
            entry = _listed_entry(p, folder)
            if entry is None or not entry.family.startswith(tuple(FAMILY_LABELS.values())):
                continue
            if entry.name in taken:
                entry = dataclasses.replace(entry, name=f"{sub}/{entry.name}")
            taken.add(entry.name)
            out.append(entry)
    return out


def find_vae_beside(path: Path | str) -> Path | None:
    """``NAME.vae.safetensors`` / ``.vae.pt`` / ``.vae.ckpt`` beside checkpoint NAME.*"""
    path = Path(path)
    base = path.parent / (path.name[: -len(path.suffix)] if path.suffix else path.name)
    for suffix in VAE_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


# -- resolving what a user typed -------------------------------------------------------------


def _root_of(entry: ModelEntry) -> Path:
    depth = entry.name.count("/") + 1
    return entry.path.parents[depth - 1] if len(entry.path.parents) >= depth else entry.path.parent


def _unique(matches: list[ModelEntry], query: str, what: str) -> ModelEntry | None:
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        names = shown(", ".join(e.filename for e in matches))
        raise UserError(
            f"model {query!r} matches several {what}: {names}; type more of the name, "
            "or the path relative to the Stable-diffusion folder"
        )
    return None


def _by_hash(digest: str, entries: Sequence[ModelEntry]) -> list[ModelEntry]:
    digest = digest.lower()
    files = [e for e in entries if e.kind == "file"]
    if len(digest) == 8:  # old hash: 64 KiB per file, cheap to compute for all
        out = []
        for e in files:
            with contextlib.suppress(UserError, OSError):
                if old_model_hash(e.path) == digest:
                    out.append(e)
        if out:
            return out
    out = []
    for e in files:  # new hashes only from the cache: hashing every file takes minutes
        full = cached_sha256(e.path)
        if full and full.startswith(digest):
            out.append(e)
    return out


def resolve_model(
    query: str, entries: Iterable[ModelEntry], *, folder: Path | None = None
) -> ModelEntry:
    """The checkpoint a user means, tried in this order: an existing path; the exact name
    (with or without extension); A1111's ``name [hash]`` title; the file stem; a hash
    (8-hex old or a known short hash); a unique case-insensitive part of the name."""
    entries = list(entries)
    q = query.strip()
    if not q:
        raise UserError("no model given: pass a model name from `sdtui models`, or a path")

    # 1. a path to a file or diffusers folder
    p = Path(q).expanduser()
    if ("/" in q or "\\" in q or p.suffix.lower() in CHECKPOINT_SUFFIXES) and p.exists():
        real = p.resolve()
        for e in entries:
            if e.path.resolve() == real:
                return e
        return entry_for_path(p)

    # 2. A1111 title "name [hash]": the part before the bracket, the hash to break ties
    wanted_hash: str | None = None
    m = _RE_TITLE_HASH.search(q)
    if m and q[: m.start()].strip():
        wanted_hash = m.group(1).strip().lower()
        q = q[: m.start()].strip()

    def pick(matches: list[ModelEntry], what: str) -> ModelEntry | None:
        if wanted_hash and len(matches) > 1:
            by_hash = _by_hash(wanted_hash, matches)
            if by_hash:
                matches = by_hash
        return _unique(matches, query, what)

    # 3. exact name, name with extension, A1111 model_name (slashes as underscores)
    for getter in (
        lambda e: e.name,
        lambda e: e.filename,
        lambda e: e.model_name,
    ):
        found = pick([e for e in entries if getter(e) == q], "models")
        if found:
            return found
    # 4. the stem (what infotexts store as "Model"), exact then any case
    found = pick([e for e in entries if e.stem == q], "models with that file name")
    if found:
        return found
    lower = q.lower()
    found = pick(
        [e for e in entries if lower in (e.stem.lower(), e.name.lower(), e.filename.lower())],
        "models",
    )
    if found:
        return found
    # 5. a hash alone ("2c02b20a", "0123456789")
    if wanted_hash is None and _HEX.match(q) and len(q) in (8, 10, 12, 64):
        found = _unique(_by_hash(q, entries), query, "models with that hash")
        if found:
            return found
    # 6. a unique case-insensitive part of the name
    found = pick([e for e in entries if lower in e.filename.lower()], "models")
    if found:
        return found

    where = folder or (_root_of(entries[0]) if entries else None)
    where_text = f" in {shown(where)}" if where else ""
    if not entries:
        raise UserError(
            f"model {query!r} not found: there are no checkpoints{where_text}; put "
            ".safetensors/.ckpt files or diffusers folders there, or pass --models-dir"
        )
    names = shown(", ".join(e.name for e in entries[:30]))
    more = f" (and {len(entries) - 30} more)" if len(entries) > 30 else ""
    raise UserError(
        f"model {query!r} not found{where_text}: available models are {names}{more}; "
        "or give a path to a .safetensors/.ckpt file"
    )
