"""Memory that never needs a restart: the out-of-memory ladder under injected faults (the real
torch OutOfMemoryError at the UNet and the VAE), the NaN decode retried in fp32, memory modes,
accounting, and the engine process surviving an OOM."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdtui.config import Settings
from sdtui.ipc import protocol as msg
from sdtui.params import GenerationParams

TINY = dict(width=64, height=64, steps=3, prompt="a black house cat", preview_every=0)


@pytest.fixture(scope="module")
def session(demo_model):
    from sdtui.engine.models import load_pipeline
    from sdtui.engine.session import ModelSession

    loaded = load_pipeline(demo_model.safetensors, device="cpu")
    loaded.name = "sdtui-demo"
    return ModelSession.create(loaded, "cpu")


@pytest.fixture
def faults(session):
    from sdtui.engine.faults import FaultInjector

    injector = FaultInjector(None).install(session.txt2img)
    yield injector
    injector.remove()


@pytest.fixture(scope="module")
def reference(session, tmp_path_factory):
    """The same batch of two, run without faults: what every recovered run must equal."""
    done, _ = run(
        session, GenerationParams(**TINY, seed=500, batch_size=2), tmp_path_factory.mktemp("ref")
    )
    return [pixels(p) for p in done.paths]


def run(session, params: GenerationParams, out: Path, family: str = "SD1"):
    from sdtui.engine.generate import JobContext, JobControl, run_generation
    from sdtui.outputs import OutputLayout

    events: list = []
    ctx = JobContext(1, events.append, JobControl(), OutputLayout(out), "sdtui-demo", None, family)
    done = run_generation(session.loaded, session, params, ctx)
    return done, events


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def logs(events) -> list[str]:
    return [e.text for e in events if isinstance(e, msg.Log)]


def assert_same_images(paths, reference) -> None:
    assert len(paths) == len(reference)
    for path, ref in zip(paths, reference, strict=True):
        assert np.abs(pixels(path) - ref).max() <= 2


# -- the ladder ----------------------------------------------------------------------------


def test_one_unet_oom_frees_caches_and_retries_to_the_same_images(
    session, faults, reference, tmp_path
):
    faults.arm("unet_oom:1")
    done, events = run(session, GenerationParams(**TINY, seed=500, batch_size=2), tmp_path)
    assert faults.fired["unet_oom"] == 1
    assert_same_images(done.paths, reference)
    assert any("out of memory while sampling: freed cached memory" in t for t in logs(events))


def test_repeated_unet_oom_climbs_to_slicing_then_splits_the_batch_keeping_seeds(
    session, faults, reference, tmp_path
):
    processors = {k: type(v) for k, v in session.txt2img.unet.attn_processors.items()}
    faults.arm("unet_oom:3")
    done, events = run(session, GenerationParams(**TINY, seed=500, batch_size=2), tmp_path)
    text = logs(events)
    rungs = [
        next(i for i, t in enumerate(text) if needle in t)
        for needle in ("freed cached memory", "attention in slices", "one image at a time")
    ]
    assert rungs == sorted(rungs), text
    # each image of the split batch equals its image of the unsplit run: seeds stay per image
    assert_same_images(done.paths, reference)
    assert any("back to normal" in t for t in text)
    after = {k: type(v) for k, v in session.txt2img.unet.attn_processors.items()}
    assert after == processors, "attention slicing must be undone after the job"


def test_the_ladder_runs_compiled_blocks_eager_while_slicing(demo_model, reference, tmp_path):
    """With the fast path's compiled blocks, sliced attention would mean a recompile in the
    middle of an out-of-memory recovery: the ladder runs them eager instead, and the next job
    is back on the compiled code, without compiling anything new."""
    import torch._dynamo

    from sdtui.engine.fastpath import FastPathState, compile_blocks, fuse_qkv, warm_up
    from sdtui.engine.faults import FaultInjector
    from sdtui.engine.models import load_pipeline
    from sdtui.engine.session import ModelSession

    torch._dynamo.reset()
    loaded = load_pipeline(demo_model.safetensors, device="cpu")
    fast = ModelSession.create(loaded, "cpu")
    fuse_qkv(fast.txt2img.unet)
    compiled, calls = [0], [0]

    def backend(gm, example_inputs):
        compiled[0] += 1

        def run_graph(*args):
            calls[0] += 1
            return gm.forward(*args)

        return run_graph

    state = FastPathState(mode="auto")
    compile_blocks(fast.txt2img.unet, state, backend=backend)
    warm_up(fast.txt2img, state, 64, 64, lambda _: None)
    before = compiled[0]
    injector = FaultInjector(None).install(fast.txt2img)
    try:
        injector.arm("unet_oom:3")  # climbs to sliced attention, then splits the batch
        done, events = run(fast, GenerationParams(**TINY, seed=500, batch_size=2), tmp_path / "oom")
    finally:
        injector.remove()
    assert any("attention in slices" in t for t in logs(events))
    assert compiled[0] == before, "the recovery compiled code"
    assert_same_images(done.paths, reference)
    calls[0] = 0
    run(fast, GenerationParams(**TINY, seed=500, batch_size=2), tmp_path / "next")
    assert calls[0] > 0 and compiled[0] == before, "the next job must run the compiled blocks"
    torch._dynamo.reset()


def test_vae_oom_decodes_in_tiles_and_tiling_is_undone(session, faults, reference, tmp_path):
    faults.arm("vae_oom:2")
    done, events = run(session, GenerationParams(**TINY, seed=500, batch_size=2), tmp_path)
    assert faults.fired["vae_oom"] == 2
    assert any("decoding the VAE in tiles" in t for t in logs(events))
    assert not any("attention in slices" in t for t in logs(events)), "slicing is for sampling"
    assert_same_images(done.paths, reference)
    assert session.txt2img.vae.use_tiling is False


def test_when_every_rung_fails_the_message_says_what_would_fit(session, faults, tmp_path):
    from sdtui.engine.memory import MemoryExhausted

    faults.arm("unet_oom:always")
    with pytest.raises(MemoryExhausted) as caught:
        run(session, GenerationParams(**TINY, seed=1, batch_size=2), tmp_path)
    assert caught.value.message == (
        "out of memory even with attention slicing and a split batch at 64x64 batch 1: "
        "try a smaller size or --memory-mode lowest"
    )
    assert "CUDA out of memory" in (caught.value.detail or "")
    faults.disarm()
    done, _ = run(session, GenerationParams(**TINY, seed=1), tmp_path)  # nothing left switched on
    assert len(done.paths) == 1


def test_split_call_slices_per_image_arguments_only():
    from sdtui.engine.memory import split_call

    gens = [torch.Generator().manual_seed(s) for s in range(4)]
    call = {
        "latents": torch.zeros(4, 4, 8, 8),
        "generator": gens,
        "prompt_embeds": torch.zeros(1, 77, 8),
        "num_images_per_prompt": 4,
    }
    sub = split_call(call, 1, 3)
    assert sub["latents"].shape[0] == 2 and sub["generator"] == gens[1:3]
    assert sub["prompt_embeds"] is call["prompt_embeds"] and sub["num_images_per_prompt"] == 2


# -- NaN from a half-precision VAE ---------------------------------------------------------


@pytest.fixture
def half_vae(session):
    vae = session.txt2img.vae
    vae.to(torch.float16)
    yield vae
    vae.to(torch.float32)


def _decode_dtypes(vae) -> tuple[list[torch.dtype], object]:
    seen: list[torch.dtype] = []
    handle = vae.decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    return seen, handle


def _ctx(family: str = "SD1"):
    from sdtui.engine.generate import JobContext, JobControl
    from sdtui.outputs import OutputLayout

    events: list = []
    return JobContext(
        1, events.append, JobControl(), OutputLayout(Path(".")), family=family
    ), events


def test_nan_from_a_half_vae_is_decoded_again_in_fp32(session, faults, half_vae):
    from sdtui.engine.generate import decode_latents

    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ctx, events = _ctx()
    expected = np.asarray(decode_latents(session.txt2img, latents, ctx)[0], dtype=np.int16)
    seen, handle = _decode_dtypes(half_vae)
    try:
        faults.arm("vae_nan:1")
        image = decode_latents(session.txt2img, latents, ctx)[0]
        assert seen == [torch.float16, torch.float32]
        assert any("NaN in float16: decoding again in fp32" in t for t in logs(events))
        assert np.abs(np.asarray(image, dtype=np.int16) - expected).max() <= 3
        assert half_vae.dtype == torch.float16, "the VAE goes back to half precision"
        seen.clear()
        decode_latents(session.txt2img, latents, ctx)  # the rest of the job: fp32 at once
        assert seen == [torch.float32]
    finally:
        handle.remove()


def test_force_upcast_decodes_an_sdxl_fp16_vae_in_fp32_only(session, half_vae):
    from sdtui.engine.generate import decode_latents

    assert half_vae.config.force_upcast
    latents = torch.randn(1, 4, 8, 8)
    seen, handle = _decode_dtypes(half_vae)
    try:
        decode_latents(session.txt2img, latents, _ctx("SDXL")[0])
        decode_latents(session.txt2img, latents, _ctx("SD1")[0])  # diffusers ignores it for SD1
    finally:
        handle.remove()
    assert seen == [torch.float32, torch.float16]
    assert half_vae.dtype == torch.float16


# -- memory modes --------------------------------------------------------------------------

GB = 10**9


@pytest.mark.parametrize(
    ("setting", "device", "free", "expected"),
    [
        ("auto", "cuda", 20 * GB, "normal"),
        ("auto", "cuda", 3 * GB, "low"),  # 2 GB of weights + room to work does not fit
        ("lowest", "cuda", 80 * GB, "lowest"),
        ("low", "cpu", None, "normal"),
        ("lowest", "cpu", None, "normal"),
    ],
)
def test_choose_mode(setting, device, free, expected):
    from sdtui.engine.memory import choose_mode

    assert choose_mode(setting, device, free_vram=free, weights=2 * GB)[0] == expected


# -- the engine ----------------------------------------------------------------------------


@pytest.fixture
def engine(tmp_path, demo_model):
    from sdtui.engine.worker import Engine, EngineOptions

    events: list = []
    settings = Settings(
        models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs", memory_mode="low"
    )
    # "unet_oom:0": hooks installed, nothing fires until a test arms them
    options = EngineOptions(demo=True, preload=False, fault_injection="unet_oom:0")
    e = Engine(settings, options, events.append)
    e.device = "cpu"
    e.ensure_model("demo")
    return e, events


def test_engine_reports_a_failed_job_keeps_its_images_and_serves_the_next(engine):
    eng, events = engine

    def emit(event):  # the first saved image is followed by OOM on every try
        events.append(event)
        if isinstance(event, msg.ImageSaved):
            eng.faults.arm("unet_oom:always")

    eng.emit = emit
    eng._run(msg.SubmitGenerate(1, GenerationParams(**TINY, seed=9, batch_count=2)))
    failed = next(e for e in events if isinstance(e, msg.JobFailed))
    assert failed.message.startswith("out of memory even with attention slicing at 64x64 batch 1")
    assert len(failed.paths) == 1 and Path(failed.paths[0]).exists()
    eng.faults.disarm()
    eng._run(msg.SubmitGenerate(2, GenerationParams(**TINY, seed=10)))
    done = next(e for e in events if isinstance(e, msg.JobDone))
    assert len(done.paths) == 1 and done.rss and done.rss > 50 * 10**6
    assert done.peak_vram_allocated is None  # CPU: no VRAM to count
    assert any(isinstance(e, msg.Log) and e.text.startswith("job 2: RAM (RSS)") for e in events)


def test_loading_logs_size_and_time_and_cpu_says_once_that_modes_do_nothing(engine):
    eng, events = engine
    loaded = [e.text for e in events if isinstance(e, msg.Log) and e.text.startswith("loaded ")]
    assert loaded and "(SD1, " in loaded[0] and " s; memory mode normal" in loaded[0]
    eng.set_memory_mode("lowest")
    eng.set_memory_mode("bogus")
    text = logs(events)
    assert sum("has no effect" in t for t in text) == 1
    assert any("memory mode 'bogus' is unknown" in t for t in text)
    assert eng.memory_mode == "lowest"


def test_switching_models_parks_one_and_frees_the_rest(engine, demo_model, monkeypatch):
    eng, _ = engine
    first = eng.session.txt2img.unet
    eng.ensure_model(str(demo_model.folder))
    assert eng.session.path == demo_model.folder
    # the previous model waits in RAM for a quick switch back ...
    assert all(p.device.type != "meta" for p in first.parameters())
    second = eng.session.txt2img.unet
    eng.ensure_model(str(demo_model.ckpt))
    # ... but only one: the older one is freed completely
    assert all(p.device.type == "meta" for p in first.parameters()), "old weights must be freed"
    assert all(p.device.type != "meta" for p in second.parameters())
    assert len(eng.parked) == 1

    import psutil

    class Tight:
        available = 0

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tight())
    third = eng.session.txt2img.unet
    eng.ensure_model(str(demo_model.safetensors))
    assert not eng.parked, "with no RAM to spare nothing is parked"
    assert all(p.device.type == "meta" for p in third.parameters())
    assert all(p.device.type == "meta" for p in second.parameters())


def _engine_env(q) -> None:
    from sdtui.engine.worker import prepare_environment

    prepare_environment()
    import os

    q.put((os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), os.environ.get("TORCHINDUCTOR_CACHE_DIR")))


def test_the_engine_sets_its_defaults_and_keeps_the_users(monkeypatch, tmp_path):
    """expandable_segments against fragmentation; torch.compile's cache in sdtui's cache folder
    (kept across reboots, unlike /tmp); a value the user set wins over both."""
    import os

    ctx = mp.get_context("spawn")
    ours = os.path.join(os.environ["SDTUI_CACHE_DIR"], "torchinductor")
    for alloc, inductor, expected in (
        (
            "garbage_collection_threshold:0.6",
            str(tmp_path),
            ("garbage_collection_threshold:0.6", str(tmp_path)),
        ),
        (None, None, ("expandable_segments:True", ours)),
    ):
        for name, value in (
            ("PYTORCH_CUDA_ALLOC_CONF", alloc),
            ("TORCHINDUCTOR_CACHE_DIR", inductor),
        ):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        q = ctx.Queue()
        child = ctx.Process(target=_engine_env, args=(q,))
        child.start()
        got = q.get(timeout=60)
        child.join(10)
        assert got == expected


def test_engine_process_survives_an_oom(tmp_path, attach):
    settings = Settings(models_dir=tmp_path / "models", outputs_dir=tmp_path / "outputs")
    host = attach(settings, faults="unet_oom:2,vae_oom:1")
    first = host.submit(GenerationParams(**TINY, seed=3))
    second = host.submit(GenerationParams(**TINY, seed=4))
    done, seen = host.wait_job(first, timeout=120)
    assert isinstance(done, msg.JobDone) and Path(done.paths[0]).exists()
    text = [e.text for e in seen if isinstance(e, msg.Log)]
    assert any("attention in slices" in t for t in text), text
    assert any("out of memory while decoding" in t for t in text), text
    workers = host.worker_pids
    again, _ = host.wait_job(second, timeout=60)
    assert isinstance(again, msg.JobDone) and host.worker_pids == workers, "the same worker ran on"
    t0 = time.monotonic()
    assert host.stop_daemon()
    assert time.monotonic() - t0 < 15
