"""img2img on Flux.1 and SD3.5, as Forge runs it: FluxImg2ImgPipeline /
StableDiffusion3Img2ImgPipeline over the loaded model's components, Forge's step count
(``t_enc + 1`` of ``steps``), the init image read and resized by sdtui's own functions, and
"Denoising strength" in the infotext. Tiny seeded models saved as single files in the original
layouts (the builders of test_dit_models), loaded offline by the engine's own path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_dit_models import (
    H,
    W,
    flux_to_bfl,
    job,
    load,
    pixel_diff,
    sd3_to_sai,
    text_sd,
    tiny_clip,
    tiny_config_dir,
    tiny_flux,
    tiny_sd3,
    tiny_t5,
    tiny_vae,
    vae_to_ldm,
)

from sdtui.config import Settings
from sdtui.engine.dit import check_params, img2img_strength
from sdtui.engine.generate import load_init_image
from sdtui.engine.session import ModelSession
from sdtui.errors import UserError
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.model_family import ModelFamily
from sdtui.params import GenerationParams


def _save(path: Path, sd: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    return path


@pytest.fixture(scope="module")
def flux_session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("flux-schnell")
    parts = {
        "transformer": tiny_flux(5, dev=False),
        "vae": tiny_vae(2, 0.3611, 0.1159),
        "text_encoder": tiny_clip(3, projection=False),
        "text_encoder_2": tiny_t5(4, d_model=32),
    }
    cfg = tiny_config_dir(root, "flux1-schnell", parts)
    sd = {
        "model.diffusion_model." + k: v
        for k, v in flux_to_bfl(parts["transformer"].state_dict()).items()
    }
    sd |= {"vae." + k: v for k, v in vae_to_ldm(parts["vae"].state_dict(), 2).items()}
    sd |= text_sd(parts["text_encoder"], "text_encoders.clip_l.transformer.")
    sd |= text_sd(parts["text_encoder_2"], "text_encoders.t5xxl.transformer.")
    path = _save(root / "models" / "Stable-diffusion" / "flux1-schnell-tiny.safetensors", sd)
    loaded = load(path, cfg)
    assert loaded.family.label == "Flux.1 schnell"
    session = ModelSession.create(loaded, "cpu")
    session.settings = Settings(models_dir=root / "models")
    # an ai-toolkit (diffusers-named) LoRA on the first block's query
    to_q = session.txt2img.transformer.transformer_blocks[0].attn.to_q
    gen = torch.Generator().manual_seed(11)
    rows, cols = to_q.weight.shape
    name = "transformer.transformer_blocks.0.attn.to_q"
    lora = {
        f"{name}.lora_B.weight": torch.randn(rows, 4, generator=gen),
        f"{name}.lora_A.weight": torch.randn(4, cols, generator=gen),
    }
    _save(root / "models" / "Lora" / "fox.safetensors", lora)
    return session


@pytest.fixture(scope="module")
def sd35_session(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("sd35")
    parts = {
        "transformer": tiny_sd3(6),
        "vae": tiny_vae(7, 1.5305, 0.0609),
        "text_encoder": tiny_clip(8, projection=True),
        "text_encoder_2": tiny_clip(9, projection=True),
        "text_encoder_3": tiny_t5(10, d_model=64),
    }
    cfg = tiny_config_dir(root, "sd35-medium", parts)
    sd = {
        "model.diffusion_model." + k: v
        for k, v in sd3_to_sai(parts["transformer"].state_dict(), 2).items()
    }
    sd |= {"first_stage_model." + k: v for k, v in vae_to_ldm(parts["vae"].state_dict(), 2).items()}
    sd |= text_sd(parts["text_encoder"], "text_encoders.clip_l.transformer.")
    sd |= text_sd(parts["text_encoder_2"], "text_encoders.clip_g.transformer.")
    sd |= text_sd(parts["text_encoder_3"], "text_encoders.t5xxl.transformer.")
    path = _save(root / "models" / "Stable-diffusion" / "sd3.5_medium_tiny.safetensors", sd)
    loaded = load(path, cfg)
    assert loaded.family.label == "SD3.5 medium"
    return ModelSession.create(loaded, "cpu")


@pytest.fixture(scope="module")
def init_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smooth 96x64 picture (not the job's 64x64: "just resize" makes it fit)."""
    y, x = np.mgrid[0:64, 0:96]
    rgb = np.stack([x * 255 / 95, y * 255 / 63, 128 + 100 * np.sin(x / 9.0)], axis=-1)
    path = tmp_path_factory.mktemp("init") / "init.png"
    Image.fromarray(rgb.astype(np.uint8)).save(path)
    return path


# the module's tiny models by their file stems, for the job's Model name (the DiT test files
# that share these sessions import this and dit_params)
DIT_NAMES = {"flux": "flux1-schnell-tiny", "sd35": "sd3.5_medium_tiny"}


def dit_params(**kw: Any) -> GenerationParams:
    """A tiny Flux / SD3.5 job: "a red fox", 64x64, Euler + Simple, CFG 1, seed 42, 2 steps,
    no previews; ``kw`` on top."""
    base = GenerationParams(
        prompt="a red fox",
        steps=2,
        sampler="Euler",
        schedule_type="Simple",
        cfg_scale=1,
        seed=42,
        width=W,
        height=H,
        preview_every=0,
    )
    return base.replace(**kw)


