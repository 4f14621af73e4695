"""A score per saved epoch: fidelity and prior drift at several LoRA weights, and which one to keep.

A pure function of (base bundle, LoRA files, evaluation set, fixed noise and
timesteps): it loads each file onto the bundle with the sampler's LoraStack (base
weights never change, no LoRA file is written), runs the UNet on the same noisy
latents the base model saw, and compares.

- **fidelity** = the denoising loss on the concept images (held-out ones, or the
  training images) with the LoRA ÷ the base model's loss on the same inputs. Below
  1 the LoRA learned its images; lower is closer. It is the validation loss of
  library.training.validation (same fixed timesteps: sd-scripts' linspace over the
  schedule, ends dropped; noise from a generator seeded afresh), made relative.
- **conditioning** is the trainer's (library.data.text_conditioning): one encoder's
  hidden states for SD1.x/SD2.x; for SDXL both encoders' penultimate states, te2's pooled
  embedding and each image's size/crop ids as the trainer gives them (original size,
  crop in its bucket, bucket size; never flipped), so a score measures what was trained.
- **drift** = how far the LoRA moves the noise prediction where it should not: on
  the class prompt, on unrelated prompts (both over the concept latents) and on
  regularization images with their captions, mean ‖ε_lora − ε_base‖² ÷ the base
  model's own loss on those inputs (so 0.1 = a change a tenth the size of the base
  model's error there; the prior-preservation idea of DreamBooth, Ruiz et al. 2023,
  measured instead of trained).

`recommend` picks the epoch and weight with the best fidelity whose drift stays
under a threshold, and says why in one sentence.
"""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from library.errors import ConfigError, LoRAFileError
from library.scoring.timesteps import validation_timesteps

DEFAULT_WEIGHTS = (0.6, 0.8, 1.0)
DEFAULT_DRIFT_THRESHOLD = 0.25  # tiny-world star run: drift <= 0.25 kept world prompts as the base did, 0.26-0.27 lost some, >= 0.38 all (README)
DEFAULT_PRIOR_PROMPTS = ("a photo of a city street", "a bowl of fruit on a table", "a landscape with mountains")
_EPOCH_IN_NAME = re.compile(r"-(\d{6})(?:-ema)?$")


@dataclass
class EvalBatch:
    """Latents of images of one size (scaled, as the UNet sees them) and one caption each."""

    latents: torch.Tensor  # [B, C, h, w]
    captions: list[str]
    # SDXL's size ids (library.data.sdxl_size_ids): each image file's (w, h) before resizing and the
    # bucket (w, h) it was fitted to. None: each latent counts as a whole image of its own size.
    original_sizes: list[tuple[int, int]] | None = None
    bucket: tuple[int, int] | None = None

    def size_ids(self, vae_scale: int = 8) -> torch.Tensor:
        """(B, 6) SDXL time ids the trainer gives these images unflipped: original (h, w), crop (top, left), target (h, w)."""
        from library.data.text_conditioning import sdxl_time_ids

        n, (h, w) = self.latents.shape[0], self.latents.shape[-2:]
        bucket = tuple(self.bucket) if self.bucket else (int(w) * vae_scale, int(h) * vae_scale)
        sizes = list(self.original_sizes) if self.original_sizes else [bucket] * n
        return sdxl_time_ids(sizes, bucket, [False] * n)


@dataclass
class EvalSet:
    """What every file is scored on; the same for all files, so their numbers compare."""

    concept: list[EvalBatch]  # held-out concept images, or the training images
    class_prompt: str | None = None  # e.g. "shape", "woman": drift on the class
    prior_prompts: tuple[str, ...] = DEFAULT_PRIOR_PROMPTS  # unrelated prompts: drift elsewhere
    reg: list[EvalBatch] = field(default_factory=list)  # regularization images with their captions
    seed: int = 0  # noise seed
    timesteps: tuple[int, ...] = ()  # empty: validation_timesteps over the whole schedule
    source: str = "training images"  # or "held-out images": said in the table and the recommendation
    instance_token: str | None = None  # the trigger word: must not appear in the prior prompts
    image_paths: list[str] = field(default_factory=list)  # the concept images (for CLIP-I / DINO references)
    clip_skip: int | None = None  # captions are encoded as the run encodes them (its --clip_skip,
    max_token_length: int | None = None  # --max_token_length); None: sd-scripts' defaults
    zero_terminal_snr: bool = False  # noise as the run trained with --zero_terminal_snr (rescaled betas)

    @property
    def image_count(self) -> int:
        return sum(b.latents.shape[0] for b in self.concept)


