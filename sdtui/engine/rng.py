"""Where a job's random numbers come from: A1111's "Random number generator source" setting
(Settings > Sampler parameters, ``randn_source``), written to the infotext as ``RNG``.

- ``CPU``: torch's CPU generator; the same picture on any machine.
- ``GPU``: A1111's default. On an NVIDIA card torch's CUDA generator; everywhere else
  (a CPU, or a Mac) the ``NV`` generator below, which draws what the CUDA one draws, so a
  PNG made with A1111's defaults on an NVIDIA card comes out the same here. (A1111 itself
  falls back to the CPU generator on a Mac and draws on the CPU device without a GPU; the
  pictures people share with ``GPU`` come from NVIDIA cards.)
- ``NV``: A1111's ``modules/rng_philox.py``: NVIDIA's Philox4x32-10 counter generator and
  the Box-Muller transform that ``torch.randn(..., device="cuda")`` uses, computed with
  numpy on the CPU. Each ``randn`` call is one counter offset; element ``i`` of a draw is
  the first normal of the Philox block at ``(offset, 0, i, 0)`` under the seed's key.
  CUDA's draw equals it while a tensor has no more elements than the card runs threads at
  once (about 270 000 on an H100: every SD1/SD2/SDXL latent and a Flux latent at 1024x1024),
  as A1111 notes.

The SDE samplers' Brownian noise is drawn as an NVIDIA card draws it whatever the source
(``card_brownian``): A1111 draws it on the card with any RNG setting.

A generator here is a ``torch.Generator`` or a ``Philox``; both have ``initial_seed``,
``get_state`` and ``set_state`` (the memory ladder rewinds them), and ``randn(g, shape)``
draws from either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sdtui.params import RNG_SOURCES

# Philox4x32-10's multipliers and Weyl key increments (Salmon et al. 2011; cuRAND)
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
# cuRAND's uniform scaling as float32 constants (2**-32, and 2**-32 * 2pi), as
# rng_philox.py holds them: one-element float32 arrays, so the uint32 counters promote to
# float64 in the products, exactly as there
_TWO_POW32_INV = np.array([2.3283064e-10], dtype=np.float32)
_TWO_POW32_INV_2PI = np.array([2.3283064e-10 * 6.2831855], dtype=np.float32)


def philox4x32(counter: np.ndarray, key0: int, key1: int, rounds: int = 10) -> np.ndarray:
    """Philox4x32 over a (4, N) uint32 counter array under the key (key0, key1); returns
    the (4, N) output. Words are held in uint64 so each 32x32-bit product is exact."""
    c0, c1, c2, c3 = (counter[i].astype(np.uint64) for i in range(4))
    m0, m1 = np.uint64(_M0), np.uint64(_M1)
    shift, mask = np.uint64(32), np.uint64(_MASK32)
    for r in range(rounds):
        k0 = np.uint64((key0 + r * _W0) & _MASK32)
        k1 = np.uint64((key1 + r * _W1) & _MASK32)
        p0 = c0 * m0
        p1 = c2 * m1
        c0, c1, c2, c3 = (p1 >> shift) ^ c1 ^ k0, p1 & mask, (p0 >> shift) ^ c3 ^ k1, p0 & mask
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


def _box_muller_first(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The first of the two normals the Box-Muller transform makes of two uint32 arrays."""
    u = x * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = y * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    s = np.sqrt(-2.0 * np.log(u))
    return (s * np.sin(v)).astype(np.float32)


class Philox:
    """A1111's ``rng_philox.Generator``: what ``torch.randn(shape, device="cuda")`` draws
    after ``torch.Generator("cuda").manual_seed(seed)``, on the CPU."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self.offset = 0

    def initial_seed(self) -> int:
        return self.seed

    def get_state(self) -> int:
        return self.offset

    def set_state(self, state: int) -> None:
        self.offset = int(state)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= int(d)
        if n > 2**32:
            raise ValueError(f"the NV generator draws at most 2**32 numbers at once, not {n}")
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.offset & _MASK32
        counter[1] = (self.offset >> 32) & _MASK32
        counter[2] = np.arange(n, dtype=np.uint32)
        self.offset += 1
        key = self.seed & (2**64 - 1)
        g = philox4x32(counter, key & _MASK32, key >> 32)
        return torch.from_numpy(_box_muller_first(g[0], g[1]).reshape(tuple(shape)))


Generator = torch.Generator | Philox


def check_source(source: str) -> str:
    if source not in RNG_SOURCES:
        raise ValueError(f"RNG {source!r}: pick one of {', '.join(RNG_SOURCES)}")
    return source


def uses_philox(source: str, device: Any = "cpu") -> bool:
    """Whether ``source`` draws with the NV generator on ``device`` (GPU off NVIDIA cards)."""
    check_source(source)
    return source == "NV" or (source == "GPU" and torch.device(device).type != "cuda")


def create(source: str, seed: int, device: Any = "cpu") -> Generator:
    """A fresh generator for ``seed`` (A1111 ``rng.create_generator``)."""
    if uses_philox(source, device):
        return Philox(seed)
    where = torch.device(device) if source == "GPU" else torch.device("cpu")
    return torch.Generator(where).manual_seed(int(seed))


def fresh(like: Generator, seed: int) -> Generator:
    """A new generator of ``like``'s kind (and device) for ``seed``."""
    if isinstance(like, Philox):
        return Philox(seed)
    return torch.Generator(like.device).manual_seed(int(seed))


def randn(g: Generator, shape: Sequence[int]) -> torch.Tensor:
    """The next draw of ``shape`` from ``g``, float32 (on the CPU for CPU and NV, on the
    card for a CUDA generator)."""
    if isinstance(g, Philox):
        return g.randn(shape)
    return torch.randn(tuple(shape), generator=g, device=g.device)


def draw(source: str, seed: int, shape: Sequence[int], device: Any = "cpu") -> torch.Tensor:
    """A seed's first draw (A1111 ``rng.randn`` / ``randn_local``), on the CPU."""
    return randn(create(source, seed, device), shape).cpu()


def _philox_randn(original: Any) -> Any:
    def _randn(size: Any, dtype: Any, device: Any, seed: Any) -> torch.Tensor:
        if dtype != torch.float32 or torch.device(device).type == "cuda":
            return original(size, dtype, device, seed)
        return Philox(int(seed) & (2**64 - 1)).randn(tuple(size)).to(device)

    return _randn


@contextlib.contextmanager
def card_brownian(device: Any) -> Iterator[None]:
    """torchsde's Brownian trees (the SDE samplers' step noise) draw each node with
    ``torch.randn`` from a generator on the latents' device, seeded per node: A1111 on an
    NVIDIA card draws them on the card, whatever its RNG setting. Off a CUDA device they are
    drawn here as the card would (the NV generator), so the SDE samplers give the card's
    picture on any machine, as the rest of a job's noise does."""
    if torch.device(device).type == "cuda":
        yield
        return
    from torchsde._brownian import brownian_interval

    original = brownian_interval._randn
    brownian_interval._randn = _philox_randn(original)
    try:
        yield
    finally:
        brownian_interval._randn = original
