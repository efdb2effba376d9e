"""The words the processes exchange are one list each: the Literal types that mypy checks are
the same words the code checks at run time, and every message survives the trip through a
pipe (pickle) unchanged."""

from __future__ import annotations

import dataclasses
import pickle
from typing import get_args

from sdtui import config, jobstore
from sdtui.ipc import protocol as msg
from sdtui.ipc.client import overall_state
from sdtui.params import GenerationParams, MemoryMode, XYZParams


def test_the_literal_types_name_the_words_the_code_checks() -> None:
    assert get_args(MemoryMode) == tuple(config.MEMORY_MODES)
    assert msg.ENGINE_STATES == get_args(msg.EngineState)
    assert get_args(msg.JobKind) == get_args(jobstore.JobKind) == ("generate", "upscale", "xyz")
    assert set(get_args(msg.JobState)) == {"queued", "running", "done", "failed", "cancelled"}
    assert get_args(msg.LogLevel) == ("info", "warning", "error")


def test_several_workers_read_as_the_busiest_one() -> None:
    assert overall_state(["ready", "busy", "starting"]) == "busy"
    assert overall_state(["ready", "loading"]) == "loading"
    assert overall_state(["crashed", "ready"]) == "ready"
    assert overall_state(["stopped", "crashed"]) == "crashed"
    assert overall_state([]) == "stopped"
    for state in msg.ENGINE_STATES:
        assert overall_state([state]) == state


def test_messages_are_frozen_and_cross_a_pipe_unchanged() -> None:
    job = msg.JobInfo(7, "generate", "queued", "txt2img", 2, "test", 1.5)
    samples = [
        msg.SubmitGenerate(1, GenerationParams(prompt="a cat", seed=3), None, {0: "/x.png"}),
        msg.SetMemoryMode("low"),
        msg.Log("warning", "disk nearly full", 3),
        msg.EngineStatus("ready", device="cpu", pid=42),
        msg.Submit(5, "generate", GenerationParams(prompt="a dog"), {"outputs_dir": "/o"}),
        msg.SubmitXYZ(
            2,
            XYZParams(
                GenerationParams(prompt="a cat"),
                x=("Steps", "10,20"),
                vary_seeds=(True, False, False),
            ),
        ),
        msg.Submit(6, "xyz", XYZParams(y=("CFG Scale", "5-9 (+2)")), {}),
        msg.Submitted(5, job),
        msg.DaemonState(
            None, 1, "0.1.0", 0.0, "/s", "/q", 30.0, (msg.WorkerInfo(0, "cpu", "busy"),), (job,)
        ),
    ]
    for m in samples:
        assert dataclasses.is_dataclass(m) and type(m).__dataclass_params__.frozen
        assert pickle.loads(pickle.dumps(m)) == m
