"""One driver for "learn a stream with boundaries" (`pegp_stream.driver`), and the learner's own input
preparation and frozen copy that the daemon, serving, eval and replay share."""

from __future__ import annotations

from conftest import TINY_BACKBONE, tiny_config, tiny_pet

from pegp_stream.config import EvalConfig, ReplayConfig
from pegp_stream.core.learner import create_learner
from pegp_stream.core.prepare import to_model_input
from pegp_stream.data.datasets import load_dataset
from pegp_stream.evaluation.replay import replay
from pegp_stream.evaluation.run import run_eval

TASK_FREE = {"detector": {"kind": "feature_shift", "window": 8, "reference_window": 16, "threshold": 3.0},
             "min_segment_length": 20, "cooldown": 10}


def test_replay_finds_the_same_detector_boundaries_as_eval(digits_backbone):
    """Replay drives the learner through the same boundary policy as eval (and the daemon): on a stream
    without markers, its detector finds the boundaries, at the same positions in both."""
    learner = {"backbone": {**TINY_BACKBONE, "checkpoint_path": digits_backbone}, "pet": tiny_pet("adapter"),
               "precision": "fp32", "head": {"kind": "ncm"}}
    stream = {"datasets": ["digits"], "limit_per_class": 40, "markers": False}
    common = {"learner": learner, "stream": stream, "drift": TASK_FREE, "batch_size": 8}
    replayed = replay(ReplayConfig.model_validate({**common, "log_every": 10**9}))
    evaluated = run_eval(EvalConfig.model_validate({**common, "test_limit_per_class": 2}))
    assert replayed.boundaries, "the detector found no boundary: the test stream is too easy"
    assert all(b["cause"] == "detector" for b in evaluated.learner_boundaries)
    assert replayed.boundaries == [b["position"] for b in evaluated.learner_boundaries]


def test_prepare_is_the_learners_input_and_a_frozen_copy_keeps_predicting_as_then():
    learner = create_learner(tiny_config("adapter"))
    images = list(load_dataset("digits", split="test").images[:16])
    spec = learner.input_config
    prepared = learner.prepare(images)
    assert prepared.equal(to_model_input(images, spec["input_size"], spec["mean"], spec["std"]))
    learner.learn_many(prepared[:8], [0, 1] * 4)
    frozen = learner.frozen_copy()
    before = learner.predict_many(prepared)
    learner.learn_many(prepared[8:], [2, 3] * 4)
    after = frozen.predict_many(frozen.prepare(images))
    assert after.labels == before.labels and after.probs.equal(before.probs) and after.classes == [0, 1]
    assert learner.predict_many(prepared).classes == [0, 1, 2, 3]
    assert frozen.backbone.patch_embed.proj.weight.data_ptr() == learner.backbone.patch_embed.proj.weight.data_ptr()
