"""Command line: `sdtui` opens the TUI; subcommands run headless on the same engine.

Kept light on purpose: the spawned engine process imports this module again (as the
script's main module), so nothing here imports torch or textual at module level.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from sdtui import __version__
from sdtui.config import FAST_PATHS, GRAPHICS, MEMORY_MODES, Settings, load_settings, valid_device
from sdtui.errors import UserError
from sdtui.params import (
    FACE_RESTORERS,
    MASKED_CONTENT,
    OUTPAINT_SIDES,
    RESIZE_MODES,
    RNG_SOURCES,
    GenerationParams,
    ParamError,
    UpscaleParams,
    parse_size,
)
from sdtui.safe_text import json_dumps, one_line, visible
from sdtui.samplers import FLOW_SCHEDULE_TYPES, SAMPLER_NAMES, SCHEDULE_TYPES
from sdtui.units import format_bytes, format_uptime

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130
QUIET, NORMAL, VERBOSE = -1, 0, 1  # -q, neither, -v
SHELLS = ("bash", "zsh", "fish")


def _device(text: str) -> str:
    if not valid_device(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a device: use auto, cuda, cuda:N, mps or cpu"
        )
    return text


def _devices(text: str) -> tuple[str, ...]:
    items = tuple(d.strip() for d in text.split(",") if d.strip())
    for d in items:
        if d == "auto" or not valid_device(d):
            raise argparse.ArgumentTypeError(f"{d!r} is not a device: list cpu, cuda or cuda:N")
    return items


def _folder_flags(p: argparse.ArgumentParser, top: bool = False) -> None:
    """The flags every command takes. Given before the subcommand or after it, both count:
    a subcommand's copy has no default of its own, so it never hides the first."""
    d: dict[str, Any] = {} if top else {"default": argparse.SUPPRESS}
    g = p.add_argument_group("folders and device")
    g.add_argument(
        "--a1111-dir",
        type=Path,
        help="an existing A1111 install: use its models/, embeddings/, outputs/",
        **d,
    )
    g.add_argument(
        "--models-dir",
        type=Path,
        help="the models/ folder (holds Stable-diffusion/, Lora/, VAE/, ESRGAN/)",
        **d,
    )
    g.add_argument("--outputs-dir", type=Path, help="where images are written (A1111 layout)", **d)
    g.add_argument(
        "--device",
        type=_device,
        help="where to run: auto (default: every NVIDIA GPU, else the Apple GPU on a Mac, "
        "else the CPU), cuda, cuda:N, mps, cpu",
        **d,
    )
    g.add_argument(
        "--devices",
        type=_devices,
        help="the daemon's workers, one per device: e.g. cuda:0,cuda:1",
        **d,
    )
    g.add_argument(
        "--memory-mode",
        choices=MEMORY_MODES,
        help="auto, normal, low (model offload), lowest (sequential offload)",
        **d,
    )
    g.add_argument(
        "--fast-path",
        choices=FAST_PATHS,
        help="CUDA: auto (channels_last + torch.compile), nocompile, off",
        **d,
    )
    g.add_argument(
        "--config", type=Path, help="settings file (default: the platform's config folder)", **d
    )
    g.add_argument(
        "--no-daemon",
        action="store_true",
        help="a private engine that ends with this command, instead of the shared daemon",
        **d,
    )
    o = p.add_argument_group("what is said")
    o.add_argument(
        "-q", "--quiet", action="store_true", help="only errors and the saved paths", **d
    )
    o.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="the engine's log lines and debug details too",
        **d,
    )


def _model_flags(p: argparse.ArgumentParser) -> None:
    """--demo / --model after a subcommand; SUPPRESS keeps a value given before it."""
    p.add_argument(
        "--demo",
        action="store_true",
        help="use the built-in tiny demo model",
        default=argparse.SUPPRESS,
    )
    p.add_argument(
        "--model", help="a name from `sdtui models`, or a path", default=argparse.SUPPRESS
    )


def _axis_labels() -> tuple[str, ...]:
    from sdtui.xyz import AXIS_TYPES  # PIL, no torch

    return tuple(label for label in AXIS_TYPES if label != "Nothing")


