from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from sdtui.errors import UserError
from sdtui.infotext import (
    append_pairs,
    decode_user_comment,
    format_infotext,
    format_pairs,
    infotext_from_image,
    params_from_image,
    parse_infotext,
    read_infotext,
)
from sdtui.params import GenerationParams

A1111_LINE = (
    "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 2089545485, "
    "Size: 512x512, Model hash: 2c02b20a, Model: 768-v-ema, Denoising strength: 0.75, "
    "Version: v1.10.1"
)


# -- format ----------------------------------------------------------------------------------


def test_format_layout_matches_a1111() -> None:
    text = format_infotext(
        "a cat",
        "ugly",
        {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7, "Model hash": None, "Seed": 1},
    )
    assert (
        text == "a cat\nNegative prompt: ugly\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1"
    )


def test_format_omits_empty_negative_and_quotes_and_bare_keys() -> None:
    text = format_infotext(
        "a cat",
        "",
        {
            "Steps": 20,
            "Lora hashes": "a: 1234, b: 5678",
            "Note": 'say "hi"\nbye',
            "Tiling": "Tiling",
            "Hires upscale": 2,
        },
    )
    assert "Negative prompt" not in text
    assert text.splitlines()[0] == "a cat"
    line = text.splitlines()[1]
    assert line == (
        'Steps: 20, Lora hashes: "a: 1234, b: 5678", Note: "say \\"hi\\"\\nbye", Tiling, '
        "Hires upscale: 2"
    )


def test_format_empty_prompt_is_stripped_like_a1111() -> None:
    assert format_infotext("", "", {"Steps": 1, "Seed": 2, "Size": "8x8"}) == (
        "Steps: 1, Seed: 2, Size: 8x8"
    )
    assert format_pairs({"A": None}) == ""


# -- parse -----------------------------------------------------------------------------------


def test_parse_real_a1111_line() -> None:
    parsed = parse_infotext(f"a photo of a cat\nNegative prompt: blurry\n{A1111_LINE}")
    assert parsed.prompt == "a photo of a cat"
    assert parsed.negative_prompt == "blurry"
    assert parsed.pairs == {
        "Steps": "30",
        "Sampler": "Euler a",
        "Schedule type": "Automatic",
        "CFG scale": "7",
        "Seed": "2089545485",
        "Size": "512x512",
        "Model hash": "2c02b20a",
        "Model": "768-v-ema",
        "Denoising strength": "0.75",
        "Version": "v1.10.1",
    }
    p = GenerationParams.from_infotext_fields(parsed.prompt, parsed.negative_prompt, parsed.pairs)
    assert (p.steps, p.sampler, p.cfg_scale, p.seed) == (30, "Euler a", 7.0, 2089545485)
    assert (p.width, p.height, p.model, p.denoising_strength) == (512, 512, "768-v-ema", 0.75)


def test_parse_old_sampler_name_with_schedule() -> None:
    text = (
        "portrait\nSteps: 25, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 42, "
        "Size: 512x768, Model hash: 45dee52b"
    )
    parsed = parse_infotext(text)
    assert parsed.pairs["Sampler"] == "DPM++ 2M Karras"
    assert parsed.get("Schedule type") == "Automatic"  # A1111's default for a missing key
    assert parsed.get("Clip skip") == "1"
    p = GenerationParams.from_infotext_fields(parsed.prompt, parsed.negative_prompt, parsed.pairs)
    assert (p.sampler, p.schedule_type) == ("DPM++ 2M", "Karras")
    assert (p.width, p.height, p.cfg_scale) == (512, 768, 6.5)


def test_parse_quoted_value_with_comma_and_colon() -> None:
    text = (
        "x\nSteps: 20, Sampler: Euler, Seed: 1, "
        'Lora hashes: "a: 1234, b: 5678", TI hashes: "emb: abcd", Version: v1.9.4'
    )
    pairs = parse_infotext(text).pairs
    assert pairs["Lora hashes"] == "a: 1234, b: 5678"
    assert pairs["TI hashes"] == "emb: abcd"
    assert pairs["Version"] == "v1.9.4"


def test_parse_multiline_prompt_and_negative() -> None:
    text = (
        "line one,\n  line two\nline three\nNegative prompt: bad,\nworse\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
    )
    parsed = parse_infotext(text)
    assert parsed.prompt == "line one,\nline two\nline three"
    assert parsed.negative_prompt == "bad,\nworse"
    assert parsed.pairs["Seed"] == "5"


def test_last_line_with_fewer_than_three_pairs_is_prompt() -> None:
    parsed = parse_infotext("a cat\nstyle: oil, light: soft")
    assert parsed.pairs == {}
    assert parsed.prompt == "a cat\nstyle: oil, light: soft"


def test_parse_prompt_only_and_negative_only() -> None:
    assert parse_infotext("just a prompt").prompt == "just a prompt"
    parsed = parse_infotext("Negative prompt: nope\nSteps: 1, Seed: 2, Size: 8x8")
    assert (parsed.prompt, parsed.negative_prompt) == ("", "nope")


