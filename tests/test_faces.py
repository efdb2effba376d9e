"""Face restoration (GFPGAN, CodeFormer): the A1111 files, loading, align / restore / paste.

No real weights can be downloaded here, so GFPGAN and CodeFormer are their real spandrel
architectures with seeded random weights, saved as the official files are
({"params_ema": ...} in GFPGANv1.4.pth and codeformer-v0.1.0.pth), and loaded through the
same code as the real files. The parsing net (parsing_parsenet.pth) is random too.

The one test double is the face detector (``FixedFaces``): with random weights RetinaFace
finds no faces, and its real weights (detection_Resnet50_Final.pth) cannot exist here, so the
tests that restore faces are told where the faces are. RetinaFace itself is loaded from a
file in the original layout and run on an image (``test_retinaface_...``).

The restoring tests are ``slow``: GFPGAN and CodeFormer at their one size, 512 x 512, take
about 9 and 17 CPU-seconds a face here, the parsing net 10.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdtui import face_files as ff
from sdtui.config import Settings
from sdtui.engine import faces as fc
from sdtui.engine import upscale as up
from sdtui.engine.face_nets import ParseNet, RetinaFace
from sdtui.errors import UserError
from sdtui.params import GenerationParams, UpscaleParams

W, H = 256, 192
FACE_SCALE = 0.25  # the face is the 512 template at a quarter size: eyes 31 px apart
FACE_CENTRE = (128.0, 96.0)


class FixedFaces:
    """The detector test double: the faces it was given, and the sizes it was asked about."""

    def __init__(self, faces: list[fc.Face]) -> None:
        self.faces = faces
        self.sizes: list[tuple[int, int]] = []

    def detect(self, image: Image.Image) -> list[fc.Face]:
        self.sizes.append(image.size)
        return self.faces


def _face(scale: float = FACE_SCALE, centre: tuple[float, float] = FACE_CENTRE) -> fc.Face:
    pts = (fc.FFHQ_TEMPLATE - 256.0) * scale + np.array(centre)
    x0, y0 = pts.min(0) - 10
    x1, y1 = pts.max(0) + 10
    return fc.Face((x0, y0, x1, y1), 0.99, tuple((float(x), float(y)) for x, y in pts))


def _image() -> Image.Image:
    """A smooth picture (no detector weights: what it shows does not matter)."""
    y, x = np.mgrid[0:H, 0:W]
    rgb = np.stack([x * 255 / W, y * 255 / H, 128 + 60 * np.sin(x / 9.0) * np.cos(y / 7.0)], -1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (np.asarray(a).astype(int) != np.asarray(b).astype(int)).any(-1)


def _region_mask(face: fc.Face, width: int = W, height: int = H) -> np.ndarray:
    x0, y0, x1, y1 = fc.face_region(fc.align_face(face), width, height)
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An A1111 models/ folder: GFPGAN v1.4 and CodeFormer with random weights, in their
    original .pth layouts, and the parsing net; no detector weights."""
    from spandrel.architectures.GFPGAN import GFPGAN
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    root = tmp_path_factory.mktemp("a1111") / "models"
    (root / "GFPGAN").mkdir(parents=True)
    (root / "Codeformer").mkdir()
    torch.manual_seed(0)
    gfpgan = GFPGAN(
        out_size=512,
        num_style_feat=512,
        channel_multiplier=2,
        decoder_load_path=None,
        fix_decoder=False,
        num_mlp=8,
        input_is_latent=True,
        different_w=True,
        narrow=1,
        sft_half=True,
    )
    torch.save({"params_ema": gfpgan.state_dict()}, root / "GFPGAN" / "GFPGANv1.4.pth")
    del gfpgan
    codeformer = CodeFormer(
        dim_embd=512,
        n_head=8,
        n_layers=9,
        codebook_size=1024,
        latent_size=256,
        connect_list=["32", "64", "128", "256"],
        fix_modules=["quantize", "generator"],
    )
    torch.save(
        {"params_ema": codeformer.state_dict()}, root / "Codeformer" / "codeformer-v0.1.0.pth"
    )
    del codeformer
    return root


