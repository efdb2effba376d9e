"""The CUDA fast path's CPU-checkable parts: nothing changes off CUDA; fused QKV gives the same
output with the same memory and still takes LoRAs and sliced attention; compiled blocks (traced
by dynamo with a counting backend, since inductor's kernels are what the GPU run measures)
compile once per kind of size, are reused across jobs, and keep previews and interrupts; a
compiler failure falls back to eager with the same output and a plain log line. (Compile speed
and the speed-up itself are measured by bench/gpu_speed.py on a GPU.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import demo_session, run_job
from PIL import Image

from sdtui.engine.fastpath import (
    FastPathState,
    FusedPart,
    apply_fast_path,
    compile_blocks,
    compile_work,
    fuse_qkv,
    is_compile_error,
    recompile_note,
    undo_compile,
    warm_up,
)
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams


@pytest.fixture(scope="module")
def pipe(demo_model):
    from sdtui.engine.models import load_pipeline

    return load_pipeline(demo_model.folder, device="cpu").pipe


def _fresh_pipe(demo_model):
    from sdtui.engine.models import load_pipeline

    return load_pipeline(demo_model.folder, device="cpu").pipe


def _unet_out(pipe) -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    text = torch.randn(2, 77, pipe.unet.config.cross_attention_dim)
    with torch.inference_mode():
        return pipe.unet(x, torch.tensor(500.0), encoder_hidden_states=text).sample


def test_off_cuda_the_fast_path_changes_nothing(pipe):
    logs: list[str] = []
    state = apply_fast_path(pipe, "cpu", "auto", logs.append)
    assert state.applied == [] and not state.compiling and state.failed == "not on CUDA"
    assert apply_fast_path(pipe, "cuda", "off", logs.append).applied == []


def test_a_compiler_failure_falls_back_to_eager_with_the_same_output(pipe):
    before = _unet_out(pipe)

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    state = FastPathState(mode="auto")
    compile_blocks(pipe.unet, state, backend=broken_backend)
    assert state.compiling and any("torch.compile" in a for a in state.applied)
    logs: list[str] = []
    warm_up(pipe, state, 64, 64, logs.append)
    assert not state.compiling and "torch.compile failed" in (state.failed or "")
    assert logs and "running without it" in logs[0]
    torch.testing.assert_close(_unet_out(pipe), before)


def test_compile_errors_are_told_apart_from_model_errors():
    from torch._dynamo.exc import BackendCompilerFailed

    err = BackendCompilerFailed.__new__(BackendCompilerFailed)
    assert is_compile_error(err)
    assert not is_compile_error(RuntimeError("shape mismatch"))


# -- fused QKV ---------------------------------------------------------------------------------


def test_fused_qkv_gives_the_same_output_with_the_same_memory(demo_model):
    pipe = _fresh_pipe(demo_model)
    before = _unet_out(pipe)
    params_before = sum(p.numel() for p in pipe.unet.parameters())

    assert fuse_qkv(pipe.unet) == 4  # the demo UNet's four self-attention layers
    assert fuse_qkv(pipe.unet) == 0  # already fused: left alone
    fused_layers = [m.to_qkv for m in pipe.unet.modules() if hasattr(m, "to_qkv")]
    calls: list[int] = []
    for layer in fused_layers:
        layer.register_forward_hook(lambda *_: calls.append(1))
    torch.testing.assert_close(_unet_out(pipe), before, rtol=1e-5, atol=1e-5)
    assert len(calls) == 4, "self-attention must go through the one fused matmul"
    # the separate to_q/to_k/to_v weights are gone: the weights are held once
    assert sum(p.numel() for p in pipe.unet.parameters()) == params_before

    # to_q is a view of the fused weight: writing through it changes the model
    part = next(m for m in pipe.unet.modules() if isinstance(m, FusedPart))
    assert (
        part.weight.data.untyped_storage().data_ptr()
        == part.fused.weight.untyped_storage().data_ptr()
    )

    # the memory ladder's sliced attention calls to_q/to_k/to_v: same output, and back after
    saved = dict(pipe.unet.attn_processors)
    pipe.unet.set_attention_slice("auto")
    torch.testing.assert_close(_unet_out(pipe), before, rtol=1e-5, atol=1e-5)
    pipe.unet.set_attn_processor(saved)
    calls.clear()
    _unet_out(pipe)
    assert len(calls) == 4

    # a device/dtype move carries the fused weight and its views along
    pipe.unet.to(torch.float64)
    assert part.weight.dtype == torch.float64
    pipe.unet.to(torch.float32)
    torch.testing.assert_close(_unet_out(pipe), before, rtol=1e-5, atol=1e-5)


def test_the_cuda_fast_path_fuses_qkv_and_says_so(demo_model):
    # the weights stay on the CPU here: only the fast path's own steps are checked
    pipe = _fresh_pipe(demo_model)
    state = apply_fast_path(pipe, "cuda", "nocompile", lambda _: None)
    assert "fused QKV in 4 attention layers" in state.summary()
    assert "channels_last" in state.applied and not state.compiling


def test_channels_last_can_be_left_out(demo_model, monkeypatch):
    monkeypatch.setenv("SDTUI_CHANNELS_LAST", "0")
    pipe = _fresh_pipe(demo_model)
    state = apply_fast_path(pipe, "cuda", "nocompile", lambda _: None)
    assert (
        "channels_last" not in state.applied
        and "fused QKV in 4 attention layers" in state.summary()
    )
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous() and not conv.is_contiguous(memory_format=torch.channels_last)


# -- compiled blocks in real jobs -------------------------------------------------------------

TINY = dict(prompt="a lighthouse", width=64, height=64, steps=3, seed=7, preview_every=1)


class CountingBackend:
    """A torch.compile backend that runs dynamo's graphs as they are and counts them: every
    (re)compilation of a block passes through here."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_compiled_blocks_compile_once_and_keep_previews_and_interrupts(demo_model, tmp_path):
    import torch._dynamo

    torch._dynamo.reset()
    eager = demo_session(demo_model.safetensors)
    fast = demo_session(demo_model.safetensors)
    fuse_qkv(fast.txt2img.unet)
    backend = CountingBackend()
    state = FastPathState(mode="auto")
    compile_blocks(fast.txt2img.unet, state, backend=backend)
    logs: list[str] = []
    warm_up(fast.txt2img, state, 64, 64, logs.append)
    assert state.compiling and backend.graphs > 0 and "compiling took" in logs[0]

    def job(session, out: Path, **kw):
        done, events = run_job(session, GenerationParams(**{**TINY, **kw}), out)
        return done, [e for e in events if isinstance(e, msg.Preview)]

    # the first job at the warm-up's size and batch runs on what warm-up compiled
    want, eager_previews = job(eager, tmp_path / "eager")
    mark = compile_work()
    done, previews = job(fast, tmp_path / "fast1")
    assert recompile_note(state, mark) is None, (
        "warm-up must leave nothing to compile for the first job"
    )
    assert [p.step for p in previews] == [p.step for p in eager_previews] == [1, 2]
    shown, expected = (
        np.asarray(Image.open(io.BytesIO(p.png)), dtype=np.int16)
        for p in (previews[-1], eager_previews[-1])
    )
    assert np.abs(shown - expected).max() <= 1, "previews keep coming from the compiled UNet"
    assert np.abs(_pixels(want.paths[0]) - _pixels(done.paths[0])).max() <= 1, (
        "fused + compiled must draw the same image"
    )

    # a prompt past 75 tokens (154 in the UNet) was compiled for at warm-up
    job(fast, tmp_path / "long", prompt="a lighthouse on a cliff at dusk, " * 12)
    assert recompile_note(state, mark) is None, "a long prompt must not recompile"

    # batch sizes were made dynamic at warm-up: batch 2 and 3 (the UNet's 4 and 6) compile nothing
    job(fast, tmp_path / "batch", batch_size=2)
    job(fast, tmp_path / "batch3", batch_size=3)
    assert recompile_note(state, mark) is None, "a new batch size must not recompile"

    # nor does a new image size: the UNet's levels already ran the blocks at several sizes
    job(fast, tmp_path / "wide", width=96)
    job(fast, tmp_path / "bigger", width=128, height=96)
    job(fast, tmp_path / "tall", width=64, height=128, batch_size=2)
    assert recompile_note(state, mark) is None, "a new image size must not recompile"
    # when something does compile during a job, the log says so and how long it took
    torch.compile(torch.nn.Linear(2, 2), backend=backend)(torch.randn(1, 2))
    note = recompile_note(state, mark)
    assert note and "compiled the UNet for a new batch or image size in" in note

    # interrupt: cancel after the first image of three; the finished one is kept
    from sdtui.engine.generate import JobControl

    control = JobControl()
    events: list = []

    def stop_after_first(event):
        events.append(event)
        if isinstance(event, msg.ImageSaved):
            control.cancel.set()

    from sdtui.engine.generate import JobContext, run_generation
    from sdtui.outputs import OutputLayout

    ctx = JobContext(
        1, stop_after_first, control, OutputLayout(tmp_path / "cancel"), "sdtui-demo", None, "SD1"
    )
    cancelled = run_generation(fast.loaded, fast, GenerationParams(**TINY, batch_count=3), ctx)
    assert cancelled.cancelled and len(cancelled.paths) == 1 and Path(cancelled.paths[0]).exists()
    assert state.compiling, "an interrupt must not turn the compiled path off"
    torch._dynamo.reset()


