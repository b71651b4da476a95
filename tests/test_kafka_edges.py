"""Kafka edge cases against the real embedded broker (Tansu): a log lost under the daemon (broker restart),
compressed topics written by librdkafka, and transactional producers."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from conftest import digits_segment  # noqa: F401 - keeps conftest's fixtures importable here
from daemon_support import (
    checkpointed_learned,
    daemon_config,
    digest,
    latest_state,
    produce_digits,
    start_process,
    typed,
    wait_for,
)

from pegp_stream.daemon import Daemon
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.kafka.source import OffsetOutOfRange


@pytest.fixture
def restarted_broker(tmp_path):
    """A broker, a first stream of 60 records learned to its end (checkpoint at offset 60), then the broker
    restarted on the same port (memory storage: the log is gone) and 80 fresh records produced: the new log
    reaches past the checkpointed offset, so resuming there would silently skip 60 of them."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    with EmbeddedBroker(port=port):
        first = produce_digits(bootstrap, "lost", limit_per_class=6, id_prefix="a")
        assert Daemon(typed(daemon_config(tmp_path, bootstrap, "lost"))).run() == 0
    assert latest_state(tmp_path / "checkpoints")["offsets"] == {"0": 60}
    with EmbeddedBroker(port=port) as broker:
        second = produce_digits(bootstrap, "lost", limit_per_class=8, id_prefix="b")
        yield broker, first, second


def test_lost_log_with_offset_reset_fail_stops_and_checkpoints_nothing_past_it(restarted_broker, tmp_path):
    broker, first, _ = restarted_broker
    daemon = Daemon(typed(daemon_config(tmp_path, broker.bootstrap_servers, "lost")))  # fail is the default
    with pytest.raises(OffsetOutOfRange) as raised:
        daemon.run()
    message = str(raised.value)
    print(message)
    assert "\n" not in message
    for part in ("partition 0", "offset 60", "replaced", "log start 0, end ", "kafka.offset_reset=fail"):
        assert part in message  # the end: Tansu's ListOffsets answers the last producer batch's base offset + 1
    state = latest_state(tmp_path / "checkpoints")
    assert state["offsets"] == {"0": 60} and state["stats"]["learned"] == len(first)


def test_lost_log_with_offset_reset_earliest_learns_the_new_log_from_its_start(restarted_broker, tmp_path):
    broker, first, second = restarted_broker
    config = daemon_config(tmp_path, broker.bootstrap_servers, "lost", kafka={"offset_reset": "earliest"})
    daemon = Daemon(typed(config))
    assert daemon.run() == 0
    assert daemon.source.resets_by_partition == {0: 1}
    state = latest_state(tmp_path / "checkpoints")
    assert state["stats"]["learned"] == len(first) + len(second)
    assert int(state["stats"]["learned_digest"]) == digest(first + second)
    assert state["offsets"] == {"0": 80}


def test_lost_log_with_offset_reset_latest_skips_to_the_new_log_end(restarted_broker, tmp_path):
    broker, first, _ = restarted_broker
    config = daemon_config(tmp_path, broker.bootstrap_servers, "lost", kafka={"offset_reset": "latest"})
    daemon = Daemon(typed(config))
    assert daemon.run() == 0
    assert daemon.source.resets_by_partition == {0: 1}
    later = produce_digits(broker.bootstrap_servers, "lost", limit_per_class=1, id_prefix="c")  # after the reset
    assert Daemon(typed(config)).run() == 0
    state = latest_state(tmp_path / "checkpoints")
    assert int(state["stats"]["learned_digest"]) == digest(first + later)
    assert state["offsets"] == {"0": 90}


