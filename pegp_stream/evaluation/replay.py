"""Drive the learner over a stream read from files (no broker): prequential learning with the boundaries the
drift policy answers (new segment markers, and its detector when one is configured), through the same
`StreamDriver` as the daemon. Used by `pegp-stream replay` and by benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pegp_stream.config import ReplayConfig
from pegp_stream.core.learner import Learner, create_learner
from pegp_stream.data.streams import LabelledStream, build_stream
from pegp_stream.drift import BoundaryPolicy
from pegp_stream.driver import StreamDriver
from pegp_stream.evaluation.prequential import PrequentialAccuracy


@dataclass
class ReplaySummary:
    records: int = 0
    rejected: int = 0
    boundaries: list[int] = field(default_factory=list)
    seconds: float = 0.0
    prequential: PrequentialAccuracy = field(default_factory=PrequentialAccuracy)
    ranks: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "records": self.records, "rejected": self.rejected, "boundaries": self.boundaries,
            "seconds": round(self.seconds, 3), "records_per_second": round(self.records / max(self.seconds, 1e-9), 2),
            "prequential_accuracy": round(self.prequential.cumulative, 4),
            "segment_accuracy": {s: round(a, 4) for s, a in self.prequential.segment_accuracy().items()},
            "ranks": self.ranks,
        }


def replay(
    config: ReplayConfig,
    learner: Learner | None = None,
    stream: LabelledStream | None = None,
    log: Callable[[str], None] | None = None,
) -> ReplaySummary:
    learner = learner or create_learner(config.learner)
    stream = stream or build_stream(config.stream)
    policy = BoundaryPolicy(config.drift.model_copy(update={"markers": config.stream.markers}))
    driver, summary, next_log = StreamDriver(learner, policy), ReplaySummary(), config.log_every
    start = time.perf_counter()
    for batch in stream.batches(config.batch_size, config.stream.markers):
        labels = [r.label for r in batch]
        step = driver.learn([r.image for r in batch], labels, [r.segment for r in batch], summary.records)
        summary.boundaries += [b.position for b in step.boundaries]
        for run in step.runs:
            summary.prequential.update(run.result.predictions, labels[run.start : run.stop], segment=batch[0].segment)
            summary.rejected += len(run.result.rejected)
        summary.records += len(batch)
        if log and summary.records >= next_log:
            next_log += config.log_every
            log(f"records {summary.records}/{len(stream)} segment {batch[0].segment} "
                f"prequential {summary.prequential.cumulative:.3f} (window {summary.prequential.windowed:.3f}) "
                f"loss {step.runs[-1].result.loss:.3f} {summary.records / (time.perf_counter() - start):.1f} rec/s")
    summary.seconds = time.perf_counter() - start
    summary.ranks = learner.ranks
    return summary
