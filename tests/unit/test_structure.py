"""The library's shape, enforced (ADR 0040): no import cycles among its modules, it never
imports the service, and the rules issue 13 is working towards, with today's exceptions.

The exception lists may only shrink: a new module that breaks a rule fails here, and so does
an exception that no longer applies but is still listed (remove it). Issue 13 is done when
``OVERSIZED_MODULES``, ``OVERSIZED_CLASSES`` and ``IMPORTS_NATS_OUTSIDE_ADAPTER`` are empty.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

LIB = REPO / "shared" / "jetagents"
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
# the NATS adapter: the only package allowed to import nats (ADR 0040)
ADAPTER_PACKAGE = "jetagents._nats"

# today's exceptions; each entry must still break the rule (the lists only shrink)
OVERSIZED_MODULES: set[str] = set()
OVERSIZED_CLASSES: set[str] = set()
IMPORTS_NATS_OUTSIDE_ADAPTER: set[str] = set()


def _module_name(path: Path) -> str:
    parts = ["jetagents", *path.relative_to(LIB).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> set[str]:
    """Absolute names of everything ``name`` imports at run time (any depth, not under TYPE_CHECKING)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{alias.name}" for alias in node.names if f"{mod}.{alias.name}" in MODULES}
    return out


GRAPH = {name: {m for m in _imports(name) if m in MODULES and m != name} for name in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_parser_sees_relative_late_and_type_checking_imports() -> None:
    vclock = _imports("jetagents._core.vclock")
    assert "jetagents._core.crdt" in vclock and "jetagents._core.canonical" in vclock
    assert "jetagents._host.host" in _imports("jetagents._service")  # `from ._host import Host`
    assert "jetagents._core.agent" in _imports("jetagents.examples.counter")  # `from .._agent import ...`
    assert "jetagents._version" in _imports("jetagents._obs.telemetry")  # imported inside a function
    assert "nats" in _imports("jetagents._nats.api") or any(
        m.startswith("nats.") for m in _imports("jetagents._nats.api")
    )


def test_no_import_cycles_among_the_library_modules() -> None:
    assert _cycles(GRAPH) == []


def test_the_library_never_imports_the_service() -> None:
    offenders = {
        name: sorted(m for m in _imports(name) if m.split(".")[0] in {"agent_host", "services"}) for name in MODULES
    }
    assert {k: v for k, v in offenders.items() if v} == {}


CORE_PACKAGE = "jetagents._core"
IO_LIBRARIES = {"nats", "socket", "ssl", "subprocess", "opentelemetry", "structlog", "httpx", "uvloop"}


def test_the_core_is_pure() -> None:
    """``_core`` is the pure part: it imports nothing else of the library and no library that
    does I/O or observes it, so it can be read, tested and replayed without a server."""
    leaks = {
        name: sorted(
            m
            for m in _imports(name)
            if (m.startswith("jetagents") and not m.startswith(CORE_PACKAGE)) or m.split(".")[0] in IO_LIBRARIES
        )
        for name in MODULES
        if name == CORE_PACKAGE or name.startswith(CORE_PACKAGE + ".")
    }
    assert {k: v for k, v in leaks.items() if v} == {}


def _imports_nats(name: str) -> bool:
    return any(m == "nats" or m.startswith("nats.") for m in _imports(name))


def test_only_the_adapter_imports_nats_save_the_listed_exceptions() -> None:
    outside = {
        name
        for name in MODULES
        if name != ADAPTER_PACKAGE and not name.startswith(ADAPTER_PACKAGE + ".") and _imports_nats(name)
    }
    assert outside - IMPORTS_NATS_OUTSIDE_ADAPTER == set(), "new modules import nats outside the adapter"
    assert IMPORTS_NATS_OUTSIDE_ADAPTER - outside == set(), "no longer import nats: remove them from the list"


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def test_no_module_over_600_lines_save_the_listed_exceptions() -> None:
    big = {name for name, path in MODULES.items() if _lines(path) > MAX_MODULE_LINES}
    assert big - OVERSIZED_MODULES == set(), "modules over the limit: split them"
    assert OVERSIZED_MODULES - big == set(), "no longer over the limit: remove them from the list"


def test_no_class_over_400_lines_save_the_listed_exceptions() -> None:
    big: set[str] = set()
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_CLASS_LINES:
                big.add(f"{name}.{node.name}")
    assert big - OVERSIZED_CLASSES == set(), "classes over the limit: split them"
    assert OVERSIZED_CLASSES - big == set(), "no longer over the limit: remove them from the list"


def test_the_package_map_in_the_docs_lists_every_module() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Package map", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("|")[1].strip().strip("`") for line in section.splitlines() if line.startswith("| `")}
    files = {p.relative_to(LIB).as_posix() for p in LIB.rglob("*.py") if "examples" not in p.parts}
    files.add("examples/")
    assert files - listed == set(), "modules missing from the package map in docs/architecture.md"
    assert listed - files == set(), "the package map lists modules that no longer exist"
