"""The X/Y/Z plot: A1111's ``scripts/xyz_grid.py`` without the web UI and the model.

One image per combination of an X, a Y and a Z value, drawn as one labelled grid per Z value
and the Z grids side by side. This module holds everything that needs no model: the axis
types (named as A1111 labels them), parsing what a user types for an axis (``1-5``,
``1-10 (+2)``, ``5-15 [3]``, ``0.5-1.5 (+0.25)``, ``"a, b", c``), the params of each cell
(a plain dict keyed by :class:`~sdtui.params.GenerationParams` field names), the order A1111
makes the cells in, the labelled grid (``modules/images.py`` ``image_grid`` and
``draw_grid_annotations``) and the infotext keys A1111 writes on the grid ("Script",
"X Type", "X Values", ...). The engine makes the images; the CLI and TUI parse and show.

Use::

    plot = XYZPlot(parse_axis("Steps", "10-30 (+10)", "X"), parse_axis("CFG Scale", "5, 7", "Y"))
    plot.check(base)                        # every cell's params, before any image is made
    for ix, iy, iz in plot.cells():         # A1111's order (a costly axis outermost)
        images[plot.index(ix, iy, iz)] = make(plot.cell_params(base, ix, iy, iz))
    grid, sub_grids = plot.grid(images)
    pairs = first_image_pairs | plot.infotext_pairs()   # the grid's infotext

No torch, no textual.
"""

from __future__ import annotations

import csv
import io
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from itertools import permutations
from typing import Any, Literal

from PIL import Image, ImageDraw, ImageFont

from sdtui.errors import UserError
from sdtui.infotext import format_infotext, parse_infotext
from sdtui.params import MAX_RANDOM_SEED, GenerationParams, ParamError, XYZParams
from sdtui.samplers import (
    SAMPLER_NAMES,
    SCHEDULE_TYPES,
    UnknownSamplerError,
    normalize_sampler,
    normalize_schedule,
)

SCRIPT_TITLE = "X/Y/Z plot"  # A1111 Script.title(), written as "Script: X/Y/Z plot"
# a typed range that would make more values than this is a typo, not a plot
MAX_AXIS_VALUES = 1000
# A1111 opts.img_max_size_mp ("Maximum grid size", default 200 megapixels)
MAX_GRID_MEGAPIXELS = 200
# A1111 shared_options: grid_background_color, grid_text_active_color
GRID_BACKGROUND = (255, 255, 255)
GRID_TEXT = (0, 0, 0)
_MAX_LABEL_CHARS = 300  # a label longer than this is cut (A1111 would wrap it all)

ValueKind = Literal["int", "float", "str", "permutations"]
Params = dict[str, Any]


class XYZError(UserError):
    """An axis that cannot be plotted: the message names the axis, the value and the fix."""


# -- axis types -------------------------------------------------------------------------------


def _set(name: str) -> Callable[[Params, Any, Sequence[Any]], None]:
    def apply(params: Params, value: Any, values: Sequence[Any]) -> None:
        params[name] = value

    return apply


def _do_nothing(params: Params, value: Any, values: Sequence[Any]) -> None:
    pass


def _apply_prompt_sr(params: Params, value: Any, values: Sequence[Any]) -> None:
    """A1111 apply_prompt: the first value is the search term; every occurrence of it in the
    prompt and the negative prompt becomes ``value``."""
    search = values[0]
    prompt = params.get("prompt", "") or ""
    negative = params.get("negative_prompt", "") or ""
    if search not in prompt and search not in negative:
        raise XYZError(
            f"Prompt S/R did not find {search!r} in the prompt or the negative prompt: the "
            "first value is the text to replace, so put it in the prompt"
        )
    params["prompt"] = prompt.replace(search, value)
    params["negative_prompt"] = negative.replace(search, value)


def _apply_prompt_order(params: Params, value: Any, values: Sequence[Any]) -> None:
    """A1111 apply_order: the tokens, where they stand in the prompt, put in this order."""
    prompt = params.get("prompt", "") or ""
    missing = [t for t in value if t not in prompt]
    if missing:
        raise XYZError(
            f"Prompt order did not find {missing[0]!r} in the prompt: every value must be in it"
        )
    by_place = sorted(value, key=prompt.find)
    parts: list[str] = []
    rest = prompt
    for token in by_place:
        at = rest.find(token)
        parts.append(rest[:at])
        rest = rest[at + len(token) :]
    params["prompt"] = "".join(part + value[i] for i, part in enumerate(parts)) + rest


def _apply_sampler(params: Params, value: Any, values: Sequence[Any]) -> None:
    # "DPM++ 2M Karras": A1111 (sd_samplers.get_sampler_and_scheduler) takes the schedule
    # from the name's suffix over the one chosen
    sampler, schedule = normalize_sampler(value)
    params["sampler"] = sampler
    if schedule != "Automatic":
        params["schedule_type"] = schedule


def _apply_schedule(params: Params, value: Any, values: Sequence[Any]) -> None:
    params["schedule_type"] = normalize_schedule(value)


