"""The configuration reference in docs/operations.md, generated from the pydantic models in config.py.

    python -m pegp_stream.docs_config --write    # after adding or changing a config field
    python -m pegp_stream.docs_config --check    # exit 1 if the committed reference is stale

Every section a command reads is listed with each field's dotted key, type, default and description; a
section whose `kind` selects the model (`learner.pet`, `drift.detector`) is listed once per kind. The
reference sits between two marker lines in the file; nothing outside them is touched.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path

import annotated_types as at
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from pegp_stream.config import PET_CONFIGS, DaemonConfig, EvalConfig, PetConfig, ReplayConfig
from pegp_stream.drift import DETECTOR_CONFIGS, DetectorConfig

BEGIN = "<!-- BEGIN GENERATED CONFIG REFERENCE: python -m pegp_stream.docs_config --write -->"
END = "<!-- END GENERATED CONFIG REFERENCE -->"
DEFAULT_FILE = Path(__file__).resolve().parents[1] / "docs" / "operations.md"
COMMANDS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("`pegp-stream run` and `pegp-stream serve`", DaemonConfig),
    ("`pegp-stream replay`", ReplayConfig),
    ("`pegp-stream eval`", EvalConfig),
)
# Sections whose model is chosen by their `kind` key: the base class and the registry of kinds.
BY_KIND: dict[type[BaseModel], Mapping[str, type[BaseModel]]] = {
    PetConfig: PET_CONFIGS, DetectorConfig: DETECTOR_CONFIGS
}


def render() -> str:
    """The whole generated block, markers included."""
    lines = [BEGIN, ""]
    done: dict[type, str] = {}
    for title, model in COMMANDS:
        lines += [f"### {title}", ""]
        lines += list(_section(model, "", done, level=4))
    return "\n".join([*lines, END])


def _section(model: type[BaseModel], path: str, done: dict[type, str], level: int,
             title: str | None = None, omit: str = "") -> Iterator[str]:
    """A table of `model`'s plain fields, then one sub-section per nested model (once per model class:
    a model already listed under another key is referred to)."""
    doc = _doc(model)
    if path:
        yield f"{'#' * level} {title or f'`{path}`'}"
        yield ""
    if doc:
        yield doc
        yield ""
    plain = [(name, info) for name, info in model.model_fields.items() if _nested(info) is None and name != omit]
    if plain:
        yield "| key | type | default | description |"
        yield "|---|---|---|---|"
        for name, info in plain:
            yield f"| `{_join(path, name)}` | {_type(info)} | {_default(info)} | {_cell(info.description or '')} |"
        yield ""
    for name, info in model.model_fields.items():
        nested = _nested(info)
        if nested is not None:
            yield from _subsection(nested, _join(path, name), info, done, level)


def _subsection(nested: type[BaseModel], key: str, info: FieldInfo, done: dict[type, str],
                level: int) -> Iterator[str]:
    if nested in done:
        yield f"{'#' * level} `{key}`"
        yield ""
        yield f"The same keys as `{done[nested]}` above."
        yield ""
        return
    done[nested] = key
    kinds = BY_KIND.get(nested)
    if kinds is None:
        yield from _section(nested, key, done, level)
        return
    default = info.get_default(call_default_factory=True).kind
    yield f"{'#' * level} `{key}`"
    yield ""
    choices = ", ".join(f"`{kind}`" for kind in kinds)
    yield _cell(f"`{key}.kind` selects one of {choices} (default `{default}`); a bare name (`{key}: {default}`) "
                f"takes that kind's defaults. {info.description or ''}")
    yield ""
    for kind, model in kinds.items():
        yield from _section(model, key, done, level + 1, title=f"`{key}` with `kind: {kind}`",
                            omit="kind")


def _nested(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _doc(model: type[BaseModel]) -> str:
    """The first paragraph of the model's own docstring, on one line."""
    doc = model.__dict__.get("__doc__") or ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def _type(info: FieldInfo) -> str:
    text = _type_name(info.annotation)
    bounds = [_bound(item) for item in info.metadata]
    bounds = [b for b in bounds if b]
    return _cell(text + (", " + " and ".join(bounds) if bounds else ""))


def _type_name(annotation: object) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " or ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_type_name(args[0])}"
        return "list of " + str(len(args)) + " " + _type_name(args[0])
    if annotation is SecretStr:
        return "secret string"
    return getattr(annotation, "__name__", str(annotation))


def _bound(item: object) -> str:
    for kind, symbol, attr in ((at.Gt, ">", "gt"), (at.Ge, ">=", "ge"), (at.Lt, "<", "lt"), (at.Le, "<=", "le")):
        if isinstance(item, kind):
            return f"{symbol} {getattr(item, attr)}"
    if isinstance(item, at.MinLen):
        return "not empty" if item.min_length == 1 else f"at least {item.min_length} items"
    return ""


def _default(info: FieldInfo) -> str:
    value = info.get_default(call_default_factory=True)
    if isinstance(value, tuple):
        value = list(value)
    return f"`{json.dumps(value)}`"


def _cell(text: str) -> str:
    """One table cell: on one line, pipes escaped, `<name>` kept visible (not taken for an HTML tag)."""
    return re.sub(r"<(?=[A-Za-z/!])", "&lt;", " ".join(text.split()).replace("|", "\\|"))


def replace_block(text: str, block: str) -> str:
    """`text` with the part between the markers (inclusive) replaced by `block`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"the markers {BEGIN!r} and {END!r} are missing")
    return text[:start] + block + text[end + len(END):]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE, help="the file holding the markers")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help="rewrite the reference in --file")
    action.add_argument("--check", action="store_true", help="exit 1 if the reference in --file is stale")
    args = parser.parse_args(argv)
    block = render()
    if not (args.write or args.check):
        print(block)
        return 0
    text = args.file.read_text(encoding="utf-8")
    updated = replace_block(text, block)
    if args.check:
        if updated != text:
            print(f"{args.file}: the configuration reference is stale; run python -m pegp_stream.docs_config "
                  "--write", file=sys.stderr)
            return 1
        return 0
    args.file.write_text(updated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
