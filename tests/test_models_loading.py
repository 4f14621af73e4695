"""Loading base models from files and folders: formats, EMA, dtypes, VAE overrides, refusals."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.errors import ModelLoadError
from library.models import build_tiny_bundle, load_model_bundle
from library.models.hashing import file_sha256, legacy_hash
from library.models.saving import ldm_state_dict, save_diffusers, save_single_file
from library.models.single_file import ema_key


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_bundle()


@pytest.fixture(scope="module")
def tiny_ldm(tiny) -> dict[str, torch.Tensor]:
    return ldm_state_dict(tiny)


def _write(path: Path, state: dict[str, torch.Tensor]) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def _unet_equal(module: torch.nn.Module, other: torch.nn.Module) -> bool:
    a, b = module.state_dict(), other.state_dict()
    return all(torch.equal(a[k], b[k]) for k in a)


def _with_ema(tiny_ldm):
    """A file holding both sets: EMA copies differ from the regular UNet weights by +1."""
    state = dict(tiny_ldm)
    for key, value in tiny_ldm.items():
        if key.startswith("model.diffusion_model."):
            state[ema_key(key)] = value + 1
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    return state


def test_ema_key_naming():
    assert (ema_key("model.diffusion_model.input_blocks.1.1.proj_in.weight")
            == "model_ema.diffusion_modelinput_blocks11proj_inweight")


def test_non_ema_weights_by_default(tmp_path, tiny, tiny_ldm):
    path = _write(tmp_path / "both.safetensors", _with_ema(tiny_ldm))
    bundle = load_model_bundle(str(path))
    assert bundle.facts.weights_picked == "non-ema"
    assert _unet_equal(bundle.unet, tiny.unet)


def test_use_ema_weights_picks_ema(tmp_path, tiny, tiny_ldm):
    path = _write(tmp_path / "both.safetensors", _with_ema(tiny_ldm))
    bundle = load_model_bundle(str(path), use_ema_weights=True)
    assert bundle.facts.weights_picked == "ema"
    assert torch.equal(bundle.unet.conv_in.weight, tiny.unet.conv_in.weight + 1)
    assert _unet_equal(bundle.vae, tiny.vae)  # EMA covers the UNet only


def test_use_ema_without_ema_notes_it(tmp_path, tiny_ldm):
    bundle = load_model_bundle(str(_write(tmp_path / "one.safetensors", tiny_ldm)), use_ema_weights=True)
    assert bundle.facts.weights_picked == "only one set"
    assert any("no separate EMA" in n for n in bundle.facts.notes)


@pytest.mark.parametrize("stored, name", [(torch.float16, "fp16"), (torch.bfloat16, "bf16")])
def test_half_precision_files_load_as_fp32(tmp_path, tiny, stored, name):
    path = save_single_file(tiny, tmp_path / f"{name}.safetensors", dtype=stored)
    assert load_file(str(path))["model.diffusion_model.out.2.weight"].dtype == stored
    bundle = load_model_bundle(str(path))
    assert bundle.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(bundle.unet.conv_in.weight, tiny.unet.conv_in.weight.to(stored).float())
    assert bundle.facts.stored_dtype == name and bundle.facts.dtype == "fp32"


def test_file_hashes(tmp_path, tiny):
    path = save_single_file(tiny, tmp_path / "m.safetensors")
    facts = load_model_bundle(str(path)).facts
    assert facts.model_hash == file_sha256(path)
    import hashlib
    with open(path, "rb") as fh:
        fh.seek(0x100000)
        assert facts.legacy_hash == hashlib.sha256(fh.read(0x10000)).hexdigest()[:8] == legacy_hash(path)


def test_ckpt_with_plain_tensors_loads(tmp_path, tiny, tiny_ldm):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": tiny_ldm, "global_step": 470000}, path)
    bundle = load_model_bundle(str(path))
    assert _unet_equal(bundle.unet, tiny.unet)


class _Payload:
    """Unpickling this would create a folder: proof of whether code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_ckpt_with_pickled_callable_is_refused_without_running_it(tmp_path, tiny_ldm):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tiny_ldm, "payload": _Payload(str(marker))}, path)
    with pytest.raises(ModelLoadError) as err:
        load_model_bundle(str(path))
    assert not marker.exists()
    message = str(err.value)
    assert str(path) in message and "run code" in message and ".safetensors" in message


