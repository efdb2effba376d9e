"""Every action of the main screen, once: its key (shown in the footer) and its command in
the command palette (ctrl+p). Plus commands that name a thing: switch to a model, remove a
queued job, pick a mode or a size preset, insert a LoRA or an embedding, set the memory
mode."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.markup import escape

from sdtui.safe_text import one_line

if TYPE_CHECKING:
    from sdtui.tui.app import SdtuiApp


@dataclass(frozen=True)
class ActionSpec:
    action: str  # SdtuiApp.action_<action>
    keys: str  # Textual key names, comma separated; the first is shown in the footer
    label: str  # footer text, short
    title: str  # command palette title
    help: str
    priority: bool = True  # work while a text field has focus
    show: bool = True  # in the footer (it is full at 80 columns: newer keys are palette-only)


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec(
        "generate",
        "ctrl+g,ctrl+enter",
        "Generate",
        "Generate",
        "run the form (txt2img, img2img or extras); queues behind a running job",
    ),
    ActionSpec(
        "interrupt",
        "escape",
        "Interrupt",
        "Interrupt",
        "stop the running job now; images already saved are kept",
        priority=False,
    ),
    ActionSpec(
        "skip", "ctrl+s", "Skip", "Skip image", "drop the image being made, go on with the batch"
    ),
    ActionSpec(
        "random_seed", "ctrl+n", "Seed -1", "Random seed", "set the seed to -1 (a new one each job)"
    ),
    ActionSpec(
        "reuse_seed",
        "ctrl+r",
        "Last seed",
        "Reuse seed",
        "put the seed of the selected (or last) image in the form",
    ),
    ActionSpec(
        "send_img2img",
        "f2",
        "→img2img",
        "Send to img2img",
        "img2img with the selected image as init image (size kept)",
    ),
    ActionSpec(
        "img2img_2x",
        "f3",
        "img2img2x",
        "img2img at 2x",
        "img2img from the selected image at twice its size, denoise 0.75",
    ),
    ActionSpec(
        "send_extras", "f4", "→extras", "Send to extras", "put the selected image in Extras"
    ),
    ActionSpec(
        "upscale",
        "f5",
        "Upscale",
        "Upscale selected image",
        "run Extras on the selected image with the form's upscaler and scale",
    ),
    ActionSpec(
        "full_view",
        "f6",
        "View",
        "Full view",
        "the selected image full screen, with its parameters",
    ),
    ActionSpec(
        "reuse_params",
        "f7",
        "Reuse",
        "Reuse parameters",
        "load the prompt and settings of the selected image into the form",
    ),
    ActionSpec("history", "f8", "History", "History", "browse recent outputs"),
    ActionSpec(
        "load_params",
        "ctrl+o",
        "Load PNG",
        "Load parameters from PNG",
        "read the parameters of any PNG (sdtui's or A1111's) into the form",
    ),
    ActionSpec(
        "switch_model", "ctrl+l", "Model", "Switch model", "pick a checkpoint and load it now"
    ),
    ActionSpec("toggle_gpu", "f9", "GPU", "Toggle GPU pane", "show or hide the GPU pane"),
    ActionSpec(
        "focus_queue",
        "f10",
        "Queue",
        "Focus queue",
        "move to the queue; Delete removes the highlighted job",
    ),
    ActionSpec(
        "restart_engine",
        "f12",
        "Restart",
        "Restart engine",
        "new engine process (frees all GPU memory); queued jobs are kept",
    ),
    ActionSpec(
        "insert_network",
        "ctrl+k",
        "LoRA/TI",
        "Insert LoRA or embedding…",
        "pick a LoRA or an embedding from the folders and insert it at the prompt cursor",
        show=False,
    ),
    ActionSpec(
        "show_error",
        "ctrl+t",
        "Error",
        "Show last error detail",
        "the technical detail (traceback) of the last failed job",
        show=False,
    ),
)


MEMORY_MODE_HELP = {
    "auto": "the engine picks from the free VRAM",
    "normal": "everything on the GPU: fastest",
    "low": "model offload: parts move to the GPU when used",
    "lowest": "sequential offload: least VRAM, slowest",
}


def bindings() -> list[Binding]:
    return [
        Binding(
            a.keys, f"app.{a.action}", a.label, show=a.show, priority=a.priority, tooltip=a.help
        )
        for a in ACTIONS
    ]


def shown(text: str) -> str:
    """A palette title or help names models, LoRAs, prompts: the palette reads both as
    markup, so they are escaped, and control characters are shown, not sent."""
    return escape(one_line(text))


def _commands(app: SdtuiApp) -> Iterator[tuple[str, Callable[[], Any], str]]:
    for title, callback, help_text in _raw_commands(app):
        yield shown(title), callback, shown(help_text)


def _raw_commands(app: SdtuiApp) -> Iterator[tuple[str, Callable[[], Any], str]]:
    for spec in ACTIONS:
        if app.check_action(spec.action, ()) is True:
            key = spec.keys.split(",")[0]
            yield spec.title, getattr(app, f"action_{spec.action}"), f"{spec.help}  [{key}]"
    for name in app.model_names:
        yield f"Switch model: {name}", partial(app.switch_model, name), "load this checkpoint now"
    for name in app.catalog.loras:
        yield (
            f"Insert LoRA: {name}",
            partial(app.insert_lora, name),
            f"<lora:{name}:1> at the prompt cursor",
        )
    for name in app.catalog.embeddings:
        yield (
            f"Insert embedding: {name}",
            partial(app.insert_embedding, name),
            "its name at the prompt cursor",
        )
    from sdtui.config import MEMORY_MODES

    for mode in MEMORY_MODES:
        current = " (current)" if mode == app.memory_mode else ""
        yield (
            f"Memory mode: {mode}",
            partial(app.set_memory_mode, mode),
            f"{MEMORY_MODE_HELP[mode]}{current}",
        )
    yield (
        "Refresh model lists",
        app.refresh_catalog,
        "list checkpoints, upscalers, VAEs, LoRAs and embeddings again",
    )
    for job_id in app.queued_job_ids():
        yield (
            f"Remove queued job #{job_id}",
            partial(app.remove_job, job_id),
            app.job_summary(job_id),
        )
    for mode in ("txt2img", "img2img", "extras"):
        yield f"Mode: {mode}", partial(app.set_form_field, "mode", mode), "switch the form's mode"
    from sdtui.tui.form_state import SIZE_PRESETS

    for w, h in SIZE_PRESETS:
        yield f"Size {w}x{h}", partial(app.set_size, w, h), "set width and height"


class SdtuiCommands(Provider):
    """The command palette's sdtui commands."""

    @property
    def _app(self) -> SdtuiApp:
        return self.app  # type: ignore[return-value]

    async def discover(self) -> Hits:
        for title, callback, help_text in _commands(self._app):
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in _commands(self._app):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
