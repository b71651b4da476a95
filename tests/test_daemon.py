"""The daemon against the real embedded broker (Tansu): exactly-once learned state, boundaries at markers,
crash and resume, graceful stop, dead letters, broker outages and config errors."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from conftest import digits_segment  # noqa: F401 - keeps conftest's fixtures importable here
from daemon_support import (
    committed_offsets,
    daemon_config,
    dead_letters,
    digest,
    latest_state,
    produce_digits,
    start_process,
    typed,
    wait_for,
)
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from test_conformance import assert_state_equal

from pegp_stream.config import KafkaConfig, to_config
from pegp_stream.daemon import Daemon
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.kafka.source import KafkaSource


def run_to_end(config: dict) -> Daemon:
    daemon = Daemon(typed(config))
    assert daemon.run() == 0
    return daemon


def test_every_record_learned_once_with_boundaries_at_markers(broker, tmp_path, digits_backbone):
    ids = produce_digits(broker.bootstrap_servers, "digits", limit_per_class=30)
    config = daemon_config(tmp_path, broker.bootstrap_servers, "digits", digits_backbone)
    config["learner"]["head"] = {"kind": "ncm"}  # the linear protected head cannot learn new classes here
    daemon = run_to_end(config)
    state = latest_state(tmp_path / "checkpoints")
    stats = state["stats"]
    assert stats["learned"] == len(ids) == 300
    assert int(stats["learned_digest"]) == digest(ids)
    assert stats["boundary_positions"] == [60, 120, 180, 240] and stats["boundaries"] == {"marker": 4}
    assert state["offsets"] == {"0": 300}
    assert committed_offsets(broker.bootstrap_servers, "digits", "pegp-stream-learner", 1) == {0: 300}
    accuracy = daemon.prequential.cumulative
    print(f"prequential accuracy {accuracy:.3f}, per segment {daemon.prequential.segment_accuracy()}")
    assert accuracy > 0.7  # chance is 1/(classes seen so far): 0.5 in the first segment, 0.1 in the last


@pytest.fixture
def reference_run(broker, tmp_path):
    """The uninterrupted run's final learner state on a single-partition stream of 240 records."""
    ids = produce_digits(broker.bootstrap_servers, "crash", limit_per_class=24)
    config = daemon_config(tmp_path / "reference", broker.bootstrap_servers, "crash")
    run_to_end(config)
    return ids, latest_state(tmp_path / "reference" / "checkpoints")


def test_sigkill_at_random_points_then_resume_is_bitwise_equal(broker, tmp_path, reference_run):
    ids, reference = reference_run
    config = daemon_config(tmp_path, broker.bootstrap_servers, "crash")
    rng = random.Random(7)
    kills = 0
    for attempt in range(3):
        process = start_process(config, tmp_path, f"run{attempt}")
        time.sleep(rng.uniform(4.0, 9.0))  # start-up (imports) takes a few seconds; learning the rest
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait()
    final = start_process(config, tmp_path, "final")
    assert final.wait(timeout=300) == 0
    state = latest_state(tmp_path / "checkpoints")
    assert kills >= 1, "no kill landed mid-stream; the test proved nothing"
    assert state["stats"]["learned"] == len(ids) and int(state["stats"]["learned_digest"]) == digest(ids)
    assert_state_equal(reference["learner"], state["learner"])


def test_sigterm_stops_gracefully_and_resume_is_bitwise_equal(broker, tmp_path, reference_run):
    ids, reference = reference_run
    config = daemon_config(tmp_path, broker.bootstrap_servers, "crash", exit_when_idle_s=None)
    process = start_process(config, tmp_path, "first")
    wait_for(lambda: (tmp_path / "checkpoints").is_dir() and any((tmp_path / "checkpoints").iterdir()), 120,
             what="a first checkpoint")
    process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert process.wait(timeout=30) == 0
    print(f"SIGTERM to exit: {time.monotonic() - started:.2f} s")
    stopped = latest_state(tmp_path / "checkpoints")
    assert 0 < stopped["stats"]["learned"] < len(ids), "SIGTERM should land mid-stream"
    final = start_process({**config, "exit_when_idle_s": 1.0}, tmp_path, "final")
    assert final.wait(timeout=300) == 0
    state = latest_state(tmp_path / "checkpoints")
    assert state["stats"]["learned"] == len(ids)
    assert_state_equal(reference["learner"], state["learner"])


