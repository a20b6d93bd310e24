"""Where a training process runs: its device, and its rank in a data-parallel group.

`torchrun --nproc-per-node N -m hsae train ...` starts N processes with WORLD_SIZE, RANK and
LOCAL_RANK set; each joins one process group (nccl on GPUs, gloo on CPU). A plain
`hsae train` is world 1 and never touches torch.distributed.
"""

from __future__ import annotations

import gc
import os
from datetime import timedelta

import torch
import torch.distributed as tdist

from ..config import UserError
from ..device import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(spec: str) -> torch.dtype:
    """Autocast dtype for --dtype float32|bfloat16."""
    if spec not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {spec!r}")
    return DTYPES[spec]


class Dist:
    """This process's rank, the world size and its device; collectives are no-ops in world 1."""

    def __init__(self, device: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        self._own_group = False
        if self.world > 1 and not tdist.is_initialized():
            # torch._dynamo (which Adam and DDP import) keeps a reference to a process group that
            # exists when it is first imported: destroy_process_group then leaves gloo's threads
            # running, and one freeing a tensor during interpreter shutdown aborts the process.
            import torch._dynamo  # noqa: F401
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            # A rank that dies leaves the others blocked in a collective: fail instead of hanging.
            tdist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                     timeout=timedelta(minutes=10))
            self._own_group = True

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum t over ranks, in place."""
        if self.world > 1:
            tdist.all_reduce(t)
        return t

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """t averaged over ranks (a new tensor)."""
        return self.sum_(t.clone()).div_(self.world) if self.world > 1 else t

    def any(self, flag: bool) -> bool:
        """True on every rank if flag is true on any."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            tdist.barrier()

    def close(self) -> None:
        """Leave the process group this object joined."""
        if self._own_group:
            # Objects in reference cycles still hold what they held: numba's compiler leaves
            # frames in cycles, and a frame keeps its callers' frames, the trainer's and DDP's
            # among them; a DDP module alive at destroy_process_group leaves gloo's threads running.
            gc.collect()
            tdist.destroy_process_group()
            self._own_group = False
