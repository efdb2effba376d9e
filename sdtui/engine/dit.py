"""Flux.1 (dev, schnell) and SD3.5 (medium, large): loading fully offline, txt2img and img2img
jobs.

Loading: a single file (all-in-one, or the transformer alone with its VAE and text encoders
found beside it in the A1111/Forge/ComfyUI folders), or a diffusers folder. Each part is built
on the meta device from a bundled config folder (``assets/configs/flux1-dev``, ...) and gets
its weights by ``load_state_dict(assign=True)``: no Hub, no random init of 12 B parameters.
The transformer's shape settings (blocks, widths, dual attention) are read from its weights,
so a pruned or older variant (SD3 medium) loads with the same config.

Running: diffusers' FluxPipeline / StableDiffusion3Pipeline (their Img2Img pipelines over the
same components for an init image), with sdtui's job flow (JobStarted,
Progress per step with cancel and skip, ImageSaved with the infotext Forge writes, JobDone).
The prompt's ``<lora:name:w>`` tags are merged into the weights for the job and put back
after it (``dit_loras``: kohya, BFL/ComfyUI and diffusers/ai-toolkit layouts); an
out-of-memory error climbs ``DitLadder`` instead of failing the job.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from sdtui.engine import ksampling, rng
from sdtui.engine.dit_keys import _transformer_settings, flux_to_diffusers, sd3_to_diffusers
from sdtui.engine.dit_lora import dit_loras
from sdtui.engine.dit_memory import DitLadder
from sdtui.engine.flow_samplers import FLOW_SAMPLERS, FlowKSampler
from sdtui.engine.progress import StepMeter
from sdtui.errors import UserError
from sdtui.model_family import ModelFamily, UnknownArchitectureError, detect_family
from sdtui.model_family_dit import (
    DIT_FAMILIES,
    PREFIX,
    TEXT_ENCODERS,
    TEXT_PREFIXES,
    VAE_PREFIXES,
    detect_dit,
    dit_parts,
)
from sdtui.regular_files import shown
from sdtui.safetensors_header import read_safetensors_header, read_safetensors_shapes
from sdtui.samplers import FLOW_SCHEDULE_TYPES, resolve_flow_schedule

log = logging.getLogger(__name__)

FOLDER_PIPELINES = {"FluxPipeline": "Flux", "StableDiffusion3Pipeline": "SD3"}
# where Forge, A1111 and ComfyUI keep the parts a transformer-only file needs
TEXT_DIRS = ("text_encoder", "clip", "text_encoders")
VAE_DIRS = ("VAE", "vae")
MODEL_DIRS = ("Stable-diffusion", "unet", "diffusion_models", "checkpoints")
TEXT_FILES = {  # what ComfyUI/Forge users download, named in the "missing file" message
    "clip_l": "clip_l.safetensors",
    "clip_g": "clip_g.safetensors",
    "t5xxl": "t5xxl_fp16.safetensors (or t5xxl_fp8_e4m3fn.safetensors)",
}
TEXT_WORDS = {"clip_l": "CLIP-L", "clip_g": "CLIP-G", "t5xxl": "T5-XXL"}
VAE_FILES = {"Flux": "ae.safetensors", "SD3": "the SD3.5 VAE (sd3.5_vae.safetensors)"}
FP8 = (torch.float8_e4m3fn, torch.float8_e5m2)

# Forge's settings for these families (its UI presets and infotext)
SCHEDULES = FLOW_SCHEDULE_TYPES  # Forge's flow-matching schedules (Simple is its default)


def is_dit_family(family: ModelFamily | str) -> bool:
    name = family.family if isinstance(family, ModelFamily) else family
    return name in DIT_FAMILIES


def is_dit_path(path: Path) -> bool:
    """A Flux.1 / SD3.5 file or diffusers folder (cheap: a header or model_index.json)."""
    from sdtui.model_index import read_small_json

    try:
        if path.is_dir():
            index = read_small_json(path / "model_index.json")
            return isinstance(index, dict) and index.get("_class_name") in FOLDER_PIPELINES
        if path.suffix.lower() != ".safetensors":
            return False
        return detect_dit(read_shapes(path)) is not None
    except Exception:  # noqa: BLE001 - damaged or hostile: the ordinary loader says what is wrong
        return False


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no weights read)."""
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"{shown(path.name)}: sdtui reads Flux.1 / SD3.5 parts from .safetensors")
    return read_safetensors_shapes(path)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file on the CPU, its header checked field by field first
    (as sdtui.engine.models reads checkpoints)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    read_safetensors_header(path, complete=True)
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError, MemoryError) as e:
        why = (str(e).splitlines() or [type(e).__name__])[0]
        raise UserError(
            f"{shown(path.name)} is damaged ({shown(why)}): re-download it", detail=str(e)
        ) from None


# ---------------------------------------------------------------------------------------------
# Building modules from state dicts, on the meta device
# ---------------------------------------------------------------------------------------------


def _cast(
    sd: dict[str, torch.Tensor], dtype: torch.dtype, keep: tuple[torch.dtype, ...] = ()
) -> dict[str, torch.Tensor]:
    """``sd`` in ``dtype``; tensors of a ``keep`` dtype stay as they are."""
    return {
        k: v.to(dtype) if v.is_floating_point() and v.dtype not in keep else v
        for k, v in sd.items()
    }


