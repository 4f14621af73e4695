"""The LoRA toolbox on SDXL and SD2.x (tiny-sdxl, tiny-sd2): extract, merge into a checkpoint, resize, LoRA merge.

Invariants checked, by hand against the file's own tensors:
- extract(base, tuned) reproduces tuned - base for a UNet, a te1 and a te2 module (a te2
  q/k/v is a third of OpenCLIP's fused in_proj in the file): to float tolerance at full
  rank, to the Eckart-Young bound at rank 2; names are the trainer's (SGM UNet paths,
  lora_te1_/lora_te2_ for SDXL, lora_te_ for SD2) and the metadata is the family's;
- merging a LoRA into a single file gives W + w * (alpha / r) * up @ down for each named
  module (the te2 q projection inside its in_proj, k and v thirds untouched) and leaves
  every other tensor bit-identical, under the same names, shapes and dtypes;
- extract -> merge round trip gives back the tuned file.
"""
from __future__ import annotations

import pytest
import safetensors.torch
import torch

from library.errors import LoRAFileError, ModelLoadError
from library.lora import keys
from library.lora.file import read_header
from library.lora.loading import load_lora, match_modules
from library.lora.tools import delta
from library.lora.tools.extract import ExtractOptions, extract_lora
from library.lora.tools.lora_reader import LoRASource
from library.lora.tools.merge import LoRAWeight, merge_loras
from library.lora.tools.merge_checkpoint import merge_into_checkpoint
from library.lora.tools.resize import ResizeOptions, resize_lora
from library.models import load_model_bundle
from library.models.saving import save_diffusers, save_single_file

UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer.text_model."
TE2 = "conditioner.embedders.1.model.transformer.resblocks."
SD2_TE = "cond_stage_model.model.transformer.resblocks."

# Kohya module -> (stored tensor, which third of the fused in_proj or None)
SDXL_MODULES = {
    "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q": (UNET + "input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight", None),
    "lora_unet_output_blocks_0_1_proj_out": (UNET + "output_blocks.0.1.proj_out.weight", None),
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (TE1 + "encoder.layers.0.self_attn.q_proj.weight", None),
    "lora_te2_text_model_encoder_layers_1_self_attn_q_proj": (TE2 + "1.attn.in_proj_weight", 0),
    "lora_te2_text_model_encoder_layers_0_mlp_fc1": (TE2 + "0.mlp.c_fc.weight", None),
}
SD2_MODULES = {
    "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", None),
    "lora_te_text_model_encoder_layers_2_self_attn_v_proj": (SD2_TE + "2.attn.in_proj_weight", 2),
    "lora_te_text_model_encoder_layers_0_mlp_fc2": (SD2_TE + "0.mlp.c_proj.weight", None),
}


def _view(tensor: torch.Tensor, part: int | None) -> torch.Tensor:
    return tensor if part is None else tensor.chunk(3, dim=0)[part]


def _perturbed_copy(base_file, out, modules, seed: int) -> dict[str, torch.Tensor]:
    """A "fine-tune": full-rank N(0, 0.1) changes to the named modules' weights; returns the diffs by module."""
    tensors = safetensors.torch.load_file(str(base_file))
    generator = torch.Generator().manual_seed(seed)
    diffs = {}
    for name, (stored, part) in modules.items():
        target = _view(tensors[stored], part)
        diff = torch.randn(target.shape, generator=generator) * 0.1
        target += diff  # a view: the in_proj third changes in place
        diffs[name] = diff
    safetensors.torch.save_file(tensors, str(out))
    return diffs


def _hand_lora(path, modules, base_file, *, rank: int, alpha: float, seed: int, version: str) -> dict[str, torch.Tensor]:
    """A Kohya LoRA on the named modules, random up and down; returns each module's scale * up @ down."""
    tensors = safetensors.torch.load_file(str(base_file))
    generator = torch.Generator().manual_seed(seed)
    lora, deltas = {}, {}
    for name, (stored, part) in modules.items():
        out_dim, in_dim = _view(tensors[stored], part).shape[:2]
        down = torch.randn(rank, in_dim, generator=generator) * 0.2
        up = torch.randn(out_dim, rank, generator=generator) * 0.2
        lora.update({f"{name}.{keys.DOWN}": down, f"{name}.{keys.UP}": up, f"{name}.{keys.ALPHA}": torch.tensor(alpha)})
        deltas[name] = (alpha / rank) * up @ down
    safetensors.torch.save_file(lora, str(path), metadata={"ss_base_model_version": version, "ss_network_dim": str(rank)})
    return deltas


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools_sdxl")
    bundle = load_model_bundle("tiny-sdxl")
    save_single_file(bundle, root / "base.safetensors")
    diffs = _perturbed_copy(root / "base.safetensors", root / "tuned.safetensors", SDXL_MODULES, seed=3)
    return root, bundle, diffs


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    root = tmp_path_factory.mktemp("tools_sd2")
    bundle = load_model_bundle("tiny-sd2")
    save_single_file(bundle, root / "base.safetensors")
    diffs = _perturbed_copy(root / "base.safetensors", root / "tuned.safetensors", SD2_MODULES, seed=4)
    return root, bundle, diffs


