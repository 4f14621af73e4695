"""SDXL training end to end on `tiny-sdxl`: sd-scripts' entry name and flags, files, metadata, TensorBoard
tags, size/crop conditioning against hand-computed values, the text-encoder cache on disk, exact resume."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

import sdxl_train_network
from library.config import TrainConfig
from library.training import step as step_module
from library.training.trainer import train

# Two images and their buckets at resolution 96 (sd-scripts' make_bucket_resolutions with max area
# 96*96, sides 64..128 in steps of 32: 96x96, 64x128, 128x64). 100x60 (ratio 1.667) goes to 128x64,
# 60x100 to 64x128. sd-scripts' get_crop_ltrb fits the whole image into the bucket, keeping its
# aspect ratio, and centres it (floored):
#   100x60 in 128x64: bucket ratio 2.0 > 1.667, so height 64, width 64*1.667 = 106.67,
#                     left = (128 - 106.67) // 2 = 10, top = 0  -> ids (60, 100, 0, 10, 64, 128)
#   60x100 in 64x128: bucket ratio 0.5 <= 0.6, so width 64, height 64/0.6 = 106.67,
#                     top = (128 - 106.67) // 2 = 10, left = 0  -> ids (100, 60, 10, 0, 128, 64)
IMAGES = {(100, 60): (60, 100, 0, 10, 64, 128), (60, 100): (100, 60, 10, 0, 128, 64)}
BUCKETS = {(100, 60): (128, 64), (60, 100): (64, 128)}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sdxl_data")
    folder = root / "1_ohwx shape"
    folder.mkdir()
    for i, size in enumerate(IMAGES):
        Image.new("RGB", size, (200, 60 * i, 90)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(f"ohwx shape, number {i}")
    return root


FLAGS = ("--pretrained_model_name_or_path tiny-sdxl --resolution 96 --enable_bucket --min_bucket_reso 64 "
         "--max_bucket_reso 128 --bucket_reso_steps 32 --train_batch_size 1 --max_train_epochs 1 --network_dim 2 "
         "--network_alpha 1 --learning_rate 1e-3 --text_encoder_lr 1e-4 2e-4 --no_half_vae --cache_latents "
         "--save_every_n_steps 1 --save_state --output_name xl --seed 7 --caption_extension .txt").split()


def scalars(log_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(log_root.rglob("events.out.tfevents.*"))
    ea = EventAccumulator(str(files[0]))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


@pytest.fixture(scope="module")
def full_run(data: Path, tmp_path_factory):
    """sdxl_train_network.py with sd-scripts' flags: 2 steps; the time ids the UNet received are recorded."""
    out, logs = tmp_path_factory.mktemp("xl_out"), tmp_path_factory.mktemp("xl_logs")
    seen: list[tuple[tuple[int, int], list[int], tuple[int, int]]] = []
    original = step_module.sdxl_time_ids

    def spy(sizes, bucket, flipped):
        ids = original(sizes, bucket, flipped)
        seen.extend((tuple(s), row, tuple(bucket)) for s, row in zip(sizes, ids.int().tolist()))
        return ids

    step_module.sdxl_time_ids = spy
    try:
        code = sdxl_train_network.main(FLAGS + ["--train_data_dir", str(data), "--output_dir", str(out),
                                                "--logging_dir", str(logs)])
    finally:
        step_module.sdxl_time_ids = original
    assert code == 0
    return out, logs, seen