def _fill(
    build: Callable[[], torch.nn.Module],
    sd: dict[str, torch.Tensor],
    dtype: torch.dtype,
    what: str,
    source: Path,
    optional: Iterable[str] = (),
    keep: tuple[torch.dtype, ...] = (),
) -> Any:
    """``build()`` on the meta device, given ``sd`` as its weights (cast to ``dtype``, but
    those of a ``keep`` dtype)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = build()
    result = model.load_state_dict(_cast(sd, dtype, keep), strict=False, assign=True)
    allowed = set(optional)
    missing = [k for k in result.missing_keys if k not in allowed]
    left = [n for n, p in model.named_parameters() if p.is_meta and n not in allowed]
    if missing or left:
        first = (missing or left)[0]
        raise UserError(
            f"{shown(source.name)} does not hold a complete {what} ({len(missing or left)} "
            f"tensors missing, e.g. {shown(first)}): it is another model's file or damaged — "
            "use the file made for this model, or re-download it",
            detail=f"missing: {missing[:20]}",
        )
    return model.eval().requires_grad_(False)


def _refuse_scaled_fp8(sd: dict[str, torch.Tensor], source: Path) -> None:
    if "scaled_fp8" in sd or any(k.endswith(".scale_weight") for k in sd):
        raise UserError(
            f"{shown(source.name)} holds ComfyUI's scaled fp8 weights, which sdtui does not "
            "load yet: use the fp16/bf16 or plain fp8 (float8_e4m3fn) file of this model"
        )


def _strip_prefixes(sd: dict[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, Any]:
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return dict(sd)


def _build_transformer(
    family: str, sd: dict[str, torch.Tensor], cfg_dir: Path, dtype: torch.dtype, source: Path
) -> Any:
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    _refuse_scaled_fp8(sd, source)
    fp8 = next((v.dtype for v in sd.values() if v.dtype in FP8), None)
    stripped = {k[len(PREFIX) :] if k.startswith(PREFIX) else k: v for k, v in sd.items()}
    parts = dit_parts(stripped)
    try:
        if parts.diffusers_layout:
            converted = stripped
        elif family == "Flux":
            converted = flux_to_diffusers(stripped)
        else:
            converted = sd3_to_diffusers(stripped)
    except (KeyError, IndexError, RuntimeError, ValueError) as e:
        raise UserError(
            f"the transformer of {shown(source.name)} does not convert ({shown(str(e))}): the "
            "file is damaged or a variant sdtui does not know — re-download it",
            detail=f"{type(e).__name__}: {e}",
        ) from None
    cls = FluxTransformer2DModel if family == "Flux" else SD3Transformer2DModel
    base = json.loads((cfg_dir / "transformer" / "config.json").read_text())
    settings = _transformer_settings(family, converted, base)
    if fp8 is None or dtype == torch.float32:  # (fp32: the CPU, where memory is not the limit)
        return _fill(lambda: cls.from_config(settings), converted, dtype, "transformer", source)
    # fp8 weights stay as the file has them (half of bf16), each layer widened as it computes;
    # the layers diffusers leaves out of that (norms, embeddings, proj_out) are widened once
    model = _fill(
        lambda: cls.from_config(settings), converted, dtype, "transformer", source, keep=(fp8,)
    )
    model.enable_layerwise_casting(storage_dtype=fp8, compute_dtype=dtype)
    _widen_uncast(model, dtype)
    return model


def _widen_uncast(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """fp8 weights left in a module without a layerwise-casting hook (norms, embeddings
    diffusers skips) widened once to ``dtype``: they are small, and nothing would widen them
    as they compute."""
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and registry.get_hook("layerwise_casting") is not None:
            continue
        for param in module.parameters(recurse=False):
            if param.dtype in FP8:
                param.data = param.data.to(dtype)


def _build_vae(sd: dict[str, torch.Tensor], cfg_dir: Path, dtype: torch.dtype, source: Path) -> Any:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    config = AutoencoderKL.load_config(cfg_dir / "vae")
    vae_sd = _strip_prefixes(sd, VAE_PREFIXES)
    if "decoder.conv_in.weight" in vae_sd:  # original (LDM) names; a diffusers VAE has them too
        if "decoder.up.0.block.0.conv1.weight" in vae_sd:
            vae_sd = convert_ldm_vae_checkpoint(vae_sd, config)
    latent = vae_sd.get("decoder.conv_in.weight")
    if latent is None or int(latent.shape[1]) != int(config["latent_channels"]):
        got = "no VAE" if latent is None else f"a {int(latent.shape[1])}-channel VAE"
        raise UserError(
            f"{shown(source.name)} holds {got}; this model needs a 16-channel VAE "
            "(Flux: ae.safetensors, SD3.5: its own VAE) in models/VAE"
        )
    return _fill(lambda: AutoencoderKL.from_config(config), vae_sd, dtype, "VAE", source)


def _build_text_encoder(
    kind: str,
    family: str,
    sd: dict[str, torch.Tensor],
    cfg_dir: Path,
    sub: str,
    dtype: torch.dtype,
    source: Path,
) -> Any:
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    _refuse_scaled_fp8(sd, source)
    te = _strip_prefixes(sd, (TEXT_PREFIXES[kind], "transformer.", "model."))
    te.pop("text_model.embeddings.position_ids", None)
    what = f"{TEXT_WORDS[kind]} text encoder"
    if kind == "t5xxl":
        te = {k: v for k, v in te.items() if not k.startswith(("decoder.", "lm_head."))}
        if "shared.weight" in te:  # transformers 5 keeps the encoder's copy apart
            te.setdefault("encoder.embed_tokens.weight", te["shared.weight"])
        elif "encoder.embed_tokens.weight" in te:
            te["shared.weight"] = te["encoder.embed_tokens.weight"]
        t5_config = T5Config.from_pretrained(cfg_dir / sub)
        fp8 = next((v.dtype for v in te.values() if v.dtype in FP8), None)
        keep = (fp8,) if fp8 is not None and dtype != torch.float32 else ()
        model = _fill(lambda: T5EncoderModel(t5_config), te, dtype, what, source, keep=keep)
        wo = [module for name, module in model.named_modules() if name.endswith(".wo")]
        # T5 overflows in fp16: its output projections stay fp32 (transformers' _keep_in_fp32)
        wide = torch.float32 if dtype == torch.float16 else dtype
        for module in wo:
            module.to(wide)
        if keep:
            # t5xxl_fp8_e4m3fn: 4.9 GB stays 4.9 GB instead of 9.5 GB in bf16; each layer is
            # widened as it computes (diffusers' layerwise casting, as for the transformer).
            # Left wide: the .wo projections (T5 casts its input to wo's stored dtype) and the
            # token embedding (0.13 GB; the pipeline takes T5's dtype from its first weight).
            from diffusers.hooks import apply_layerwise_casting

            apply_layerwise_casting(
                model,
                storage_dtype=keep[0],
                compute_dtype=dtype,
                skip_modules_pattern=(r"\.wo$", "layer_norm", "^shared$", "embed_tokens"),
            )
            _widen_uncast(model, dtype)
        return model
    clip_config = CLIPTextConfig.from_pretrained(cfg_dir / sub)
    if family == "Flux":
        te.pop("text_projection.weight", None)
        return _fill(lambda: CLIPTextModel(clip_config), te, dtype, what, source)
    optional = ("text_projection.weight",) if kind == "clip_l" else ()
    model = _fill(
        lambda: CLIPTextModelWithProjection(clip_config), te, dtype, what, source, optional
    )
    if model.text_projection.weight.is_meta:  # ComfyUI's CLIP-L files may leave it out
        size = clip_config.hidden_size
        model.text_projection.weight = torch.nn.Parameter(
            torch.eye(size, dtype=dtype), requires_grad=False
        )
    return model


# ---------------------------------------------------------------------------------------------
# Finding the parts a transformer-only file needs
# ---------------------------------------------------------------------------------------------


def models_root(path: Path) -> Path:
    """The models/ folder a checkpoint sits in (models/Stable-diffusion/x -> models)."""
    parent = path.parent
    for up in (parent, *parent.parents):
        if up.name in MODEL_DIRS:
            return up.parent
        if up == parent.parent.parent:
            break
    return parent


def _search_dirs(path: Path, names: Iterable[str]) -> list[Path]:
    root = models_root(path)
    dirs = [root / n for n in names] + [path.parent]
    return [d for d in dict.fromkeys(dirs) if d.is_dir()]


def _text_file_matches(kind: str, name: str) -> bool:
    lower = name.lower().replace("-", "_")
    if kind == "t5xxl":
        return "t5xxl" in lower or (lower.startswith("t5") and "xxl" in lower)
    return kind in lower or kind.replace("_", "") in lower


def find_text_encoder(path: Path, kind: str) -> Path | None:
    found = [
        f
        for d in _search_dirs(path, TEXT_DIRS)
        for f in sorted(d.glob("*.safetensors"))
        if f.is_file() and _text_file_matches(kind, f.name) and f != path
    ]
    # full precision first: an fp8 T5 costs prompt following
    found.sort(key=lambda f: ("fp8" in f.name.lower(), f.name.lower()))
    return found[0] if found else None


def _is_16ch_vae(file: Path) -> bool:
    try:
        shapes = read_shapes(file)
    except (UserError, OSError, ValueError):
        return False
    for prefix in ("", *VAE_PREFIXES):
        shape = shapes.get(prefix + "decoder.conv_in.weight")
        if shape is not None:
            return len(shape) == 4 and int(shape[1]) == 16
    return False


def _vae_hint(name: str) -> str | None:
    """Which family a VAE file's name says it is for (BFL names Flux's "ae.safetensors")."""
    lower = name.lower()
    if lower == "ae.safetensors" or "flux" in lower:
        return "Flux"
    return "SD3" if "sd3" in lower else None


def find_vae(path: Path, family: str) -> Path | None:
    """A 16-channel VAE in models/VAE (or beside the file): one named for the family first,
    then one named for no family; never the other family's."""
    candidates = [
        f
        for d in _search_dirs(path, VAE_DIRS)
        for f in sorted(d.glob("*.safetensors"))
        if f.is_file() and f != path and _vae_hint(f.name) in (family, None)
    ]
    candidates.sort(key=lambda f: _vae_hint(f.name) != family)
    return next((f for f in candidates if _is_16ch_vae(f)), None)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _tokenizers(family: str, cfg_dir: Path) -> dict[str, Any]:
    from transformers import CLIPTokenizer, T5TokenizerFast

    if family == "Flux":
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(cfg_dir / "tokenizer"),
            "tokenizer_2": T5TokenizerFast.from_pretrained(cfg_dir / "tokenizer_2"),
        }
    return {
        "tokenizer": CLIPTokenizer.from_pretrained(cfg_dir / "tokenizer"),
        "tokenizer_2": CLIPTokenizer.from_pretrained(cfg_dir / "tokenizer_2"),
        "tokenizer_3": T5TokenizerFast.from_pretrained(cfg_dir / "tokenizer_3"),
    }


