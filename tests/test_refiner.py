"""The SDXL refiner (--refiner, --refiner-switch-at), on tiny SDXL base and refiner single
files in the original (sgm) layout: detection, A1111's switch point, the refiner's own
conditioning, the infotext, and the refusals."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engine_helpers import demo_session, run_job, tiny_clip_config, tiny_config_folder
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from safetensors.torch import save_file  # noqa: E402

from sdtui.config import Settings  # noqa: E402
from sdtui.engine import models  # noqa: E402
from sdtui.engine.configs import config_dir  # noqa: E402
from sdtui.engine.convert import (  # noqa: E402
    UNET_PREFIX,
    VAE_PREFIX,
    openclip_to_ldm,
    stable_diffusion_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from sdtui.errors import UserError  # noqa: E402
from sdtui.infotext import params_from_image, read_infotext  # noqa: E402
from sdtui.model_family import ModelFamily, detect_family  # noqa: E402
from sdtui.model_index import discover_models  # noqa: E402
from sdtui.params import GenerationParams  # noqa: E402

U = UNET_PREFIX
REFINER_OPENCLIP = "conditioner.embedders.0.model."
TIME_DIM = 8  # the tiny UNets' addition_time_embed_dim
JOB = dict(
    prompt="a lighthouse at dusk",
    width=64,
    height=64,
    steps=10,
    sampler="Euler",
    cfg_scale=7.0,
    seed=11,
    preview_every=0,
    model="tiny-xl",
)


# -- tiny models -------------------------------------------------------------------------------


def _unet(cross: int, pooled: int, time_ids: int) -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=time_ids * TIME_DIM + pooled,
        cross_attention_dim=cross,
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A tiny SDXL base and a tiny SDXL refiner saved as single files in models/, with the
    engine's config lookup pointed at tiny config folders (the real widths are too big)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root = tmp_path_factory.mktemp("refiner")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir("sdtui-demo") / "vae"))

    torch.manual_seed(0)
    te1 = CLIPTextModel(tiny_clip_config("quick_gelu", 32))
    te2 = CLIPTextModelWithProjection(tiny_clip_config("gelu", 48))
    base_unet = _unet(cross=32 + 48, pooled=48, time_ids=6)
    base_cfg = tiny_config_folder(
        root,
        "sdxl-base",
        {"unet": base_unet, "vae": vae, "text_encoder": te1, "text_encoder_2": te2},
    )
    save_file(
        stable_diffusion_to_ldm(base_unet, vae, te1, te2), checkpoints / "tiny-xl.safetensors"
    )

    # the refiner: OpenCLIP-G alone as conditioner.embedders.0, 5 time ids (size, crop, score)
    torch.manual_seed(1)
    ref_te = CLIPTextModelWithProjection(tiny_clip_config("gelu", 48))
    ref_unet = _unet(cross=48, pooled=48, time_ids=5)
    ref_cfg = tiny_config_folder(
        root, "sdxl-refiner", {"unet": ref_unet, "vae": vae, "text_encoder_2": ref_te}
    )
    sd = {U + k: v for k, v in unet_to_ldm(ref_unet.state_dict(), ref_unet.config).items()}
    sd.update({VAE_PREFIX + k: v for k, v in vae_to_ldm(vae.state_dict(), vae.config).items()})
    sd.update({REFINER_OPENCLIP + k: v for k, v in openclip_to_ldm(ref_te.state_dict()).items()})
    save_file(
        {k: v.detach().contiguous().clone() for k, v in sd.items()},
        checkpoints / "tiny-xl-refiner.safetensors",
    )

    def detect(shapes: Any) -> ModelFamily:
        # the real classifier's key rule; its width table knows only the real widths
        if any(k.startswith("conditioner.embedders.1.") for k in shapes):
            return ModelFamily("SDXL", "sdxl-base")
        if any(k.startswith(REFINER_OPENCLIP) for k in shapes):
            return ModelFamily("SDXL", "sdxl-refiner", refiner=True)
        return detect_family(shapes)

    folders = {"sdxl-base": base_cfg, "sdxl-refiner": ref_cfg}
    patch = pytest.MonkeyPatch()
    patch.setattr(models, "detect_family", detect)
    patch.setattr(models, "config_dir", lambda name: folders.get(name) or config_dir(name))
    try:
        yield {
            "root": root,
            "checkpoints": checkpoints,
            "settings": Settings(models_dir=root / "models", embeddings_dir=root / "embeddings"),
        }
    finally:
        patch.undo()


@pytest.fixture(scope="module")
def session(tiny: dict[str, Any]) -> Iterator[Any]:
    s = demo_session(tiny["checkpoints"] / "tiny-xl.safetensors", tiny["settings"])
    s.loaded.name = "tiny-xl"
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def refiner(session: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The refiner, loaded beside the base by a short job that names it (kept between jobs)."""
    p = GenerationParams(**dict(JOB, steps=2), refiner_checkpoint="tiny-xl-refiner")
    run_job(session, p, tmp_path_factory.mktemp("load"))
    return session.refiner.loaded


