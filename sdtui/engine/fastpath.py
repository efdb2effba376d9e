"""The CUDA fast path: channels_last, TF32 for the fp32 parts, fused QKV projections in the
UNet's self-attention, and torch.compile of the UNet's repeated blocks (regional compilation:
each block class compiles once, so the first job pays seconds, not minutes), with a clean
fallback to eager when compilation fails.

Fused QKV is our own, not diffusers' ``fuse_qkv_projections``: that keeps to_q/to_k/to_v beside
the new to_qkv/to_kv (a second copy of those weights: 1.3 GB on SDXL in fp16, 0.11 GB on SD1.5)
and reads only the fused ones, so a LoRA merged into to_q would silently do nothing. Here
to_q/to_k/to_v become row views of the one fused weight (:class:`FusedPart`): LoRA merges, the
memory ladder's sliced attention and device moves all keep working on the same storage. Only
self-attention is fused: cross-attention's K/V read the 77-token text, a negligible cost.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

FAST_PATH_MODES = ("auto", "nocompile", "off")
# Block classes compiled one by one; the same code runs in every instance.
COMPILED_BLOCKS = ("BasicTransformerBlock", "ResnetBlock2D")
# UNet batches warm-up runs (images x 2 for CFG): the second makes the batch size dynamic;
# batch 1 (dynamo specializes size 1) is a one-image job's cond or uncond run apart, as A1111
# runs them when their token counts differ, or CFG 1
WARM_UP_BATCHES = (2, 4, 1, 1)
WARM_UP_TOKENS = (77, 77, 77, 154)  # and the second batch-1 run: a long prompt's cond


@dataclass
class FastPathState:
    mode: str = "off"
    applied: list[str] = field(default_factory=list)
    compiled: list[Any] = field(default_factory=list)  # modules with a compiled forward
    compile_seconds: float | None = None
    failed: str | None = None

    @property
    def compiling(self) -> bool:
        return bool(self.compiled)

    def summary(self) -> str:
        if not self.applied:
            return "fast path off" + (f" ({self.failed})" if self.failed else "")
        text = "fast path: " + ", ".join(self.applied)
        if self.compile_seconds is not None:
            text += f"; compiling took {self.compile_seconds:.1f} s"
        if self.failed:
            text += f" ({self.failed})"
        return text


def apply_fast_path(pipe: Any, device: str, mode: str, log: Callable[[str], None]) -> FastPathState:
    """Make ``pipe`` fast on CUDA. Does nothing on the CPU or with mode "off"."""
    state = FastPathState(mode=mode)
    if mode == "off" or device != "cuda":
        state.failed = "not on CUDA" if device != "cuda" and mode != "off" else None
        return state
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    state.applied.append(f"{str(pipe.unet.dtype).removeprefix('torch.')} weights")
    state.applied.append("SDPA attention")
    if os.environ.get("SDTUI_CHANNELS_LAST", "1") != "0":  # 0: to measure it against its absence
        for part in (pipe.unet, pipe.vae):
            part.to(memory_format=torch.channels_last)
        state.applied.append("channels_last")
    fused = fuse_qkv(pipe.unet)
    if fused:
        state.applied.append(f"fused QKV in {fused} attention layers")
    if mode == "auto":
        compile_blocks(pipe.unet, state, backend=compile_backend())
    return state


def compile_backend() -> str:
    """inductor, unless ``SDTUI_COMPILE_BACKEND`` names another (``eager`` / ``aot_eager`` to
    tell a compiler bug from a tracing one, as the PyTorch troubleshooting guide does)."""
    return os.environ.get("SDTUI_COMPILE_BACKEND") or "inductor"


# -- fused QKV -------------------------------------------------------------------------------


class FusedPart(torch.nn.Module):
    """to_q, to_k or to_v after fusion: rows [start, start + rows) of the fused layer.

    It owns no parameter (the fused layer does, so ``.to()`` moves one tensor and memory is
    counted once) and hands out a fresh view each time, so an in-place write through
    ``part.weight`` (a LoRA merge, its restore) lands in the fused weight."""

    def __init__(self, fused: torch.nn.Linear, start: int, rows: int) -> None:
        super().__init__()
        # a plain attribute, not a submodule: the fused layer is registered on the Attention
        object.__setattr__(self, "fused", fused)
        self.start, self.rows = start, rows
        self.in_features, self.out_features = fused.in_features, rows

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.fused.weight[self.start : self.start + self.rows]

    @property
    def bias(self) -> torch.Tensor | None:  # type: ignore[override]
        bias = self.fused.bias
        return None if bias is None else bias[self.start : self.start + self.rows]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"rows {self.start}..{self.start + self.rows} of to_qkv"


@functools.cache
def _fused_processor() -> Any:
    """One class for the whole process: torch.compile guards on the processor's class, so a
    class made per model load would recompile every block at each load and fill dynamo's
    cache with dead entries until it stops compiling."""
    from diffusers.models.attention_processor import AttnProcessor2_0, FusedAttnProcessor2_0

    class FusedSelfAttnProcessor(FusedAttnProcessor2_0):
        """One to_qkv matmul for self-attention; a call with encoder states (a block set to
        only_cross_attention) goes through the to_q/to_k/to_v views instead."""

        plain = AttnProcessor2_0()

        def __call__(
            self,
            attn: Any,
            hidden_states: Any,
            encoder_hidden_states: Any = None,
            *args: Any,
            **kw: Any,
        ) -> Any:
            if encoder_hidden_states is not None:
                return self.plain(attn, hidden_states, encoder_hidden_states, *args, **kw)
            return super().__call__(attn, hidden_states, None, *args, **kw)

    return FusedSelfAttnProcessor


@torch.no_grad()
def fuse_qkv(model: torch.nn.Module) -> int:
    """Fuse to_q/to_k/to_v of every plain SDPA self-attention layer into one ``to_qkv``;
    returns how many were fused. Layers already fused, with another processor, or with
    mismatched projections are left as they are."""
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    processor = _fused_processor()()
    count = 0
    for attn in model.modules():
        if not isinstance(attn, Attention) or attn.is_cross_attention:
            continue
        if type(attn.processor) is not AttnProcessor2_0:
            continue
        parts = [attn.to_q, attn.to_k, attn.to_v]
        if not all(type(p) is torch.nn.Linear for p in parts):
            continue
        if len({p.in_features for p in parts}) != 1 or len({p.bias is None for p in parts}) != 1:
            continue
        grad = parts[0].weight.requires_grad
        fused = torch.nn.Linear(
            parts[0].in_features,
            sum(p.out_features for p in parts),
            bias=parts[0].bias is not None,
            device="meta",
        )
        fused.weight = torch.nn.Parameter(torch.cat([p.weight for p in parts]), requires_grad=grad)
        if fused.bias is not None:
            fused.bias = torch.nn.Parameter(torch.cat([p.bias for p in parts]), requires_grad=grad)
        attn.to_qkv = fused
        start = 0
        for name, part in zip(("to_q", "to_k", "to_v"), parts, strict=True):
            setattr(attn, name, FusedPart(fused, start, part.out_features))
            start += part.out_features
        attn.fused_projections = True
        attn.set_processor(processor)
        count += 1
    return count


def compile_blocks(model: torch.nn.Module, state: FastPathState, backend: Any = "inductor") -> None:
    import torch._dynamo

    # one block class is called at several sizes: allow the cache to hold them all
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    if backend == "inductor":
        import torch._inductor.config as inductor

        # 1x1 convolutions (the resnet blocks' channel-changing shortcuts; proj_in/out sit in
        # Transformer2DModel, outside the compiled regions) are matmuls in channels_last; as
        # matmuls inductor fuses what surrounds them (PyTorch's "Diffusion, Fast" setting).
        # Not taken: max-autotune and coordinate-descent tuning, which multiply compile time.
        inductor.conv_1x1_as_mm = True
    for sub in model.modules():
        if type(sub).__name__ in COMPILED_BLOCKS:
            # automatic dynamic shapes: a new size recompiles once, then never again
            sub.compile(backend=backend, fullgraph=False, dynamic=None)
            state.compiled.append(sub)
    if state.compiled:
        state.applied.append(f"torch.compile of {len(state.compiled)} UNet blocks")


def compile_work() -> tuple[int, float]:
    """(graphs compiled, seconds spent compiling) in this process so far, from dynamo's own
    counters; (0, 0.0) where this torch version keeps them elsewhere."""
    try:
        from torch._dynamo import utils

        graphs = int(utils.counters["stats"]["unique_graphs"])
        seconds = float(sum(utils.compilation_time_metrics.get("_compile.compile_inner", ())))
    except Exception:  # noqa: BLE001 - private counters: a missing one only costs the log line
        return 0, 0.0
    return graphs, seconds


def recompile_note(state: FastPathState, before: tuple[int, float]) -> str | None:
    """A log line when a job compiled the UNet anew (a batch or image size not seen yet), so a
    slow first job at a new size is explained; None when it reused what was compiled."""
    if not state.compiling:
        return None
    graphs, seconds = compile_work()
    if graphs <= before[0]:
        return None
    return (
        f"fast path: compiled the UNet for a new batch or image size in {seconds - before[1]:.1f} s; "
        "later jobs reuse it"
    )


def undo_compile(state: FastPathState, reason: str) -> None:
    """Back to eager after a compile failure; the weights are untouched."""
    import torch._dynamo

    for sub in state.compiled:
        sub._compiled_call_impl = None
    state.compiled.clear()
    state.applied = [a for a in state.applied if not a.startswith("torch.compile")]
    state.failed = reason
    torch._dynamo.reset()


def is_compile_error(e: BaseException) -> bool:
    """An error raised by dynamo/inductor rather than by the model itself."""
    mod = type(e).__module__ or ""
    return (
        mod.startswith(("torch._dynamo", "torch._inductor"))
        or "BackendCompilerFailed" in type(e).__name__
    )


def warm_up(
    pipe: Any, state: FastPathState, width: int, height: int, log: Callable[[str], None]
) -> None:
    """Compile now, at load time, so the first job runs at full speed: one UNet call at the
    usual size as a batch-1 job makes it (2 with CFG), then one at batch 4, which makes dynamo
    recompile with the batch dynamic, so batch 6 (A1111's workflow) never stalls on a compile.
    A compiler failure falls back to eager and says why; anything else (out of memory at this
    size, say) only skips the warm-up: the first job compiles instead."""
    if not state.compiling:
        return
    unet = pipe.unet
    t0 = time.perf_counter()
    for batch, tokens in zip(WARM_UP_BATCHES, WARM_UP_TOKENS, strict=True):
        try:
            with torch.inference_mode():  # jobs' tensors are inference tensors: dynamo guards on it
                unet(**_warm_up_inputs(pipe, width, height, batch, tokens))
            if unet.device.type == "cuda":
                torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - sorted below: compiler or not
            if is_compile_error(e):
                undo_compile(state, f"torch.compile failed: {type(e).__name__}; running without it")
                log(state.summary())
                return
            if unet.device.type == "cuda":
                torch.cuda.empty_cache()
            log(
                f"{state.summary()}; warm-up skipped ({type(e).__name__} at {width}x{height} "
                f"batch {max(1, batch // 2)}): the first job compiles instead"
            )
            return
    state.compile_seconds = time.perf_counter() - t0
    log(state.summary())


def _warm_up_inputs(
    pipe: Any, width: int, height: int, batch: int, tokens: int = 77
) -> dict[str, Any]:
    """One UNet call's arguments as a job at this size with CFG makes them (``batch`` is the
    UNet's batch: twice the images)."""
    import torch._dynamo

    unet = pipe.unet
    scale = getattr(pipe, "vae_scale_factor", 8)
    latents = torch.randn(
        batch,
        unet.config.in_channels,
        height // scale,
        width // scale,
        device=unet.device,
        dtype=unet.dtype,
    )
    ctx_dim = unet.config.cross_attention_dim
    text = torch.randn(batch, tokens, ctx_dim, device=unet.device, dtype=unet.dtype)
    # prompts past 75 tokens make 154, 231, ... : compiled for any length from the start,
    # so crossing 75 tokens never stalls a job on a recompile
    torch._dynamo.maybe_mark_dynamic(text, 1)
    kwargs: dict[str, Any] = {}
    if getattr(unet.config, "addition_embed_type", None) == "text_time":  # SDXL
        pooled = getattr(getattr(pipe, "text_encoder_2", None), "config", None)
        pooled_dim = getattr(pooled, "projection_dim", 1280)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.randn(batch, pooled_dim, device=unet.device, dtype=unet.dtype),
            "time_ids": torch.tensor(
                [[height, width, 0, 0, height, width]] * batch, device=unet.device, dtype=unet.dtype
            ),
        }
    return {
        "sample": latents,
        "timestep": torch.tensor(999, device=unet.device),
        "encoder_hidden_states": text,
        **kwargs,
    }