@pytest.mark.parametrize("setting", ["fail", "earliest"])
def test_log_lost_while_running_is_noticed_and_followed(tmp_path, setting):
    """The broker restarts under a running daemon and the new log outgrows its position before it reconnects:
    with fail the daemon stops (nothing of the new log learned); with earliest it learns the new log whole."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    config = daemon_config(tmp_path, bootstrap, "running", exit_when_idle_s=None, kafka={"offset_reset": setting})
    daemon = Daemon(typed(config))
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_run_catching(daemon)))
    with EmbeddedBroker(port=port):
        first = produce_digits(bootstrap, "running", limit_per_class=3, id_prefix="a")
        thread.start()
        wait_for(lambda: daemon.stats.learned == len(first), 120, what="the first part learned")
    with EmbeddedBroker(port=port):
        second = produce_digits(bootstrap, "running", limit_per_class=6, id_prefix="b")  # 60 records > 30
        if setting == "earliest":
            wait_for(lambda: daemon.stats.learned == len(first + second), 120, what="the new log learned")
            daemon.request_stop()
        thread.join(timeout=120)
    if setting == "fail":
        assert isinstance(outcome[0], OffsetOutOfRange), outcome
        assert daemon.stats.learned_digest == digest(first)
    else:
        assert outcome == [0] and daemon.stats.learned_digest == digest(first + second)
        assert daemon.source.resets >= 1


def test_a_broker_restarted_while_the_daemon_was_stopped_is_read_from_the_new_log_start_once(tmp_path):
    """The daemon (a process) learns a first log and is frozen by SIGSTOP; the broker restarts (memory storage: a
    new log of the same name, a new topic id) and takes more records than the daemon's position before SIGCONT.
    With earliest every record of the new log is learned exactly once: nothing is read at the old position
    while the daemon's cached metadata still names the old log."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    config = daemon_config(tmp_path, bootstrap, "frozen", exit_when_idle_s=10.0, kafka={"offset_reset": "earliest"},
                           checkpoint={"every_records": 1})
    with EmbeddedBroker(port=port):
        first = produce_digits(bootstrap, "frozen", limit_per_class=3, id_prefix="a")
        daemon = start_process(config, tmp_path)
        wait_for(lambda: checkpointed_learned(tmp_path / "checkpoints") == len(first), 180, what="the first log")
        os.kill(daemon.pid, signal.SIGSTOP)
    with EmbeddedBroker(port=port):
        second = produce_digits(bootstrap, "frozen", limit_per_class=6, id_prefix="b")  # 60 records > 30
        os.kill(daemon.pid, signal.SIGCONT)
        assert daemon.wait(timeout=180) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    state = latest_state(tmp_path / "checkpoints")
    assert state["stats"]["learned"] == len(first) + len(second)
    assert int(state["stats"]["learned_digest"]) == digest(first + second)
    assert state["offsets"] == {"0": len(second)}


def _run_catching(daemon: Daemon):
    try:
        return daemon.run()
    except Exception as exc:  # the test inspects it
        return exc


def test_dead_letter_topic_is_created_like_the_input(tmp_path):
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient

    from pegp_stream.kafka.produce import ensure_topic

    with EmbeddedBroker(port=free_port()) as broker:
        ensure_topic(broker.bootstrap_servers, "input", 2)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
        producer.send("input", b"{not json", partition=0)
        producer.send("input", json.dumps({"no": "label"}).encode(), partition=1)
        producer.close()
        daemon = Daemon(typed(daemon_config(tmp_path, broker.bootstrap_servers, "input")))
        assert daemon.run() == 0
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
        described = {t["name"]: t for t in admin.describe_topics(["input", "input.dlq"])}
        admin.close()
    assert len(described["input.dlq"]["partitions"]) == len(described["input"]["partitions"]) == 2
    assert sum(daemon.stats.dead_letters.values()) == 2


# ---------------------------------------------------------------------- librdkafka producers


def confluent_produce(bootstrap: str, topic: str, settings: dict, id_prefix: str, limit_per_class: int = 2,
                      transaction: str | None = None) -> list[str]:
    """The digits stream through a confluent-kafka (librdkafka) producer with `settings`; returns the ids.
    `transaction`: "commit" or "abort" sends the whole stream in one transaction ended that way."""
    from confluent_kafka import Producer

    from pegp_stream.config import StreamConfig
    from pegp_stream.data.streams import build_stream
    from pegp_stream.inputs.encode import encode_record
    from pegp_stream.kafka.produce import ensure_topic

    ensure_topic(bootstrap, topic, 1)
    stream = build_stream(StreamConfig(datasets=("digits",), limit_per_class=limit_per_class, classes_per_segment=2))
    producer = Producer({"bootstrap.servers": bootstrap, **settings})
    if transaction:
        producer.init_transactions(30)
        producer.begin_transaction()
    ids = []
    for record in stream:
        ids.append(f"{id_prefix}-{record.position}")
        value, headers = encode_record(record.image, record.label, id=ids[-1], segment=record.segment)
        producer.produce(topic, value=value, headers=headers)
    assert producer.flush(30) == 0
    if transaction == "commit":
        producer.commit_transaction(30)
    elif transaction == "abort":
        producer.abort_transaction(30)
    return ids


