"""LoRA files: save/load, hashes, conversion from PEFT/diffusers layouts, damaged files, metadata."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

from library.errors import ConfigError, LoRAFileError
from library.lora.file import data_region_sha256, precalculate_hashes, read_tensors
from library.lora.from_config import network_from_config
from library.lora.loading import load_lora
from library.lora.metadata import (
    MINIMUM_KEYS,
    build_metadata,
    model_metadata,
    model_metadata_from_facts,
    optimizer_description,
)
from library.lora.network import LoRANetwork
from library.models import build_tiny_bundle



@pytest.fixture()
def bundle():
    return build_tiny_bundle(0)


@pytest.fixture()
def trained(bundle):
    """A network with non-zero up weights, as after training."""
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=2)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for adapter in network.adapters:
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=g) * 0.05)
    return network


def _fixture_meta(sdscripts_lora_dir: Path, name: str = "tinylora.safetensors") -> dict:
    return json.loads((sdscripts_lora_dir / "metadata.json").read_text())[name]


# -- saving and loading ------------------------------------------------------------------

@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_save_load_roundtrip_in_each_precision(bundle, trained, tmp_path, precision, dtype):
    path = tmp_path / "out.safetensors"
    trained.save_weights(path, precision, {"ss_network_dim": "4"})
    tensors, metadata = read_tensors(path)
    assert {t.dtype for t in tensors.values()} == {dtype}
    assert metadata["sshs_model_hash"] == data_region_sha256(path)
    assert metadata["ss_network_dim"] == "4"
    assert [p.name for p in tmp_path.iterdir()] == ["out.safetensors"]  # no temp file left behind
    loaded = LoRANetwork.from_weights(path, bundle.unet, bundle.text_encoder)
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.to(dtype).float()), key


def test_hashes_reproduce_the_sdscripts_fixture(sdscripts_lora_dir):
    for name in ("tinylora-000001.safetensors", "tinylora.safetensors"):
        path = sdscripts_lora_dir / name
        tensors, metadata = read_tensors(path)
        stored = _fixture_meta(sdscripts_lora_dir, name)["metadata"]
        assert data_region_sha256(path) == stored["sshs_model_hash"]
        assert precalculate_hashes(tensors, metadata) == (stored["sshs_model_hash"], stored["sshs_legacy_hash"])


def test_fixture_files_load_into_tiny_with_zero_unmatched(bundle, sdscripts_lora_dir):
    for path in sorted(sdscripts_lora_dir.glob("*.safetensors")):
        network = LoRANetwork.from_weights(path, bundle.unet, bundle.text_encoder)
        assert len(network.adapters) == 204 and network.unmatched_keys == []
        assert network.adapters[0].rank == 4 and network.adapters[0].scale == pytest.approx(0.25)


def test_network_weights_into_created_network(bundle, trained, tmp_path):
    path = tmp_path / "start.safetensors"
    trained.save_weights(path)
    fresh = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=2)
    assert fresh.load_weights(path) == []
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trained.state_dict().items())
    other_rank = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=8)
    with pytest.raises(LoRAFileError, match="dim_from_weights"):
        other_rank.load_weights(path)


def test_peft_and_diffusers_layouts_convert_on_load(bundle, trained):
    kohya = trained.state_dict()
    peft, old = {}, {}
    for name, target in ((a.lora_name, trained.target(a.lora_name)) for a in trained.adapters):
        component = "unet" if target.component == "unet" else "text_encoder"
        a_w, b_w = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        peft[f"{component}.{target.path}.lora_A.weight"] = a_w
        peft[f"{component}.{target.path}.lora_B.weight"] = b_w
        peft[f"{component}.{target.path}.alpha"] = kohya[f"{name}.alpha"]
        old[f"{component}.{target.path}.lora.down.weight"] = a_w
        old[f"{component}.{target.path}.lora.up.weight"] = b_w
    for state_dict, fmt in ((peft, "peft"), (old, "diffusers")):
        loaded = load_lora(state_dict)
        assert loaded.source_format == fmt
        assert set(loaded.tensors) == set(kohya)
        assert torch.equal(loaded.tensors[f"{name}.lora_down.weight"], kohya[f"{name}.lora_down.weight"])
    # Without alpha keys PEFT's scale is 1: alpha = rank.
    assert float(load_lora(old).tensors[f"{name}.alpha"]) == 4.0
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=2)
    network.load_state_dict(peft)
    assert all(torch.equal(network.state_dict()[k], v) for k, v in kohya.items())


# -- damaged and foreign files --------------------------------------------------------------

def test_truncated_file(sdscripts_lora_dir, tmp_path):
    data = (sdscripts_lora_dir / "tinylora.safetensors").read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(data[: len(data) - 1000])
    with pytest.raises(LoRAFileError, match="truncated"):
        load_lora(short)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(data[:5])
    with pytest.raises(LoRAFileError, match="too short"):
        load_lora(tiny)


def test_header_length_that_lies(sdscripts_lora_dir, tmp_path):
    data = (sdscripts_lora_dir / "tinylora.safetensors").read_bytes()
    bad = tmp_path / "lies.safetensors"
    bad.write_bytes(struct.pack("<Q", len(data) * 4) + data[8:])
    with pytest.raises(LoRAFileError, match="header length field says"):
        load_lora(bad)
    garbled = tmp_path / "garbled.safetensors"
    n = int.from_bytes(data[:8], "little")
    garbled.write_bytes(struct.pack("<Q", n - 10) + data[8:])
    with pytest.raises(LoRAFileError, match="not valid JSON"):
        load_lora(garbled)


def test_mismatched_rank_and_nan(trained, tmp_path):
    sd = dict(trained.state_dict())
    name = "lora_unet_mid_block_attentions_0_proj_in"
    sd[f"{name}.lora_up.weight"] = torch.zeros(64, 3, 1, 1)
    path = tmp_path / "rank.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(LoRAFileError, match="rank mismatch, lora_down has rank 4 but lora_up has 3"):
        load_lora(path)
    sd = dict(trained.state_dict())
    sd[f"{name}.lora_down.weight"] = sd[f"{name}.lora_down.weight"].clone()
    sd[f"{name}.lora_down.weight"][0, 0] = float("nan")
    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(sd, str(path))
    with pytest.raises(LoRAFileError, match=f"{name}: non-finite"):
        load_lora(path)


def test_lora_of_another_architecture_is_refused_with_match_count(bundle, tmp_path):
    sdxl_like = {
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.zeros(4, 768),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.zeros(768, 4),
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": torch.zeros(4, 640),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": torch.zeros(640, 4),
        # right name, wrong width: an SD2 text encoder is 1024 wide
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 1024),
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(4096, 4),
    }
    path = tmp_path / "sdxl.safetensors"
    safetensors.torch.save_file(sdxl_like, str(path))
    with pytest.raises(LoRAFileError, match="only 0 of 3 LoRA modules match this model") as info:
        LoRANetwork.from_weights(path, bundle.unet, bundle.text_encoder)
    assert any("1024" in p for p in info.value.problems)


def test_not_a_lora_and_missing_file(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"conv_in.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(LoRAFileError, match="not LoRA keys"):
        load_lora(path)
    with pytest.raises(LoRAFileError, match="no such LoRA file"):
        load_lora(tmp_path / "missing.safetensors")


# -- metadata ---------------------------------------------------------------------------------

def _fixture_like_metadata(fx: dict, **overrides) -> dict:
    config = dict(
        output_name="tinylora", learning_rate=1e-4, network_dim=4, network_alpha=1.0, lr_scheduler="cosine",
        lr_warmup_steps=4, min_snr_gamma=5.0, noise_offset=0.0357, resolution="128", enable_bucket=True,
        min_bucket_reso=64, max_bucket_reso=256, shuffle_caption=True, keep_tokens=1, flip_aug=True,
        cache_latents=True, gradient_checkpointing=True, mixed_precision="no", train_batch_size=2, seed=42,
        training_comment="tiny anchor run adamw", gradient_accumulation_steps=1, pretrained_model_name_or_path="x",
    )
    config.update(overrides)
    dataset = dict(
        num_train_images=80, num_reg_images=0,
        dataset_dirs={"10_ohwx shape": {"n_repeats": 10, "img_count": 8}},
        tag_frequency=json.loads(fx["ss_tag_frequency"]), bucket_info=json.loads(fx["ss_bucket_info"]),
    )
    return build_metadata(
        config, dataset=dataset, model=model_metadata_from_facts(build_tiny_bundle(0).facts),
        optimizer=optimizer_description(torch.optim.AdamW), session_id=2233020106,
        training_started_at=1795388193.8567896, training_finished_at=1795388244.684937,
        epoch=3, steps=120, num_epochs=3, max_train_steps=120, num_batches_per_epoch=40,
    )


def test_metadata_is_a_superset_of_sdscripts_fields_with_same_formats(sdscripts_lora_dir):
    fx = _fixture_meta(sdscripts_lora_dir)["metadata"]
    ours = _fixture_like_metadata(fx)
    written_at_save = {"sshs_model_hash", "sshs_legacy_hash"}
    assert set(fx) - written_at_save <= set(ours)
    # Fields that name the tool, the run's model path or the date legitimately differ.
    differ = {
        "modelspec.date", "modelspec.implementation_version", "ss_sd_scripts_commit_hash",
        "ss_sd_model_hash", "ss_new_sd_model_hash", "ss_sd_model_name",
    }
    mismatched = {k: (fx[k], ours[k]) for k in fx if k in ours and k not in differ and fx[k] != ours[k]}
    assert mismatched == {}
    assert all(isinstance(v, str) for v in ours.values())
    assert json.loads(ours["lorasmith_config"])["seed"] == 42


def test_metadata_options_and_no_metadata(sdscripts_lora_dir):
    fx = _fixture_meta(sdscripts_lora_dir)["metadata"]
    ours = _fixture_like_metadata(fx, network_args=["conv_dim=4", "conv_alpha=1"], clip_skip=2, resolution="512,768")
    assert json.loads(ours["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1", "dropout": None}
    assert ours["modelspec.encoder_layer"] == "2"
    assert ours["ss_resolution"] == "(512, 768)" and ours["modelspec.resolution"] == "512x768"
    assert optimizer_description("prodigyopt.prodigy.Prodigy", {"d_coef": 2, "decouple": True}) == (
        "prodigyopt.prodigy.Prodigy(d_coef=2,decouple=True)"
    )
    minimal = _fixture_like_metadata(fx, no_metadata=True)
    assert {k for k in minimal if k.startswith("ss_")} == set(MINIMUM_KEYS) - {"ss_network_args"}
    assert "lorasmith_config" not in minimal and minimal["modelspec.architecture"] == "stable-diffusion-v1/lora"


def test_model_metadata_hashes_files_like_sdscripts(tmp_path):
    model = tmp_path / "model.safetensors"
    model.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    md = model_metadata(str(model))
    import hashlib

    assert md["ss_new_sd_model_hash"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert md["ss_sd_model_hash"] == hashlib.sha256(model.read_bytes()[0x100000:0x110000]).hexdigest()[:8]
    assert md["ss_sd_model_name"] == "model.safetensors"
    assert model_metadata(str(tmp_path))["ss_sd_model_hash"] == "IsADirectory"
    assert model_metadata("tiny") == {"ss_base_model_version": "sd_v1", "ss_sd_model_name": "tiny"}
    facts = model_metadata_from_facts(build_tiny_bundle(0).facts)
    assert facts["ss_sd_model_name"] == "tiny" and len(facts["ss_new_sd_model_hash"]) == 64
    assert facts["ss_sd_model_hash"] == "None"


# -- config adapter ---------------------------------------------------------------------------

def _config(**kw) -> SimpleNamespace:
    base = dict(
        network_dim=8, network_alpha=4.0, network_dropout=None, network_args=[], network_weights=None,
        dim_from_weights=False, network_train_unet_only=False, network_train_text_encoder_only=False,
    )
    base.update(kw)
    return SimpleNamespace(**base)


def test_network_from_config(bundle, trained, tmp_path):
    net = network_from_config(_config(network_args=["conv_dim=2", "conv_alpha=1", "rank_dropout=0.1"]),
                              bundle.unet, bundle.text_encoder)
    assert len(net.adapters) == 289 and net.adapters[0].rank == 8 and net.adapters[0].rank_dropout == 0.1
    path = tmp_path / "w.safetensors"
    trained.save_weights(path)
    from_file = network_from_config(_config(network_weights=str(path), dim_from_weights=True,
                                            network_train_unet_only=True), bundle.unet, bundle.text_encoder)
    assert len(from_file.adapters) == 192 and from_file.adapters[0].rank == 4
    with pytest.raises(ConfigError) as info:
        network_from_config(_config(network_args=["conv_dim=x", "block_dims=1,2", "nonsense"], dim_from_weights=True),
                            bundle.unet, bundle.text_encoder)
    assert "not key=value" in str(info.value)
    with pytest.raises(ConfigError) as info:
        network_from_config(_config(network_args=["conv_dim=x", "block_dims=1,2"], dim_from_weights=True),
                            bundle.unet, bundle.text_encoder)
    assert len(info.value.problems) == 3


def test_attention_processor_layout_converts():
    from library.lora.convert import to_kohya

    down, up = torch.zeros(4, 32), torch.zeros(32, 4)
    sd = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.down.weight": down,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q_lora.up.weight": up,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.down.weight": down,
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out_lora.up.weight": up,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.down.weight": down,
        "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_linear_layer.up.weight": up,
    }
    out, fmt, unplaced = to_kohya(sd)
    assert fmt == "diffusers" and unplaced == []
    assert set(out) == {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_up.weight",
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.alpha",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight",
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha",
    }


def test_peft_alpha_from_diffusers_adapter_metadata():
    from library.lora.convert import to_kohya

    sd = {
        "unet.mid_block.attentions.0.proj_in.lora_A.weight": torch.zeros(8, 64, 1, 1),
        "unet.mid_block.attentions.0.proj_in.lora_B.weight": torch.zeros(64, 8, 1, 1),
        "unet.mid_block.attentions.0.proj_out.lora_A.weight": torch.zeros(8, 64, 1, 1),
        "unet.mid_block.attentions.0.proj_out.lora_B.weight": torch.zeros(64, 8, 1, 1),
    }
    meta = {"lora_adapter_metadata": json.dumps({"unet.r": 8, "unet.lora_alpha": 4, "unet.alpha_pattern": {"proj_out": 2}})}
    out, fmt, _ = to_kohya(sd, meta)
    assert fmt == "peft"
    assert float(out["lora_unet_mid_block_attentions_0_proj_in.alpha"]) == 4.0
    assert float(out["lora_unet_mid_block_attentions_0_proj_out.alpha"]) == 2.0
