"""Data-parallel training under `torchrun`: the process group, this process's device, and the
few collectives the trainer needs.

`torchrun` (torch.distributed.run) starts one process per device and tells each who it is
through environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT); see
https://pytorch.org/docs/stable/elastic/run.html. Without them the trainer runs as a single
process and none of this code talks to anyone. NCCL joins GPUs, gloo joins CPU processes.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from asr.device import resolve_device

# A collective that waits longer than this fails instead of hanging: generous, because the
# other ranks wait at a barrier while rank 0 decodes the dev set.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=60)


class DistributedError(RuntimeError):
    """A torchrun launch that cannot work (e.g. more GPU processes than GPUs)."""


@dataclass(frozen=True)
class DistContext:
    """Who this process is in the group, and the one device it computes on."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    world_size: int = 1  # processes in the group (all nodes)
    local_rank: int = 0  # rank on this node; picks the GPU
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and progress bars."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device_name: str = "auto") -> DistContext:
    """The one device decision, group-aware. Single process: `resolve_device(device_name)`.
    Under torchrun: join the group (NCCL when the device is CUDA, gloo otherwise) and, on CUDA,
    take GPU number LOCAL_RANK."""
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistContext(device=resolve_device(device_name))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s): "
                "give torchrun --nproc-per-node at most the number of GPUs"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT, **kwargs)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def teardown(context: DistContext) -> None:
    if context.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    if context.is_distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, context: DistContext) -> torch.Tensor:
    """Sum over ranks, in place and returned; a no-op for a single process."""
    if context.is_distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, context: DistContext) -> bool:
    """True on every rank if `flag` is True on any rank: ranks must agree to stop together, or
    the others would wait forever in the next gradient all-reduce."""
    if not context.is_distributed:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_objects(obj, context: DistContext) -> list:
    """Every rank's `obj`, in rank order, on every rank (e.g. RNG states for a checkpoint)."""
    if not context.is_distributed:
        return [obj]
    gathered: list = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
