"""The GUI's Utilities tab: form -> toolbox arguments (paths confined), and runs with progress, in-process."""
from __future__ import annotations

import pytest

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[gui])")

import torch  # noqa: E402

from gui.context import GuiContext  # noqa: E402
from gui.safety import PathGuard  # noqa: E402
from gui.utilities_tab import (  # noqa: E402
    UtilitiesTab, extract_request, merge_request, resize_request, run_merge, run_resize)
from library.errors import ConfigError  # noqa: E402
from library.lora import LoRANetwork  # noqa: E402
from library.lora.file import read_header  # noqa: E402
from library.models import load_model_bundle  # noqa: E402


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("utilities")
    bundle = load_model_bundle("tiny")
    torch.manual_seed(0)
    net = LoRANetwork.create(bundle.unet, bundle.text_encoder, rank=4, alpha=2.0)
    for adapter in net.adapters:
        torch.nn.init.normal_(adapter.lora_up.weight, std=0.05)
    return net.save_weights(root / "a.safetensors")


def test_requests_confine_paths_and_accept_builtin_models(lora_file, tmp_path):
    guard = PathGuard.from_dirs([lora_file.parent])
    req = resize_request({"input": str(lora_file), "output": "r.safetensors", "new_rank": 2,
                          "dynamic_method": "sv_fro", "dynamic_param": 0.8, "save_precision": "fp16"}, guard)
    assert req["out"] == str(lora_file.parent / "r.safetensors")  # relative to the first allowed folder
    assert (req["opts"].new_rank, req["opts"].dynamic_method, req["opts"].dynamic_param) == (2, "sv_fro", 0.8)
    with pytest.raises(ConfigError, match="outside the folders"):
        resize_request({"input": str(lora_file), "output": str(tmp_path / "r.safetensors")}, guard)
    into_model = merge_request({"loras": f"{lora_file}:0.5", "base": "tiny", "output": "m.safetensors"}, guard)
    assert into_model["base"] == "tiny" and into_model["loras"][0].weight == 0.5
    one_lora = merge_request({"loras": f"{lora_file}\n{lora_file}:-1", "base": "", "output": "m.safetensors",
                              "new_rank": 0}, guard)
    assert "base" not in one_lora and one_lora["new_rank"] is None and len(one_lora["loras"]) == 2
    with pytest.raises(ConfigError, match="fine-tuned model"):
        extract_request({"base": "tiny", "tuned": "/etc/passwd", "output": "x.safetensors"}, guard)


def test_tab_runs_the_tools_with_progress_and_reports_errors(lora_file):
    ctx = GuiContext.create([str(lora_file.parent)], lora_file.parent / "jobs")
    try:
        with gr.Blocks():
            tab = UtilitiesTab(ctx)
        seen = []
        message = tab.run_form("resize", {"input": str(lora_file), "output": "r2.safetensors", "new_rank": 2},
                               resize_request, run_resize, lambda frac, desc: seen.append((frac, desc)))
        assert message.startswith("Wrote") and "Average Frobenius retention" in message
        assert seen[-1][0] == 1.0 and seen[-1][1].startswith("resize: lora_")
        assert read_header(lora_file.parent / "r2.safetensors").metadata["ss_network_dim"] == "2"
        again = tab.run_form("resize", {"input": str(lora_file), "output": "r2.safetensors", "new_rank": 2},
                             resize_request, run_resize, None)
        assert again.startswith("**Error:**") and "--overwrite" in again
        merged = tab.run_form("merge", {"loras": f"{lora_file}:0.5\n{lora_file}", "output": "cat.safetensors"},
                              merge_request, run_merge, None)
        assert merged.startswith("Wrote") and (lora_file.parent / "cat.safetensors").exists()
    finally:
        ctx.close()
