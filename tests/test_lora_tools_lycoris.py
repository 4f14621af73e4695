"""The toolbox on LoHa, LoKr and DoRA files (runs where `library.lora.algorithms` is installed).

A file made by the network is merged into the tiny model by `lorasmith lora merge`
and by the network's own merge_to: both must give the same weights. Resize turns
a LoHa/LoKr module into the best rank-k standard LoRA of its delta; DoRA, whose
change depends on the base weight, is refused outside a checkpoint merge.
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("library.lora.algorithms.registry", reason="LyCORIS algorithms are not in this build")

from library.errors import LoRAFileError  # noqa: E402
from library.lora import LoRANetwork  # noqa: E402
from library.lora.tools import delta, svd  # noqa: E402
from library.lora.tools.lora_reader import LoRASource  # noqa: E402
from library.lora.tools.merge import LoRAWeight, merge_loras  # noqa: E402
from library.lora.tools.merge_checkpoint import merge_into_checkpoint  # noqa: E402
from library.lora.tools.resize import ResizeOptions, resize_lora  # noqa: E402
from library.models import load_model_bundle  # noqa: E402

CASES = {"loha": ("loha", {}, False), "lokr": ("lokr", {"factor": 4}, False), "dora": ("lora", {}, True),
         "locon_tucker": ("lora", {"use_tucker": True}, False)}


def _network_file(tmp_path, case: str):
    algo, options, dora = CASES[case]
    bundle = load_model_bundle("tiny")
    torch.manual_seed(5)
    convs = {"conv_dim": 4, "conv_alpha": 2.0} if options.get("use_tucker") else {}
    net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=2.0, algo=algo, algo_options=options,
                             dora_wd=dora, **convs)
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return net.save_weights(tmp_path / f"{case}.safetensors")


@pytest.mark.parametrize("case", sorted(CASES))
def test_checkpoint_merge_equals_the_networks_merge(case, tmp_path):
    path = _network_file(tmp_path, case)
    out = tmp_path / "merged.safetensors"
    merge_into_checkpoint("tiny", [LoRAWeight(str(path), 1.0)], out)
    merged, reference = load_model_bundle(str(out)), load_model_bundle("tiny")
    LoRANetwork.from_weights(path, reference.unet, reference.text_encoder).merge_to(1.0)
    worst = 0.0
    for component in ("unet", "text_encoder"):
        got, want = getattr(merged, component).state_dict(), getattr(reference, component).state_dict()
        worst = max(worst, max(float((got[k] - want[k]).abs().max()) for k in want))
    assert worst < 1e-5


@pytest.mark.parametrize("case", ["loha", "lokr"])
def test_resize_makes_the_best_rank_k_standard_lora(case, tmp_path):
    path = _network_file(tmp_path, case)
    out = tmp_path / "resized.safetensors"
    resize_lora(path, out, ResizeOptions(new_rank=2))
    with LoRASource(path) as src, LoRASource(out) as new:
        assert set(new.modules()) == set(src.modules())
        for name in src.modules()[:12]:
            old = svd.as_matrix(delta.module_delta(src.parts(name)))
            got = svd.as_matrix(delta.module_delta(new.parts(name)))
            s = torch.linalg.svdvals(old.double())
            bound = float(torch.sqrt(torch.sum(s[2:] ** 2)))
            assert float((got - old).norm()) == pytest.approx(bound, rel=1e-3, abs=1e-6), name


def test_dora_is_refused_outside_a_checkpoint_merge(tmp_path):
    path = _network_file(tmp_path, "dora")
    with pytest.raises(LoRAFileError, match="depends on the base weight"):
        resize_lora(path, tmp_path / "r.safetensors", ResizeOptions(new_rank=2))
    with pytest.raises(LoRAFileError, match="depends on the base weight"):
        merge_loras([LoRAWeight(str(path))], tmp_path / "m.safetensors", new_rank=2)


def test_tucker_locon_in_resize_and_merge(tmp_path):
    """lora_mid modules: resize re-factorises the full delta to the SVD bound; SVD merge keeps it; concat refuses."""
    path = _network_file(tmp_path, "locon_tucker")
    out = tmp_path / "resized.safetensors"
    resize_lora(path, out, ResizeOptions(new_rank=2, new_conv_rank=2))
    with LoRASource(path) as src, LoRASource(out) as new:
        tucker = [n for n in src.modules() if "lora_mid.weight" in src.parts(n)]
        assert tucker and set(new.modules()) == set(src.modules())
        assert delta.format_of(src.parts(tucker[0])).name == "Tucker LoCon"
        for name in tucker[:6]:
            old = delta.module_delta(src.parts(name))
            assert old.dim() == 4 and old.shape[2:] == (3, 3)
            got = delta.module_delta(new.parts(name))
            assert got.shape == old.shape and "lora_mid.weight" not in new.parts(name)
            s = torch.linalg.svdvals(svd.as_matrix(old).double())
            bound = float(torch.sqrt(torch.sum(s[2:] ** 2)))
            assert float((svd.as_matrix(got) - svd.as_matrix(old)).norm()) == pytest.approx(bound, rel=1e-3, abs=1e-6)
    with pytest.raises(LoRAFileError, match="Tucker LoCon"):
        merge_loras([LoRAWeight(str(path)), LoRAWeight(str(path))], tmp_path / "c.safetensors")
