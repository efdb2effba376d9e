"""The settings form: mode, model, sampler, steps, CFG, seed, size, batch, img2img and extras
fields. Every edit is parsed and checked at once (``form_state.parse_form``, which uses
``GenerationParams.field_errors``); the problem shows under its field and FormChanged tells
the app whether Generate may run."""

from __future__ import annotations

from collections.abc import Sequence

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Input, Label, Select

from sdtui.samplers import SAMPLER_NAMES, SCHEDULE_TYPES
from sdtui.tui.form_state import (
    MODES,
    SIZE_PRESETS,
    FormState,
    form_fields,
    parse_form,
)
from sdtui.tui.messages import FormChanged, RandomSeedRequested, ReuseSeedRequested

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
)
SELECT_FIELDS = ("mode", "model", "sampler", "schedule_type", "upscaler")
# which rows show in which mode
GEN_ROWS = ("model", "sampler", "schedule_type", "steps", "seed", "size", "batch")


def _preset_label(w: int, h: int) -> str:
    return f"{w}x{h}"


class SettingsForm(VerticalScroll):
    DEFAULT_CSS = """
    SettingsForm { height: 1fr; scrollbar-size-vertical: 1; }
    SettingsForm .row { height: 1; margin: 0 0 0 0; }
    SettingsForm .row > Label { width: 9; color: $text-muted; }
    SettingsForm .row > Label.inner { width: auto; padding: 0 1; }
    SettingsForm .row Input { width: 1fr; }
    SettingsForm .row Select { width: 1fr; }
    SettingsForm .row Button { width: auto; min-width: 4; margin-left: 1; }
    SettingsForm .error { color: $error; height: auto; padding-left: 9; display: none; }
    SettingsForm .error.shown { display: block; }
    SettingsForm #generate { width: 100%; margin-top: 1; }
    SettingsForm .i2i, SettingsForm .extras { display: none; }
    SettingsForm.mode-img2img .i2i { display: block; }
    SettingsForm.mode-extras .extras { display: block; }
    SettingsForm.mode-extras .gen { display: none; }
    """

    def __init__(
        self,
        state: FormState,
        models: Sequence[str],
        upscalers: Sequence[str],
        *,
        id: str | None = None,
    ) -> None:
        super().__init__(id=id)
        self.state = state
        self.errors: dict[str, str] = {}
        self._models = list(models)
        self._upscalers = list(upscalers)
        self._choices: dict[str, list[str]] = {}
        self._posted = False

    # -- building ------------------------------------------------------------------------

    def _select(self, name: str, options: Sequence[str], value: str) -> Select[str]:
        opts = list(options)
        if value and value not in opts:
            opts.append(value)
        self._choices[name] = opts
        return Select(
            [(o, o) for o in opts],
            allow_blank=False,
            value=value if value in opts else opts[0],
            id=name,
            compact=True,
        )

    def _error(self, name: str) -> Label:
        return Label("", id=f"{name}-error", classes="error")

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
            yield Label("Batches")
            yield Input(v["batch_count"], id="batch_count", type="integer", compact=True)
            yield Label("of", classes="inner")
            yield Input(v["batch_size"], id="batch_size", type="integer", compact=True)
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
            yield Input(v["init_image"], id="init_image", placeholder="path of a PNG", compact=True)
        yield self._error("init_image")
        with Horizontal(classes="row extras"):
            yield Label("Image")
            yield Input(
                v["extras_image"], id="extras_image", placeholder="path of a PNG", compact=True
            )
        yield self._error("extras_image")
        with Horizontal(classes="row extras"):
            yield Label("Upscaler")
            yield self._select("upscaler", self._upscalers, v["upscaler"])
        with Horizontal(classes="row extras"):
            yield Label("Scale")
            yield Input(v["upscale_scale"], id="upscale_scale", type="number", compact=True)
        yield self._error("upscale_scale")
        yield Button(
            "Generate", id="generate", variant="primary", action="app.generate", compact=True
        )

    def on_mount(self) -> None:
        self.set_class(True, f"mode-{self.state.mode}")
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
        self._reparse()

    def set_field(self, name: str, text: str) -> None:
        if name in SELECT_FIELDS:
            self.set_choice(name, text)
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
            select.set_options([(o, o) for o in options])
        select.value = value

    # -- events ----------------------------------------------------------------------------

    @on(Input.Changed)
    @on(Select.Changed)
    def _edited(self, event: Input.Changed | Select.Changed) -> None:
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
        self.post_message(FormChanged(state, errors))

    def show_errors(self, errors: dict[str, str]) -> None:
        """Show each message under its field; only labels whose text changes are touched."""
        previous, self.errors = self.errors, errors
        for name in set(previous) | set(errors):
            message = errors.get(name, "")
            if previous.get(name, "") == message:
                continue
            for label in self.query(f"#{name}-error").results(Label):
                label.update(message)
                label.set_class(bool(message), "shown")
