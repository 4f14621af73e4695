"""The LoRA toolbox (`lorasmith lora resize | merge | extract`) on the tiny model.

Invariants checked: a resized module is the best rank-k approximation of the old
delta (Eckart-Young, against torch.linalg.svd of the full matrix); concatenation
merges exactly; a LoRA merged into a checkpoint loads back as base + delta;
extract(base, base + LoRA) recovers the LoRA's delta to the SVD bound; every file
carries its provenance; inputs are never overwritten; foreign LoRAs are refused.
"""
from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch
from safetensors import safe_open

from library.cli import main
from library.errors import LoRAFileError
from library.lora import LoRANetwork, keys
from library.lora.file import read_header
from library.lora.inspect import verify_lora
from library.lora.tools import delta, svd
from library.lora.tools.extract import ExtractOptions, extract_lora
from library.lora.tools.lora_reader import LoRASource
from library.lora.tools.merge import LoRAWeight, merge_loras, parse_lora_spec
from library.lora.tools.merge_checkpoint import merge_into_checkpoint
from library.lora.tools.output import PROVENANCE_KEY, write_safetensors_streaming
from library.lora.tools.resize import ResizeOptions, resize_lora, resize_module
from library.models import load_model_bundle
from library.models.hashing import file_sha256


def _random_lora(bundle, path, *, rank: int, alpha: float, conv_dim: int | None, seed: int) -> None:
    """A LoRA on the tiny model whose up weights are random too (a fresh one would have zero deltas)."""
    torch.manual_seed(seed)
    net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=rank, alpha=alpha, conv_dim=conv_dim,
                             conv_alpha=1.0 if conv_dim else None)
    for adapter in net.adapters:
        torch.nn.init.normal_(adapter.lora_up.weight, std=0.05)
    net.save_weights(path, metadata={"ss_network_dim": str(rank), "ss_base_model_version": "sd_v1",
                                     "ss_output_name": f"lora{seed}"})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_tools")
    bundle = load_model_bundle("tiny")
    _random_lora(bundle, root / "a.safetensors", rank=8, alpha=4.0, conv_dim=4, seed=1)
    _random_lora(bundle, root / "b.safetensors", rank=4, alpha=4.0, conv_dim=None, seed=2)
    return root


def _deltas(path) -> dict[str, torch.Tensor]:
    with LoRASource(path) as src:
        return {name: delta.module_delta(parts) for name, parts in src.items()}


def _tail_bound(matrix: torch.Tensor, rank: int) -> float:
    """Eckart-Young: the smallest ||A - A_k||_F is the norm of the singular values after the k-th."""
    s = torch.linalg.svdvals(matrix.double())
    return float(torch.sqrt(torch.sum(s[rank:] ** 2)))


# -- pure math ----------------------------------------------------------------------------------

@pytest.mark.parametrize("down_shape,up_shape", [((6, 20), (12, 6)), ((6, 5, 3, 3), (7, 6, 1, 1))])
def test_resized_module_is_the_best_rank_k_approximation(down_shape, up_shape):
    torch.manual_seed(0)
    parts = {keys.DOWN: torch.randn(down_shape), keys.UP: torch.randn(up_shape), keys.ALPHA: torch.tensor(3.0)}
    old = delta.module_delta(parts)
    new, info = resize_module("m", parts, ResizeOptions(new_rank=3, new_conv_rank=2))
    k = 2 if len(down_shape) == 4 else 3
    assert (info.old_rank, info.new_rank) == (6, k)
    assert info.new_alpha == pytest.approx(3.0 / 6 * k)  # sd-scripts: alpha = old scale * new rank
    u, s, vh = torch.linalg.svd(svd.as_matrix(old).double(), full_matrices=False)
    best = (u[:, :k] * s[:k]) @ vh[:k]
    got = svd.as_matrix(delta.module_delta(new)).double()
    assert torch.allclose(got, best, atol=1e-5 * float(s[0]))
    error = float((got - svd.as_matrix(old).double()).norm())
    assert error == pytest.approx(_tail_bound(svd.as_matrix(old), k), rel=1e-4)
    assert info.fro_retained == pytest.approx(float(s[:k].norm() / s.norm()), rel=1e-5)


