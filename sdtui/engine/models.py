"""Reading checkpoints safely and turning them into diffusers pipelines, offline.

Single files (A1111's ``models/Stable-diffusion/*.safetensors|*.ckpt``) are classified from
their tensor names (``sdtui.model_family``) and built component by component against a bundled
config folder (``sdtui.engine.configs``), so nothing is fetched from the Hub. Diffusers folders
load with ``from_pretrained(local_files_only=True)``. Every problem a user can cause comes out
as a ``UserError`` that names the file and the fix.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import logging
import pickle
import re
import time
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdtui.engine.configs import config_dir
from sdtui.errors import UserError
from sdtui.model_family import UNET, ModelFamily, UnknownArchitectureError, detect_family
from sdtui.model_index import (
    CKPT_MAX_PICKLE,
    ZIP_MAGIC,
    PickleScan,
    RefusedFile,
    family_from_shapes,
    read_small_json,
    read_zip_pickle,
    scan_pickle,
)
from sdtui.regular_files import (
    looks_like_text,
    not_a_file_of_kind,
    open_regular,
    regular_stat,
    shown,
)
from sdtui.safetensors_header import METADATA, read_safetensors_header
from sdtui.units import format_bytes

log = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SD2_CONFIGS = {True: "sd21-768-v", False: "sd21-512"}  # v-prediction? -> bundled config

_RE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_RE_YAML_V = re.compile(r"^\s*parameterization:\s*[\"']?v[\"']?\s*(#.*)?$", re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------
#
# Nothing in a model file may run code or make sdtui allocate more than the file holds, and
# every way a file can be wrong ends as one UserError sentence naming it (never a traceback):
# - only regular files are opened (a named pipe would block forever);
# - safetensors headers are checked field by field before a byte of weights is read;
# - pickles are read by torch's weights-only unpickler with a short allow-list, after their
#   opcodes are scanned: one that names code is refused before torch sees it, one that claims
#   more memory than its bytes could hold is refused as damaged or crafted;
# - zips are checked first: TorchScript archives (whose loading runs their code), encrypted
#   zips, methods torch cannot read and zip bombs are refused with a sentence each.


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path, complete=True)  # checked field by field before a byte of data
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"{shown(path.name)} is damaged ({shown(why)}): re-download it", detail=str(e)
        ) from None


class _LightningCallbackState:
    """Stand-in for Lightning's ModelCheckpoint that some old checkpoints pickle beside the
    weights; only its plain data is kept, and nothing in it is ever called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update((k, v) for k, v in state.items() if isinstance(k, str))


