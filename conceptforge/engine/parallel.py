"""Data parallelism across the processes of `accelerate launch` or `torchrun`.

One process (rank 0, "main") owns the project: it takes the lock, creates or
picks the run, writes masks, metrics, checkpoints and exports.  Every process
trains on its own union samples (its own random stream), gradients of the
trainable parameters are averaged before each optimiser step, and E-steps are
split by image and gathered, so all processes hold the same masks.

Outside a launcher (no WORLD_SIZE > 1 in the environment) everything here is
a no-op and learning runs exactly as in one process.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Iterable, TypeVar

import torch

T = TypeVar("T")


def is_main_process() -> bool:
    """Whether this is the launcher's rank 0 (or no launcher), without joining a group."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@dataclass(frozen=True)
class Parallel:
    """This process's place in the group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> "Parallel":
        """The group described by the launcher's environment; joins it on first use."""
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
            atexit.register(_leave_group)
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0") or 0))

    def device(self, device: torch.device) -> torch.device:
        """One GPU per process: cuda:LOCAL_RANK when the chosen device is CUDA."""
        if self.active and device.type == "cuda":
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def seed(self, seed: int) -> int:
        """A per-process seed for sampling; rank 0 keeps the configured one."""
        return seed if self.rank == 0 else seed + 7919 * self.rank

    def mine(self, n: int) -> list[int]:
        """Indices 0..n-1 this process handles when work is split."""
        return list(range(self.rank, n, self.world))

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        if not self.active:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(self.world)

    def broadcast_parameters(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Make every process start from the main process's values."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def broadcast(self, obj: T) -> T:
        """The main process's object, on every process."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every process's object, in rank order, on every process."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out


def _leave_group() -> None:
    """Destroy the process group before the interpreter exits (gloo's threads
    otherwise may abort the process at teardown)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
