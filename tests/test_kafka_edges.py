"""Kafka edge cases against the real embedded broker (Tansu): a log lost under the daemon (broker restart),
compressed topics written by librdkafka, and transactional producers."""

from __future__ import annotations

import json
import threading

import pytest
from conftest import digits_segment  # noqa: F401 - keeps conftest's fixtures importable here
from daemon_support import daemon_config, latest_state, produce_digits, typed, wait_for

from pegp_stream.daemon import Daemon, record_id_hash
from pegp_stream.stream.broker import EmbeddedBroker, free_port
from pegp_stream.stream.source import OffsetOutOfRange


def digest(ids) -> int:
    return sum(record_id_hash(i) for i in ids) % 2**64


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


def _run_catching(daemon: Daemon):
    try:
        return daemon.run()
    except Exception as exc:  # the test inspects it
        return exc


def test_dead_letter_topic_is_created_like_the_input(tmp_path):
    from kafka import KafkaProducer
    from kafka.admin import KafkaAdminClient

    from pegp_stream.stream.produce import ensure_topic

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
