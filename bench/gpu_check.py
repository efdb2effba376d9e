"""GPU check: one prepared script for a lent CUDA machine (under 6 minutes, nothing from the
internet). Builds an SD1.5-architecture checkpoint with random fp16 weights from the bundled
config, loads it through the engine (memory mode auto), runs batch 6 at 512x512 and batch 1 at
1024x1024 for 30 steps, provokes a real out-of-memory error (batch 16 at 2048x2048 under a
capped allocator) and shows the ladder's recovery, then one more job to show the engine serves
on at full speed. Records it/s, peak VRAM and the GPU pane's reading (sdtui.gpu.GpuSampler) in a
markdown table appended to bench/RESULTS.md (and $OUT/gpu_check.md when $OUT is set).

    python bench/gpu_check.py            # on a CUDA machine
    python bench/gpu_check.py --smoke    # anywhere: the demo model, small sizes, and
                                         # injected faults instead of a real OOM
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).with_name("RESULTS.md")


@dataclass
class Run:
    name: str
    width: int
    height: int
    batch: int
    steps: int
    faults: str | None = None  # smoke mode: what stands in for the real OOM
    cap_gib: float | None = None  # allocator cap that provokes the real OOM
    outcome: str = ""
    its: float | None = None
    seconds: float | None = None
    peak_allocated: int | None = None
    peak_reserved: int | None = None
    pane_used: int | None = None
    pane_util: int | None = None
    ladder: list[str] = field(default_factory=list)


def build_sd15(folder: Path, device: str) -> Path:
    """An SD1.5-architecture single file (LDM layout, like a download) with random fp16
    weights, built on the GPU (fast init) from the bundled sd15 configs."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdtui.engine.configs import config_dir
    from sdtui.engine.convert import stable_diffusion_to_ldm

    cfg = config_dir("sd15")
    path = folder / "sd15-random-fp16.safetensors"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder"))
    for module in (unet, vae, text_encoder):
        module.half()
    state = stable_diffusion_to_ldm(unet, vae, text_encoder)
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, path)
    del unet, vae, text_encoder, state
    if device == "cuda":
        torch.cuda.empty_cache()
    return path


