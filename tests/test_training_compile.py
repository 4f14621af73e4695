"""--torch_compile / --dynamo_backend: the training step goes through torch.compile; bad backends are refused."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from library.config import TrainConfig
from library.data.prepare import prepare_data
from library.errors import ConfigError
from library.training.setup import build_run
from library.training.trainer import train


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base: dict = {"pretrained_model_name_or_path": "tiny", "train_data_dir": str(data), "output_dir": str(out),
                  "output_name": "c", "resolution": "64", "train_batch_size": 2, "max_train_steps": 2,
                  "optimizer_type": "AdamW", "learning_rate": 1e-3, "cache_latents": True, "seed": 3,
                  "caption_extension": ".txt"}
    base.update(kw)
    return TrainConfig(**base)


def test_training_steps_call_the_compiled_unet(shapes_data: Path, tmp_path: Path, monkeypatch) -> None:
    from library.training import setup

    calls = []

    class Recording(torch.nn.Module):  # stands in for torch.compile's wrapper (inductor takes minutes)
        def __init__(self, unet: torch.nn.Module, backend: str) -> None:
            super().__init__()
            self.unet, self.backend = unet, backend

        def forward(self, *args, **kwargs):
            calls.append(self.backend)
            return self.unet(*args, **kwargs)

    monkeypatch.setattr(setup, "compile_unet", Recording)
    result = train(_config(shapes_data, tmp_path / "out", torch_compile=True, dynamo_backend="aot_eager"))
    assert result.global_step == 2 and result.final_file is not None and result.final_file.exists()
    assert calls == ["aot_eager", "aot_eager"]  # one compiled call per step
    calls.clear()
    train(_config(shapes_data, tmp_path / "out2"))
    assert calls == []  # off by default


def test_compiled_unet_shares_the_eager_modules_weights(shapes_data: Path, tmp_path: Path) -> None:
    from library.training.setup import compile_unet

    unet = torch.nn.Linear(2, 2)
    compiled = compile_unet(unet, "eager")
    assert compiled._orig_mod is unet and compiled.weight is unet.weight  # samples use the module itself
    x = torch.randn(3, 2)
    assert torch.equal(compiled(x), unet(x))


def test_unknown_backend_is_refused_before_loading(shapes_data: Path, tmp_path: Path) -> None:
    cfg = _config(shapes_data, tmp_path / "out", torch_compile=True, dynamo_backend="ofi")
    with pytest.raises(ConfigError, match="dynamo_backend 'ofi'"):
        build_run(cfg, prepare_data(cfg), seed=3)
