"""The X/Y/Z plot core (sdtui.xyz) against A1111's scripts/xyz_grid.py (1.10) and
modules/images.py (image_grid, draw_grid_annotations).

Reference cases are marked with the A1111 function whose behaviour they pin down."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from sdtui.infotext import format_pairs, parse_pairs
from sdtui.params import GenerationParams
from sdtui.xyz import (
    AXIS_TYPES,
    MAX_AXIS_VALUES,
    XYZError,
    XYZPlot,
    _int_range,
    arange,
    axes_from_infotext,
    axis_type,
    cell_index,
    draw_grid_annotations,
    draw_xyz_grid,
    image_grid,
    join_values,
    linspace,
    nothing,
    parse_axis,
    parse_values,
    processing_order,
    split_values,
)

# -- axis value parsing: xyz_grid.py Script.run process_axis, re_range / re_range_count -----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1-5", [1, 2, 3, 4, 5]),  # re_range: range(start, end + 1, 1)
        ("1-10 (+2)", [1, 3, 5, 7, 9]),
        ("10-1 (-3)", [10, 7, 4]),  # range(10, 2, -3): 1 is not reached
        ("5-15 [3]", [5, 10, 15]),  # re_range_count: int(x) for x in np.linspace
        ("0-10 [4]", [0, 3, 6, 10]),  # linspace 3.33, 6.67 truncated by int()
        ("1, 3-4, 7", [1, 3, 4, 7]),
        ("1, , 7", [1, 7]),  # empty items skipped (A1111 >= 1.8: `if val.strip() == ''`)
        ("-5--3", [-5, -4, -3]),
        ("  2 - 4  ( +1 ) ", None),  # the step must touch its sign: "( +1 )" is no step
        ("7", [7]),
        ("-1", [-1]),
    ],
)
def test_int_axis_ranges(text: str, expected: list[int] | None) -> None:
    if expected is None:
        with pytest.raises(XYZError, match="not a whole number"):
            parse_values("Steps", text)
    else:
        assert parse_values("Steps", text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.5-1.5 (+0.25)", [0.5, 0.75, 1.0, 1.25, 1.5]),  # np.arange(start, end + step, step)
        ("1-2 [5]", [1.0, 1.25, 1.5, 1.75, 2.0]),  # np.linspace
        ("7, 7.5", [7.0, 7.5]),
        ("1-3", [1.0, 2.0, 3.0]),  # no step: 1
        ("3-1 (-1)", [3.0, 2.0, 1.0]),
    ],
)
def test_float_axis_ranges(text: str, expected: list[float]) -> None:
    assert parse_values("CFG Scale", text) == expected


def test_float_range_keeps_numpys_float_noise() -> None:
    # A1111: np.arange(1, 2 + 0.1, 0.1).tolist(), eleven values, not rounded
    values = parse_values("CFG Scale", "1-2 (+0.1)")
    assert len(values) == 11
    assert values[2] == 1.2000000000000002
    assert values[-1] == 2.000000000000001
    # the label rounds to 8 places (format_value_add_label)
    assert axis_type("CFG Scale").format_value(values[2]) == "CFG Scale: 1.2"


def test_range_helpers_match_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(1234)
    for _ in range(300):
        start = round(rng.uniform(-5, 5), rng.randint(0, 3))
        step = round(rng.uniform(0.05, 2), rng.randint(1, 3)) * rng.choice((1, -1))
        end = start + step * rng.randint(0, 20) + rng.uniform(-0.3, 0.3) * step
        if step == 0:
            continue
        assert arange(start, end + step, step) == np.arange(start, end + step, step).tolist()
        num = rng.randint(0, 12)
        assert linspace(start, end, num) == np.linspace(start, end, num).tolist()
    assert linspace(3, 3, 4) == np.linspace(3, 3, 4).tolist()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"a, b", c', ["a, b", "c"]),  # csv_string_to_list_strip
        ('a, "b, c"', ["a", "b, c"]),  # skipinitialspace=True (A1111 1.10)
        (" x ,y ", ["x", "y"]),
        ('"say ""hi""", z', ['say "hi"', "z"]),
        ("", []),
    ],
)
def test_string_lists_split_as_csv(text: str, expected: list[str]) -> None:
    assert split_values(text) == expected


