"""Model families (SD1.x, SD2.x, SDXL): the facts that differ between them, in one place.

Code that used to ask "is this SD1?" asks the family instead, so SD2 and SDXL plug in
by adding a `ModelFamily` rather than new `if` branches. Strings are sd-scripts' public
ones: `ss_base_model_version` from train_util (`sd_v1`, `sd_v2`, `sd_v2_v`, `sdxl_base_v1-0`)
and `modelspec.architecture` from library/sai_model_spec.py (ARCH_SD_V1, ARCH_SD_V2_512,
ARCH_SD_V2_768_V, ARCH_SD_XL_V1_BASE) plus the `/lora` adapter suffix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelFamily:
    name: str
    display: str
    default_resolution: int
    text_encoders: int
    lora_te_prefixes: tuple[str, ...]
    cross_attention_dim: int
    default_prediction_type: str
    ss_v2: bool
    base_model_versions: dict[str, str]  # prediction type -> ss_base_model_version
    architectures: dict[str, str]  # prediction type -> modelspec.architecture base (no /lora)

    def base_model_version(self, prediction_type: str | None = None) -> str:
        return self.base_model_versions[_pred(prediction_type or self.default_prediction_type)]

    def modelspec_architecture(self, prediction_type: str | None = None, adapter: str = "lora") -> str:
        arch = self.architectures[_pred(prediction_type or self.default_prediction_type)]
        return f"{arch}/{adapter}" if adapter else arch


def _pred(prediction_type: str) -> str:
    """Normalise 'v', 'v_prediction', 'epsilon', 'eps' to 'v_prediction' / 'epsilon'."""
    p = str(prediction_type).lower()
    if p in ("v", "v_prediction", "v-prediction", "vpred", "v_pred"):
        return "v_prediction"
    if p in ("epsilon", "eps", "noise"):
        return "epsilon"
    raise ValueError(f"unknown prediction type {prediction_type!r}: use 'epsilon' or 'v_prediction'")


SD1 = ModelFamily(
    name="sd1", display="Stable Diffusion 1.x", default_resolution=512, text_encoders=1,
    lora_te_prefixes=("lora_te_",), cross_attention_dim=768, default_prediction_type="epsilon", ss_v2=False,
    base_model_versions={"epsilon": "sd_v1", "v_prediction": "sd_v1_v"},
    architectures={"epsilon": "stable-diffusion-v1", "v_prediction": "stable-diffusion-v1"},
)
SD2 = ModelFamily(
    name="sd2", display="Stable Diffusion 2.x", default_resolution=768, text_encoders=1,
    lora_te_prefixes=("lora_te_",), cross_attention_dim=1024, default_prediction_type="v_prediction", ss_v2=True,
    base_model_versions={"epsilon": "sd_v2", "v_prediction": "sd_v2_v"},
    architectures={"epsilon": "stable-diffusion-v2-512", "v_prediction": "stable-diffusion-v2-768-v"},
)
SDXL = ModelFamily(
    name="sdxl", display="Stable Diffusion XL", default_resolution=1024, text_encoders=2,
    lora_te_prefixes=("lora_te1_", "lora_te2_"), cross_attention_dim=2048, default_prediction_type="epsilon",
    ss_v2=False,
    base_model_versions={"epsilon": "sdxl_base_v1-0", "v_prediction": "sdxl_base_v1-0"},
    architectures={"epsilon": "stable-diffusion-xl-v1-base", "v_prediction": "stable-diffusion-xl-v1-base"},
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (SD1, SD2, SDXL)}

_ALIASES = {
    "sd1": "sd1", "sd15": "sd1", "sd1.5": "sd1", "sd1x": "sd1", "stable-diffusion-v1": "sd1", "sd_v1": "sd1",
    "sd2": "sd2", "sd21": "sd2", "sd2.1": "sd2", "sd2x": "sd2", "v2": "sd2", "sd_v2": "sd2",
    "stable-diffusion-v2-512": "sd2", "stable-diffusion-v2-768-v": "sd2",
    "sdxl": "sdxl", "sdxl_base_v1-0": "sdxl", "stable-diffusion-xl-v1-base": "sdxl",
}


def family_of(facts_or_name: Any) -> ModelFamily:
    """The family of a ModelFacts (its `family` or `architecture`), a family name or an alias."""
    if isinstance(facts_or_name, ModelFamily):
        return facts_or_name
    if isinstance(facts_or_name, str):
        key = facts_or_name.strip().lower().replace(" ", "")
        key = key.split("/")[0]
        if key in _ALIASES:
            return FAMILIES[_ALIASES[key]]
        raise ValueError(f"unknown model family {facts_or_name!r}: known are {', '.join(FAMILIES)}")
    name = getattr(facts_or_name, "family", None) or getattr(facts_or_name, "architecture", None)
    if name is None:
        raise ValueError(f"cannot tell the model family of {facts_or_name!r}")
    return family_of(name)