class PaneWatch:
    """Samples the GPU pane's source while a job runs: the highest memory and utilisation."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.used: int | None = None
        self.util: int | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> PaneWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while True:
            snap = self.sampler.sample()
            self.error = snap.driver_error
            if snap.gpus:
                g = snap.gpus[0]
                if g.memory_used is not None:
                    self.used = max(self.used or 0, g.memory_used)
                if g.utilization_percent is not None:
                    self.util = max(self.util or 0, g.utilization_percent)
            if self._stop.wait(0.25):
                return


def run_job(
    engine: Any, events: list[Any], run: Run, model: str, job_id: int, sampler: Any
) -> None:
    import torch

    from sdtui.ipc import protocol as msg
    from sdtui.params import GenerationParams

    params = GenerationParams(
        prompt="a lighthouse on a cliff at dusk, oil painting",
        width=run.width,
        height=run.height,
        batch_size=run.batch,
        steps=run.steps,
        seed=1234,
        sampler="Euler a",
        preview_every=0,
        model=model,
    )
    if run.faults:
        engine.faults.arm(run.faults)
    if run.cap_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, run.cap_gib * 2**30 / total))
    first = len(events)
    t0 = time.perf_counter()
    try:
        with PaneWatch(sampler) as pane:
            engine._run(msg.SubmitGenerate(job_id, params))
    finally:
        if run.cap_gib and torch.cuda.is_available():
            torch.cuda.set_per_process_memory_fraction(1.0)
        engine.faults.disarm()
    run.seconds = time.perf_counter() - t0
    run.pane_used, run.pane_util = pane.used, pane.util
    mine = events[first:]
    its = [e.its for e in mine if isinstance(e, msg.Progress) and e.its > 0]
    run.its = statistics.median(its[len(its) // 3 :]) if its else None  # past the warm-up steps
    run.ladder = [
        e.text
        for e in mine
        if isinstance(e, msg.Log) and ("memory" in e.text or "NaN" in e.text) and e.job_id == job_id
    ]
    end = next(e for e in reversed(mine) if isinstance(e, msg.JobDone | msg.JobFailed))
    if isinstance(end, msg.JobDone):
        run.outcome = f"done, {len(end.paths)} images"
        run.peak_allocated, run.peak_reserved = end.peak_vram_allocated, end.peak_vram_reserved
    else:
        run.outcome = f"failed: {end.message}"
    if torch.cuda.is_available() and run.peak_allocated is None:
        run.peak_allocated = torch.cuda.max_memory_allocated()
        run.peak_reserved = torch.cuda.max_memory_reserved()


def _gib(n: int | None) -> str:
    return "N/A" if n is None else f"{n / 2**30:.2f} GiB"


def table(card: str, runs: list[Run], notes: list[str], smoke: bool) -> str:
    import diffusers
    import torch

    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    title = "GPU check (smoke, CPU)" if smoke else "GPU check"
    lines = [
        f"## {title}: {card}, {when}",
        "",
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, Python "
        f"{platform.python_version()}; " + "; ".join(notes),
        "",
        "| run | size | batch | steps | it/s | seconds | peak VRAM allocated | peak VRAM reserved "
        "| GPU pane memory used (max) | GPU pane util (max) | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        its = "N/A" if r.its is None else f"{r.its:.2f}"
        util = "N/A" if r.pane_util is None else f"{r.pane_util} %"
        lines.append(
            f"| {r.name} | {r.width}x{r.height} | {r.batch} | {r.steps} | {its} | {r.seconds:.1f} "
            f"| {_gib(r.peak_allocated)} | {_gib(r.peak_reserved)} | {_gib(r.pane_used)} | {util} "
            f"| {r.outcome} |"
        )
    for r in runs:
        if r.ladder:
            lines += ["", f"Memory log of '{r.name}':", ""]
            lines += [f"- {text}" for text in r.ladder]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--smoke", action="store_true", help="CPU: demo model, small sizes, injected faults"
    )
    ap.add_argument("--results", type=Path, default=RESULTS, help="markdown file to append to")
    args = ap.parse_args(argv)

    import torch

    from sdtui.config import Settings
    from sdtui.engine.worker import Engine, EngineOptions
    from sdtui.gpu import GpuSampler
    from sdtui.ipc import protocol as msg

    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --smoke for the CPU version", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="sdtui-gpu-check-"))
    settings = Settings(
        models_dir=work / "models",
        outputs_dir=work / "outputs",
        device="cpu" if args.smoke else "cuda",
        memory_mode="auto",
    )
    events: list[Any] = []
    # smoke: the fault hooks are installed at load, and armed per run
    options = EngineOptions(preload=False, fault_injection="unet_oom:0" if args.smoke else None)
    engine = Engine(settings, options, events.append)
    engine._boot()
    notes: list[str] = []
    t0 = time.perf_counter()
    if args.smoke:
        from sdtui.engine.demo import ensure_demo_model

        model = str(ensure_demo_model().safetensors)
        card = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        runs = [
            Run("warm-up", 64, 64, 1, 3),
            Run("batch", 64, 64, 6, 30),
            Run("large", 128, 128, 1, 30),
            Run("OOM + recovery (injected)", 128, 128, 4, 3, faults="unet_oom:4,vae_oom:2"),
            Run("next job", 64, 64, 6, 30),
        ]
    else:
        card = torch.cuda.get_device_name(0)
        model = str(build_sd15(work, "cuda"))
        notes.append(f"random fp16 SD1.5 weights built in {time.perf_counter() - t0:.0f} s")
        runs = [
            Run("warm-up", 512, 512, 1, 5),
            Run("batch", 512, 512, 6, 30),
            Run("large", 1024, 1024, 1, 30),
            Run("OOM + recovery (16 GiB cap)", 2048, 2048, 16, 3, cap_gib=16),
            Run("next job", 512, 512, 6, 30),
        ]
    engine.ensure_model(model)
    loaded = [e.text for e in events if isinstance(e, msg.Log) and e.text.startswith("loaded ")]
    notes += loaded[-1:]
    with GpuSampler() as sampler:
        for job_id, run in enumerate(runs, 1):
            print(
                f"-- {run.name}: {run.width}x{run.height} batch {run.batch}, {run.steps} steps",
                flush=True,
            )
            run_job(engine, events, run, model, job_id, sampler)
            print(f"   {run.outcome}; {run.its or 0:.2f} it/s; {run.seconds:.1f} s", flush=True)
            for text in run.ladder:
                print(f"   | {text}", flush=True)
        pane = sampler.sample()
        if pane.driver_error:
            notes.append(f"GPU pane: {pane.driver_error}")
    notes.append(f"total {time.perf_counter() - t0:.0f} s")
    text = table(card, runs, notes, args.smoke)
    print(text)
    with args.results.open("a", encoding="utf-8") as f:
        f.write("\n" + text)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_check.md").write_text(text, encoding="utf-8")
    recovered = runs[3].outcome.startswith("done") and runs[4].outcome.startswith("done")
    return 0 if recovered else 1


if __name__ == "__main__":
    raise SystemExit(main())
