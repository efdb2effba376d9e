"""Flux.1-schnell-shaped and SD3.5-medium-shaped speed, side by side in one run: raw diffusers
(FluxPipeline / StableDiffusion3Pipeline called directly) vs the sdtui engine's job
(sdtui.engine.dit.run_dit_generation: the same pipeline with sdtui's step callback, previews,
cancel checks, PNG + infotext saving).

The models are built from sdtui's bundled configs (full width and depth: Flux.1 schnell's
12 B transformer, T5-XXL, CLIP-L; SD3.5 medium's 2.5 B MMDiT-X, CLIP-L, CLIP-G, T5-XXL) with
random bf16 weights made on the GPU: nothing is fetched, the images are noise, the speed and
memory are the real architectures'. Prints s/image, it/s, peak VRAM and the ratio
sdtui / raw, and appends the table to bench/RESULTS.md ($OUT/dit_speed.md when $OUT is set).

    python bench/dit_speed.py                 # on a CUDA machine (about 40 GB of VRAM)
    python bench/dit_speed.py --smoke         # CPU check of the script: tiny widths, 64x64
    python bench/dit_speed.py --only flux     # one family
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
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPT = "a black house cat typing on a computer, studio light, detailed"
K_SAMPLER = "DPM++ 2M"  # one model call a step, as Euler: the stand-in's overhead alone

# (family, bundled config, variant, steps, cfg, size) as Forge's presets run them
CASES = {
    "flux": ("Flux", "flux1-schnell", "schnell", 4, 1.0, 1024),
    "sd35": ("SD3", "sd35-medium", "medium", 28, 4.5, 1024),
}

# --smoke: the bundled configs shrunk to a few thousand weights (the script's code paths, on a CPU)
TINY_TRANSFORMER = {
    "Flux": dict(
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        pooled_projection_dim=32,  # CLIP-L's pooled output: its hidden size
        axes_dims_rope=[4, 6, 6],
    ),
    "SD3": dict(
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,  # CLIP-L + CLIP-G projections
        dual_attention_layers=[0],
        pos_embed_max_size=32,
        sample_size=32,
    ),
}
TINY_CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
# T5's width is the joint attention width; SD3 pads CLIP-L + CLIP-G (2 x 32) up to it
TINY_T5 = dict(d_model=64, d_ff=64, d_kv=16, num_layers=1, num_heads=2)
TINY_VAE = dict(block_out_channels=[32, 32], layers_per_block=1, norm_num_groups=32)


def random_pipeline(key: str, device: str, dtype, smoke: bool):
    """The family's pipeline with random weights, made in ``dtype`` on ``device``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FluxPipeline,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    from sdtui.engine import dit
    from sdtui.engine.configs import config_dir

    family, name, _variant, *_ = CASES[key]
    cfg = config_dir(name)
    flux = family == "Flux"
    transformer_cls = FluxTransformer2DModel if flux else SD3Transformer2DModel

    def clip(sub: str, projection: bool):
        c = CLIPTextConfig.from_pretrained(cfg / sub)
        if smoke:
            c.update({**TINY_CLIP, "projection_dim": 32})
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(c)

    def t5(sub: str):
        c = T5Config.from_pretrained(cfg / sub)
        if smoke:
            c.update(TINY_T5)
        return T5EncoderModel(c)

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # weights made in bf16 at once: no fp32 copy of 12 B
    try:
        with torch.device(device):
            tcfg = dict(transformer_cls.load_config(cfg / "transformer"))
            vcfg = dict(AutoencoderKL.load_config(cfg / "vae"))
            if smoke:
                tcfg.update(TINY_TRANSFORMER[family])
                vcfg.update(TINY_VAE)
                n = len(vcfg["block_out_channels"])
                vcfg["down_block_types"] = vcfg["down_block_types"][:n]
                vcfg["up_block_types"] = vcfg["up_block_types"][:n]
            transformer = transformer_cls.from_config(tcfg)
            vae = AutoencoderKL.from_config(vcfg)
            if flux:
                parts = dict(
                    text_encoder=clip("text_encoder", False), text_encoder_2=t5("text_encoder_2")
                )
            else:
                parts = dict(
                    text_encoder=clip("text_encoder", True),
                    text_encoder_2=clip("text_encoder_2", True),
                    text_encoder_3=t5("text_encoder_3"),
                )
    finally:
        torch.set_default_dtype(old)
    pipe_cls = FluxPipeline if flux else StableDiffusion3Pipeline
    pipe = pipe_cls(
        transformer=transformer,
        vae=vae,
        scheduler=dit._scheduler(cfg),
        **parts,
        **dit._tokenizers(family, cfg),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def session_for(pipe, key: str, device: str):
    from sdtui.engine.session import ModelSession
    from sdtui.model_family import ModelFamily

    family, name, variant, *_ = CASES[key]
    loaded = SimpleNamespace(
        pipe=pipe,
        family=ModelFamily(family, name, variant=variant),
        name=f"{name}-random",
        path=Path("random"),
        size_bytes=0,
        load_seconds=0.0,
        prediction_type="flow",
        device=device,
        dtype=pipe.transformer.dtype,
    )
    return ModelSession.create(loaded, device)


def _rate(marks: list[float], steps: int, total: float) -> float:
    gaps = sorted(b - a for a, b in zip(marks, marks[1:], strict=False))
    return 1 / gaps[len(gaps) // 2] if gaps else steps / total


def call_args(key: str, steps: int, cfg: float, size: int) -> dict:
    family = CASES[key][0]
    args = dict(num_inference_steps=steps, width=size, height=size, num_images_per_prompt=1)
    if family == "Flux":
        return args | dict(guidance_scale=0.0, max_sequence_length=256)
    return args | dict(guidance_scale=cfg, negative_prompt="", max_sequence_length=256)


def run_raw(pipe, key: str, steps: int, cfg: float, size: int, out: Path):
    import torch

    marks: list[float] = []

    def cb(p, i, t, kw):
        marks.append(time.perf_counter())
        return kw

    t0 = time.perf_counter()
    with torch.inference_mode():
        images = pipe(
            PROMPT,
            generator=[torch.Generator("cpu").manual_seed(1)],
            callback_on_step_end=cb,
            **call_args(key, steps, cfg, size),
        ).images
    images[0].save(out / f"raw-{key}.png")
    total = time.perf_counter() - t0
    return total, _rate(marks, steps, total)


def run_sdtui(session, key: str, steps: int, cfg: float, size: int, out: Path, sampler="Euler"):
    from sdtui.engine.dit import run_dit_generation
    from sdtui.engine.job import JobContext, JobControl
    from sdtui.ipc import protocol as msg
    from sdtui.outputs import OutputLayout
    from sdtui.params import GenerationParams

    marks: list[float] = []

    def emit(event) -> None:
        if isinstance(event, msg.Progress):
            marks.append(time.perf_counter())

    family, name, *_ = CASES[key]
    ctx = JobContext(1, emit, JobControl(), OutputLayout(out), name, None, family)
    p = GenerationParams(
        prompt=PROMPT,
        steps=steps,
        width=size,
        height=size,
        seed=1,
        sampler=sampler,
        schedule_type="Simple",
        cfg_scale=cfg,
        preview_every=1,
        preview_interval=0.25,  # as the TUI asks
    )
    t0 = time.perf_counter()
    done = run_dit_generation(session, p, ctx)
    total = time.perf_counter() - t0
    return total, _rate(marks, steps, total), len(done.paths)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny widths, 64x64, 2 steps")
    ap.add_argument("--only", choices=sorted(CASES), action="append")
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds after one warm-up")
    args = ap.parse_args()
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke for a CPU check of the script")
        return 2
    device = "cuda" if cuda else "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    card = torch.cuda.get_device_name(0) if cuda else platform.processor() or "CPU"
    out = Path(tempfile.mkdtemp(prefix="sdtui-dit-bench-"))
    rows = []
    for key in args.only or list(CASES):
        family, name, variant, steps, cfg, size = CASES[key]
        if args.smoke:
            steps, size = 2, 64
        t0 = time.perf_counter()
        pipe = random_pipeline(key, device, dtype, args.smoke)
        built = time.perf_counter() - t0
        weights = sum(p.numel() for p in pipe.transformer.parameters())
        print(f"{name}: random {weights / 1e9:.2f} B-weight transformer built in {built:.1f} s")
        session = session_for(pipe, key, device)
        results: dict[str, list[tuple[float, float]]] = {"raw": [], "sdtui": [], "k": []}
        for r in range(args.rounds + 1):  # round 0 warms up both (cuDNN/cuBLAS plans)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            raw = run_raw(pipe, key, steps, cfg, size, out)
            ours = run_sdtui(session, key, steps, cfg, size, out)[:2]
            # the k-diffusion stand-in (sdtui.engine.flow_samplers): its thread hand-off per
            # step against diffusers' own Euler scheduler
            k = run_sdtui(session, key, steps, cfg, size, out, sampler=K_SAMPLER)[:2]
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
            if r:
                results["raw"].append(raw)
                results["sdtui"].append(ours)
                results["k"].append(k)
            print(
                f"  round {r}{' (warm-up)' if r == 0 else ''}: raw {raw[0]:.2f} s "
                f"({raw[1]:.2f} it/s), sdtui {ours[0]:.2f} s ({ours[1]:.2f} it/s), "
                f"sdtui {K_SAMPLER} {k[0]:.2f} s, peak {peak:.1f} GiB"
            )
        raw_s = min(t for t, _ in results["raw"])
        our_s = min(t for t, _ in results["sdtui"])
        raw_r = max(r for _, r in results["raw"])
        our_r = max(r for _, r in results["sdtui"])
        k_s = min(t for t, _ in results["k"])
        rows.append(
            (name, f"{size}x{size}", steps, raw_s, our_s, raw_r, our_r, peak, weights, built, k_s)
        )
        del session, pipe
        if cuda:
            torch.cuda.empty_cache()
    text = table(rows, card, dtype, args.smoke)
    print(text)
    if not args.smoke:
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + text)
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], "dit_speed.md").write_text(text, encoding="utf-8")
    return 0


def table(rows: list, card: str, dtype, smoke: bool) -> str:
    import diffusers
    import torch

    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"## dit_speed.py {'--smoke ' if smoke else ''}({when}, {card}, torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, {str(dtype).removeprefix('torch.')})",
        "",
        "| model (random weights) | size | steps | raw s/img | sdtui s/img | sdtui / raw | "
        f"raw it/s | sdtui it/s | sdtui {K_SAMPLER} s/img | / raw | peak VRAM | weights | "
        "built in |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, size, steps, raw_s, our_s, raw_r, our_r, peak, weights, built, k_s in rows:
        lines.append(
            f"| {name} | {size} | {steps} | {raw_s:.2f} | {our_s:.2f} | {our_s / raw_s:.3f} | "
            f"{raw_r:.2f} | {our_r:.2f} | {k_s:.2f} | {k_s / raw_s:.3f} | {peak:.1f} GiB | "
            f"{weights / 1e9:.2f} B | {built:.0f} s |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
