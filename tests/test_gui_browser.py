"""The GUI in a real browser: headless Debian chromium driven by playwright.

One GUI server (a subprocess on a free port) and one browser serve the whole
module; each test leaves screenshots in test-artifacts/gui/.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (run .ci/install_browser.sh)"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (run .ci/install_browser.sh)"),
    pytest.mark.skipif(importlib.util.find_spec("gradio") is None, reason="gradio is not installed (pip install -e .[gui])"),
]
REPO = Path(__file__).resolve().parents[1]
# Screenshots go where LORASMITH_GUI_ARTIFACTS says, else under pytest's temporary folder (see `artifacts`).
ARTIFACTS = Path(os.environ.get("LORASMITH_GUI_ARTIFACTS") or tempfile.gettempdir()) / "lorasmith-gui-artifacts"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--no-first-run", "--disable-sync"]
START_TIMEOUT = 240  # seconds: importing gradio and torch on 2 busy cores is slow
TRAIN_TIMEOUT = 480


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_dataset(root: Path) -> None:
    """8 small images in '5_ohwx shape' with .txt captions, plus a sample prompt file."""
    from PIL import Image, ImageDraw

    folder = root / "img" / "1_ohwx shape"  # 8 images, batch 2: 4 steps per epoch
    folder.mkdir(parents=True)
    for i in range(8):
        img = Image.new("RGB", (64, 64), (30 * i % 255, 90, 160))
        ImageDraw.Draw(img).ellipse((8 + i, 8, 48, 40 + i), fill=(240, 200 - 10 * i, 40))
        img.save(folder / f"shape{i}.png")
        (folder / f"shape{i}.txt").write_text(f"ohwx shape, color {i}")
    (root / "prompts.txt").write_text("ohwx shape --w 64 --h 64 --s 4 --d 7\n")
    (root / "out").mkdir()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gui-browser")
    _make_dataset(root)
    return root


@pytest.fixture(scope="module")
def server(workspace: Path):
    port = _free_port()
    env = {**os.environ, "LORASMITH_HOME": str(workspace / "home"), "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(workspace / "gui.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "library.cli", "gui", "--port", str(port), "--allow", str(workspace),
         "--jobs_dir", str(workspace / "jobs")],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail("the GUI exited: " + (workspace / "gui.log").read_text()[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        proc.kill()
        pytest.fail("the GUI did not answer within %ss" % START_TIMEOUT)
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=BROWSER_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg = browser.new_page(viewport={"width": 1440, "height": 900})
    pg.set_default_timeout(60_000)
    _open(pg, server)
    yield pg
    pg.close()


def _open(pg, url: str) -> None:
    pg.goto(url)
    pg.wait_for_selector("#field-output_dir", state="attached")
    pg.wait_for_timeout(1000)


def _shot(pg, name: str) -> None:
    """A 1440x900 screenshot of what the user sees (the viewport, not the whole page)."""
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _field(pg, name: str):
    return pg.locator(f"#field-{name} textarea, #field-{name} input").first


def _open_group(pg, group: str) -> None:
    slug = "".join(c if c.isalnum() else "-" for c in group.lower())
    acc = pg.locator(f"#group-{slug}")
    if not acc.locator("textarea, input").first.is_visible():
        acc.locator("button").first.click()
        pg.wait_for_timeout(300)


def _fill(pg, name: str, value: str) -> None:
    box = _field(pg, name)
    box.fill(value)
    box.press("Tab")


def _choose(pg, elem_id: str, label: str) -> None:
    pg.locator(f"#{elem_id} input").first.click()
    pg.get_by_role("option", name=label, exact=True).click()
    pg.wait_for_timeout(300)


def _fill_tiny_form(pg, ws: Path) -> None:
    _choose(pg, "preset-select", "quick-cpu-test (builtin)")
    pg.wait_for_function("document.querySelector('#preset-message').innerText.includes('applied: quick-cpu-test')")
    _fill(pg, "train_data_dir", str(ws / "img"))
    _fill(pg, "output_dir", str(ws / "out"))
    _fill(pg, "output_name", "browserlora")
    _open_group(pg, "Samples")
    _fill(pg, "sample_prompts", str(ws / "prompts.txt"))
    _fill(pg, "sample_every_n_epochs", "1")
    pg.wait_for_timeout(1500)


FORM_FIELDS = ("pretrained_model_name_or_path", "train_data_dir", "output_dir", "output_name", "optimizer_args",
               "learning_rate", "network_dim", "resolution", "sample_prompts", "sample_every_n_epochs")


def _values(pg) -> dict[str, str]:
    for group in ("Samples", "Network", "Optimizer and LR", "Resolution and buckets"):
        _open_group(pg, group)
    return {name: _field(pg, name).input_value() for name in FORM_FIELDS}


def test_form_preset_save_reload_load(page, server, workspace):
    _fill_tiny_form(page, workspace)
    before = _values(page)
    assert before["pretrained_model_name_or_path"] == "tiny" and before["output_name"] == "browserlora"
    assert float(before["learning_rate"]) == 1.0 and before["network_dim"] == "4"
    _shot(page, "01-form-filled")
    page.locator("#preset-tools button").first.click()
    page.locator("#preset-name textarea").fill("browser test")
    page.locator("#preset-save").click()
    page.wait_for_function("document.querySelector('#preset-save-message').innerText.includes('Saved user preset')")
    assert (workspace / "home" / "presets" / "browser test.json").is_file()
    _shot(page, "02-preset-saved")

    _open(page, server)  # reload: the form is back to the defaults
    assert _field(page, "output_name").input_value() == "last"
    _choose(page, "preset-select", "browser test (user)")
    page.wait_for_function("document.querySelector('#preset-message').innerText.includes('applied: browser test')")
    page.wait_for_timeout(500)
    assert _values(page) == before
    _shot(page, "03-preset-loaded")


def test_checks_refuse_paths_outside_allowed_folders(page, workspace):
    _fill_tiny_form(page, workspace)
    _fill(page, "train_data_dir", "/etc")
    page.wait_for_function("document.querySelector('#issues').innerText.includes('outside the allowed folders')")
    assert "outside the allowed folders" in _wait_msg(page, "train_data_dir", "train_data_dir")  # under the field
    assert not _start_enabled(page)  # Start is disabled while there are errors
    _shot(page, "04-path-refused")


def test_print_command_shows_cli_and_toml(page, workspace):
    _fill_tiny_form(page, workspace)
    page.locator("#print-command").click()
    page.wait_for_function("(document.querySelector('#command textarea')?.value || '').includes('--output_name')")
    command = page.locator("#command textarea").input_value()
    assert "python train_network.py" in command and "--pretrained_model_name_or_path tiny" in command
    assert page.locator("#command button").count() >= 1  # the copy button
    wraps = page.evaluate("getComputedStyle(document.querySelector('#command textarea')).whiteSpace")
    assert wraps != "nowrap" and page.locator("#command textarea").evaluate("e => e.scrollWidth <= e.clientWidth + 1")
    page.locator("#toml-box button").first.click()
    page.wait_for_function("(document.querySelector('#toml')?.innerText || '').includes('output_name')")
    assert "output_name = \"browserlora\"" in page.locator("#toml").inner_text()
    _shot(page, "05-command")


def _progress_state(pg) -> tuple[str, float]:
    bar = pg.locator("#ls-progress")
    return bar.get_attribute("data-state") or "", float(bar.get_attribute("data-fraction") or 0)


def _wait_state(pg, states: tuple[str, ...], timeout_s: float) -> None:
    js_states = "[" + ",".join(f"'{s}'" for s in states) + "]"
    pg.wait_for_function(
        f"{js_states}.includes(document.querySelector('#ls-progress')?.dataset.state)", timeout=timeout_s * 1000)


def _click_start(pg) -> None:
    """Start is enabled once the form's check has come back; on a busy machine that can take a while."""
    pg.wait_for_function("!document.querySelector('#start').disabled", timeout=TRAIN_TIMEOUT * 1000)
    pg.locator("#start").click()


