"""LoRANetwork on the built-in tiny model: targets, keys, wrapper vs merge, training invariants."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from library.errors import LoRAFileError
from library.lora.network import LoRANetwork
from library.lora.targets import find_targets
from library.models import build_tiny_bundle

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Two cores shared by several jobs: one intra-op thread is ~20x faster than two here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def bundle():
    return build_tiny_bundle(0)


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49408, (2, 77), generator=g)
    x = torch.randn(2, 4, 16, 16, generator=g)
    t = torch.tensor([500, 20])
    return ids, x, t


@torch.no_grad()
def _forward(bundle, ids, x, t):
    hidden = bundle.text_encoder(ids).last_hidden_state
    return hidden, bundle.unet(x, t, hidden).sample


def _randomize(network: LoRANetwork, seed: int = 1, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in network.adapters:
            adapter.lora_up.weight.copy_(torch.randn(adapter.lora_up.weight.shape, generator=g) * std)


def test_key_set_and_shapes_equal_sdscripts_fixture(bundle, sdscripts_lora_dir):
    info = json.loads((sdscripts_lora_dir / "metadata.json").read_text())["tinylora.safetensors"]
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=1)
    ours = {k: list(v.shape) for k, v in network.state_dict().items()}
    assert len(network.adapters) == info["num_modules"] == 204
    assert len(ours) == info["num_tensors"] == 612
    assert ours == info["tensor_shapes"]


def test_sd15_sized_model_has_192_unet_and_72_text_encoder_modules():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = REPO / "library" / "models" / "configs" / "sd15"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((cfg / "unet" / "config.json").read_text()))
        te = CLIPTextModel(CLIPTextConfig(**json.loads((cfg / "text_encoder" / "config.json").read_text())))
    targets = find_targets(unet, te)
    assert sum(t.component == "unet" for t in targets) == 192
    assert sum(t.component == "text_encoder" for t in targets) == 72
    # LoCon: 44 ResNet 3x3 convs + 3 downsamplers + 3 upsamplers take the conv rank.
    assert sum(t.kind == "conv" for t in find_targets(unet, te, conv=True)) == 50


def test_text_encoder_attention_matched_by_class_family(bundle):
    """transformers has spelled CLIP attention several ways; all must be found."""
    attn = bundle.text_encoder.get_submodule("encoder.layers.0.self_attn")
    renamed = type("CLIPSdpaAttention", (type(attn),), {})
    attn.__class__ = renamed
    names = {t.name for t in find_targets(None, bundle.text_encoder)}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert len(names) == 12


def test_zero_initialised_lora_changes_nothing(bundle):
    ids, x, t = _inputs()
    h0, y0 = _forward(bundle, ids, x, t)
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=1).apply_to()
    h1, y1 = _forward(bundle, ids, x, t)
    assert torch.equal(h0, h1) and torch.equal(y0, y1)
    assert network.applied


def test_wrapper_forward_equals_merged_forward_and_unmerge_is_exact(bundle):
    before = {k: v.clone() for k, v in {**bundle.unet.state_dict(), **bundle.text_encoder.state_dict()}.items()}
    ids, x, t = _inputs()
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=2, conv_dim=2, conv_alpha=1)
    _randomize(network)
    network.apply_to()
    h_wrap, y_wrap = _forward(bundle, ids, x, t)
    network.merge_to(1.0)
    h_merged, y_merged = _forward(bundle, ids, x, t)
    assert (h_wrap - h_merged).abs().max() < 5e-6
    assert (y_wrap - y_merged).abs().max() < 5e-6
    network.restore()
    after = {**bundle.unet.state_dict(), **bundle.text_encoder.state_dict()}
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_merge_at_weight_matches_multiplier(bundle):
    ids, x, t = _inputs()
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=4)
    _randomize(network)
    network.apply_to()
    network.set_multiplier(0.5)
    _, y_half = _forward(bundle, ids, x, t)
    network.set_multiplier(1.0)
    network.merge_to(0.5)
    _, y_merged = _forward(bundle, ids, x, t)
    assert (y_half - y_merged).abs().max() < 5e-6
    with pytest.raises(ValueError):
        network.set_multiplier(2.0)


def test_model_state_dict_keys_unchanged_while_applied(bundle):
    keys_before = list(bundle.unet.state_dict())
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4).apply_to()
    assert type(bundle.unet.get_submodule("mid_block.attentions.0.proj_in")).__name__ == "LoRAHost"
    sd = bundle.unet.state_dict()
    assert list(sd) == keys_before
    bundle.unet.load_state_dict(sd)  # an unwrapped state dict loads into the wrapped model
    assert not any(p is q for p in network.parameters() for q in bundle.unet.parameters())


def test_two_networks_stack_each_with_its_own_multiplier(bundle):
    ids, x, t = _inputs()
    a = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=4)
    b = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=2, alpha=1)
    _randomize(a, seed=1)
    _randomize(b, seed=2)
    _, y0 = _forward(bundle, ids, x, t)
    a.apply_to()
    a.set_multiplier(0.7)
    _, y_a = _forward(bundle, ids, x, t)
    b.apply_to()
    b.set_multiplier(-0.3)
    _, y_ab = _forward(bundle, ids, x, t)
    a.merge_to(0.7)
    b.merge_to(-0.3)
    _, y_merged = _forward(bundle, ids, x, t)
    assert (y_ab - y_merged).abs().max() < 5e-6
    assert (y_ab - y_a).abs().max() > 1e-4
    with pytest.raises(ValueError, match="unmerge the later one first"):
        a.unmerge()
    b.restore()
    a.unmerge()
    _, y_again = _forward(bundle, ids, x, t)
    assert (y_again - y_a).abs().max() < 5e-6
    a.restore()
    _, y_back = _forward(bundle, ids, x, t)
    assert torch.equal(y_back, y0)


def test_only_lora_parameters_move_during_training(bundle):
    ids, x, t = _inputs()
    base = {k: v.clone() for k, v in {**bundle.unet.state_dict(), **bundle.text_encoder.state_dict()}.items()}
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=1).apply_to()
    start = {k: v.clone() for k, v in network.state_dict().items()}
    groups = network.prepare_optimizer_params(5e-3, 1e-2, 1e-3)
    optimizer = torch.optim.AdamW(groups)
    network.train()
    for _ in range(3):
        hidden = bundle.text_encoder(ids).last_hidden_state
        loss = bundle.unet(x, t, hidden).sample.pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    now = {**bundle.unet.state_dict(), **bundle.text_encoder.state_dict()}
    assert all(torch.equal(base[k], now[k]) for k in base)
    moved = [k for k, v in network.state_dict().items() if not torch.equal(v, start[k])]
    assert any(k.endswith("lora_up.weight") for k in moved)
    assert any(k.startswith("lora_te_") for k in moved)
    assert not any(k.endswith(".alpha") for k in moved)


def test_optimizer_groups_text_encoder_first_then_unet(bundle):
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4)
    groups = network.prepare_optimizer_params(5e-5, 1e-4, 1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("textencoder", 5e-5), ("unet", 1e-4)]
    assert len(groups[0]["params"]) == 2 * 12 and len(groups[1]["params"]) == 2 * 192
    defaults = network.prepare_optimizer_params(None, None, 1e-3)
    assert [g["lr"] for g in defaults] == [1e-3, 1e-3]
    assert [g["name"] for g in network.prepare_optimizer_params(0, 1e-4, 1e-3)] == ["unet"]


def test_unet_only_and_text_encoder_only(bundle):
    unet_only = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, train_text_encoder=False)
    te_only = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, train_unet=False)
    assert len(unet_only.adapters) == 192 and not unet_only.text_encoder_loras
    assert len(te_only.adapters) == 12 and not te_only.unet_loras
    assert all(k.startswith("lora_unet_") for k in unet_only.state_dict())


def test_alpha_rules_follow_sd_scripts(bundle):
    default = LoRANetwork.create(bundle.unet, None, rank=8, alpha=None)
    zero = LoRANetwork.create(bundle.unet, None, rank=8, alpha=0)
    assert default.adapters[0].scale == pytest.approx(1 / 8)
    assert float(zero.adapters[0].alpha) == 8 and zero.adapters[0].scale == 1.0


def test_locon_conv_ranks(bundle):
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=1, conv_dim=2, conv_alpha=1)
    sd = network.state_dict()
    assert tuple(sd["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape) == (2, 32, 3, 3)
    assert tuple(sd["lora_unet_down_blocks_0_downsamplers_0_conv.lora_up.weight"].shape) == (32, 2, 1, 1)
    assert tuple(sd["lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape) == (4, 128)
    assert tuple(sd["lora_unet_up_blocks_0_resnets_0_conv_shortcut.lora_down.weight"].shape) == (4, 128, 1, 1)


def test_dropouts_act_only_in_training(bundle):
    ids, _, _ = _inputs()
    network = LoRANetwork.create(
        None, bundle.text_encoder, rank=4, alpha=4, dropout=0.5, rank_dropout=0.5, module_dropout=0.5
    )
    _randomize(network)
    network.apply_to()
    network.eval()
    with torch.no_grad():
        a = bundle.text_encoder(ids).last_hidden_state
        b = bundle.text_encoder(ids).last_hidden_state
    assert torch.equal(a, b)
    network.train()
    torch.manual_seed(0)
    with torch.no_grad():
        c = bundle.text_encoder(ids).last_hidden_state
    assert not torch.equal(a, c)


def test_merge_refuses_non_finite_weights(bundle):
    network = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4)
    with torch.no_grad():
        network.adapters[0].lora_up.weight.fill_(float("inf"))
        network.adapters[0].lora_down.weight.fill_(1.0)
    before = bundle.text_encoder.state_dict()["encoder.layers.0.self_attn.k_proj.weight"].clone()
    with pytest.raises(LoRAFileError, match="NaN/inf"):
        network.merge_to(1.0)
    assert torch.equal(before, bundle.text_encoder.state_dict()["encoder.layers.0.self_attn.k_proj.weight"])
    assert network.merged_weight is None


def test_max_norm_scales_large_modules(bundle):
    network = LoRANetwork.create(None, bundle.text_encoder, rank=4, alpha=4)
    _randomize(network, std=1.0)
    scaled, mean, biggest = network.apply_max_norm(0.5)
    assert scaled == 12 and biggest == pytest.approx(0.5, rel=1e-4)
    assert max(a.delta_weight(1.0).norm().item() for a in network.adapters) == pytest.approx(0.5, rel=1e-4)


def test_network_created_on_an_already_wrapped_model(bundle):
    ids, x, t = _inputs()
    first = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4).apply_to()
    second = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=2)
    assert set(second.state_dict()) == set(first.state_dict())
    _randomize(second)
    second.apply_to()
    host = bundle.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")
    assert len(host.adapters) == 2
    first.restore()
    assert len(bundle.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k").adapters) == 1
    second.restore()
    assert type(bundle.unet.get_submodule("mid_block.attentions.0.transformer_blocks.0.attn2.to_k")).__name__ == "Linear"


def test_low_precision_base_with_fp32_lora(bundle):
    """Training keeps the LoRA in fp32 while the frozen base runs in bf16; outputs stay bf16."""
    ids, _, _ = _inputs()
    network = LoRANetwork.create(None, bundle.text_encoder, rank=4, alpha=4)
    _randomize(network)
    network.apply_to()
    with torch.no_grad():
        reference = bundle.text_encoder(ids).last_hidden_state
    bundle.text_encoder.to(torch.bfloat16)
    with torch.no_grad():
        low = bundle.text_encoder(ids).last_hidden_state
    assert low.dtype == torch.bfloat16
    assert network.adapters[0].lora_down.weight.dtype == torch.float32
    assert (low.float() - reference).abs().max() < 0.1
