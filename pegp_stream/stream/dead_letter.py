"""Dead letters: a record the learner cannot use goes to `<topic>.dlq` unchanged, with headers naming the
reason and where it came from. Nothing is dropped silently (architecture.md, invariant 5)."""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from ..config import KafkaConfig

log = logging.getLogger(__name__)


class DeadLetterSink:
    def __init__(self, config: KafkaConfig) -> None:
        self.config = config
        self.topic = config.dead_letters
        self._producer: KafkaProducer | None = None
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
        """Queue `record` for the dead-letter topic. Delivery is confirmed by `flush`, before the daemon
        writes a checkpoint past the record. A value larger than `dead_letter_max_bytes` is left out (the
        headers say so and where the original is: its topic, partition and offset)."""
        value = record.value
        extra = []
        if value is not None and len(value) > self.config.dead_letter_max_bytes:
            extra = [("pegp.value.omitted", str(len(value)).encode())]
            value = b""
        headers = list(record.headers or []) + extra + [
            ("pegp.reason", reason.encode()),
            ("pegp.error", message.encode()[:1000]),
            ("pegp.source.topic", record.topic.encode()),
            ("pegp.source.partition", str(record.partition).encode()),
            ("pegp.source.offset", str(record.offset).encode()),
        ]
        log.warning("dead letter: %s (%s)", reason, message,
                    extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})
        self._producer_or_create().send(self.topic, value=value, key=record.key, headers=headers)
        self.sent += 1

    def flush(self, timeout_s: float = 10.0) -> bool:
        """True when every queued dead letter is acknowledged by the broker."""
        if self._producer is None:
            return True
        try:
            self._producer.flush(timeout=timeout_s)
            return True
        except KafkaError as exc:
            log.warning("dead letters not yet delivered (%s: %s)", type(exc).__name__, exc)
            return False

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None

    def _producer_or_create(self) -> KafkaProducer:
        if self._producer is None:
            self._producer = KafkaProducer(**self.config.client_options(), acks="all", linger_ms=5,
                                           max_request_size=self.config.dead_letter_max_bytes + 65536)
        return self._producer