@dataclass
class EpochScore:
    """One (file, weight): lower fidelity is closer to the concept, lower drift is less damage."""

    file: str
    epoch: int | None  # from name-000003.safetensors or ss_epoch; None when unknown
    weight: float
    fidelity: float  # LoRA loss / base loss on the concept images
    drift: float  # mean of class, prior and reg drift (those measured)
    loss: float  # the LoRA's concept loss
    base_loss: float
    class_drift: float | None = None
    prior_drift: float | None = None
    reg_drift: float | None = None
    ema: bool = False
    clip_i: float | None = None  # optional image metrics (library.evaluation.image_metrics), higher = closer
    clip_t: float | None = None
    dino: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Recommendation:
    file: str
    epoch: int | None
    weight: float
    why: str
    score: EpochScore | None = None

    def to_dict(self) -> dict:
        return {"file": self.file, "epoch": self.epoch, "weight": self.weight, "why": self.why}


def epoch_of(path: str | os.PathLike[str]) -> int | None:
    """The epoch a file was saved at: name-000003(-ema).safetensors → 3, else its ss_epoch metadata, else None."""
    match = _EPOCH_IN_NAME.search(Path(path).stem)
    if match:
        return int(match.group(1))
    try:
        from library.lora.file import read_header

        value = (read_header(path).metadata or {}).get("ss_epoch")
        return int(value) if value is not None else None
    except (LoRAFileError, ValueError, OSError, AttributeError):
        return None


def check_prompts(eval_set: EvalSet) -> None:
    """Mismatched prompts are one error: an unrelated prompt holding the trigger word measures the concept."""
    problems = []
    token = (eval_set.instance_token or "").strip().lower()
    for prompt in eval_set.prior_prompts:
        if not prompt.strip():
            problems.append("an unrelated prompt is empty")
        elif token and token in prompt.lower().split():
            problems.append(f"unrelated prompt {prompt!r} holds the trigger word {token!r}: drift there measures "
                            "the concept, not damage; use prompts without it")
    if eval_set.class_prompt and token and token in eval_set.class_prompt.lower().split():
        problems.append(f"class prompt {eval_set.class_prompt!r} holds the trigger word {token!r}; "
                        "give the class alone (e.g. 'woman')")
    if not eval_set.concept or eval_set.image_count == 0:
        problems.append("the evaluation set holds no concept image")
    if problems:
        raise ConfigError("the evaluation prompts do not fit the evaluation set", problems)


@dataclass
class _Inputs:
    """Fixed noisy latents for one batch at every timestep (batch-major, timestep-minor), and the targets."""

    noisy: torch.Tensor
    t: torch.Tensor
    target: torch.Tensor
    captions: list[str]
    time_ids: torch.Tensor  # (rows, 6) SDXL size/crop ids of each row's image (unused by SD1/SD2)


def fixed_inputs(batches: Sequence[EvalBatch], timesteps: Sequence[int], seed: int, scheduler,
                 device: torch.device, dtype: torch.dtype, vae_scale: int = 8) -> list[_Inputs]:
    """Noise drawn from a generator seeded once per evaluation, as the validation loss does (same call order).

    The target is the model's: the noise for ε-prediction, the velocity (Salimans & Ho 2022) for
    v-prediction, as the trainer's loss and validation loss use.
    """
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    v_pred = scheduler.config.prediction_type == "v_prediction"
    for batch in batches:
        x0 = batch.latents.float().cpu()
        n = x0.shape[0]
        x0s = x0.repeat_interleave(len(timesteps), dim=0)
        t = torch.tensor(list(timesteps) * n, dtype=torch.long)
        noise = torch.randn(x0s.shape, generator=gen)
        noisy = scheduler.add_noise(x0s, noise, t)
        target = scheduler.get_velocity(x0s, noise, t) if v_pred else noise
        captions = [c for c in batch.captions for _ in timesteps]
        ids = batch.size_ids(vae_scale).repeat_interleave(len(timesteps), dim=0)
        out.append(_Inputs(noisy.to(device, dtype), t.to(device), target.to(device), captions, ids.to(device, dtype)))
    return out


