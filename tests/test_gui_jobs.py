"""Job queue, progress events, stop/kill, path guard and the gui command's safety options (no browser)."""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gui.cli import exposure_warnings, parse_auth
from gui.jobs import FAILED, FINISHED, QUEUED, RUNNING, STOPPED, JobManager
from gui.progress import Progress, ProgressFile, format_eta, status_line
from gui.safety import PathGuard
from gui.tensorboard import free_port
from library.config import TrainConfig
from library.errors import ConfigError

# A stand-in trainer: writes progress events like `lorasmith train --progress_file`, and on SIGINT
# writes a final save and exits 0, as the real trainer's graceful stop does.
FAKE_TRAINER = textwrap.dedent("""
    import json, signal, sys, time
    cfg, progress, steps, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    stop = []
    signal.signal(signal.SIGINT, lambda *a: stop.append(1))
    def emit(**ev):
        with open(progress, "a") as fh:
            fh.write(json.dumps(ev) + "\\n")
    print("fake trainer reading", cfg, flush=True)
    emit(event="plan", total_steps=steps, epochs=2)
    for step in range(1, steps + 1):
        if stop:
            emit(event="save", path="stopped.safetensors")
            sys.exit(0)
        time.sleep(delay)
        emit(event="step", step=step, total_steps=steps, epoch=1 + (step > steps // 2), num_epochs=2,
             loss=1.0 / step, avg_loss=None, lr={"unet": 0.5}, dlr={"unet": 2e-5}, s_per_step=None, eta_s=None)
    if "fail" in open(cfg).read():
        print("boom", flush=True)
        sys.exit(3)
    emit(event="finish", final_file="final.safetensors", files=["final.safetensors"], global_step=steps,
         stopped=False, log_dir=None)
""")


def _manager(tmp_path: Path, steps: int = 4, delay: float = 0.05) -> JobManager:
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return JobManager(tmp_path / "jobs", command=lambda c, p: [sys.executable, str(script), str(c), str(p), str(steps), str(delay)],
                      poll_interval=None)