def test_parse_crlf() -> None:
    parsed = parse_infotext("a\r\nNegative prompt: b\r\nSteps: 1, Seed: 2, Size: 8x8\r\n")
    assert (parsed.prompt, parsed.negative_prompt, parsed.pairs["Size"]) == ("a", "b", "8x8")


# -- round trip through GenerationParams ------------------------------------------------------


def _round_trip(p: GenerationParams, **kw: object) -> GenerationParams:
    pairs = p.infotext_pairs(seed=p.seed, model_name=p.model, **kw)  # type: ignore[arg-type]
    text = format_infotext(p.prompt, p.negative_prompt, pairs)
    parsed = parse_infotext(text)
    return GenerationParams.from_infotext_fields(
        parsed.prompt, parsed.negative_prompt, parsed.pairs
    )


@pytest.mark.parametrize(
    "params",
    [
        GenerationParams(
            prompt="a photo of a cat, (detailed:1.2)",
            negative_prompt="blurry, lowres",
            steps=30,
            sampler="Euler a",
            cfg_scale=7.5,
            seed=2089545485,
            width=512,
            height=768,
            model="768-v-ema",
        ),
        GenerationParams(
            prompt="multi\nline: prompt",
            negative_prompt="",
            sampler="DPM++ 2M",
            schedule_type="Karras",
            seed=1,
            model="sub_model",
            init_image="/tmp/in.png",
            denoising_strength=0.55,
        ),
        GenerationParams(
            prompt="castle",
            negative_prompt="neg\nsecond line",
            seed=77,
            enable_hr=True,
            hr_scale=1.5,
            hr_upscaler="R-ESRGAN 4x+",
            hr_second_pass_steps=10,
            hr_denoising_strength=0.4,
        ),
        GenerationParams(prompt="var", seed=10, subseed=99, subseed_strength=0.3),
        GenerationParams(prompt="anime", seed=3, clip_skip=2, vae="kl-f8.safetensors"),
    ],
    ids=["txt2img", "img2img", "hires", "variation", "clip-skip"],
)
def test_round_trip_params(params: GenerationParams) -> None:
    back = _round_trip(params, model_hash="0123456789")
    assert back.replace(init_image=params.init_image) == params
    assert back.extra["Model hash"] == "0123456789"
    assert back.extra["Version"].startswith("sdtui ")


def test_round_trip_extra_pairs_with_quotes() -> None:
    p = GenerationParams(prompt="x", seed=5)
    back = _round_trip(p, extra={"Lora hashes": "a: 1234, b: 5678"})
    assert back.extra["Lora hashes"] == "a: 1234, b: 5678"


# -- reading image files ---------------------------------------------------------------------


def _png(path: Path, text: str | None) -> Path:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def _exif_comment(text: str, *, endian: str = "<") -> bytes:
    """EXIF holding a UserComment the way piexif (A1111) writes it: UNICODE + UTF-16-BE."""
    exif = Image.Exif()
    exif.endian = endian  # piexif writes a big-endian ("MM") TIFF block, Pillow "II"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + text.encode("utf-16-be")
    return exif.tobytes()


def test_read_png_parameters(tmp_path: Path) -> None:
    text = f"a cat, ü 猫\nNegative prompt: dog\n{A1111_LINE}"
    path = _png(tmp_path / "a.png", text)
    assert read_infotext(path) == text
    p = params_from_image(path)
    assert (p.prompt, p.negative_prompt, p.seed) == ("a cat, ü 猫", "dog", 2089545485)


def test_read_png_text_chunk_after_image_data(tmp_path: Path) -> None:
    # some tools write text chunks after IDAT; Pillow only sees them once the image is read
    path = _png(tmp_path / "late.png", None)
    data = path.read_bytes()
    iend = data.rindex(b"IEND") - 4
    import struct
    import zlib

    payload = b"parameters\x00" + b"late prompt\nSteps: 1, Seed: 2, Size: 8x8"
    chunk = (
        struct.pack(">I", len(payload))
        + b"tEXt"
        + payload
        + struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    )
    path.write_bytes(data[:iend] + chunk + data[iend:])
    assert read_infotext(path) == "late prompt\nSteps: 1, Seed: 2, Size: 8x8"


def test_read_png_without_parameters_is_none(tmp_path: Path) -> None:
    path = _png(tmp_path / "plain.png", None)
    assert read_infotext(path) is None
    with pytest.raises(UserError, match="holds no generation parameters"):
        params_from_image(path)


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("WEBP", ".webp")])
def test_read_exif_user_comment(tmp_path: Path, fmt: str, suffix: str, endian: str) -> None:
    text = f"a dog ü\nNegative prompt: cat\n{A1111_LINE}"
    path = tmp_path / f"img{suffix}"
    Image.new("RGB", (8, 8)).save(path, fmt, exif=_exif_comment(text, endian=endian))
    assert read_infotext(path) == text
    assert params_from_image(path).negative_prompt == "cat"


