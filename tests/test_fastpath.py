"""The CUDA fast path's CPU-checkable parts: nothing changes off CUDA, and a compiler failure
falls back to eager with the same output and a plain log line. (Compile speed itself is
measured by bench/gpu_speed.py on a GPU.)"""

from __future__ import annotations

import pytest
import torch

from sdtui.engine.fastpath import (
    FastPathState,
    apply_fast_path,
    compile_blocks,
    is_compile_error,
    warm_up,
)


@pytest.fixture(scope="module")
def pipe(demo_model):
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
