"""The settings form: mode, model, sampler, steps, CFG, seed, size, batch, img2img and extras
fields, then two folded sections: "Hires fix" (txt2img's second pass) and "More" (VAE, clip
skip, variation seed, memory mode), so the form still fits 80x24. Every edit is parsed and checked at once (``form_state.parse_form``, which uses
``GenerationParams.field_errors``); the problem shows under its field and FormChanged tells
the app whether Generate may run."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.content import Content
from textual.css.query import NoMatches
from textual.widgets import Button, Checkbox, Collapsible, Input, Label, Select

from sdtui.config import MEMORY_MODES
from sdtui.safe_text import one_line
from sdtui.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from sdtui.tui.form_state import (
    MODES,
    SIZE_PRESETS,
    FormState,
    form_fields,
    parse_form,
)
from sdtui.tui.messages import FormChanged, RandomSeedRequested, ReuseSeedRequested
from sdtui.tui.widgets.safe_input import ControlPictures

INPUT_FIELDS = (
    "steps",
    "cfg_scale",
    "seed",
    "width",
    "height",
    "batch_count",
    "batch_size",
    "denoising_strength",
    "init_image",
    "extras_image",
    "upscale_scale",
    "hr_scale",
    "hr_second_pass_steps",
    "hr_denoising_strength",
    "clip_skip",
    "subseed",
    "subseed_strength",
)
SELECT_FIELDS = (
    "mode",
    "model",
    "sampler",
    "schedule_type",
    "upscaler",
    "hr_upscaler",
    "vae",
    "memory_mode",
)
CHECKBOX_FIELDS = ("enable_hr",)
HIRES_FIELDS = (
    "enable_hr",
    "hr_scale",
    "hr_second_pass_steps",
    "hr_upscaler",
    "hr_denoising_strength",
)
MORE_FIELDS = ("vae", "clip_skip", "subseed", "subseed_strength", "memory_mode")
# which rows show in which mode
GEN_ROWS = ("model", "sampler", "schedule_type", "steps", "seed", "size", "batch")


def _preset_label(w: int, h: int) -> str:
    return f"{w}x{h}"


def _options(values: Sequence[str]) -> list[tuple[Content, str]]:
    """Select options: a model, VAE or sampler name comes from a file name or a PNG, so it
    is drawn as plain text (no markup) with control characters shown, not sent."""
    return [(Content(one_line(v)), v) for v in values]


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
        id: str | None = None,
    ) -> None:
        # the mode's class is set before mounting: set later, it restyles every field
        super().__init__(id=id, classes=f"mode-{state.mode}")
        self.state = state
        self.errors: dict[str, str] = {}
        self._models = list(models)
        self._upscalers = list(upscalers)
        self._hires_upscalers = list(hires_upscalers)
        self._vaes = list(vaes)
        self._choices: dict[str, list[str]] = {}
        self._posted = False

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
        return Label("", id=f"{name}-error", classes="error", markup=False)

    def compose(self) -> ComposeResult:
        v = form_fields(self.state)
        with Horizontal(classes="row"):
            yield Label("Mode")
            yield self._select("mode", MODES, v["mode"])
        with Horizontal(classes="row gen"):
            yield Label("Model")
            yield self._select("model", self._models, v["model"] or self._models[0])
        with Horizontal(classes="row gen"):
            yield Label("Sampler")
            yield self._select("sampler", SAMPLER_NAMES, v["sampler"])
        yield self._error("sampler")
        with Horizontal(classes="row gen"):
            yield Label("Schedule")
            yield self._select("schedule_type", SCHEDULE_TYPES, v["schedule_type"])
        yield self._error("schedule_type")
        with Horizontal(classes="row gen"):
            yield Label("Steps")
            yield Input(v["steps"], id="steps", type="integer", compact=True)
            yield Label("CFG", classes="inner")
            yield Input(v["cfg_scale"], id="cfg_scale", type="number", compact=True)
        yield self._error("steps")
        yield self._error("cfg_scale")
        with Horizontal(classes="row gen"):
            yield Label("Seed")
            yield Input(v["seed"], id="seed", type="integer", compact=True)
            yield Button("rnd", id="random-seed", compact=True, tooltip="random seed (-1)")
            yield Button(
                "last", id="reuse-seed", compact=True, tooltip="seed of the selected image"
            )
        yield self._error("seed")
        with Horizontal(classes="row gen"):
            yield Label("Size")
            yield Input(v["width"], id="width", type="integer", compact=True)
            yield Label("x", classes="inner")
            yield Input(v["height"], id="height", type="integer", compact=True)
        with Horizontal(classes="row gen"):
            yield Label("Preset")
            yield Select(
                [(_preset_label(w, h), f"{w}x{h}") for w, h in SIZE_PRESETS],
                prompt="custom",
                id="size_preset",
                compact=True,
            )
        yield self._error("width")
        yield self._error("height")
        with Horizontal(classes="row gen"):
            # A1111's words: batch count (batches one after another), batch size (images
            # made together, in one pass)
            yield Label("Batch count", classes="wide")
            yield Input(
                v["batch_count"],
                id="batch_count",
                type="integer",
                compact=True,
                tooltip="batches, one after another",
            )
            yield Label("Batch size", classes="inner")
            yield Input(
                v["batch_size"],
                id="batch_size",
                type="integer",
                compact=True,
                tooltip="Batch size: images made together, in one pass",
            )
        yield self._error("batch_count")
        yield self._error("batch_size")
        with Horizontal(classes="row i2i"):
            yield Label("Denoise")
            yield Input(
                v["denoising_strength"], id="denoising_strength", type="number", compact=True
            )
        yield self._error("denoising_strength")
        with Horizontal(classes="row i2i"):
            yield Label("Init img")
            yield Input(
                v["init_image"],
                id="init_image",
                placeholder="path of a PNG",
                compact=True,
                highlighter=ControlPictures(),
            )
        yield self._error("init_image")
        with Horizontal(classes="row extras"):
            yield Label("Image")
            yield Input(
                v["extras_image"],
                id="extras_image",
                placeholder="path of a PNG",
                compact=True,
                highlighter=ControlPictures(),
            )
        yield self._error("extras_image")
        with Horizontal(classes="row extras"):
            yield Label("Upscaler")
            yield self._select("upscaler", self._upscalers, v["upscaler"])
        with Horizontal(classes="row extras"):
            yield Label("Scale")
            yield Input(v["upscale_scale"], id="upscale_scale", type="number", compact=True)
        yield self._error("upscale_scale")
        p = self.state.params
        with Collapsible(title=_title(hires_title(self.state)), id="hires", classes="gen t2i -collapsed"):
            with Horizontal(classes="row"):
                yield Label("Enable")
                yield Checkbox(
                    "second pass, larger",
                    p.enable_hr,
                    id="enable_hr",
                    compact=True,
                    tooltip="txt2img, then upscale and denoise again (A1111's hires fix)",
                )
            with Horizontal(classes="row"):
                yield Label("Upscale")
                yield Input(v["hr_scale"], id="hr_scale", type="number", compact=True)
                yield Label("steps", classes="inner")
                yield Input(
                    v["hr_second_pass_steps"],
                    id="hr_second_pass_steps",
                    type="integer",
                    compact=True,
                    tooltip="0: as many as the first pass",
                )
            yield self._error("hr_scale")
            yield self._error("hr_second_pass_steps")
            with Horizontal(classes="row"):
                yield Label("Upscaler")
                yield self._select("hr_upscaler", self._hires_upscalers, v["hr_upscaler"])
            with Horizontal(classes="row"):
                yield Label("Denoise")
                yield Input(
                    v["hr_denoising_strength"],
                    id="hr_denoising_strength",
                    type="number",
                    compact=True,
                )
            yield self._error("hr_denoising_strength")
        with Collapsible(title=_title(more_title(self.state)), id="more", classes="gen -collapsed"):
            with Horizontal(classes="row"):
                yield Label("VAE")
                yield self._select("vae", self._vaes, v["vae"])
            yield self._error("vae")
            with Horizontal(classes="row"):
                yield Label("Clip skip")
                yield Input(v["clip_skip"], id="clip_skip", type="integer", compact=True)
            yield self._error("clip_skip")
            with Horizontal(classes="row"):
                yield Label("Var. seed")
                yield Input(v["subseed"], id="subseed", type="integer", compact=True)
                yield Label("str", classes="inner")
                yield Input(
                    v["subseed_strength"], id="subseed_strength", type="number", compact=True
                )
            yield self._error("subseed")
            yield self._error("subseed_strength")
            with Horizontal(classes="row"):
                yield Label("Memory")
                yield self._select("memory_mode", MEMORY_MODES, v["memory_mode"] or "auto")
        yield Button(
            "Generate", id="generate", variant="primary", action="screen.generate", compact=True
        )

    def on_mount(self) -> None:
        self._sync_preset()
        self._reparse()

    # -- reading and writing -------------------------------------------------------------

    def raw_values(self) -> dict[str, str]:
        raw: dict[str, str] = {}
        for name in INPUT_FIELDS:
            raw[name] = self.query_one(f"#{name}", Input).value
        for name in SELECT_FIELDS:
            value = self.query_one(f"#{name}", Select).value
            raw[name] = value if isinstance(value, str) else ""
        for name in CHECKBOX_FIELDS:
            raw[name] = "1" if self.query_one(f"#{name}", Checkbox).value else ""
        if raw["model"] == "":
            raw.pop("model")
        return raw

    def load(self, state: FormState) -> None:
        """Show ``state`` in every field (the prompts live in the prompt editor)."""
        self.state = state
        values = form_fields(state)
        for name in INPUT_FIELDS:
            self.query_one(f"#{name}", Input).value = values[name]
        for name in SELECT_FIELDS:
            self.set_choice(name, values[name])
        for name in CHECKBOX_FIELDS:
            self.query_one(f"#{name}", Checkbox).value = bool(values[name])
        self._reparse()

    def set_field(self, name: str, text: str) -> None:
        if name in SELECT_FIELDS:
            self.set_choice(name, text)
        elif name in CHECKBOX_FIELDS:
            self.query_one(f"#{name}", Checkbox).value = text.strip().lower() in ("1", "true", "on")
        else:
            self.query_one(f"#{name}", Input).value = text
        self._reparse()

    def set_choice(self, name: str, value: str) -> None:
        select = self.query_one(f"#{name}", Select)
        if not value:
            return
        options = self._choices.setdefault(name, [])
        if value not in options:
            options.append(value)
            select.set_options(_options(options))
        select.value = value

    def update_choices(self, name: str, options: Sequence[str]) -> None:
        """New options for a select (found on disk after the first frame); the value shown
        stays, added to the list when it is not in it."""
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
        for section, fields in (("#hires", HIRES_FIELDS), ("#more", MORE_FIELDS)):
            if name in fields:
                self.query_one(section, Collapsible).collapsed = False
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
        self.query_one("#hires", Collapsible).title = _title(hires_title(state))
        self.query_one("#more", Collapsible).title = _title(more_title(state))
        self.post_message(FormChanged(state, errors))

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


def hires_title(state: FormState) -> str:
    p = state.params
    if not p.enable_hr:
        return "Hires fix: off"
    return f"Hires fix: x{p.hr_scale:g} {p.hr_upscaler}, denoise {p.hr_denoising_strength:g}"


def more_title(state: FormState) -> str:
    p = state.params
    parts = [f"VAE {p.vae}"]
    if p.clip_skip != 1:
        parts.append(f"clip skip {p.clip_skip}")
    if p.subseed_strength > 0:
        parts.append(f"var. {p.subseed_strength:g}")
    parts.append(f"mem {state.memory_mode or 'auto'}")
    return "More: " + ", ".join(parts)