class _Predictor:
    """UNet predictions for fixed inputs under whatever LoRA state the stack holds now.

    Captions are encoded with the trainer's TextEncoding (both encoders and the pooled
    embedding on SDXL), once per caption until a LoRA changes the text encoders.
    """

    def __init__(self, bundle, max_batch: int, clip_skip: int | None = None,
                 max_token_length: int | None = None) -> None:
        from library.data.text_conditioning import TextEncoding

        self.bundle = bundle
        self.max_batch = max_batch
        self.encoding = TextEncoding(bundle, clip_skip, max_token_length)
        self._cond: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def forget_text(self) -> None:
        self._cond.clear()

    def conditioning(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states (B, L, D), pooled (B, P) or None) of the captions."""
        missing = sorted({c for c in captions if c not in self._cond})
        if missing:
            cond = self.encoding.encode(None, missing)
            pooled = cond.pooled if cond.pooled is not None else [None] * len(missing)
            self._cond.update(zip(missing, zip(cond.hidden, pooled)))
        hidden = torch.stack([self._cond[c][0] for c in captions])
        pooled = [self._cond[c][1] for c in captions]
        return hidden, (torch.stack(pooled) if pooled[0] is not None else None)

    @torch.no_grad()
    def predict(self, inp: _Inputs, captions: Sequence[str] | None = None) -> torch.Tensor:
        captions = list(captions if captions is not None else inp.captions)
        unet = self.bundle.unet
        device, dtype = inp.noisy.device, next(unet.parameters()).dtype
        preds = []
        for i in range(0, inp.noisy.shape[0], self.max_batch):
            rows = slice(i, i + self.max_batch)
            hidden, pooled = self.conditioning(captions[rows])
            extra = {}
            if pooled is not None:  # SDXL's added conditioning, as the trainer's step passes it
                extra["added_cond_kwargs"] = {"text_embeds": pooled.to(device, dtype),
                                              "time_ids": inp.time_ids[rows].to(device, dtype)}
            preds.append(unet(inp.noisy[rows], inp.t[rows], encoder_hidden_states=hidden.to(device, dtype),
                              **extra).sample.float())
        return torch.cat(preds)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean())


def _prompt_sets(eval_set: EvalSet, concept: list[_Inputs], reg: list[_Inputs]) -> dict[str, list[tuple[_Inputs, list[str]]]]:
    """Where drift is measured: (inputs, captions) per kind: class prompt and unrelated prompts on the
    concept latents, reg images with their own captions."""
    sets: dict[str, list[tuple[_Inputs, list[str]]]] = {}
    if eval_set.class_prompt:
        sets["class"] = [(inp, [eval_set.class_prompt] * len(inp.captions)) for inp in concept]
    if eval_set.prior_prompts:
        sets["prior"] = [(inp, [p] * len(inp.captions)) for inp in concept for p in eval_set.prior_prompts]
    if reg:
        sets["reg"] = [(inp, inp.captions) for inp in reg]
    return sets


@dataclass
class _Candidate:
    file: str
    epoch: int | None
    ema: bool


def score_files(bundle, files: Sequence[str | os.PathLike[str]], eval_set: EvalSet, *,
                weights: Sequence[float] = DEFAULT_WEIGHTS, max_batch: int = 32,
                progress: Callable[[int, int, str], None] | None = None) -> list[EpochScore]:
    """Fidelity and drift of every (file, weight), in file order then weight order.

    The bundle's own weights are untouched (LoRAs are applied as wrappers with the
    sampler's LoraStack and removed); its modules' train/eval modes are restored.
    Files are checked to fit the model before any is scored: a LoRA for another
    architecture is one LoRAFileError.
    """
    from library.lora.loading import load_lora, match_modules
    from library.sampling.lora_stack import LoraStack

    check_prompts(eval_set)
    paths = [Path(f) for f in files]
    for path in paths:  # every file is checked before minutes of work
        match_modules(load_lora(path), bundle.unet, _text_encoders(bundle), strict=True)
    stack = LoraStack.for_bundle(bundle)

    def apply(candidate: _Candidate | None, weight: float) -> bool:
        return stack.activate([(candidate.file, weight)] if candidate is not None else [])

    candidates = [_Candidate(str(p), epoch_of(p), p.stem.endswith("-ema")) for p in paths]
    try:
        return _score(bundle, candidates, eval_set, weights, apply, max_batch, progress)
    finally:
        stack.clear()


def score_network(bundle, network, eval_set: EvalSet, *, file: str, epoch: int | None,
                  weights: Sequence[float] = DEFAULT_WEIGHTS, max_batch: int = 32,
                  progress: Callable[[int, int, str], None] | None = None) -> list[EpochScore]:
    """The same scores for a network already applied to the bundle (the trainer's, at a save).

    Its multiplier goes to 0 for the base model's predictions and to each weight in
    turn, then back; its train/eval mode is restored. Nothing is read from disk.
    """
    check_prompts(eval_set)
    old, mode = network.multiplier, network.training
    network.eval()

    def apply(candidate: _Candidate | None, weight: float) -> bool:
        network.set_multiplier(float(weight) if candidate is not None else 0.0)
        return bool(network.text_encoder_loras)

    try:
        return _score(bundle, [_Candidate(str(file), epoch, str(file).endswith("-ema.safetensors"))], eval_set,
                      weights, apply, max_batch, progress)
    finally:
        network.set_multiplier(old)
        network.train(mode)


def _text_encoders(bundle) -> list[torch.nn.Module]:
    """te1, and te2 on SDXL: what a LoRA's text-encoder modules wrap."""
    return [m for m in (bundle.text_encoder, getattr(bundle, "text_encoder_2", None)) if m is not None]


def _vae_scale(bundle) -> int:
    """Pixels per latent cell (8 for SD's VAE): latent size → image size for SDXL's ids."""
    blocks = getattr(getattr(bundle.vae, "config", None), "block_out_channels", None)
    return 2 ** (len(blocks) - 1) if blocks else 8


def scoring_scheduler(bundle, zero_terminal_snr: bool = False):
    """The model's training noise schedule, rescaled to zero terminal SNR (Lin et al. 2023) when the run trained so,
    as its validation loss is measured."""
    from library.models import make_noise_scheduler

    scheduler = make_noise_scheduler(bundle)
    if zero_terminal_snr:
        scheduler = type(scheduler).from_config(scheduler.config, rescale_betas_zero_snr=True)
    return scheduler


def _score(bundle, candidates: list[_Candidate], eval_set: EvalSet, weights: Sequence[float],
           apply: Callable[[_Candidate | None, float], bool], max_batch: int,
           progress: Callable[[int, int, str], None] | None) -> list[EpochScore]:
    """Base predictions once (apply(None, 0)), then every (candidate, weight) against them."""
    scheduler = scoring_scheduler(bundle, eval_set.zero_terminal_snr)
    timesteps = list(eval_set.timesteps) or validation_timesteps(0, int(scheduler.config.num_train_timesteps))
    device = next(bundle.unet.parameters()).device
    dtype = next(bundle.unet.parameters()).dtype
    scale = _vae_scale(bundle)
    concept = fixed_inputs(eval_set.concept, timesteps, eval_set.seed, scheduler, device, dtype, scale)
    reg = fixed_inputs(eval_set.reg, timesteps, eval_set.seed + 1, scheduler, device, dtype, scale)
    sets = _prompt_sets(eval_set, concept, reg)
    modules = [bundle.unet, *_text_encoders(bundle)]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    predictor = _Predictor(bundle, max_batch, eval_set.clip_skip, eval_set.max_token_length)
    try:
        apply(None, 0.0)
        base_concept = [predictor.predict(inp) for inp in concept]
        base_loss = sum(_mse(p, inp.target) for p, inp in zip(base_concept, concept)) / len(concept)
        base_sets = {k: [(predictor.predict(inp, caps), inp) for inp, caps in v] for k, v in sets.items()}
        base_err = {k: sum(_mse(p, inp.target) for p, inp in v) / len(v) for k, v in base_sets.items()}
        results = []
        total = len(candidates) * len(weights)
        for cand in candidates:
            for weight in weights:
                if apply(cand, float(weight)):
                    predictor.forget_text()
                loss = sum(_mse(predictor.predict(inp), inp.target) for inp in concept) / len(concept)
                drifts = {}
                for kind, items in sets.items():
                    moved = sum(_mse(predictor.predict(inp, caps), bp)
                                for (inp, caps), (bp, _i) in zip(items, base_sets[kind])) / len(items)
                    drifts[kind] = moved / max(base_err[kind], 1e-12)
                results.append(EpochScore(
                    file=cand.file, epoch=cand.epoch, weight=float(weight), fidelity=loss / max(base_loss, 1e-12),
                    drift=sum(drifts.values()) / len(drifts) if drifts else 0.0, loss=loss, base_loss=base_loss,
                    class_drift=drifts.get("class"), prior_drift=drifts.get("prior"), reg_drift=drifts.get("reg"),
                    ema=cand.ema))
                if progress:
                    progress(len(results), total, f"{Path(cand.file).name} @ {weight:g}")
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    return results


def recommend(scores: Sequence[EpochScore], drift_threshold: float = DEFAULT_DRIFT_THRESHOLD) -> Recommendation:
    """The best fidelity among settings whose drift stays under the threshold (ties: earlier, then lower weight).

    When every setting drifts more, the least-drifting one, and the sentence says so.
    """
    if not scores:
        raise ConfigError("nothing to recommend: no file was scored", ["give at least one LoRA file"])

    def order(s: EpochScore) -> tuple:
        return (s.epoch if s.epoch is not None else 10**9, s.weight)

    under = [s for s in scores if s.drift <= drift_threshold]
    if under:
        best = min(under, key=lambda s: (s.fidelity, order(s)))
        over = [s for s in scores if s.drift > drift_threshold and s.fidelity < best.fidelity]
        tail = (f"; {len(over)} setting(s) fit closer but drift more (e.g. {_label(min(over, key=lambda s: s.fidelity))})"
                if over else "")
        why = (f"{_label(best)} has the lowest loss on the concept images ({best.fidelity:.3f}× the base model's) "
               f"among settings whose drift stays under {drift_threshold:g} (its drift {best.drift:.3f}){tail}.")
    else:
        best = min(scores, key=lambda s: (s.drift, order(s)))
        why = (f"every setting drifts more than {drift_threshold:g}; {_label(best)} drifts least ({best.drift:.3f}, "
               f"fidelity {best.fidelity:.3f}): try lower weights, earlier epochs or a lower learning rate.")
    return Recommendation(best.file, best.epoch, best.weight, why, best)


def _label(s: EpochScore) -> str:
    name = f"epoch {s.epoch}" if s.epoch is not None else Path(s.file).name
    return f"{name}{' (EMA)' if s.ema else ''} at weight {s.weight:g}"


def score_x(s: EpochScore, index: int) -> int:
    """A score's place on an epoch axis: its epoch, else its file's position (from 1)."""
    return s.epoch if s.epoch is not None else index + 1


def tensorboard_values(scores: Sequence[EpochScore]) -> dict[int, dict[str, float]]:
    """{epoch: {tag: value}}: evaluation/fidelity/w0.8, evaluation/drift/w0.8, ... (EMA files under .../ema/...)."""
    files = list(dict.fromkeys(s.file for s in scores))
    out: dict[int, dict[str, float]] = {}
    for s in scores:
        ema = "ema/" if s.ema else ""
        tags = out.setdefault(score_x(s, files.index(s.file)), {})
        tags[f"evaluation/{ema}fidelity/w{s.weight:g}"] = s.fidelity
        tags[f"evaluation/{ema}drift/w{s.weight:g}"] = s.drift
    return out
