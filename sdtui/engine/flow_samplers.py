"""A1111's k-diffusion samplers on Flux.1 / SD3.5, as Forge runs them.

Forge samples flow-matching models with the same k-diffusion functions as SD: the model's
velocity ``v`` becomes a denoised prediction ``x - sigma * v`` (k-diffusion's CONST
parameterisation; Forge ``backend/modules/k_prediction.py``), over the flow sigmas (1 at pure
noise, 0 at the image). So "DPM++ 2M" on Flux is ``sdtui.engine.ksampling.dpmpp_2m`` over
those sigmas, and "Euler" is diffusers' own FlowMatchEulerDiscreteScheduler step.

diffusers' FluxPipeline / StableDiffusion3Pipeline (and their img2img forms) keep doing
everything else - prompt encoding, true CFG, packing, img2img noising, decoding, the memory
hooks - through ``FlowKSampler``, a stand-in for their scheduler: the pipeline calls the
transformer once per entry of ``timesteps`` and hands each velocity to ``step``. The sampler
runs in a helper thread with a model function that, for each call, hands the latents to
evaluate back to the pipeline and waits for their velocity. ``timesteps`` lists exactly the
sigmas the sampler will ask for (a dry run over the schedule finds them: Heun and DPM2 ask for
two a step, the last step one), so the pipeline's loop and the sampler stay in step.

The sampler keeps its latents in fp32 between calls (the pipeline's bf16 copy is only what the
transformer reads), and its step noise comes from each image's own generator after the
pipeline drew the initial noise from it (A1111's ImageRNG), or from Brownian trees seeded per
image for the SDE samplers, so an image is the same alone or in a batch.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sdtui.engine import ksampling
from sdtui.engine.samplers import DISCARD_NEXT_TO_LAST_SIGMA, exponential_sigmas, karras_sigmas
from sdtui.engine.sampling import LatentBlend
from sdtui.samplers import FLOW_SAMPLER_NAMES

# Euler stays diffusers' own scheduler (bit-identical to raw diffusers); the rest run here.
# DDIM, PLMS and UniPC work in A1111's timestep space (alphas_cumprod), which a flow model
# does not have.
FLOW_SAMPLERS = FLOW_SAMPLER_NAMES

_ABORT = object()


class _Aborted(Exception):
    """The pipeline stopped (cancel, skip, out of memory): the sampler thread ends."""


# The smallest t of the sigma table Forge's schedules span: Flux's PredictionFlux has 10000
# entries (backend/modules/k_prediction.py), SD3's discrete flow table (ComfyUI's
# ModelSamplingDiscreteFlow, diffusers' sigma_min) num_train_timesteps = 1000.
FLUX_TABLE_T_MIN = 1e-4


def flow_schedule(
    base: Any,
    schedule: str,
    sampler: str,
    steps: int,
    *,
    mu: float | None = None,
    flux: bool = False,
) -> torch.Tensor:
    """The whole schedule (trailing 0, float32, CPU) ``sampler`` runs for ``steps`` steps on a
    flow model whose scheduler is ``base`` (its shift: static, or dynamic with the pipeline's
    ``mu``), as Forge's ``KDiffusionSampler.get_sigmas`` builds it:

    - Simple: the pipelines' own sigmas (FluxPipeline's ``linspace(1, 1/n, n)``, which is
      Forge's ``simple_scheduler`` over its table; SD3's scheduler default), shifted;
    - Karras / Exponential: k-diffusion's ``get_sigmas_karras`` / ``get_sigmas_exponential``
      between the table's ends, ``sigma_max`` = 1 and ``sigma_min`` = the shifted smallest t;
    - DPM2 and DPM2 a take one more sigma and drop the next-to-last (Forge's and A1111's
      ``discard_next_to_last_sigma``).

    Leaves ``base`` set to the run's schedule (``base.sigmas`` is the returned one's source
    for Simple)."""
    discard = sampler in DISCARD_NEXT_TO_LAST_SIGMA
    n = steps + 1 if discard else steps
    if schedule == "Simple":
        if flux:  # what FluxPipeline hands its scheduler
            base.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu, device="cpu")
        else:
            base.set_timesteps(num_inference_steps=n, mu=mu, device="cpu")
        out = base.sigmas.to(torch.float32).cpu()
    elif schedule in ("Karras", "Exponential"):
        train = int(base.config.get("num_train_timesteps", 1000))
        t_min = FLUX_TABLE_T_MIN if flux else 1 / train
        base.set_timesteps(sigmas=np.array([1.0, t_min]), mu=mu, device="cpu")
        sigma_max, sigma_min = (float(v) for v in base.sigmas[:2])
        make = karras_sigmas if schedule == "Karras" else exponential_sigmas
        out = torch.cat([make(n, sigma_min, sigma_max), torch.zeros(1, dtype=torch.float64)])
        out = out.to(torch.float32)
    else:
        raise ValueError(f"not a flow schedule: {schedule}")
    if discard:
        out = torch.cat([out[:-2], out[-1:]])
    return out


def call_sigmas(sampler: str, sigmas: torch.Tensor) -> list[float]:
    """The sigmas ``sampler`` evaluates the model at over ``sigmas`` (a dry run: which sigmas
    a sampler asks for depends on the schedule only)."""
    asked: list[float] = []

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        asked.append(float(sigma[0]))
        return torch.zeros_like(x)

    def noise(_a: Any = None, _b: Any = None) -> torch.Tensor:
        return torch.zeros(1, 1)

    ksampling.SIGMA_SAMPLERS[sampler](model, torch.zeros(1, 1), sigmas.double(), noise)
    return asked


class FlowKSampler:
    """A diffusers scheduler stand-in that runs one of A1111's k-diffusion samplers (see the
    module's doc). One instance serves one pipeline call at a time; ``close`` ends its thread
    whatever happened to the call."""

    order = 1

    def __init__(
        self,
        base: Any,
        sampler: str,
        *,
        noise_shape: tuple[int, ...],
        pack: Callable[[torch.Tensor], torch.Tensor] | None = None,
        start: int = 0,
        schedule: str = "Simple",
        flux: bool = False,
        source: str = "CPU",
        device: Any = "cpu",
    ) -> None:
        """``base``: the pipeline's FlowMatchEulerDiscreteScheduler (its sigmas, shift and
        config); ``schedule``: Simple, Karras or Exponential (``flow_schedule``), ``flux``
        whether the model is Flux; ``start``: the schedule steps an img2img job skips; ``noise_shape``: one
        image's step noise as A1111 draws it (the unpacked latent), ``pack`` turning a batch
        of those into the pipeline's layout (Flux packs 2x2 patches). ``generators`` and
        ``seeds`` are each batch's (set before its pipeline call). ``source``: the job's RNG
        (sdtui.engine.rng); other than CPU, img2img's noise is the first draw of a fresh
        generator of it per seed on ``device`` (A1111's ImageRNG), not the pipeline's."""
        if sampler not in ksampling.SIGMA_SAMPLERS:
            raise ValueError(f"not a sigma sampler: {sampler}")
        self.base = base
        self.config = base.config
        self.sampler = sampler
        self.schedule = schedule
        self.flux = flux
        self.source = source
        self.device = device
        self.generators: list[Any] = []
        self.seeds: list[int] = []
        self.noise_shape = noise_shape
        self.pack = pack
        self.start = start
        # inpainting: A1111's latent mask blend (sdtui.engine.sampling.LatentBlend) of the
        # denoised prediction after each call and of the result, with the init latents the
        # pipeline noises (``scale_noise`` sees them); ``fill`` changes those first (masked
        # content "latent noise" / "latent nothing")
        self.mask: torch.Tensor | None = None  # (1, 1, h, w), 1 = resampled
        self.fill: Callable[[torch.Tensor], torch.Tensor] | None = None
        # a variation seed where the pipeline draws the noise (img2img, the hires pass): the
        # variation seeds' noise (B, C, h, w) and the strength to slerp that draw toward it
        self.variation: tuple[torch.Tensor, float] | None = None
        self._full = torch.zeros(0)  # the whole schedule (the Brownian trees span it)
        self._blend: LatentBlend | None = None  # the mask and init latents, as laid out
        self.sigmas = torch.zeros(0)
        self.timesteps = torch.zeros(0)
        self._thread: threading.Thread | None = None
        self._requests: queue.Queue[tuple[str, Any, Any]] = queue.Queue()
        self._replies: queue.Queue[Any] = queue.Queue()

    # -- what the pipelines call -------------------------------------------------------------

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: Any = None,
        sigmas: Any = None,
        mu: float | None = None,
        timesteps: Any = None,
    ) -> None:
        self.close()
        if self.source != "CPU" and self.seeds:
            # each call (an out-of-memory retry too) starts its generators afresh, past the
            # first draw (txt2img's noise, handed over as latents; img2img redraws it)
            from sdtui.engine import rng

            self._start_generators()
            for g in self.generators:
                rng.randn(g, self.noise_shape)
        steps = len(sigmas) if sigmas is not None else int(num_inference_steps or 0)
        self._full = flow_schedule(
            self.base, self.schedule, self.sampler, steps, mu=mu, flux=self.flux
        )
        # the schedule's sigmas from where this job starts, ending at 0
        self.sigmas = self._full[self.start :]
        asked = call_sigmas(self.sampler, self.sigmas)
        steps = ksampling.model_calls(self.sampler, len(self.sigmas) - 1)
        if len(asked) != steps:  # a guard on the dry run, not a user error
            raise RuntimeError(f"{self.sampler}: {len(asked)} model calls, expected {steps}")
        train = float(self.config.get("num_train_timesteps", 1000))
        self.timesteps = (torch.tensor(asked, dtype=torch.float32) * train).to(device)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """The img2img pipelines' skip: ``start`` already holds it (see ``get_timesteps``)."""

    def get_timesteps(self, num_inference_steps: int, strength: float, device: Any) -> Any:
        """Stands in for the img2img pipelines' own ``get_timesteps``, which slices a
        one-call-a-step list: every call of the run, from ``start``."""
        return self.timesteps, len(self.timesteps)

    def scale_noise(self, sample: torch.Tensor, timestep: Any, noise: torch.Tensor) -> Any:
        """img2img's noised init latents at the first sigma run (diffusers' and Forge's flow
        noising: ``sigma * noise + (1 - sigma) * latents``)."""
        if self.fill is not None:
            sample = self.fill(sample)
        if self.source != "CPU" or self.variation is not None:  # A1111's ImageRNG.first
            noise = self._first_draw(noise)
        if self.mask is not None:
            init = sample.float()
            nmask = self.mask.to(init).expand(init.shape[0], init.shape[1], -1, -1)
            if self.pack is not None:
                init, nmask = self.pack(init), self.pack(nmask.contiguous())
            self._blend = LatentBlend(init, nmask)
        sigma = self.sigmas[0].to(sample.device, torch.float32)
        return (sigma * noise.float() + (1 - sigma) * sample.float()).to(sample.dtype)

    def _start_generators(self) -> None:
        """A fresh generator of ``source`` per seed (A1111's ImageRNG)."""
        from sdtui.engine import rng

        self.generators = [rng.create(self.source, s, self.device) for s in self.seeds]

    def _first_draw(self, noise: torch.Tensor) -> torch.Tensor:
        """The images' first noise, shaped and placed as ``noise``: with RNG CPU the
        pipeline's own draw (``noise``), else the first draw of fresh generators of
        ``source``, whose later draws are the step noise; slerped toward the variation
        seed's when there is one. (Unpacked: the img2img pipelines noise the latents before
        Flux packs them.)"""
        from sdtui.engine import rng
        from sdtui.engine.latents import slerp

        if self.source == "CPU":
            drawn = noise.float().cpu()
        else:
            self._start_generators()
            drawn = torch.stack([rng.randn(g, self.noise_shape).cpu() for g in self.generators])
        if self.variation is not None:
            sub, strength = self.variation
            drawn = torch.stack(
                [slerp(strength, drawn[i], sub[i].float()) for i in range(drawn.shape[0])]
            )
        return drawn.to(noise.device, noise.dtype)

    def _blended(self, latents: torch.Tensor) -> torch.Tensor:
        return latents if self._blend is None else self._blend(latents)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: Any,
        sample: torch.Tensor,
        return_dict: bool = False,
        **_: Any,
    ) -> tuple[torch.Tensor]:
        if self._thread is None:
            self._start(sample)
            kind, _x, _sigma = self._next()
            assert kind == "eval"
        self._replies.put(model_output.float())
        kind, x, _sigma = self._next()
        return (x.to(model_output.dtype),)

    # -- the sampler thread --------------------------------------------------------------------

    def _start(self, sample: torch.Tensor) -> None:
        x0 = sample.float()
        # on the CPU, as SD's sampling keeps them: comparing a CUDA sigma with 0 would wait
        # for the GPU at every step
        sigmas = self.sigmas
        noise = self._noise(x0, self._full)
        fn = ksampling.SIGMA_SAMPLERS[self.sampler]
        inference = torch.is_inference_mode_enabled()  # thread-local: carried over
        # this run's own queues: a thread that outlived close() cannot reach the next run's
        requests, replies = self._requests, self._replies

        def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            requests.put(("eval", x, sigma))
            v = replies.get()
            if v is _ABORT:
                raise _Aborted
            return self._blended(x - sigma.view(-1, *[1] * (x.ndim - 1)).to(x) * v)

        def body() -> None:
            try:
                with torch.inference_mode(inference):
                    out = self._blended(fn(model, x0, sigmas, noise))
                requests.put(("done", out, None))
            except _Aborted:
                return
            except BaseException as e:  # handed to the pipeline's thread, raised there
                requests.put(("error", e, None))

        self._thread = threading.Thread(target=body, name="sdtui-flow-sampler", daemon=True)
        self._thread.start()

    def _next(self) -> tuple[str, Any, Any]:
        kind, x, sigma = self._requests.get()
        if kind == "error":
            self._thread = None
            raise x
        if kind == "done":
            self._thread = None
        return kind, x, sigma

    def _noise(self, x: torch.Tensor, sigmas: torch.Tensor) -> ksampling.Noise:
        """The step noise; ``sigmas``: the whole schedule, which the Brownian trees span even
        where img2img runs its tail (A1111's sample_img2img, SD's sampling.sample)."""
        if self.sampler in ksampling.BROWNIAN:
            return ksampling.brownian_noise(x, sigmas, self.seeds)
        draw = ksampling.ImageNoise(self.generators, self.noise_shape)
        pack = self.pack

        def noise(_sigma: Any = None, _sigma_next: Any = None) -> torch.Tensor:
            batch = draw()
            return (pack(batch) if pack is not None else batch).to(x.device, x.dtype)

        return noise

    def close(self) -> None:
        """Ends a sampler thread a stopped pipeline call left waiting."""
        thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._replies.put(_ABORT)
            thread.join(timeout=10)
        self._requests = queue.Queue()
        self._replies = queue.Queue()
