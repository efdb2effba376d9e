"""Extras upscaling: names, spandrel loading, tiling, out-of-memory halving, files, folders.

No real weights can be downloaded here, so the models are built with seeded random weights in
the layouts the real files use: an original-ESRGAN ("model.0.weight") RRDBNet, the same net
in BasicSR/Real-ESRGAN keys under "params_ema", and a compact SRVGG net under "params".
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from sdtui.engine import upscale as up
from sdtui.errors import UserError
from sdtui.params import UpscaleParams
from sdtui.upscalers import (
    display_name,
    list_upscalers,
    resolve_upscaler,
    scale_hint,
)

W, H = 48, 40  # source size used throughout
TOL = 0.02  # max abs difference tiled vs untiled, on [0, 1]


# -- fixtures -------------------------------------------------------------------------------


def _rrdb_old_keys(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small ESRGAN RRDBNet (16 features, 2 blocks, 4x) with original-ESRGAN keys."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=4)
    with torch.no_grad():  # give the output some contrast around mid-grey
        net.model[-1].weight.mul_(2.0)
        net.model[-1].bias.fill_(0.5)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _to_basicsr_keys(old: dict[str, torch.Tensor], num_blocks: int = 2) -> dict[str, torch.Tensor]:
    """The same weights as Real-ESRGAN's RealESRGAN_x4plus.pth names them."""
    new: dict[str, torch.Tensor] = {}
    fixed = {
        "model.0": "conv_first",
        f"model.1.sub.{num_blocks}": "conv_body",
        "model.3": "conv_up1",
        "model.6": "conv_up2",
        "model.8": "conv_hr",
        "model.10": "conv_last",
    }
    for k, v in old.items():
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)", k)
        if m:
            i, j, c, wb = m.groups()
            new[f"body.{i}.rdb{j}.conv{c}.{wb}"] = v
            continue
        base, wb = k.rsplit(".", 1)
        new[f"{fixed[base]}.{wb}"] = v
    return new


def _compact(seed: int = 1, scale: int = 4) -> dict[str, torch.Tensor]:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=scale)
    return {k: v.clone() for k, v in net.state_dict().items()}


