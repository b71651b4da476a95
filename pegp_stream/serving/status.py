"""The learner daemon's published status: all that metrics and the HTTP routes read of a running learner.

The daemon's loop builds a new, frozen `DaemonStatus` whenever its state changes (after learning a batch, at
the end of every step, after a boundary or a checkpoint, and at least every `HEARTBEAT_S` while it waits for
the broker) and publishes it by one assignment. A reader on another thread takes `handle.status` once and
reads one consistent moment from it, never the daemon's working objects, which the loop mutates meanwhile
(a Counter read while the loop adds a key to it raises). This module imports nothing of the daemon, metrics
or serving: each of them imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pegp_stream.checkpoint import CheckpointStore

UPDATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HEARTBEAT_S = 0.1  # while the loop waits, its heartbeat is republished at most this often


@dataclass(frozen=True)
class Durations:
    """A histogram of durations: counts per bucket (upper bounds `buckets`, then +Inf) and their sum.
    `observed` returns a new one (the daemon's thread replaces its copy; no lock, no client-library object
    on the hot path)."""

    buckets: tuple[float, ...] = UPDATE_BUCKETS
    counts: tuple[int, ...] = (0,) * (len(UPDATE_BUCKETS) + 1)
    total: float = 0.0

    def observed(self, seconds: float) -> Durations:
        index = next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))
        counts = tuple(n + (i == index) for i, n in enumerate(self.counts))
        return replace(self, counts=counts, total=self.total + seconds)


@dataclass(frozen=True)
class RankShare:
    """One rank's part of the group's status when several ranks learn (daemon_ranks.py): its own records' accounts,
    gathered with every step's vote. Plain dicts (it is pickled between ranks); never mutated once made."""

    rank: int
    read: int  # records this rank's process has read since it started
    consumed: dict[int, int]  # records read, per partition (this rank's partitions)
    offsets: dict[int, int]
    lag: dict[int, int]
    offset_resets: dict[int, int]
    learned: int
    dead_letters: dict[str, int]
    correct: int  # prequential hits and rows, this rank's records
    total: int
    window_hits: int  # the same over this rank's sliding window
    window_rows: int
    segments: dict[int, tuple[int, int]]  # (hits, rows) per segment
    throughput: float  # records this rank learned per second, recently
    step_seconds: float  # this rank's last step: decode, learn (with the collectives), advance


@dataclass(frozen=True)
class DaemonStatus:
    """One moment of the daemon. Mappings are read-only copies; times named `*_at` and `heartbeat` are
    `time.monotonic()` values, `last_checkpoint["time"]` is Unix time."""

    paradigm: str  # learner.pet.kind
    backbone: str  # learner.backbone.name
    # learned state (rolls back with a checkpoint)
    consumed: Mapping[int, int]  # records read, per partition
    learned: int  # records applied to the learned state
    updates: int  # optimizer steps
    boundaries: Mapping[str, int]  # consolidations per cause
    boundary_positions: tuple[int, ...]  # records learned at the latest boundaries
    dead_letters: Mapping[str, int]  # per reason
    ranks: Mapping[str, int]  # basis rank per protected space
    prequential_cumulative: float
    prequential_window: int  # records in the sliding window
    prequential_windowed: float
    segment_accuracy: Mapping[int, float]
    curve: tuple[tuple[int, float, float], ...]  # (records learned, windowed, cumulative)
    # the stream
    offsets: Mapping[int, int]  # next offset per partition, applied to the learned state
    lag: Mapping[int, int]  # records waiting per partition, from the end offsets known
    offset_resets: Mapping[int, int]  # logs lost, truncated or recreated under the learner, per partition
    throughput: float  # records learned per second, recently
    # steps and checkpoints
    last_loss: float
    update_durations: Durations
    last_consolidation_seconds: float
    last_checkpoint: Mapping[str, float]  # time, seconds, bytes of the last durable checkpoint; {} before one
    checkpoint_failures: int
    checkpoint_problem: str | None  # why the last checkpoint attempt failed; None once one succeeds
    dead_letters_unconfirmed: int
    # liveness, and what readiness is judged against
    heartbeat: float  # the loop last came round
    connected: bool  # the source has its partitions
    broker_answered_at: float | None
    last_learned_at: float
    caught_up_at: float
    topic: str
    bootstrap_servers: str
    broker_silent_after_s: float  # 3 kafka.lag_interval_s
    stall_after_s: float  # http.stall_after_s
    # several ranks: rank 0's status covers the group (the fields above summed or merged), each rank's part here
    world_size: int = 1
    per_rank: tuple[RankShare, ...] = ()

    def not_ready(self, now: float) -> str | None:
        """Why the learner is not ready at monotonic time `now` (read by /readyz), or None: not connected to
        its topic yet, the broker silent for `broker_silent_after_s`, checkpoints failing, or records waiting
        while nothing has been learned for `stall_after_s` since the daemon was last caught up."""
        if not self.connected:
            return f"waiting for topic {self.topic} on {self.bootstrap_servers}"
        silent = self.broker_silent_after_s
        if self.broker_answered_at is None or now - self.broker_answered_at > silent:
            return f"broker {self.bootstrap_servers} has not answered for over {silent:.0f} s"
        if self.checkpoint_problem is not None:
            return f"checkpoints failing: {self.checkpoint_problem}"
        progress = max(self.last_learned_at, self.caught_up_at)
        if any(self.lag.values()) and now - progress > self.stall_after_s:
            return "stalled: records waiting, none learned"
        return None


class DaemonHandle(Protocol):
    """What serving and metrics may use of a learner daemon: its published status, its checkpoint files
    (offered to replicas) and the operator's boundary request."""

    @property
    def status(self) -> DaemonStatus: ...

    @property
    def store(self) -> CheckpointStore: ...

    def request_boundary(self) -> None: ...