def test_files_names_and_metadata(full_run) -> None:
    out, _, _ = full_run
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["xl-step00000001.safetensors", "xl-step00000002.safetensors",
                                                                 "xl.safetensors"]
    with safe_open(str(out / "xl.safetensors"), "pt") as f:
        names = {k.split(".")[0] for k in f.keys()}
        md = f.metadata()
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_output_blocks_0_1_transformer_blocks_0_ff_net_2" in names
    assert {n.split("_text_model")[0] for n in names if n.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    assert not any("down_blocks" in n or "up_blocks" in n for n in names)
    assert md["ss_base_model_version"] == "sdxl_base_v1-0"
    assert md["ss_v2"] == "False" and md["ss_v_parameterization"] == "False"
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert md["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert md["modelspec.prediction_type"] == "epsilon" and md["modelspec.resolution"] == "96x96"
    assert md["ss_network_dim"] == "2" and md["ss_steps"] == "2"
    assert json.loads(md["lorasmith_config"])["learning_rate_te2"] == 2e-4


def test_tensorboard_has_sd_scripts_tags_with_one_group_per_encoder(full_run) -> None:
    _, logs, _ = full_run
    tags = scalars(logs)
    assert {"loss/current", "loss/average", "loss/epoch_average", "lr/unet"} <= set(tags)
    assert tags["lr/textencoder 1"][0][1] == pytest.approx(1e-4)
    assert tags["lr/textencoder 2"][0][1] == pytest.approx(2e-4)
    assert [s for s, _ in tags["loss/current"]] == [1, 2]


def test_size_and_crop_ids_equal_the_hand_computed_ones(full_run) -> None:
    _, _, seen = full_run
    assert sorted(size for size, _, _ in seen) == sorted(IMAGES)
    for size, row, bucket in seen:
        assert bucket == BUCKETS[size]
        assert tuple(row) == IMAGES[size]


def test_resume_from_step_1_is_bit_exact(full_run, data: Path, tmp_path: Path) -> None:
    out, _, _ = full_run
    state = out / "xl-step00000001-state"
    assert state.is_dir()
    again = tmp_path / "again"
    code = sdxl_train_network.main(FLAGS + ["--train_data_dir", str(data), "--output_dir", str(again),
                                            "--resume", str(state)])
    assert code == 0
    a, b = load_file(str(out / "xl.safetensors")), load_file(str(again / "xl.safetensors"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_text_encoder_cache_on_disk_has_sd_scripts_arrays_and_is_reused(data: Path, tmp_path: Path) -> None:
    """--cache_text_encoder_outputs_to_disk writes <image>_te_outputs.npz (hidden_state1/2, pool2); a changed caption is re-encoded."""
    from library.data.text_conditioning import TextCache, TextEncoding
    from library.models import load_model_bundle

    folder = tmp_path / "1_x"
    folder.mkdir()
    for src in (data / "1_ohwx shape").glob("img0.*"):
        (folder / src.name).write_bytes(src.read_bytes())
    bundle = load_model_bundle("tiny-sdxl")
    encoding = TextEncoding(bundle, None, None)
    image = folder / "img0.png"
    cache = TextCache()
    assert cache.fill_from_disk(encoding, [(image, "ohwx shape")]) == (0, 1)
    with np.load(folder / "img0_te_outputs.npz") as npz:
        assert npz["hidden_state1"].shape == (77, 32) and npz["hidden_state2"].shape == (77, 32)
        assert npz["pool2"].shape == (32,)
        cond = encoding.encode(None, ["ohwx shape"])
        assert np.allclose(npz["pool2"], cond.pooled[0].detach().numpy(), atol=1e-6)
        assert np.allclose(np.concatenate([npz["hidden_state1"], npz["hidden_state2"]], -1),
                           cond.hidden[0].detach().numpy(), atol=1e-6)
    assert TextCache().fill_from_disk(encoding, [(image, "ohwx shape")]) == (1, 0)
    assert TextCache().fill_from_disk(encoding, [(image, "another caption")]) == (0, 1)


def test_sdxl_text_encoding_follows_sd_scripts_layers() -> None:
    """Penultimate states of both encoders, concatenated; pooled = te2 projection at the first EOS."""
    from library.data.text import tokenize_captions
    from library.data.text_conditioning import TextEncoding
    from library.models import load_model_bundle

    b = load_model_bundle("tiny-sdxl")
    cond = TextEncoding(b, None, None).encode(None, ["a red cube"])
    ids1 = tokenize_captions(b.tokenizer, ["a red cube"])
    ids2 = tokenize_captions(b.tokenizer_2, ["a red cube"])
    with torch.no_grad():
        h1 = b.text_encoder(ids1, output_hidden_states=True).hidden_states[-2]
        out2 = b.text_encoder_2(ids2, output_hidden_states=True)
        h2 = out2.hidden_states[-2]
        eos = int((ids2[0] == b.tokenizer_2.eos_token_id).nonzero()[0])
        pooled = b.text_encoder_2.text_projection(out2.last_hidden_state[0, eos])
    assert cond.hidden.shape == (1, 77, 64)
    assert torch.allclose(cond.hidden, torch.cat([h1, h2], -1), atol=1e-6)
    assert torch.allclose(cond.pooled[0], pooled, atol=1e-6)
    # the last layer's states differ from the penultimate's: a wrong layer choice fails above
    assert not torch.allclose(out2.hidden_states[-1], h2)


def test_unet_only_with_cached_text_outputs_trains_no_text_encoder(data: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(pretrained_model_name_or_path="tiny-sdxl", train_data_dir=str(data), caption_extension=".txt",
                      output_dir=str(tmp_path), output_name="u", resolution="64", train_batch_size=2, max_train_steps=1,
                      network_dim=2, network_train_unet_only=True, cache_text_encoder_outputs=True,
                      cache_latents=True, seed=3)
    result = train(cfg)
    keys = load_file(str(result.final_file)).keys()
    assert keys and not any(k.startswith("lora_te") for k in keys)


def test_kohya_ss_sdxl_and_v_prediction_configs_import() -> None:
    from library.kohya_import import import_kohya_config

    xl = import_kohya_config({"sdxl": True, "sdxl_no_half_vae": True, "sdxl_cache_text_encoder_outputs": True,
                              "network_train_unet_only": True, "v2": False, "v_parameterization": False})
    assert xl.unmapped == []
    assert xl.config.no_half_vae and xl.config.cache_text_encoder_outputs and xl.config.network_train_unet_only
    assert "sdxl" in xl.mapped
    sd2 = import_kohya_config({"sdxl": False, "sdxl_cache_text_encoder_outputs": True, "v2": True,
                               "v_parameterization": True})
    assert sd2.unmapped == [] and sd2.config.v2 and sd2.config.v_parameterization
    assert not sd2.config.cache_text_encoder_outputs  # kohya_ss passes sdxl_* options on only for SDXL
    assert "sdxl_cache_text_encoder_outputs" in sd2.ignored


def test_vram_plan_builds_the_sdxl_skeleton_with_both_encoders(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from library.models import load_model_bundle
    from library.training.vram_estimate import build_skeleton, model_family

    assert model_family("tiny-sdxl") == "tiny-sdxl" and model_family("tiny-sd2") == "tiny-sd2"
    junk = tmp_path / "junk.safetensors"  # no UNet: the loader names the problem later; the estimate assumes SD1.5
    save_file({"conditioner.embedders.1.model.ln_final.weight": torch.zeros(2)}, str(junk))
    assert model_family(str(junk)) == "sd15"
    sk = build_skeleton(TrainConfig(pretrained_model_name_or_path="tiny-sdxl", resolution="64"))
    b = load_model_bundle("tiny-sdxl")
    te_bytes = sum(p.numel() * 4 for m in b.text_encoders() for p in m.parameters()) + sum(
        t.numel() * t.element_size() for m in b.text_encoders() for t in m.buffers())
    assert sk.weights["text_encoder"] == te_bytes
    assert {a.lora_name[:8] for a in sk.network.text_encoder_loras} == {"lora_te1", "lora_te2"}


def test_text_encoder_lr_takes_one_or_two_values_on_the_command_line_and_in_toml(tmp_path: Path) -> None:
    from library.config_io import config_from_mapping
    from library.config_resolve import parse_train_args

    two, _ = parse_train_args(["--text_encoder_lr", "1e-5", "2e-5"])
    assert (two.text_encoder_lr, two.learning_rate_te2) == (1e-5, 2e-5)
    one, _ = parse_train_args(["--text_encoder_lr", "3e-5"])
    assert (one.text_encoder_lr, one.learning_rate_te2) == (3e-5, None)
    with pytest.raises(SystemExit):
        parse_train_args(["--text_encoder_lr", "1e-5", "2e-5", "3e-5"])
    cfg = config_from_mapping({"text_encoder_lr": [1e-5, 2e-5]}, source="run.toml")
    assert (cfg.text_encoder_lr, cfg.learning_rate_te2) == (1e-5, 2e-5)
    assert config_from_mapping({"text_encoder_lr": [4e-5]}, source="run.toml").text_encoder_lr == 4e-5
    assert config_from_mapping({"text_encoder_lr": []}, source="run.toml").text_encoder_lr is None


def test_validation_split_runs_on_sdxl(data: Path, tmp_path: Path) -> None:
    """Held-out images are scored with the same SDXL conditioning (cached text outputs, size ids)."""
    cfg = TrainConfig(pretrained_model_name_or_path="tiny-sdxl", train_data_dir=str(data), caption_extension=".txt",
                      output_dir=str(tmp_path), output_name="v", resolution="64", train_batch_size=1, max_train_epochs=1,
                      network_dim=2, network_train_unet_only=True, cache_latents=True, validation_split=0.5, seed=3)
    result = train(cfg)
    assert len(result.validation_losses) == 1 and result.validation_losses[0][1] > 0


def test_training_with_the_disk_cache_writes_then_reuses_te_outputs(data: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    cfg = TrainConfig(pretrained_model_name_or_path="tiny-sdxl", train_data_dir=str(copy), caption_extension=".txt",
                      output_dir=str(tmp_path / "out"), output_name="d", resolution="64", train_batch_size=2,
                      max_train_steps=1, network_dim=2, network_train_unet_only=True,
                      cache_text_encoder_outputs_to_disk=True, cache_latents=True, seed=3)
    first = train(cfg).final_file
    npz = sorted(p.name for p in (copy / "1_ohwx shape").glob("*_te_outputs.npz"))
    assert npz == ["img0_te_outputs.npz", "img1_te_outputs.npz"]
    stamps = [p.stat().st_mtime_ns for p in (copy / "1_ohwx shape").glob("*_te_outputs.npz")]
    second = train(dataclasses.replace(cfg, output_dir=str(tmp_path / "out2"))).final_file
    assert [p.stat().st_mtime_ns for p in (copy / "1_ohwx shape").glob("*_te_outputs.npz")] == stamps  # reused
    a, b = load_file(str(first)), load_file(str(second))
    assert all(torch.equal(a[k], b[k]) for k in a)  # cached outputs give the same training


def test_a_v_prediction_sdxl_run_says_so_in_its_metadata(data: Path, tmp_path: Path) -> None:
    """SDXL v-prediction descendants (--v_parameterization --zero_terminal_snr): still sdxl_base_v1-0, prediction v."""
    cfg = TrainConfig(pretrained_model_name_or_path="tiny-sdxl", train_data_dir=str(data), caption_extension=".txt",
                      output_dir=str(tmp_path), output_name="v", resolution="64", train_batch_size=2, max_train_steps=1,
                      network_dim=2, v_parameterization=True, zero_terminal_snr=True, cache_latents=True, seed=3)
    with safe_open(str(train(cfg).final_file), "pt") as f:
        md = f.metadata()
    assert md["ss_base_model_version"] == "sdxl_base_v1-0" and md["ss_v_parameterization"] == "True"
    assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora" and md["modelspec.prediction_type"] == "v"
    assert md["ss_zero_terminal_snr"] == "True"


def _record_unet_calls():
    """Patch the UNet's forward to record, per call, whether grad was on (training steps) or off (scoring),
    and the SDXL time ids, pooled width and caption length (token states) it got. Returns (calls, undo)."""
    from diffusers import UNet2DConditionModel

    calls: list[tuple[bool, list[tuple[int, ...]], int | None, int]] = []
    original = UNet2DConditionModel.forward

    def spy(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
        added = kwargs.get("added_cond_kwargs") or {}
        ids = added.get("time_ids")
        pooled = added.get("text_embeds")
        calls.append((torch.is_grad_enabled(), [tuple(r) for r in ids.int().tolist()] if ids is not None else [],
                      None if pooled is None else int(pooled.shape[-1]), int(encoder_hidden_states.shape[1])))
        return original(self, sample, timestep, encoder_hidden_states, *args, **kwargs)

    UNet2DConditionModel.forward = spy

    def undo() -> None:
        UNet2DConditionModel.forward = original

    return calls, undo


def scored_config(data: Path, out: Path) -> TrainConfig:
    """Two epochs of the two bucketed images (ids above), te1/te2 trained too, 150-token captions, scored at each save."""
    return TrainConfig(pretrained_model_name_or_path="tiny-sdxl", train_data_dir=str(data), caption_extension=".txt",
                       output_dir=str(out / "lora"), output_name="s", resolution="96", enable_bucket=True,
                       min_bucket_reso=64, max_bucket_reso=128, bucket_reso_steps=32, train_batch_size=2,
                       max_train_epochs=2, save_every_n_epochs=1, network_dim=2, network_alpha=1, learning_rate=1e-3,
                       text_encoder_lr=1e-3, cache_latents=True, evaluate_every_n_epochs=1, max_token_length=150,
                       logging_dir=str(out / "logs"), seed=3)


@pytest.fixture(scope="module")
def scored_run(data: Path, tmp_path_factory):
    from library.training.events import RecordingEvents

    out = tmp_path_factory.mktemp("xl_scored")
    events = RecordingEvents()
    calls, undo = _record_unet_calls()
    try:
        result = train(scored_config(data, out), events)
    finally:
        undo()
    return out, result, events, calls


def test_epoch_scores_during_sdxl_training_use_each_images_size_ids(scored_run) -> None:
    """--evaluate_every_n_epochs on SDXL: scalars per epoch, a log line, and every scored UNet call got the
    pooled embedding and the hand-computed size/crop ids of the image its latents came from."""
    out, result, events, calls = scored_run
    assert [p.name for p in result.files] == ["s-000001.safetensors", "s.safetensors"]
    tags = scalars(out / "logs")
    for w in ("0.6", "0.8", "1"):
        assert [e for e, _ in tags[f"evaluation/fidelity/w{w}"]] == [1, 2]
        assert [e for e, _ in tags[f"evaluation/drift/w{w}"]] == [1, 2]
    fidelity = [v for _, v in tags["evaluation/fidelity/w1"]]
    assert all(np.isfinite(fidelity)) and fidelity[0] != 1.0
    assert all(v > 0 for _, v in tags["evaluation/drift/w1"])
    logs = [e[1] for e in events.events if e[0] == "log" and "score" in e[1].get("message", "")]
    assert len(logs) == 2 and logs[-1]["recommendation"]["weight"] in (0.6, 0.8, 1.0)
    scoring = [c for c in calls if not c[0]]
    training = [c for c in calls if c[0]]
    assert scoring and training
    assert all(pooled == 32 for _, _, pooled, _ in scoring)  # te2's projection width on tiny-sdxl
    assert {row for _, rows, _, _ in scoring for row in rows} == set(IMAGES.values())
    assert {row for _, rows, _, _ in scoring for row in rows} == {row for _, rows, _, _ in training for row in rows}
    # the run's --max_token_length 150: two 77-token windows joined to 152 states, in training and scoring alike
    assert {n for *_, n in scoring} == {n for *_, n in training} == {152}


def test_evaluate_command_scores_sdxl_files(data: Path, scored_run, tmp_path: Path, capsys) -> None:
    """`lorasmith evaluate` on the run's files (its config file): table, JSON, CSV, chart and a recommendation;
    the images it encodes itself get the same size/crop ids as in training."""
    import csv

    from library.cli import main
    from library.config_io import write_config

    out, _result, _events, _calls = scored_run
    run_toml = write_config(scored_config(data, out), tmp_path / "x.toml")
    calls, undo = _record_unet_calls()
    try:
        code = main(["evaluate", "--config_file", str(run_toml), "--lora", str(out / "lora" / "s*.safetensors"),
                     "--weights", "1", "--output_dir", str(tmp_path / "eval")])
    finally:
        undo()
    printed = capsys.readouterr().out
    assert code == 0
    assert "recommended:" in printed
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert sorted(Path(s["file"]).name for s in report["scores"]) == ["s-000001.safetensors", "s.safetensors"]
    assert report["evaluation_set"]["images"] == 2 and report["recommendation"]["weight"] == 1.0
    rows = list(csv.DictReader((tmp_path / "eval" / "evaluation.csv").open()))
    assert len(rows) == 2 and all(float(r["fidelity"]) > 0 for r in rows)
    assert (tmp_path / "eval" / "evaluation.png").stat().st_size > 0
    assert {row for _, ids, _, _ in calls for row in ids} == set(IMAGES.values())
    assert {n for *_, n in calls} == {152}  # the config file's max_token_length
