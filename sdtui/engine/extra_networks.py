"""What a job applies beyond the checkpoint, for that job only: the VAE it picks, the LoRAs
its prompt tags, the embeddings its prompt names; and the infotext pairs that record them
(``VAE hash``, ``VAE``, ``Lora hashes``, ``TI hashes``), in A1111's formats.

``job_extras(session, params, ctx)`` is the context manager behind
``ModelSession.job_scope``: everything it changes is put back when the job ends, however it
ends (done, cancelled, failed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from sdtui.engine.embeddings import (
    Embedding,
    find_used,
    load_embedding,
    text_pipe_with_embeddings,
    ti_hashes,
)
from sdtui.engine.job import JobContext, job_settings
from sdtui.engine.lora import LoraRequest, apply_plan, build_module_index, plan_patches
from sdtui.engine.vae import swap_vae
from sdtui.extra_networks_index import (
    AUTOMATIC,
    NO_VAE,
    EmbeddingEntry,
    VaeEntry,
    automatic_vae,
    hashes_value,
    list_embeddings,
    list_loras,
    lora_hash,
    resolve_lora,
    resolve_vae,
    vae_hash,
)
from sdtui.params import GenerationParams
from sdtui.prompt_syntax import extract_lora_tags
from sdtui.upscalers import check_hires_upscaler


def pick_vae(choice: str, checkpoint: Any, models_dir: Any) -> VaeEntry | None:
    """The VAE file a job uses; None for the checkpoint's own."""
    name = (choice or AUTOMATIC).strip()
    if name.lower() == AUTOMATIC.lower():
        return automatic_vae(checkpoint, models_dir)
    if name.lower() == NO_VAE.lower():
        return None
    return resolve_vae(name, models_dir)


def _cached_embedding(
    cache: dict[tuple[str, int, int], Embedding], entry: EmbeddingEntry
) -> Embedding:
    st = entry.path.stat()
    key = (str(entry.path.resolve()), st.st_size, st.st_mtime_ns)
    emb = cache.get(key)
    if emb is None or emb.name != entry.name:
        emb = load_embedding(entry)
        cache[key] = emb
    return emb


@contextmanager
def job_extras(session: Any, p: GenerationParams, ctx: JobContext) -> Iterator[dict[str, object]]:
    """Apply ``p``'s VAE, LoRAs and embeddings to the ModelSession ``session`` (which keeps
    their caches: ``vae_cache``, ``lora_index``, ``embeddings``; and ``text_pipe`` while the
    embeddings apply); yields the infotext pairs."""
    settings = job_settings(session, ctx)
    pipe = session.txt2img

    def warn(text: str) -> None:
        ctx.log(text, "warning")

    pairs: dict[str, object] = {}
    with ExitStack() as undo:
        if p.enable_hr and p.init_image is None:
            check_hires_upscaler(p.hr_upscaler, settings.models)  # fail before the first pass

        # VAE
        vae = pick_vae(p.vae, getattr(session, "path", None), settings.models)
        if vae is not None:
            swapped = swap_vae(pipe.vae, vae.path, session.vae_cache)
            undo.callback(swapped.restore)
            pairs["VAE hash"] = vae_hash(vae.path)
            pairs["VAE"] = vae.name

        # LoRAs (A1111 reads them from the prompt; the negative prompt's tags are only removed)
        _, tags = extract_lora_tags(p.prompt)
        if tags:
            entries = list_loras(settings.models)
            requests = []
            for tag in tags:
                entry = resolve_lora(tag.name, entries, settings.models)
                unet = tag.weight if tag.unet_weight is None else tag.unet_weight
                requests.append(LoraRequest(tag.name, entry.path, tag.weight, unet))
            cached = session.lora_index
            if cached is None or cached[0] is not pipe.unet:
                cached = (pipe.unet, build_module_index(pipe))
                session.lora_index = cached
            plan = plan_patches(requests, cached[1], warn)
            applied = apply_plan(plan)
            undo.callback(applied.restore)
            hashes = {r.name: lora_hash(r.path) for r in requests}  # a name given twice: once
            pairs["Lora hashes"] = hashes_value(hashes.items())

        # textual-inversion embeddings named by the prompt or the negative prompt
        embedding_entries = list_embeddings(settings.embeddings)
        used = find_used(pipe.tokenizer, embedding_entries, p.prompt, p.negative_prompt)
        if used:
            loaded = [_cached_embedding(session.embeddings, e) for e in used]
            text_pipe, fitting = text_pipe_with_embeddings(pipe, loaded, warn)
            if text_pipe is not None:
                session.text_pipe = text_pipe
                undo.callback(setattr, session, "text_pipe", None)
                pairs["TI hashes"] = hashes_value(ti_hashes(fitting))

        yield pairs
