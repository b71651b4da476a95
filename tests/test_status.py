"""The daemon's published status (pegp_stream/serving/status.py): metrics and the HTTP routes read that status and
nothing else of the daemon, and a published status never changes under a reader."""

from __future__ import annotations

import dataclasses
import time
from types import MappingProxyType

import httpx
import pytest
from daemon_support import daemon_config, typed

from pegp_stream.checkpoint import CheckpointStore
from pegp_stream.config import HttpConfig
from pegp_stream.daemon import Daemon
from pegp_stream.serving.app import HttpServer, create_app
from pegp_stream.serving.snapshot import SnapshotPublisher
from pegp_stream.serving.status import DaemonStatus, Durations


def a_status(**changes) -> DaemonStatus:
    """A status as a daemon on partitions 0 and 1 of topic `t` might publish it."""
    status = DaemonStatus(
        paradigm="lora", backbone="vit_test", consumed=MappingProxyType({0: 30, 1: 12}), learned=40, updates=5,
        boundaries=MappingProxyType({"marker": 2, "operator": 1}), boundary_positions=(16, 32, 40),
        dead_letters=MappingProxyType({"bad_image": 2}), ranks=MappingProxyType({"blocks.0": 7}),
        prequential_cumulative=0.625, prequential_window=500, prequential_windowed=0.75,
        segment_accuracy=MappingProxyType({0: 0.5, 1: 0.875}), curve=((20, 0.5, 0.5), (40, 0.75, 0.625)),
        offsets=MappingProxyType({0: 30, 1: 12}), lag=MappingProxyType({0: 3, 1: 0}),
        offset_resets=MappingProxyType({1: 1}), throughput=12.5, last_loss=0.25,
        update_durations=Durations().observed(0.003).observed(40.0), last_consolidation_seconds=1.5,
        last_checkpoint=MappingProxyType({"time": 1700000000.0, "seconds": 0.125, "bytes": 2048.0}),
        checkpoint_failures=3, checkpoint_problem=None, dead_letters_unconfirmed=4, heartbeat=time.monotonic(),
        connected=True, broker_answered_at=time.monotonic(), last_learned_at=time.monotonic(),
        caught_up_at=time.monotonic(), topic="t", bootstrap_servers="b:9092", broker_silent_after_s=1.5,
        stall_after_s=60.0)
    return dataclasses.replace(status, **changes)


class Handle:
    """A learner as the HTTP side sees it (status.DaemonHandle): a status, checkpoint files, boundary requests."""

    def __init__(self, status: DaemonStatus, store: CheckpointStore) -> None:
        self.status, self.store, self.boundaries = status, store, 0

    def request_boundary(self) -> None:
        self.boundaries += 1


@pytest.fixture
def served(tmp_path):
    handle = Handle(a_status(), CheckpointStore(tmp_path / "checkpoints"))
    app = create_app(HttpConfig(boundary_token="token", stall_after_s=60.0), SnapshotPublisher(), daemon=handle)
    server = HttpServer(app, "127.0.0.1", 0).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield handle, client
    server.stop()


def test_the_routes_answer_from_the_published_status(served):
    handle, client = served
    assert client.get("/v1/status").json() == {
        "version": 0, "curve": [[20, 0.5, 0.5], [40, 0.75, 0.625]], "boundaries": [16, 32, 40],
        "segment_accuracy": {"0": 0.5, "1": 0.875}, "ranks": {"blocks.0": 7}, "throughput": 12.5,
        "lag": {"0": 3, "1": 0}, "records_learned": 40, "dead_letters": {"bad_image": 2}}
    model = client.get("/v1/model").json()
    assert {key: model[key] for key in ("paradigm", "backbone", "records_learned", "updates", "lag", "offsets",
                                        "last_checkpoint_time")} == {
        "paradigm": "lora", "backbone": "vit_test", "records_learned": 40, "updates": 5, "lag": {"0": 3, "1": 0},
        "offsets": {"0": 30, "1": 12}, "last_checkpoint_time": 1700000000.0}
    assert client.post("/v1/boundary", headers={"Authorization": "Bearer token"}).status_code == 202
    assert handle.boundaries == 1
    assert client.get("/healthz").json() == {"status": "ok"}
    handle.status = a_status(heartbeat=time.monotonic() - 61.0)  # published whole: the next request sees it
    assert client.get("/healthz").status_code == 503


def test_the_metrics_are_the_published_status(served):
    _, client = served
    text = client.get("/metrics").text
    for line in ('pegp_samples_consumed_total{partition="0"} 30.0', "pegp_samples_learned_total 40.0",
                 "pegp_updates_total 5.0", 'pegp_boundaries_total{cause="operator"} 1.0',
                 'pegp_dead_letters_total{reason="bad_image"} 2.0', 'pegp_prequential_accuracy{window="500"} 0.75',
                 'pegp_prequential_accuracy{window="cumulative"} 0.625', 'pegp_basis_rank{space="blocks.0"} 7.0',
                 'pegp_consumer_lag_records{partition="0"} 3.0', "pegp_last_update_loss 0.25",
                 'pegp_update_duration_seconds_bucket{le="0.005"} 1.0',
                 'pegp_update_duration_seconds_bucket{le="30.0"} 1.0',
                 'pegp_update_duration_seconds_bucket{le="+Inf"} 2.0', "pegp_update_duration_seconds_count 2.0",
                 "pegp_update_duration_seconds_sum 40.003", "pegp_last_consolidation_duration_seconds 1.5",
                 "pegp_last_checkpoint_timestamp_seconds 1.7e+09", 'pegp_offset_resets_total{partition="1"} 1.0',
                 "pegp_checkpoint_failures_total 3.0", "pegp_dead_letters_unconfirmed 4.0",
                 "pegp_last_checkpoint_duration_seconds 0.125"):
        assert line in text.splitlines(), line


def test_readiness_is_judged_from_the_status_at_the_time_asked():
    now = time.monotonic()
    assert a_status().not_ready(now) is None
    assert a_status(connected=False).not_ready(now) == "waiting for topic t on b:9092"
    assert a_status(broker_answered_at=now - 2.0).not_ready(now) == "broker b:9092 has not answered for over 2 s"
    assert a_status(checkpoint_problem="disk full").not_ready(now) == "checkpoints failing: disk full"
    stalled = a_status(last_learned_at=now - 61.0, caught_up_at=now - 62.0)
    assert stalled.not_ready(now) == "stalled: records waiting, none learned"
    assert dataclasses.replace(stalled, lag=MappingProxyType({0: 0})).not_ready(now) is None


def test_a_published_status_never_changes_under_its_reader(tmp_path):
    daemon = Daemon(typed(daemon_config(tmp_path, "127.0.0.1:1", "t")))
    before = daemon.status
    with pytest.raises(dataclasses.FrozenInstanceError):
        before.learned = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        before.dead_letters["bad_image"] = 1  # type: ignore[index]
    daemon.stats.dead_letters["bad_image"] += 1  # what the loop does while a scrape reads `before`
    daemon.stats.learned += 3
    assert (before.learned, dict(before.dead_letters)) == (0, {})
    daemon.publish_status()
    assert (daemon.status.learned, dict(daemon.status.dead_letters)) == (3, {"bad_image": 1})
    assert daemon.status.paradigm == daemon.config.learner.pet.kind and before.learned == 0