def _wait(manager: JobManager, job, states, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while job.state not in states and time.monotonic() < deadline:
        manager.poll()
        time.sleep(0.05)
    assert job.state in states, (job.state, job.log_tail())


def test_jobs_run_one_after_another_and_report_progress(tmp_path):
    jm = _manager(tmp_path)
    first = jm.submit(TrainConfig(output_name="first"))
    second = jm.submit(TrainConfig(output_name="second"))
    assert (first.state, second.state) == (RUNNING, QUEUED)
    assert "output_name = \"first\"" in first.config_path.read_text()
    _wait(jm, first, (FINISHED,))
    p = first.progress
    assert (p.step, p.total_steps, p.epoch, p.total_epochs) == (4, 4, 2, 2)
    assert p.fraction == 1.0 and p.saved == ["final.safetensors"] and p.d_lr == pytest.approx(2e-5)
    assert [s for s, _ in p.losses] == [1, 2, 3, 4] and p.losses[-1][1] == pytest.approx(0.25)
    assert "fake trainer reading" in first.log_tail()
    jm.poll()
    assert second.state == RUNNING  # the queue moved on
    _wait(jm, second, (FINISHED,))
    assert jm.current() is second


def test_failed_run_is_reported_with_exit_code(tmp_path):
    jm = _manager(tmp_path, steps=2)
    job = jm.submit(TrainConfig(output_name="fail"))
    _wait(jm, job, (FAILED,))
    assert job.returncode == 3 and "code 3" in job.progress.error
    assert "boom" in job.log_tail()


def test_stop_sends_sigint_then_kill(tmp_path):
    jm = _manager(tmp_path, steps=400, delay=0.05)
    job = jm.submit(TrainConfig(output_name="graceful"))
    _wait_step(jm, job)
    assert "stopping" in jm.stop()
    _wait(jm, job, (STOPPED,))
    assert job.returncode == 0 and job.progress.saved == ["stopped.safetensors"]

    stubborn = tmp_path / "stubborn.py"
    stubborn.write_text("import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n")
    jm2 = JobManager(tmp_path / "jobs2", command=lambda c, p: [sys.executable, str(stubborn)], poll_interval=None)
    job2 = jm2.submit(TrainConfig())
    time.sleep(0.5)
    jm2.stop()
    jm2.poll()
    assert job2.state != STOPPED  # SIGINT ignored: still running
    assert jm2.stop() == "killed"
    _wait(jm2, job2, (STOPPED,))
    assert job2.returncode == -9


def _wait_step(jm: JobManager, job, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while job.progress.step < 1 and time.monotonic() < deadline:
        jm.poll()
        time.sleep(0.05)
    assert job.progress.step >= 1


def test_cancel_only_queued_jobs(tmp_path):
    jm = _manager(tmp_path, steps=400)
    running = jm.submit(TrainConfig())
    queued = jm.submit(TrainConfig())
    assert not jm.cancel(running.id) and jm.cancel(queued.id)
    jm.shutdown(timeout=10)
    assert running.state == STOPPED and queued.state == "cancelled"


def test_progress_file_reads_only_complete_lines(tmp_path):
    path = tmp_path / "p.jsonl"
    reader = ProgressFile(path)
    assert reader.read_new() == []
    path.write_text(json.dumps({"event": "step", "step": 1}) + "\n" + '{"event": "st')
    assert reader.read_new() == [{"event": "step", "step": 1}]
    with open(path, "a") as fh:
        fh.write('ep", "step": 2}\nnot json\n')
    assert reader.read_new() == [{"event": "step", "step": 2}]


def test_progress_computes_speed_and_eta():
    p = Progress()
    p.apply({"event": "plan", "plan": {"total_steps": 10, "epochs": 2}}, now=100.0)
    p.apply({"event": "step", "step": 1, "loss": 0.5, "lr": {"unet": 1.0}, "d*lr": {"unet": 3e-5}}, now=101.0)
    p.apply({"event": "step", "step": 3, "loss": 0.4}, now=102.0)
    assert p.s_per_step == pytest.approx(0.5) and p.eta_s == pytest.approx(3.5)
    assert p.fraction == pytest.approx(0.3)
    p.apply({"event": "error", "message": "NaN loss at step 3"}, now=103.0)
    assert p.finished and p.error == "NaN loss at step 3" and p.fraction == pytest.approx(0.3)
    assert status_line(p).startswith("step 3/10 · epoch 0/2 · loss 0.4000")
    assert format_eta(3725) == "1:02:05" and format_eta(None) == "–"


def test_path_guard_refuses_outside_and_symlinks(tmp_path):
    inside = tmp_path / "data"
    inside.mkdir()
    guard = PathGuard.from_dirs([inside])
    assert guard.allows(inside / "img" / "a.png") and guard.allows("img")  # relative = under the first root
    assert not guard.allows("/etc/passwd") and not guard.allows(inside / ".." / "x")
    (inside / "link").symlink_to("/etc")
    assert not guard.allows(inside / "link" / "passwd")
    with pytest.raises(ConfigError, match="train_data_dir: '/etc' is outside"):
        guard.check("/etc", "train_data_dir")
    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir="img", output_dir="/tmp/elsewhere",
                      sample_prompts=str(inside / "p.txt"))
    assert [p.split(":")[0] for p in guard.config_problems(cfg)] == ["output_dir"]
    assert guard.absolutize(cfg).train_data_dir == str(inside / "img")
    assert guard.absolutize(cfg).pretrained_model_name_or_path == "tiny"


def test_gui_command_safety_options():
    assert parse_auth("alice:pw:with:colons") == ("alice", "pw:with:colons")
    assert parse_auth(None) is None
    with pytest.raises(ConfigError, match="USER:PASS"):
        parse_auth("alice")
    local = argparse.Namespace(listen=False, share=False, auth=None)
    assert exposure_warnings(local) == []
    shared = argparse.Namespace(listen=False, share=True, auth=None)
    lines = exposure_warnings(shared)
    assert "public share link" in lines[0] and "no --auth" in lines[1]
    listening = argparse.Namespace(listen=True, share=False, auth="a:b")
    assert len(exposure_warnings(listening)) == 1


def test_free_port_is_bindable():
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_queue_labels_are_exact(tmp_path):
    """'running', 'queued 1st/2nd' while another runs (never 'queued behind 0'), and the ended state with files."""
    from gui.jobs import STOPPED
    from gui.run_view import ordinal, queue_html, state_label

    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 21, 22)] == ["1st", "2nd", "3rd", "4th", "11th", "12th", "21st", "22nd"]
    manager = _manager(tmp_path, steps=200, delay=0.05)
    try:
        first = manager.submit(TrainConfig(output_name="a"))
        second = manager.submit(TrainConfig(output_name="b"))
        third = manager.submit(TrainConfig(output_name="c"))
        assert state_label(first, manager).startswith("running")
        assert state_label(second, manager) == "queued 1st" and state_label(third, manager) == "queued 2nd"
        assert 'data-state="queued"' in queue_html(manager)
        out = tmp_path / "out"
        out.mkdir()
        (out / "a-interrupted.safetensors").write_bytes(b"x")
        first.progress.saved.append(str(out / "a-interrupted.safetensors"))
        first.progress.step = 37
        first.state = STOPPED
        assert state_label(first, manager) == "stopped at step 37 — files: a-interrupted.safetensors"
    finally:
        manager.shutdown(timeout=5)
