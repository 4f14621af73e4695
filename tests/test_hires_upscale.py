"""Hires fix rules (A1111's) and the tiled upscaler."""
from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image

from library.errors import ModelLoadError, SamplingError
from library.sampling.hires import hires_infotext, hires_target, second_pass_steps
from library.sampling.upscale import (
    ModelUpscaler, image_to_tensor, lanczos_upscale, open_input_image, read_weights, tiled_apply,
)


def test_target_from_scale_truncates_like_int():
    t = hires_target(512, 768, hr_scale=1.5)
    assert t.upscale_to == (768, 1152) and t.truncate == (0, 0)
    assert hires_target(500, 500, hr_scale=1.33).upscale_to == (665, 665)


def test_target_from_one_side_keeps_aspect():
    assert hires_target(512, 768, hr_resize_x=1000).upscale_to == (1000, 1500)
    assert hires_target(512, 768, hr_resize_y=1000).upscale_to == (666, 1000)


def test_target_from_both_sides_fills_then_crops_whole_latent_cells():
    # 512x768 (ratio 0.667) into 1024x1024 (ratio 1): width rules, height 1536, crop (1536-1024)//8 cells
    t = hires_target(512, 768, hr_resize_x=1024, hr_resize_y=1024)
    assert t.upscale_to == (1024, 1536) and t.truncate == (0, 64) and t.final_size == (1024, 1024)
    t = hires_target(768, 512, hr_resize_x=1000, hr_resize_y=1000)
    assert t.upscale_to == (1500, 1000) and t.truncate == (62, 0)


def test_second_pass_steps_rule():
    # hr_second_pass_steps 0 -> same as Steps; schedule int(n / min(d, .999)) long, last n run
    assert second_pass_steps(20, 0, 0.5) == (40, 20)
    assert second_pass_steps(20, 10, 0.3) == (33, 10)
    assert second_pass_steps(20, 10, 1.0) == (10, 10)
    assert second_pass_steps(20, 0, 0.0) == (0, 0)
    with pytest.raises(SamplingError, match="hr_second_pass_steps"):
        second_pass_steps(20, -1, 0.5)


def test_infotext_fields_as_a1111_writes_them():
    assert hires_infotext(2, 0, 0, 0, "Latent", 0.7) == {
        "Denoising strength": 0.7, "Hires upscale": 2, "Hires upscaler": "Latent"}
    f = hires_infotext(2, 1024, 0, 15, "Lanczos", 0.3)
    assert list(f) == ["Denoising strength", "Hires resize", "Hires steps", "Hires upscaler"]
    assert f["Hires resize"] == "1024x0" and f["Hires steps"] == 15