def _generation_flags(g: argparse.ArgumentParser, *, batches: bool = True) -> None:
    """What `generate` and `xyz` both take: the prompt and every generation parameter."""
    g.add_argument("prompt")
    g.add_argument("-N", "--negative", default="", help="negative prompt")
    g.add_argument(
        "--style",
        action="append",
        default=[],
        metavar="NAME",
        help="apply a prompt style from styles.csv (A1111's) to the prompt and negative; "
        "repeat it for several, applied in order (`sdtui styles` lists them)",
    )
    # None: sdtui's stock value (A1111's), or a Flux/SD3.5 model's preset (sdtui.family_presets)
    g.add_argument("--steps", type=int, default=None, help="default 20 (Flux/SD3.5: the preset's)")
    g.add_argument(
        "--cfg", type=float, default=None, help="CFG scale, default 7 (Flux: 1, SD3.5: 3.5-4.5)"
    )
    g.add_argument(
        "--distilled-cfg",
        type=float,
        default=None,
        metavar="SCALE",
        help="Distilled CFG Scale (Forge's name): Flux.1 dev's guidance, default 3.5",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=-1,
        help="-1 = random; image i of the job uses seed+i (with a variation strength: the variation seed +i, as A1111)",
    )
    g.add_argument(
        "--size",
        default=None,
        help="WIDTHxHEIGHT, multiples of 8 (default 512x512; Flux 896x1152 and SD3.5 "
        "1024x1024, multiples of 16)",
    )
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    if batches:
        g.add_argument("--batch-size", type=int, default=1, help="images per batch")
        g.add_argument(
            "-n", "--batch-count", type=int, default=1, help="batches, one after another"
        )
    g.add_argument(
        "--sampler",
        default=None,
        help=f"one of: {', '.join(SAMPLER_NAMES)} (old names like 'DPM++ 2M Karras' too); "
        "default Euler a (Flux/SD3.5: Euler; DDIM, PLMS and UniPC are SD's only)",
    )
    g.add_argument(
        "--schedule",
        default=None,
        help=f"schedule type: {', '.join(SCHEDULE_TYPES)}; default Automatic "
        f"(Flux/SD3.5: {', '.join(FLOW_SCHEDULE_TYPES)})",
    )
    g.add_argument("--init-image", help="img2img: start from this image")
    g.add_argument("--denoise", type=float, default=0.75, help="img2img denoising strength, 0 to 1")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="just resize")
    i = g.add_argument_group("inpainting (img2img with a mask, as A1111's Inpaint tab)")
    i.add_argument(
        "--mask",
        metavar="FILE",
        help="inpaint: white = change, black = keep (as A1111); needs --init-image",
    )
    i.add_argument("--mask-blur", type=int, default=4, help="mask blur in pixels (A1111: 4)")
    i.add_argument(
        "--masked-content",
        choices=MASKED_CONTENT,
        default=None,
        help="what the masked area starts from (A1111's Masked content; default original, "
        "fill with --outpaint)",
    )
    i.add_argument(
        "--only-masked",
        action="store_true",
        help="inpaint area: only masked (the masked box, at full resolution, pasted back)",
    )
    i.add_argument(
        "--only-masked-padding",
        type=int,
        default=32,
        metavar="PX",
        help="pixels of context around the masked box with --only-masked (A1111: 32)",
    )
    i.add_argument("--invert-mask", action="store_true", help="mask mode: inpaint not masked")
    i.add_argument(
        "--outpaint",
        type=int,
        default=0,
        metavar="PX",
        help="outpaint: extend the init image by PX pixels and inpaint the new area",
    )
    i.add_argument(
        "--outpaint-sides",
        default="left,right,up,down",
        metavar="SIDES",
        help=f"comma list of {', '.join(OUTPAINT_SIDES)} (default all four)",
    )
    g.add_argument(
        "--restore-faces",
        action="store_true",
        help="restore faces after each image (GFPGAN / CodeFormer weights in models/)",
    )
    g.add_argument(
        "--face-restorer", choices=FACE_RESTORERS, default="CodeFormer", help="for --restore-faces"
    )
    g.add_argument(
        "--codeformer-weight",
        type=float,
        default=0.5,
        help="CodeFormer fidelity, 0 (best quality) to 1 (closest to the input); A1111: 0.5",
    )
    g.add_argument(
        "--refiner",
        metavar="MODEL",
        help="SDXL refiner: a checkpoint that takes over for the last steps",
    )
    g.add_argument(
        "--refiner-switch-at",
        type=float,
        default=0.8,
        metavar="FRACTION",
        help="share of the steps the base model runs before the refiner (A1111: 0.8)",
    )
    g.add_argument(
        "--cfg-rescale",
        type=float,
        default=0.0,
        metavar="PHI",
        help="rescaled CFG, 0 (off) to 1; 0.7 suits v-prediction / zero-terminal-SNR models",
    )
    g.add_argument("--clip-skip", type=int, default=1)
    g.add_argument(
        "--rng",
        choices=RNG_SOURCES,
        default="CPU",
        help="noise source, as A1111's setting: CPU (the same on any machine), GPU (A1111's "
        "default: an NVIDIA card's noise, drawn the same on a CPU) or NV",
    )
    g.add_argument("--variation-seed", type=int, default=-1)
    g.add_argument("--variation-strength", type=float, default=0.0)
    g.add_argument(
        "--hires",
        type=float,
        default=None,
        metavar="SCALE",
        help="hires fix: upscale by SCALE and run a second pass",
    )
    g.add_argument("--hires-steps", type=int, default=0)
    g.add_argument("--hires-denoise", type=float, default=0.7)
    g.add_argument("--hires-upscaler", default="Latent")
    g.add_argument("--vae", default="Automatic", help="a VAE from models/VAE, or Automatic")
    g.add_argument(
        "--preview-every", type=int, default=0, help="send a live preview every N steps (0 = off)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdtui",
        description="Stable Diffusion from a keyboard-only terminal UI. Run without a "
        "subcommand to open the TUI.",
    )
    parser.add_argument("--version", action="version", version=f"sdtui {__version__}")
    parser.add_argument(
        "--demo",
        action="store_true",
        help="use the built-in tiny demo model (its images are noise)",
    )
    parser.add_argument(
        "--model", help="checkpoint to start with: a name from `sdtui models` or a path"
    )
    parser.add_argument(
        "--graphics",
        choices=GRAPHICS,
        help="image protocol; auto probes the terminal, none shows paths only",
    )
    _folder_flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    a = sub.add_parser(
        "attach", help="the TUI, attached to the engine daemon (the same as plain `sdtui`)"
    )
    _model_flags(a)
    _folder_flags(a)

    dm = sub.add_parser(
        "daemon",
        help="the engine daemon: start, stop, status",
        description=(
            "One engine daemon per user and machine keeps the model loaded and runs the queue; "
            "the TUI and the CLI attach to it (and start it when none runs)."
        ),
    )
    dsub = dm.add_subparsers(dest="daemon_command", metavar="ACTION", required=True)
    ds = dsub.add_parser("start", help="start the daemon (if none runs)")
    ds.add_argument(
        "--foreground", action="store_true", help="run in this process (for a systemd unit)"
    )
    _model_flags(ds)
    _folder_flags(ds)
    dst = dsub.add_parser(
        "stop", help="stop the daemon; asks first when jobs are queued or running"
    )
    dst.add_argument(
        "--now",
        action="store_true",
        help="cancel queued and running jobs without asking (saved images are kept)",
    )
    _folder_flags(dst)
    dss = dsub.add_parser("status", help="pid, devices, model, queue, uptime, socket")
    dss.add_argument("--json", action="store_true")
    _folder_flags(dss)

    q = sub.add_parser("queue", help="the daemon's jobs: id, state, submitted by, progress")
    q.add_argument("--json", action="store_true")
    qsub = q.add_subparsers(dest="queue_command", metavar="ACTION")
    qc = qsub.add_parser(
        "cancel", help="cancel a queued job, or interrupt a running one (saved images are kept)"
    )
    qc.add_argument("job_id", type=int)
    _folder_flags(q)

    g = sub.add_parser(
        "generate", help="txt2img / img2img without the UI", description="Generate images headless."
    )
    _generation_flags(g)
    g.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="also write the image to FILE (a .png, replaced if it exists; the "
        "copy in outputs/ stays); several images need {n} in the name: cat-{n}.png",
    )
    g.add_argument("--json", action="store_true", help="print one JSON object per event on stdout")
    g.add_argument(
        "--detach",
        action="store_true",
        help="queue the job, print its id and return (`sdtui queue` follows it)",
    )
    _folder_flags(g)
    _model_flags(g)

    x = sub.add_parser(
        "xyz",
        help="X/Y/Z plot: one image per combination of axis values, and the labelled grid",
        description=(
            "A1111's X/Y/Z plot: one image for each combination of the X, Y and Z values (every "
            "other option as for generate), each saved as a normal image, then the labelled grid "
            "in txt2img-grids (img2img-grids) as xyz_grid-NNNN.png, whose path is printed. "
            "Axis types are A1111's labels: " + ", ".join(_axis_labels()) + "."
        ),
    )
    _generation_flags(x, batches=False)
    ax = x.add_argument_group("axes")
    for letter in "xyz":
        up = letter.upper()
        ax.add_argument(
            f"--{letter}-type",
            metavar="TYPE",
            default=None,
            help=f'the {up} axis: an A1111 axis type, e.g. Steps, "CFG Scale", Sampler, "Prompt S/R"',
        )
        ax.add_argument(
            f"--{letter}-values",
            metavar="VALUES",
            default=None,
            help=f"the {up} values, comma-separated (CSV quotes), numbers as ranges too: "
            "1-5, 1-10 (+2), 5-15 [3]",
        )
    ax.add_argument(
        "--vary-seeds",
        metavar="AXES",
        default="",
        help="A1111's 'Vary seeds for X/Y/Z': the seed moves on along these axes (x, y, z, or xy, xyz, ...)",
    )
    ax.add_argument(
        "--keep-random-seeds",
        action="store_true",
        help="A1111's 'Keep -1 for seeds': a seed of -1 stays random in every cell",
    )
    ax.add_argument("--no-legend", action="store_true", help="draw the grid without its labels")
    ax.add_argument("--margin", type=int, default=0, help="grid margins in pixels, 0 to 500")
    x.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="also write the grid to FILE (a .png, replaced if it exists)",
    )
    x.add_argument("--json", action="store_true", help="print one JSON object per event on stdout")
    x.add_argument(
        "--detach",
        action="store_true",
        help="queue the job, print its id and return (`sdtui queue` follows it)",
    )
    _folder_flags(x)
    _model_flags(x)

    st = sub.add_parser(
        "styles", help="list the prompt styles (A1111's styles.csv): name, prompt, negative"
    )
    st.add_argument("--json", action="store_true")
    _folder_flags(st)

    m = sub.add_parser("models", help="list checkpoints: name, family, size, hash")
    m.add_argument("--json", action="store_true")
    m.add_argument("--no-hash", action="store_true", help="skip hashing files not hashed before")
    _folder_flags(m)

    i = sub.add_parser(
        "info", help="show the generation parameters stored in an image (ours or A1111's)"
    )
    i.add_argument("image", type=Path)
    i.add_argument("--json", action="store_true")
    _folder_flags(i)

    u = sub.add_parser("upscale", help="Extras: upscale an image or a folder of images")
    u.add_argument("image", type=Path)
    u.add_argument("--scale", type=float, default=4.0)
    u.add_argument(
        "--to", default=None, metavar="WxH", help="resize to this size instead of a factor"
    )
    u.add_argument(
        "--upscaler",
        default="Lanczos",
        help="Lanczos, Nearest, or a model from models/ESRGAN, models/RealESRGAN",
    )
    u.add_argument("--upscaler-2", default=None)
    u.add_argument("--visibility", type=float, default=0.0, help="upscaler 2 visibility, 0 to 1")
    u.add_argument("--tile", type=int, default=192, help="tile size in pixels (0 = no tiling)")
    u.add_argument(
        "--gfpgan-visibility",
        type=float,
        default=0.0,
        help="restore faces with GFPGAN (models/GFPGAN), blended 0 to 1",
    )
    u.add_argument(
        "--codeformer-visibility",
        type=float,
        default=0.0,
        help="restore faces with CodeFormer (models/Codeformer), blended 0 to 1",
    )
    u.add_argument(
        "--codeformer-weight",
        type=float,
        default=0.0,
        help="CodeFormer weight, 0 (maximum effect) to 1 (minimum effect)",
    )
    u.add_argument(
        "--upscale-first",
        action="store_true",
        help="upscale before restoring faces (default: restore, then upscale)",
    )
    u.add_argument("--json", action="store_true")
    u.add_argument("--detach", action="store_true", help="queue the job, print its id and return")
    _folder_flags(u)

    gp = sub.add_parser("gpu", help="print the GPU table (like nvidia-smi) once")
    gp.add_argument("--json", action="store_true")
    _folder_flags(gp)

    c = sub.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description=(
            "Print a completion script for your shell (commands, options, sampler and schedule "
            "names, files). Install it once, e.g. `sdtui completion bash > "
            "~/.local/share/bash-completion/completions/sdtui`; the README has zsh and fish."
        ),
    )
    c.add_argument("shell", choices=SHELLS)
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None),
        a1111_dir=getattr(args, "a1111_dir", None),
        models_dir=getattr(args, "models_dir", None),
        outputs_dir=getattr(args, "outputs_dir", None),
        device=getattr(args, "device", None),
        devices=getattr(args, "devices", None),
        memory_mode=getattr(args, "memory_mode", None),
        fast_path=getattr(args, "fast_path", None),
        graphics=getattr(args, "graphics", None),
    )