def _allowed_globals() -> list[Any]:
    """What old checkpoints legitimately pickle besides tensors (as A1111's modules/safe.py)."""
    import numpy as np

    multiarray = np._core.multiarray
    allowed: list[Any] = [
        (_LightningCallbackState, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray.scalar, "numpy._core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray._reconstruct, "numpy._core.multiarray._reconstruct"),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
    ]
    for name in ("Float64DType", "Float32DType", "Float16DType", "Int64DType", "Int32DType"):
        dtype_cls = getattr(np.dtypes, name)
        allowed.append((dtype_cls, f"numpy.dtypes.{name}"))
    return allowed


def _refused_global(error: Exception) -> str | None:
    match = _RE_GLOBAL.search(str(error))
    if match is None:
        return None
    name = match.group(1)
    # torch prints builtins without their module ("eval"); say where it comes from.
    return name if "." in name else f"builtins.{name}"


# Modules whose names a weights pickle may use; torch's weights-only unpickler then narrows
# these to its allow-list. Anything else a pickle imports is code it wants to run.
_SAFE_MODULES = ("torch", "collections", "numpy", "_codecs", "pytorch_lightning", "lightning")


def _weights_only_names() -> frozenset[str]:
    """What torch's weights-only unpickler builds by default (``builtins.set`` and the like)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return frozenset(_get_allowed_globals())
    except (ImportError, AttributeError):  # a torch that moved it: the module prefixes remain
        return frozenset()


def _is_weight_global(name: str) -> bool:
    if any(name == m or name.startswith(m + ".") for m in _SAFE_MODULES):
        return True
    return name in _weights_only_names() or name in {n for _, n in _allowed_globals()}


def _culprit(scan: PickleScan) -> str | None:
    """The first callable a pickle imports that torch's weights-only unpickler would not
    build from its allow-list (or ours): code the pickle wants to run."""
    return next((shown(g) for g in scan.globals if not _is_weight_global(g)), None)


def _refuse_code(path: Path, culprit: str, detail: str | None = None) -> RefusedFile:
    return RefusedFile(
        f"refused to load {shown(path.name)}: its pickle tries to run code ({culprit}). "
        "Use a .safetensors version of this model.",
        detail=detail,
    )


def _scan(path: Path, size: int, is_zip: bool, what: str) -> tuple[PickleScan, RefusedFile | None]:
    """The opcodes of the pickle torch.load would read, and for an old (non-zip) file the
    refusal its scan found, kept so a text file is called text rather than a crafted pickle.
    A zip's refusals (TorchScript, encryption, a bomb) are raised at once."""
    if is_zip:
        try:
            data = read_zip_pickle(path, what)
        except ValueError:
            return PickleScan(), None  # no or a huge data.pkl: torch.load says what is wrong
        return scan_pickle(io.BytesIO(data), len(data), path), None
    try:
        # an old torch file is five pickles (magic, version, system info, object, storage
        # keys) before the raw weights; a plain pickle is one
        with open_regular(path) as f:
            return scan_pickle(f, min(size, CKPT_MAX_PICKLE), path, pickles=5), None
    except RefusedFile as e:
        return PickleScan(), e


def _read_pickled(path: Path, what: str = "model") -> Any:
    """The object a ``.ckpt``/``.pt``/``.pth``/``.bin`` pickles, read so no code can run."""
    size = regular_stat(path).st_size
    if size == 0:
        raise UserError(f"{shown(path.name)} is empty (0 bytes): re-download it")
    with open_regular(path) as f:
        head = f.read(64)
    is_zip = head.startswith(ZIP_MAGIC)  # torch.load's own test for its zip format
    scan, refused = _scan(path, size, is_zip, what)
    culprit = _culprit(scan) if scan.complete else None
    if culprit is not None:
        raise _refuse_code(path, culprit)
    if not is_zip and not scan.complete and looks_like_text(head):
        raise not_a_file_of_kind(path, "checkpoint")
    if refused is not None:
        raise refused
    try:
        # weights_only: the unpickler can only build tensors and the allow-listed classes, so a
        # pickle that names os.system is refused before anything is called.
        with torch.serialization.safe_globals(_allowed_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on pickle protocols is not for users
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        culprit = _refused_global(e) or _culprit(scan)
        if culprit is not None:
            raise _refuse_code(path, shown(culprit), str(e)) from None
        raise RefusedFile(
            f"refused to load {shown(path.name)}: its pickle holds something other than "
            "weights. Use a .safetensors version of this model.",
            detail=str(e),
        ) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserError(
            f"{shown(path.name)} is damaged or truncated ({format_bytes(size)}): re-download it",
            detail=f"{type(e).__name__}: {e}",
        ) from None
    except Exception as e:  # noqa: BLE001 - an allow-listed callable fed crafted arguments
        culprit = _culprit(scan) or next((g for g in scan.globals if g == "_codecs.encode"), None)
        if culprit is not None:
            raise _refuse_code(path, culprit, f"{type(e).__name__}: {e}") from None
        raise RefusedFile(
            f"{shown(path.name)} is damaged or crafted: its pickle does not build weights "
            f"({type(e).__name__}); re-download it or use a .safetensors version",
            detail=f"{type(e).__name__}: {e}",
        ) from None


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(8):  # Lightning and A1111 nest the weights, sometimes twice; a cycle stops
        inner = obj.get("state_dict") if isinstance(obj, dict) else None
        if not isinstance(inner, dict) or inner is obj:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise UserError(
            f"{shown(path.name)} does not hold a state dict of weights: it is not a model"
        )
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{shown(path.name)} holds no weights: re-download it")
    return tensors


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise UserError(f"model not found: {shown(path)}")
    if path.is_dir():
        raise UserError(f"{shown(path)} is a folder, not a checkpoint file")
    regular_stat(path)  # a named pipe or a device is refused before anything opens it


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a ``.safetensors`` or ``.ckpt``/``.pt`` file, on the CPU."""
    path = Path(path)
    _check_exists(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return _read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _unwrap_state_dict(_read_pickled(path), path)
    raise UserError(
        f"{shown(path.name)}: sdtui reads .safetensors and .ckpt checkpoints, not "
        f"'{shown(path.suffix)}' files"
    )


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape. For safetensors only the header is read, not a byte of weights."""
    path = Path(path)
    _check_exists(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES:
        header = read_safetensors_header(path, complete=True)
        return {k: tuple(v["shape"]) for k, v in header.items() if k != METADATA}
    return {k: tuple(v.shape) for k, v in read_checkpoint(path).items()}


# ---------------------------------------------------------------------------------------------
# Building pipelines
# ---------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    pipe: Any  # StableDiffusionPipeline | StableDiffusionXLPipeline
    family: ModelFamily
    name: str
    path: Path
    size_bytes: int
    load_seconds: float
    prediction_type: str  # "epsilon" or "v_prediction"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    freed: bool = False


def default_dtype(device: str) -> torch.dtype:
    """fp32 on CPU; on CUDA bf16 where the GPU does it natively (Ampere+), else fp16."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if torch.cuda.get_device_capability(index)[0] >= 8 and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16
    if dev.type == "mps":
        return torch.float16
    return torch.float32


def _check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}: use cpu, mps, cuda or cuda:N") from e
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UserError(
            "device 'mps' asked for, but this torch has no usable Apple GPU (it needs a Mac "
            "with Apple silicon, macOS 12.3 or later and a torch built with MPS): use the cpu "
            "device"
        )
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"device {device!r} asked for, but this machine has no usable CUDA GPU "
            "(no driver, or a CPU-only torch): use the cpu device"
        )


def yaml_v_prediction(checkpoint: Path) -> bool | None:
    """What a same-name ``.yaml`` beside the checkpoint says (A1111 convention); None if none."""
    yaml_path = next(
        (
            p
            for p in (checkpoint.with_suffix(".yaml"), checkpoint.with_suffix(".yml"))
            if p.is_file()
        ),
        None,
    )
    if yaml_path is None:
        return None
    text = yaml_path.read_text(encoding="utf-8", errors="replace")
    try:
        import yaml

        data = yaml.safe_load(text)
        params = data.get("model", {}).get("params", {}) if isinstance(data, dict) else {}
        return isinstance(params, dict) and params.get("parameterization") == "v"
    except Exception:  # PyYAML missing or the file is not clean YAML: fall back to a text search
        return _RE_YAML_V.search(text) is not None


@torch.no_grad()
def unet_predicts_v(unet: torch.nn.Module) -> bool:
    """A1111's SD2 test: at t=999 on a flat latent, a v-model's output sits far below the input."""
    param = next(unet.parameters())
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, device=param.device, dtype=param.dtype)
    context = torch.full(
        (1, 2, unet.config.cross_attention_dim), 0.5, device=param.device, dtype=param.dtype
    )
    t = torch.tensor([999], device=param.device)
    out = unet(x, t, encoder_hidden_states=context).sample
    return (out.float() - x.float()).mean().item() < -1


def _dtype_keyword() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (older releases ignore the new name)."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _scheduler_from(folder: Path, prediction_type: str | None = None) -> Any:
    import diffusers

    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    scheduler_cls = getattr(diffusers, config["_class_name"])
    scheduler = scheduler_cls.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    if prediction_type is not None and scheduler.config.prediction_type != prediction_type:
        scheduler = scheduler_cls.from_config(scheduler.config, prediction_type=prediction_type)
    return scheduler


def _build_component(path: Path, what: str, build: Any) -> Any:
    try:
        return build()
    except UserError:
        raise
    except Exception as e:  # diffusers raises many types for a file that does not fit
        raise UserError(
            f"could not build the {what} of {path.name} from its weights: the file may be "
            "damaged or a variant sdtui does not know — try another copy of the model",
            detail=f"{type(e).__name__}: {e}",
        ) from e


# Where each text encoder's token embedding sits in an original-layout file.
_CLIP_EMBEDDING = "transformer.text_model.embeddings.token_embedding.weight"
_TOKEN_EMBEDDING = {
    ("SD1", "text_encoder"): "cond_stage_model." + _CLIP_EMBEDDING,
    ("SD2", "text_encoder"): "cond_stage_model.model.token_embedding.weight",
    ("SDXL", "text_encoder"): "conditioner.embedders.0." + _CLIP_EMBEDDING,
    ("SDXL", "text_encoder_2"): "conditioner.embedders.1.model.token_embedding.weight",
    ("SDXL refiner", "text_encoder_2"): "conditioner.embedders.0.model.token_embedding.weight",
}

ROLES = ("base", "refiner")  # what a checkpoint is loaded for: a job's model, or --refiner


def _check_role(name: str, family: ModelFamily, role: str) -> None:
    """An SDXL refiner makes no image alone (no CLIP-L, aesthetic-score time ids): it is
    loaded only as a job's --refiner; a refiner must be SDXL (base-like or refiner)."""
    if role == "base" and family.refiner:
        raise UserError(
            f"{shown(name)} is an SDXL refiner, which finishes an SDXL base model's image "
            "rather than making one: choose an SDXL base model and pass this one as --refiner"
        )
    if role == "refiner" and family.family != "SDXL":
        raise UserError(
            f"{shown(name)} is not SDXL ({family.label}): a refiner must be an SDXL checkpoint "
            "(the SDXL refiner, or another SDXL model)"
        )


def _load_single_file(path: Path, dtype: torch.dtype, role: str) -> tuple[Any, ModelFamily]:
    from diffusers import (
        AutoencoderKL,
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    state_dict = read_checkpoint(path)
    try:
        shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
        family = family_from_shapes(shapes, detect_family)
    except UnknownArchitectureError as e:
        raise UserError(f"cannot load {shown(path.name)}: {e}") from None
    _check_role(path.name, family, role)
    cfg = config_dir(family.config)
    common = {"config": str(cfg), "local_files_only": True, _dtype_keyword(): dtype}
    unet_in = int(state_dict[UNET + "input_blocks.0.0.weight"].shape[1])
    unet = _build_component(
        path,
        "UNet",
        lambda: UNet2DConditionModel.from_single_file(
            state_dict, subfolder="unet", in_channels=unet_in, **common
        ),
    )
    vae = _build_component(
        path, "VAE", lambda: AutoencoderKL.from_single_file(state_dict, subfolder="vae", **common)
    )

    def text_encoder(cls: type, subfolder: str) -> Any:
        model = _build_component(
            path,
            f"text encoder ({subfolder})",
            lambda: create_diffusers_clip_model_from_ldm(
                cls,
                state_dict,
                subfolder=subfolder,
                config=str(cfg),
                torch_dtype=dtype,
                local_files_only=True,
            ),
        )
        # Without accelerate diffusers loads text encoders with strict=False: a name mismatch
        # would leave random weights and draw noise, so check one tensor really arrived.
        key = _TOKEN_EMBEDDING[(family.family + (" refiner" if family.refiner else ""), subfolder)]
        embedding = model.get_input_embeddings().weight
        if key not in state_dict or not torch.equal(embedding, state_dict[key].to(embedding)):
            raise UserError(
                f"the text encoder weights of {path.name} did not load ({subfolder}): the file "
                "may be damaged or a variant sdtui does not know — try another copy",
                detail=f"expected {key}",
            )
        return model

    if family.refiner:
        # diffusers' refiner pipeline (stabilityai/stable-diffusion-xl-refiner-1.0's
        # model_index): OpenCLIP-G only, aesthetic score in the time ids
        refiner = StableDiffusionXLImg2ImgPipeline(
            unet=unet,
            vae=vae,
            text_encoder=None,
            tokenizer=None,
            text_encoder_2=text_encoder(CLIPTextModelWithProjection, "text_encoder_2"),
            tokenizer_2=CLIPTokenizer.from_pretrained(cfg / "tokenizer_2"),
            scheduler=_scheduler_from(cfg),
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=False,
        )
        return refiner, family
    parts: dict[str, Any] = {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder(CLIPTextModel, "text_encoder"),
        "tokenizer": CLIPTokenizer.from_pretrained(cfg / "tokenizer"),
        "scheduler": _scheduler_from(cfg),
    }
    if family.family == "SDXL":
        parts["text_encoder_2"] = text_encoder(CLIPTextModelWithProjection, "text_encoder_2")
        parts["tokenizer_2"] = CLIPTokenizer.from_pretrained(cfg / "tokenizer_2")
        pipe = StableDiffusionXLPipeline(**parts, force_zeros_for_empty_prompt=True)
    else:
        pipe = StableDiffusionPipeline(
            **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )
    return pipe, family


_FOLDER_PIPELINES = {
    "StableDiffusionPipeline": "sd",
    "StableDiffusionImg2ImgPipeline": "sd",
    "StableDiffusionInpaintPipeline": "sd",
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl",
}


def _family_of_folder(pipe: Any, is_xl: bool) -> ModelFamily:
    refiner = is_xl and getattr(pipe, "text_encoder", None) is None
    unet_cfg = pipe.unet.config
    # Describe the folder's UNet the way a single file would look, so one classifier decides.
    shapes: dict[str, tuple[int, ...]] = {
        UNET + "input_blocks.0.0.weight": (
            unet_cfg.block_out_channels[0],
            unet_cfg.in_channels,
            3,
            3,
        ),
        UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (
            unet_cfg.block_out_channels[0],
            unet_cfg.cross_attention_dim,
        ),
    }
    if refiner:
        shapes["conditioner.embedders.0.model.positional_embedding"] = (77, 1280)
    elif is_xl:
        shapes["conditioner.embedders.1.model.positional_embedding"] = (77, 1280)
    try:
        family = detect_family(shapes)
    except UnknownArchitectureError:
        label = "SDXL" if is_xl else ("SD2" if unet_cfg.cross_attention_dim == 1024 else "SD1")
        family = ModelFamily(
            family=label, config="", inpainting=unet_cfg.in_channels == 9, refiner=refiner
        )
    v = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    return dataclasses.replace(family, v_prediction=v)


def _load_folder(path: Path, dtype: torch.dtype, role: str) -> tuple[Any, ModelFamily]:
    from diffusers import (
        StableDiffusionPipeline,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise UserError(
            f"{path.name} is a folder without model_index.json: point sdtui at a diffusers "
            "model folder or at a .safetensors file"
        )
    try:
        index = read_small_json(index_file)
    except (ValueError, RecursionError) as e:  # bad JSON, bad UTF-8, nested too deep, huge
        raise UserError(
            f"{shown(index_file)} is damaged: re-download the model", detail=str(e)
        ) from None
    if not isinstance(index, dict):
        raise UserError(f"{shown(index_file)} is damaged: re-download the model")
    class_name = index.get("_class_name", "")
    kind = _FOLDER_PIPELINES.get(class_name) if isinstance(class_name, str) else None
    if kind is None:
        raise UserError(
            f"{shown(path.name)} is a {shown(str(class_name or 'unknown'))} folder: sdtui runs "
            "Stable Diffusion 1.x, 2.x and SDXL pipelines"
        )
    no_clip_l = index.get("text_encoder") in (None, [None, None])
    if no_clip_l and not (kind == "sdxl" and role == "refiner"):
        raise UserError(
            f"{path.name} has no text encoder (an SDXL refiner?): use a base model folder, "
            "and a refiner with --refiner"
        )
    extra: dict[str, Any] = {}
    if kind == "sd":
        extra = {
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
    pipe_cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    if no_clip_l:  # an SDXL refiner folder, asked for as one
        pipe_cls = StableDiffusionXLImg2ImgPipeline
    try:
        extra[_dtype_keyword()] = dtype
        pipe = pipe_cls.from_pretrained(path, local_files_only=True, **extra)
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not load the diffusers folder {path.name}: a file is missing or damaged — "
            "re-download the model",
            detail=f"{type(e).__name__}: {e}",
        ) from e
    family = _family_of_folder(pipe, kind == "sdxl")
    _check_role(path.name, family, role)
    return pipe, family


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def load_pipeline(
    path: Path, *, device: str = "cpu", dtype: torch.dtype | None = None, role: str = "base"
) -> LoadedModel:
    """Load a checkpoint file or a diffusers folder into a ready pipeline on ``device``;
    ``role`` "refiner" loads a model to finish an SDXL job (sdtui.engine.refiner): an SDXL
    refiner then builds a ``StableDiffusionXLImg2ImgPipeline`` without CLIP-L."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: use one of {ROLES}")
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"model not found: {path}")
    _check_device(device)
    from sdtui.engine import dit

    dtype = dtype or default_dtype(device)
    start = time.perf_counter()
    parts_bytes = 0  # a Flux.1 / SD3.5 transformer's VAE and text encoder files
    if dit.is_dit_path(path):  # Flux.1 / SD3.5: built by sdtui.engine.dit
        pipe, family, parts_bytes = dit.load_dit(path, dtype)
        _check_role(path.name, family, role)
    elif path.is_dir():
        pipe, family = _load_folder(path, dtype, role)
    else:
        pipe, family = _load_single_file(path, dtype, role)
    pipe.set_progress_bar_config(disable=True)  # the engine reports progress itself
    try:
        if torch.device(device).type != "cpu":  # components are built on the CPU
            pipe.to(device)
    except (RuntimeError, AssertionError) as e:
        _release(pipe)  # half-moved weights would otherwise pin VRAM until a restart
        if isinstance(e, torch.cuda.OutOfMemoryError):
            raise UserError(
                f"not enough GPU memory to load {path.name} ({format_bytes(_size_on_disk(path))}): "
                "close other programs using the GPU or choose a lower memory mode",
                detail=str(e),
            ) from e
        raise UserError(
            f"could not move {path.name} to {device}: {str(e).splitlines()[0]}",
            detail=str(e),
        ) from e
    if path.is_file() and not dit.is_dit_family(family):
        pipe, family = _settle_prediction_type(path, pipe, family)
    return LoadedModel(
        pipe=pipe,
        family=family,
        name=path.stem if path.is_file() else path.name,
        path=path,
        size_bytes=_size_on_disk(path) + parts_bytes,
        load_seconds=time.perf_counter() - start,
        prediction_type=pipe.scheduler.config.get("prediction_type", "flow"),  # flow: Flux, SD3
        device=device,
        dtype=dtype,
    )


def _settle_prediction_type(path: Path, pipe: Any, family: ModelFamily) -> tuple[Any, ModelFamily]:
    """v-prediction is not in the weights: a yaml beside the file decides, else for SD2 the
    UNet is asked (A1111's test); SD 1.x and SDXL base are epsilon."""
    v = yaml_v_prediction(path)
    if v is None and family.v_prediction:  # an SDXL v-pred marker tensor
        v = True
    if v is None and family.family == "SD2" and not family.inpainting:
        v = unet_predicts_v(pipe.unet)
        log.info("%s: UNet test says %s", path.name, "v-prediction" if v else "epsilon")
    if family.family == "SD2":
        name = SD2_CONFIGS[bool(v)]
        cfg = config_dir(name)
        unet_config = json.loads((cfg / "unet" / "config.json").read_text())
        pipe.unet.register_to_config(sample_size=unet_config["sample_size"])  # 768 vs 512 px
        pipe.scheduler = _scheduler_from(cfg, "v_prediction" if v else "epsilon")
        family = dataclasses.replace(family, config=name)
    elif v:
        pipe.scheduler = _scheduler_from(config_dir(family.config), "v_prediction")
    if family.zero_terminal_snr:
        # the sampler rescales alphas_cumprod from this flag as A1111's "Zero Terminal SNR"
        # noise schedule does (sdtui.engine.samplers._ldm_alphas_cumprod)
        pipe.scheduler = type(pipe.scheduler).from_config(
            pipe.scheduler.config, rescale_betas_zero_snr=True
        )
    return pipe, dataclasses.replace(family, v_prediction=bool(v))


def _release(pipe: Any) -> None:
    if hasattr(pipe, "remove_all_hooks"):
        pipe.remove_all_hooks()  # offload hooks keep their own references to the weights
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            # Meta tensors have no storage: the weights go even if someone still holds the module.
            component.to("meta")
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_pipeline(loaded: LoadedModel) -> None:
    """Release a model's memory (RAM and VRAM) even if stray references to it survive.
    The pipeline is unusable afterwards (``loaded.freed``); load the model again to use it."""
    if loaded.freed:
        return
    _release(loaded.pipe)
    loaded.freed = True