def _module_deltas(path) -> dict[str, torch.Tensor]:
    with LoRASource(path) as src:
        return {name: delta.module_delta(parts) for name, parts in src.items()}


def _tail(matrix: torch.Tensor, rank: int) -> float:
    s = torch.linalg.svdvals(matrix.double())
    return float(torch.sqrt(torch.sum(s[rank:] ** 2)))


# -- extract ------------------------------------------------------------------------------------

def test_sdxl_extract_reproduces_the_difference(sdxl, tmp_path):
    root, bundle, diffs = sdxl
    full, low = tmp_path / "full.safetensors", tmp_path / "low.safetensors"
    report = extract_lora(str(root / "base.safetensors"), str(root / "tuned.safetensors"), full,
                          ExtractOptions(dim=64, clamp_quantile=1.0, sdxl=True))
    assert report.text_encoder_kept
    got = _module_deltas(full)
    for name, diff in diffs.items():  # full rank: the exact difference
        assert torch.allclose(got[name].reshape(diff.shape), diff, atol=1e-5), name
    untouched = [n for n in got if n not in diffs]
    assert untouched and all(float(got[n].abs().max()) < 1e-6 for n in untouched)
    prefixes = {n.split("_")[1] for n in got}
    assert prefixes == {"unet", "te1", "te2"} and not any("down_blocks" in n or "up_blocks" in n for n in got)
    matched, unmatched = match_modules(load_lora(full), bundle.unet, bundle.text_encoders())  # the trainer loads it
    assert not unmatched and len(matched) == len(got)
    md = read_header(full).metadata
    assert (md["ss_base_model_version"], md["ss_v2"], md["modelspec.architecture"]) == (
        "sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora")

    extract_lora(str(root / "base.safetensors"), str(root / "tuned.safetensors"), low,
                 ExtractOptions(dim=2, clamp_quantile=1.0))
    got = _module_deltas(low)
    for name, diff in diffs.items():  # rank 2: the best rank-2 approximation (Eckart-Young)
        matrix = diff.reshape(diff.shape[0], -1)
        error = float((got[name].reshape(matrix.shape).double() - matrix.double()).norm())
        assert error == pytest.approx(_tail(matrix, 2), rel=1e-3), name


def test_sd2_extract_names_lora_te_and_cuts_in_proj(sd2, tmp_path):
    root, bundle, diffs = sd2
    out = tmp_path / "sd2.safetensors"
    extract_lora(str(root / "base.safetensors"), str(root / "tuned.safetensors"), out,
                 ExtractOptions(dim=64, clamp_quantile=1.0, v2=True))
    got = _module_deltas(out)
    for name, diff in diffs.items():
        assert torch.allclose(got[name].reshape(diff.shape), diff, atol=1e-5), name
    # only the v third of layer 2's in_proj changed: q and k come out as zero
    assert float(got["lora_te_text_model_encoder_layers_2_self_attn_q_proj"].abs().max()) < 1e-6
    assert {n.split("_")[1] for n in got} == {"unet", "te"}
    assert not match_modules(load_lora(out), bundle.unet, bundle.text_encoders())[1]
    md = read_header(out).metadata
    # the file does not say its prediction type: SD2's default (768-v), as sd-scripts' extract with --v2
    assert (md["ss_v2"], md["ss_base_model_version"], md["modelspec.architecture"]) == (
        "True", "sd_v2_v", "stable-diffusion-v2-768-v/lora")


