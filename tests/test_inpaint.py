"""Inpainting and outpainting on the demo model, against A1111's own arithmetic.

The references come from A1111's code (modules/processing.py
``StableDiffusionProcessingImg2Img.init`` / ``sample`` / ``apply_overlay`` /
``inpainting_image_conditioning`` / ``txt2img_image_conditioning``, modules/masking.py,
modules/sd_samplers_cfg_denoiser.py, modules/sd_samplers_timesteps.py,
scripts/poor_mans_outpainting.py) and OpenCV's ``getGaussianKernel``, worked by hand below.
A "9-channel" model is the demo checkpoint with an inpainting UNet's first convolution (the
extra 5 input channels get small random weights, so the conditioning reaches the output)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import demo_session, run_job
from PIL import Image
from safetensors.torch import load_file, save_file

from sdtui.engine import inpaint
from sdtui.errors import UserError
from sdtui.infotext import params_from_image, parse_infotext, read_infotext
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams

TINY = dict(width=64, height=64, steps=3, prompt="a black house cat", preview_every=0, seed=5)
U = "model.diffusion_model."


@pytest.fixture(scope="module")
def session(demo_model):
    return demo_session(demo_model.safetensors)


@pytest.fixture(scope="module")
def inpaint_session(demo_model, tmp_path_factory):
    state = load_file(demo_model.safetensors)
    conv_in = state[U + "input_blocks.0.0.weight"]
    extra = torch.randn(conv_in.shape[0], 5, 3, 3, generator=torch.Generator().manual_seed(0))
    state[U + "input_blocks.0.0.weight"] = torch.cat([conv_in, extra * conv_in.std()], dim=1)
    path = tmp_path_factory.mktemp("inpainting") / "demo-inpainting.safetensors"
    save_file(state, path)
    session = demo_session(path)
    assert session.txt2img.unet.config.in_channels == 9
    return session


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _init(path: Path, size: tuple[int, int] = (64, 64)) -> Path:
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.uint8)[:, None].repeat(w, 1)
    Image.fromarray(np.stack([x, y, 255 - x], axis=-1)).save(path)
    return path


def _mask(path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> Path:
    """White (change) over ``box`` = (x1, y1, x2, y2), end exclusive."""
    a = np.zeros(size[::-1], dtype=np.uint8)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = 255
    Image.fromarray(a).save(path)
    return path


def _inside(box: tuple[int, int, int, int], size: tuple[int, int] = (64, 64)) -> np.ndarray:
    a = np.zeros(size[::-1], dtype=bool)
    x1, y1, x2, y2 = box
    a[y1:y2, x1:x2] = True
    return a


BOX = (16, 24, 40, 48)  # on the 8-pixel latent grid: latent cells 2..4 across, 3..5 down


# -- the mask blur: OpenCV's kernel ---------------------------------------------------------


def test_mask_blur_kernel_is_opencvs_for_a1111s_size():
    # A1111: kernel_size = 2 * int(2.5 * blur + 0.5) + 1, cv2.GaussianBlur(..., sigma=blur)
    assert [len(inpaint.gaussian_kernel(b)) for b in (1, 4, 8, 64)] == [7, 21, 41, 321]
    # cv2.getGaussianKernel(7, 1).ravel(), as OpenCV prints it
    opencv_7_1 = [
        0.00443305,
        0.05400558,
        0.24203623,
        0.39905028,
        0.24203623,
        0.05400558,
        0.00443305,
    ]
    assert inpaint.gaussian_kernel(1) == pytest.approx(opencv_7_1, abs=1e-8)
    assert inpaint.gaussian_kernel(4).sum() == pytest.approx(1.0)


def test_mask_blur_is_separable_and_mirrors_the_edge_like_opencv():
    a = np.zeros((9, 12), dtype=np.uint8)
    a[4, 1] = 255  # one pixel, next to the left edge
    out = np.asarray(inpaint.blur_mask(Image.fromarray(a), 1), dtype=np.float64)
    k = inpaint.gaussian_kernel(1) * 255  # taps k[0..6], centre k[3]
    # across: BORDER_REFLECT_101 mirrors column 1 onto column -1 (and not column 0 onto
    # itself), so column j gets the taps at 1 - j and -1 - j from its centre
    row = np.floor(np.array([k[2] + k[4], k[3] + k[1], k[2] + k[0], k[1], k[0]]) + 0.5)
    assert out[4, :5] == pytest.approx(np.floor(row * k[3] / 255 + 0.5))
    # down: each column spread over the rows by the same kernel, rounded between the passes
    assert out[5, 1] == out[3, 1] == np.floor(row[1] * k[4] / 255 + 0.5)
    assert out[4, 6:].max() == 0  # 3 taps on each side: nothing reaches column 6
    assert np.array_equal(np.asarray(inpaint.blur_mask(Image.fromarray(a), 0)), a)


# -- masking.py: the crop region, hand-worked -----------------------------------------------


@pytest.mark.parametrize(
    ("box", "pad", "processing", "crop", "expanded"),
    [
        # box 20x10 at (40, 50), pad 8: (32, 42, 68, 68); 36x26 is wider than 1:1, so
        # desired_height = 36, diff = int(36 - 26) = 10: y1 -= 5, y2 += 5
        ((40, 50, 60, 60), 8, (64, 64), (32, 42, 68, 68), (32, 37, 68, 73)),
        # top-right corner, pad 4: (96, 0, 128, 14); 32/14 > 2:1, desired_height = 16, diff 2:
        # y1 = -1, y2 = 15, then shifted down inside the image: (96, 0, 128, 16)
        ((100, 0, 128, 10), 4, (64, 32), (96, 0, 128, 14), (96, 0, 128, 16)),
        # 8x8 at the right edge, no pad, into 2:1: desired_width = 16, diff 8: x1 = 116,
        # x2 = 132, which sticks out by 4: shifted left to (112, 128)
        ((120, 60, 128, 68), 0, (64, 32), (120, 60, 128, 68), (112, 60, 128, 68)),
    ],
)
def test_crop_region_as_a1111_get_crop_region_and_expand_crop_region(
    box, pad, processing, crop, expanded
):
    mask = Image.fromarray(_inside(box, (128, 128)).astype(np.uint8) * 255)
    assert inpaint.get_crop_region(mask, pad) == crop
    assert inpaint.expand_crop_region(crop, *processing, 128, 128) == expanded


def test_a_blank_mask_has_no_crop_region():
    assert inpaint.get_crop_region(Image.new("L", (32, 32)), 8) is None


def test_fill_takes_the_colours_around_the_hole_and_keeps_the_rest():
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    a[:, :16] = (200, 40, 40)
    a[:, 16:] = (40, 40, 200)
    image = Image.fromarray(a)
    hole = _inside((12, 12, 20, 20), (32, 32))
    filled = np.asarray(inpaint.fill(image, Image.fromarray(hole.astype(np.uint8) * 255)))
    assert np.array_equal(filled[~hole], a[~hole])  # the last layer is the image itself
    left, right = filled[12:20, 12].astype(int), filled[12:20, 19].astype(int)
    assert (left[:, 0] > left[:, 2]).all() and (right[:, 2] > right[:, 0]).all()
    assert filled[hole].min() > 20  # no black hole left


def test_an_rgba_mask_with_transparency_is_its_alpha():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[..., 3] = [[0, 100, 129, 255]] * 4  # create_binary_mask: alpha over 128 is masked
    out = np.asarray(inpaint.binary_mask(Image.fromarray(a, "RGBA")))
    assert out[0].tolist() == [0, 0, 255, 255]


# -- outpainting arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pixels", "sides", "extents"),
    [
        (20, ("left", "right", "up", "down"), (20, 20, 20, 20)),  # 104 is a multiple of 8
        (20, ("left", "down"), (24, 0, 0, 24)),  # 84 rounds up to 88: the side takes all 24
        (10, ("left", "right"), (12, 12, 0, 0)),  # 84 -> 88: left 10 * 24 // 20, right the rest
        (13, ("up", "down"), (0, 0, 16, 16)),  # 90 -> 96
    ],
)
def test_outpaint_growth_keeps_a_multiple_of_8_as_poor_mans_outpainting_shares_it(
    pixels, sides, extents
):
    assert inpaint.outpaint_extents(64, 64, pixels, sides) == extents


def test_outpaint_canvas_masks_the_new_area_and_the_blur_into_the_old():
    image = Image.new("RGB", (64, 64), (10, 200, 30))
    canvas, mask, latent, extents = inpaint.outpaint_canvas(image, 16, ("right",), blur=4)
    assert extents == (0, 16, 0, 0) and canvas.size == mask.size == (80, 64)
    assert canvas.getpixel((10, 10)) == (10, 200, 30) and canvas.getpixel((70, 10)) == (0, 0, 0)
    m, lat = np.asarray(mask), np.asarray(latent)
    assert (m[:, 60:] == 255).all() and (m[:, :60] == 0).all()  # 4 px (the blur) into the old
    assert (lat[:, 63:] == 255).all() and (lat[:, :63] == 0).all()  # a quarter of it


# -- jobs on the demo models ----------------------------------------------------------------


def _unet_inputs(session) -> tuple[list[torch.Tensor], object]:
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append((args[0] if args else kwargs["sample"]).detach().clone())

    return seen, session.txt2img.unet.register_forward_pre_hook(hook, with_kwargs=True)


def _vae_mean(session, x: torch.Tensor) -> torch.Tensor:
    vae = session.txt2img.vae
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean * vae.config.scaling_factor


def test_nine_channel_model_inpaints_only_the_masked_area(inpaint_session, tmp_path):
    init = _init(tmp_path / "init.png")
    mask = _mask(tmp_path / "mask.png", BOX)
    seen, handle = _unet_inputs(inpaint_session)
    try:
        params = GenerationParams(**TINY, init_image=str(init), mask=str(mask), mask_blur=0)
        done, _ = run_job(inpaint_session, params, tmp_path / "whole")
    finally:
        handle.remove()
    out, original = pixels(done.paths[0]), pixels(init)
    inside = _inside(BOX)
    assert np.array_equal(out[~inside], original[~inside])  # the overlay puts the original back
    assert np.abs(out[inside] - original[inside]).mean() > 5
    # A1111 inpainting_image_conditioning: the UNet gets [latents, mask, VAE(masked image)]
    x = seen[0]
    assert x.shape[1] == 9
    want_mask = torch.zeros(8, 8)
    want_mask[3:6, 2:5] = 1  # the box on the latent grid (nearest)
    assert torch.equal(x[0, 4], want_mask) and torch.equal(x[1, 4:], x[0, 4:])  # cond = uncond
    source = torch.from_numpy(np.asarray(Image.open(init).convert("RGB"), dtype=np.float32))
    source = source.permute(2, 0, 1)[None] / 255 * 2 - 1
    source[:, :, torch.from_numpy(inside)] = 0  # torch.lerp(src, src * (1 - mask), 1.0)
    assert torch.allclose(x[0, 5:], _vae_mean(inpaint_session, source)[0], atol=1e-4)
    pairs = parse_infotext(read_infotext(done.paths[0])).pairs
    assert pairs["Conditional mask weight"] == "1.0" and pairs["Mask blur"] == "0"


def test_only_masked_crops_inpaints_and_pastes_back_at_the_init_images_size(
    inpaint_session, tmp_path
):
    init = _init(tmp_path / "init.png", (96, 80))
    box = (60, 10, 76, 26)
    mask = _mask(tmp_path / "mask.png", box, (96, 80))
    params = GenerationParams(
        **TINY,
        init_image=str(init),
        mask=str(mask),
        mask_blur=0,
        inpaint_full_res=True,
        inpaint_full_res_padding=4,
    )
    done, _ = run_job(inpaint_session, params, tmp_path)
    out, original = pixels(done.paths[0]), pixels(init)
    assert out.shape == original.shape  # A1111 pastes into the init image as uploaded
    inside = _inside(box, (96, 80))
    assert np.array_equal(out[~inside], original[~inside])
    assert np.abs(out[inside] - original[inside]).mean() > 5
    pairs = parse_infotext(read_infotext(done.paths[0])).pairs
    assert pairs["Size"] == "64x64"  # the size it was sampled at, as A1111 writes it
    assert pairs["Inpaint area"] == "Only masked"
    assert pairs["Masked area padding"] == "4"  # A1111's key (its UI: "Only masked padding")
    back = params_from_image(done.paths[0])
    assert (back.inpaint_full_res, back.inpaint_full_res_padding) == (True, 4)


def test_txt2img_and_hires_on_a_nine_channel_model(inpaint_session, tmp_path):
    seen, handle = _unet_inputs(inpaint_session)
    try:
        params = GenerationParams(
            **TINY, enable_hr=True, hr_scale=1.5, hr_denoising_strength=0.5, hr_second_pass_steps=2
        )
        done, _ = run_job(inpaint_session, params, tmp_path)
    finally:
        handle.remove()
    assert Image.open(done.paths[0]).size == (96, 96)
    # A1111 txt2img_image_conditioning: a mask of ones over a 0.5 grey image, at each size
    first, last = seen[0], seen[-1]
    assert first.shape[1:] == (9, 8, 8) and last.shape[1:] == (9, 12, 12)
    assert (first[:, 4] == 1).all() and (last[:, 4] == 1).all()
    grey = _vae_mean(inpaint_session, torch.zeros(1, 3, 64, 64))[0]
    assert torch.allclose(first[0, 5:], grey, atol=1e-4)


def test_normal_model_blends_the_original_latents_like_cfg_denoiser(session, tmp_path):
    from sdtui.engine import sampling
    from sdtui.engine.generate import job_conds
    from sdtui.engine.latents import encode_images, make_noise
    from sdtui.engine.plans import first_pass_plan, make_denoiser

    init_path = _init(tmp_path / "init.png")
    with Image.open(init_path) as im:
        init = encode_images(session.txt2img, [im.convert("RGB")], [5])
    nmask = torch.zeros(1, 1, 8, 8)
    nmask[..., 3:6, 2:5] = 1
    keep = (1 - nmask).bool().expand_as(init)
    for sampler in ("Euler a", "DDIM"):
        p = GenerationParams(**{**TINY, "steps": 4}, sampler=sampler, init_image=str(init_path))
        plan = first_pass_plan(p)
        denoised: list[torch.Tensor] = []
        denoiser = make_denoiser(
            session,
            session.txt2img,
            job_conds(session, p),
            plan,
            lambda call, calls, d, into=denoised: into.append(d.clone()),
        )
        denoiser.blend = sampling.LatentBlend(init, nmask)
        seen, handle = _unet_inputs(session)
        try:
            with torch.inference_mode():
                out = sampling.sample(
                    denoiser,
                    plan,
                    make_noise(5, (4, 8, 8), None, 0)[None],
                    [torch.Generator().manual_seed(5)],
                    init,
                    session.scheduler_config,
                )
        finally:
            handle.remove()
        # after sampling: samples * nmask + init_latent * mask
        assert torch.equal(out[keep], init[keep])
        assert not torch.allclose(out[~keep], init[~keep], atol=1e-2)
        if sampler == "Euler a":  # k-diffusion: the denoised latents blended after each call
            assert all(torch.allclose(d[keep], init[keep]) for d in denoised)
        else:  # CFGDenoiserTimesteps (mask_before_denoising): the input blended before it
            assert all(torch.allclose(x[0][keep[0]], init[0][keep[0]]) for x in seen)


def test_masked_content_starts_the_hole_differently(session, tmp_path):
    init = _init(tmp_path / "init.png")
    mask = _mask(tmp_path / "mask.png", BOX)
    inside = _inside(BOX)
    outs = {}
    # "fill" changes the image before it is encoded: the next test, and outpainting's
    for fill in ("original", "latent noise", "latent nothing"):
        params = GenerationParams(
            **TINY, init_image=str(init), mask=str(mask), mask_blur=0, inpainting_fill=fill
        )
        done, _ = run_job(session, params, tmp_path / fill.replace(" ", "-"))
        outs[fill] = pixels(done.paths[0])
        assert np.array_equal(outs[fill][~inside], pixels(init)[~inside])
        pairs = parse_infotext(read_infotext(done.paths[0])).pairs
        assert pairs.get("Masked content") == (None if fill == "original" else fill)
    # the latents of the hole replaced by noise or zeros: another start, another picture
    # (the demo model's random weights follow their input only weakly, so the gaps are small)
    for fill in ("latent noise", "latent nothing"):
        assert np.abs(outs[fill][inside] - outs["original"][inside]).mean() > 0.5, fill
    assert np.abs(outs["latent noise"][inside] - outs["latent nothing"][inside]).mean() > 0.5


def test_masked_content_fill_paints_the_hole_from_around_it_before_encoding(tmp_path):
    init = Image.open(_init(tmp_path / "init.png")).convert("RGB")
    init.paste((255, 0, 255), BOX)  # something in the hole that the fill paints over
    mask = Image.open(_mask(tmp_path / "mask.png", BOX))
    inside = _inside(BOX)
    jobs = {
        fill: inpaint.prepare(
            GenerationParams(**TINY, init_image="x", mask="m", mask_blur=0, inpainting_fill=fill),
            init,
            mask,
            print,
        )
        for fill in ("fill", "original")
    }
    original, filled = (np.asarray(jobs[k].image, dtype=np.int16) for k in ("original", "fill"))
    assert np.array_equal(original, np.asarray(init))  # "original": the image as it is
    assert np.array_equal(filled[~inside], original[~inside])
    assert np.abs(filled[inside] - original[inside]).mean() > 20
    # masking.fill blurs what is around: the hole's middle is near the colours at its edge
    edge = np.concatenate([original[23, 16:40], original[48, 16:40]])
    assert np.abs(filled[36, 28] - edge.mean(axis=0)).max() < 40


def test_latent_noise_is_the_jobs_first_seeds_noise_as_a1111_draws_it():
    from sdtui.engine.generate import masked_content
    from sdtui.engine.latents import make_noise

    p = GenerationParams(**TINY, batch_size=2, batch_count=2, inpainting_fill="latent noise")
    latents = torch.ones(2, 4, 8, 8)
    latmask = torch.zeros(1, 1, 8, 8)
    latmask[..., :4, :] = 1
    # the second batch (images 2, 3): A1111's init draws from all_seeds[0:batch_size]
    out = masked_content(p, latents, latmask, [2, 3], (4, 8, 8))
    for k in range(2):
        assert torch.equal(out[k, :, :4], make_noise(5 + k, (4, 8, 8), None, 0)[:, :4])
        assert (out[k, :, 4:] == 1).all()
    nothing = masked_content(
        p.replace(inpainting_fill="latent nothing"), latents, latmask, [0, 1], (4, 8, 8)
    )
    assert (nothing[:, :, :4] == 0).all() and (nothing[:, :, 4:] == 1).all()


def test_invert_mask_and_the_infotext_read_back(inpaint_session, tmp_path):
    init = _init(tmp_path / "init.png")
    mask = _mask(tmp_path / "mask.png", (0, 0, 64, 32))  # white = the top half
    params = GenerationParams(
        **TINY,
        init_image=str(init),
        mask=str(mask),
        mask_blur=2,
        inpainting_mask_invert=True,
        inpainting_fill="latent nothing",
    )
    done, _ = run_job(inpaint_session, params, tmp_path)
    out, original = pixels(done.paths[0]), pixels(init)
    # inverted: the top half is kept (the blur reaches 2 * int(2.5 * 2 + 0.5) / 2 = 5 rows)
    assert np.array_equal(out[:26], original[:26])
    assert np.abs(out[40:] - original[40:]).mean() > 5
    pairs = parse_infotext(read_infotext(done.paths[0])).pairs
    assert pairs["Mask blur"] == "2"
    assert pairs["Mask mode"] == "Inpaint not masked"
    assert pairs["Masked content"] == "latent nothing"
    back = params_from_image(done.paths[0])
    assert (back.mask_blur, back.inpainting_mask_invert, back.inpainting_fill) == (
        2,
        True,
        "latent nothing",
    )
    assert not back.inpaint_full_res and "Conditional mask weight" in back.extra


def test_outpainting_grows_the_canvas_and_keeps_the_original(session, tmp_path):
    init = _init(tmp_path / "init.png")
    params = GenerationParams(
        **TINY,
        init_image=str(init),
        outpaint_pixels=20,
        outpaint_sides="left,down",
        mask_blur=0,
        inpainting_fill="fill",
    )
    done, events = run_job(session, params, tmp_path)
    out = pixels(done.paths[0])
    assert out.shape == (88, 88, 3)  # 64 + 20 rounded up to a multiple of 8 on each axis
    assert np.array_equal(out[:64, 24:], pixels(init))  # the old area, where it now sits
    assert np.abs(out[70:, :20]).mean() > 5  # the new corner is painted, not left black
    pairs = parse_infotext(read_infotext(done.paths[0])).pairs
    assert pairs["Size"] == "88x88" and pairs["Mask blur"] == "0"
    assert pairs["Masked content"] == "fill"
    assert params_from_image(done.paths[0]).width == 88


def test_outpainting_with_the_blur_keeps_the_original_away_from_the_seam(session, tmp_path):
    init = _init(tmp_path / "init.png")
    params = GenerationParams(
        **TINY, init_image=str(init), outpaint_pixels=16, outpaint_sides="right", mask_blur=4
    )
    done, events = run_job(session, params, tmp_path)
    out = pixels(done.paths[0])
    assert out.shape == (64, 80, 3)
    # the mask reaches 4 px into the image, its blur 10 more (kernel 21): 14 px from the seam
    assert np.array_equal(out[:, :50], pixels(init)[:, :50])
    assert not np.array_equal(out[:, 56:64], pixels(init)[:, 56:64])
    logs = [e.text for e in events if isinstance(e, msg.Log)]
    assert any("'fill'" in t for t in logs)  # masked content "original" on a black canvas


def test_a_mask_of_another_size_is_resized_as_a1111_does(inpaint_session, tmp_path):
    init = _init(tmp_path / "init.png")
    mask = _mask(tmp_path / "half.png", (8, 12, 20, 24), (32, 32))  # BOX at half the size
    params = GenerationParams(**TINY, init_image=str(init), mask=str(mask), mask_blur=0)
    done, events = run_job(inpaint_session, params, tmp_path)
    out, original = pixels(done.paths[0]), pixels(init)
    far = ~_inside((8, 16, 48, 56))  # the box stretched, with Lanczos's reach (3 px at 32)
    assert np.array_equal(out[far], original[far])
    assert np.abs(out[_inside(BOX)] - original[_inside(BOX)]).mean() > 5
    logs = [e.text for e in events if isinstance(e, msg.Log)]
    assert any("the mask is 32x32 and the init image 64x64" in t for t in logs)


def test_a_blank_mask_with_only_masked_runs_as_img2img(session, tmp_path):
    init = _init(tmp_path / "init.png")
    blank = tmp_path / "blank.png"
    Image.new("L", (64, 64), 0).save(blank)
    params = GenerationParams(**TINY, init_image=str(init), mask=str(blank), inpaint_full_res=True)
    done, events = run_job(session, params, tmp_path)
    assert Image.open(done.paths[0]).size == (64, 64)
    assert "Inpaint area" not in parse_infotext(read_infotext(done.paths[0])).pairs
    assert any("the mask is blank" in e.text for e in events if isinstance(e, msg.Log))


def test_a_mask_that_is_not_an_image_is_refused_by_name(session, tmp_path):
    init = _init(tmp_path / "init.png")
    bad = tmp_path / "mask.png"
    bad.write_text("not a picture")
    params = GenerationParams(**TINY, init_image=str(init), mask=str(bad))
    with pytest.raises(UserError, match=r"mask .*mask\.png is not an image .*give a PNG"):
        run_job(session, params, tmp_path)
    with pytest.raises(UserError, match=r"mask .*does not exist"):
        run_job(session, params.replace(mask=str(tmp_path / "missing.png")), tmp_path)


def test_a_mask_over_the_pixel_limit_is_refused_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (2000, 1000)).save(big)
    with pytest.raises(UserError, match=r"mask .*big\.png is 2000x1000 .*max_image_megapixels"):
        inpaint.load_mask(str(big), megapixels=1)
