"""The command line, run as a user would (click's runner in-process)."""

from __future__ import annotations

import json

from click.testing import CliRunner
from conftest import TINY_BACKBONE

from pegp_stream.cli import main


def test_replay_learns_a_segmented_digits_stream(tmp_path):
    config = tmp_path / "replay.yaml"
    backbone = ", ".join(f"{k}: {v}" for k, v in TINY_BACKBONE.items())
    config.write_text(f"learner:\n  backbone: {{{backbone}}}\n  pet: {{kind: adapter}}\nstream:\n"
                      "  datasets: [digits]\n  limit_per_class: 20\n")
    out = tmp_path / "summary.json"
    result = CliRunner().invoke(main, ["replay", "--config", str(config), "--set", "stream.classes_per_segment=5",
                                       "--set", "batch_size=10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    summary = json.loads(out.read_text())
    assert summary["records"] == 200 and summary["boundaries"] == [100]
    assert set(summary["segment_accuracy"]) == {"0", "1"}
    assert summary["ranks"] and all(r > 0 for r in summary["ranks"].values())


def test_bad_override_fails_naming_the_field(tmp_path):
    result = CliRunner().invoke(main, ["replay", "--set", "learner.projection.eps=2"])
    assert result.exit_code == 2
    assert "learner.projection.eps" in result.output


def test_environment_keys_are_read(monkeypatch):
    monkeypatch.setenv("PEGP_LEARNER__PET__KIND", "bitfit")
    result = CliRunner().invoke(main, ["replay"])
    assert result.exit_code == 2 and "unknown PET kind 'bitfit'" in result.output


def test_pretrain_writes_a_loadable_backbone(tmp_path):
    out = tmp_path / "vit.safetensors"
    args = ["pretrain", "--dataset", "digits", "--epochs", "1", "--limit", "64", "--batch-size", "32",
            "--no-augment", "--out", str(out)]
    args += [f"--set={k}={v}" for k, v in TINY_BACKBONE.items() if k != "name"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps"] == 2 and 0.0 <= meta["test_accuracy"] <= 1.0 and len(meta["sha256"]) == 64
    from pegp_stream import create_learner

    learner = create_learner({"backbone": {**TINY_BACKBONE, "checkpoint_path": str(out)}})
    assert learner.backbone.embed_dim == TINY_BACKBONE["embed_dim"]


def test_example_configs_load():
    from pegp_stream.config import DaemonConfig, ReplayConfig, load

    assert load(DaemonConfig, "deploy/examples/daemon.yaml").kafka.topic == "samples"
    assert load(ReplayConfig, "deploy/examples/replay-digits.yaml").learner.pet.kind == "lora"


def test_demo_runs_broker_stream_and_daemon_end_to_end(tmp_path):
    """The README's first command, on a short stream: broker up, records produced, all learned once."""
    result = CliRunner().invoke(main, ["demo", "--limit-per-class", "5", "--workdir", str(tmp_path / "demo"),
                                       "--set", "exit_when_idle_s=2", "--set", "http.port=0"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.rindex("\n{\n") + 1 :])
    assert summary["records_learned"] == 50 and summary["boundaries"] == {"marker": 4}
    assert summary["dead_letters"] == {}
