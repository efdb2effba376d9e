"""Command line: `sdtui` opens the TUI; subcommands run headless on the same engine.

Kept light on purpose: the spawned engine process imports this module again (as the
script's main module), so nothing here imports torch or textual at module level.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from sdtui import __version__
from sdtui.config import FAST_PATHS, GRAPHICS, MEMORY_MODES, Settings, load_settings
from sdtui.errors import UserError
from sdtui.params import RESIZE_MODES, GenerationParams, ParamError, UpscaleParams, parse_size
from sdtui.samplers import SAMPLER_NAMES, SCHEDULE_TYPES

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def _folder_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("folders and device")
    g.add_argument("--a1111-dir", type=Path, help="an existing A1111 install: use its models/, embeddings/, outputs/")
    g.add_argument("--models-dir", type=Path, help="the models/ folder (holds Stable-diffusion/, Lora/, VAE/, ESRGAN/)")
    g.add_argument("--outputs-dir", type=Path, help="where images are written (A1111 layout)")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), help="where to run (default: CUDA when present)")
    g.add_argument("--memory-mode", choices=MEMORY_MODES, help="auto, normal, low (model offload), lowest (sequential offload)")
    g.add_argument("--fast-path", choices=FAST_PATHS, help="CUDA: auto (channels_last + torch.compile), nocompile, off")
    g.add_argument("--config", type=Path, help="settings file (default: the platform's config folder)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdtui",
        description="Stable Diffusion from a keyboard-only terminal UI. Run without a "
        "subcommand to open the TUI.",
    )
    parser.add_argument("--version", action="version", version=f"sdtui {__version__}")
    parser.add_argument("--demo", action="store_true", help="use the built-in tiny demo model (its images are noise)")
    parser.add_argument("--model", help="checkpoint to start with: a name from `sdtui models` or a path")
    parser.add_argument("--graphics", choices=GRAPHICS, help="image protocol; auto probes the terminal, none shows paths only")
    _folder_flags(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="txt2img / img2img without the UI", description="Generate images headless.")
    g.add_argument("prompt")
    g.add_argument("-N", "--negative", default="", help="negative prompt")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--cfg", type=float, default=7.0, help="CFG scale")
    g.add_argument("--seed", type=int, default=-1, help="-1 = random; image i of the job uses seed+i")
    g.add_argument("--size", default=None, help="WIDTHxHEIGHT, multiples of 8 (default 512x512)")
    g.add_argument("--width", type=int)
    g.add_argument("--height", type=int)
    g.add_argument("--batch-size", type=int, default=1, help="images per batch")
    g.add_argument("-n", "--batch-count", type=int, default=1, help="batches, one after another")
    g.add_argument("--sampler", default="Euler a", help=f"one of: {', '.join(SAMPLER_NAMES)} (old names like 'DPM++ 2M Karras' too)")
    g.add_argument("--schedule", default="Automatic", help=f"schedule type: {', '.join(SCHEDULE_TYPES)}")
    g.add_argument("--init-image", help="img2img: start from this image")
    g.add_argument("--denoise", type=float, default=0.75, help="img2img denoising strength, 0 to 1")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="just resize")
    g.add_argument("--clip-skip", type=int, default=1)
    g.add_argument("--variation-seed", type=int, default=-1)
    g.add_argument("--variation-strength", type=float, default=0.0)
    g.add_argument("--hires", type=float, default=None, metavar="SCALE", help="hires fix: upscale by SCALE and run a second pass")
    g.add_argument("--hires-steps", type=int, default=0)
    g.add_argument("--hires-denoise", type=float, default=0.7)
    g.add_argument("--hires-upscaler", default="Latent")
    g.add_argument("--vae", default="Automatic", help="a VAE from models/VAE, or Automatic")
    g.add_argument("--preview-every", type=int, default=0, help="send a live preview every N steps (0 = off)")
    g.add_argument("--json", action="store_true", help="print one JSON object per event on stdout")
    _folder_flags(g)
    g.add_argument("--demo", action="store_true", help="use the built-in tiny demo model")
    g.add_argument("--model", help="a name from `sdtui models`, or a path")

    m = sub.add_parser("models", help="list checkpoints: name, family, size, hash")
    m.add_argument("--json", action="store_true")
    m.add_argument("--no-hash", action="store_true", help="skip hashing files not hashed before")
    _folder_flags(m)

    i = sub.add_parser("info", help="show the generation parameters stored in an image (ours or A1111's)")
    i.add_argument("image", type=Path)
    i.add_argument("--json", action="store_true")

    u = sub.add_parser("upscale", help="Extras: upscale an image or a folder of images")
    u.add_argument("image", type=Path)
    u.add_argument("--scale", type=float, default=4.0)
    u.add_argument("--to", default=None, metavar="WxH", help="resize to this size instead of a factor")
    u.add_argument("--upscaler", default="Lanczos", help="Lanczos, Nearest, or a model from models/ESRGAN, models/RealESRGAN")
    u.add_argument("--upscaler-2", default=None)
    u.add_argument("--visibility", type=float, default=0.0, help="upscaler 2 visibility, 0 to 1")
    u.add_argument("--tile", type=int, default=192, help="tile size in pixels (0 = no tiling)")
    u.add_argument("--json", action="store_true")
    _folder_flags(u)

    gp = sub.add_parser("gpu", help="print the GPU table (like nvidia-smi) once")
    gp.add_argument("--json", action="store_true")
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(
        getattr(args, "config", None),
        a1111_dir=getattr(args, "a1111_dir", None),
        models_dir=getattr(args, "models_dir", None),
        outputs_dir=getattr(args, "outputs_dir", None),
        device=getattr(args, "device", None),
        memory_mode=getattr(args, "memory_mode", None),
        fast_path=getattr(args, "fast_path", None),
        graphics=getattr(args, "graphics", None),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            from sdtui.tui.launch import run_tui

            return run_tui(args, settings_from(args))
        handler = {
            "generate": cmd_generate,
            "models": cmd_models,
            "info": cmd_info,
            "upscale": cmd_upscale,
            "gpu": cmd_gpu,
        }[args.command]
        return handler(args)
    except ParamError as e:
        print(f"sdtui: {e.message}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as e:
        print(f"sdtui: {e.message}", file=sys.stderr)
        return EXIT_FAILED


# -- generate -------------------------------------------------------------------------------


def params_from(args: argparse.Namespace) -> GenerationParams:
    width, height = 512, 512
    if args.size:
        width, height = parse_size(args.size)
    width = args.width or width
    height = args.height or height
    model = args.model
    if args.demo and not model:
        model = "demo"
    return GenerationParams(
        prompt=args.prompt,
        negative_prompt=args.negative,
        steps=args.steps,
        sampler=args.sampler,
        schedule_type=args.schedule,
        cfg_scale=args.cfg,
        seed=args.seed,
        width=width,
        height=height,
        batch_size=args.batch_size,
        batch_count=args.batch_count,
        init_image=args.init_image,
        denoising_strength=args.denoise,
        resize_mode=args.resize_mode,
        model=model,
        vae=args.vae,
        clip_skip=args.clip_skip,
        subseed=args.variation_seed,
        subseed_strength=args.variation_strength,
        enable_hr=args.hires is not None,
        hr_scale=args.hires or 2.0,
        hr_second_pass_steps=args.hires_steps,
        hr_denoising_strength=args.hires_denoise,
        hr_upscaler=args.hires_upscaler,
        preview_every=args.preview_every,
    ).validated()


def _check_init_image(path: str | None) -> None:
    """Fail before starting the engine: a missing or broken init image loses nothing."""
    if path is None:
        return
    from PIL import Image, UnidentifiedImageError

    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"init image {p} does not exist: check the path")
    try:
        with Image.open(p) as im:
            im.verify()
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(
            f"init image {p} is not an image ({e.__class__.__name__}): use a PNG, JPEG or WebP file"
        ) from None


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


def cmd_generate(args: argparse.Namespace) -> int:
    from sdtui.engine import protocol as msg
    from sdtui.engine.host import EngineHost
    from sdtui.engine.worker import EngineOptions

    params = params_from(args)
    _check_init_image(params.init_image)
    settings = settings_from(args)
    _check_outputs(settings)
    if params.model in ("demo", "sdtui-demo") and not args.json:
        print(
            "sdtui: using the built-in demo model: tiny random weights, so its images are noise. "
            f"For real images put a checkpoint in {settings.checkpoints} or pass --a1111-dir.",
            file=sys.stderr,
        )
    host = EngineHost(settings, EngineOptions(demo=args.demo, preload=False))
    host.start()
    bar = ProgressBar(enabled=not args.json and sys.stderr.isatty() or os.environ.get("SDTUI_FORCE_PROGRESS") == "1")
    job_id = host.submit(params)
    final = follow_job(host, job_id, args.json, bar)
    if isinstance(final, msg.JobFailed):
        return EXIT_FAILED
    if final.cancelled:
        return EXIT_CANCELLED
    if not args.json:
        n = len(final.paths)
        print(f"sdtui: {n} image{'s' if n != 1 else ''} in {final.seconds:.1f} s", file=sys.stderr)
    return EXIT_OK


def follow_job(host: Any, job_id: int, as_json: bool, bar: ProgressBar) -> Any:
    """Print a job's events until it ends (paths on stdout, the rest on stderr, or JSON
    lines); ctrl+c cancels it, keeping what is saved. Stops the engine; returns the last event."""
    from sdtui.engine import protocol as msg

    final: Any = None
    cancelled_by_user = False
    try:
        while final is None:
            try:
                for e in host.poll(timeout=0.2):
                    if as_json:
                        print(json.dumps(event_json(e)), flush=True)
                    if isinstance(e, msg.Progress):
                        bar.update(e)
                        continue
                    bar.clear()
                    if isinstance(e, msg.JobDone | msg.JobFailed) and e.job_id == job_id:
                        final = e
                    elif isinstance(e, msg.EngineStatus) and e.state == "crashed":
                        final = msg.JobFailed(job_id, e.detail)
                    elif as_json:
                        continue
                    elif isinstance(e, msg.ImageSaved):
                        print(e.path, flush=True)
                    elif isinstance(e, msg.Log):
                        print(f"sdtui: {e.text}", file=sys.stderr)
            except KeyboardInterrupt:
                if cancelled_by_user:
                    raise
                cancelled_by_user = True
                bar.clear()
                print("sdtui: cancelling: images already saved are kept", file=sys.stderr)
                host.cancel(job_id)
    finally:
        bar.clear()
        host.stop()
    if isinstance(final, msg.JobFailed):
        print(f"sdtui: {final.message}", file=sys.stderr)
        if os.environ.get("SDTUI_DEBUG"):
            print(final.detail, file=sys.stderr)
    return final


def event_json(e: Any) -> dict[str, Any]:
    import dataclasses

    d = {"event": type(e).__name__}
    for f in dataclasses.fields(e):
        v = getattr(e, f.name)
        if isinstance(v, bytes):
            v = len(v)  # previews: just the size
            d[f.name + "_bytes"] = v
            continue
        d[f.name] = v
    return d


class ProgressBar:
    """One line on stderr: bar, step, it/s, ETA."""

    def __init__(self, enabled: bool, width: int = 30) -> None:
        self.enabled, self.width, self.shown = enabled, width, False

    def update(self, p: Any) -> None:
        if not self.enabled:
            return
        frac = p.step / max(1, p.steps)
        fill = int(frac * self.width)
        eta = time.strftime("%M:%S", time.gmtime(p.eta_s)) if p.eta_s < 3600 else f"{p.eta_s / 3600:.1f}h"
        batch = f" batch {p.batch_index + 1}/{p.batch_count}" if p.batch_count > 1 else ""
        line = (
            f"\r[{'#' * fill}{'-' * (self.width - fill)}] {p.step}/{p.steps}{batch} "
            f"{p.its:.2f} it/s ETA {eta} "
        )
        sys.stderr.write(line)
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self.shown = False


# -- models, info, upscale, gpu ------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def cmd_models(args: argparse.Namespace) -> int:
    from sdtui.extra_networks_index import embedding_vectors, list_embeddings, list_loras, list_vaes
    from sdtui.model_index import cached_model_hash, discover_models, model_hash, old_model_hash
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
    }
    if args.json:
        print(json.dumps({"checkpoints": rows, **extras}, indent=2))
        return EXIT_OK
    if not rows:
        print(
            f"no checkpoints in {settings.checkpoints}\n"
            "put .safetensors / .ckpt files or diffusers folders there, or pass --a1111-dir "
            "~/stable-diffusion-webui; `sdtui --demo` runs without one"
        )
    else:
        w = max(len(r["name"]) for r in rows)
        print(f"{'NAME':<{w}}  {'FAMILY':<15} {'SIZE':>9}  {'HASH':<10}  OLD")
        for r in rows:
            fam = r["family"] or "?"
            print(
                f"{r['name']:<{w}}  {fam:<15} {_human(r['size_bytes']):>9}  "
                f"{r['hash'] or '-':<10}  {r['old_hash'] or '-'}"
            )
            if r["error"]:
                print(f"{'':<{w}}  ! {r['error']}")
    for title, key, folder in (
        ("LoRAs", "loras", settings.models / "Lora"),
        ("Embeddings", "embeddings", settings.embeddings),
        ("VAEs", "vaes", settings.models / "VAE"),
    ):
        items = extras[key]
        names = [i["name"] + (f" ({i['vectors']} vectors)" if i.get("vectors") else "") for i in items]
        print(f"\n{title} ({folder}): " + (", ".join(names) if names else "none"))
    models = [u["name"] for u in extras["upscalers"] if u["path"]]
    print("\nUpscalers: Lanczos, Nearest" + ("".join(f", {m}" for m in models)))
    return EXIT_OK


def cmd_info(args: argparse.Namespace) -> int:
    from sdtui.infotext import parse_infotext, read_infotext

    text = read_infotext(args.image)
    if text is None:
        print(f"sdtui: {args.image} has no generation parameters (no A1111 'parameters' text)", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        parsed = parse_infotext(text)
        print(
            json.dumps(
                {"prompt": parsed.prompt, "negative_prompt": parsed.negative_prompt, **parsed.pairs},
                indent=2,
                ensure_ascii=False,
            )
        )
    else:
        print(text)
    return EXIT_OK


def cmd_upscale(args: argparse.Namespace) -> int:
    from sdtui.engine import protocol as msg
    from sdtui.engine.host import EngineHost
    from sdtui.engine.worker import EngineOptions

    tw = th = None
    if args.to:
        tw, th = parse_size(args.to)
    params = UpscaleParams(
        image=str(args.image),
        upscaler=args.upscaler,
        scale=args.scale,
        target_width=tw,
        target_height=th,
        upscaler_2=args.upscaler_2,
        upscaler_2_visibility=args.visibility,
        tile=args.tile,
    ).validated()
    if not args.image.exists():
        raise UserError(f"{args.image} does not exist: give an image file or a folder of images")
    settings = settings_from(args)
    _check_outputs(settings)
    host = EngineHost(settings, EngineOptions(preload=False))
    host.start()
    try:
        job_id = host.submit_upscale(params)
    except BaseException:
        host.stop()
        raise
    final = follow_job(host, job_id, args.json, ProgressBar(enabled=False))
    if isinstance(final, msg.JobFailed):
        return EXIT_FAILED
    return EXIT_OK


def cmd_gpu(args: argparse.Namespace) -> int:
    from sdtui.gpu import GpuSampler, format_gpu_table

    snap = GpuSampler().sample()
    if args.json:
        import dataclasses

        print(json.dumps(dataclasses.asdict(snap), indent=2, default=str))
    else:
        print(format_gpu_table(snap))
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
