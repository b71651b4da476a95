"""The collective operations the learner uses to take one step over all ranks, and the single-rank case."""

from __future__ import annotations

from typing import Any, Protocol

import torch


class Collective(Protocol):
    """What one rank may ask of all ranks. Every rank must make the same calls in the same order (each call is a
    collective); tensors are this rank's, on the learner's device."""

    rank: int
    world_size: int

    def all_reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Replace each tensor, in place, by its sum over all ranks; returns `tensors`."""

    def all_gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor's rows from every rank, concatenated in rank order. Row counts may differ between ranks
        (zero included); the other dimensions and the dtype must not."""

    def all_gather_object(self, value: Any) -> list[Any]:
        """`value` (picklable) of every rank, in rank order."""

    def norm(self, tensor: torch.Tensor) -> float:
        """The 2-norm of the entries of `tensor` on all ranks together."""

    def check_equal(self, what: str, tensors: list[torch.Tensor]) -> None:
        """Raise `RankDivergenceError` naming `what` on every rank if `tensors` are not bitwise equal on all
        ranks."""


class SingleProcess:
    """The only rank of a plain run: every collective is the identity."""

    rank = 0
    world_size = 1

    def all_reduce(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def all_gather(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors

    def all_gather_object(self, value: Any) -> list[Any]:
        return [value]

    def norm(self, tensor: torch.Tensor) -> float:
        return float(torch.linalg.vector_norm(tensor))

    def check_equal(self, what: str, tensors: list[torch.Tensor]) -> None:
        return None
