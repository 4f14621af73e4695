"""v-prediction training math: zero terminal SNR, the v target, v-loss weights, the step's target, metadata."""
from __future__ import annotations

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from library.config import TrainConfig
from library.config_validate import check_config
from library.training import loss as L
from library.training import noise as N
from library.training import step as step_module
from library.training.setup import training_alphas_cumprod
from library.training.step import StepMath


def test_zero_terminal_snr_betas_by_hand() -> None:
    betas = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    ab = [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7, 0.9 * 0.8 * 0.7 * 0.6]
    r = [math.sqrt(a) for a in ab]
    scale = r[0] / (r[0] - r[3])
    new_ab = [((x - r[3]) * scale) ** 2 for x in r]
    want = [1 - new_ab[0], 1 - new_ab[1] / new_ab[0], 1 - new_ab[2] / new_ab[1], 1.0]
    got = N.zero_terminal_snr_betas(betas)
    assert got.tolist() == pytest.approx(want, abs=1e-12)
    assert got[0].item() == pytest.approx(0.1) and got[1].item() == pytest.approx(0.439235, abs=1e-6)
    ac = training_alphas_cumprod(betas, True)
    assert ac[-1].item() == 0.0 and ac[0].item() == pytest.approx(0.9)


def test_zero_terminal_snr_on_the_sd_schedule() -> None:
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32) ** 2
    ac = training_alphas_cumprod(betas, True)
    assert ac[-1].item() == 0.0
    assert ac[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)  # the first ᾱ is kept
    plain = training_alphas_cumprod(betas, False)
    assert plain[-1].item() == pytest.approx(0.0047, abs=2e-4)  # SD's own terminal ᾱ is not 0
    assert torch.equal(plain, torch.cumprod(1.0 - betas, dim=0))