class SafeStream:
    """A text stream that shows control characters instead of sending them (``ESC`` as
    ``^[``): text from files (a PNG's parameters, a file name, a prompt) must not reach the
    terminal as escape sequences (OSC 52 writes the clipboard, ``ESC [2J`` wipes the screen).
    sdtui's own escapes (the progress bar) go to ``raw``."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def write(self, text: str) -> int:
        self.raw.write(visible(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


def raw_stream(stream: Any) -> Any:
    return getattr(stream, "raw", stream) if isinstance(stream, SafeStream) else stream


def main(argv: list[str] | None = None) -> int:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = SafeStream(sys.stdout), SafeStream(sys.stderr)
    try:
        return _main(argv)
    except BrokenPipeError:
        # `sdtui models | head -1`: the reader has gone; say nothing more, and keep Python
        # from failing again when it flushes stdout at exit
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, saved[0].fileno())
        return EXIT_FAILED
    finally:
        sys.stdout, sys.stderr = saved


def verbosity(args: argparse.Namespace) -> int:
    """QUIET (-q: errors and the saved paths), NORMAL, or VERBOSE (-v: engine log lines, debug)."""
    quiet, verbose = bool(getattr(args, "quiet", False)), bool(getattr(args, "verbose", False))
    if quiet and verbose:
        raise ParamError(
            "quiet", "-q/--quiet and -v/--verbose ask for opposite things: give one of them"
        )
    return QUIET if quiet else VERBOSE if verbose else NORMAL


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "completion":
            sys.stdout.write(completion_script(args.shell, parser))
            return EXIT_OK
        args.level = verbosity(args)
        if args.command in (None, "attach"):
            from sdtui.tui.launch import run_tui

            sys.stdout, sys.stderr = raw_stream(sys.stdout), raw_stream(sys.stderr)  # Textual's own
            return run_tui(args, settings_from(args))
        handler = {
            "generate": cmd_generate,
            "models": cmd_models,
            "info": cmd_info,
            "upscale": cmd_upscale,
            "gpu": cmd_gpu,
            "daemon": cmd_daemon,
            "queue": cmd_queue,
            "xyz": cmd_xyz,
            "styles": cmd_styles,
        }[args.command]
        return handler(args)
    except ParamError as e:
        print(f"sdtui: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as e:
        print(f"sdtui: {e.message}", file=sys.stderr)
        return EXIT_FAILED


# -- generate -------------------------------------------------------------------------------


def absolute_path(path: str | Path | None) -> str | None:
    """A file named on the command line, as an absolute path: the engine daemon runs in
    another folder (``/``), so ``--init-image cat.png`` must not reach it as ``cat.png``."""
    if path is None or str(path) == "":
        return None if path is None else ""
    return str(Path(path).expanduser().absolute())


def model_argument(name: str | None) -> str | None:
    """``--model``/``--refiner``: a name from `sdtui models` stays as it is; a file or folder
    that exists from here goes to the daemon as an absolute path."""
    if name and Path(name).expanduser().exists():
        return absolute_path(name)
    return name


def job_family(model: str | None, settings: Settings) -> str | None:
    """The family label ("SD1", "Flux.1 schnell") of the model a job names, None meaning the
    one the engine picks (the default model, else the first listed), read from the headers as
    `sdtui models` does; None when it cannot be told (the engine then says what is wrong)."""
    from sdtui.model_index import discover_models, resolve_model

    query = model or settings.default_model
    if query and query.lower() in ("demo", "sdtui-demo"):
        return "SD1"
    try:
        entries = discover_models(settings.models)
        if not query:
            return entries[0].family if entries else "SD1"  # else the engine runs the demo
        return resolve_model(query, entries, folder=settings.checkpoints).family
    except Exception:  # noqa: BLE001 - not found, unreadable: the engine's message says it
        return None


def _preset_for_flags(
    args: argparse.Namespace, model: str | None, settings: Settings | None
) -> Any:
    """The Flux/SD3.5 family preset for the flags left out (None when all are given or the
    model is an SD one: sdtui's stock defaults, as before), said once at -v."""
    from sdtui.family_presets import preset_for

    flags = (args.sampler, args.schedule, args.cfg, args.steps)
    sized = args.size or (args.width is not None and args.height is not None)
    if all(f is not None for f in flags) and sized:
        return None
    preset = preset_for(job_family(model, settings or settings_from(args)))
    if (
        preset is not None
        and getattr(args, "level", NORMAL) >= VERBOSE
        and not getattr(args, "json", False)
    ):
        print(f"sdtui: debug: {preset.describe()} for what the flags leave out", file=sys.stderr)
    return preset


def params_from(args: argparse.Namespace, settings: Settings | None = None) -> GenerationParams:
    """The job's params from the flags, with the --style styles applied to the prompts (as
    A1111 applies them before the job: the infotext has the merged prompt). A flag left out
    is sdtui's stock value, or on a Flux/SD3.5 model its family's preset (Forge's)."""
    model = model_argument(args.model)
    if args.demo and not model:
        model = "demo"
    preset = _preset_for_flags(args, model, settings)
    stock = GenerationParams()
    width, height = (preset.width, preset.height) if preset else (stock.width, stock.height)
    if args.size:
        width, height = parse_size(args.size)
    width = args.width if args.width is not None else width  # --width 0 is refused, not 512
    height = args.height if args.height is not None else height
    fill = preset.values() if preset else {}

    def given(flag: Any, name: str) -> Any:
        return flag if flag is not None else fill.get(name, getattr(stock, name))

    prompt, negative = args.prompt, args.negative
    names = list(getattr(args, "style", None) or [])
    if names:
        prompt, negative = apply_cli_styles(
            names, settings or settings_from(args), prompt, negative
        )
    return GenerationParams(
        prompt=prompt,
        negative_prompt=negative,
        steps=given(args.steps, "steps"),
        sampler=given(args.sampler, "sampler"),
        schedule_type=given(args.schedule, "schedule_type"),
        cfg_scale=given(args.cfg, "cfg_scale"),
        distilled_cfg_scale=given(getattr(args, "distilled_cfg", None), "distilled_cfg_scale"),
        seed=args.seed,
        width=width,
        height=height,
        batch_size=getattr(args, "batch_size", 1),
        batch_count=getattr(args, "batch_count", 1),
        init_image=absolute_path(args.init_image),
        denoising_strength=args.denoise,
        resize_mode=args.resize_mode,
        model=model,
        vae=args.vae,
        clip_skip=args.clip_skip,
        subseed=args.variation_seed,
        subseed_strength=args.variation_strength,
        rng=getattr(args, "rng", "CPU"),
        enable_hr=args.hires is not None,
        hr_scale=args.hires if args.hires is not None else 2.0,
        hr_second_pass_steps=args.hires_steps,
        hr_denoising_strength=args.hires_denoise,
        hr_upscaler=args.hires_upscaler,
        preview_every=args.preview_every,
        mask=absolute_path(getattr(args, "mask", None)),
        mask_blur=getattr(args, "mask_blur", 4),
        # Poor man's outpainting starts the new area from "fill"; a plain mask from "original"
        inpainting_fill=getattr(args, "masked_content", None)
        or ("fill" if getattr(args, "outpaint", 0) else "original"),
        inpaint_full_res=getattr(args, "only_masked", False),
        inpaint_full_res_padding=getattr(args, "only_masked_padding", 32),
        inpainting_mask_invert=getattr(args, "invert_mask", False),
        outpaint_pixels=getattr(args, "outpaint", 0),
        outpaint_sides=getattr(args, "outpaint_sides", "left,right,up,down"),
        restore_faces=getattr(args, "restore_faces", False),
        face_restoration_model=getattr(args, "face_restorer", "CodeFormer"),
        code_former_weight=getattr(args, "codeformer_weight", 0.5),
        refiner_checkpoint=model_argument(getattr(args, "refiner", None)),
        refiner_switch_at=getattr(args, "refiner_switch_at", 0.8),
        cfg_rescale=getattr(args, "cfg_rescale", 0.0),
    ).validated()


# -- styles ---------------------------------------------------------------------------------

MAX_NAMES_SAID = 30  # an unknown style's message lists at most this many of the known ones


def styles_path(settings: Settings) -> Path:
    """The styles file: A1111's ``styles.csv`` in its folder when --a1111-dir is set, else
    ``styles.csv`` in sdtui's home (beside models/ and outputs/)."""
    from sdtui.styles import default_styles_path

    path = getattr(settings, "styles_file", None)  # the settings' own, when they name one
    return Path(path) if path else default_styles_path(settings.root)


def apply_cli_styles(
    names: list[str], settings: Settings, prompt: str, negative: str
) -> tuple[str, str]:
    """(prompt, negative) with the named styles applied in order; an unknown name is one
    ParamError that lists the styles there are, or says where the file is looked for."""
    from sdtui.styles import UnknownStyleError, apply_styles, read_styles

    path = styles_path(settings)
    styles = read_styles(path)
    try:
        return apply_styles(styles, names, prompt, negative)
    except UnknownStyleError as e:
        unknown = ", ".join(repr(one_line(n)) for n in e.names)
        what = "unknown style" + ("s" if len(e.names) > 1 else "")
        if not styles:
            where = "is no styles file at" if not path.exists() else "are no styles in"
            raise ParamError(
                "style",
                f"{what} {unknown}: there {where} {path} (A1111's styles.csv; with --a1111-dir, "
                "the one in that folder)",
            ) from None
        known = [one_line(n) for n in styles]
        listed = ", ".join(known[:MAX_NAMES_SAID])
        if len(known) > MAX_NAMES_SAID:
            listed += f" and {len(known) - MAX_NAMES_SAID} more (`sdtui styles` lists them)"
        raise ParamError("style", f"{what} {unknown}: {path} holds {listed}") from None


def cmd_styles(args: argparse.Namespace) -> int:
    from sdtui.styles import read_styles

    path = styles_path(settings_from(args))
    styles = read_styles(path)
    if args.json:
        rows = [
            {"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
            for s in styles.values()
        ]
        print(json_dumps({"path": str(path), "styles": rows}, indent=2))
        return EXIT_OK
    if not styles:
        where = "no styles file at" if not path.exists() else "no styles in"
        print(f"sdtui: {where} {path}: A1111's styles.csv (name,prompt,negative_prompt) goes there")
        return EXIT_OK
    names = [one_line(n) for n in styles]
    prompts = [one_line(s.prompt) for s in styles.values()]
    w = max(4, *(len(n) for n in names))
    pw = min(60, max(6, *(len(p) for p in prompts)))
    print(f"{'NAME':<{w}}  {'PROMPT':<{pw}}  NEGATIVE")
    for name, prompt, style in zip(names, prompts, styles.values(), strict=True):
        print(f"{name:<{w}}  {prompt:<{pw}}  {one_line(style.negative_prompt)}".rstrip())
    print(f"\n{len(names)} style{'s' if len(names) != 1 else ''} in {path}")
    return EXIT_OK


def _check_init_image(path: str | None, settings: Settings, what: str = "init image") -> None:
    """Fail before starting the engine: a missing, broken or too large init image or mask
    (its header says how large; nothing is decoded here) loses nothing."""
    if path is None:
        return
    from sdtui.image_files import open_image_file

    with open_image_file(path, what, settings.max_image_megapixels, load=False) as im:
        try:
            im.verify()
        except Exception as e:  # noqa: BLE001 - Pillow raises many kinds for a damaged file
            raise UserError(
                f"{what} {one_line(str(path))} is damaged ({type(e).__name__}): give another file"
            ) from None


def _check_input_images(params: GenerationParams, settings: Settings) -> None:
    """The job's init image and mask, checked before the engine starts."""
    _check_init_image(params.init_image, settings)
    _check_init_image(params.mask, settings, "mask")


def _check_outputs(settings: Settings) -> None:
    out = settings.outputs
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".sdtui-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"cannot write to the outputs folder {out} ({e.strerror or e}): pick another with "
            "--outputs-dir or fix its permissions"
        ) from None


def engine_client(args: argparse.Namespace, settings: Settings, who: str) -> Any:
    """A client attached to the user's engine daemon (started when none runs), or with
    --no-daemon to a private one that ends with this command."""
    from sdtui.ipc.client import DaemonClient
    from sdtui.ipc.paths import DaemonPaths

    if getattr(args, "no_daemon", False):
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="sdtui-private-"))
        paths = DaemonPaths(folder, folder / "queue.sqlite3")
        client = DaemonClient(settings, paths=paths, who=who, private=True)
    else:
        client = DaemonClient(settings, who=who)
    # a job names its model: the daemon loads it for the job, nothing to preload
    return client.attach(start=True, no_preload=True)


def release(client: Any) -> None:
    """Detach; a private engine ends with its client, and its folder goes with it."""
    client.detach()
    if client.private:
        import shutil

        from sdtui.ipc.client import wait_gone

        wait_gone(client.daemon.pid if client.daemon else None, 30)
        shutil.rmtree(client.paths.folder, ignore_errors=True)


def cmd_generate(args: argparse.Namespace) -> int:
    from sdtui.ipc import protocol as msg

    level = getattr(args, "level", NORMAL)
    settings = settings_from(args)
    params = params_from(args, settings)
    if args.detach and getattr(args, "no_daemon", False):
        raise ParamError("detach", "--detach needs the daemon: leave out --no-daemon")
    output = None
    if args.output is not None:
        output = OutputFile.check(args.output, params.batch_size * params.batch_count, args.detach)
    _check_input_images(params, settings)
    _check_outputs(settings)
    started = _submit_and_follow(
        args, settings, level, "generate", params.model, lambda c: c.submit(params), output
    )
    if started is None:
        return EXIT_OK
    final, note, display = started
    if not isinstance(final, msg.JobFailed) and not args.json and level > QUIET:
        n = len(final.paths)
        print(f"sdtui: {n} image{'s' if n != 1 else ''} in {final.seconds:.1f} s", file=sys.stderr)
    if note and not args.json and level > QUIET:
        print(note, file=sys.stderr)
    if isinstance(final, msg.JobFailed) or (output is not None and output.failed):
        return EXIT_FAILED
    return EXIT_CANCELLED if final.cancelled else EXIT_OK


