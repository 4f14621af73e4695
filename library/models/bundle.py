"""The one object training, sampling and evaluation receive: modules plus facts.

Nobody downstream knows file formats; they get a `ModelBundle` whose `facts`
say where it came from (for `ss_*` metadata and `inspect-model`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SourceFormat = Literal["builtin", "diffusers", "single_file"]
WeightsPicked = Literal["ema", "non-ema", "only one set"]

if TYPE_CHECKING:
    from library.models.family import ModelFamily


@dataclass(frozen=True)
class ModelFacts:
    """What a loaded base model is, independent of its modules.

    `name` is what sd-scripts writes as `ss_sd_model_name` (the file or folder
    base name, or the built-in name). `model_hash` is the full SHA-256 of the
    file (or of the state dict for folders and built-ins); `legacy_hash` is
    A1111's old 8-hex hash, only defined for single files. `dtype` is what the
    modules hold now; `stored_dtype` what the source stored (of the UNet).
    """

    architecture: str
    prediction_type: str
    source: str
    source_format: SourceFormat
    name: str
    model_hash: str
    legacy_hash: str | None
    weights_picked: WeightsPicked
    dtype: str
    parameter_counts: dict[str, int]
    config_family: str | None = None
    stored_dtype: str | None = None
    vae_source: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    vae_legacy_hash: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)
    # How the family and prediction type were told (library/models/architecture.py): the key
    # names/shapes or configs that decided, and where the prediction type came from. When
    # `prediction_known` is False it was assumed and `prediction_source` names the flag to pass.
    detected_by: tuple[str, ...] = field(default_factory=tuple)
    prediction_source: str | None = None
    prediction_known: bool = True

    @property
    def family(self) -> "ModelFamily":
        """The model family (library/models/family.py) named by `architecture`."""
        from library.models.family import family_of

        return family_of(self.architecture)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["notes"] = list(self.notes)
        data["detected_by"] = list(self.detected_by)
        return data


@dataclass
class ModelBundle:
    """Tokenizer, text encoder, VAE, UNet, noise-scheduler config and facts of one base model.

    The modules come frozen (`requires_grad=False`) in eval mode: a LoRA trainer
    only trains the parameters it adds, and switches modes itself when needed.
    """

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler_config: dict[str, Any]
    facts: ModelFacts
    # SDXL only: OpenCLIP ViT-bigG (HF layout, with its projection) and its zero-padding tokenizer.
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None
    # Tensors of the source single file that no module holds but its layout has (SD2's 24th
    # OpenCLIP layer, `text_projection`, `logit_scale`; SDXL's `logit_scale`; `v_pred`/`ztsnr`
    # markers): written back unchanged by save_single_file so a round trip is exact.
    ldm_extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def components(self) -> dict[str, torch.nn.Module]:
        found = {"unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder}
        if self.text_encoder_2 is not None:
            found["text_encoder_2"] = self.text_encoder_2
        return found

    def text_encoders(self) -> list[torch.nn.Module]:
        """Every text encoder, in the family's order (te1, te2): what a LoRA's text-encoder part wraps."""
        return [m for m in (self.text_encoder, self.text_encoder_2) if m is not None]


def count_parameters(modules: dict[str, torch.nn.Module]) -> dict[str, int]:
    """Parameter count per component plus their total."""
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    counts["total"] = sum(counts.values())
    return counts


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, str(dtype))


def make_noise_scheduler(bundle: ModelBundle) -> DDPMScheduler:
    """The training noise scheduler: DDPM with the model's betas and prediction type.

    `clip_sample` is forced off: SD1.x was trained without clipping x0, and
    DDPMScheduler's default (True) would silently distort training targets.
    """
    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")
    kwargs = {k: bundle.scheduler_config[k] for k in keys if k in bundle.scheduler_config}
    kwargs["clip_sample"] = False
    return DDPMScheduler(**kwargs)
