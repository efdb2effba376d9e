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
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdtui.engine.checkpoint_files import (  # re-exported: their home before the split
    read_checkpoint,
)
from sdtui.engine.configs import config_dir
from sdtui.errors import UserError
from sdtui.model_family import UNET, ModelFamily, UnknownArchitectureError, detect_family
from sdtui.model_index import (
    family_from_shapes,
    read_small_json,
)
from sdtui.regular_files import (
    shown,
)
from sdtui.units import format_bytes

log = logging.getLogger(__name__)

SD2_CONFIGS = {True: "sd21-768-v", False: "sd21-512"}  # v-prediction? -> bundled config

_RE_YAML_V = re.compile(r"^\s*parameterization:\s*[\"']?v[\"']?\s*(#.*)?$", re.MULTILINE)


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