def _submit_and_follow(
    args: argparse.Namespace,
    settings: Any,
    level: int,
    command: str,
    model: str | None,
    submit: Any,
    output: OutputFile | None,
) -> tuple[Any, str | None, JobDisplay] | None:
    """Submit one job (``submit(client) -> job_id``) and follow it to its end: (the last
    event, the daemon's note, the display); None when ``--detach`` printed the job id."""
    if model in ("demo", "sdtui-demo") and not args.json and level > QUIET:
        print(
            "sdtui: using the built-in demo model: tiny random weights, so its images are noise. "
            f"For real images put a checkpoint in {settings.checkpoints} or pass --a1111-dir.",
            file=sys.stderr,
        )
    client = engine_client(args, settings, f"sdtui {command}")
    try:
        job_id = submit(client)
    except BaseException:
        release(client)
        raise
    if args.detach:
        release(client)
        print(job_id)
        return None
    _debug_attached(client, job_id, level)
    if level > QUIET:
        _say_queued(client, job_id)
    note = daemon_note(client)
    display = JobDisplay(command, job_id, level, live=_live_progress(args.json, level))
    return follow_job(client, job_id, args.json, display, output), note, display


def _debug_attached(client: Any, job_id: int, level: int) -> None:
    if level < VERBOSE:
        return
    where = (
        f"a private engine (pid {client.pid}) in {client.paths.folder}"
        if client.private
        else f"the engine daemon (pid {client.pid}, {client.paths.address})"
    )
    print(f"sdtui: debug: job #{job_id} submitted to {where}", file=sys.stderr)


def _say_queued(client: Any, job_id: int) -> None:
    ahead = [j for j in client.pending if j < job_id]
    if ahead:
        print(
            f"sdtui: queued as job #{job_id}, behind {len(ahead)} job{'s' if len(ahead) != 1 else ''} "
            "(ctrl+c cancels it; `sdtui queue` lists them)",
            file=sys.stderr,
        )


# -- xyz ------------------------------------------------------------------------------------


def xyz_params_from(args: argparse.Namespace, base: GenerationParams) -> Any:
    """The plot the flags describe (not checked yet: see sdtui.xyz.prepare_xyz)."""
    from sdtui.params import NO_AXIS, XYZParams

    axes: list[tuple[str, str]] = []
    for letter in "xyz":
        kind = getattr(args, f"{letter}_type")
        text = getattr(args, f"{letter}_values")
        if kind is None:
            if text is not None:
                raise ParamError(
                    f"{letter}_type",
                    f"--{letter}-values needs --{letter}-type: say what "
                    f"the values are, e.g. --{letter}-type Steps",
                )
            axes.append(NO_AXIS)
            continue
        if text is None and " ".join(kind.split()).casefold() != "nothing":
            raise ParamError(
                f"{letter}_values",
                f"--{letter}-type {one_line(kind)} needs --{letter}-values, "
                f'e.g. --{letter}-values "10,20,30"',
            )
        axes.append((kind, text or ""))
    if all(
        kind == NO_AXIS[0] or " ".join(kind.split()).casefold() == "nothing" for kind, _ in axes
    ):
        raise ParamError(
            "x_type",
            "an X/Y/Z plot needs an axis: give --x-type and --x-values "
            '(e.g. --x-type Steps --x-values "10,20,30")',
        )
    vary = args.vary_seeds.replace(",", "").replace(" ", "").lower()
    if any(c not in "xyz" for c in vary):
        raise ParamError(
            "vary_seeds",
            f"--vary-seeds {one_line(args.vary_seeds)}: name the axes "
            "whose seeds vary, as x, y, z or several (xy)",
        )
    return XYZParams(
        base=base,
        x=axes[0],
        y=axes[1],
        z=axes[2],
        vary_seeds=("x" in vary, "y" in vary, "z" in vary),
        no_fixed_seeds=bool(args.keep_random_seeds),
        draw_legend=not args.no_legend,
        margin=args.margin,
    )


def _check_checkpoint_axes(plot: Any, settings: Settings) -> None:
    """A Checkpoint name axis names models that exist (A1111's confirm_checkpoints)."""
    from sdtui.model_index import discover_models, resolve_model

    entries = None
    for letter, axis in (("X", plot.x), ("Y", plot.y), ("Z", plot.z)):
        if axis.type.label != "Checkpoint name":
            continue
        if entries is None:
            entries = discover_models(settings.models)
        for value in axis.values:
            if str(value).strip().lower() in ("demo", "sdtui-demo"):
                continue
            try:
                resolve_model(str(value), entries)
            except UserError as e:
                raise ParamError(
                    f"{letter.lower()}_values", f"{letter} axis: {e.message}"
                ) from None


def prepare_xyz_job(args: argparse.Namespace, settings: Settings) -> Any:
    """The plot, every problem said in one line before anything runs: the base params, an
    axis type or value, a Prompt S/R term not in the prompt, a cell out of range, a grid too
    large, a checkpoint that is not there."""
    from sdtui.xyz import XYZError, plot_of, prepare_xyz

    params = xyz_params_from(args, params_from(args, settings))
    try:
        params = prepare_xyz(params)
        _check_checkpoint_axes(plot_of(params), settings)
    except XYZError as e:
        raise ParamError("xyz", e.message) from None
    return params


def cmd_xyz(args: argparse.Namespace) -> int:
    from sdtui.ipc import protocol as msg
    from sdtui.xyz import cell_count

    level = getattr(args, "level", NORMAL)
    settings = settings_from(args)
    params = prepare_xyz_job(args, settings)
    if args.detach and getattr(args, "no_daemon", False):
        raise ParamError("detach", "--detach needs the daemon: leave out --no-daemon")
    output = None
    if args.output is not None:
        output = OutputFile.check(args.output, 1, args.detach, grid=True)
    _check_input_images(params.base, settings)
    _check_outputs(settings)
    started = _submit_and_follow(
        args, settings, level, "xyz", params.base.model, lambda c: c.submit_xyz(params), output
    )
    if started is None:
        return EXIT_OK
    final, note, display = started
    if not isinstance(final, msg.JobFailed) and not args.json and level > QUIET:
        n = cell_count(params)
        made = len(final.paths)
        grid = "" if display.grid_path else "; no grid was saved"
        print(
            f"sdtui: X/Y/Z plot: {made} of {n} cell{'s' if n != 1 else ''} in {final.seconds:.1f} s{grid}",
            file=sys.stderr,
        )
    if note and not args.json and level > QUIET:
        print(note, file=sys.stderr)
    if isinstance(final, msg.JobFailed) or (output is not None and output.failed):
        return EXIT_FAILED
    return EXIT_CANCELLED if final.cancelled else EXIT_OK


def follow_job(
    client: Any, job_id: int, as_json: bool, display: JobDisplay, output: OutputFile | None = None
) -> Any:
    """Print a job's events until it ends (paths on stdout, the rest on stderr, or JSON
    lines); ctrl+c cancels it, keeping what is saved. Detaches; returns the last event.
    Other clients' jobs share the daemon: their events are not this command's."""
    from sdtui.ipc import protocol as msg

    final: Any = None
    cancelled_by_user = False
    try:
        while final is None:
            try:
                for e in client.poll(timeout=0.2):
                    job = getattr(e, "job_id", None)
                    if job is not None and job != job_id:
                        continue
                    if job is None and not isinstance(e, msg.EngineStatus | msg.DaemonStopping):
                        # a model load, a warning of the engine: ours unless another job runs
                        if client.running - {job_id} or not isinstance(e, msg.Log):
                            continue
                    if as_json:
                        print(json_dumps(event_json(e)), flush=True)
                    if isinstance(e, msg.Progress):
                        display.progress(e)
                    elif isinstance(e, msg.JobDone | msg.JobFailed):
                        final = e
                    elif (
                        isinstance(e, msg.EngineStatus)
                        and e.state in ("crashed", "stopped")
                        and not client.connected
                    ):
                        final = msg.JobFailed(
                            job_id,
                            f"{e.detail.split(';')[0]}: job #{job_id} stays in the queue on disk, "
                            "and `sdtui daemon start` (or any sdtui command) resumes it",
                        )
                    elif isinstance(e, msg.ImageSaved):
                        written = output.write(e, display) if output is not None else None
                        if as_json and written is not None:
                            print(
                                json_dumps(
                                    {
                                        "event": "OutputWritten",
                                        "job_id": job_id,
                                        "index": e.index,
                                        "path": str(written),
                                        "source": e.path,
                                    }
                                ),
                                flush=True,
                            )
                        elif not as_json:
                            display.saved(e, written)
                    elif as_json:
                        continue
                    elif isinstance(e, msg.Log):
                        display.log(e)
                    elif isinstance(e, msg.EngineStatus):
                        display.engine(e)
                    elif isinstance(e, msg.JobStarted):
                        display.started(e)
            except KeyboardInterrupt:
                if cancelled_by_user:
                    raise
                cancelled_by_user = True
                if display.level > QUIET:
                    display.say("sdtui: cancelling: images already saved are kept")
                client.cancel(job_id)
    finally:
        display.close()
        release(client)
    if isinstance(final, msg.JobFailed):
        print(f"sdtui: {final.message}", file=sys.stderr)
        if final.detail and (display.level >= VERBOSE or os.environ.get("SDTUI_DEBUG")):
            print(final.detail, file=sys.stderr)
    elif isinstance(final, msg.JobDone) and display.level >= VERBOSE and not as_json:
        print(f"sdtui: debug: {_job_stats(final)}", file=sys.stderr)
    return final


def _job_stats(done: Any) -> str:
    parts = [f"job #{done.job_id} took {done.seconds:.2f} s"]
    if done.peak_vram_allocated is not None:
        parts.append(
            f"peak VRAM {format_bytes(done.peak_vram_allocated)} allocated, "
            f"{format_bytes(done.peak_vram_reserved or 0)} reserved"
        )
    if done.rss is not None:
        parts.append(f"RSS {format_bytes(done.rss)}")
    parts += [
        f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}"
        for k, v in sorted(done.stats.items())
    ]
    return ", ".join(parts)


def daemon_note(client: Any) -> str | None:
    """Said once, by the command that started the daemon: it stays, and why."""
    if not client.started_daemon or client.private:
        return None
    idle = client.settings.daemon_idle_minutes
    return (
        f"sdtui: the engine daemon (pid {client.pid}) keeps the model loaded for the next job"
        + (f"; it stops after {idle:g} min without one" if idle else "")
        + " (`sdtui daemon stop` ends it now)"
    )


def event_json(e: Any) -> dict[str, Any]:
    import dataclasses

    def plain(v: Any) -> Any:
        if isinstance(v, bytes):
            return len(v)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    d: dict[str, Any] = {"event": type(e).__name__}
    for f in dataclasses.fields(e):
        v = getattr(e, f.name)
        if isinstance(v, bytes):
            d[f.name + "_bytes"] = len(v)  # previews: just the size
            continue
        d[f.name] = plain(v)
    return d


