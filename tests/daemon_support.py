"""Helpers for daemon tests: a real embedded broker, real records, the daemon in-process or as a process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import yaml
from conftest import TINY_BACKBONE, tiny_pet
from kafka import KafkaConsumer, TopicPartition

from pegp_stream.checkpoint import CheckpointStore
from pegp_stream.config import DaemonConfig, StreamConfig, to_config
from pegp_stream.daemon import Daemon, record_id_hash
from pegp_stream.data.streams import build_stream
from pegp_stream.kafka.produce import ProduceOptions, produce


def daemon_config(tmp_path: Path, bootstrap: str, topic: str, backbone_path: str | None = None, **overrides) -> dict:
    config = {
        "learner": {"backbone": {**TINY_BACKBONE, "checkpoint_path": backbone_path}, "pet": tiny_pet("adapter"),
                    "precision": "fp32", "seed": 0},
        "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "batch_size": 8, "max_wait_ms": 100,
                  "retry_initial_s": 0.2, "retry_max_s": 1.0, "lag_interval_s": 0.5},
        "checkpoint": {"dir": str(tmp_path / "checkpoints"), "every_records": 32, "every_seconds": None},
        "http": {"enabled": False},
        "exit_when_idle_s": 1.0,
    }
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def digest(ids) -> int:
    """The exactly-once digest of these record ids (what the daemon's learned_digest holds)."""
    return sum(record_id_hash(i) for i in ids) % 2**64


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    """The daemon's loop in a thread; on exit it is asked to stop (as SIGTERM does) and joined."""
    thread = threading.Thread(target=daemon.run, daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(60)


def typed(config: dict) -> DaemonConfig:
    return to_config(DaemonConfig, config)


def produce_digits(bootstrap: str, topic: str, limit_per_class: int = 20, partitions: int = 1, markers: bool = True,
                   id_prefix: str = "r", classes_per_segment: int = 2) -> list[str]:
    """Produce a class-incremental digits stream; returns the record ids in stream order."""
    stream = build_stream(StreamConfig(datasets=("digits",), limit_per_class=limit_per_class,
                                       classes_per_segment=classes_per_segment))
    produce(stream, ProduceOptions(topic=topic, bootstrap_servers=bootstrap, partitions=partitions,
                                   markers=markers, id_prefix=id_prefix))
    return [f"{id_prefix}0-{item.position}" for item in stream.items]


def checkpointed_learned(checkpoint_dir: Path) -> int:
    """Records learned as of the newest checkpoint in `checkpoint_dir`; 0 while there is none (yet)."""
    latest = CheckpointStore(checkpoint_dir).load_latest() if checkpoint_dir.is_dir() else None
    return latest.state["stats"]["learned"] if latest else 0


def latest_state(checkpoint_dir: Path) -> dict:
    checkpoint = CheckpointStore(checkpoint_dir).load_latest()
    assert checkpoint is not None, f"no checkpoint in {checkpoint_dir}"
    return checkpoint.state


def start_process(config: dict, tmp_path: Path, name: str = "daemon") -> subprocess.Popen:
    """`pegp-stream run --config FILE` as its own process (so SIGKILL is a real crash)."""
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = open(tmp_path / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pegp_stream.cli", "run", "--config", str(path)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def committed_offsets(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int | None]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return {p: consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        consumer.close()


def dead_letters(bootstrap: str, topic: str, expected: int, timeout: float = 20.0) -> list:
    """The records of every partition of `topic` (at least `expected`, or what came within `timeout`); none
    while the topic does not exist (a consumer asking for its metadata could make the broker create it)."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        if topic not in admin.list_topics():
            return []
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(partitions)
    records, deadline = [], time.monotonic() + timeout
    while len(records) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
    consumer.close()
    return records
