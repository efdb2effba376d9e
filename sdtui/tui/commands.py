"""Every action of the main screen, once: its key (shown in the footer) and its command in
the command palette (ctrl+p). Plus commands that name a thing: switch to a model, remove a
queued job, pick a mode or a size preset, insert a LoRA or an embedding, turn a style on or
off or delete it, set the memory mode."""

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
    from sdtui.tui.screens.main import MainScreen


@dataclass(frozen=True)
class ActionSpec:
    action: str  # MainScreen.action_<action>
    keys: str  # Textual key names, comma separated; the first is shown in the footer
    label: str  # footer text, short
    title: str  # command palette title
    help: str
    priority: bool = True  # work while a text field has focus
    show: bool = True  # in the footer (it is full at 80 columns: newer keys are palette-only)

    @property
    def key(self) -> str:
        """The key shown for it ("" for a command with no key: palette only)."""
        return self.keys.split(",")[0]


ACTIONS: tuple[ActionSpec, ...] = (
    ActionSpec(
        "focus_images",
        "f1",
        "Images",
        "Go to the images",
        "move to the image grid: arrows pick the image F2-F7 act on",
    ),
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
        "edit_mask",
        "alt+m",
        "Mask",
        "Draw an inpaint mask…",
        "draw the img2img mask over the init image (or the selected image) with the keys",
        show=False,
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
        "focus_prompt", "f11", "Prompt", "Go to the prompt", "move to the prompt", show=False
    ),
    ActionSpec(
        "focus_settings",
        "ctrl+f",
        "Settings",
        "Go to the settings",
        "move to the settings form (the field used last)",
        show=False,
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
        "styles",
        "alt+s",
        "Styles",
        "Styles…",
        "pick A1111 styles (styles.csv) to add to the prompts on generate; type to filter, "
        "space turns one on or off",
        show=False,
    ),
    ActionSpec(
        "apply_styles",
        "",
        "Apply styles",
        "Apply styles to the prompt",
        "write the chosen styles into the prompt boxes and unchoose them (A1111's button)",
        show=False,
    ),
    ActionSpec(
        "save_style",
        "",
        "Save style",
        "Save the prompt as a style…",
        "save the prompt and negative prompt in styles.csv under a name you give",
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
    ActionSpec(
        "xyz_plot",
        "alt+x",
        "X/Y/Z",
        "X/Y/Z plot…",
        "A1111's X/Y/Z plot over the form's parameters: one image per value of up to three "
        "axes, then the labelled grid",
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
        Binding(a.keys, a.action, a.label, show=a.show, priority=a.priority, tooltip=a.help)
        for a in ACTIONS
        if a.keys
    ]


def key_of(action: str) -> str:
    """How the first key of ``action`` is written in a pane's title: ``F1``, ``^f``."""
    key = next(a.key for a in ACTIONS if a.action == action)
    if key.startswith("alt+"):
        return key
    return "^" + key.removeprefix("ctrl+") if key.startswith("ctrl+") else key.upper()


def shown(text: str) -> str:
    """A palette title or help names models, LoRAs, prompts: the palette reads both as
    markup, so they are escaped, and control characters are shown, not sent."""
    return escape(one_line(text))


def _commands(main: MainScreen) -> Iterator[tuple[str, Callable[[], Any], str]]:
    for title, callback, help_text in _raw_commands(main):
        yield shown(title), callback, shown(help_text)


def _raw_commands(main: MainScreen) -> Iterator[tuple[str, Callable[[], Any], str]]:
    for spec in ACTIONS:
        if main.check_action(spec.action, ()) is True:
            key = f"  [{spec.key}]" if spec.key else ""
            yield spec.title, getattr(main, f"action_{spec.action}"), f"{spec.help}{key}"
    for name in main.model_names:
        yield f"Switch model: {name}", partial(main.switch_model, name), "load this checkpoint now"
    for name in main.catalog.loras:
        yield (
            f"Insert LoRA: {name}",
            partial(main.insert_lora, name),
            f"<lora:{name}:1> at the prompt cursor",
        )
    for name in main.catalog.embeddings:
        yield (
            f"Insert embedding: {name}",
            partial(main.insert_embedding, name),
            "its name at the prompt cursor",
        )
    chosen = main.form_state.styles
    for name, style in main.style_book.styles.items():
        on = name in chosen
        yield (
            f"Style: {name}{' (on)' if on else ''}",
            partial(main.toggle_style, name),
            ("turn it off: " if on else "add to the prompts on generate: ")
            + (style.prompt or style.negative_prompt or "(empty)"),
        )
    for name in main.style_book.styles:
        yield (
            f"Delete style: {name}",
            partial(main.ask_delete_style, name),
            f"take it out of {main.style_book.path} (asks first)",
        )
    from sdtui.config import MEMORY_MODES

    for mode in MEMORY_MODES:
        current = " (current)" if mode == main.memory_mode else ""
        yield (
            f"Memory mode: {mode}",
            partial(main.set_memory_mode, mode),
            f"{MEMORY_MODE_HELP[mode]}{current}",
        )
    yield (
        "Refresh model lists",
        main.refresh_catalog,
        "list checkpoints, upscalers, VAEs, LoRAs and embeddings again",
    )
    for job_id in main.queued_job_ids():
        yield (
            f"Remove queued job #{job_id}",
            partial(main.remove_job, job_id),
            main.job_summary(job_id),
        )
    from sdtui.tui.form_spec import MODES

    for mode in MODES:
        yield f"Mode: {mode}", partial(main.set_form_field, "mode", mode), "switch the form's mode"
    from sdtui.tui.form_state import SIZE_PRESETS

    for w, h in SIZE_PRESETS:
        yield f"Size {w}x{h}", partial(main.set_size, w, h), "set width and height"


class SdtuiCommands(Provider):
    """The command palette's sdtui commands (the main screen's ``COMMANDS``)."""

    @property
    def _main(self) -> MainScreen:
        return self.screen  # type: ignore[return-value]

    async def discover(self) -> Hits:
        for title, callback, help_text in _commands(self._main):
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, callback, help_text in _commands(self._main):
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)
