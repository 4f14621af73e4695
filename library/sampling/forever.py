"""`--batch_count 0`: generate until stopped, A1111's "Generate forever".

Why a module: the CLI stops on Ctrl-C and the GUI on a button, but both want the same loop —
batch after batch on consecutive seeds (image i of the run uses seed + i, as with a finite
--batch_count, so any image can be made again alone from its infotext), each image handed
over as soon as its batch finishes, and a stop request honoured only between batches so the
image being made is finished and saved, never lost half-way.
"""
from __future__ import annotations

import dataclasses
import random
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StopFlag:
    """A stop request; as a context manager the first Ctrl-C sets it and a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def request(self) -> None:
        self.requested = True

    @contextmanager
    def on_ctrl_c(self, message: str = "stopping after the current image (Ctrl-C again to abort)"):
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print(f"\n{message}", flush=True)

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def batches_until_stopped(request, should_stop: Callable[[], bool]) -> Iterator:
    """One-batch requests on consecutive seeds (seed, seed + batch_size, ...) until should_stop() is true.

    A random seed (-1) is drawn once, so the run's images still have consecutive seeds.
    """
    seed = request.seed if request.seed is not None and request.seed >= 0 else random.randrange(2**32)
    k = 0
    while not should_stop():
        yield dataclasses.replace(request, seed=seed + k * request.batch_size, batch_count=1)
        k += 1


def generate_until_stopped(session, request, should_stop: Callable[[], bool], on_step=None) -> Iterator:
    """GeneratedImages from `session` (a SamplingSession), batch by batch, until should_stop() is true.

    For the GUI's Generate forever: iterate, show each image, set the stop when the user asks.
    """
    for batch in batches_until_stopped(request, should_stop):
        yield from session.generate(batch, on_step)
