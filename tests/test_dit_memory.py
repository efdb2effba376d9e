"""The out-of-memory ladder of Flux.1 / SD3.5 jobs (sdtui.engine.dit_memory.DitLadder), on the CPU.

No GPU here: the one fake is the error, torch's real OutOfMemoryError raised by a forward hook
on the transformer for its first N calls (as tests/test_memory.py injects it into the UNet).
Everything else is the engine's path, and each recovered job must give the images of a job
that never ran out of memory: the generators are rewound, the seeds stay per image. The GPU
rungs (model offload, sequential offload) are not reachable on the CPU."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from test_dit_models import (  # noqa: F401 - fixtures
    FLUX_PARAMS,
    W,
    flux_files,
    flux_parts,
    job,
    load,
    pixel_diff,
)

from sdtui.engine.memory import MemoryExhausted
from sdtui.engine.session import ModelSession
from sdtui.ipc import protocol as msg

PARAMS = FLUX_PARAMS.replace(steps=1)  # batch of 2, seeds 42 and 43


@pytest.fixture(scope="module")
def session(flux_files: dict[str, Path]) -> Any:  # noqa: F811 - the imported fixture
    session = ModelSession.create(load(flux_files["file"], flux_files["configs"]), "cpu")
    # tiles as large as the image, as Flux's VAE (1024 px tiles) decodes a 1024x1024 image
    # whole: the tiny VAE's config would cut 64 px into 32 px tiles and blend their seams
    session.txt2img.vae.tile_sample_min_size = W
    session.txt2img.vae.tile_latent_min_size = W // 2
    return session


@pytest.fixture(scope="module")
def reference(session: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ...]:
    done, _ = job(session, PARAMS, tmp_path_factory.mktemp("ref"), "flux")
    return tuple(done.paths)


class OomAtTransformer:
    """Raises torch.OutOfMemoryError from the transformer's first ``times`` forward calls."""

    def __init__(self, transformer: torch.nn.Module, times: int) -> None:
        self.left, self.fired = times, 0
        self.handle = transformer.register_forward_pre_hook(self.hook)

    def hook(self, module: torch.nn.Module, args: Any) -> None:
        if self.left > 0:
            self.left -= 1
            self.fired += 1
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture
def oom(session: Any) -> Iterator[Any]:
    made: list[OomAtTransformer] = []

    def arm(times: int) -> OomAtTransformer:
        made.append(OomAtTransformer(session.txt2img.transformer, times))
        return made[-1]

    yield arm
    for injector in made:
        injector.handle.remove()


def warnings(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, msg.Log) and e.level == "warning"]


def infos(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, msg.Log)]


@pytest.mark.parametrize(
    ("times", "rungs"),
    [
        (1, ["freed cached memory"]),
        (2, ["freed cached memory", "text encoders (T5 first) to the CPU"]),
        (
            3,
            [
                "freed cached memory",
                "text encoders (T5 first) to the CPU",
                "decoding the VAE in tiles",
            ],
        ),
    ],
)
def test_each_rung_is_logged_once_and_gives_the_images_of_an_unbroken_job(
    session: Any, oom: Any, reference: tuple[str, ...], tmp_path: Path, times: int, rungs: list
) -> None:
    injector = oom(times)
    done, events = job(session, PARAMS, tmp_path, "flux")
    assert injector.fired == times
    said = warnings(events)
    assert len(said) == len(rungs), said
    for text, needle in zip(said, rungs, strict=True):
        assert needle in text
    assert said[0] == "out of memory while sampling: freed cached memory, trying again"
    # the same seeds draw the same noise: the images are those of the job that never ran out
    assert [e.seed for e in events if isinstance(e, msg.ImageSaved) and not e.is_grid] == [42, 43]
    for path, ref in zip(done.paths, reference, strict=True):
        assert pixel_diff(path, ref) == 0
    if times > 1:
        assert any("memory settings back to normal after the job" in t for t in infos(events))
    vae = session.txt2img.vae
    assert not vae.use_tiling and not vae.use_slicing  # turned off again for the next job


def test_the_last_rung_stops_with_what_was_tried_and_what_would_fit(
    session: Any, oom: Any, reference: tuple[str, ...], tmp_path: Path
) -> None:
    oom(4)
    with pytest.raises(MemoryExhausted) as e:
        job(session, PARAMS, tmp_path / "fail", "flux")
    assert str(e.value) == (
        "out of memory even with text encoders on the CPU after encoding and tiled VAE decode "
        "at 64x64 batch 2: try batch size 1"
    )
    assert not session.txt2img.vae.use_tiling
    # and the next job, with memory to spare, is the unbroken one
    done, events = job(session, PARAMS, tmp_path / "next", "flux")
    assert not warnings(events)
    assert all(pixel_diff(a, b) == 0 for a, b in zip(done.paths, reference, strict=True))
