"""End-to-end throughput: the daemon through the embedded broker vs the same learner fed by the replay
source, in one run, interleaved; plus checkpoint time and size.

    python -m benchmarks.bench_stream [--records-per-class 100] [--repeats 2] [--out benchmarks/out]

Prints a table and writes bench_stream.csv. Both paths decode nothing differently: the broker path pays for
Kafka fetches, JSON + PNG decoding and checkpoints; the replay path starts from decoded uint8 arrays.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from pegp_stream.config import DaemonConfig, ReplayConfig, StreamConfig, to_config
from pegp_stream.daemon import Daemon
from pegp_stream.data.demo import DEMO_BACKBONE
from pegp_stream.data.streams import build_stream
from pegp_stream.evaluation.replay import replay
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.kafka.produce import ProduceOptions, produce

from .common import format_table, write_csv

LEARNER = {"backbone": DEMO_BACKBONE, "pet": {"kind": "adapter"}, "precision": "fp32", "seed": 0}
VIT_TINY_224 = {"name": "vit_tiny_patch16_224"}


def run_broker(stream, bootstrap: str, topic: str, batch_size: int, workdir: Path, learner: dict = LEARNER) -> dict:
    produce(stream, ProduceOptions(topic=topic, bootstrap_servers=bootstrap))
    config = to_config(DaemonConfig, {
        "learner": learner, "kafka": {"bootstrap_servers": bootstrap, "topic": topic, "batch_size": batch_size},
        "checkpoint": {"dir": str(workdir / topic), "every_records": 500, "every_seconds": None},
        "http": {"enabled": False}, "exit_when_idle_s": 0.5,
    })
    daemon = Daemon(config)
    started = time.monotonic()
    daemon.run()
    seconds = daemon.last_learned_at - started  # until the last record was learned: idle waiting is not work
    return {"records": daemon.stats.learned, "seconds": seconds,
            "checkpoint_seconds": daemon.last_checkpoint.get("seconds", float("nan")),
            "checkpoint_bytes": daemon.last_checkpoint.get("bytes", float("nan"))}


def run_replay(stream, batch_size: int, learner: dict = LEARNER) -> dict:
    config = to_config(ReplayConfig, {"learner": learner, "batch_size": batch_size, "log_every": 10**9})
    summary = replay(config, stream=stream)
    return {"records": summary.records, "seconds": summary.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records-per-class", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    parser.add_argument("--vit-tiny-224", action="store_true",
                        help="ViT-Tiny/16 at 224 px (random weights) instead of the tiny 32 px demo model")
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stream = build_stream(StreamConfig(datasets=("digits",), limit_per_class=args.records_per_class))
    rows = []
    with EmbeddedBroker(port=free_port()) as broker, tempfile.TemporaryDirectory() as workdir:
        for repeat in range(args.repeats):
            learner = {**LEARNER, "backbone": VIT_TINY_224} if args.vit_tiny_224 else LEARNER
            replayed = run_replay(stream, args.batch_size, learner)
            brokered = run_broker(stream, broker.bootstrap_servers, f"bench{repeat}", args.batch_size, Path(workdir),
                                  learner)
            rows.append({"repeat": repeat, "records": brokered["records"],
                         "replay_rps": replayed["records"] / replayed["seconds"],
                         "broker_rps": brokered["records"] / brokered["seconds"],
                         "checkpoint_ms": 1000 * brokered["checkpoint_seconds"],
                         "checkpoint_kib": brokered["checkpoint_bytes"] / 1024})
    for row in rows:
        row["ratio"] = row["broker_rps"] / row["replay_rps"]
    write_csv(Path(args.out) / "bench_stream.csv", rows, list(rows[0]))
    model = "ViT-Tiny/16 at 224 px" if args.vit_tiny_224 else "tiny ViT (width 64, depth 2, 32 px)"
    print(f"end to end, digits stream of {rows[0]['records']} records, {model}, adapter, batch {args.batch_size}, "
          f"{args.threads} torch thread(s)")
    print(format_table(rows, ["repeat", "replay_rps", "broker_rps", "ratio", "checkpoint_ms", "checkpoint_kib"]))
    print(f"median ratio (target >= 0.8): {statistics.median(r['ratio'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
