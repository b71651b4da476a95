"""Drift boundaries: golden detection indices on seeded streams, quiet stationary streams, marker / operator /
debounce semantics, state round trips, and the conformance battery every registered detector passes."""

from __future__ import annotations

import doctest
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pegp_stream import drift
from pegp_stream.config import to_config
from pegp_stream.drift import (
    DETECTOR_CONFIGS,
    AdwinConfig,
    BoundaryDetector,
    BoundaryPolicy,
    DetectorConfig,
    DriftConfig,
    FeatureShiftConfig,
    PageHinkleyConfig,
    build_detector,
    detectors,
    register_detector,
)
from pegp_stream.errors import CheckpointError, ConfigError

DETECTORS = detectors()


def losses(seed: int, *pieces: tuple[float, float, int]) -> np.ndarray:
    """Concatenated Normal(mean, std) pieces of the given lengths."""
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(mean, std, n) for mean, std, n in pieces])


def features(seed: int, n: int, shifts: dict[int, float], dim: int = 16) -> np.ndarray:
    """N(0, I) vectors; from each index in `shifts` on, every coordinate moves by the given amount."""
    x = np.random.default_rng(seed).normal(size=(n, dim))
    for start, amount in shifts.items():
        x[start:] += amount
    return x


def fires(detector: BoundaryDetector, stream) -> list[int]:
    return [i for i, value in enumerate(stream) if detector.update(value)]


def default(kind: str) -> BoundaryDetector:
    return build_detector(DETECTOR_CONFIGS[kind]())


def through_json(state):
    return json.loads(json.dumps(state, allow_nan=False))


# ---------------------------------------------------------------------------------------------------------
# golden indices (seeded numpy generators; defaults unless stated)

STEP_LOSS = dict(seed=0, pieces=((0.5, 0.1, 1000), (1.5, 0.1, 1000)))


def test_page_hinkley_golden_index():
    found = fires(default("page_hinkley"), losses(STEP_LOSS["seed"], *STEP_LOSS["pieces"]))
    assert found == [1026]
    assert 1000 <= found[0] <= 1050


def test_adwin_golden_indices():
    found = fires(default("adwin"), losses(STEP_LOSS["seed"], *STEP_LOSS["pieces"]))
    # standalone ADWIN reports the change on each clock tick while its old part drains (32 samples apart)
    assert found == [1023, 1055, 1119]
    assert 1000 <= found[0] <= 1050 and all(i % 32 == 31 for i in found)


def test_feature_shift_golden_indices():
    found = fires(default("feature_shift"), features(1, 2400, {800: 1.0, 1600: 1.0}))
    assert found == [813, 1610]
    assert 800 <= found[0] < 800 + 32 and 1600 <= found[1] < 1600 + 32  # within one recent window


def test_loss_detectors_ignore_a_fall_and_adwin_both_sees_it():
    falling = losses(2, (1.5, 0.1, 1000), (0.5, 0.1, 1000))
    assert fires(default("page_hinkley"), falling) == []
    assert fires(default("adwin"), falling) == []
    both = fires(build_detector(AdwinConfig(direction="both")), falling)
    assert both and 1000 <= both[0] <= 1050


def test_policy_golden_boundaries_on_features():
    policy = BoundaryPolicy({"detector": "feature_shift", "min_segment_length": 200, "cooldown": 50})
    stream = features(1, 2400, {800: 1.0, 1600: 1.0})
    found = [(i, c) for i, x in enumerate(stream) if (c := policy.observe(None, None, x))]
    assert found == [(813, "detector"), (1610, "detector")]


# ---------------------------------------------------------------------------------------------------------
# stationary streams stay quiet, with margin


def test_stationary_streams_fire_nothing_at_defaults():
    rng = np.random.default_rng(7)
    normal, skewed = rng.normal(0.5, 0.1, 20_000), rng.gamma(2.0, 0.25, 20_000)  # gamma: CE-like, std 0.35
    vectors = rng.normal(size=(20_000, 16))
    for kind in ("page_hinkley", "adwin"):
        for stream in (normal, skewed):
            assert fires(default(kind), stream) == [], kind
    ph, peak = default("page_hinkley"), 0.0
    for value in skewed:
        ph.update(value)
        peak = max(peak, ph.statistic)
    assert peak < ph.threshold / 2
    fs, peak = default("feature_shift"), 0.0
    for vector in vectors:
        assert not fs.update(vector)
        peak = max(peak, fs.statistic)
    assert peak < fs.threshold / 1.5


