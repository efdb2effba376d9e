"""LoRAs, textual-inversion embeddings and VAEs on the demo model: each changes the image when
asked for, leaves no trace after its job, and is recorded in the infotext as A1111 does."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_helpers import demo_session, run_job
from PIL import Image

from sdtui.config import Settings
from sdtui.errors import UserError
from sdtui.extra_networks_index import (
    automatic_vae,
    list_embeddings,
    list_loras,
    list_vaes,
    vae_choices,
)
from sdtui.infotext import parse_infotext, read_infotext
from sdtui.params import GenerationParams

TINY = dict(width=64, height=64, steps=2, seed=1234, preview_every=0)
PROMPT = "a black house cat"


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Settings:
    root = tmp_path_factory.mktemp("a1111")
    for sub in ("models/Lora", "models/VAE", "embeddings", "outputs"):
        (root / sub).mkdir(parents=True)
    return Settings(
        models_dir=root / "models", embeddings_dir=root / "embeddings", outputs_dir=root / "outputs"
    )


@pytest.fixture(scope="module")
def session(demo_model, folders):
    return demo_session(demo_model.safetensors, folders)


def run(session, out: Path, **kw):
    params = GenerationParams(**{**TINY, "prompt": PROMPT, **kw})
    done, events = run_job(session, params, out)
    assert len(done.paths) == params.images_total
    return done, events


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def image(session, out: Path, **kw) -> tuple[np.ndarray, dict[str, str]]:
    done, _ = run(session, out, **kw)
    info = parse_infotext(read_infotext(done.paths[0]))
    return pixels(done.paths[0]), info.pairs


def snapshot(session) -> dict[str, torch.Tensor]:
    pipe = session.txt2img
    out = {}
    for comp in ("unet", "text_encoder", "vae"):
        for k, v in getattr(pipe, comp).state_dict().items():
            out[f"{comp}.{k}"] = v.detach().clone()
    return out


def assert_same_weights(session, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(session)
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"weights left changed after the job: {changed[:5]}"


@pytest.fixture(scope="module")
def baseline(session, tmp_path_factory):
    before = snapshot(session)
    px, pairs = image(session, tmp_path_factory.mktemp("base"))
    return before, px, pairs


# -- building LoRAs --------------------------------------------------------------------------

_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1")
_TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_pieces(session, seed: int, rank: int = 4) -> dict[tuple[str, str], tuple]:
    """(component, module) -> (down, up) random low-rank pieces for the demo model."""
    g = torch.Generator().manual_seed(seed)
    pieces = {}
    pipe = session.txt2img
    for comp, targets in (("unet", _UNET_TARGETS), ("text_encoder", _TE_TARGETS)):
        for name, m in getattr(pipe, comp).named_modules():
            if not name.endswith(targets):
                continue
            w = m.weight
            if w.ndim == 4:  # conv: LoCon pieces
                down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.3
                up = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.3
            else:
                down = torch.randn(rank, w.shape[1], generator=g) * 0.3
                up = torch.randn(w.shape[0], rank, generator=g) * 0.3
            pieces[(comp, name)] = (down, up)
    return pieces


def save_kohya(path: Path, pieces, *, alpha: float, ldm_names: bool = False, unet_only=False):
    from safetensors.torch import save_file

    from sdtui.engine.convert import unet_to_ldm
    from sdtui.engine.lora import make_kohya_name

    sd = {}
    for (comp, name), (down, up) in pieces.items():
        if unet_only and comp != "unet":
            continue
        if ldm_names and comp == "unet":
            (ldm,) = unet_to_ldm({name + ".weight": None}, _UNET_CONFIG).keys()
            key = "lora_unet_" + ldm[: -len(".weight")].replace(".", "_")
        else:
            key = make_kohya_name(comp, name)
        sd[key + ".lora_down.weight"] = down.contiguous()
        sd[key + ".lora_up.weight"] = up.contiguous()
        sd[key + ".alpha"] = torch.tensor(float(alpha))
    save_file(sd, path, metadata={"ss_network_module": "networks.lora"})


def save_diffusers(path: Path, pieces) -> None:
    """peft layout (lora_A/lora_B), no alpha: scale 1, like kohya with alpha = rank."""
    from safetensors.torch import save_file

    sd = {}
    for (comp, name), (down, up) in pieces.items():
        prefix = "unet." if comp == "unet" else "text_encoder.text_model."
        sd[f"{prefix}{name}.lora_A.weight"] = down.contiguous()
        sd[f"{prefix}{name}.lora_B.weight"] = up.contiguous()
    save_file(sd, path)


_UNET_CONFIG: dict = {}


@pytest.fixture(scope="module")
def loras(session, folders):
    _UNET_CONFIG.update(dict(session.txt2img.unet.config))
    lora_dir = folders.models / "Lora"
    a, b = lora_pieces(session, 1), lora_pieces(session, 2)
    save_kohya(lora_dir / "styleA.safetensors", a, alpha=2.0)
    (lora_dir / "sub").mkdir()
    save_kohya(lora_dir / "sub" / "styleB.safetensors", b, alpha=2.0)
    # the same weights as A with scale 1 in three layouts
    save_kohya(lora_dir / "rank_kohya.safetensors", a, alpha=4.0)
    save_kohya(lora_dir / "rank_ldm.safetensors", a, alpha=4.0, ldm_names=True, unet_only=True)
    save_kohya(lora_dir / "rank_unet_only.safetensors", a, alpha=4.0, unet_only=True)
    save_diffusers(lora_dir / "rank_diffusers.safetensors", a)
    return lora_dir


def addnet_hash(path: Path) -> str:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return hashlib.sha256(data[8 + n :]).hexdigest()[:12]


# -- LoRA ------------------------------------------------------------------------------------


def test_lora_changes_the_image_and_leaves_no_trace(session, baseline, loras, tmp_path):
    before, base_px, base_pairs = baseline
    assert "Lora hashes" not in base_pairs
    px, pairs = image(session, tmp_path / "a", prompt=PROMPT + " <lora:styleA:0.8>")
    assert np.abs(px - base_px).mean() > 2, "the LoRA should change the image"
    assert pairs["Lora hashes"] == f"styleA: {addnet_hash(loras / 'styleA.safetensors')}"
    assert_same_weights(session, before)
    again, _ = image(session, tmp_path / "again")
    assert np.array_equal(again, base_px), "the next job without the LoRA must match the first"


def test_two_loras_at_once_and_zero_weight(session, baseline, loras, tmp_path):
    before, base_px, _ = baseline
    a, _ = image(session, tmp_path / "a", prompt=PROMPT + " <lora:styleA:0.8>")
    b, _ = image(session, tmp_path / "b", prompt=PROMPT + " <lora:styleB:0.8>")
    ab, pairs = image(
        session, tmp_path / "ab", prompt=PROMPT + " <lora:styleA:0.8> <lora:styleB:0.8>"
    )
    assert np.abs(ab - a).mean() > 1 and np.abs(ab - b).mean() > 1
    names = [part.split(":")[0] for part in pairs["Lora hashes"].split(", ")]
    assert names == ["styleA", "styleB"]
    zero, _ = image(session, tmp_path / "zero", prompt=PROMPT + " <lora:styleA:0>")
    assert np.array_equal(zero, base_px)
    assert_same_weights(session, before)


def test_lora_layouts_give_the_same_image(session, baseline, loras, tmp_path):
    """kohya (diffusers names), diffusers/peft, and kohya with SDXL-style LDM UNet names."""
    before, base_px, _ = baseline
    kohya, _ = image(session, tmp_path / "k", prompt=PROMPT + " <lora:rank_kohya>")
    diffusers, _ = image(session, tmp_path / "d", prompt=PROMPT + " <lora:rank_diffusers>")
    assert np.abs(kohya - base_px).mean() > 2
    assert np.abs(kohya - diffusers).max() <= 1
    unet_only, _ = image(session, tmp_path / "u", prompt=PROMPT + " <lora:rank_unet_only>")
    ldm, _ = image(session, tmp_path / "l", prompt=PROMPT + " <lora:RANK_LDM>")  # any case
    assert np.abs(unet_only - ldm).max() <= 1
    # separate multipliers: text encoder 0 + UNet 1 is the UNet-only LoRA
    te0, _ = image(session, tmp_path / "t", prompt=PROMPT + " <lora:rank_kohya:0:1>")
    assert np.abs(te0 - unet_only).max() <= 1
    assert_same_weights(session, before)


def test_loras_reach_the_fast_paths_fused_qkv(
    demo_model, session, folders, baseline, loras, tmp_path
):
    """With fused QKV (the CUDA fast path) a LoRA on to_q/to_k/to_v lands in the fused weight,
    by kohya, LDM and diffusers names alike, and is taken out bit for bit after the job."""
    from sdtui.engine.fastpath import fuse_qkv

    _, base_px, _ = baseline
    fused = demo_session(demo_model.safetensors, folders)
    assert fuse_qkv(fused.txt2img.unet) > 0
    before = {k: v.clone() for k, v in fused.txt2img.unet.state_dict().items()}
    plain, _ = image(fused, tmp_path / "plain")
    assert np.abs(plain - base_px).max() <= 1
    for name in ("styleA:0.8", "rank_ldm", "rank_diffusers"):
        want, _ = image(session, tmp_path / f"want-{name[:5]}", prompt=f"{PROMPT} <lora:{name}>")
        got, _ = image(fused, tmp_path / f"got-{name[:5]}", prompt=f"{PROMPT} <lora:{name}>")
        assert np.abs(got - base_px).mean() > 2, f"{name} must change the image"
        assert np.abs(got - want).max() <= 1, (
            f"{name} on the fused model must match the plain model"
        )
    after = fused.txt2img.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "fused weights not restored"


def test_unknown_lora_names_what_exists(session, loras, tmp_path):
    with pytest.raises(UserError) as e:
        run(session, tmp_path, prompt="cat <lora:nope:1>")
    assert "nope" in str(e.value) and "styleA" in str(e.value) and "styleB" in str(e.value)


def test_lora_for_another_model_is_refused_and_nothing_changes(
    session, baseline, folders, tmp_path
):
    from safetensors.torch import save_file

    before, _, _ = baseline
    bad = folders.models / "Lora" / "wide.safetensors"
    save_file(
        {
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.ones(
                2, 320
            ),
            "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.ones(
                320, 2
            ),
        },
        bad,
    )
    try:
        with pytest.raises(UserError, match="does not fit this model"):
            run(session, tmp_path, prompt="cat <lora:styleA> <lora:wide>")
    finally:
        bad.unlink()
    assert_same_weights(session, before)


# -- embeddings ------------------------------------------------------------------------------


def token_rows(session, text: str) -> torch.Tensor:
    pipe = session.txt2img
    ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"]
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()


@pytest.fixture(scope="module")
def embeddings(session, folders):
    from safetensors.torch import save_file

    emb = folders.embeddings
    # A1111 .pt: two vectors equal to the token embeddings of "a dog"
    torch.save(
        {
            "string_to_token": {"*": 265},
            "string_to_param": {"*": token_rows(session, "a dog")},
            "name": "mystyle",
            "step": 100,
            "sd_checkpoint": None,
            "sd_checkpoint_name": None,
        },
        emb / "mystyle.pt",
    )
    g = torch.Generator().manual_seed(5)
    (emb / "nested").mkdir()
    save_file({"emb_params": torch.randn(3, 32, generator=g)}, emb / "nested" / "glowy.safetensors")
    torch.save({"<concept>": torch.randn(32, generator=g)}, emb / "concept-bin.bin")
    torch.save({"string_to_param": {"*": torch.randn(2, 768, generator=g)}}, emb / "widesd1.pt")
    (emb / "empty.pt").write_bytes(b"")
    (emb / ".hidden.pt").write_bytes(b"x")
    return emb


def test_list_embeddings_finds_every_format(embeddings):
    entries = list_embeddings(embeddings)
    assert [e.name for e in entries] == ["concept-bin", "glowy", "mystyle", "widesd1"]
    assert entries[1].path.parent.name == "nested"


def test_embedding_vector_counts_are_read_without_torch_or_pickled_code(embeddings, tmp_path):
    """The UI's token counter counts an embedding as its vectors: read from the header or the
    pickle's structure, never by running the pickle. Same counts as the engine loads."""
    from safetensors.torch import save_file

    from sdtui.engine.embeddings import load_embedding
    from sdtui.extra_networks_index import embedding_vectors

    for entry in list_embeddings(embeddings):
        emb = load_embedding(entry)
        assert embedding_vectors(entry.path) == emb.single.shape[0], entry.name
    assert embedding_vectors(embeddings / "mystyle.pt") == 2

    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.zeros(5, 32))})
    torch.save({"string_to_param": pd, "name": "pd"}, tmp_path / "paramdict.pt")
    assert embedding_vectors(tmp_path / "paramdict.pt") == 5
    save_file(
        {"clip_l": torch.zeros(4, 768), "clip_g": torch.zeros(4, 1280)}, tmp_path / "xl.safetensors"
    )
    assert embedding_vectors(tmp_path / "xl.safetensors") == 4

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"string_to_param": {"*": Evil()}}, tmp_path / "evil.pt")
    embedding_vectors(tmp_path / "evil.pt")
    assert not marker.exists(), "a pickle's code ran"
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    assert embedding_vectors(tmp_path / "junk.pt") is None
    torch.save(
        {"x": torch.zeros(2, 8)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False
    )
    assert embedding_vectors(tmp_path / "legacy.pt") is None  # old format: counted as its name


def test_the_engine_keeps_an_embedding_in_one_chunk(session, tmp_path):
    """70 words then an 8-vector embedding: A1111 starts a second chunk with the whole
    embedding rather than splitting it 5 + 3; the engine's chunks do the same, and the UI's
    counter agrees."""
    from safetensors.torch import save_file

    from sdtui.engine.conditioning import _encoders
    from sdtui.engine.embeddings import PLACEHOLDER_BASE, load_embedding, text_pipe_with_embeddings
    from sdtui.extra_networks_index import EmbeddingEntry
    from sdtui.tokens import count_tokens

    path = tmp_path / "eight.safetensors"
    save_file({"emb_params": torch.randn(8, 32, generator=torch.Generator().manual_seed(9))}, path)
    emb = load_embedding(EmbeddingEntry("eight", path))
    text_pipe, used = text_pipe_with_embeddings(session.txt2img, [emb], print)
    assert used == [emb]
    (encoder,) = _encoders(text_pipe, clip_skip=1)
    chunks = encoder.chunks("cat " * 70 + "eight")
    where = [[i for i, t in enumerate(c.tokens) if t >= PLACEHOLDER_BASE] for c in chunks]
    assert len(chunks) == 2 and where == [[], list(range(1, 9))]
    assert chunks[0].tokens[71:76] == [encoder.id_end] * 5  # the first chunk is padded
    assert count_tokens("cat " * 70 + "eight", (("eight", 8),)).tokens == 75 + 8


def test_embedding_is_the_vectors_it_holds(session, embeddings, tmp_path):
    """mystyle's vectors are those of "a dog": the prompts give the same image, and the
    infotext records its A1111 hash."""
    named, pairs = image(session, tmp_path / "e", prompt="photo of (MyStyle), studio")
    plain, plain_pairs = image(session, tmp_path / "p", prompt="photo of (a dog), studio")
    assert np.array_equal(named, plain)
    sha = hashlib.sha256((embeddings / "mystyle.pt").read_bytes()).hexdigest()[:12]
    assert pairs["TI hashes"] == f"mystyle: {sha}"
    assert "TI hashes" not in plain_pairs


def test_embeddings_change_only_prompts_that_name_them(session, embeddings, folders, tmp_path):
    glowy, pairs = image(session, tmp_path / "g", prompt=PROMPT + ", glowy")
    negative, neg_pairs = image(session, tmp_path / "n", negative_prompt="glowy")
    concept, c_pairs = image(session, tmp_path / "c", prompt=PROMPT + ", concept-bin")
    assert pairs["TI hashes"].startswith("glowy: ")
    assert neg_pairs["TI hashes"].startswith("glowy: ")
    assert c_pairs["TI hashes"].startswith("concept-bin: ")
    with_folder = {
        "plain": image(session, tmp_path / "1", prompt=PROMPT + ", glowing")[0],
        "glowy": glowy,
        "concept": concept,
        "negative": negative,
    }
    empty = folders.embeddings.parent / "no-embeddings"
    empty.mkdir(exist_ok=True)
    session.settings = folders.replace(embeddings_dir=empty)
    try:
        plain_glowing = image(session, tmp_path / "2", prompt=PROMPT + ", glowing")[0]
        plain_glowy = image(session, tmp_path / "3", prompt=PROMPT + ", glowy")[0]
        plain_negative = image(session, tmp_path / "4", negative_prompt="glowy")[0]
    finally:
        session.settings = folders
    assert np.array_equal(with_folder["plain"], plain_glowing), "unnamed embeddings changed it"
    assert np.abs(with_folder["glowy"] - plain_glowy).mean() > 1
    assert np.abs(with_folder["negative"] - plain_negative).mean() > 1
    assert np.abs(with_folder["concept"] - plain_glowy).mean() > 1


def test_embedding_for_another_model_width_is_ignored(session, embeddings, tmp_path):
    done, events = run(session, tmp_path, prompt="cat widesd1")
    pairs = parse_infotext(read_infotext(done.paths[0])).pairs
    assert "TI hashes" not in pairs
    assert any("widesd1" in getattr(e, "text", "") and "does not fit" in e.text for e in events)


def test_embeddings_and_loras_together_and_weights_restored(
    session, baseline, loras, embeddings, tmp_path
):
    before, _, _ = baseline
    _, pairs = image(session, tmp_path, prompt="mystyle glowy <lora:styleA:0.5>")
    assert pairs["TI hashes"].count(": ") == 2
    assert pairs["Lora hashes"].startswith("styleA: ")
    assert session.text_pipe is None
    assert_same_weights(session, before)


# -- VAE -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vaes(session, folders):
    from safetensors.torch import save_file

    from sdtui.engine.convert import vae_to_ldm

    vae = session.txt2img.vae
    sd = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    g = torch.Generator().manual_seed(9)
    for k in sd:
        if k.startswith("decoder.") and sd[k].ndim == 4:
            sd[k] = sd[k] + torch.randn(sd[k].shape, generator=g) * 0.05
    ldm = vae_to_ldm(sd, dict(vae.config))
    folder = folders.models / "VAE"
    save_file({k: v.contiguous() for k, v in ldm.items()}, folder / "warm.vae.safetensors")
    torch.save(
        {"state_dict": {"first_stage_model." + k: v for k, v in ldm.items()}},
        folder / "prefixed.pt",
    )
    save_file({k: v.contiguous() for k, v in sd.items()}, folder / "diffusers-names.safetensors")
    return folder


def test_list_vaes_and_automatic(folders, vaes, tmp_path):
    assert [e.name for e in list_vaes(folders.models)] == [
        "diffusers-names.safetensors",
        "prefixed.pt",
        "warm.vae.safetensors",
    ]
    assert vae_choices(folders.models)[:2] == ["Automatic", "None"]
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    (ckpt_dir / "model.safetensors").write_bytes(b"x")
    assert automatic_vae(ckpt_dir / "model.safetensors", tmp_path / "models") is None
    (ckpt_dir / "model.vae.pt").write_bytes(b"x")
    found = automatic_vae(ckpt_dir / "model.safetensors", tmp_path / "models")
    assert found is not None and found.name == "model.vae.pt"
    assert [e.name for e in list_vaes(tmp_path / "models")] == ["model.vae.pt"]


def test_vae_from_models_vae_changes_the_image_and_is_restored(session, baseline, vaes, tmp_path):
    before, base_px, base_pairs = baseline
    assert "VAE" not in base_pairs and "VAE hash" not in base_pairs
    px, pairs = image(session, tmp_path / "v", vae="warm.vae")  # name without extension
    assert np.abs(px - base_px).mean() > 1
    assert pairs["VAE"] == "warm.vae.safetensors"
    sha = hashlib.sha256((vaes / "warm.vae.safetensors").read_bytes()).hexdigest()
    assert pairs["VAE hash"] == sha[:10]
    for name in ("prefixed.pt", "diffusers-names.safetensors"):
        other, other_pairs = image(session, tmp_path / name, vae=name)
        assert np.abs(other - px).max() <= 1, f"{name} holds the same weights"
        assert other_pairs["VAE"] == name
    assert_same_weights(session, before)
    again, _ = image(session, tmp_path / "again", vae="Automatic")
    assert np.array_equal(again, base_px)
    none, _ = image(session, tmp_path / "none", vae="None")
    assert np.array_equal(none, base_px)


def test_unknown_vae_names_what_exists(session, vaes, tmp_path):
    with pytest.raises(UserError) as e:
        run(session, tmp_path, vae="nope")
    assert "warm.vae.safetensors" in str(e.value) and "Automatic" in str(e.value)


# -- clip skip, listing ----------------------------------------------------------------------


def test_clip_skip_lands_in_the_infotext(session, baseline, tmp_path):
    _, base_px, base_pairs = baseline
    assert "Clip skip" not in base_pairs
    px, pairs = image(session, tmp_path, clip_skip=2)
    assert pairs["Clip skip"] == "2"
    assert np.abs(px - base_px).mean() > 0.5


def test_listing_is_pure_python(tmp_path):
    (tmp_path / "models" / "Lora" / "a").mkdir(parents=True)
    (tmp_path / "models" / "LyCORIS").mkdir(parents=True)
    (tmp_path / "models" / "Lora" / "a" / "one.safetensors").write_bytes(b"x")
    (tmp_path / "models" / "Lora" / "Two.pt").write_bytes(b"x")
    (tmp_path / "models" / "Lora" / "notes.txt").write_bytes(b"x")
    (tmp_path / "models" / "LyCORIS" / "one.safetensors").write_bytes(b"x")  # shadowed
    (tmp_path / "models" / "LyCORIS" / "three.safetensors").write_bytes(b"x")
    names = [(e.name, e.path.parent.name) for e in list_loras(tmp_path / "models")]
    assert names == [("one", "a"), ("three", "LyCORIS"), ("Two", "Lora")]
    code = (
        "import sys, sdtui.extra_networks_index as m; "
        f"m.list_loras({str(tmp_path / 'models')!r}); m.list_vaes({str(tmp_path)!r}); "
        f"m.list_embeddings({str(tmp_path)!r}); m.hires_upscaler_choices({str(tmp_path)!r}); "
        "assert 'torch' not in sys.modules, 'listing imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_lora_reaches_weights_under_sequential_offload():
    """With accelerate's sequential offload the parameters sit on the meta device and the
    weights in the hooks: the LoRA must change those, and restore them exactly."""
    pytest.importorskip("accelerate")
    from accelerate import cpu_offload

    from sdtui.engine.lora import _Patch, apply_plan

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    x = torch.randn(1, 4)
    with torch.no_grad():
        before = model(x)
    cpu_offload(model, execution_device="cpu")
    assert model[0].weight.device.type == "meta"
    applied = apply_plan({0: (model[0], [_Patch("t", torch.ones(3, 1), torch.ones(1, 4), 0.5)])})
    with torch.no_grad():
        assert (model(x) - before).abs().max() > 0.1
        applied.restore()
        assert torch.equal(model(x), before)


# -- SDXL naming, without an SDXL model -------------------------------------------------------


def _sdxl_config(name: str):
    from sdtui.engine.configs import config_dir

    return config_dir("sdxl-base") / name


def test_sdxl_kohya_names_reach_the_diffusers_modules():
    """kohya trains SDXL on the original UNet: its LoRA keys use LDM names (input_blocks...);
    built on the meta device from the bundled SDXL config, so no weights are made."""
    import types

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdtui.engine.lora import build_module_index

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(
            UNet2DConditionModel.load_config(_sdxl_config("unet"))
        )
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(_sdxl_config("text_encoder")))
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig.from_pretrained(_sdxl_config("text_encoder_2"))
        )
    index = build_module_index(
        types.SimpleNamespace(unet=unet, text_encoder=te, text_encoder_2=te2)
    )
    expected = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (
            "unet",
            unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q,
        ),
        "lora_unet_output_blocks_2_2_conv": ("unet", unet.up_blocks[0].upsamplers[0].conv),
        "lora_unet_middle_block_1_proj_in": ("unet", unet.mid_block.attentions[0].proj_in),
        "lora_unet_input_blocks_1_0_in_layers_2": ("unet", unet.down_blocks[0].resnets[0].conv1),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (
            "text_encoder",
            te.encoder.layers[0].self_attn.q_proj,
        ),
        "lora_te2_text_model_encoder_layers_31_mlp_fc1": (
            "text_encoder_2",
            te2.text_model.encoder.layers[31].mlp.fc1,
        ),
    }
    for key, (component, module) in expected.items():
        found = index.get(key)
        assert found is not None and found[0] == component and found[1] is module, key


