"""Multi-process data parallel training under `accelerate launch` (gloo on CPU, NCCL on GPUs).

sd-scripts' layout: every process holds the whole network; in each optimizer
round process r trains batch `round * world + r` of the epoch's order (wrapping
to the start when the last round is short, as accelerate's even batches do),
gradients are averaged across processes before the step, so one epoch takes
ceil(batches / world) steps; only the main process writes files and logs.
"""
from __future__ import annotations

import math
from typing import Any

import torch


def process_info() -> tuple[int, int]:
    """(number of processes, this process's rank); (1, 0) outside `accelerate launch`."""
    from accelerate import PartialState

    # Without CUDA, accelerate only forms a gloo group when told cpu=True (else WORLD_SIZE is ignored).
    state = PartialState(cpu=not torch.cuda.is_available())
    return state.num_processes, state.process_index


def rounds_per_epoch(n_batches: int, world: int) -> int:
    return math.ceil(n_batches / world)


def shard_index(round_: int, rank: int, world: int, n_batches: int) -> int:
    """The batch process `rank` trains in `round_`; short last rounds wrap to the epoch's first batches."""
    return (round_ * world + rank) % n_batches


def average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    """All-reduce (sum, then divide) the gradients of `params`; a missing gradient counts as zero."""
    if world <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
        p.grad.div_(world)


def any_process(flag: bool, world: int, device: torch.device | str = "cpu") -> bool:
    """True on every process when any has `flag` (a stop signal may reach only some; all must stop together)."""
    if world <= 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=device)  # NCCL needs it on the GPU
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sharded_batches(dataset: Any, epoch: int, start_round: int, rank: int, world: int):
    """Yield (round, batch) for this process from `start_round` to the end of the epoch."""
    n = len(dataset)
    for round_ in range(start_round, rounds_per_epoch(n, world)):
        yield round_, dataset[(epoch, shard_index(round_, rank, world, n))]


def finish(world: int) -> None:
    """Wait for every process, then close the group, so no process exits while another still talks to it.

    Without this the first process to exit tears down its gloo sockets while the main
    process is still saving; under load the other side's pending operation then aborts
    that process (SIGABRT) and `accelerate launch` reports a failed run after a good one.
    """
    if world <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