def _apply_denoising(params: Params, value: Any, values: Sequence[Any]) -> None:
    # A1111 sets p.denoising_strength, which txt2img's hires fix uses as its strength;
    # sdtui keeps that one as hr_denoising_strength
    params["denoising_strength"] = value
    if not params.get("init_image"):
        params["hr_denoising_strength"] = value


def _parse_size(value: str) -> tuple[int, int]:
    width, _, height = value.partition("x")
    return int(width.strip()), int(height.strip())


def _apply_size(params: Params, value: Any, values: Sequence[Any]) -> None:
    params["width"], params["height"] = _parse_size(value)


def _confirm_samplers(values: Sequence[Any]) -> None:
    for v in values:
        try:
            normalize_sampler(v)
        except UnknownSamplerError:
            raise XYZError(
                f"unknown sampler {v!r}: choose from {', '.join(SAMPLER_NAMES)}"
            ) from None


def _confirm_schedules(values: Sequence[Any]) -> None:
    for v in values:
        try:
            normalize_schedule(v)
        except UnknownSamplerError:
            raise XYZError(
                f"unknown schedule type {v!r}: choose from {', '.join(SCHEDULE_TYPES)}"
            ) from None


def _confirm_sizes(values: Sequence[Any]) -> None:
    for v in values:
        try:
            _parse_size(v)
        except ValueError:
            raise XYZError(f"size {v!r} is not WIDTHxHEIGHT: write it like 512x768") from None


def _round8(x: Any) -> Any:
    return round(x, 8) if type(x) is float else x


def _label_with_name(axis: AxisType, value: Any) -> str:
    """A1111 format_value_add_label: ``CFG Scale: 7.0``."""
    return f"{axis.label}: {_round8(value)}"


def _label_value(axis: AxisType, value: Any) -> str:
    """A1111 format_value: the value alone (floats rounded to 8 places)."""
    return str(_round8(value))


def _label_join(axis: AxisType, value: Any) -> str:
    return ", ".join(value)


def _label_nothing(axis: AxisType, value: Any) -> str:
    return ""


def _label_basename(axis: AxisType, value: Any) -> str:
    return os.path.basename(str(value))


@dataclass(frozen=True)
class AxisType:
    """One of A1111's ``axis_options``: what it is called, how its values parse, what a
    value changes (``apply(params, value, all_values)`` on a params dict) and how a value is
    labelled on the grid."""

    label: str
    kind: ValueKind
    apply: Callable[[Params, Any, Sequence[Any]], None] = field(repr=False)
    format: Callable[[AxisType, Any], str] = field(default=_label_with_name, repr=False)
    # the GenerationParams fields a value changes
    changes: tuple[str, ...] = ()
    confirm: Callable[[Sequence[Any]], None] | None = field(default=None, repr=False)
    # A1111 AxisOption.cost: the costliest axis changes least often (a checkpoint load)
    cost: float = 0.0
    choices: tuple[str, ...] | None = None

    def format_value(self, value: Any) -> str:
        return self.format(self, value)

    @property
    def is_nothing(self) -> bool:
        return self.label == "Nothing"


NOTHING = AxisType("Nothing", "str", _do_nothing, _label_nothing)

# A1111 1.10 scripts/xyz_grid.py axis_options, the ones sdtui's params can take, in its order
AXIS_TYPES: dict[str, AxisType] = {
    a.label: a
    for a in (
        NOTHING,
        AxisType("Seed", "int", _set("seed"), changes=("seed",)),
        AxisType("Var. seed", "int", _set("subseed"), changes=("subseed",)),
        AxisType("Var. strength", "float", _set("subseed_strength"), changes=("subseed_strength",)),
        AxisType("Steps", "int", _set("steps"), changes=("steps",)),
        AxisType(
            "Hires steps", "int", _set("hr_second_pass_steps"), changes=("hr_second_pass_steps",)
        ),
        AxisType("CFG Scale", "float", _set("cfg_scale"), changes=("cfg_scale",)),
        AxisType(
            "Prompt S/R",
            "str",
            _apply_prompt_sr,
            _label_value,
            changes=("prompt", "negative_prompt"),
        ),
        AxisType("Prompt order", "permutations", _apply_prompt_order, _label_join, ("prompt",)),
        AxisType(
            "Sampler",
            "str",
            _apply_sampler,
            _label_value,
            ("sampler", "schedule_type"),
            confirm=_confirm_samplers,
            choices=SAMPLER_NAMES,
        ),
        AxisType("Checkpoint name", "str", _set("model"), _label_basename, ("model",), cost=1.0),
        AxisType(
            "Schedule type",
            "str",
            _apply_schedule,
            changes=("schedule_type",),
            confirm=_confirm_schedules,
            choices=SCHEDULE_TYPES,
        ),
        AxisType("Clip skip", "int", _set("clip_skip"), changes=("clip_skip",)),
        AxisType(
            "Denoising",
            "float",
            _apply_denoising,
            changes=("denoising_strength", "hr_denoising_strength"),
        ),
        AxisType("Hires upscaler", "str", _set("hr_upscaler"), changes=("hr_upscaler",)),
        AxisType("VAE", "str", _set("vae"), changes=("vae",), cost=0.7),
        AxisType("Size", "str", _apply_size, changes=("width", "height"), confirm=_confirm_sizes),
    )
}