# ---------------------------------------------------------------------------------------------------------
# each detector's math against a direct computation


def test_page_hinkley_matches_the_formula():
    x = losses(3, (0.5, 0.2, 400), (0.9, 0.2, 200))
    config = PageHinkleyConfig(delta=0.05, threshold=10.0)
    mean = np.cumsum(x) / np.arange(1, len(x) + 1)
    m = np.cumsum(x - mean - config.delta)
    statistic = m - np.minimum.accumulate(np.minimum(m, 0.0))
    expected = int(np.argmax(statistic > config.threshold))
    detector = build_detector(config)
    found = fires(detector, x[: expected + 1])
    assert found == [expected] and detector.statistic == pytest.approx(statistic[expected], rel=1e-9)


def test_feature_shift_matches_the_formula():
    config = FeatureShiftConfig(window=8, reference_window=40, threshold=1e9)
    x = features(4, 48, {}, dim=5) * np.linspace(0.5, 2.0, 5)
    detector = build_detector(config)
    for vector in x:
        detector.update(vector)
    reference, recent = x[:40], x[40:]
    var = reference.var(axis=0)
    scale = (var + 1e-6 * var.mean() + 1e-12) * (1 / 8 + 1 / 40)  # with the floor for near-constant dimensions
    assert detector.statistic == pytest.approx(np.mean((recent.mean(0) - reference.mean(0)) ** 2 / scale), rel=1e-9)


def test_adwin_window_bookkeeping():
    x = losses(5, (0.5, 0.3, 700), (2.0, 0.3, 300), (1.0, 0.3, 300))
    detector = build_detector(AdwinConfig(direction="both"))
    for t, value in enumerate(x):
        detector.update(value)
        assert all(len(row) <= detector.MAX_BUCKETS for row in detector._rows)
        if t % 37 == 0 or detector.drift_detected:
            kept = x[t + 1 - detector.width : t + 1]
            assert sum(len(row) << i for i, row in enumerate(detector._rows)) == detector.width
            assert detector._total == pytest.approx(kept.sum(), rel=1e-9)
            assert detector._variance == pytest.approx(((kept - kept.mean()) ** 2).sum(), rel=1e-6)
    assert detector.width < 700  # the old level was dropped


# ---------------------------------------------------------------------------------------------------------
# policy semantics

markers = st.lists(st.one_of(st.none(), st.sampled_from(["a", "b", 1, 2])), max_size=40)


@settings(max_examples=60, deadline=None)
@given(markers)
def test_marker_boundaries_exactly_where_a_new_marker_appears(sequence):
    policy = BoundaryPolicy({"min_segment_length": 1000, "cooldown": 1000, "min_marker_gap": 1})
    seen, expected = [], []
    for marker in sequence:
        expected.append("marker" if marker is not None and seen and marker not in seen else None)
        seen += [marker] if marker is not None and marker not in seen else []
    assert [policy.observe(marker) for marker in sequence] == expected
    ignoring = BoundaryPolicy({"markers": False})
    assert [ignoring.observe(marker) for marker in sequence] == [None] * len(sequence)


def test_markers_compare_type_and_value():
    policy = BoundaryPolicy({"min_marker_gap": 1})
    assert [policy.observe(m) for m in [1, np.int64(1), "1", "1", 2]] == [None, None, "marker", None, "marker"]
    with pytest.raises(TypeError, match="segment_marker"):
        policy.observe(1.5)


def test_operator_request_bypasses_min_segment_length_and_is_consumed():
    policy = BoundaryPolicy({"detector": "page_hinkley", "min_segment_length": 1000, "min_marker_gap": 1})
    assert policy.observe("a", 0.5) is None
    policy.request()
    assert policy.observe("a", 0.6) == "operator"
    assert policy.observe("a", 0.7) is None
    fresh = default("page_hinkley")
    fresh.update(0.6), fresh.update(0.7)
    assert policy.detector.state_dict() == fresh.state_dict()  # reset at the boundary, then fed from it on
    policy.request()
    assert policy.observe("b", 0.5) == "marker"  # both at once: one boundary, the marker's, request consumed
    assert policy.observe("b", 0.5) is None
    assert policy.boundaries == {"marker": 1, "operator": 1, "detector": 0}


