"""The shape of src/mi_llm: no import cycle, and no import from a lower layer to a higher one.

Every module is parsed with `ast` (nothing is imported), every `import mi_llm...`,
`from mi_llm... import ...`, relative import and `importlib.import_module("mi_llm...")`
is resolved to a module of the package, wherever it stands (module level or inside a
function). Imports under `if TYPE_CHECKING:` never run, so they cannot make a cycle; the
layer rule still covers them (a lower layer naming a higher layer's types depends on it).
The layers are documented in docs/architecture.md ("Layers").
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "mi_llm"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Lowest first. A module belongs to the layer of the longest prefix that names it (the
# module itself or a package above it; "mi_llm" names only the package's __init__, so a new
# module or package is in no layer until it is placed); a module may import its own layer
# or lower ones.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("mi_llm", "mi_llm.errors", "mi_llm.io", "mi_llm.console", "mi_llm.layout", "mi_llm.registry")),
    (
        "data",
        (
            "mi_llm.corpus",
            "mi_llm.build.samples",
            "mi_llm.build.exports",
            "mi_llm.build.config",
            "mi_llm.build.strategy",
            "mi_llm.prompts",
            "mi_llm.resources",
            "mi_llm.prefs.pairs",
        ),
    ),
    ("models", ("mi_llm.llm", "mi_llm.train", "mi_llm.prefs.config")),
    ("measures", ("mi_llm.evaluate", "mi_llm.miti", "mi_llm.prefs.score")),
    (
        "stages",
        (
            "mi_llm.build",
            "mi_llm.transcribe",
            "mi_llm.report",
            "mi_llm.serve",
            "mi_llm.miti.annotate",
            "mi_llm.config",
            "mi_llm.simulate",
            "mi_llm.prefs",
        ),
    ),
    ("pipeline", ("mi_llm.pipeline", "mi_llm.stages", "mi_llm.ablation")),
    ("cli", ("mi_llm.cli", "mi_llm.__main__")),
)


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported module of the package
    line: int
    type_only: bool  # under `if TYPE_CHECKING:`


def modules(src: Path = SRC) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package)."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False):
    """Every node with whether it sits under `if TYPE_CHECKING:` (the if branch only)."""
    yield node, type_only
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _walk(child, True)
        for child in node.orelse:
            yield from _walk(child, type_only)
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk(child, type_only)


def _dynamic_target(call: ast.Call) -> str | None:
    """The module named by importlib.import_module("mi_llm...") or f"mi_llm.x.{name}" (its package)."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name != "import_module" or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value).rstrip(".")
    return None


def imports(src: Path = SRC) -> list[Import]:
    mods = modules(src)

    def resolve(name: str) -> str | None:
        """The module itself, else the nearest package above it that exists."""
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for mod, (path, is_package) in mods.items():
        package = mod if is_package else mod.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, type_only in _walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    where = ".".join(base + ([node.module] if node.module else []))
                else:
                    where = node.module or ""
                # `from pkg import sub` imports the submodule; `from mod import name` the module.
                targets = [f"{where}.{a.name}" if f"{where}.{a.name}" in mods else where for a in node.names]
            elif isinstance(node, ast.Call):
                t = _dynamic_target(node)
                targets = [t] if t else []
            for t in targets:
                if t == PACKAGE or t.startswith(PACKAGE + "."):
                    target = resolve(t)
                    if target and target != mod:
                        found.append(Import(mod, target, node.lineno, type_only))
    return list(dict.fromkeys(found))  # `from m import a, b` is one import of m


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a cycle."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_cycle_in(set(component), graph))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _cycle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle through the component's first module: a -> b -> ... -> a."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph.get(v, ()) & component):
            if w == start:
                return paths[v] + [start]
            if w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    return sorted(component)  # not reached: a component of several modules has a cycle


