"""Smoke tests of benchmarks/bench_core.py: each subcommand runs with --quick and writes the CSV it
promises (expected columns, one row per variant). No timing is asserted: the machines are shared."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from benchmarks import bench_core
from benchmarks.basis_refresh import COLUMNS as BASIS_COLUMNS
from benchmarks.basis_refresh import SWEEP, SWEEP_COLUMNS
from benchmarks.common import PARADIGMS
from benchmarks.projection_cost import BREAKDOWN_COLUMNS
from benchmarks.projection_cost import COLUMNS as PROJECTION_COLUMNS
from benchmarks.step_bound import COLUMNS as STEP_COLUMNS
from benchmarks.step_bound import MODES, REFERENCE_MODE


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _run(command: str, out: Path, *extra: str) -> None:
    assert bench_core.main([command, "--quick", "--out", str(out), *extra]) == 0


def test_projection_cost_quick(tmp_path: Path) -> None:
    _run("projection-cost", tmp_path, "--token-limits", "5,3")
    columns, rows = _read(tmp_path / "projection_cost.csv")
    assert columns == PROJECTION_COLUMNS
    variants = ["off", "on", "on, tokens<=5", "on, tokens<=3"]
    assert [(r["paradigm"], r["variant"]) for r in rows] == [(p, v) for p in PARADIGMS for v in variants]
    assert all(r["rejected_rows"] == "0" for r in rows)
    assert all(int(r["total_rank"]) > 0 for r in rows if r["variant"] != "off")  # bases grown before timing
    columns, breakdown = _read(tmp_path / "projection_cost_breakdown.csv")
    assert columns == BREAKDOWN_COLUMNS
    assert {(r["paradigm"], r["variant"]) for r in breakdown} == {(p, v) for p in PARADIGMS for v in variants[1:]}
    assert any(r["component"].startswith("covariance accumulate") for r in breakdown)
    assert (tmp_path / "projection_cost.png").stat().st_size > 0


def test_projection_cost_profile_and_adam(tmp_path: Path) -> None:
    _run("projection-cost", tmp_path, "--paradigms", "adapter", "--optimizer", "adam", "--profile",
         "--precision", "bf16", "--attention", "eager")
    _, rows = _read(tmp_path / "projection_cost.csv")
    assert [r["variant"] for r in rows] == ["off", "on", "on, tokens<=5"]
    assert {(r["optimizer"], r["precision"], r["attention"]) for r in rows} == {("adam", "bf16", "eager")}
    assert "projection on" in (tmp_path / "projection_cost_profile.txt").read_text()


def test_projection_cost_without_token_limits(tmp_path: Path) -> None:
    _run("projection-cost", tmp_path, "--paradigms", "prompt", "--token-limits", "none")
    _, rows = _read(tmp_path / "projection_cost.csv")
    assert [r["variant"] for r in rows] == ["off", "on"]


def test_basis_refresh_quick(tmp_path: Path) -> None:
    _run("basis-refresh", tmp_path)
    columns, rows = _read(tmp_path / "basis_refresh.csv")
    assert columns == BASIS_COLUMNS
    methods = ["randomized", "eigh", "svd f32", "svd f64", "grow_basis randomized", "grow_basis exact",
               "covariance F^T F"]
    assert [(int(r["d"]), r["method"]) for r in rows] == [(d, m) for d in (32, 64) for m in methods]
    for row in rows:
        if row["agreement"]:
            assert 0.0 <= float(row["agreement"]) <= 1.0 + 1e-9
    columns, sweep = _read(tmp_path / "basis_refresh_sweep.csv")
    assert columns == SWEEP_COLUMNS
    assert [(int(r["oversample"]), int(r["power_iters"])) for r in sweep] == SWEEP


def test_step_bound_quick(tmp_path: Path) -> None:
    _run("step-bound", tmp_path)
    columns, rows = _read(tmp_path / "step_bound.csv")
    assert columns == STEP_COLUMNS
    variants = ["floor", *PARADIGMS]
    assert [(r["mode"], r["variant"]) for r in rows] == [(m, v) for m in MODES for v in variants]
    assert all(r["speedup_vs_fp32"] for r in rows if r["mode"] != REFERENCE_MODE)
    assert all(r["rejected_rows"] == "0" for r in rows)


def test_step_bound_modes_option(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    _run("step-bound", tmp_path, "--modes", "fp32/eager", "--paradigms", "prompt")
    assert torch.get_num_threads() == threads  # global torch state restored after the run
    _, rows = _read(tmp_path / "step_bound.csv")
    assert [(r["mode"], r["variant"]) for r in rows] == [("fp32/eager", "floor"), ("fp32/eager", "prompt")]


def test_unknown_paradigm_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench_core.main(["step-bound", "--quick", "--out", str(tmp_path), "--paradigms", "bogus"])