def test_velocity_is_alpha_noise_minus_sigma_x0() -> None:
    ac = torch.tensor([0.64, 0.36, 0.0])
    x0 = torch.tensor([1.0, 2.0, -1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    eps = torch.tensor([0.5, -1.0, 3.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    v = N.velocity(x0, eps, torch.tensor([0, 1, 2]), ac)
    # √ᾱ = 0.8, 0.6, 0; √(1−ᾱ) = 0.6, 0.8, 1
    assert v[:, 0, 0, 0].tolist() == pytest.approx([0.8 * 0.5 - 0.6 * 1.0, 0.6 * -1.0 - 0.8 * 2.0, 0.0 - 1.0 * -1.0])


def test_v_loss_scales_by_hand() -> None:
    snr = torch.tensor([10.0, 2.5, 5000.0])
    one = torch.ones(3)
    assert L.scale_v_pred_like_noise_pred(one, snr).tolist() == pytest.approx([10 / 11, 2.5 / 3.5, 1000 / 1001])
    assert L.add_v_pred_like_loss(one, snr, 0.5).tolist() == pytest.approx([1.55, 1.7, 1.0 + 0.5 * 1001 / 1000])


def test_weighted_loss_applies_v_weights_in_sd_scripts_order() -> None:
    per, w, t = torch.tensor([2.0, 4.0]), torch.ones(2), torch.tensor([0, 1])
    snr = torch.tensor([10.0, 2.5])
    got = L.weighted_batch_loss(per, w, t, snr, 5.0, v_prediction=True, scale_v_like_eps=True)
    assert got.item() == pytest.approx((2.0 * 5 / 11 * 10 / 11 + 4.0 * 2.5 / 3.5 * 2.5 / 3.5) / 2)
    got = L.weighted_batch_loss(per, w, t, snr, None, v_pred_like=0.25)
    assert got.item() == pytest.approx((2.0 * (1 + 0.25 * 1.1) + 4.0 * (1 + 0.25 * 1.4)) / 2)
    got = L.weighted_batch_loss(per, w, t, snr, None, v_prediction=True, debiased_estimation=True)
    assert got.item() == pytest.approx((2.0 / 11 + 4.0 / 3.5) / 2)


def test_min_snr_for_v_at_zero_terminal_snr_is_finite() -> None:
    snr = L.snr_from_alphas(torch.tensor([0.5, 0.0]))
    assert snr.tolist() == [1.0, 0.0]
    assert L.min_snr_weights(snr, 5.0, v_prediction=True).tolist() == [0.5, 0.0]


class OracleUNet(torch.nn.Module):
    """Returns exactly v (or ε) for the batch the step noised: a perfect v- (or ε-) predictor."""

    def __init__(self, seen: dict, predict: str) -> None:
        super().__init__()
        self.seen, self.predict = seen, predict

    def forward(self, x, t, cond):  # noqa: ANN001, ANN201 - the UNet's call shape
        nb, x0, ac = self.seen["nb"], self.seen["x0"], self.seen["ac"]
        a = ac[t].view(-1, 1, 1, 1)
        out = nb.noise if self.predict == "eps" else a.sqrt() * nb.noise - (1 - a).sqrt() * x0
        return SimpleNamespace(sample=out + 0 * x)


def step_loss(monkeypatch, predict: str, **options) -> float:
    seen: dict = {}
    original = step_module.noise_batch
    monkeypatch.setattr(step_module, "noise_batch", lambda *a: seen.setdefault("nb", original(*a)))
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    ac = training_alphas_cumprod(betas, options.get("zero_terminal_snr", False))
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    seen.update(x0=latents * 0.5, ac=ac)
    cfg = TrainConfig(**options)
    bundle = SimpleNamespace(vae=SimpleNamespace(config=SimpleNamespace(scaling_factor=0.5)),
                             scheduler_config={"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                                               "num_train_timesteps": 1000})
    parts = SimpleNamespace(config=cfg, bundle=bundle, device=torch.device("cpu"), weight_dtype=torch.float32,
                            rng=SimpleNamespace(noise=torch.Generator().manual_seed(3)), alphas_cumprod=ac,
                            accelerator=SimpleNamespace(autocast=contextlib.nullcontext), unet_step=OracleUNet(seen, predict),
                            v_prediction=cfg.v_parameterization, train_text_encoder=False)
    batch = {"latents": latents, "text_encoder_outputs": torch.zeros(2, 3, 8), "loss_weights": torch.ones(2)}
    return StepMath(parts).loss(batch).item()


@pytest.mark.parametrize("extra", [{}, {"zero_terminal_snr": True, "min_snr_gamma": 5.0},
                                   {"scale_v_pred_loss_like_noise_pred": True, "debiased_estimation_loss": True}])
def test_a_v_parameterization_step_trains_against_v(monkeypatch, extra) -> None:
    assert step_loss(monkeypatch, "v", v_parameterization=True, **extra) < 1e-10
    assert step_loss(monkeypatch, "eps", v_parameterization=True, **extra) > 0.01


def test_an_epsilon_step_trains_against_the_noise(monkeypatch) -> None:
    assert step_loss(monkeypatch, "eps") == 0.0
    assert step_loss(monkeypatch, "v") > 0.1


def test_v_options_follow_sd_scripts_rules() -> None:
    def problems(**kw):
        rep = check_config(TrainConfig(**kw), for_training=False)
        return [e.field for e in rep.errors], [w.field for w in rep.warnings]

    assert problems(scale_v_pred_loss_like_noise_pred=True)[0] == ["scale_v_pred_loss_like_noise_pred"]
    assert problems(v_pred_like_loss=0.5, v_parameterization=True)[0] == ["v_pred_like_loss"]
    assert "zero_terminal_snr" in problems(zero_terminal_snr=True)[1]
    assert problems(zero_terminal_snr=True, v_parameterization=True, scale_v_pred_loss_like_noise_pred=True) == ([], [])


def test_snr_table_ignores_the_zero_terminal_rescale() -> None:
    # sd-scripts builds all_snr before fixing the betas: the weights use the model's own SNR
    bundle = SimpleNamespace(scheduler_config={"beta_start": 0.00085, "beta_end": 0.012,
                                               "beta_schedule": "scaled_linear", "num_train_timesteps": 1000})
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    snr = step_module.snr_table(SimpleNamespace(bundle=bundle, alphas_cumprod=training_alphas_cumprod(betas, True)))
    ac = torch.cumprod(1.0 - betas, dim=0)
    assert snr[999].item() == pytest.approx(ac[999].item() / (1 - ac[999].item()), rel=1e-5) and snr[999].item() > 0


def test_a_v_prediction_run_records_it_in_the_lora_and_samples_as_v(shapes_data, tmp_path, monkeypatch) -> None:
    from safetensors import safe_open

    from library.sampling.denoiser import DiscreteDenoiser
    from library.training.trainer import train

    seen = []
    original = DiscreteDenoiser.__init__
    monkeypatch.setattr(DiscreteDenoiser, "__init__", lambda self, unet, sc: (seen.append(sc["prediction_type"]),
                                                                               original(self, unet, sc))[1])
    (tmp_path / "prompts.txt").write_text("a shape --w 64 --h 64 --s 2\n")
    cfg = TrainConfig(sample_prompts=str(tmp_path / "prompts.txt"), sample_at_first=True, pretrained_model_name_or_path="tiny", train_data_dir=str(shapes_data), output_dir=str(tmp_path),
                      output_name="v", caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64,
                      max_bucket_reso=128, train_batch_size=2, max_train_steps=1, cache_latents=True, seed=3,
                      v_parameterization=True, zero_terminal_snr=True, scale_v_pred_loss_like_noise_pred=True)
    train(cfg)
    with safe_open(str(tmp_path / "v.safetensors"), "pt") as f:
        md = f.metadata()
    assert md["ss_v_parameterization"] == "True" and md["ss_zero_terminal_snr"] == "True"
    assert md["modelspec.prediction_type"] == "v" and md["ss_base_model_version"] == "sd_v1_v"
    assert seen and set(seen) == {"v_prediction"}  # the tiny model's own config says epsilon


def test_an_epsilon_lora_says_so() -> None:
    from library.lora.metadata import build_metadata

    md = build_metadata({"output_name": "e"}, dataset={}, model={}, optimizer="AdamW", session_id=1,
                        training_started_at=0.0, epoch=1, steps=1, num_epochs=1, max_train_steps=1, num_batches_per_epoch=1)
    assert md["ss_v_parameterization"] == "False" and md["modelspec.prediction_type"] == "epsilon"


def test_v_parameterization_sets_the_bundle_facts(shapes_data, tmp_path) -> None:
    from library.data.prepare import prepare_data
    from library.training.setup import build_run

    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(shapes_data), output_dir=str(tmp_path),
                      caption_extension=".txt", resolution="64", train_batch_size=2, max_train_steps=1,
                      v_parameterization=True, zero_terminal_snr=True)
    parts = build_run(cfg, prepare_data(cfg), 3)
    assert parts.v_prediction and parts.bundle.facts.prediction_type == "v_prediction"
    assert parts.bundle.scheduler_config["prediction_type"] == "v_prediction" and parts.alphas_cumprod[-1].item() == 0.0
