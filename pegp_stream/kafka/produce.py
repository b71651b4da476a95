"""Feeding a labelled stream into Kafka: what `pegp-stream produce` and the demo do."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from pegp_stream.data.streams import LabelledStream
from pegp_stream.inputs.encode import encode_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProduceOptions:
    topic: str
    bootstrap_servers: str
    partitions: int = 1
    markers: bool = True  # send each record's segment (explicit boundaries)
    fmt: Literal["json", "binary"] = "json"
    image_format: Literal["png", "jpeg", "raw"] = "png"  # raw: json only
    id_prefix: str = "r"
    rate: float | None = None  # records per second; None = as fast as possible
    repeat: int = 1  # send the stream this many times (ids stay unique)


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int) -> None:
    """Create `topic` with `partitions` partitions unless it exists."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers.split(","), client_id="pegp-stream-admin")
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
        log.info("created topic %s with %d partition(s)", topic, partitions)
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def produce(stream: LabelledStream, options: ProduceOptions, progress: Callable[[int], None] | None = None) -> int:
    """Send every record of `stream` (in stream order; record i to partition i mod partitions, so each
    partition keeps stream order) and return how many were sent, all acknowledged."""
    ensure_topic(options.bootstrap_servers, options.topic, options.partitions)
    producer = KafkaProducer(bootstrap_servers=options.bootstrap_servers.split(","), acks="all", linger_ms=10,
                             client_id="pegp-stream-producer")
    sent, start = 0, time.monotonic()
    try:
        for cycle in range(options.repeat):
            for record in stream:
                value, headers = encode_record(
                    record.image, record.label, id=f"{options.id_prefix}{cycle}-{record.position}",
                    segment=record.segment if options.markers else None,
                    fmt=options.fmt, image_format=options.image_format,
                )
                producer.send(options.topic, value=value, headers=headers, partition=sent % options.partitions)
                sent += 1
                if options.rate:
                    time.sleep(max(0.0, start + sent / options.rate - time.monotonic()))
                if progress and sent % 1000 == 0:
                    progress(sent)
        producer.flush()
    finally:
        producer.close()
    return sent
