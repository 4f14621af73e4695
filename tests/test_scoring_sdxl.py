"""Epoch scores on SDXL (`tiny-sdxl`) with the trainer's conditioning, and on SD2 v-prediction with the v target.

The references are UNet calls made here by hand with the trainer's own functions
(library.training.step imports TextEncoding and sdxl_time_ids; they live in
library.data.text_conditioning), so a scorer that conditioned differently fails.
"""
from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from library.lora.file import save_lora
from library.lora.network import LoRANetwork
from library.models import load_model_bundle
from library.scoring.scores import EvalBatch, EvalSet, score_files
from library.training.step import TextEncoding, sdxl_time_ids

TIMESTEPS = (200, 600)
# Two images in the 128x64 bucket (latent 8x16), their files 100x60 and 200x100 (w, h). sd-scripts'
# get_crop_ltrb fits each whole image into the bucket and centres it, floored:
#   100x60:  ratio 1.667 < 2.0, height 64, width 106.67, left (128 - 106.67) // 2 = 10 -> (60, 100, 0, 10, 64, 128)
#   200x100: ratio 2.0, not wider than the bucket: width 128, height 64, no offset     -> (100, 200, 0, 0, 64, 128)
SIZES = [(100, 60), (200, 100)]
IDS = [(60, 100, 0, 10, 64, 128), (100, 200, 0, 0, 64, 128)]


@pytest.fixture(scope="module")
def sdxl():
    return load_model_bundle("tiny-sdxl")


@pytest.fixture(scope="module")
def eval_set():
    gen = torch.Generator().manual_seed(3)
    batch = EvalBatch(torch.randn((2, 4, 8, 16), generator=gen), ["ohwx cube", "ohwx cube, red"], SIZES, (128, 64))
    return EvalSet([batch], class_prompt="cube", prior_prompts=("a red ball",), instance_token="ohwx",
                   timesteps=TIMESTEPS)


def _noisy(bundle, batch: EvalBatch, seed: int):
    """The scorer's fixed inputs, by hand: one generator seeding, each image repeated per timestep."""
    sched = DDPMScheduler.from_config({**bundle.scheduler_config, "clip_sample": False})
    x0 = batch.latents.repeat_interleave(len(TIMESTEPS), dim=0)
    t = torch.tensor(list(TIMESTEPS) * batch.latents.shape[0])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    return sched, x0, t, noise


@torch.no_grad()
def _hand_base_loss(bundle, eval_set: EvalSet, time_ids: torch.Tensor | None = None, zero_pooled: bool = False) -> float:
    """The base model's concept loss from a UNet call conditioned as the trainer's step conditions it."""
    batch = eval_set.concept[0]
    _sched, x0, t, noise = _noisy(bundle, batch, eval_set.seed)
    captions = [c for c in batch.captions for _ in TIMESTEPS]
    cond = TextEncoding(bundle, None, None).encode(None, captions)
    if time_ids is None:
        time_ids = sdxl_time_ids(batch.original_sizes, batch.bucket, [False] * len(batch.captions))
    time_ids = time_ids.repeat_interleave(len(TIMESTEPS), dim=0)
    pooled = torch.zeros_like(cond.pooled) if zero_pooled else cond.pooled
    pred = bundle.unet(_sched.add_noise(x0, noise, t), t, cond.hidden,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    return float((pred - noise).pow(2).mean())


def _te_lora(bundle, path, prefix: str) -> str:
    """A LoRA file holding only the modules whose names start with `prefix` (lora_te1_ / lora_te2_), nonzero."""
    net = LoRANetwork.create(bundle.unet, bundle.text_encoders(), rank=2, alpha=2)
    gen = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=gen) * 0.5 if "lora_up" in k else v)
             for k, v in net.state_dict().items() if k.startswith(prefix)}
    assert state
    save_lora(state, path)
    return str(path)


def test_size_ids_are_the_trainers_for_each_image(eval_set):
    assert [tuple(r) for r in eval_set.concept[0].size_ids().int().tolist()] == IDS
    # Without recorded sizes a latent counts as a whole image of its own size (8 px per latent cell).
    bare = EvalBatch(torch.zeros(1, 4, 8, 16), ["x"])
    assert bare.size_ids().int().tolist() == [[64, 128, 0, 0, 64, 128]]


def test_base_loss_equals_a_hand_unet_call_with_the_trainers_conditioning(sdxl, eval_set, tmp_path):
    lora = _te_lora(sdxl, tmp_path / "te2.safetensors", "lora_te2_")
    score = score_files(sdxl, [lora], eval_set, weights=(1.0,))[0]
    assert score.base_loss == pytest.approx(_hand_base_loss(sdxl, eval_set), rel=1e-6, abs=0)


