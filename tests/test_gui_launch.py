"""`lorasmith gui` starts on a loaded machine (issue 23): Gradio's localhost probe gives up on the first
3-second timeout and then refuses to start ("a shareable link must be created"); ours retries, serves on
127.0.0.1 and never shares."""
from __future__ import annotations

import socket

import gradio as gr
import gradio.networking as networking
import httpx
import pytest

from gui import cli as gui_cli
from library.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def slow_first_probes(monkeypatch):
    """The first HEAD requests time out, as they do when the machine is loaded."""
    real_head = httpx.head
    calls = {"n": 0}

    def head(url, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= 3:
            raise httpx.ReadTimeout("timed out", request=httpx.Request("HEAD", url))
        return real_head(url, *args, **kwargs)

    monkeypatch.setattr(httpx, "head", head)
    return calls


def test_gradios_own_probe_gives_up_on_one_timeout(slow_first_probes) -> None:
    """The behaviour we work around (fails if Gradio makes its probe patient: then this fix can go)."""
    assert networking.url_ok("http://127.0.0.1:9/") is False
    assert slow_first_probes["n"] == 1


def test_launch_survives_slow_probes_and_never_shares(slow_first_probes, monkeypatch) -> None:
    monkeypatch.setenv("GRADIO_SHARE", "True")
    with gr.Blocks() as demo:
        gr.Markdown("hello")
    port = free_port()
    try:
        gui_cli.launch_app(demo, host=gui_cli.LOCAL_HOST, port=port, share=False, auth=None, allowed_paths=[],
                           block=False)
        assert slow_first_probes["n"] >= 4  # timed out three times, then answered
        assert demo.share is False and demo.share_url is None
        assert demo.local_url.startswith(f"http://127.0.0.1:{port}")
        assert httpx.get(demo.local_url, timeout=30).status_code == 200
    finally:
        demo.close()
    assert networking.url_ok is not gui_cli.patient_url_ok  # Gradio's probe is restored after launch


def test_server_that_never_answers_is_a_named_error(monkeypatch) -> None:
    monkeypatch.setattr(gui_cli, "PROBE_SECONDS", 0.0)
    monkeypatch.setattr(gui_cli, "patient_url_ok", lambda url, *a, **k: False)
    with gr.Blocks() as demo:
        gr.Markdown("hello")
    try:
        with pytest.raises(ConfigError, match="did not answer on http://127.0.0.1") as err:
            gui_cli.launch_app(demo, host=gui_cli.LOCAL_HOST, port=free_port(), share=False, auth=None,
                               allowed_paths=[], block=False)
        assert "never falls back to a public share link" in str(err.value)
        assert demo.share_url is None
    finally:
        demo.close()


def test_patient_probe_retries_until_its_deadline(monkeypatch) -> None:
    calls = []

    def head(url, *args, **kwargs):
        calls.append(kwargs.get("timeout"))
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(httpx, "head", head)
    monkeypatch.setattr(gui_cli.time, "sleep", lambda s: None)
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(gui_cli.time, "monotonic", lambda: next(clock))
    assert gui_cli.patient_url_ok("http://127.0.0.1:9/", deadline_s=60) is False
    assert len(calls) == 6 and calls[0] == 5.0  # a try every 10 s until the 60 s deadline: six, not one
