"""Pure math of the trainer: noise, timesteps, min-SNR, losses, LR schedules, optimizers."""
from __future__ import annotations

import math

import pytest
import torch

from library.errors import ConfigError
from library.training import loss as L
from library.training import noise as N
from library.training import schedulers as S
from library.training.lion import Lion
from library.training.optimizers import build_optimizer, d_times_lr


def sd_alphas_cumprod() -> torch.Tensor:
    # SD1.x scaled_linear betas: linspace(sqrt(0.00085), sqrt(0.012), 1000) ** 2
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).float()


def test_min_snr_weights_hand_computed() -> None:
    ac = sd_alphas_cumprod()
    snr = L.snr_from_alphas(ac)
    # t=0: ᾱ = 1 - 0.00085 → SNR = 0.99915 / 0.00085 = 1175.4706; weight 5/1175.47
    assert snr[0].item() == pytest.approx(0.99915 / 0.00085, rel=1e-4)
    t = torch.tensor([0, 999])
    w_eps = L.min_snr_weights(snr[t], 5.0)
    assert w_eps[0].item() == pytest.approx(5.0 / 1175.4706, rel=1e-4)
    assert w_eps[1].item() == pytest.approx(1.0)  # SNR(999) ≈ 0.0047 < 5 → min(SNR,5)/SNR = 1
    w_v = L.min_snr_weights(snr[t], 5.0, v_prediction=True)
    assert w_v[0].item() == pytest.approx(5.0 / 1176.4706, rel=1e-4)
    s999 = snr[999].item()
    assert w_v[1].item() == pytest.approx(s999 / (s999 + 1.0), rel=1e-5)


def test_weighted_batch_loss_combines_prior_and_snr() -> None:
    per = torch.tensor([2.0, 4.0])
    snr = torch.tensor([10.0, 2.5])
    out = L.weighted_batch_loss(per, torch.tensor([1.0, 0.5]), torch.tensor([0, 1]), snr, 5.0)
    # sample 0: 2 * 1 * (5/10) = 1; sample 1: 4 * 0.5 * (2.5/2.5) = 2; mean 1.5
    assert out.item() == pytest.approx(1.5)


def test_debiased_estimation_weights_match_hand_computed_values() -> None:
    snr = torch.tensor([4.0, 0.25, 1e6, float("inf")])
    w = L.debiased_estimation_weights(snr)
    expected = [0.5, 2.0, 1 / 1000 ** 0.5, 1 / 1000 ** 0.5]  # 1/sqrt(SNR), SNR capped at 1000
    assert w.tolist() == pytest.approx(expected, rel=1e-6)
    assert L.debiased_estimation_weights(snr, v_prediction=True).tolist() == pytest.approx(
        [0.2, 0.8, 1 / 1001, 1 / 1001], rel=1e-6)


def test_weighted_batch_loss_multiplies_min_snr_and_debiasing() -> None:
    per = torch.tensor([2.0, 4.0])
    snr = torch.tensor([16.0, 0.25])
    out = L.weighted_batch_loss(per, torch.ones(2), torch.tensor([0, 1]), snr, 5.0, debiased_estimation=True)
    # sample 0: 2 * (5/16) * (1/4) = 0.15625; sample 1: 4 * 1 * 2 = 8; mean 4.078125
    assert out.item() == pytest.approx(4.078125)
    plain = L.weighted_batch_loss(per, torch.ones(2), torch.tensor([0, 1]), snr, None, debiased_estimation=True)
    assert plain.item() == pytest.approx((2 * 0.25 + 4 * 2) / 2)


def test_per_sample_loss_types() -> None:
    pred = torch.zeros(2, 1, 1, 2)
    target = torch.tensor([[[[1.0, 3.0]]], [[[0.0, -2.0]]]])
    assert L.per_sample_loss(pred, target, "l2").tolist() == [5.0, 2.0]
    assert L.per_sample_loss(pred, target, "l1").tolist() == [2.0, 1.0]
    delta = torch.tensor([1.0, 1.0])
    # pseudo-Huber: 2·δ·(√(d²+δ²) − δ); d=1 → 2(√2−1), d=3 → 2(√10−1)
    h = L.per_sample_loss(pred, target, "huber", delta)
    assert h[0].item() == pytest.approx((2 * (2 ** 0.5 - 1) + 2 * (10 ** 0.5 - 1)) / 2, rel=1e-6)
    s = L.per_sample_loss(pred, target, "smooth_l1", torch.tensor([0.5, 0.5]))
    assert s[1].item() == pytest.approx((0 + 2 * ((4.25) ** 0.5 - 0.5)) / 2, rel=1e-6)


