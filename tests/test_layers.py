"""Imports only point down the layers written in docs/architecture.md, and no module imports itself in a cycle.

The graph is read from the source (``ast``), every ``import`` counted — also the ones inside functions,
which are dependencies all the same. A module belongs to the layer of its longest listed prefix.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "decodelab"

# Top to bottom; a module may import from its own layer or any layer below it (see docs/architecture.md).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry points", ("decodelab", "decodelab.cli", "decodelab.__main__")),
    (
        "runs",
        (
            "decodelab.train",
            "decodelab.vision.pipeline",
            "decodelab.vision.sampler",
            "decodelab.vision.bench",
            "decodelab.derain.evaluate",
            "decodelab.vision.lsr.evaluate",
            "decodelab.neuro.runs",
        ),
    ),
    ("metrics", ("decodelab.eval",)),
    ("models and decoders", ("decodelab.vision", "decodelab.speculative", "decodelab.derain", "decodelab.neuro")),
    ("data", ("decodelab.datasets",)),
    ("core", ("decodelab.registry", "decodelab.config", "decodelab.hub", "decodelab.assets", "decodelab.locks")),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = i, len(p)
    if best < 0:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return best


def _is_module(name: str) -> bool:
    path = SRC / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(module: str, source: str, is_package: bool) -> set[str]:
    """``decodelab`` modules imported by ``source`` (absolute and relative, at any depth)."""
    out: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "decodelab")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "decodelab":
                continue
            subs = [target + "." + a.name for a in node.names if _is_module(target + "." + a.name)]
            out.update(subs)  # ``from decodelab.eval import fid`` imports the submodule ...
            if len(subs) < len(node.names):  # ... and ``from decodelab.eval.fid import x`` the module itself
                out.add(target)
    out.discard(module)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PKG.rglob("*.py")):
        name = module_name(path)
        graph[name] = imports_of(name, path.read_text(), path.name == "__init__.py")
    return graph


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in graph.items():
        for dep in deps:
            if layer_of(dep) < layer_of(mod):  # a smaller index is a higher layer
                bad.append(f"{mod} ({LAYERS[layer_of(mod)][0]}) imports {dep} ({LAYERS[layer_of(dep)][0]})")
    return sorted(bad)


def test_every_module_has_a_layer() -> None:
    graph = import_graph()
    assert len(graph) > 50
    for mod in graph:
        layer_of(mod)


def test_imports_point_down() -> None:
    bad = upward_imports(import_graph())
    assert not bad, "imports up the layers:\n  " + "\n  ".join(bad)


def test_a_deliberate_upward_import_fails() -> None:
    """Add ``from decodelab.cli import main`` to a data module: the check reports exactly that edge."""
    graph = import_graph()
    path = PKG / "datasets" / "shapes.py"
    name = module_name(path)
    graph[name] = imports_of(name, path.read_text() + "\nfrom decodelab.cli import main\n", False)
    new = set(upward_imports(graph)) - set(upward_imports(import_graph()))
    assert new == {f"{name} (data) imports decodelab.cli (entry points)"}


def test_relative_imports_are_resolved() -> None:
    got = imports_of("decodelab.derain.infer", "from .importer import x\nfrom . import model\n", False)
    assert got == {"decodelab.derain.importer", "decodelab.derain.model"}
    got = imports_of("decodelab.derain", "from .infer import derain\n", True)
    assert got == {"decodelab.derain.infer"}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), package ``__init__``s excluded."""
    nodes = {m for m in graph if not (PKG / m.replace("decodelab.", "", 1).replace(".", "/") / "__init__.py").is_file()}
    edges = {m: {d for d in graph[m] if d in nodes} for m in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("doc", ["docs/architecture.md"])
def test_the_layers_are_written_down(doc: str) -> None:
    text = (SRC.parent / doc).read_text()
    for title, prefixes in LAYERS:
        assert title in text, f"layer {title!r} is not described in {doc}"
        for p in prefixes:
            assert f"`{p}`" in text, f"{p} is not placed in {doc}"