def _scheduler(cfg_dir: Path) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_pretrained(cfg_dir, subfolder="scheduler")


def load_dit_file(path: Path, dtype: torch.dtype) -> tuple[Any, ModelFamily, list[Path]]:
    """(pipeline, family, the other files it read) of a Flux.1 / SD3.5 single file."""
    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from sdtui.engine.configs import config_dir

    shapes = read_shapes(path)
    try:
        family = detect_family(shapes)
    except UnknownArchitectureError as e:
        raise UserError(f"cannot load {shown(path.name)}: {e}") from None
    parts = dit_parts(shapes)
    name = family.family
    label = family.label
    vae_file = None if parts.vae else find_vae(path, name)
    text_files = {
        kind: find_text_encoder(path, kind)
        for kind in TEXT_ENCODERS[name]
        if kind not in parts.text_encoders
    }
    root = models_root(path)
    missing = [
        f"the {TEXT_WORDS[k]} text encoder ({TEXT_FILES[k]}) in {shown(root / 'text_encoder')}"
        for k, f in text_files.items()
        if f is None
    ]
    if not parts.vae and vae_file is None:
        missing.append(f"its VAE ({VAE_FILES[name]}) in {shown(root / 'VAE')}")
    if missing:
        raise UserError(
            f"{shown(path.name)} holds the {label} transformer only; put "
            + "; ".join(missing)
            + " (Forge's folders; ComfyUI's models/clip and models/vae work too)"
        )
    cfg = config_dir(family.config)
    t0 = time.perf_counter()
    state = read_weights(path)
    transformer_sd = {
        k: v
        for k, v in state.items()
        if not k.startswith((*VAE_PREFIXES, "text_encoders.", "conditioner.", "cond_stage_model."))
    }
    transformer = _build_transformer(name, transformer_sd, cfg, dtype, path)
    for key in transformer_sd:  # a cast copy is the model's now: let the file's go
        del state[key]
    del transformer_sd
    vae = _build_vae(
        state if vae_file is None else read_weights(vae_file), cfg, dtype, vae_file or path
    )
    subs = {"clip_l": "text_encoder"} | (
        {"t5xxl": "text_encoder_2"}
        if name == "Flux"
        else {"clip_g": "text_encoder_2", "t5xxl": "text_encoder_3"}
    )
    encoders: dict[str, Any] = {}
    for kind in TEXT_ENCODERS[name]:
        file = text_files.get(kind)
        source_sd = state if file is None else read_weights(file)
        encoders[subs[kind]] = _build_text_encoder(
            kind, name, source_sd, cfg, subs[kind], dtype, file or path
        )
        del source_sd
    del state
    log.info("%s: built in %.1f s", path.name, time.perf_counter() - t0)
    components = {"transformer": transformer, "vae": vae, "scheduler": _scheduler(cfg)}
    components |= encoders | _tokenizers(name, cfg)
    pipe_cls = FluxPipeline if name == "Flux" else StableDiffusion3Pipeline
    pipe = pipe_cls(**components)
    used = [f for f in (vae_file, *text_files.values()) if f is not None]
    return pipe, family, used


