"""Prediction latency while the daemon learns vs idle, in one run, same server, same client.

    python -m benchmarks.bench_serving [--records-per-class 60] [--clients 2] [--out benchmarks/out]

Starts the embedded broker, produces a digits stream, runs the daemon with its HTTP API, and has `--clients`
threads post one-image predictions back to back: first while the stream is being learned (with boundaries
and snapshot publication), then for the same number of seconds once it is idle. Prints p50/p90/p99 and writes
bench_serving.csv.
"""

from __future__ import annotations

import argparse
import base64
import io
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from pegp_stream.config import DaemonConfig, StreamConfig, to_config
from pegp_stream.daemon import Daemon
from pegp_stream.data.datasets import load_dataset
from pegp_stream.data.demo import DEMO_BACKBONE
from pegp_stream.data.streams import build_stream
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.kafka.produce import ProduceOptions, produce

from .common import format_table, write_csv


def hammer(url: str, body: dict, until, latencies: list, errors: list) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not until():
            started = time.perf_counter()
            response = client.post("/v1/predict", json=body)
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(response.status_code)


def phase(url: str, body: dict, clients: int, until) -> tuple[list, list]:
    latencies, errors = [], []
    threads = [threading.Thread(target=hammer, args=(url, body, until, latencies, errors)) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records-per-class", type=int, default=60)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out")
    args = parser.parse_args()
    buffer = io.BytesIO()
    Image.fromarray(load_dataset("digits", split="test").images[0]).save(buffer, format="PNG")
    body = {"instances": [{"image": base64.b64encode(buffer.getvalue()).decode()}]}
    stream = build_stream(StreamConfig(datasets=("digits",), limit_per_class=args.records_per_class))
    with EmbeddedBroker(port=free_port()) as broker, tempfile.TemporaryDirectory() as workdir:
        produce(stream, ProduceOptions(topic="bench", bootstrap_servers=broker.bootstrap_servers))
        config = to_config(DaemonConfig, {
            "learner": {"backbone": DEMO_BACKBONE, "pet": {"kind": "adapter"}, "precision": "fp32"},
            "kafka": {"bootstrap_servers": broker.bootstrap_servers, "topic": "bench"},
            "checkpoint": {"dir": workdir, "every_records": 200}, "http": {"port": 0, "snapshot_every_updates": 5},
        })
        daemon = Daemon(config)
        thread = threading.Thread(target=daemon.run)
        thread.start()
        while daemon.http is None:
            time.sleep(0.05)
        started = time.monotonic()
        busy, busy_errors = phase(daemon.http.url, body, args.clients, lambda: daemon.stats.learned >= len(stream))
        learning_seconds = time.monotonic() - started
        deadline = time.monotonic() + learning_seconds
        idle, idle_errors = phase(daemon.http.url, body, args.clients, lambda: time.monotonic() > deadline)
        daemon.request_stop()
        thread.join()
    rows = []
    for name, latencies, errors in (("while learning", busy, busy_errors), ("idle", idle, idle_errors)):
        ms = 1000 * np.array(latencies)
        rows.append({"phase": name, "requests": len(ms), "errors": len(errors), "p50_ms": np.percentile(ms, 50),
                     "p90_ms": np.percentile(ms, 90), "p99_ms": np.percentile(ms, 99)})
    write_csv(Path(args.out) / "bench_serving.csv", rows, list(rows[0]))
    print(f"one-image predictions, {args.clients} clients, tiny ViT (32 px), {len(stream)} records learned in "
          f"{learning_seconds:.1f} s")
    print(format_table(rows, ["phase", "requests", "errors", "p50_ms", "p90_ms", "p99_ms"]))
    print(f"p99 ratio learning/idle: {rows[0]['p99_ms'] / rows[1]['p99_ms']:.2f}")


if __name__ == "__main__":
    main()
