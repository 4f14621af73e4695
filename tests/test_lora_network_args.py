"""network_args for networks.lora and lycoris.kohya: algorithms, LoRA+ groups, block-wise dims and rates."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from library.errors import ConfigError
from library.lora.algorithms.loha import LoHaModule
from library.lora.algorithms.lokr import LoKrModule
from library.lora.algorithms.lora import LoRAModule
from library.lora.blocks import block_index, block_label, block_lr_weights, lr_preset
from library.lora.from_config import network_from_config
from library.lora.network_args import check
from library.models import build_tiny_bundle


@pytest.fixture(scope="module")
def bundle():
    return build_tiny_bundle(0)


def _config(**kw) -> SimpleNamespace:
    base = dict(network_module="networks.lora", network_dim=4, network_alpha=1.0, network_dropout=None,
                network_args=[], network_weights=None, dim_from_weights=False,
                network_train_unet_only=False, network_train_text_encoder_only=False)
    base.update(kw)
    return SimpleNamespace(**base)


def _lycoris(bundle, *args, **kw):
    return network_from_config(_config(network_module="lycoris.kohya", network_args=list(args), **kw),
                               bundle.unet, bundle.text_encoder)


def test_lycoris_loha_with_conv_dim(bundle):
    net = _lycoris(bundle, "algo=loha", "conv_dim=3", "conv_alpha=1")
    adapters = dict(net.named_children())
    assert all(isinstance(a, LoHaModule) for a in adapters.values())
    assert adapters["lora_unet_down_blocks_0_resnets_0_conv1"].rank == 3
    assert adapters["lora_unet_up_blocks_0_resnets_0_conv_shortcut"].rank == 4  # 1x1: the linear rank
    # LyCORIS' "full" preset also adapts conv_in, conv_out and the time embedding
    assert {"lora_unet_conv_in", "lora_unet_conv_out", "lora_unet_time_embedding_linear_1"} <= set(adapters)
    assert adapters["lora_unet_conv_in"].rank == 3


def test_lycoris_conv_dim_defaults_to_network_dim(bundle):
    net = _lycoris(bundle, "algo=locon")
    adapters = dict(net.named_children())
    assert all(type(a) is LoRAModule for a in adapters.values())
    assert adapters["lora_unet_down_blocks_0_resnets_0_conv1"].rank == 4


@pytest.mark.parametrize("switch", ["use_tucker=True", "use_cp=True", "use_conv_cp=True"])
def test_lycoris_locon_tucker_adds_lora_mid_on_kxk_convs_only(bundle, switch):
    net = _lycoris(bundle, "algo=locon", "conv_dim=3", "conv_alpha=1", switch)
    adapters = dict(net.named_children())
    conv = adapters["lora_unet_down_blocks_0_resnets_0_conv1"]
    assert conv.tucker and tuple(conv.lora_down.weight.shape[2:]) == (1, 1)
    assert tuple(conv.lora_mid.weight.shape) == (3, 3, 3, 3)
    shortcut = adapters["lora_unet_up_blocks_0_resnets_0_conv_shortcut"]  # 1x1: no core
    assert not shortcut.tucker and not hasattr(shortcut, "lora_mid")
    assert not any(getattr(a, "tucker", False) for a in adapters.values() if a.weight_shape[2:] in ((), (1, 1)))


def test_lycoris_lokr_factor_and_dora(bundle):
    net = _lycoris(bundle, "algo=lokr", "factor=8", "dora_wd=True", network_dim=2)
    ff = dict(net.named_children())["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"]
    assert isinstance(ff, LoKrModule) and ff.dora and tuple(ff.lokr_w1.shape) == (8, 4)
    assert tuple(ff.dora_scale.shape) == (256, 1)


def test_networks_lora_is_unchanged_by_default(bundle):
    net = network_from_config(_config(network_args=["conv_dim=2"]), bundle.unet, bundle.text_encoder)
    assert len(net.adapters) == 289 and "lora_unet_conv_in" not in dict(net.named_children())


@pytest.mark.parametrize("module, args, message", [
    ("lycoris.kohya", ["algo=loha", "factr=8"], "factr: not an option of lycoris.kohya; did you mean factor?"),
    ("networks.lora", ["algo=loha"], "algo is a LyCORIS option: use --network_module lycoris.kohya"),
    ("lycoris.kohya", ["algo=glora"], "algo=glora: lorasmith trains lora, locon, loha, lokr"),
    ("lycoris.kohya", ["use_scalar=True"], "use_scalar=True: not supported by lorasmith"),
    ("lycoris.kohya", ["block_dims=1"], "block-wise options belong to --network_module networks.lora"),
    ("networks.lora", ["down_lr_weight=wave"], "neither 12 comma-separated numbers nor a preset"),
    ("networks.lora", ["rank_dropout=2"], "rank_dropout=2: must be a number between 0 and 1"),
])
def test_bad_network_args_are_named(module, args, message):
    problems = check(module, args)[1]
    assert any(message in p for p in problems), problems


def test_bad_args_raise_before_building(bundle):
    with pytest.raises(ConfigError) as info:
        _lycoris(bundle, "algo=loha", "dora_wd=maybe")
    assert "dora_wd='maybe': not a boolean" in str(info.value.problems)


# -- LoRA+ (Hayou et al. 2024) -------------------------------------------------------------------

def _groups(net, te_lr=5e-5, unet_lr=1e-4, lr=1e-4):
    return {g["name"]: g for g in net.prepare_optimizer_params(te_lr, unet_lr, lr)}


def test_loraplus_puts_up_matrices_in_their_own_groups(bundle):
    net = network_from_config(_config(network_args=["loraplus_lr_ratio=16", "loraplus_text_encoder_lr_ratio=4"]),
                              bundle.unet, bundle.text_encoder)
    groups = _groups(net)
    assert list(groups) == ["textencoder", "textencoder plus", "unet", "unet plus"]
    assert groups["unet plus"]["lr"] == pytest.approx(16e-4) and groups["unet"]["lr"] == pytest.approx(1e-4)
    assert groups["textencoder plus"]["lr"] == pytest.approx(4 * 5e-5)
    ups = {id(a.lora_up.weight) for a in net.unet_loras}
    assert {id(p) for p in groups["unet plus"]["params"]} == ups
    assert not ups & {id(p) for p in groups["unet"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for _ in net.parameters())


def test_loraplus_with_loha_leaves_groups_as_lycoris_does(bundle):
    # LyCORIS gives ratio x lr only to parameters named lora_up; LoHa has none
    net = _lycoris(bundle, "algo=loha", "loraplus_lr_ratio=16")
    assert list(_groups(net)) == ["textencoder", "unet"]


def test_loraplus_groups_survive_the_flat_optimizer_path(bundle):
    from library.training.flat_params import FlatGroups

    net = network_from_config(_config(network_args=["loraplus_unet_lr_ratio=8"]), bundle.unet, bundle.text_encoder)
    groups = net.prepare_optimizer_params(None, None, 1e-3)
    names = [g.pop("name") for g in groups]
    flat = FlatGroups(groups)  # one flat tensor per group: the groups and their lr stay apart
    opt = torch.optim.AdamW(groups)
    flat.attach(opt)
    assert names == ["textencoder", "unet", "unet plus"]
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3, 8e-3])
    assert opt.param_groups[2]["params"][0].numel() == sum(a.lora_up.weight.numel() for a in net.unet_loras)


# -- block-wise (sd-scripts networks/lora.py) -------------------------------------------------------

@pytest.mark.parametrize("name, idx", [
    ("lora_unet_down_blocks_0_attentions_0_proj_in", 1),
    ("lora_unet_down_blocks_0_resnets_1_conv1", 2),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", 3),
    ("lora_unet_down_blocks_3_resnets_1_conv2", 11),
    ("lora_unet_mid_block_attentions_0_proj_out", 12),
    ("lora_unet_up_blocks_0_resnets_0_conv1", 13),
    ("lora_unet_up_blocks_1_attentions_2_proj_in", 18),
    ("lora_unet_up_blocks_2_upsamplers_0_conv", 21),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", 24),
    ("lora_unet_conv_in", -1),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", -1),
])
def test_block_index_follows_sd_scripts(name, idx):
    assert block_index(name) == idx


def test_block_labels():
    assert [block_label(i) for i in (0, 11, 12, 13, 24, -1)] == ["IN00", "IN11", "MID", "OUT00", "OUT11", "other"]


def test_lr_presets_match_sd_scripts_formulas():
    n = 12
    assert lr_preset("sine") == pytest.approx([math.sin(math.pi * (i / (n - 1)) / 2) for i in range(n)])
    assert lr_preset("cosine") == pytest.approx([math.sin(math.pi * (i / (n - 1)) / 2) for i in reversed(range(n))])
    assert lr_preset("linear")[0] == 0.0 and lr_preset("linear")[-1] == 1.0
    assert lr_preset("reverse_linear+0.5")[0] == 1.5
    assert lr_preset("zeros+0.25") == [0.25] * 12


def test_block_lr_weights_pad_threshold_and_mid():
    w = block_lr_weights({"down_lr_weight": "0.5,,0.05", "mid_lr_weight": "2", "block_lr_zero_threshold": "0.1"})
    assert w[:4] == [0.5, 0.0, 0.0, 1.0] and w[12] == 2.0 and w[13:] == [1.0] * 12
    assert block_lr_weights({}) is None


def test_block_dims_and_lr_weights_shape_the_network_and_its_groups(bundle):
    dims = ["4"] * 25
    dims[1], dims[13] = "2", "8"
    args = ["block_dims=" + ",".join(dims), "up_lr_weight=" + ",".join(["0"] + ["0.5"] * 11)]
    net = network_from_config(_config(network_args=args), bundle.unet, bundle.text_encoder)
    adapters = dict(net.named_children())
    assert adapters["lora_unet_down_blocks_0_attentions_0_proj_in"].rank == 2
    assert not any(block_index(n) == 13 for n in adapters)  # OUT00 has lr weight 0: no LoRA there
    assert not any("resnets" in n for n in adapters)  # no conv ranks: Transformer2DModel only, as sd-scripts
    groups = _groups(net, unet_lr=1e-4)
    assert groups["unet_1"]["lr"] == pytest.approx(1e-4)
    up_groups = [g for n, g in groups.items() if n.startswith("unet_") and int(n.split("_")[1]) > 13]
    assert up_groups and all(g["lr"] == pytest.approx(5e-5) for g in up_groups)


def test_conv_block_dims_adds_resnet_convs_per_block(bundle):
    conv = ["0"] * 25
    conv[1] = "3"
    net = network_from_config(_config(network_args=["conv_block_dims=" + ",".join(conv)]),
                              bundle.unet, bundle.text_encoder)
    adapters = dict(net.named_children())
    convs = {n: a.rank for n, a in adapters.items() if n.endswith(("conv1", "conv2"))}
    assert convs and set(convs.values()) == {3} and all(block_index(n) == 1 for n in convs)


# -- kohya_ss GUI configs (LoRA_type and the network fields of kohya_ss' lora_gui.py) ------------------

def _import(**fields):
    from library.kohya_import import import_kohya_config

    data = {"optimizer": "AdamW", "epoch": "1", "max_resolution": "512,512", **fields}
    return import_kohya_config(data)


def test_kohya_lycoris_types_import():
    loha = _import(LoRA_type="LyCORIS/LoHa", conv_dim="4", conv_alpha="1", dora_wd=True, use_tucker=False,
                   LyCORIS_preset="full", use_scalar=False, rank_dropout_scale=False, bypass_mode=False, factor=-1)
    assert loha.config.network_module == "lycoris.kohya"
    assert loha.config.network_args == ["algo=loha", "conv_dim=4", "conv_alpha=1", "dora_wd=True"]
    assert not loha.unmapped
    lokr = _import(LoRA_type="LyCORIS/LoKr", conv_dim="2", conv_alpha="1", factor="8", decompose_both=True, use_cp=True)
    assert lokr.config.network_args == ["algo=lokr", "conv_dim=2", "conv_alpha=1", "use_tucker=True",
                                        "decompose_both=True", "factor=8"]
    locon = _import(LoRA_type="LoCon", conv_dim="8", conv_alpha="4", loraplus_lr_ratio="16")
    assert locon.config.network_module == "lycoris.kohya"  # kohya_ss sends LoCon to LyCORIS
    assert locon.config.network_args == ["algo=locon", "conv_dim=8", "conv_alpha=4", "loraplus_lr_ratio=16"]
    assert check(locon.config.network_module, locon.config.network_args)[1] == []


def test_kohya_standard_block_fields_import_and_lycoris_ones_are_listed():
    dims = ",".join(["4"] * 25)
    std = _import(LoRA_type="Standard", block_dims=dims, down_lr_weight="sine", mid_lr_weight="", conv_dim="8")
    assert std.config.network_module == "networks.lora"
    assert std.config.network_args == [f"block_dims={dims}", "down_lr_weight=sine"]  # Standard: no conv_dim
    assert check("networks.lora", std.config.network_args)[1] == []
    loha = _import(LoRA_type="LyCORIS/LoHa", block_dims=dims, use_scalar=True, LyCORIS_preset="attn-mlp")
    assert any(u.startswith("block_dims") for u in loha.unmapped)
    assert any(u.startswith("use_scalar") for u in loha.unmapped) and any("attn-mlp" in u for u in loha.unmapped)


def test_inspect_reports_sd_scripts_blocks_with_their_ranks(bundle, tmp_path):
    from library.lora.cli import format_report
    from library.lora.inspect import inspect_lora

    dims = ["4"] * 25
    dims[1], dims[24] = "2", "6"
    net = network_from_config(_config(network_args=["block_dims=" + ",".join(dims)]), bundle.unet, bundle.text_encoder)
    report = inspect_lora(net.save_weights(tmp_path / "b.safetensors"))
    assert report["sd_blocks"]["IN01"]["ranks"] == [2] and report["sd_blocks"]["OUT11"]["ranks"] == [6]
    assert list(report["sd_blocks"])[0] == "TE" and report["algorithms"] == ["lora"] and not report["dora"]
    text = format_report(report)
    assert "  IN01" in text and "algorithm     lora" in text


def test_form_help_lists_only_the_chosen_modules_options():
    from library.lora.network_args import describe

    lycoris, example = describe("lycoris.kohya")
    assert "algo" in lycoris and "dora_wd" in lycoris and "block_dims" not in lycoris and "algo=loha" in example
    sd, _ = describe("networks.lora")
    assert "block_dims" in sd and "loraplus_lr_ratio" in sd and "algo" not in sd