def test_extract_checks_flags_and_families(sdxl, sd2, tmp_path):
    base = str(sdxl[0] / "base.safetensors")
    with pytest.raises(ModelLoadError, match=r"--v2 was given but .*base.safetensors is a Stable Diffusion XL model"):
        extract_lora(base, str(sdxl[0] / "tuned.safetensors"), tmp_path / "a.safetensors", ExtractOptions(v2=True))
    with pytest.raises(ModelLoadError, match=r"--sdxl was given but .* is a Stable Diffusion 2.x model"):
        extract_lora(str(sd2[0] / "base.safetensors"), str(sd2[0] / "tuned.safetensors"), tmp_path / "b.safetensors",
                     ExtractOptions(sdxl=True))
    with pytest.raises(ModelLoadError, match=r"base .*base.safetensors is a Stable Diffusion XL model and tuned tiny "
                                             r"is a Stable Diffusion 1.x model"):
        extract_lora(base, "tiny", tmp_path / "c.safetensors", ExtractOptions())
    assert not list(tmp_path.iterdir())


# -- merge into a checkpoint --------------------------------------------------------------------

def _check_merged_file(base_file, out, modules, deltas, weight: float) -> None:
    before, after = safetensors.torch.load_file(str(base_file)), safetensors.torch.load_file(str(out))
    assert list(read_header(out).entries) == list(read_header(base_file).entries)  # same names, same order
    touched = {stored for stored, _ in modules.values()}
    for name, (stored, part) in modules.items():
        expected = _view(before[stored], part) + weight * deltas[name]
        assert torch.allclose(_view(after[stored], part), expected, atol=1e-6), name
        if part is not None:  # the other two thirds of the fused in_proj are the base's bits
            for other in {0, 1, 2} - {part}:
                assert torch.equal(_view(after[stored], other), _view(before[stored], other))
    for key, tensor in before.items():
        if key not in touched:
            assert after[key].dtype == tensor.dtype and torch.equal(after[key], tensor), key


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_merge_into_single_file_keeps_layout(family, sdxl, sd2, tmp_path, request):
    root, _, _ = sdxl if family == "sdxl" else sd2
    modules = SDXL_MODULES if family == "sdxl" else SD2_MODULES
    version = "sdxl_base_v1-0" if family == "sdxl" else "sd_v2_v"
    deltas = _hand_lora(tmp_path / "l.safetensors", modules, root / "base.safetensors", rank=3, alpha=2.0, seed=5,
                        version=version)
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint(str(root / "base.safetensors"), [LoRAWeight(str(tmp_path / "l.safetensors"), 0.7)], out)
    _check_merged_file(root / "base.safetensors", out, modules, deltas, 0.7)
    if family == "sd2":  # the stored layer beyond the HF model (SD2's 24th) and the extras come through
        assert SD2_TE + "3.attn.in_proj_weight" in read_header(out).entries


def test_sdxl_merge_from_builtin_and_folder(sdxl, tmp_path):
    """A built-in base is written in SGM single-file layout; a folder base as a folder; both load as W + delta."""
    root, bundle, _ = sdxl
    deltas = _hand_lora(tmp_path / "l.safetensors", SDXL_MODULES, root / "base.safetensors", rank=2, alpha=1.0,
                        seed=6, version="sdxl_base_v1-0")
    q = "text_model.encoder.layers.1.self_attn.q_proj.weight"
    q_delta = deltas["lora_te2_text_model_encoder_layers_1_self_attn_q_proj"]
    single = tmp_path / "from_builtin.safetensors"
    merge_into_checkpoint("tiny-sdxl", [LoRAWeight(str(tmp_path / "l.safetensors"))], single)
    assert set(read_header(single).entries) == set(read_header(root / "base.safetensors").entries)
    folder = save_diffusers(bundle, tmp_path / "pipe")
    merged_folder = merge_into_checkpoint(str(folder), [LoRAWeight(str(tmp_path / "l.safetensors"))],
                                          tmp_path / "merged_pipe")
    for path in (single, merged_folder):
        loaded = load_model_bundle(str(path))
        assert loaded.facts.architecture == "sdxl"
        te2 = loaded.text_encoder_2.state_dict()
        assert torch.allclose(te2[q], bundle.text_encoder_2.state_dict()[q] + q_delta, atol=1e-6)
        k = q.replace("q_proj", "k_proj")
        assert torch.equal(te2[k], bundle.text_encoder_2.state_dict()[k])


def test_extract_then_merge_round_trip(sdxl, tmp_path):
    root, _, _ = sdxl
    lora, out = tmp_path / "x.safetensors", tmp_path / "back.safetensors"
    extract_lora(str(root / "base.safetensors"), str(root / "tuned.safetensors"), lora,
                 ExtractOptions(dim=64, clamp_quantile=1.0))
    merge_into_checkpoint(str(root / "base.safetensors"), [LoRAWeight(str(lora))], out)
    tuned, back = safetensors.torch.load_file(str(root / "tuned.safetensors")), safetensors.torch.load_file(str(out))
    assert tuned.keys() == back.keys()
    assert all(torch.allclose(back[k].float(), tuned[k].float(), atol=1e-5) for k in tuned)


