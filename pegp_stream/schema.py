"""Pydantic building blocks shared by every configuration section (config.py, drift/config.py), and
`to_config`, the one way a mapping becomes a section: it imports no section, so any section's module (and the
code that builds one, like the drift policy) can use it without importing config.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pegp_stream.errors import ConfigError

T = TypeVar("T", bound=BaseModel)

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


def _field_path(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-")) or "<root>"


def _message(error: Mapping[str, Any]) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


def to_config(model: type[T], value: T | Mapping[str, Any] | None) -> T:
    """Validate `value` as `model`; raise ConfigError naming every offending field."""
    if isinstance(value, model):
        return value
    try:
        return model.model_validate(dict(value or {}))
    except ValidationError as exc:
        errors = exc.errors()
        field = _field_path(errors[0])
        reason = _message(errors[0]) + "".join(f"; {_field_path(e)}: {_message(e)}" for e in errors[1:])
        raise ConfigError(field, reason) from None