def load_dit_folder(path: Path, dtype: torch.dtype) -> tuple[Any, ModelFamily]:
    from diffusers import FluxPipeline, StableDiffusion3Pipeline
    from diffusers.utils import deprecation_utils

    # diffusers renamed torch_dtype to dtype (as sdtui.engine.models._dtype_keyword says)
    dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
    index = json.loads((path / "model_index.json").read_text())
    name = FOLDER_PIPELINES[index["_class_name"]]
    pipe_cls = FluxPipeline if name == "Flux" else StableDiffusion3Pipeline
    try:
        pipe = pipe_cls.from_pretrained(path, local_files_only=True, **{dtype_key: dtype})
    except (OSError, ValueError) as e:
        raise UserError(
            f"could not load the diffusers folder {shown(path.name)}: a file is missing or "
            "damaged — re-download the model",
            detail=f"{type(e).__name__}: {e}",
        ) from e
    return pipe, folder_family(pipe.transformer.config, name)


def folder_family(config: Any, name: str) -> ModelFamily:
    if name == "Flux":
        dev = bool(config.get("guidance_embeds"))
        return ModelFamily(
            "Flux", "flux1-dev" if dev else "flux1-schnell", variant="dev" if dev else "schnell"
        )
    large = int(config.get("num_layers", 0)) >= 38
    return ModelFamily(
        "SD3", "sd35-large" if large else "sd35-medium", variant="large" if large else "medium"
    )


def load_dit(path: Path, dtype: torch.dtype) -> tuple[Any, ModelFamily, int]:
    """(pipeline, family, bytes of the other files it read) of a Flux.1 / SD3.5 file or
    diffusers folder, built on the CPU in ``dtype`` (sdtui.engine.models.load_pipeline places
    it and wraps it in a LoadedModel)."""
    if path.is_dir():
        pipe, family = load_dit_folder(path, dtype)
        return pipe, family, 0
    pipe, family, extra = load_dit_file(path, dtype)
    return pipe, family, sum(f.stat().st_size for f in extra)


# ---------------------------------------------------------------------------------------------
# Running a txt2img / img2img job
# ---------------------------------------------------------------------------------------------


def check_params(p: Any, family: ModelFamily) -> Any:
    """The job's params for a Flux.1 / SD3.5 model, or a UserError naming what does not apply."""
    label = family.label
    p = p.validated().with_seeds()
    if p.sampler not in FLOW_SAMPLERS:
        raise UserError(
            f"{label} is a flow-matching model: {p.sampler} works in SD's timestep space, "
            f"which it does not have. Choose one of {', '.join(FLOW_SAMPLERS)} (Forge's "
            "default is Euler)"
        )
    if p.schedule_type not in SCHEDULES:
        raise UserError(
            f"{label} is a flow-matching model: the {p.schedule_type} schedule is built from "
            f"SD's timesteps, which it does not have. Choose Schedule type "
            f"{', '.join(SCHEDULES)} (Forge's default is Simple)"
        )
    unsupported = [
        ("a refiner", p.refiner_checkpoint is not None),
        ("CFG Rescale", p.cfg_rescale > 0),
    ]
    asked = [name for name, on in unsupported if on]
    if asked:
        raise UserError(
            f"{label} runs txt2img, img2img, inpainting and hires fix in this version of sdtui: {', '.join(asked)} "
            "not supported yet for it — turn it off, or use an SD 1.x/SDXL model"
        )
    if p.width % 16 or p.height % 16:
        raise UserError(
            f"{label} needs width and height in multiples of 16, not {p.width}x{p.height}: "
            "use 1024x1024, 896x1152, 1152x896, ..."
        )
    return p


