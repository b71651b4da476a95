"""The learner daemon as one of N ranks: `torchrun --nproc-per-node N -m pegp_stream run` (docs/operations.md,
"Several ranks"). A plain `pegp-stream run` (no WORLD_SIZE) never imports this module.

Rank r reads the partitions p with p % N == r (a fixed share: no consumer group, so no rebalance). Every step each
rank contributes its micro-batch, possibly empty (it waits at most `distributed.idle_wait_ms` for records), and
the ranks learn the step together (`StreamDriver` in lock step). What must be decided alike on every rank is
agreed once per step from a small vote every rank casts (`_Vote`): checkpoint now (records since the last one,
summed; rank 0's clock), stop (any rank was asked: SIGTERM), stop because idle (every rank is).

Rank 0 alone writes checkpoints, serves HTTP and publishes snapshots. Its published status covers the group: each
rank's part of it (`RankShare`: its partitions' offsets and lag, its counts, throughput and step time) rides on the
step's vote, and rank 0 merges the parts with its own, now (`_group_status`).

A checkpoint holds every rank's offsets and the sums of the ranks' accounts (learned count, id digest, consumed, dead
letters, prequential hits and rows). On start rank 0 picks the newest checkpoint that applies and hands its state
to the others; every rank applies it, the accounts that are sums stay whole on rank 0 and start at zero on the
others (as the learner's segment covariances do), so the next checkpoint's sums are right, and each rank seeks its
own partitions to the offsets the state holds for them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import torch

from pegp_stream.config import DaemonConfig
from pegp_stream.core.learner import create_learner
from pegp_stream.daemon import Daemon, StreamStats
from pegp_stream.distributed import TorchCollective
from pegp_stream.evaluation.prequential import PrequentialAccuracy
from pegp_stream.kafka.source import KafkaSource
from pegp_stream.serving.status import DaemonStatus, RankShare

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
    share: RankShare  # this rank's part of the group's status (rank 0 publishes it)


class RankedDaemon(Daemon):
    def __init__(self, config: DaemonConfig, collective: TorchCollective) -> None:
        self.collective = collective
        self._stop_wanted = threading.Event()  # asked (a signal); `_stop` is set once the ranks agree
        self._votes: list[_Vote] = []
        self._step_records: Sequence[Any] = ()
        self._restored: dict[str, Any] | None = None
        self._closed = False
        self._shares: list[RankShare] = []  # every rank's part of the status, as of the last vote
        self._read = 0  # records this process read (a counter that restarts with the process)
        self._step_started = time.perf_counter()
        self._step_seconds = 0.0
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

    def step(self, records: Sequence[Any]) -> None:
        self._step_started = time.perf_counter()
        super().step(records)

    def advance(self, records: Sequence[Any]) -> None:
        super().advance(records)
        self._step_records = records
        self._read += len(records)

    def maybe_checkpoint(self) -> None:
        """The step's agreement, once per step on every rank; then the checkpoint it decides on."""
        every = self.config.checkpoint
        clock = time.monotonic()
        self._step_seconds = time.perf_counter() - self._step_started
        mine = _Vote(self._since_checkpoint, self._unsaved, self._stop_wanted.is_set(),
                     Daemon._idle_long_enough(self, self._step_records),
                     every.every_seconds is not None and clock - self._checkpoint_clock >= every.every_seconds,
                     self.checkpoint_problem is None or clock >= self._checkpoint_retry_at, self._share())
        self._votes = votes = self.collective.all_gather_object(mine)
        self._shares = [vote.share for vote in votes]
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
            {"offsets": self._own(self.offsets), "ends": dict(self.dead_letters.ends), "stats": self.stats,
             "prequential": self.prequential})
        offsets = {p: o for share in shares for p, o in share["offsets"].items()}
        state["offsets"] = {str(p): o for p, o in sorted(offsets.items())}
        state["dead_letter_ends"] = {str(p): o for p, o in sorted(_lowest([s["ends"] for s in shares]).items())}
        state["stats"] = _summed([share["stats"] for share in shares]).state_dict()
        state["prequential"] = _summed_prequential([share["prequential"] for share in shares]).state_dict()
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
            self.prequential = PrequentialAccuracy(window=self.prequential.window)  # summed like the stats
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

    def publish_status(self) -> None:
        """Rank 0's status covers the group: its own part now, the other ranks' as of the last vote."""
        super().publish_status()
        if self.lead and self.collective.world_size > 1:
            mine = self._share()
            shares = [mine, *self._shares[1:]]
            self.status = _group_status(self.status, shares, self.collective.world_size)

    def _share(self) -> RankShare:
        """This rank's part of the group's status, now."""
        prequential, stats = self.prequential, self.stats
        return RankShare(
            rank=self.collective.rank, read=self._read, consumed=dict(stats.consumed), offsets=self._own(self.offsets),
            lag=self._own(self.cached_lag()), offset_resets=self._own(dict(self.source.resets_by_partition)),
            learned=stats.learned, dead_letters=dict(stats.dead_letters), correct=prequential.correct,
            total=prequential.total, window_hits=sum(prequential.recent), window_rows=len(prequential.recent),
            segments={s: (hits, rows) for s, (hits, rows) in prequential.per_segment.items()},
            throughput=self.throughput(), step_seconds=self._step_seconds)


def _group_status(own: DaemonStatus, shares: list[RankShare], world_size: int) -> DaemonStatus:
    """Rank 0's status over the group: per-partition values merged (a partition is one rank's), counts summed,
    prequential accuracy over every rank's records (the window: every rank's last `window` records)."""
    segments = _segments_summed([share.segments for share in shares])
    total, rows = sum(s.total for s in shares), sum(s.window_rows for s in shares)
    frozen = MappingProxyType
    return replace(
        own, consumed=frozen(_summed_counts([s.consumed for s in shares])), learned=sum(s.learned for s in shares),
        dead_letters=frozen(_summed_counts([s.dead_letters for s in shares])),
        offsets=frozen(_merged([s.offsets for s in shares])), lag=frozen(_merged([s.lag for s in shares])),
        offset_resets=frozen(_merged([s.offset_resets for s in shares])), throughput=sum(s.throughput for s in shares),
        prequential_cumulative=sum(s.correct for s in shares) / total if total else 0.0,
        prequential_windowed=sum(s.window_hits for s in shares) / rows if rows else 0.0,
        segment_accuracy=frozen({s: hits / n for s, (hits, n) in sorted(segments.items()) if n}),
        world_size=world_size, per_rank=tuple(shares))


def _summed_counts(parts: list[dict]) -> dict:
    total: Counter = Counter()
    for part in parts:
        total.update(part)
    return dict(total)


def _merged(parts: list[dict[int, int]]) -> dict[int, int]:
    return {key: value for part in parts for key, value in sorted(part.items())}


def _summed_prequential(parts: list[PrequentialAccuracy]) -> PrequentialAccuracy:
    """The ranks' prequential accounts as one: hits and rows summed, per segment too; the window is rank 0's."""
    return PrequentialAccuracy(window=parts[0].window, recent=parts[0].recent,
                               correct=sum(part.correct for part in parts), total=sum(part.total for part in parts),
                               per_segment=_segments_summed([part.per_segment for part in parts]))


def _segments_summed(parts: Sequence[Mapping[int, Sequence[int]]]) -> dict[int, list[int]]:
    """(hits, rows) per segment, summed over the ranks."""
    summed: dict[int, list[int]] = {}
    for part in parts:
        for segment, (hits, rows) in part.items():
            counts = summed.setdefault(segment, [0, 0])
            counts[0] += hits
            counts[1] += rows
    return summed


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