def test_huber_threshold_schedules() -> None:
    ac = sd_alphas_cumprod()
    t = torch.tensor([0, 500])
    assert L.huber_threshold(t, ac, 0.1, "constant", 1000).tolist() == pytest.approx([0.1, 0.1])
    exp = L.huber_threshold(t, ac, 0.1, "exponential", 1000)
    assert exp[1].item() == pytest.approx(math.exp(-500 * -math.log(0.1) / 1000), rel=1e-5)
    snr = L.huber_threshold(t, ac, 0.1, "snr", 1000)
    sigma = ((1 - ac[500]) / ac[500]).sqrt().item()
    assert snr[1].item() == pytest.approx(0.9 / (1 + sigma) ** 2 + 0.1, rel=1e-5)


def test_noise_offset_against_hand_draws() -> None:
    latents = torch.zeros(2, 4, 3, 3)
    gen = torch.Generator().manual_seed(7)
    out = N.offset_noise(latents, torch.zeros_like(latents), 0.1, gen)
    draws = torch.randn((2, 4, 1, 1), generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, (0.1 * draws).expand(2, 4, 3, 3))
    # adaptive: offset + 2·|channel mean| (here mean 0.5 in every channel) → 0.1 + 1.0
    gen = torch.Generator().manual_seed(7)
    out = N.offset_noise(torch.full((2, 4, 3, 3), 0.5), torch.zeros(2, 4, 3, 3), 0.1, gen, adaptive_scale=2.0)
    assert torch.allclose(out, (1.1 * draws).expand(2, 4, 3, 3))


def test_noise_batch_is_a_function_of_the_generator() -> None:
    ac = sd_alphas_cumprod()
    settings = N.NoiseSettings(noise_offset=0.05, multires_noise_iterations=3, ip_noise_gamma=0.1,
                               min_timestep=100, max_timestep=200)
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    a = N.noise_batch(latents, settings, torch.Generator().manual_seed(3), ac)
    b = N.noise_batch(latents, settings, torch.Generator().manual_seed(3), ac)
    assert torch.equal(a.noisy_latents, b.noisy_latents) and torch.equal(a.timesteps, b.timesteps)
    assert a.timesteps.min() >= 100 and a.timesteps.max() < 200
    assert a.noise.std().item() == pytest.approx(1.0, abs=1e-5)  # pyramid noise renormalised


def test_add_noise_matches_ddpm_scheduler() -> None:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    x0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = torch.tensor([10, 900])
    ours = N.add_noise(x0, eps, t, sched.alphas_cumprod)
    assert torch.allclose(ours, sched.add_noise(x0, eps, t), atol=1e-6)
    assert torch.allclose(N.velocity(x0, eps, t, sched.alphas_cumprod), sched.get_velocity(x0, eps, t), atol=1e-6)


@pytest.mark.parametrize("name", ["constant_with_warmup", "cosine", "cosine_with_restarts", "polynomial", "linear"])
def test_schedules_match_diffusers(name: str) -> None:
    from diffusers.optimization import get_scheduler

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    kw = {"num_cycles": 3} if name == "cosine_with_restarts" else {}
    kw.update({"power": 2.0} if name == "polynomial" else {})
    ref = get_scheduler(name, opt, num_warmup_steps=5, num_training_steps=50, **kw)
    spec = S.schedule_spec(name, 5, 50, num_cycles=3, power=2.0)
    for step in range(1, 55):
        opt.step()
        ref.step()
        assert spec.multiplier(step) == pytest.approx(ref.get_last_lr()[0], abs=1e-9), step


def test_warmup_ratio_and_fixture_values() -> None:
    assert S.warmup_steps(0.1, 120) == 12
    assert S.warmup_steps(4, 120) == 4
    # the sd-scripts fixture logs lr 2.5e-5 at step 1 and 9.4793613e-5 at step 21 (lr 1e-4, cosine, warmup 4, 120 steps)
    spec = S.schedule_spec("cosine", 4, 120)
    assert 1e-4 * spec.multiplier(1) == pytest.approx(2.5e-5)
    assert 1e-4 * spec.multiplier(21) == pytest.approx(9.479361324338242e-05, rel=1e-6)
    with pytest.raises(ConfigError):
        S.schedule_spec("cosine", 0, 10, scheduler_args=["bogus=1"])


