"""Every Prometheus metric, declared once, on an explicit registry. Learner and stream state is read at
scrape time by a collector (no bookkeeping on the hot path); request metrics are instruments."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from . import __version__

if TYPE_CHECKING:
    from .daemon import Daemon
    from .serving.snapshot import SnapshotPublisher


UPDATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DurationHistogram:
    """Cumulative bucket counts kept by the learner's thread and exposed at scrape time (no client-library
    object on the hot path, no lock: the scrape reads a consistent-enough copy of a few integers)."""

    def __init__(self, buckets: tuple[float, ...] = UPDATE_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))
        self.counts[index] += 1
        self.total += seconds

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, running = [], 0
        for bound, count in zip((*map(str, self.buckets), "+Inf"), self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.total)


class ServingMetrics:
    """Instruments updated by the HTTP layer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("pegp_predict_requests", "Prediction requests by HTTP status code", ["code"],
                                registry=registry)
        self.duration = Histogram("pegp_predict_duration_seconds", "Prediction request latency", registry=registry,
                                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


class StateCollector(Collector):
    """Reads the daemon and the newest snapshot when Prometheus scrapes."""

    def __init__(self, daemon: Daemon | None, snapshots: SnapshotPublisher) -> None:
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
            yield from self._learner_metrics(self.daemon)

    def _learner_metrics(self, daemon: Daemon) -> Iterator:
        stats, learner = daemon.stats, daemon.learner
        yield _counter("pegp_samples_consumed", "Records read from the input topic", "partition",
                       {str(p): n for p, n in stats.consumed.items()})
        yield _counter("pegp_samples_learned", "Records applied to the learned state", None, {"": stats.learned})
        yield _counter("pegp_updates", "Optimizer steps", None, {"": learner.updates})
        yield _counter("pegp_boundaries", "Drift boundaries (consolidations) by cause", "cause",
                       dict(stats.boundaries))
        yield _counter("pegp_dead_letters", "Records sent to the dead-letter topic by reason", "reason",
                       dict(stats.dead_letters))
        accuracy = GaugeMetricFamily("pegp_prequential_accuracy", "Accuracy of predictions made before each update",
                                     labels=["window"])
        accuracy.add_metric(["cumulative"], daemon.prequential.cumulative)
        accuracy.add_metric([str(daemon.prequential.window)], daemon.prequential.windowed)
        yield accuracy
        yield _gauge("pegp_basis_rank", "Rank of each protected feature space's basis", "space", learner.ranks)
        yield _gauge("pegp_consumer_lag_records", "Records in the topic not yet learned", "partition",
                     {str(p): lag for p, lag in daemon.cached_lag().items()})
        yield _gauge("pegp_last_update_loss", "Loss of the last learning step", None, {"": daemon.last_loss})
        yield daemon.update_durations.family("pegp_update_duration_seconds", "Duration of learning steps")
        yield _gauge("pegp_last_consolidation_duration_seconds", "Duration of the last consolidation", None,
                     {"": daemon.last_consolidation_seconds})
        checkpoint = daemon.last_checkpoint
        yield _gauge("pegp_last_checkpoint_timestamp_seconds", "Unix time of the last durable checkpoint", None,
                     {"": checkpoint.get("time", 0.0)})
        yield _counter("pegp_offset_resets", "Partitions whose log was lost, truncated or recreated under the "
                       "learner, followed by kafka.offset_reset", "partition",
                       {str(p): n for p, n in daemon.source.resets_by_partition.items()})
        yield _counter("pegp_checkpoint_failures", "Checkpoint attempts that failed (disk, dead letters undelivered)",
                       None, {"": daemon.checkpoint_failures})
        yield _gauge("pegp_dead_letters_unconfirmed", "Dead letters sent but not yet acknowledged by the broker",
                     None, {"": daemon.dead_letters.unconfirmed})
        yield _gauge("pegp_last_checkpoint_duration_seconds", "Duration of the last checkpoint write", None,
                     {"": checkpoint.get("seconds", 0.0)})
        yield _gauge("pegp_learner_heartbeat_age_seconds", "Seconds since the learner loop last came round", None,
                     {"": time.monotonic() - daemon.heartbeat})


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


def build_registry(daemon: Daemon | None, snapshots: SnapshotPublisher) -> tuple[CollectorRegistry, ServingMetrics]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(daemon, snapshots))
    return registry, ServingMetrics(registry)