def test_merge_refuses_another_familys_lora_naming_both(sdxl, tmp_path):
    root, _, _ = sdxl
    sd1_lora = tmp_path / "sd1.safetensors"
    safetensors.torch.save_file({
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": torch.randn(2, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": torch.randn(768, 2),
    }, str(sd1_lora))
    with pytest.raises(LoRAFileError, match=r"only 0 of 1 LoRA modules .*this LoRA is for SD1.x and the model is SDXL"):
        merge_into_checkpoint(str(root / "base.safetensors"), [LoRAWeight(str(sd1_lora))], tmp_path / "m.safetensors")


# -- resize and LoRA + LoRA merge ---------------------------------------------------------------

def test_resize_and_merge_sdxl_loras(sdxl, tmp_path):
    root, _, _ = sdxl
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    da = _hand_lora(a, SDXL_MODULES, root / "base.safetensors", rank=4, alpha=2.0, seed=7, version="sdxl_base_v1-0")
    db = _hand_lora(b, SDXL_MODULES, root / "base.safetensors", rank=2, alpha=2.0, seed=8, version="sdxl_base_v1-0")
    resized = tmp_path / "r.safetensors"
    resize_lora(a, resized, ResizeOptions(new_rank=4))  # rank kept: the product is unchanged
    got = _module_deltas(resized)
    assert got.keys() == da.keys()
    assert all(torch.allclose(got[n], da[n], atol=1e-5) for n in da)
    assert read_header(resized).metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    merged = merge_loras([LoRAWeight(str(a), 0.5), LoRAWeight(str(b), -1.0)], tmp_path / "m.safetensors")
    got = _module_deltas(merged)
    assert all(torch.allclose(got[n], 0.5 * da[n] - db[n], atol=1e-5) for n in da)
    assert read_header(merged).metadata["ss_base_model_version"] == "sdxl_base_v1-0"


def test_lora_merge_refuses_mixed_families(sdxl, sd2, tmp_path):
    xl, two = tmp_path / "xl.safetensors", tmp_path / "two.safetensors"
    _hand_lora(xl, SDXL_MODULES, sdxl[0] / "base.safetensors", rank=2, alpha=1.0, seed=9, version="")
    _hand_lora(two, SD2_MODULES, sd2[0] / "base.safetensors", rank=2, alpha=1.0, seed=9, version="")
    with pytest.raises(LoRAFileError, match=r"different model families") as err:
        merge_loras([LoRAWeight(str(xl)), LoRAWeight(str(two))], tmp_path / "m.safetensors")
    assert "SDXL" in str(err.value) and "SD1.x/SD2.x" in str(err.value)


def test_single_file_merge_reads_each_tensor_once(sdxl, tmp_path, monkeypatch):
    """Streaming: every stored tensor is read once, the fused in_proj holding a LoRA'd q included."""
    from library.lora.tools import model_weights

    root, _, _ = sdxl
    _hand_lora(tmp_path / "l.safetensors", SDXL_MODULES, root / "base.safetensors", rank=2, alpha=1.0, seed=10,
               version="sdxl_base_v1-0")
    reads: dict[str, int] = {}
    original = model_weights._SafetensorsStore.get

    def counting(self, name):
        reads[name] = reads.get(name, 0) + 1
        return original(self, name)

    monkeypatch.setattr(model_weights._SafetensorsStore, "get", counting)
    merge_into_checkpoint(str(root / "base.safetensors"), [LoRAWeight(str(tmp_path / "l.safetensors"))],
                          tmp_path / "m.safetensors")
    assert reads.keys() == read_header(root / "base.safetensors").entries.keys()
    assert set(reads.values()) == {1}


def test_extract_cli_with_sd_scripts_flags(sdxl, tmp_path, capsys):
    from library.cli import main

    root, _, diffs = sdxl
    out = tmp_path / "cli.safetensors"
    assert main(["lora", "extract", "--sdxl", "--model_org", str(root / "base.safetensors"), "--model_tuned",
                 str(root / "tuned.safetensors"), "--save_to", str(out), "--dim", "2"]) == 0
    assert "text encoder(s)" in capsys.readouterr().out
    assert set(diffs) <= set(_module_deltas(out))