def axis_type(name: str) -> AxisType:
    """The axis type A1111 labels ``name`` (any case), or an XYZError listing them."""
    wanted = " ".join(name.split()).casefold()
    for label, axis in AXIS_TYPES.items():
        if label.casefold() == wanted:
            return axis
    raise XYZError(f"unknown X/Y/Z axis type {name!r}: choose from {', '.join(AXIS_TYPES)}")


# -- parsing values ---------------------------------------------------------------------------

_INT = r"[+-]?\s*\d+"
_FLOAT = r"[+-]?\s*\d+(?:\.\d*)?"
# A1111 re_range / re_range_count (and _float): "1-5", "1-10 (+2)", "10-1 (-3)", "5-15 [3]".
# A1111 leaves the float pattern's dot unescaped (any character); here it is a dot.
_RE_RANGE = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\(([+-]\d+)\s*\))?\s*")
_RE_RANGE_COUNT = re.compile(rf"\s*({_INT})\s*-\s*({_INT})(?:\s*\[(\d+)\s*\])?\s*")
_RE_RANGE_FLOAT = re.compile(
    rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*"
)
_RE_RANGE_COUNT_FLOAT = re.compile(
    rf"\s*({_FLOAT})\s*-\s*({_FLOAT})(?:\s*\[(\d+(?:\.\d*)?)\s*\])?\s*"
)


def split_values(text: str) -> list[str]:
    """A1111 csv_string_to_list_strip: one CSV line (``skipinitialspace``, so ``a, "b, c"``
    is two values), each value stripped; several lines are joined."""
    try:
        rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    except csv.Error as e:
        raise XYZError(
            f"the values are not a comma-separated list ({e}): check the quotes"
        ) from None
    return [v.strip() for row in rows for v in row]


def join_values(values: Sequence[object]) -> str:
    """A1111 list_to_csv_string: values as one CSV line (what it writes as "X Values" for
    values picked from a list)."""
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue().strip()


def _number(text: str) -> str:
    return re.sub(r"\s+", "", text)  # "- 5" is -5 (A1111's int() would refuse it)


def _too_many(what: str, count: int) -> XYZError:
    return XYZError(
        f"{what} makes {count} values, more than the {MAX_AXIS_VALUES} an axis can take: "
        "use a larger step or fewer values"
    )


