"""Smoke test of benchmarks/soak.py: a half-minute soak (embedded broker, the daemon as its own process, a
producer at a fixed rate) writes its series, summary and plot, and the daemon learns and exits cleanly.
No timing is asserted: the machines are shared."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from benchmarks import soak


def test_short_soak_writes_a_growing_series(tmp_path: Path) -> None:
    # digits and the demo architecture with random weights: no MNIST and no pretraining needed
    code = soak.main(["--minutes", "0.5", "--sample-every", "5", "--rate", "40", "--dataset", "digits",
                      "--limit-per-class", "20", "--checkpoint-every", "200", "--backbone", "random",
                      "--out", str(tmp_path)])
    assert {"soak.csv", "soak.json", "soak.png", "daemon.log"} <= {p.name for p in tmp_path.iterdir()}
    with (tmp_path / "soak.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == soak.COLUMNS
        rows = list(reader)
    assert len(rows) >= 4
    assert all(r["daemon_alive"] == "True" and float(r["rss_mb"]) > 0 for r in rows)
    learned = [int(r["records_learned"]) for r in rows]
    assert learned == sorted(learned) and learned[-1] > learned[0]
    summary = json.loads((tmp_path / "soak.json").read_text())
    assert summary["daemon_exit_code"] == 0 and not summary["daemon_died"]
    assert summary["records_learned"] >= learned[-1] > 0
    assert summary["final_checkpoint_bytes"] > 0
    assert code == (0 if summary["ok"] else 1)
    assert summary["ok"], {k: summary[k] for k in ("error_lines", "http_errors", "predict_failures", "dead_letters")}
