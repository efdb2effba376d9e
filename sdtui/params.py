"""The one vocabulary of a job: what the form edits, the CLI parses, the engine runs and the
PNG infotext stores. Validation lives here, once.

Field names follow A1111 (steps, sampler, cfg_scale, seed, width, height, batch_size,
batch_count, denoising_strength, ...).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from sdtui.samplers import (
    SCHEDULE_TYPES,
    UnknownSamplerError,
    infotext_schedule,
    normalize_sampler,
    normalize_schedule,
)

RESIZE_MODES: tuple[str, ...] = ("just resize", "crop and resize", "resize and fill")
# A1111's img2img inpaint radio choices, in their index order (p.inpainting_fill is the index)
MASKED_CONTENT: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
INPAINT_AREAS: tuple[str, ...] = ("Whole picture", "Only masked")
MASK_MODES: tuple[str, ...] = ("Inpaint masked", "Inpaint not masked")
# the sides A1111's "Outpainting mk2" / "Poor man's outpainting" scripts can extend
OUTPAINT_SIDES: tuple[str, ...] = ("left", "right", "up", "down")
# A1111's face restorers (Settings > Face restoration > face_restoration_model)
FACE_RESTORERS: tuple[str, ...] = ("CodeFormer", "GFPGAN")
# A1111's random number generator sources (Settings > randn_source; infotext "RNG", left out
# for its default GPU); sdtui.engine.rng draws them
RNG_SOURCES: tuple[str, ...] = ("CPU", "GPU", "NV")
# where the engine keeps the model, like A1111's --medvram / --lowvram: auto (from free VRAM),
# normal, low (model CPU offload), lowest (sequential offload); config.MEMORY_MODES lists them
MemoryMode = Literal["auto", "normal", "low", "lowest"]
# A1111 draws random seeds in [0, 4294967294) (processing.get_fixed_seed) but takes any seed
# torch's generator takes, and image i of a job uses seed + i with no wrap-around
# (processing.process_images_inner: ``int(seed) + x``), so seeds past 2**32 - 1 are real seeds.
# Ours stop at 2**63 - 1, the largest integer SQLite (the job queue) stores.
MAX_RANDOM_SEED = 4294967294
MAX_SEED = 2**63 - 1
# A1111 create_infotext keys between "Clip skip" and **p.extra_generation_params, in order
_A1111_BEFORE_EXTRA = (
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "NGMS",
    "Tiling",
)
SIZE_MULTIPLE = 8
MIN_SIZE, MAX_SIZE = 64, 4096


class ParamError(ValueError):
    """A value a user typed that cannot run; the message names the field and the fix."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class GenerationParams:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 20
    sampler: str = "Euler a"
    schedule_type: str = "Automatic"
    cfg_scale: float = 7.0
    # Flux.1 dev's guidance (Forge's "Distilled CFG Scale"; infotext only for Flux dev)
    distilled_cfg_scale: float = 3.5
    seed: int = -1
    width: int = 512
    height: int = 512
    batch_size: int = 1
    batch_count: int = 1
    # img2img: set init_image to a PNG/JPEG path
    init_image: str | None = None
    denoising_strength: float = 0.75
    resize_mode: str = "just resize"
    # model: a name from `sdtui models`, a path, or None for the configured default
    model: str | None = None
    vae: str = "Automatic"
    clip_skip: int = 1
    subseed: int = -1
    subseed_strength: float = 0.0
    # where the noise comes from (A1111's randn_source): CPU, GPU (A1111's default: the CUDA
    # generator, drawn as an NVIDIA card would anywhere else) or NV; sdtui.engine.rng
    rng: str = "CPU"
    # hires fix (txt2img)
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_denoising_strength: float = 0.7
    # inpainting (img2img with a mask): white = change, as A1111's mask upload
    mask: str | None = None
    mask_blur: int = 4
    inpainting_fill: str = "original"  # one of MASKED_CONTENT
    inpaint_full_res: bool = False  # A1111 "Inpaint area": False = Whole picture
    inpaint_full_res_padding: int = 32  # "Only masked padding, pixels"
    inpainting_mask_invert: bool = False  # "Mask mode": Inpaint not masked
    # outpainting: extend the init image by this many pixels on outpaint_sides (comma list of
    # OUTPAINT_SIDES) and inpaint the new area; the mask is made for the user
    outpaint_pixels: int = 0
    outpaint_sides: str = "left,right,up,down"
    # face restoration after decoding (A1111's "Restore faces" checkbox; which restorer and
    # CodeFormer's weight are A1111 settings, here fields)
    restore_faces: bool = False
    face_restoration_model: str = "CodeFormer"
    code_former_weight: float = 0.5
    # SDXL refiner: a second checkpoint that takes over for the last (1 - switch_at) of steps
    refiner_checkpoint: str | None = None
    refiner_switch_at: float = 0.8
    # rescaled CFG (Lin et al. 2023, "Common Diffusion Noise Schedules..."; diffusers'
    # guidance_rescale): 0 = off; 0.7 is the paper's value for v-prediction/ztsnr models
    cfg_rescale: float = 0.0
    # live preview every N steps; 0 = off
    preview_every: int = 1
    # and at most one per this many seconds (0 = no cap). A preview copies the latents off the
    # GPU, which waits for the GPU: the TUI asks for no more than it can draw (4 a second)
    preview_interval: float = 0.0
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def mode(self) -> str:
        return "img2img" if self.init_image else "txt2img"

    @property
    def inpainting(self) -> bool:
        """img2img with a mask, given or made for an outpainting."""
        return bool(self.init_image) and (self.mask is not None or self.outpaint_pixels > 0)

    @property
    def outpaint_side_list(self) -> tuple[str, ...]:
        return tuple(s.strip() for s in self.outpaint_sides.split(",") if s.strip())

    @property
    def images_total(self) -> int:
        return self.batch_size * self.batch_count

    def replace(self, **changes: Any) -> GenerationParams:
        return dataclasses.replace(self, **changes)

    def with_seeds(self) -> GenerationParams:
        """Random seeds (-1) drawn once, so every image's infotext names a real seed and a
        job that restarts makes the same images."""
        import random

        changes: dict[str, int] = {}
        if self.seed == -1:
            changes["seed"] = random.randrange(0, MAX_RANDOM_SEED)
        if self.subseed == -1 and self.subseed_strength > 0:
            changes["subseed"] = random.randrange(0, MAX_RANDOM_SEED)
        return self.replace(**changes) if changes else self

    # -- validation -------------------------------------------------------------------------

    def field_errors(self) -> dict[str, str]:
        """Every problem, keyed by field, in words a user can act on."""
        errors: dict[str, str] = {}
        if self.rng not in RNG_SOURCES:
            errors["rng"] = f"RNG {self.rng!r} is not one of: {', '.join(RNG_SOURCES)}"
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < MIN_SIZE or v > MAX_SIZE:
                errors[name] = f"{name} {v} is out of range: use {MIN_SIZE} to {MAX_SIZE}"
            elif v % SIZE_MULTIPLE:
                lo = v - v % SIZE_MULTIPLE
                errors[name] = (
                    f"{name} {v} is not a multiple of {SIZE_MULTIPLE}: "
                    f"use {max(lo, MIN_SIZE)} or {lo + SIZE_MULTIPLE}"
                )
        for name, label in (("prompt", "the prompt"), ("negative_prompt", "the negative prompt")):
            bad_at = _not_utf8_at(getattr(self, name))
            if bad_at is not None:
                errors[name] = (
                    f"{label} holds bytes that are not UTF-8 (at character {bad_at + 1}): "
                    "type it again, or save the file it came from as UTF-8"
                )
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 500:
            errors["steps"] = f"steps {self.steps} is out of range: use 1 to 500"
        if not 0 <= self.cfg_scale <= 30:
            errors["cfg_scale"] = f"CFG scale {self.cfg_scale} is out of range: use 0 to 30"
        if not 0 <= self.distilled_cfg_scale <= 30:
            errors["distilled_cfg_scale"] = (
                f"Distilled CFG Scale {self.distilled_cfg_scale} is out of range: use 0 to 30"
            )
        images = (
            max(1, self.batch_size) * max(1, self.batch_count)
            if isinstance(self.batch_size, int) and isinstance(self.batch_count, int)
            else 1
        )
        # image i uses seed + i, or, with a variation strength, the same seed and variation
        # seed + i (A1111 processing.py process_images_inner: all_seeds / all_subseeds)
        variation = isinstance(self.subseed_strength, (int, float)) and self.subseed_strength > 0
        advancing = "subseed" if variation else "seed"
        for name, label in (("seed", "seed"), ("subseed", "variation seed")):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not -1 <= value <= MAX_SEED:
                errors[name] = (
                    f"{label} {value} is out of range: use -1 (random) or 0 to {MAX_SEED}"
                )
            elif name == advancing and value + images - 1 > MAX_SEED:
                errors[name] = (
                    f"{label} {value} is too large for {images} images (image i uses {label} + i): "
                    f"use at most {MAX_SEED - images + 1}"
                )
        if not 0 <= self.subseed_strength <= 1:
            errors["subseed_strength"] = "variation strength must be between 0 and 1"
        if not 1 <= self.batch_size <= 64:
            errors["batch_size"] = f"batch size {self.batch_size} is out of range: use 1 to 64"
        if not 1 <= self.batch_count <= 1000:
            errors["batch_count"] = f"batch count {self.batch_count} is out of range: use 1 to 1000"
        if not 0 <= self.denoising_strength <= 1:
            errors["denoising_strength"] = (
                f"denoising strength {self.denoising_strength} is out of range: use 0 to 1"
            )
        if self.resize_mode not in RESIZE_MODES:
            errors["resize_mode"] = f"resize mode must be one of: {', '.join(RESIZE_MODES)}"
        if not 1 <= self.clip_skip <= 4:
            errors["clip_skip"] = f"clip skip {self.clip_skip} is out of range: use 1 to 4"
        try:
            normalize_sampler(self.sampler)
        except UnknownSamplerError as e:
            errors["sampler"] = str(e)
        try:
            normalize_schedule(self.schedule_type)
        except UnknownSamplerError as e:
            errors["schedule_type"] = str(e)
        if self.mask is not None and not self.init_image:
            errors["mask"] = "a mask needs an init image (img2img): give --init-image too"
        if not isinstance(self.mask_blur, int) or not 0 <= self.mask_blur <= 64:
            errors["mask_blur"] = f"mask blur {self.mask_blur} is out of range: use 0 to 64"
        if self.inpainting_fill not in MASKED_CONTENT:
            errors["inpainting_fill"] = (
                f"masked content {self.inpainting_fill!r} is not one of: {', '.join(MASKED_CONTENT)}"
            )
        if not isinstance(self.inpaint_full_res_padding, int) or not (
            0 <= self.inpaint_full_res_padding <= 256
        ):
            errors["inpaint_full_res_padding"] = (
                f"only-masked padding {self.inpaint_full_res_padding} is out of range: use 0 to 256"
            )
        if not isinstance(self.outpaint_pixels, int) or not 0 <= self.outpaint_pixels <= 2048:
            errors["outpaint_pixels"] = (
                f"outpaint pixels {self.outpaint_pixels} is out of range: use 0 to 2048"
            )
        elif self.outpaint_pixels and not self.init_image:
            errors["outpaint_pixels"] = "outpainting extends an init image: give --init-image too"
        sides = [s.strip() for s in self.outpaint_sides.split(",") if s.strip()]
        if self.outpaint_pixels and (not sides or any(s not in OUTPAINT_SIDES for s in sides)):
            errors["outpaint_sides"] = (
                f"outpaint sides {self.outpaint_sides!r}: use a comma list of "
                f"{', '.join(OUTPAINT_SIDES)}"
            )
        if self.face_restoration_model not in FACE_RESTORERS:
            errors["face_restoration_model"] = (
                f"face restoration {self.face_restoration_model!r} is not one of: "
                f"{', '.join(FACE_RESTORERS)}"
            )
        if not 0 <= self.code_former_weight <= 1:
            errors["code_former_weight"] = "CodeFormer weight must be between 0 and 1"
        if not 0 <= self.refiner_switch_at <= 1:
            errors["refiner_switch_at"] = "refiner switch at must be between 0 and 1"
        if not 0 <= self.cfg_rescale <= 1:
            errors["cfg_rescale"] = f"CFG rescale {self.cfg_rescale} is out of range: use 0 to 1"
        if self.enable_hr:
            if not 1 <= self.hr_scale <= 4:
                errors["hr_scale"] = "hires upscale must be between 1 and 4"
            if not 0 <= self.hr_denoising_strength <= 1:
                errors["hr_denoising_strength"] = "hires denoising strength must be 0 to 1"
            if not 0 <= self.hr_second_pass_steps <= 500:
                errors["hr_second_pass_steps"] = "hires steps must be 0 (same as steps) to 500"
        return errors

    def validated(self) -> GenerationParams:
        """Return a normalized copy (canonical sampler names) or raise the first ParamError."""
        errors = self.field_errors()
        if errors:
            name, message = next(iter(errors.items()))
            raise ParamError(name, message)
        sampler, schedule = normalize_sampler(self.sampler, self.schedule_type)
        if schedule == "Automatic":
            # "DPM++ 2M Karras" carries its schedule in the name
            _, from_name = normalize_sampler(self.sampler)
            schedule = from_name
        return self.replace(sampler=sampler, schedule_type=schedule)

    # -- infotext ---------------------------------------------------------------------------

    def infotext_pairs(
        self,
        *,
        seed: int,
        model_name: str | None = None,
        model_hash: str | None = None,
        subseed: int | None = None,
        extra: dict[str, object] | None = None,
    ) -> dict[str, object]:
        """The A1111 key/value line for one image, in A1111's order."""
        from sdtui import __version__

        pairs: dict[str, object] = {
            "Steps": self.steps,
            "Sampler": self.sampler,
            "Schedule type": _written_schedule(self.sampler, self.schedule_type),
            "CFG scale": _num(self.cfg_scale),
            "Seed": seed,
        }
        if self.restore_faces:  # A1111: opts.face_restoration_model if p.restore_faces
            pairs["Face restoration"] = self.face_restoration_model
        pairs |= {
            "Size": f"{self.width}x{self.height}",
            "Model hash": model_hash,
            "Model": model_name,
        }
        if self.vae != "Automatic":
            pairs["VAE"] = self.vae
        if self.subseed_strength > 0:
            pairs["Variation seed"] = subseed if subseed is not None else self.subseed
            pairs["Variation seed strength"] = _num(self.subseed_strength)
        if self.init_image:
            pairs["Denoising strength"] = _num(self.denoising_strength)
        elif self.enable_hr:
            pairs["Denoising strength"] = _num(self.hr_denoising_strength)
        if self.clip_skip > 1:
            pairs["Clip skip"] = self.clip_skip
        extra = dict(extra or {})
        if self.rng != "GPU":  # create_infotext: opts.randn_source if not "GPU"
            extra.setdefault("RNG", self.rng)
        # A1111 processing.py create_infotext: these are generation_params keys, written
        # before **p.extra_generation_params (where the Hires keys, LoRA hashes, ... live)
        for key in _A1111_BEFORE_EXTRA:
            if key in extra:
                pairs[key] = extra.pop(key)
        if self.enable_hr and not self.init_image:
            pairs["Hires upscale"] = _num(self.hr_scale)
            if self.hr_second_pass_steps:
                pairs["Hires steps"] = self.hr_second_pass_steps
            pairs["Hires upscaler"] = self.hr_upscaler
        if self.inpainting:
            pairs.update(self.inpaint_infotext())
        refiner = extra.pop("Refiner", self.refiner_checkpoint)
        if self.cfg_rescale > 0:
            # the key of the CFG Rescale extension (Seshelle/CFG_Rescale_webui), which Forge
            # and reForge read too (older images: "CFG Rescale phi" / "CFG Rescale φ")
            pairs["CFG Rescale"] = _num(self.cfg_rescale)
        pairs.update(extra)
        if self.refiner_checkpoint:
            # A1111 sd_samplers_common.apply_refiner adds these at the switch, during sampling:
            # after the LoRA and embedding hashes. 'Refiner' is the checkpoint's short_title
            # ("name [hash]", which the engine passes in extra)
            pairs["Refiner"] = refiner
            pairs["Refiner switch at"] = _num(self.refiner_switch_at)
        pairs["Version"] = f"sdtui {__version__}"
        return pairs

    def inpaint_infotext(self) -> dict[str, object]:
        """A1111's inpaint keys in the order it adds them to extra_generation_params:
        img2img.py sets "Mask blur" when a mask is given, then
        StableDiffusionProcessingImg2Img.init the rest, each only when not the default."""
        pairs: dict[str, object] = {"Mask blur": self.mask_blur}
        if self.inpainting_mask_invert:
            pairs["Mask mode"] = MASK_MODES[1]
        if self.inpaint_full_res:
            pairs["Inpaint area"] = INPAINT_AREAS[1]
            # the UI says "Only masked padding, pixels"; A1111 writes this key (one that parses)
            pairs["Masked area padding"] = self.inpaint_full_res_padding
        if self.inpainting_fill != "original":
            pairs["Masked content"] = self.inpainting_fill
        return pairs

    @classmethod
    def from_infotext_fields(
        cls, prompt: str, negative_prompt: str, pairs: dict[str, str]
    ) -> GenerationParams:
        """Build params from a parsed infotext (ours or A1111's); missing keys take defaults,
        values that do not parse are left out (see :meth:`from_infotext_checked`)."""
        return cls.from_infotext_checked(prompt, negative_prompt, pairs)[0]

    @classmethod
    def from_infotext_checked(
        cls, prompt: str, negative_prompt: str, pairs: dict[str, str]
    ) -> tuple[GenerationParams, list[str]]:
        """As :meth:`from_infotext_fields`, with one line per value that was left out because
        it does not parse or is out of range (``Denoising strength: abc``), so a caller can
        say which keys of a file it ignored."""
        p = cls(prompt=prompt, negative_prompt=negative_prompt)
        changes: dict[str, Any] = {}
        problems: list[str] = []

        def bad(key: str, value: object, why: str = "") -> None:
            problems.append(f"{key}: {str(value)[:40]!r} {why or 'is not a number'}")

        conv: list[tuple[str, str, Any]] = [
            ("Steps", "steps", int),
            ("CFG scale", "cfg_scale", float),
            ("Distilled CFG Scale", "distilled_cfg_scale", float),
            ("Seed", "seed", int),
            ("Clip skip", "clip_skip", int),
            ("Variation seed", "subseed", int),
            ("Variation seed strength", "subseed_strength", float),
            ("Hires upscale", "hr_scale", float),
            ("Hires steps", "hr_second_pass_steps", int),
            ("Hires upscaler", "hr_upscaler", str),
            ("VAE", "vae", str),
            ("Model", "model", str),
            ("Mask blur", "mask_blur", int),
            ("Masked area padding", "inpaint_full_res_padding", int),
            ("Refiner switch at", "refiner_switch_at", float),
            ("CFG Rescale", "cfg_rescale", float),
            ("CodeFormer weight", "code_former_weight", float),
        ]
        for key, name, fn in conv:
            if key in pairs:
                try:
                    value = fn(pairs[key])
                except (ValueError, OverflowError):
                    bad(key, pairs[key])
                    continue
                if isinstance(value, float) and not math.isfinite(value):
                    bad(key, pairs[key])
                    continue
                changes[name] = value
        if "Size" in pairs:
            try:
                w, h = pairs["Size"].lower().split("x")
                changes["width"], changes["height"] = int(w), int(h)
            except ValueError:
                bad("Size", pairs["Size"], "is not WIDTHxHEIGHT")
        if "Sampler" in pairs:
            schedule = pairs.get("Schedule type", "Automatic")
            try:
                changes["sampler"], changes["schedule_type"] = normalize_sampler(
                    pairs["Sampler"], schedule if schedule in SCHEDULE_TYPES else "Automatic"
                )
            except UnknownSamplerError:
                changes["sampler"] = pairs["Sampler"]
        if "CFG Rescale" not in pairs:  # the extension's older keys (its on_infotext_pasted)
            for old_key in ("CFG Rescale φ", "CFG Rescale phi"):
                if old_key in pairs:
                    try:
                        changes["cfg_rescale"] = float(pairs[old_key])
                    except ValueError:
                        bad(old_key, pairs[old_key])
                    break
        # A1111 leaves RNG out for its default, GPU (A1111_DEFAULTS in sdtui.infotext)
        rng = pairs.get("RNG", "GPU")
        if rng in RNG_SOURCES:
            changes["rng"] = rng
        else:
            bad("RNG", rng, f"is not one of: {', '.join(RNG_SOURCES)}")
        if "Face restoration" in pairs:
            changes["restore_faces"] = True
            if pairs["Face restoration"] in FACE_RESTORERS:
                changes["face_restoration_model"] = pairs["Face restoration"]
        if "Refiner" in pairs:
            # "name [hash]" as A1111 writes the checkpoint's short title
            changes["refiner_checkpoint"] = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", pairs["Refiner"])
        for key, name, choices, as_value in (
            ("Masked content", "inpainting_fill", MASKED_CONTENT, None),
            ("Inpaint area", "inpaint_full_res", INPAINT_AREAS, INPAINT_AREAS[1]),
            ("Mask mode", "inpainting_mask_invert", MASK_MODES, MASK_MODES[1]),
        ):
            if key in pairs:
                if pairs[key] in choices:
                    changes[name] = pairs[key] if as_value is None else pairs[key] == as_value
                else:
                    bad(key, pairs[key], f"is not one of: {', '.join(choices)}")
        denoise_key = "hr_denoising_strength" if "Hires upscale" in pairs else "denoising_strength"
        if "Hires upscale" in pairs:
            changes["enable_hr"] = True
        if "Denoising strength" in pairs:
            try:
                value = float(pairs["Denoising strength"])
                if not math.isfinite(value):
                    raise ValueError
                changes[denoise_key] = value
            except ValueError:
                bad("Denoising strength", pairs["Denoising strength"])
        known = {k for k, _, _ in conv} | {
            "Size",
            "Sampler",
            "Schedule type",
            "Denoising strength",
            "Face restoration",
            "RNG",
            "Refiner",
            "Masked content",
            "Inpaint area",
            "Mask mode",
        }
        changes["extra"] = {k: v for k, v in pairs.items() if k not in known}
        params = p.replace(**changes)
        # values that parse but are out of range fall back to the defaults, each said
        defaults = cls()
        for name, why in params.field_errors().items():
            if name in changes and name not in (
                "prompt",
                "negative_prompt",
                "sampler",
                "schedule_type",
            ):
                problems.append(why)
                params = params.replace(**{name: getattr(defaults, name)})
        return params, problems