def infotext_pairs(
    p: Any,
    family: ModelFamily,
    seed: int,
    ctx: Any,
    extra: dict[str, object] | None = None,
    subseed: int | None = None,
) -> dict[str, object]:
    """The key/value line Forge writes for these families: the schedule run as "Schedule
    type" (Simple, Karras, ...; Forge writes the resolved one), and for Flux dev "Distilled
    CFG Scale" right after "CFG scale"."""
    pairs = p.infotext_pairs(
        seed=seed,
        subseed=subseed,
        model_name=ctx.model_name,
        model_hash=ctx.model_hash,
        extra=dict(extra or {}),
    )
    pairs["Schedule type"] = resolve_flow_schedule(p.sampler, p.schedule_type)
    if family.family == "Flux" and family.variant == "dev":
        ordered: dict[str, object] = {}
        for key, value in pairs.items():
            ordered[key] = value
            if key == "CFG scale":
                ordered["Distilled CFG Scale"] = _num(p.distilled_cfg_scale)
        pairs = ordered
    return pairs


def _num(v: float) -> int | float:
    return int(v) if float(v).is_integer() else round(float(v), 4)


# Latent -> RGB factors for a cheap preview (rows: the 16 latent channels), from InvokeAI's
# invokeai/app/util/step_callback.py (Apache-2.0), applied as sdtui.engine.preview does for SD
LATENT_RGB = {
    "Flux": [
        [-0.0412, 0.0149, 0.0521],
        [0.0056, 0.0291, 0.0768],
        [0.0342, -0.0681, -0.0427],
        [-0.0258, 0.0092, 0.0463],
        [0.0863, 0.0784, 0.0547],
        [-0.0017, 0.0402, 0.0158],
        [0.0501, 0.1058, 0.1152],
        [-0.0209, -0.0218, -0.0329],
        [-0.0314, 0.0083, 0.0896],
        [0.0851, 0.0665, -0.0472],
        [-0.0534, 0.0238, -0.0024],
        [0.0452, -0.0026, 0.0048],
        [0.0892, 0.0831, 0.0881],
        [-0.1117, -0.0304, -0.0789],
        [0.0027, -0.0479, -0.0043],
        [-0.1146, -0.0827, -0.0598],
    ],
    "SD3": [
        [-0.0524, 0.0325, 0.0749],
        [-0.0581, 0.0076, 0.0573],
        [0.1614, 0.0127, -0.0377],
        [0.1442, 0.0846, 0.1594],
        [0.0489, 0.0056, -0.0669],
        [0.0519, 0.1922, 0.0626],
        [0.1539, 0.0482, 0.0710],
        [-0.0860, 0.0901, 0.1089],
        [-0.1240, -0.0677, 0.0034],
        [-0.0440, 0.0783, 0.0226],
        [0.0310, 0.0638, 0.0775],
        [-0.0132, 0.0855, -0.0877],
        [0.0646, 0.0591, 0.1326],
        [-0.0786, -0.0226, -0.1276],
        [-0.0992, -0.0801, -0.0626],
        [-0.0339, -0.0804, -0.0608],
    ],
}


def preview_image(latents: torch.Tensor, family: str, max_side: int = 256) -> Any:
    """A (B, 16, h, w) latent batch as one small RGB image, the batch side by side."""
    from PIL import Image

    factors = torch.tensor(LATENT_RGB[family])
    rgb = torch.einsum("bchw,cr->bhwr", latents.detach().float().cpu(), factors)
    rgb = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    b, h, w, _ = rgb.shape
    grid = Image.new("RGB", (b * w, h))
    for i in range(b):
        grid.paste(Image.fromarray(rgb[i]), (i * w, 0))
    if max(grid.size) > max_side:
        grid.thumbnail((max_side, max_side))
    return grid


class StepProgress(StepMeter):
    """Called after each pipeline step (sdtui.engine.progress): cancel and skip raised out of
    the pipeline, Progress, and a preview of the latents as often as the params ask."""

    def __init__(self, ctx: Any, p: Any, batch_index: int, family: str, steps: int) -> None:
        # steps: the steps that run (img2img runs fewer than p.steps)
        super().__init__(ctx, p, batch_index, steps)
        self.family = family

    def __call__(self, step: int, latents: Any = None) -> None:
        done = step + 1
        if self.step(done, can_preview=latents is not None):
            self.preview(done, lambda: preview_image(latents, self.family))


def plain_prompt(text: str) -> str:
    """A1111 prompt text without its emphasis syntax: "(cat:1.3)" reads "cat", BREAK goes.
    What the CLIP encoders read; the weights go to T5 (sdtui.engine.dit_prompts)."""
    from sdtui.prompt_syntax import plain_text

    return plain_text(text)


def pipeline_view(pipe: Any, img2img: bool, scheduler: FlowKSampler | None = None) -> Any:
    """A txt2img or img2img view of a loaded FluxPipeline / StableDiffusion3Pipeline: the same
    components (no second copy of the weights, the memory mode's hooks kept), with a k-diffusion
    sampler in the scheduler's place where one is given (sdtui.engine.flow_samplers)."""
    from diffusers import (
        FluxImg2ImgPipeline,
        FluxPipeline,
        StableDiffusion3Img2ImgPipeline,
        StableDiffusion3Pipeline,
    )

    flux = isinstance(pipe, FluxPipeline)
    if img2img:
        kind = FluxImg2ImgPipeline if flux else StableDiffusion3Img2ImgPipeline
    else:
        kind = FluxPipeline if flux else StableDiffusion3Pipeline
    if kind is type(pipe) and scheduler is None:
        return pipe
    components = dict(pipe.components)
    if scheduler is not None:
        components["scheduler"] = scheduler
    view = kind(**components)
    view.set_progress_bar_config(disable=True)
    if scheduler is not None and img2img:
        # the pipeline's own slices a one-call-a-step list; the sampler's lists every call
        view.get_timesteps = scheduler.get_timesteps
    return view


