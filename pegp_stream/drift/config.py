"""Drift configuration: which detector, its parameters, and the debounce around boundaries. Validated at
start; a bad field fails naming it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationInfo, field_validator

from pegp_stream.schema import Frozen, Positive, section_by_kind


class DetectorConfig(Frozen):
    """Base of every detector's config; `kind` selects the registered detector."""

    kind: str


class NoDetectorConfig(DetectorConfig):
    """No task-free detection: boundaries come from markers and operator requests only."""

    kind: Literal["none"] = "none"


class PageHinkleyConfig(DetectorConfig):
    """Page-Hinkley test for an increase of the mean of the per-sample loss.

    Statistic: m_t = alpha * m_{t-1} + (x_t - mean_t - delta), PH_t = m_t - min(0, m_1..m_t); fires when
    PH_t > threshold. Both delta and threshold are in loss units, so they depend on the loss's scale. On a
    stationary stream of standard deviation s the false-alarm rate falls like exp(-2 * delta * threshold / s^2);
    a rise of the mean by D is found after about threshold / (D - delta) samples. The defaults (delta 0.05,
    threshold 25) give exponent 250 at s = 0.1 and about 28 at s = 0.3 (the spread of per-sample cross-entropy
    within a segment of the tiny test ViT), and find a rise of 1.0 in about 27 samples: a quiet detector that
    only reacts to the jump new classes cause, not to the slow wobble of learning (a falling loss never fires).
    """

    kind: Literal["page_hinkley"] = "page_hinkley"
    delta: float = Field(0.05, ge=0.0, description="tolerated rise of the mean (loss units) before evidence builds")
    threshold: float = Field(25.0, gt=0.0, description="lambda: evidence (loss units x samples) needed to fire")
    alpha: float | None = Field(
        None, gt=0.0, le=1.0, description="forgetting factor on the cumulative sum; None = 1 (no forgetting)"
    )


class FeatureShiftConfig(DetectorConfig):
    """Mean shift of the frozen backbone's pooled feature vector.

    The mean of the last `window` samples is compared with a reference mean and variance of the samples before
    them (Welford over the first `reference_window` samples, then exponential forgetting with that horizon).
    Statistic: the mean over dimensions of z_j^2, z_j = (recent_j - ref_j) / sqrt(var_j (1/window + 1/n_ref)),
    i.e. a diagonal Hotelling T^2 divided by d. Under no change it averages 1 whatever d is; its spread is
    sqrt(2/d) for independent dimensions and grows towards sqrt(2) as dimensions become correlated. A shift of
    RMS size r (in per-dimension standard deviations) reaches the threshold after about
    sqrt((threshold - 1) * window) / r samples and is undetectable when window * r^2 < threshold - 1.
    Defaults (32, 256, 6.0): a shift of r = 1 is found in ~13 samples, r >= 0.4 is detectable, and a stationary
    stream is quiet for effective dimensions down to ~8. The detector needs window + reference_window samples
    after each reset before it can fire, so segments shorter than that are not split by it.
    """

    kind: Literal["feature_shift"] = "feature_shift"
    window: Positive = Field(32, description="samples in the recent window whose mean is tested")
    reference_window: int = Field(
        256, ge=2, description="horizon of the reference mean/variance; also the warm-up after each reset"
    )
    threshold: float = Field(6.0, gt=0.0, description="fire when the mean squared z-score exceeds this")

    @field_validator("reference_window")
    @classmethod
    def _reference_not_shorter(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("window")
        if window is not None and value < window:
            raise ValueError(f"reference_window ({value}) must be >= window ({window})")
        return value


class AdwinConfig(DetectorConfig):
    """ADWIN (Bifet and Gavalda 2007, the ADWIN2 exponential histogram as in MOA) on the per-sample loss.

    The window keeps every sample since the last change; every `clock` samples each split into an older and a
    newer part is tested (Bernstein bound at confidence `delta`) and the oldest buckets are dropped while a
    split is significant. The window adapts in both directions; with direction "increase" only a rise of the
    mean is reported, so the falling loss of normal learning shrinks the window without firing. Adaptive and
    scale-free, but a boundary can only fire on a multiple of `clock` samples after a reset.
    """

    kind: Literal["adwin"] = "adwin"
    delta: float = Field(0.002, gt=0.0, lt=1.0, description="confidence: smaller = fewer false alarms, slower")
    clock: Positive = Field(32, description="test for a change every this many samples")
    direction: Literal["increase", "both"] = Field("increase", description="which mean changes fire a boundary")


DETECTOR_CONFIGS: dict[str, type[DetectorConfig]] = {
    "none": NoDetectorConfig,
    "page_hinkley": PageHinkleyConfig,
    "feature_shift": FeatureShiftConfig,
    "adwin": AdwinConfig,
}


class DriftConfig(Frozen):
    """Where segments end: explicit markers, operator requests, and an optional task-free detector.

    The default is markers only (detector "none"): a detector's thresholds depend on the deployed backbone's
    loss scale and feature geometry, so it is switched on per deployment. min_segment_length 100 keeps a
    segment's covariance from resting on a handful of samples; cooldown 50 keeps a detector from reporting,
    just after a marker, the change the marker already announced (blurry boundaries), at the price of
    missing a second change within 50 samples."""

    detector: SerializeAsAny[DetectorConfig] = Field(
        default_factory=NoDetectorConfig,
        description="task-free detector: a kind name or a mapping with 'kind' (none, page_hinkley, "
        "feature_shift, adwin) and its parameters; 'none' relies on markers and operator requests",
    )
    min_segment_length: Positive = Field(
        100, description="no detector boundary before this many samples since the last boundary (it waits)"
    )
    cooldown: int = Field(
        50, ge=0, description="after any boundary the reset detector is fed but its firings are dropped "
        "for this many samples, while it rebuilds its reference",
    )
    markers: bool = Field(True, description="honour explicit segment markers (a new marker is a boundary)")
    min_marker_gap: Positive = Field(
        10, description="a new marker fewer than this many samples after the last boundary is taken as the "
        "current segment without a boundary (bounds a producer that changes markers on every record)",
    )

    @field_validator("detector", mode="before")
    @classmethod
    def _detector_by_kind(cls, value: Any) -> Any:
        return section_by_kind(value, DETECTOR_CONFIGS, default="none", what="detector")
