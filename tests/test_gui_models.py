"""The GUI's model picker: what a model is (read without loading it), which options each family shows."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[gui])")

from gui.checks import form_issues  # noqa: E402
from gui.form import MODEL_FIELD, build_widgets, config_to_values  # noqa: E402
from gui.model_info import (  # noqa: E402
    describe_model,
    family_issues,
    field_visibility,
    list_models,
    resolution_hint,
)
from gui.model_picker import choices, model_line  # noqa: E402
from gui.safety import PathGuard  # noqa: E402
from library.config import MODEL_FAMILIES, TrainConfig, applies_to, family_options, option_fields, spec_of  # noqa: E402


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    """tiny, tiny-sdxl and tiny-sd2 written as single files and diffusers folders, plus a LoRA-like file."""
    from safetensors.torch import save_file
    import torch

    from library.models.loading import load_model_bundle
    from library.models.saving import save_diffusers, save_single_file

    root = tmp_path_factory.mktemp("models")
    for name in ("tiny", "tiny-sdxl", "tiny-sd2"):
        bundle = load_model_bundle(name)
        save_single_file(bundle, root / f"{name}.safetensors")
        save_diffusers(bundle, root / "diffusers" / name)
    (root / "loras").mkdir()
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 4), "lora_unet_x.lora_up.weight": torch.zeros(4, 2)},
              str(root / "loras" / "mine.safetensors"))
    return root


def _fake_checkpoint(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    """A .safetensors file holding zero tensors of these shapes (only the header matters to detection)."""
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("name, family, label, prediction", [
    ("tiny", "sd1", "SD1.x", "epsilon"),
    ("tiny-sdxl", "sdxl", "SDXL", "epsilon"),
    ("tiny-sd2", "sd2", "SD2.x 768-v", "v_prediction"),
])
def test_family_read_from_files_agrees_with_the_loader(model_files, name, family, label, prediction):
    from library.models.loading import load_model_bundle

    for path in (model_files / f"{name}.safetensors", model_files / "diffusers" / name):
        info = describe_model(str(path))
        facts = load_model_bundle(str(path)).facts
        assert (info.family, info.prediction_type) == (facts.architecture, facts.prediction_type) == (family, prediction)
        assert info.label == label and info.refusal is None
        assert info.prediction_why == facts.prediction_source  # the same reason the loader gives
    builtin = describe_model(name)
    assert (builtin.family, builtin.prediction_type, builtin.builtin) == (family, prediction, True)


def test_flags_change_the_prediction_as_the_loader_does(model_files):
    from library.models.loading import load_model_bundle

    sdxl = model_files / "tiny-sdxl.safetensors"
    info = describe_model(str(sdxl), v_parameterization=True)
    assert info.prediction_type == "v_prediction" and info.label == "SDXL (v-prediction)"
    assert info.prediction_type == load_model_bundle(str(sdxl), v_parameterization=True).facts.prediction_type
    assert not describe_model(str(sdxl)).prediction_certain  # the SDXL default is assumed: the line says so


def test_refused_models_show_the_loader_refusal(tmp_path):
    from library.errors import ModelLoadError
    from library.models.loading import load_model_bundle

    inpaint = _fake_checkpoint(tmp_path / "inpaint.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": (4, 9, 3, 3),
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": (8,)})
    flux = _fake_checkpoint(tmp_path / "flux.safetensors", {"double_blocks.0.img_attn.qkv.weight": (4, 4)})
    for path, words in ((inpaint, "inpainting model (9-channel UNet input)"), (flux, "a FLUX model")):
        info = describe_model(str(path))
        assert info.family is None and words in info.refusal
        with pytest.raises(ModelLoadError) as exc:
            load_model_bundle(str(path))
        assert exc.value.summary in info.refusal  # the loader's own words
    refiner = tmp_path / "refiner"
    (refiner / "unet").mkdir(parents=True)
    (refiner / "text_encoder_2").mkdir()
    (refiner / "unet" / "config.json").write_text(json.dumps(
        {"in_channels": 4, "addition_embed_type": "text_time", "projection_class_embeddings_input_dim": 2560}))
    (refiner / "text_encoder_2" / "config.json").write_text(json.dumps({"hidden_size": 1280}))
    assert "the SDXL refiner" in describe_model(str(refiner)).refusal
    assert describe_model(str(tmp_path / "missing.safetensors")) is None  # the form's own check names a missing file


def test_a_refused_model_is_an_error_on_the_field(tmp_path):
    bad = _fake_checkpoint(tmp_path / "inpaint.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (4, 9, 3, 3)})
    (tmp_path / "img" / "1_x").mkdir(parents=True)
    values = config_to_values(TrainConfig(pretrained_model_name_or_path=str(bad), train_data_dir=str(tmp_path / "img"),
                                          output_dir=str(tmp_path)))
    _cfg, errors, _warnings = form_issues(values, PathGuard.from_dirs([tmp_path]), for_training=True)
    assert "inpainting model" in errors[MODEL_FIELD]


def test_every_family_marker_names_a_family_and_a_widget():
    with gr.Blocks():
        widgets = build_widgets(TrainConfig())
    limited = family_options()
    assert set(limited) >= {"v2", "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "learning_rate_te2"}
    assert all(set(fams) <= set(MODEL_FAMILIES) for fams in limited.values())
    assert all(name in widgets for name in limited)


@pytest.mark.parametrize("family", [None, *MODEL_FAMILIES])
def test_visible_fields_per_family_follow_the_config(family):
    shown = field_visibility(family, config_to_values(TrainConfig()))
    expected = {f.name: family is None or spec_of(f).families is None or family in spec_of(f).families
                for f in option_fields() if spec_of(f).families is not None}
    assert shown == expected
    if family == "sdxl":
        assert shown["cache_text_encoder_outputs"] and shown["learning_rate_te2"] and not shown["v2"]
    if family == "sd1":
        assert not any(shown.values())
    if family == "sd2":
        assert shown["v2"] and not shown["cache_text_encoder_outputs"]
    assert applies_to("v_parameterization", family) and applies_to("network_train_unet_only", family)


def test_a_set_option_of_another_family_stays_in_view_with_a_warning(model_files):
    cfg = TrainConfig(cache_text_encoder_outputs=True, network_train_unet_only=True)
    assert field_visibility("sd1", {"cache_text_encoder_outputs": True})["cache_text_encoder_outputs"]
    errors, warnings = family_issues(describe_model(str(model_files / "tiny.safetensors")), cfg)
    assert "applies to Stable Diffusion XL models only" in warnings["cache_text_encoder_outputs"] and not errors
    errors, warnings = family_issues(describe_model(str(model_files / "tiny-sdxl.safetensors")), cfg)
    assert "cache_text_encoder_outputs" not in warnings
    errors, _ = family_issues(describe_model("tiny-sdxl"), TrainConfig(v2=True))
    assert "drop --v2" in errors["v2"]  # the loader refuses --v2 on SDXL: an error, not a warning


def test_sdxl_at_512_suggests_1024_without_changing_it(model_files):
    sdxl = describe_model(str(model_files / "tiny-sdxl.safetensors"))
    _errors, warnings = family_issues(sdxl, TrainConfig(resolution="512"))
    assert "set resolution to 1024" in warnings["resolution"]
    assert resolution_hint(sdxl, "1024,1024") is None and resolution_hint(sdxl, "768,1344") is None
    assert resolution_hint(describe_model(str(model_files / "tiny.safetensors")), "512") is None
    assert resolution_hint(describe_model("tiny-sdxl"), "64") is None  # the built-in test models have no size
    assert "width and height to 1024" in model_line(str(model_files / "tiny-sdxl.safetensors"),
                                                    PathGuard.from_dirs([model_files]), 512, 512)


def test_listing_finds_checkpoints_and_diffusers_folders_not_loras(model_files, tmp_path):
    guard = PathGuard.from_dirs([model_files])
    listed = list_models(model_files, guard)
    assert listed[:4] == ["tiny", "tiny-world", "tiny-sdxl", "tiny-sd2"]
    found = {str(Path(p).relative_to(model_files)) for p in listed[4:]}
    assert found == {"tiny.safetensors", "tiny-sdxl.safetensors", "tiny-sd2.safetensors",
                     "diffusers/tiny", "diffusers/tiny-sdxl", "diffusers/tiny-sd2"}
    labels = dict((v, k) for k, v in choices(str(model_files), guard))
    assert labels[str(model_files / "diffusers" / "tiny-sdxl")] == "diffusers/tiny-sdxl"
    assert list_models(tmp_path, guard) == listed[:4]  # a folder outside the allowed ones is not listed


def test_training_tab_check_shows_the_family_and_its_options(tmp_path, monkeypatch):
    from gui.app import build_app
    from gui.context import GuiContext

    monkeypatch.setenv("LORASMITH_HOME", str(tmp_path / "home"))
    ctx = GuiContext.create([str(tmp_path)], tmp_path / "jobs")
    try:
        tab = build_app(ctx).lorasmith_training

        def check(**values):
            shown = config_to_values(TrainConfig(**values))
            data = {comp: shown[name] for name, comp in tab.widgets.items()}
            data.update({tab.applied: None, tab.plan_key: "", tab.family_key: ""})
            return tab.check_form(data)

        out = check(pretrained_model_name_or_path="tiny-sdxl")
        assert 'data-family="sdxl"' in out[tab.model_facts] and "<b>SDXL</b>" in out[tab.model_facts]
        assert out[tab.widgets["cache_text_encoder_outputs"]]["visible"] is True
        assert out[tab.widgets["v2"]]["visible"] is False
        out = check(pretrained_model_name_or_path="tiny")
        assert out[tab.widgets["cache_text_encoder_outputs"]]["visible"] is False
        assert check(pretrained_model_name_or_path="tiny", v2=True)[tab.widgets["v2"]]["visible"] is True  # set: kept
        bad = _fake_checkpoint(tmp_path / "inpaint.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (4, 9, 3, 3)})
        out = check(pretrained_model_name_or_path=str(bad))
        assert 'data-refused="1"' in out[tab.model_facts] and out[tab.start_btn]["interactive"] is False
    finally:
        ctx.close()


def test_generate_tab_refuses_a_model_the_loader_refuses(tmp_path, monkeypatch):
    from gui.context import GuiContext
    from gui.generate_tab import GenerateTab

    monkeypatch.setenv("LORASMITH_HOME", str(tmp_path / "home"))
    ctx = GuiContext.create([str(tmp_path)], tmp_path / "jobs")
    try:
        with gr.Blocks():
            tab = GenerateTab(ctx)
        assert isinstance(tab.fields[MODEL_FIELD], gr.Dropdown) and tab.fields[MODEL_FIELD].allow_custom_value
        bad = _fake_checkpoint(tmp_path / "inpaint.safetensors", {"model.diffusion_model.input_blocks.0.0.weight": (4, 9, 3, 3)})
        data = {comp: comp.value for comp in tab.form_inputs}
        data.update({tab.fields[MODEL_FIELD]: str(bad), tab.fields["prompt"]: "a cat"})
        out = tab.generate(data)
        assert out[tab.message].startswith("**Not queued:**") and "inpainting model" in out[tab.message]
        assert tab.queue.jobs == []
    finally:
        ctx.close()