def test_join_values_is_list_to_csv_string() -> None:
    # A1111 list_to_csv_string: csv.writer row, stripped
    assert join_values(["Euler a", "DPM++ 2M, odd", 'q"x']) == 'Euler a,"DPM++ 2M, odd","q""x"'
    assert split_values(join_values(["a, b", "c"])) == ["a, b", "c"]


@pytest.mark.parametrize(
    ("axis", "text", "match"),
    [
        ("Steps", "5-1", "give no values"),  # range(5, 2, 1) is empty in A1111 too
        ("Steps", "abc", "not a whole number"),
        ("Steps", "1-10 (2)", "not a whole number"),  # A1111's step needs its sign
        ("Steps", "1-5 (+0)", "step of 0"),
        ("CFG Scale", "1-2 (+0)", "step of 0"),
        ("CFG Scale", "seven", "not a number"),
        ("CFG Scale", "nan", "not a number"),
        ("Steps", "1-100000000", "more than"),  # never materialised
        ("Steps", "1-2 [99999999]", "more than"),
        ("CFG Scale", "0-1 (+0.0000001)", "more than"),
        ("Sampler", "Euler a, Nope", "unknown sampler 'Nope'"),
        ("Schedule type", "Karras, Bogus", "unknown schedule type"),
        ("Size", "512x768, big", "WIDTHxHEIGHT"),
        ("Prompt S/R", "", "give no values"),
        ("Prompt order", "a,b,c,d,e,f,g", "more than"),
    ],
)
def test_bad_axis_text_is_one_clear_error(axis: str, text: str, match: str) -> None:
    with pytest.raises(XYZError, match=match):
        parse_values(axis, text)


def test_axis_name_starts_the_message() -> None:
    with pytest.raises(XYZError, match=r"^Y axis: Steps value 'x'"):
        parse_axis("Steps", "x", "Y")


def test_unknown_axis_type_lists_the_labels() -> None:
    with pytest.raises(XYZError, match="choose from Nothing, Seed"):
        axis_type("Seeds")
    assert axis_type("cfg scale").label == "CFG Scale"


def test_axis_labels_are_a1111s() -> None:
    # scripts/xyz_grid.py axis_options labels, as written into "X Type"
    for label in (
        "Nothing",
        "Seed",
        "Var. seed",
        "Var. strength",
        "Steps",
        "Hires steps",
        "CFG Scale",
        "Prompt S/R",
        "Prompt order",
        "Sampler",
        "Checkpoint name",
        "Schedule type",
        "Clip skip",
        "Denoising",
        "Hires upscaler",
        "VAE",
        "Size",
    ):
        assert label in AXIS_TYPES
    fields = set(GenerationParams.__dataclass_fields__)
    for axis in AXIS_TYPES.values():
        assert set(axis.changes) <= fields, axis.label


def test_seed_axis_fixes_minus_one_once() -> None:
    # fix_axis_seeds: -1 on a Seed / Var. seed axis becomes random.randrange(4294967294)
    axis = parse_axis("Seed", "-1, 5, -1", rng=random.Random(7))
    assert axis.values[1] == 5
    assert all(0 <= v < 4294967294 for v in axis.values)
    assert axis.values[0] != -1 and axis.values[2] != -1
    kept = parse_axis("Seed", "-1, 5", fix_seed_values=False)
    assert kept.values == (-1, 5)
    assert parse_axis("Steps", "-1", fix_seed_values=True).values == (-1,)


# -- applying values to a params dict: apply_field / apply_prompt / apply_order ----------------


BASE = GenerationParams(prompt="a cat on a mat", negative_prompt="ugly cat", seed=100).__dict__


def test_prompt_sr_replaces_in_both_prompts() -> None:
    # apply_prompt: xs[0] is the search term; str.replace in prompt and negative prompt
    plot = XYZPlot(x=parse_axis("Prompt S/R", "cat, dog, red fox", "X"))
    prompts = [plot.cell_params(BASE, ix, 0, 0) for ix in range(3)]
    assert [(p["prompt"], p["negative_prompt"]) for p in prompts] == [
        ("a cat on a mat", "ugly cat"),
        ("a dog on a mat", "ugly dog"),
        ("a red fox on a mat", "ugly red fox"),
    ]
    assert plot.x.labels == ["cat", "dog", "red fox"]  # format_value: no "Prompt S/R:" prefix


