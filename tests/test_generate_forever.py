"""--batch_count 0 (A1111's Generate forever): consecutive seeds until Ctrl-C, the current batch finished."""
from __future__ import annotations

import os
import signal

from PIL import Image

from library.cli import main
from library.models import build_tiny_bundle
from library.sampling.forever import generate_until_stopped
from library.sampling.pipeline import SampleRequest, SamplingSession


def test_ctrl_c_finishes_the_current_batch_then_stops(tmp_path, monkeypatch, capsys):
    calls = []
    original = SamplingSession.run_jobs

    def run_jobs(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # Ctrl-C while the third batch is being made
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SamplingSession, "run_jobs", run_jobs)
    before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "out"
    rc = main(["sample", "--pretrained_model_name_or_path", "tiny", "--prompt", "a {red|blue} cube", "--steps", "1",
               "--width", "32", "--height", "32", "--seed", "10", "--batch_size", "2", "--batch_count", "0",
               "--output_dir", str(out)])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == [
        "00000-10.png", "00001-11.png", "00002-12.png", "00003-13.png", "00004-14.png", "00005-15.png"]
    with Image.open(out / "00005-15.png") as png:
        assert "Seed: 15" in png.text["parameters"]
    assert "stopped after 6 image(s)" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back


def test_generate_until_stopped_for_the_gui():
    session = SamplingSession(build_tiny_bundle(0))
    seeds = []
    for image in generate_until_stopped(session, SampleRequest("a cube", steps=1, width=32, height=32, seed=5),
                                        should_stop=lambda: len(seeds) >= 3):
        seeds.append(image.seed)
    assert seeds == [5, 6, 7]
