"""TrainConfig: one declaration → CLI, TOML, JSON presets, kohya_ss import, validation."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from library.config import TrainConfig, option_fields, parse_key_value_args, parse_resolution, spec_of
from library.config_io import (
    build_train_parser,
    command_string,
    config_from_mapping,
    config_to_toml,
    read_config_file,
    to_command_line,
    write_config,
)
from library.config_resolve import load_config_source, parse_train_args, resolve_config
from library.config_validate import check_config, validate
from library.errors import ConfigError
from library.kohya_import import import_kohya_config


def test_every_field_declares_help_group_and_a_flag():
    parser = build_train_parser()
    flags = {s for a in parser._actions for s in a.option_strings}
    for f in option_fields():
        spec = spec_of(f)
        assert spec.help and spec.group, f.name
        assert f"--{f.name}" in flags, f.name


SDSCRIPTS_FIXTURE_FLAGS = (
    "--pretrained_model_name_or_path tiny --train_data_dir data --output_dir out "
    "--network_module networks.lora --network_dim 4 --network_alpha 1 --optimizer_type AdamW "
    "--learning_rate 1e-3 --lr_scheduler cosine --lr_warmup_steps 4 --min_snr_gamma 5 "
    "--noise_offset 0.0357 --resolution 128 --enable_bucket --min_bucket_reso 64 --max_bucket_reso 256 "
    "--bucket_reso_steps 64 --shuffle_caption --keep_tokens 1 --flip_aug --cache_latents "
    "--gradient_checkpointing --sdpa --mixed_precision no --train_batch_size 2 --max_train_epochs 3 "
    "--save_every_n_epochs 1 --save_model_as safetensors --output_name tinylora --seed 42"
)


def test_pasted_sdscripts_command_parses_unchanged(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()  # validation checks that the folders exist
    monkeypatch.chdir(tmp_path)
    cfg, _ = parse_train_args(shlex.split(SDSCRIPTS_FIXTURE_FLAGS))
    assert cfg.network_dim == 4 and cfg.network_alpha == 1.0
    assert cfg.learning_rate == 1e-3 and cfg.lr_warmup_steps == 4
    assert cfg.resolution == "128" and cfg.enable_bucket and cfg.min_bucket_reso == 64
    assert cfg.shuffle_caption and cfg.keep_tokens == 1 and cfg.flip_aug and cfg.cache_latents
    assert cfg.max_train_epochs == 3 and cfg.seed == 42 and cfg.output_name == "tinylora"
    assert validate(cfg) == []


def test_seed_guide_optimizer_args_parse_like_sdscripts():
    argv = shlex.split('--optimizer_type DAdaptAdam --optimizer_args "decouple=True" "use_bias_correction=True" "weight_decay=0.20"')
    cfg, _ = parse_train_args(argv)
    assert cfg.optimizer_args == ["decouple=True", "use_bias_correction=True", "weight_decay=0.20"]
    args = parse_key_value_args(cfg.optimizer_args, "optimizer_args")
    assert args == {"decouple": True, "use_bias_correction": True, "weight_decay": 0.2}
    assert parse_key_value_args(["betas=0.9,0.99", "eps=1e-8", "name=abc"], "x") == {"betas": (0.9, 0.99), "eps": 1e-8, "name": "abc"}


@pytest.mark.parametrize("arg, betas", [
    ("betas=(0.9,0.99)", (0.9, 0.99)), ("betas=[0.9,0.99]", [0.9, 0.99]), ("betas=(0.9, 0.99)", (0.9, 0.99)),
    ("betas=0.9,0.99", (0.9, 0.99)), ("betas=0.9, 0.99", (0.9, 0.99)),
])
def test_pasted_sdscripts_optimizer_args_build_dadaptadam(arg: str, betas: object) -> None:
    """Issue 24: `--optimizer_args ... "betas=(0.9,0.99)"` failed with "'<=' not supported between
    'float' and 'str'" (the parser split inside the tuple). sd-scripts splits on the first `=` and
    reads the value with ast.literal_eval."""
    import torch

    from library.training.optimizers import build_optimizer

    argv = shlex.split(f'--optimizer_type DAdaptAdam --optimizer_args "decouple=True" "{arg}" "weight_decay=0.2"')
    cfg, _ = parse_train_args(argv)
    args = parse_key_value_args(cfg.optimizer_args, "optimizer_args")
    assert args == {"decouple": True, "betas": betas, "weight_decay": 0.2}
    assert all(type(v) is float for v in args["betas"])
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    choice = build_optimizer(cfg.optimizer_type, cfg.optimizer_args, groups, 1.0)
    assert tuple(choice.optimizer.defaults["betas"]) == (0.9, 0.99)
    assert choice.optimizer.defaults["decouple"] is True and choice.optimizer.defaults["weight_decay"] == 0.2


def test_key_value_args_split_on_the_first_equals_sign() -> None:
    """Values that are not literals stay strings (`a=b`), quotes are literals, kohya_ss's one
    space-separated string still splits, and old sd-scripts' lowercase booleans still read."""
    assert parse_key_value_args(["x=a=b", 's="a b"', "d=true", "lr_end=1e-7"], "x") == {
        "x": "a=b", "s": "a b", "d": True, "lr_end": 1e-7}
    assert parse_key_value_args(["decouple=True weight_decay=0.20 betas=(0.9, 0.99) use_bias_correction=True"], "x") == {
        "decouple": True, "weight_decay": 0.2, "betas": (0.9, 0.99), "use_bias_correction": True}