def _params(init: Path, **kw: Any) -> GenerationParams:
    return dit_params(**{"steps": 20, "init_image": str(init), "denoising_strength": 0.75, **kw})


def _roundtrip(session: Any, init: Path, seed: int) -> np.ndarray:
    """The init image through the tiny VAE alone (encode, decode), with the posterior sample
    the job draws first from its seed's generator: what a denoise near 0 can keep at best,
    the random VAE being far from an identity."""
    pipe = session.txt2img
    image = load_init_image(str(init), W, H, "just resize")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
    with torch.inference_mode():
        z = pipe.vae.encode(x[None]).latent_dist.sample(torch.Generator().manual_seed(seed))
        out = pipe.vae.decode(z).sample[0]
    return ((out.clamp(-1, 1) + 1) * 127.5).round().permute(1, 2, 0).numpy()


def _mean_diff(path: str | Path, ref: np.ndarray) -> float:
    with Image.open(path) as im:
        return float(np.abs(np.asarray(im.convert("RGB"), dtype=np.float32) - ref).mean())


def test_forge_step_count() -> None:
    """Forge runs t_enc + 1 of the schedule's steps (diffusers alone would run 15 at 0.75)."""
    p = GenerationParams(init_image="x.png", steps=20)
    for denoise, run in [(0.75, 16), (0.0, 1), (1.0, 20), (0.5, 11), (0.999, 20), (0.05, 2)]:
        count, strength = img2img_strength(p.replace(denoising_strength=denoise))
        assert count == run
        # diffusers' own get_timesteps arithmetic gives the same count
        start = int(max(20 - min(20 * strength, 20), 0))
        assert 20 - start == run


@pytest.mark.parametrize("which", ["flux", "sd35"])
def test_img2img_runs_keeps_and_changes_the_init_image(
    which: str, request: pytest.FixtureRequest, init_png: Path, tmp_path: Path
) -> None:
    session = request.getfixturevalue(f"{which}_session")
    name = "flux1-schnell-tiny" if which == "flux" else "sd3.5_medium_tiny"
    ref = _roundtrip(session, init_png, 42)

    low, events = job(session, _params(init_png, denoising_strength=0.0), tmp_path / "low", name)
    # progress counts the one step that runs (Forge's t_enc + 1), not the 20 asked
    started = next(e for e in events if isinstance(e, msg.JobStarted))
    progress = [(e.step, e.steps) for e in events if isinstance(e, msg.Progress)]
    assert started.steps_total == 1 and progress == [(1, 1)]
    high, events = job(session, _params(init_png, denoising_strength=1.0), tmp_path / "high", name)
    assert [(e.step, e.steps) for e in events if isinstance(e, msg.Progress)][-1] == (20, 20)
    mid, events = job(
        session,
        _params(init_png, denoising_strength=0.5, steps=4, preview_every=1),
        tmp_path / "mid",
        name,
    )
    assert [e.step for e in events if isinstance(e, msg.Progress)] == [1, 2, 3]
    # previews as txt2img: after each step but the last, of the (B, 16, h, w) latents
    assert [(e.step, e.width) for e in events if isinstance(e, msg.Preview)] == [(1, 32), (2, 32)]

    # denoise 0 gives the VAE's round trip back (one step at the last sigma), to within an
    # eighth of what the tiny random VAE's round trip alone moves the init image; denoise 1
    # lands far from it
    init = np.asarray(load_init_image(str(init_png), W, H, "just resize"), dtype=np.float32)
    vae_alone = float(np.abs(init - ref).mean())
    kept, changed = _mean_diff(low.paths[0], ref), _mean_diff(high.paths[0], ref)
    assert kept < vae_alone / 8, (kept, vae_alone)
    assert changed > 4 * kept, (kept, changed)
    # saved where A1111 saves img2img results
    assert "img2img-images" in Path(low.paths[0]).relative_to(tmp_path).parts
    with Image.open(low.paths[0]) as im:
        assert im.size == (W, H)

    # the infotext: Steps as asked, Denoising strength as A1111 writes it; it parses back
    info = read_infotext(mid.paths[0])
    assert info is not None
    line = info.splitlines()[-1]
    assert line.startswith("Steps: 4, Sampler: Euler, Schedule type: Simple, CFG scale: 1")
    assert ", Denoising strength: 0.5" in line
    parsed = parse_infotext(info)
    back = GenerationParams.from_infotext_fields(
        parsed.prompt, parsed.negative_prompt, parsed.pairs
    )
    assert (back.denoising_strength, back.steps, back.seed) == (0.5, 4, 42)
    assert "Denoising strength" not in back.extra


