"""Dead letters: a record the learner cannot use goes to `<topic>.dlq` unchanged, with headers naming the
reason and where it came from. Nothing is dropped silently (docs/architecture.md, invariant 4).

Exactly once, like the learned state: a checkpoint records the dead-letter topic's end offsets, all letters
before them confirmed. After a crash, `resume` reads the letters written after those ends (by the run that
crashed) and the records they came from are not dead-lettered a second time when they are read again."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, MessageSizeTooLargeError

from pegp_stream.config import KafkaConfig

log = logging.getLogger(__name__)


class DeadLetterSink:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.topic = config.dead_letters
        self._producer: KafkaProducer | None = None
        self._unconfirmed: list[tuple[Letter, Any]] = []  # (letter, producer future or None)
        self.ends: dict[int, int] = {}  # next offset per dead-letter partition, after every confirmed letter
        self._delivered: set[tuple[int, int]] = set()  # (partition, offset) of source records already lettered
        self.sent = 0

    def prepare(self) -> None:
        """Create the dead-letter topic if it is missing, before anything is sent to it, with the input topic's
        partition count and replication factor. A send to a missing topic would have the broker auto-create
        it with its own defaults (Tansu: several partitions, and its first records can be lost), and some
        clusters forbid auto-creation."""
        from kafka.admin import KafkaAdminClient
        from kafka.errors import TopicAlreadyExistsError

        try:
            admin = KafkaAdminClient(**self.config.client_options())
        except KafkaError as exc:
            log.warning("cannot check the dead-letter topic %s (%s)", self.topic, exc)
            return
        try:
            if self.topic not in admin.list_topics():
                admin.create_topics([self._like_input(admin)])
                log.info("created dead-letter topic %s", self.topic)
        except TopicAlreadyExistsError:
            pass
        except KafkaError as exc:
            log.warning("cannot create the dead-letter topic %s (%s); the broker must provide it", self.topic, exc)
        finally:
            admin.close()

    def resume(self, ends: dict[int, int], source_topic: str, timeout_s: float = 30.0) -> None:
        """Remember the source records whose letters lie after `ends` (from the checkpoint restored; {} when
        none) in the dead-letter topic: a run that crashed delivered them after its last checkpoint."""
        self.ends = dict(ends)
        consumer = KafkaConsumer(**self.config.client_options(), enable_auto_commit=False)
        try:
            found = _letters_after(consumer, self.topic, self.ends, timeout_s)
        except KafkaError as exc:
            log.warning("cannot read the dead-letter topic %s back (%s): letters written after the last "
                        "checkpoint may be written again", self.topic, exc)
            return
        finally:
            consumer.close()
        self._delivered = {(int(h["pegp.source.partition"]), int(h["pegp.source.offset"]))
                           for h in found if h.get("pegp.source.topic") == source_topic.encode()}
        if self._delivered:
            log.info("%d dead letter(s) were delivered after the last checkpoint: not written again",
                     len(self._delivered))

    def _like_input(self, admin: Any) -> Any:
        """The dead-letter topic as a NewTopic shaped like the input topic (1 partition, replication 1 if the
        input cannot be described)."""
        from kafka.admin import NewTopic

        described = [t for t in admin.describe_topics([self.config.topic]) if t.get("name") == self.config.topic]
        partitions = described[0].get("partitions") if described else None
        if not partitions:
            return NewTopic(self.topic, 1, 1)
        return NewTopic(self.topic, len(partitions), max(1, len(partitions[0].get("replica_nodes") or [1])))

    def send(self, record: Any, reason: str, message: str) -> None:
        """Queue `record` for the dead-letter topic. Delivery is confirmed by `flush`, which the daemon calls
        before it writes a checkpoint past the record. The letter always fits `dead_letter_max_bytes`: what
        does not fit (the value, the key, original headers) is left out and the headers say what and how big."""
        log.warning("dead letter: %s (%s)", reason, message,
                    extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})
        if (record.partition, record.offset) in self._delivered:  # delivered by the run before a crash
            self._delivered.discard((record.partition, record.offset))
            return
        letter = fit_letter(record, reason, message, self.config.dead_letter_max_bytes)
        self._unconfirmed.append((letter, self._send(letter)))
        self.sent += 1

    def flush(self, timeout_s: float = 10.0) -> bool:
        """True when every queued dead letter is acknowledged by the broker. Letters the broker refused are
        sent again (one refused as too large is sent again without value, key and original headers); False
        while any is unconfirmed, so the caller retries later and never checkpoints past it."""
        if not self._unconfirmed:
            return True
        try:
            self._producer_or_create().flush(timeout=timeout_s)
        except KafkaError as exc:
            log.warning("dead letters not yet delivered (%s: %s)", type(exc).__name__, exc)
            if self._producer is None:  # no broker to send to: each resend would wait for one again
                return False
        waiting = []
        for letter, future in self._unconfirmed:
            if future is not None and future.succeeded():
                where = future.value
                self.ends[where.partition] = max(self.ends.get(where.partition, 0), where.offset + 1)
                continue
            if future is None or future.failed():  # None: the send failed at once and was never queued
                reason = future.exception if future is not None else "not queued"
                log.warning("dead letter to %s refused (%s): sending it again", self.topic, reason)
                if future is not None and isinstance(future.exception, MessageSizeTooLargeError):
                    letter = minimal_letter(letter)
                future = self._send(letter)
            waiting.append((letter, future))
        self._unconfirmed = waiting
        return not waiting

    @property
    def unconfirmed(self) -> int:
        """Dead letters queued but not yet acknowledged."""
        return len(self._unconfirmed)

    def _send(self, letter: Letter) -> Any:
        """The producer's future, or None when the send failed at once (retried by the next `flush`)."""
        try:
            return self._producer_or_create().send(self.topic, value=letter.value, key=letter.key,
                                                   headers=letter.headers)
        except KafkaError as exc:
            log.warning("dead letter not queued (%s: %s); retried at the next flush", type(exc).__name__, exc)
            return None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def _producer_or_create(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**self.config.client_options(), acks="all", linger_ms=5,
                                           allow_auto_create_topics=False,  # `prepare` creates it like the input
                                           # with no broker, fail within seconds, not 30-60 s: a flush resends
                                           bootstrap_timeout_ms=5000, max_block_ms=5000,
                                           max_request_size=self.config.dead_letter_max_bytes + LETTER_SLACK)
        return self._producer


