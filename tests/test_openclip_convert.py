"""OpenCLIP <-> HF CLIPTextModel key conversion: exact both ways, in_proj split matches MultiheadAttention."""
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from library.models.openclip_convert import (
    fuse_in_proj, hf_to_openclip, openclip_to_hf, openclip_unconverted, split_in_proj,
)

P = "cond_stage_model.model."


def _tiny_hf(layers=3):
    torch.manual_seed(0)
    cfg = CLIPTextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=8, projection_dim=12, hidden_act="gelu",
                         bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModelWithProjection(cfg).eval()


def test_round_trip_exact_and_layout():
    model = _tiny_hf()
    hf = {k: v for k, v in model.state_dict().items() if k != "text_model.embeddings.position_ids"}
    oc = hf_to_openclip(hf, P)
    assert oc[P + "transformer.resblocks.0.attn.in_proj_weight"].shape == (48, 16)
    assert oc[P + "transformer.resblocks.2.attn.in_proj_bias"].shape == (48,)
    assert oc[P + "text_projection"].shape == (16, 12)  # [width, proj]
    assert P + "positional_embedding" in oc and P + "ln_final.weight" in oc
    assert len([k for k in oc if ".resblocks.0." in k]) == 12  # in_proj, out_proj, ln_1, ln_2, c_fc, c_proj: weight+bias each
    back = openclip_to_hf(oc, P, num_layers=3)
    assert set(back) == set(hf)
    for k in hf:
        assert torch.equal(back[k], hf[k]), k
    assert openclip_unconverted(oc, P, 3) == {}


def test_penultimate_layer_cut_keeps_the_rest():
    model = _tiny_hf(layers=3)
    oc = hf_to_openclip({k: v for k, v in model.state_dict().items() if "position_ids" not in k}, P)
    oc[P + "logit_scale"] = torch.tensor(1.0)
    hf2 = openclip_to_hf(oc, P, num_layers=2)
    assert not any(".layers.2." in k for k in hf2)
    left = openclip_unconverted(oc, P, 2)
    assert P + "logit_scale" in left and len([k for k in left if ".resblocks.2." in k]) == 12
    # each kept layer: 12 OpenCLIP keys -> 16 HF keys (in_proj w/b split in three)
    assert len(hf2) == len([k for k in oc if ".resblocks.2." not in k and "logit_scale" not in k]) + 2 * 4


def test_split_matches_multihead_attention():
    torch.manual_seed(1)
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(1, 5, 16)
    ref = mha(x, x, x, need_weights=False)[0]
    q, k, v = split_in_proj(mha.in_proj_weight.detach())
    qb, kb, vb = split_in_proj(mha.in_proj_bias.detach())

    def heads(t):
        return t.view(1, 5, 2, 8).transpose(1, 2)
    Q, K, V = heads(x @ q.T + qb), heads(x @ k.T + kb), heads(x @ v.T + vb)
    att = torch.softmax(Q @ K.transpose(-1, -2) / 8 ** 0.5, -1) @ V
    out = att.transpose(1, 2).reshape(1, 5, 16) @ mha.out_proj.weight.T + mha.out_proj.bias
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(fuse_in_proj(q, k, v), mha.in_proj_weight.detach())


def test_bad_keys_refused():
    with pytest.raises(ValueError, match="not a CLIPTextModel key"):
        hf_to_openclip({"text_model.bogus": torch.zeros(1)}, P)
    with pytest.raises(ValueError, match="missing"):
        hf_to_openclip({"text_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)}, P)