# -- what a followed job shows ----------------------------------------------------------------


def _live_progress(as_json: bool, level: int) -> bool:
    """A live progress display (rich) on stderr: only on a terminal (SDTUI_FORCE_PROGRESS=1
    forces it), never with --json or -q. Pipes, files and CI get plain lines."""
    if as_json or level <= QUIET:
        return False
    if os.environ.get("SDTUI_FORCE_PROGRESS") == "1":
        return True
    try:
        return bool(raw_stream(sys.stderr).isatty()) and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError, OSError):
        return False


def _same_terminal() -> bool:
    """stdout and stderr are the same terminal: a path printed while the progress display
    is shown must go through it, or the two would draw over each other."""
    try:
        out, err = raw_stream(sys.stdout), raw_stream(sys.stderr)
        return bool(out.isatty() and err.isatty()) and os.path.samestat(
            os.fstat(out.fileno()), os.fstat(err.fileno())
        )
    except (AttributeError, ValueError, OSError):
        return False


def _eta(seconds: float) -> str:
    return (
        time.strftime("%M:%S", time.gmtime(seconds)) if seconds < 3600 else f"{seconds / 3600:.1f}h"
    )


def _short(text: str, width: int = 60) -> str:
    text = one_line(text)
    return text if len(text) <= width else text[: width - 3] + "..."


class JobDisplay:
    """Everything `generate` and `upscale` say while they follow a job. On a terminal, a
    rich progress display on stderr: steps, batch, it/s and ETA as the engine reports them
    (a spinner with the stage until the steps start, and for upscale jobs, whose engine sends
    no per-tile progress), with messages printed above it and erased when the job ends.
    Elsewhere (pipes, files, CI), plain lines only. ``level``: QUIET, NORMAL or VERBOSE."""

    def __init__(self, kind: str, job_id: int, level: int = NORMAL, live: bool = False) -> None:
        self.kind, self.job_id, self.level, self.live = kind, job_id, level, live
        self._progress: Any = None  # rich.progress.Progress while shown
        self._task: Any = None
        self._stepping = False  # Progress events have come: the bar is determinate
        self._saved = 0
        self.grid_path: str | None = None  # the grid an X/Y/Z plot saved

    # -- the rich display

    def _show(self, description: str) -> None:
        if not self.live:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            console = Console(
                file=raw_stream(sys.stderr),
                force_terminal=True if os.environ.get("SDTUI_FORCE_PROGRESS") == "1" else None,
                highlight=False,
            )
            spinner = "dots" if console.encoding.lower().startswith("utf") else "line"
            self._progress = Progress(
                SpinnerColumn(spinner),
                TextColumn("{task.description}", markup=False),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[detail]}", markup=False),
                TimeElapsedColumn(),
                console=console,
                transient=True,  # gone at the end: the saved paths and the summary stay
                redirect_stdout=False,  # stdout carries the paths, never the display
                redirect_stderr=False,
                refresh_per_second=8,
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=None, detail="")
        else:
            self._progress.update(self._task, description=description)
        self._progress.refresh()  # each stage is drawn, however short

    def stage(self, text: str) -> None:
        """What the engine is doing before (or, for upscale jobs, instead of) the steps."""
        if self.live and not self._stepping:
            self._show(_short(text))

    def progress(self, p: Any) -> None:
        unit = "tiles" if self.kind == "upscale" else "steps"
        if not self.live:
            if self.level >= VERBOSE and p.step >= p.steps:  # plain: one line per batch
                batch = (
                    f"{self._part} {p.batch_index + 1}/{p.batch_count}: "
                    if p.batch_count > 1
                    else ""
                )
                self.say(
                    f"sdtui: {batch}{p.step}/{p.steps} {unit}, {p.its:.2f} it/s, ETA {_eta(p.eta_s)}"
                )
            return
        steps = max(1, p.steps)
        what = (
            f"{self._part} {p.batch_index + 1}/{p.batch_count}" if p.batch_count > 1 else self.kind
        )
        self._show(what)
        self._stepping = True
        self._progress.update(
            self._task,
            total=steps * max(1, p.batch_count),
            completed=p.batch_index * steps + min(p.step, steps),
            detail=f"{p.step}/{p.steps} {unit}  {p.its:.2f} it/s  ETA {_eta(p.eta_s)}",
        )
        self._progress.refresh()  # every step the engine reports, as the old bar did

    @property
    def _part(self) -> str:
        """What a Progress event's batch is: an X/Y/Z plot's are its cells."""
        return "cell" if self.kind == "xyz" else "batch"

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    # -- lines

    def say(self, text: str) -> None:
        """A line on stderr (above the display while it shows)."""
        if self._progress is not None:
            self._progress.console.print(
                visible(text), markup=False, highlight=False, emoji=False, soft_wrap=True
            )
        else:
            print(text, file=sys.stderr, flush=True)

    def out(self, text: str) -> None:
        """A line on stdout (a saved path)."""
        if self._progress is not None and _same_terminal():
            self._progress.console.print(
                visible(text), markup=False, highlight=False, emoji=False, soft_wrap=True
            )
        else:
            print(text, flush=True)

    # -- events

    def saved(self, e: Any, written: Path | None = None) -> None:
        if self.kind == "xyz":  # stdout has the grid; a cell is said with -v
            if e.is_grid:
                self.grid_path = e.path
                self.out(str(written) if written is not None else e.path)
            elif self.level >= VERBOSE:
                self.say(f"sdtui: cell {e.index}: {one_line(e.path)}")
            if written is not None and self.level >= VERBOSE:
                self.say(
                    f"sdtui: debug: wrote {one_line(str(written))} (a copy of {one_line(e.path)})"
                )
            return
        self.out(str(written) if written is not None else e.path)
        if written is not None and self.level >= VERBOSE:
            self.say(f"sdtui: debug: wrote {one_line(str(written))} (a copy of {one_line(e.path)})")
        self._saved += 1
        if self.kind == "upscale" and self._progress is not None and not self._stepping:
            self._progress.update(self._task, detail=f"{self._saved} saved", refresh=True)

    def log(self, e: Any) -> None:
        if (
            e.level == "error"
            or (e.level == "warning" and self.level >= NORMAL)
            or self.level >= VERBOSE
        ):
            self.say(f"sdtui: {e.text}")
        if e.level == "info":
            self.stage(e.text)

    def engine(self, e: Any) -> None:
        if self.level >= VERBOSE:
            self.say(
                f"sdtui: debug: engine {e.state}" + (f": {one_line(e.detail)}" if e.detail else "")
            )
        if e.state in ("starting", "loading") and e.detail:
            self.stage(e.detail)
        elif e.state == "busy" and e.detail == f"job {self.job_id}":
            self.stage("upscaling" if self.kind == "upscale" else "starting")

    def started(self, e: Any) -> None:
        if self.level >= VERBOSE:
            self.say(
                f"sdtui: debug: job #{e.job_id} started: {e.images_total} images, {e.steps_total} steps"
            )
        self.stage("starting")


# -- -o/--output ----------------------------------------------------------------------------------


class OutputFile:
    """`generate -o FILE`: each image is also written to FILE (atomically: a temporary file
    in the same folder, then os.replace); the A1111-layout copy in outputs/ stays. ``{n}`` in
    the name is the image's index in the job (0-based: its seed is the job's seed + n)."""

    def __init__(self, pattern: str, *, grid: bool = False) -> None:
        self.pattern = pattern
        self.grid = grid  # an X/Y/Z plot: the grid is written, not the cells
        self.failed = False

    def path(self, index: int) -> Path:
        return Path(self.pattern.replace("{n}", str(index))).expanduser()

    @classmethod
    def check(cls, value: str, images: int, detach: bool, *, grid: bool = False) -> OutputFile:
        """Refuse what cannot work before any image is made: one clear sentence each."""
        shown = one_line(value)
        if detach:
            raise ParamError(
                "output",
                "--output writes the image when the job ends, and --detach "
                "returns at once: leave out one of them",
            )
        if not value.strip():
            raise ParamError("output", "--output needs a file name, e.g. --output cat.png")
        name = Path(value)
        if "{n}" in str(name.parent):
            raise ParamError(
                "output", f"--output {shown}: {{n}} goes in the file name, not in a folder"
            )
        target = cls(value).path(0)
        if value.endswith(("/", os.sep)) or target.is_dir():
            raise ParamError(
                "output",
                f"--output {shown} is a folder: give a file name in it, "
                f"e.g. --output {one_line(str(target / 'image.png'))}",
            )
        if target.suffix.lower() != ".png":
            raise ParamError(
                "output",
                f"--output {shown}: sdtui writes PNG images, so name the "
                f"file .png (--output {one_line(str(target.with_suffix('.png')))})",
            )
        if images > 1 and "{n}" not in value:
            example = one_line(str(name.with_name(f"{name.stem}-{{n}}{name.suffix or '.png'}")))
            raise ParamError(
                "output",
                f"--output {shown} names one file and this job makes {images} images: put {{n}} "
                f"in the name for one file per image (--output {example}), or leave out --output",
            )
        if target.exists() and not target.is_file():
            raise ParamError(
                "output", f"--output {shown} exists and is not a regular file: give another name"
            )
        folder = target.parent
        if not folder.is_dir():
            why = "is not a folder" if folder.exists() else "does not exist"
            raise ParamError(
                "output",
                f"--output {shown}: the folder {one_line(str(folder))} {why}: "
                "create it first, or give another path",
            )
        try:
            import tempfile

            fd, probe = tempfile.mkstemp(dir=folder, prefix=".sdtui-write-test-")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise UserError(
                f"cannot write to {one_line(str(folder))} ({e.strerror or e}): give "
                "another --output or fix the folder's permissions"
            ) from None
        return cls(value, grid=grid)

    def write(self, e: Any, display: JobDisplay) -> Path | None:
        """Copy a saved image to its --output file; None for a grid (never written there),
        and, for an X/Y/Z plot, for each cell (its grid is what is written)."""
        if self.grid != (e.is_grid or e.index < 0):
            return None
        dest = self.path(max(0, e.index))
        try:
            write_atomic(Path(e.path), dest)
        except OSError as err:
            self.failed = True
            display.say(
                f"sdtui: could not write {one_line(str(dest))} ({err.strerror or err}): "
                f"the image is kept at {one_line(e.path)}"
            )
            return None
        return dest