def test_prompt_sr_missing_term_is_refused_before_any_image() -> None:
    plot = XYZPlot(x=parse_axis("Prompt S/R", "horse, dog", "X"))
    with pytest.raises(XYZError, match="did not find 'horse'"):
        plot.check(BASE)


def test_prompt_order_permutes_tokens() -> None:
    # apply_order with str_permutations: every order of the tokens, labels ", "-joined
    plot = XYZPlot(x=parse_axis("Prompt order", "cat, mat", "X"))
    assert plot.x.values == (("cat", "mat"), ("mat", "cat"))
    assert plot.x.labels == ["cat, mat", "mat, cat"]
    assert plot.cell_params(BASE, 1, 0, 0)["prompt"] == "a mat on a cat"


def test_field_axes_apply_to_the_dict() -> None:
    base = dict(BASE)
    cases = [
        ("Seed", "42", {"seed": 42}),
        ("Var. seed", "9", {"subseed": 9}),
        ("Var. strength", "0.5", {"subseed_strength": 0.5}),
        ("Steps", "30", {"steps": 30}),
        ("Hires steps", "12", {"hr_second_pass_steps": 12}),
        ("CFG Scale", "4.5", {"cfg_scale": 4.5}),
        ("Checkpoint name", "models/sd15.safetensors", {"model": "models/sd15.safetensors"}),
        ("Clip skip", "2", {"clip_skip": 2}),
        ("Hires upscaler", "Lanczos", {"hr_upscaler": "Lanczos"}),
        ("VAE", "vae-ft-mse", {"vae": "vae-ft-mse"}),
        ("Size", "640x 384", {"width": 640, "height": 384}),
        ("Schedule type", "karras", {"schedule_type": "Karras"}),
        ("Sampler", "dpm++ 2m karras", {"sampler": "DPM++ 2M", "schedule_type": "Karras"}),
        ("Sampler", "euler a", {"sampler": "Euler a", "schedule_type": "Automatic"}),
        # txt2img: A1111's Denoising axis is the hires fix's strength
        ("Denoising", "0.4", {"denoising_strength": 0.4, "hr_denoising_strength": 0.4}),
    ]
    for label, text, changed in cases:
        plot = XYZPlot(x=parse_axis(label, text, "X"))
        params = plot.cell_params(base, 0, 0, 0)
        assert {k: params[k] for k in changed} == changed, label
        assert base == BASE  # the base is never changed
    img2img = dict(BASE, init_image="in.png")
    params = XYZPlot(x=parse_axis("Denoising", "0.3")).cell_params(img2img, 0, 0, 0)
    assert params["denoising_strength"] == 0.3
    assert params["hr_denoising_strength"] == BASE["hr_denoising_strength"]


def test_labels_follow_a1111_formatters() -> None:
    # format_value_add_label (default), format_value (Sampler, Prompt S/R),
    # format_remove_path (Checkpoint name), format_nothing (Nothing)
    assert parse_axis("Seed", "1").labels == ["Seed: 1"]
    assert parse_axis("CFG Scale", "7").labels == ["CFG Scale: 7.0"]
    assert parse_axis("Sampler", "Euler a").labels == ["Euler a"]
    assert parse_axis("Checkpoint name", "sub/dir/model.safetensors").labels == [
        "model.safetensors"
    ]
    assert parse_axis("Schedule type", "Karras").labels == ["Schedule type: Karras"]
    assert nothing().labels == [""]
    assert parse_values("Nothing", "whatever") == [0]  # process_axis returns [0] for Nothing


def test_check_names_the_axis_value_out_of_range() -> None:
    plot = XYZPlot(x=parse_axis("Steps", "10, 900", "X"))
    with pytest.raises(XYZError, match=r"X value 'Steps: 900': steps 900 is out of range"):
        plot.check(BASE)
    XYZPlot(x=parse_axis("Steps", "10, 20", "X")).check(BASE)


