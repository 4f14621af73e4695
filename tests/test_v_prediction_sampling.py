"""Sampling a v-prediction model: the v denoiser, CFG rescale (guidance_rescale), its infotext field."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from library.errors import SamplingError
from library.models import build_tiny_bundle
from library.sampling.denoiser import CFGDenoiser, DiscreteDenoiser, rescale_guidance
from library.sampling.pipeline import SampleRequest, generate

SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


class OracleUNet(torch.nn.Module):
    """A perfect predictor for one known (x0, ε): returns v or ε for the input it is given."""

    def __init__(self, x0: torch.Tensor, eps: torch.Tensor, predict: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.x0, self.eps, self.predict = x0, eps, predict
        self.sigma = None

    def forward(self, x, t, encoder_hidden_states=None):  # noqa: ANN001, ANN201
        s = self.sigma
        alpha, sig = 1 / (s**2 + 1) ** 0.5, s / (s**2 + 1) ** 0.5  # √ᾱ and √(1−ᾱ) at this σ
        out = self.eps if self.predict == "eps" else alpha * self.eps - sig * self.x0
        return SimpleNamespace(sample=out.expand_as(x).clone())


@pytest.mark.parametrize("predict, prediction_type", [("v", "v_prediction"), ("eps", "epsilon")])
@pytest.mark.parametrize("sigma", [0.1, 1.0, 14.6])
def test_the_denoiser_recovers_x0_from_a_perfect_prediction(predict, prediction_type, sigma) -> None:
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 4, 4, generator=gen), torch.randn(1, 4, 4, 4, generator=gen)
    unet = OracleUNet(x0, eps, predict)
    unet.sigma = sigma
    d = DiscreteDenoiser(unet, {**SCHEDULE, "prediction_type": prediction_type})
    x = x0 + sigma * eps  # the k-diffusion parametrisation: x = x0 + σ·ε
    out = d(x, torch.tensor([sigma]), torch.zeros(1, 2, 8))
    assert torch.allclose(out, x0, atol=1e-5)


def test_an_epsilon_reading_of_a_v_output_does_not_recover_x0() -> None:
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(1, 4, 4, 4, generator=gen), torch.randn(1, 4, 4, 4, generator=gen)
    unet = OracleUNet(x0, eps, "v")
    unet.sigma = 1.0
    d = DiscreteDenoiser(unet, {**SCHEDULE, "prediction_type": "epsilon"})
    assert not torch.allclose(d(x0 + eps, torch.tensor([1.0]), torch.zeros(1, 2, 8)), x0, atol=1e-2)


def test_rescale_guidance_by_hand() -> None:
    guided = torch.tensor([[1.0, 3.0]])  # std (unbiased) √2
    cond = torch.tensor([[0.0, 1.0]])  # std √2/2 → ratio 0.5
    assert rescale_guidance(guided, cond, 0.7).tolist()[0] == pytest.approx([0.65, 1.95])
    assert rescale_guidance(guided, cond, 0.0).tolist()[0] == [1.0, 3.0]
    assert rescale_guidance(guided, cond, 1.0).tolist()[0] == pytest.approx([0.5, 1.5])


class SplitDenoiser:
    """Different D for the uncond and cond halves, as a stand-in for DiscreteDenoiser."""

    def __init__(self, prediction_type: str) -> None:
        self.prediction_type = prediction_type

    pattern = torch.linspace(-1.0, 1.0, 4 * 8 * 8).view(1, 4, 8, 8)

    def __call__(self, x, sigma, cond):  # noqa: ANN001, ANN204
        return x * 0.5 + cond.view(-1, 1, 1, 1) * self.pattern

    output_offset = DiscreteDenoiser.output_offset


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_cfg_rescale_matches_the_conditional_std_in_model_output_space(prediction_type) -> None:
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([2.0])
    inner = SplitDenoiser(prediction_type)
    plain = CFGDenoiser(inner, torch.tensor([1.0]), torch.tensor([-1.0]), 7.0)(x, sigma)
    full = CFGDenoiser(inner, torch.tensor([1.0]), torch.tensor([-1.0]), 7.0, guidance_rescale=1.0)(x, sigma)
    off = CFGDenoiser(inner, torch.tensor([1.0]), torch.tensor([-1.0]), 7.0, guidance_rescale=0.0)(x, sigma)
    assert torch.equal(plain, off) and not torch.allclose(plain, full)
    o = x if prediction_type == "epsilon" else x / (sigma**2 + 1)
    d_cond = x * 0.5 + SplitDenoiser.pattern
    # φ = 1: the guided output (∝ o − D) has the std of the conditional output
    assert (o - full).std().item() == pytest.approx((o - d_cond).std().item(), rel=1e-5)


def test_guidance_rescale_changes_samples_and_writes_the_extension_field() -> None:
    bundle = build_tiny_bundle(0)
    base = {"prompt": "a cube", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64, "seed": 7}
    plain = generate(bundle, SampleRequest(**base))[0]
    rescaled = generate(bundle, SampleRequest(**base, guidance_rescale=0.7))[0]
    assert "CFG Rescale" not in plain.parameters
    assert ", CFG Rescale: 0.7, " in rescaled.parameters
    assert not np.array_equal(np.asarray(plain.image), np.asarray(rescaled.image))
    with pytest.raises(SamplingError, match="guidance_rescale 1.5"):
        generate(bundle, SampleRequest(**base, guidance_rescale=1.5))


def test_grid_has_a_cfg_rescale_axis() -> None:
    from library.evaluation.axes import CellSettings
    from library.evaluation.grid import parse_axes, plan_cells

    base = CellSettings(SampleRequest(prompt="a cube", steps=2, width=64, height=64, seed=1), "tiny")
    axes = parse_axes(base, [("CFG Rescale", "0, 0.7")], None)
    cells = plan_cells(base, axes)
    assert [c.settings.request.guidance_rescale for c in cells] == [0.0, 0.7]
    assert axes[0].labels == ["CFG Rescale: 0", "CFG Rescale: 0.7"]
