"""Fault injection for tests and benches: the real torch out-of-memory error at the UNet's
forward and at the VAE decode, and NaN from the VAE, so the recovery paths run on any machine.

Off unless asked for, by ``EngineOptions.fault_injection`` or the ``SDTUI_FAULTS`` variable:
``"unet_oom:1,vae_oom:2,vae_nan:1"`` fires each fault that many times (``always``: every
time). Hooks go on the modules of a loaded pipeline; ``FaultInjector.remove()`` takes them off.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import torch

FAULTS = ("unet_oom", "vae_oom", "vae_nan")
ALWAYS = -1
ENV = "SDTUI_FAULTS"


def parse_spec(spec: str | None) -> dict[str, int]:
    """``"unet_oom:1,vae_nan:always"`` -> {"unet_oom": 1, "vae_nan": ALWAYS}."""
    counts: dict[str, int] = {}
    for part in (spec or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, _, count = part.partition(":")
        name = name.strip()
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}: use one of {', '.join(FAULTS)}")
        count = count.strip() or "1"
        counts[name] = ALWAYS if count == "always" else int(count)
    return counts


def spec_from_env_or(option: str | None) -> str | None:
    return option if option else os.environ.get(ENV) or None


class FaultInjector:
    """Counts of faults still to fire, shared by every model the engine loads."""

    def __init__(self, spec: str | None) -> None:
        self.counts = parse_spec(spec)
        self.fired: dict[str, int] = dict.fromkeys(FAULTS, 0)
        self._lock = threading.Lock()
        self._handles: list[Any] = []

    def __bool__(self) -> bool:
        return bool(self.counts)

    def arm(self, spec: str) -> None:
        with self._lock:
            self.counts = parse_spec(spec)

    def disarm(self) -> None:
        with self._lock:
            self.counts = {}

    def take(self, name: str) -> bool:
        """True (and one fewer left) when fault ``name`` should fire now."""
        with self._lock:
            left = self.counts.get(name, 0)
            if left == 0:
                return False
            if left > 0:
                self.counts[name] = left - 1
            self.fired[name] += 1
            return True

    def install(self, pipe: Any) -> FaultInjector:
        """Hook the pipeline's UNet and VAE decoder (shared by its txt2img and img2img views)."""
        self.remove()
        self._handles.append(pipe.unet.register_forward_pre_hook(self._unet_pre))
        decoder = pipe.vae.decoder  # tiled and untiled decodes both call it
        self._handles.append(decoder.register_forward_pre_hook(self._vae_pre))
        self._handles.append(decoder.register_forward_hook(self._vae_post))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- hooks ------------------------------------------------------------------------------

    def _unet_pre(self, module: Any, args: Any) -> None:
        if self.take("unet_oom"):
            raise _oom("the UNet forward")

    def _vae_pre(self, module: Any, args: Any) -> None:
        if self.take("vae_oom"):
            raise _oom("the VAE decode")

    def _vae_post(self, module: Any, args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if self.take("vae_nan"):
            return torch.full_like(output, float("nan"))
        return None


def _oom(where: str) -> torch.OutOfMemoryError:
    # The very class CUDA raises (torch.cuda.OutOfMemoryError), with its usual wording.
    return torch.cuda.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of "
        f"8.00 GiB of which 1.00 GiB is free. (injected by SDTUI_FAULTS in {where})"
    )
