"""Per-step conditioning for prompt editing and alternation (A1111's `[from:to:when]`, `[a|b]`).

Why: a scheduled prompt changes the text the UNet sees during sampling. As in A1111, each
distinct text of a batch is encoded once (PromptEncoder's cache), and every denoiser call
picks, per image, the entry of its schedule whose end step is the first at or after the
call index (A1111's `reconstruct_cond_batch`). The same holds for negative prompts.

A1111's counting, kept here so a pasted prompt switches where it switches there:
- the counter is the number of denoiser calls so far in this pass (`CFGDenoiser.step`),
  starting at 0 in each pass, img2img's shortened run included;
- schedules are laid out over `SamplerData.total_steps(steps)`: twice the steps for the
  second-order samplers (Heun, DPM2, DPM2 a, DPM++ SDE), which call the model twice a step;
- hires fix's second pass uses a schedule that continues the first pass's timeline
  (prompt_schedule's `hires_steps`), over `total_steps(hr_second_pass_steps or steps)`.

Prompts without scheduling syntax never come here (`needs_steps`), so their images are
exactly what the fixed conditioning gives.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from library.sampling.conditioning import PromptEncoder
from library.sampling.denoiser import CFGDenoiser, DiscreteDenoiser
from library.sampling.prompt_schedule import has_schedule, prompt_schedule, text_at_step

# A1111 marks these samplers {"second_order": True} (modules/sd_samplers_kdiffusion.py), which doubles
# SamplerData.total_steps; the Karras variants are the same functions on another schedule.
SECOND_ORDER = frozenset({"Heun", "DPM2", "DPM2 Karras", "DPM2 a", "DPM2 a Karras", "DPM++ SDE", "DPM++ SDE Karras"})


def total_steps(sampler: str, steps: int) -> int:
    """A1111's SamplerData.total_steps: the length of the prompt-editing timeline for `steps`."""
    from library.sampling.sampler_registry import resolve_sampler

    return steps * 2 if resolve_sampler(sampler).name in SECOND_ORDER else steps


def needs_steps(prompts: Sequence[str], negatives: Sequence[str]) -> bool:
    return any(has_schedule(p) for p in [*prompts, *negatives])


def _row(batch, i: int):
    """Row i of a conditioning batch: a tensor, or a structure with `hidden`/`pooled` (SDXL's)."""
    if hasattr(batch, "hidden"):
        return type(batch)(batch.hidden[i:i + 1], batch.pooled[i:i + 1])
    return batch[i:i + 1]


def _cat(rows: list):
    return type(rows[0]).cat(rows) if hasattr(rows[0], "hidden") else torch.cat(rows)


class StepConditioning:
    """Schedules for a batch's prompts and negative prompts, and their encodings, for one pass.

    The distinct texts go through the encoder's own `encode_batch` once, so padding to one
    length (the empty prompt's chunk) and any family rule (SDXL's zero empty negative) are the
    same as for fixed prompts.
    """

    def __init__(self, encoder: PromptEncoder, prompts: Sequence[str], negatives: Sequence[str],
                 clip_skip: int | None, steps: int, hires_steps: int | None = None) -> None:
        self.encoder = encoder
        self.prompts, self.negatives = list(prompts), list(negatives)
        self.clip_skip = clip_skip
        self.steps, self.hires_steps = steps, hires_steps
        self.cond_schedules = [prompt_schedule(p, steps, hires_steps) for p in self.prompts]
        self.uncond_schedules = [prompt_schedule(n, steps, hires_steps) for n in self.negatives]
        cond_texts = list(dict.fromkeys(t for sched in self.cond_schedules for _end, t in sched))
        uncond_texts = list(dict.fromkeys(t for sched in self.uncond_schedules for _end, t in sched))
        conds, unconds = encoder.encode_batch(cond_texts, uncond_texts, clip_skip)
        # one padded row per distinct text and side: every call of every image takes one of these
        self.cond_rows = {t: _row(conds, i) for i, t in enumerate(cond_texts)}
        self.uncond_rows = {t: _row(unconds, i) for i, t in enumerate(uncond_texts)}
        self.used: list[tuple[list[str], list[str]]] = []  # texts per call (cond, uncond), for tests and logs

    def for_hires(self, first_pass_steps: int, hires_steps: int) -> StepConditioning:
        """The same prompts on hires fix's second-pass timeline."""
        return StepConditioning(self.encoder, self.prompts, self.negatives, self.clip_skip,
                                first_pass_steps, hires_steps)

    def texts_at(self, call: int) -> tuple[list[str], list[str]]:
        return ([text_at_step(s, call) for s in self.cond_schedules],
                [text_at_step(s, call) for s in self.uncond_schedules])

    def batch_at(self, call: int):
        """(cond, uncond) batches for the 0-based denoiser call `call`, on the CPU."""
        cond_texts, uncond_texts = self.texts_at(call)
        return _cat([self.cond_rows[t] for t in cond_texts]), _cat([self.uncond_rows[t] for t in uncond_texts])

    def at(self, call: int, device: torch.device | str | None = None):
        """(cond, uncond) for the 0-based denoiser call `call`, recorded in `used`."""
        self.used.append(self.texts_at(call))
        cond, uncond = self.batch_at(call)
        return cond.to(device), uncond.to(device)


class ScheduledCFGDenoiser(CFGDenoiser):
    """CFGDenoiser whose cond/uncond are picked per call from a StepConditioning."""

    def __init__(self, inner: DiscreteDenoiser, steps: StepConditioning, cfg_scale: float,
                 guidance_rescale: float = 0.0, device: torch.device | str | None = None) -> None:
        first_cond, first_uncond = steps.batch_at(0)
        super().__init__(inner, first_cond.to(device), first_uncond.to(device), cfg_scale, guidance_rescale)
        self.steps = steps
        self.device = device
        self.step = 0  # A1111's CFGDenoiser.step: denoiser calls so far in this pass

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.cond, self.uncond = self.steps.at(self.step, self.device)
        self.step += 1
        return super().__call__(x, sigma)


def cfg_denoiser(inner: DiscreteDenoiser, cond, uncond, cfg_scale: float, guidance_rescale: float,
                 device: torch.device | str) -> CFGDenoiser:
    """The CFG denoiser for fixed tensors, or for a StepConditioning (then `uncond` is None)."""
    if isinstance(cond, StepConditioning):
        return ScheduledCFGDenoiser(inner, cond, cfg_scale, guidance_rescale, device)
    return CFGDenoiser(inner, cond.to(device), uncond.to(device), cfg_scale, guidance_rescale)


def encode_for_sampling(encoder: PromptEncoder, prompts: Sequence[str], negatives: Sequence[str],
                        clip_skip: int | None, sampler: str, steps: int):
    """(cond, uncond) tensors as before for plain prompts; (StepConditioning, None) when any is scheduled."""
    if not needs_steps(prompts, negatives):
        return encoder.encode_batch(list(prompts), list(negatives), clip_skip)
    return StepConditioning(encoder, prompts, negatives, clip_skip, total_steps(sampler, steps)), None


def hires_conditioning(cond, uncond, sampler: str, steps: int, hr_second_pass_steps: int):
    """The second pass's (cond, uncond): fixed tensors unchanged, a StepConditioning on the hires timeline."""
    if not isinstance(cond, StepConditioning):
        return cond, uncond
    return cond.for_hires(total_steps(sampler, steps), total_steps(sampler, hr_second_pass_steps or steps)), None