def test_lion_against_hand_computation() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    p.grad = torch.tensor([0.3, -0.0])
    opt.step()
    # θ·(1 − 0.1·0.5) − 0.1·sign(0.1·g)  → [0.95 − 0.1, −1.9 − 0]
    assert p.detach().tolist() == pytest.approx([0.85, -1.9])
    assert opt.state[p]["exp_avg"].tolist() == pytest.approx([0.003, 0.0])
    p.grad = torch.tensor([-1.0, 1.0])
    opt.step()
    # c = 0.9·m + 0.1·g = [0.0027 − 0.1, 0.1] → sign [−1, 1]
    assert p.detach().tolist() == pytest.approx([0.85 * 0.95 + 0.1, -1.9 * 0.95 - 0.1])


def test_optimizer_args_reach_the_optimizer() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    choice = build_optimizer("dadaptadam", ["decouple=True use_bias_correction=True weight_decay=0.20", "betas=0.9,0.99"],
                             [{"params": [p], "lr": 1.0}], 1.0)
    g = choice.optimizer.param_groups[0]
    assert g["decouple"] is True and g["use_bias_correction"] is True and g["weight_decay"] == 0.2
    assert g["betas"] == (0.9, 0.99)
    assert choice.adaptive and d_times_lr(choice.optimizer, 0) == pytest.approx(1e-6)
    assert choice.description == ("dadaptation.dadapt_adam.DAdaptAdam(decouple=True,use_bias_correction=True,"
                                  "weight_decay=0.2,betas=(0.9, 0.99))")
    adamw = build_optimizer("AdamW", [], [{"params": [p]}], 1e-3)
    assert adamw.description == "torch.optim.adamw.AdamW" and not adamw.adaptive
    sgd = build_optimizer("SGDNesterov", [], [{"params": [p]}], 1e-3)
    assert sgd.optimizer.param_groups[0]["nesterov"] is True and sgd.optimizer.param_groups[0]["momentum"] == 0.9
    dotted = build_optimizer("torch.optim.RMSprop", ["alpha=0.5"], [{"params": [p]}], 1e-3)
    assert dotted.optimizer.param_groups[0]["alpha"] == 0.5
    prodigy = build_optimizer("Prodigy", ["d_coef=2"], [{"params": [p]}], 1.0)
    assert prodigy.adaptive and prodigy.optimizer.param_groups[0]["d_coef"] == 2


def test_optimizer_errors_are_config_errors() -> None:
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ConfigError, match="AdamW"):
        build_optimizer("AdamW8bit", [], [{"params": [p]}], 1e-3)  # bitsandbytes is not installed on CPU CI
    with pytest.raises(ConfigError, match="no_such"):
        build_optimizer("AdamW", ["no_such=1"], [{"params": [p]}], 1e-3)
    with pytest.raises(ConfigError, match="not key=value"):
        build_optimizer("AdamW", ["betas"], [{"params": [p]}], 1e-3)


def test_adafactor_relative_step_rule() -> None:
    p = torch.nn.Parameter(torch.zeros(2, 2))
    groups = [{"params": [p], "lr": 0.5}]
    choice = build_optimizer("AdaFactor", [], groups, 1e-3)
    assert choice.adafactor_initial_lr == 1e-3 and choice.kwargs["relative_step"] is True
    sched = S.make_adafactor_scheduler(choice.optimizer, 1e-3)
    assert sched.get_last_lr()[0] == pytest.approx(1e-3)
    fixed = build_optimizer("AdaFactor", ["relative_step=False", "scale_parameter=False"], [{"params": [p]}], 1e-3)
    assert fixed.adafactor_initial_lr is None and fixed.optimizer.param_groups[0]["lr"] == 1e-3


def test_single_lr_optimizers_refuse_differing_group_lrs_before_loading() -> None:
    from library.training.optimizers import check_group_lrs

    with pytest.raises(ConfigError, match="text_encoder_lr 0.5"):
        check_group_lrs("DAdaptAdam", 1.0, 0.5, 1.0)
    with pytest.raises(ConfigError):
        check_group_lrs("prodigy", None, 0.5, 1.0)
    check_group_lrs("DAdaptAdam", 1.0, 0.0, 1.0)  # a frozen text encoder (lr 0) is allowed
    check_group_lrs("DAdaptAdam", 1.0, 0.5, 1.0, train_text_encoder=False)
    check_group_lrs("AdamW", 1e-4, 5e-5, 1e-4)


