"""GPU speed, side by side in one run: raw diffusers (SDPA, fp16) vs the sdtui engine code with
its fast path off vs sdtui with the fast path (channels_last, fused QKV, regional torch.compile,
on by default on CUDA). All in fp16, as the issue's comparison asks; the app itself picks bf16 on
Ampere and newer cards (same tensor-core rate).

Cases: SD1.5 architecture 512x512 batch 1 and batch 6, SDXL architecture 1024x1024 batch 1,
30 steps, random fp16 weights built on the GPU from the bundled configs (nothing is fetched).
Prints it/s, seconds per image, compile time, peak VRAM, and appends the table to
bench/RESULTS.md (and $OUT/gpu_speed_fp16.md when $OUT is set). Aimed at under 6 minutes on an H100
(not yet measured there). `--dtype bf16` for the dtype the app picks on Ampere and newer;
`SDTUI_CHANNELS_LAST=0` to measure the fast path without channels_last.

    python bench/gpu_speed.py            # on a CUDA machine
    python bench/gpu_speed.py --smoke    # CPU check of the script itself, demo model, tiny sizes
                                         # (the fast path runs with dynamo's "eager" backend)
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# compile times are cold-start figures: an empty inductor cache (the engine keeps its own)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="sdtui-bench-inductor-"))
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a black house cat typing on a computer, studio light, detailed"


def random_pipeline(config_name: str, device: str, dtype, smoke: bool):
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from sdtui.engine.configs import config_dir

    cfg = config_dir(config_name)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder"))
        te2 = None
        if (cfg / "text_encoder_2").exists():
            te2 = CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(cfg / "text_encoder_2")
            )
    for m in (unet, vae, te, te2):
        if m is None:
            continue
        for p in m.parameters():  # small weights keep fp16 activations finite
            p.data.normal_(0, 0.02)
        m.to(device=device, dtype=dtype).eval()
    sched = EulerAncestralDiscreteScheduler.from_pretrained(cfg / "scheduler")
    tok = CLIPTokenizer.from_pretrained(cfg / "tokenizer")
    if te2 is not None:
        tok2 = CLIPTokenizer.from_pretrained(cfg / "tokenizer_2")
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=te,
            text_encoder_2=te2,
            tokenizer=tok,
            tokenizer_2=tok2,
            unet=unet,
            scheduler=sched,
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=te,
            tokenizer=tok,
            unet=unet,
            scheduler=sched,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def session_for(pipe, family: str, device: str):
    from sdtui.engine.session import ModelSession
    from sdtui.model_family import ModelFamily

    loaded = SimpleNamespace(
        pipe=pipe,
        family=ModelFamily(family, "bench"),
        name=f"{family}-random",
        path=Path("random"),
        size_bytes=0,
        load_seconds=0.0,
        prediction_type="epsilon",
        device=device,
        dtype=pipe.unet.dtype,
    )
    return ModelSession.create(loaded, device)


def run_sdtui(session, size: int, batch: int, steps: int, out: Path, family: str):
    from sdtui.engine.generate import JobContext, JobControl, run_generation
    from sdtui.ipc import protocol as msg
    from sdtui.outputs import OutputLayout
    from sdtui.params import GenerationParams

    marks: list[float] = []

    def emit(event) -> None:  # a step's Progress is emitted from the step callback itself
        if isinstance(event, msg.Progress):
            marks.append(time.perf_counter())

    ctx = JobContext(1, emit, JobControl(), OutputLayout(out), "bench", None, family)
    p = GenerationParams(
        prompt=PROMPT,
        steps=steps,
        width=size,
        height=size,
        batch_size=batch,
        seed=1,
        sampler="Euler a",
        preview_every=1,
        preview_interval=0.25,
    )  # as the TUI asks
    t0 = time.perf_counter()
    done = run_generation(session.loaded, session, p, ctx)
    total = time.perf_counter() - t0
    # it/s as for raw diffusers: the median gap between step callbacks
    gaps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    rate = 1 / gaps[len(gaps) // 2] if gaps else steps / total
    return total, rate, len(done.paths)


def run_raw(pipe, size: int, batch: int, steps: int, out: Path):
    import torch

    gens = [torch.Generator("cpu").manual_seed(1 + i) for i in range(batch)]
    marks: list[float] = []

    def cb(p, i, t, kw):
        marks.append(time.perf_counter())
        return kw

    t0 = time.perf_counter()
    images = pipe(
        PROMPT,
        num_inference_steps=steps,
        width=size,
        height=size,
        num_images_per_prompt=batch,
        generator=gens,
        callback_on_step_end=cb,
    ).images
    for i, im in enumerate(images):
        im.save(out / f"raw-{i}.png")
    total = time.perf_counter() - t0
    gaps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    rate = 1 / gaps[len(gaps) // 2] if gaps else steps / total
    return total, rate


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--smoke", action="store_true", help="CPU, demo model, tiny sizes: checks the script"
    )
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--skip-sdxl", action="store_true")
    ap.add_argument(
        "--dtype",
        choices=("fp16", "bf16"),
        default="fp16",
        help="fp16 is the issue's comparison; bf16 is what the app picks on Ampere and newer",
    )
    args = ap.parse_args()

    import torch

    from sdtui.engine.fastpath import apply_fast_path, warm_up

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: run with --smoke to check the script on the CPU")
        return 2
    dtype = (
        torch.float32 if args.smoke else {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    )
    dtype_name = "fp32" if args.smoke else args.dtype
    raw_label = f"raw diffusers SDPA {dtype_name}"
    steps = 3 if args.smoke else args.steps
    if args.smoke:
        cases = [("SD1", "sdtui-demo", 64, 1), ("SD1", "sdtui-demo", 64, 2)]
    else:
        cases = [("SD1", "sd15", 512, 1), ("SD1", "sd15", 512, 6)]
        if not args.skip_sdxl:
            cases.append(("SDXL", "sdxl-base", 1024, 1))
    out = Path(tempfile.mkdtemp(prefix="sdtui-gpu-speed-"))
    card = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or "CPU"
    rows = []

    def peak_reset():
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak() -> str:
        return f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else "n/a"

    summaries: list[str] = []
    for cfg in dict.fromkeys(c[1] for c in cases):  # one model at a time, in case order
        torch.cuda.empty_cache() if device == "cuda" else None
        pipe = random_pipeline(cfg, device, dtype, args.smoke)
        mine = [c for c in cases if c[1] == cfg]
        family = mine[0][0]
        session = session_for(pipe, family, device)
        label = {c: f"{'SD1.5' if c[0] == 'SD1' else c[0]} {c[2]}x{c[2]} b{c[3]}" for c in mine}
        found: dict = {}
        # raw diffusers and sdtui without the fast path first, on the untouched pipeline ...
        for case in mine:
            _, _, size, batch = case
            run_raw(pipe, size, batch, 2, out)  # warm-up
            peak_reset()
            t, r = run_raw(pipe, size, batch, steps, out)
            found[case] = [(label[case], raw_label, r, t / batch, "-", peak())]
            run_sdtui(session, size, batch, 2, out, family)
            peak_reset()
            t, r, _ = run_sdtui(session, size, batch, steps, out, family)
            found[case].append((label[case], "sdtui, fast path off", r, t / batch, "-", peak()))
        # ... then the fast path, applied once as the engine does at load, compiled at the
        # first case's size; a later case's first job shows what its new shape costs
        if args.smoke:  # every fast-path step on CPU weights, traced but not inductor-compiled
            os.environ.setdefault("SDTUI_COMPILE_BACKEND", "eager")
        import torch._dynamo

        torch._dynamo.reset()  # each model's compile time from scratch, not after the last one's
        logs: list[str] = []
        state = apply_fast_path(pipe, "cuda", "auto", logs.append)
        warm_up(pipe, state, mine[0][2], mine[0][2], logs.append)
        summaries.append(f"{cfg}: {state.summary()}")
        print(summaries[-1], flush=True)
        for n, case in enumerate(mine):
            _, _, size, batch = case
            t_first, _, _ = run_sdtui(session, size, batch, 2, out, family)
            peak_reset()
            t, r, _ = run_sdtui(session, size, batch, steps, out, family)
            if n == 0:
                comp = (
                    f"{state.compile_seconds:.1f} s"
                    if state.compile_seconds
                    else (state.failed or "-")
                )
            else:  # the 2-step first job minus what 2 steps cost once compiled
                comp = f"+{max(0.0, t_first - t * 2 / steps):.1f} s new shape"
            found[case].append((label[case], "sdtui fast path", r, t / batch, comp, peak()))
        for case in mine:
            rows.extend(found[case])
            print(*found[case], sep="\n", flush=True)
        table(rows, summaries, card, steps, args.smoke, dtype_name)  # measured so far, to $OUT
        del pipe, session, state

    text = table(rows, summaries, card, steps, args.smoke, dtype_name)
    print(text)
    if not args.smoke:  # RESULTS.md holds real GPU runs only
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text)
    return 0


def table(rows: list, summaries: list[str], card: str, steps: int, smoke: bool, dtype: str) -> str:
    """The markdown table of the rows so far; also written to $OUT/gpu_speed_DTYPE.md, so a run cut
    short by its time limit still brings back what it measured."""
    import diffusers
    import torch

    from sdtui.gpu import GpuSampler

    reading = GpuSampler().sample()
    pane = (
        "no driver"
        if reading.driver_error
        else "; ".join(
            f"GPU{g.index} {g.name} {g.memory_used and g.memory_used / 2**30:.1f}/"
            f"{g.memory_total and g.memory_total / 2**30:.0f} GiB, {g.utilization_percent}% util, "
            f"{g.temperature_c} C, {g.power_w} W"
            for g in reading.gpus
        )
    )
    lines = [
        f"\n## GPU speed — {dt.datetime.now():%Y-%m-%d %H:%M} — {card}{' (SMOKE, CPU)' if smoke else ''}\n",
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}, "
        f"{steps} steps, Euler a, random {dtype} weights, sdtui with the TUI's live previews (every step, "
        f"at most 4/s); compile times from an empty cache. GPU pane after the run: {pane}\n",
        "Fast path as applied: " + "; ".join(summaries) + ".\n",
        "| case | path | it/s | s / image | compile | peak VRAM |",
        "|---|---|---:|---:|---|---:|",
    ]
    base = {}
    for label, path, r, spi, comp, pk in rows:
        base.setdefault(label, r)
        ratio = f" ({r / base[label]:.2f}x)" if not path.startswith("raw diffusers") else ""
        lines.append(f"| {label} | {path} | {r:.2f}{ratio} | {spi:.3f} | {comp} | {pk} |")
    text = "\n".join(lines) + "\n"
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], f"gpu_speed_{dtype}.md").write_text(text)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
