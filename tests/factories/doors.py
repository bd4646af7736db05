"""One door per noun: who takes a name from a module that only imports it.

A name lives in one module and is imported from there. A module that imports a name for its
own use (``host`` uses ``Sysroot``) must not become a second way to it: ``borrowed_imports``
lists every ``from M import X`` and every ``M.X`` in the package, the tests, ``bench/`` and
``contrib/`` where ``X`` is not defined in ``M`` itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import tdxupdate

REPO = Path(tdxupdate.__file__).resolve().parent.parent
_TREES = ("tdxupdate", "tests", "bench", "contrib")


def _source(module: str) -> Path:
    return REPO / (module.replace(".", "/") + ".py")


def own_names(module: str) -> set[str]:
    """The names ``module`` defines at its top level (classes, functions, assignments)."""
    names: set[str] = set()
    for node in ast.parse(_source(module).read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _python_files() -> Iterator[Path]:
    for tree in _TREES:
        yield from sorted((REPO / tree).rglob("*.py"))


def _aliases(tree: ast.AST, module: str) -> set[str]:
    """The local names ``module`` is bound to (``from tdxupdate import host as _host``)."""
    package, _, leaf = module.rpartition(".")
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == package:
            found.update(a.asname or a.name for a in node.names if a.name == leaf)
        elif isinstance(node, ast.Import):
            found.update(a.asname for a in node.names if a.name == module and a.asname)
    return found


def borrowed_imports(module: str) -> list[str]:
    """``file:line: name`` for every use of a name through ``module`` that it does not define."""
    own = own_names(module)
    out: list[str] = []
    for path in _python_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = _aliases(tree, module)
        where = path.relative_to(REPO)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == module:
                out.extend(
                    f"{where}:{node.lineno}: {a.name}" for a in node.names if a.name not in own
                )
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr not in own
            ):
                out.append(f"{where}:{node.lineno}: {node.value.id}.{node.attr}")
    return out
