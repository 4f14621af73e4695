"""The GUI form is generated from TrainConfig and round-trips values by field name."""
from __future__ import annotations

import dataclasses

import pytest

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[gui])")

from gui.checks import field_info, form_issues, issues_markdown
from gui.form import (
    FIELD_NAMES,
    UNSET,
    build_widgets,
    config_to_values,
    from_widget_value,
    to_widget_value,
    values_to_config,
    widget_kind,
)
from gui.safety import PathGuard
from library.config import TrainConfig, base_type, option_fields
from library.errors import ConfigError
from library.presets import list_presets, load_preset

EXPECTED_COMPONENT = {
    "checkbox": gr.Checkbox, "dropdown": gr.Dropdown, "number": gr.Number, "list": gr.Textbox,
    "path": gr.Textbox, "text": gr.Textbox, "model": gr.Dropdown,
}


def test_every_field_has_a_widget_of_its_kind():
    with gr.Blocks():
        widgets = build_widgets(TrainConfig())
    assert sorted(widgets) == sorted(f.name for f in option_fields())
    for name, comp in widgets.items():
        assert isinstance(comp, EXPECTED_COMPONENT[widget_kind(name)]), name
        assert comp.elem_id == f"field-{name}"
        assert comp.info  # the help text travels to the page


def test_widget_kinds_follow_types_and_specs():
    assert widget_kind("enable_bucket") == "checkbox"
    assert widget_kind("lr_scheduler") == "dropdown"
    assert widget_kind("network_dim") == "number"
    assert widget_kind("optimizer_args") == "list"
    assert widget_kind("train_data_dir") == "path"
    assert widget_kind("output_name") == "text"


def test_number_widgets_show_the_range_but_do_not_clamp():
    """Gradio would clamp a typed 0 to the minimum with an unnamed toast: the range is checked by config_validate."""
    with gr.Blocks():
        widgets = build_widgets(TrainConfig())
    assert widgets["network_dim"].minimum is None and widgets["network_dim"].maximum is None
    assert widgets["network_dim"].precision == 0
    assert "range 1…1024" in widgets["network_dim"].info


@pytest.mark.parametrize("preset", [p["name"] for p in list_presets() if p["source"] == "builtin"])
def test_builtin_presets_round_trip_through_the_form(preset):
    cfg = load_preset(preset)
    assert values_to_config(config_to_values(cfg)) == cfg


def test_every_field_round_trips_a_non_default_value():
    changed = {}
    for f in option_fields():
        default = getattr(TrainConfig(), f.name)
        kind = widget_kind(f.name)
        if kind == "checkbox":
            changed[f.name] = not default
        elif kind == "dropdown":
            choices = [c for c in f.metadata["lorasmith"].choices if c != default]
            if choices:
                changed[f.name] = choices[-1]
        elif kind == "list":
            changed[f.name] = ["a=1", "b=two words"]
        elif kind == "number":
            spec = f.metadata["lorasmith"]
            changed[f.name] = int(spec.max or 7) if base_type(f.name) is int else 0.25
        else:
            changed[f.name] = "some value/x"
    cfg = dataclasses.replace(TrainConfig(), **changed)
    back = values_to_config(config_to_values(cfg))
    diffs = [n for n in FIELD_NAMES if getattr(back, n) != getattr(cfg, n)]
    assert diffs == []


def test_none_and_lists_in_widgets():
    assert to_widget_value("max_token_length", None) == UNSET
    assert from_widget_value("max_token_length", UNSET) is None
    assert from_widget_value("max_token_length", "150") == "150"  # coerced to int by config_io
    assert values_to_config({"max_token_length": "150"}).max_token_length == 150
    assert to_widget_value("optimizer_args", ["decouple=True", "betas=0.9,0.99"]) == "decouple=True betas=0.9,0.99"
    assert values_to_config({"optimizer_args": ""}).optimizer_args == []
    assert values_to_config({"vae": "  "}).vae is None
    assert values_to_config({"network_dim": 8.0}).network_dim == 8


def test_bad_form_values_name_the_field():
    with pytest.raises(ConfigError, match="optimizer_args"):
        values_to_config({"optimizer_args": 'a="unclosed'})
    with pytest.raises(ConfigError, match="unknown field 'netwrok_dim'"):
        values_to_config({"netwrok_dim": 4})


def test_form_issues_place_messages_on_fields(tmp_path):
    guard = PathGuard.from_dirs([tmp_path])
    values = config_to_values(dataclasses.replace(
        load_preset("quick-cpu-test"), train_data_dir=str(tmp_path), output_dir="/etc/lorasmith-out",
        color_aug=True))
    cfg, errors, warnings = form_issues(values, guard, for_training=True)
    assert cfg is not None
    assert "outside the allowed folders" in errors["output_dir"]
    assert "cache_latents" in errors["color_aug"]
    assert "pretrained_model_name_or_path" not in errors  # 'tiny' is a built-in name, not a path
    text = issues_markdown(errors, warnings)
    assert "*Folders* — output_dir" in text and "*Dataset* — color_aug" in text
    assert field_info("color_aug", errors["color_aug"], None).startswith("ERROR: color_aug")


def test_preset_keeps_user_paths_and_counts_changes():
    from gui.preset_flow import apply_preset, differs

    current = config_to_values(TrainConfig())
    current.update(train_data_dir="/data/img", output_name="mine")
    new, changed, kept = apply_preset(current, load_preset("quick-cpu-test"))
    assert new["train_data_dir"] == "/data/img" and new["output_name"] == "mine"
    assert new["pretrained_model_name_or_path"] == "tiny" and "pretrained_model_name_or_path" in changed
    assert "train_data_dir" not in changed
    assert differs({**new, "network_dim": 16}, new) == ["network_dim"]


def test_lora_type_picker_switches_module_and_args():
    from gui.lora_types import applicable_args, switch_type, type_of

    module, args, dropped = switch_type("LoKr", "conv_dim=8 block_dims=1,2 loraplus_lr_ratio=16")
    assert module == "lycoris.kohya" and "algo=lokr" in args and "conv_dim=8" in args and "factor=-1" in args
    assert dropped == ["block_dims"] and type_of(module, args) == "LoKr"
    module, args, _ = switch_type("DoRA", args)
    assert type_of(module, args) == "DoRA" and "dora_wd=True" in args and "factor" not in args
    module, args, dropped = switch_type("Standard", args)
    assert module == "networks.lora" and "algo" not in args and "conv_dim" in dropped
    assert "block_dims" in applicable_args("Standard") and "conv_dim" not in applicable_args("Standard")


def test_form_issues_flag_a_missing_folder_and_a_locked_output(tmp_path):
    import json
    import os
    import socket

    guard = PathGuard.from_dirs([tmp_path])
    out = tmp_path / "out"
    out.mkdir()
    (out / ".lorasmith-train.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # alive, not us
    values = config_to_values(dataclasses.replace(load_preset("quick-cpu-test"), train_data_dir="missing",
                                                  output_dir=str(out)))
    _cfg, errors, _ = form_issues(values, guard, for_training=True)
    assert "is not a folder" in errors["train_data_dir"] and str(tmp_path / "missing") in errors["train_data_dir"]
    assert "in use by another training" in errors["output_dir"]
