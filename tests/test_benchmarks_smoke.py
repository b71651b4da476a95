"""Smoke tests of the benchmarks: each bench_core subcommand runs with --quick and writes the CSV it
promises (expected columns, one row per variant); benchmarks/gpu.sh runs its --cpu-check path;
bench_stream and bench_serving run on a tiny stream through the embedded broker. No timing
is asserted: the machines are shared."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import bench_core
from benchmarks.basis_refresh import COLUMNS as BASIS_COLUMNS
from benchmarks.basis_refresh import SWEEP, SWEEP_COLUMNS
from benchmarks.common import PARADIGMS, interleaved
from benchmarks.head_cost import COLUMNS as HEAD_COLUMNS
from benchmarks.projection_cost import BREAKDOWN_COLUMNS
from benchmarks.projection_cost import COLUMNS as PROJECTION_COLUMNS
from benchmarks.step_bound import COLUMNS as STEP_COLUMNS
from benchmarks.step_bound import MODES, REFERENCE_MODE

GPU_SH = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"


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
            dtype = torch.float32 if row["method"] == "svd f32" else torch.float64
            assert 0.0 <= float(row["agreement"]) <= _agreement_bound(int(row["d"]), dtype), row
    columns, sweep = _read(tmp_path / "basis_refresh_sweep.csv")
    assert columns == SWEEP_COLUMNS
    assert [(int(r["oversample"]), int(r["power_iters"])) for r in sweep] == SWEEP
    assert all(0.0 <= float(r["agreement"]) <= _agreement_bound(int(r["d"]), torch.float64) for r in sweep)


def _agreement_bound(d: int, dtype: torch.dtype) -> float:
    """The largest subspace_agreement a d-dimensional basis computed in `dtype` can round to.

    agreement = ||U^T V||_F^2 / k <= ||V||_F^2 / k exactly (U, the float64 reference, has orthonormal
    columns), and ||V||_F^2 / k exceeds 1 only by how far V's columns miss unit norm. A basis from a
    Householder-based factorisation (eigh, svd, qr) in `dtype` is orthonormal to within about d * eps(dtype)
    (LAPACK's bound p(d) * eps), so the agreement may exceed 1 by that much: 1.6e-7 was seen for svd f32
    at d=32, where d * eps(float32) = 3.8e-6; float64 rows stay within d * eps(float64) = 1.4e-14.
    """
    return 1.0 + d * torch.finfo(dtype).eps


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


def test_head_cost_quick(tmp_path: Path) -> None:
    heads = ("ncm", "slda", "slda+sdc", "ridge", "ridge-16")
    _run("head-cost", tmp_path, "--paradigms", "adapter", "--heads", ",".join(heads))
    columns, rows = _read(tmp_path / "head_cost.csv")
    assert columns == HEAD_COLUMNS
    assert [(r["paradigm"], r["head"]) for r in rows] == [("adapter", h) for h in heads]
    assert all(r["rejected_rows"] == "0" and float(r["head_share"]) > 0.0 for r in rows)
    assert [r["head"] for r in rows if r["step_vs_plain"]] == ["slda+sdc"]  # one more forward: a dearer step
    assert float(next(r for r in rows if r["step_vs_plain"])["step_vs_plain"]) > 0.0
    with pytest.raises(SystemExit):
        bench_core.main(["head-cost", "--quick", "--out", str(tmp_path), "--heads", "linear"])


def test_unknown_paradigm_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        bench_core.main(["step-bound", "--quick", "--out", str(tmp_path), "--paradigms", "bogus"])


def test_interleaved_stops_at_the_time_budget() -> None:
    calls: list[str] = []
    times = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=50, warmup=1,
                        budget_s=0.0, min_rounds=3)
    assert [len(t) for t in times.values()] == [3, 3]  # whole rounds, never fewer than min_rounds
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the order rotates each round


def _gpu_sh(out: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "GPU_SH_CPU_CHECK"}
    return subprocess.run(["bash", str(GPU_SH), "--out", str(out), *args], capture_output=True, text=True,
                          env={**environment, "PYTHON": sys.executable, **env}, timeout=300, check=False)


def _check_gpu_sh_output(done: subprocess.CompletedProcess[str], out: Path, paradigms: tuple[str, ...]) -> None:
    assert done.returncode == 0, done.stderr
    expected = [(p, v) for p in paradigms for v in ("off", "on")]
    columns, rows = _read(out / "projection_cost.csv")
    assert columns == PROJECTION_COLUMNS
    assert [(r["paradigm"], r["variant"]) for r in rows] == expected
    assert {(r["precision"], r["attention"], r["device"]) for r in rows} == {("bf16", "sdpa", "cpu")}
    assert all(int(r["total_rank"]) > 0 for r in rows if r["variant"] == "on")
    table = done.stdout.split("projection-cost: learn throughput")[1].split("projection-cost breakdown")[0]
    lines = [line for line in table.splitlines() if line.strip()]
    assert [tuple(line.split()[:2]) for line in lines[-len(expected):]] == expected
    assert "torch " in done.stdout and "gpu.sh: finished" in done.stdout


def test_gpu_sh_cpu_check(tmp_path: Path) -> None:
    done = _gpu_sh(tmp_path, "--cpu-check")
    _check_gpu_sh_output(done, tmp_path, PARADIGMS)  # all 8 configs: 4 paradigms x projection off/on


def test_gpu_sh_cpu_check_from_env_passes_extra_options(tmp_path: Path) -> None:
    done = _gpu_sh(tmp_path, "--paradigms", "lora", GPU_SH_CPU_CHECK="1")
    _check_gpu_sh_output(done, tmp_path, ("lora",))


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None or torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_sh_without_gpu_refuses(tmp_path: Path) -> None:
    done = _gpu_sh(tmp_path)
    assert done.returncode != 0
    assert "no GPU" in done.stderr and "--cpu-check" in done.stderr
    assert not (tmp_path / "projection_cost.csv").exists()


def _bench_module(module: str, tmp_path: Path, *args: str) -> tuple[str, list[dict[str, str]]]:
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--records-per-class", "10",
                           "--out", str(tmp_path), *args], capture_output=True, text=True, timeout=300,
                          cwd=GPU_SH.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, _read(tmp_path / f"{module}.csv")[1]


def test_bench_stream_runs_through_the_broker(tmp_path: Path) -> None:
    stdout, rows = _bench_module("bench_stream", tmp_path, "--repeats", "1")
    assert len(rows) == 1 and rows[0]["records"] == "100"  # 10 digits x 10 records, all learned both ways
    ratio = float(rows[0]["ratio"])
    assert ratio == pytest.approx(float(rows[0]["broker_rps"]) / float(rows[0]["replay_rps"]))
    assert float(rows[0]["checkpoint_kib"]) > 0
    assert "median ratio" in stdout and "broker_rps" in stdout


def test_bench_serving_answers_while_learning_and_idle(tmp_path: Path) -> None:
    stdout, rows = _bench_module("bench_serving", tmp_path)
    assert [row["phase"] for row in rows] == ["while learning", "idle"]
    for row in rows:
        assert int(row["requests"]) > 0 and row["errors"] == "0"
        assert 0 < float(row["p50_ms"]) <= float(row["p90_ms"]) <= float(row["p99_ms"])
    assert "p99 ratio learning/idle" in stdout


def test_bench_ranks_quick_splits_the_step_of_one_and_two_ranks(tmp_path: Path) -> None:
    """bench_ranks --quick: 1 rank (plain learner) and 2 gloo ranks in spawned processes, one CSV row each; the
    split is consistent (compute + communication + waiting = step) and only the ranks communicate."""
    from benchmarks.bench_ranks import COLUMNS as RANKS_COLUMNS
    from benchmarks.bench_ranks import main as bench_ranks

    threads = torch.get_num_threads()
    assert bench_ranks(["--quick", "--out", str(tmp_path)]) == 0
    assert torch.get_num_threads() == threads, "the benchmark changed the test process's torch threads"
    columns, rows = _read(tmp_path / "bench_ranks.csv")
    assert columns == RANKS_COLUMNS
    assert [(r["ranks"], r["backend"]) for r in rows] == [("1", "none"), ("2", "gloo")]
    for row in rows:
        parts = float(row["compute_ms"]) + float(row["communication_ms"]) + float(row["waiting_ms"])
        assert parts == pytest.approx(float(row["step_ms"]))
        assert float(row["records_per_s"]) > 0 and float(row["collectives_per_step"]) >= 2
    assert float(rows[1]["communication_ms"]) > float(rows[0]["communication_ms"])  # gloo vs identity calls


def test_torchrun_restarts_brings_a_group_back_with_a_fresh_store(tmp_path: Path) -> None:
    """One run per setting: with a fresh store per restart (what docs/operations.md tells users to set) the
    killed group comes back; the shared-store run has one outcome, whichever (it fails only sometimes)."""
    from benchmarks.torchrun_restarts import COLUMNS as RESTART_COLUMNS

    command = [sys.executable, "-m", "benchmarks.torchrun_restarts", "--runs", "1", "--timeout", "60",
               "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=GPU_SH.parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    columns, rows = _read(tmp_path / "torchrun_restarts.csv")
    assert columns == RESTART_COLUMNS
    shared, fresh = rows
    assert fresh["setting"] == "fresh store per restart" and fresh["came back"] == "1", fresh
    assert sum(int(shared[k]) for k in ("came back", "failed", "hung")) == 1


def test_feature_drift_measures_how_far_old_features_move(tmp_path: Path) -> None:
    """`evidence feature-drift --quick`: nothing moves without a PET; LoRA without projection at a high rate
    moves segment 0's features and its class means, and the head's stored means (drift compensation off) do not
    follow, so the tracking error equals the true move; with the projection (both thresholds near 1) the same
    rate moves them far less."""
    from benchmarks import evidence
    from benchmarks.feature_drift import COLUMNS as DRIFT_COLUMNS

    variants = ["frozen:learner.pet.kind=none", "plain:learner.projection.enabled=false",
                "pegp:learner.projection.eps=0.99999,learner.projection.eps_bottleneck=0.99999"]
    args = ["feature-drift", "--quick", "--out", str(tmp_path), "--limit-per-class", "60", "--test-limit-per-class",
            "20", "--every", "4", "--set", "learner.optimizer.lr=1.0", "--set", "learner.head.drift_compensation=none"]
    threads = torch.get_num_threads()
    assert evidence.main([*args, *(part for v in variants for part in ("--variant", v))]) == 0
    assert torch.get_num_threads() == threads, "the benchmark changed the test process's torch threads"
    columns, rows = _read(tmp_path / "feature_drift.csv")
    assert columns == DRIFT_COLUMNS
    last = {row["variant"]: row for row in rows}  # each variant's last measurement
    assert [r["steps"] for r in rows if r["variant"] == "frozen"][:2] == ["0", "4"]
    assert float(last["frozen"]["drift_old"]) == 0 and float(last["frozen"]["mean_moved"]) == 0
    plain, pegp = (float(last[v]["drift_old"]) for v in ("plain", "pegp"))
    assert plain > 0.003 and pegp < plain / 10, (plain, pegp)
    assert float(last["plain"]["tracking_error"]) == pytest.approx(float(last["plain"]["mean_moved"]), rel=1e-3)
