"""The public API of the ``jetagents`` package."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import jetagents


def test_all_is_sorted() -> None:
    assert list(jetagents.__all__) == sorted(jetagents.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(jetagents.__all__) == len(set(jetagents.__all__))


def test_every_name_in_all_is_importable() -> None:
    module = importlib.import_module("jetagents")
    for name in jetagents.__all__:
        assert hasattr(module, name), name
        exec(f"from jetagents import {name}", {})


def test_public_classes_and_functions_are_in_all() -> None:
    public = {
        name
        for name, obj in vars(jetagents).items()
        if not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
    }
    assert public, "the package exports classes and functions"
    assert sorted(public - set(jetagents.__all__)) == []


def test_names_bound_in_init_source_are_in_all() -> None:
    """Same check from the source: every public name imported, defined or assigned at the
    top level of jetagents/__init__.py is exported."""
    tree = ast.parse(Path(jetagents.__file__).read_text())
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
    public = {n for n in bound if not n.startswith("_")}
    assert public
    assert sorted(public - set(jetagents.__all__)) == []


def test_version() -> None:
    assert isinstance(jetagents.__version__, str)
    assert "__version__" in jetagents.__all__


def test_the_operator_api_is_public() -> None:
    """Inspection and the data lifecycle (ADRs 0051, 0052) are imported from ``jetagents``."""
    from jetagents._client.inspection import Inspector
    from jetagents._client.lifecycle import Lifecycle

    assert jetagents.Inspector is Inspector and jetagents.Lifecycle is Lifecycle
    assert {"Inspector", "Lifecycle"} <= set(jetagents.__all__)
