"""Does training actually teach? End to end on the shipped tiny-world base model.

The demo's LoRA (eight blue stars on white as `10_ohwx shape`, the demo's config:
DAdaptAdam, 8 epochs, seed 42) is trained here, and a deliberately broken run
beside it (the noise target replaced by unrelated noise). Measured:

- samples of "ohwx shape" (txt2img, 32 seeds): at weight 1 they must be much
  closer to the training images than at weight 0 (mean L1 distance to the
  nearest training image on 16x16 downsampled pixels) and mostly show the
  concept's colour on its background (world classifier trained in the test);
- img2img from the training stars at strength 0.3: the LoRA keeps drawing stars
  where the base model rounds them into blobs (txt2img star rates are not
  asserted: the world classifier, trained on crisp shapes, calls 5 of 32 of the
  LoRA's soft txt2img stars stars, and 4 of 32 of the base model's blobs);
- the training objective on its own images at fixed noise and timesteps
  (library.world.evaluate.denoising_loss) falls well below the base model's, and
  LoRA weight 0 is exactly the base model;
- the broken run fails the sample bars and the loss bar;
- the base model draws the world it was pretrained on ("a red circle").

Measured (tiny-world of this commit, torch 2.13 CPU): nearest-image distance 0.142
at weight 0, 0.081 at weight 1 (x0.57), 0.303 broken (x2.13); blue on white: 8/32
at weight 0, 32/32 at weight 1, 14/32 broken; img2img star rate (strength 0.3,
Euler) 0/32 at weight 0, 12/32 at weight 1; denoising loss 0.1147 base, 0.0734 with
the LoRA (x0.64), 1.048 broken (x9.1); "a red circle": 16/16 red, 16/16 red circles
(chance for the shape 4/16). Bars sit between the measured value and the broken
run's (or chance) so that either side moving fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from library.training import step as step_module
from library.demo import EPOCHS as EPOCHS_OF_THE_DEMO
from library.demo import demo_config
from library.training.trainer import train
from library.world.classifier import accuracy, train_classifier
from library.world.evaluate import denoising_loss, label_rate, sample_images
from library.world.generator import ALL_SHAPES, generate_world, write_concept_folder
from library.world.model import build_tiny_world_bundle

EPOCHS = EPOCHS_OF_THE_DEMO
CONCEPT_COLOUR = "blue"  # write_concept_folder's default
CONCEPT_BACKGROUND = "white"
N_IMAGES = 16
SEEDS = list(range(1000, 1000 + N_IMAGES))
N_SAMPLES = 32
SAMPLE_SEEDS = list(range(1000, 1000 + N_SAMPLES))
CLOSER_MAX_RATIO = 0.75  # measured 0.57 (weight 1 / weight 0 nearest-image distance); broken 2.13
CONCEPT_MIN = 0.75  # blue on white, measured 32/32; 8/32 at weight 0, 14/32 broken
CONCEPT_AT_ZERO_MAX = 0.4
IMG2IMG_STRENGTH = 0.3
STAR_MIN = 0.2  # img2img from the training stars, measured 12/32
STAR_MIN_GAIN = 2.0  # over weight 0, measured 0/32
LEARNED_MAX_RATIO = 0.8  # trained loss / base loss, measured 0.64
BROKEN_MIN_RATIO = 0.95
RED_MIN = 0.8  # measured 1.0
RED_CIRCLE_MIN = 0.6  # measured 1.0; chance 0.25


@pytest.fixture(scope="module")
def classifier():
    model = train_classifier(seed=0)
    check = accuracy(model, generate_world(300, seed=99, shapes=ALL_SHAPES))
    assert check["shape"] > 0.9 and check["colour"] > 0.95, f"the measuring stick itself is weak: {check}"
    return model


@pytest.fixture(scope="module")
def bundle():
    return build_tiny_world_bundle(torch.float32)


def _train_star_lora(root) -> str:
    folder, _images = _concept(root)
    cfg = demo_config(root, folder.parent, prompts=None, epochs=EPOCHS)
    cfg.logging_dir = None
    result = train(cfg)
    return str(result.files[-1])


@pytest.fixture(scope="module")
def star_lora(tmp_path_factory) -> str:
    return _train_star_lora(tmp_path_factory.mktemp("star"))


@pytest.fixture(scope="module")
def broken_lora(tmp_path_factory) -> str:
    original = step_module.per_sample_loss

    def unrelated_target(pred, target, *args, **kwargs):
        return original(pred, torch.randn_like(target), *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(step_module, "per_sample_loss", unrelated_target)
        return _train_star_lora(tmp_path_factory.mktemp("broken"))


def _concept(root):
    folder = write_concept_folder(root / "dataset", n=8, seed=0, repeats=10)
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.glob("*.png"))])
    return folder, images


def _nearest_distance(samples: np.ndarray, references: np.ndarray) -> float:
    """Mean over samples of the L1 distance (0..1 per pixel) to the nearest reference, both at 16x16."""
    def small(x):
        return F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, size=16, mode="area").flatten(1)

    s, r = small(samples), small(references)
    return float((s[:, None] - r[None]).abs().mean(-1).min(1).values.mean())


def _txt2img(bundle, lora: str, weight: float) -> np.ndarray:
    return sample_images(bundle, ["ohwx shape"] * N_SAMPLES, SAMPLE_SEEDS, loras=((lora, weight),))


def _concept_rate(classifier, images) -> float:
    return label_rate(classifier, images, colour=CONCEPT_COLOUR, background=CONCEPT_BACKGROUND)


@pytest.mark.slow  # trains the star and the broken LoRA: ~140 s of CPU for the module
def test_lora_samples_move_towards_its_images_and_broken_run_does_not(bundle, classifier, star_lora, broken_lora,
                                                                      tmp_path):
    _folder, images = _concept(tmp_path)
    base, learned, broken = (_txt2img(bundle, star_lora, 0.0), _txt2img(bundle, star_lora, 1.0),
                             _txt2img(bundle, broken_lora, 1.0))
    d_base, d_learned, d_broken = (_nearest_distance(x, images) for x in (base, learned, broken))
    assert d_learned <= CLOSER_MAX_RATIO * d_base, f"weight 1 {d_learned:.4f} vs weight 0 {d_base:.4f}"
    assert d_broken > CLOSER_MAX_RATIO * d_base, f"the broken run passed: {d_broken:.4f} vs {d_base:.4f}"
    assert _concept_rate(classifier, base) <= CONCEPT_AT_ZERO_MAX
    assert _concept_rate(classifier, learned) >= CONCEPT_MIN
    assert _concept_rate(classifier, broken) < CONCEPT_MIN


@pytest.mark.slow  # trains the star and the broken LoRA: ~140 s of CPU for the module
def test_lora_draws_the_star_from_its_layout_where_the_base_rounds_it(bundle, classifier, star_lora, tmp_path):
    _folder, images = _concept(tmp_path)
    inits = np.concatenate([images] * (N_SAMPLES // len(images)))

    def star_rate(weight: float) -> float:
        made = sample_images(bundle, ["ohwx shape"] * N_SAMPLES, SAMPLE_SEEDS, loras=((star_lora, weight),),
                             init_images=inits, strength=IMG2IMG_STRENGTH, sampler="Euler")
        return label_rate(classifier, made, shape="star")

    at_zero, at_one = star_rate(0.0), star_rate(1.0)
    assert at_one >= STAR_MIN and at_one >= STAR_MIN_GAIN * at_zero, f"star rate {at_one} vs {at_zero} at weight 0"


def test_base_model_draws_the_world_it_was_pretrained_on(bundle, classifier):
    images = sample_images(bundle, ["a red circle"] * N_IMAGES, SEEDS)
    assert label_rate(classifier, images, colour="red") >= RED_MIN
    assert label_rate(classifier, images, shape="circle", colour="red") >= RED_CIRCLE_MIN


@pytest.mark.slow  # trains the star and the broken LoRA: ~140 s of CPU for the module
def test_lora_lowers_the_loss_on_its_images_and_weight_zero_is_the_base(bundle, star_lora, tmp_path):
    _folder, images = _concept(tmp_path)
    base = denoising_loss(bundle, images, "ohwx shape")
    at_zero = denoising_loss(bundle, images, "ohwx shape", loras=((star_lora, 0.0),))
    at_one = denoising_loss(bundle, images, "ohwx shape", loras=((star_lora, 1.0),))
    assert at_zero == pytest.approx(base, rel=1e-6)
    assert at_one <= LEARNED_MAX_RATIO * base, f"loss {at_one:.4f} with the LoRA vs {base:.4f} without"


@pytest.mark.slow  # trains the star and the broken LoRA: ~140 s of CPU for the module
def test_a_broken_run_does_not_pass_the_same_bar(bundle, broken_lora, tmp_path):
    _folder, images = _concept(tmp_path)
    base = denoising_loss(bundle, images, "ohwx shape")
    broken = denoising_loss(bundle, images, "ohwx shape", loras=((broken_lora, 1.0),))
    assert broken >= BROKEN_MIN_RATIO * base, \
        f"a run trained on unrelated noise lowered the loss: {broken:.4f} vs {base:.4f}"