def write_atomic(source: Path, dest: Path) -> None:
    """``dest`` becomes a copy of ``source`` all at once: a reader sees the old file or the
    whole new one, never a part (a temporary file in the same folder, then os.replace)."""
    import shutil
    import stat
    import tempfile

    if dest.is_dir():
        raise IsADirectoryError(21, "is a folder", str(dest))
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, stat.S_IMODE(os.stat(source).st_mode))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- models, info, upscale, gpu ------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from sdtui.extra_networks_index import embedding_vectors, list_embeddings, list_loras, list_vaes
    from sdtui.face_files import face_files_status
    from sdtui.hashes import cached_model_hash, model_hash, old_model_hash
    from sdtui.model_index import discover_models
    from sdtui.upscalers import list_upscalers

    settings = settings_from(args)
    entries = discover_models(settings.models)
    rows = []
    for e in entries:
        h = old = None
        if e.kind == "file":
            # hashing a 7 GB file takes a while: done once, then cached by path, size and mtime
            h = cached_model_hash(e.path) if args.no_hash else model_hash(e.path)
            old = None if args.no_hash else old_model_hash(e.path)
        rows.append(
            {
                "name": e.name,
                "family": e.family,
                "kind": e.kind,
                "size_bytes": e.size_bytes,
                "hash": h,
                "old_hash": old,
                "path": str(e.path),
                "error": e.error,
            }
        )
    extras = {
        "loras": [{"name": x.name, "path": str(x.path)} for x in list_loras(settings.models)],
        "embeddings": [
            {"name": x.name, "path": str(x.path), "vectors": embedding_vectors(x.path)}
            for x in list_embeddings(settings.embeddings)
        ],
        "vaes": [{"name": x.name, "path": str(x.path)} for x in list_vaes(settings.models)],
        "upscalers": [
            {"name": x.name, "path": str(x.path) if x.path else None}
            for x in list_upscalers(settings.models)
        ],
        "face_restoration": face_files_status(settings.models),
    }
    if args.json:
        print(json_dumps({"checkpoints": rows, **extras}, indent=2))
        return EXIT_OK
    if not rows:
        print(
            f"no checkpoints in {settings.checkpoints}\n"
            "put .safetensors / .ckpt files or diffusers folders there, or pass --a1111-dir "
            "~/stable-diffusion-webui; `sdtui --demo` runs without one"
        )
    else:
        names = [one_line(r["name"]) for r in rows]  # a newline in a file name must not fake a row
        w = max(len(n) for n in names)
        print(f"{'NAME':<{w}}  {'FAMILY':<15} {'SIZE':>9}  {'HASH':<10}  OLD")
        for name, r in zip(names, rows, strict=True):
            fam = one_line(r["family"] or "?")
            print(
                f"{name:<{w}}  {fam:<15} {format_bytes(r['size_bytes']):>9}  "
                f"{one_line(r['hash'] or '-'):<10}  {one_line(r['old_hash'] or '-')}"
            )
            if r["error"]:
                print(f"{'':<{w}}  ! {one_line(r['error'])}")
    for title, key, folder in (
        ("LoRAs", "loras", settings.models / "Lora"),
        ("Embeddings", "embeddings", settings.embeddings),
        ("VAEs", "vaes", settings.models / "VAE"),
    ):
        items = extras[key]
        names = [
            one_line(i["name"]) + (f" ({i['vectors']} vectors)" if i.get("vectors") else "")
            for i in items
        ]
        print(f"\n{title} ({folder}): " + (", ".join(names) if names else "none"))
    models = [one_line(u["name"]) for u in extras["upscalers"] if u["path"]]
    print("\nUpscalers: Lanczos, Nearest" + ("".join(f", {m}" for m in models)))
    print(f"\n{one_line(extras['face_restoration'])}")
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from sdtui.infotext import parse_infotext, read_infotext

    text = read_infotext(args.image)
    if text is None:
        print(
            f"sdtui: {args.image} has no generation parameters (no A1111 'parameters' text)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        parsed = parse_infotext(text)
        print(
            json_dumps(
                {
                    "prompt": parsed.prompt,
                    "negative_prompt": parsed.negative_prompt,
                    **parsed.pairs,
                },
                indent=2,
            )
        )
    else:
        print(text)
    return EXIT_OK


def cmd_upscale(args: argparse.Namespace) -> int:
    from sdtui.ipc import protocol as msg

    tw = th = None
    if args.to:
        tw, th = parse_size(args.to)
    params = UpscaleParams(
        image=absolute_path(args.image) or "",
        upscaler=args.upscaler,
        scale=args.scale,
        target_width=tw,
        target_height=th,
        upscaler_2=args.upscaler_2,
        upscaler_2_visibility=args.visibility,
        tile=args.tile,
        gfpgan_visibility=args.gfpgan_visibility,
        codeformer_visibility=args.codeformer_visibility,
        codeformer_weight=args.codeformer_weight,
        upscale_first=args.upscale_first,
    ).validated()
    if not args.image.exists():
        raise UserError(f"{args.image} does not exist: give an image file or a folder of images")
    settings = settings_from(args)
    if tw and th:
        from sdtui.image_files import check_pixels

        check_pixels(tw, th, settings.max_image_megapixels, f"--to {tw}x{th}")
    _check_outputs(settings)
    restorers = [
        name
        for name, visibility in (
            ("GFPGAN", params.gfpgan_visibility),
            ("CodeFormer", params.codeformer_visibility),
        )
        if visibility > 0
    ]
    if restorers:  # the missing weights said now, not by a failed job
        from sdtui.face_files import check_face_weights

        check_face_weights(restorers, settings.models)
    client = engine_client(args, settings, "sdtui upscale")
    try:
        job_id = client.submit_upscale(params)
    except BaseException:
        release(client)
        raise
    if args.detach:
        release(client)
        print(job_id)
        return EXIT_OK
    level = getattr(args, "level", NORMAL)
    _debug_attached(client, job_id, level)
    if level > QUIET:
        _say_queued(client, job_id)
    note = daemon_note(client)
    display = JobDisplay("upscale", job_id, level, live=_live_progress(args.json, level))
    final = follow_job(client, job_id, args.json, display)
    if note and not args.json and level > QUIET:
        print(note, file=sys.stderr)
    if isinstance(final, msg.JobFailed):
        return EXIT_FAILED
    return EXIT_CANCELLED if final.cancelled else EXIT_OK


def cmd_gpu(args: argparse.Namespace) -> int:
    from sdtui.gpu import GpuSampler, format_gpu_table

    snap = GpuSampler().sample()
    if args.json:
        import dataclasses

        print(json_dumps(dataclasses.asdict(snap), indent=2, default=str))
    else:
        print(format_gpu_table(snap))
    return EXIT_OK


# -- the daemon and its queue -------------------------------------------------------------------

EXIT_NOT_RUNNING = 3  # `sdtui daemon status` when none runs (as `systemctl status`)


def cmd_daemon(args: argparse.Namespace) -> int:
    from sdtui.ipc.client import DaemonClient, DaemonNotRunning, OtherVersion

    settings = settings_from(args)
    client = DaemonClient(settings, who="sdtui daemon")
    action = args.daemon_command
    if action == "start":
        if args.foreground:
            return _daemon_foreground(args, settings)
        try:
            client.attach(start=False)
            print(
                f"sdtui: the engine daemon is already running (pid {client.pid}, {client.paths.address})"
            )
            client.detach()
            return EXIT_OK
        except DaemonNotRunning:
            pass
        client.attach(start=True, demo=bool(args.demo), preload=args.model)
        print(f"sdtui: engine daemon started (pid {client.pid}, {client.paths.address})")
        client.detach()
        return EXIT_OK
    try:
        client.attach(start=False)
    except DaemonNotRunning:
        if action == "status":
            return _status_not_running(client, args.json)
        print("sdtui: no engine daemon is running")
        return EXIT_OK
    except OtherVersion:
        if action != "stop":
            raise
        return _stop_other_version(client)
    state = client.query()
    if action == "status":
        client.detach()
        if args.json:
            print(json_dumps(event_json(state), indent=2))
        else:
            print(format_daemon_state(state))
        return EXIT_OK
    # stop
    active = list(state.jobs)
    cancel = bool(args.now)
    if active and not cancel:
        what = describe_active(active)
        if not sys.stdin.isatty():
            client.detach()
            print(
                f"sdtui: {what}: `sdtui daemon stop --now` cancels them (saved images are kept), "
                "or wait for them (`sdtui queue`)",
                file=sys.stderr,
            )
            return EXIT_FAILED
        answer = input(f"{what}. Stop the daemon and cancel them? Saved images are kept. [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            client.detach()
            print("sdtui: the daemon keeps running", file=sys.stderr)
            return EXIT_FAILED
        cancel = True
    pid = client.pid
    gone = client.stop_daemon(cancel_jobs=cancel)
    print(
        f"sdtui: engine daemon (pid {pid}) stopped"
        if gone
        else f"sdtui: the engine daemon (pid {pid}) is still stopping"
    )
    return EXIT_OK if gone else EXIT_FAILED


def _stop_other_version(client: Any) -> int:
    """A daemon of another sdtui version (an upgrade) cannot be asked: SIGTERM by its pid
    stops it the way a system shutdown does, keeping its queue for the next daemon."""
    import signal

    from sdtui.ipc.client import wait_gone

    info = client.paths.read_info() or {}
    pid = int(info.get("pid") or 0)
    if not pid:
        raise UserError(f"the daemon at {client.paths.address} names no pid: stop it by hand")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        print(f"sdtui: the engine daemon (pid {pid}) had already stopped")
        return EXIT_OK
    gone = wait_gone(pid, 60)
    version = info.get("version", "?")
    print(
        f"sdtui: engine daemon (pid {pid}, sdtui {version}) stopped; its queue is kept"
        if gone
        else f"sdtui: the engine daemon (pid {pid}) is still stopping"
    )
    return EXIT_OK if gone else EXIT_FAILED


def _daemon_foreground(args: argparse.Namespace, settings: Settings) -> int:
    from sdtui.ipc.daemon import Daemon, DaemonOptions
    from sdtui.ipc.paths import DaemonPaths

    options = DaemonOptions(
        idle_minutes=settings.daemon_idle_minutes, preload_model=args.model, demo=bool(args.demo)
    )
    code = Daemon(settings, DaemonPaths.default(), options).serve(
        lambda text: print(f"sdtui: {text}", file=sys.stderr) if text != "ok" else None
    )
    return code


def describe_active(jobs: Any) -> str:
    running = [j for j in jobs if j.state == "running"]
    queued = [j for j in jobs if j.state != "running"]
    parts = []
    if running:
        parts.append(
            ", ".join(
                f"#{j.job_id} running ({j.images_done}/{j.images_total} images)" for j in running
            )
        )
    if queued:
        parts.append(f"{len(queued)} queued")
    n = len(running) + len(queued)
    return f"{n} job{'s are' if n != 1 else ' is'} queued or running: " + "; ".join(parts)


def _status_not_running(client: Any, as_json: bool) -> int:
    waiting = _stored_jobs(client.paths.queue)
    if as_json:
        print(
            json_dumps(
                {
                    "running": False,
                    "address": client.paths.address,
                    "queue": str(client.paths.queue),
                    "waiting": [event_json(j) for j in waiting],
                },
                indent=2,
            )
        )
    else:
        print(f"sdtui: no engine daemon is running ({client.paths.address})")
        if waiting:
            print(
                f"{len(waiting)} job{'s wait' if len(waiting) != 1 else ' waits'} in {client.paths.queue}: "
                "`sdtui daemon start` runs them"
            )
    return EXIT_NOT_RUNNING


def _stored_jobs(queue_path: Path) -> list[Any]:
    """The queue as the file says, when no daemon runs (starts nothing, writes nothing)."""
    from sdtui.ipc import protocol as msg
    from sdtui.jobstore import JobStore, StoreError

    try:
        store = JobStore.open(queue_path, create=False)
    except (FileNotFoundError, StoreError):
        return []
    try:
        return [
            msg.JobInfo(
                j.id,
                j.kind,
                j.state,
                j.summary,
                j.images_total,
                j.submitted_by,
                j.submitted_at,
                j.attempts,
                len([i for i in store.images(j.id) if i >= 0]),
            )
            for j in store.active_jobs()
        ]
    finally:
        store.close()


def format_daemon_state(state: Any) -> str:
    lines = [
        f"engine daemon: pid {state.pid}, sdtui {state.version}, up {format_uptime(time.time() - state.started_at)}",
        f"socket:  {state.address}",
        f"queue:   {state.queue_path}",
        f"idle:    stops after {state.idle_minutes:g} min without clients or jobs"
        if state.idle_minutes
        else "idle:    never stops by itself",
    ]
    for w in state.workers:
        job = f", job #{w.job_id}" if w.job_id is not None else ""
        lines.append(
            f"worker {w.index}: {w.device} pid {w.pid or '-'} {w.state}, model {one_line(w.model or '-')}{job}"
        )
    lines.append(f"clients: {one_line(', '.join(state.clients)) if state.clients else 'none'}")
    lines.append(describe_active(state.jobs) if state.jobs else "jobs:    none queued or running")
    return "\n".join(lines)


def format_jobs(jobs: Any, recent: Any = ()) -> str:
    rows = [["ID", "STATE", "PROGRESS", "SUBMITTED BY", "JOB"]]
    for j in [*jobs, *recent]:
        if j.state == "running":
            progress = f"{j.images_done}/{j.images_total} images"
            if j.steps:
                progress += f", step {j.step}/{j.steps}"
        elif j.state == "queued":
            progress = "waiting" + (
                f" ({j.images_done}/{j.images_total} done)" if j.images_done else ""
            )
        else:
            progress = f"{j.images_done}/{j.images_total} images"
        rows.append(
            [f"#{j.job_id}", j.state, progress, one_line(j.submitted_by), one_line(j.summary)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join(
        "  ".join(c.ljust(widths[i]) for i, c in enumerate(r[:4])) + "  " + r[4] for r in rows
    )


def cmd_queue(args: argparse.Namespace) -> int:
    from sdtui.ipc.client import DaemonClient, DaemonNotRunning

    client = DaemonClient(settings_from(args), who="sdtui queue")
    try:
        client.attach(start=False)
    except DaemonNotRunning:
        client.detach()
        return _queue_without_daemon(client, args)
    try:
        if args.queue_command == "cancel":
            state = client.query()
            known = {j.job_id: j for j in state.jobs}
            if args.job_id not in known:
                raise UserError(
                    f"job #{args.job_id} is not queued or running: `sdtui queue` lists the jobs"
                )
            client.cancel(args.job_id)
            what = (
                "interrupting"
                if known[args.job_id].state == "running"
                else "removed from the queue:"
            )
            print(f"sdtui: {what} job #{args.job_id} (saved images are kept)")
            return EXIT_OK
        state = client.query()
    finally:
        client.detach()
    if args.json:
        print(
            json_dumps(
                {
                    "jobs": [event_json(j) for j in state.jobs],
                    "recent": [event_json(j) for j in state.recent],
                },
                indent=2,
            )
        )
    elif not state.jobs and not state.recent:
        print("sdtui: the queue is empty")
    else:
        print(format_jobs(state.jobs, state.recent))
    return EXIT_OK


def _queue_without_daemon(client: Any, args: argparse.Namespace) -> int:
    from sdtui.jobstore import JobStore, StoreError

    jobs = _stored_jobs(client.paths.queue)
    if args.queue_command == "cancel":
        if args.job_id not in {j.job_id for j in jobs}:
            raise UserError(f"job #{args.job_id} is not queued: `sdtui queue` lists the jobs")
        try:
            store = JobStore.open(client.paths.queue, create=False)
            store.finish(args.job_id, "cancelled")
            store.close()
        except (FileNotFoundError, StoreError) as e:
            raise UserError(f"job #{args.job_id} could not be cancelled: {e}") from None
        print(f"sdtui: removed job #{args.job_id} from the queue")
        return EXIT_OK
    if args.json:
        print(
            json_dumps(
                {"jobs": [event_json(j) for j in jobs], "recent": [], "daemon": None}, indent=2
            )
        )
    elif jobs:
        print(format_jobs(jobs))
        print("no engine daemon is running: `sdtui daemon start` runs these jobs")
    else:
        print("sdtui: the queue is empty (no engine daemon is running)")
    return EXIT_OK


# -- shell completion -------------------------------------------------------------------------
#
# A static script, generated from the argparse parser (so it never goes stale against the
# flags) and the sampler and schedule names: nothing runs Python at completion time.


def _value_lists() -> dict[str, tuple[str, ...]]:
    from sdtui.upscalers import LANCZOS, LATENT_UPSCALE_MODES, NEAREST

    return {
        "sampler": SAMPLER_NAMES,
        "schedule": SCHEDULE_TYPES,
        "hires_upscaler": (*LATENT_UPSCALE_MODES, LANCZOS, NEAREST),
        "upscaler": (LANCZOS, NEAREST),
        "device": ("auto", "cpu", "cuda", "cuda:0", "cuda:1"),
        "axis_type": _axis_labels(),
    }


def _value_kind(action: argparse.Action, lists: dict[str, tuple[str, ...]]) -> str:
    """What completes an option's value (or a positional): 'file', 'dir', 'free' (nothing),
    or the name of a list in ``lists`` (choices are added there)."""
    dest = action.dest
    if dest in ("upscaler", "upscaler_2"):
        return "upscaler"
    if dest in ("x_type", "y_type", "z_type"):
        return "axis_type"
    if dest in lists:
        return dest
    if action.choices:
        values = tuple(str(c) for c in action.choices)
        if lists.setdefault(dest, values) != values:
            raise ValueError(f"two different choice lists for {dest}")
        return dest
    if dest.endswith("_dir"):
        return "dir"
    if action.type is Path or dest in ("init_image", "model", "output"):
        return "file"
    return "free"


@dataclasses.dataclass
class _Command:
    help: str = ""
    options: list[tuple[tuple[str, ...], str, str]] = dataclasses.field(default_factory=list)
    commands: dict[str, _Command] = dataclasses.field(default_factory=dict)
    positional: str = "free"  # what completes a word that is no option or subcommand


def _help(text: str | None) -> str:
    if not text or text == argparse.SUPPRESS:
        return ""
    return " ".join(text.split())


def _command_tree(
    parser: argparse.ArgumentParser, lists: dict[str, tuple[str, ...]], help: str = ""
) -> _Command:
    node = _Command(help=_help(help or parser.description))
    for action in parser._actions:  # argparse's own record of the flags
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                node.commands[name] = _command_tree(sub, lists, helps.get(name) or "")
        elif action.option_strings:
            kind = "flag" if action.nargs == 0 else _value_kind(action, lists)
            node.options.append((tuple(action.option_strings), kind, _help(action.help)))
        elif node.positional == "free":
            node.positional = _value_kind(action, lists)
    return node


def _walk(node: _Command, path: str = "") -> Any:
    yield path, node
    for name, sub in node.commands.items():
        yield from _walk(sub, f"{path}/{name}" if path else name)


def _option_kinds(tree: _Command) -> dict[str, str]:
    kinds: dict[str, str] = {}
    for _, node in _walk(tree):
        for names, kind, _ in node.options:
            for name in names:
                if kinds.setdefault(name, kind) != kind:
                    raise ValueError(f"{name} means two things")
    return kinds


def _sq(text: str) -> str:
    """A single-quoted word for bash and zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _fq(text: str) -> str:
    """A single-quoted word for fish (which reads \\\\ and \\' inside single quotes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def completion_script(shell: str, parser: argparse.ArgumentParser | None = None) -> str:
    lists = _value_lists()
    tree = _command_tree(parser or build_parser(), lists)
    kinds = _option_kinds(tree)
    make = {"bash": _bash_script, "zsh": _zsh_script, "fish": _fish_script}[shell]
    return make(tree, kinds, lists)


def _case_lines(pairs: list[tuple[str, str]], quote: Any = _sq, indent: str = "        ") -> str:
    return "\n".join(f"{indent}{quote(k)}) {v} ;;" for k, v in pairs)


def _bash_script(tree: _Command, kinds: dict[str, str], lists: dict[str, tuple[str, ...]]) -> str:
    nodes = list(_walk(tree))
    subcommands = _case_lines(
        [(p, f"echo {_sq(' '.join(n.commands))}") for p, n in nodes if n.commands]
    )
    options = _case_lines(
        [
            (p, "echo " + _sq(" ".join(x for names, _, _ in n.options for x in names)))
            for p, n in nodes
        ]
    )
    positional = _case_lines(
        [(p, f"echo {n.positional}") for p, n in nodes if n.positional != "free"]
    )
    kind = _case_lines([(o, f"echo {k}") for o, k in sorted(kinds.items()) if k != "flag"])
    values = _case_lines(
        [(name, "printf '%s\\n' " + " ".join(_sq(v) for v in vs)) for name, vs in lists.items()]
    )
    return f"""# bash completion for sdtui {__version__}, made by `sdtui completion bash`.
# Install: sdtui completion bash > ~/.local/share/bash-completion/completions/sdtui
# (or add `source <(sdtui completion bash)` to ~/.bashrc)

_sdtui_subcommands() {{
    case $1 in
{subcommands}
    esac
}}

_sdtui_options() {{
    case $1 in
{options}
    esac
}}

_sdtui_positional() {{
    case $1 in
{positional}
        *) echo free ;;
    esac
}}

_sdtui_kind() {{  # what an option's value is: flag (none), file, dir, free, or a list
    case $1 in
{kind}
        *) echo flag ;;
    esac
}}

_sdtui_list() {{
    case $1 in
{values}
    esac
}}

_sdtui_reply() {{  # $1: what to complete, $2: the word so far, $3: a prefix (--option=)
    local IFS=$'\\n' word=$2 quote= value escaped
    case $1 in
        free) COMPREPLY=() ;;
        file | dir)
            [[ -z $3 ]] && compopt -o filenames 2>/dev/null
            if [[ $1 == dir ]]; then
                COMPREPLY=($(compgen -d -- "$word"))
            else
                COMPREPLY=($(compgen -f -- "$word"))
            fi
            [[ -n $3 ]] && COMPREPLY=("${{COMPREPLY[@]/#/$3}}")
            ;;
        *)
            case $word in
                \\"*) quote=\\"; word=${{word:1}} ;;
                \\'*) quote=\\'; word=${{word:1}} ;;
            esac
            COMPREPLY=()
            while IFS= read -r value; do
                printf -v escaped '%q' "$value"
                if [[ -n $quote ]]; then
                    [[ $value == "$word"* ]] && COMPREPLY+=("$3$quote$value$quote")
                elif [[ $value == "${{word//\\\\/}}"* || $escaped == "$word"* ]]; then
                    COMPREPLY+=("$3$escaped")
                fi
            done < <(_sdtui_list "$1")
            ;;
    esac
}}

_sdtui() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev= cmdpath= word sub i skip=0 opt= kind
    ((COMP_CWORD > 0)) && prev=${{COMP_WORDS[COMP_CWORD - 1]}}
    # the subcommands typed so far (daemon/start), skipping option values
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        if ((skip)); then
            [[ $word == = ]] || skip=0  # bash splits --option=value at the =
            continue
        fi
        case $word in
            -*=*) ;;
            -*) [[ $(_sdtui_kind "$word") != flag ]] && skip=1 ;;
            *)
                for sub in $(_sdtui_subcommands "$cmdpath"); do
                    if [[ $word == "$sub" ]]; then
                        cmdpath=${{cmdpath:+$cmdpath/}}$word
                        break
                    fi
                done
                ;;
        esac
    done
    # an option's value: --sampler X, --sampler=X (one word, or three when = breaks words)
    if [[ $cur == -*=* ]]; then
        kind=$(_sdtui_kind "${{cur%%=*}}")
        if [[ $kind != flag ]]; then
            _sdtui_reply "$kind" "${{cur#*=}}" "${{cur%%=*}}="
            return
        fi
    fi
    if [[ $cur == = ]]; then
        opt=$prev
        cur=
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then
        opt=${{COMP_WORDS[COMP_CWORD - 2]}}
    elif [[ $prev == -* ]]; then
        opt=$prev
    fi
    if [[ -n $opt ]]; then
        kind=$(_sdtui_kind "$opt")
        if [[ $kind != flag ]]; then
            _sdtui_reply "$kind" "$cur" ""
            return
        fi
    fi
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$(_sdtui_options "$cmdpath")" -- "$cur"))
        return
    fi
    local subs
    subs=$(_sdtui_subcommands "$cmdpath")
    if [[ -n $subs ]]; then
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
        return
    fi
    _sdtui_reply "$(_sdtui_positional "$cmdpath")" "$cur" ""
}}

complete -F _sdtui sdtui
"""


def _zsh_script(tree: _Command, kinds: dict[str, str], lists: dict[str, tuple[str, ...]]) -> str:
    nodes = list(_walk(tree))

    def described(items: list[tuple[str, str]]) -> str:
        return "(" + " ".join(_sq(f"{name}:{text}" if text else name) for name, text in items) + ")"

    subcommands = _case_lines(
        [
            (p, f"reply={described([(c, s.help) for c, s in n.commands.items()])}")
            for p, n in nodes
            if n.commands
        ],
        indent="        (",
    )
    options = _case_lines(
        [
            (p, f"reply={described([(x, h) for names, _, h in n.options for x in names])}")
            for p, n in nodes
        ],
        indent="        (",
    )
    positional = _case_lines(
        [(p, f"REPLY={n.positional}") for p, n in nodes if n.positional != "free"],
        indent="        (",
    )
    kind = _case_lines(
        [(o, f"REPLY={k}") for o, k in sorted(kinds.items()) if k != "flag"], indent="        ("
    )
    values = _case_lines(
        [(name, "reply=(" + " ".join(_sq(v) for v in vs) + ")") for name, vs in lists.items()],
        indent="        (",
    )
    return f"""#compdef sdtui
# zsh completion for sdtui {__version__}, made by `sdtui completion zsh`.
# Install: sdtui completion zsh > ~/.zfunc/_sdtui, and in ~/.zshrc before compinit:
#   fpath=(~/.zfunc $fpath); autoload -Uz compinit; compinit
# (or, after compinit: source <(sdtui completion zsh))

_sdtui_subcommands() {{
    reply=()
    case $1 in
{subcommands}
    esac
}}

_sdtui_options() {{
    reply=()
    case $1 in
{options}
    esac
}}

_sdtui_positional() {{
    REPLY=free
    case $1 in
{positional}
    esac
}}

_sdtui_kind() {{  # what an option's value is: flag (none), file, dir, free, or a list
    REPLY=flag
    case $1 in
{kind}
    esac
}}

_sdtui_list() {{
    reply=()
    case $1 in
{values}
    esac
}}

_sdtui_values() {{
    local -a reply
    case $1 in
        (free) _message value ;;
        (file) _files ;;
        (dir) _files -/ ;;
        (*)
            _sdtui_list $1
            compadd -a reply
            ;;
    esac
}}

_sdtui() {{
    local cmdpath= word cur=${{words[CURRENT]}} i skip=0 REPLY
    local -a reply names
    # the subcommands typed so far (daemon/start), skipping option values
    for ((i = 2; i < CURRENT; i++)); do
        word=${{words[i]}}
        if ((skip)); then
            skip=0
            continue
        fi
        case $word in
            (-*=*) ;;
            (-*)
                _sdtui_kind $word
                [[ $REPLY != flag ]] && skip=1
                ;;
            (*)
                _sdtui_subcommands $cmdpath
                names=(${{reply%%:*}})
                if ((${{names[(Ie)$word]}})); then
                    cmdpath=${{cmdpath:+$cmdpath/}}$word
                fi
                ;;
        esac
    done
    if [[ $cur == -*=* ]]; then
        _sdtui_kind ${{cur%%=*}}
        if [[ $REPLY != flag ]]; then
            compset -P '*='
            _sdtui_values $REPLY
            return
        fi
    fi
    if [[ ${{words[CURRENT-1]}} == -* ]]; then
        _sdtui_kind ${{words[CURRENT-1]}}
        if [[ $REPLY != flag ]]; then
            _sdtui_values $REPLY
            return
        fi
    fi
    if [[ $cur == -* ]]; then
        _sdtui_options $cmdpath
        _describe -t options option reply
        return
    fi
    _sdtui_subcommands $cmdpath
    if (($#reply)); then
        _describe -t commands command reply
        return
    fi
    _sdtui_positional $cmdpath
    [[ $REPLY != free ]] && _sdtui_values $REPLY
}}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
    _sdtui "$@"
else
    compdef _sdtui sdtui
fi
"""


def _fish_script(tree: _Command, kinds: dict[str, str], lists: dict[str, tuple[str, ...]]) -> str:
    nodes = list(_walk(tree))

    def case(pairs: list[tuple[str, str]], default: str = "") -> str:
        body = "".join(f"        case {_fq(k)}\n            {v}\n" for k, v in pairs)
        return body + (f"        case '*'\n            {default}\n" if default else "")

    def value_flags(kind: str) -> str:
        if kind == "file":
            return "-r -F"
        if kind == "dir":
            return "-x -a '(__fish_complete_directories)'"
        if kind == "free":
            return "-x"
        return f"-x -a {_fq(f'(__sdtui_list {kind})')}"

    lines = []
    for path, node in nodes:
        at = f"-n {_fq(f'__sdtui_at {_fq(path)}')}"
        for name, sub in node.commands.items():
            lines.append(f"complete -c sdtui {at} -a {_fq(name)} -d {_fq(sub.help)}")
        for names, kind, text in node.options:
            spec = " ".join(f"-l {n[2:]}" if n.startswith("--") else f"-s {n[1:]}" for n in names)
            extra = "" if kind == "flag" else " " + value_flags(kind)
            lines.append(f"complete -c sdtui {at} {spec}{extra} -d {_fq(text)}".rstrip())
        if not node.commands and node.positional != "free":  # a file (info, upscale) or a list
            kind = node.positional
            what = "-F" if kind in ("file", "dir") else f"-a {_fq(f'(__sdtui_list {kind})')}"
            lines.append(f"complete -c sdtui {at} {what}")
    subcommands = case(
        [
            (p, "printf '%s\\n' " + " ".join(_fq(c) for c in n.commands))
            for p, n in nodes
            if n.commands
        ]
    )
    kind = case([(o, f"echo {k}") for o, k in sorted(kinds.items()) if k != "flag"], "echo flag")
    values = case(
        [(name, "printf '%s\\n' " + " ".join(_fq(v) for v in vs)) for name, vs in lists.items()]
    )
    body = "\n".join(lines)
    return f"""# fish completion for sdtui {__version__}, made by `sdtui completion fish`.
# Install: sdtui completion fish > ~/.config/fish/completions/sdtui.fish

function __sdtui_subcommands
    switch "$argv[1]"
{subcommands}    end
end

function __sdtui_kind  # what an option's value is: flag (none), file, dir, free, or a list
    switch "$argv[1]"
{kind}    end
end

function __sdtui_list
    switch "$argv[1]"
{values}    end
end

function __sdtui_path  # the subcommands typed so far (daemon/start), skipping option values
    set -l tokens (commandline -opc)
    set -e tokens[1]
    set -l cmdpath ''
    set -l skip 0
    for word in $tokens
        if test $skip = 1
            set skip 0
            continue
        end
        switch $word
            case '-*=*'
            case '-*'
                test (__sdtui_kind $word) != flag; and set skip 1
            case '*'
                if contains -- $word (__sdtui_subcommands "$cmdpath")
                    if test -z "$cmdpath"
                        set cmdpath $word
                    else
                        set cmdpath "$cmdpath/$word"
                    end
                end
        end
    end
    echo $cmdpath
end

function __sdtui_at
    set -l here (__sdtui_path)
    test "$here" = "$argv[1]"
end

complete -c sdtui -f
{body}
"""


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
