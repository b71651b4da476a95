"""Failure modes a production user hits (issue 9), each shown against the real embedded broker, a real HTTP
client and real processes: a fresh served model, exactly-once on error paths, dead letters that always fit,
marker boundaries over several partitions, operator boundaries while idle, checkpoints on a full disk,
malformed checkpoints, and health/readiness that mean what they say."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import httpx
import pytest
from conftest import TINY_BACKBONE  # noqa: F401 - keeps conftest's fixtures importable here
from daemon_support import (
    committed_offsets,
    daemon_config,
    dead_letters,
    digest,
    latest_state,
    produce_digits,
    running,
    start_process,
    typed,
    wait_for,
)
from kafka import KafkaProducer

from pegp_stream.checkpoint import CheckpointStore, encode_state
from pegp_stream.config import StreamConfig
from pegp_stream.core.learner import create_learner
from pegp_stream.daemon import Daemon
from pegp_stream.data.streams import build_stream
from pegp_stream.errors import CheckpointError
from pegp_stream.inputs.encode import encode_record
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.kafka.produce import ensure_topic


def serving(config: dict, port: int, **http) -> dict:
    return {**config, "http": {"enabled": True, "port": port, **http}}


# ------------------------------------------------------------------ the served model stays fresh


def test_served_model_catches_up_when_the_stream_pauses(broker, tmp_path):
    """40 records, snapshots every 1000 updates: before, the served model stayed at the last boundary."""
    ids = produce_digits(broker.bootstrap_servers, "fresh", limit_per_class=4)
    port = free_port()
    config = serving(daemon_config(tmp_path, broker.bootstrap_servers, "fresh", exit_when_idle_s=None), port,
                     snapshot_every_updates=1000)
    daemon = Daemon(typed(config))
    with running(daemon):
        wait_for(lambda: daemon.stats.learned == len(ids), 120, what="the stream learned")
        url = f"http://127.0.0.1:{port}/v1/model"
        model = wait_for(lambda: (m := httpx.get(url).json())["records_in_model"] == len(ids) and m, 10,
                         what="the served model to hold every learned record")
        assert model["records_learned"] == len(ids) and model["version"] == model["updates"]
        assert sorted(int(c) for c in model["classes"]) == list(range(10))


# ------------------------------------------------------------------ exactly-once when an error escapes


class FailingLearner:
    """The real learner, raising on its `fail_at`-th update (an unexpected bug half-way through a batch)."""

    def __init__(self, learner, fail_at: int) -> None:
        self._learner, self._calls, self._fail_at = learner, 0, fail_at

    def __getattr__(self, name):
        return getattr(self._learner, name)

    def learn_many(self, images, labels):
        self._calls += 1
        if self._calls == self._fail_at:
            raise RuntimeError("injected failure")
        return self._learner.learn_many(images, labels)


def test_an_unexpected_error_writes_no_checkpoint_and_a_restart_applies_each_record_once(broker, tmp_path):
    ids = produce_digits(broker.bootstrap_servers, "boom", limit_per_class=6)
    config = typed(daemon_config(tmp_path, broker.bootstrap_servers, "boom"))
    # batch 8 holds a marker change: two runs
    failing = Daemon(config, learner=FailingLearner(create_learner(config.learner), fail_at=7))
    with pytest.raises(RuntimeError, match="injected"):
        failing.run()
    state = latest_state(tmp_path / "checkpoints")
    assert state["stats"]["learned"] < 6 * 8, "no checkpoint after the failure"
    assert Daemon(config).run() == 0
    final = latest_state(tmp_path / "checkpoints")
    assert final["stats"]["learned"] == len(ids) and int(final["stats"]["learned_digest"]) == digest(ids)


# ------------------------------------------------------------------ dead letters always fit


def test_oversized_poison_records_are_dead_lettered_trimmed_and_the_stream_goes_on(broker, tmp_path):
    """A 999 KB malformed value with a 70 KB header, and a bad value with a 1.2 MB header: before, the dead
    letter was too large to send and the daemon crash-looped at that offset."""
    ensure_topic(broker.bootstrap_servers, "poison", 1)
    produce_digits(broker.bootstrap_servers, "poison", limit_per_class=2, id_prefix="a")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, max_request_size=4_000_000)
    producer.send("poison", b"{" + b"x" * 999_000, headers=[("big", b"h" * 70_000)])
    producer.send("poison", b"not json", headers=[("huge", b"h" * 1_200_000)])
    producer.flush()
    producer.close()
    ids = produce_digits(broker.bootstrap_servers, "poison", limit_per_class=2, id_prefix="b")
    daemon = Daemon(typed(daemon_config(tmp_path, broker.bootstrap_servers, "poison",
                                        decode={"max_record_bytes": 2_000_000})))
    assert daemon.run() == 0
    assert daemon.stats.learned == 2 * len(ids) and dict(daemon.stats.dead_letters) == {"malformed_json": 2}
    letters = dead_letters(broker.bootstrap_servers, "poison.dlq", expected=2)
    assert len(letters) == 2
    first, second = (dict(letter.headers) for letter in letters)
    assert len(letters[0].value) == 999_001 and "big" not in first
    assert first["pegp.omitted"] == b"headers=1/70011"
    assert letters[1].value == b"not json" and second["pegp.omitted"] == b"headers=1/1200012"
    assert [int(h["pegp.source.offset"]) for h in (first, second)] == [20, 21]


def test_dead_letter_topic_may_not_be_the_input_topic():
    result = subprocess.run([sys.executable, "-m", "pegp_stream.cli", "run", "--set", "kafka.topic=t",
                             "--set", "kafka.dead_letter_topic=t"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "kafka.dead_letter_topic: 't' is the input topic" in result.stderr


# ------------------------------------------------------------------ marker boundaries


def test_three_partitions_give_exactly_the_true_marker_boundaries(broker, tmp_path):
    """Records of one segment spread over 3 partitions with equal timestamps: before, late records of the
    previous segment made extra boundaries (5 segments gave 6 consolidations)."""
    ids = produce_digits(broker.bootstrap_servers, "markers3", limit_per_class=15, partitions=3)
    daemon = Daemon(typed(daemon_config(tmp_path, broker.bootstrap_servers, "markers3")))
    assert daemon.run() == 0
    assert daemon.stats.learned == len(ids) and dict(daemon.stats.boundaries) == {"marker": 4}


def test_a_marker_on_every_record_is_debounced(broker, tmp_path):
    ensure_topic(broker.bootstrap_servers, "flip", 1)
    records = list(build_stream(StreamConfig(datasets=("digits",), limit_per_class=30)))[:60]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for i, record in enumerate(records):
        value, headers = encode_record(record.image, record.label, id=f"f{i}", segment=i)
        producer.send("flip", value, headers=headers)
    producer.flush()
    producer.close()
    daemon = Daemon(typed(daemon_config(tmp_path, broker.bootstrap_servers, "flip")))
    assert daemon.run() == 0
    assert daemon.stats.learned == 60 and daemon.stats.boundaries["marker"] == 5  # one per min_marker_gap (10)


# ------------------------------------------------------------------ operator boundaries while idle


def test_operator_boundary_while_idle_is_applied_and_survives_sigterm(broker, tmp_path):
    ids = produce_digits(broker.bootstrap_servers, "idle", limit_per_class=3)
    port = free_port()
    config = serving(daemon_config(tmp_path, broker.bootstrap_servers, "idle", exit_when_idle_s=None), port,
                     boundary_token="s3cret")
    process = start_process(config, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _get(f"{url}/v1/model").get("records_learned") == len(ids), 180, what="stream learned")
        answer = httpx.post(f"{url}/v1/boundary", headers={"Authorization": "Bearer s3cret"})
        assert answer.status_code == 202
        wait_for(lambda: 'pegp_boundaries_total{cause="operator"} 1.0' in httpx.get(f"{url}/metrics").text, 10,
                 what="the operator boundary applied while idle")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    assert latest_state(tmp_path / "checkpoints")["stats"]["boundaries"]["operator"] == 1


def _get(url: str) -> dict:
    try:
        return httpx.get(url, timeout=2).json()
    except httpx.HTTPError:
        return {}


# ------------------------------------------------------------------ checkpoints on a full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 16 KiB tmpfs: too small for one checkpoint. Needs root (CI and the dev machines run as root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_keeps_learning_and_serving_and_retries_the_checkpoint(broker, tmp_path, small_disk):
    ids = produce_digits(broker.bootstrap_servers, "full", limit_per_class=4)
    (small_disk / "checkpoints").mkdir()
    (small_disk / "checkpoints" / "ckpt-000000000001.safetensors.partial").write_bytes(b"x" * 100)
    port = free_port()
    config = serving(daemon_config(tmp_path, broker.bootstrap_servers, "full", exit_when_idle_s=None), port)
    config["checkpoint"] = {"dir": str(small_disk / "checkpoints"), "every_records": 8, "every_seconds": None}
    daemon = Daemon(typed(config))
    assert not list((small_disk / "checkpoints").iterdir()), "a stale partial file is removed at start"
    with running(daemon):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: daemon.stats.learned == len(ids), 120, what="learning despite failing checkpoints")
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and "checkpoints failing" in ready.json()["status"]
        assert "No space left" in ready.json()["status"]
        metrics = httpx.get(f"{url}/metrics").text
        assert "pegp_checkpoint_failures_total 0.0" not in metrics and "pegp_checkpoint_failures_total" in metrics
        assert httpx.post(f"{url}/v1/predict", json={"instances": [{"pixels": "AAAAAA==", "shape": [2, 2]}]}) \
            .status_code == 200
        assert not list((small_disk / "checkpoints").iterdir())  # no partial file left behind
        assert committed_offsets(broker.bootstrap_servers, "full", "pegp-stream-learner", 1) == {0: None}
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        wait_for(lambda: daemon.checkpoint_problem is None, 90, what="the retried checkpoint")
        assert httpx.get(f"{url}/readyz").status_code == 200
        subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)  # then read-only
        more = produce_digits(broker.bootstrap_servers, "full", limit_per_class=2, id_prefix="m")
        wait_for(lambda: daemon.stats.learned == len(ids) + len(more), 120, what="learning on a read-only disk")
        wait_for(lambda: "Read-only" in (daemon.checkpoint_problem or ""), 30, what="a read-only failure")
        assert "Read-only" in httpx.get(f"{url}/readyz").text
        assert committed_offsets(broker.bootstrap_servers, "full", "pegp-stream-learner", 1) == {0: len(ids)}
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
        wait_for(lambda: daemon.checkpoint_problem is None, 90, what="the retried checkpoint")
    state = latest_state(small_disk / "checkpoints")
    assert state["stats"]["learned"] == len(ids) + len(more)
    assert int(state["stats"]["learned_digest"]) == digest(ids + more)


# ------------------------------------------------------------------ malformed checkpoints


def _checkpoints(tmp_path, broker) -> tuple[dict, CheckpointStore]:
    produce_digits(broker.bootstrap_servers, "ckpt", limit_per_class=2)
    config = daemon_config(tmp_path, broker.bootstrap_servers, "ckpt")
    assert Daemon(typed(config)).run() == 0
    return config, CheckpointStore(tmp_path / "checkpoints")


@pytest.mark.parametrize("damage", ["missing tensor", "nested state", "non-JSON state", "directory"])
def test_a_malformed_checkpoint_falls_back_to_the_previous_intact_one(broker, tmp_path, damage):
    config, store = _checkpoints(tmp_path, broker)
    good = store.load_latest()
    state = good.state
    path = store.directory / f"ckpt-{good.sequence + 1:012d}.safetensors"
    if damage == "missing tensor":
        state["learner"]["pet"].popitem()
        path.write_bytes(encode_state(state))
    elif damage == "nested state":
        path.write_bytes(encode_state({"format": 1, "learner": [state["learner"]]}))
    elif damage == "non-JSON state":
        from safetensors.torch import save

        path.write_bytes(save({}, metadata={"format": "pegp-stream/1", "state": "{not json", "sha256": "0"}))
    else:
        path.mkdir()
    daemon = Daemon(typed(config))
    daemon.restore()
    assert daemon.stats.learned == good.state["stats"]["learned"] == 20


def test_no_usable_checkpoint_refuses_to_start_fresh(broker, tmp_path):
    config, store = _checkpoints(tmp_path, broker)
    for path in store.paths():
        path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="none of the checkpoints"):
        Daemon(typed(config)).restore()


# ------------------------------------------------------------------ health and readiness


def test_waiting_for_a_topic_is_alive_but_not_ready(broker, tmp_path):
    port = free_port()
    config = serving(daemon_config(tmp_path, broker.bootstrap_servers, "later", exit_when_idle_s=None), port,
                     stall_after_s=1.0)
    daemon = Daemon(typed(config))
    url = f"http://127.0.0.1:{port}"
    with running(daemon):
        wait_for(lambda: _get(f"{url}/healthz"), 60, what="the server")
        wait_for(lambda: daemon.source.consumer is None and daemon.heartbeat > 0, 5, what="connect attempts")
        threading.Event().wait(3.0)  # well past stall_after_s
        assert httpx.get(f"{url}/healthz").status_code == 200
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["status"].startswith("waiting for topic later")
        ids = produce_digits(broker.bootstrap_servers, "later", limit_per_class=2)
        wait_for(lambda: daemon.stats.learned == len(ids), 120, what="the late topic learned")
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 10, what="ready once connected")


def test_records_after_a_long_idle_do_not_read_as_stalled(broker, tmp_path):
    ids = produce_digits(broker.bootstrap_servers, "pause", limit_per_class=2, id_prefix="a")
    port = free_port()
    config = serving(daemon_config(tmp_path, broker.bootstrap_servers, "pause", exit_when_idle_s=None), port,
                     stall_after_s=1.0)
    daemon = Daemon(typed(config))
    url = f"http://127.0.0.1:{port}"
    with running(daemon):
        wait_for(lambda: daemon.stats.learned == len(ids), 120, what="the first part")
        threading.Event().wait(2.5)  # idle well past stall_after_s
        more = produce_digits(broker.bootstrap_servers, "pause", limit_per_class=6, id_prefix="b")
        answers = []
        while daemon.stats.learned < len(ids) + len(more):
            answers.append(httpx.get(f"{url}/readyz").json()["status"])
        assert answers and not [a for a in answers if a.startswith("stalled")]


def test_unreachable_broker_is_not_ready_and_sigint_exits_promptly(tmp_path):
    port, http_port = free_port(), free_port()
    broker = EmbeddedBroker(port=port).start()
    bootstrap = f"127.0.0.1:{port}"
    try:
        ids = produce_digits(bootstrap, "gone", limit_per_class=2)
        config = serving(daemon_config(tmp_path, bootstrap, "gone", exit_when_idle_s=None), http_port)
        process = start_process(config, tmp_path)
        url = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: _get(f"{url}/v1/model").get("records_learned") == len(ids), 180, what="stream learned")
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 10, what="ready")
    finally:
        broker.stop()
    status = wait_for(lambda: (r := httpx.get(f"{url}/readyz")).status_code == 503 and r.json()["status"], 30,
                      what="not ready without a broker")
    assert status.startswith(f"broker {bootstrap} has not answered")
    process.send_signal(signal.SIGINT)
    try:
        code = process.wait(timeout=15)  # was 33 s: a bounded wait, the point is that it ends
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    assert code == 0
    assert json.loads(json.dumps(latest_state(tmp_path / "checkpoints")["stats"]))["learned"] == len(ids)


def test_dead_letters_are_written_once_across_sigkills(broker, tmp_path):
    """Bad records between good ones, the daemon killed after some letters were delivered but before its next
    checkpoint: before, the restarted run wrote those letters again (33 entries for 28 bad records)."""
    ensure_topic(broker.bootstrap_servers, "bad", 1)
    good = produce_digits(broker.bootstrap_servers, "bad", limit_per_class=6, id_prefix="g")
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers)
    for i in range(12):
        producer.send("bad", f"{{not json {i}".encode())
    producer.flush()
    producer.close()
    more = produce_digits(broker.bootstrap_servers, "bad", limit_per_class=6, id_prefix="h")
    config = daemon_config(tmp_path, broker.bootstrap_servers, "bad", exit_when_idle_s=None)
    config["checkpoint"] = {**config["checkpoint"], "every_records": 1000}  # none before the kill
    process = start_process(config, tmp_path, "killed")
    try:
        wait_for(lambda: len(dead_letters(broker.bootstrap_servers, "bad.dlq", expected=1, timeout=1)) >= 1, 180,
                 interval=0.2, what="some dead letters delivered")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert CheckpointStore(tmp_path / "checkpoints").load_latest() is None, "the kill should land before one"
    assert start_process({**config, "exit_when_idle_s": 1.0}, tmp_path, "final").wait(timeout=300) == 0
    letters = dead_letters(broker.bootstrap_servers, "bad.dlq", expected=13, timeout=10)
    offsets = [int(dict(letter.headers)["pegp.source.offset"]) for letter in letters]
    assert sorted(offsets) == list(range(len(good), len(good) + 12))
    final = latest_state(tmp_path / "checkpoints")["stats"]
    assert final["dead_letters"] == {"malformed_json": 12} and final["learned"] == len(good) + len(more)


def test_a_dead_letter_that_could_not_be_queued_is_sent_by_a_later_flush(tmp_path):
    """The broker is down when a record is dead-lettered (the send fails at once, nothing is queued): a later
    flush sends it, and until then no flush reports it delivered."""
    from types import SimpleNamespace

    from pegp_stream.config import KafkaConfig, to_config
    from pegp_stream.kafka.dead_letter import DeadLetterSink

    port = free_port()
    sink = DeadLetterSink(to_config(KafkaConfig, {"bootstrap_servers": f"127.0.0.1:{port}", "topic": "down"}))
    record = SimpleNamespace(topic="down", partition=0, offset=7, key=None, value=b"{bad", headers=[])
    sink.send(record, "malformed_json", "not JSON")
    assert sink.unconfirmed == 1 and not sink.flush(timeout_s=1)
    with EmbeddedBroker(port=port) as embedded:
        ensure_topic(embedded.bootstrap_servers, "down.dlq", 1)
        wait_for(lambda: sink.flush(timeout_s=2), 60, interval=0.5, what="the letter sent by a later flush")
        letters = dead_letters(embedded.bootstrap_servers, "down.dlq", expected=1)
        sink.close()
    assert [(letter.value, dict(letter.headers)["pegp.source.offset"]) for letter in letters] == [(b"{bad", b"7")]