@dataclass(frozen=True)
class UpscaleParams:
    """Extras: upscale one image (or each image of a folder)."""

    image: str
    upscaler: str = "Lanczos"
    scale: float = 4.0
    # resize to a size instead of a factor when both are set
    target_width: int | None = None
    target_height: int | None = None
    upscaler_2: str | None = None
    upscaler_2_visibility: float = 0.0
    tile: int = 192
    tile_overlap: int = 8
    # face restoration in Extras (A1111's postprocessing_gfpgan / postprocessing_codeformer)
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0  # A1111's Extras slider default
    upscale_first: bool = False  # A1111 "Upscale Before Restoring Faces"

    def replace(self, **changes: Any) -> UpscaleParams:
        return dataclasses.replace(self, **changes)

    def field_errors(self) -> dict[str, str]:
        errors: dict[str, str] = {}
        if not 1 <= self.scale <= 8:
            errors["scale"] = f"scale {self.scale} is out of range: use 1 to 8"
        for name in ("target_width", "target_height"):
            v = getattr(self, name)
            if v is not None and not 16 <= v <= 16384:
                errors[name] = f"{name} {v} is out of range: use 16 to 16384"
        if not 0 <= self.upscaler_2_visibility <= 1:
            errors["upscaler_2_visibility"] = "upscaler 2 visibility must be between 0 and 1"
        if self.tile and not 32 <= self.tile <= 4096:
            errors["tile"] = "tile must be 0 (no tiling) or 32 to 4096 pixels"
        for name, label in (
            ("gfpgan_visibility", "GFPGAN visibility"),
            ("codeformer_visibility", "CodeFormer visibility"),
            ("codeformer_weight", "CodeFormer weight"),
        ):
            if not 0 <= getattr(self, name) <= 1:
                errors[name] = f"{label} must be between 0 and 1"
        return errors

    def validated(self) -> UpscaleParams:
        errors = self.field_errors()
        if errors:
            name, message = next(iter(errors.items()))
            raise ParamError(name, message)
        return self

    def infotext_pairs(self) -> dict[str, object]:
        pairs: dict[str, object] = {}
        if self.target_width and self.target_height:
            pairs["Postprocess upscale to"] = f"{self.target_width}x{self.target_height}"
        else:
            pairs["Postprocess upscale by"] = _num(self.scale)
        pairs["Postprocess upscaler"] = self.upscaler
        if self.upscaler_2 and self.upscaler_2_visibility > 0:
            pairs["Postprocess upscaler 2"] = self.upscaler_2
            pairs["Postprocess upscaler 2 visibility"] = _num(self.upscaler_2_visibility)
        # A1111's postprocessing_gfpgan / _codeformer keys, rounded to 3 places as it does,
        # in the order the steps ran
        faces: dict[str, object] = {}
        if self.gfpgan_visibility > 0:
            faces["GFPGAN visibility"] = _num(round(self.gfpgan_visibility, 3))
        if self.codeformer_visibility > 0:
            faces["CodeFormer visibility"] = _num(round(self.codeformer_visibility, 3))
            faces["CodeFormer weight"] = _num(round(self.codeformer_weight, 3))
        return {**pairs, **faces} if self.upscale_first else {**faces, **pairs}


