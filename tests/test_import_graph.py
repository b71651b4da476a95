"""The package's import graph has no circle: each module can be read, tested and moved knowing only what it
imports. Every import statement counts, wherever it stands (module level, inside a function, under
`if TYPE_CHECKING`): an import inside a function is how a circle is hidden, not how it is broken.

An edge goes to the module an import names: `from .drift import X` imports the package pegp_stream.drift (its
__init__.py), `from .drift.policy import X` the module policy only. The parent packages Python initialises on
the way (pegp_stream/__init__.py for every module) are not edges: with them every module would import itself.

The folders are layers (docs/architecture.md, "Module tree"): between the package's folders, imports go one way.
The modules at the package root are the shared vocabulary (config, schema, errors, logs, checkpoint) and the
places that compose the folders (driver, daemon, cli); they are left out of that check."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

import pegp_stream

PACKAGE = Path(pegp_stream.__file__).parent
ROOT = PACKAGE.name


def module_names() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is named by its __init__.py)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that the file at `path` (module `name`) imports. `from x import y` is an import
    of the module x.y when that is a module, else of x (y is a name defined in x)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, name, is_package)
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names}
    return {_deepest_module(target, modules) for target in found if target.split(".")[0] == ROOT}


def _absolute(node: ast.ImportFrom, name: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    anchor = package[:len(package) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def _deepest_module(target: str, modules: dict[str, Path]) -> str:
    """`pegp_stream.a.b` for `import pegp_stream.a.b.name` when only a.b is a module."""
    while target not in modules:
        target = target.rpartition(".")[0]
    return target


def import_graph() -> nx.DiGraph:
    modules = module_names()
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        graph.add_edges_from((name, target) for target in imported(path, name, modules) if target != name)
    return graph


def circles(graph: nx.DiGraph) -> list[str]:
    """One line per circle (a strongly connected set of modules): one cycle through it, written as imports."""
    lines = []
    for members in nx.strongly_connected_components(graph):
        if len(members) > 1:
            cycle = [edge[0] for edge in nx.find_cycle(graph.subgraph(members), source=min(members))]
            lines.append(" -> ".join([*cycle, cycle[0]]) + f"   ({len(members)} modules in the circle)")
    return sorted(lines)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The walker itself: relative and absolute imports, submodules imported with `from . import`, imports
    inside functions and under TYPE_CHECKING, names resolved to the module that defines them."""
    modules = module_names()
    assert f"{ROOT}.serving.app" in modules and f"{ROOT}.drift" in modules
    assert set(import_graph().successors(f"{ROOT}.drift")) >= {f"{ROOT}.drift.policy", f"{ROOT}.drift.detector"}
    source = tmp_path / "app.py"  # read as pegp_stream.serving.app
    source.write_text(
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        f"import {ROOT}.inputs.decode\n"
        "from .. import errors, schema\n"
        "from ..config import load\n"
        "from ..drift import BoundaryPolicy\n"
        "from ..core.pet import base\n"
        "from .snapshot import SnapshotPublisher\n"
        "if TYPE_CHECKING:\n"
        "    from ..daemon import Daemon\n"
        "def late():\n"
        "    from ..drift.policy import Cause\n"
        "    from .. import __version__\n", encoding="utf-8")
    expected = {"inputs.decode", "errors", "schema", "config", "drift", "core.pet.base", "serving.snapshot", "daemon",
                "drift.policy"}
    assert imported(source, f"{ROOT}.serving.app", modules) == {ROOT} | {f"{ROOT}.{name}" for name in expected}
    assert circles(nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])) == \
        ["a -> b -> c -> a   (3 modules in the circle)"]


def test_the_package_has_no_import_circle():
    found = circles(import_graph())
    assert not found, "import circles in the package:\n" + "\n".join(found)


def folder_of(module: str) -> str | None:
    """The package's top folder a module lives in (pegp_stream.core for pegp_stream.core.pet.lora.layers), or
    None for a module at the package root."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 or (PACKAGE / parts[-1]).is_dir() and len(parts) == 2 else None


def folder_graph(graph: nx.DiGraph) -> nx.DiGraph:
    folders = nx.DiGraph()
    for source, target in graph.edges:
        a, b = folder_of(source), folder_of(target)
        if a and b and a != b:
            folders.add_edge(a, b)
    return folders


def test_folders_import_each_other_in_one_direction():
    folders = folder_graph(import_graph())
    assert {f"{ROOT}.core", f"{ROOT}.serving", f"{ROOT}.kafka"} <= set(folders)
    assert folder_of(f"{ROOT}.core.pet.lora.layers") == folder_of(f"{ROOT}.core") == f"{ROOT}.core"
    assert folder_of(f"{ROOT}.daemon") is None
    found = circles(folders)
    assert not found, "folders that import each other:\n" + "\n".join(found)