class _Up2(torch.nn.Module):
    """Tiny 2x upscaler: 3x3 conv (receptive field 1 px) then pixel shuffle."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = torch.nn.PixelShuffle(2)

    def forward(self, x):
        return self.shuffle(self.conv(x))


def test_tiled_equals_untiled_within_tolerance():
    model = _Up2().eval()
    x = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        full = model(x)
    tiled = tiled_apply(model, x, scale=2, tile=16, overlap=6)
    assert tiled.shape == full.shape == (1, 3, 80, 112)
    # interiors agree exactly; only tile-border pixels (zero padding) carry small blended errors
    assert (tiled - full).abs().max() < 1e-3
    # without overlap the zero-padded tile edges show: the blending is what removes the seams
    seams = tiled_apply(model, x, scale=2, tile=16, overlap=0)
    assert (seams - full).abs().max() > 0.05


def test_tiled_is_exact_for_a_pointwise_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 1), torch.nn.PixelShuffle(2)).eval()
    x = torch.rand(1, 3, 33, 47)
    with torch.no_grad():
        assert torch.allclose(tiled_apply(model, x, 2, tile=10, overlap=3), model(x), atol=1e-5)


def test_lanczos_upscale_size():
    img = Image.new("RGB", (30, 20), (10, 200, 30))
    out = lanczos_upscale(img, 60, 40)
    assert out.size == (60, 40) and out.getpixel((30, 20)) == (10, 200, 30)


class _Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED_MARKER",))


def test_malicious_pickle_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "evil.pth"
    bad.write_bytes(pickle.dumps({"w": _Boom()}))
    with pytest.raises(ModelLoadError, match="never pickled code"):
        read_weights(bad)
    assert not (tmp_path / "PWNED_MARKER").exists()


def test_missing_and_unknown_model_files(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        read_weights(tmp_path / "nope.pth")
    odd = tmp_path / "odd.pth"
    torch.save({"not.a.known.arch": torch.zeros(3)}, odd)
    assert set(read_weights(odd)) == {"not.a.known.arch"}
    with pytest.raises(ModelLoadError, match="spandrel"):
        ModelUpscaler(odd)


def test_non_image_input_is_a_clear_error(tmp_path):
    f = tmp_path / "notes.png"
    f.write_text("hello")
    with pytest.raises(SamplingError, match="not an image"):
        open_input_image(f)
    with pytest.raises(SamplingError, match="no such file"):
        open_input_image(tmp_path / "missing.png")
    good = tmp_path / "ok.png"
    Image.new("RGB", (4, 4)).save(good)
    assert image_to_tensor(open_input_image(good)).shape == (1, 3, 4, 4)


# --- hires fix on the tiny model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bundle():
    from library.models import build_tiny_bundle
    return build_tiny_bundle(0)


HR = {"prompt": "a cube", "steps": 3, "width": 32, "height": 48, "seed": 7}


def _infotext_fields(parameters: str) -> dict[str, str]:
    from library.sampling.infotext import parse_infotext
    return parse_infotext(parameters)[2]


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (nearest)", "Lanczos"])
def test_hires_fix_makes_the_target_size_and_writes_a1111_fields(bundle, upscaler):
    from library.sampling.pipeline import SampleRequest, generate

    steps_seen = []
    req = SampleRequest(**HR, enable_hr=True, hr_scale=2, hr_upscaler=upscaler, hr_second_pass_steps=2,
                        denoising_strength=0.5)
    out = generate(bundle, req, on_step=steps_seen.append)[0]
    assert out.image.size == (64, 96)
    f = _infotext_fields(out.parameters)
    assert f["Size"] == "32x48"  # A1111 writes the first-pass size
    assert (f["Hires upscale"], f["Hires steps"], f["Hires upscaler"], f["Denoising strength"]) == \
        ("2", "2", upscaler, "0.5")
    assert len(steps_seen) == 3 + 2  # first pass, then exactly hr_second_pass_steps


def test_hires_resize_crops_to_the_requested_size_and_zero_steps_means_steps(bundle):
    from library.sampling.pipeline import SampleRequest, generate

    steps_seen = []
    req = SampleRequest(**HR, enable_hr=True, hr_resize_x=64, hr_resize_y=64, denoising_strength=0.4)
    out = generate(bundle, req, on_step=steps_seen.append)[0]
    assert out.image.size == (64, 64)  # 64x96 upscaled, 4 latent rows cropped
    f = _infotext_fields(out.parameters)
    assert f["Hires resize"] == "64x64" and "Hires steps" not in f and "Hires upscale" not in f
    assert len(steps_seen) == 3 + 3


def test_hires_unknown_upscaler_is_a_clear_error(bundle):
    from library.sampling.pipeline import SampleRequest, generate

    with pytest.raises(SamplingError, match="hr_upscaler 'ESRGAN_4x'"):
        generate(bundle, SampleRequest(**HR, enable_hr=True, hr_upscaler="ESRGAN_4x"))


def test_upscale_command_lanczos_and_errors(tmp_path, capsys):
    from library.cli import main

    src = tmp_path / "in.png"
    Image.new("RGB", (20, 12), (200, 10, 10)).save(src)
    assert main(["upscale", str(src), str(tmp_path / "out.png"), "--scale", "2"]) == 0
    with Image.open(tmp_path / "out.png") as im:
        assert im.size == (40, 24) and im.getpixel((20, 12)) == (200, 10, 10)
    bad = tmp_path / "bad.png"
    bad.write_text("no image")
    assert main(["upscale", str(bad), str(tmp_path / "o2.png")]) != 0
    assert "not an image" in capsys.readouterr().err
    assert main(["upscale", str(src), str(tmp_path / "o3.png"), "--model", str(tmp_path / "none.pth")]) != 0
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "o2.png").exists() and not (tmp_path / "o3.png").exists()


# --- memory options ----------------------------------------------------------------------------

def test_vae_tiling_decode_matches_untiled_within_tolerance():
    import numpy as np

    from library.models import build_tiny_bundle
    from library.sampling.memory import enable_vae_tiling
    from library.sampling.pipeline import decode_latents

    vae = build_tiny_bundle(0).vae
    torch.manual_seed(3)
    latents = torch.randn(1, vae.config.latent_channels, 32, 32)
    full = np.asarray(decode_latents(vae, latents)[0], dtype=np.int16)
    enable_vae_tiling(vae, tile_sample_size=128)  # 16-cell tiles over a 32-cell latent: really tiled
    assert vae.use_tiling and vae.tile_latent_min_size == 16
    tiled = np.asarray(decode_latents(vae, latents)[0], dtype=np.int16)
    assert tiled.shape == full.shape == (256, 256, 3)
    diff = np.abs(tiled - full)
    # GroupNorm sees each tile's statistics, so a random tiny VAE on random latents differs a little
    # everywhere (measured mean 6.2 of 255, image std 39); a broken tiling (shifted/misplaced tiles) is far off
    assert diff.mean() < 0.25 * full.std() and np.percentile(diff, 99) < 40


def test_attention_slicing_gives_the_same_image(bundle):
    import numpy as np

    from library.models import build_tiny_bundle
    from library.sampling.memory import apply_memory_options
    from library.sampling.pipeline import SampleRequest, generate

    req = SampleRequest(**HR)
    a = np.asarray(generate(bundle, req)[0].image, dtype=np.int16)
    sliced = build_tiny_bundle(0)
    apply_memory_options(sliced, attention_slicing=True)
    procs = {type(p).__name__ for p in sliced.unet.attn_processors.values()}
    assert procs == {"SlicedAttnProcessor"}
    b = np.asarray(generate(sliced, req)[0].image, dtype=np.int16)
    assert np.abs(a - b).max() <= 1


def test_cpu_sampling_uses_the_small_conv_path():
    from library.models import build_tiny_bundle
    from library.sampling.pipeline import SamplingSession

    b = build_tiny_bundle(0)
    SamplingSession(b)
    convs = [m for m in b.unet.modules() if type(m) is torch.nn.Conv2d]
    assert convs and all("_conv_forward" in m.__dict__ for m in convs)


def test_grid_hires_axes_turn_hires_on_and_denoising_needs_hires_or_init():
    from library.evaluation.axes import CellSettings
    from library.evaluation.grid import parse_axes, plan_cells
    from library.sampling.pipeline import SampleRequest

    base = CellSettings(SampleRequest(prompt="a cube", seed=1), "tiny")
    with pytest.raises(SamplingError, match="hires fix"):
        parse_axes(base, [("Denoising", "0.3, 0.6"), (None, None), (None, None)], None)
    axes = parse_axes(base, [("Hires upscaler", "Latent, Lanczos"), ("Hires steps", "5, 10"), (None, None)], None)
    reqs = [c.settings.request for c in plan_cells(base, axes)]
    assert {(r.enable_hr, r.hr_upscaler, r.hr_second_pass_steps) for r in reqs} == {
        (True, u, n) for u in ("Latent", "Lanczos") for n in (5, 10)}
    hires_base = CellSettings(SampleRequest(prompt="a cube", seed=1, enable_hr=True), "tiny")
    axes = parse_axes(hires_base, [("Denoising", "0.3, 0.6"), (None, None), (None, None)], None)
    assert [c.settings.request.denoising_strength for c in plan_cells(hires_base, axes)] == [0.3, 0.6]


def _tiny_rrdbnet_state(nf: int = 8, gc: int = 32, blocks: int = 1) -> dict[str, torch.Tensor]:
    """RealESRGAN's RRDBNet key layout (x4: conv_up1/conv_up2), 8 features, random weights (spandrel fixes gc=32)."""
    g = torch.Generator().manual_seed(0)

    def conv(name, cin, cout, sd):
        sd[f"{name}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * 0.05
        sd[f"{name}.bias"] = torch.zeros(cout)

    sd: dict[str, torch.Tensor] = {}
    conv("conv_first", 3, nf, sd)
    for b in range(blocks):
        for r in (1, 2, 3):
            for i in range(1, 6):
                conv(f"body.{b}.rdb{r}.conv{i}", nf + (i - 1) * gc, gc if i < 5 else nf, sd)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        conv(name, nf, nf, sd)
    conv("conv_last", nf, 3, sd)
    return sd


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_model_upscaler_runs_a_tiny_esrgan_file(tmp_path, suffix):
    pytest.importorskip("spandrel", reason="spandrel (extra 'upscale') is not installed here")
    path = tmp_path / f"tiny_x4{suffix}"
    state = _tiny_rrdbnet_state()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path))
    up = ModelUpscaler(path, tile=0)
    assert up.scale == 4
    img = Image.new("RGB", (12, 8), (120, 60, 30))
    out = up.upscale(img, 24, 16)  # one x4 model pass, then Lanczos down to the exact size
    assert out.size == (24, 16)
    tiled = ModelUpscaler(path, tile=8, overlap=4)
    x = image_to_tensor(Image.effect_noise((16, 16), 40).convert("RGB"))
    with torch.no_grad():
        full = up.descriptor.model(x)
        t = tiled_apply(tiled.descriptor.model, x, 4, tile=8, overlap=4)
    assert t.shape == full.shape == (1, 3, 64, 64)


def test_hires_fix_with_an_upscaler_model_file(tmp_path, bundle):
    pytest.importorskip("spandrel", reason="spandrel (extra 'upscale') is not installed here")
    from library.sampling.pipeline import SampleRequest, generate

    torch.save(_tiny_rrdbnet_state(), tmp_path / "tiny_x4.pth")
    req = SampleRequest(**HR, enable_hr=True, hr_upscaler="tiny_x4.pth", models_dir=str(tmp_path),
                        hr_second_pass_steps=1, denoising_strength=0.3)
    out = generate(bundle, req)[0]
    assert out.image.size == (64, 96)
    assert _infotext_fields(out.parameters)["Hires upscaler"] == "tiny_x4"
