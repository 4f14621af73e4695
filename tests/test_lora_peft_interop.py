"""Our LoHa, LoKr and DoRA files read by PEFT (LoHaConfig, LoKrConfig, LoraConfig(use_dora=True)).

diffusers' load_lora_weights reads only lora_down/lora_up Kohya files, so LyCORIS files reach
PEFT through a key conversion done here: `<kohya name>.<key>` -> the PEFT layer at the module
path, adapter "default" (PEFT's LoHa/LoKr tensors have LyCORIS' names and shapes; DoRA's
magnitude is PEFT's lora_magnitude_vector, one value per output channel). PEFT's delta weight
and layer output must equal ours and the paper's formula computed here.
"""
from __future__ import annotations

import pytest
import torch

peft = pytest.importorskip("peft")

from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from library.lora.algorithms.lora import delta_weight  # noqa: E402
from library.lora.network import LoRANetwork  # noqa: E402
from library.models import build_tiny_bundle  # noqa: E402

FF = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_ff_net_0_proj"  # Linear 32 -> 256
CONV = "lora_unet_down_blocks_2_resnets_0_conv2"  # Conv2d 64 -> 64, 3x3
PROBES = {FF: lambda g: torch.randn(3, 32, generator=g), CONV: lambda g: torch.randn(1, 64, 5, 5, generator=g)}


def _ours(kind: str, tmp_path, **opts):
    bundle = build_tiny_bundle(0)
    network = LoRANetwork.create(bundle.unet, None, rank=2, alpha=1.0, conv_dim=2, conv_alpha=1.0, **opts)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for adapter in network.adapters:
            for p in adapter.tensors().values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if adapter.dora:
                adapter.dora_scale.mul_(1.2)
    path = network.save_weights(tmp_path / f"{kind}.safetensors")
    paths = {n: network.target(n).path for n in (FF, CONV)}
    return bundle, network, load_file(str(path)), paths


def _peft_unet(config, paths):
    unet = build_tiny_bundle(0).unet  # same seed: same base weights
    config.target_modules = list(paths.values())
    return inject_adapter_in_model(config, unet)


def _copy(peft_layer, file, name: str, mapping: dict[str, str]) -> None:
    with torch.no_grad():
        for ours, theirs in mapping.items():
            key = f"{name}.{ours}"
            if key in file:
                target = getattr(peft_layer, theirs)["default"]
                target = target.weight if hasattr(target, "weight") else target
                target.copy_(file[key].reshape(target.shape))


def _outputs_match(bundle, peft_unet, paths):
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for name, path in paths.items():
            x = PROBES[name](g)
            ours, theirs = bundle.unet.get_submodule(path)(x), peft_unet.get_submodule(path)(x)
            assert torch.allclose(ours, theirs, atol=2e-5, rtol=1e-5), (name, (ours - theirs).abs().max())


@pytest.mark.parametrize("tucker", [False, True])
def test_loha_loads_in_peft(tmp_path, tucker):
    bundle, network, file, paths = _ours("loha", tmp_path, algo="loha", algo_options={"use_tucker": tucker})
    unet = _peft_unet(LoHaConfig(r=2, alpha=1, use_effective_conv2d=tucker), paths)
    keys = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
    adapters = dict(network.named_children())
    for name, path in paths.items():
        layer = unet.get_submodule(path)
        _copy(layer, file, name, {k: k for k in keys})
        f = {k: file[f"{name}.{k}"] for k in keys if f"{name}.{k}" in file}
        if "hada_t1" in f:  # FedPara with Tucker factors (LyCORIS/PEFT einsum)
            rebuild = [torch.einsum("ijkl,ip,jr->prkl", f[t], f[a], f[b])
                       for t, a, b in (("hada_t1", "hada_w1_a", "hada_w1_b"), ("hada_t2", "hada_w2_a", "hada_w2_b"))]
            formula = rebuild[0] * rebuild[1] * 0.5
        else:  # FedPara: (w1a w1b) * (w2a w2b) * alpha / rank
            formula = ((f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * 0.5)
        formula = formula.reshape(layer.get_base_layer().weight.shape)
        assert torch.allclose(layer.get_delta_weight("default"), formula, atol=1e-5)
        assert torch.allclose(adapters[name].delta_weight(1.0), formula, atol=1e-5)
    network.apply_to()
    _outputs_match(bundle, unet, paths)


# factor 4 splits every dimension here the same way in LyCORIS and PEFT; PEFT 0.21's factorization
# does not order a divisible factor's pair (32 with factor 8: PEFT (8, 4), LyCORIS (4, 8)),
# so a LyCORIS file made with such a factor does not fit a PEFT LoKr layer.
@pytest.mark.parametrize("factor, both", [(-1, False), (-1, True), (4, False)])
def test_lokr_loads_in_peft(tmp_path, factor, both):
    bundle, network, file, paths = _ours("lokr", tmp_path, algo="lokr",
                                         algo_options={"factor": factor, "decompose_both": both})
    unet = _peft_unet(LoKrConfig(r=2, alpha=1, decompose_factor=factor, decompose_both=both), paths)
    assert (f"{FF}.lokr_w1_a" in file) == both  # 256 -> (16, 16): w1 is split when decompose_both
    keys = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    adapters = dict(network.named_children())
    for name, path in paths.items():
        layer = unet.get_submodule(path)
        assert {k for k in keys if getattr(layer, k)} == {k for k in keys if f"{name}.{k}" in file}
        _copy(layer, file, name, {k: k for k in keys})
        f = {k: file[f"{name}.{k}"] for k in keys if f"{name}.{k}" in file}
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
        w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
        formula = (torch.kron(w1, w2) * 0.5).reshape(layer.get_base_layer().weight.shape)  # KronA
        assert torch.allclose(layer.get_delta_weight("default"), formula, atol=1e-5)
        assert torch.allclose(adapters[name].delta_weight(1.0), formula, atol=1e-5)
    network.apply_to()
    _outputs_match(bundle, unet, paths)


def test_dora_loads_in_peft(tmp_path):
    bundle, network, file, paths = _ours("dora", tmp_path, algo="lora", dora_wd=True)
    unet = _peft_unet(LoraConfig(r=2, lora_alpha=1, use_dora=True), paths)
    adapters = dict(network.named_children())
    for name, path in paths.items():
        layer = unet.get_submodule(path)
        _copy(layer, file, name, {"lora_down.weight": "lora_A", "lora_up.weight": "lora_B",
                                  "dora_scale": "lora_magnitude_vector"})
        base = layer.get_base_layer().weight.detach().clone()
        lora = adapters[name]
        # DoRA (Liu et al. 2024): W' = m * (W + s B A) / ||W + s B A||, one norm per output channel
        v = base + delta_weight(file[f"{name}.lora_up.weight"], file[f"{name}.lora_down.weight"], 0.5)
        m = file[f"{name}.dora_scale"]
        formula = v * m / v.reshape(v.shape[0], -1).norm(dim=1).reshape(m.shape)
        layer.merge()
        assert torch.allclose(layer.get_base_layer().weight, formula, atol=1e-5)
        assert torch.allclose(base + lora.delta_weight(1.0), formula, atol=1e-5)
        layer.unmerge()
    network.apply_to()
    _outputs_match(bundle, unet, paths)