def test_dropping_the_added_conditioning_would_change_the_numbers(sdxl, eval_set, tmp_path):
    """The same call with zero time ids, with ids that ignore the images' own sizes and crops, or with a zero
    pooled embedding gives another loss: a scorer that dropped or simplified SDXL's added conditioning fails.

    The random tiny model's added embedding moves its loss little (measured: 2.7e-4 relative with zero
    ids, 3.9e-5 with whole-latent ids), but each is far above the 1e-6 the equality above allows, and
    CPU runs repeat bit for bit.
    """
    lora = _te_lora(sdxl, tmp_path / "te2.safetensors", "lora_te2_")
    base = score_files(sdxl, [lora], eval_set, weights=(1.0,))[0].base_loss
    assert base == pytest.approx(_hand_base_loss(sdxl, eval_set), rel=1e-6, abs=0)
    zero_ids = _hand_base_loss(sdxl, eval_set, torch.zeros(2, 6))
    whole_latent = _hand_base_loss(sdxl, eval_set, torch.tensor([[64.0, 128, 0, 0, 64, 128]] * 2))
    zero_pooled = _hand_base_loss(sdxl, eval_set, zero_pooled=True)
    for other in (zero_ids, whole_latent, zero_pooled):
        assert abs(base - other) > 1e-5 * base


@pytest.mark.parametrize("prefix", ["lora_te1_", "lora_te2_"])
def test_a_lora_on_one_text_encoder_moves_fidelity_and_drift(sdxl, eval_set, tmp_path, prefix):
    """LoRAs apply to both SDXL encoders (the sampler's LoraStack.for_bundle), so a text-encoder-only file scores."""
    lora = _te_lora(sdxl, tmp_path / f"{prefix}.safetensors", prefix)
    zero, one = score_files(sdxl, [lora], eval_set, weights=(0.0, 1.0))
    assert zero.fidelity == 1.0 and zero.drift == 0.0
    assert one.fidelity != 1.0 and one.drift > 1e-6
    assert one.class_drift > 0 and one.prior_drift > 0
    assert not any("lora" in n for m in sdxl.text_encoders() for n, _ in m.named_modules())  # removed again


@torch.no_grad()
def test_sd2_v_prediction_is_scored_against_the_velocity(tmp_path):
    """tiny-sd2 predicts v: the fidelity loss's target is v (as the trainer's loss), not the noise."""
    bundle = load_model_bundle("tiny-sd2")
    assert bundle.scheduler_config["prediction_type"] == "v_prediction"
    gen = torch.Generator().manual_seed(5)
    eval_set = EvalSet([EvalBatch(torch.randn((2, 4, 8, 8), generator=gen), ["ohwx cube", "ohwx cube"])],
                       class_prompt="cube", prior_prompts=("a house",), instance_token="ohwx", timesteps=TIMESTEPS)
    net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=2, alpha=2, train_text_encoder=False)
    path = net.save_weights(tmp_path / "sd2.safetensors")
    net.restore()
    score = score_files(bundle, [path], eval_set, weights=(1.0,))[0]
    sched, x0, t, noise = _noisy(bundle, eval_set.concept[0], eval_set.seed)
    cond = TextEncoding(bundle, None, None).encode(None, ["ohwx cube"] * 4)
    pred = bundle.unet(sched.add_noise(x0, noise, t), t, cond.hidden).sample
    v_loss = float((pred - sched.get_velocity(x0, noise, t)).pow(2).mean())
    eps_loss = float((pred - noise).pow(2).mean())
    assert score.base_loss == pytest.approx(v_loss, rel=1e-6)
    assert abs(v_loss - eps_loss) > 1e-2 * v_loss


def test_a_zero_terminal_snr_run_is_scored_on_its_training_schedule(tmp_path):
    """--zero_terminal_snr trains on rescaled betas: the scorer noises with the same ᾱ as the trainer's validation loss."""
    from library.scoring.scores import scoring_scheduler
    from library.training.setup import training_alphas_cumprod

    bundle = load_model_bundle("tiny-sd2")
    plain, rescaled = scoring_scheduler(bundle), scoring_scheduler(bundle, zero_terminal_snr=True)
    trainer = training_alphas_cumprod(plain.betas, True)
    assert torch.allclose(rescaled.alphas_cumprod.double(), trainer.double(), atol=1e-6)
    assert float(rescaled.alphas_cumprod[-1]) == pytest.approx(0.0, abs=1e-12)
    assert not torch.allclose(plain.alphas_cumprod, rescaled.alphas_cumprod, atol=1e-4)
    gen = torch.Generator().manual_seed(5)
    batch = EvalBatch(torch.randn((2, 4, 8, 8), generator=gen), ["ohwx cube", "ohwx cube"])
    net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=2, alpha=2, train_text_encoder=False)
    path = net.save_weights(tmp_path / "sd2.safetensors")
    net.restore()
    losses = [score_files(bundle, [path], EvalSet([batch], class_prompt="cube", prior_prompts=("a house",),
                                                  timesteps=TIMESTEPS, zero_terminal_snr=z), weights=(1.0,))[0].base_loss
              for z in (False, True)]
    assert abs(losses[0] - losses[1]) > 1e-3 * losses[0]
