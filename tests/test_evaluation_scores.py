"""Per-epoch scores on the built-in tiny model: fixed noise, base-relative numbers, recommendation, bad input."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from library.errors import ConfigError, LoRAFileError
from library.scoring.scores import (
    EpochScore,
    EvalBatch,
    EvalSet,
    epoch_of,
    recommend,
    score_files,
)


@pytest.fixture(scope="module")
def bundle():
    from library.models import build_tiny_bundle

    return build_tiny_bundle(0)


@pytest.fixture(scope="module")
def eval_set():
    gen = torch.Generator().manual_seed(3)
    return EvalSet([EvalBatch(torch.randn((2, 4, 8, 8), generator=gen), ["ohwx cube", "ohwx cube"])],
                   class_prompt="cube", prior_prompts=("a red ball", "a house"), instance_token="ohwx",
                   timesteps=(200, 600))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_weight_zero_is_the_base_and_files_and_base_weights_are_untouched(bundle, eval_set, sdscripts_lora_dir, tmp_path):
    lora = shutil.copy(sdscripts_lora_dir / "tinylora-000001.safetensors", tmp_path / "me-000001.safetensors")
    before = _sha(tmp_path / "me-000001.safetensors")
    base_state = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
    scores = score_files(bundle, [lora], eval_set, weights=(0.0, 1.0))
    assert [(s.epoch, s.weight) for s in scores] == [(1, 0.0), (1, 1.0)]
    zero, one = scores
    assert zero.fidelity == 1.0 and zero.drift == 0.0 and zero.loss == zero.base_loss
    assert one.drift > 0 and one.fidelity != 1.0
    assert one.class_drift is not None and one.prior_drift is not None and one.reg_drift is None
    assert one.drift == pytest.approx((one.class_drift + one.prior_drift) / 2)
    assert _sha(tmp_path / "me-000001.safetensors") == before
    after = bundle.unet.state_dict()
    assert all(torch.equal(base_state[k], after[k]) for k in base_state)
    assert not any("lora" in name for name, _ in bundle.unet.named_modules())


def test_same_inputs_give_the_same_numbers_and_base_loss_matches_a_hand_computation(bundle, eval_set,
                                                                                      sdscripts_lora_dir):
    from diffusers import DDPMScheduler

    from library.data.text import encode_tokens, tokenize_captions

    lora = sdscripts_lora_dir / "tinylora.safetensors"
    a = score_files(bundle, [lora], eval_set, weights=(0.8,))[0]
    b = score_files(bundle, [lora], eval_set, weights=(0.8,))[0]
    assert a == b
    # The base loss by hand: noise drawn per batch after one seeding, timesteps repeated per image.
    sched = DDPMScheduler.from_config({**bundle.scheduler_config, "clip_sample": False})
    x0 = eval_set.concept[0].latents.repeat_interleave(2, dim=0)
    t = torch.tensor([200, 600, 200, 600])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(eval_set.seed))
    cond = encode_tokens(bundle.text_encoder, tokenize_captions(bundle.tokenizer, ["ohwx cube"] * 4))
    with torch.no_grad():
        pred = bundle.unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
    assert a.base_loss == pytest.approx(float((pred - noise).pow(2).mean()), rel=1e-5)



def test_captions_are_encoded_with_the_runs_clip_skip(bundle, eval_set, sdscripts_lora_dir):
    """A run trained with --clip_skip 2 is scored on the layer it trained on (EvalSet.clip_skip, set by the
    trainer's hook and by eval_set_from_config), not on the last layer."""
    import dataclasses

    from diffusers import DDPMScheduler

    from library.data.text import encode_tokens, tokenize_captions

    lora = sdscripts_lora_dir / "tinylora.safetensors"
    skipped = score_files(bundle, [lora], dataclasses.replace(eval_set, clip_skip=2), weights=(1.0,))[0]
    plain = score_files(bundle, [lora], eval_set, weights=(1.0,))[0]
    sched = DDPMScheduler.from_config({**bundle.scheduler_config, "clip_sample": False})
    x0 = eval_set.concept[0].latents.repeat_interleave(2, dim=0)
    t = torch.tensor([200, 600, 200, 600])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(eval_set.seed))
    cond = encode_tokens(bundle.text_encoder, tokenize_captions(bundle.tokenizer, ["ohwx cube"] * 4), 2)
    with torch.no_grad():
        pred = bundle.unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
    assert skipped.base_loss == pytest.approx(float((pred - noise).pow(2).mean()), rel=1e-5)
    assert abs(skipped.base_loss - plain.base_loss) > 1e-4 * plain.base_loss