def flow_sampler(pipe: Any, p: Any, flux: bool, start: int) -> FlowKSampler | None:
    """The scheduler stand-in running ``p.sampler`` (None for Euler on the Simple schedule:
    diffusers' own scheduler, which the stand-in's Euler equals)."""
    if p.sampler == "Euler" and resolve_flow_schedule(p.sampler, p.schedule_type) == "Simple":
        return None
    return make_flow_sampler(pipe, p.sampler, p, flux, start)


def make_flow_sampler(pipe: Any, name: str, p: Any, flux: bool, start: int) -> FlowKSampler:
    """A FlowKSampler running ``name`` for ``p``'s size; img2img skips ``start`` steps."""
    shape = latent_shape(pipe, p.width, p.height, flux)
    pack = None
    if flux:  # the pipeline's layout: 2x2 patches

        def pack(batch: torch.Tensor) -> torch.Tensor:
            return pipe._pack_latents(batch, batch.shape[0], *shape)

    schedule = resolve_flow_schedule(name, p.schedule_type)
    return FlowKSampler(
        pipe.scheduler,
        name,
        noise_shape=shape,
        pack=pack,
        start=start,
        schedule=schedule,
        flux=flux,
        source=p.rng,
        device=run_device(pipe),
    )


def run_device(pipe: Any) -> Any:
    """Where the pipeline runs its models (with model offload: the GPU, not the CPU its
    weights wait on): where a "GPU" RNG draws."""
    return getattr(pipe, "_execution_device", None) or getattr(pipe, "device", "cpu")


def img2img_strength(p: Any) -> tuple[int, float]:
    """(steps run, diffusers' ``strength``) of an img2img job, as Forge counts them.

    Forge (A1111's ``setup_img2img_steps``, sdtui.steps.img2img_schedule) runs ``t_enc + 1``
    steps of a ``p.steps``-long schedule, ``t_enc = int(min(denoise, 0.999) * steps)``: 20
    steps at 0.75 run 16, and denoise 0 still runs the last one. diffusers runs
    ``steps - int(steps - steps * strength)`` of the same schedule (15 at 0.75, and refuses
    0), starting at the sigma of the first step run, as Forge does. A ``strength`` half a step
    under ``run / steps`` makes diffusers run exactly Forge's count, whatever the float
    rounding. The infotext's Steps is ``p.steps``, the schedule's length, as Forge writes it."""
    from sdtui.steps import img2img_schedule

    steps, run = img2img_schedule(p)
    return run, (run - 0.5) / steps


