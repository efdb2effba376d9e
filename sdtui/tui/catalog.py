"""What the form and the pickers offer from disk: checkpoints, upscalers, hires upscalers,
VAEs, LoRAs, embeddings. Pure Python, no textual, no torch.

Listing walks folders and reads checkpoint headers, so the app never does it before its first
frame: it starts with ``Catalog.placeholder`` (what needs no disk) and fills the real lists
in from a thread worker (``discover_catalog``) once the screen is up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from sdtui.config import Settings

BUILTIN_UPSCALERS: tuple[str, ...] = ("Lanczos", "Nearest")


def _unique(names: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(n for n in names if n))


@dataclass(frozen=True)
class Catalog:
    models: list[str] = field(default_factory=lambda: ["demo"])
    upscalers: list[str] = field(default_factory=lambda: list(BUILTIN_UPSCALERS))
    hires_upscalers: list[str] = field(default_factory=list)
    vaes: list[str] = field(default_factory=list)
    loras: list[str] = field(default_factory=list)
    embeddings: list[str] = field(default_factory=list)
    complete: bool = False  # False: only what needed no disk (before discovery ran)
    # (name, vector count) of each embedding whose size could be read: the token counter's
    embedding_sizes: tuple[tuple[str, int], ...] = ()

    @classmethod
    def placeholder(cls, models: Sequence[str] = (), upscalers: Sequence[str] = ()) -> Catalog:
        from sdtui.extra_networks_index import HIRES_LATENT_UPSCALERS, NO_VAE, VAE_CHOICES_FIXED

        ups = _unique(upscalers) or list(BUILTIN_UPSCALERS)
        return cls(
            models=_unique([*models, "demo"]),
            upscalers=ups,
            hires_upscalers=_unique([*HIRES_LATENT_UPSCALERS, NO_VAE, *ups]),
            vaes=list(VAE_CHOICES_FIXED),
        )


def discover_catalog(settings: Settings, base: Catalog | None = None) -> Catalog:
    """Everything on disk (slow: folder walks, checkpoint headers); a folder that cannot be
    read gives what ``base`` had."""
    from sdtui.extra_networks_index import (
        embedding_vectors,
        hires_upscaler_choices,
        list_embeddings,
        list_loras,
        vae_choices,
    )
    from sdtui.model_index import discover_models
    from sdtui.upscalers import list_upscalers

    base = base or Catalog.placeholder()
    models = list(base.models)
    upscalers, hires, vaes = base.upscalers, base.hires_upscalers, base.vaes
    loras: list[str] = []
    embeddings: list[str] = []
    found: list[str] = [settings.default_model] if settings.default_model else []
    with contextlib.suppress(OSError):
        found += [e.name for e in discover_models(settings.models)]
    models = _unique([*found, *models])
    if "demo" in models:  # the demo model last, as before
        models = [*(m for m in models if m != "demo"), "demo"]
    with contextlib.suppress(OSError):
        upscalers = [u.name for u in list_upscalers(settings.models)]
    with contextlib.suppress(OSError):
        hires = hires_upscaler_choices(settings.models)
    with contextlib.suppress(OSError):
        vaes = vae_choices(settings.models)
    with contextlib.suppress(OSError):
        loras = [e.name for e in list_loras(settings.models)]
    sizes: list[tuple[str, int]] = []
    with contextlib.suppress(OSError):
        entries = list_embeddings(settings.embeddings)
        embeddings = [e.name for e in entries]
        for e in entries:
            n = embedding_vectors(e.path)
            if n:
                sizes.append((e.name, n))
    return Catalog(
        models, upscalers, hires, vaes, loras, embeddings, complete=True, embedding_sizes=tuple(sizes)
    )