def test_drift_grows_with_the_weight_and_reg_images_add_their_own_drift(bundle, eval_set, sdscripts_lora_dir):
    gen = torch.Generator().manual_seed(4)
    with_reg = EvalSet(eval_set.concept, class_prompt="cube", prior_prompts=("a house",),
                       reg=[EvalBatch(torch.randn((1, 4, 8, 8), generator=gen), ["cube"])], timesteps=(500,))
    scores = score_files(bundle, [sdscripts_lora_dir / "tinylora.safetensors"], with_reg, weights=(0.5, 1.0, 2.0))
    drifts = [s.drift for s in scores]
    assert drifts[0] < drifts[1] < drifts[2]
    assert all(s.reg_drift is not None and s.reg_drift > 0 for s in scores)


def test_epoch_from_name_or_metadata(sdscripts_lora_dir):
    assert epoch_of("out/name-000012.safetensors") == 12
    assert epoch_of("out/name-000003-ema.safetensors") == 3
    assert epoch_of(sdscripts_lora_dir / "tinylora.safetensors") is not None  # its ss_epoch metadata
    assert epoch_of("nowhere/final.safetensors") is None


def _score(epoch, weight, fidelity, drift) -> EpochScore:
    return EpochScore(f"n-{epoch:06d}.safetensors", epoch, weight, fidelity, drift, fidelity, 1.0)


def test_recommend_best_fidelity_under_the_drift_threshold():
    scores = [_score(1, 1.0, 0.9, 0.05), _score(2, 0.8, 0.7, 0.1), _score(2, 1.0, 0.6, 0.2),
              _score(3, 1.0, 0.4, 0.5)]
    rec = recommend(scores, drift_threshold=0.25)
    assert (rec.epoch, rec.weight) == (2, 1.0)
    assert "epoch 2 at weight 1" in rec.why and "0.25" in rec.why and "epoch 3 at weight 1" in rec.why
    tight = recommend(scores, drift_threshold=0.12)
    assert (tight.epoch, tight.weight) == (2, 0.8)


def test_recommend_when_everything_drifts_says_so():
    rec = recommend([_score(1, 1.0, 0.5, 0.6), _score(2, 1.0, 0.4, 0.9)], drift_threshold=0.1)
    assert rec.epoch == 1 and "every setting drifts more" in rec.why
    with pytest.raises(ConfigError):
        recommend([])


def test_trigger_word_in_an_unrelated_prompt_is_one_clear_error(bundle, eval_set, sdscripts_lora_dir):
    bad = EvalSet(eval_set.concept, class_prompt="ohwx cube", prior_prompts=("a photo of ohwx",), instance_token="ohwx")
    with pytest.raises(ConfigError) as err:
        score_files(bundle, [sdscripts_lora_dir / "tinylora.safetensors"], bad)
    assert "a photo of ohwx" in str(err.value) and "class prompt" in str(err.value)


def test_lora_for_another_architecture_is_refused_before_scoring(bundle, eval_set, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "sdxl_like.safetensors"
    save_file({"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640),
               "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(640, 4),
               "lora_unet_input_blocks_4_1_proj_in.alpha": torch.tensor(4.0)}, str(other))
    with pytest.raises(LoRAFileError, match="only 0 of 1 LoRA modules match.*this LoRA is for .* and the model is"):
        score_files(bundle, [other], eval_set)


def test_eval_set_from_images_encodes_each_image_once(bundle, tmp_path):
    from library.scoring.eval_set import eval_set_from_images

    paths = []
    for i, colour in enumerate([(200, 30, 30), (30, 30, 200)]):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((64, 64, 3), colour, np.uint8)).save(p)
        paths.append(p)
    es = eval_set_from_images(bundle, paths, ["a", "b"])
    assert es.image_count == 2 and es.concept[0].latents.shape == (2, 4, 8, 8) and es.concept[0].captions == ["a", "b"]
    assert not torch.equal(es.concept[0].latents[0], es.concept[0].latents[1])
