"""Soak: the learner daemon learning and serving for a long time on a repeating stream, through the embedded
broker. Shows whether the daemon's resident memory and its checkpoints stay flat, whether consumer lag stays
bounded, and that nothing fails along the way.

    python -m benchmarks.soak --minutes 60 --out benchmarks/out/soak [--backbone PATH] [--rate 50]
                              [--sample-every 30] [--set learner.backbone.img_size=32 ...]

Starts the embedded broker (Tansu), creates the topic, starts `pegp-stream run` as its own process (tiny demo
ViT, adapter, NCM head, fp32, HTTP on a free port, checkpoints every `--checkpoint-every` records), then a
producer thread sends a class-incremental stream with segment markers, repeated, at `--rate` records/s. Every
`--sample-every` seconds it records the daemon's RSS, threads and open files, the newest checkpoint's size and
the checkpoint directory's total, what /metrics says (records learned, lag, dead letters, boundaries, failed
requests), the backlog (records sent minus records learned), the error and warning lines of the daemon's log,
and whether one /v1/predict with a real test image answers. The /metrics lag is measured against end offsets
the daemon fetches every `kafka.lag_interval_s` (5 s by default), so it reads 0 while the daemon keeps up;
the backlog is the soak's own view. At the end the daemon gets SIGTERM (it drains and checkpoints). Writes
soak.csv (the series), soak.json (the summary), soak.png, daemon.log and broker.log to `--out`; prints a
summary table.

Verdicts (reported, the second half of the run being after warm-up): RSS flat = the fitted RSS growth over the
second half is under 5% of its level; checkpoint flat = the newest checkpoint at the end is at most 5% larger
than at the start of the second half; lag (backlog) bounded = the second half's largest lag (backlog) is no
larger than the first half's or than `--rate` x `--sample-every` records. Exit status 1 when the daemon died
or exited non-zero, or any error occurred (an ERROR line or traceback in its log, a failed prediction or HTTP
error, a dead letter on this clean stream, a producer failure); the verdicts do not change it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from pegp_stream.checkpoint import CheckpointStore
from pegp_stream.config import StreamConfig
from pegp_stream.data.datasets import load_dataset
from pegp_stream.data.demo import DEMO_BACKBONE, demo_backbone, demo_stream_datasets
from pegp_stream.data.streams import LabelledStream, build_stream
from pegp_stream.kafka.broker import EmbeddedBroker, free_port
from pegp_stream.kafka.produce import ProduceOptions, ensure_topic, produce

from .common import format_table, progress, pyplot, write_csv

TOPIC = "soak"
COLUMNS = [
    "elapsed_s", "daemon_alive", "rss_mb", "threads", "open_fds", "checkpoint_bytes", "checkpoint_files",
    "checkpoint_dir_bytes", "records_produced", "records_learned", "lag", "backlog", "dead_letters", "boundaries",
    "basis_rank", "model_version", "http_errors", "predict_ok", "predict_ms", "predict_failures",
    "error_lines", "warning_lines",
]
FLAT_TOLERANCE = 0.05  # RSS and checkpoint verdicts: growth over the second half below 5%
_LEVEL = re.compile(r"^\S+ \S+ (ERROR|CRITICAL|WARNING) ")  # the daemon's text log format


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0, help="how long the stream flows")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/soak"))
    parser.add_argument("--rate", type=float, default=50.0, help="records per second sent to the topic")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between samples")
    parser.add_argument("--dataset", default="auto", help="data set of the stream (auto: mnist, else digits)")
    parser.add_argument("--limit-per-class", type=int, default=100, help="samples per class in one cycle")
    parser.add_argument("--checkpoint-every", type=int, default=1000, help="records between checkpoints")
    parser.add_argument("--backbone", default=None,
                        help="safetensors backbone (architecture via --set learner.backbone.*); default: the demo's "
                        "tiny ViT pretrained on digits; 'random': the demo architecture, random weights")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="daemon config override passed to `pegp-stream run` (repeatable)")
    parser.add_argument("--startup-timeout", type=float, default=300.0, help="seconds for the daemon to serve")
    return parser


# ------------------------------------------------------------------ the parts: stream, daemon, probes


class StoppableStream:
    """`stream` as `produce` iterates it (once per repeat), ending early once `stop` is set; counts records."""

    def __init__(self, stream: LabelledStream, stop: threading.Event) -> None:
        self.stream, self.stop, self.sent = stream, stop, 0

    def __iter__(self) -> Iterator:
        for record in self.stream:
            if self.stop.is_set():
                return
            self.sent += 1
            yield record


class Producer:
    """`produce` in a thread at a fixed rate; `close` stops it at the next record and flushes."""

    def __init__(self, stream: LabelledStream, options: ProduceOptions) -> None:
        self._stop = threading.Event()
        self.source = StoppableStream(stream, self._stop)
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, args=(options,), name="soak-producer", daemon=True)

    def _run(self, options: ProduceOptions) -> None:
        try:
            produce(self.source, options)
        except Exception as exc:  # reported in the summary: any producer failure fails the soak
            self.error = f"{type(exc).__name__}: {exc}"

    def start(self) -> Producer:
        self.thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.thread.join(timeout)


def stream_datasets(name: str) -> tuple[str, ...]:
    return demo_stream_datasets() if name == "auto" else (name,)


def backbone_overrides(backbone: str | None) -> list[str]:
    """The daemon's backbone keys: the demo's tiny ViT (pretrained, or random weights), or a given file."""
    if backbone not in (None, "random"):
        return [f"learner.backbone.checkpoint_path={Path(backbone).absolute()}"]
    keys = [f"learner.backbone.{k}={v}" for k, v in DEMO_BACKBONE.items()]
    return keys if backbone == "random" else [*keys, f"learner.backbone.checkpoint_path={demo_backbone(log=progress)}"]


def daemon_command(args: argparse.Namespace, bootstrap: str, checkpoints: Path, port: int) -> list[str]:
    settings = [
        *backbone_overrides(args.backbone), "learner.precision=fp32", "learner.head.kind=ncm",
        "learner.pet.kind=adapter", f"kafka.bootstrap_servers={bootstrap}", f"kafka.topic={TOPIC}",
        f"checkpoint.dir={checkpoints}", f"checkpoint.every_records={args.checkpoint_every}",
        "http.enabled=true", "http.host=127.0.0.1", f"http.port={port}", *args.overrides,
    ]
    return [sys.executable, "-m", "pegp_stream.cli", "run", *(f"--set={s}" for s in settings)]


def start_daemon(command: list[str], log_path: Path) -> subprocess.Popen:
    """`pegp-stream run` as its own process, as tests/daemon_support.py starts it: the RSS is the daemon's."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_until_serving(daemon: subprocess.Popen, client: httpx.Client, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.returncode} before serving")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the daemon did not serve /healthz within {timeout:.0f} s")