def latent_shape(pipe: Any, width: int, height: int, flux: bool) -> tuple[int, int, int]:
    """One image's latent as its pipeline draws the noise: (C, H/8, W/8); Flux's C is its
    transformer's input / 4 (it packs 2x2 patches)."""
    f = int(pipe.vae_scale_factor)
    if flux:
        c = int(pipe.transformer.config.in_channels) // 4
        return c, 2 * (height // (2 * f)), 2 * (width // (2 * f))
    return int(pipe.transformer.config.in_channels), height // f, width // f


def variation_noise(
    pipe: Any,
    p: Any,
    seeds: list[int],
    subseeds: list[int],
    size: tuple[int, int],
    flux: bool,
    device: Any = "cpu",
) -> torch.Tensor:
    """A1111's first noise with a variation seed (``ImageRNG.first``: the seed's noise
    slerped toward the variation seed's), one (C, h, w) per image, stacked: txt2img's, where
    it is the seed generator's first draw."""
    from sdtui.engine.latents import make_noise

    shape = latent_shape(pipe, size[0], size[1], flux)
    return torch.stack(
        [
            make_noise(s, shape, ss, p.subseed_strength, p.rng, device)
            for s, ss in zip(seeds, subseeds, strict=True)
        ]
    )


def variation_toward(
    pipe: Any, p: Any, subseeds: list[int], size: tuple[int, int], flux: bool
) -> tuple[torch.Tensor, float]:
    """(the variation seeds' noise, strength) for a pass whose pipeline draws its own noise
    (img2img, the hires pass: after the VAE's sample): the stand-in slerps that draw toward
    this, so a strength near 0 is the plain picture, as in txt2img."""
    shape = latent_shape(pipe, size[0], size[1], flux)
    sub = torch.stack([rng.draw(p.rng, s, shape, run_device(pipe)) for s in subseeds])
    return sub, float(p.subseed_strength)


def run_dit_generation(session: Any, params: Any, ctx: Any) -> Any:
    """One txt2img or img2img job on a Flux.1 / SD3.5 model; emits JobStarted, Progress,
    ImageSaved; returns JobDone. Raises UserError for what these models cannot do yet."""
    from PIL import Image

    from sdtui.engine import inpaint
    from sdtui.engine.dit_prompts import t5_emphasis
    from sdtui.engine.faces import check_restore_faces, restore_faces_for_job
    from sdtui.engine.generate import image_seeds, masked_content
    from sdtui.engine.inpaint import read_init_image, resize_image
    from sdtui.engine.job import BatchSkipped, JobCancelled, job_settings
    from sdtui.infotext import format_infotext
    from sdtui.ipc import protocol as msg
    from sdtui.prompt_syntax import strip_extra_networks

    t_start = time.perf_counter()
    family: ModelFamily = session.loaded.family
    p = check_params(params, family)
    check_restore_faces(p, job_settings(session, ctx))  # missing weights: said before a step
    pipe = session.txt2img
    flux = family.family == "Flux"
    if flux and p.cfg_scale > 1:
        ctx.log(
            f"CFG scale {_num(p.cfg_scale)} on {family.label} runs true CFG with the negative "
            "prompt (twice the time a step); Forge's Flux setting is CFG scale 1"
        )
    # the LoRA tags apply (dit_loras) and leave the text, in the negative prompt too (A1111)
    texts = strip_extra_networks(p.prompt), strip_extra_networks(p.negative_prompt)
    prompt, negative = plain_prompt(texts[0]), plain_prompt(texts[1])
    if any("BREAK" in t for t in texts) and (prompt, negative) != tuple(
        " ".join(t.split()) for t in texts
    ):
        ctx.log(f"{family.label} encodes one T5 sequence: BREAK is left out")
    init: Image.Image | None = None
    strength = 1.0
    steps = p.steps  # the schedule steps that run in each batch
    job: inpaint.InpaintJob | None = None
    if p.init_image is not None:
        limit = getattr(ctx.settings, "max_image_megapixels", None)
        source = read_init_image(p.init_image, limit)
        if p.inpainting:  # A1111's img2img init up to the VAE (sdtui.engine.inpaint), as SD
            mask = inpaint.load_mask(p.mask, limit) if p.mask is not None else None
            job = inpaint.prepare(p, source, mask, ctx.log)
            init = job.image
            p = p.replace(width=job.width, height=job.height, inpaint_full_res=job.only_masked)
            if job.latent_mask is None:  # a blank mask: plain img2img, as in A1111
                job = None
            if p.width % 16 or p.height % 16:
                raise UserError(
                    f"the outpainted canvas is {p.width}x{p.height}; {family.label} needs "
                    "multiples of 16: make the image or the outpaint pixels a multiple of 16"
                )
        else:
            # A1111's resize modes, as sdtui.engine.generate.resize_image applies them
            init = resize_image(p.resize_mode, source, p.width, p.height)
        steps, strength = img2img_strength(p)
    variation = p.subseed_strength > 0
    if job is not None or ((variation or p.rng != "CPU") and init is not None):
        # the k-diffusion stand-in (its Euler is diffusers' Euler) for what diffusers' own
        # scheduler cannot do: inpainting's latent blend after each call, as A1111, and
        # img2img's noise slerped toward a variation seed's, or drawn from another RNG
        sampler = make_flow_sampler(pipe, p.sampler, p, flux, start=p.steps - steps)
    else:
        sampler = flow_sampler(pipe, p, flux, start=p.steps - steps)
    if job is not None and sampler is not None:
        factor = int(pipe.vae_scale_factor)
        assert job.latent_mask is not None
        sampler.mask = inpaint.latent_mask(job.latent_mask, p.height // factor, p.width // factor)
    hires = None
    if p.enable_hr and init is None:
        from sdtui.engine.dit_hires import DitHires
        from sdtui.upscalers import check_hires_upscaler

        check_hires_upscaler(p.hr_upscaler, job_settings(session, ctx).models)  # before a step

        # a variation seed: the stand-in slerps the hires pass's own noise toward it too
        def hires_sampler(view: Any, q: Any, fl: bool, start: int) -> FlowKSampler | None:
            if variation or q.rng != "CPU":
                return make_flow_sampler(view, q.sampler, q, fl, start)
            return flow_sampler(view, q, fl, start)

        hires = DitHires(pipe, p, flux, pipeline_view, hires_sampler)
    pipe = pipeline_view(pipe, img2img=init is not None, scheduler=sampler)
    # Progress counts model calls (Heun: 2 a step), the hires pass's after the first's
    calls = ksampling.model_calls(p.sampler, steps)
    hr_calls = hires.calls if hires is not None else 0
    ctx.emit(msg.JobStarted(ctx.job_id, p.images_total, (calls + hr_calls) * p.batch_count))
    earlier = {i: path for i, path in ctx.done.items() if 0 <= i < p.images_total}
    saved: dict[int, str] = dict(earlier)
    made: dict[int, Image.Image] = {}
    cancelled = False
    # the prompt's LoRAs and the out-of-memory ladder's measures last for this job only
    ladder = DitLadder(
        pipe,
        device=str(session.device),
        baseline=str(getattr(ctx, "memory_mode", "normal")),
        width=p.width,
        height=p.height,
        log=ctx.log,
    )
    views = [pipe] + ([hires.view] if hires is not None else [])
    weighted_texts = {prompt: texts[0], negative: texts[1]}
    with (
        dit_vae(session, p, ctx) as vae_pairs,
        dit_loras(session, p, ctx, family) as lora_pairs,
        ladder,
        t5_emphasis(views, weighted_texts, flux) as weighted,
    ):
        extra = {**vae_pairs, **lora_pairs}
        if weighted:
            ctx.log(f"{family.label}: emphasis weights apply to T5, as Forge applies them")
        for b in range(p.batch_count):
            indices = [
                b * p.batch_size + i
                for i in range(p.batch_size)
                if b * p.batch_size + i not in earlier
            ]
            if not indices:
                continue
            seeds, subseeds = image_seeds(p, indices)  # a variation: one seed, its subseeds
            # the pipeline's own draws (img2img's VAE sample and noise) and, with RNG CPU, the
            # step noise; another RNG's generators are the stand-in's (set_timesteps)
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            first_noise = None
            if (variation or p.rng != "CPU") and init is None:
                # txt2img: A1111's ImageRNG.first, handed over as the pipeline's latents
                first_noise = variation_noise(
                    pipe, p, seeds, subseeds, (p.width, p.height), flux, session.device
                )
                for g in generators:  # past the first draw, as ImageRNG.first() leaves them
                    torch.randn(first_noise.shape[1:], generator=g)
            if sampler is not None:  # step noise: each image's generator, after its first draw
                sampler.generators, sampler.seeds = generators, seeds
                latmask = sampler.mask
                if latmask is not None and p.inpainting_fill in ("latent noise", "latent nothing"):

                    def fill(latents: Any, m: Any = latmask, ix: list[int] = indices) -> Any:
                        return masked_content(p, latents, m, ix, tuple(latents.shape[1:]))

                    sampler.fill = fill
            reporter = StepProgress(ctx, p, b, family.family, calls + hr_calls)

            def stepper(offset: int, height: int, width: int, r: Any = reporter) -> Any:
                def on_step(pipe: Any, n: int, _t: Any, kwargs: dict[str, Any]) -> Any:
                    latents = kwargs.get("latents")
                    if flux and latents is not None:  # packed 2x2 patches -> (B, 16, h, w)
                        latents = pipe._unpack_latents(
                            latents, height, width, pipe.vae_scale_factor
                        )
                    r(offset + n, latents)
                    return kwargs

                return on_step

            call: dict[str, Any] = dict(
                prompt=prompt,
                num_images_per_prompt=len(indices),
                num_inference_steps=p.steps,
                width=p.width,
                height=p.height,
                generator=generators,
                callback_on_step_end=stepper(0, p.height, p.width),
                output_type="pil" if hires is None else hires.first_output,
            )
            if init is not None:
                # one copy per image: image i's generator encodes its own copy, then draws its
                # noise, so image i is the same alone as in a batch
                call |= dict(image=[init] * len(indices), strength=strength)
                if sampler is not None and variation:
                    sampler.variation = variation_toward(
                        pipe, p, subseeds, (p.width, p.height), flux
                    )
            elif first_noise is not None:
                c, h, w = first_noise.shape[1:]
                packed = pipe._pack_latents(first_noise, len(indices), c, h, w) if flux else None
                call["latents"] = packed if packed is not None else first_noise
            if flux:
                call |= dict(
                    guidance_scale=p.distilled_cfg_scale,
                    max_sequence_length=512 if family.variant == "dev" else 256,
                )
                if p.cfg_scale > 1:
                    call |= dict(true_cfg_scale=p.cfg_scale, negative_prompt=negative)
            else:
                call |= dict(
                    guidance_scale=p.cfg_scale,
                    negative_prompt=negative,
                    max_sequence_length=256,
                )
            try:
                with torch.inference_mode():
                    images = ladder.run(call)
                    if hires is not None:
                        images = hires.second_pass(
                            images,
                            call,
                            seeds,
                            variation=(
                                variation_toward(
                                    pipe, p, subseeds, (hires.width, hires.height), flux
                                )
                                if variation
                                else None
                            ),
                            run=ladder.run_on,
                            on_step=stepper(calls, hires.height, hires.width),
                            models_dir=Path(job_settings(session, ctx).models),
                            device=session.device,
                            log=ctx.log,
                        )
            except BatchSkipped:
                ctx.log(f"skipped batch {b + 1} of {p.batch_count}")
                continue
            except JobCancelled:
                cancelled = True
                break
            finally:
                if sampler is not None:
                    sampler.close()  # a stopped call leaves its sampler thread waiting
                if pipe is not session.txt2img or hires is not None:
                    # a view has no offload hooks of its own: the model's pipeline puts its
                    # parts back on the CPU (memory mode low), as after its own call
                    session.txt2img.maybe_free_model_hooks()
            # A1111: restore faces after decoding, then the original over the unmasked pixels
            images = restore_faces_for_job(
                images, p, job_settings(session, ctx), ctx.log, device=session.device
            )
            if job is not None and job.overlay is not None:
                images = [inpaint.apply_overlay(im, job.paste_to, job.overlay) for im in images]
            for k, image in enumerate(images):
                index, seed = indices[k], seeds[k]
                pairs = infotext_pairs(p, family, seed, ctx, extra, subseed=subseeds[k])
                info = format_infotext(p.prompt, p.negative_prompt, pairs)
                path = ctx.layout.save_image(image, p.mode, seed, info)
                saved[index] = str(path)
                made[index] = image
                ctx.emit(msg.ImageSaved(ctx.job_id, index, str(path), seed, info))
            if ctx.control.cancel.is_set():
                cancelled = True
                break
        grid_images = [made[i] for i in sorted(made)]
        if len(grid_images) > 1 and not cancelled and not earlier:
            info = format_infotext(
                p.prompt, p.negative_prompt, infotext_pairs(p, family, p.seed, ctx, extra)
            )
            grid = ctx.layout.save_grid(grid_images, p.mode, info)
            ctx.emit(msg.ImageSaved(ctx.job_id, -1, str(grid), p.seed, info, is_grid=True))
    return msg.JobDone(
        ctx.job_id,
        tuple(saved[i] for i in sorted(saved)),
        round(time.perf_counter() - t_start, 3),
        cancelled=cancelled,
    )


@contextmanager
def dit_vae(session: Any, p: Any, ctx: Any) -> Iterator[dict[str, object]]:
    """The job's VAE choice (a file from models/VAE: Flux's ae.safetensors, SD3.5's VAE)
    written into the model's own VAE for this job, as SD's (sdtui.engine.vae); yields the
    ``VAE`` / ``VAE hash`` pairs. A 4-channel SD VAE is refused by its shapes."""
    from sdtui.engine.extra_networks import pick_vae
    from sdtui.engine.job import job_settings
    from sdtui.engine.vae import swap_vae
    from sdtui.extra_networks_index import vae_hash

    vae = pick_vae(p.vae, getattr(session, "path", None), job_settings(session, ctx).models)
    if vae is None:
        yield {}
        return
    swapped = swap_vae(session.txt2img.vae, vae.path, session.vae_cache)
    try:
        yield {"VAE hash": vae_hash(vae.path), "VAE": vae.name}
    finally:
        swapped.restore()