def test_min_segment_length_defers_a_detection():
    # rises at 1000, 1300 (only 274 samples after the first detection) and 2000
    x = losses(0, (0.5, 0.1, 1000), (1.5, 0.1, 300), (2.5, 0.1, 700), (3.5, 0.1, 600))
    config = {"detector": "page_hinkley", "min_segment_length": 500, "cooldown": 100}
    policy = BoundaryPolicy(config)
    found = [(i, c) for i, value in enumerate(x) if (c := policy.observe(None, value))]
    assert found == [(1026, "detector"), (1526, "detector"), (2027, "detector")]
    assert all(b - a >= 500 for (a, _), (b, _) in zip(found, found[1:], strict=False))
    # a checkpoint taken while the deferred detection (PH fired at 1327) waits carries it over
    head = BoundaryPolicy(config)
    for value in x[:1400]:
        head.observe(None, value)
    state = through_json(head.state_dict())
    assert state["pending"] and state["since"] == 1400 - 1026
    resumed = BoundaryPolicy(config)
    resumed.load_state_dict(state)
    assert [(i, c) for i, value in enumerate(x[1400:], 1400) if (c := resumed.observe(None, value))] == found[1:]


def test_cooldown_drops_the_same_change_right_after_a_marker():
    x = losses(0, (0.5, 0.1, 1030), (1.5, 0.1, 500))  # the marker says 1000, the loss rises at 1030
    segments = ["a"] * 1000 + ["b"] * 530

    def run(cooldown: int) -> tuple[list[tuple[int, str]], int]:
        policy = BoundaryPolicy({"detector": "page_hinkley", "min_segment_length": 1, "cooldown": cooldown})
        found = [(i, c) for i, (m, v) in enumerate(zip(segments, x, strict=True)) if (c := policy.observe(m, v))]
        return found, policy.dropped

    assert run(0) == ([(1000, "marker"), (1076, "detector")], 0)
    assert run(100) == ([(1000, "marker")], 1)  # the firing at 1076 is inside the cooldown: dropped