def stop_daemon(daemon: subprocess.Popen, timeout: float = 120.0) -> int:
    """SIGTERM (the daemon finishes its batch and checkpoints), SIGKILL after `timeout`."""
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    return daemon.returncode


def predict_body(dataset: str) -> dict:
    """One real test image as a /v1/predict request."""
    buffer = io.BytesIO()
    Image.fromarray(load_dataset(dataset, split="test").images[0]).save(buffer, format="PNG")
    return {"instances": [{"image": base64.b64encode(buffer.getvalue()).decode()}]}


def process_stats(pid: int) -> dict[str, float]:
    """Resident memory (MB), threads and open file descriptors of `pid` (psutil if installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return {"rss_mb": round(int(fields["VmRSS"].split()[0]) / 1024, 2), "threads": int(fields["Threads"]),
                "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}
    process = psutil.Process(pid)
    return {"rss_mb": round(process.memory_info().rss / 2**20, 2), "threads": process.num_threads(),
            "open_fds": process.num_fds()}


def checkpoint_sizes(directory: Path) -> dict[str, int]:
    """The newest checkpoint's bytes, how many checkpoints there are, and the directory's total bytes
    (retention: `checkpoint.keep` files); sizes None before the first checkpoint. A file pruned while it is
    measured is measured again."""
    for _ in range(5):
        try:
            paths = CheckpointStore(directory).paths()
            if not paths:
                return {"checkpoint_files": 0}
            total = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
            return {"checkpoint_bytes": paths[-1].stat().st_size, "checkpoint_files": len(paths),
                    "checkpoint_dir_bytes": total}
        except FileNotFoundError:
            continue
    return {}


def scrape(client: httpx.Client) -> dict[str, float]:
    """The soak's numbers from /metrics, summed over labels; `http_errors`: requests answered non-200."""
    text = client.get("/metrics").raise_for_status().text
    totals: dict[str, float] = {}
    http_errors = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
            if sample.name == "pegp_predict_requests_total" and sample.labels.get("code") != "200":
                http_errors += sample.value
    names = {"records_learned": "pegp_samples_learned_total", "lag": "pegp_consumer_lag_records",
             "dead_letters": "pegp_dead_letters_total", "boundaries": "pegp_boundaries_total",
             "basis_rank": "pegp_basis_rank", "model_version": "pegp_model_version"}
    return {key: int(totals.get(name, 0)) for key, name in names.items()} | {"http_errors": int(http_errors)}


