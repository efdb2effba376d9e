"""The X/Y/Z plot (A1111's script) over the form's parameters: an axis type and its values
for X, Y and Z, "Vary seeds" per axis, "Keep -1 for seeds", "Draw legend" and the grid's
margins. The values are checked as they are typed (``sdtui.xyz.prepare_xyz``: the message
names the axis and what is wrong) and the number of images is shown; enter or ctrl+g queues
the plot, escape goes back. Either way the screen returns the plot's settings, so the main
screen opens it with them next time.

The main screen gives the base params (the form's, styles applied) and does the submitting
(``submit`` returns the reason it could not, shown here, or None)."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping, Sequence

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.css.query import NoMatches
from textual.events import DescendantFocus
from textual.screen import ModalScreen
from textual.widgets import Checkbox, Input, Label, Select

from sdtui.errors import UserError
from sdtui.jobstore import job_summary
from sdtui.params import MAX_XYZ_MARGIN, GenerationParams, ParamError, XYZParams
from sdtui.safe_text import one_line
from sdtui.tui.jobs import JobInfo
from sdtui.tui.widgets.safe_input import ControlPictures
from sdtui.xyz import AXIS_TYPES, AxisType, plot_of, prepare_xyz

AXES = ("x", "y", "z")
# A1111's xyz_grid.py: X is Seed, Y and Z are Nothing until chosen
DEFAULT_PLOT = XYZParams(x=("Seed", ""))
RANGES = "ranges 1-5, 1-10 (+2) (a step), 5-15 [3] (a count)"
FLOAT_RANGES = "ranges 5-9 (+0.5) (a step), 1-2 [5] (a count)"


def axis_hint(axis: AxisType, choices: Sequence[str] = ()) -> str:
    """What to type for ``axis`` (A1111's syntax), one line."""
    if axis.is_nothing:
        return "Nothing: no axis (pick a type first)"
    head = f"{axis.label}: comma-separated values (quote one holding a comma)"
    if axis.kind == "int":
        return f"{head}; whole numbers, {RANGES}"
    if axis.kind == "float":
        return f"{head}; numbers, {FLOAT_RANGES}"
    if axis.label == "Prompt S/R":
        return f"{head}; the first is searched in the prompt and replaced by each value"
    if axis.label == "Prompt order":
        return f"{head}; words of the prompt, made in every order"
    if axis.label == "Size":
        return f"{head}; WIDTHxHEIGHT like 512x512, 512x768"
    options = list(axis.choices or choices)
    if options:
        shown = ", ".join(options[:12]) + (", …" if len(options) > 12 else "")
        return f"{head}; one of {shown}"
    return head


def placeholder(axis: AxisType) -> str:
    if axis.is_nothing:
        return ""
    examples = {
        "int": "1-5, 1-10 (+2), 5-15 [3]",
        "float": "5-9 (+0.5), 1-2 [5], 7.5",
        "permutations": "token1, token2, token3",
    }
    by_label = {
        "Prompt S/R": "search, replace 1, replace 2",
        "Size": "512x512, 512x768",
        "Sampler": "Euler, DPM++ 2M",
        "Schedule type": "Karras, Exponential",
    }
    return by_label.get(axis.label) or examples.get(axis.kind, "value 1, value 2")


def shape_line(params: XYZParams) -> str:
    """``2 x 3 x 1 = 6 images`` (X x Y x Z), or "" when an axis does not parse."""
    try:
        plot = plot_of(params, rng=random.Random(0))
    except Exception:  # noqa: BLE001 - said by plot_problem; typing never takes the app down
        return ""
    nx, ny, nz = plot.shape
    n = plot.cell_count
    return f"{nx} x {ny} x {nz} = {n} image{'s' if n != 1 else ''}"


def plot_problem(params: XYZParams) -> str:
    """Why the plot cannot run ("" when it can): what ``prepare_xyz`` says, the base params
    (the form's) named as such."""
    try:
        prepare_xyz(params, rng=random.Random(0))
    except ParamError as e:
        if e.field in ("batch_size", "margin"):
            return e.message
        return f"the form's {e.field.replace('_', ' ')}: {e.message}"
    except UserError as e:  # XYZError: names the axis
        return e.message
    except Exception as e:  # noqa: BLE001 - typing never takes the app down
        return f"the plot cannot be checked ({type(e).__name__}: {e}): change the values"
    return ""


def plot_job_info(params: XYZParams) -> JobInfo:
    """The job book's entry for a plot this app queued."""
    from sdtui.xyz import cell_count

    return JobInfo("xyz", job_summary("xyz", params), cell_count(params), params.base.steps)


class XYZScreen(ModalScreen[XYZParams]):
    """Returns the plot's settings (its axes and options; the base params left at their
    defaults) on submit and on escape alike."""

    DEFAULT_CSS = """
    XYZScreen { align: center middle; }
    XYZScreen > Vertical {
        width: 96%; max-width: 110; height: auto; max-height: 100%;
        border: round $accent; padding: 0 1; background: $surface;
    }
    XYZScreen .row { height: 1; margin-top: 1; }
    XYZScreen .row > .name { width: 2; text-style: bold; }
    XYZScreen .row Select { width: 22; }
    XYZScreen .row > Input { width: 1fr; margin-left: 1; }
    XYZScreen .row > Checkbox { width: auto; margin-left: 1; }
    XYZScreen .row > Label.inner { width: auto; padding: 0 1 0 2; color: $text-muted; }
    XYZScreen #margin { width: 7; margin-left: 0; }
    XYZScreen #xyz-base { color: $text-muted; height: auto; width: 1fr; }
    XYZScreen #xyz-hint { color: $text-muted; height: auto; width: 1fr; margin-top: 1; }
    XYZScreen #xyz-count { text-style: bold; height: 1; width: 1fr; margin-top: 1; }
    XYZScreen #xyz-problem { color: $error; height: auto; width: 1fr; }
    /* the focused field: a bar at its left, as in the settings form */
    XYZScreen .row > Input, XYZScreen .row > Select, XYZScreen .row > Checkbox {
        border-left: blank !important;
    }
    XYZScreen .row > Input:focus, XYZScreen .row > Select:focus,
    XYZScreen .row > Checkbox:focus {
        border-left: outer $text-primary !important;
    }
    XYZScreen .row:focus-within > .name { color: $text-primary; }
    """
    BINDINGS = [
        Binding("ctrl+g,ctrl+enter", "run_plot", "Run plot", priority=True),
        Binding("escape", "leave", "Back"),
    ]

    def __init__(
        self,
        base: GenerationParams,
        plot: XYZParams | None,
        submit: Callable[[XYZParams], str | None],
        *,
        problem: str = "",
        choices: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        """``base``: the form's params; ``plot``: the settings to start from (None: A1111's
        defaults); ``submit(params)`` queues the plot, returning why it could not or None;
        ``problem``: what blocks the form itself (shown first, and no plot runs);
        ``choices``: the values a type can take that are found on disk (checkpoint names,
        VAEs, hires upscalers), named in the hint."""
        super().__init__(id="xyz-screen")
        self.base = base
        self.start = plot or DEFAULT_PLOT
        self._submit = submit
        self.form_problem = one_line(problem)
        self.choices = dict(choices or {})
        self.problem = ""  # the last check's verdict on what is shown
        self._checks = 0  # the latest check; an older one's answer is dropped
        self._axis = "x"  # the axis whose syntax the hint shows

    # -- the widgets -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        p = self.start
        with Vertical() as box:
            box.border_title = "X/Y/Z plot"
            box.border_subtitle = "enter/^g: queue it · tab: next field · esc: back"
            yield Label(one_line(self._base_line()), id="xyz-base", markup=False)
            for letter, (label, text), vary in zip(AXES, p.axes, p.vary_seeds, strict=True):
                axis = AXIS_TYPES.get(label, AXIS_TYPES["Nothing"])
                with Horizontal(classes="row"):
                    yield Label(letter.upper(), classes="name", markup=False)
                    yield Select(
                        [(Content(name), name) for name in AXIS_TYPES],
                        allow_blank=False,
                        value=axis.label,
                        id=f"{letter}-type",
                        compact=True,
                        tooltip=f"{letter.upper()} type",
                    )
                    yield Input(
                        text,
                        placeholder=placeholder(axis),
                        id=f"{letter}-values",
                        compact=True,
                        disabled=axis.is_nothing,
                        tooltip=f"{letter.upper()} values",
                        highlighter=ControlPictures(),
                    )
                    yield Checkbox("Vary seeds", vary, id=f"{letter}-vary", compact=True)
            with Horizontal(classes="row"):
                yield Checkbox("Draw legend", p.draw_legend, id="legend", compact=True)
                yield Checkbox(
                    "Keep -1 for seeds", p.no_fixed_seeds, id="keep-random", compact=True
                )
                yield Label("Grid margins (px)", classes="inner", markup=False)
                yield Input(
                    str(p.margin),
                    id="margin",
                    type="integer",
                    max_length=3,
                    compact=True,
                    tooltip=f"0 to {MAX_XYZ_MARGIN}",
                )
            yield Label("", id="xyz-hint", markup=False)
            yield Label("", id="xyz-count", markup=False)
            yield Label("", id="xyz-problem", markup=False)

    def on_mount(self) -> None:
        self._show_hint()
        self.check()
        first = self.query_one("#x-values", Input)
        (first if not first.disabled else self.query_one("#x-type", Select)).focus()

    def _base_line(self) -> str:
        b = self.base
        cfg = f"{b.cfg_scale:g}"
        seed = "random" if b.seed == -1 else str(b.seed)
        return (
            f"Over the form: {job_summary('generate', b)} · {b.sampler} · CFG {cfg} · seed {seed}"
        )

    # -- reading the fields ------------------------------------------------------------------

    def plot(self) -> XYZParams:
        """The plot as the fields say, over the base params."""
        axes = []
        vary = []
        for letter in AXES:
            kind = self.query_one(f"#{letter}-type", Select).value
            label = kind if isinstance(kind, str) else "Nothing"
            text = self.query_one(f"#{letter}-values", Input).value
            axes.append((label, "" if label == "Nothing" else text))
            vary.append(self.query_one(f"#{letter}-vary", Checkbox).value)
        margin_text = self.query_one("#margin", Input).value.strip()
        try:
            margin = int(margin_text or "0")
        except ValueError:
            margin = -1
        return XYZParams(
            base=self.base,
            x=axes[0],
            y=axes[1],
            z=axes[2],
            vary_seeds=(vary[0], vary[1], vary[2]),
            no_fixed_seeds=self.query_one("#keep-random", Checkbox).value,
            draw_legend=self.query_one("#legend", Checkbox).value,
            margin=margin,
        )

    def settings(self) -> XYZParams:
        """What the main screen keeps for next time: the plot without the base params."""
        return self.plot().replace(base=GenerationParams())

    # -- checking as it is typed -------------------------------------------------------------

    @on(Input.Changed)
    @on(Checkbox.Changed)
    def _edited(self) -> None:
        self.check()

    @on(Select.Changed)
    def _type_changed(self, event: Select.Changed) -> None:
        letter = (event.select.id or "x")[0]
        label = event.value if isinstance(event.value, str) else "Nothing"
        axis = AXIS_TYPES.get(label, AXIS_TYPES["Nothing"])
        values = self.query_one(f"#{letter}-values", Input)
        values.placeholder = placeholder(axis)
        values.disabled = axis.is_nothing
        self._axis = letter
        self._show_hint()
        self.check()

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        name = event.widget.id or ""
        if name[:2] in ("x-", "y-", "z-") and name[0] != self._axis:
            self._axis = name[0]
            self._show_hint()

    def _show_hint(self) -> None:
        kind = self.query_one(f"#{self._axis}-type", Select).value
        axis = AXIS_TYPES.get(kind if isinstance(kind, str) else "Nothing", AXIS_TYPES["Nothing"])
        hint = axis_hint(axis, self.choices.get(axis.label, ()))
        self.query_one("#xyz-hint", Label).update(one_line(f"{self._axis.upper()} {hint}"))

    def check(self) -> None:
        """The number of images now; whether every cell can run, in a thread (a plot of
        thousands of cells takes a moment to check) and shown when it is known."""
        params = self.plot()
        self._checks += 1
        self.query_one("#xyz-count", Label).update(shape_line(params))
        if self.form_problem:
            self._show_problem(self.form_problem)
            return
        self._check_cells(params, self._checks)

    @work(thread=True, exclusive=True, group="xyz-check")
    def _check_cells(self, params: XYZParams, check: int) -> None:
        problem = plot_problem(params)
        with contextlib.suppress(RuntimeError):  # the app has quit meanwhile
            self.app.call_from_thread(self._checked, check, problem)

    def _checked(self, check: int, problem: str) -> None:
        if check == self._checks:
            self._show_problem(problem)

    def _show_problem(self, problem: str) -> None:
        self.problem = problem
        try:
            self.query_one("#xyz-problem", Label).update(one_line(problem))
        except NoMatches:  # the screen was closed while the check ran
            pass

    # -- actions -----------------------------------------------------------------------------

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_run_plot()

    def action_run_plot(self) -> None:
        params = self.plot()
        problem = self.form_problem or plot_problem(params)
        if not problem:
            problem = one_line(self._submit(params) or "")
        if problem:
            self._checks += 1  # an answer still on its way is older than this one
            self._show_problem(problem)
            self.app.bell()
            return
        self.dismiss(self.settings())

    def action_leave(self) -> None:
        self.dismiss(self.settings())
