"""Step values for the log, read back from the GPU without making the host wait for it.

Reading a loss with `.item()` blocks the host until the GPU has finished the step,
so the next step's kernels are queued only after the GPU has gone idle: on a fast
card that gap is a large share of a small model's step. Here each optimizer step's
micro-batch losses are stacked on the device and copied to pinned host memory with
`non_blocking=True`, followed by a CUDA event. The loop asks `ready()` after every
step: records whose event has completed are handed out in order, the others wait
(the progress bar lags by about a step). `drain()` waits for all of them; the loop
calls it before anything that must see every value (saving, sampling, an epoch's
average, the end). Values are the exact losses, so TensorBoard sees what a
synchronous loop would have logged.

On the CPU there is nothing to wait for: a record is ready as soon as it is pushed.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepRecord:
    """One optimizer step as the log needs it; `losses` holds one value per micro-batch once read back."""

    step: int
    epoch: int
    batches: list[int]  # batch index within the epoch, one per micro-batch
    image_paths: list[list[str]]  # the images of each micro-batch (named when its loss is not finite)
    lrs: list[float]
    dvals: list[float | None]
    losses: list[float] = field(default_factory=list)


class StepReadback:
    """A queue of steps whose losses are on their way from the device to the host."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._pending: deque[tuple[StepRecord, torch.Tensor, Any]] = deque()

    def push(self, record: StepRecord, losses: list[torch.Tensor]) -> None:
        """Start copying this step's micro-batch losses (device scalars) to the host."""
        stacked = torch.stack([x.detach().float().reshape(()) for x in losses])
        event = None
        if self.cuda and stacked.is_cuda:
            host = stacked.to("cpu", non_blocking=True)  # lands in pinned memory; done when `event` is
            event = torch.cuda.Event()
            event.record()
        else:
            host = stacked
        self._pending.append((record, host, event))

    def ready(self) -> list[StepRecord]:
        """The records whose values have arrived, oldest first; never waits."""
        out = []
        while self._pending and (self._pending[0][2] is None or self._pending[0][2].query()):
            out.append(self._finish(*self._pending.popleft()))
        return out

    def drain(self) -> list[StepRecord]:
        """Every pending record, waiting for the device where needed (one wait for all of them)."""
        out = []
        while self._pending:
            record, host, event = self._pending.popleft()
            if event is not None:
                event.synchronize()
            out.append(self._finish(record, host, None))
        return out

    def __len__(self) -> int:
        return len(self._pending)

    @staticmethod
    def _finish(record: StepRecord, host: torch.Tensor, _event: Any) -> StepRecord:
        record.losses = host.tolist()
        return record