def predict_once(client: httpx.Client, body: dict) -> tuple[bool, float]:
    started = time.perf_counter()
    try:
        response = client.post("/v1/predict", json=body)
        ok = response.status_code == 200 and len(response.json()["predictions"]) == 1
    except (httpx.HTTPError, ValueError, KeyError):
        ok = False
    return ok, 1000 * (time.perf_counter() - started)


class LogCounter:
    """Error and warning lines (and tracebacks) of the daemon's log, read on from where it stopped."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.errors, self.warnings = path, 0, 0, 0

    def update(self) -> dict[str, int]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]  # a line still being written is read next time
        self.offset += len(complete)
        for line in complete.decode(errors="replace").splitlines():
            level = _LEVEL.match(line)
            self.errors += line.startswith("Traceback") or bool(level and level.group(1) != "WARNING")
            self.warnings += bool(level and level.group(1) == "WARNING")
        return {"error_lines": self.errors, "warning_lines": self.warnings}


# ------------------------------------------------------------------ the run


class Sampler:
    """One row of the series per call: process, checkpoints, metrics, one prediction, log lines."""

    def __init__(self, daemon: subprocess.Popen, client: httpx.Client, body: dict, checkpoints: Path,
                 log: LogCounter, producer: Producer) -> None:
        self.daemon, self.client, self.body, self.checkpoints = daemon, client, body, checkpoints
        self.log, self.producer, self.predict_failures = log, producer, 0

    def sample(self, elapsed: float) -> dict[str, Any]:
        row: dict[str, Any] = {"elapsed_s": round(elapsed, 1), "daemon_alive": self.daemon.poll() is None,
                               "records_produced": self.producer.source.sent}
        if row["daemon_alive"]:
            row |= self._live()
        if row.get("records_learned") is not None:
            row["backlog"] = max(0, row["records_produced"] - row["records_learned"])
        row |= checkpoint_sizes(self.checkpoints) | self.log.update()
        row["predict_failures"] = self.predict_failures
        return row

    def _live(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        try:
            row |= process_stats(self.daemon.pid)
            row |= scrape(self.client)
        except (OSError, httpx.HTTPError, KeyError, ValueError) as exc:
            progress(f"sample incomplete: {type(exc).__name__}: {exc}")
        ok, ms = predict_once(self.client, self.body)
        self.predict_failures += not ok
        return row | {"predict_ok": ok, "predict_ms": round(ms, 1)}


def soak(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Broker, topic, daemon, producer; sample for `--minutes`; stop everything; the series and end facts."""
    datasets = stream_datasets(args.dataset)
    stream = build_stream(StreamConfig(datasets=datasets, limit_per_class=args.limit_per_class, markers=True))
    repeat = math.ceil(args.minutes * 60 * args.rate / len(stream)) + 1
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "daemon.log"
    for log in (log_path, args.out / "broker.log"):
        log.write_bytes(b"")
    port = free_port()
    with EmbeddedBroker(port=free_port(), log_path=args.out / "broker.log") as broker, \
            tempfile.TemporaryDirectory(prefix="soak-", dir=args.out) as workdir, \
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        ensure_topic(broker.bootstrap_servers, TOPIC, 1)  # before any client: auto-creation loses records
        checkpoints = Path(workdir) / "checkpoints"
        daemon = start_daemon(daemon_command(args, broker.bootstrap_servers, checkpoints, port), log_path)
        producer = Producer(stream, ProduceOptions(topic=TOPIC, bootstrap_servers=broker.bootstrap_servers,
                                                   rate=args.rate, repeat=repeat, id_prefix="s"))
        try:
            wait_until_serving(daemon, client, args.startup_timeout)
            progress(f"daemon {daemon.pid} serving on port {port}; {len(stream)} records x {repeat} at "
                     f"{args.rate:g}/s for {args.minutes:g} min")
            sampler = Sampler(daemon, client, predict_body(datasets[0]), checkpoints, LogCounter(log_path),
                              producer)
            producer.start()
            rows = run_samples(sampler, args)
        finally:
            producer.close()
            exit_code = stop_daemon(daemon)
        final = checkpoint_sizes(checkpoints)
        latest = CheckpointStore(checkpoints).load_latest()
    end = {"daemon_exit_code": exit_code, "producer_error": producer.error, "records_produced": producer.source.sent,
           "final_checkpoint_bytes": final.get("checkpoint_bytes"), "stream_records": len(stream),
           "records_learned_final": latest.state["stats"]["learned"] if latest else None,
           "log": LogCounter(log_path).update(), "datasets": list(datasets)}
    return rows, end


