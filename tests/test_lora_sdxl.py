"""SDXL and SD2 LoRA names (sd-scripts' layout), loading foreign layouts, cross-architecture refusals, diffusers interop."""
from __future__ import annotations

import collections

import pytest
import torch

from library.errors import LoRAFileError
from library.lora.network import LoRANetwork
from library.lora.targets import find_targets
from library.models import load_model_bundle


@pytest.fixture(scope="module")
def sdxl():
    return load_model_bundle("tiny-sdxl")


@pytest.fixture(scope="module")
def sd1():
    return load_model_bundle("tiny")


@pytest.fixture(scope="module")
def sd2():
    return load_model_bundle("tiny-sd2")


def test_real_sdxl_layout_gives_sd_scripts_module_counts() -> None:
    """sd-scripts logs 'Text Encoder 1: 72 modules, Text Encoder 2: 192 modules' and 'U-Net: 722 modules' for SDXL."""
    from library.models.configs import load_family_configs
    from library.models.modules import build_component

    cfgs = load_family_configs("sdxl")
    with torch.device("meta"):
        unet = build_component("unet", cfgs["unet"])
        te1 = build_component("text_encoder", cfgs["text_encoder"])
        te2 = build_component("text_encoder_2", cfgs["text_encoder_2"])
    targets = find_targets(unet, [te1, te2])
    counts = collections.Counter(t.name.split("_")[1] for t in targets)
    assert counts == {"unet": 722, "te1": 72, "te2": 192}
    names = {t.name for t in targets}
    for name in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q",
                 "lora_unet_input_blocks_8_1_transformer_blocks_9_attn2_to_k",
                 "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2",
                 "lora_unet_output_blocks_0_1_proj_in",
                 "lora_te1_text_model_encoder_layers_11_mlp_fc2",
                 "lora_te2_text_model_encoder_layers_31_self_attn_out_proj"):
        assert name in names
    assert not any("down_blocks" in n or "up_blocks" in n or "mid_block" in n for n in names)


def test_tiny_sdxl_names_map_to_the_right_diffusers_layers(sdxl) -> None:
    """SGM paths point at the layer the LDM layout puts there (hand-checked against openaimodel's numbering)."""
    targets = {t.name: t for t in find_targets(sdxl.unet, sdxl.text_encoders(), conv=True)}
    expect = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
        "lora_unet_input_blocks_5_1_proj_in": "down_blocks.1.attentions.1.proj_in",
        "lora_unet_input_blocks_3_0_op": "down_blocks.0.downsamplers.0.conv",
        "lora_unet_input_blocks_1_0_in_layers_2": "down_blocks.0.resnets.0.conv1",
        "lora_unet_input_blocks_1_0_emb_layers_1": "down_blocks.0.resnets.0.time_emb_proj",
        "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_v": "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
        "lora_unet_middle_block_2_out_layers_3": "mid_block.resnets.1.conv2",
        "lora_unet_output_blocks_2_2_conv": "up_blocks.0.upsamplers.0.conv",
        "lora_unet_output_blocks_3_0_skip_connection": "up_blocks.1.resnets.0.conv_shortcut",
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": "text_model.encoder.layers.0.self_attn.q_proj",
        "lora_te2_text_model_encoder_layers_1_mlp_fc1": "text_model.encoder.layers.1.mlp.fc1",
    }
    for name, path in expect.items():
        assert name in targets, name
        assert targets[name].path.removeprefix("text_model.") == path.removeprefix("text_model.")
    assert targets["lora_te2_text_model_encoder_layers_1_mlp_fc1"].root is sdxl.text_encoder_2


def test_sd2_keeps_sd_scripts_sd1_style_names(sd2) -> None:
    names = {t.name for t in find_targets(sd2.unet, sd2.text_encoder)}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names
    assert not any(n.startswith(("lora_te1_", "lora_te2_")) for n in names)