def test_product_svd_equals_full_svd():
    torch.manual_seed(1)
    up, down = torch.randn(40, 5), torch.randn(5, 30)
    u, s, vh = svd.product_svd(up, down)
    assert torch.allclose(s, torch.linalg.svdvals(up @ down)[:5], rtol=1e-4)
    assert torch.allclose((u * s) @ vh, up @ down, atol=1e-4)


def test_choose_rank_follows_sd_scripts_rank_resize():
    s = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.5])
    # sv_ratio 3: values above 10/3 -> 2 of them; sd-scripts adds 1 -> 3.
    assert svd.choose_rank(s, 8, "sv_ratio", 3.0) == 3
    # sv_fro 0.5: cumulative S^2 fractions .768 .960 ...; first >= .25 is index 0 -> 1 -> +1 = 2.
    assert svd.choose_rank(s, 8, "sv_fro", 0.5) == 2
    # sv_cumulative 0.9: sums/18.5 = .54 .81 .92 ...; first >= .9 is index 2 -> 3 -> +1 = 4.
    assert svd.choose_rank(s, 8, "sv_cumulative", 0.9) == 4
    assert svd.choose_rank(s, 2, "sv_cumulative", 0.9) == 2  # capped at the maximum rank
    assert svd.choose_rank(s, 3) == 3
    assert svd.choose_rank(torch.zeros(4), 3) == 1  # a zero module keeps rank 1


def test_streaming_writer_round_trip(tmp_path):
    tensors = {"w": torch.randn(3, 4), "h": torch.randn(5).half(), "b": torch.tensor(2.0).bfloat16(),
               "i": torch.arange(7), "e": torch.zeros(0)}
    specs = [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]
    path = write_safetensors_streaming(tmp_path / "s.safetensors", specs, tensors.__getitem__, {"note": "x"})
    back = safetensors.torch.load_file(str(path))
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    assert read_header(path).metadata == {"note": "x"}


def test_parse_lora_spec():
    assert parse_lora_spec("a.safetensors:0.5") == LoRAWeight("a.safetensors", 0.5)
    assert parse_lora_spec("dir/a.safetensors") == LoRAWeight("dir/a.safetensors", 1.0)
    assert parse_lora_spec("C:\\loras\\a.safetensors") == LoRAWeight("C:\\loras\\a.safetensors", 1.0)
    assert parse_lora_spec("C:\\loras\\a.safetensors:-1") == LoRAWeight("C:\\loras\\a.safetensors", -1.0)
    with pytest.raises(LoRAFileError, match="not a weight"):
        parse_lora_spec("a.safetensors:strong")


# -- resize -------------------------------------------------------------------------------------

def test_resize_cli_writes_best_approximation_with_metadata(files, tmp_path, capsys):
    out = tmp_path / "r4.safetensors"
    assert main(["lora", "resize", str(files / "a.safetensors"), str(out), "--new_rank", "4",
                 "--new_conv_rank", "2", "--save_precision", "fp16", "--verbose"]) == 0
    printed = capsys.readouterr().out
    assert "fro retained" in printed and "sum(S) retained" in printed and "average Frobenius retention" in printed
    assert len([ln for ln in printed.splitlines() if "fro retained" in ln]) == len(_deltas(files / "a.safetensors"))
    old, new = _deltas(files / "a.safetensors"), _deltas(out)
    assert old.keys() == new.keys()
    with LoRASource(out) as src:
        for name in old:
            parts = src.parts(name)
            assert parts[keys.DOWN].dtype == torch.float16
            k = int(parts[keys.DOWN].shape[0])
            assert k == (2 if parts[keys.DOWN].dim() == 4 and parts[keys.DOWN].shape[-1] == 3 else 4)
            err = float((svd.as_matrix(new[name]) - svd.as_matrix(old[name])).norm())
            bound = _tail_bound(svd.as_matrix(old[name]), k)
            assert err <= bound * 1.01 + 2e-3 * float(old[name].norm())  # fp16 storage rounding on top
    md = read_header(out).metadata
    assert md["ss_network_dim"] == "4"
    assert md["ss_training_comment"].startswith("dimension is resized from 8 to 4 (conv: 2)")
    assert md["ss_output_name"] == "lora1"  # the input's ss_* fields are kept
    record = json.loads(md[PROVENANCE_KEY])
    assert record["tool"] == "resize" and record["inputs"]["lora"]["sha256"] == file_sha256(files / "a.safetensors")
    assert verify_lora(out)[1] == []  # sshs hashes recomputed for the new tensors