def test_user_comment_decoding_variants() -> None:
    assert decode_user_comment(b"UNICODE\x00" + "héllo".encode("utf-16-be")) == "héllo"
    assert decode_user_comment(b"UNICODE\x00" + "héllo".encode("utf-16-le")) == "héllo"
    assert decode_user_comment(b"ASCII\x00\x00\x00hello\x00") == "hello"
    assert decode_user_comment(b"\x00" * 8 + b"raw utf8").endswith("raw utf8")
    assert decode_user_comment("already text") == "already text"


def test_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("hello, I am text")
    with pytest.raises(UserError, match=r"notes\.png is not an image \("):
        read_infotext(path)


def test_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_infotext(tmp_path / "nope.png")
    with pytest.raises(UserError, match="is a folder"):
        read_infotext(tmp_path)


def test_truncated_png(tmp_path: Path) -> None:
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "p\nSteps: 1, Seed: 2, Size: 8x8")
    Image.new("RGB", (64, 64)).save(buf, "PNG", pnginfo=info)
    data = buf.getvalue()
    path = tmp_path / "cut.png"
    path.write_bytes(data[:40])  # cut inside the text chunk
    with pytest.raises(UserError, match=r"cut\.png is not a readable image .*truncated"):
        read_infotext(path)
    path.write_bytes(data[:-10])  # only the end is missing: the text chunk still reads
    assert read_infotext(path) == "p\nSteps: 1, Seed: 2, Size: 8x8"


# -- one reader, A1111's precedence ----------------------------------------------------------


def _png_with_both(path: Path, chunk: str, comment: str | None) -> Path:
    """A real PNG holding a ``parameters`` tEXt chunk and an eXIf chunk (Pillow writes both),
    the EXIF carrying ``comment`` as its UserComment (or only another tag when None)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", chunk)
    if comment is None:
        exif = Image.Exif()
        exif[0x0131] = "some editor"  # Software: EXIF without a UserComment
        exif_bytes = exif.tobytes()
    else:
        exif_bytes = _exif_comment(comment, endian=">")
    Image.new("RGB", (8, 8)).save(path, pnginfo=info, exif=exif_bytes)
    return path


def test_exif_user_comment_wins_over_png_text_as_in_a1111(tmp_path: Path) -> None:
    """A1111's read_info_from_image takes ``parameters`` first, then replaces it with a
    non-empty EXIF UserComment: the comment wins. The file reader and the reader of an
    opened (and decoded) image, which the Extras upscaler uses, agree."""
    chunk = f"from the text chunk\n{A1111_LINE}"
    comment = f"from the exif comment\nNegative prompt: dog\n{A1111_LINE}"
    path = _png_with_both(tmp_path / "both.png", chunk, comment)
    with Image.open(path) as im:  # the file really holds both
        assert im.info["parameters"] == chunk and "exif" in im.info
    assert read_infotext(path) == comment
    with Image.open(path) as im:
        im.load()
        assert infotext_from_image(im, path) == comment
    assert params_from_image(path).prompt == "from the exif comment"


@pytest.mark.parametrize("comment", ["", None], ids=["empty comment", "no comment"])
def test_png_text_stays_when_the_exif_has_no_comment(tmp_path: Path, comment: str | None) -> None:
    chunk = f"from the text chunk\n{A1111_LINE}"
    path = _png_with_both(tmp_path / "both.png", chunk, comment)
    assert read_infotext(path) == chunk
    with Image.open(path) as im:
        assert infotext_from_image(im) == chunk


def test_reader_of_an_opened_image_sees_late_text_chunks(tmp_path: Path) -> None:
    path = _png(tmp_path / "late.png", None)
    data = path.read_bytes()
    iend = data.rindex(b"IEND") - 4
    import struct
    import zlib

    payload = b"parameters\x00late prompt\nSteps: 1, Seed: 2, Size: 8x8"
    chunk = struct.pack(">I", len(payload)) + b"tEXt" + payload
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + payload))
    path.write_bytes(data[:iend] + chunk + data[iend:])
    with Image.open(path) as im:
        im.load()  # as the upscaler holds it
        assert infotext_from_image(im, path) == "late prompt\nSteps: 1, Seed: 2, Size: 8x8"
    with Image.open(path) as im:  # not decoded yet
        assert infotext_from_image(im, path) == "late prompt\nSteps: 1, Seed: 2, Size: 8x8"


def test_append_pairs_extends_the_parameter_line_or_starts_one() -> None:
    pairs = {"Postprocess upscale by": 2, "Postprocess upscaler": "R-ESRGAN 4x+"}
    line = "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+"
    assert append_pairs(None, pairs) == line
    assert append_pairs("  \n", pairs) == line
    assert append_pairs(f"a cat\n{A1111_LINE}\n", pairs) == f"a cat\n{A1111_LINE}, {line}"
    assert append_pairs("a cat\nNegative prompt: a: b, c: d, e: f", pairs) == (
        f"a cat\nNegative prompt: a: b, c: d, e: f\n{line}"
    )
    assert append_pairs("just a prompt", pairs) == f"just a prompt\n{line}"
    assert append_pairs(None, {"Postprocess upscaler": "x, y"}) == 'Postprocess upscaler: "x, y"'
