"""The learner daemon as one of N ranks: `torchrun --nproc-per-node N -m pegp_stream run` (docs/operations.md,
"Several ranks"). A plain `pegp-stream run` (no WORLD_SIZE) never imports this module.

Rank r reads the partitions p with p % N == r (a fixed share: no consumer group, so no rebalance). Every step each
rank contributes its micro-batch, possibly empty (it waits at most `distributed.idle_wait_ms` for records), and
the ranks learn the step together (`StreamDriver` in lock step). What must be decided alike on every rank is
agreed once per step from a small vote every rank casts (`_Vote`): checkpoint now (records since the last one,
summed; rank 0's clock), stop (any rank was asked: SIGTERM), stop because idle (every rank is).

Rank 0 alone writes checkpoints, serves HTTP and publishes snapshots. A checkpoint holds every rank's offsets and
the sums of the ranks' accounts (learned count, id digest, consumed, dead letters). On start rank 0 picks the
newest checkpoint that applies and hands its state to the others; every rank applies it, the accounts that are
sums stay whole on rank 0 and start at zero on the others (as the learner's segment covariances do), so the next
checkpoint's sums are right, and each rank seeks its own partitions to the offsets the state holds for them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from pegp_stream.config import DaemonConfig
from pegp_stream.core.learner import create_learner
from pegp_stream.daemon import Daemon, StreamStats
from pegp_stream.distributed import TorchCollective
from pegp_stream.kafka.source import KafkaSource

log = logging.getLogger(__name__)


def join_ranks(config: DaemonConfig) -> RankedDaemon:
    """This process's rank of the group torchrun started (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT):
    gloo on CPU, NCCL on cuda:LOCAL_RANK when the learner's device is a GPU ("auto" with one present)."""
    device = config.learner.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    config = config.model_copy(update={"learner": config.learner.model_copy(update={"device": device})})
    timeout = timedelta(seconds=config.distributed.timeout_s)
    return RankedDaemon(config, TorchCollective.from_environment(torch.device(device), timeout))


@dataclass(frozen=True)
class _Vote:
    """What one rank says at a step's end."""

    since: int  # records read since the last checkpoint
    unsaved: bool  # state moved since the last checkpoint
    stop: bool  # this rank was asked to stop
    idle: bool  # caught up and idle for exit_when_idle_s
    clock_due: bool  # checkpoint.every_seconds have passed (rank 0's counts)
    retry_due: bool  # a failed checkpoint's backoff is over (rank 0's counts)