def _image(done: Any) -> np.ndarray:
    return np.asarray(Image.open(done.paths[0])).astype(int)


class UnetCalls:
    """Every forward of the base's and the refiner's UNets, in order, with its time ids."""

    def __init__(self, base: Any, refiner: Any) -> None:
        self.calls: list[tuple[str, torch.Tensor]] = []
        self.handles = [
            m.register_forward_pre_hook(self._hook(name), with_kwargs=True)
            for name, m in (("base", base), ("refiner", refiner))
        ]

    def _hook(self, name: str) -> Any:
        def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            ids = kwargs["added_cond_kwargs"]["time_ids"].detach().float().cpu()
            self.calls.append((name, ids))

        return hook

    def order(self) -> list[str]:
        return [name for name, _ in self.calls]

    def __enter__(self) -> UnetCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()


# -- detection -----------------------------------------------------------------------------------


def test_an_sdxl_refiner_is_detected_and_listed_as_one(tmp_path: Path) -> None:
    """At the real widths (only the keys that decide, zeros): UNet 384 wide, cross-attention
    1280, OpenCLIP-G alone as conditioner.embedders.0."""
    checkpoints = tmp_path / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    shapes = {
        U + "input_blocks.0.0.weight": (384, 4, 3, 3),
        U + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (768, 1280),
        REFINER_OPENCLIP + "positional_embedding": (77, 1280),
    }
    save_file(
        {k: torch.zeros(s, dtype=torch.float16) for k, s in shapes.items()},
        checkpoints / "sd_xl_refiner_1.0.safetensors",
    )
    family = detect_family(shapes)
    assert (family.family, family.refiner, family.config) == ("SDXL", True, "sdxl-refiner")
    assert family.label == "SDXL refiner"
    [entry] = discover_models(tmp_path / "models")
    assert (entry.family, entry.config, entry.error) == ("SDXL refiner", "sdxl-refiner", None)