def _int_range(text: str) -> list[int] | None:
    m = _RE_RANGE.fullmatch(text)
    if m is not None:
        start, end = int(_number(m.group(1))), int(_number(m.group(2))) + 1
        step = int(m.group(3)) if m.group(3) is not None else 1
        if step == 0:
            raise XYZError(f"{text!r} has a step of 0: use a step like (+1) or (-1)")
        r = range(start, end, step)
        # len() of a range past sys.maxsize items raises OverflowError: count it by hand
        count = max(0, (r.stop - r.start + r.step + (-1 if r.step > 0 else 1)) // r.step)
        if count > MAX_AXIS_VALUES:
            raise _too_many(repr(text), count)
        return list(r)
    m = _RE_RANGE_COUNT.fullmatch(text)
    if m is not None:
        start, end = int(_number(m.group(1))), int(_number(m.group(2)))
        num = int(m.group(3)) if m.group(3) is not None else 1
        if num > MAX_AXIS_VALUES:
            raise _too_many(repr(text), num)
        return [int(v) for v in linspace(start, end, num)]
    return None


def _float_range(text: str) -> list[float] | None:
    m = _RE_RANGE_FLOAT.fullmatch(text)
    if m is not None:
        start, end = float(_number(m.group(1))), float(_number(m.group(2)))
        step = float(m.group(3)) if m.group(3) is not None else 1.0
        if step == 0:
            raise XYZError(f"{text!r} has a step of 0: use a step like (+0.5)")
        return arange(start, end + step, step)
    m = _RE_RANGE_COUNT_FLOAT.fullmatch(text)
    if m is not None:
        start, end = float(_number(m.group(1))), float(_number(m.group(2)))
        try:
            num = int(m.group(3)) if m.group(3) is not None else 1
        except ValueError:
            raise XYZError(f"{text!r}: the count in [ ] must be a whole number") from None
        if num > MAX_AXIS_VALUES:
            raise _too_many(repr(text), num)
        return linspace(start, end, num)
    return None


def linspace(start: float, stop: float, num: int) -> list[float]:
    """numpy.linspace(start, stop, num).tolist(), as A1111's ``[count]`` ranges use it: the
    values ``start + i * step`` and the last one exactly ``stop``."""
    if num <= 0:
        return []
    div = num - 1
    if div == 0:
        return [float(start)]
    delta = stop - start
    step = delta / div
    if step == 0:
        values = [i / div * delta + start for i in range(num)]
    else:
        values = [i * step + start for i in range(num)]
    values[-1] = float(stop)
    return values


def arange(start: float, stop: float, step: float) -> list[float]:
    """numpy.arange(start, stop, step).tolist() for floats, as A1111's ``(+step)`` float
    ranges use it (``end + step`` as the stop), float noise kept: ``1-2 (+0.1)`` gives
    1.0, 1.1, 1.2000000000000002, ... 2.000000000000001 as in A1111 (labels round to 8
    places)."""
    count = math.ceil((stop - start) / step)
    if count <= 0:
        return []
    if count > MAX_AXIS_VALUES:
        raise _too_many(f"the range {start:g} to {stop - step:g} by {step:g}", count)
    # numpy fills value i as start + i * delta, delta = (start + step) - start
    second = start + step
    delta = second - start
    values = [float(start)]
    if count > 1:
        values.append(second)
    values.extend(start + i * delta for i in range(2, count))
    return values


def _convert(kind: ValueKind, value: Any, axis_label: str) -> Any:
    if kind == "int":
        if isinstance(value, int):
            return value
        try:
            return int(_number(str(value)))
        except ValueError:
            raise XYZError(
                f"{axis_label} value {str(value)[:40]!r} is not a whole number or a range: "
                "write values like 1, 5 or ranges like 1-5, 1-10 (+2), 5-15 [3]"
            ) from None
    if kind == "float":
        if isinstance(value, float):
            return value
        try:
            result = float(_number(str(value)))
        except ValueError:
            result = math.nan
        if not math.isfinite(result):
            raise XYZError(
                f"{axis_label} value {str(value)[:40]!r} is not a number or a range: write "
                "values like 7, 7.5 or ranges like 5-9 (+0.5), 1-2 [5]"
            )
        return result
    return value


def parse_values(axis: AxisType | str, text: str) -> list[Any]:
    """What A1111's ``process_axis`` makes of the text typed for an axis: a comma-separated
    list (CSV quoting), each item a single value or, for number axes, a range. Empty items
    of number axes are dropped (A1111 >= 1.8). ``Nothing`` gives ``[0]`` as in A1111.

    Raises :class:`XYZError` for a value that does not parse, a list that gives no values,
    more than :data:`MAX_AXIS_VALUES`, or a value the axis refuses (unknown sampler)."""
    axis = axis_type(axis) if isinstance(axis, str) else axis
    if axis.is_nothing:
        return [0]
    items = split_values(text)
    values: list[Any] = []
    if axis.kind in ("int", "float"):
        ranged = _int_range if axis.kind == "int" else _float_range
        for item in items:
            if item.strip() == "":
                continue
            expanded = ranged(item)
            if expanded is None:
                values.append(_convert(axis.kind, item, axis.label))
            else:
                values.extend(expanded)
            if len(values) > MAX_AXIS_VALUES:
                raise _too_many(f"{axis.label} {text[:40]!r}", len(values))
    elif axis.kind == "permutations":
        if math.factorial(len(items)) > MAX_AXIS_VALUES:
            raise _too_many(f"Prompt order of {len(items)} tokens", math.factorial(len(items)))
        values = list(permutations(items))
    else:
        values = list(items)
        if len(values) > MAX_AXIS_VALUES:
            raise _too_many(f"{axis.label} {text[:40]!r}", len(values))
    values = [_convert(axis.kind, v, axis.label) for v in values]
    if not values:
        raise XYZError(
            f"{axis.label} values {text[:60]!r} give no values: type at least one "
            "(a range counting down needs a negative step, like 10-1 (-3))"
        )
    if axis.confirm is not None:
        axis.confirm(values)
    return values


def fix_seeds(axis: AxisType, values: Sequence[Any], rng: random.Random | None = None) -> list[Any]:
    """A1111 fix_axis_seeds: on a Seed or Var. seed axis, -1 becomes a random seed drawn
    once, so the grid's infotext names real seeds ("Fixed X Values")."""
    if axis.label not in ("Seed", "Var. seed"):
        return list(values)
    draw = (rng or random).randrange
    return [draw(MAX_RANDOM_SEED) if v in (None, "", -1) else v for v in values]


@dataclass(frozen=True)
class Axis:
    """An axis of a plot: its type, the text typed for it (written as "X Values") and the
    values it gives."""

    type: AxisType
    text: str = ""
    values: tuple[Any, ...] = (0,)

    @property
    def labels(self) -> list[str]:
        return [self.type.format_value(v) for v in self.values]

    def __len__(self) -> int:
        return len(self.values)


def parse_axis(
    axis: AxisType | str,
    text: str,
    name: str = "",
    *,
    fix_seed_values: bool = True,
    rng: random.Random | None = None,
) -> Axis:
    """An :class:`Axis` from an axis type (or its A1111 label) and the typed text.
    ``name`` ("X", "Y", "Z") starts each error message. ``fix_seed_values=False`` is
    A1111's "Keep -1 for seeds"."""
    kind = axis_type(axis) if isinstance(axis, str) else axis
    try:
        values = parse_values(kind, text)
    except XYZError as e:
        if not name:
            raise
        raise XYZError(f"{name} axis: {e.message}") from None
    if fix_seed_values:
        values = fix_seeds(kind, values, rng)
    return Axis(kind, "" if kind.is_nothing else text, tuple(values))


def nothing() -> Axis:
    return Axis(NOTHING, "", (0,))


# -- cells ------------------------------------------------------------------------------------


def cell_index(ix: int, iy: int, iz: int, nx: int, ny: int) -> int:
    """Where cell (ix, iy, iz) is in A1111's image list: X fastest, then Y, then Z."""
    return ix + iy * nx + iz * nx * ny


def processing_order(
    sizes: tuple[int, int, int], costs: tuple[float, float, float] = (0.0, 0.0, 0.0)
) -> list[tuple[int, int, int]]:
    """The (ix, iy, iz) cells in the order A1111 makes them (xyz_grid.py run / draw_xyz_grid):
    the axis of the highest cost (a checkpoint) outermost, so it changes least often; with no
    axis costlier than both others, Z outermost, then Y, and X fastest."""
    cx, cy, cz = costs
    first, second = "z", "y"
    if cx > cy and cx > cz:
        first, second = "x", ("y" if cy > cz else "z")
    elif cy > cx and cy > cz:
        first, second = "y", ("x" if cx > cz else "z")
    elif cz > cx and cz > cy:
        first, second = "z", ("x" if cx > cy else "y")
    third = ({"x", "y", "z"} - {first, second}).pop()
    where = {"x": 0, "y": 1, "z": 2}
    order: list[tuple[int, int, int]] = []
    for a in range(sizes[where[first]]):
        for b in range(sizes[where[second]]):
            for c in range(sizes[where[third]]):
                cell = [0, 0, 0]
                cell[where[first]], cell[where[second]], cell[where[third]] = a, b, c
                order.append((cell[0], cell[1], cell[2]))
    return order


_PARAM_FIELDS = frozenset(f.name for f in fields(GenerationParams))


@dataclass(frozen=True)
class XYZPlot:
    """Three axes (any may be :func:`nothing`) and what follows from them."""

    x: Axis = field(default_factory=nothing)
    y: Axis = field(default_factory=nothing)
    z: Axis = field(default_factory=nothing)
    # A1111 "Vary seeds for X/Y/Z" (1.8+): seed + ix, + iy * nx, + iz * nx * ny
    vary_seeds: tuple[bool, bool, bool] = (False, False, False)
    # A1111 "Keep -1 for seeds": no "Fixed X Values" in the infotext
    no_fixed_seeds: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.x), len(self.y), len(self.z)

    @property
    def cell_count(self) -> int:
        nx, ny, nz = self.shape
        return nx * ny * nz

    def index(self, ix: int, iy: int, iz: int) -> int:
        nx, ny, _ = self.shape
        return cell_index(ix, iy, iz, nx, ny)

    def cells(self) -> list[tuple[int, int, int]]:
        """Every cell, in the order A1111 makes them."""
        return processing_order(self.shape, (self.x.type.cost, self.y.type.cost, self.z.type.cost))

    def cell_params(self, base: Mapping[str, Any], ix: int, iy: int, iz: int) -> Params:
        """A copy of ``base`` with the X, then the Y, then the Z value applied (A1111 cell())."""
        params: Params = dict(base)
        for axis, i in ((self.x, ix), (self.y, iy), (self.z, iz)):
            axis.type.apply(params, axis.values[i], axis.values)
        nx, ny, _ = self.shape
        vx, vy, vz = self.vary_seeds
        offset = (ix if vx else 0) + (iy * (nx if vx else 1) if vy else 0)
        if vz:
            offset += iz * (nx if vx else 1) * (ny if vy else 1)
        if offset and isinstance(params.get("seed"), int) and params["seed"] >= 0:
            params["seed"] += offset
        return params

    def iter_cells(self, base: Mapping[str, Any]) -> Iterator[tuple[tuple[int, int, int], Params]]:
        for ix, iy, iz in self.cells():
            yield (ix, iy, iz), self.cell_params(base, ix, iy, iz)

    def check(
        self,
        base: Mapping[str, Any],
        *,
        max_megapixels: float = MAX_GRID_MEGAPIXELS,
    ) -> None:
        """Raise the first :class:`XYZError` a cell would meet (Prompt S/R not finding its
        text, a value out of the range the engine takes, a grid too large), before any image
        is made: A1111 meets these one cell at a time."""
        nx, ny, nz = self.shape
        width, height = int(base.get("width", 512)), int(base.get("height", 512))
        for axis in (self.x, self.y, self.z):
            if axis.type.label == "Size":  # A1111 counts the base size; the grid has these
                try:
                    sizes = [_parse_size(v) for v in axis.values]
                except ValueError:
                    continue  # said below, by the cell that has it
                width, height = max(w for w, _ in sizes), max(h for _, h in sizes)
        megapixels = round(nx * ny * nz * width * height / 1_000_000)
        if megapixels >= max_megapixels:
            raise XYZError(
                f"the X/Y/Z grid would be {megapixels} megapixels ({nx}x{ny}x{nz} images of "
                f"{width}x{height}), more than {max_megapixels:g}: use fewer values or smaller images"
            )
        axes = (("X", self.x), ("Y", self.y), ("Z", self.z))
        for ix, iy, iz in self.cells():
            try:
                params = self.cell_params(base, ix, iy, iz)
            except XYZError as e:
                raise XYZError(f"X/Y/Z plot: {e.message}") from None
            known = {k: v for k, v in params.items() if k in _PARAM_FIELDS}
            try:
                errors = GenerationParams(**known).field_errors()
            except (TypeError, ValueError):
                continue
            for name, message in errors.items():
                if params.get(name) == base.get(name):
                    continue  # wrong before the plot: not the plot's to say
                for letter, axis in axes:
                    if name in axis.type.changes:
                        i = (ix, iy, iz)["XYZ".index(letter)]
                        raise XYZError(
                            f"X/Y/Z plot: {letter} value {axis.labels[i] or axis.values[i]!r}: "
                            f"{message}"
                        )
                raise XYZError(f"X/Y/Z plot: {message}")

    # -- grid and infotext --------------------------------------------------------------------

    def labels(self) -> tuple[list[str], list[str], list[str]]:
        return self.x.labels, self.y.labels, self.z.labels

    def grid(
        self,
        images: Sequence[Image.Image | None],
        *,
        draw_legend: bool = True,
        margin: int = 0,
    ) -> tuple[Image.Image, list[Image.Image]]:
        """(the whole grid, one sub-grid per Z value) from the images in :meth:`index`
        order; see :func:`draw_xyz_grid`."""
        nx, ny, nz = self.shape
        if len(images) != nx * ny * nz:
            raise ValueError(f"{len(images)} images for a {nx}x{ny}x{nz} plot")
        xl, yl, zl = self.labels()
        return draw_xyz_grid(images, xl, yl, zl, draw_legend=draw_legend, margin=margin)

    def infotext_pairs(self, *, include_z: bool = True) -> dict[str, str]:
        """The keys A1111 adds to the first cell's infotext for the grid, in its order:
        ``Script: X/Y/Z plot``, then for each axis that is not Nothing ``X Type`` (its label),
        ``X Values`` (the text typed) and, on a Seed or Var. seed axis with seeds fixed,
        ``Fixed X Values`` (the seeds drawn, ", "-joined). ``include_z=False`` gives the
        pairs of a Z value's sub-grid, which has no Z keys."""
        pairs: dict[str, str] = {"Script": SCRIPT_TITLE}
        axes = [("X", self.x), ("Y", self.y)] + ([("Z", self.z)] if include_z else [])
        for letter, axis in axes:
            if axis.type.is_nothing:
                continue
            pairs[f"{letter} Type"] = axis.type.label
            pairs[f"{letter} Values"] = axis.text
            if axis.type.label in ("Seed", "Var. seed") and not self.no_fixed_seeds:
                pairs[f"Fixed {letter} Values"] = ", ".join(str(v) for v in axis.values)
        return pairs


