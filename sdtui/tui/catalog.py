"""What the form and the pickers offer from disk: checkpoints, upscalers, hires upscalers,
VAEs, LoRAs, embeddings. Pure Python, no textual, no torch.

Listing walks folders and reads checkpoint headers, so the app never does it before its first
frame: it starts with ``Catalog.placeholder`` (what needs no disk) and fills the real lists
in from a thread worker (``discover_catalog``) once the screen is up.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtui.config import Settings
from sdtui.safe_text import one_line

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
    # one line each for the job log: a checkpoint with a bad header, a list that failed
    problems: tuple[str, ...] = ()
    # (model name, family label) from the headers: the form shows a family's rows and preset
    families: tuple[tuple[str, str], ...] = ()

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


# a lister that has not answered by then is left out (a named pipe in a folder it reads, a
# network drive gone away): the others are shown; the stuck thread is a daemon thread
LISTING_TIMEOUT_S = 60.0


def _failure(what: str, e: BaseException) -> str:
    if isinstance(e, OSError):
        why = one_line(e.strerror or str(e)) or type(e).__name__
    else:
        why = f"{type(e).__name__}: {one_line(str(e))[:200]}"
    return f"{what} could not be listed ({why})"


def _gather(
    tasks: dict[str, tuple[str, Callable[[], Any]]], problems: list[str], timeout: float
) -> dict[str, Any]:
    """Run every lister at once, each in its own daemon thread; the results of those that
    finished (without raising) within ``timeout``. One that raises anything or hangs leaves
    the others as they are, and says so in ``problems``."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def run(key: str, fn: Callable[[], Any]) -> None:
        try:
            results[key] = fn()
        except BaseException as e:  # noqa: BLE001 - reported below, never raised
            errors[key] = e

    threads = [
        threading.Thread(target=run, args=(key, fn), name=f"sdtui-list-{key}", daemon=True)
        for key, (_, fn) in tasks.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    done = dict(results)
    for key, (what, _) in tasks.items():
        if key in done:
            continue
        error = errors.get(key)
        if error is not None:
            problems.append(_failure(what, error))
        else:
            problems.append(
                f"{what} could not be listed in {timeout:g} s (a named pipe or an unreachable "
                "drive in the folder?): not shown"
            )
    return done


def _where(settings: Settings, path: object) -> str:
    """A checkpoint's path as the user knows it: under the models folder when it is."""
    text = str(path)
    with contextlib.suppress(Exception):
        text = Path(str(path)).relative_to(Path(settings.models).parent).as_posix()
    return one_line(text)


def discover_catalog(
    settings: Settings, base: Catalog | None = None, *, timeout: float | None = None
) -> Catalog:
    """Everything on disk (slow: folder walks, checkpoint headers). Each list is found on
    its own: one that fails or hangs keeps what ``base`` had, and says why in ``problems``.
    A checkpoint whose header is bad (``ModelEntry.error``) is left out of the models and
    named in ``problems``."""
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
    problems: list[str] = []
    size_problems: list[str] = []

    def embeddings_with_sizes() -> tuple[list[str], list[tuple[str, int]]]:
        entries = list(list_embeddings(settings.embeddings))
        sizes: list[tuple[str, int]] = []
        for e in entries:
            try:
                n = embedding_vectors(e.path)
            except Exception as error:  # noqa: BLE001 - its size unknown, still listed
                size_problems.append(_failure(f"embedding {one_line(str(e.name))}", error))
                continue
            if n:
                sizes.append((e.name, n))
        return [e.name for e in entries], sizes

    found = _gather(
        {
            "models": ("the checkpoints", lambda: list(discover_models(settings.models))),
            "upscalers": (
                "the upscalers",
                lambda: [u.name for u in list_upscalers(settings.models)],
            ),
            "hires": ("the hires upscalers", lambda: list(hires_upscaler_choices(settings.models))),
            "vaes": ("the VAEs", lambda: list(vae_choices(settings.models))),
            "loras": ("the LoRAs", lambda: [e.name for e in list_loras(settings.models)]),
            "embeddings": ("the embeddings", embeddings_with_sizes),
        },
        problems,
        LISTING_TIMEOUT_S if timeout is None else timeout,
    )
    names: list[str] = [settings.default_model] if settings.default_model else []
    families: list[tuple[str, str]] = []
    for entry in found.get("models", ()):
        error = getattr(entry, "error", None)
        name = getattr(entry, "name", None)
        if error:  # a malformed header: not offered, named in the job log
            path = getattr(entry, "path", name)
            reason = str(error)
            if path is not None and reason.startswith(str(path)):  # the loader named it too
                reason = "it" + reason[len(str(path)) :]
            problems.append(f"{_where(settings, path)}: not listed, {one_line(reason)}")
        elif isinstance(name, str) and name:
            names.append(name)
            families.append((name, str(getattr(entry, "family", "?"))))
    models = _unique([*names, *base.models])
    if "demo" in models:  # the demo model last, as before
        models = [*(m for m in models if m != "demo"), "demo"]
    embeddings, sizes = found.get("embeddings", (list(base.embeddings), list(base.embedding_sizes)))
    problems.extend(size_problems)
    return Catalog(
        models,
        found.get("upscalers") or base.upscalers,
        found.get("hires", base.hires_upscalers),
        found.get("vaes", base.vaes),
        found.get("loras", base.loras),
        embeddings,
        complete=True,
        embedding_sizes=tuple(sizes),
        problems=tuple(dict.fromkeys(problems)),
        families=tuple(families),
    )
