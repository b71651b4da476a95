"""Kafka source: every partition of one topic, assigned (never a group member, so no rebalance can move
partitions), merged in a fixed order, handed out as micro-batches. Auto-commit is off: offsets are
committed only by the daemon, after a durable checkpoint.

Order: records are merged across partitions by (timestamp, partition, offset), and a partition that has
records the source has not fetched yet holds the merge back (up to `hold_s`), so a stream that is already
in the topic is cut into the same batches on every run: a resumed run reaches the state of an
uninterrupted one.

A log that no longer holds our position (lost by a broker restart, truncated by retention, or the topic
recreated) is never read past silently: `kafka.offset_reset` says whether to stop (OffsetOutOfRange), to read
the new log from its start, or to skip to its end. A fetch that cannot be decoded (a compression codec whose
library is missing) stops the source with UndecodableFetch instead of spinning inside kafka-python.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import (
    CorruptRecordError,
    KafkaError,
    LogTruncationError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    UnsupportedCodecError,
)
from kafka.structs import OffsetAndMetadata

from pegp_stream.config import KafkaConfig
from pegp_stream.errors import PegpError

log = logging.getLogger(__name__)
Stop = Callable[[], bool]


class TopicNotReady(Exception):
    """The input topic does not exist yet or has no partitions."""


class OffsetOutOfRange(PegpError):
    """Our position is not in the partition's log and `kafka.offset_reset` is "fail". Nothing past the
    position was read or applied."""


class UndecodableFetch(PegpError):
    """kafka-python cannot decode a fetch (a compression codec's library is missing, or a corrupt batch);
    polling again would spin on it."""


def backoff_delays(initial: float, maximum: float):
    delay = initial
    while True:
        yield delay
        delay = min(delay * 2, maximum)


def sleep_unless(stop: Stop, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))


class KafkaSource:
    def __init__(self, config: KafkaConfig, hold_s: float = 5.0, share: tuple[int, int] = (0, 1)) -> None:
        """`share` (rank, ranks): read only the partitions p with p % ranks == rank (one rank: all of them)."""
        self.config = config
        self.hold_s = hold_s
        self.share = share
        self.consumer: KafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []
        self.topic_id: str | None = None  # the topic's id (KIP-516) whose log our positions are in
        self._confirmed_over: frozenset = frozenset()  # the broker connections over which topic_id was confirmed
        self._buffers: dict[int, deque] = {}
        self._fetched: dict[int, int] = {}  # the consumer's position per partition: next offset to fetch
        self._handed: dict[int, int] = {}  # offset after the last record handed out, per partition
        self._end: dict[int, int] = {}  # end offset per partition, from ListOffsets (every lag_interval_s)
        self._highwater: dict[int, int] = {}  # high watermark per partition, from the latest fetch response
        self._end_checked = 0.0
        self.resets_by_partition: Counter = Counter()  # logs found lost or truncated under us, and followed
        self._failure: PegpError | None = None  # raised in the prefetch thread, re-raised on the loop's
        self._to_end: dict[int, int | None] = {}  # partitions reset to "latest" -> high watermark at the reset
        self.answered_at: float | None = None  # monotonic time the broker last answered a ListOffsets request

    @property
    def resets(self) -> int:
        return sum(self.resets_by_partition.values())

    @property
    def _connected(self) -> KafkaConsumer:
        """The consumer `connect` made; what reads or seeks runs only between `connect` and `close`."""
        if self.consumer is None:
            raise RuntimeError("the Kafka source is not connected")
        return self.consumer

    # ------------------------------------------------------------------ connection

    def connect(self, offsets: dict[int, int], stop: Stop, topic_id: str | None = None) -> bool:
        """Assign every partition and seek to `offsets` (partitions not in it start at the beginning).
        `topic_id` is the id of the topic those offsets were read from (a checkpoint's); a different id now
        means the topic was recreated and `kafka.offset_reset` applies. Retries with exponential backoff
        while the broker or the topic is not there; False if stopped. Raises OffsetOutOfRange."""
        for delay in backoff_delays(self.config.retry_initial_s, self.config.retry_max_s):
            if stop():
                return False
            try:
                self._connect(offsets, topic_id)
                return True
            except PegpError:
                self.close()
                raise
            except (KafkaError, TopicNotReady, OSError) as exc:
                log.warning("kafka not ready (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay,
                            extra={"topic": self.config.topic})
                self.close()
                sleep_unless(stop, delay)
        return False

    def _connect(self, offsets: dict[int, int], topic_id: str | None) -> None:
        # auto_offset_reset="none": kafka-python raises on an out-of-range fetch instead of silently moving
        self.consumer = KafkaConsumer(
            **self.config.client_options(), group_id=self.config.group_id, enable_auto_commit=False,
            auto_offset_reset="none", isolation_level=self.config.isolation_level,
            max_poll_records=max(5000, 4 * self.config.batch_size),
        )
        partitions = self.consumer.partitions_for_topic(self.config.topic)
        if not partitions:
            raise TopicNotReady(f"topic {self.config.topic!r} has no partitions yet")
        rank, ranks = self.share
        self.partitions = [TopicPartition(self.config.topic, p) for p in sorted(partitions) if p % ranks == rank]
        if not self.partitions:
            raise PegpError(f"rank {rank} of {ranks} has no partition of topic {self.config.topic!r} "
                            f"({len(partitions)} partitions, rank r reads p % {ranks} == r): run at most "
                            f"{len(partitions)} ranks")
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        starts = {tp.partition: self.consumer.position(tp) for tp in self.partitions}
        for tp in self.partitions:
            self._buffers[tp.partition] = deque()
            self._fetched[tp.partition] = offsets.get(tp.partition, starts[tp.partition])
            self.consumer.seek(tp, self._fetched[tp.partition])
        self._refresh_end(force=True)
        self.topic_id = topic_id or self._current_topic_id()
        self._check_topic_id()
        for tp in self.partitions:
            if self._fetched[tp.partition] < starts[tp.partition]:
                self._out_of_range(tp, "is before the log start:")
        log.info("assigned %d partition(s) of %s at %s", len(self.partitions), self.config.topic,
                 {p: self._fetched[p] for p in sorted(self._fetched)}, extra={"topic": self.config.topic})

    def close(self) -> None:
        if self.consumer is not None:
            try:
                self.consumer.close(autocommit=False)
            except Exception:  # closing a consumer whose broker is gone may raise anything
                log.debug("consumer close failed", exc_info=True)
        self.consumer = None

    # ------------------------------------------------------------------ batches

    def next_batch(self, stop: Stop) -> list[Any]:
        """Up to `batch_size` records in merge order. Waits at most `max_wait_ms` to fill a batch once
        every partition is caught up; returns [] when nothing arrived. Raises OffsetOutOfRange and
        UndecodableFetch (also those met by `prefetch` meanwhile)."""
        if self._failure is not None:
            raise self._failure
        batch: list[Any] = []
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        held_since: float | None = None
        while len(batch) < self.config.batch_size and not stop():
            pending = self._pending()
            held = pending and held_since is not None and time.monotonic() - held_since > self.hold_s
            if not pending or held:
                record = self._take()
                if record is not None:
                    batch.append(record)
                    continue
            if not pending and time.monotonic() >= deadline:
                break
            held_since = held_since or (time.monotonic() if pending else None)
            self._fetch(timeout_ms=50 if pending else max(1, int(1000 * (deadline - time.monotonic()))))
        return batch

    def consumed_offsets(self) -> dict[int, int]:
        """Next offset per partition once every record handed out so far is applied: after the last record
        handed out, or the consumer's position where nothing fetched is left in the buffer. The position has
        moved past what is never handed out (transaction markers, aborted records under read_committed), so
        a caught-up partition has no lag even when its log ends with a control record."""
        return {p: self._handed[p] if buffer else self._fetched[p] for p, buffer in self._buffers.items()
                if not buffer or p in self._handed}

    def _pending(self) -> list[int]:
        """Partitions with an empty buffer but records on the broker not fetched yet (by the last known end
        offsets, refreshed every `lag_interval_s`). One partition needs no merge, so nothing is pending."""
        if len(self._buffers) < 2:
            return []
        self._refresh_end(max_age_s=self.config.lag_interval_s)
        ends = self.known_ends()
        return [p for p, buffer in self._buffers.items() if not buffer and self._fetched[p] < ends.get(p, 0)]

    def _take(self) -> Any | None:
        heads = [(buffer[0].timestamp, p, buffer[0].offset) for p, buffer in self._buffers.items() if buffer]
        if not heads:
            return None
        _, partition, _ = min(heads)
        record = self._buffers[partition].popleft()
        self._handed[partition] = record.offset + 1
        return record

    def _fetch(self, timeout_ms: int) -> None:
        fetched = self._poll(timeout_ms)
        if fetched is None or self._check_topic_id():
            return  # after a replaced topic, the records just fetched came from the new log at the old positions
        if not self._log_confirmed():
            for tp in self.partitions:  # fetched again once the log is known (or handled as replaced)
                self._connected.seek(tp, self._fetched[tp.partition])
            return
        marks = {tp.partition: self._connected.highwater(tp) for tp in self.partitions}
        self._highwater = {p: mark for p, mark in marks.items() if mark is not None}  # one swap: read elsewhere
        for tp in self.partitions:
            if tp.partition in self._to_end:
                self._skip_to_end(tp, bool(fetched.get(tp)))
            elif fetched.get(tp):
                self._buffers[tp.partition].extend(fetched[tp])
            self._fetched[tp.partition] = self._connected.position(tp, timeout_ms=1000) or self._fetched[tp.partition]
            if self._fetched[tp.partition] > self._highwater.get(tp.partition, self._fetched[tp.partition]):
                self._out_of_range(tp, "is beyond the log end:")

    def _poll(self, timeout_ms: int) -> dict | None:
        """One poll; None when it failed. A retriable failure is logged; an out-of-range position follows
        `kafka.offset_reset`; an undecodable fetch raises (kafka-python would spin on it at full CPU)."""
        try:
            return self._connected.poll(timeout_ms=min(timeout_ms, 200))
        except (OffsetOutOfRangeError, NoOffsetForPartitionError, LogTruncationError) as exc:  # real Kafka says so
            named = exc.args[0] if exc.args and isinstance(exc.args[0], dict | set) else self.partitions
            for tp in named:
                self._out_of_range(tp, "is out of the log's range (the broker says):")
        except (UnsupportedCodecError, CorruptRecordError) as exc:
            raise UndecodableFetch(
                f"cannot decode records of topic {self.config.topic!r} at offsets {self._fetched} "
                f"({exc}); the codec libraries come with pegp-stream's dependencies "
                "(lz4, python-snappy, zstandard)") from exc
        except KafkaError as exc:
            log.warning("poll failed (%s: %s)", type(exc).__name__, exc, extra={"topic": self.config.topic})
            time.sleep(0.1)
        return None

    def prefetch(self, timeout_ms: int) -> None:
        """Fetch into the buffers without handing anything out (keeps the pipe full during a consolidation).
        Runs on another thread: a failure is kept for the loop's next `next_batch`."""
        if self.consumer is not None and self._failure is None:
            try:
                self._fetch(timeout_ms)
            except PegpError as exc:
                self._failure = exc

    # ------------------------------------------------------------------ lost logs

    def _current_topic_id(self) -> str | None:
        # from the latest metadata response (kafka-python has no public accessor for it)
        topic_id = self._connected._client.cluster.topic_id(self.config.topic)
        return str(topic_id) if topic_id is not None else None

    def _fresh_topic_id(self) -> str | None:
        """The topic's id in a metadata response asked for now; None when the topic does not exist (yet) or
        the broker did not answer in time, and then the next id seen is taken as the log's."""
        consumer = self._connected  # as KafkaConsumer.topics() asks, with a bound on the wait
        try:
            consumer._net.run(consumer._manager.wait_for, consumer._cluster.request_update(), 2000)
        except KafkaError:
            return None
        return self._current_topic_id()

    def _log_confirmed(self) -> bool:
        """Whether records fetched now come from the log our positions are in: the broker connections are the
        ones over which the topic's id was last confirmed, or a metadata answer asked for now gives that id.
        After a reconnect (a restarted broker: a new log of the same name, maybe already past our positions)
        the cached metadata may not name the new log yet; records fetched meanwhile were learned at the old
        positions (24 records of a new log, seen once in CI, not reproduced on demand). False when the answer
        names another id, or none for a topic that had one (unknown for now, or no answer); a broker that
        never gives ids (Kafka before 2.8) is trusted as before."""
        connections = frozenset(self._connected._manager._conns.values())
        if connections <= self._confirmed_over:
            return True
        current = self._fresh_topic_id()
        if current != self.topic_id and self.topic_id is not None:
            return False  # a replaced log is followed at the next fetch (_check_topic_id sees the new id)
        self.topic_id, self._confirmed_over = current, connections
        return True

    def _check_topic_id(self) -> bool:
        """True (and `kafka.offset_reset` followed) when the topic's id changed: it was deleted and created
        again (a restarted in-memory broker does that), so no position read from the old log holds."""
        current = self._current_topic_id()
        if current is None or self.topic_id is None or current == self.topic_id:
            self.topic_id = self.topic_id or current
            return False
        what = f"is in a log that was replaced (topic id {self.topic_id}, now {current}):"
        if all([self._out_of_range(tp, what, marks_stale=True) for tp in self.partitions]):
            self.topic_id = current  # else checked again at the next fetch
        return True

    def _out_of_range(self, tp: TopicPartition, what: str, marks_stale: bool = False) -> bool:
        """Our position in `tp` is not in its log: follow `kafka.offset_reset` (raise, or seek to the start or
        the end of the log). Learned state is kept either way. False when the log's bounds cannot be listed
        now (nothing changed; the next fetch finds it again). `marks_stale`: the last fetch's high watermark
        is the old log's."""
        try:
            start, end = self._log_bounds(tp, marks_stale)
        except KafkaError as exc:
            log.warning("partition %d: offset %d %s bounds unavailable (%s: %s)", tp.partition,
                        self._fetched[tp.partition], what, type(exc).__name__, exc)
            return False
        setting = self.config.offset_reset
        where = (f"topic {tp.topic!r} partition {tp.partition}: offset {self._fetched[tp.partition]} {what} "
                 f"log start {start}, end {end}")
        if setting == "fail":
            raise OffsetOutOfRange(f"{where}; kafka.offset_reset=fail stops here (earliest reads the log "
                                   "from its start, latest skips to its end)")
        self.resets_by_partition[tp.partition] += 1
        self._buffers[tp.partition].clear()
        self._handed.pop(tp.partition, None)
        self._fetched[tp.partition] = start if setting == "earliest" else end
        self._connected.seek(tp, self._fetched[tp.partition])
        if setting == "latest":
            self._to_end[tp.partition] = self._connected.highwater(tp)
        if not marks_stale:
            # our position is now in the log the broker has at present, whatever id the cached metadata still
            # gives (a restarted broker answers before the topic is created again: the id seen next is its)
            self.topic_id = self._fresh_topic_id()
        log.warning("%s; kafka.offset_reset=%s: reading on from offset %d", where, setting,
                    self._fetched[tp.partition], extra={"topic": tp.topic, "partition": tp.partition})
        return True

    def _skip_to_end(self, tp: TopicPartition, fetched_any: bool) -> None:
        """Finish a reset to "latest": ListOffsets may under-report the end (Tansu), so the first fetch
        answered at the new position tells it (its high watermark); what that fetch returned is skipped."""
        mark, before = self._highwater.get(tp.partition), self._to_end[tp.partition]
        answered = fetched_any or (mark is not None and mark != before and mark <= self._fetched[tp.partition])
        if not answered:
            return
        del self._to_end[tp.partition]
        if mark is not None and mark > self._fetched[tp.partition]:
            self._connected.seek(tp, mark)

    def _log_bounds(self, tp: TopicPartition, marks_stale: bool = False) -> tuple[int, int]:
        """(log start, log end) of `tp`: ListOffsets, the end raised to the latest fetch's high watermark
        (Tansu's ListOffsets answers the last batch's base offset + 1)."""
        start = self._connected.beginning_offsets([tp], timeout_ms=5000)[tp]
        end = self._connected.end_offsets([tp], timeout_ms=5000)[tp]
        return start, end if marks_stale else max(end, self._connected.highwater(tp) or 0)

    # ------------------------------------------------------------------ offsets

    def _refresh_end(self, force: bool = False, max_age_s: float = 0.1) -> None:
        now = time.monotonic()
        if not force and now - self._end_checked < max_age_s:
            return
        self._end_checked = now
        try:
            ends = self._connected.end_offsets(self.partitions, timeout_ms=2000)
        except KafkaError as exc:
            log.warning("end offsets unavailable (%s: %s)", type(exc).__name__, exc)
            return
        self._end = {tp.partition: offset for tp, offset in ends.items()}
        self.answered_at = now

    def end_offsets(self, max_age_s: float) -> dict[int, int]:
        """End offset per partition (`known_ends`), ListOffsets refreshed when older than `max_age_s`."""
        if time.monotonic() - self._end_checked > max_age_s:
            self._refresh_end(force=True)
        return self.known_ends()

    def known_ends(self) -> dict[int, int]:
        """End offset per partition from what is already known, no network call (safe from other threads):
        the larger of the last ListOffsets answer and the high watermark of the latest fetch response. The
        fetch's mark is fresher, and Tansu's ListOffsets under-reports (the last batch's base offset + 1)."""
        listed, marks = self._end, self._highwater
        return {p: max(listed.get(p, 0), marks.get(p, 0)) for p in listed.keys() | marks.keys()}

    def commit(self, offsets: dict[int, int]) -> None:
        """Commit next offsets for lag tooling. Advisory: the checkpoint is the source of truth."""
        try:
            self._connected.commit({TopicPartition(self.config.topic, p): OffsetAndMetadata(o, "", -1)
                                  for p, o in offsets.items()}, timeout_ms=5000)
        except KafkaError as exc:
            log.warning("offset commit failed (%s: %s); the checkpoint holds the offsets", type(exc).__name__, exc)