def axes_from_infotext(pairs: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    """{"X": (type label, values text), ...} from an infotext's pairs, as A1111's X/Y/Z
    script fills its fields from a pasted infotext ("Fixed ... Values" win, so the seeds
    drawn come back)."""
    out: dict[str, tuple[str, str]] = {}
    for letter in "XYZ":
        label = pairs.get(f"{letter} Type")
        if not label:
            continue
        text = pairs.get(f"Fixed {letter} Values") or pairs.get(f"{letter} Values", "")
        out[letter] = (label, text)
    return out


# -- a job ------------------------------------------------------------------------------------

_SEED_AXES = ("Seed", "Var. seed")


def fix_seed(params: GenerationParams, rng: random.Random | None = None) -> GenerationParams:
    """A1111 processing.fix_seed, which the X/Y/Z script runs first: a seed and a variation
    seed of -1 become random ones drawn once, so every cell starts from the same seeds."""
    draw = (rng or random).randrange
    changes: dict[str, int] = {}
    if params.seed == -1:
        changes["seed"] = draw(MAX_RANDOM_SEED)
    if params.subseed == -1:
        changes["subseed"] = draw(MAX_RANDOM_SEED)
    return params.replace(**changes) if changes else params


def plot_of(params: XYZParams, *, rng: random.Random | None = None) -> XYZPlot:
    """The plot of a job: each axis parsed from the text typed for it. A Seed or Var. seed
    axis takes its values from ``params.fixed_values`` when :func:`prepare_xyz` set them (a
    restarted job makes the same cells), else its -1 values are drawn now."""
    axes: list[Axis] = []
    for letter, (label, text), fixed in zip("XYZ", params.axes, params.fixed_values, strict=True):
        try:
            kind = axis_type(label)
        except XYZError as e:
            raise XYZError(f"{letter} axis: {e.message}") from None
        if kind.is_nothing:
            axes.append(nothing())
            continue
        keep = params.no_fixed_seeds
        axis = parse_axis(kind, text, letter, fix_seed_values=not keep and not fixed, rng=rng)
        if fixed and not keep and kind.label in _SEED_AXES:
            values = parse_values(kind, fixed)
            if len(values) != len(axis):
                raise XYZError(
                    f"{letter} axis: the fixed seeds {fixed[:60]!r} do not match the values "
                    f"{text[:60]!r}: submit the plot again"
                )
            axis = Axis(kind, text, tuple(values))
        axes.append(axis)
    return XYZPlot(
        axes[0],
        axes[1],
        axes[2],
        vary_seeds=params.vary_seeds,
        no_fixed_seeds=params.no_fixed_seeds,
    )


def base_params(params: XYZParams) -> Params:
    """The base params as the dict :meth:`XYZPlot.cell_params` changes."""
    return asdict(params.base)


def cell_generation_params(
    plot: XYZPlot, base: Mapping[str, Any], ix: int, iy: int, iz: int
) -> GenerationParams:
    """One cell's params (batch 1: A1111 takes each cell's first image), validated."""
    cell = {k: v for k, v in plot.cell_params(base, ix, iy, iz).items() if k in _PARAM_FIELDS}
    cell["batch_size"] = cell["batch_count"] = 1
    return GenerationParams(**cell).validated()


def prepare_xyz(
    params: XYZParams,
    *,
    rng: random.Random | None = None,
    max_megapixels: float = MAX_GRID_MEGAPIXELS,
) -> XYZParams:
    """A job checked before anything runs, with its seeds fixed: the base params (a
    :class:`~sdtui.params.ParamError`), every axis and every cell (an :class:`XYZError`:
    a type or value that does not parse, a Prompt S/R term not in the prompt, a cell value out
    of range, a grid too large). Then A1111's ``fix_seed`` on the base and ``fix_axis_seeds``
    on Seed axes, unless "Keep -1 for seeds". Running it again changes nothing."""
    errors = params.field_errors()
    if errors:
        name, message = next(iter(errors.items()))
        raise ParamError(name, message)
    base = params.base.validated()
    if not params.no_fixed_seeds:
        base = fix_seed(base, rng)
    params = params.replace(base=base)
    plot = plot_of(params, rng=rng)
    plot.check(base_params(params), max_megapixels=max_megapixels)
    fixed = tuple(
        ", ".join(str(v) for v in axis.values)
        if axis.type.label in _SEED_AXES and not params.no_fixed_seeds
        else ""
        for axis in (plot.x, plot.y, plot.z)
    )
    return params.replace(fixed_values=(fixed[0], fixed[1], fixed[2]))


def cell_count(params: XYZParams) -> int:
    """How many images the plot makes (one per cell); 1 for a plot that does not parse."""
    try:
        return plot_of(params, rng=random.Random(0)).cell_count
    except XYZError:
        return 1


def grid_infotext(cell_infotext: str, plot: XYZPlot) -> str:
    """The grid's infotext as A1111 writes it: the first cell's, with the plot's keys
    ("Script: X/Y/Z plot", "X Type", "X Values", ...) added to its extra params, which A1111
    writes before "Version"."""
    parsed = parse_infotext(cell_infotext)
    pairs: dict[str, object] = dict(parsed.pairs)
    version = pairs.pop("Version", None)
    pairs.update(plot.infotext_pairs())
    if version is not None:
        pairs["Version"] = version
    return format_infotext(parsed.prompt, parsed.negative_prompt, pairs)


# -- drawing ----------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font at ``size`` (A1111 uses Roboto; sdtui ships no font file)."""
    try:
        return ImageFont.load_default(size=max(1, size))
    except (ImportError, OSError, TypeError, ValueError):
        return ImageFont.load_default()  # no FreeType: the fixed bitmap font


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: Any) -> tuple[int, int]:
    if not text:
        return 0, 0
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> list[str]:
    """A1111 draw_grid_annotations.wrap: words onto lines no wider than ``width``."""
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=font) <= width:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def image_grid(
    images: Sequence[Image.Image], rows: int, background: tuple[int, int, int] = GRID_BACKGROUND
) -> Image.Image:
    """A1111 images.image_grid with ``rows`` given: ceil(n / rows) columns of cells as large
    as the largest image, each image centred in its cell, filled left to right, top to
    bottom."""
    if not images:
        raise ValueError("no images for a grid")
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    w = max(im.width for im in images)
    h = max(im.height for im in images)
    grid = Image.new("RGB", (cols * w, rows * h), background)
    for i, im in enumerate(images):
        dx, dy = (w - im.width) // 2, (h - im.height) // 2
        cell = im if im.mode == "RGB" else im.convert("RGB")
        grid.paste(cell, (i % cols * w + dx, i // cols * h + dy))
    return grid


def _as_lines(texts: Sequence[str | Sequence[str]]) -> list[list[str]]:
    out = []
    for t in texts:
        items = [t] if isinstance(t, str) else list(t)
        out.append(
            [s if len(s) <= _MAX_LABEL_CHARS else s[: _MAX_LABEL_CHARS - 3] + "..." for s in items]
        )
    return out


def draw_grid_annotations(
    im: Image.Image,
    width: int,
    height: int,
    hor_texts: Sequence[str | Sequence[str]],
    ver_texts: Sequence[str | Sequence[str]],
    margin: int = 0,
    *,
    background: tuple[int, int, int] = GRID_BACKGROUND,
    color: tuple[int, int, int] = GRID_TEXT,
) -> Image.Image:
    """A1111 images.draw_grid_annotations: ``im`` (a grid of ``width`` x ``height`` cells)
    with a label over each column and left of each row, and ``margin`` pixels between cells.

    As A1111: the font is (width + height) // 25 pixels, lines half that apart; labels wrap
    at word breaks to the cell's width (the left strip is 3/4 of a cell wide, and only there
    when some row has a label); a word too wide for its strip is drawn smaller. Each column
    or row label is a string or a list of lines."""
    hor = _as_lines(hor_texts)
    ver = _as_lines(ver_texts)
    cols, rows = im.width // width, im.height // height
    if cols != len(hor) or rows != len(ver):
        raise ValueError(
            f"{len(hor)} column and {len(ver)} row labels for a grid of {cols}x{rows} cells"
        )
    fontsize = max(1, (width + height) // 25)
    spacing = fontsize // 2
    font = _font(fontsize)
    pad_left = 0 if sum(len(s) for lines in ver for s in lines) == 0 else width * 3 // 4

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1), background))

    def layout(groups: list[list[str]], allowed: int) -> list[list[tuple[str, int, int]]]:
        out = []
        for lines in groups:
            wrapped = [w for s in lines for w in _wrap(measure, s, font, allowed)]
            out.append([(s, *_text_size(measure, s, font)) for s in wrapped])
        return out

    hor_lines = layout(hor, width)
    ver_lines = layout(ver, pad_left)
    hor_heights = [sum(h + spacing for _, _, h in lines) - spacing for lines in hor_lines]
    # A1111 takes a spacing off per line here, so a row's labels are centred on their ink
    ver_heights = [sum(h for _, _, h in lines) for lines in ver_lines]
    pad_top = 0 if sum(hor_heights) == 0 else max(hor_heights) + spacing * 2

    result = Image.new(
        "RGB",
        (im.width + pad_left + margin * (cols - 1), im.height + pad_top + margin * (rows - 1)),
        background,
    )
    for row in range(rows):
        for col in range(cols):
            cell = im.crop((width * col, height * row, width * (col + 1), height * (row + 1)))
            result.paste(
                cell, (pad_left + (width + margin) * col, pad_top + (height + margin) * row)
            )

    draw = ImageDraw.Draw(result)

    def draw_lines(cx: float, top: float, lines: list[tuple[str, int, int]], allowed: int) -> None:
        for text, _w, h in lines:
            size, fnt = fontsize, font
            while size > 1 and _text_size(draw, text, fnt)[0] > allowed:
                size -= 1
                fnt = _font(size)
            if text:
                left, t, right, bottom = draw.textbbox((0, 0), text, font=fnt)
                cy = top + h / 2
                draw.text(
                    (cx - (right - left) / 2 - left, cy - (bottom - t) / 2 - t),
                    text,
                    font=fnt,
                    fill=color,
                )
            top += h + spacing

    for col in range(cols):
        x = pad_left + (width + margin) * col + width / 2
        draw_lines(x, pad_top / 2 - hor_heights[col] / 2, hor_lines[col], width)
    for row in range(rows):
        y = pad_top + (height + margin) * row + height / 2 - ver_heights[row] / 2
        draw_lines(pad_left / 2, y, ver_lines[row], pad_left)
    return result