@pytest.fixture(scope="module")
def gfpgan_full(models: Path) -> Image.Image:
    """The test image with its one face restored by GFPGAN at full visibility."""
    return fc.restore_faces(_image(), "GFPGAN", models, detector=FixedFaces([_face()]), log=print)


# -- the files ------------------------------------------------------------------------------


def test_missing_weights_are_one_message_naming_the_files_and_folders(tmp_path: Path) -> None:
    models = tmp_path / "models"
    with pytest.raises(UserError) as e:
        ff.check_face_weights(["GFPGAN"], models)
    text = str(e.value)
    assert "GFPGANv1.4.pth (or GFPGANv1.3.pth) in " + str(models / "GFPGAN") in text
    assert "detection_Resnet50_Final.pth" in text and "parsing_parsenet.pth" in text
    assert "downloads nothing" in text
    with pytest.raises(UserError) as e:
        ff.check_face_weights(["CodeFormer"], models)
    assert "codeformer-v0.1.0.pth (or codeformer.pth) in " + str(models / "Codeformer") in str(
        e.value
    )
    # "Restore faces" of a txt2img job, and Extras: before any work, nothing saved
    p = GenerationParams(restore_faces=True, face_restoration_model="GFPGAN")
    with pytest.raises(UserError, match="GFPGANv1.4.pth"):
        fc.check_restore_faces(p, Settings(models_dir=models))
    with pytest.raises(UserError, match="GFPGANv1.4.pth"):
        fc.restore_faces_for_job([_image()], p, Settings(models_dir=models), print)
    src = tmp_path / "src.png"
    _image().save(src)
    saved: list[str] = []
    params = UpscaleParams(image=str(src), scale=2, codeformer_visibility=1.0)
    with pytest.raises(UserError, match="codeformer-v0.1.0.pth"):
        up.upscale_file(params, models, lambda img, text: saved.append(text) or Path("x"))
    assert saved == []


def test_the_files_are_found_where_a1111_keeps_them(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "GFPGAN").mkdir(parents=True)
    (models / "CodeFormer").mkdir()
    for name in ("GFPGANv1.3.pth", "GFPGANv1.4.pth", "detection_Resnet50_Final.pth"):
        (models / "GFPGAN" / name).write_bytes(b"x")
    (models / "CodeFormer" / "codeformer.pth").write_bytes(b"x")
    (models / "CodeFormer" / "parsing_parsenet.pth").write_bytes(b"x")
    assert ff.find_restorer_file("GFPGAN", models) == models / "GFPGAN" / "GFPGANv1.4.pth"
    assert ff.find_restorer_file("CodeFormer", models) == models / "CodeFormer" / "codeformer.pth"
    assert ff.find_helper_file(ff.DETECTOR_FILE, models) == models / "GFPGAN" / ff.DETECTOR_FILE
    assert ff.find_helper_file(ff.PARSER_FILE, models) == models / "CodeFormer" / ff.PARSER_FILE
    ff.check_face_weights(["GFPGAN", "CodeFormer"], models)  # all there: no error
    assert ff.face_files_status(models) == (
        "Face restoration ready: CodeFormer (codeformer.pth), GFPGAN (GFPGANv1.4.pth)."
    )
    (models / "GFPGAN" / ff.DETECTOR_FILE).unlink()
    status = ff.face_files_status(models)
    assert status.startswith("Face restoration found CodeFormer (codeformer.pth), GFPGAN")
    assert "needs detection_Resnet50_Final.pth" in status
    nothing = ff.face_files_status(tmp_path / "none")
    assert nothing.startswith("Face restoration needs codeformer-v0.1.0.pth")
    assert "GFPGANv1.4.pth" in nothing and ff.DETECTOR_FILE in nothing