def test_truncated_safetensors(tmp_path, tiny):
    path = save_single_file(tiny, tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError) as err:
        load_model_bundle(str(path))
    assert str(path) in str(err.value) and "truncated" in str(err.value)


def test_missing_keys_are_named(tmp_path, tiny_ldm):
    state = dict(tiny_ldm)
    del state["first_stage_model.decoder.conv_out.weight"]
    with pytest.raises(ModelLoadError) as err:
        load_model_bundle(str(_write(tmp_path / "broken.safetensors", state)))
    assert "first_stage_model.decoder.conv_out.weight" in str(err.value) and "vae" in str(err.value)


def test_wrong_shape_is_named(tmp_path, tiny_ldm):
    state = dict(tiny_ldm)
    state["model.diffusion_model.out.2.bias"] = torch.zeros(7)
    with pytest.raises(ModelLoadError, match=r"out\.2\.bias: shape \[7\], expected \[4\]"):
        load_model_bundle(str(_write(tmp_path / "broken.safetensors", state)))


def test_file_without_unet_is_refused(tmp_path):
    lora = {"lora_unet_conv_in.lora_down.weight": torch.zeros(4, 4)}
    with pytest.raises(ModelLoadError, match="no Stable Diffusion UNet"):
        load_model_bundle(str(_write(tmp_path / "lora.safetensors", lora)))


@pytest.mark.parametrize("extra, what", [
    # OpenCLIP keys beside SD1.x's CLIP: read as SD2.x, whose text encoder is then missing
    ({"cond_stage_model.model.ln_final.weight": torch.zeros(2)}, "do not match the Stable Diffusion 2.x layout"),
    # SD1.x's CLIP with SD2's 1024-wide cross-attention: parts of two models
    ({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(320, 1024)},
     "Stable Diffusion 1.x text encoder keys but 1024-wide cross-attention"),
])
def test_mixed_families_are_named(tmp_path, tiny_ldm, extra, what):
    """SD2.x and SDXL load now (tests/test_models_sd2.py, test_models_sdxl.py); a file mixing
    the families' parts is an error that says which family it was read as and what is wrong."""
    with pytest.raises(ModelLoadError, match=what):
        load_model_bundle(str(_write(tmp_path / "other.safetensors", {**tiny_ldm, **extra})))


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unsupported weight file type"):
        load_model_bundle(str(path))


def test_diffusers_folder_round_trip(tmp_path, tiny):
    folder = save_diffusers(tiny, tmp_path / "pipe")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # temp folder renamed away
    assert sorted(p.name for p in folder.iterdir()) == [
        "model_index.json", "scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    te_keys = load_file(str(folder / "text_encoder" / "model.safetensors"))
    assert "text_model.encoder.layers.0.self_attn.q_proj.weight" in te_keys
    bundle = load_model_bundle(str(folder))
    assert bundle.facts.source_format == "diffusers" and bundle.facts.name == "pipe"
    assert bundle.facts.model_hash == tiny.facts.model_hash  # same weights, same state-dict hash
    assert bundle.facts.config_family == "tiny"
    assert bundle.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_diffusers_folder_without_tokenizer_uses_ours(tmp_path, tiny):
    import shutil
    folder = save_diffusers(tiny, tmp_path / "pipe")
    shutil.rmtree(folder / "tokenizer")
    assert len(load_model_bundle(str(folder)).tokenizer) == 49408


def test_diffusers_folder_missing_weights(tmp_path, tiny):
    folder = save_diffusers(tiny, tmp_path / "pipe")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights found in .*vae"):
        load_model_bundle(str(folder))


def test_v_prediction_folder_is_read_from_its_scheduler_config(tmp_path, tiny):
    import json
    folder = save_diffusers(tiny, tmp_path / "pipe")
    sched = folder / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps({**json.loads(sched.read_text()), "prediction_type": "v_prediction"}))
    bundle = load_model_bundle(str(folder))
    assert bundle.facts.prediction_type == "v_prediction" and bundle.facts.prediction_known
    assert "scheduler_config.json" in bundle.facts.prediction_source
    assert bundle.scheduler_config["prediction_type"] == "v_prediction"