def test_resize_dynamic_sets_dynamic_metadata(files, tmp_path):
    out = tmp_path / "dyn.safetensors"
    report = resize_lora(files / "a.safetensors", out, ResizeOptions(new_rank=8, dynamic_method="sv_fro",
                                                                      dynamic_param=0.5))
    assert {m.new_rank for m in report.modules} <= set(range(1, 9))
    assert all(m.new_alpha == pytest.approx(0.5 * m.new_rank) or m.old_rank == 4 for m in report.modules)
    md = read_header(out).metadata
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("Dynamic", "Dynamic")
    with pytest.raises(LoRAFileError, match="needs --dynamic_param"):
        resize_lora(files / "a.safetensors", tmp_path / "x.safetensors", ResizeOptions(dynamic_method="sv_fro"))


def test_refuses_to_overwrite_input_or_existing_output(files, tmp_path, capsys):
    src = files / "a.safetensors"
    before = file_sha256(src)
    assert main(["lora", "resize", str(src), str(src), "--new_rank", "2"]) == 2
    assert "never overwrites its input" in capsys.readouterr().err
    assert main(["lora", "merge", "--lora", f"{src}:0.5", "--lora", str(files / "b.safetensors"), "-o", str(src)]) == 2
    assert "never overwrites its input" in capsys.readouterr().err
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep me")
    assert main(["lora", "resize", str(src), str(existing), "--new_rank", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me" and file_sha256(src) == before
    assert main(["lora", "resize", str(src), str(existing), "--new_rank", "2", "--overwrite"]) == 0
    assert read_header(existing).metadata["ss_network_dim"] == "2"


# -- merge into one LoRA ------------------------------------------------------------------------

def test_concatenation_equals_applying_both(files, tmp_path):
    out = tmp_path / "cat.safetensors"
    assert main(["lora", "merge", "--lora", f"{files / 'a.safetensors'}:0.7", "--lora",
                 f"{files / 'b.safetensors'}:-0.3", "-o", str(out)]) == 0
    a, b, merged = _deltas(files / "a.safetensors"), _deltas(files / "b.safetensors"), _deltas(out)
    assert merged.keys() == a.keys() | b.keys()
    for name, d in merged.items():
        want = 0.7 * a.get(name, 0) - 0.3 * b.get(name, 0)
        assert torch.allclose(d, want, atol=1e-6), name
    # and the model outputs agree: both LoRAs applied as wrappers vs the merged one
    bundle = load_model_bundle("tiny")
    ids = torch.tensor([[49406, 320, 1125, 49407]])
    nets = [LoRANetwork.from_weights(files / "a.safetensors", bundle.unet, bundle.text_encoder, 0.7).apply_to(),
            LoRANetwork.from_weights(files / "b.safetensors", bundle.unet, bundle.text_encoder, -0.3).apply_to()]
    both = bundle.text_encoder(ids).last_hidden_state
    for net in nets:
        net.restore()
    one = LoRANetwork.from_weights(out, bundle.unet, bundle.text_encoder).apply_to()
    assert torch.allclose(bundle.text_encoder(ids).last_hidden_state, both, atol=1e-5)
    one.restore()
    md = read_header(out).metadata
    assert md["ss_network_dim"] == "Dynamic" and "concatenated" in md["ss_training_comment"]
    assert [i["sha256"] for i in json.loads(md[PROVENANCE_KEY])["inputs"]["loras"]] == [
        file_sha256(files / "a.safetensors"), file_sha256(files / "b.safetensors")]


def test_svd_merge_is_best_rank_k_of_the_sum(files, tmp_path):
    out = tmp_path / "svd.safetensors"
    merge_loras([LoRAWeight(str(files / "a.safetensors"), 1.0), LoRAWeight(str(files / "b.safetensors"), 0.5)],
                out, new_rank=3, new_conv_rank=2, clamp_quantile=1.0)
    a, b, merged = _deltas(files / "a.safetensors"), _deltas(files / "b.safetensors"), _deltas(out)
    for name, d in merged.items():
        total = a.get(name, 0) + 0.5 * b.get(name, 0)
        k = 2 if d.dim() == 4 and d.shape[-1] == 3 else 3
        err = float((svd.as_matrix(d) - svd.as_matrix(total)).norm())
        assert err == pytest.approx(_tail_bound(svd.as_matrix(total), k), rel=1e-3, abs=1e-6), name
    md = read_header(out).metadata
    assert md["ss_network_dim"] == "3" and json.loads(md["ss_network_args"])["conv_dim"] == "2"


def test_merging_loras_of_different_architectures_is_refused(files, tmp_path):
    tensors = safetensors.torch.load_file(str(files / "b.safetensors"))
    name = next(k for k in tensors if k.endswith(keys.DOWN))
    tensors[name] = torch.randn(4, 999)  # same module name, another layer width
    other = tmp_path / "other.safetensors"
    safetensors.torch.save_file(tensors, str(other))
    with pytest.raises(LoRAFileError, match="different architectures"):
        merge_loras([LoRAWeight(str(files / "b.safetensors")), LoRAWeight(str(other))], tmp_path / "o.safetensors")


# -- merge into a checkpoint --------------------------------------------------------------------

def test_merged_checkpoint_loads_as_base_plus_delta(files, tmp_path):
    out = tmp_path / "merged.safetensors"
    assert main(["lora", "merge", "--pretrained_model_name_or_path", "tiny", "--lora",
                 f"{files / 'a.safetensors'}:0.5", "--lora", str(files / "b.safetensors"), "-o", str(out)]) == 0
    merged, base = load_model_bundle(str(out)), load_model_bundle("tiny")
    for lora, w in ((files / "a.safetensors", 0.5), (files / "b.safetensors", 1.0)):
        LoRANetwork.from_weights(lora, base.unet, base.text_encoder).merge_to(w)
    for component in ("unet", "text_encoder", "vae"):
        got, want = getattr(merged, component).state_dict(), getattr(base, component).state_dict()
        for key in want:
            assert torch.allclose(got[key], want[key], atol=1e-6), key
    with safe_open(str(out), "pt") as fh:
        md = fh.metadata()
        assert "model.diffusion_model.input_blocks.0.0.weight" in fh.keys()  # the original LDM layout
    record = json.loads(md[PROVENANCE_KEY])
    assert record["inputs"]["base"]["sha256"] == "builtin:tiny" and record["options"]["weights"] == [0.5, 1.0]


def test_merge_into_diffusers_folder(files, tmp_path):
    out = tmp_path / "merged_folder"
    merge_into_checkpoint("tiny", [LoRAWeight(str(files / "b.safetensors"), 1.0)], out, save_as="diffusers")
    merged, base = load_model_bundle(str(out)), load_model_bundle("tiny")
    LoRANetwork.from_weights(files / "b.safetensors", base.unet, base.text_encoder).merge_to(1.0)
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.allclose(merged.unet.state_dict()[key], base.unet.state_dict()[key], atol=1e-6)
    assert json.loads((out / "lorasmith_tool.json").read_text())["tool"] == "merge"
    # a diffusers folder and a pickled .ckpt are model sources too
    ckpt = tmp_path / "base.ckpt"
    torch.save({"state_dict": safetensors.torch.load_file(str(_single_file_tiny(tmp_path)))}, ckpt)
    x = tmp_path / "x.safetensors"
    extract_lora(str(ckpt), str(out), x, ExtractOptions(dim=4, clamp_quantile=1.0))
    lora, got = _deltas(files / "b.safetensors"), _deltas(x)
    assert got.keys() == lora.keys()
    assert max(float((got[n] - d).norm() / d.norm()) for n, d in lora.items()) < 1e-4


def _single_file_tiny(folder):
    """The built-in tiny model written as an LDM single file."""
    path = folder / "tiny.safetensors"
    from library.models.saving import save_single_file

    save_single_file(load_model_bundle("tiny"), path)
    return path


def test_merge_refuses_lora_for_another_architecture(files, tmp_path):
    foreign = {  # an SD1.5-sized layer and a layer the tiny model does not have
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.randn(4, 320, 1, 1),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.randn(320, 4, 1, 1),
        "lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.randn(4, 320),
        "lora_unet_input_blocks_1_1_proj_in.lora_up.weight": torch.randn(320, 4),
    }
    path = tmp_path / "sd15.safetensors"
    safetensors.torch.save_file(foreign, str(path))
    with pytest.raises(LoRAFileError) as err:
        merge_into_checkpoint("tiny", [LoRAWeight(str(path))], tmp_path / "m.safetensors")
    message = str(err.value)
    assert "only 0 of 2 LoRA modules (4 keys) match tiny" in message and str(path) in message
    assert "adaptable layers" in message and not (tmp_path / "m.safetensors").exists()


# -- extract ------------------------------------------------------------------------------------

def test_extract_recovers_merged_lora_to_the_svd_bound(files, tmp_path):
    tuned = tmp_path / "tuned.safetensors"
    merge_into_checkpoint("tiny", [LoRAWeight(str(files / "a.safetensors"), 1.0)], tuned)
    lora = _deltas(files / "a.safetensors")
    exact = tmp_path / "x8.safetensors"
    report = extract_lora("tiny", str(tuned), exact, ExtractOptions(dim=8, conv_dim=4, clamp_quantile=1.0))
    assert report.text_encoder_kept
    got = _deltas(exact)
    assert got.keys() == lora.keys()
    for name, d in lora.items():  # rank 8 (conv 4) holds the whole delta
        assert float((got[name] - d).norm()) <= 1e-4 * float(d.norm()) + 1e-6, name
    low = tmp_path / "x2.safetensors"
    assert main(["lora", "extract", "--base", "tiny", "--tuned", str(tuned), "--dim", "2", "--conv_dim", "1",
                 "--clamp_quantile", "1", "-o", str(low)]) == 0
    for name, d in _deltas(low).items():
        k = 1 if d.dim() == 4 and d.shape[-1] == 3 else 2
        err = float((svd.as_matrix(d) - svd.as_matrix(lora[name])).norm())
        assert err == pytest.approx(_tail_bound(svd.as_matrix(lora[name]), k), rel=1e-3, abs=1e-5), name
    md = read_header(low).metadata
    assert (md["ss_network_dim"], md["ss_network_alpha"]) == ("2", "2.0")
    assert json.loads(md[PROVENANCE_KEY])["inputs"]["tuned"]["sha256"] == file_sha256(tuned)


def test_extract_refuses_models_of_different_architectures():
    from types import SimpleNamespace

    from library.errors import ModelLoadError
    from library.lora.tools.extract import _check_same_architecture
    from library.lora.tools.model_weights import open_model

    tiny = open_model("tiny")
    other = SimpleNamespace(label="sd15.safetensors", family="sd15", architecture="sd1", entries=[None] * 1130)
    with pytest.raises(ModelLoadError, match=r"base tiny and tuned sd15.safetensors are different architectures "
                                             r"\(tiny with 896 tensors, sd15 with 1130\)"):
        _check_same_architecture(tiny, other)


def test_extract_leaves_out_an_unchanged_text_encoder(files, tmp_path):
    unet_only = tmp_path / "unet_only.safetensors"
    tensors = safetensors.torch.load_file(str(files / "b.safetensors"))
    safetensors.torch.save_file({k: v for k, v in tensors.items() if k.startswith("lora_unet_")}, str(unet_only))
    tuned = tmp_path / "tuned.safetensors"
    merge_into_checkpoint("tiny", [LoRAWeight(str(unet_only))], tuned)
    out = tmp_path / "x.safetensors"
    report = extract_lora("tiny", str(tuned), out, ExtractOptions(dim=4))
    assert not report.text_encoder_kept and report.text_encoder_max_diff == 0
    with LoRASource(out) as src:
        assert src.modules() and all(n.startswith("lora_unet_") for n in src.modules())


# -- the plug-in point --------------------------------------------------------------------------

def test_a_registered_format_works_in_every_tool(files, tmp_path):
    """A made-up algorithm storing the full delta as `diff_test.weight`: registered by suffix, then used."""
    fmt = delta.DeltaFormat(name="full-diff", markers=("diff_test.weight",), suffixes=("diff_test.weight",),
                            required=("diff_test.weight",), delta=lambda p, shape, base: p["diff_test.weight"].float(),
                            rank=lambda p: min(p["diff_test.weight"].shape[:2]))
    delta.register_delta_format(fmt)
    try:
        torch.manual_seed(3)
        name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
        base = load_model_bundle("tiny")
        layer = base.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
        full = torch.randn_like(layer.weight) * 0.01
        path = tmp_path / "full.safetensors"
        safetensors.torch.save_file({f"{name}.diff_test.weight": full}, str(path))
        out = tmp_path / "m.safetensors"
        merge_into_checkpoint("tiny", [LoRAWeight(str(path), 2.0)], out)
        merged = load_model_bundle(str(out)).unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
        assert torch.allclose(merged.weight, layer.weight + 2 * full, atol=1e-6)
        resized = tmp_path / "r.safetensors"
        resize_lora(path, resized, ResizeOptions(new_rank=4))
        got = _deltas(resized)[name]
        assert float((got - full).norm()) == pytest.approx(_tail_bound(full, 4), rel=1e-3)
    finally:
        delta.DELTA_FORMATS.pop(fmt.name)
    assert math.isfinite(float(full.norm()))


def test_a_format_that_needs_the_base_weight(tmp_path):
    """DoRA-like: the change depends on W (here W * (s - 1)); merged into a model it works, resized it is refused."""
    fmt = delta.DeltaFormat(name="scale-test", markers=("scale_test",), suffixes=("scale_test",),
                            required=("scale_test",), rank=lambda p: 1, needs_base=True,
                            delta=lambda p, shape, base: base.float() * (float(p["scale_test"]) - 1))
    delta.register_delta_format(fmt)
    try:
        name = "lora_te_text_model_encoder_layers_0_mlp_fc1"
        path = tmp_path / "scale.safetensors"
        safetensors.torch.save_file({f"{name}.scale_test": torch.tensor(1.5)}, str(path))
        out = tmp_path / "m.safetensors"
        merge_into_checkpoint("tiny", [LoRAWeight(str(path), 1.0)], out)
        base = load_model_bundle("tiny").text_encoder.state_dict()["encoder.layers.0.mlp.fc1.weight"]
        merged = load_model_bundle(str(out)).text_encoder.state_dict()["encoder.layers.0.mlp.fc1.weight"]
        assert torch.allclose(merged, base * 1.5, atol=1e-6)
        with pytest.raises(LoRAFileError, match="depends on the base weight"):
            resize_lora(path, tmp_path / "r.safetensors", ResizeOptions(new_rank=2))
    finally:
        delta.DELTA_FORMATS.pop(fmt.name)