def test_the_real_inductor_compile_sees_weight_merges(demo_model):
    """The compiler users get (inductor; its C++ backend here, Triton on CUDA): the compiled UNet
    matches eager, and an in-place merge through to_q (what a LoRA does) shows in the compiled
    output at once: weights are inputs of the compiled code, never baked-in constants."""
    import torch._dynamo

    torch._dynamo.reset()
    pipe = _fresh_pipe(demo_model)
    fuse_qkv(pipe.unet)
    eager = _unet_out(pipe)
    state = FastPathState(mode="auto")
    compile_blocks(pipe.unet, state)  # inductor
    warm_up(pipe, state, 64, 64, lambda _: None)
    assert state.compiling and state.compile_seconds, state.failed
    torch.testing.assert_close(_unet_out(pipe), eager, rtol=1e-4, atol=1e-4)

    part = next(m for m in pipe.unet.modules() if isinstance(m, FusedPart))
    saved = part.weight.detach().clone()
    with torch.no_grad():  # random: a constant would vanish behind the LayerNorm before to_q
        part.weight.data.add_(
            torch.randn(part.weight.shape, generator=torch.Generator().manual_seed(3))
        )
    merged = _unet_out(pipe)
    assert (merged - eager).abs().max() > 1e-3, "the compiled UNet ignored a merged weight"
    undo_compile(state, "test")
    torch.testing.assert_close(_unet_out(pipe), merged, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        part.weight.data.copy_(saved)
    torch.testing.assert_close(_unet_out(pipe), eager, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


def test_a_second_model_reuses_the_compiled_blocks(demo_model):
    """Regional compilation compiles per block class, not per model: loading another model
    (or the same one again) at the same sizes compiles nothing new. (A fused-attention
    processor class made per load broke this: dynamo guards on the processor's class.)"""
    import torch._dynamo

    torch._dynamo.reset()
    backend = CountingBackend()
    pipes = [_fresh_pipe(demo_model), _fresh_pipe(demo_model)]
    states = []
    for pipe in pipes:
        assert fuse_qkv(pipe.unet) == 4
        state = FastPathState(mode="auto")
        compile_blocks(pipe.unet, state, backend=backend)
        states.append(state)
    warm_up(pipes[0], states[0], 64, 64, lambda _: None)
    first = backend.graphs
    warm_up(pipes[1], states[1], 64, 64, lambda _: None)
    assert first > 0 and backend.graphs == first
    torch._dynamo.reset()


def test_warm_up_out_of_memory_keeps_compiling(demo_model):
    """Out of memory (or any error that is not the compiler's) at warm-up skips the warm-up,
    says so, and leaves compilation on; only a compiler failure turns it off."""
    import torch._dynamo

    torch._dynamo.reset()
    pipe = _fresh_pipe(demo_model)
    state = FastPathState(mode="auto")
    compile_blocks(pipe.unet, state, backend=CountingBackend())

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    pipe.unet.forward = oom
    logs: list[str] = []
    warm_up(pipe, state, 64, 64, logs.append)
    assert state.compiling and state.failed is None
    assert (
        "warm-up skipped (OutOfMemoryError at 64x64 batch 1): the first job compiles instead"
        in logs[0]
    )
    torch._dynamo.reset()


def test_sdxl_warm_up_compiles_what_its_jobs_call(tmp_path):
    """SDXL's UNet takes pooled text and size ids besides the text: warm-up builds them as the
    pipeline does, so a later call at that size compiles nothing, at any prompt length."""
    import types

    import torch._dynamo
    from diffusers import UNet2DConditionModel

    torch._dynamo.reset()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # the SDXL UNet's kind of blocks, tiny
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
        transformer_layers_per_block=(1, 2),
    ).eval()
    pipe = types.SimpleNamespace(
        unet=unet,
        vae_scale_factor=8,
        text_encoder_2=types.SimpleNamespace(config=types.SimpleNamespace(projection_dim=32)),
    )
    assert fuse_qkv(unet) == 8  # down 1x2, mid 2, up 2x2 transformer layers
    backend = CountingBackend()
    state = FastPathState(mode="auto")
    compile_blocks(unet, state, backend=backend)
    warm_up(pipe, state, 64, 64, lambda _: None)
    assert state.compiling and state.compile_seconds is not None, state.failed
    compiled = backend.graphs
    for tokens in (77, 154):
        with torch.inference_mode():
            text = torch.randn(2, tokens, 32)
            ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
            unet(
                torch.randn(2, 4, 8, 8),
                torch.tensor(500.0),
                encoder_hidden_states=text,
                added_cond_kwargs={"text_embeds": torch.randn(2, 32), "time_ids": ids},
            )
    assert backend.graphs == compiled
    torch._dynamo.reset()
