"""The examples in the package's docstrings name things that exist.

Most examples need a running cluster and are marked ``+SKIP`` for doctest, so doctest
alone would never notice an example importing a name the package does not have. Here
every import statement of every example is executed, SKIP or not.
"""

from __future__ import annotations

import ast
import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import jetagents


def _modules() -> list[ModuleType]:
    names = [jetagents.__name__] + [
        m.name for m in pkgutil.walk_packages(jetagents.__path__, prefix=f"{jetagents.__name__}.")
    ]
    return [importlib.import_module(n) for n in sorted(names)]


def _example_imports(module: ModuleType) -> list[str]:
    out: list[str] = []
    for test in doctest.DocTestFinder(exclude_empty=True).find(module, module.__name__):
        for example in test.examples:
            try:
                tree = ast.parse(example.source)
            except SyntaxError:  # top-level await and the like: not an import
                continue
            out += [ast.unparse(node) for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return out


def test_the_package_docstring_has_an_example_with_imports() -> None:
    imports = _example_imports(jetagents)
    assert any("Client" in line for line in imports), imports
    assert any("Counter" in line for line in imports), imports


@pytest.mark.parametrize("module", _modules(), ids=lambda m: m.__name__)
def test_every_import_in_a_docstring_example_runs(module: ModuleType) -> None:
    for line in _example_imports(module):
        exec(line, {})  # the docstring's own import line, nothing else
