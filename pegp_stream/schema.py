"""Pydantic building blocks shared by every configuration section (config.py, drift/config.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Positive = Annotated[int, Field(ge=1)]


class Frozen(BaseModel):
    """A configuration section: immutable, and an unknown key is an error naming it."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def section_by_kind(value: Any, models: Mapping[str, type[BaseModel]], *, default: str, what: str) -> Any:
    """Validate a section whose `kind` picks its model (a field validator in 'before' mode). `value` is a
    model already, a mapping with an optional `kind` (else `default`), or a bare kind name."""
    if isinstance(value, BaseModel):
        return value
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a {what} name or a mapping with a 'kind'")
    kind = value.get("kind", default)
    if kind not in models:
        raise ValueError(f"unknown {what} {kind!r}; valid {what}s: {', '.join(sorted(models))}")
    return models[kind].model_validate(dict(value, kind=kind))
