"""CLIP-I / CLIP-T / DINO (DreamBooth's metrics) with tiny random CLIP and ViT models built here."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from library.evaluation.image_metrics import (
    image_scores,
    load_image_models,
    mean_pairwise_cosine,
    reference,
)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path]:
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, ViTConfig,
                              ViTImageProcessor, ViTModel)

    from library.models.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("metric_models")
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    clip = CLIPModel(CLIPConfig(text_config=dict(small, vocab_size=49408, max_position_embeddings=77),
                                vision_config=dict(small, image_size=32, patch_size=8), projection_dim=16))
    clip.save_pretrained(root / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=load_tokenizer()).save_pretrained(root / "clip")
    ViTModel(ViTConfig(**small, image_size=32, patch_size=8)).save_pretrained(root / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "dino")
    return root / "clip", root / "dino"


def _images(n: int, offset: int = 0) -> list[Image.Image]:
    return [Image.fromarray(np.random.RandomState(i + offset).randint(0, 255, (64, 64, 3), dtype=np.uint8))
            for i in range(n)]


def test_mean_pairwise_cosine_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # cosines: (1, 0.6) for a0, (0, 0.8) for a1 -> mean 2.4 / 4
    assert mean_pairwise_cosine(a, b) == pytest.approx(0.6)


def test_scores_against_the_models_own_embeddings(model_dirs):
    import torch.nn.functional as F

    models = load_image_models(*map(str, model_dirs))
    refs, same = _images(2), _images(1)
    scores = image_scores(models, reference(models, same), same, "ohwx shape")
    assert scores["clip_i"] == pytest.approx(1.0, abs=1e-5) and scores["dino"] == pytest.approx(1.0, abs=1e-5)
    # CLIP-T by hand: the processor, the model's projections, one cosine
    inputs = models.clip_processor(text=["ohwx shape"], images=refs[:1], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = models.clip(**inputs)
    expected = float(F.cosine_similarity(out.image_embeds, out.text_embeds))
    got = image_scores(models, reference(models, refs), refs[:1], "ohwx shape")
    assert got["clip_t"] == pytest.approx(expected, abs=1e-5)
    assert got["clip_i"] < 1.0


def test_only_the_given_models_are_measured(model_dirs):
    models = load_image_models(None, str(model_dirs[1]))
    assert set(image_scores(models, reference(models, _images(1)), _images(1, 5), "x")) == {"dino"}


def test_evaluate_command_adds_the_metrics_and_refuses_a_bad_folder(model_dirs, sdscripts_lora_dir, tmp_path, capsys):
    from library.cli import main
    from library.world.bucket_dataset import make_shapes_dataset

    make_shapes_dataset(tmp_path / "a", count=2)
    data = tmp_path / "train"
    shutil.move(str(next((tmp_path / "a").iterdir())), data / "1_ohwx shape")
    common = ["evaluate", "--lora", str(sdscripts_lora_dir / "tinylora.safetensors"), "--train_data_dir", str(data),
              "--pretrained_model_name_or_path", "tiny", "--resolution", "64", "--caption_extension", ".txt",
              "--weights", "1", "--output_dir", str(tmp_path / "out")]
    assert main([*common, "--eval_clip_model", str(model_dirs[0]), "--eval_dino_model", str(model_dirs[1]),
                 "--eval_samples", "2", "--eval_sample_steps", "2"]) == 0
    row = json.loads((tmp_path / "out" / "evaluation.json").read_text())["scores"][0]
    assert all(isinstance(row[k], float) and -1.0 <= row[k] <= 1.0 for k in ("clip_i", "clip_t", "dino"))
    assert "clip_i" in (tmp_path / "out" / "evaluation.csv").read_text().splitlines()[0]
    capsys.readouterr()
    assert main([*common, "--eval_clip_model", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--eval_clip_model" in err and "not a folder" in err and "Traceback" not in err
    (tmp_path / "empty_model").mkdir()
    assert main([*common, "--eval_dino_model", str(tmp_path / "empty_model")]) == 2
    assert "cannot load an evaluation model" in capsys.readouterr().err