def test_sdxl_embedding_uses_clip_l_and_clip_g(tmp_path):
    """An SDXL embedding gives each encoder its own vectors: with the token rows of "a dog"
    as clip_l/clip_g, naming it encodes exactly as "a dog" does (hidden states and pooled)."""
    import types

    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from sdtui.engine.conditioning import encode_prompts
    from sdtui.engine.embeddings import load_embedding, text_pipe_with_embeddings
    from sdtui.extra_networks_index import EmbeddingEntry

    def tiny(cls, width):
        cfg = CLIPTextConfig(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            projection_dim=16,
            eos_token_id=49407,
            bos_token_id=49406,
        )
        return cls(cfg).eval()

    torch.manual_seed(0)
    pipe = types.SimpleNamespace(
        tokenizer=CLIPTokenizer.from_pretrained(_sdxl_config("tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(_sdxl_config("tokenizer_2")),
        text_encoder=tiny(CLIPTextModel, 32),
        text_encoder_2=tiny(CLIPTextModelWithProjection, 48),
    )
    ids = pipe.tokenizer("a dog", add_special_tokens=False)["input_ids"]
    rows = {
        "clip_l": pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone(),
        "clip_g": pipe.text_encoder_2.get_input_embeddings().weight[ids].detach().clone(),
    }
    from safetensors.torch import save_file

    save_file(rows, tmp_path / "xlstyle.safetensors")
    emb = load_embedding(EmbeddingEntry("xlstyle", tmp_path / "xlstyle.safetensors"))
    text_pipe, fitting = text_pipe_with_embeddings(pipe, [emb], print)
    assert text_pipe is not None and [e.name for e in fitting] == ["xlstyle"]
    named = encode_prompts(text_pipe, "photo of xlstyle", "", device="cpu")
    plain = encode_prompts(pipe, "photo of a dog", "", device="cpu")
    for key in plain:
        assert torch.equal(named[key], plain[key]), key
    other = encode_prompts(pipe, "photo of xlstyle", "", device="cpu")
    assert not torch.equal(other["prompt_embeds"], plain["prompt_embeds"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lora_in_half_precision_rounds_once_and_restores_bit_exact(dtype):
    from sdtui.engine.lora import _Patch, apply_plan

    torch.manual_seed(1)
    layer = torch.nn.Linear(16, 8).to(dtype)
    original = layer.weight.detach().clone()
    up, down = torch.randn(8, 4), torch.randn(4, 16)
    patches = [_Patch("a", up, down, 0.3), _Patch("b", up, down, -0.1)]
    applied = apply_plan({0: (layer, patches)})
    expected = (original.float() + 0.2 * (up @ down)).to(dtype)
    assert torch.allclose(layer.weight.float(), expected.float(), atol=1e-6, rtol=0)
    applied.restore()
    assert torch.equal(layer.weight, original)