def test_bad_optimizer_args_named():
    with pytest.raises(ConfigError, match="weight_decay0.2"):
        parse_key_value_args(["weight_decay0.2"], "optimizer_args")


def test_resolution_parsing():
    assert parse_resolution("512") == (512, 512)
    assert parse_resolution("768,512") == (768, 512)
    with pytest.raises(ConfigError, match="resolution"):
        parse_resolution("big")


def test_precedence_defaults_preset_file_cli(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[model_arguments]\nnetwork_dim = 8\n[training_arguments]\nmax_train_epochs = 5\nseed = 7\n')
    args = build_train_parser().parse_args(["--preset", "quick-cpu-test", "--config_file", str(toml), "--seed", "99"])
    cfg = resolve_config(args)
    assert cfg.pretrained_model_name_or_path == "tiny"  # preset
    assert cfg.network_dim == 8 and cfg.max_train_epochs == 5  # file over preset
    assert cfg.seed == 99  # CLI over file
    assert cfg.train_batch_size == 2  # preset over default
    assert cfg.max_grad_norm == 1.0  # default


def test_unknown_key_did_you_mean(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("network_dimm = 8\nlearning_rat = 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config_source(toml)
    text = str(exc.value)
    assert "network_dimm" in text and "did you mean 'network_dim'" in text
    assert "learning_rat" in text and "did you mean 'learning_rate'" in text


def test_type_errors_named(tmp_path):
    with pytest.raises(ConfigError, match=r"network_dim.*'eight'"):
        config_from_mapping({"network_dim": "eight"}, source="test")
    with pytest.raises(ConfigError, match=r"train_batch_size.*2.5"):
        config_from_mapping({"train_batch_size": 2.5}, source="test")


def test_garbage_toml_names_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("network_dim = = 4\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        read_config_file(bad)


def test_toml_round_trip(tmp_path):
    cfg = TrainConfig(network_dim=16, optimizer_args=["decouple=True"], resolution="768,512", max_train_epochs=4, noise_offset=0.05)
    path = write_config(cfg, tmp_path / "out.toml")
    again = load_config_source(path)
    assert again == cfg


def test_json_preset_is_sparse_and_round_trips(tmp_path):
    cfg = TrainConfig(network_dim=16, seed=3)
    path = write_config(cfg, tmp_path / "p.json")
    data = json.loads(path.read_text())
    assert set(data) == {"config_version", "network_dim", "seed"}
    assert load_config_source(path) == cfg


def test_old_version_migrates(tmp_path):
    old = tmp_path / "old.toml"
    old.write_text("use_8bit_adam = true\nnetwork_dim = 4\n")
    assert load_config_source(old).optimizer_type == "AdamW8bit"
    newer = tmp_path / "new.json"
    newer.write_text(json.dumps({"config_version": 99}))
    with pytest.raises(ConfigError, match="newer lorasmith"):
        load_config_source(newer)


def test_validation_collects_every_problem():
    cfg = TrainConfig(cache_latents=True, color_aug=True, random_crop=True, network_dim=0, resolution="500", mixed_precision="fp8")
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    problems = exc.value.problems
    joined = "\n".join(problems)
    for needle in ("color_aug", "random_crop", "network_dim", "resolution", "mixed_precision", "pretrained_model_name_or_path", "train_data_dir", "output_dir"):
        assert needle in joined, needle


def test_warnings_for_adaptive_optimizers_and_saving(tmp_path):
    cfg = TrainConfig(
        pretrained_model_name_or_path="tiny", train_data_dir=str(tmp_path), output_dir="o", optimizer_type="DAdaptAdam",
        learning_rate=1e-4, max_train_epochs=2, save_every_n_epochs=5,
    )
    warnings = "\n".join(validate(cfg))
    assert "expect about 1.0" in warnings
    assert "decouple=True" in warnings
    assert "save_every_n_epochs" in warnings


def test_check_config_attaches_issues_to_fields():
    rep = check_config(TrainConfig(network_dim=-1), for_training=False)
    assert [i.field for i in rep.errors] == ["network_dim"]


def test_command_line_round_trip():
    cfg = TrainConfig(network_dim=12, flip_aug=True, optimizer_args=["decouple=True", "weight_decay=0.2"], seed=5)
    argv = to_command_line(cfg)[1:]
    again, _ = parse_train_args(argv)
    assert again == cfg
    line = command_string(cfg)
    assert line.startswith("python train_network.py --") and "--network_dim 12" in line and "--flip_aug" in line


def test_kohya_seed_guide_config_imports(seed_guide_dir: Path):
    data = json.loads((seed_guide_dir / "kohya_ss_final_28DSTABLEBESTVERSION.json").read_text())
    result = import_kohya_config(data)
    cfg = result.config
    assert result.unmapped == []
    assert cfg.optimizer_type == "DAdaptAdam"
    assert parse_key_value_args(cfg.optimizer_args, "x") == {"decouple": True, "weight_decay": 0.2, "use_bias_correction": True}
    assert (cfg.learning_rate, cfg.unet_lr, cfg.text_encoder_lr) == (1.0, 1.0, 1.0)
    assert cfg.lr_scheduler == "cosine" and cfg.lr_warmup_steps == 0
    assert (cfg.network_dim, cfg.network_alpha) == (192, 1.0)
    assert cfg.resolution == "768,768" and cfg.train_batch_size == 3 and cfg.max_train_epochs == 10
    assert cfg.min_snr_gamma == 5 and cfg.noise_offset == 0.0357 and cfg.clip_skip == 2
    assert cfg.mixed_precision == "bf16" and cfg.save_precision == "bf16" and cfg.gradient_checkpointing
    assert cfg.cache_latents and cfg.cache_latents_to_disk and cfg.enable_bucket and cfg.bucket_no_upscale
    assert (cfg.min_bucket_reso, cfg.max_bucket_reso) == (256, 2048)
    assert cfg.save_every_n_epochs == 1 and cfg.sample_every_n_epochs == 1 and cfg.sample_sampler == "euler_a"
    assert cfg.seed == 1234 and (cfg.xformers or cfg.sdpa)
    assert set(result.placeholders) == {"pretrained_model_name_or_path", "train_data_dir", "reg_data_dir", "output_dir", "logging_dir", "output_name"}
    assert "--w 768" in result.sample_prompts_text
    assert "model_list" in result.ignored
    # Every training-relevant key landed somewhere: mapped, a placeholder, or deliberately neutral.
    training_keys = {"optimizer", "optimizer_args", "epoch", "max_resolution", "lr_warmup", "network_dim", "min_snr_gamma", "noise_offset"}
    assert training_keys <= set(result.mapped)


def test_kohya_base_config_maps_lr_warmup_and_betas(seed_guide_dir: Path):
    data = json.loads((seed_guide_dir / "kohya_ss_config_SD1.5.json").read_text())
    data["lr_warmup"] = 10
    cfg = import_kohya_config(data).config
    assert cfg.lr_warmup_steps == pytest.approx(0.10)
    args = parse_key_value_args(cfg.optimizer_args, "x")
    assert args["betas"] == (0.9, 0.99) and args["growth_rate"] == 1.02
    assert cfg.max_train_epochs == 100


def test_kohya_unmappable_settings_are_listed():
    data = {"LoRA_type": "LyCORIS/GLoRA", "optimizer": "AdamW", "epoch": "2", "max_resolution": "512,512", "block_dims": "2,2,2", "seed": "1"}
    result = import_kohya_config(data)
    assert any("LyCORIS/GLoRA" in u for u in result.unmapped)
    assert result.config.network_args == ["block_dims=2,2,2"]  # Standard: kept for the validation to judge
    assert result.config.seed == 1 and result.config.max_train_epochs == 2


def test_kohya_additional_parameters_are_flags():
    data = {"LoRA_type": "Standard", "optimizer": "AdamW", "epoch": 1, "max_resolution": "512,512", "additional_parameters": "--network_train_unet_only --bogus_flag"}
    result = import_kohya_config(data)
    assert result.config.network_train_unet_only
    assert any("--bogus_flag" in u for u in result.unmapped)


def test_cli_import_kohya_writes_toml(seed_guide_dir: Path, tmp_path):
    out = tmp_path / "guide.toml"
    proc = subprocess.run(
        [sys.executable, "-m", "library.cli", "config", "import-kohya", str(seed_guide_dir / "kohya_ss_final_28DSTABLEBESTVERSION.json"), "-o", str(out)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Paths still to fill in" in proc.stdout and "train_data_dir" in proc.stdout
    cfg = load_config_source(out)
    assert cfg.network_dim == 192 and cfg.sample_prompts and Path(cfg.sample_prompts).is_file()


def test_cli_bad_config_one_screen_no_traceback(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_text("netwrk_dim = 4\n")
    proc = subprocess.run([sys.executable, "-m", "library.cli", "config", "validate", "--config_file", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "netwrk_dim" in proc.stderr and "network_dim" in proc.stderr


def test_person_preset_matches_the_guide_and_ships_its_sample_prompt(tmp_path, monkeypatch):
    """Issue 24: it upscaled small images (the guide turns that off) and scheduled samples without a prompt."""
    from library.presets import load_preset

    monkeypatch.chdir(tmp_path)  # the prompt file is found beside the preset, wherever the run starts
    person = load_preset("person-sd15-dadapt")
    assert person.bucket_no_upscale is False and person.enable_bucket
    assert person.sample_every_n_epochs == 1 and Path(person.sample_prompts).is_file()
    prompt = Path(person.sample_prompts).read_text()
    assert "(ohwx woman:1.2), green t-shirt, beach" in prompt and "--w 768 --h 768 --l 3.5 --s 50" in prompt
    rep = check_config(person, for_training=False)
    assert not any(w.field == "sample_prompts" for w in rep.warnings)
    assert not any("use_bias_correction" in w.message for w in rep.warnings)


def test_dadaptadam_without_bias_correction_warns(tmp_path):
    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(tmp_path), output_dir="o",
                      optimizer_type="DAdaptAdam", learning_rate=1.0, optimizer_args=["decouple=True"])
    warnings = "\n".join(validate(cfg))
    assert "use_bias_correction=True" in warnings and "decouple" not in warnings
    cfg.optimizer_args.append("use_bias_correction=True")
    assert validate(cfg) == []


def test_builtin_presets_are_valid():
    from library.presets import list_presets, load_preset

    names = {p["name"] for p in list_presets() if p["source"] == "builtin"}
    assert {"person-sd15-dadapt", "style-sd15-prodigy", "quick-cpu-test"} <= names
    person = load_preset("person-sd15-dadapt")
    assert person.optimizer_type == "DAdaptAdam" and person.network_dim == 192 and person.resolution == "768,768"
    for name in names:
        rep = check_config(load_preset(name), for_training=False)
        assert rep.errors == [], (name, rep.errors)


def test_user_presets_save_load_rename_delete(tmp_path, monkeypatch):
    from library import presets

    monkeypatch.setenv("LORASMITH_HOME", str(tmp_path))
    cfg = TrainConfig(network_dim=32)
    presets.save_user_preset(cfg, "mine", "test")
    assert presets.load_preset("mine") == cfg
    with pytest.raises(ConfigError, match="already exists"):
        presets.save_user_preset(cfg, "mine")
    with pytest.raises(ConfigError, match="read-only"):
        presets.save_user_preset(cfg, "quick-cpu-test")
    presets.rename_user_preset("mine", "ours")
    assert presets.load_preset("ours").network_dim == 32
    presets.delete_user_preset("ours")
    with pytest.raises(ConfigError, match="not found"):
        presets.load_preset("ours")
    with pytest.raises(ConfigError, match="not allowed"):
        presets.save_user_preset(cfg, "../escape")


def test_toml_has_version_and_sections():
    text = config_to_toml(TrainConfig(network_dim=8))
    assert text.startswith("config_version = 2")
    assert "[network]" in text and "network_dim = 8" in text


def test_kohya_json_as_config_file_takes_paths_from_the_command_line(seed_guide_dir: Path, tmp_path):
    """Issue 24: a kohya_ss JSON given to --config_file stopped on 'no output_dir' although --output_dir was given."""
    guide = seed_guide_dir / "kohya_ss_final_28DSTABLEBESTVERSION.json"
    out = tmp_path / "out"
    args = build_train_parser().parse_args(["--config_file", str(guide), "--output_dir", str(out),
                                            "--pretrained_model_name_or_path", "tiny", "--train_data_dir", str(tmp_path)])
    cfg = resolve_config(args)
    assert cfg.output_dir == str(out) and cfg.network_dim == 192
    assert Path(cfg.sample_prompts) == out / "sample" / "prompt.txt"
    assert "--w 768" in Path(cfg.sample_prompts).read_text()
    assert not any("placeholder" in e.message for e in check_config(cfg).errors)
    mine = tmp_path / "mine.txt"
    mine.write_text("ohwx --w 64 --h 64\n")
    args = build_train_parser().parse_args(["--config_file", str(guide), "--output_dir", str(tmp_path / "out2"),
                                            "--sample_prompts", str(mine), "--pretrained_model_name_or_path", "tiny",
                                            "--train_data_dir", str(tmp_path)])
    assert resolve_config(args).sample_prompts == str(mine)  # the command line wins here too
    assert not (tmp_path / "out2").exists()


def test_kohya_json_writes_nothing_while_the_config_has_problems(seed_guide_dir: Path, tmp_path):
    guide = seed_guide_dir / "kohya_ss_final_28DSTABLEBESTVERSION.json"
    out = tmp_path / "out"
    args = build_train_parser().parse_args(["--config_file", str(guide), "--output_dir", str(out),
                                            "--pretrained_model_name_or_path", str(tmp_path / "missing.safetensors"),
                                            "--train_data_dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="missing.safetensors' does not exist"):
        validate(resolve_config(args))
    assert not out.exists()


def test_kohya_placeholders_left_in_required_paths_are_named(seed_guide_dir: Path, tmp_path):
    guide = seed_guide_dir / "kohya_ss_final_28DSTABLEBESTVERSION.json"
    args = build_train_parser().parse_args(["--config_file", str(guide), "--train_data_dir", str(tmp_path)])
    cfg = resolve_config(args)
    with pytest.raises(ConfigError) as exc:
        validate(cfg)
    text = str(exc.value)
    assert "output_dir: is still the placeholder '<path to output dir>'" in text
    assert "pretrained_model_name_or_path: is still the placeholder '<path to 28DSTABLEBEST" in text
    assert "train_data_dir" not in text  # given on the command line
    assert not list(tmp_path.iterdir())  # nothing written while the output folder is unknown


def test_config_modules_import_one_way():
    """config_io (readers/writers) at the bottom; kohya_import and presets above it; config_resolve on top."""
    import ast

    root = Path(__file__).resolve().parents[1] / "library"

    def imported(name: str) -> set[str]:
        tree = ast.parse((root / f"{name}.py").read_text())
        return {n.module.removeprefix("library.") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}

    above = {"kohya_import", "presets", "config_resolve"}
    assert not imported("config_io") & above
    assert not imported("kohya_import") & (above - {"kohya_import"})
    assert not imported("presets") & (above - {"presets"})
