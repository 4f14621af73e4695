"""Prompt editing and alternation change the conditioning the UNet gets, call by call, as in A1111."""
from __future__ import annotations

import pytest
import torch

from library.models import build_tiny_bundle
from library.sampling.denoiser import DiscreteDenoiser
from library.sampling.pipeline import SampleRequest, SamplingSession
from library.sampling.step_conditioning import total_steps


@pytest.fixture(scope="module")
def session():
    return SamplingSession(build_tiny_bundle(0))


def _record(monkeypatch):
    """The (cond, uncond) tensors of every UNet call (CFG runs uncond then cond in one batch)."""
    calls = []
    original = DiscreteDenoiser.__call__

    def recording(self, x, sigma, cond):
        uncond, c = cond.chunk(2)
        calls.append((c.clone(), uncond.clone()))
        return original(self, x, sigma, cond)

    monkeypatch.setattr(DiscreteDenoiser, "__call__", recording)
    return calls


def _which(tensor, options, encoder):
    found = [name for name in options if torch.equal(tensor, encoder.encode(name, None))]
    assert len(found) == 1, found
    return found[0]


def test_prompt_editing_switches_after_the_when_step(session, monkeypatch):
    calls = _record(monkeypatch)
    session.generate(SampleRequest("a [red:blue:2] cube", negative_prompt="[ugly::1]", steps=4, sampler="Euler",
                                   width=32, height=32, seed=1))
    assert len(calls) == 4
    enc = session.encoder
    # A1111: entry (2, red) serves calls 0, 1, 2 (call <= end step); the negative's (1, ugly) serves 0, 1
    assert [_which(c[0], ["a red cube", "a blue cube"], enc) for c in calls] == [
        "a red cube", "a red cube", "a red cube", "a blue cube"]
    assert [_which(c[1], ["ugly", ""], enc) for c in calls] == ["ugly", "ugly", "", ""]


def test_alternation_per_call_and_distinct_texts_encoded_once(session, monkeypatch):
    calls = _record(monkeypatch)
    encoded = []
    original = type(session.encoder).encode

    def counting(self, prompt, clip_skip):
        if (prompt, clip_skip) not in self._cache:
            encoded.append(prompt)
        return original(self, prompt, clip_skip)

    session.encoder.clear()
    monkeypatch.setattr(type(session.encoder), "encode", counting)
    session.generate(SampleRequest("[cat|dog|bird]", steps=5, sampler="Euler", width=32, height=32, seed=2))
    names = [_which(c[0], ["cat", "dog", "bird"], session.encoder) for c in calls]
    # schedule [(1,cat),(2,dog),(3,bird),(4,cat),(5,dog)]; call i takes the first end >= i
    assert names == ["cat", "cat", "dog", "bird", "cat"]
    assert sorted(encoded) == ["", "bird", "cat", "dog"]  # each text once ("" is the negative)


def test_second_order_sampler_counts_model_calls(session, monkeypatch):
    assert total_steps("Heun", 3) == 6 and total_steps("Euler a", 3) == 3 and total_steps("DPM++ SDE Karras", 2) == 4
    calls = _record(monkeypatch)
    session.generate(SampleRequest("[cat:dog:0.5]", steps=3, sampler="Heun", width=32, height=32, seed=3))
    # Heun: 2 calls a step, 1 on the last (to sigma 0): 5 calls on a 6-call timeline switching at 3
    names = [_which(c[0], ["cat", "dog"], session.encoder) for c in calls]
    assert names == ["cat", "cat", "cat", "cat", "dog"]


def test_hires_second_pass_continues_the_timeline(session, monkeypatch):
    calls = _record(monkeypatch)
    session.generate(SampleRequest("[cat:dog:3]", steps=2, sampler="Euler", width=32, height=32, seed=4,
                                   enable_hr=True, hr_scale=1.5, hr_second_pass_steps=3, denoising_strength=0.5))
    names = [_which(c[0], ["cat", "dog"], session.encoder) for c in calls]
    # first pass (2 steps): 3 > 2, all cat; second pass: 3 - 2 = step 1 of 3 -> calls 0, 1 cat, call 2 dog
    assert names == ["cat", "cat", "cat", "cat", "dog"]


def test_batch_of_scheduled_and_plain_prompts_padded_to_one_length(session):
    from library.sampling.step_conditioning import StepConditioning

    long = "word " * 100  # two 77-token chunks
    steps = StepConditioning(session.encoder, ["[cat:dog:1]", "bird"], [f"[{long}::1]", ""], None, 3)
    enc = session.encoder
    for call, expected in ((0, "cat"), (1, "cat"), (2, "dog")):
        cond, uncond = steps.at(call)
        assert cond.shape == uncond.shape == (2, 154, cond.shape[2])
        assert torch.equal(cond[0, :77], enc.encode(expected, None)[0])
        assert torch.equal(cond[1, :77], enc.encode("bird", None)[0])
        assert torch.equal(cond[1, 77:], enc.encode("", None)[0])  # padded with the empty prompt's chunk
        negative = long.strip() if call <= 1 else ""
        assert torch.equal(uncond[0], enc.encode(long, None)[0]) if negative else torch.equal(
            uncond[0, :77], enc.encode("", None)[0])
    assert steps.used[-1] == (["dog", "bird"], ["", ""])


def test_plain_prompt_image_is_unchanged_by_the_wiring(session):
    from library.sampling.pipeline import sample_latents

    req = SampleRequest("a cube", steps=2, sampler="Euler", width=32, height=32, seed=5)
    image = session.generate(req)[0].image
    cond, uncond = session.encoder.encode_batch(["a cube"], [""], None)
    latents = sample_latents(session.denoiser, req, [5], cond, uncond)
    import numpy as np

    from library.sampling.pipeline import decode_latents

    assert np.array_equal(np.asarray(decode_latents(session.bundle.vae, latents)[0]), np.asarray(image))
