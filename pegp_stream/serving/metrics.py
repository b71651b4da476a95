"""Every Prometheus metric, declared once, on an explicit registry. Learner and stream state is read at
scrape time by a collector from the daemon's published status (status.py; no bookkeeping on the hot path);
request metrics are instruments."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from pegp_stream import __version__

if TYPE_CHECKING:
    from pegp_stream.serving.snapshot import SnapshotPublisher
    from pegp_stream.serving.status import DaemonHandle, DaemonStatus, Durations


class ServingMetrics:
    """Instruments updated by the HTTP layer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("pegp_predict_requests", "Prediction requests by HTTP status code", ["code"],
                                registry=registry)
        self.duration = Histogram("pegp_predict_duration_seconds", "Prediction request latency", registry=registry,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class StateCollector(Collector):
    """Reads the daemon's published status and the newest snapshot when Prometheus scrapes."""

    def __init__(self, daemon: DaemonHandle | None, snapshots: SnapshotPublisher) -> None:
        self.daemon = daemon
        self.snapshots = snapshots

    def collect(self) -> Iterator:
        yield InfoMetricFamily("pegp_build", "Build information", value={"version": __version__})
        predictor = self.snapshots.current
        version = GaugeMetricFamily("pegp_model_version", "Version (learner updates) of the served snapshot")
        version.add_metric([], predictor.info.version if predictor else 0)
        yield version
        yield _gauge("pegp_model_records_learned", "Records learned into the served snapshot", None,
                     {"": predictor.info.records_learned if predictor else 0})
        if self.daemon is not None:
            yield from self._learner_metrics(self.daemon.status)

    def _learner_metrics(self, status: DaemonStatus) -> Iterator:
        yield _counter("pegp_samples_consumed", "Records read from the input topic", "partition",
                       {str(p): n for p, n in status.consumed.items()})
        yield _counter("pegp_samples_learned", "Records applied to the learned state", None, {"": status.learned})
        yield _counter("pegp_updates", "Optimizer steps", None, {"": status.updates})
        yield _counter("pegp_boundaries", "Drift boundaries (consolidations) by cause", "cause",
                       dict(status.boundaries))
        yield _counter("pegp_dead_letters", "Records sent to the dead-letter topic by reason", "reason",
                       dict(status.dead_letters))
        accuracy = GaugeMetricFamily("pegp_prequential_accuracy", "Accuracy of predictions made before each update",
                                     labels=["window"])
        accuracy.add_metric(["cumulative"], status.prequential_cumulative)
        accuracy.add_metric([str(status.prequential_window)], status.prequential_windowed)
        yield accuracy
        yield _gauge("pegp_basis_rank", "Rank of each protected feature space's basis", "space", dict(status.ranks))
        yield _gauge("pegp_consumer_lag_records", "Records in the topic not yet learned", "partition",
                     {str(p): lag for p, lag in status.lag.items()})
        yield _gauge("pegp_last_update_loss", "Loss of the last learning step", None, {"": status.last_loss})
        yield _histogram("pegp_update_duration_seconds", "Duration of learning steps", status.update_durations)
        yield _gauge("pegp_last_consolidation_duration_seconds", "Duration of the last consolidation", None,
                     {"": status.last_consolidation_seconds})
        checkpoint = status.last_checkpoint
        yield _gauge("pegp_last_checkpoint_timestamp_seconds", "Unix time of the last durable checkpoint", None,
                     {"": checkpoint.get("time", 0.0)})
        yield _counter("pegp_offset_resets", "Partitions whose log was lost, truncated or recreated under the "
                       "learner, followed by kafka.offset_reset", "partition",
                       {str(p): n for p, n in status.offset_resets.items()})
        yield _counter("pegp_checkpoint_failures", "Checkpoint attempts that failed (disk, dead letters undelivered)",
                       None, {"": status.checkpoint_failures})
        yield _gauge("pegp_dead_letters_unconfirmed", "Dead letters sent but not yet acknowledged by the broker",
                     None, {"": status.dead_letters_unconfirmed})
        yield _gauge("pegp_last_checkpoint_duration_seconds", "Duration of the last checkpoint write", None,
                     {"": checkpoint.get("seconds", 0.0)})
        yield _gauge("pegp_learner_heartbeat_age_seconds", "Seconds since the learner loop last came round", None,
                     {"": time.monotonic() - status.heartbeat})
        if status.per_rank:  # several ranks: the metrics above are the group's, these are each rank's
            yield from _rank_metrics(status)


def _rank_metrics(status: DaemonStatus) -> Iterator:
    shares = status.per_rank
    yield _gauge("pegp_ranks", "Learner ranks (processes) learning together", None, {"": status.world_size})
    yield _counter("pegp_rank_samples_read", "Records each rank has read since its process started", "rank",
                   {str(share.rank): share.read for share in shares})
    yield _gauge("pegp_rank_last_step_duration_seconds", "Duration of each rank's last step (decode, learn with "
                 "its collectives, advance)", "rank", {str(share.rank): share.step_seconds for share in shares})
    yield _gauge("pegp_rank_throughput_records_per_second", "Records each rank learned per second, recently", "rank",
                 {str(share.rank): share.throughput for share in shares})


def _counter(name: str, doc: str, label: str | None, values: dict) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label] if label else None)
    for key, value in sorted(values.items()):
        family.add_metric([key] if label else [], value)
    return family


def _gauge(name: str, doc: str, label: str | None, values: dict) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label] if label else None)
    for key, value in sorted(values.items()):
        family.add_metric([key] if label else [], float(value))
    return family


def _histogram(name: str, doc: str, durations: Durations) -> HistogramMetricFamily:
    cumulative, running = [], 0
    for bound, count in zip((*map(str, durations.buckets), "+Inf"), durations.counts, strict=True):
        running += count
        cumulative.append((bound, running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=durations.total)


def build_registry(daemon: DaemonHandle | None,
                   snapshots: SnapshotPublisher) -> tuple[CollectorRegistry, ServingMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(daemon, snapshots))
    return registry, ServingMetrics(registry)

