"""The house rules on who imports whom, read from the source."""

from __future__ import annotations

import ast
from pathlib import Path

import belle_decrypt

PACKAGE = Path(belle_decrypt.__file__).parent
COMMAND_LINE = {"cli", "console", "__main__"}


def imports(module: str) -> set[str]:
    """Every module ``belle_decrypt/<module>.py`` imports, at any depth of its code."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def library_modules() -> list[str]:
    """Every module of the package (subpackages too) but the command line's, as paths
    relative to the package without ``.py``."""
    return sorted(
        str(path.relative_to(PACKAGE).with_suffix(""))
        for path in PACKAGE.rglob("*.py")
        if path.stem not in COMMAND_LINE or path.parent != PACKAGE
    )


def test_no_library_module_imports_click() -> None:
    offenders = {
        module
        for module in library_modules()
        if any(name == "click" or name.startswith("click.") for name in imports(module))
    }
    assert offenders == set()


def test_jobs_does_not_reach_into_the_engine() -> None:
    assert not any("engine" in name for name in imports("jobs"))


def test_the_command_line_stays_thin() -> None:
    assert len((PACKAGE / "cli.py").read_text().splitlines()) < 350