def test_check_refuses_a_grid_past_a1111s_size_limit() -> None:
    # run(): assert grid_mp < opts.img_max_size_mp (200)
    plot = XYZPlot(x=parse_axis("Steps", "1-30"), y=parse_axis("Seed", "1-30"))
    with pytest.raises(XYZError, match="megapixels"):
        plot.check(BASE)


# -- cell order: draw_xyz_grid index() and the cost-ordered loops --------------------------


def test_cell_index_is_x_fastest() -> None:
    # draw_xyz_grid: index(ix, iy, iz) = ix + iy * len(xs) + iz * len(xs) * len(ys)
    assert [
        cell_index(ix, iy, iz, 3, 2) for iz in range(2) for iy in range(2) for ix in range(3)
    ] == list(range(12))


def test_processing_order_without_costs_is_z_then_y_then_x() -> None:
    # first_axes_processed = 'z', second_axes_processed = 'y': for iz: for iy: for ix
    order = processing_order((2, 2, 2))
    assert order[:4] == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0)]
    assert order[4] == (0, 0, 1)
    assert len(set(order)) == 8


def test_costly_axis_changes_least_often() -> None:
    # Checkpoint name has cost 1.0: on X it becomes the outer loop (for ix: for iz: for iy)
    plot = XYZPlot(
        x=parse_axis("Checkpoint name", "a, b"),
        y=parse_axis("Steps", "1, 2"),
        z=parse_axis("Seed", "1, 2"),
    )
    order = plot.cells()
    assert [c[0] for c in order] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert order[:4] == [(0, 0, 0), (0, 1, 0), (0, 0, 1), (0, 1, 1)]
    # VAE (0.7) on Y and a checkpoint on Z: z outermost, then y, then x
    plot = XYZPlot(
        x=parse_axis("Steps", "1, 2"),
        y=parse_axis("VAE", "a, b"),
        z=parse_axis("Checkpoint name", "c, d"),
    )
    assert plot.cells()[:3] == [(0, 0, 0), (1, 0, 0), (0, 1, 0)]
    # checkpoint on Y, VAE on X: for iy: for ix: for iz
    assert processing_order((2, 2, 2), (0.7, 1.0, 0.0))[:3] == [(0, 0, 0), (0, 0, 1), (1, 0, 0)]


def test_vary_seeds_offsets_like_a1111() -> None:
    # 1.8+: pc.seed += ix; += iy * xdim; += iz * xdim * ydim (xdim = len(xs) when varying X)
    plot = XYZPlot(
        x=parse_axis("Steps", "1, 2, 3"),
        y=parse_axis("CFG Scale", "5, 6"),
        vary_seeds=(True, True, False),
    )
    seeds = [plot.cell_params(BASE, ix, iy, 0)["seed"] for iy in range(2) for ix in range(3)]
    assert seeds == [100, 101, 102, 103, 104, 105]
    only_y = XYZPlot(x=plot.x, y=plot.y, vary_seeds=(False, True, False))
    assert only_y.cell_params(BASE, 2, 1, 0)["seed"] == 101


# -- infotext: Script.run cell(), the grid_infotext extra_generation_params ------------------


def test_infotext_pairs_are_a1111s_keys_in_order() -> None:
    plot = XYZPlot(
        x=parse_axis("Seed", "-1, 7", rng=random.Random(3)),
        y=parse_axis("Prompt S/R", "cat, dog"),
        z=parse_axis("Steps", "10-20 (+10)"),
    )
    pairs = plot.infotext_pairs()
    assert list(pairs) == [
        "Script",
        "X Type",
        "X Values",
        "Fixed X Values",
        "Y Type",
        "Y Values",
        "Z Type",
        "Z Values",
    ]
    assert pairs["Script"] == "X/Y/Z plot"
    assert pairs["X Type"] == "Seed" and pairs["X Values"] == "-1, 7"
    assert pairs["Fixed X Values"] == f"{plot.x.values[0]}, 7"
    assert pairs["Z Values"] == "10-20 (+10)"  # the text as typed, not the values
    sub = plot.infotext_pairs(include_z=False)
    assert "Z Type" not in sub and sub["Y Type"] == "Prompt S/R"
    # "Keep -1 for seeds": no Fixed X Values
    assert "Fixed X Values" not in XYZPlot(x=plot.x, no_fixed_seeds=True).infotext_pairs()
    # Nothing axes write nothing
    assert XYZPlot().infotext_pairs() == {"Script": "X/Y/Z plot"}