def test_the_bundled_refiner_config_is_the_sdxl_refiners() -> None:
    """stabilityai/stable-diffusion-xl-refiner-1.0's UNet (sgm: model_channels 384, channel
    mult 1 2 4 4, attention at 4 and 2, 64-channel heads, depth 4, context 1280, adm 2560),
    its scheduler and its OpenCLIP-G, built offline from the bundled folder."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTokenizer

    folder = config_dir("sdxl-refiner")
    unet = UNet2DConditionModel.load_config(folder / "unet")
    assert unet["block_out_channels"] == [384, 768, 1536, 1536]
    assert unet["attention_head_dim"] == [6, 12, 24, 24]
    assert unet["transformer_layers_per_block"] == 4
    assert unet["cross_attention_dim"] == 1280
    assert unet["projection_class_embeddings_input_dim"] == 5 * 256 + 1280
    assert unet["down_block_types"] == [
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ]
    index = (folder / "model_index.json").read_text()
    assert '"requires_aesthetics_score": true' in index
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer_2")
    assert tok.pad_token == "!" and tok("a cat")["input_ids"][0] == 49406
    assert not (folder / "text_encoder").exists()


def test_a_refiner_alone_is_no_jobs_model(tiny: dict[str, Any]) -> None:
    with pytest.raises(UserError, match="is an SDXL refiner.*--refiner"):
        models.load_pipeline(tiny["checkpoints"] / "tiny-xl-refiner.safetensors")


def test_a_refiner_folder_loads_as_a_refiner_only(tiny: dict[str, Any], tmp_path: Path) -> None:
    """A diffusers refiner folder (StableDiffusionXLImg2ImgPipeline without text_encoder)."""
    single = models.load_pipeline(
        tiny["checkpoints"] / "tiny-xl-refiner.safetensors", role="refiner"
    )
    folder = tmp_path / "tiny-xl-refiner"
    single.pipe.save_pretrained(folder)
    loaded = models.load_pipeline(folder, role="refiner")
    assert loaded.family.refiner and loaded.family.label == "SDXL refiner"
    assert type(loaded.pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    with pytest.raises(UserError, match="no text encoder.*--refiner"):
        models.load_pipeline(folder)


# -- a job with the refiner ----------------------------------------------------------------------


def test_the_refiner_finishes_the_job_and_the_infotext_says_so(
    session: Any, refiner: Any, tiny: dict[str, Any], tmp_path: Path
) -> None:
    # 10 Euler steps, switch at 0.8. A1111's Euler sigmas for 10 steps sit on the model
    # timesteps linspace(999, 0, 10) = 999, 888, ..., 111, 0; apply_refiner's completed ratio
    # (999 - t) / 1000 is 0, .111, ..., .777, .888, .999, so the first call at or past 0.8 is
    # the 9th (t = 111): the base makes 8 calls, the refiner 2
    p = GenerationParams(**JOB, refiner_checkpoint="tiny-xl-refiner", refiner_switch_at=0.8)
    with UnetCalls(session.txt2img.unet, refiner.pipe.unet) as spy:
        done, _ = run_job(session, p, tmp_path / "first")
    assert spy.order() == ["base"] * 8 + ["refiner"] * 2
    assert session.refiner.loaded is refiner  # kept between jobs
    assert refiner.loaded.family.refiner
    assert type(refiner.pipe).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert refiner.pipe.text_encoder is None and refiner.aesthetic
    # the refiner's time ids: size, crop and aesthetic score, 6.0 on the prompt's row and
    # 2.5 on the negative's (cond and uncond in one batch); the base's: size, crop, size
    base_ids, ref_ids = spy.calls[0][1], spy.calls[-1][1]
    assert base_ids.tolist() == [[64, 64, 0, 0, 64, 64]] * 2
    assert ref_ids.tolist() == [[64, 64, 0, 0, 6.0], [64, 64, 0, 0, 2.5]]

    # the infotext: Refiner is A1111's short title, "name [sha256[:10]]", and reads back
    from sdtui.hashes import model_hash

    digest = model_hash(tiny["checkpoints"] / "tiny-xl-refiner.safetensors")
    text = read_infotext(done.paths[0])
    assert text is not None
    assert f"Refiner: tiny-xl-refiner [{digest}], Refiner switch at: 0.8" in text
    back = params_from_image(done.paths[0])
    assert (back.refiner_checkpoint, back.refiner_switch_at) == ("tiny-xl-refiner", 0.8)

    # the same seed without the refiner: the same first 8 steps, another image
    alone, _ = run_job(session, p.replace(refiner_checkpoint=None), tmp_path / "alone")
    assert np.abs(_image(alone) - _image(done)).max() > 0
    alone_text = read_infotext(alone.paths[0])
    assert alone_text is not None and "Refiner" not in alone_text
    # switch at 1: completed never reaches 1 (at most .999), so the base runs every step and
    # the image is the base's own
    never, _ = run_job(session, p.replace(refiner_switch_at=1.0), tmp_path / "never")
    np.testing.assert_array_equal(_image(never), _image(alone))


@pytest.mark.parametrize(
    ("sampler", "switch_at", "base_calls", "calls"),
    [
        # A1111's DDIM makes len(timesteps) - 1 = 9 calls, at t = 901, 801, ..., 101, and its
        # "sigma" is the timestep: completed (999 - t) / 1000 is .798 at t = 201 and .898 at
        # t = 101, so 8 base calls and 1 refiner call
        ("DDIM", 0.8, 8, 9),
        # Euler at 0.5: t = 555 gives .444, t = 444 gives .555: 5 base calls, 5 refiner calls
        ("Euler", 0.5, 5, 10),
        # 0: the refiner from the first call, as A1111 (0 < 0 is false)
        ("Euler", 0.0, 0, 10),
    ],
)
def test_the_switch_is_a1111s(
    session: Any,
    refiner: Any,
    tmp_path: Path,
    sampler: str,
    switch_at: float,
    base_calls: int,
    calls: int,
) -> None:
    p = GenerationParams(
        **{**JOB, "sampler": sampler},
        refiner_checkpoint="tiny-xl-refiner",
        refiner_switch_at=switch_at,
    )
    with UnetCalls(session.txt2img.unet, refiner.pipe.unet) as spy:
        _, events = run_job(session, p, tmp_path / "run")
    assert spy.order() == ["base"] * base_calls + ["refiner"] * (calls - base_calls)
    from sdtui.ipc import protocol as msg

    steps = [e.step for e in events if isinstance(e, msg.Progress)]
    assert steps == list(range(1, calls + 1))  # progress counts on through the switch


def test_with_the_hires_fix_the_refiner_finishes_the_hires_pass(
    session: Any, refiner: Any, tmp_path: Path
) -> None:
    """A1111's default "Hires fix: which pass to enable refiner for" is the second pass: the
    first pass is the base's alone, the hires pass starts on the base and switches. Hires at
    denoising 0.5 runs the last 10 of a 20-step Euler schedule, whose model timesteps are
    999 * (1 - i / 19): i = 15 sits at t = 210 (completed .789), i = 16 at t = 158 (.841), so
    the base makes i = 10..15 (6 calls) and the refiner i = 16..19 (4 calls)."""
    p = GenerationParams(
        **JOB,
        enable_hr=True,
        hr_scale=1.0,
        hr_denoising_strength=0.5,
        refiner_checkpoint="tiny-xl-refiner",
        refiner_switch_at=0.8,
    )
    with UnetCalls(session.txt2img.unet, refiner.pipe.unet) as spy:
        done, _ = run_job(session, p, tmp_path)
    assert spy.order() == ["base"] * 10 + ["base"] * 6 + ["refiner"] * 4
    text = read_infotext(done.paths[0])
    assert text is not None and "Refiner: tiny-xl-refiner [" in text
    assert "Hires refiner" not in text  # A1111 writes it only for a pass other than the second


def _hidden_states(
    session: Any, refiner: Any, prompt: str, out: Path
) -> list[tuple[str, torch.Tensor]]:
    """(model, the prompt row's text embeddings) of each UNet call of a refiner job."""
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args, kw, name=name: seen.append(
                (name, kw["encoder_hidden_states"][0].detach().clone())
            ),
            with_kwargs=True,
        )
        for name, m in (("base", session.txt2img.unet), ("refiner", refiner.pipe.unet))
    ]
    # 5 Euler steps sit on the model timesteps 999, 749, 500, 250, 0: completed .749 at the
    # 4th call, .999 at the 5th, so at 0.8 the base makes 4 calls and the refiner 1
    p = GenerationParams(
        **dict(JOB, prompt=prompt, steps=5),
        refiner_checkpoint="tiny-xl-refiner",
        refiner_switch_at=0.8,
    )
    try:
        run_job(session, p, out)
    finally:
        for h in hooks:
            h.remove()
    return seen