# an X/Y/Z plot's axes, in the order A1111 lists them
XYZ_AXES: tuple[str, str, str] = ("X", "Y", "Z")
NO_AXIS: tuple[str, str] = ("Nothing", "")
MAX_XYZ_MARGIN = 500  # A1111's "Grid margins (px)" slider


@dataclass(frozen=True)
class XYZParams:
    """An X/Y/Z plot job (A1111's ``scripts/xyz_grid.py``): one image per combination of an
    X, a Y and a Z value, made from ``base``, then the labelled grid.

    Each axis is (A1111's axis type label, the text typed for it): ``("Steps", "10-30
    (+10)")``; ``("Nothing", "")`` is no axis. This class holds the words only: sdtui.xyz
    parses and checks them (``prepare_xyz``), and it imports this module, not the reverse."""

    base: GenerationParams = field(default_factory=GenerationParams)
    x: tuple[str, str] = NO_AXIS
    y: tuple[str, str] = NO_AXIS
    z: tuple[str, str] = NO_AXIS
    # A1111 "Vary seeds for X/Y/Z": the seed moves on along that axis (seed + ix, ...)
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    # A1111 "Keep -1 for seeds": no seed is fixed, each cell draws its own
    no_fixed_seeds: bool = False
    draw_legend: bool = True  # A1111 "Draw legend"
    margin: int = 0  # A1111 "Grid margins (px)"
    # the seeds drawn for -1 on a Seed / Var. seed axis, ", "-joined ("" for none): fixed
    # when the job is queued, so a job that restarts makes the same cells
    fixed_values: tuple[str, str, str] = ("", "", "")

    @property
    def axes(self) -> tuple[tuple[str, str], tuple[str, str], tuple[str, str]]:
        return self.x, self.y, self.z

    @property
    def model(self) -> str | None:
        """The base model (a Checkpoint name axis changes it per cell)."""
        return self.base.model

    @property
    def mode(self) -> str:
        return self.base.mode

    def replace(self, **changes: Any) -> XYZParams:
        return dataclasses.replace(self, **changes)

    def field_errors(self) -> dict[str, str]:
        """The base params' problems, and the plot's own that need no parsing."""
        errors = self.base.field_errors()
        if self.base.batch_size != 1 or self.base.batch_count != 1:
            errors["batch_size"] = (
                "an X/Y/Z plot makes one image per cell (A1111 takes each cell's first "
                "image): leave the batch size and batch count at 1"
            )
        if not isinstance(self.margin, int) or not 0 <= self.margin <= MAX_XYZ_MARGIN:
            errors["margin"] = (
                f"grid margin {self.margin} is out of range: use 0 to {MAX_XYZ_MARGIN} pixels"
            )
        return errors

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XYZParams:
        """From :meth:`to_dict` (or its JSON): a field this version does not know is a
        ValueError, never a guess."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"fields this sdtui does not know: {', '.join(unknown)}")
        base = dict(data.get("base") or {})
        base_known = {f.name for f in dataclasses.fields(GenerationParams)}
        unknown = sorted(set(base) - base_known)
        if unknown:
            raise ValueError(f"fields this sdtui does not know: {', '.join(unknown)}")
        changes: dict[str, Any] = {"base": GenerationParams(**base)}
        for name in ("x", "y", "z"):
            if name in data:
                label, text = data[name]
                changes[name] = (str(label), str(text))
        if "vary_seeds" in data:
            vx, vy, vz = data["vary_seeds"]
            changes["vary_seeds"] = (bool(vx), bool(vy), bool(vz))
        if "fixed_values" in data:
            fx, fy, fz = data["fixed_values"]
            changes["fixed_values"] = (str(fx), str(fy), str(fz))
        for name in ("no_fixed_seeds", "draw_legend", "margin"):
            if name in data:
                changes[name] = data[name]
        return cls(**changes)


def _num(v: float) -> int | float:
    """A1111 writes 7 not 7.0."""
    return int(v) if float(v).is_integer() else round(float(v), 4)


def _written_schedule(sampler: str, schedule: str) -> str:
    """What A1111 writes as "Schedule type" (the resolved label for samplers whose table
    entry names one: DPM++ 2M on Automatic writes "Karras")."""
    try:
        return infotext_schedule(sampler, schedule)
    except UnknownSamplerError:
        return schedule


def _not_utf8_at(text: object) -> int | None:
    """Where ``text`` holds a byte that was not UTF-8 (Python keeps such command-line bytes
    as lone surrogates, which the tokenizer cannot take), or None."""
    if not isinstance(text, str):
        return None
    for i, ch in enumerate(text):
        if "\ud800" <= ch <= "\udfff":
            return i
    return None


def parse_size(text: str) -> tuple[int, int]:
    """'512x768' -> (512, 768); a ParamError that shows the expected form otherwise."""
    try:
        w, h = text.lower().replace("×", "x").split("x")
        return int(w), int(h)
    except ValueError:
        raise ParamError("size", f"size {text!r} is not WIDTHxHEIGHT, e.g. 512x512") from None