def test_a_damaged_or_wrong_file_is_named(tmp_path: Path) -> None:
    from spandrel.architectures.Compact import Compact

    models = tmp_path / "models"
    (models / "GFPGAN").mkdir(parents=True)
    path = models / "GFPGAN" / "GFPGANv1.4.pth"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    one_face = FixedFaces([_face()])  # the restorer is loaded once there is a face
    with pytest.raises(UserError) as e:
        fc.restore_faces(_image(), "GFPGAN", models, detector=one_face)
    assert "GFPGANv1.4.pth" in str(e.value)
    torch.save({"params": Compact(num_feat=8, num_conv=2, upscale=2).state_dict()}, path)
    with pytest.raises(UserError, match=r"GFPGANv1\.4\.pth is a .* model, not GFPGAN"):
        fc.restore_faces(_image(), "GFPGAN", models, detector=one_face)
    # facexlib's detector file, damaged
    (models / "GFPGAN" / ff.DETECTOR_FILE).write_bytes(b"\x80\x02 truncated")
    with pytest.raises(UserError, match="detection_Resnet50_Final.pth"):
        fc.face_tools(models)


# -- restoring ------------------------------------------------------------------------------


@pytest.mark.slow
def test_gfpgan_changes_only_the_face(models: Path, gfpgan_full: Image.Image) -> None:
    src = _image()
    changed = _changed(src, gfpgan_full)
    region = _region_mask(_face())
    assert gfpgan_full.size == src.size and gfpgan_full.mode == "RGB"
    assert not changed[~region].any()  # not one pixel away from the face
    assert changed[region].mean() > 0.3  # the random GFPGAN paints over the face
    # no face found: the image as it was, and the restorer does not run
    none = FixedFaces([])
    assert not _changed(src, fc.restore_faces(src, "GFPGAN", models, detector=none)).any()
    assert none.sizes == [(W, H)]


@pytest.mark.slow
def test_extras_visibility_blends_the_restored_faces(
    models: Path, gfpgan_full: Image.Image
) -> None:
    src = _image()
    half = fc.restore_faces_extras(
        src, 0.5, 0.0, 0.0, models, detector=FixedFaces([_face()]), log=print
    )
    # the same face every time (GFPGAN's noise is seeded), blended as A1111 does
    assert np.array_equal(np.asarray(half), np.asarray(Image.blend(src, gfpgan_full, 0.5)))


@pytest.mark.slow
def test_codeformer_restore_faces_for_txt2img(models: Path, tmp_path: Path) -> None:
    """Restore faces after decoding, with the face-parsing blend of A1111's helper."""
    torch.manual_seed(1)
    torch.save(ParseNet().state_dict(), models / "Codeformer" / ff.PARSER_FILE)
    try:
        logged: list[str] = []
        p = GenerationParams(
            restore_faces=True, face_restoration_model="CodeFormer", code_former_weight=0.5
        )
        src = _image()
        src.info["parameters"] = "a face"
        settings = Settings(models_dir=models)
        (out,) = fc.restore_faces_for_job(
            [src], p, settings, logged.append, detector=FixedFaces([_face()])
        )
        assert out.size == src.size and out.info["parameters"] == "a face"
        changed = _changed(src, out)
        assert not changed[~_region_mask(_face())].any()
        assert changed.sum() > 500
        assert logged == ["CodeFormer: restoring 1 face"]
        # "Restore faces" off: the images as they came
        off = p.replace(restore_faces=False)
        assert fc.restore_faces_for_job([src], off, settings, print)[0] is src
    finally:
        (models / "Codeformer" / ff.PARSER_FILE).unlink()
        fc.unload_face_models()


