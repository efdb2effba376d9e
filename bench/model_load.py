"""Model loading: a single-file checkpoint through sdtui's loader (safe read, family detection,
offline configs, conversion to diffusers) against the raw safetensors read of the same file.
Both sides touch every weight so that lazy mmap reads are counted. Target: <= 1.2x.

    python bench/model_load.py                # the demo model
    python bench/model_load.py --sd15         # SD1.5 architecture with random weights (4.3 GB fp32)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd15", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    from sdtui.engine.models import load_pipeline

    if args.sd15:
        from engine_overhead import build_sd15_file

        path = build_sd15_file(Path(os.environ.get("SDTUI_BENCH_CACHE", tempfile.gettempdir())))
    else:
        from sdtui.engine.demo import ensure_demo_model

        path = ensure_demo_model().safetensors

    def touch(tensors) -> float:
        return float(sum(t.float().sum().item() for t in tensors))

    def raw() -> float:
        t0 = time.perf_counter()
        sd = load_file(str(path))
        touch(sd.values())
        dt = time.perf_counter() - t0
        del sd
        gc.collect()
        return dt

    def ours() -> float:
        t0 = time.perf_counter()
        loaded = load_pipeline(path, device="cpu")
        pipe = loaded.pipe
        touch(p for m in (pipe.unet, pipe.vae, pipe.text_encoder) for p in m.parameters())
        dt = time.perf_counter() - t0
        del loaded, pipe
        gc.collect()
        return dt

    raw()  # warm the page cache: both sides then read from RAM, as a second load would
    ours()
    r, o = [], []
    for _ in range(args.rounds):
        r.append(raw())
        o.append(ours())
    size = path.stat().st_size / 1e9
    print(f"machine : {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, cpu")
    print(f"file    : {path.name} ({size:.2f} GB), warm page cache")
    print(
        f"raw safetensors read : median {statistics.median(r):.3f} s  ({', '.join(f'{x:.3f}' for x in r)})"
    )
    print(
        f"sdtui load_pipeline  : median {statistics.median(o):.3f} s  ({', '.join(f'{x:.3f}' for x in o)})"
    )
    print(f"ratio sdtui / raw = {statistics.median(o) / statistics.median(r):.3f}  (target <= 1.2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
