"""Kafka source: every partition of one topic, assigned (never a group member, so no rebalance can move
partitions), merged in a fixed order, handed out as micro-batches. Auto-commit is off: offsets are
committed only by the daemon, after a durable checkpoint.

Order: records are merged across partitions by (timestamp, partition, offset), and a partition that has
records the source has not fetched yet holds the merge back (up to `hold_s`), so a stream that is already
in the topic is cut into the same batches on every run: a resumed run reaches the state of an
uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ..config import KafkaConfig

log = logging.getLogger(__name__)
Stop = Callable[[], bool]


class TopicNotReady(Exception):
    """The input topic does not exist yet or has no partitions."""


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
    def __init__(self, config: KafkaConfig, hold_s: float = 5.0) -> None:
        self.config = config
        self.hold_s = hold_s
        self.consumer: KafkaConsumer | None = None
        self.partitions: list[TopicPartition] = []
        self._buffers: dict[int, deque] = {}
        self._fetched: dict[int, int] = {}  # next offset to fetch, per partition
        self._end: dict[int, int] = {}  # end offset per partition, from ListOffsets (every lag_interval_s)
        self._highwater: dict[int, int] = {}  # high watermark per partition, from the latest fetch response
        self._end_checked = 0.0
        self.resets = 0  # times a partition's log was found reset (lost or truncated) under us
        self._last_seen: dict[int, Any] = {}  # last fetched record per partition (offset, timestamp, value)
        self._verified_end: dict[int, int] = {}  # end offset at which the log was last found intact
        self.answered_at: float | None = None  # monotonic time the broker last answered a ListOffsets request

    # ------------------------------------------------------------------ connection

    def connect(self, offsets: dict[int, int], stop: Stop) -> bool:
        """Assign every partition and seek to `offsets` (partitions not in it start at the beginning).
        Retries with exponential backoff while the broker or the topic is not there; False if stopped."""
        for delay in backoff_delays(self.config.retry_initial_s, self.config.retry_max_s):
            if stop():
                return False
            try:
                self._connect(offsets)
                return True
            except (KafkaError, TopicNotReady, OSError) as exc:
                log.warning("kafka not ready (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay,
                            extra={"topic": self.config.topic})
                self.close()
                sleep_unless(stop, delay)
        return False

    def _connect(self, offsets: dict[int, int]) -> None:
        self.consumer = KafkaConsumer(
            **self.config.client_options(), group_id=self.config.group_id, enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=max(5000, 4 * self.config.batch_size),
        )
        partitions = self.consumer.partitions_for_topic(self.config.topic)
        if not partitions:
            raise TopicNotReady(f"topic {self.config.topic!r} has no partitions yet")
        self.partitions = [TopicPartition(self.config.topic, p) for p in sorted(partitions)]
        self.consumer.assign(self.partitions)
        for tp in self.partitions:
            start = offsets.get(tp.partition)
            if start is None:
                self.consumer.seek_to_beginning(tp)
                start = self.consumer.position(tp)
            else:
                self.consumer.seek(tp, start)
            self._buffers[tp.partition] = deque()
            self._fetched[tp.partition] = start
        self._refresh_end(force=True)
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
        every partition is caught up; returns [] when nothing arrived."""
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
        return self._buffers[partition].popleft()

    def _fetch(self, timeout_ms: int) -> None:
        try:
            fetched = self.consumer.poll(timeout_ms=min(timeout_ms, 200))
        except KafkaError as exc:
            log.warning("poll failed (%s: %s)", type(exc).__name__, exc, extra={"topic": self.config.topic})
            time.sleep(0.1)
            return
        for tp, records in sorted(fetched.items(), key=lambda item: item[0].partition):
            self._buffer(tp.partition, records)
        marks = {tp.partition: self.consumer.highwater(tp) for tp in self.partitions}
        self._highwater = {p: mark for p, mark in marks.items() if mark is not None}  # one swap: read elsewhere

    def _buffer(self, partition: int, records: list[Any]) -> None:
        if not records:
            return
        if records[0].offset < self._fetched[partition]:
            log.warning("partition %d restarted at offset %d (log truncated or reset)", partition, records[0].offset,
                        extra={"topic": self.config.topic, "partition": partition})
        self._buffers[partition].extend(records)
        self._fetched[partition] = records[-1].offset + 1
        self._last_seen[partition] = records[-1]

    def prefetch(self, timeout_ms: int) -> None:
        """Fetch into the buffers without handing anything out (keeps the pipe full during a consolidation)."""
        if self.consumer is not None:
            self._fetch(timeout_ms)

    # ------------------------------------------------------------------ offsets

    def _refresh_end(self, force: bool = False, max_age_s: float = 0.1) -> None:
        now = time.monotonic()
        if not force and now - self._end_checked < max_age_s:
            return
        self._end_checked = now
        try:
            ends = self.consumer.end_offsets(self.partitions, timeout_ms=2000)
        except KafkaError as exc:
            log.warning("end offsets unavailable (%s: %s)", type(exc).__name__, exc)
            return
        self._end = {tp.partition: offset for tp, offset in ends.items()}
        self.answered_at = now
        for tp in self.partitions:
            end = self._end.get(tp.partition, 0)
            suspicious = end < self._fetched[tp.partition] and end != self._verified_end.get(tp.partition)
            if suspicious and not self._buffers[tp.partition]:
                if self._log_intact(tp):
                    self._verified_end[tp.partition] = end
                else:
                    self._restart_partition(tp)

    def _log_intact(self, tp: TopicPartition) -> bool:
        """When the log seems to end before our position: is the last record we fetched still there,
        unchanged? Checked once per end offset seen, while the partition is caught up. (Records at an offset
        never change in an intact log. End offsets alone cannot tell: Tansu reports the last batch's base
        offset + 1.)"""
        last = self._last_seen.get(tp.partition)
        if last is None:
            return True
        self.consumer.seek(tp, last.offset)
        probe, deadline = None, time.monotonic() + 3.0
        while probe is None and time.monotonic() < deadline:
            for other, records in self.consumer.poll(timeout_ms=200).items():
                if other.partition == tp.partition:
                    probe = records[0] if records else None
                else:
                    self._buffer(other.partition, records)
        same = probe is not None and (probe.offset, probe.timestamp, probe.value) == (
            last.offset, last.timestamp, last.value)
        self.consumer.seek(tp, self._fetched[tp.partition] if same else last.offset)
        return same

    def _restart_partition(self, tp: TopicPartition) -> None:
        """The log no longer holds what we read: the broker lost or truncated it (an in-memory broker was
        restarted). Learned state is kept; reading resumes at the log's beginning."""
        self.resets += 1
        self._buffers[tp.partition].clear()
        self.consumer.seek_to_beginning(tp)
        self._fetched[tp.partition] = self.consumer.position(tp, timeout_ms=2000) or 0
        self._last_seen.pop(tp.partition, None)
        log.warning("partition %d was reset under us: reading again from offset %d", tp.partition,
                    self._fetched[tp.partition], extra={"topic": tp.topic, "partition": tp.partition})

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
            self.consumer.commit({TopicPartition(self.config.topic, p): OffsetAndMetadata(o, "", -1)
                                  for p, o in offsets.items()}, timeout_ms=5000)
        except KafkaError as exc:
            log.warning("offset commit failed (%s: %s); the checkpoint holds the offsets", type(exc).__name__, exc)