def test_missing_or_nonfinite_signal_is_skipped_and_counted():
    policy = BoundaryPolicy({"detector": "feature_shift"})
    for value in (None, np.full(4, np.nan), np.ones(4), torch.ones(4)):
        policy.observe(None, None, value)
    assert (policy.skipped, policy.samples) == (2, 4)
    with pytest.raises(ValueError, match="1-D vector"):
        policy.observe(None, None, np.ones((2, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        policy.observe(None, None, np.ones(5))
    loss_policy = BoundaryPolicy({"detector": "page_hinkley"})
    for value in (None, math.inf, float("nan"), torch.tensor(0.5), np.float32(0.5)):
        loss_policy.observe(None, value)
    assert loss_policy.skipped == 3
    with pytest.raises(ValueError, match="one number per sample"):
        loss_policy.observe(None, torch.ones(2))


@pytest.mark.parametrize("kind", DETECTORS)
def test_policy_state_round_trip_continues_identically(kind):
    n = 1500
    x = losses(11, (0.5, 0.1, 500), (1.5, 0.1, 500), (2.5, 0.1, 500))
    f = features(12, n, {500: 1.0, 1000: 1.0})
    segments = [None if i % 7 else ("s1" if i < 1200 else "s2") for i in range(n)]
    config = {"detector": kind, "min_segment_length": 150, "cooldown": 30}

    def step(policy: BoundaryPolicy, i: int):
        if i in (333, 1400):
            policy.request()
        return policy.observe(segments[i], None if i % 97 == 0 else x[i], f[i])

    whole = BoundaryPolicy(config)
    expected = [step(whole, i) for i in range(n)]
    first = BoundaryPolicy(config)
    head = [step(first, i) for i in range(700)]
    resumed = BoundaryPolicy(config)
    resumed.load_state_dict(through_json(first.state_dict()))
    assert head + [step(resumed, i) for i in range(700, n)] == expected
    assert resumed.state_dict() == whole.state_dict()
    assert expected.count("operator") == 2 and expected.count("marker") == 1
    assert expected.count("detector") == (0 if kind == "none" else 2)  # the cut at 700 falls between them


def test_policy_state_must_fit():
    policy = BoundaryPolicy({"detector": "page_hinkley"})
    with pytest.raises(CheckpointError, match="not 'page_hinkley'"):
        policy.load_state_dict(BoundaryPolicy({"detector": "adwin"}).state_dict())
    policy.observe("a", 0.5)
    policy.request()
    state = policy.state_dict()
    broken = {key: value for key, value in state.items() if key != "since"}
    with pytest.raises(CheckpointError, match="since"):
        BoundaryPolicy({"detector": "page_hinkley"}).load_state_dict(broken)
    unchanged = BoundaryPolicy({"detector": "page_hinkley"})
    before = unchanged.state_dict()
    with pytest.raises(CheckpointError):
        unchanged.load_state_dict({**state, "detector": {"kind": "page_hinkley"}})
    assert unchanged.state_dict() == before  # nothing half-loaded
    resumed = BoundaryPolicy({"detector": "page_hinkley"})
    resumed.load_state_dict(through_json(state))
    assert resumed.observe("a", 0.5) == "operator"  # a pending operator request survives the checkpoint


def daemon_like(policy: BoundaryPolicy, segments: list, values, run: int = 8, requests=()) -> list[tuple[int, str]]:
    """The split-phase use: runs of <= `run` samples cut at marker changes; `before` ahead of each run,
    `after` per learned sample, a detector boundary applied at the end of its run. Returns (first sample of
    the new segment, cause)."""
    found, start = [], 0
    while start < len(values):
        window = segments[start : start + run]
        end = start + next((i for i in policy.marker_starts(window) if i), len(window))
        if start in requests:
            policy.request()
        if cause := policy.before(segments[start], segments[start + 1 : end]):
            policy.consolidated(cause)
            found.append((start, cause))
        detected = None
        for i in range(start, end):
            detected = policy.after(values[i]) or detected
        if detected:
            policy.consolidated(detected)
            found.append((end, detected))
        start = end
    return found


def test_split_phase_use_matches_the_debounce_rules():
    x = losses(0, (0.5, 0.1, 1000), (1.5, 0.1, 300), (2.5, 0.1, 700), (3.5, 0.1, 600))
    config = {"detector": "page_hinkley", "min_segment_length": 500, "cooldown": 100}
    found = daemon_like(BoundaryPolicy(config), [None] * len(x), x)
    # PH completes at 1026, then at 1327 and 2027, both deferred until their segments (from 1032 and 1536)
    # reach 500 samples with samples 1531 and 2035; each boundary falls at the end of that run of 8
    assert found == [(1032, "detector"), (1536, "detector"), (2040, "detector")]
    segments = ["a"] * 1000 + ["b"] * 1600
    policy = BoundaryPolicy({**config, "detector": "none"})
    assert daemon_like(policy, segments, x, requests=(200,)) == [(200, "operator"), (1000, "marker")]
    assert policy.boundaries == {"marker": 1, "operator": 1, "detector": 0}
    every = BoundaryPolicy({**config, "detector": "none"})
    every.request()
    assert [every.observe(m) for m in segments].count(None) == len(segments) - 2  # observe agrees


def test_marker_starts_is_pure():
    policy = BoundaryPolicy({"min_marker_gap": 2})
    assert policy.marker_starts(["a", "a", "b", 1, "1", "a", None, "c"]) == [2, 4, 7]
    assert BoundaryPolicy().marker_starts([None, "a", "b"]) == []  # "b" within the default gap of 10
    assert policy.state_dict() == BoundaryPolicy({"min_marker_gap": 2}).state_dict()
    assert BoundaryPolicy({"markers": False}).marker_starts(["a", "b", "c"]) == []


def test_a_marker_seen_before_never_starts_a_segment():
    """Records of the previous segment arriving late (several partitions) or a producer flipping between two
    markers make one boundary per new marker, no more."""
    policy = BoundaryPolicy({"min_marker_gap": 1})
    causes = [policy.observe(m) for m in ["s0"] * 5 + ["s1", "s0", "s1", "s0"] + ["s2"] * 3 + ["s1", "s2"]]
    assert causes.count("marker") == 2 and causes[5] == "marker" and causes[9] == "marker"
    resumed = BoundaryPolicy({"min_marker_gap": 1})
    resumed.load_state_dict(through_json(policy.state_dict()))
    assert [resumed.observe(m) for m in ["s0", "s1", "s2", "s3"]] == [None, None, None, "marker"]


def test_new_markers_within_the_gap_are_debounced():
    """A marker on every record cannot make every record a consolidation: at most one per min_marker_gap."""
    policy = BoundaryPolicy({"min_marker_gap": 10})
    causes = [policy.observe(i) for i in range(100)]
    assert [i for i, c in enumerate(causes) if c] == list(range(10, 100, 10))
    assert policy.dropped_markers == 99 - 9


def test_feature_shift_state_from_another_window_is_refused():
    small = build_detector(FeatureShiftConfig(window=16))
    fires(small, features(0, 40, {}))
    with pytest.raises(CheckpointError, match="window is 32"):
        default("feature_shift").load_state_dict(small.state_dict())


def test_docstring_examples():
    modules = (drift.config, drift.detector, drift.policy)
    assert sum(doctest.testmod(module, raise_on_error=True).attempted for module in modules) >= 3


# ---------------------------------------------------------------------------------------------------------
# conformance: every registered detector, automatically


def conformance_stream(kind: str) -> list:
    """Changes at 600 and 1200 in the signal the detector reads, as numpy, torch and plain Python values."""
    if default(kind).signal == "features":
        rows = features(21, 1800, {600: 1.0, 1200: 1.0})
        return [torch.tensor(r, dtype=torch.float32) if i % 3 == 0 else r for i, r in enumerate(rows)]
    values = losses(21, (0.5, 0.1, 600), (1.5, 0.1, 600), (2.5, 0.1, 600))
    return [torch.tensor(v) if i % 3 == 0 else float(v) if i % 3 == 1 else np.float64(v) for i, v in enumerate(values)]


@pytest.mark.parametrize("kind", DETECTORS)
def test_conformance_identity_and_determinism(kind):
    detector = default(kind)
    assert isinstance(detector, BoundaryDetector) and detector.name == kind
    assert detector.signal in ("loss", "features", "none")
    stream, twin = conformance_stream(kind), default(kind)
    first, second = fires(detector, stream), fires(twin, stream)
    assert first == second and detector.state_dict() == twin.state_dict()
    if detector.signal != "none":
        assert first and 600 <= first[0] < 700, first  # the battery's stream really exercises firing


@pytest.mark.parametrize("kind", DETECTORS)
def test_conformance_state_round_trip(kind):
    stream = conformance_stream(kind)
    whole = default(kind)
    expected = [whole.update(v) for v in stream]
    for cut in (1, 301, 640, 1250):
        head = default(kind)
        outputs = [head.update(v) for v in stream[:cut]]
        resumed = default(kind)
        resumed.load_state_dict(through_json(head.state_dict()))
        assert outputs + [resumed.update(v) for v in stream[cut:]] == expected, cut
        assert resumed.state_dict() == whole.state_dict()
    other = next(k for k in DETECTORS if k != kind)
    with pytest.raises(CheckpointError):
        default(kind).load_state_dict(default(other).state_dict())
    state = whole.state_dict()
    for key in list(state)[1:]:  # every field is needed, and a failed load changes nothing
        with pytest.raises(CheckpointError, match=key):
            resumed.load_state_dict({k: v for k, v in state.items() if k != key} | {"kind": kind})
        assert resumed.state_dict() == state


@pytest.mark.parametrize("kind", DETECTORS)
def test_conformance_reset_gives_a_fresh_detector(kind):
    stream = conformance_stream(kind)
    used = default(kind)
    for value in stream[:900]:
        used.update(value)
    used.reset()
    assert used.state_dict() == default(kind).state_dict()
    assert fires(used, stream) == fires(default(kind), stream)


@pytest.mark.parametrize("kind", DETECTORS)
def test_conformance_inputs_unmodified_and_nonfinite_ignored(kind):
    stream = conformance_stream(kind)
    copies = [v.clone() if isinstance(v, torch.Tensor) else np.copy(v) for v in stream[:400]]
    detector = default(kind)
    for value in stream[:400]:
        detector.update(value)
    for value, copy in zip(stream[:400], copies, strict=True):
        assert (torch.equal(value, copy) if isinstance(value, torch.Tensor) else np.array_equal(value, copy))
    before = detector.state_dict()
    bad = np.full(16, np.nan) if detector.signal == "features" else math.nan
    assert detector.update(bad) is False and detector.update(None) is False
    assert detector.state_dict() == before


# ---------------------------------------------------------------------------------------------------------
# config and registry


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"detector": "cusum"}, "detector", "valid detectors: adwin, feature_shift, none, page_hinkley"),
        ({"detector": {"kind": "feature_shift", "window": 0}}, "detector.window", "greater than or equal to 1"),
        ({"detector": {"kind": "feature_shift", "window": 64, "reference_window": 32}},
         "detector.reference_window", "must be >= window (64)"),
        ({"detector": {"kind": "feature_shift", "threshold": 0}}, "detector.threshold", "greater than 0"),
        ({"detector": {"kind": "page_hinkley", "threshold": -1}}, "detector.threshold", "greater than 0"),
        ({"detector": {"kind": "page_hinkley", "alpha": 1.5}}, "detector.alpha", "less than or equal to 1"),
        ({"detector": {"kind": "page_hinkley", "treshold": 3}}, "detector.treshold", "Extra inputs"),
        ({"detector": {"kind": "adwin", "delta": 1.0}}, "detector.delta", "less than 1"),
        ({"detector": 3}, "detector", "a detector name or a mapping"),
        ({"min_segment_length": 0}, "min_segment_length", "greater than or equal to 1"),
        ({"cooldown": -1}, "cooldown", "greater than or equal to 0"),
    ],
)
def test_bad_config_names_the_field(value, field, words):
    with pytest.raises(ConfigError) as caught:
        BoundaryPolicy(value)
    assert caught.value.field == field and words in str(caught.value)


