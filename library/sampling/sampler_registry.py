"""Sampler names: A1111's labels, sd-scripts' lower-case names as aliases, each with its schedule.

A sampler in A1111 is an algorithm plus a sigma schedule: "DPM++ 2M Karras" is the
DPM++ 2M function on the Karras schedule. `resolve_sampler` turns any accepted
name into a `SamplerSpec`; an unknown name raises SamplingError listing choices.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from library.errors import SamplingError
from library.sampling import samplers as S
from library.sampling.schedules import discard_next_to_last, get_sigmas
from library.sampling.unipc import sample_unipc


@dataclass(frozen=True)
class SamplerSpec:
    """A named sampler: the function, its schedule kind, and whether it draws noise while sampling."""

    name: str
    fn: Callable[..., torch.Tensor]
    schedule: str = "discrete"
    stochastic: bool = False
    discard_penultimate: bool = False

    def sigmas(self, steps: int, scheduler_config: Mapping[str, Any]) -> torch.Tensor:
        """The schedule for `steps` model evaluations' worth of steps (A1111's convention)."""
        if self.discard_penultimate:
            return discard_next_to_last(get_sigmas(self.schedule, steps + 1, scheduler_config))
        return get_sigmas(self.schedule, steps, scheduler_config)


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("Euler a", S.sample_euler_ancestral, stochastic=True),
        SamplerSpec("Euler", S.sample_euler),
        SamplerSpec("LMS", S.sample_lms),
        SamplerSpec("LMS Karras", S.sample_lms, schedule="karras"),
        SamplerSpec("Heun", S.sample_heun),
        SamplerSpec("DPM2", S.sample_dpm_2, discard_penultimate=True),
        SamplerSpec("DPM2 Karras", S.sample_dpm_2, schedule="karras", discard_penultimate=True),
        SamplerSpec("DPM2 a", S.sample_dpm_2_ancestral, stochastic=True, discard_penultimate=True),
        SamplerSpec("DPM2 a Karras", S.sample_dpm_2_ancestral, schedule="karras", stochastic=True,
                    discard_penultimate=True),
        SamplerSpec("DPM++ 2M", S.sample_dpmpp_2m),
        SamplerSpec("DPM++ 2M Karras", S.sample_dpmpp_2m, schedule="karras"),
        SamplerSpec("DPM++ SDE", S.sample_dpmpp_sde, stochastic=True),
        SamplerSpec("DPM++ SDE Karras", S.sample_dpmpp_sde, schedule="karras", stochastic=True),
        SamplerSpec("DDIM", S.sample_ddim, schedule="leading"),
        SamplerSpec("UniPC", functools.partial(sample_unipc, order=3, variant="bh1")),
    )
}

# sd-scripts' --sample_sampler names (and the k_ variants) mapped to the closest A1111 sampler.
# pndm is a pseudo linear multistep method and dpmsolver/dpmsingle are DPM-Solver variants,
# so they map to LMS and DPM++ 2M respectively.
ALIASES: dict[str, str] = {
    "ddim": "DDIM",
    "pndm": "LMS",
    "lms": "LMS",
    "k_lms": "LMS",
    "euler": "Euler",
    "k_euler": "Euler",
    "euler_a": "Euler a",
    "k_euler_a": "Euler a",
    "heun": "Heun",
    "dpm_2": "DPM2",
    "k_dpm_2": "DPM2",
    "dpm_2_a": "DPM2 a",
    "k_dpm_2_a": "DPM2 a",
    "dpmsolver": "DPM++ 2M",
    "dpmsolver++": "DPM++ 2M",
    "dpmsingle": "DPM++ 2M",
    "unipc": "UniPC",
}


# A1111 1.9+ names a sampler by its algorithm and writes the sigma schedule beside it as "Schedule type",
# using the labels of its modules/sd_schedulers.py ("Uniform" is k-diffusion's discrete schedule).
# DDIM and UniPC are A1111 timestep samplers, which take no schedule: they are written as "Automatic".
SCHEDULE_TYPES: dict[str, str] = {"discrete": "Uniform", "karras": "Karras"}
TIMESTEP_SAMPLERS = ("DDIM", "UniPC")
# What A1111 runs for a missing or "Automatic" schedule type: the `scheduler` option of its
# samplers_k_diffusion table (modules/sd_samplers_kdiffusion.py); every other sampler runs Uniform.
A1111_AUTOMATIC_SCHEDULE: dict[str, str] = {"DPM2": "karras", "DPM2 a": "karras", "DPM++ 2M": "karras",
                                            "DPM++ SDE": "karras"}


def infotext_sampler(spec: SamplerSpec) -> tuple[str, str]:
    """(Sampler, Schedule type) as A1111 writes them for this sampler, e.g. ("DPM++ 2M", "Karras").

    Why both: A1111 reads a missing schedule type as Automatic, which for DPM2, DPM2 a, DPM++ 2M and
    DPM++ SDE is Karras, so a pasted infotext would otherwise resample ours on another schedule.
    """
    if spec.name in TIMESTEP_SAMPLERS:
        return spec.name, "Automatic"
    return spec.name.removesuffix(" Karras"), SCHEDULE_TYPES[spec.schedule]


def sampler_from_infotext(sampler: str, schedule_type: str | None = None) -> SamplerSpec:
    """The sampler an infotext names, read as A1111 reads it: "DPM++ 2M" with "Schedule type: Karras",
    an old combined name ("DPM++ 2M Karras"), or a missing/Automatic schedule type (A1111's default)."""
    name = str(sampler).strip()
    base = resolve_sampler(name)
    if base.name in TIMESTEP_SAMPLERS or base.schedule != "discrete":
        return base
    label = (schedule_type or "Automatic").strip()
    if label.lower() == "automatic":
        kind = A1111_AUTOMATIC_SCHEDULE.get(base.name, "discrete")
    else:
        kinds = {v.lower(): k for k, v in SCHEDULE_TYPES.items()}
        if label.lower() not in kinds:
            raise SamplingError(f"schedule type {label!r} of sampler {name!r} is not supported",
                                [f"supported: Automatic, {', '.join(SCHEDULE_TYPES.values())}"])
        kind = kinds[label.lower()]
    if kind == "discrete":
        return base
    variant = f"{base.name} {SCHEDULE_TYPES[kind]}"
    if variant not in SAMPLERS:
        raise SamplingError(f"sampler {name!r} on the {SCHEDULE_TYPES[kind]} schedule is not supported",
                            [f"A1111 names: {', '.join(SAMPLERS)}"])
    return SAMPLERS[variant]


def resolve_sampler(name: str) -> SamplerSpec:
    """The SamplerSpec for an A1111 name (any case) or an sd-scripts alias."""
    key = str(name).strip()
    if key in SAMPLERS:
        return SAMPLERS[key]
    if key.lower() in ALIASES:
        return SAMPLERS[ALIASES[key.lower()]]
    by_lower = {n.lower(): n for n in SAMPLERS}
    if key.lower() in by_lower:
        return SAMPLERS[by_lower[key.lower()]]
    raise SamplingError(
        f"unknown sampler {name!r}",
        [f"A1111 names: {', '.join(SAMPLERS)}", f"sd-scripts names: {', '.join(ALIASES)}"],
    )


def sampler_names() -> list[str]:
    return list(SAMPLERS)
