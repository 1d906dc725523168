"""The package's import structure: no import cycle inside ``ragctx/`` and no import from a lower layer into a higher one.

Every ``import`` counts, module-level or inside a function (a lazy import is still a dependency), unless
:data:`ALLOWED` names the edge with its reason. An edge goes to the module named (``from .x import y`` -> ``x``,
and ``x.y`` as well when ``y`` is a submodule); importing ``ragctx.a.b`` is not counted as importing the package
``ragctx.a`` (Python runs ``ragctx/a/__init__.py`` first, but that is the package's own business: counting it would
make every package ``__init__`` that re-exports its modules a cycle). Pure ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ragctx"

# Bottom to top: a module may import modules of its own layer (without a cycle) or of any layer below. An entry names
# a module or a package (its submodules included); the longest matching entry places a module; the bare package
# ``ragctx`` (its ``__init__``, the public facade) is placed only by its exact name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    # protocols: the shapes of the edges between index, generator and QA, which all of them import
    ("base", ("ragctx.errors", "ragctx.cache", "ragctx.locks", "ragctx.threads", "ragctx.prefetch", "ragctx.data",
              "ragctx.version", "ragctx.protocols")),
    ("corpus", ("ragctx.documents", "ragctx.chunking", "ragctx.embeddings", "ragctx.vectors", "ragctx.store",
                "ragctx.tasks")),
    # retrievers rank an index's chunks through a protocol of what they read from it (no import of ragctx.index)
    ("retrieval", ("ragctx.retrieval",)),
    # the trial/row schema and its metrics: below the trainers, whose in-training evaluation scores its answers into
    # rows with the runner's own make_row
    ("scoring", ("ragctx.evaluation.metrics", "ragctx.evaluation.results")),
    ("index", ("ragctx.index",)),
    ("engines", ("ragctx.distributed",)),  # the Ray engine: it fills an Index
    ("generator", ("ragctx.generator",)),
    ("qa", ("ragctx.qa", "ragctx.answer")),
    # trainers sit above the QA pipeline: linearize trains on the pipeline's own chat prompt (CHAT_TEMPLATE)
    ("training", ("ragctx.generator.train", "ragctx.generator.linearize")),
    ("evaluation", ("ragctx.evaluation",)),
    ("apps", ("ragctx.cli", "ragctx.__main__", "ragctx.server", "ragctx.demo", "ragctx.integrations", "ragctx")),
]

# (importer, imported) -> why the edge is allowed although it goes upward or closes a cycle. Keep it short.
ALLOWED: dict[tuple[str, str], str] = {
    ("ragctx.index", "ragctx.distributed"): "Index.build(engine='ray') hands its build to the Ray engine, which fills "
                                            "the Index (imported at call time; RayConfig for annotations only)",
}


@functools.cache
def modules() -> dict[str, Path]:
    """Every module under ragctx/ by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported ragctx module, line) for every import statement in one module, at any depth."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import sub` imports the submodule; `from pkg import name` only pkg itself
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            targets = subs if subs and len(subs) == len(node.names) else [target, *subs]
        else:
            continue
        for t in targets:
            if t == "ragctx" or t.startswith("ragctx."):
                while t not in known and "." in t:  # `import ragctx.x.y` of a name, not a module: its module
                    t = t.rsplit(".", 1)[0]
                if t != name:
                    out.append((t, node.lineno))
    return out


def layer_of(name: str) -> int:
    """Index in LAYERS of the longest entry naming ``name``; a module no entry names fails the test."""
    best, rank = -1, None
    for i, (_, entries) in enumerate(LAYERS):
        for e in entries:
            if (name == e or (e != "ragctx" and name.startswith(e + "."))) and len(e) > best:
                best, rank = len(e), i
    if rank is None:
        pytest.fail(f"{name} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return rank


@functools.cache
def all_imports() -> dict[str, tuple[tuple[str, int], ...]]:
    """Module -> its imports, ALLOWED ones included (parsed once per test run)."""
    known = modules()
    return {name: tuple(imports(name, path, known)) for name, path in known.items()}


def graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], int]]:
    """(module -> the ragctx modules it imports, (importer, imported) -> first line), ALLOWED edges left out."""
    edges: dict[str, set[str]] = {m: set() for m in modules()}
    lines: dict[tuple[str, str], int] = {}
    for name, found in all_imports().items():
        for target, line in found:
            if (name, target) not in ALLOWED:
                edges[name].add(target)
                lines.setdefault((name, target), line)
    return edges, lines


def test_the_graph_is_read():
    """The parser sees what it should: known edges of each kind (module-level, lazy, relative, package)."""
    edges, _ = graph()
    assert "ragctx.errors" in edges["ragctx.index"]  # from .errors import ... (module level)
    assert "ragctx.generator" in edges["ragctx.evaluation.runner"]  # from ..generator import Generator (lazy)
    assert "ragctx.generator.attention.common" in edges["ragctx.generator.attention.linear"]
    assert "ragctx.index" in edges["ragctx"]
    assert len(edges) > 40


def test_every_module_has_a_layer_and_every_allowed_edge_exists():
    for name in modules():
        layer_of(name)
    present = {(name, t) for name, found in all_imports().items() for t, _ in found}
    assert not [k for k in ALLOWED if k not in present], "ALLOWED names an import that is gone: remove it"


def test_no_upward_import():
    edges, lines = graph()
    known = modules()
    bad = [f"{known[a].relative_to(ROOT.parent)}:{lines[a, b]}: {a} ({LAYERS[layer_of(a)][0]}) imports {b} "
           f"({LAYERS[layer_of(b)][0]})"
           for a, targets in sorted(edges.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not bad, ("imports from a lower layer into a higher one (move the shared part down, or add the edge "
                     "to ALLOWED with a reason):\n" + "\n".join(bad))


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for t in edges.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def cycles(edges: dict[str, set[str]]) -> list[frozenset[str]]:
    """The groups of modules that reach each other through imports (strongly connected, more than one module)."""
    reach = {m: reachable(edges, m) for m in edges}
    return sorted({frozenset({m} | {n for n in reach[m] if m in reach[n]}) for m in edges if m in reach[m]},
                  key=sorted)


def test_cycles_are_found():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": {"a"}}
    assert cycles(edges) == [frozenset("abc"), frozenset("de")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    """Every cycle at once, with the imports that close it."""
    edges, lines = graph()
    bad = [" <-> ".join(sorted(g)) + "\n" + "\n".join(f"    {a} imports {b} (line {lines[a, b]})"
                                                      for a in sorted(g) for b in sorted(edges[a] & g))
           for g in cycles(edges)]
    assert not bad, "import cycles inside ragctx/ (move the shared part into a module both import):\n" + "\n".join(bad)
