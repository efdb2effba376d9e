"""Engine overhead: the same pipeline and settings through raw diffusers and through the sdtui
engine process (queueing, previews, infotext, atomic PNG saving, the process boundary), side by
side in one run. Prints the ratio sdtui / raw (target: <= 1.03 on CPU).

    python bench/engine_overhead.py                 # the demo model, 256x256
    python bench/engine_overhead.py --sd15          # SD1.5 architecture, random weights, 256x256

Runs alternate (raw, sdtui, raw, sdtui, ...) and the medians are compared, so drift in the
machine's speed hits both sides alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_sd15_file(folder: Path) -> Path:
    """An SD1.5-architecture single file with seeded random weights (no weights can be
    downloaded here), from the bundled SD1.5 configs."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdtui.engine.configs import config_dir
    from sdtui.engine.convert import stable_diffusion_to_ldm

    path = folder / "sd15-random.safetensors"
    if path.exists():
        return path
    cfg = config_dir("sd15")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(cfg / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(cfg / "vae"))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder"))
    for m in (unet, vae, te):
        for p in m.parameters():
            p.data.normal_(0, 0.02)
    sd = stable_diffusion_to_ldm(unet, vae, te)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sd15", action="store_true", help="SD1.5 architecture with random weights")
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preview-every", type=int, default=1)
    args = ap.parse_args()
    size = args.size or (256 if args.sd15 else 256)
    steps = args.steps or (8 if args.sd15 else 20)

    import diffusers
    import torch

    from sdtui.config import Settings
    from sdtui.engine import protocol as msg
    from sdtui.engine.demo import ensure_demo_model
    from sdtui.engine.host import EngineHost
    from sdtui.engine.models import load_pipeline
    from sdtui.engine.worker import EngineOptions
    from sdtui.params import GenerationParams

    work = Path(tempfile.mkdtemp(prefix="sdtui-bench-"))
    if args.sd15:
        model_path = build_sd15_file(Path(os.environ.get("SDTUI_BENCH_CACHE", tempfile.gettempdir())))
        name = "SD1.5-architecture (random weights)"
    else:
        model_path = ensure_demo_model().safetensors
        name = "sdtui demo model"
    prompt = "a black house cat typing on a computer"

    # -- raw diffusers: the same loaded pipeline, the same scheduler, save a PNG ------------
    loaded = load_pipeline(model_path, device="cpu")
    pipe = loaded.pipe
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)

    def raw_run(i: int) -> float:
        t0 = time.perf_counter()
        g = torch.Generator("cpu").manual_seed(1000 + i)
        image = pipe(prompt, num_inference_steps=steps, guidance_scale=7.0, width=size,
                     height=size, generator=g).images[0]
        image.save(work / f"raw-{i}.png")
        return time.perf_counter() - t0

    # -- sdtui: the engine process, previews on ---------------------------------------------
    settings = Settings(models_dir=work / "models", outputs_dir=work / "outputs")
    host = EngineHost(settings, EngineOptions(preload=False))
    host.start()
    params = GenerationParams(prompt=prompt, steps=steps, width=size, height=size, cfg_scale=7.0,
                              sampler="Euler a", model=str(model_path),
                              preview_every=args.preview_every)

    def sdtui_run(i: int) -> tuple[float, int]:
        t0 = time.perf_counter()
        job = host.submit(params.replace(seed=1000 + i))
        final, seen = host.wait_job(job, timeout=3600)
        dt = time.perf_counter() - t0
        assert isinstance(final, msg.JobDone), final
        return dt, sum(isinstance(e, msg.Preview) for e in seen)

    raw_run(-1)  # warm-up: first call allocates
    sdtui_run(-1)  # warm-up: loads the model in the engine
    raw, ours, previews = [], [], 0
    for i in range(args.rounds):
        raw.append(raw_run(i))
        dt, n = sdtui_run(i)
        ours.append(dt)
        previews += n
    host.stop()

    r, o = statistics.median(raw), statistics.median(ours)
    print(f"machine : {platform.machine()} {os.cpu_count()} cores, {platform.python_version()}, "
          f"torch {torch.__version__}, diffusers {diffusers.__version__}, device cpu")
    print(f"model   : {name}, {size}x{size}, {steps} steps, Euler a, batch 1, "
          f"previews every {args.preview_every} step(s) ({previews // args.rounds} per job)")
    print(f"raw diffusers : median {r:.3f} s  ({', '.join(f'{x:.3f}' for x in raw)})")
    print(f"sdtui engine  : median {o:.3f} s  ({', '.join(f'{x:.3f}' for x in ours)})")
    print(f"ratio sdtui / raw = {o / r:.3f}  (target <= 1.03)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