def draw_xyz_grid(
    images: Sequence[Image.Image | None],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    z_labels: Sequence[str],
    *,
    draw_legend: bool = True,
    margin: int = 0,
) -> tuple[Image.Image, list[Image.Image]]:
    """(the whole grid, the sub-grids) as A1111's draw_xyz_grid draws them: for each Z value
    a grid of its images, X across and Y down (``len(y_labels)`` rows), labelled X on top and
    Y on the left; then the Z grids in one row, each titled with its Z label (no title strip
    when the Z labels are empty, as with a Nothing axis). ``images`` are in
    :func:`cell_index` order; a None (a cell that failed) is drawn black, as in A1111."""
    nx, ny, nz = len(x_labels), len(y_labels), len(z_labels)
    if len(images) != nx * ny * nz:
        raise ValueError(f"{len(images)} images for {nx}x{ny}x{nz} labels")
    first = next((im for im in images if im is not None), None)
    if first is None:
        raise XYZError("the X/Y/Z plot made no image: see why each cell failed")
    filled = [im if im is not None else Image.new(first.mode, first.size) for im in images]
    sub_grids: list[Image.Image] = []
    for iz in range(nz):
        start = iz * nx * ny
        cells = filled[start : start + nx * ny]
        grid = image_grid(cells, rows=ny)
        if draw_legend:
            cw, ch = grid.width // nx, grid.height // ny
            grid = draw_grid_annotations(grid, cw, ch, list(x_labels), list(y_labels), margin)
        sub_grids.append(grid)
    whole = image_grid(sub_grids, rows=1)
    if draw_legend:
        whole = draw_grid_annotations(whole, whole.width // nz, whole.height, list(z_labels), [""])
    return whole, sub_grids