def run_samples(sampler: Sampler, args: argparse.Namespace) -> list[dict[str, Any]]:
    started, rows = time.monotonic(), []
    duration = args.minutes * 60
    for tick in range(int(duration // args.sample_every) + 1):
        time.sleep(max(0.0, started + tick * args.sample_every - time.monotonic()))
        row = sampler.sample(time.monotonic() - started)
        rows.append(row)
        progress(", ".join(f"{k} {row.get(k)}" for k in ("elapsed_s", "rss_mb", "records_learned", "lag",
                                                           "checkpoint_bytes", "predict_ok")))
        if not row["daemon_alive"]:
            progress("the daemon died: stopping the soak")
            break
    return rows


# ------------------------------------------------------------------ summary, outputs


def series(rows: Sequence[dict], key: str, since: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(elapsed seconds, values) of the rows at or after `since` that have `key`."""
    kept = [(r["elapsed_s"], r[key]) for r in rows if r.get(key) is not None and r["elapsed_s"] >= since]
    return np.array([t for t, _ in kept], dtype=float), np.array([v for _, v in kept], dtype=float)


def slope_per_hour(times: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope, units per hour (nan with fewer than 2 distinct times)."""
    if len(np.unique(times)) < 2:
        return math.nan
    return float(np.polyfit(times / 3600, values, 1)[0])


def spread(rows: Sequence[dict], key: str, half: float) -> dict[str, float | None]:
    _, values = series(rows, key)
    if not len(values):
        return {"first": None, "last": None, "max": None, "slope_per_hour_second_half": None}
    return {"first": float(values[0]), "last": float(values[-1]), "max": float(values.max()),
            "slope_per_hour_second_half": slope_per_hour(*series(rows, key, half))}


def verdicts(rows: Sequence[dict], half: float, rate: float, sample_every: float) -> dict[str, bool]:
    times, rss = series(rows, "rss_mb", half)
    growth = slope_per_hour(times, rss) * (times[-1] - times[0]) / 3600 if len(times) > 1 else math.nan
    _, checkpoint = series(rows, "checkpoint_bytes", half)
    checks = {
        "rss_flat": bool(growth <= FLAT_TOLERANCE * np.median(rss)) if len(rss) > 1 else False,
        "checkpoint_flat": bool(len(checkpoint) and checkpoint[-1] <= (1 + FLAT_TOLERANCE) * checkpoint[0]),
    }
    for key in ("lag", "backlog"):
        _, first = series([r for r in rows if r["elapsed_s"] < half], key)
        _, second = series(rows, key, half)
        checks[f"{key}_bounded"] = bool(len(second) and second.max() <= max([*first, rate * sample_every]))
    return checks


def summarise(rows: Sequence[dict], end: dict, args: argparse.Namespace) -> dict[str, Any]:
    duration = rows[-1]["elapsed_s"] if rows else 0.0
    half = duration / 2
    last = rows[-1] if rows else {}
    learned = end["records_learned_final"] if end["records_learned_final"] is not None else last.get("records_learned")
    died = any(not r["daemon_alive"] for r in rows)
    errors = {"error_lines": end["log"]["error_lines"], "http_errors": last.get("http_errors") or 0,
              "predict_failures": last.get("predict_failures", 0), "dead_letters": last.get("dead_letters") or 0,
              "producer_error": end["producer_error"]}
    failed = died or end["daemon_exit_code"] != 0 or any(errors.values())
    return _finite({
        "duration_s": duration, "minutes": args.minutes, "rate": args.rate, "sample_every_s": args.sample_every,
        "datasets": end["datasets"], "stream_records_per_cycle": end["stream_records"],
        "backbone": args.backbone or "demo", "overrides": args.overrides, "samples": len(rows),
        "records_produced": end["records_produced"], "records_learned": learned,
        "learned_per_second": learned / duration if learned and duration else None,
        "rss_mb": spread(rows, "rss_mb", half), "threads": spread(rows, "threads", half),
        "open_fds": spread(rows, "open_fds", half), "checkpoint_bytes": spread(rows, "checkpoint_bytes", half),
        "final_checkpoint_bytes": end["final_checkpoint_bytes"],
        "checkpoint_dir_bytes": spread(rows, "checkpoint_dir_bytes", half), "lag": spread(rows, "lag", half),
        "backlog": spread(rows, "backlog", half),
        "boundaries": last.get("boundaries"), "warning_lines": end["log"]["warning_lines"], **errors,
        "daemon_died": died, "daemon_exit_code": end["daemon_exit_code"],
        "verdicts": verdicts(rows, half, args.rate, args.sample_every) if rows else {}, "ok": not failed,
    })


def _finite(value: Any) -> Any:
    """nan -> None, so soak.json is strict JSON; floats to 3 decimals."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    return value


def summary_table(summary: dict) -> str:
    measures = {"rss_mb": ("RSS MB", 1), "checkpoint_bytes": ("newest checkpoint KiB", 1024),
                "checkpoint_dir_bytes": ("checkpoint dir KiB", 1024), "lag": ("lag records (/metrics)", 1),
                "backlog": ("backlog records (sent - learned)", 1), "threads": ("threads", 1),
                "open_fds": ("open fds", 1)}
    rows = []
    for key, (name, scale) in measures.items():
        values = {k: (v / scale if v is not None else None) for k, v in summary[key].items()}
        rows.append({"measure": name, **values})
    table = format_table(rows, ["measure", "first", "last", "max", "slope_per_hour_second_half"])
    facts = ["duration_s", "records_produced", "records_learned", "learned_per_second", "boundaries",
             "dead_letters", "error_lines", "warning_lines", "http_errors", "predict_failures", "producer_error",
             "daemon_died", "daemon_exit_code", "final_checkpoint_bytes"]
    lines = [f"  {name}: {summary[name]}" for name in facts]
    checks = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in summary["verdicts"].items())
    return "\n".join([table, "", *lines, f"  verdicts: {checks}", f"  ok: {summary['ok']}"])


def plot(rows: Sequence[dict], summary: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None or not rows:
        return None
    fig, (memory, lag) = plt.subplots(2, 1, sharex=True, figsize=(9, 6.5), height_ratios=(3, 2))
    times, rss = series(rows, "rss_mb")
    memory.plot(times / 60, rss, color="tab:blue", marker=".", label="daemon RSS (MB)")
    memory.set_ylabel("RSS (MB)", color="tab:blue")
    memory.set_ylim(0, max(rss.max() * 1.15, 1) if len(rss) else 1)
    sizes = memory.twinx()
    for key, style, label in (("checkpoint_bytes", "-", "newest checkpoint"), ("checkpoint_dir_bytes", "--",
                                                                                "checkpoint dir total")):
        t, values = series(rows, key)
        sizes.plot(t / 60, values / 1024, style, color="tab:orange", label=f"{label} (KiB)")
    sizes.set_ylabel("checkpoint size (KiB)", color="tab:orange")
    sizes.set_ylim(bottom=0)
    handles = memory.get_legend_handles_labels()[0] + sizes.get_legend_handles_labels()[0]
    memory.legend(handles=handles, loc="lower right", fontsize=8)
    peak = 1.0
    for key, color, label in (("lag", "tab:red", "consumer lag (/metrics)"),
                              ("backlog", "tab:purple", "backlog (sent - learned)")):
        t, values = series(rows, key)
        lag.plot(t / 60, values, color=color, marker=".", label=label)
        peak = max([peak, *values])
    lag.set_ylabel("records")
    lag.set_xlabel("minutes since the stream started")
    lag.set_ylim(0, peak * 1.15)
    lag.legend(loc="upper right", fontsize=8)
    for axis in (memory, lag):
        axis.axvline(summary["duration_s"] / 120, color="grey", linestyle=":", linewidth=1)  # second half starts
        axis.grid(alpha=0.3)
    memory.set_title(f"soak: {summary['records_learned']} records learned in {summary['duration_s'] / 60:.1f} min "
                     f"at {summary['rate']:g} records/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rows, end = soak(args)
    except RuntimeError as exc:  # the daemon never came up: its log says why
        print(f"error: {exc} (see {args.out / 'daemon.log'})", file=sys.stderr)
        return 2
    summary = summarise(rows, end, args)
    write_csv(args.out / "soak.csv", rows, COLUMNS)
    (args.out / "soak.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot(rows, summary, args.out / "soak.png")
    print(f"soak: {summary['duration_s']:.0f} s at {args.rate:g} records/s, {len(rows)} samples, outputs in {args.out}")
    print(summary_table(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
