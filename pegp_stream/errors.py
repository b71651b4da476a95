"""Exceptions raised by pegp-stream. Every error the package raises on purpose derives from `PegpError`."""

from __future__ import annotations

from typing import Any


class PegpError(Exception):
    """Root of every error pegp-stream raises on purpose."""


class ConfigError(PegpError, ValueError):
    """A configuration value is invalid. The message names the field (dotted path) and the reason."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class CheckpointError(PegpError):
    """A checkpoint or backbone weight file cannot be read or does not fit the model."""


class LabelCapacityError(PegpError):
    """A new label arrived but the classifier head is already at its configured capacity."""


class StateMismatchError(CheckpointError):
    """A saved state was made under another configuration (backbone, its weights, PET layout, head), so loading
    it would change predictions silently; raised before anything is loaded. The message names each differing
    field ("learner.pet.rank: checkpoint has 8, config has 4"); `differences` maps each to (checkpoint's value,
    config's value) where the learner found them (empty when re-raised with more context, e.g. the file)."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]] | None = None) -> None:
        self.differences = dict(differences or {})
        super().__init__(message)


class RankDivergenceError(PegpError):
    """The ranks of a data-parallel learner no longer hold the same model (e.g. their protected bases differ after
    a consolidation), so continuing would mix the updates of different models. Raised on every rank."""
