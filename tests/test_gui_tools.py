"""GUI handlers called in-process (no browser): presets, kohya import, export, start checks, tool arguments."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[gui])")

from gui.app import build_app  # noqa: E402
from gui.context import GuiContext  # noqa: E402
from gui.evaluate_tab import grid_command, png_parameters  # noqa: E402
from gui.regularization_tab import generate_args, photos_args  # noqa: E402
from gui.safety import PathGuard  # noqa: E402
from gui.tensorboard import TensorBoard  # noqa: E402
from library.config import TrainConfig  # noqa: E402
from library.errors import ConfigError  # noqa: E402


@pytest.fixture()
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("LORASMITH_HOME", str(tmp_path / "home"))
    ctx = GuiContext.create([str(tmp_path)], tmp_path / "jobs")
    demo = build_app(ctx)
    yield demo.lorasmith_training, ctx
    ctx.close()


def by_name(tab, out: dict) -> dict:
    """Handler outputs (component → value) as field name → value."""
    names = {comp: name for name, comp in tab.widgets.items()}
    return {names[c]: v for c, v in out.items() if c in names}


def form_data(tab, **values) -> dict:
    """What Gradio passes a handler: every form component → its value (defaults plus `values`)."""
    from gui.form import config_to_values

    shown = config_to_values(TrainConfig(**values))
    return {comp: shown[name] for name, comp in tab.widgets.items()}


def test_preset_save_load_rename_delete(app, tmp_path):
    tab, _ctx = app
    applied = tab.apply_preset({**form_data(tab), tab.preset: "quick-cpu-test"})
    loaded = by_name(tab, applied)
    assert applied[tab.preset_msg].startswith("applied: **quick-cpu-test** (")
    assert loaded["pretrained_model_name_or_path"] == "tiny" and loaded["optimizer_type"] == "DAdaptAdam"
    assert loaded["optimizer_args"] == "decouple=True weight_decay=0.01 use_bias_correction=True"
    data = form_data(tab, network_dim=32, output_name="mine")
    data.update({tab.preset_name: "my preset", tab.overwrite: False})
    assert "Saved user preset" in tab.save_preset(data)[tab.save_msg]
    assert "already exists" in tab.save_preset(data)[tab.save_msg]
    assert by_name(tab, tab.apply_preset({**form_data(tab), tab.preset: "my preset"}))["network_dim"] == 32
    assert "Renamed" in tab.rename_preset("my preset", "renamed")[tab.save_msg]
    assert "read-only" in tab.save_preset({**data, tab.preset_name: "quick-cpu-test"})[tab.save_msg]
    assert "Deleted" in tab.delete_preset("renamed")[tab.save_msg]
    assert not (tmp_path / "home" / "presets" / "renamed.json").exists()


def test_import_kohya_json_and_export_toml(app, seed_guide_dir, tmp_path):
    tab, _ctx = app
    out = tab.import_kohya(str(seed_guide_dir / "kohya_ss_final_28DSTABLEBESTVERSION.json"))
    values = by_name(tab, out)
    assert values["optimizer_type"] == "DAdaptAdam" and values["network_dim"] == 192
    assert "decouple=True" in values["optimizer_args"]
    prompts = Path(values["sample_prompts"])  # kohya_ss keeps prompts inline: written into an allowed folder
    assert prompts.is_relative_to(tmp_path) and "--w 768" in prompts.read_text()
    assert "Paths still to fill in" in out[tab.import_report] and "import report" in out[tab.import_msg]
    exported = tab.export_toml(form_data(tab, network_dim=16, output_name="exp"))[tab.export_file]
    text = Path(exported).read_text()
    assert Path(exported).name == "exp.toml" and "network_dim = 16" in text


def test_start_refuses_problems_and_paths_outside(app, tmp_path):
    tab, ctx = app
    out = tab.start(form_data(tab, pretrained_model_name_or_path="tiny", train_data_dir="/etc", output_dir=str(tmp_path)))
    assert out[tab.run_msg].startswith("Not started") and "train_data_dir" in out[tab.issues]
    assert ctx.jobs.jobs == []


def test_print_command_and_field_messages(app, tmp_path):
    tab, _ctx = app
    out = tab.print_command(form_data(tab, network_dim=8, output_dir=str(tmp_path)))
    assert "--network_dim 8" in out[tab.command] and "network_dim = 8" in out[tab.toml]
    data = form_data(tab, color_aug=True, cache_latents=True)
    data.update({tab.applied: None, tab.plan_key: ""})
    checked = tab.check_form(data)
    assert 'data-field="color_aug"' in checked[tab.issues] and "color_aug: cannot be used with cache_latents" in checked[tab.issues]
    assert checked[tab.start_btn]["interactive"] is False
    assert tab.widgets["color_aug"] not in checked  # the widget itself is never re-sent (no reset while typing)


def test_grid_command_checks_paths_and_expands_globs(tmp_path):
    guard = PathGuard.from_dirs([tmp_path])
    for name in ("run-000002.safetensors", "run-000001.safetensors", "run.safetensors"):
        (tmp_path / name).write_bytes(b"")
    form = {"model": "tiny", "prompt": "p", "negative": "", "steps": 4, "cfg": 7.0, "seed": 1, "width": 64,
            "height": 64, "sampler": "Euler a", "output_dir": "grids", "lora": "",
            "x_type": "LoRA", "x_values": str(tmp_path / "run*.safetensors"), "y_type": "Seed", "y_values": "1,2",
            "z_type": "(none)", "z_values": ""}
    args = grid_command(form, guard)
    assert args[:3] == ["grid", "--pretrained_model_name_or_path", "tiny"]
    assert args[args.index("--output_dir") + 1] == str(tmp_path / "grids")
    files = args[args.index("--x_values") + 1].split(",")
    assert [Path(f).name for f in files] == ["run-000001.safetensors", "run-000002.safetensors", "run.safetensors"]
    assert "--z_type" not in args
    with pytest.raises(ConfigError, match="outside"):
        grid_command({**form, "x_values": "/etc/*.conf"}, guard)
    with pytest.raises(ConfigError, match="outside"):
        grid_command({**form, "model": "/etc/model.safetensors"}, guard)


def test_reg_arguments_come_from_the_training_form(tmp_path):
    guard = PathGuard.from_dirs([tmp_path])
    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(tmp_path / "img"), resolution="64", seed=3)
    form = {"class_prompt": "shape", "dest": "reg", "count": None, "repeats": 1, "src": "photos", "face": False,
            "prompt": "", "steps": 4, "cfg": 7.0, "seed": 0}
    args = photos_args(form, cfg, guard)
    assert args[:4] == ["reg", "photos", str(tmp_path / "photos"), str(tmp_path / "reg")]
    assert args[args.index("--train_data_dir") + 1] == str(tmp_path / "img") and "--count" not in args
    with pytest.raises(ConfigError, match="Count is required"):
        generate_args(form, cfg, guard)
    gen = generate_args({**form, "count": 10}, cfg, guard)
    assert gen[gen.index("--pretrained_model_name_or_path") + 1] == "tiny" and gen[gen.index("--resolution") + 1] == "64"
    with pytest.raises(ConfigError, match="outside"):
        photos_args({**form, "src": "/etc"}, cfg, guard)


def test_png_parameters(tmp_path):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a prompt\nSteps: 4, Seed: 1")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png", pnginfo=info)
    assert png_parameters(tmp_path / "x.png").endswith("Seed: 1")


def test_tensorboard_starts_on_a_free_port_and_stops():
    tb = TensorBoard()
    with tempfile.TemporaryDirectory() as logdir:
        url = tb.start(logdir)
        assert url.startswith("http://127.0.0.1:")
        assert tb.start(logdir) == url  # same folder: same server
        assert tb.wait_ready(timeout=120), "TensorBoard did not answer"
        process = tb.process
        tb.stop()
        assert process.poll() is not None and tb.url is None


def test_cancel_handler_messages(app):
    tab, _ctx = app
    assert tab.cancel(None).startswith("Enter")
    assert "not waiting in the queue" in tab.cancel(7)


def test_cli_output_collapses_progress_redraws():
    from gui.cli_runner import clean_output

    assert clean_output("start\ngrid:  50%\rgrid: 100%\r   \nsaved x\n") == ["start", "grid: 100%", "saved x"]


def test_dataset_tab_check_shows_findings(tmp_path, monkeypatch):
    import gradio as gr
    from PIL import Image, ImageFilter

    from gui.dataset_tab import DatasetTab
    from gui.training_tab import TrainingTab

    monkeypatch.setenv("LORASMITH_HOME", str(tmp_path / "home"))
    ctx = GuiContext.create([str(tmp_path)], tmp_path / "jobs")
    with gr.Blocks():
        training = TrainingTab(ctx)
        tab = DatasetTab(ctx, training)
    sub = tmp_path / "img" / "5_john man"
    sub.mkdir(parents=True)
    Image.effect_noise((128, 128), 60).convert("RGB").save(sub / "sharp.png")
    Image.effect_noise((128, 128), 60).convert("RGB").filter(ImageFilter.GaussianBlur(4)).save(sub / "soft.png")
    out = tab.check_images(form_data(training, train_data_dir=str(tmp_path / "img"), resolution="128"))
    message = out[tab.message]
    assert "finding(s)" in message and "5_john man/soft.png: looks blurry" in message
    assert "instance token 'john' is a common word" in message
    assert [Path(p).name for p, _ in out[tab.gallery]] == ["soft.png", "sharp.png"]  # flagged files, in finding order
    assert "Image checks" in out[tab.report]
    ctx.close()
def test_network_args_help_follows_network_module(app):
    tab, _ctx = app
    out = tab.module_changed("lycoris.kohya", "algo=loha")
    assert out[tab.lora_type] == "LoHa" and "block_dims" not in out[tab.lora_hint] and "use_tucker" in out[tab.lora_hint]
    assert "block_dims" in tab.module_changed("networks.lora", "")[tab.lora_hint]


def test_run_panel_shows_caching_counts_then_scores_and_recommendation(app, tmp_path):
    """A job whose events carry caching counts, then epoch scores: the panel shows both (issues 22 and 18)."""
    from PIL import Image as PILImage

    from gui.jobs import RUNNING, Job

    tab, ctx = app
    job = Job(99, "scored", TrainConfig(output_dir=str(tmp_path / "out"), output_name="scored"), tmp_path / "jobs" / "j",
              state=RUNNING)
    ctx.jobs.jobs.append(job)
    job.progress.apply({"event": "progress", "what": "caching latents", "done": 2, "total": 8}, now=10.0)
    out = tab.refresh({})
    assert 'id="ls-task" data-what="caching latents" data-done="2" data-total="8"' in out[tab.progress]
    assert "caching latents 2/8" in out[tab.progress]
    assert out[tab.scores_box]["visible"] is False  # no scores yet: the box stays hidden
    row = {"file": "o/scored-000001.safetensors", "epoch": 1, "weight": 1.0, "fidelity": 0.8, "drift": 0.01,
           "loss": 0.4, "base_loss": 0.5}
    job.progress.apply({"event": "step", "step": 1, "total_steps": 8, "loss": 0.4}, now=11.0)
    job.progress.apply({"event": "log", "message": "epoch 1 score", "scores": [row],
                        "recommendation": {"file": row["file"], "epoch": 1, "weight": 1.0, "why": "epoch 1 at weight 1"}})
    job.state = "finished"
    out = tab.refresh(out[tab.seen])
    assert 'id="ls-task"' not in out[tab.progress]  # the steps replaced the caching count
    assert out[tab.scores].startswith("**Epoch scores**") and "**Recommended:** epoch 1 at weight 1" in out[tab.scores]
    assert isinstance(out[tab.score_chart], PILImage.Image) and out[tab.scores_box]["visible"] is True
    again = tab.refresh(out[tab.seen])
    import gradio as gr

    assert again[tab.scores] == gr.skip() and again[tab.score_chart] == gr.skip()  # unchanged: not re-sent