@pytest.fixture(scope="module")
def module_broker():
    with EmbeddedBroker(port=free_port()) as broker:
        yield broker


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_every_compression_codec_from_librdkafka_is_learned_exactly(module_broker, tmp_path, codec):
    import kafka.codec

    assert getattr(kafka.codec, f"has_{codec}")(), f"the {codec} codec library is a dependency"
    bootstrap = module_broker.bootstrap_servers
    ids = confluent_produce(bootstrap, codec, {"compression.type": codec, "linger.ms": 50}, codec)
    daemon = Daemon(typed(daemon_config(tmp_path, bootstrap, codec)))
    assert daemon.run() == 0
    state = latest_state(tmp_path / "checkpoints")
    assert state["stats"]["learned"] == len(ids) == 20
    assert int(state["stats"]["learned_digest"]) == digest(ids)
    assert state["offsets"] == {"0": 20}


def test_a_fetch_that_cannot_be_decoded_stops_the_daemon_with_a_clear_error(module_broker, tmp_path, monkeypatch):
    """Without the lz4 library (hidden from the daemon process), kafka-python spins inside poll() on an lz4
    batch, at full CPU and deaf to SIGTERM; the daemon must stop instead and say why."""
    import os
    import subprocess

    from daemon_support import start_process

    bootstrap = module_broker.bootstrap_servers
    confluent_produce(bootstrap, "lz4-unreadable", {"compression.type": "lz4"}, "u")
    hide = tmp_path / "hide-lz4"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['lz4'] = sys.modules['lz4.frame'] = None\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")]))
    process = start_process(daemon_config(tmp_path, bootstrap, "lz4-unreadable", exit_when_idle_s=None), tmp_path)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the daemon hung on an undecodable fetch") from None
    log_text = (tmp_path / "daemon.log").read_text()
    assert code == 2  # a PegpError from the daemon: one line, exit 2
    assert "cannot decode records of topic 'lz4-unreadable'" in log_text and "lz4" in log_text


def test_transactions_leave_no_lag_and_the_idle_exit_fires(module_broker, tmp_path):
    """A transactional producer commits, aborts, commits. Each transaction ends with a control record (a commit
    or abort marker) that takes an offset but is never returned to the consumer: the learned position must
    move past it, or lag stays at 1, /readyz says "stalled" and exit_when_idle_s never fires."""
    bootstrap = module_broker.bootstrap_servers
    settings = {"transactional.id": "pegp-test", "linger.ms": 20}
    committed = confluent_produce(bootstrap, "tx", settings, "c", transaction="commit")
    aborted = confluent_produce(bootstrap, "tx", settings, "a", transaction="abort")
    last = confluent_produce(bootstrap, "tx", settings, "d", transaction="commit")
    daemon = Daemon(typed(daemon_config(tmp_path, bootstrap, "tx")))  # read_committed by default
    outcome: list = []
    thread = threading.Thread(target=lambda: outcome.append(_run_catching(daemon)))
    thread.start()
    thread.join(timeout=180)
    fired = not thread.is_alive()
    daemon.request_stop()
    thread.join(timeout=60)
    assert fired, "exit_when_idle_s never fired"
    assert outcome == [0]
    assert daemon.cached_lag() == {0: 0}
    state = latest_state(tmp_path / "checkpoints")
    assert state["offsets"] == {"0": 3 * 20 + 3}  # 60 records and 3 markers
    # Tansu 0.6 returns aborted records even to read_committed consumers (Apache Kafka does not): learned
    # here; the digest says exactly which records were learned, each once.
    assert int(state["stats"]["learned_digest"]) == digest(committed + aborted + last)
