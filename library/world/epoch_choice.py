"""Is the recommended epoch the right one? Train the star on tiny-world, judge every epoch two ways.

Shared by tests/test_epoch_choice.py and bench/epoch_choice.py. The truth comes
from the world classifier (library.world.classifier), which never sees the scorer:
- **fidelity (classifier)**: of "ohwx shape" samples at weight 1, the fraction
  drawn in the concept's colour on its background (blue on white);
- **flexibility (classifier)**: of other world prompts ("a red circle", ...) with
  the LoRA at weight 1, the fraction whose shape and colour match the prompt.
The classifier's rating of an epoch is fidelity x flexibility: a LoRA that draws
its concept but has forgotten the world scores low, as does one that learned
nothing. The scorer (library.scoring.scores) sees only latents, noise and
prompts, never samples.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

CONCEPT_PROMPT = "ohwx shape"
CLASS_PROMPT = "shape"
WORLD_PROMPTS = ("a red circle", "a green square", "a yellow triangle", "a red ring")
CONCEPT = {"colour": "blue", "background": "white"}


@dataclass
class EpochTruth:
    epoch: int
    fidelity: float  # concept colour on concept background, "ohwx shape" at weight 1
    flexibility: float  # world prompts followed (shape and colour) at weight 1
    star: float  # star shape rate on "ohwx shape" (reported; tiny-world's VAE softens stars)

    @property
    def rating(self) -> float:
        return self.fidelity * self.flexibility


def star_config(root: Path, data_dir: Path, epochs: int, *, learning_rate: float = 1.0,
                scheduler: str = "constant"):
    """The demo's recipe (DAdaptAdam, rank 4, seed 42), one file per epoch, a constant LR so that it overfits."""
    from library.demo import demo_config

    cfg = demo_config(root, data_dir, prompts=None, epochs=epochs)
    cfg.logging_dir = None
    cfg.lr_scheduler = scheduler
    cfg.learning_rate = cfg.unet_lr = cfg.text_encoder_lr = learning_rate
    return cfg


def train_star(root: Path, epochs: int, **kwargs) -> tuple[Path, list[Path]]:
    """(dataset folder, one LoRA file per epoch in order)."""
    from library.training.trainer import train
    from library.world.generator import write_concept_folder

    folder = write_concept_folder(root / "dataset", n=8, seed=0, repeats=10)
    result = train(star_config(root, folder.parent, epochs, **kwargs))
    return folder, [Path(f) for f in result.files]


def classifier_truth(bundle, classifier, files: list[Path], epochs: list[int], *, n_concept: int = 16,
                     n_world: int = 4, seed: int = 1000) -> list[EpochTruth]:
    """The classifier's reading of every epoch's samples at weight 1 (same seeds for every file)."""
    from library.world.classifier import predict
    from library.world.evaluate import label_rate, sample_images

    concept_prompts = [CONCEPT_PROMPT] * n_concept
    world_prompts = [p for p in WORLD_PROMPTS for _ in range(n_world)]
    prompts = concept_prompts + world_prompts
    seeds = [seed + i for i in range(len(prompts))]
    truths = []
    for epoch, path in zip(epochs, files):
        images = sample_images(bundle, prompts, seeds, loras=((str(path), 1.0),))
        concept, world = images[:n_concept], images[n_concept:]
        pred = predict(classifier, world)
        wanted = [p.split()[1:] for p in world_prompts]  # (colour, shape)
        ok = [c == w[0] and s == w[1] for c, s, w in zip(pred["colour"], pred["shape"], wanted)]
        truths.append(EpochTruth(epoch, label_rate(classifier, concept, **CONCEPT), float(np.mean(ok)),
                                 label_rate(classifier, concept, shape="star")))
    return truths


def rating_se(t: EpochTruth, n_concept: int, n_world: int) -> float:
    """Standard error of fidelity x flexibility from the two binomial sample rates (delta method)."""
    f, x = t.fidelity, t.flexibility
    var = x * x * f * (1 - f) / n_concept + f * f * x * (1 - x) / n_world
    return float(np.sqrt(var))


def best_band(truths: list[EpochTruth], n_concept: int, n_world: int, z: float = 2.0) -> list[int]:
    """Epochs the classifier cannot tell from its best at this sample size.

    The band holds every epoch whose rating is within z standard errors of the best
    epoch's rating (the best epoch's standard error, at least one world sample's worth,
    1 / n_world, so a perfect best epoch does not make the band a single point).
    """
    best = max(truths, key=lambda t: t.rating)
    margin = z * max(rating_se(best, n_concept, n_world), 1.0 / n_world)
    return [t.epoch for t in truths if t.rating >= best.rating - margin]


def star_eval_set(bundle, folder: Path, prior_prompts=WORLD_PROMPTS):
    """The scorer's evaluation set: the 8 training stars (no split), class prompt "shape", world prompts."""
    from library.scoring.eval_set import eval_set_from_images

    return eval_set_from_images(bundle, sorted(folder.glob("*.png")), [CONCEPT_PROMPT] * 8,
                                class_prompt=CLASS_PROMPT, prior_prompts=tuple(prior_prompts), instance_token="ohwx")
