"""The GUI's Generate tab: the command built from its fields, fields filled from a PNG, its queue, and a browser run."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from gui.generate_form import (
    FormError,
    fields_from_parameters,
    grid_values,
    lora_names,
    sample_actions,
    sample_command,
    sample_parser,
    split_lora_tags,
)
from gui.generate_queue import FAILED, FINISHED, QUEUED, GenerationJob, GenerationQueue
from gui.safety import PathGuard
from library.errors import LorasmithError

FORM = {"pretrained_model_name_or_path": "tiny", "prompt": "a red cube", "negative_prompt": "blurry",
        "sampler": "DPM++ 2M Karras", "steps": 2, "cfg_scale": 5.5, "seed": 42, "width": 64, "height": 64,
        "clip_skip": 1, "batch_size": 1, "batch_count": 1, "enable_hr": False, "hr_scale": 2.0}


@pytest.fixture()
def loras(tmp_path, sdscripts_lora_dir) -> Path:
    folder = tmp_path / "out"
    shutil.copytree(sdscripts_lora_dir, folder)
    return folder


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_every_sample_flag_is_a_field_and_nothing_else():
    """One declaration: the tab's fields are `lorasmith sample`'s flags (less those the page sets itself)."""
    flags = {a.dest for a in sample_parser()._actions if a.option_strings} - {"help", "lora_dir", "from_png"}
    assert set(sample_actions()) == flags
    assert {"prompt", "sampler", "cfg_scale", "seed", "vae", "enable_hr", "hr_upscaler", "denoising_strength"} <= flags


def test_command_from_fields_leaves_defaults_out_and_adds_lora_tags(tmp_path, loras):
    guard = PathGuard.from_dirs([tmp_path])
    argv = sample_command({**FORM, "vae": ""}, [("tinylora", 0.5), ("", 1.0)], str(loras), guard)
    assert argv[0] == "sample"
    assert _flag(argv, "--prompt") == "a red cube <lora:tinylora:0.5>"
    assert _flag(argv, "--lora_dir") == str(loras)
    assert _flag(argv, "--sampler") == "DPM++ 2M Karras" and _flag(argv, "--cfg_scale") == "5.5"
    assert _flag(argv, "--seed") == "42" and _flag(argv, "--width") == "64"
    assert _flag(argv, "--output_dir") == str(tmp_path / "outputs" / "txt2img")  # relative to the allowed folder
    for default in ("--clip_skip", "--batch_size", "--hr_scale", "--enable_hr", "--vae"):
        assert default not in argv
    args = sample_parser().parse_args(argv[1:])  # the CLI reads back what the form meant
    assert (args.steps, args.cfg_scale, args.negative_prompt, args.height) == (2, 5.5, "blurry", 64)


def test_text_starting_with_a_dash_stays_a_value(tmp_path):
    argv = sample_command({**FORM, "negative_prompt": "-blurry, lowres"}, [], None, PathGuard.from_dirs([tmp_path]))
    assert "--negative_prompt=-blurry, lowres" in argv
    assert sample_parser().parse_args(argv[1:]).negative_prompt == "-blurry, lowres"


def test_hires_fields_become_flags(tmp_path):
    guard = PathGuard.from_dirs([tmp_path])
    argv = sample_command({**FORM, "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Lanczos",
                           "denoising_strength": 0.4, "hr_second_pass_steps": 3}, [], None, guard)
    assert "--enable_hr" in argv and _flag(argv, "--hr_scale") == "1.5" and _flag(argv, "--hr_upscaler") == "Lanczos"
    assert _flag(argv, "--denoising_strength") == "0.4" and _flag(argv, "--hr_second_pass_steps") == "3"


@pytest.mark.parametrize("change, loras, words", [
    ({"prompt": "  "}, [], "Prompt is empty"),
    ({"width": 63}, [], "multiples of 8"),
    ({"sampler": "Euler z"}, [], "unknown sampler"),
    ({"steps": 2.5}, [], "steps: 2.5 is not a whole number"),
    ({"vae": "/etc/vae.safetensors"}, [], "outside the folders"),
    ({"output_dir": "../elsewhere"}, [], "outside the folders"),
    ({"enable_hr": True, "hr_upscaler": "/etc/x.pth"}, [], "hires upscaler model: '/etc/x.pth' is outside"),
    ({"prompt": "a <lyco:style:1>"}, [], "LoRA folder is empty"),
    ({"denoising_strength": 0.5}, [], "without --init_image"),
    ({}, [("tinylora", 1)], "LoRA folder is empty"),
])
def test_bad_fields_are_refused_before_queueing(tmp_path, change, loras, words):
    with pytest.raises(LorasmithError) as err:
        sample_command({**FORM, **change}, loras, None, PathGuard.from_dirs([tmp_path]))
    assert words in str(err.value)


def test_unknown_field_is_refused(tmp_path):
    with pytest.raises(FormError, match="unknown field 'cfg'"):
        sample_command({**FORM, "cfg": 3}, [], None, PathGuard.from_dirs([tmp_path]))


def test_lora_names_list_safetensors_inside_allowed_folders_only(tmp_path, loras):
    (loras / "sub").mkdir()
    (loras / "sub" / "other.safetensors").write_bytes(b"x")
    guard = PathGuard.from_dirs([tmp_path])
    assert lora_names(str(loras), guard) == ["sub/other", "tinylora", "tinylora-000001", "tinylora-000002"]
    assert lora_names("/etc", guard) == [] and lora_names(None, guard) == []


def test_known_lora_folders_are_the_form_and_past_runs_inside_allowed_folders(tmp_path):
    from types import SimpleNamespace

    from gui.generate_form import known_lora_folders
    from gui.jobs import Job
    from library.config import TrainConfig

    ctx = SimpleNamespace(guard=PathGuard.from_dirs([tmp_path]), jobs=SimpleNamespace(jobs=[
        Job(1, "old", TrainConfig(output_dir=str(tmp_path / "run1")), tmp_path),
        Job(2, "outside", TrainConfig(output_dir="/etc"), tmp_path),
        Job(3, "new", TrainConfig(output_dir="run2"), tmp_path)]))
    assert known_lora_folders(ctx, "run1") == [str(tmp_path / "run1"), str(tmp_path / "run2")]
    assert known_lora_folders(ctx) == [str(tmp_path / "run2"), str(tmp_path / "run1")]


def test_split_lora_tags_fills_slots_and_keeps_the_rest():
    text, picked = split_lora_tags("a cat <lora:a:0.5>, smiling <lora:b> <lora:c:-1>", slots=2)
    assert picked == [("a", 0.5), ("b", 1.0)]
    assert text == "a cat, smiling <lora:c:-1>"


def test_grid_values_put_the_first_lora_on_a_weight_axis(tmp_path):
    out = grid_values({**FORM}, [("tinylora", 0.8), ("style", 0.5)], str(tmp_path))
    assert out["lora"] == str(tmp_path / "tinylora.safetensors")
    assert (out["x_type"], out["x_values"]) == ("LoRA weight", "0-0.8 (+0.2)")
    assert out["prompt"] == "a red cube <lora:style:0.5>" and out["model"] == "tiny" and out["cfg"] == 5.5


def test_a1111_hires_infotext_fills_the_fields():
    pytest.importorskip("library.sampling.infotext", reason="needs the infotext reader")
    from library.sampling.infotext import parse_parameters

    text = ("masterpiece, <lora:style:0.7> girl\nNegative prompt: lowres, bad hands\n"
            "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 123, Size: 512x768, "
            "Model hash: 0123456789, Model: v1-5-pruned, VAE: vae-ft-mse, Denoising strength: 0.4, Clip skip: 2, "
            "Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent, Version: v1.9.4")
    values, notes = fields_from_parameters(parse_parameters(text))
    assert values["prompt"] == "masterpiece, <lora:style:0.7> girl"
    assert values["negative_prompt"] == "lowres, bad hands"
    assert (values["steps"], values["cfg_scale"], values["seed"], values["width"], values["height"]) == (20, 6.5, 123, 512, 768)
    assert values["sampler"] == "DPM++ 2M Karras" and values["clip_skip"] == 2
    assert (values["enable_hr"], values["hr_scale"], values["hr_second_pass_steps"], values["denoising_strength"]) == \
        (True, 1.5, 10, 0.4)
    assert "pretrained_model_name_or_path" not in values  # not a file we know: left to the user, with a note
    assert any("v1-5-pruned" in n for n in notes) and any("vae-ft-mse" in n for n in notes)
    values, _notes = fields_from_parameters(parse_parameters("a cat\nSteps: 4, Seed: 1, Size: 64x64"))
    assert values["enable_hr"] is False  # an image without hires fix switches the form's hires fix off


def test_embeddings_in_an_infotext_are_checked_against_the_folder(tmp_path):
    from library.sampling.infotext import parse_parameters

    guard = PathGuard.from_dirs([tmp_path])
    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "EasyNegative.safetensors").write_bytes(b"not the file the image used")
    params = parse_parameters('a cat\nNegative prompt: EasyNegative\nSteps: 4, Seed: 1, Size: 64x64, '
                              'TI hashes: "EasyNegative: 0123456789ab, badhand: 1111aaaa2222"')
    _v, notes = fields_from_parameters(params, guard=guard)
    assert notes == ["made with the embeddings EasyNegative, badhand: set embeddings_dir to their folder"]
    _v, notes = fields_from_parameters(params, guard=guard, embeddings_dir="emb")
    assert len(notes) == 2 and notes[0].startswith("EasyNegative: ") and "the image was made with 0123456789ab" in notes[0]
    assert notes[1].startswith("badhand: no such embedding in")


def test_embeddings_text_lists_names_inside_allowed_folders(tmp_path):
    from gui.generate_form import embeddings_text

    guard = PathGuard.from_dirs([tmp_path])
    (tmp_path / "emb").mkdir()
    for name in ("EasyNegative.safetensors", "badhand.pt", "notes.txt"):
        (tmp_path / "emb" / name).write_bytes(b"x")
    assert embeddings_text("emb", guard).endswith("`badhand`, `EasyNegative`")
    assert "outside the allowed folders" in embeddings_text("/etc", guard) and embeddings_text("", guard) == ""


def test_batch_count_zero_is_generate_until_stopped(tmp_path):
    argv = sample_command({**FORM, "batch_count": 0}, [], None, PathGuard.from_dirs([tmp_path]))
    assert _flag(argv, "--batch_count") == "0"  # the CLI runs batch after batch until Stop (SIGINT)


def test_png_from_our_sampler_fills_the_fields_back(tmp_path, loras):
    """Form → command → `lorasmith sample` on the tiny model → PNG → form: the same command again."""
    pytest.importorskip("library.sampling.infotext", reason="needs the infotext reader")
    import torch

    from gui.generate_form import read_png_fields
    from library.cli import main

    guard = PathGuard.from_dirs([tmp_path])
    form = {**FORM, "output_dir": str(tmp_path / "gen")}
    argv = sample_command(form, [("tinylora", 0.5)], str(loras), guard)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny UNet is much faster on one thread than on two contended ones
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    png = tmp_path / "gen" / "00000-42.png"
    values, picked, notes = read_png_fields(str(png), str(loras), guard)
    assert picked == [("tinylora", 0.5)] and values["prompt"] == "a red cube"
    assert values["sampler"] == "DPM++ 2M Karras" and values["pretrained_model_name_or_path"] == "tiny"
    assert notes == []  # same LoRA file: its hash matches the PNG's Lora hashes
    again = sample_command({**form, **values}, picked, str(loras), guard)
    assert again == argv
    other = tmp_path / "other"  # another epoch under the same name: the hashes differ
    other.mkdir()
    shutil.copy(loras / "tinylora-000001.safetensors", other / "tinylora.safetensors")
    _v, _p, notes = read_png_fields(str(png), str(other), guard)
    assert len(notes) == 1 and "the image was made with" in notes[0] and "tinylora" in notes[0]
    _v, _p, notes = read_png_fields(str(png), str(tmp_path / "gen"), guard)
    assert len(notes) == 1 and notes[0].startswith("<lora:tinylora>: no tinylora.safetensors in")


# --- the queue ---------------------------------------------------------------------------------------
def test_job_reads_saved_images_and_progress_from_its_log(tmp_path):
    job = GenerationJob(1, ["sample"], tmp_path)
    job.log_path.write_text("sampling:  0%| | 0/6 [00:00<?]\rsampling:  50%|#| 3/6 [00:01<00:01]\n"
                            "/x/out/00000-5.png  (seed 5)\nseed: 5\n/x/out/00001-6.png  (seed 6)\n")
    assert job.images() == [Path("/x/out/00000-5.png"), Path("/x/out/00001-6.png")]
    assert job.step_count() == (3, 6)


def _wait(queue: GenerationQueue, job, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while job.state not in (FINISHED, FAILED) and time.monotonic() < end:
        time.sleep(0.2)
        queue.poll()


def test_queue_runs_one_at_a_time_and_waits_for_training(tmp_path):
    training = {"busy": True}
    queue = GenerationQueue(tmp_path, busy=lambda: training["busy"], poll_interval=None)
    first, second = queue.submit(["--help"]), queue.submit(["sample"])  # `sample` without its flags fails
    queue.poll()
    assert first.state == second.state == QUEUED  # a training run holds the GPU
    training["busy"] = False
    queue.poll()
    assert first.state == "running" and second.state == QUEUED
    _wait(queue, first)
    assert first.state == FINISHED and "usage" in "\n".join(first.log_lines())
    queue.poll()
    _wait(queue, second)
    assert second.state == FAILED and second.returncode == 2
    assert any("required" in line for line in second.error_lines())
    assert queue.jobs == [first, second] and first.argv == ["--help"]


@pytest.mark.slow
def test_until_stopped_run_shows_each_image_as_it_is_saved(tmp_path):
    """`--batch_count 0` on the tiny model: images are listed while the run goes on; Stop ends it after the current one."""
    queue = GenerationQueue(tmp_path / "jobs", poll_interval=None)
    job = queue.submit(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a cat", "--steps", "1",
                        "--width", "64", "--height", "64", "--seed", "3", "--batch_count", "0",
                        "--output_dir", str(tmp_path / "out")])
    end = time.monotonic() + 180
    while len(job.images()) < 2 and job.state == "running" and time.monotonic() < end:
        time.sleep(0.3)
        queue.poll()
    assert job.state == "running" and job.images()[:2] == [tmp_path / "out" / "00000-3.png", tmp_path / "out" / "00001-4.png"]
    assert queue.stop() == "stopping"
    job.process.wait(120)
    queue.poll()
    assert job.state == "stopped" and all(p.is_file() for p in job.images()) and len(job.images()) >= 2


def test_stop_interrupts_the_running_generation(tmp_path, monkeypatch):
    import gui.generate_queue as gq

    monkeypatch.setattr(gq, "lorasmith_argv", lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    queue = GenerationQueue(tmp_path, poll_interval=None)
    job, waiting = queue.submit(["sample"]), queue.submit(["sample"])
    assert job.state == "running" and queue.stop() == "stopping" and queue.cancel_queued() == 1
    job.process.wait(20)  # SIGINT ends the child (KeyboardInterrupt), well before its 60 s
    queue.poll()
    assert job.state == "stopped" and waiting.state == "cancelled" and queue.running() is None


def test_tab_fields_are_the_cli_defaults_and_send_to_grid_finds_the_grid_form(tmp_path):
    """Built beside the Evaluate tab as the app does: one widget per sample flag, grid fields found by elem_id."""
    from gui.context import GuiContext
    from gui.evaluate_tab import EvaluateTab
    from gui.generate_tab import GenerateTab

    ctx = GuiContext.create([str(tmp_path)], tmp_path / "jobs")
    try:
        with gr.Blocks(), gr.Tabs():
            with gr.Tab("Evaluate", id="evaluate"):
                EvaluateTab(ctx, None)
            with gr.Tab("Generate", id="generate"):
                tab = GenerateTab(ctx, None)
        assert set(tab.fields) == set(sample_actions())
        for dest, action in sample_actions().items():
            widget = tab.fields[dest]
            if dest != "pretrained_model_name_or_path" and action.default is not None:
                assert widget.value == action.default or str(widget.value) == str(action.default), dest
        assert set(tab.grid_fields) == {"model", "prompt", "negative", "steps", "cfg", "seed", "width", "height",
                                        "sampler", "lora_dir", "lora", "x_type", "x_values"}
        assert tab.queue.jobs_dir == tmp_path / "generate-jobs"
        _handlers_fill_and_queue(tab, tmp_path)
    finally:
        ctx.close()


def _handlers_fill_and_queue(tab, tmp_path: Path) -> None:
    """Load from PNG fills the widgets (LoRA tags into the slots); the until-stopped button queues --batch_count 0."""
    from types import SimpleNamespace

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat <lora:tinylora:0.5>\nNegative prompt: blurry\n"
                  "Steps: 3, Sampler: Euler, Schedule type: Uniform, CFG scale: 4, Seed: 9, Size: 64x72, Model: tiny")
    Image.new("RGB", (8, 8)).save(tmp_path / "in.png", pnginfo=info)
    out = tab.load_png(str(tmp_path / "in.png"), None)
    filled = {dest: out[w] for dest, w in tab.fields.items() if w in out}
    assert filled["prompt"] == "a cat" and filled["negative_prompt"] == "blurry" and filled["sampler"] == "Euler"
    assert (filled["steps"], filled["cfg_scale"], filled["seed"], filled["width"], filled["height"]) == (3, 4.0, 9, 64, 72)
    assert (out[tab.lora_slots[0][0]], out[tab.lora_slots[0][1]]) == ("tinylora", 0.5)
    assert out[tab.lora_slots[1][0]] == "" and "Loaded" in out[tab.message]

    data = {comp: comp.value for comp in tab.form_inputs}
    data.update({tab.fields[d]: v for d, v in filled.items()})
    data[tab.lora_slots[0][0]] = ""
    queued = []
    tab.queue.submit = lambda argv: queued.append(argv) or SimpleNamespace(id=5, state="running")
    out = tab.generate(data, batch_count=0)
    assert out[tab.message] == "Generation #5 started." and out[tab.command].startswith("lorasmith sample ")
    assert _flag(queued[0], "--batch_count") == "0" and _flag(queued[0], "--prompt") == "a cat"
    data[tab.fields["width"]] = 63
    assert tab.generate(data)[tab.message].startswith("**Not queued:**") and len(queued) == 1


# --- the tab in a browser ------------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"]


def _artifacts() -> Path:
    """Screenshots go where test_gui_browser.py puts its own (LORASMITH_GUI_ARTIFACTS, else the temp folder)."""
    import os
    import tempfile

    folder = Path(os.environ.get("LORASMITH_GUI_ARTIFACTS") or tempfile.gettempdir()) / "lorasmith-gui-artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture()
def gui_server(tmp_path):
    """`lorasmith gui` on a free port, allowed only tmp_path."""
    import os
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LORASMITH_HOME": str(tmp_path / "home"), "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(tmp_path / "gui.log", "wb") as log:  # the child writes it; the parent only hands it over
        proc = subprocess.Popen([sys.executable, "-m", "library.cli", "gui", "--port", str(port), "--allow",
                                 str(tmp_path), "--jobs_dir", str(tmp_path / "jobs")],
                                cwd=Path(__file__).resolve().parents[1], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url, end = f"http://127.0.0.1:{port}/", time.monotonic() + 240
    while True:
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            pytest.fail("the GUI did not start: " + (tmp_path / "gui.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            time.sleep(1)
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (run .ci/install_browser.sh)")
def test_generate_in_the_browser_shows_the_image_and_loads_it_back(tmp_path, gui_server):
    """Type a prompt, Generate on the tiny model, see the image; drop it back in and the prompt returns."""
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(60_000)
        page.goto(gui_server)
        page.get_by_role("tab", name="Generate").click()
        page.fill("#gen-prompt textarea", "a blue square")
        for field, value in (("steps", "2"), ("width", "64"), ("height", "64"), ("seed", "7")):
            page.fill(f"#gen-{field} input", value)
        page.click("#gen-run")
        page.wait_for_selector("#gen-gallery img", timeout=240_000)  # the run's PNG, shown when it is written
        png = tmp_path / "outputs" / "txt2img" / "00000-7.png"
        assert png.is_file()
        assert "finished" in page.input_value("#gen-queue textarea") or "running" in page.input_value("#gen-queue textarea")
        assert "--steps 2" in page.input_value("#gen-command textarea")
        page.fill("#gen-prompt textarea", "something else")
        page.set_input_files("#gen-from-png input[type=file]", str(png))
        page.wait_for_function("document.querySelector('#gen-prompt textarea')?.value === 'a blue square'")
        assert page.input_value("#gen-seed input") == "7"
        page.screenshot(path=str(_artifacts() / "generate-tab.png"), full_page=True)
        page.click("#gen-to-grid")  # the grid form gets this prompt, and the Evaluate tab opens
        page.wait_for_function("document.querySelector('#grid-prompt textarea')?.value === 'a blue square'")
        assert page.locator("#grid-prompt textarea").is_visible()
        assert page.input_value("#grid-steps input") == "2" and page.input_value("#grid-width input") == "64"
        browser.close()