def layer_of(module: str) -> tuple[int, str] | None:
    best: tuple[int, int, str] | None = None  # (prefix length, layer index, layer name)
    for i, (name, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            covers = module == p or (p != PACKAGE and module.startswith(p + "."))
            if covers and (best is None or len(p) > best[0]):
                best = (len(p), i, name)
    return None if best is None else (best[1], best[2])


def upward(edges: list[Import]) -> list[str]:
    out = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if src is not None and dst is not None and dst[0] > src[0]:
            out.append(
                f"{e.source}:{e.line} imports {e.target}: layer {src[1]} -> higher layer {dst[1]}"
                + (" (type-only)" if e.type_only else "")
            )
    return out


# ---------------------------------------------------------------- the rules


def test_no_import_cycle():
    found = cycles([e for e in imports() if not e.type_only])
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_from_a_lower_layer_to_a_higher_one():
    found = upward(imports())
    assert not found, "upward imports:\n" + "\n".join(found)


def test_every_module_has_a_layer():
    missing = [m for m in modules() if layer_of(m) is None]
    assert not missing, f"modules in no layer (add them to LAYERS and docs/architecture.md): {missing}"


# ---------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_resolves_every_import_form(tmp_path):
    src = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "io.py": "",
            "corpus/__init__.py": "from . import schema\n",
            "corpus/schema.py": "from ..io import x\nimport mi_llm.corpus\n",
            "corpus/importers.py": (
                "import importlib\n"
                "def f(name):\n"
                "    from mi_llm.corpus.schema import Dialogue\n"
                "    importlib.import_module(f'mi_llm.corpus.{name}')\n"
                "    return importlib.import_module('mi_llm.io')\n"
            ),
            "miti/__init__.py": "",
            "miti/codebook.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from mi_llm.corpus.schema import Dialogue\n"
                "else:\n    from mi_llm import io\n"
            ),
        },
    )
    got = {(e.source, e.target, e.line, e.type_only) for e in imports(src)}
    assert got == {
        ("mi_llm.corpus", "mi_llm.corpus.schema", 1, False),
        ("mi_llm.corpus.schema", "mi_llm.io", 1, False),
        ("mi_llm.corpus.schema", "mi_llm.corpus", 2, False),
        ("mi_llm.corpus.importers", "mi_llm.corpus.schema", 3, False),
        ("mi_llm.corpus.importers", "mi_llm.corpus", 4, False),
        ("mi_llm.corpus.importers", "mi_llm.io", 5, False),
        ("mi_llm.miti.codebook", "mi_llm.corpus.schema", 3, True),
        ("mi_llm.miti.codebook", "mi_llm.io", 5, False),
    }


def test_layer_of_takes_the_longest_prefix():
    assert layer_of("mi_llm") == (0, "base")
    assert layer_of("mi_llm.miti.session") == (3, "measures")
    assert layer_of("mi_llm.miti.annotate.app") == (4, "stages")
    assert layer_of("mi_llm.newpackage.x") is None
    assert layer_of("mi_llm.ioextra") is None


def test_checker_names_cycles_and_upward_imports(tmp_path):
    src = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "pipeline.py": "from mi_llm.report.collect import collect\n",
            "report/__init__.py": "",
            "report/collect.py": "def collect():\n    from mi_llm.pipeline import RunPaths\n",
            "corpus/__init__.py": "",
            "corpus/schema.py": "import os\nfrom mi_llm.miti.codebook import Code\n",
            "miti/__init__.py": "",
            "miti/codebook.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mi_llm.serve import x\n",
            "serve.py": "from mi_llm.miti import codebook\n",
        },
    )
    edges = imports(src)
    assert cycles([e for e in edges if not e.type_only]) == [
        ["mi_llm.pipeline", "mi_llm.report.collect", "mi_llm.pipeline"]
    ]
    # the type-only edge closes codebook -> serve -> codebook, which never runs
    assert len(cycles(edges)) == 2
    assert upward(edges) == [
        "mi_llm.corpus.schema:2 imports mi_llm.miti.codebook: layer data -> higher layer measures",
        "mi_llm.miti.codebook:3 imports mi_llm.serve: layer measures -> higher layer stages (type-only)",
        "mi_llm.report.collect:2 imports mi_llm.pipeline: layer stages -> higher layer pipeline",
    ]