def test_infotext_pairs_round_trip_through_the_infotext_line() -> None:
    plot = XYZPlot(x=parse_axis("Prompt S/R", '"a, b", c'), y=parse_axis("Seed", "1, 2"))
    first = GenerationParams(prompt="a, b").infotext_pairs(seed=1)
    line = format_pairs({**first, **plot.infotext_pairs()})
    back = parse_pairs(line)
    assert back["X Values"] == '"a, b", c'
    assert back["Script"] == "X/Y/Z plot"
    assert axes_from_infotext(back) == {"X": ("Prompt S/R", '"a, b", c'), "Y": ("Seed", "1, 2")}
    again = parse_axis(*axes_from_infotext(back)["X"])
    assert again.values == plot.x.values


# -- the grid: images.image_grid, draw_grid_annotations, draw_xyz_grid ----------------------


def _tile(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, color)


COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def test_image_grid_places_cells_row_by_row() -> None:
    grid = image_grid([_tile(c) for c in COLORS], rows=2)
    assert grid.size == (128, 96)
    assert grid.getpixel((10, 10)) == COLORS[0]
    assert grid.getpixel((100, 10)) == COLORS[1]
    assert grid.getpixel((10, 80)) == COLORS[2]
    assert grid.getpixel((100, 80)) == COLORS[3]
    # a smaller image is centred in a cell as large as the largest (A1111 1.10)
    mixed = image_grid([_tile(COLORS[0]), _tile(COLORS[1], (32, 24))], rows=1)
    assert mixed.size == (128, 48)
    assert mixed.getpixel((64 + 16 + 5, 12 + 5)) == COLORS[1]
    assert mixed.getpixel((66, 2)) == (255, 255, 255)


def test_annotated_2x2_grid_is_a_real_labelled_png(tmp_path: Path) -> None:
    plot = XYZPlot(x=parse_axis("Steps", "10, 20"), y=parse_axis("CFG Scale", "5, 7"))
    images = [_tile(c) for c in COLORS]
    whole, subs = plot.grid(images)
    bare = image_grid(images, rows=2)
    assert len(subs) == 1
    # A1111: pad_left = width * 3 // 4 (row labels), pad_top = tallest label + 2 spacings
    assert whole.width == bare.width + 64 * 3 // 4
    assert whole.height > bare.height
    pad_left = whole.width - bare.width
    pad_top = whole.height - bare.height
    out = tmp_path / "xyz_grid.png"
    whole.save(out)
    with Image.open(out) as png:
        png.load()
        assert png.format == "PNG" and png.size == whole.size
        top = png.crop((pad_left, 0, png.width, pad_top)).convert("L")
        left = png.crop((0, pad_top, pad_left, png.height)).convert("L")
        # label strips hold dark text on the white background, one label per column / row
        for strip in (top, left):
            lo, hi = strip.getextrema()
            assert lo < 128 and hi == 255
        for col in range(2):
            cell = top.crop((col * 64, 0, (col + 1) * 64, pad_top))
            assert cell.getextrema()[0] < 128, f"no X label over column {col}"
        for row in range(2):
            cell = left.crop((0, row * 48, pad_left, (row + 1) * 48))
            assert cell.getextrema()[0] < 128, f"no Y label left of row {row}"
        # the images themselves are where A1111 puts them
        assert png.getpixel((pad_left + 5, pad_top + 5))[:3] == COLORS[0]
        assert png.getpixel((pad_left + 64 + 5, pad_top + 48 + 5))[:3] == COLORS[3]


def test_labels_differ_so_strips_differ() -> None:
    images = [_tile(c) for c in COLORS]
    a = draw_grid_annotations(image_grid(images, 2), 64, 48, ["Steps: 10", "Steps: 20"], ["x", "y"])
    b = draw_grid_annotations(image_grid(images, 2), 64, 48, ["Steps: 10", "Steps: 99"], ["x", "y"])
    assert a.size == b.size and a.tobytes() != b.tobytes()