def test_prompt_editing_counts_on_in_the_refiner(
    session: Any, refiner: Any, tmp_path: Path
) -> None:
    """The refiner's conditioning follows the job's prompt-editing schedule at the same call
    count: ``[A:B:3]`` is A for calls 0-3 (A1111: step <= 3) and B after, so the base's 4
    calls see A and the refiner's 1 sees B, encoded by the refiner's own text encoder."""
    a, b = "a lighthouse at dusk", "a red barn"
    edited = _hidden_states(session, refiner, f"[{a}:{b}:3]", tmp_path / "edited")
    only_a = _hidden_states(session, refiner, a, tmp_path / "a")
    only_b = _hidden_states(session, refiner, b, tmp_path / "b")
    assert [n for n, _ in edited] == ["base"] * 4 + ["refiner"]
    for (_, z), (_, za) in zip(edited[:4], only_a[:4], strict=True):
        assert torch.equal(z, za)
    assert torch.equal(edited[4][1], only_b[4][1])
    assert edited[4][1].shape[-1] == 48  # OpenCLIP-G alone: the refiner's context width
    assert not torch.equal(edited[4][1], only_a[4][1])


def test_an_embedding_reaches_the_refiners_text_encoder(
    session: Any, refiner: Any, tiny: dict[str, Any], tmp_path: Path
) -> None:
    """An SDXL embedding (clip_l and clip_g vectors) named in the prompt: the refiner's
    OpenCLIP-G reads its clip_g vectors, as A1111's embedding database on the refiner."""
    folder = tiny["settings"].embeddings
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "xlstyle.safetensors"
    torch.manual_seed(5)
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 48)}, path)
    try:
        named = _hidden_states(session, refiner, "a photo of xlstyle", tmp_path / "named")
    finally:
        path.unlink()
    plain = _hidden_states(session, refiner, "a photo of xlstyle", tmp_path / "plain")
    assert [n for n, _ in named][-1] == "refiner"
    assert not torch.equal(named[-1][1], plain[-1][1])