def test_loss_recorder_is_a_one_epoch_window() -> None:
    from library.training.tracking import LossRecorder

    rec = LossRecorder()
    for i, v in enumerate([1.0, 2.0, 3.0]):
        rec.add(1, i, v)
    assert rec.moving_average == pytest.approx(2.0)
    rec.add(2, 0, 4.0)  # replaces epoch 1's first batch: (4 + 2 + 3) / 3
    assert rec.moving_average == pytest.approx(3.0)
    clone = LossRecorder()
    clone.load_state_dict(rec.state_dict())
    assert clone.moving_average == rec.moving_average


def test_lr_tags_follow_sd_scripts_naming() -> None:
    from library.training.tracking import lr_logs

    # text encoder + UNet, AdamW: the fixture's tags lr/textencoder, lr/unet, lr/group1
    assert lr_logs([1e-4, 2e-4], ["textencoder", "unet"], [None, None]) == {
        "lr/textencoder": 1e-4, "lr/unet": 2e-4, "lr/group1": 2e-4}
    dadapt = lr_logs([1.0, 0.5], ["textencoder", "unet"], [2e-6, 2e-6])
    assert dadapt["lr/d*lr/textencoder"] == pytest.approx(2e-6) and dadapt["lr/d*lr/unet"] == pytest.approx(1e-6)
    assert dadapt["lr/d*lr/group1"] == pytest.approx(1e-6)
    assert lr_logs([1.0], ["unet"], [None]) == {"lr/unet": 1.0, "lr/group0": 1.0}


def test_file_names_and_pruning(tmp_path) -> None:
    from library.training import saving

    assert saving.epoch_file_name("x", 1, "safetensors") == "x-000001.safetensors"
    assert saving.step_file_name("x", 100, "ckpt") == "x-step00000100.ckpt"
    assert saving.should_save_epoch(2, 1, 3) and not saving.should_save_epoch(3, 1, 3)  # last epoch: final file
    for e in (2, 4, 6, 8):
        (tmp_path / saving.epoch_file_name("x", e, "safetensors")).write_bytes(b"")
    (tmp_path / "x-other-000002.safetensors").write_bytes(b"")  # another run's name is never touched
    removed = saving.prune_epoch_files(tmp_path, "x", "safetensors", 8, every=2, keep_last=2)
    assert sorted(p.name for p in removed) == ["x-000002.safetensors", "x-000004.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000006.safetensors", "x-000008.safetensors",
                                                          "x-other-000002.safetensors"]


def test_demo_dataset_is_deterministic(tmp_path) -> None:
    from library.world.bucket_dataset import FOLDER, make_shapes_dataset

    a = make_shapes_dataset(tmp_path / "a") / FOLDER
    b = make_shapes_dataset(tmp_path / "b") / FOLDER
    files = sorted(p.name for p in a.iterdir())
    assert len([f for f in files if f.endswith(".png")]) == 8 and len(files) == 16
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "shape_00.txt").read_text().startswith("ohwx shape, circle")


def test_events_and_commands(tmp_path) -> None:
    import json

    from library.training.console import format_lr
    from library.training.events import Commands, JsonLinesEvents, MultiEvents, RecordingEvents

    rec = RecordingEvents()
    sink = JsonLinesEvents(tmp_path / "p.jsonl")
    both = MultiEvents(rec, sink, None)
    both.on_step({"step": 1, "loss": 0.5})
    both.on_finish({"global_step": 1})
    sink.close()
    lines = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [x["event"] for x in lines] == ["step", "finish"] and lines[0]["loss"] == 0.5
    assert rec.of("step") == [{"step": 1, "loss": 0.5}]
    cmd = Commands()
    cmd.request("save_now")
    assert cmd.take("save_now") and not cmd.take("save_now")  # acted on once
    cmd.request("stop")
    assert cmd.take("stop") and cmd.take("stop")  # stop stays set
    with pytest.raises(ValueError):
        cmd.request("explode")
    assert format_lr({"lr": {"textencoder": 1.0, "unet": 1.0}, "dlr": {"textencoder": 2e-6, "unet": 2e-6}}) == "lr 1.00e+00 d*lr 2.00e-06"
