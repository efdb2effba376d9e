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


def tiny_config_folder(root: Path, base: str, parts: dict[str, Any]) -> Path:
    """A copy of the bundled config folder ``base`` with the tiny components' configs (the
    real widths are too big for a CPU test) and tokenizer files."""
    import shutil

    from sdtui.clip_vocab import write_tokenizer_files
    from sdtui.engine import configs

    folder = root / f"{base}-tiny"
    shutil.copytree(configs.BUNDLED / base, folder)
    for sub, model in parts.items():
        if hasattr(model, "save_config"):
            model.save_config(folder / sub)
        else:
            model.config.save_pretrained(folder / sub)
    for sub in ("tokenizer", "tokenizer_2"):
        if (folder / sub).is_dir():
            write_tokenizer_files(folder / sub)
    return folder


def tiny_clip_config(act: str, hidden: int = 32) -> Any:
    """A two-layer CLIP text config with the real vocabulary's special tokens."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=hidden,
        hidden_act=act,
        bos_token_id=49406,
        eos_token_id=49407,
    )
