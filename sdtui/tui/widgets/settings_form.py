"""The settings form: mode, model, sampler, steps, CFG, seed, size, batch, img2img and extras
fields, then folded sections: "Hires fix" (txt2img's second pass), "Inpaint" (img2img: the
mask, its blur and area, outpainting) and "More" (VAE, clip skip, variation seed, rescaled CFG,
face restoration, the refiner, memory mode), so the form still fits 80x24. The rows are those of
``form_spec.FIELDS``, in its order. Every edit is parsed and checked at once
(``form_state.parse_form``, which uses ``GenerationParams.field_errors``); the problem shows
under its field and FormChanged tells the app whether Generate may run. The rows a model's
family does not have (``family_presets.hidden_fields``: Flux's hires fix, SD's Distilled CFG)
are hidden, their values kept."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.css.query import NoMatches
from textual.widget import Widget
from textual.widgets import Button, Checkbox, Collapsible, Input, Label, Select

from sdtui.family_presets import hidden_fields, sampler_names, schedule_names
from sdtui.safe_text import one_line
from sdtui.tui import form_spec
from sdtui.tui.form_spec import MODES, FieldSpec, Section
from sdtui.tui.form_state import SIZE_PRESETS, FormState, form_fields, parse_form
from sdtui.tui.messages import FormChanged, RandomSeedRequested, ReuseSeedRequested
from sdtui.tui.widgets.safe_input import ControlPictures

# the folded sections below the main one, and the CSS classes of each (the modes it shows in)
FOLDED: dict[Section, str] = {"hires": "gen t2i", "inpaint": "i2i", "more": "gen"}
NO_REFINER = ""  # the refiner drop-down's first option: no refiner (shown as "none")
LABEL_WIDTH = 10  # of a row's label (the CSS below); a longer one takes its own width


def _preset_label(w: int, h: int) -> str:
    return f"{w}x{h}"


def _options(values: Sequence[str]) -> list[tuple[Content, str]]:
    """Select options: a model, VAE or sampler name comes from a file name or a PNG, so it
    is drawn as plain text (no markup) with control characters shown, not sent."""
    return [(Content(one_line(v) if v else "none"), v) for v in values]


class SettingsForm(VerticalScroll):
    DEFAULT_CSS = """
    SettingsForm { height: 1fr; scrollbar-size-vertical: 1; }
    SettingsForm .row { height: 1; margin: 0 0 0 0; }
    SettingsForm .row > Label { width: 10; color: $text-muted; }
    SettingsForm .row > Label.inner { width: auto; padding: 0 1; }
    SettingsForm .row > Label.wide { width: auto; padding-right: 1; }
    SettingsForm .row Input { width: 1fr; }
    SettingsForm .row Select { width: 1fr; }
    SettingsForm .row Button { width: auto; min-width: 4; margin-left: 1; }
    SettingsForm .row Checkbox { width: 1fr; }
    SettingsForm .error { color: $error; height: auto; padding-left: 10; display: none; }
    SettingsForm .error.shown { display: block; }
    SettingsForm #generate { width: 100%; margin-top: 1; }
    SettingsForm .i2i, SettingsForm .extras { display: none; }
    SettingsForm.mode-img2img .i2i { display: block; }
    SettingsForm.mode-extras .extras { display: block; }
    SettingsForm.mode-extras .gen { display: none; }
    SettingsForm.mode-img2img .t2i { display: none; }
    /* what the model's family does not have (Flux's hires fix, SD's Distilled CFG) */
    SettingsForm .family-hidden { display: none !important; }
    SettingsForm Collapsible {
        padding: 0; border-top: none; background: transparent; height: auto;
    }
    SettingsForm Collapsible > Contents { padding: 0; }
    SettingsForm CollapsibleTitle { padding: 0; color: $text-muted; }
    SettingsForm CollapsibleTitle:focus { color: $text; }
    /* the focused field: a bar at its left and its row's name in bold, both in
       $text-primary, which reads on the background of every built-in theme (a shade alone is
       lost in many; $accent is pale on the light ones) */
    SettingsForm .row > Input, SettingsForm .row > Select, SettingsForm .row > Checkbox {
        border-left: blank !important;
    }
    SettingsForm .row > Input:focus, SettingsForm .row > Select:focus,
    SettingsForm .row > Checkbox:focus {
        border-left: outer $text-primary !important;
    }
    SettingsForm .row:focus-within > Label:first-of-type { color: $text-primary; text-style: bold; }
    """

    def __init__(
        self,
        state: FormState,
        models: Sequence[str],
        upscalers: Sequence[str],
        *,
        hires_upscalers: Sequence[str] = ("Latent",),
        vaes: Sequence[str] = ("Automatic", "None"),
        family: str | None = None,
        id: str | None = None,
    ) -> None:
        # the mode's class is set before mounting: set later, it restyles every field
        super().__init__(id=id, classes=f"mode-{state.mode}")
        self.state = state
        self.errors: dict[str, str] = {}
        # the options of the drop-downs whose choices are found on disk
        self._given: dict[str, list[str]] = {
            "model": list(models),
            "upscaler": list(upscalers),
            "hr_upscaler": list(hires_upscalers),
            "vae": list(vaes),
            "refiner_checkpoint": [NO_REFINER, *models],
        }
        self._choices: dict[str, list[str]] = {}
        self._posted = False
        # the model's family label ("SD1", "Flux.1 dev"): its rows only (set_family)
        self.family = family
        self._hidden = hidden_fields(family)
        # each field's row and its label, to hide what a family does not have
        self._row_of: dict[str, Horizontal] = {}
        self._label_of: dict[str, Label] = {}

    # -- building ------------------------------------------------------------------------

    def _select(self, name: str, options: Sequence[str], value: str) -> Select[str]:
        opts = list(options)
        if value and value not in opts:
            opts.append(value)
        self._choices[name] = opts
        return Select(
            _options(opts),
            allow_blank=False,
            value=value if value in opts else opts[0],
            id=name,
            compact=True,
        )

    def _error(self, name: str) -> Label:
        hidden = " family-hidden" if name in self._hidden else ""
        return Label("", id=f"{name}-error", classes="error" + hidden, markup=False)

    @property
    def hidden(self) -> frozenset[str]:
        """The fields the model's family does not have (their rows are hidden)."""
        return self._hidden

    def _section_hidden(self, section: Section) -> bool:
        names = [spec.name for spec in form_spec.FIELDS if spec.section == section]
        return bool(names) and all(name in self._hidden for name in names)

    def set_family(self, family: str | None) -> None:
        """Show the rows the model's family has and hide the others (Flux: no hires fix,
        inpainting, refiner, ...; Distilled CFG for Flux dev only). The values stay."""
        self.family = family
        # Flux.1 / SD3.5 list the samplers they run (a value already picked stays listed)
        self.update_choices("sampler", sampler_names(family))
        self.update_choices("schedule_type", schedule_names(family))
        hidden = hidden_fields(family)
        if hidden == self._hidden:
            return  # SD1 after SDXL: the same rows (no restyle of the whole form)
        self._hidden = hidden
        rows: dict[Horizontal, bool] = {}
        for spec in form_spec.FIELDS:
            gone = spec.name in hidden
            row = self._row_of[spec.name]
            rows[row] = rows.get(row, True) and gone
            for widget in self.query(f"#{spec.name}, #{spec.name}-error"):
                widget.set_class(gone, "family-hidden")
            self._label_of[spec.name].set_class(gone, "family-hidden")
        for row, gone in rows.items():
            row.set_class(gone, "family-hidden")
        for section in FOLDED:
            collapsible = self.query_one(f"#{section}", Collapsible)
            collapsible.set_class(self._section_hidden(section), "family-hidden")

    def compose(self) -> ComposeResult:
        values = form_fields(self.state)
        yield from self._rows("main", values)
        for section, classes in FOLDED.items():
            title = _title(section_title(section, self.state))
            gone = " family-hidden" if self._section_hidden(section) else ""
            with Collapsible(
                title=title,  # type: ignore[arg-type]  # a Content is drawn as it is, no markup
                id=section,
                classes=f"{classes} -collapsed{gone}",
            ):
                yield from self._rows(section, values)
        yield Button(
            "Generate", id="generate", variant="primary", action="screen.generate", compact=True
        )

    def _rows(self, section: Section, values: dict[str, str]) -> ComposeResult:
        """Each row of ``section``: its label and fields, then their error lines."""
        for row in form_spec.rows(section):
            first = row[0]
            classes = "row" if first.shown == "all" else f"row {first.shown}"
            if all(spec.name in self._hidden for spec in row):
                classes += " family-hidden"
            with Horizontal(classes=classes) as line:
                for spec in row:
                    hidden = " family-hidden" if spec.name in self._hidden else ""
                    if spec is first:
                        wide = len(spec.label) >= LABEL_WIDTH
                        label = Label(spec.label, classes=("wide" if wide else "") + hidden)
                    else:
                        label = Label(spec.label, classes="inner" + hidden)
                    self._row_of[spec.name], self._label_of[spec.name] = line, label
                    yield label
                    field = self._field(spec, values[spec.name])
                    field.set_class(bool(hidden), "family-hidden")
                    yield field
                # the widgets that edit no field of their own: seed buttons, size presets
                if first.name == "seed":
                    yield Button("rnd", id="random-seed", compact=True, tooltip="random seed (-1)")
                    yield Button(
                        "last", id="reuse-seed", compact=True, tooltip="seed of the selected image"
                    )
            if first.name == "width":
                with Horizontal(classes="row gen"):
                    yield Label("Preset")
                    yield Select(
                        [(_preset_label(w, h), f"{w}x{h}") for w, h in SIZE_PRESETS],
                        prompt="custom",
                        id="size_preset",
                        compact=True,
                    )
            for spec in row:
                yield self._error(spec.name)

    def _field(self, spec: FieldSpec, value: str) -> Widget:
        tooltip = spec.tooltip or None
        if spec.kind == "choice":
            if spec.name == "sampler":
                return self._select(spec.name, sampler_names(self.family), value)
            if spec.name == "schedule_type":
                return self._select(spec.name, schedule_names(self.family), value)
            return self._select(spec.name, spec.choices or self._given[spec.name], value)
        if spec.kind == "check":
            return Checkbox(spec.hint, bool(value), id=spec.name, compact=True, tooltip=tooltip)
        if spec.kind == "path":
            return Input(
                value,
                id=spec.name,
                placeholder=spec.hint,
                compact=True,
                highlighter=ControlPictures(),
                tooltip=tooltip,
            )
        number: Literal["integer", "number"] = "integer" if spec.kind == "int" else "number"
        return Input(value, id=spec.name, type=number, compact=True, tooltip=tooltip)

    def on_mount(self) -> None:
        self._sync_preset()
        self._reparse()

    # -- reading and writing -------------------------------------------------------------

    def raw_values(self) -> dict[str, str]:
        raw: dict[str, str] = {}
        for spec in form_spec.FIELDS:
            if spec.kind == "choice":
                value = self.query_one(f"#{spec.name}", Select).value
                if not isinstance(value, str):
                    continue  # nothing picked (a blank drop-down): the state's value stays
                raw[spec.name] = value
            elif spec.kind == "check":
                raw[spec.name] = "1" if self.query_one(f"#{spec.name}", Checkbox).value else ""
            else:
                raw[spec.name] = self.query_one(f"#{spec.name}", Input).value
        return raw

    def load(self, state: FormState) -> None:
        """Show ``state`` in every field (the prompts live in the prompt editor)."""
        self.state = state
        values = form_fields(state)
        for spec in form_spec.FIELDS:
            self._show(spec, values[spec.name])
        self._reparse()
        # the fields' Changed events find the state already loaded: _reparse returns early
        self._retitle(self.state)

    def set_field(self, name: str, text: str) -> None:
        spec = form_spec.field_spec(name)
        if spec is None:
            raise KeyError(f"the form has no field {name!r}")
        self._show(spec, text)
        self._reparse()

    def _show(self, spec: FieldSpec, text: str) -> None:
        if spec.kind == "choice":
            self.set_choice(spec.name, text)
        elif spec.kind == "check":
            value = text.strip().lower() in form_spec.TRUE_WORDS
            self.query_one(f"#{spec.name}", Checkbox).value = value
        else:
            self.query_one(f"#{spec.name}", Input).value = text

    def set_choice(self, name: str, value: str) -> None:
        select = self.query_one(f"#{name}", Select)
        options = self._choices.setdefault(name, [])
        if not value and value not in options:
            return  # no model named: the drop-down keeps its pick
        if value not in options:
            options.append(value)
            select.set_options(_options(options))
        select.value = value

    def update_choices(self, name: str, options: Sequence[str]) -> None:
        """New options for a select (found on disk after the first frame); the value shown
        stays, added to the list when it is not in it. The models are the refiner's too."""
        if name == "model":
            self.update_choices("refiner_checkpoint", [NO_REFINER, *options])
        select = self.query_one(f"#{name}", Select)
        value = select.value if isinstance(select.value, str) else ""
        opts = list(dict.fromkeys(options))
        if value and value not in opts:
            opts.append(value)
        if not opts or opts == self._choices.get(name):
            return
        self._choices[name] = opts
        with select.prevent(Select.Changed):
            select.set_options(_options(opts))
            select.value = value if value in opts else opts[0]

    def reveal(self, name: str) -> None:
        """Unfold the section holding field ``name`` (to show its problem) and focus it."""
        spec = form_spec.field_spec(name)
        if name in self._hidden:
            return  # not a field of this model's family
        if spec is not None and spec.section in FOLDED:
            self.query_one(f"#{spec.section}", Collapsible).collapsed = False
        with contextlib.suppress(NoMatches):
            widget = self.query_one(f"#{name}")
            self.call_after_refresh(widget.focus)

    # -- events ----------------------------------------------------------------------------

    @on(Input.Changed)
    @on(Select.Changed)
    @on(Checkbox.Changed)
    def _edited(self, event: Input.Changed | Select.Changed | Checkbox.Changed) -> None:
        event.stop()
        control_id = event.control.id if event.control else None
        if control_id == "size_preset":
            value = event.value
            if isinstance(value, str) and "x" in value:
                w, h = value.split("x")
                self.query_one("#width", Input).value = w
                self.query_one("#height", Input).value = h
        if control_id == "mode" and not self.has_class(f"mode-{event.value}"):
            for mode in MODES:
                self.set_class(event.value == mode, f"mode-{mode}")
        if control_id in ("width", "height"):
            self._sync_preset()
        self._reparse()

    @on(Button.Pressed, "#random-seed")
    def _random_seed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(RandomSeedRequested())

    @on(Button.Pressed, "#reuse-seed")
    def _reuse_seed(self, event: Button.Pressed) -> None:
        event.stop()
        self.post_message(ReuseSeedRequested())

    def _sync_preset(self) -> None:
        size = f"{self.query_one('#width', Input).value}x{self.query_one('#height', Input).value}"
        preset = self.query_one("#size_preset", Select)
        if size in {f"{w}x{h}" for w, h in SIZE_PRESETS}:
            if preset.value != size:
                preset.value = size
        elif not preset.is_blank():
            preset.clear()

    def _reparse(self) -> None:
        state, errors = parse_form(self.raw_values(), self.state)
        if state == self.state and errors == self.errors and self._posted:
            return  # mounting fires a Changed per field: restyle and tell the app only once
        self._posted = True
        self.state = state
        self.show_errors(errors)
        self._retitle(state)
        self.post_message(FormChanged(state, errors))

    def _retitle(self, state: FormState) -> None:
        """The folded sections' titles say what they hold (``More: VAE ..., RNG GPU``)."""
        for section in FOLDED:
            title = _title(section_title(section, state))
            self.query_one(f"#{section}", Collapsible).title = title  # type: ignore[assignment]

    def show_errors(self, errors: dict[str, str]) -> None:
        """Show each message under its field; only labels whose text changes are touched."""
        previous, self.errors = self.errors, errors
        for name in set(previous) | set(errors):
            message = errors.get(name, "")
            if previous.get(name, "") == message:
                continue
            for label in self.query(f"#{name}-error").results(Label):
                label.update(one_line(message))
                label.set_class(bool(message), "shown")