# -- refusals ------------------------------------------------------------------------------------


def test_a_missing_refiner_names_the_close_ones(session: Any, tmp_path: Path) -> None:
    p = GenerationParams(**JOB, refiner_checkpoint="tiny-xl-refinr")
    with pytest.raises(UserError) as e:
        run_job(session, p, tmp_path)
    said = e.value.message
    assert "refiner 'tiny-xl-refinr' not found" in said
    assert "close names are tiny-xl-refiner" in said
    assert not list(tmp_path.rglob("*.png"))


def test_a_refiner_for_an_sd1_model_is_refused(demo_model: Any, tmp_path: Path) -> None:
    sd1 = demo_session(demo_model.safetensors, Settings(models_dir=tmp_path / "models"))
    try:
        p = GenerationParams(
            prompt="a cat",
            width=64,
            height=64,
            steps=2,
            seed=1,
            preview_every=0,
            refiner_checkpoint="tiny-xl-refiner",
        )
        with pytest.raises(
            UserError, match=r"refiner finishes SDXL images.*not an SDXL base model \(SD1\)"
        ):
            run_job(sd1, p, tmp_path / "out")
    finally:
        sd1.close()


def test_an_sd1_model_as_the_refiner_is_refused(
    session: Any, tiny: dict[str, Any], demo_model: Any, tmp_path: Path
) -> None:
    copy = tiny["checkpoints"] / "sd1-style.safetensors"
    shutil.copyfile(demo_model.safetensors, copy)
    try:
        p = GenerationParams(**dict(JOB, steps=2), refiner_checkpoint="sd1-style")
        kept = session.refiner.loaded
        with pytest.raises(
            UserError, match=r"is not SDXL \(SD1\): a refiner must be an SDXL checkpoint"
        ):
            run_job(session, p, tmp_path)
        assert session.refiner.loaded is kept  # refused before the loaded refiner is let go
    finally:
        copy.unlink()