@pytest.fixture(scope="module")
def other_vae():
    return build_tiny_bundle(seed=7).vae


@pytest.mark.parametrize("prefix", ["", "first_stage_model."])
def test_vae_file_override(tmp_path, tiny, other_vae, prefix):
    from library.models.ldm_convert import component_to_ldm
    ldm = component_to_ldm("vae", other_vae.config, other_vae.state_dict())
    state = {prefix + k.removeprefix("first_stage_model."): v for k, v in ldm.items()}
    path = _write(tmp_path / "vae.safetensors", state)
    bundle = load_model_bundle("tiny", vae=str(path))
    assert _unet_equal(bundle.vae, other_vae)
    assert _unet_equal(bundle.unet, tiny.unet)
    assert bundle.facts.vae_name == "vae.safetensors" and bundle.facts.vae_hash == file_sha256(path)


def test_vae_folder_override(tmp_path, other_vae):
    other_vae.save_pretrained(str(tmp_path / "vae"))
    bundle = load_model_bundle("tiny", vae=str(tmp_path / "vae"))
    assert _unet_equal(bundle.vae, other_vae)
    assert bundle.facts.vae_name == "vae" and bundle.facts.vae_legacy_hash is None


def test_vae_override_missing(tmp_path):
    with pytest.raises(ModelLoadError, match="VAE not found"):
        load_model_bundle("tiny", vae=str(tmp_path / "none.safetensors"))


def test_diffusers_folder_with_bin_weights_and_old_clip_names(tmp_path, tiny):
    """Older folders store `pytorch_model.bin` with `text_model.`-prefixed keys; both are read without code."""
    folder = save_diffusers(tiny, tmp_path / "pipe")
    te_dir = folder / "text_encoder"
    state = load_file(str(te_dir / "model.safetensors"))
    state["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    torch.save(state, te_dir / "pytorch_model.bin")
    (te_dir / "model.safetensors").unlink()
    bundle = load_model_bundle(str(folder))
    assert _unet_equal(bundle.text_encoder, tiny.text_encoder)


def test_diffusers_layout_vae_file_override(tmp_path, other_vae):
    path = _write(tmp_path / "diffusion_pytorch_model.safetensors", other_vae.state_dict())
    bundle = load_model_bundle("tiny", vae=str(path))
    assert _unet_equal(bundle.vae, other_vae)


def test_vae_file_of_wrong_architecture(tmp_path):
    path = _write(tmp_path / "vae.safetensors", {"encoder.conv_in.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(ModelLoadError, match=r"unlike any SD1.x VAE"):
        load_model_bundle("tiny", vae=str(path))


def test_diffusers_folder_fp16_variant_files(tmp_path, tiny):
    folder = save_diffusers(tiny, tmp_path / "pipe", torch.float16)
    for sub, stem in [("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")]:
        (folder / sub / f"{stem}.safetensors").rename(folder / sub / f"{stem}.fp16.safetensors")
    bundle = load_model_bundle(str(folder))
    assert bundle.facts.stored_dtype == "fp16" and bundle.unet.conv_in.weight.dtype == torch.float32
    assert torch.equal(bundle.unet.conv_in.weight, tiny.unet.conv_in.weight.half().float())