@pytest.mark.parametrize("upscale_first", [False, True])
def test_extras_order_and_infotext(tmp_path: Path, upscale_first: bool) -> None:
    models = tmp_path / "models"
    (models / "GFPGAN").mkdir(parents=True)
    (models / "Codeformer").mkdir()
    # never read: with no face found the restorers are not loaded
    (models / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"x")
    (models / "Codeformer" / "codeformer-v0.1.0.pth").write_bytes(b"x")
    src = tmp_path / "src.png"
    _image().save(src)
    saved: list[tuple[Image.Image, str]] = []

    def save(img: Image.Image, text: str) -> Path:
        saved.append((img, text))
        return tmp_path / "out.png"

    detector = FixedFaces([])  # no face: the order shows in what the detector was given
    params = UpscaleParams(
        image=str(src),
        scale=2,
        gfpgan_visibility=0.25,
        codeformer_visibility=0.8,
        codeformer_weight=0.3,
        upscale_first=upscale_first,
    )
    up.upscale_file(params, models, save, face_detector=detector, log=print)
    img, text = saved[0]
    assert img.size == (2 * W, 2 * H)
    size = (2 * W, 2 * H) if upscale_first else (W, H)
    assert detector.sizes == [size, size]  # GFPGAN, then CodeFormer
    faces = "GFPGAN visibility: 0.25, CodeFormer visibility: 0.8, CodeFormer weight: 0.3"
    upscale = "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert text == (f"{upscale}, {faces}" if upscale_first else f"{faces}, {upscale}")


@pytest.mark.slow
def test_retinaface_loads_the_original_layout_and_finds_faces(tmp_path: Path) -> None:
    """RetinaFace from a file as facexlib's (a "module." prefix, the old pickle format), its
    heads set so every anchor is a confident face with the eyes apart: the detector runs end
    to end and keeps only faces with eyes at least 5 px apart, after NMS."""
    models = tmp_path / "models"
    (models / "Codeformer").mkdir(parents=True)
    torch.manual_seed(0)
    net = RetinaFace()
    with torch.no_grad():
        for head in (*net.ClassHead, *net.BboxHead, *net.LandmarkHead):
            head.conv1x1.weight.zero_()
            head.conv1x1.bias.zero_()
        for head in net.ClassHead:
            head.conv1x1.bias.copy_(torch.tensor([-10.0, 10.0, -10.0, 10.0]))
        for head in net.LandmarkHead:
            head.conv1x1.bias[0] = head.conv1x1.bias[10] = -2.5  # left eye x
            head.conv1x1.bias[2] = head.conv1x1.bias[12] = 2.5  # right eye x
    state = {f"module.{k}": v for k, v in net.state_dict().items()}
    torch.save(
        state, models / "Codeformer" / ff.DETECTOR_FILE, _use_new_zipfile_serialization=False
    )
    tools = fc.face_tools(models)
    assert tools.parser is None
    faces = tools.detector.detect(Image.new("RGB", (64, 64), (90, 120, 150)))
    assert faces
    for face in faces:
        (lx, ly), (rx, ry) = face.landmarks[:2]
        assert ((rx - lx) ** 2 + (ry - ly) ** 2) ** 0.5 >= 5
        assert face.score > 0.97
    fc.unload_face_models()


def test_a_restore_faces_job_without_weights_fails_before_sampling(
    demo_model: Any, tmp_path: Path
) -> None:
    """txt2img "Restore faces" runs through the job: the weights are checked when it starts,
    so a missing file is said before any step is spent, and nothing is saved."""
    from engine_helpers import demo_session, run_job

    models = tmp_path / "models"
    (models / "Codeformer").mkdir(parents=True)
    session = demo_session(demo_model.safetensors, Settings(models_dir=models))
    p = GenerationParams(prompt="a face", steps=2, width=64, height=64, seed=3, restore_faces=True)
    with pytest.raises(UserError) as err:
        run_job(session, p, tmp_path / "out")
    assert "codeformer-v0.1.0.pth" in str(err.value) and "Codeformer" in str(err.value)
    assert not list((tmp_path / "out").rglob("*.png"))