class RankedDaemon(Daemon):
    def __init__(self, config: DaemonConfig, collective: TorchCollective) -> None:
        self.collective = collective
        self._stop_wanted = threading.Event()  # asked (a signal); `_stop` is set once the ranks agree
        self._votes: list[_Vote] = []
        self._step_records: Sequence[Any] = ()
        self._restored: dict[str, Any] | None = None
        self._closed = False
        super().__init__(config, create_learner(config.learner, collective))
        kafka = config.kafka.model_copy(update={"max_wait_ms": config.distributed.idle_wait_ms})
        self.source = KafkaSource(kafka, share=(collective.rank, collective.world_size))

    @property
    def lead(self) -> bool:
        return self.collective.rank == 0

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Stop at the end of the step the ranks agree on (every rank stops at the same step)."""
        self._stop_wanted.set()

    def _stop_requested(self) -> bool:
        super()._stop_requested()  # the heartbeat
        return self._stop_wanted.is_set() or self.stopping

    @property
    def position(self) -> int:
        return self.driver.position  # this rank's account counts its own records: the driver counts all ranks'

    def advance(self, records: Sequence[Any]) -> None:
        super().advance(records)
        self._step_records = records

    def maybe_checkpoint(self) -> None:
        """The step's agreement, once per step on every rank; then the checkpoint it decides on."""
        every = self.config.checkpoint
        clock = time.monotonic()
        mine = _Vote(self._since_checkpoint, self._unsaved, self._stop_wanted.is_set(),
                     Daemon._idle_long_enough(self, self._step_records),
                     every.every_seconds is not None and clock - self._checkpoint_clock >= every.every_seconds,
                     self.checkpoint_problem is None or clock >= self._checkpoint_retry_at)
        self._votes = votes = self.collective.all_gather_object(mine)
        if any(vote.stop for vote in votes):
            self._stop.set()
        due = sum(vote.since for vote in votes) >= every.every_records or \
            (votes[0].clock_due and any(vote.unsaved for vote in votes))
        if due and votes[0].retry_due:
            self.checkpoint()

    def _idle_long_enough(self, records: Sequence[Any]) -> bool:
        return bool(self._votes) and all(vote.idle for vote in self._votes)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> bool:
        """Every rank's dead letters delivered, then rank 0 writes the state of all ranks; every rank commits its
        own offsets once the write is durable. A failure on any rank is a failure on every rank."""
        if not all(self.collective.all_gather_object(self.dead_letters.flush())):
            return self._checkpoint_failed("dead letter(s) of a rank not delivered")
        started = time.perf_counter()
        state = self.state_dict()
        written: tuple[bool, Any] | None = None
        if self.lead:
            try:
                path = self.store.save(state)
                written = (True, path.stat().st_size)
            except OSError as exc:
                written = (False, f"cannot write to {self.store.directory}: {exc.strerror or exc}")
        ok, detail = self.collective.all_gather_object(written)[0]
        if not ok:
            return self._checkpoint_failed(detail)
        self._checkpointed(time.perf_counter() - started, detail, self._own(self.offsets))
        if self.lead:
            log.info("checkpoint: %d records learned by %d ranks", self.position, self.collective.world_size)
        return True

    def state_dict(self) -> dict[str, Any]:
        """The state of all ranks (a collective): every rank's offsets, the sums of their accounts."""
        state = super().state_dict()
        shares = self.collective.all_gather_object(
            {"offsets": self._own(self.offsets), "ends": dict(self.dead_letters.ends), "stats": self.stats})
        offsets = {p: o for share in shares for p, o in share["offsets"].items()}
        state["offsets"] = {str(p): o for p, o in sorted(offsets.items())}
        state["dead_letter_ends"] = {str(p): o for p, o in sorted(_lowest([s["ends"] for s in shares]).items())}
        state["stats"] = _summed([share["stats"] for share in shares]).state_dict()
        return state

    def restore(self) -> None:
        """Rank 0 picks the newest checkpoint that applies (as one rank does) and hands its state to the others."""
        if self.lead:
            super().restore()
        state = self.collective.all_gather_object(self._restored if self.lead else None)[0]
        if state is None:
            return
        if not self.lead:
            self._apply(state)
            learned = self.stats
            self.stats = StreamStats(boundaries=learned.boundaries, boundary_positions=learned.boundary_positions)
        self.driver.position = state["stats"]["learned"]
        self.offsets = self._own(self.offsets)

    def _apply(self, state: dict[str, Any]) -> None:
        super()._apply(state)
        self._restored = state

    def _final_checkpoint_due(self) -> bool:
        votes = self.collective.all_gather_object((self._unsaved, self.lead and not self.store.paths()))
        return any(unsaved or empty for unsaved, empty in votes)

    def _own(self, offsets: dict[int, int]) -> dict[int, int]:
        """The offsets of this rank's partitions."""
        return {p: o for p, o in offsets.items() if p % self.collective.world_size == self.collective.rank}

    def close(self) -> None:
        super().close()
        if not self._closed:
            self._closed = True
            self.collective.close()

    # ------------------------------------------------------------------ serving: rank 0

    def publish(self) -> None:
        if self.lead:
            super().publish()

    def start_http(self) -> None:
        if self.lead:
            super().start_http()


def _summed(stats: list[StreamStats]) -> StreamStats:
    """The ranks' accounts as one: counts and the id digest summed; boundaries are alike on every rank."""
    total = StreamStats(boundaries=Counter(stats[0].boundaries), boundary_positions=list(stats[0].boundary_positions))
    for share in stats:
        total.consumed += share.consumed
        total.learned += share.learned
        total.learned_digest = (total.learned_digest + share.learned_digest) % 2**64
        total.dead_letters += share.dead_letters
    return total


def _lowest(ends: list[dict[int, int]]) -> dict[int, int]:
    """Per dead-letter partition, the lowest end any rank knows: a resume then reads every letter written after
    any rank's last confirmed one (reading more only finds letters that are there already)."""
    lowest: dict[int, int] = {}
    for share in ends:
        for partition, end in share.items():
            lowest[partition] = min(end, lowest.get(partition, end))
    return lowest