def test_config_defaults_shorthand_and_dump_round_trip():
    config = to_config(DriftConfig, {"detector": "page_hinkley"})
    assert config.detector == PageHinkleyConfig() and config.markers and config.detector.alpha is None
    assert isinstance(DriftConfig().detector, DetectorConfig) and DriftConfig().detector.kind == "none"
    assert DriftConfig.model_validate(config.model_dump()) == config
    assert (FeatureShiftConfig().window, FeatureShiftConfig().reference_window, FeatureShiftConfig().threshold) == (
        32, 256, 6.0)


def test_register_detector_validates():
    with pytest.raises(ValueError, match="lower_snake_case"):
        register_detector("Bad-Name", lambda c: None)
    with pytest.raises(ValueError, match="already registered"):
        register_detector("page_hinkley", lambda c: None)
    with pytest.raises(TypeError, match="callable"):
        register_detector("fresh", 3, config=PageHinkleyConfig)
    with pytest.raises(ValueError, match="no config class"):
        register_detector("fresh", lambda c: None)
    with pytest.raises(ValueError, match="kind must default to 'fresh'"):
        register_detector("fresh", lambda c: None, config=PageHinkleyConfig)
    with pytest.raises(ConfigError, match="valid detectors: adwin, feature_shift, none, page_hinkley"):
        build_detector(DetectorConfig(kind="fresh"))


