"""Domain-incremental streams (S3 of the evidence): every class in every segment, each segment from its own
disjoint pool of CIFAR-10 test images corrupted with one `imagecorruptions` type, a held-out pool per segment
for `pegp-stream eval`'s accuracy matrix. Runs on the real CIFAR-10 archive; skips only when it is absent."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_BACKBONE
from PIL import Image

from pegp_stream.cli import main
from pegp_stream.config import EvalConfig, StreamConfig, to_config
from pegp_stream.data import datasets
from pegp_stream.data.corrupt import corrupt_images
from pegp_stream.data.schedule import domain_incremental_schedule
from pegp_stream.data.streams import build_stream, build_test_stream
from pegp_stream.errors import ConfigError

CORRUPTIONS = ("snow", "contrast", "pixelate")


@pytest.fixture(scope="module")
def cifar10_dir():
    """The folder with the real cifar10_jpg.tar.xz, or a skip naming where it was looked for."""
    folders = datasets.default_data_dirs()
    for folder in folders:
        if (folder / datasets.CIFAR10_ARCHIVE).is_file():
            return str(folder.resolve())
    pytest.skip(f"needs {datasets.CIFAR10_ARCHIVE} in one of {', '.join(map(str, folders))} "
                f"(set {datasets.DATA_ENV})")


def s3(data_dir: str, **overrides) -> StreamConfig:
    config = {"datasets": ["cifar10"], "split": "test", "corruptions": CORRUPTIONS, "severity": 1,
              "limit_per_class": 4, "data_dir": data_dir, "seed": 3}
    return to_config(StreamConfig, config | overrides)


def test_pools_are_disjoint_across_segments_and_roles_and_hold_every_class(cifar10_dir):
    """At full size on the real labels (1000 per class, 5 segments): 150 + 50 per class and segment, no row
    twice anywhere, and each segment of both roles holds every class equally."""
    labels = datasets.load_dataset("cifar10", "test", data_dir=cifar10_dir).labels
    train, held = (domain_incremental_schedule(labels, 5, 0.25, heldout=h, seed=3) for h in (False, True))
    rows = [item.index for item in train + held]
    assert len(rows) == len(set(rows)) == 10_000
    for schedule, per_class in ((train, 150), (held, 50)):
        counts = Counter((item.segment, int(labels[item.index])) for item in schedule)
        assert counts == {(segment, c): per_class for segment in range(5) for c in range(10)}
    assert [item.position for item in train] == list(range(7500))


def test_stream_records_are_their_source_rows_corrupted_by_their_segments_type(cifar10_dir):
    config = s3(cifar10_dir)
    source = datasets.load_dataset("cifar10", "test", data_dir=cifar10_dir)
    stream, held = build_stream(config), build_test_stream(config, 2)
    assert len(stream) == 3 * 10 * 4 and len(held) == 3 * 10 * 2
    for built, heldout in ((stream, False), (held, True)):
        schedule = domain_incremental_schedule(source.labels, 3, 0.25, heldout=heldout, seed=3,
                                               limit_per_class=4 if not heldout else 2)
        for item, record in zip(schedule, built, strict=True):
            expected = corrupt_images(source.images[[item.index]], CORRUPTIONS[item.segment], 1, 3,
                                      np.array([item.index]))[0]
            assert np.array_equal(record.image, expected) and record.segment == item.segment
            assert record.label == source.class_names[source.labels[item.index]]
            assert not np.array_equal(record.image, source.images[item.index])  # corrupted, not the source
    assert {r.label for r in stream} == set(source.class_names)


def test_stream_is_deterministic_for_a_seed_and_changes_with_it(cifar10_dir):
    first, again = build_stream(s3(cifar10_dir)), build_stream(s3(cifar10_dir))
    assert [(r.label, r.segment) for r in first] == [(r.label, r.segment) for r in again]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(first, again, strict=True))
    other = build_stream(s3(cifar10_dir, seed=4))
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))


def test_unknown_corruption_is_a_one_line_config_error_naming_the_field():
    with pytest.raises(ConfigError) as caught:
        to_config(EvalConfig, {"stream": {"corruptions": ["snow", "fog"]}})
    message = str(caught.value)
    assert "\n" not in message and message.startswith("stream.corruptions") and "'fog'" in message


def test_images_smaller_than_32_pixels_are_resized_up_to_it_before_the_corruption():
    config = StreamConfig(datasets=("digits",), corruptions=("snow", "contrast"), limit_per_class=2)
    stream = build_stream(config)
    assert all(record.image.shape == (32, 32, 3) and record.image.dtype == np.uint8 for record in stream)
    source = datasets.load_dataset("digits")  # 8 x 8: the package alone refuses it
    item = stream.items[0]
    row = np.sort([i.index for i in domain_incremental_schedule(source.labels, 2, 0.25, heldout=False, seed=0,
                                                                 limit_per_class=2) if i.segment == 0])[item.index]
    upsized = np.asarray(Image.fromarray(source.images[row]).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(stream.record(item).image, corrupt_images(upsized[None], "snow", 1, 0, np.array([row]))[0])


def test_evidence_s4_is_the_long_domain_stream_on_fashion_mnist_and_runs_quick_on_digits(tmp_path):
    from benchmarks import evidence

    full = {r.key: r.config for r in evidence.plan(["s4", "frozen-heads"], [0], ["lora"], False, None, 0, 50)}
    assert {"s4/lora/plain", "s4/lora/pegp", "frozen-s4/none/slda"} <= set(full)
    stream = full["s4/lora/pegp"]["stream"]
    assert stream["datasets"] == ["fashion_mnist"] and stream["split"] == "train"
    assert stream["corruptions"] == list(evidence.S3_CORRUPTIONS) and stream["limit_per_class"] is None
    args = ["run", "--quick", "--suites", "s4", "--seeds", "0", "--paradigms", "lora", "--variants", "pegp",
            "--workers", "1", "--limit-per-class", "3", "--test-limit-per-class", "2", "--out", str(tmp_path)]
    assert evidence.main(args) == 0
    result = json.loads((tmp_path / "s4" / "lora" / "pegp" / "seed0" / "result.json").read_text())
    assert result["segments"] == len(evidence.S3_CORRUPTIONS) and result["records"] == 5 * 10 * 3
    assert (tmp_path / "forgetting-s4.png").is_file()


def test_eval_on_a_tiny_domain_stream_writes_a_t_by_t_matrix(cifar10_dir, tmp_path):
    out = tmp_path / "s3"
    args = ["eval", "--out", str(out), "--no-plots", "--set", "name=s3", "--set", "stream.datasets=[cifar10]",
            "--set", "stream.split=test", "--set", f"stream.corruptions=[{','.join(CORRUPTIONS)}]",
            "--set", f"stream.data_dir={cifar10_dir}", "--set", "stream.limit_per_class=3",
            "--set", "test_limit_per_class=2", "--set", "learner.precision=fp32",
            *(f"--set=learner.backbone.{k}={v}" for k, v in TINY_BACKBONE.items())]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    result = json.loads((out / "result.json").read_text())
    assert result["segments"] == 3 and result["records"] == 3 * 10 * 3 and result["test_samples"] == 3 * 10 * 2
    assert result["true_boundaries"] == [30, 60]
    assert all(len(labels) == 10 for labels in result["segment_labels"])  # every class in every segment
    with (out / "matrix.csv").open() as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["after", "seg0", "seg1", "seg2"] and len(rows) == 4
    for i, row in enumerate(rows[1:]):  # lower triangle measured, the rest not yet seen
        assert all(row[1 : i + 2]) and not any(row[i + 2 :])


def test_evidence_s3_suite_runs_each_paradigm_plain_and_pegp_on_the_domain_stream(cifar10_dir, tmp_path):
    from benchmarks import evidence

    runs = {r.key: r.config for r in evidence.plan(["s3", "frozen-heads"], [0], ["lora"], True, None, 150, 50)}
    assert {"s3/lora/plain", "s3/lora/pegp", *(f"frozen-s3/none/{h}" for h in evidence.FROZEN_HEADS)} <= set(runs)
    for key in ("s3/lora/pegp", "frozen-s3/none/slda"):
        assert runs[key]["stream"]["corruptions"] == list(evidence.S3_CORRUPTIONS)
        assert runs[key]["stream"]["split"] == "test" and runs[key]["drift"] == {}
    args = ["run", "--quick", "--suites", "s3", "--seeds", "0", "--paradigms", "lora", "--workers", "1",
            "--limit-per-class", "2", "--test-limit-per-class", "2", "--set", f"stream.data_dir={cifar10_dir}",
            "--out", str(tmp_path)]
    assert evidence.main(args) == 0
    for variant in ("plain", "pegp"):
        result = json.loads((tmp_path / "s3" / "lora" / variant / "seed0" / "result.json").read_text())
        assert result["segments"] == len(evidence.S3_CORRUPTIONS) and len(result["matrix"]) == result["segments"]
    assert (tmp_path / "forgetting-s3.png").is_file()
