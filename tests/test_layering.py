"""The house rules on who imports whom, read from the source: each package imports only the
packages below it (as its ``__init__`` docstring says), no module imports back in a circle, and
the library outside the command line knows nothing of click."""

from __future__ import annotations

import ast
from pathlib import Path

import belle_decrypt

PACKAGE = Path(belle_decrypt.__file__).parent
BELOW: dict[str, set[str]] = {
    "ground": set(),
    "streams": {"ground"},
    "checks": {"ground", "streams"},
    "layouts": {"ground", "streams", "checks"},
    "xor": {"ground", "streams", "checks", "layouts"},
    "publish": {"ground", "streams", "checks", "layouts", "xor"},
    "tensors": {"ground", "streams", "checks", "layouts"},
    "recipes": {"ground", "streams", "tensors"},
}
"""What each package may import besides itself; ``cli`` may import every package."""
TOP_LEVEL = {"__init__": set(), "__main__": {"entry"}, "entry": {"cli"}}
"""The package's own modules and what each may import (``entry`` must not import click)."""


def module_names() -> list[str]:
    """Every module of the package, dotted, without the ``belle_decrypt.`` prefix (a
    subpackage's ``__init__`` by the subpackage's name)."""
    names = []
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names.append(".".join(parts[:-1] if len(parts) > 1 and parts[-1] == "__init__" else parts))
    return sorted(names)


def source_of(module: str) -> Path:
    """The file of ``belle_decrypt.<module>``."""
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"


def imports(module: str) -> set[str]:
    """Every module ``belle_decrypt.<module>`` imports, at any depth of its code (lazy and
    type-checking imports too), as written."""
    tree = ast.parse(source_of(module).read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def own_imports(module: str) -> set[str]:
    """The modules of this package ``module`` imports, without the ``belle_decrypt.`` prefix."""
    known = set(module_names())
    found = set()
    for name in imports(module):
        inner = name.removeprefix("belle_decrypt.")
        if name.startswith("belle_decrypt.") and inner in known:
            found.add(inner)
    return found


def package_of(module: str) -> str:
    return module.split(".")[0] if "." in module else module


def test_each_package_imports_only_the_packages_below_it() -> None:
    wrong = set()
    for module in module_names():
        package = package_of(module)
        if package == "cli":
            continue
        allowed = TOP_LEVEL[module] if module in TOP_LEVEL else BELOW[package] | {package}
        wrong |= {
            (module, target)
            for target in own_imports(module)
            if package_of(target) not in allowed and target not in allowed
        }
    assert wrong == set()


def test_every_package_is_placed_and_says_what_it_may_import() -> None:
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(BELOW) | {"cli"}
    for package in packages:
        docstring = ast.get_docstring(ast.parse((PACKAGE / package / "__init__.py").read_text()))
        assert docstring is not None and "May import" in docstring, package
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == set(TOP_LEVEL)
    assert len(modules) <= 8 and len(packages) >= 4


def test_no_import_circle() -> None:
    graph = {module: own_imports(module) for module in module_names()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for target in graph[module]:
            visit(target, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_no_library_module_imports_click() -> None:
    offenders = {
        module
        for module in module_names()
        if package_of(module) != "cli"
        and any(name == "click" or name.startswith("click.") for name in imports(module))
    }
    assert offenders == set()


def test_jobs_does_not_reach_into_the_engine() -> None:
    assert not any("engine" in name for name in imports("streams.jobs"))


def test_no_module_is_over_450_lines_and_the_command_line_stays_thin() -> None:
    for module in module_names():
        lines = len(source_of(module).read_text().splitlines())
        assert lines <= (350 if package_of(module) == "cli" else 450), (module, lines)


def test_the_seams_import_no_concrete_layout_source_recipe_or_sink() -> None:
    """The layout protocol and the tensor pipeline's protocol know no implementation: a new
    layout, source, recipe or sink is added beside them, never into them."""
    assert {m for m in own_imports("layouts.protocol") if m.startswith("layouts.")} == set()
    assert not any(
        m.startswith(("tensors.sources", "tensors.sinks", "recipes"))
        for m in own_imports("tensors.protocol")
    )
    assert not any(m.startswith("recipes") for m in own_imports("tensors.run"))
