"""LoHa, LoKr and DoRA on the tiny model: the invariants every network algorithm keeps.

For each type: a fresh network changes nothing; wrapper forward == merged forward (fp32,
5e-6); unmerge restores the weights bit for bit; three training steps move only network
tensors; saved keys and shapes follow LyCORIS' layout (written out below from
lycoris/modules/{loha,lokr,locon}.py); files written here from that layout load into ours
with the delta the paper's formula gives; the sampler applies a file at weights 0/0.5/1
with a weight change linear in the weight (DoRA included: loaders apply W + s * (W' - W)).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from library.lora.algorithms.dora import dora_weight, magnitude_of
from library.lora.algorithms.lokr import factorization
from library.lora.network import LoRANetwork
from library.models import build_tiny_bundle

FC1 = "lora_te_text_model_encoder_layers_0_mlp_fc1"  # Linear 32 -> 64
FF = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"  # Linear 32 -> 256
CONV = "lora_unet_down_blocks_2_resnets_0_conv2"  # Conv2d 64 -> 64, 3x3
CONV_IN = "lora_unet_conv_in"  # Conv2d 4 -> 32, 3x3 (LyCORIS' preset adapts it)

TYPES = {
    "loha": dict(algo="loha"),
    "loha_tucker": dict(algo="loha", algo_options={"use_tucker": True}),
    "locon_tucker": dict(algo="lora", algo_options={"use_tucker": True}),
    "lokr": dict(algo="lokr"),
    "lokr_factor8_both": dict(algo="lokr", algo_options={"factor": 8, "decompose_both": True}),
    "lora_dora": dict(algo="lora", dora_wd=True),
    "loha_dora": dict(algo="loha", dora_wd=True),
    "lokr_dora_on_input": dict(algo="lokr", dora_wd=True, wd_on_output=False),
}


@pytest.fixture()
def bundle():
    return build_tiny_bundle(0)


def _make(bundle, kind: str, **extra) -> LoRANetwork:
    opts = {"rank": 2, "alpha": 1.0, "conv_dim": 2, "conv_alpha": 1.0, "lycoris_targets": True, **TYPES[kind]}
    opts.update(extra)
    return LoRANetwork.create(bundle.unet, bundle.text_encoder, **opts)


def _randomize(network: LoRANetwork, seed: int = 1, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in network.adapters:
            for key, p in adapter.tensors().items():
                p.copy_(torch.randn(p.shape, generator=g) * std)
            if adapter.dora:
                adapter.dora_scale.mul_(1 + 0.1 * torch.randn(adapter.dora_scale.shape, generator=g))


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 49408, (2, 77), generator=g), torch.randn(2, 4, 16, 16, generator=g), torch.tensor([500, 20])


@torch.no_grad()
def _forward(bundle, ids, x, t):
    hidden = bundle.text_encoder(ids).last_hidden_state
    return hidden, bundle.unet(x, t, hidden).sample


@pytest.mark.parametrize("kind", TYPES)
def test_fresh_network_changes_nothing(bundle, kind):
    ids, x, t = _inputs()
    before = _forward(bundle, ids, x, t)
    network = _make(bundle, kind).apply_to()
    after = _forward(bundle, ids, x, t)
    largest = max(a.delta_weight(1.0).abs().max().item() for a in network.adapters)
    if "dora" not in kind:
        assert all(torch.equal(a, b) for a, b in zip(before, after))
        assert largest == 0.0
    else:  # m * W / (||W|| + eps) is W only up to rounding (DoRA renormalises even a zero delta)
        assert all(torch.allclose(a, b, atol=1e-5, rtol=0) for a, b in zip(before, after))
        assert largest < 1e-6


@pytest.mark.parametrize("kind", TYPES)
def test_wrapper_equals_merged_and_unmerge_restores_bits(bundle, kind):
    ids, x, t = _inputs()
    network = _make(bundle, kind)
    _randomize(network)
    originals = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
    network.apply_to()
    network.set_multiplier(0.8)
    wrapped = _forward(bundle, ids, x, t)
    network.restore()
    base = _forward(bundle, ids, x, t)
    network.merge_to(0.8)
    merged = _forward(bundle, ids, x, t)
    for w, m, b in zip(wrapped, merged, base):
        assert (w - b).abs().max() > 1e-3  # the network does something
        assert torch.allclose(w, m, atol=5e-6, rtol=0), (w - m).abs().max()
    network.unmerge()
    assert all(torch.equal(v, originals[k]) for k, v in bundle.unet.state_dict().items())


@pytest.mark.parametrize("kind", ["loha", "lokr", "lora_dora", "loha_dora"])
def test_three_training_steps_move_only_network_tensors(bundle, kind):
    network = _make(bundle, kind).apply_to()
    model_before = {k: v.clone() for k, v in {**bundle.unet.state_dict(), **bundle.text_encoder.state_dict()}.items()}
    net_before = {k: v.clone() for k, v in network.state_dict().items()}
    bundle.unet.requires_grad_(False)
    bundle.text_encoder.requires_grad_(False)
    groups = network.prepare_optimizer_params(None, None, 0.05)
    opt = torch.optim.SGD([p for g in groups for p in g["params"]], lr=0.05)
    ids, x, t = _inputs()
    for _ in range(3):
        hidden = bundle.text_encoder(ids).last_hidden_state
        loss = bundle.unet(x, t, hidden).sample.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = {**bundle.unet.state_dict(), **bundle.text_encoder.state_dict()}
    assert all(torch.equal(v, model_before[k]) for k, v in after.items())
    moved = {k for k, v in network.state_dict().items() if not torch.equal(v, net_before[k])}
    assert moved and all(not k.endswith(".alpha") for k in moved)
    if "dora" in kind:
        assert any(k.endswith(".dora_scale") for k in moved)


# LyCORIS' layout for these modules at rank 2 (conv rank 2), alpha 1, written from
# lycoris/modules/loha.py / lokr.py / locon.py: shapes (out, in) of the tiny model's layers
# fc1 (64, 32), ff (256, 32), conv (64, 64, 3, 3), conv_in (32, 4, 3, 3).
LAYOUTS = {
    "loha": {
        FC1: {"hada_w1_a": (64, 2), "hada_w1_b": (2, 32), "hada_w2_a": (64, 2), "hada_w2_b": (2, 32), "alpha": ()},
        CONV: {"hada_w1_a": (64, 2), "hada_w1_b": (2, 576), "hada_w2_a": (64, 2), "hada_w2_b": (2, 576), "alpha": ()},
    },
    "loha_tucker": {
        CONV: {"hada_t1": (2, 2, 3, 3), "hada_w1_a": (2, 64), "hada_w1_b": (2, 64),
               "hada_t2": (2, 2, 3, 3), "hada_w2_a": (2, 64), "hada_w2_b": (2, 64), "alpha": ()},
    },
    "locon_tucker": {  # lycoris/modules/locon.py use_tucker: 1x1 down, kxk lora_mid core, 1x1 up
        FC1: {"lora_down.weight": (2, 32), "lora_up.weight": (64, 2), "alpha": ()},
        CONV: {"lora_down.weight": (2, 64, 1, 1), "lora_mid.weight": (2, 2, 3, 3), "lora_up.weight": (64, 2, 1, 1),
               "alpha": ()},
    },
    "lokr": {  # factorization(64) = (8, 8), (32) = (4, 8), (256) = (16, 16)
        FC1: {"lokr_w1": (8, 4), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 8), "alpha": ()},
        FF: {"lokr_w1": (16, 4), "lokr_w2_a": (16, 2), "lokr_w2_b": (2, 8), "alpha": ()},
        CONV: {"lokr_w1": (8, 8), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 72), "alpha": ()},
        # conv_in (32, 4): 32 -> (4, 8), 4 -> (2, 2); 2 < max(8, 2) / 2, so w2 is (8, 2) @ (2, 2 * 9)
        CONV_IN: {"lokr_w1": (4, 2), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 18), "alpha": ()},
    },
    "lokr_factor8_both": {  # factor 8: 256 -> (8, 32), 32 -> (4, 8); w1 split since 2 < 8 / 2
        FF: {"lokr_w1_a": (8, 2), "lokr_w1_b": (2, 4), "lokr_w2_a": (32, 2), "lokr_w2_b": (2, 8), "alpha": ()},
    },
    "lora_dora": {  # LyCORIS wd_on_output=True (its default): one magnitude per output channel
        FC1: {"lora_down.weight": (2, 32), "lora_up.weight": (64, 2), "alpha": (), "dora_scale": (64, 1)},
        CONV: {"lora_down.weight": (2, 64, 3, 3), "lora_up.weight": (64, 2, 1, 1), "alpha": (),
               "dora_scale": (64, 1, 1, 1)},
    },
    "lokr_dora_on_input": {  # wd_on_output=False (older LyCORIS): per input channel
        FC1: {"lokr_w1": (8, 4), "lokr_w2_a": (8, 2), "lokr_w2_b": (2, 8), "alpha": (), "dora_scale": (1, 32)},
    },
}


@pytest.mark.parametrize("kind", LAYOUTS)
def test_saved_keys_and_shapes_follow_lycoris_layout(bundle, kind, tmp_path):
    network = _make(bundle, kind)
    path = network.save_weights(tmp_path / f"{kind}.safetensors")
    saved = load_file(str(path))
    for module, layout in LAYOUTS[kind].items():
        got = {k[len(module) + 1:]: tuple(v.shape) for k, v in saved.items() if k.startswith(module + ".")}
        assert got == layout, module
    assert float(saved[f"{FC1}.alpha"] if f"{FC1}.alpha" in saved else 1.0) == 1.0


def test_factorization_matches_lycoris_table():
    # rows of the table in lycoris/functional/general.py's docstring; its 360 rows (8, 45) and
    # (12, 30) are stale: the code there gives (18, 20) and (15, 24) (traced by hand), as we do
    table = {(128, -1): (8, 16), (128, 2): (2, 64), (128, 4): (4, 32), (250, -1): (10, 25), (250, 8): (5, 50),
             (360, -1): (18, 20), (360, 16): (15, 24), (512, 8): (8, 64), (1024, -1): (32, 32), (127, 8): (1, 127),
             (320, -1): (16, 20), (768, 8): (8, 96)}
    assert {k: factorization(*k) for k in table} == table


def test_lokr_with_both_factors_full_has_scale_one(bundle, tmp_path):
    network = _make(bundle, "lokr", rank=8, conv_dim=0)  # 8 >= max(8, 8) / 2: full w2 on fc1
    saved = load_file(str(network.save_weights(tmp_path / "full.safetensors")))
    assert {k for k in saved if k.startswith(FC1 + ".")} == {f"{FC1}.lokr_w1", f"{FC1}.lokr_w2", f"{FC1}.alpha"}
    assert float(saved[f"{FC1}.alpha"]) == 8.0  # LyCORIS stores alpha = rank: scale 1
    adapter = dict(network.named_children())[FC1]
    assert adapter.scale == 1.0


def _hand_written_file(path, kind: str):
    """A LyCORIS-format file from the published layout, with the expected delta per module."""
    g = torch.Generator().manual_seed(7)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.3

    sd, expected = {}, {}
    if kind == "loha":  # FedPara: (w1a w1b) * (w2a w2b) * alpha / rank
        w1a, w1b, w2a, w2b = r(64, 4), r(4, 32), r(64, 4), r(4, 32)
        sd.update({f"{FC1}.hada_w1_a": w1a, f"{FC1}.hada_w1_b": w1b, f"{FC1}.hada_w2_a": w2a,
                   f"{FC1}.hada_w2_b": w2b, f"{FC1}.alpha": torch.tensor(2.0)})
        expected[FC1] = (w1a @ w1b) * (w2a @ w2b) * 0.5
        t1, t2, a1, b1, a2, b2 = r(3, 3, 3, 3), r(3, 3, 3, 3), r(3, 64), r(3, 64), r(3, 64), r(3, 64)
        sd.update({f"{CONV}.hada_t1": t1, f"{CONV}.hada_t2": t2, f"{CONV}.hada_w1_a": a1, f"{CONV}.hada_w1_b": b1,
                   f"{CONV}.hada_w2_a": a2, f"{CONV}.hada_w2_b": b2, f"{CONV}.alpha": torch.tensor(3.0)})
        rebuild = [torch.einsum("ijkl,ip,jr->prkl", t, a, b) for t, a, b in ((t1, a1, b1), (t2, a2, b2))]
        expected[CONV] = rebuild[0] * rebuild[1]
    elif kind == "locon_tucker":  # LoRA (Hu et al. 2021) on fc1; Tucker-2 LoCon on the 3x3 conv
        down, up = r(3, 32), r(64, 3)
        sd.update({f"{FC1}.lora_down.weight": down, f"{FC1}.lora_up.weight": up, f"{FC1}.alpha": torch.tensor(1.5)})
        expected[FC1] = up @ down * 0.5
        cd, cm, cu = r(2, 64, 1, 1), r(2, 2, 3, 3), r(64, 2, 1, 1)
        sd.update({f"{CONV}.lora_down.weight": cd, f"{CONV}.lora_mid.weight": cm, f"{CONV}.lora_up.weight": cu,
                   f"{CONV}.alpha": torch.tensor(1.0)})
        # written out as loops over the rank so the einsum in the code is not reused
        want = torch.zeros(64, 64, 3, 3)
        for a in range(2):
            for b in range(2):
                want += cu[:, a, 0, 0][:, None, None, None] * cm[a, b][None, None] * cd[b, :, 0, 0][None, :, None, None]
        expected[CONV] = want * 0.5
    else:  # KronA: kron(w1, w2a @ w2b) * alpha / rank; conv w2_b flattened over (in, kh, kw)
        w1, w2a, w2b = r(8, 4), r(8, 2), r(2, 8)
        sd.update({f"{FC1}.lokr_w1": w1, f"{FC1}.lokr_w2_a": w2a, f"{FC1}.lokr_w2_b": w2b,
                   f"{FC1}.alpha": torch.tensor(1.0)})
        expected[FC1] = torch.kron(w1, w2a @ w2b) * 0.5
        c1, c2a, c2b = r(8, 8), r(8, 2), r(2, 72)
        sd.update({f"{CONV}.lokr_w1": c1, f"{CONV}.lokr_w2_a": c2a, f"{CONV}.lokr_w2_b": c2b,
                   f"{CONV}.alpha": torch.tensor(4.0), f"{CONV}.dora_scale": r(64, 1, 1, 1).abs() + 1})
        expected[CONV] = (torch.kron(c1, c2a @ c2b) * 2.0).reshape(64, 64, 3, 3)
    save_file(sd, str(path))
    return sd, expected


@pytest.mark.parametrize("kind", ["loha", "lokr", "locon_tucker"])
def test_lycoris_files_from_the_published_layout_load_into_ours(bundle, kind, tmp_path):
    sd, expected = _hand_written_file(tmp_path / "f.safetensors", kind)
    network = LoRANetwork.from_weights(tmp_path / "f.safetensors", bundle.unet, bundle.text_encoder)
    adapters = dict(network.named_children())
    assert set(adapters) == set(expected)
    for name, delta in expected.items():
        adapter = adapters[name]
        base = network.target(name).layer.weight.detach()
        if f"{name}.dora_scale" in sd:  # DoRA (Liu et al. 2024): m * (W + dW) / ||W + dW||, per output row
            merged = base + delta
            norm = merged.reshape(64, -1).norm(dim=1).reshape(64, 1, 1, 1)
            delta = merged * sd[f"{name}.dora_scale"] / norm - base
        assert torch.allclose(adapter.delta_weight(1.0), delta, atol=1e-5, rtol=1e-5)
    assert {k: tuple(v.shape) for k, v in network.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}


def test_dora_magnitude_and_formula():
    w = torch.randn(6, 4)
    m_out, m_in = magnitude_of(w, True), magnitude_of(w, False)
    assert m_out.shape == (6, 1) and m_in.shape == (1, 4)
    assert torch.allclose(m_out[:, 0], w.norm(dim=1)) and torch.allclose(m_in[0], w.norm(dim=0))
    # a zero delta with the initial magnitude gives the base weight back (up to eps)
    assert torch.allclose(dora_weight(w, torch.zeros_like(w), m_out), w, atol=1e-6)
    d = torch.randn(6, 4) * 0.1
    assert torch.allclose(dora_weight(w, d, m_in), (w + d) * m_in / (w + d).norm(dim=0, keepdim=True), atol=1e-6)


@pytest.mark.parametrize("kind", ["loha", "lokr", "lora_dora", "locon_tucker"])
def test_sampler_applies_the_file_linearly_in_its_weight(bundle, kind, tmp_path):
    from library.sampling.lora_stack import LoraStack

    network = _make(bundle, kind)
    _randomize(network)
    path = network.save_weights(tmp_path / "net.safetensors")
    names = {n: network.target(n).path for n in (FF, CONV)}
    del network
    probes = {FF: torch.randn(3, 32), CONV: torch.randn(1, 64, 6, 6)}
    stack = LoraStack(bundle.unet, bundle.text_encoder)
    outs = {}
    with torch.no_grad():
        for w in (0.0, 0.5, 1.0):
            stack.activate([(path, w)])
            outs[w] = {n: bundle.unet.get_submodule(p)(probes[n]) for n, p in names.items()}
    for n in names:
        d_half, d_full = outs[0.5][n] - outs[0.0][n], outs[1.0][n] - outs[0.0][n]
        assert d_full.abs().max() > 1e-3
        assert torch.allclose(d_half, 0.5 * d_full, atol=2e-6), (d_half - 0.5 * d_full).abs().max()
    stack.clear()


def test_two_networks_of_different_types_stack_with_their_own_multipliers(bundle):
    ids, x, t = _inputs()
    base = _forward(bundle, ids, x, t)
    loha, lokr = _make(bundle, "loha"), _make(bundle, "lokr")
    _randomize(loha, seed=2)
    _randomize(lokr, seed=3)
    loha.apply_to()
    loha.set_multiplier(0.7)
    lokr.apply_to()
    lokr.set_multiplier(-0.4)
    both = _forward(bundle, ids, x, t)
    loha.restore()
    lokr.restore()
    loha.merge_to(0.7)
    lokr.merge_to(-0.4)
    merged = _forward(bundle, ids, x, t)
    lokr.unmerge()
    loha.unmerge()
    assert all(torch.allclose(a, b, atol=5e-6, rtol=0) for a, b in zip(both, merged))
    assert all(torch.equal(a, b) for a, b in zip(base, _forward(bundle, ids, x, t)))


def test_sampler_stacks_files_of_different_types_with_their_own_weights(bundle, tmp_path):
    from library.sampling.lora_stack import LoraStack

    files = {}
    for kind, seed in (("loha", 2), ("lokr", 3), ("lora_dora", 4)):
        network = _make(bundle, kind)
        _randomize(network, seed=seed)
        files[kind] = network.save_weights(tmp_path / f"{kind}.safetensors")
    path = bundle.unet.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj")
    x = torch.randn(3, 32)
    stack = LoraStack(bundle.unet, bundle.text_encoder)
    with torch.no_grad():
        base = path(x)
        alone = {}
        for kind, f in files.items():
            stack.activate([(f, 1.0)])
            alone[kind] = path(x) - base
        stack.activate([(files["loha"], 0.5), (files["lokr"], -1.0)])
        both = path(x) - base
        stack.clear()
        assert torch.equal(path(x), base)
    # additive algorithms stack linearly, each at its own weight
    assert torch.allclose(both, 0.5 * alone["loha"] - alone["lokr"], atol=2e-6)


@pytest.mark.parametrize("kind", ["loha", "lokr_factor8_both", "lora_dora"])
def test_delta_from_parts_equals_the_adapters_delta_weight(bundle, kind, tmp_path):
    """The file-side delta (what resize/merge/extract read) equals Adapter.delta_weight()."""
    from library.lora import delta_from_parts
    from library.lora.loading import load_lora

    network = _make(bundle, kind)
    _randomize(network)
    modules = load_lora(network.save_weights(tmp_path / "n.safetensors")).modules
    for adapter in network.adapters[::25]:
        base = network.target(adapter.lora_name).layer.weight.detach()
        got = delta_from_parts(modules[adapter.lora_name], base_weight=base, multiplier=0.7)
        assert torch.allclose(got, adapter.delta_weight(0.7), atol=1e-6)


@pytest.mark.parametrize("kind", [None, "lora_dora"])
def test_folded_conv_trains_on_channels_last_input(kind):
    """The trainer's latents can arrive channels-last; the direct CPU conv kernel's weight
    gradient needs a contiguous input (this crashed LoCon training before)."""
    from torch import nn

    from library.lora.algorithms.lora import LoRAModule
    from library.lora.module import attach
    from library.training.conv_path import install_small_conv_path

    root = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1))
    install_small_conv_path(root)
    root.requires_grad_(False)
    adapter = LoRAModule("lora_unet_conv", root[0], 2, dora=kind is not None)
    nn.init.normal_(adapter.lora_up.weight, std=0.1)
    attach(root, "0", adapter)
    x = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    root(x).sum().backward()
    assert adapter.lora_down.weight.grad is not None and adapter.lora_down.weight.grad.abs().sum() > 0


def test_a_tucker_locon_core_of_the_wrong_shape_is_named(bundle, tmp_path):
    from library.errors import LoRAFileError

    save_file({f"{CONV}.lora_down.weight": torch.randn(2, 64, 1, 1), f"{CONV}.lora_mid.weight": torch.randn(2, 3, 3, 3),
               f"{CONV}.lora_up.weight": torch.randn(64, 2, 1, 1), f"{CONV}.alpha": torch.tensor(1.0)},
              str(tmp_path / "bad.safetensors"))
    with pytest.raises(LoRAFileError, match=r"lora_mid has shape \(2, 3, 3, 3\), expected \(2, 2, kh, kw\)"):
        LoRANetwork.from_weights(tmp_path / "bad.safetensors", bundle.unet, bundle.text_encoder)