def _source(seed: int = 3, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (rng.random((H // 4, W // 4, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(small, "RGB").resize((W, H), Image.Resampling.BICUBIC)
    noise = (rng.random((H, W, 3)) * 40 - 20).astype(np.int16)
    arr = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize((W, H))
        img = Image.merge("RGBA", (*img.split(), alpha))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    (root / "ESRGAN").mkdir()
    (root / "RealESRGAN").mkdir()
    old = _rrdb_old_keys()
    torch.save(old, root / "ESRGAN" / "ESRGAN_4x.pth")
    torch.save({"params_ema": _to_basicsr_keys(old)}, root / "RealESRGAN" / "RealESRGAN_x4plus.pth")
    torch.save({"params": _compact()}, root / "RealESRGAN" / "realesr-general-x4v3.pth")
    from safetensors.torch import save_file

    save_file(_compact(seed=2, scale=2), str(root / "ESRGAN" / "2x_Compact.safetensors"))
    return root


@pytest.fixture()
def src_png(tmp_path: Path) -> Path:
    path = tmp_path / "00001-1234.png"
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "a red fox, snow\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 48x40, Model: demo",
    )
    _source().save(path, pnginfo=info)
    return path


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()) / 255


# -- names ----------------------------------------------------------------------------------


def test_list_names_like_a1111(models_dir: Path) -> None:
    entries = list_upscalers(models_dir)
    names = [e.name for e in entries]
    assert names == [
        "Lanczos",
        "Nearest",
        "2x_Compact",
        "ESRGAN_4x",
        "R-ESRGAN General 4xV3",
        "R-ESRGAN 4x+",
    ]
    assert [e.kind for e in entries][:3] == ["builtin", "builtin", "ESRGAN"]
    assert entries[0].path is None and entries[-1].kind == "RealESRGAN"
    assert [e.scale_hint for e in entries[2:]] == [2, 4, 4, 4]
    assert display_name(Path("RealESRGAN_x4plus_anime_6B.pth")) == "R-ESRGAN 4x+ Anime6B"
    assert display_name(Path("RealESRGAN_x2plus.pth")) == "R-ESRGAN 2x+"
    assert display_name(Path("4x-UltraSharp.pth")) == "4x-UltraSharp"
    assert scale_hint("DAT x3") == 3 and scale_hint("Lanczos") is None


def test_list_other_folders_duplicates_and_missing(tmp_path: Path) -> None:
    assert [e.name for e in list_upscalers(tmp_path / "nope")] == ["Lanczos", "Nearest"]
    for folder in ("DAT", "SwinIR", "HAT", "ESRGAN"):
        (tmp_path / folder).mkdir()
    (tmp_path / "DAT" / "DAT_x4.pth").write_bytes(b"x")
    (tmp_path / "SwinIR" / "SwinIR_4x.safetensors").write_bytes(b"x")
    (tmp_path / "HAT" / "notes.txt").write_text("not a model")
    (tmp_path / "ESRGAN" / "DAT_x4.pt").write_bytes(b"x")
    entries = list_upscalers(tmp_path)
    assert [(e.name, e.kind) for e in entries[2:]] == [
        ("DAT_x4", "ESRGAN"),
        ("DAT_x4 (DAT)", "DAT"),
        ("SwinIR_4x", "SwinIR"),
    ]


def test_resolve_by_name_stem_file_and_path(models_dir: Path) -> None:
    entries = list_upscalers(models_dir)
    want = models_dir / "RealESRGAN" / "RealESRGAN_x4plus.pth"
    for name in ("R-ESRGAN 4x+", "r-esrgan 4x+", "RealESRGAN_x4plus", "RealESRGAN_x4plus.pth"):
        assert resolve_upscaler(name, entries).path == want
    assert resolve_upscaler(str(want), entries).name == "R-ESRGAN 4x+"
    assert resolve_upscaler("lanczos", entries).name == "Lanczos"


def test_resolve_unknown_lists_and_says_where(models_dir: Path) -> None:
    entries = list_upscalers(models_dir)
    with pytest.raises(UserError) as e:
        resolve_upscaler("SwinIR 4x", entries, models_dir=models_dir)
    text = str(e.value)
    assert 'Unknown upscaler "SwinIR 4x"' in text
    assert '"R-ESRGAN 4x+"' in text and '"Lanczos"' in text
    assert str(models_dir / "ESRGAN") in text and ".pth" in text
    with pytest.raises(UserError, match="does not exist"):
        resolve_upscaler("/no/such/dir/model.pth", entries)


# -- loading and models ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rel", "scale"),
    [
        ("ESRGAN/ESRGAN_4x.pth", 4),
        ("RealESRGAN/RealESRGAN_x4plus.pth", 4),
        ("RealESRGAN/realesr-general-x4v3.pth", 4),
        ("ESRGAN/2x_Compact.safetensors", 2),
    ],
)
def test_load_through_spandrel(models_dir: Path, rel: str, scale: int) -> None:
    model = up.load_upscaler(models_dir / rel, "cpu")
    assert model.scale == scale and model.input_channels == 3
    out = up.upscale_tensor(model, _to_tensor(_source()), tile=0, overlap=0)
    assert out.shape == (1, 3, H * scale, W * scale)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_old_and_basicsr_keys_give_the_same_model(models_dir: Path) -> None:
    x = _to_tensor(_source())
    a = up.upscale_tensor(up.load_upscaler(models_dir / "ESRGAN/ESRGAN_4x.pth"), x, 0, 0)
    b = up.upscale_tensor(
        up.load_upscaler(models_dir / "RealESRGAN/RealESRGAN_x4plus.pth"), x, 0, 0
    )
    assert torch.allclose(a, b, atol=1e-5)


def test_cache_holds_one_model(models_dir: Path) -> None:
    a = up.load_upscaler(models_dir / "ESRGAN/ESRGAN_4x.pth")
    assert up.load_upscaler(models_dir / "ESRGAN/ESRGAN_4x.pth") is a
    b = up.load_upscaler(models_dir / "RealESRGAN/realesr-general-x4v3.pth")
    assert b is not a and up._cached is not None and up._cached[1] is b
    up.unload_upscaler()
    assert up._cached is None


def test_not_a_model_is_a_plain_error(tmp_path: Path) -> None:
    text = tmp_path / "4x-Fake.pth"
    text.write_text("<html>404 Not Found</html>\n")
    with pytest.raises(UserError) as e:
        up.load_upscaler(text)
    assert str(e.value).startswith(f"{text} is not an upscaler model")
    other = tmp_path / "lora.pth"
    torch.save({"lora_unet_down.weight": torch.zeros(4, 4)}, other)
    with pytest.raises(UserError, match="is not an upscaler model"):
        up.load_upscaler(other)
    with pytest.raises(UserError, match="does not exist"):
        up.load_upscaler(tmp_path / "missing.pth")


# -- tiling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["ESRGAN/ESRGAN_4x.pth", "RealESRGAN/realesr-general-x4v3.pth"])
def test_tiled_matches_untiled(models_dir: Path, rel: str) -> None:
    model = up.load_upscaler(models_dir / rel)
    x = _to_tensor(_source())
    whole = up.upscale_tensor(model, x, tile=0, overlap=0)
    tiled = up.upscale_tensor(model, x, tile=24, overlap=8)  # 3 x 2 tiles
    assert tiled.shape == whole.shape
    assert float((tiled - whole).abs().max()) < TOL
    # uint8 output is the same picture
    as_bytes = up.upscale_tensor(model, x, tile=24, overlap=8, out_dtype=torch.uint8)
    assert as_bytes.dtype == torch.uint8
    assert float((as_bytes.float() / 255 - tiled).abs().max()) <= 0.5 / 255 + 1e-6


def test_overlap_is_what_hides_the_seams(models_dir: Path) -> None:
    model = up.load_upscaler(models_dir / "ESRGAN/ESRGAN_4x.pth")
    x = _to_tensor(_source())
    whole = up.upscale_tensor(model, x, tile=0, overlap=0)
    hard = float((up.upscale_tensor(model, x, tile=24, overlap=0) - whole).abs().max())
    soft = float((up.upscale_tensor(model, x, tile=24, overlap=8) - whole).abs().max())
    assert soft < hard


def test_out_of_memory_halves_the_tile(models_dir: Path) -> None:
    model = up.load_upscaler(models_dir / "ESRGAN/ESRGAN_4x.pth")
    x = _to_tensor(_source())
    whole = up.upscale_tensor(model, x, tile=0, overlap=0)
    seen: list[int] = []
    logs: list[str] = []

    def oom_at_48(tile_px: int) -> None:
        seen.append(tile_px)
        if tile_px >= 48:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    out = up.upscale_tensor(model, x, tile=48, overlap=8, log=logs.append, before_tile=oom_at_48)
    assert seen[0] == 48 and set(seen[1:]) == {24}
    assert logs == ["Out of GPU memory with 48 px tiles; retrying with 24 px tiles."]
    assert float((out - whole).abs().max()) < TOL

    def always(_: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory")

    logs.clear()
    with pytest.raises(UserError, match="Out of GPU memory even with 16 px tiles"):
        up.upscale_tensor(model, x, tile=64, overlap=8, log=logs.append, before_tile=always)
    assert logs == [
        "Out of GPU memory with 48 px tiles; retrying with 24 px tiles.",
        "Out of GPU memory with 24 px tiles; retrying with 16 px tiles.",
    ]


# -- images ---------------------------------------------------------------------------------


def _params(tmp_path: Path, img: Image.Image, **kw: object) -> UpscaleParams:
    path = tmp_path / "src.png"
    img.save(path)
    return UpscaleParams(image=str(path), **kw)  # type: ignore[arg-type]


def test_model_upscale_exact_size(tmp_path: Path, models_dir: Path) -> None:
    src = _source()
    logs: list[str] = []
    p = _params(tmp_path, src, upscaler="R-ESRGAN 4x+", scale=4, tile=32)
    out = up.upscale_image(p, models_dir, log=logs.append)
    assert out.size == (W * 4, H * 4) and out.mode == "RGB"
    assert any("pass 1" in line for line in logs)
    out2 = up.upscale_image(p.replace(scale=2.5), models_dir, log=logs.append)
    assert out2.size == (120, 100)


def test_repeated_passes_for_a_large_factor(tmp_path: Path, models_dir: Path) -> None:
    logs: list[str] = []
    p = _params(tmp_path, _source(), upscaler="2x_Compact", scale=5, tile=0)
    out = up.upscale_image(p, models_dir, log=logs.append)
    assert out.size == (240, 200)
    passes = [line for line in logs if ": pass " in line]
    assert len(passes) == 3  # 2x, 2x, 2x, then Lanczos down to 5x
    assert "pass 3, 120x100" in passes[2]


def test_lanczos_and_nearest(tmp_path: Path, models_dir: Path) -> None:
    src = _source()
    for name, resample in (("Lanczos", Image.Resampling.LANCZOS), ("Nearest", 0)):
        out = up.upscale_image(_params(tmp_path, src, upscaler=name, scale=3), models_dir)
        assert out.size == (144, 120)
        assert _diff(out, src.resize((144, 120), resample=resample)) == 0


def test_scale_to_size_crops_like_a1111(tmp_path: Path, models_dir: Path) -> None:
    src = _source()
    p = _params(tmp_path, src, upscaler="Lanczos", target_width=100, target_height=100)
    out, extra = up._upscale(src, p, models_dir, device="cpu", log=lambda _: None)
    assert out.size == (100, 100)
    assert extra == {"Postprocess crop to": "100x100"}
    expected = src.resize((120, 100), Image.Resampling.LANCZOS).crop((10, 0, 110, 100))
    assert _diff(out, expected) == 0
    same_aspect = p.replace(target_width=96, target_height=80)
    assert up._upscale(src, same_aspect, models_dir, device="cpu", log=print)[1] == {}
    with pytest.raises(UserError, match="both target width and height"):
        up.upscale_image(p.replace(target_height=None), models_dir)


def test_second_upscaler_blends(tmp_path: Path, models_dir: Path) -> None:
    src = _source()
    p = _params(
        tmp_path, src, upscaler="Lanczos", scale=2, upscaler_2="Nearest", upscaler_2_visibility=0.3
    )
    out = up.upscale_image(p, models_dir)
    size = (96, 80)
    expected = Image.blend(
        src.resize(size, Image.Resampling.LANCZOS), src.resize(size, Image.Resampling.NEAREST), 0.3
    )
    assert _diff(out, expected) <= 1 / 255
    # "None" or visibility 0 means no second upscaler
    assert _diff(up.upscale_image(p.replace(upscaler_2="None"), models_dir), expected) > 0
    model = up.upscale_image(
        p.replace(upscaler_2="ESRGAN_4x", upscaler_2_visibility=1.0, tile=0), models_dir
    )
    alone = up.upscale_image(p.replace(upscaler="ESRGAN_4x", upscaler_2=None, tile=0), models_dir)
    assert _diff(model, alone) <= 1 / 255


def test_modes_are_kept(tmp_path: Path, models_dir: Path) -> None:
    rgba = _source(mode="RGBA")
    out = up.upscale_image(_params(tmp_path, rgba, upscaler="ESRGAN_4x", tile=0), models_dir)
    assert out.mode == "RGBA" and out.size == (W * 4, H * 4)
    alpha = rgba.getchannel("A").resize(out.size, Image.Resampling.LANCZOS)
    assert _diff(out.getchannel("A"), alpha) == 0
    gray = up.upscale_image(_params(tmp_path, _source(mode="L"), upscaler="Lanczos"), models_dir)
    assert gray.mode == "L"


# -- files and folders ----------------------------------------------------------------------


def test_upscale_file_keeps_and_extends_infotext(src_png: Path, models_dir: Path) -> None:
    saved: list[tuple[Image.Image, str]] = []

    def save(img: Image.Image, text: str) -> Path:
        saved.append((img, text))
        return Path("/out/00001.png")

    p = UpscaleParams(image=str(src_png), upscaler="R-ESRGAN 4x+", scale=2, tile=32)
    assert up.upscale_file(p, models_dir, save) == Path("/out/00001.png")
    img, text = saved[0]
    assert img.size == (96, 80)
    lines = text.split("\n")
    assert lines[0] == "a red fox, snow" and lines[1] == "Negative prompt: blurry"
    assert lines[2] == (
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 48x40, Model: demo, "
        "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+"
    )
    assert img.info["parameters"].startswith("a red fox")
    assert (
        img.info["postprocessing"]
        == "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+"
    )


def test_upscale_file_reads_the_source_infotext_as_a1111_does(
    tmp_path: Path, models_dir: Path
) -> None:
    """The one infotext reader (sdtui.infotext): a PNG with both a ``parameters`` chunk and
    an EXIF UserComment gives the comment, as A1111's read_info_from_image (and `sdtui info`)."""
    from sdtui.infotext import read_infotext

    line = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 48x40"
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + f"from exif\n{line}".encode("utf-16-be")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"from the chunk\n{line}")
    src = tmp_path / "both.png"
    _source().save(src, pnginfo=info, exif=exif.tobytes())
    assert read_infotext(src) == f"from exif\n{line}"
    saved: list[tuple[Image.Image, str]] = []
    p = UpscaleParams(image=str(src), upscaler="Nearest", scale=2)
    up.upscale_file(p, models_dir, lambda img, t: saved.append((img, t)) or Path("x"))
    img, text = saved[0]
    assert text == (f"from exif\n{line}, Postprocess upscale by: 2, Postprocess upscaler: Nearest")
    assert img.info["parameters"] == f"from exif\n{line}"


def test_upscale_file_without_infotext_and_bad_input(tmp_path: Path, models_dir: Path) -> None:
    texts: list[str] = []
    p = _params(tmp_path, _source(), upscaler="Nearest", target_width=96, target_height=80)
    up.upscale_file(p, models_dir, lambda img, t: texts.append(t) or Path("x"))
    assert texts == ["Postprocess upscale to: 96x80, Postprocess upscaler: Nearest"]
    notes = tmp_path / "notes.png"
    notes.write_text("this is text")
    with pytest.raises(UserError, match=re.escape(f"{notes} is not an image")):
        up.upscale_file(p.replace(image=str(notes)), models_dir, lambda i, t: Path("x"))
    with pytest.raises(UserError, match="scale 9"):
        up.upscale_file(
            p.replace(scale=9.0, target_width=None, target_height=None),
            models_dir,
            lambda i, t: Path("x"),
        )


def test_folder_reports_bad_files_and_does_the_rest(tmp_path: Path, models_dir: Path) -> None:
    folder = tmp_path / "batch"
    folder.mkdir()
    _source(1).save(folder / "a.png")
    (folder / "b.png").write_text("not really a png")
    _source(2).save(folder / "c.jpg")
    (folder / "captions.txt").write_text("a fox")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def save(img: Image.Image, text: str) -> Path:
        path = out_dir / f"{len(list(out_dir.iterdir())):05}.png"
        img.save(path)
        return path

    logs: list[str] = []
    p = UpscaleParams(image=str(folder), upscaler="ESRGAN_4x", scale=2, tile=0)
    report = up.upscale_folder(p, models_dir, save, log=logs.append)
    assert [q.name for q in report.saved] == ["00000.png", "00001.png"]
    assert [f.name for f, _ in report.failed] == ["b.png"]
    assert "is not an image" in report.failed[0][1]
    assert [q.name for q in report.skipped] == ["captions.txt"]
    assert report.summary() == "2 upscaled, 1 failed, 1 skipped (not images)"
    assert any("b.png" in line and "is not an image" in line for line in logs)
    with Image.open(out_dir / "00001.png") as im:
        assert im.size == (96, 80)

    with pytest.raises(UserError, match="Unknown upscaler"):
        up.upscale_folder(p.replace(upscaler="nope"), models_dir, save)
    assert len(list(out_dir.iterdir())) == 2


def test_upscale_job_saves_like_a1111_extras(src_png: Path, tmp_path: Path) -> None:
    """The engine worker's entry: outputs/extras-images, source parameters kept."""
    import types

    from sdtui.ipc import protocol as msg

    settings = types.SimpleNamespace(outputs=tmp_path / "outputs", models=tmp_path / "models")
    events: list[object] = []
    p = UpscaleParams(image=str(src_png), upscaler="Lanczos", scale=2)
    paths = up.upscale_job(p, settings, "cpu", 5, events.append)
    assert len(paths) == 1 and Path(paths[0]).parent.name == "extras-images"
    saved = [e for e in events if isinstance(e, msg.ImageSaved)]
    assert len(saved) == 1 and saved[0].path == paths[0]
    assert saved[0].infotext.endswith("Postprocess upscale by: 2, Postprocess upscaler: Lanczos")
    with Image.open(paths[0]) as im:
        assert im.size == (96, 80)
        assert im.info["parameters"].startswith("a red fox, snow")
        assert (
            im.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
        )


def test_listing_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, sdtui.upscalers; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