def _title(text: str) -> Content:
    """A section title holds names from a PNG (VAE, upscaler): no markup, no escapes."""
    return Content(one_line(text))


def section_title(section: Section, state: FormState) -> str:
    """A folded section's title: a summary of its values, read without unfolding it."""
    if section == "hires":
        return hires_title(state)
    return inpaint_title(state) if section == "inpaint" else more_title(state)


def hires_title(state: FormState) -> str:
    p = state.params
    if not p.enable_hr:
        return "Hires fix: off"
    return f"Hires fix: x{p.hr_scale:g} {p.hr_upscaler}, denoise {p.hr_denoising_strength:g}"


def inpaint_title(state: FormState) -> str:
    p = state.params
    parts = []
    if p.mask:
        parts.append(Path(p.mask).name)
        if p.inpaint_full_res:
            parts.append("only masked")
        if p.inpainting_mask_invert:
            parts.append("inverted")
        parts.append(p.inpainting_fill)
    if p.outpaint_pixels > 0:
        parts.append(f"outpaint {p.outpaint_pixels}px {p.outpaint_sides}")
    return "Inpaint: " + (", ".join(parts) if parts else "no mask (alt+m draws one)")


def more_title(state: FormState) -> str:
    p = state.params
    parts = [f"VAE {p.vae}"]
    if p.clip_skip != 1:
        parts.append(f"clip skip {p.clip_skip}")
    if p.rng != "CPU":
        parts.append(f"RNG {p.rng}")
    if p.subseed_strength > 0:
        parts.append(f"var. {p.subseed_strength:g}")
    if p.cfg_rescale > 0:
        parts.append(f"rescale {p.cfg_rescale:g}")
    if p.restore_faces:
        parts.append(f"faces {p.face_restoration_model}")
    if p.refiner_checkpoint:
        parts.append(f"refiner {p.refiner_checkpoint}")
    parts.append(f"mem {state.memory_mode or 'auto'}")
    return "More: " + ", ".join(parts)