def _letters_after(consumer: KafkaConsumer, topic: str, ends: dict[int, int], timeout_s: float) -> list[dict]:
    """The headers (as a dict) of every letter in `topic` at or after `ends` (per partition; 0 when absent)."""
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    if not partitions:
        return []
    consumer.assign(partitions)
    last = consumer.end_offsets(partitions)
    for tp in partitions:
        consumer.seek(tp, min(ends.get(tp.partition, 0), last[tp]))
    found, deadline = [], time.monotonic() + timeout_s
    while any(consumer.position(tp) < last[tp] for tp in partitions):
        if time.monotonic() > deadline:
            log.warning("reading %s back took over %.0f s: some letters may be written again", topic, timeout_s)
            break
        for records in consumer.poll(timeout_ms=200).values():
            found += [dict(r.headers or []) for r in records]
    return found


LETTER_SLACK = 4096  # bytes a letter may exceed its budget by: kafka-python's record framing and our headers
ERROR_BYTES = 1000  # the error message header is cut to this


@dataclass(frozen=True)
class Letter:
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


def fit_letter(record: Any, reason: str, message: str, budget: int) -> Letter:
    """The dead letter for `record`, at most `budget` bytes of value, key and headers: our headers first, then
    the value, the key and the original headers in that order while they fit; what is left out is named in
    `pegp.omitted` ("value=999000,key=12,headers=3/70000": what and how many bytes)."""
    ours = [("pegp.reason", reason.encode()), ("pegp.error", message.encode()[:ERROR_BYTES]),
            ("pegp.source.topic", record.topic.encode()), ("pegp.source.partition", str(record.partition).encode()),
            ("pegp.source.offset", str(record.offset).encode())]
    room = budget - sum(_header_size(h) for h in ours) - 64  # 64: the pegp.omitted header itself
    omitted: list[str] = []
    value, room = _keep(record.value, room, "value", omitted)
    key, room = _keep(record.key, room, "key", omitted)
    kept, dropped = [], []
    for header in record.headers or []:
        if _header_size(header) <= room:
            kept.append(header)
            room -= _header_size(header)
        else:
            dropped.append(header)
    if dropped:
        omitted.append(f"headers={len(dropped)}/{sum(_header_size(h) for h in dropped)}")
    extra = [("pegp.omitted", ",".join(omitted).encode())] if omitted else []
    return Letter(value or b"", key, kept + extra + ours)  # b"": a Kafka record needs a key or a value


def minimal_letter(letter: Letter) -> Letter:
    """The letter without value, key and original headers (for a broker whose size limit is below ours)."""
    ours = [h for h in letter.headers if h[0].startswith("pegp.") and h[0] != "pegp.omitted"]
    return Letter(b"", None, [("pegp.omitted", b"all: refused as too large by the broker"), *ours])


def _keep(data: bytes | None, room: int, name: str, omitted: list[str]) -> tuple[bytes | None, int]:
    if data is None or len(data) <= room:
        return data, room - len(data or b"")
    omitted.append(f"{name}={len(data)}")
    return None, room


def _header_size(header: tuple[str, bytes | None]) -> int:
    return len(header[0].encode()) + len(header[1] or b"") + 8
