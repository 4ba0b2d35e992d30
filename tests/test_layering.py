"""The package's import layering, read from the source: every import statement counts, also one
inside a function or under TYPE_CHECKING, since any of them ties the two packages together.

What holds (ARCHITECTURE.md, "Data flows down"; issue 13):
- the pure core (pcg, search, cost, substitutions, strategy) and the plain data (types) never
  reach the runtime: no legate, no cuPyNumeric, no executor, no runtime start-up, no placement;
- `types` imports nothing of ours and `operators` only `types`;
- every import goes from a layer to the same or a lower one (LAYERS, bottom first), and the
  import graph between the package's parts has no cycle.

The parts of the package are its subpackages (`unity_legion.pcg`, ...), the folders installed
into it (`operators/` as `unity_legion.operators`, ...: pyproject's package-dir) and its
top-level modules (`unity_legion.runtime`, ...).
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "unity_legion"

# The layers, bottom first. A part may import parts of its own layer or lower ones only; every
# part of the package must be placed here (a new subpackage says where it belongs).
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"types"},                               # shapes, parallel shapes, MachineView, OpConfig
    {"operators"},                           # shape rules, parallel dims, costs, kernels, traits
    {"pcg"},                                 # computation graph, parallel ops, lifting
    {"substitutions", "cost"},               # rewrite rules; machine models, op costs, simulator
    {"strategy"},                            # per-node configs, strategy files, builtins
    {"search"},                              # machine-mapping DP, Unity's best-first search
    {"_native", "runtime", "mappers"},       # Legate start-up and placement on processors
    {"executor"},                            # the only code that launches Legate tasks
    {"profiling"},                           # measuring operators, calibrating this machine
    {"initializers", "datasets", "keras"},   # the user's API
    {"models", "testing"},                   # the model zoo; the PyTorch twin the tests compare with
))
CORE = frozenset({"pcg", "search", "cost", "substitutions", "strategy", "types"})
# Modules that speak to the runtime: the core must import none of them.
RUNTIME = ("legate", "cupynumeric", f"{PACKAGE}.executor", f"{PACKAGE}.runtime",
           f"{PACKAGE}.mappers.placement")
# Known exceptions, by file (the test fails while one is listed that no longer needs it). None
# left: measuring operators and calibrating the local machine run the executor from
# `unity_legion.profiling`, above it (issue 13 item 3); the cost model only reads measurements.
KNOWN_RUNTIME_IMPORTS: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Import:
    file: str          # path from the repository root
    line: int
    source: str        # the importing part ("pcg", "operators", "runtime", ...)
    module: str        # the imported module, absolute


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """Dotted package name -> folder, as pyproject's package-dir installs them."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def part_of(module: str) -> str | None:
    """The part of the package a dotted module belongs to (None: not ours, or the root)."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    return parts[1]


def imports_in(source: str, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, absolute module) of every import in `source`, the code of `module`, wherever the
    statement is (module level, functions, classes, conditionals). `from a import b` yields
    both `a` and `a.b`: b may be a submodule."""
    here = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{target}.{alias.name}"


def package_modules(root: Path = ROOT) -> Iterator[tuple[str, bool, Path]]:
    """(dotted module name, whether it is a package's __init__, file) of every module the
    package installs."""
    for name, folder in package_dirs(root).items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            is_package = rel.name == "__init__"
            dotted = ".".join([name, *(rel.parts[:-1] if is_package else rel.parts)])
            yield dotted, is_package, path


def package_imports(root: Path = ROOT) -> list[Import]:
    found: list[Import] = []
    for dotted, is_package, path in package_modules(root):
        source = part_of(dotted)
        if source is None:           # unity_legion/__init__.py: the package's own door
            continue
        for line, module in imports_in(path.read_text(), dotted, is_package):
            found.append(Import(str(path.relative_to(root)), line, source, module))
    return found


def edges(imports: Iterable[Import], skip_files: frozenset[str] = frozenset()
          ) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for imp in imports:
        target = part_of(imp.module)
        if imp.file in skip_files or target is None or target == imp.source:
            continue
        out.setdefault(imp.source, set()).add(target)
    return out