def test_no_row_labels_no_left_strip_and_margins() -> None:
    images = [_tile(c) for c in COLORS]
    grid = draw_grid_annotations(image_grid(images, 2), 64, 48, ["a", "b"], ["", ""], margin=6)
    # no row label text: pad_left 0; margin * (cols - 1) between cells
    assert grid.width == 128 + 6
    pad_top = grid.height - 96 - 6
    assert pad_top > 0
    assert grid.getpixel((64 + 6 + 3, pad_top + 3)) == COLORS[1]
    assert grid.getpixel((64 + 2, pad_top + 3)) == (255, 255, 255)  # the margin
    with pytest.raises(ValueError):
        draw_grid_annotations(image_grid(images, 2), 64, 48, ["a"], ["", ""])


def test_long_labels_wrap_and_stay_inside() -> None:
    images = [_tile(c) for c in COLORS]
    long = "a very long label that cannot fit on one line " * 3
    one = draw_grid_annotations(image_grid(images, 2), 64, 48, ["a", "b"], ["r", "s"])
    wrapped = draw_grid_annotations(image_grid(images, 2), 64, 48, [long, "b"], ["r", "s"])
    assert wrapped.width == one.width and wrapped.height > one.height
    huge = draw_grid_annotations(image_grid(images, 2), 64, 48, ["x" * 100000, "b"], ["r", "s"])
    assert huge.width == one.width  # a label cannot widen the grid


def test_xyz_grid_with_z_titles_each_sub_grid() -> None:
    plot = XYZPlot(
        x=parse_axis("Steps", "1, 2"),
        y=parse_axis("CFG Scale", "5, 7"),
        z=parse_axis("Sampler", "Euler a, DDIM"),
    )
    images = [_tile(COLORS[i % 4]) for i in range(8)]
    whole, subs = plot.grid(images)
    assert len(subs) == 2 and subs[0].size == subs[1].size
    # the Z grid: the sub-grids in one row, titled on top, no left strip
    assert whole.width == 2 * subs[0].width
    assert whole.height > subs[0].height
    # sub-grid 2 holds images 4..7 (cell_index order)
    z_pad = whole.height - subs[0].height
    assert (
        whole.crop((subs[0].width, z_pad, whole.width, whole.height)).tobytes() == subs[1].tobytes()
    )
    plain, _ = plot.grid(images, draw_legend=False)
    assert plain.size == (4 * 64, 2 * 48)


def test_failed_cell_is_black_and_all_failed_is_an_error() -> None:
    images: list[Image.Image | None] = [_tile(COLORS[0]), None, _tile(COLORS[2]), _tile(COLORS[3])]
    whole, _ = draw_xyz_grid(images, ["a", "b"], ["c", "d"], [""], draw_legend=False)
    assert whole.getpixel((64 + 5, 5)) == (0, 0, 0)
    with pytest.raises(XYZError, match="made no image"):
        draw_xyz_grid([None] * 4, ["a", "b"], ["c", "d"], [""])
    with pytest.raises(ValueError):
        XYZPlot(x=parse_axis("Steps", "1, 2")).grid([_tile(COLORS[0])])


def test_xyz_module_is_torch_free() -> None:
    code = (
        "import sys, sdtui.xyz, sdtui.styles\n"
        "print(' '.join(m for m in ('torch', 'diffusers', 'textual') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == []


def test_max_axis_values_is_an_axis_limit() -> None:
    assert len(parse_values("Steps", f"1-{MAX_AXIS_VALUES}")) == MAX_AXIS_VALUES
    with pytest.raises(XYZError):
        parse_values("Steps", f"1-{MAX_AXIS_VALUES + 1}")


@pytest.mark.parametrize("text", ["1-99999999999999999999", "99999999999999999999-1 (-1)"])
def test_an_integer_range_past_the_machines_size_is_too_many_values(text: str) -> None:
    """len() of such a range raises OverflowError; the axis message says what to do."""
    with pytest.raises(XYZError, match="more than the 1000 an axis can take"):
        _int_range(text)
    # the count by hand agrees with range(): A1111 stops at end + 1 whatever the step's sign
    assert _int_range("10-1 (-3)") == [10, 7, 4] and _int_range("5-1") == []