def test_a_registered_detector_works_through_config_and_policy():
    from typing import Literal

    class EveryNConfig(DetectorConfig):
        kind: Literal["every_n"] = "every_n"
        n: int = 10

    class EveryN(drift.NoDetector):
        name, signal = "every_n", "loss"

        def __init__(self, config: EveryNConfig) -> None:
            self.n, self.seen = config.n, 0

        def reset(self) -> None:
            self.seen = 0

        def update(self, value) -> bool:
            self.seen += 1
            return self.seen % self.n == 0

    try:
        register_detector("every_n", EveryN, config=EveryNConfig)
        policy = BoundaryPolicy({"detector": {"kind": "every_n", "n": 5}, "min_segment_length": 1, "cooldown": 0})
        assert [i for i in range(12) if policy.observe(None, 1.0)] == [4, 8]
        register_detector("wrong_type", lambda c: object(), config=type("WrongConfig", (DetectorConfig,), {
            "__annotations__": {"kind": Literal["wrong_type"]}, "kind": "wrong_type"}))
        with pytest.raises(TypeError, match="must return a BoundaryDetector"):
            build_detector(DETECTOR_CONFIGS["wrong_type"]())
    finally:
        for name in ("every_n", "wrong_type"):
            drift.detector._REGISTRY.pop(name, None)
            DETECTOR_CONFIGS.pop(name, None)