def find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None (depth-first search)."""
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    path: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        path.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return path[path.index(w):] + [w]
            if w not in state:
                cycle = visit(w)
                if cycle:
                    return cycle
        path.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            cycle = visit(v)
            if cycle:
                return cycle
    return None


def is_runtime(module: str) -> bool:
    return any(module == r or module.startswith(r + ".") for r in RUNTIME)


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    return package_imports()


# --- the walker itself -----------------------------------------------------------------------

def test_the_walker_sees_imports_inside_functions_and_relative_ones():
    src = ("import numpy\n"
           "from .rule import Rule\n"
           "from . import exprs\n"
           "def f():\n"
           "    from unity_legion.executor.executor import GraphExecutor\n"
           "class C:\n"
           "    if True:\n"
           "        import legate.core\n")
    got = dict((m, line) for line, m in imports_in(src, f"{PACKAGE}.substitutions.parallel", False))
    assert got[f"{PACKAGE}.substitutions.rule"] == 2
    assert got[f"{PACKAGE}.substitutions.exprs"] == 3
    assert got[f"{PACKAGE}.executor.executor"] == 5
    assert got["legate.core"] == 8
    # in a package's __init__, "." is the package itself
    pkg = dict((m, line) for line, m in imports_in("from .graph import Node\n", f"{PACKAGE}.pcg", True))
    assert f"{PACKAGE}.pcg.graph" in pkg


def test_the_cycle_finder_finds_a_cycle_and_only_then():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_covers_the_whole_package(imports):
    sources = {i.source for i in imports}
    assert {"types", "operators", "pcg", "substitutions", "cost", "strategy", "search",
            "executor", "keras", "mappers", "models"} <= sources
    # a known import is seen, also one inside a function (the strategy's simulator)
    assert any(i.file == f"{PACKAGE}/strategy/strategy.py" and i.module.startswith(f"{PACKAGE}.cost")
               for i in imports)


# --- the rules ---------------------------------------------------------------------------------

def test_the_core_never_reaches_the_runtime(imports):
    bad = [f"{i.file}:{i.line} imports {i.module}" for i in imports
           if i.source in CORE and is_runtime(i.module) and i.file not in KNOWN_RUNTIME_IMPORTS]
    assert not bad, "the pure core imports the runtime:\n" + "\n".join(bad)


def test_the_known_exceptions_are_still_needed(imports):
    """An exception no file needs any more is dropped from the list (issue 13 item 3)."""
    needed = {i.file for i in imports if i.file in KNOWN_RUNTIME_IMPORTS and is_runtime(i.module)}
    stale = KNOWN_RUNTIME_IMPORTS - needed
    assert not stale, f"drop {sorted(stale)} from KNOWN_RUNTIME_IMPORTS: they no longer import the runtime"


def test_types_import_nothing_of_ours_and_operators_only_types(imports):
    bad = [f"{i.file}:{i.line} imports {i.module}" for i in imports
           if (i.source == "types" and part_of(i.module) not in (None, "types"))
           or (i.source == "operators" and part_of(i.module) not in (None, "operators", "types"))]
    assert not bad, "\n".join(bad)


def test_every_part_has_a_layer(imports):
    placed = set().union(*LAYERS)
    parts = {i.source for i in imports} | {t for t in (part_of(i.module) for i in imports) if t}
    assert not parts - placed, f"place {sorted(parts - placed)} in LAYERS"


def test_imports_go_down_the_layers(imports):
    layer = {part: n for n, parts in enumerate(LAYERS) for part in parts}
    bad = [f"{i.file}:{i.line}: {i.source} (layer {layer.get(i.source)}) imports {i.module}"
           for i in imports
           if i.file not in KNOWN_RUNTIME_IMPORTS and part_of(i.module) in layer
           and i.source in layer and layer[part_of(i.module)] > layer[i.source]]
    assert not bad, "imports that go up:\n" + "\n".join(bad)


def test_the_import_graph_has_no_cycle(imports):
    cycle = find_cycle(edges(imports, KNOWN_RUNTIME_IMPORTS))
    assert cycle is None, f"import cycle: {' -> '.join(cycle or [])}"


def test_without_the_exceptions_the_known_cycle_shows(imports):
    """The exceptions are what keeps cost -> executor -> ... -> cost from counting: with them
    counted the cycle is found (so the check above really reads the graph). With none left,
    the import that measuring from cost/ made (cost -> executor) is added by hand: it must
    close a cycle through the real graph."""
    graph = edges(imports)
    if not {i.file for i in imports if i.file in KNOWN_RUNTIME_IMPORTS}:
        graph.setdefault("cost", set()).add("executor")
    assert find_cycle(graph) is not None


# --- no Keras model's private attributes below keras/ (issue 13 item 1) ------------------------

# What only a Keras model has: the layers below keras/ take the graph, which knows its outputs
# (`graph.outputs`), and plain values (the frozen weight keys: `Strategy.compile(frozen=...)`).
KERAS_PRIVATE = frozenset({"_output_ids", "_frozen_weight_keys"})


def private_reads(source: str) -> Iterator[tuple[int, str]]:
    """(line, name) of every attribute in KERAS_PRIVATE that `source` reads (also through
    getattr/hasattr with a constant name)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in KERAS_PRIVATE:
            yield node.lineno, node.attr
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and node.args[1].value in KERAS_PRIVATE):
            yield node.lineno, node.args[1].value


