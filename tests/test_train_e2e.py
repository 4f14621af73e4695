"""End to end on the built-in tiny model: a pasted sd-scripts command, files, metadata, TensorBoard, determinism."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import train_network
from library.config_resolve import parse_train_args
from library.training.trainer import train

FIXTURE_FLAGS = (
    "--network_module networks.lora --network_dim 4 --network_alpha 1 --optimizer_type AdamW --learning_rate 1e-3 "
    "--lr_scheduler cosine --lr_warmup_steps 4 --min_snr_gamma 5 --noise_offset 0.0357 --resolution 128 "
    "--enable_bucket --min_bucket_reso 64 --max_bucket_reso 256 --bucket_reso_steps 64 --shuffle_caption "
    "--keep_tokens 1 --flip_aug --cache_latents --gradient_checkpointing --sdpa --mixed_precision no "
    "--train_batch_size 2 --max_train_epochs 3 --save_every_n_epochs 1 --save_model_as safetensors "
    "--output_name tinylora --seed 42"
).split()
TIME_FIELDS = {"ss_training_started_at", "ss_training_finished_at", "ss_session_id", "modelspec.date",
               "sshs_model_hash", "sshs_legacy_hash"}



@pytest.fixture(scope="module")
def small_dataset(shapes_data: Path) -> Path:
    return shapes_data


def read_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def scalars(log_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(log_root.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {log_root}"
    ea = EventAccumulator(str(files[0]))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_pasted_sdscripts_command_runs_unchanged(small_dataset: Path, tmp_path: Path, sdscripts_lora_dir: Path) -> None:
    out, logs = tmp_path / "out", tmp_path / "logs"
    argv = FIXTURE_FLAGS + ["--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(small_dataset),
                            "--caption_extension", ".txt", "--output_dir", str(out), "--logging_dir", str(logs),
                            "--progress_file", str(tmp_path / "progress.jsonl")]
    assert train_network.main(argv) == 0
    names = sorted(p.name for p in out.glob("*.safetensors"))
    assert names == ["tinylora-000001.safetensors", "tinylora-000002.safetensors", "tinylora.safetensors"]

    fixture = json.loads((sdscripts_lora_dir / "metadata.json").read_text())["tinylora.safetensors"]
    tensors, md = read_lora(out / "tinylora.safetensors")
    assert set(tensors) == set(fixture["tensor_shapes"])  # 612 tensors, same Kohya keys as sd-scripts
    assert all(list(tensors[k].shape) == fixture["tensor_shapes"][k] for k in tensors)
    missing = set(fixture["metadata"]) - set(md) - {"ss_sd_model_hash", "ss_new_sd_model_hash"}  # built-in: no file
    assert not missing
    # 4 images x 1 repeat / batch 2 = 2 steps per epoch
    assert (md["ss_epoch"], md["ss_steps"], md["ss_num_epochs"], md["ss_max_train_steps"]) == ("3", "6", "3", "6")
    assert md["ss_optimizer"] == "torch.optim.adamw.AdamW" and md["ss_lr_warmup_steps"] == "4"
    assert md["ss_min_snr_gamma"] == "5.0" and md["ss_noise_offset"] == "0.0357" and md["ss_seed"] == "42"
    assert json.loads(md["ss_dataset_dirs"]) == {"1_ohwx shape": {"n_repeats": 1, "img_count": 4}}
    assert json.loads(md["ss_bucket_info"])["buckets"]["1"]["resolution"] == [192, 64]
    _, md1 = read_lora(out / "tinylora-000001.safetensors")
    assert (md1["ss_epoch"], md1["ss_steps"]) == ("1", "2")

    tags = scalars(logs)
    sd_tags = {"loss/current", "loss/average", "loss/epoch_average", "lr/unet", "lr/textencoder", "lr/group1"}
    assert set(tags) == sd_tags  # exactly the fixture's tag set
    assert [s for s, _ in tags["loss/epoch_average"]] == [1, 2, 3]
    assert [s for s, _ in tags["loss/current"]] == [1, 2, 3, 4, 5, 6]
    assert tags["lr/unet"][0][1] == pytest.approx(1e-3 / 4)  # warm-up step 1 of 4
    assert tags["lr/unet"][3][1] == pytest.approx(1e-3)
    # loss/average is the mean over the last epoch's batches
    cur = [v for _, v in tags["loss/current"]]
    assert tags["loss/average"][3][1] == pytest.approx((cur[2] + cur[3]) / 2, rel=1e-5)
    assert tags["loss/epoch_average"][1][1] == pytest.approx((cur[2] + cur[3]) / 2, rel=1e-5)

    events = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "plan" and kinds[-1] == "finish" and kinds.count("step") == 6 and kinds.count("save") == 3
    step = next(e for e in events if e["event"] == "step")
    assert {"step", "total_steps", "epoch", "loss", "avg_loss", "lr", "s_per_step", "eta_s"} <= set(step)

    # the same config and seed again: identical tensors, identical metadata but for times and hashes of times
    first = {p.name: read_lora(p) for p in out.glob("*.safetensors")}
    cfg, _ = parse_train_args(argv)
    shutil.rmtree(out)
    train(cfg)
    for name, (t1, m1) in first.items():
        t2, m2 = read_lora(out / name)
        assert set(t1) == set(t2)
        assert all(torch.equal(t1[k], t2[k]) for k in t1), name
        strip = lambda m: {k: v for k, v in m.items() if k not in TIME_FIELDS}  # noqa: E731
        assert strip(m1) == strip(m2)


def test_print_plan_and_output_config_exit_without_training(small_dataset: Path, tmp_path: Path, capsys) -> None:
    base = ["--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(small_dataset), "--caption_extension",
            ".txt", "--output_dir", str(tmp_path), "--resolution", "64", "--output_name", "plan"]
    assert train_network.main(base + ["--print_plan"]) == 0
    out = capsys.readouterr().out
    assert "total optimizer steps" in out
    assert "Expected peak GPU memory (64x64, batch 1" in out and "fits: 8 GB" in out
    assert train_network.main(base + ["--output_config"]) == 0
    assert 'output_name = "plan"' in (tmp_path / "plan.toml").read_text()
    assert not list(tmp_path.glob("*.safetensors"))


def test_config_errors_fit_one_screen(tmp_path: Path, capsys) -> None:
    rc = train_network.main(["--pretrained_model_name_or_path", "tiny", "--resolution", "65", "--min_snr_gamma", "-1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train_data_dir" in err and "output_dir" in err and "resolution" in err and "min_snr_gamma" in err
    assert "Traceback" not in err


README_COMMAND = """--pretrained_model_name_or_path model.safetensors
  --train_data_dir img --reg_data_dir reg --output_dir out --output_name ohwx
  --network_dim 192 --network_alpha 1 --optimizer_type DAdaptAdam
  --optimizer_args decouple=True use_bias_correction=True weight_decay=0.20
  --learning_rate 1 --lr_scheduler cosine --resolution 768 --train_batch_size 3
  --max_train_epochs 10 --save_every_n_epochs 1 --logging_dir logs""".split()


def test_readme_command_pasted_as_is_lists_every_missing_path_and_creates_nothing(tmp_path, monkeypatch, capsys):
    """Issue 24: it stopped on the folders first (suggesting --skip_bad_images), left out/ behind, and named the model last."""
    monkeypatch.chdir(tmp_path)
    assert train_network.main(README_COMMAND) == 2
    err = capsys.readouterr().err
    assert "pretrained_model_name_or_path: 'model.safetensors' does not exist" in err
    assert "train_data_dir: 'img' is not a folder" in err and "reg_data_dir: 'reg' is not a folder" in err
    assert "skip_bad_images" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no out/, no logs/


def test_hub_id_says_lorasmith_is_offline(tmp_path, capsys):
    rc = train_network.main(["--pretrained_model_name_or_path", "runwayml/stable-diffusion-v1-5",
                             "--train_data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "'runwayml/stable-diffusion-v1-5' looks like a Hugging Face hub id" in err
    assert "offline" in err and ".safetensors" in err and "diffusers folder" in err
    assert not (tmp_path / "out").exists()
