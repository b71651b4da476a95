"""Drift boundaries for task-free streaming (docs/method.md section 4): explicit segment markers, operator
requests and registered detectors, debounced by a minimum segment length and a cooldown.

A detector is a small River-style object: ``update(value)`` takes one sample's signal and returns True when a
boundary fires at that sample (also left in ``drift_detected``). ``BoundaryPolicy`` combines it with markers
and operator requests and answers, per sample, the cause of a boundary at that sample or None.

Ordering contract (the daemon's side). A boundary at sample i means: consolidate, then learn sample i as the
first sample of the new segment. So ``BoundaryPolicy.observe`` is called once per sample, in stream order,
before that sample is learned. The signals it sees:

- ``features``: the pooled feature vector of the frozen backbone for this sample. It does not depend on the
  learner's state, so it is available before learning. (Features taken after the PET modules have been
  tuned move as the learner adapts; ``feature_shift`` can then fire on the learner's own progress.)
- ``loss``: the prequential loss, i.e. the loss of the prediction made *before* this sample is learned. The
  learner computes it in the same forward as the update, so the caller passes the pre-update loss. A daemon
  that learns in batches either runs the prediction forward first and splits the batch at i, or applies a
  detector boundary at the start of the next batch (an extra delay of less than one batch, small next to
  the detector's own delay). Markers and operator requests need no forward and can always split exactly.

A missing signal (None, e.g. a rejected row) or a non-finite one is not fed to the detector; the policy
counts it in ``skipped`` (export it: ``skipped == samples`` means the detector is not wired up).
"""

from pegp_stream.drift.config import (
    DETECTOR_CONFIGS,
    AdwinConfig,
    DetectorConfig,
    DriftConfig,
    FeatureShiftConfig,
    NoDetectorConfig,
    PageHinkleyConfig,
)
from pegp_stream.drift.detector import (
    Adwin,
    BoundaryDetector,
    FeatureShift,
    NoDetector,
    PageHinkley,
    Signal,
    build_detector,
    detectors,
    register_detector,
)
from pegp_stream.drift.policy import BoundaryPolicy, Cause, Marker

__all__ = [
    "DETECTOR_CONFIGS", "Adwin", "AdwinConfig", "BoundaryDetector", "BoundaryPolicy", "Cause", "DetectorConfig",
    "DriftConfig", "FeatureShift", "FeatureShiftConfig", "Marker", "NoDetector", "NoDetectorConfig", "PageHinkley",
    "PageHinkleyConfig", "Signal", "build_detector", "detectors", "register_detector",
]
