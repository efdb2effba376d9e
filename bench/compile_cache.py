"""The fast path's compile time at a cold start vs a later start that finds torch.compile's
cache (the engine keeps it in sdtui's cache folder, so it survives reboots): two fresh engine
processes, one after the other, sharing one new cache folder. Each loads the model, applies the
fast path as the engine does, and times the load-time warm-up compile.

    python bench/compile_cache.py          # CPU: the demo model at 64x64 (inductor's C++ backend)
    python bench/compile_cache.py --cuda   # CUDA: SD1.5 architecture, random fp16, 512x512
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def child(cuda: bool) -> None:
    t0 = time.perf_counter()
    import torch

    from sdtui.engine.fastpath import (
        FastPathState,
        apply_fast_path,
        compile_blocks,
        fuse_qkv,
        warm_up,
    )

    if cuda:
        from gpu_speed import random_pipeline

        pipe, size = random_pipeline("sd15", "cuda", torch.float16, False), 512
        state = apply_fast_path(pipe, "cuda", "auto", lambda _: None)
    else:
        from sdtui.engine.demo import ensure_demo_model
        from sdtui.engine.models import load_pipeline

        pipe, size = load_pipeline(ensure_demo_model().folder, device="cpu").pipe, 64
        fuse_qkv(pipe.unet)  # the CUDA-only steps that matter to compiling, applied by hand
        state = FastPathState(mode="auto")
        compile_blocks(pipe.unet, state)
    warm_up(pipe, state, size, size, lambda _: None)
    print(
        json.dumps(
            {
                "compile": state.compile_seconds,
                "failed": state.failed,
                "process": time.perf_counter() - t0,
                "torch": torch.__version__,
                "card": torch.cuda.get_device_name(0) if cuda else platform.processor() or "CPU",
            }
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.cuda)
        return 0
    cache = tempfile.mkdtemp(prefix="sdtui-inductor-")
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
    runs = []
    for _ in ("cold", "warm"):
        cmd = [sys.executable, __file__, "--child"] + (["--cuda"] if args.cuda else [])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if out.returncode or not lines:
            print(out.stdout[-2000:], out.stderr[-4000:], sep="\n")
            return 1
        runs.append(json.loads(lines[-1]))
        print(
            f"{('cold', 'warm')[len(runs) - 1]} start: {lines[-1]}", flush=True
        )  # kept if cut short
    cold, warm = runs
    if cold["failed"] or not cold["compile"] or not warm["compile"]:
        print(f"compiling failed: {cold['failed'] or warm['failed']}")
        return 1
    print(
        f"{cold['card']}, torch {cold['torch']}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, {'SD1.5 512x512 fp16' if args.cuda else 'demo model 64x64 fp32'}"
    )
    print(
        f"compile at a cold start:        {cold['compile']:6.1f} s   (whole process {cold['process']:.1f} s)"
    )
    print(
        f"compile with the cache warm:    {warm['compile']:6.1f} s   (whole process {warm['process']:.1f} s)"
    )
    print(f"warm / cold: {warm['compile'] / cold['compile']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