def below_keras_files(root: Path = ROOT) -> Iterator[tuple[str, Path]]:
    """(part, file) of every module in a layer below keras'."""
    layer = {part: n for n, parts in enumerate(LAYERS) for part in parts}
    for dotted, _is_package, path in package_modules(root):
        part = part_of(dotted)
        if part is not None and part in layer and layer[part] < layer["keras"]:
            yield part, path


def test_the_scan_sees_private_reads():
    src = ("def f(model):\n"
           "    a = model._output_ids\n"
           "    b = getattr(model, '_output_ids', None)\n"
           "    return model._frozen_weight_keys()\n")
    assert sorted(private_reads(src)) == [(2, "_output_ids"), (3, "_output_ids"),
                                          (4, "_frozen_weight_keys")]
    assert not list(private_reads("graph.outputs\nmodel.graph\n"))


def test_no_layer_below_keras_reads_a_models_private_attributes():
    files = list(below_keras_files())
    parts = {p for p, _ in files}
    assert {"pcg", "search", "strategy", "executor"} <= parts and "keras" not in parts
    bad = [f"{path.relative_to(ROOT)}:{line} reads .{name}"
           for _, path in files for line, name in private_reads(path.read_text())]
    assert not bad, ("below keras/, take the graph (graph.outputs) and plain values, not a Keras "
                     "model's private attributes:\n" + "\n".join(bad))


# --- two modules that import each other --------------------------------------------------------

# Pairs of modules that still import each other (any import statement, as above), each sorted.
# The list only shrinks: a new pair fails, and so does a listed pair that no longer imports
# both ways. Untied 2026-12-07: keras' model and trainer (the seed: keras/seed.py), a strategy
# and its report (report.Shown), substitutions' exprs and rule (substitutions/values.py).
KNOWN_MODULE_CIRCLES: frozenset[tuple[str, str]] = frozenset({
    ("cost.pipeline", "cost.simulator"),
    ("executor.executor", "executor.pipeline"),
    ("keras.layers.layer", "keras.layers.tracing"),
    ("keras.layers.tracing", "keras.models.model"),
    ("keras.layers.tracing", "keras.models.sequential"),
    ("keras.layers.tracing", "keras.ops"),
    ("keras.models.model", "keras.saving.serialization"),
    ("keras.models.model", "keras.saving.weights_h5"),
    ("search.pipeline", "search.unity"),
    ("strategy.plan", "strategy.strategy"),
})


def module_circles(root: Path = ROOT) -> set[tuple[str, str]]:
    """Pairs of the package's modules (dotted, without the package's name) that import each
    other; a package and a module inside it are not counted (a package's door names its
    modules, and `from . import x` names the package)."""
    module_of = {str(path.relative_to(root)): dotted
                 for dotted, _is_package, path in package_modules(root)}
    ours = set(module_of.values())
    graph: dict[str, set[str]] = {}
    for imp in package_imports(root):
        src = module_of[imp.file]
        if imp.module in ours and imp.module != src:
            graph.setdefault(src, set()).add(imp.module)

    def nested(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    prefix = len(PACKAGE) + 1
    return {tuple(sorted((a[prefix:], b[prefix:]))) for a, targets in graph.items()
            for b in targets if a in graph.get(b, ()) and not nested(a, b)}


def test_no_new_pair_of_modules_imports_each_other():
    found = module_circles()
    new = sorted(found - KNOWN_MODULE_CIRCLES)
    gone = sorted(KNOWN_MODULE_CIRCLES - found)
    assert not new, f"modules that import each other (put what both need below both): {new}"
    assert not gone, f"untied: take these off KNOWN_MODULE_CIRCLES: {gone}"
    assert ("keras.models.model", "keras.trainer") not in found
    assert ("strategy.report", "strategy.strategy") not in found
    assert ("substitutions.exprs", "substitutions.rule") not in found
