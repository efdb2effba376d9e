"""The out-of-memory ladder of a Flux.1 / SD3.5 job, in sdtui.engine.memory's words and
Forge's order: free the cache, the text encoders (T5 first) off the GPU once the prompts are
encoded, tiled VAE decode, model CPU offload, sequential offload, then a message."""

from __future__ import annotations

import math
from typing import Any

import torch

DIT_RUNG_WORDS = {
    "encoders_off": "text encoders on the CPU after encoding",
    "tiled_vae": "tiled VAE decode",
    "offload": "model offload",
    "sequential": "sequential offload",
}


class DitLadder:
    """Runs a DiT pipeline call, climbing on out-of-memory errors: free the cache, then the
    text encoders (T5 first of all: the largest) off the GPU once the prompts are encoded,
    tiled and sliced VAE decode, model CPU offload, sequential offload, then a message. Each
    retry draws the same noise (the generators are rewound); what a rung turns on stays on
    for the rest of the job, and ``restore()`` turns it off."""

    RUNGS = ("encoders_off", "tiled_vae", "offload", "sequential")

    def __init__(
        self, pipe: Any, *, device: str, baseline: str, width: int, height: int, log: Any
    ) -> None:
        self.pipe, self.device, self.baseline, self.log = pipe, device, baseline, log
        self.width, self.height = width, height
        self.batch = 1
        self.applied: list[str] = []
        self.climbs: list[str] = []
        self._freed_logged = False
        self._cuda = torch.device(device).type == "cuda"

    def __enter__(self) -> DitLadder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.restore()

    def run(self, call: dict[str, Any]) -> Any:
        from sdtui.engine.memory import is_oom

        self.batch = int(call.get("num_images_per_prompt") or 1)
        first_try = True
        while True:
            generators = call.get("generator") or []
            states = [g.get_state() for g in generators]
            try:
                return self._call(call)
            except Exception as e:
                if not is_oom(e):
                    raise
                detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            # outside the except block: the error's frames (and their tensors) are gone
            for g, state in zip(generators, states, strict=True):
                g.set_state(state)  # a retry draws the same noise as an unbroken run
            self._recover(detail, first_try)
            first_try = False

    def run_on(self, pipe: Any, call: dict[str, Any]) -> Any:
        """``run`` on another view of the same components (hires fix's img2img pass): the
        rungs climbed so far apply to it, as they are on the shared modules."""
        own, self.pipe = self.pipe, pipe
        size = self.width, self.height
        self.width, self.height = int(call["width"]), int(call["height"])
        try:
            return self.run(call)
        finally:
            self.pipe = own
            self.width, self.height = size

    def _call(self, call: dict[str, Any]) -> Any:
        offloaded = "offload" in self.applied or "sequential" in self.applied
        if "encoders_off" not in self.applied or offloaded or self.baseline != "normal":
            return self.pipe(**call).images
        return self.pipe(**self._encoded(call)).images

    def _encoders(self) -> list[Any]:
        names = ("text_encoder_3", "text_encoder_2", "text_encoder")  # T5 first
        return [m for n in names if (m := getattr(self.pipe, n, None)) is not None]

    def _encoded(self, call: dict[str, Any]) -> dict[str, Any]:
        """``call`` with the prompts encoded (text encoders on the GPU for that alone, then
        back on the CPU), so the transformer and the VAE have the GPU to themselves."""
        from sdtui.engine.memory import free_caches

        pipe, device = self.pipe, torch.device(self.device)
        encoders = self._encoders()
        for module in encoders:
            module.to(device)
        n = int(call.get("num_images_per_prompt") or 1)
        rest = {
            k: v
            for k, v in call.items()
            if k not in ("prompt", "negative_prompt", "true_cfg_scale")
        }
        rest["num_images_per_prompt"] = 1  # the embeddings are per image already
        length = call["max_sequence_length"]
        try:
            if hasattr(pipe, "text_encoder_3"):  # SD3
                cfg = float(call.get("guidance_scale", 1.0)) > 1
                pe, npe, ppe, nppe = pipe.encode_prompt(
                    call["prompt"],
                    None,
                    None,
                    device=device,
                    num_images_per_prompt=n,
                    do_classifier_free_guidance=cfg,
                    negative_prompt=call.get("negative_prompt"),
                    max_sequence_length=length,
                )
                rest |= dict(prompt_embeds=pe, pooled_prompt_embeds=ppe)
                if cfg:
                    rest |= dict(negative_prompt_embeds=npe, negative_pooled_prompt_embeds=nppe)
            else:
                pe, ppe, _ = pipe.encode_prompt(
                    call["prompt"],
                    device=device,
                    num_images_per_prompt=n,
                    max_sequence_length=length,
                )
                rest |= dict(prompt_embeds=pe, pooled_prompt_embeds=ppe)
                if "true_cfg_scale" in call:
                    npe, nppe, _ = pipe.encode_prompt(
                        call["negative_prompt"],
                        device=device,
                        num_images_per_prompt=n,
                        max_sequence_length=length,
                    )
                    rest |= dict(
                        true_cfg_scale=call["true_cfg_scale"],
                        negative_prompt_embeds=npe,
                        negative_pooled_prompt_embeds=nppe,
                    )
        finally:
            for module in encoders:
                module.to("cpu")
            free_caches()
        return rest

    def _recover(self, detail: str, first_try: bool) -> None:
        from sdtui.engine.memory import MemoryExhausted, free_caches

        free_caches()
        if first_try:
            self.climbs.append("free")
            if not self._freed_logged:  # each rung logged once a job
                self._freed_logged = True
                self.log(
                    "out of memory while sampling: freed cached memory, trying again", "warning"
                )
            return
        for rung in self.RUNGS:
            if rung not in self.applied and self._usable(rung):
                self._apply(rung)
                return
        raise MemoryExhausted(self._failure_message(), detail=detail)

    def _usable(self, rung: str) -> bool:
        from sdtui.engine.memory import has_accelerate

        if rung == "encoders_off":
            return self.baseline == "normal"
        if rung == "tiled_vae":
            return hasattr(self.pipe.vae, "enable_tiling")
        if rung == "offload":
            return self._cuda and self.baseline == "normal" and has_accelerate()
        return self._cuda and self.baseline != "lowest" and has_accelerate()

    def _apply(self, rung: str) -> None:
        self.climbs.append(rung)
        self.applied.append(rung)
        if rung == "encoders_off":
            self.log(
                "still out of memory: encoding the prompts, then moving the text encoders "
                "(T5 first) to the CPU",
                "warning",
            )
        elif rung == "tiled_vae":
            self.pipe.vae.enable_tiling()
            self.pipe.vae.enable_slicing()
            self.log("still out of memory: decoding the VAE in tiles", "warning")
        elif rung == "offload":
            self.pipe.enable_model_cpu_offload(device=self.device)
            self.log(
                "still out of memory: moving idle model parts to the CPU (model offload)", "warning"
            )
        else:
            if "offload" in self.applied or self.baseline == "low":
                self.pipe.remove_all_hooks()  # model offload's hooks first, on the CPU
                self.pipe.to("cpu")
            self.pipe.enable_sequential_cpu_offload(device=self.device)
            self.log(
                "still out of memory: streaming the layers to the GPU one by one (sequential "
                "offload, slow)",
                "warning",
            )

    def _failure_message(self) -> str:
        tried = [DIT_RUNG_WORDS[r] for r in self.applied] or ["freed caches"]
        if self.baseline in ("low", "lowest"):
            tried.append(f"memory mode {self.baseline}")
        what = tried[0] if len(tried) == 1 else ", ".join(tried[:-1]) + " and " + tried[-1]
        advice = ["batch size 1"] if self.batch > 1 else []
        side = int(math.sqrt(self.width * self.height / 2)) // 64 * 64
        if side >= 256:
            advice.append(f"a smaller size such as {side}x{side}")
        if self._cuda and self.baseline != "lowest" and "sequential" not in self.applied:
            advice.append("--memory-mode lowest")
        if not advice:
            advice.append("closing other programs" + (" using the GPU" if self._cuda else ""))
        return (
            f"out of memory even with {what} at {self.width}x{self.height} batch {self.batch}: "
            f"try {' or '.join(advice)}"
        )

    def restore(self) -> None:
        """Turn off what the ladder turned on, so the next job runs at full speed."""
        from sdtui.engine.memory import free_caches, unplace_pipeline

        if "tiled_vae" in self.applied:
            self.pipe.vae.disable_tiling()
            self.pipe.vae.disable_slicing()
        if "offload" in self.applied or "sequential" in self.applied:
            unplace_pipeline(self.pipe, "low", self.device)  # hooks off, weights put back
            if self.baseline == "low":
                self.pipe.to("cpu")
                self.pipe.enable_model_cpu_offload(device=self.device)
        elif "encoders_off" in self.applied and self._cuda:
            for module in self._encoders():
                module.to(self.device)
        if self.applied:
            used = ", ".join(DIT_RUNG_WORDS[r] for r in self.applied)
            self.log(f"memory settings back to normal after the job (it needed {used})", "info")
            free_caches()
        self.applied.clear()
