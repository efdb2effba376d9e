"""Run jobs in-process on the demo model: what the engine process does for one job, minus
the process boundary (tests of the boundary itself use EngineHost)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdtui.params import GenerationParams


def demo_session(path: Path, settings: Any = None) -> Any:
    """A ModelSession for a model file, as the engine would build it."""
    from sdtui.engine.models import load_pipeline
    from sdtui.engine.session import ModelSession

    loaded = load_pipeline(path, device="cpu")
    loaded.name = "sdtui-demo"
    session = ModelSession.create(loaded, "cpu")
    if settings is not None:
        session.settings = settings
    return session


def run_job(
    session: Any, params: GenerationParams, out: Path, control: Any = None
) -> tuple[Any, list]:
    """Run one job into the outputs folder ``out``; returns (JobDone, every event)."""
    from sdtui.engine.generate import run_generation
    from sdtui.engine.job import JobContext, JobControl
    from sdtui.outputs import OutputLayout

    events: list = []
    ctx = JobContext(
        job_id=1,
        emit=events.append,
        control=control or JobControl(),
        layout=OutputLayout(out),
        model_name="sdtui-demo",
        model_hash="0123456789",
        family="SD1",
    )
    return run_generation(session.loaded, session, params, ctx), events