def test_same_seed_same_image_and_batch_images_alone(
    flux_session: Any, init_png: Path, tmp_path: Path
) -> None:
    params = _params(init_png, steps=4, denoising_strength=0.6, batch_size=2)
    a, events = job(flux_session, params, tmp_path / "a", "f")
    b, _ = job(flux_session, params, tmp_path / "b", "f")
    assert [e.seed for e in events if isinstance(e, msg.ImageSaved) and not e.is_grid] == [42, 43]
    for x, y in zip(a.paths, b.paths, strict=True):
        assert pixel_diff(x, y) == 0
    # image 1 of the batch (seed 43) alone: the same image (each generator encodes its own copy)
    alone, _ = job(flux_session, params.replace(seed=43, batch_size=1), tmp_path / "c", "f")
    assert pixel_diff(a.paths[1], alone.paths[0]) <= 2
    assert pixel_diff(a.paths[0], alone.paths[0]) > 2


def test_a_lora_and_the_memory_ladder_apply_to_img2img(
    flux_session: Any, init_png: Path, tmp_path: Path
) -> None:
    params = _params(init_png, steps=4, denoising_strength=0.6)
    base, _ = job(flux_session, params, tmp_path / "base", "f")
    lora, _ = job(
        flux_session, params.replace(prompt="a red fox <lora:fox:1>"), tmp_path / "l", "f"
    )
    assert pixel_diff(base.paths[0], lora.paths[0]) > 2
    info = read_infotext(lora.paths[0])
    assert info is not None and "Lora hashes: " in info and "Denoising strength: 0.6" in info

    # out of memory twice (the real torch error, from the transformer): the ladder frees the
    # cache, then moves the text encoders off, and the image is the unbroken job's
    left = [2]

    def oom(module: torch.nn.Module, args: Any) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = flux_session.txt2img.transformer.register_forward_pre_hook(oom)
    try:
        climbed, events = job(flux_session, params, tmp_path / "oom", "f")
    finally:
        handle.remove()
    logs = [e.text for e in events if isinstance(e, msg.Log) and e.level == "warning"]
    assert any("freed cached memory" in t for t in logs)
    assert any("text encoders (T5 first) to the CPU" in t for t in logs)
    assert pixel_diff(base.paths[0], climbed.paths[0]) <= 1


def test_skip_and_cancel_as_txt2img(flux_session: Any, init_png: Path, tmp_path: Path) -> None:
    from sdtui.engine.job import JobControl

    params = _params(init_png, steps=4, batch_count=2)
    control = JobControl()
    control.skip.set()  # read at the first step: batch 1 (seed 42) is dropped, batch 2 runs
    done, events = job(flux_session, params, tmp_path / "skip", "s", control)
    assert [e.seed for e in events if isinstance(e, msg.ImageSaved)] == [43]
    assert not done.cancelled and len(done.paths) == 1
    control = JobControl()
    control.cancel.set()
    done, events = job(flux_session, params, tmp_path / "cancel", "c", control)
    assert done.cancelled and done.paths == ()


def test_a_missing_or_unreadable_init_image_is_said(flux_session: Any, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="init image") as missing:
        job(flux_session, _params(tmp_path / "nope.png"), tmp_path / "o", "f")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(UserError, match="init image") as damaged:
        job(flux_session, _params(text), tmp_path / "o", "f")
    assert str(missing.value) != str(damaged.value)


def test_the_init_image_is_read_as_sdtui_reads_it(tmp_path: Path) -> None:
    """The one reader (sdtui.engine.inpaint), which both generate and dit use: transparency
    on white, EXIF orientation applied."""
    from sdtui.engine import generate
    from sdtui.engine.inpaint import read_init_image

    rgba = Image.new("RGBA", (40, 24), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 128), (0, 0, 20, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    path = tmp_path / "alpha.png"
    rgba.save(path, exif=exif)
    assert generate.read_init_image is read_init_image
    ours, theirs = read_init_image(str(path)), generate.read_init_image(str(path))
    assert ours.size == theirs.size == (24, 40) and ours.mode == "RGB"
    assert ours.tobytes() == theirs.tobytes()
    assert ours.getpixel((12, 35)) == (255, 255, 255)  # transparent: white, as A1111


def test_what_stays_refused_is_said() -> None:
    flux = ModelFamily("Flux", "flux1-schnell", variant="schnell")
    p = _params(Path("x.png"))
    assert check_params(p, flux).init_image == "x.png"
    assert check_params(p.replace(mask="m.png"), flux).mask == "m.png"  # tests/test_dit_inpaint.py
    with pytest.raises(UserError, match="CFG Rescale not supported yet"):
        check_params(p.replace(cfg_rescale=0.5), flux)
    with pytest.raises(UserError, match="a refiner not supported yet"):
        check_params(p.replace(refiner_checkpoint="r"), flux)


def test_the_form_keeps_the_img2img_rows_for_these_families() -> None:
    from sdtui.family_presets import hidden_fields

    rows = {"init_image", "denoising_strength", "resize_mode"}
    for family in ("Flux.1 dev", "Flux.1 schnell", "SD3.5 medium", "SD3.5 large"):
        assert not rows & hidden_fields(family)
        assert not {"mask", "outpaint_pixels"} & hidden_fields(family)  # inpainting runs
        assert {"cfg_rescale", "refiner_checkpoint"} <= hidden_fields(family)  # still refused