def test_source_knows_the_end_from_fetches_where_list_offsets_under_reports(broker):
    """Lag is end offset - learned offset. One producer batch of 100 records: Tansu's ListOffsets answers the
    batch's base offset + 1, so the end must come from the fetch responses' high watermark."""
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    admin.create_topics([NewTopic("lag", 1, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=200, batch_size=1 << 20)
    for i in range(100):
        producer.send("lag", f"record {i}".encode())
    producer.flush()
    producer.close()
    source = KafkaSource(to_config(KafkaConfig, {"bootstrap_servers": broker.bootstrap_servers, "topic": "lag",
                                                 "batch_size": 16, "max_wait_ms": 2000}))
    try:
        assert source.connect({}, stop=lambda: False)
        batch = source.next_batch(stop=lambda: False)
        assert [record.offset for record in batch] == list(range(16))
        assert source.known_ends() == {0: 100}
        assert source.end_offsets(max_age_s=0.0) == {0: 100}  # a fresh ListOffsets does not lower it
    finally:
        source.close()


def test_three_partitions_no_record_lost_or_applied_twice(broker, tmp_path):
    ids = produce_digits(broker.bootstrap_servers, "three", limit_per_class=15, partitions=3, markers=False)
    config = daemon_config(tmp_path, broker.bootstrap_servers, "three")
    for attempt in range(2):
        process = start_process(config, tmp_path, f"run{attempt}")
        time.sleep(5.0 + 1.5 * attempt)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert start_process(config, tmp_path, "final").wait(timeout=300) == 0
    state = latest_state(tmp_path / "checkpoints")
    assert state["stats"]["learned"] == len(ids) == 150
    assert int(state["stats"]["learned_digest"]) == digest(ids)
    assert state["offsets"] == {"0": 50, "1": 50, "2": 50}


def test_bad_records_go_to_the_dead_letter_topic_and_learning_goes_on(broker, tmp_path):
    import base64
    import io

    import numpy as np
    from kafka import KafkaProducer
    from PIL import Image

    from pegp_stream.kafka.produce import ensure_topic

    ensure_topic(broker.bootstrap_servers, "mixed", 1)
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(png, format="PNG")
    good_image = base64.b64encode(png.getvalue()).decode()
    bad = {
        b"{not json": "malformed_json",
        json.dumps({"image": good_image}).encode(): "missing_label",
        json.dumps({"label": 1, "image": base64.b64encode(b"garbage").decode()}).encode(): "undecodable_image",
        json.dumps({"label": 1, "pixels": base64.b64encode(bytes(12)).decode(), "shape": [3, 2, 2]}).encode():
            "bad_shape",
        json.dumps({"label": 1, "image": "A" * 5_000_000}).encode(): "too_large",
        b'{"label": 1, "pixels": [NaN, 1.0], "shape": [1, 2]}': "malformed_json",
    }
    good = [json.dumps({"label": i % 2, "image": good_image, "id": f"g{i}", "extra": {"new": "field"}}).encode()
            for i in range(12)]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=8_000_000)
    values = good[:6] + list(bad) + good[6:]
    for value in values:
        producer.send("mixed", value)
    producer.flush()
    producer.close()
    config = daemon_config(tmp_path, broker.bootstrap_servers, "mixed",
                           decode={"max_record_bytes": 1_000_000})
    daemon = run_to_end(config)
    assert daemon.stats.learned == 12  # unknown fields are ignored, not dead-lettered
    letters = dead_letters(broker.bootstrap_servers, "mixed.dlq", expected=len(bad))
    assert len(letters) == len(bad)
    for letter in letters:
        headers = dict(letter.headers)
        if "pegp.omitted" in headers:  # the 5 MB record: too large to forward, located by its offset
            omitted = headers["pegp.omitted"].decode()
            assert headers["pegp.reason"] == b"too_large" and int(omitted.removeprefix("value=")) > 5_000_000
            continue
        assert headers["pegp.reason"].decode() == bad[letter.value]
        assert headers["pegp.source.topic"] == b"mixed"
        assert int(headers["pegp.source.offset"]) == values.index(letter.value)
    assert daemon.stats.dead_letters == {"malformed_json": 2, "missing_label": 1, "undecodable_image": 1,
                                         "bad_shape": 1, "too_large": 1}


def test_broker_down_at_start_then_up(tmp_path):
    port = free_port()
    config = daemon_config(tmp_path, f"127.0.0.1:{port}", "late", exit_when_idle_s=2.0)
    daemon = Daemon(typed(config))
    thread = threading.Thread(target=daemon.run)
    thread.start()
    time.sleep(3.0)  # the daemon retries with backoff meanwhile
    with EmbeddedBroker(port=port):
        ids = produce_digits(f"127.0.0.1:{port}", "late", limit_per_class=5)
        thread.join(timeout=120)
        assert not thread.is_alive()
    assert daemon.stats.learned == len(ids) and daemon.stats.learned_digest == digest(ids)


def test_broker_restarted_mid_stream_keeps_learned_state(tmp_path):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    config = daemon_config(tmp_path, bootstrap, "restart", exit_when_idle_s=None, kafka={"offset_reset": "earliest"})
    daemon = Daemon(typed(config))
    thread = threading.Thread(target=daemon.run)
    broker = EmbeddedBroker(port=port).start()
    first = produce_digits(bootstrap, "restart", limit_per_class=6, id_prefix="a")
    thread.start()
    wait_for(lambda: daemon.stats.learned == len(first), 120, what="the first part learned")
    learned_state = {k: v.clone() for k, v in daemon.learner.state_dict()["pet"].items()}
    broker.stop()
    time.sleep(2.0)
    broker = EmbeddedBroker(port=port).start()  # memory storage: the restarted broker is empty
    try:
        wait_for(lambda: daemon.source.resets >= 1, 60, what="the daemon noticing the reset log")
        second = produce_digits(bootstrap, "restart", limit_per_class=3, id_prefix="b")
        wait_for(lambda: daemon.stats.learned >= len(first) + len(second), 120, what="the second part learned")
        time.sleep(2.0)  # a late metadata refresh showing the new topic id must not make it read the log again
    finally:
        daemon.request_stop()
        thread.join(timeout=60)
        broker.stop()
    assert daemon.stats.learned == len(first) + len(second), "records of the new log were learned twice"
    assert daemon.stats.learned_digest == digest(first + second)
    moved = [n for n, v in daemon.learner.state_dict()["pet"].items() if not torch.equal(v, learned_state[n])]
    assert moved, "learning went on after the restart from the state learned before it"


def test_bad_config_exits_non_zero_before_touching_kafka(tmp_path):
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pegp_stream.cli", "run", "--set", "learner.pet.kind=bitfit",
                             "--set", "kafka.bootstrap_servers=127.0.0.1:1"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "learner.pet: unknown PET kind 'bitfit'" in result.stderr
    assert "kafka" not in result.stderr.lower().replace("kafka.bootstrap", "")
    print(f"config error reported in {time.monotonic() - started:.1f} s")


def test_task_free_stream_boundaries_come_from_the_detector(broker, tmp_path, digits_backbone):
    """No segment markers: Page-Hinkley on the pre-update loss finds boundaries shortly after true ones.
    Seeded and single-partition, so the indices are golden: it finds the last two of four changes (the
    first ones are missed at its default threshold; issue 5 measures detection on the real streams)."""
    produce_digits(broker.bootstrap_servers, "taskfree", limit_per_class=60, markers=False)
    config = daemon_config(tmp_path, broker.bootstrap_servers, "taskfree", digits_backbone,
                           drift={"detector": "page_hinkley", "min_segment_length": 60, "cooldown": 30})
    config["learner"]["head"] = {"kind": "ncm"}
    daemon = run_to_end(config)
    true_boundaries = [120, 240, 360, 480]
    detected = daemon.stats.boundary_positions
    print(f"detected {detected}, true {true_boundaries}")
    assert daemon.stats.boundaries == {"detector": len(detected)}
    assert all(any(0 <= d - t <= 40 for t in true_boundaries) for d in detected), "a false alarm"
    assert detected == [368, 488]
