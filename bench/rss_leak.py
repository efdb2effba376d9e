"""Does the engine leak? After a warm-up job: N more jobs, then M model switches (the demo
model's diffusers folder and its single .safetensors file, alternately), all through the real
engine process. Prints the engine's RSS growth as a ratio (target < 5 %) and, on a GPU, the
allocated VRAM before and after.

    python bench/rss_leak.py [--jobs 50] [--switches 10] [--size 64] [--steps 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sdtui.config import Settings  # noqa: E402
from sdtui.ipc import protocol as msg  # noqa: E402
from sdtui.ipc.client import DaemonClient  # noqa: E402
from sdtui.ipc.paths import DaemonPaths  # noqa: E402
from sdtui.params import GenerationParams  # noqa: E402

TARGET = 0.05


def _mb(n: int | None) -> str:
    return "N/A" if n is None else f"{n / 1e6:,.1f} MB"


def _rss(pid: int) -> int:
    time.sleep(0.5)  # let the engine settle after the last event
    return int(psutil.Process(pid).memory_info().rss)


def _job(host: DaemonClient, params: GenerationParams) -> tuple[Any, int | None]:
    """Run one job; (final event, allocated VRAM at its last step)."""
    job = host.submit(params)
    end, seen = host.wait_job(job, timeout=600)
    if not isinstance(end, msg.JobDone):
        raise SystemExit(f"job {job} did not finish: {end}")
    vram = [e.vram_allocated for e in seen if isinstance(e, msg.Progress)]
    return end, (vram[-1] if vram else None)


def _switch(host: DaemonClient, model: Path) -> None:
    host.load_model(str(model))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for e in host.poll(timeout=0.2):
            if isinstance(e, msg.ModelLoaded) and Path(e.path) == model:
                return
            if isinstance(e, msg.Log) and e.level == "error":
                raise SystemExit(f"switching to {model} failed: {e.text}")
    raise SystemExit(f"switching to {model} timed out")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--switches", type=int, default=10)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from sdtui.engine.demo import ensure_demo_model

    demo = ensure_demo_model()
    with tempfile.TemporaryDirectory(prefix="sdtui-rss-") as tmp:
        settings = Settings(models_dir=Path(tmp) / "models", outputs_dir=Path(tmp) / "outputs")
        # a private daemon; the RSS measured is its engine worker's
        paths = DaemonPaths(Path(tmp) / "d", Path(tmp) / "queue.sqlite3")
        host = DaemonClient(settings, paths=paths, who="rss bench", private=True).attach(demo=True)
        try:
            params = GenerationParams(
                prompt="a lighthouse at dusk",
                width=args.size,
                height=args.size,
                steps=args.steps,
                preview_every=0,
                model=str(demo.safetensors),
            )
            t0 = time.perf_counter()
            warm, vram_before = _job(host, params.replace(seed=1))
            [pid] = host.worker_pids
            rss_before = _rss(pid)
            for i in range(args.jobs):
                _job(host, params.replace(seed=100 + i))
            rss_jobs = _rss(pid)
            models = [demo.folder, demo.safetensors]
            for i in range(args.switches):
                _switch(host, models[i % 2])
            if args.switches % 2:
                _switch(host, demo.safetensors)  # end on the model we started with
            last, vram_after = _job(host, params.replace(seed=99))
            rss_after = _rss(pid)
            seconds = time.perf_counter() - t0
        finally:
            host.stop_daemon(cancel_jobs=True)

    growth_jobs = (rss_jobs - rss_before) / rss_before
    growth = (rss_after - rss_before) / rss_before
    print(f"engine RSS after warm-up job:         {_mb(rss_before)}")
    print(f"after {args.jobs} jobs:                       {_mb(rss_jobs)}  ({growth_jobs:+.1%})")
    print(f"after {args.switches} model switches + 1 job:     {_mb(rss_after)}  ({growth:+.1%})")
    print(f"RSS growth ratio: {rss_after / rss_before:.3f} (target < {1 + TARGET:.2f})")
    if vram_before is not None:
        print(f"allocated VRAM: {_mb(vram_before)} before, {_mb(vram_after)} after")
    else:
        print("allocated VRAM: N/A (CPU)")
    print(f"RSS in the last JobDone: {_mb(last.rss)}; total {seconds:.0f} s")
    return 0 if growth < TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