def test_training_runs_to_the_end_with_samples(page, workspace):
    _fill_tiny_form(page, workspace)
    _open_group(page, "Training")
    page.locator("#group-training .ls-all-options button").first.click()  # score every epoch (issue 18)
    page.wait_for_timeout(300)
    _fill(page, "evaluate_every_n_epochs", "1")
    _click_start(page)
    page.wait_for_function("document.querySelector('#run-message').innerText.includes('Job #')")
    page.wait_for_function("Number(document.querySelector('#ls-progress')?.dataset.step) >= 1", timeout=TRAIN_TIMEOUT * 1000)
    _shot(page, "06-training-running")
    _wait_state(page, ("finished", "failed", "stopped"), TRAIN_TIMEOUT)
    state, fraction = _progress_state(page)
    assert state == "finished", page.locator("#log-tail textarea").input_value()
    assert fraction == 1.0 and "100%" in page.locator("#ls-percent").inner_text()
    assert (workspace / "out" / "browserlora.safetensors").is_file()
    assert (workspace / "out" / "browserlora-000001.safetensors").is_file()
    page.wait_for_selector("#samples img")
    assert page.locator("#samples img").count() >= 1
    # the run panel shows the epoch scores, the chart and the recommendation
    page.wait_for_function("(document.querySelector('#run-scores')?.innerText || '').includes('Recommended')")
    scores = page.locator("#run-scores").inner_text()
    assert "browserlora-000001.safetensors" in scores and "browserlora.safetensors" in scores
    page.wait_for_selector("#run-score-chart img")
    _shot(page, "07-training-finished")
    page.evaluate("document.querySelector('#run-scores-box').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)
    assert _in_viewport(page, "#run-scores") and _in_viewport(page, "#ls-run-panel")
    _shot(page, "07b-epoch-scores")


def _start_long_run(page, workspace, name: str) -> None:
    _fill_tiny_form(page, workspace)
    _fill(page, "output_name", name)
    _open_group(page, "Training")
    _fill(page, "max_train_epochs", "50")
    _click_start(page)
    # The bar shows the previous run until this one starts: wait for this run's name, running, past step 1.
    page.wait_for_function(
        "(() => { const el = document.querySelector('#ls-progress');"
        f" return el && el.dataset.state === 'running' && el.innerText.includes('{name}')"
        " && Number(el.dataset.step) >= 1; })()", timeout=TRAIN_TIMEOUT * 1000)


def test_reload_reattaches_and_stop_ends_the_run(page, server, workspace):
    _start_long_run(page, workspace, "reattached")
    _open(page, server)  # a reloaded page shows the running job
    page.wait_for_function("document.querySelector('#ls-progress')?.dataset.state === 'running'")
    assert "reattached" in page.locator("#ls-progress").inner_text()
    _shot(page, "08-reattached")
    page.locator("#stop").click()
    page.wait_for_function("document.querySelector('#run-message').innerText.includes('stopping')")
    _wait_state(page, ("stopped", "failed", "finished"), TRAIN_TIMEOUT)
    assert _progress_state(page)[0] == "stopped"
    assert "stopped" in page.locator("#queue").inner_text()


def _log_at_end(pg) -> bool:
    return pg.evaluate("""(() => { const t = document.querySelector('#log-tail textarea');
        return !!t && t.scrollHeight > t.clientHeight && t.scrollTop + t.clientHeight >= t.scrollHeight - 2; })()""")


def test_stop_summary_resume_and_log_tail_at_the_end(page, workspace):
    _start_long_run(page, workspace, "graceful")
    # the log tail follows the end (it holds more lines than it shows)
    page.wait_for_function("(document.querySelector('#log-tail textarea')?.value || '').split('\\n').length > 8",
                           timeout=TRAIN_TIMEOUT * 1000)
    page.wait_for_timeout(600)
    assert _log_at_end(page)
    page.locator("#stop").click()
    _wait_state(page, ("stopped", "failed", "finished"), TRAIN_TIMEOUT)
    assert _progress_state(page)[0] == "stopped"
    assert (workspace / "out" / "graceful-interrupted.safetensors").is_file()
    # the Stop summary: the exact state, what was saved, and Resume
    page.wait_for_function("document.querySelector('#run-message').innerText.includes('Resume')")
    summary = page.locator("#run-message").inner_text()
    stopped_at = int(page.locator("#ls-progress").get_attribute("data-step"))
    assert f"stopped at step {stopped_at} — files: " in summary and "graceful-interrupted.safetensors" in summary
    assert "graceful-state" in summary and f"continues from step {stopped_at}" in summary
    assert "stopping" not in page.locator("#ls-status").inner_text() and "ETA" not in page.locator("#ls-status").inner_text()
    assert page.locator("#resume").is_visible()
    assert _in_viewport(page, "#ls-run-panel") and _in_viewport(page, "#resume")
    _shot(page, "08b-stop-summary-resume")
    page.locator("#resume").click()
    page.wait_for_function("document.querySelector('#run-message').innerText.includes('resumes from step')")
    page.wait_for_function(
        "(() => { const el = document.querySelector('#ls-progress');"
        f" return el.dataset.state === 'running' && Number(el.dataset.step) > {stopped_at}; }})()",
        timeout=TRAIN_TIMEOUT * 1000)
    assert "graceful" in page.locator("#ls-progress").inner_text()
    assert _in_viewport(page, "#ls-run-panel") and _in_viewport(page, "#ls-progress")
    _shot(page, "08c-resumed")
    page.locator("#stop").click()
    _wait_state(page, ("stopped", "failed", "finished"), TRAIN_TIMEOUT)
    assert int(page.locator("#ls-progress").get_attribute("data-step")) > stopped_at


def test_sweep_box_checks_the_vary_lines_like_the_cli(page, workspace):
    _fill_tiny_form(page, workspace)
    jobs_before = page.locator("#ls-queue li").count()
    page.locator("#sweep-box button").first.click()
    page.locator("#sweep-vary textarea").fill("network_dim=8,x")
    page.locator("#sweep-start").click()
    page.wait_for_function("document.querySelector('#sweep-message').innerText.includes('network_dim')")
    assert "Error" in page.locator("#sweep-message").inner_text()
    assert page.locator("#ls-queue li").count() == jobs_before  # nothing was queued
    _shot(page, "15-sweep-refused")


def test_history_page_lists_runs_and_loads_a_config(page, workspace):
    from gui.history import scan_runs

    if not any(r.state == "finished" for r in scan_runs(workspace / "jobs")):  # run alone: make a run first
        _fill_tiny_form(page, workspace)
        _click_start(page)
        page.wait_for_function("document.querySelector('#run-message').innerText.includes('Job #')")
        _wait_state(page, ("finished", "failed", "stopped"), TRAIN_TIMEOUT)
    _tab(page, "History")
    page.locator("#history-refresh").click()
    page.wait_for_function("document.querySelectorAll(\"#ls-history-table tr[data-state='finished']\").length >= 1")
    row = page.locator("#ls-history-table tr[data-state='finished']").first
    run_id = row.get_attribute("data-run")
    name = row.locator("td").nth(1).inner_text()
    assert "finished" in row.inner_text()
    page.locator("#history-run input").first.click()
    page.get_by_role("option").filter(has_text=f"{name} · finished").first.click()
    page.wait_for_function(f"document.querySelector('#history-details').innerText.includes('{name} — finished')")
    details = page.locator("#history-details").inner_text()
    assert f"{name} — finished" in details and f"{name}.safetensors" in details and "Plan" in details
    assert run_id in details  # the job folder
    page.locator("#history-config-box button").first.click()
    page.wait_for_function(f"(document.querySelector('#history-config')?.innerText || '').includes('{name}')")
    _shot(page, "14-history")
    page.locator("#history-load").click()
    page.wait_for_function("document.querySelector('#history-message').innerText.includes('Loaded the config')")
    _tab(page, "Training")
    assert _field(page, "output_name").input_value() == name
    assert _field(page, "train_data_dir").input_value() == str(workspace / "img")
    page.wait_for_function("!document.querySelector('#start').disabled")  # checked like any edit


def _tab(pg, name: str) -> None:
    pg.get_by_role("tab", name=name).click()
    pg.wait_for_timeout(500)


def test_dataset_report_with_previews(page, workspace):
    _fill_tiny_form(page, workspace)
    _tab(page, "Dataset")
    page.locator("#dataset-report-run").click()
    page.wait_for_function("document.querySelector('#dataset-message').innerText.includes('8 images')")
    report = page.locator("#dataset-report textarea").input_value()
    assert "1_ohwx shape" in report and "total optimizer steps" in report
    page.wait_for_selector("#dataset-previews img")
    assert page.locator("#dataset-previews img").count() == 8
    _shot(page, "09-dataset-report")


def test_crop_shows_its_count(page, workspace):
    _tab(page, "Dataset")
    page.locator("#crop-box button").first.click()  # open the Crop section
    page.locator("#crop-src textarea").fill(str(workspace / "img" / "1_ohwx shape"))
    page.locator("#crop-dst textarea").fill(str(workspace / "cropped"))
    page.locator("#crop-run").click()
    page.wait_for_function("document.querySelector('#dataset-message').innerText.includes('Cropped')",
                           timeout=TRAIN_TIMEOUT * 1000)
    task = page.locator("#ls-crop-task")
    assert (task.get_attribute("data-done"), task.get_attribute("data-total")) == ("8", "8")
    assert "crop 8/8 · ETA" in task.inner_text()
    assert len(list((workspace / "cropped").glob("*.png"))) == 8


def test_evaluate_makes_a_2x2_grid(page, workspace):
    from PIL import Image

    _tab(page, "Evaluate")
    for elem, value in (("grid-model", "tiny"), ("grid-prompt", "ohwx shape"), ("grid-output", str(workspace / "grids"))):
        page.locator(f"#{elem} textarea").fill(value)
    for elem, value in (("grid-steps", "4"), ("grid-width", "64"), ("grid-height", "64"), ("grid-seed", "1")):
        page.locator(f"#{elem} input").fill(value)
    _choose(page, "grid-x-type", "Seed")
    page.locator("#grid-x-values textarea").fill("1, 2")
    _choose(page, "grid-y-type", "CFG Scale")
    page.locator("#grid-y-values textarea").fill("1, 5")
    _shot(page, "10-grid-form")
    # record what the page shows while the grid runs: cells before the grid, and the count
    page.evaluate("""window.__gridSeen = []; window.__gridTimer = setInterval(() => {
        const task = document.querySelector('#ls-grid-task');
        window.__gridSeen.push({imgs: document.querySelectorAll('#grid-gallery img').length,
            done: task ? Number(task.dataset.done) : -1, total: task ? Number(task.dataset.total) : -1,
            text: task ? task.innerText : '', finished: document.querySelector('#grid-message').innerText.includes('Grid written')});
    }, 100);""")
    page.locator("#grid-run").click()
    page.wait_for_function("document.querySelector('#grid-message').innerText.match(/Grid written|Error/)",
                           timeout=TRAIN_TIMEOUT * 1000)
    seen = page.evaluate("clearInterval(window.__gridTimer); window.__gridSeen")
    assert any(s["text"].startswith("loading the model") or s["done"] >= 0 for s in seen if not s["finished"])
    assert any(0 < s["imgs"] and not s["finished"] for s in seen), "no cell was shown before the grid was done"
    final = page.locator("#ls-grid-task")
    assert (final.get_attribute("data-done"), final.get_attribute("data-total")) == ("4", "4")
    assert "grid 4/4 · ETA" in final.inner_text()
    assert "Grid written" in page.locator("#grid-message").inner_text(), page.locator("#grid-message").inner_text()
    grids = sorted((workspace / "grids").glob("xyz_grid-*.png"))
    assert len(grids) == 1 and len(list((workspace / "grids" / "cells").glob("*.png"))) == 4
    with Image.open(grids[0]) as grid:
        assert grid.width > 2 * 64 and grid.height > 2 * 64  # two columns and two rows of 64 px cells plus labels
    page.wait_for_selector("#grid-gallery img")
    assert page.locator("#grid-gallery img").count() == 5  # the grid and its four cells
    page.locator("#grid-gallery img").nth(1).click()
    page.wait_for_function("document.querySelector('#grid-parameters textarea').value.includes('Seed')")
    assert "Steps: 4" in page.locator("#grid-parameters textarea").input_value()
    _shot(page, "11-grid")


def test_utilities_resize_writes_a_lora(page, workspace):
    import safetensors.torch
    import torch

    torch.manual_seed(0)
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    tensors = {f"{name}.lora_down.weight": torch.randn(8, 32), f"{name}.lora_up.weight": torch.randn(32, 8),
               f"{name}.alpha": torch.tensor(4.0)}
    safetensors.torch.save_file(tensors, str(workspace / "r8.safetensors"))
    _tab(page, "Utilities")
    _tab(page, "Resize")
    page.locator("#resize-input textarea").fill(str(workspace / "r8.safetensors"))
    page.locator("#resize-output textarea").fill(str(workspace / "r2.safetensors"))
    page.locator("#resize-rank input").fill("2")
    page.locator("#utilities-resize-run").click()
    page.wait_for_function("document.querySelector('#utilities-resize-message').innerText.match(/Wrote|Error/)",
                           timeout=120_000)
    assert "Wrote" in page.locator("#utilities-resize-message").inner_text()
    resized = safetensors.torch.load_file(str(workspace / "r2.safetensors"))
    assert resized[f"{name}.lora_down.weight"].shape == (2, 32) and float(resized[f"{name}.alpha"]) == 1.0
    _shot(page, "13-utilities-resize")


def test_server_serves_no_file_outside_allowed_folders(server, workspace):
    import urllib.error

    secret = Path(tempfile.mkdtemp()) / "secret.txt"  # outside the allowed workspace
    secret.write_text("not for the browser")
    for target in (secret, Path("/etc/passwd")):
        for route in ("gradio_api/file=", "file="):
            try:
                with urllib.request.urlopen(server + route + str(target), timeout=10) as resp:
                    body = resp.read().decode("utf-8", "replace")
            except urllib.error.HTTPError as exc:
                assert exc.code in (403, 404), (route, exc.code)
                continue
            assert "not for the browser" not in body and "root:" not in body, route


def test_server_listens_on_loopback_only(server):
    port = int(server.rsplit(":", 1)[1].strip("/"))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # UDP connect picks the outward interface; nothing is sent
            outward = probe.getsockname()[0]
    except OSError:
        pytest.skip("this machine has no non-loopback IPv4 address")
    if outward.startswith("127."):
        pytest.skip(f"the only address is loopback ({outward}); nothing to compare with")
    with socket.socket() as s:
        s.settimeout(3)
        assert s.connect_ex((outward, port)) != 0  # refused: bound to 127.0.0.1 only


def test_regularization_from_photos_fills_reg_data_dir(page, workspace):
    _fill_tiny_form(page, workspace)
    _tab(page, "Regularization")
    page.locator("#reg-class textarea").fill("shape")
    page.locator("#reg-dest textarea").fill(str(workspace / "reg"))
    page.locator("#reg-count input").fill("4")
    page.locator("#reg-src textarea").fill(str(workspace / "img" / "1_ohwx shape"))
    page.locator("#reg-photos").click()
    page.wait_for_selector("#reg-previews img", timeout=TRAIN_TIMEOUT * 1000)
    assert page.locator("#reg-previews img").count() == 4
    task = page.locator("#ls-reg-task")
    assert (task.get_attribute("data-done"), task.get_attribute("data-total")) == ("4", "4")  # counted, not "N s"
    assert "reg photos 4/4" in task.inner_text()
    assert len(list((workspace / "reg" / "1_shape").glob("*.png"))) == 4
    _tab(page, "Training")
    assert _field(page, "reg_data_dir").input_value() == str(workspace / "reg")
    _shot(page, "12-regularization")


# --- issue 22: validation where the user looks, presets, layout, run states ----------------------------------
def _start_enabled(pg) -> bool:
    return pg.locator("#start").is_enabled()


def _wait_msg(pg, name: str, text: str) -> str:
    pg.wait_for_function(f"(document.querySelector('#msg-{name}')?.innerText || '').includes({text!r})")
    return pg.locator(f"#msg-{name}").inner_text()


def _cli_message(**values) -> dict[str, str]:
    """What `lorasmith train` says about these values (config_validate, the one source of the words)."""
    import dataclasses

    from library.config_validate import check_config
    from library.presets import load_preset

    cfg = dataclasses.replace(load_preset("quick-cpu-test"), **values)
    return {i.field: i.message for i in check_config(cfg, for_training=True).errors}


def test_errors_show_under_the_field_block_start_and_keep_typed_numbers(page, workspace):
    _fill_tiny_form(page, workspace)
    page.wait_for_function("!document.querySelector('#start').disabled")
    missing = str(workspace / "no-such-folder")
    _fill(page, "train_data_dir", missing)
    shown = _wait_msg(page, "train_data_dir", "is not a folder")
    expected = _cli_message(train_data_dir=missing, output_dir=str(workspace / "out"), output_name="browserlora",
                            sample_prompts=str(workspace / "prompts.txt"), sample_every_n_epochs=1)
    assert shown == expected["train_data_dir"]  # the same words as the CLI
    assert not _start_enabled(page)
    assert page.locator("#ls-issues li[data-field='train_data_dir']").count() == 1
    assert page.locator("#ls-plan-summary").get_attribute("data-stale") == "1"  # the plan says it is not up to date
    assert "train_data_dir" in page.locator("#plan-summary").inner_text()
    _open_group(page, "Network")
    box = _field(page, "network_dim")
    box.fill("0")  # typed, not yet left: the value stays, the message names the range
    assert _wait_msg(page, "network_dim", "out of range") == "network_dim: 0 is out of range; use a value from 1 to 1024"
    assert box.input_value() == "0"
    box.press("Tab")
    page.wait_for_timeout(500)
    assert box.input_value() == "0"  # no reset to the minimum
    assert page.locator("#ls-issues").get_attribute("data-errors") == "2"
    _shot(page, "20-errors-under-fields")
    _fill(page, "network_dim", "4")
    _fill(page, "train_data_dir", str(workspace / "img"))
    page.wait_for_function("!document.querySelector('#start').disabled")
    # the messages re-render in the same check as Start, but may paint a moment later on a loaded machine
    page.wait_for_function("document.querySelectorAll('.ls-field-msg.ls-field-error').length === 0", timeout=15000)
    page.wait_for_function("document.querySelector('#ls-plan-summary')?.dataset.stale === '0'")
    assert "12 steps = 3 epoch(s)" in page.locator("#ls-plan-summary").inner_text()
    page.locator("#plan-box button").first.click()
    page.wait_for_selector("#ls-plan-folders")
    assert "1_ohwx shape" in page.locator("#ls-plan-folders").inner_text()  # the plan is a table again
    assert page.locator("#ls-plan-totals tr").count() >= 9


def test_error_link_opens_the_section_and_scrolls_to_the_field(page, workspace):
    _fill_tiny_form(page, workspace)
    _open_group(page, "Training")
    _fill(page, "train_batch_size", "0")
    _wait_msg(page, "train_batch_size", "out of range")
    page.locator("#group-training button").first.click()  # close the section again
    page.wait_for_timeout(300)
    assert not _field(page, "train_batch_size").is_visible()
    page.evaluate("window.scrollTo(0, 0)")
    page.locator("#ls-issues a[data-field='train_batch_size']").click()
    page.wait_for_function("""(() => { const r = document.querySelector('#field-train_batch_size').getBoundingClientRect();
        return r.height > 0 && r.top >= 0 && r.bottom <= innerHeight; })()""")
    _fill(page, "train_batch_size", "2")


def test_output_folder_locked_by_another_run_blocks_start(page, workspace):
    import json

    locked = workspace / "locked-out"
    locked.mkdir(exist_ok=True)
    (locked / ".lorasmith-train.lock").write_text(json.dumps(
        {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-12-05T05:00:00"}))
    _fill_tiny_form(page, workspace)
    _fill(page, "output_dir", str(locked))
    text = _wait_msg(page, "output_dir", "in use by another training")
    assert f"process {os.getpid()}" in text and not _start_enabled(page)
    (locked / ".lorasmith-train.lock").unlink()
    _fill(page, "output_dir", str(workspace / "out"))
    page.wait_for_function("!document.querySelector('#start').disabled")


def test_preset_applies_on_selection_keeps_user_folders_and_undo(page, workspace):
    _fill(page, "train_data_dir", str(workspace / "img"))
    _fill(page, "output_dir", str(workspace / "out"))
    _fill(page, "output_name", "mine")
    _choose(page, "preset-select", "quick-cpu-test (builtin)")
    page.wait_for_function("document.querySelector('#preset-message').innerText.includes('applied: quick-cpu-test')")
    note = page.locator("#preset-message").inner_text()
    assert "fields changed" in note and "kept your" in note
    assert _field(page, "train_data_dir").input_value() == str(workspace / "img")
    assert _field(page, "output_dir").input_value() == str(workspace / "out")
    assert _field(page, "output_name").input_value() == "mine"
    assert _field(page, "pretrained_model_name_or_path").input_value() == "tiny"  # it was empty: the preset fills it
    _open_group(page, "Network")
    _fill(page, "network_dim", "16")
    page.wait_for_function("document.querySelector('#preset-diff').innerText.includes('network_dim')")
    page.locator("#preset-undo").click()
    page.wait_for_function("document.querySelector('#preset-message').innerText.includes('Undone')")
    assert _field(page, "pretrained_model_name_or_path").input_value() == ""
    assert _field(page, "output_name").input_value() == "mine"


def test_lora_type_picker_sets_module_and_shows_its_args(page):
    _open_group(page, "Network")
    page.locator("#lora-type").get_by_text("LoKr", exact=True).click()
    page.wait_for_function("document.querySelector('#field-network_args textarea').value.includes('algo=lokr')")
    hint = page.locator("#lora-type-args").inner_text()
    assert "factor" in hint and "block_dims" not in hint
    assert "lycoris.kohya" in page.locator("#field-network_module input").input_value()
    page.locator("#lora-type").get_by_text("Standard", exact=True).click()
    page.wait_for_function("!document.querySelector('#field-network_args textarea').value.includes('algo')")
    assert "networks.lora" in page.locator("#field-network_module input").input_value()
    assert "block_dims" in page.locator("#lora-type-args").inner_text()


def _in_viewport(pg, selector: str) -> bool:
    return pg.evaluate(f"""(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect();
        return r.width > 0 && r.top >= 0 && r.left >= 0 && r.right <= innerWidth && r.top < innerHeight; }})()""")


def test_one_screen_layout_with_the_run_panel_in_view(page):
    assert page.viewport_size == {"width": 1440, "height": 900}
    for sel in ("#preset-select", "#field-pretrained_model_name_or_path", "#field-train_data_dir", "#start",
                "#ls-run-panel"):
        assert _in_viewport(page, sel), sel
    form = page.locator("#ls-form").bounding_box()
    panel = page.locator("#ls-run-panel").bounding_box()
    assert form["x"] + form["width"] <= panel["x"] + 1  # side by side
    assert not _field(page, "sample_prompts").is_visible()  # Samples starts folded
    assert page.locator(".ls-section").count() >= 10 and page.locator(".ls-all-options").count() >= 2  # toggles in open sections
    _shot(page, "21-first-screen")
    page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_timeout(300)
    assert _in_viewport(page, "#start") and _in_viewport(page, "#ls-run-panel")  # the panel stays in view
    _shot(page, "22-scrolled-run-panel-in-view")


def _shown(pg, name: str) -> bool:
    return pg.evaluate(f"(() => {{ const e = document.querySelector('#field-{name}'); "
                       "return !!e && e.offsetParent !== null && e.getClientRects().length > 0; })()")


def test_model_picker_shows_the_family_and_its_options(page):
    _choose(page, "field-pretrained_model_name_or_path", "tiny-sdxl")
    page.wait_for_function("document.querySelector('#model-facts')?.dataset.family === 'sdxl'")
    assert "SDXL" in page.locator("#model-facts").inner_text()
    page.locator("#model-facts").scroll_into_view_if_needed()
    _shot(page, "23-model-picker-sdxl")
    _open_group(page, "Resolution and buckets")
    page.locator("#group-resolution-and-buckets .ls-all-options button").first.click()
    page.wait_for_timeout(300)
    assert _shown(page, "cache_text_encoder_outputs") and _shown(page, "cache_text_encoder_outputs_to_disk")
    _choose(page, "field-pretrained_model_name_or_path", "tiny")
    page.wait_for_function("document.querySelector('#model-facts')?.dataset.family === 'sd1'")
    page.wait_for_timeout(500)
    assert not _shown(page, "cache_text_encoder_outputs") and not _shown(page, "cache_text_encoder_outputs_to_disk")
    assert _shown(page, "cache_latents")  # the section is open: only the SDXL options went
    _fill(page, "pretrained_model_name_or_path", "tiny-sd2")  # typed, not picked
    page.wait_for_function("document.querySelector('#model-facts')?.dataset.family === 'sd2'")
    assert "SD2.x 768-v" in page.locator("#model-facts").inner_text()
