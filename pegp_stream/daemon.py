"""The learner daemon: Kafka in, exactly-once learned state, drift boundaries, dead letters.

The loop is a short list of one-line stages (docs/architecture.md):

    records = source.next_batch()       poll, merge partitions in a fixed order
    samples = decode(records)           bad records -> dead-letter topic, with the reason
    learn(samples)                      boundaries (marker, operator, detector) -> consolidate
    advance(records)                    next offset of every partition applied to the state
    maybe_checkpoint()                  state + offsets, atomically; then commit offsets to Kafka

SIGTERM/SIGINT only set a flag: the batch in hand is finished, a checkpoint written, offsets committed.
An unexpected error leaves the loop without a checkpoint (the state in hand may hold half a batch): a restart
resumes from the last durable checkpoint, so every record is still applied once.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pegp_stream.checkpoint import CheckpointStore
from pegp_stream.config import DaemonConfig
from pegp_stream.core.learner import Learner, create_learner
from pegp_stream.drift import BoundaryPolicy
from pegp_stream.driver import Run, StreamDriver
from pegp_stream.errors import CheckpointError, PegpError, StateMismatchError
from pegp_stream.evaluation.prequential import PrequentialAccuracy
from pegp_stream.inputs.decode import DecodeError, Sample, decode_record
from pegp_stream.kafka.dead_letter import DeadLetterSink
from pegp_stream.kafka.source import KafkaSource, backoff_delays
from pegp_stream.serving.app import HttpServer, create_app
from pegp_stream.serving.snapshot import SnapshotPublisher
from pegp_stream.serving.status import HEARTBEAT_S, DaemonStatus, Durations

log = logging.getLogger(__name__)
_LEARNER_REJECTIONS = {"non-finite pixel values": "nonfinite_pixels", "non-finite loss": "nonfinite_loss"}
STATE_FORMAT = 1
BOUNDARY_HISTORY = 256  # boundary positions kept (for the status page); the counts per cause are kept in full


@dataclass
class StreamStats:
    """What the daemon has done; checkpointed with the state (rolls back with it), read by metrics."""

    consumed: Counter = field(default_factory=Counter)  # records read, per partition
    learned: int = 0  # records applied to the learned state
    learned_digest: int = 0  # sum of per-record id hashes mod 2^64: exactly-once accounting
    dead_letters: Counter = field(default_factory=Counter)  # per reason
    boundaries: Counter = field(default_factory=Counter)  # per cause
    boundary_positions: list[int] = field(default_factory=list)  # learned-record count at the last boundaries

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": {str(k): v for k, v in self.consumed.items()}, "learned": self.learned,
                "learned_digest": str(self.learned_digest), "dead_letters": dict(self.dead_letters),
                "boundaries": dict(self.boundaries), "boundary_positions": list(self.boundary_positions)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = Counter({int(k): v for k, v in state["consumed"].items()})
        self.learned, self.learned_digest = state["learned"], int(state["learned_digest"])
        self.dead_letters = Counter(state["dead_letters"])
        self.boundaries = Counter(state["boundaries"])
        self.boundary_positions = list(state["boundary_positions"])


def record_id_hash(record_id: object) -> int:
    return int.from_bytes(hashlib.sha256(str(record_id).encode()).digest()[:8], "little")


@dataclass
class _Decoded:
    record: Any
    sample: Sample


class Daemon:
    def __init__(self, config: DaemonConfig, learner: Learner | None = None) -> None:
        self.config = config
        self.learner = learner or create_learner(config.learner)
        self.source = KafkaSource(config.kafka)
        self.dead_letters = DeadLetterSink(config.kafka)
        self.store = CheckpointStore(config.checkpoint.dir, config.checkpoint.keep)
        self.store.remove_interrupted_writes()  # the daemon is the one writer
        self.policy = BoundaryPolicy(config.drift)
        self._boundary_requested = threading.Event()  # set by any thread, taken in by the loop at a step's start
        self.driver = StreamDriver(self.learner, self.policy, self.consolidate)
        self.prequential = PrequentialAccuracy()
        self.stats = StreamStats()
        self.offsets: dict[int, int] = {}  # next offset per partition, applied to the learned state
        self._dead_letter_ends: dict[int, int] = {}  # the dead-letter topic's ends at the restored checkpoint
        self._topic_id: str | None = None  # the topic id the checkpointed offsets were read from
        self.last_checkpoint: dict[str, float] = {}
        self._stop = threading.Event()
        self._since_checkpoint = 0  # records read since the last checkpoint
        self._changed = False  # state changed without a record read (a boundary while idle, offsets past markers)
        self._checkpoint_clock = time.monotonic()
        self.checkpoint_failures = 0  # failed checkpoint attempts (disk full, read-only, dead letters undelivered)
        self.checkpoint_problem: str | None = None  # why the last attempt failed; None once one succeeds
        self._checkpoint_retry = backoff_delays(1.0, 60.0)
        self._checkpoint_retry_at = 0.0
        self._idle_since: float | None = None
        self._resets_seen = 0
        self.connected = False  # the source has its partitions (else: waiting for the broker or the topic)
        self.heartbeat = self.last_learned_at = self.caught_up_at = time.monotonic()
        self.last_loss = float("nan")
        self.last_update_seconds = self.last_consolidation_seconds = 0.0
        self.snapshots = SnapshotPublisher()
        self.update_durations = Durations()
        self.curve: deque = deque(maxlen=2000)  # (records learned, windowed, cumulative prequential accuracy)
        self._rate_window: deque = deque(maxlen=50)  # (monotonic time, records learned) for throughput
        self.http: HttpServer | None = None
        self._published_at_update = -1
        self._published_clock = time.monotonic()
        self.status: DaemonStatus
        self.publish_status()

    # ------------------------------------------------------------------ control (any thread)

    def request_stop(self) -> None:
        self._stop.set()

    def request_boundary(self) -> None:
        """An operator asks for a consolidation; it happens before the next batch is learned. The loop hands the
        request to the driver at a step's start (with several ranks, the ranks take in every rank's request
        together: the policy must not change under a step)."""
        self._boundary_requested.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Learn until stopped; 0 after a clean stop with a final checkpoint, 1 when that checkpoint could not
        be written. An unexpected error propagates after closing, without a checkpoint."""
        self.restore()
        self.publish()
        self.publish_status()
        self.start_http()
        try:
            if not self.source.connect(self.offsets, self._stop_requested, self._topic_id):
                return self.shutdown()
            self.connected = True
            self.publish_status()
            self.dead_letters.prepare()
            self.dead_letters.resume(self._dead_letter_ends, self.config.kafka.topic)
            while not self.stopping:
                records = self.source.next_batch(self._stop_requested)
                self.step(records)
                if self._idle_long_enough(records):
                    log.info("caught up and idle for %.1f s: stopping", self.config.exit_when_idle_s)
                    break
        except BaseException as exc:
            what = "" if isinstance(exc, PegpError) else "an unexpected error, "
            log.error("stopping on %swithout a checkpoint (a restart resumes from the last one): %s", what, exc)
            self.close()
            raise
        return self.shutdown()

    def step(self, records: Sequence[Any]) -> None:
        """One batch through every stage. Learned state and offsets agree again once `advance` has run."""
        samples = self.decode(records)
        self.learn(samples)
        self.advance(records)
        self.maybe_checkpoint()
        self.maybe_publish(idle=not records)
        self.lag()  # refreshes end offsets every lag_interval_s (and notices a reset log)
        if self.source.resets > self._resets_seen:  # the broker lost its logs: the dead-letter topic too
            self._resets_seen = self.source.resets
            self.dead_letters.prepare()
        self.publish_status()

    def _stop_requested(self) -> bool:
        """The source's stop check, called every few ms while it polls or waits: also the loop's heartbeat,
        so a daemon waiting for a broker or a topic is alive for health checks."""
        self.heartbeat = time.monotonic()
        if self.heartbeat - self.status.heartbeat >= HEARTBEAT_S:
            self.publish_status()
        return self._stop.is_set()

    def decode(self, records: Sequence[Any]) -> list[_Decoded]:
        decoded = []
        for record in records:
            self.stats.consumed[record.partition] += 1
            try:
                decoded.append(_Decoded(record, decode_record(record.value, record.headers or [], self.config.decode)))
            except DecodeError as exc:
                self._dead_letter(record, exc.reason, str(exc))
        return decoded

    def learn(self, decoded: list[_Decoded]) -> None:
        kept = self._within_capacity(decoded)
        requested = self._boundary_requested.is_set()
        self._boundary_requested.clear()
        # a step without records applies a pending operator request now
        self.driver.learn([d.sample.image for d in kept], [d.sample.label for d in kept],
                          [d.sample.segment for d in kept], self.position, lambda run: self._learned(kept, run),
                          requested=requested)
        self.heartbeat = time.monotonic()  # the loop is alive (health checks)
        if not decoded:
            self.caught_up_at = self.heartbeat
        else:
            self.last_learned_at = self.heartbeat
            self._rate_window.append((self.heartbeat, self.stats.learned))
            if not self.curve or self.stats.learned - self.curve[-1][0] >= 20:
                self.curve.append((self.stats.learned, self.prequential.windowed, self.prequential.cumulative))
        self.publish_status()

    @property
    def position(self) -> int:
        """Records of the whole stream applied to the learned state (the driver's positions count them)."""
        return self.stats.learned

    def advance(self, records: Sequence[Any]) -> None:
        moved = self.source.consumed_offsets()  # past transaction markers and log resets too (not record + 1)
        changed = any(self.offsets.get(p) != offset for p, offset in moved.items())
        self.offsets.update(moved)
        self._since_checkpoint += len(records)
        self._changed |= changed and not records  # offsets moved without records (markers, a reset): save too

    # ------------------------------------------------------------------ stages' parts

    def _within_capacity(self, decoded: list[_Decoded]) -> list[_Decoded]:
        """Dead-letter records whose new label would exceed the head's capacity."""
        known, capacity, kept = set(self.learner.classes), self.config.learner.head.max_classes, []
        for item in decoded:
            label = item.sample.label
            if label not in known and len(known) >= capacity:
                reason = f"label {label!r}: head.max_classes={capacity} reached"
                self._dead_letter(item.record, "label_capacity", reason)
                continue
            known.add(label)
            kept.append(item)
        return kept

    def _learned(self, batch: list[_Decoded], run: Run) -> None:
        """A run was learned (`StreamDriver.learn`): timings, dead letters for rejected rows, prequential
        accuracy and the exactly-once account, before a detector boundary the run completed is applied."""
        items, out = batch[run.start : run.stop], run.result
        self.last_update_seconds = run.seconds
        self.update_durations = self.update_durations.observed(run.seconds)
        self.last_loss = out.loss
        for row, reason in out.rejected.items():
            self._dead_letter(items[row].record, _LEARNER_REJECTIONS.get(reason, "rejected"), reason)
        self.prequential.update([out.predictions[i] for i in run.accepted],
                                [items[i].sample.label for i in run.accepted], segment=self.learner.consolidations)
        for i in run.accepted:
            self._account(items[i])

    def _account(self, item: _Decoded) -> None:
        """Count a learned record and add its id to the exactly-once digest."""
        record_id = item.sample.id if item.sample.id is not None else f"{item.record.partition}:{item.record.offset}"
        self.stats.learned += 1
        self.stats.learned_digest = (self.stats.learned_digest + record_id_hash(record_id)) % 2**64

    def consolidate(self, cause: str) -> dict[str, int]:
        """Grow the bases; poll Kafka into the source's buffers meanwhile (consolidation can take seconds).
        Called by `StreamDriver`, which then tells the policy."""
        started = time.perf_counter()
        done = threading.Event()
        poller = threading.Thread(target=self._prefetch_until, args=(done,), daemon=True)
        poller.start()  # the consumer is used by this thread alone until `done`
        try:
            ranks = self.learner.consolidate()  # on the loop's thread: torch's thread settings apply
        finally:
            done.set()
            poller.join()
        self.last_consolidation_seconds = time.perf_counter() - started
        self.stats.boundaries[cause] += 1
        self.stats.boundary_positions = [*self.stats.boundary_positions[1 - BOUNDARY_HISTORY:], self.driver.position]
        self._changed = True
        self.publish()
        log.info("boundary (%s) after %d records: ranks %s", cause, self.driver.position,
                 dict(list(ranks.items())[:4]), extra={"cause": cause})
        return ranks

    def _prefetch_until(self, done: threading.Event) -> None:
        while not done.is_set():
            self.source.prefetch(timeout_ms=20)

    def _dead_letter(self, record: Any, reason: str, message: str) -> None:
        self.stats.dead_letters[reason] += 1
        self.dead_letters.send(record, reason, message)

    # ------------------------------------------------------------------ checkpoints

    def maybe_checkpoint(self) -> None:
        every = self.config.checkpoint
        due_records = self._since_checkpoint >= every.every_records
        due_time = every.every_seconds is not None and self._unsaved and \
            time.monotonic() - self._checkpoint_clock >= every.every_seconds
        retry_due = self.checkpoint_problem is None or time.monotonic() >= self._checkpoint_retry_at
        if (due_records or due_time) and retry_due:
            self.checkpoint()

    def checkpoint(self) -> bool:
        """Write state + offsets durably, then commit the offsets to Kafka. Dead letters are flushed first:
        a checkpoint never moves past a bad record whose dead letter is not delivered. A failure (dead letters
        undelivered, disk full, read-only directory) is logged, counted and retried with backoff by
        `maybe_checkpoint`; learning and serving go on, and no offset is committed past the last durable one."""
        if not self.dead_letters.flush():
            return self._checkpoint_failed(f"{self.dead_letters.unconfirmed} dead letter(s) not delivered")
        started = time.perf_counter()
        try:
            path = self.store.save(self.state_dict())
        except OSError as exc:
            return self._checkpoint_failed(f"cannot write to {self.store.directory}: {exc.strerror or exc}")
        self._checkpointed(time.perf_counter() - started, path.stat().st_size, self.offsets)
        log.info("checkpoint %s: %d records learned, prequential accuracy %.3f (window %.3f), %d dead letters",
                 path.name, self.stats.learned, self.prequential.cumulative, self.prequential.windowed,
                 sum(self.stats.dead_letters.values()))
        return True

    def _checkpointed(self, seconds: float, size: int, offsets: dict[int, int]) -> None:
        """A checkpoint is durable: commit `offsets` to Kafka, publish the model it holds, reset the counts."""
        self.last_checkpoint = {"time": time.time(), "seconds": seconds, "bytes": float(size)}
        self._since_checkpoint, self._changed, self._checkpoint_clock = 0, False, time.monotonic()
        self.checkpoint_problem, self._checkpoint_retry = None, backoff_delays(1.0, 60.0)
        if self.source.consumer is not None and offsets:
            self.source.commit(offsets)
        self.publish()  # the served model is never older than what a checkpoint holds
        self.publish_status()

    @property
    def _unsaved(self) -> bool:
        """Whether the state has moved since the last checkpoint."""
        return self._since_checkpoint > 0 or self._changed

    def _checkpoint_failed(self, problem: str) -> bool:
        delay = next(self._checkpoint_retry)
        self.checkpoint_failures += 1
        self.checkpoint_problem = problem
        self._checkpoint_retry_at = time.monotonic() + delay
        self.publish_status()
        log.error("checkpoint failed (%s): learning and serving go on, retry in %.0f s", problem, delay)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "topic": self.config.kafka.topic,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "dead_letter_ends": {str(p): o for p, o in sorted(self.dead_letters.ends.items())},
            "topic_id": self.source.topic_id or self._topic_id,  # the log the offsets are in
            "learner": self.learner.state_dict(),
            "policy": self.policy.state_dict(),
            "prequential": self.prequential.state_dict(),
            "stats": self.stats.state_dict(),
            "saved_at": time.time(),
        }

    def restore(self) -> None:
        """Continue from the newest checkpoint whose state applies; one that does not (corrupt, malformed,
        truncated) is named in the log and the previous one is tried. A state made under another learner
        config stops the start with StateMismatchError naming the file and the field."""
        for checkpoint in self.store.intact():
            try:
                self._apply(checkpoint.state)
            except StateMismatchError as exc:
                raise StateMismatchError(f"checkpoint {checkpoint.path}: {exc}") from None
            except Exception as exc:  # noqa: BLE001 - any failure to apply one checkpoint means "try the previous"
                log.error("checkpoint %s is corrupt (%s: %s), trying the previous one", checkpoint.path,
                          type(exc).__name__, exc)
                self._reset_state()
                continue
            log.info("restored %s: %d records learned, offsets %s", checkpoint.path.name, self.stats.learned,
                     self.offsets)
            return
        if self.store.paths():  # starting fresh would prune them away: an operator decides
            raise CheckpointError(f"none of the checkpoints in {self.store.directory} can be used (see the log); "
                                  "move them away to start fresh")
        log.info("no checkpoint in %s: starting fresh", self.store.directory)

    def _apply(self, state: dict[str, Any]) -> None:
        if state.get("topic") != self.config.kafka.topic:
            log.warning("checkpoint was for topic %r, not %r: its offsets are ignored", state.get("topic"),
                        self.config.kafka.topic)
            offsets = {}
        else:
            offsets = {int(p): int(o) for p, o in state["offsets"].items()}
            self._topic_id = state.get("topic_id")
        self.learner.load_state_dict(state["learner"])
        self.policy.load_state_dict(state["policy"])
        self.prequential.load_state_dict(state["prequential"])
        self.stats.load_state_dict(state["stats"])
        self.offsets = offsets
        self._dead_letter_ends = {int(p): int(o) for p, o in state.get("dead_letter_ends", {}).items()}

    def _reset_state(self) -> None:
        """Fresh learned state after a checkpoint failed half-way through being applied."""
        self.learner = create_learner(self.config.learner, self.learner.collective)
        self.policy, self.prequential, self.stats = BoundaryPolicy(self.config.drift), PrequentialAccuracy(), \
            StreamStats()
        self.driver = StreamDriver(self.learner, self.policy, self.consolidate)
        self.offsets, self._dead_letter_ends, self._topic_id = {}, {}, None

    def shutdown(self) -> int:
        """After a clean stop: the final checkpoint (when anything changed), then close. 1 if it failed."""
        written = True
        if self._final_checkpoint_due():
            written = self.checkpoint()
        self.close()
        if not written:
            log.error("stopped without a final checkpoint (%s): a restart resumes from the last one",
                      self.checkpoint_problem)
        return 0 if written else 1

    def _final_checkpoint_due(self) -> bool:
        return self._unsaved or not self.store.paths()

    def close(self) -> None:
        self.stop_http()
        self.dead_letters.close()
        self.source.close()

    # ------------------------------------------------------------------ serving

    def publish(self) -> None:
        """A new immutable snapshot for readers (HTTP predictions)."""
        self.snapshots.publish(self.learner, self.stats.learned)
        self._published_at_update = self.learner.updates
        self._published_clock = time.monotonic()

    def maybe_publish(self, idle: bool) -> None:
        """Publish when updates are pending and there are many, or the last snapshot is old, or the stream
        went idle: the served model never stays behind what was learned for long."""
        pending = self.learner.updates - self._published_at_update
        http = self.config.http
        old = time.monotonic() - self._published_clock >= http.snapshot_max_age_s
        if pending and (idle or old or pending >= http.snapshot_every_updates):
            self.publish()

    def start_http(self) -> None:
        if not self.config.http.enabled or self.http is not None:
            return
        app = create_app(self.config.http, self.snapshots, daemon=self, limits=self.config.decode)
        self.http = HttpServer(app, self.config.http.host, self.config.http.port).start()
        log.info("serving predictions on %s/v1/predict, metrics on %s/metrics", self.http.url, self.http.url)

    def stop_http(self) -> None:
        if self.http is not None:
            self.http.stop()
            self.http = None

    # ------------------------------------------------------------------ status

    def throughput(self) -> float:
        """Records learned per second over the recent batches."""
        if len(self._rate_window) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._rate_window[0], self._rate_window[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def cached_lag(self) -> dict[int, int]:
        """Lag from the end offsets already known (no network call; safe from other threads)."""
        ends = self.source.known_ends()
        return {p: max(0, end - self.offsets.get(p, 0)) for p, end in ends.items()}

    def lag(self) -> dict[int, int]:
        """`cached_lag` after refreshing the end offsets when older than `kafka.lag_interval_s`."""
        self.source.end_offsets(self.config.kafka.lag_interval_s)
        return self.cached_lag()

    def publish_status(self) -> None:
        """Replace the published status (status.py) with the state now; the loop's thread only."""
        learner, stats, prequential, kafka = self.learner, self.stats, self.prequential, self.config.kafka
        self.status = DaemonStatus(
            paradigm=learner.config.pet.kind, backbone=learner.config.backbone.name,
            consumed=_frozen(stats.consumed), learned=stats.learned, updates=learner.updates,
            boundaries=_frozen(stats.boundaries), boundary_positions=tuple(stats.boundary_positions),
            dead_letters=_frozen(stats.dead_letters), ranks=_frozen(learner.ranks),
            prequential_cumulative=prequential.cumulative, prequential_window=prequential.window,
            prequential_windowed=prequential.windowed, segment_accuracy=_frozen(prequential.segment_accuracy()),
            curve=tuple(self.curve), offsets=_frozen(self.offsets), lag=_frozen(self.cached_lag()),
            offset_resets=_frozen(self.source.resets_by_partition), throughput=self.throughput(),
            last_loss=self.last_loss, update_durations=self.update_durations,
            last_consolidation_seconds=self.last_consolidation_seconds, last_checkpoint=_frozen(self.last_checkpoint),
            checkpoint_failures=self.checkpoint_failures, checkpoint_problem=self.checkpoint_problem,
            dead_letters_unconfirmed=self.dead_letters.unconfirmed, heartbeat=self.heartbeat,
            connected=self.connected, broker_answered_at=self.source.answered_at,
            last_learned_at=self.last_learned_at, caught_up_at=self.caught_up_at, topic=kafka.topic,
            bootstrap_servers=kafka.bootstrap_servers, broker_silent_after_s=3 * kafka.lag_interval_s,
            stall_after_s=self.config.http.stall_after_s)

    def _idle_long_enough(self, records: Sequence[Any]) -> bool:
        limit = self.config.exit_when_idle_s
        if limit is None:
            return False
        if records or any(self.lag().values()):
            self._idle_since = None
            return False
        self._idle_since = self._idle_since or time.monotonic()
        return time.monotonic() - self._idle_since >= limit


def _frozen(mapping: Mapping) -> Mapping:
    """A read-only copy, for the published status."""
    return MappingProxyType(dict(mapping))
