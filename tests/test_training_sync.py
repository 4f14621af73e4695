"""The training step never reads a value back to the host; the log still gets every exact loss.

On a GPU a read-back (`.item()`, `.cpu()`, `float(t)`, `if t:`) makes the host wait for
the device. On the CPU the same calls are free, so these tests make them fail: while the
trainer is inside a micro-step or an optimizer step, any such call made from lorasmith's
code or accelerate raises. (torch's own optimizers read their CPU step counters with
`.item()`; on a GPU those counters live on the host too, so calls from torch are allowed.)
tests/test_training_gpu.py checks the real thing with torch.cuda.set_sync_debug_mode.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

from library.config import TrainConfig
from library.training import noise
from library.training.step import StepMath
from library.training.trainer import Trainer, train

REPO = Path(__file__).resolve().parents[1]
WATCHED = (str(REPO / "library"), "/accelerate/")
READ_BACKS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "to")


def _to_host(args: tuple, kwargs: dict) -> bool:
    """A `.to("cpu")` call: a device-to-host copy on a GPU. (Here the training device is the CPU
    too, passed as a torch.device; only the literal name marks a move to the host.)"""
    targets = list(args[:1]) + [kwargs.get("device")]
    return any(isinstance(t, str) and t.startswith("cpu") for t in targets)


class SyncGuard:
    """Makes Tensor read-backs called from watched code raise while `active`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.active = False
        self.calls: list[str] = []
        for name in READ_BACKS:
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))

    def _wrap(self, name: str, original):  # noqa: ANN001, ANN202 - any Tensor method
        guard = self

        def checked(tensor, *args, **kwargs):  # noqa: ANN001, ANN202
            caller = sys._getframe(1).f_code.co_filename
            if name == "to" and not _to_host(args, kwargs):
                return original(tensor, *args, **kwargs)
            if guard.active and any(w in caller for w in WATCHED):
                guard.calls.append(f"{name} from {caller}:{sys._getframe(1).f_lineno}")
                raise RuntimeError(f"host read-back Tensor.{name} inside the training step ({caller})")
            return original(tensor, *args, **kwargs)

        return checked

    @contextlib.contextmanager
    def inside(self):  # noqa: ANN201
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def around(self, monkeypatch: pytest.MonkeyPatch, cls: type, method: str) -> None:
        original = getattr(cls, method)

        def guarded(obj, *args, **kwargs):  # noqa: ANN001, ANN202
            with self.inside():
                return original(obj, *args, **kwargs)

        monkeypatch.setattr(cls, method, guarded)


def scalars(log_root: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(sorted(log_root.rglob("events.out.tfevents.*"))[0]))
    ea.Reload()
    return {t: [(e.step, e.value) for e in ea.Scalars(t)] for t in ea.Tags()["scalars"]}


def test_the_guard_catches_a_read_back_from_library_code(monkeypatch) -> None:
    guard = SyncGuard(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    with guard.inside(), pytest.raises(RuntimeError, match="Tensor.item"):
        noise.rand_scalar(gen)  # pyramid noise's host-side draw: exactly what the guard is for
    with guard.inside(), pytest.raises(RuntimeError, match="Tensor.to"):
        noise.sample_timesteps(2, 0, 10, gen, "cpu")  # .to(device="cpu"): a copy to the host on a GPU
    assert isinstance(noise.rand_scalar(gen), float)  # outside the step it is allowed


def test_steps_run_without_read_backs_and_tensorboard_gets_exact_losses(shapes_data: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    guard = SyncGuard(monkeypatch)
    guard.around(monkeypatch, Trainer, "_micro_step")
    guard.around(monkeypatch, Trainer, "_optimizer_step")
    losses: list[torch.Tensor] = []
    original = StepMath.loss
    monkeypatch.setattr(StepMath, "loss", lambda self, batch: (lambda l: (losses.append(l.detach().clone()), l)[1])(
        original(self, batch)))
    # options whose step code once read values back: Huber δ, random noise strengths, max-norm, NaN skipping
    cfg = TrainConfig(pretrained_model_name_or_path="tiny", train_data_dir=str(shapes_data), output_dir=str(tmp_path / "out"),
                      output_name="t", caption_extension=".txt", resolution="64", enable_bucket=True, min_bucket_reso=64,
                      max_bucket_reso=128, train_batch_size=2, max_train_epochs=3, gradient_accumulation_steps=2,
                      cache_latents=True, seed=5, learning_rate=1e-3, logging_dir=str(tmp_path / "logs"),
                      loss_type="huber", huber_schedule="snr", noise_offset=0.05, noise_offset_random_strength=True,
                      ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True, scale_weight_norms=1.0,
                      min_snr_gamma=5.0, skip_nan_steps=1, max_grad_norm=1.0)
    result = train(cfg)
    assert guard.calls == []
    assert result.global_step == 3 and len(losses) == 6  # 2 micro-batches per step
    tags = scalars(tmp_path / "logs")
    current = tags["loss/current"]
    assert [s for s, _ in current] == [1, 2, 3]
    # each step logs its last micro-batch's loss, bit for bit (TensorBoard stores float32)
    assert [v for _, v in current] == [losses[1].item(), losses[3].item(), losses[5].item()]
    # the moving average covers one epoch's batches (sd-scripts' recorder): steps 2 and 3 see batches of their epoch
    average = [v for _, v in tags["loss/average"]]
    assert average[0] == pytest.approx((losses[0].item() + losses[1].item()) / 2, rel=1e-6)
    assert average[2] == pytest.approx((losses[4].item() + losses[5].item()) / 2, rel=1e-6)
