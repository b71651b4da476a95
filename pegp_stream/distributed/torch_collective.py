"""The collective operations over torch.distributed: one process per rank, gloo for CPU tensors, NCCL for CUDA
ones. torch.distributed does the work; this module only adapts it to what the learner asks (`Collective`)."""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from pegp_stream.errors import ConfigError, RankDivergenceError


class TorchCollective:
    """This process's rank in the default torch.distributed process group."""

    def __init__(self) -> None:
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: use TorchCollective.from_environment")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    @classmethod
    def from_environment(cls, device: torch.device, timeout: timedelta | None = None) -> TorchCollective:
        """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: torch's
        env:// rendezvous), unless this process already has joined one: NCCL when `device` (this rank's learner
        device, cuda:LOCAL_RANK under torchrun) is a GPU, gloo otherwise. `timeout`: how long a collective waits
        for the other ranks before it fails (torch's default when None)."""
        if not dist.is_initialized():
            check_restartable_launch(os.environ)
            backend = "nccl" if device.type == "cuda" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(device)  # NCCL's object collectives use the current device
            dist.init_process_group(backend, timeout=timeout)
        return cls()

    def close(self) -> None:
        """Leave the process group (all ranks call it at the end)."""
        dist.destroy_process_group()

    def all_reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # one collective per dtype, not per tensor: the learner's tensors are many and small (latency-bound)
        for dtype in dict.fromkeys(t.dtype for t in tensors):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for tensor, summed in zip(group, flat.split([t.numel() for t in group]), strict=True):
                tensor.copy_(summed.view_as(tensor))
        return tensors

    def all_gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        # torch's all_gather wants one shape on every rank: pad the rows to the longest share, then cut each back
        if not tensors:
            return []
        counts = torch.tensor([len(t) for t in tensors], device=tensors[0].device)
        every = [torch.empty_like(counts) for _ in range(self.world_size)]
        dist.all_gather(every, counts)
        rows = torch.stack(every).tolist()  # (ranks, tensors)
        return [self._gather_rows(t, [r[i] for r in rows]) for i, t in enumerate(tensors)]

    def _gather_rows(self, tensor: torch.Tensor, rows: list[int]) -> torch.Tensor:
        padded = tensor.new_zeros((max(rows), *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        shares = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(shares, padded)
        return torch.cat([share[:n] for share, n in zip(shares, rows, strict=True)])

    def all_gather_object(self, value: Any) -> list[Any]:
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def norm(self, tensor: torch.Tensor) -> float:
        (square,) = self.all_reduce([tensor.detach().double().square().sum()])
        return math.sqrt(square.item())

    def check_equal(self, what: str, tensors: list[torch.Tensor]) -> None:
        digests = self.all_gather_object(tensors_digest(tensors))
        differ = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
        if differ:
            raise RankDivergenceError(
                f"{what} differ between ranks: rank(s) {differ} hold other values than rank 0 "
                f"(digests {', '.join(f'{r}: {d}' for r, d in enumerate(digests))}); this rank is {self.rank}. "
                "The ranks no longer hold one model: stop all of them and resume from the last checkpoint"
            )


def check_restartable_launch(environ: Mapping[str, str]) -> None:
    """Fail (ConfigError, one line) when torchrun may restart the group (TORCHELASTIC_MAX_RESTARTS above 0) and
    hands its workers the rendezvous store it keeps across restarts (TORCHELASTIC_USE_AGENT_STORE): a restarted
    group then meets the previous attempt's keys in that store, and gloo or NCCL connects to ports of processes
    that are gone (`python -m benchmarks.torchrun_restarts`: 7 of 10 restarts of a bare two-rank gloo group
    failed so or hung, 0 of 10 with a fresh store; pytorch/pytorch#135712, #167288). Better said at start than
    at the first restart."""
    if int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise ConfigError("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "torchrun with --max-restarts needs a fresh store "
                          "for every restart: set TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in torchrun's environment "
                          "and use the c10d rendezvous (--standalone or --rdzv-backend c10d; the static one always "
                          "shares its store); docs/operations.md, \"Several ranks\"")


def tensors_digest(tensors: list[torch.Tensor]) -> str:
    """sha256 over the dtype, shape and bytes of each tensor, in order; the first 16 hex digits."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