def _published_sdxl_file(sdxl, rank: int = 2) -> dict[str, torch.Tensor]:
    """A few modules written by hand with sd-scripts' published SDXL key names and shapes."""
    gen = torch.Generator().manual_seed(3)
    layers = {
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q":
            sdxl.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q,
        "lora_unet_output_blocks_0_1_proj_out": sdxl.unet.up_blocks[0].attentions[0].proj_out,
        "lora_te1_text_model_encoder_layers_0_self_attn_k_proj": sdxl.text_encoder.text_model.encoder.layers[0].self_attn.k_proj
        if hasattr(sdxl.text_encoder, "text_model") else sdxl.text_encoder.encoder.layers[0].self_attn.k_proj,
        "lora_te2_text_model_encoder_layers_1_mlp_fc2": sdxl.text_encoder_2.text_model.encoder.layers[1].mlp.fc2
        if hasattr(sdxl.text_encoder_2, "text_model") else sdxl.text_encoder_2.encoder.layers[1].mlp.fc2,
    }
    out = {}
    for name, layer in layers.items():
        out[f"{name}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=gen)
        out[f"{name}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=gen)
        out[f"{name}.alpha"] = torch.tensor(1.0)
    return out


def test_sd_scripts_sdxl_file_loads_onto_the_named_layers(sdxl) -> None:
    state = _published_sdxl_file(sdxl)
    net = LoRANetwork.from_weights(state, sdxl.unet, sdxl.text_encoders())
    assert net.unmatched_keys == []
    assert {a.lora_name for a in net.adapters} == {k.split(".")[0] for k in state}
    layer = sdxl.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q
    x = torch.randn(3, layer.in_features)
    base = layer(x)
    net.apply_to()
    try:
        name = "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
        down, up = state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"]
        expected = base + x @ down.T @ up.T * (1.0 / 2)  # alpha / rank
        wrapped = sdxl.unet.down_blocks[1].attentions[0].transformer_blocks[0].attn1.to_q  # the host now in place
        assert torch.allclose(wrapped(x), expected, atol=1e-5)
    finally:
        net.restore()


def test_a_lora_of_one_architecture_is_refused_on_another(sdxl, sd1) -> None:
    xl_state = LoRANetwork.create(sdxl.unet, sdxl.text_encoders(), rank=2).state_dict()
    with pytest.raises(LoRAFileError, match=r"only 0 of \d+ LoRA modules match this model; this LoRA is for SDXL and the model is SD1"):
        LoRANetwork.from_weights(xl_state, sd1.unet, sd1.text_encoder)
    sd1_state = LoRANetwork.create(sd1.unet, sd1.text_encoder, rank=2).state_dict()
    n_sd1 = len({k.split(".")[0] for k in sd1_state})
    # some modules do fit (CLIP-L is SD1's encoder and SDXL's first; tiny widths coincide), level 0's attention does not
    with pytest.raises(LoRAFileError, match=rf"only \d+ of {n_sd1} LoRA modules match this model; "
                                            r"this LoRA is for SD1\.x/SD2\.x and the model is SDXL") as info:
        LoRANetwork.from_weights(sd1_state, sdxl.unet, sdxl.text_encoders())
    assert "lora_unet_down_blocks_0_attentions_0_proj_in: no such layer" in str(info.value)


def test_trained_layout_round_trips_and_two_encoder_lrs_make_two_groups(sdxl) -> None:
    net = LoRANetwork.create(sdxl.unet, sdxl.text_encoders(), rank=2)
    again = LoRANetwork.from_weights(net.state_dict(), sdxl.unet, sdxl.text_encoders())
    assert [a.lora_name for a in again.adapters] == [a.lora_name for a in net.adapters]
    one = net.prepare_optimizer_params(1e-4, 1e-3, 1e-3)
    assert [g["name"] for g in one] == ["textencoder", "unet"]
    two = net.prepare_optimizer_params(1e-4, 1e-3, 1e-3, text_encoder_2_lr=2e-4)
    assert [(g["name"], g["lr"]) for g in two] == [("textencoder 1", 1e-4), ("textencoder 2", 2e-4), ("unet", 1e-3)]
    te2_params = {id(p) for a in net.text_encoder_loras if a.lora_name.startswith("lora_te2_") for p in a.parameters()}
    assert {id(p) for p in two[1]["params"]} == te2_params


def _pipeline(bundle):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=bundle.vae, text_encoder=bundle.text_encoder, text_encoder_2=bundle.text_encoder_2,
        tokenizer=bundle.tokenizer, tokenizer_2=bundle.tokenizer_2, unet=bundle.unet,
        scheduler=EulerDiscreteScheduler.from_config(bundle.scheduler_config))


def _peft_layers(module: torch.nn.Module) -> int:
    return sum(1 for _, m in module.named_modules() if hasattr(m, "lora_A") and len(m.lora_A) > 0)


def test_our_sdxl_lora_loads_in_diffusers_with_every_module_matched(tmp_path) -> None:
    bundle = load_model_bundle("tiny-sdxl")  # its own copy: diffusers wraps the modules in place
    net = LoRANetwork.create(bundle.unet, bundle.text_encoders(), rank=2, alpha=2)
    with torch.no_grad():
        for adapter in net.adapters:
            for name, param in adapter.named_parameters():
                param.copy_(torch.randn_like(param) * 0.5)
    path = net.save_weights(tmp_path / "xl.safetensors")
    counts = collections.Counter("unet" if a.lora_name.startswith("lora_unet_") else a.lora_name[:8] for a in net.adapters)
    pipe = _pipeline(bundle)

    def run():
        return pipe("a photo", num_inference_steps=1, height=64, width=64, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    before = run()
    pipe.load_lora_weights(str(path))
    assert _peft_layers(pipe.unet) == counts["unet"]
    assert _peft_layers(pipe.text_encoder) == counts["lora_te1"]
    assert _peft_layers(pipe.text_encoder_2) == counts["lora_te2"]
    assert not torch.allclose(run(), before)


def test_a_diffusers_format_sdxl_lora_loads_into_ours(tmp_path) -> None:
    """PEFT adapters saved by StableDiffusionXLPipeline.save_lora_weights: every module placed, same deltas."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig, inject_adapter_in_model

    bundle = load_model_bundle("tiny-sdxl")
    torch.manual_seed(0)
    inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), bundle.unet)
    for te in bundle.text_encoders():
        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]), te)

    def peft_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
        out = {}
        for path, m in module.named_modules():
            if hasattr(m, "lora_A") and "default" in m.lora_A:
                with torch.no_grad():
                    m.lora_B["default"].weight.copy_(torch.randn_like(m.lora_B["default"].weight))
                out[f"{path}.lora_A.weight"] = m.lora_A["default"].weight.detach().clone()
                out[f"{path}.lora_B.weight"] = m.lora_B["default"].weight.detach().clone()
        return out

    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=peft_state(bundle.unet), text_encoder_lora_layers=peft_state(bundle.text_encoder),
        text_encoder_2_lora_layers=peft_state(bundle.text_encoder_2), weight_name="peft.safetensors",
        unet_lora_adapter_metadata={"r": 2, "lora_alpha": 2},
        text_encoder_lora_adapter_metadata={"r": 2, "lora_alpha": 4},
        text_encoder_2_lora_adapter_metadata={"r": 2, "lora_alpha": 4})
    fresh = load_model_bundle("tiny-sdxl")
    net = LoRANetwork.from_weights(tmp_path / "peft.safetensors", fresh.unet, fresh.text_encoders())
    names = {a.lora_name for a in net.adapters}
    assert net.unmatched_keys == []
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_te1_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_te2_text_model_encoder_layers_1_self_attn_v_proj" in names
    # the te2 delta equals PEFT's B @ A * alpha / r
    peft_layer = bundle.text_encoder_2.text_model.encoder.layers[1].self_attn.v_proj \
        if hasattr(bundle.text_encoder_2, "text_model") else bundle.text_encoder_2.encoder.layers[1].self_attn.v_proj
    want = peft_layer.lora_B["default"].weight @ peft_layer.lora_A["default"].weight * (4 / 2)
    ours = net.lora_te2_text_model_encoder_layers_1_self_attn_v_proj.plain_delta()
    assert torch.allclose(ours.reshape(want.shape), want, atol=1e-5)


def test_sdxl_block_indices_follow_sd_scripts() -> None:
    from library.lora.blocks import block_index

    cases = {"lora_unet_time_embed_0": 0, "lora_unet_label_emb_0_0": 0,
             "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": 5,
             "lora_unet_middle_block_1_proj_in": 11, "lora_unet_output_blocks_8_0_in_layers_2": 21, "lora_unet_out_2": 22,
             "lora_te1_text_model_encoder_layers_0_mlp_fc1": -1}
    assert {n: block_index(n, sdxl=True) for n in cases} == cases


def test_sdxl_block_dims_and_lr_weights_use_the_23_blocks(sdxl) -> None:
    from types import SimpleNamespace

    from library.errors import ConfigError
    from library.lora.from_config import network_from_config

    dims = [0] * 23
    dims[5], dims[11], dims[14] = 4, 2, 3  # input_blocks_4, middle_block_1, output_blocks_1
    cfg = SimpleNamespace(network_module="networks.lora", network_dim=8, network_alpha=1.0,
                          network_args=["block_dims=" + ",".join(map(str, dims)),
                                        "down_lr_weight=1,1,1,1,0.5,1,1,1,1", "mid_lr_weight=1,0.25,1"],
                          network_train_unet_only=True)
    net = network_from_config(cfg, sdxl.unet, sdxl.text_encoders())
    ranks = {a.lora_name: a.lora_down.weight.shape[0] for a in net.unet_loras}
    assert ranks and set(ranks.values()) == {4, 2, 3}
    assert all(r == {"input_blocks_4": 4, "middle_block_1": 2, "output_blocks_1": 3}[
        "_".join(n.split("_")[2:5])] for n, r in ranks.items())
    assert len(net.block_lr_weights) == 23 and net.block_lr_weights[5] == 0.5 and net.block_lr_weights[11] == 0.25
    groups = net.prepare_optimizer_params(None, 1e-3, 1e-3)
    assert {g["name"]: g["lr"] for g in groups} == pytest.approx(
        {"unet_5": 0.5e-3, "unet_11": 0.25e-3, "unet_14": 1e-3})
    cfg.network_args = ["block_dims=" + ",".join(["4"] * 25)]  # SD1's 25 blocks on SDXL
    with pytest.raises(ConfigError, match="needs 23"):
        network_from_config(cfg, sdxl.unet, sdxl.text_encoders())


def test_lycoris_algorithms_train_on_sdxl_names(sdxl) -> None:
    from types import SimpleNamespace

    from library.lora.from_config import network_from_config

    cfg = SimpleNamespace(network_module="lycoris.kohya", network_dim=2, network_alpha=1.0,
                          network_args=["algo=loha", "conv_dim=2", "conv_alpha=1"])
    net = network_from_config(cfg, sdxl.unet, sdxl.text_encoders())
    names = {a.lora_name for a in net.adapters}
    assert {"lora_unet_input_blocks_0_0", "lora_unet_out_2", "lora_unet_time_embed_0",
            "lora_unet_input_blocks_1_0_in_layers_2", "lora_te2_text_model_encoder_layers_0_mlp_fc1"} <= names
    again = LoRANetwork.from_weights(net.state_dict(), sdxl.unet, sdxl.text_encoders())
    assert {a.lora_name for a in again.adapters} == names and {a.ALGO for a in again.adapters} == {"loha"}


def test_block_summaries_name_sdxl_blocks_and_both_encoders() -> None:
    from library.lora import keys

    assert keys.block_of("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") == "input_blocks_4"
    assert keys.block_of("lora_unet_middle_block_1_proj_in") == "middle_block"
    assert keys.block_of("lora_unet_output_blocks_2_2_conv") == "output_blocks_2"
    assert keys.block_of("lora_te1_text_model_encoder_layers_3_mlp_fc1") == "te1_layer_3"
    assert keys.block_of("lora_te2_text_model_encoder_layers_3_mlp_fc1") == "te2_layer_3"
    assert keys.block_of("lora_te_text_model_encoder_layers_3_mlp_fc1") == "te_layer_3"
