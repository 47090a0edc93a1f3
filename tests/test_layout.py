"""The house: the README's module table is the package, and tests/ and bench/ stay apart.

A newcomer finds a behaviour by the folder names and the README's table; a module the table
does not list, or a row for a module that moved, sends them to the wrong place. tests/ and
bench/ share their harnesses through `testkit/`, so neither imports the other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_modules() -> set[str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| folder | module | its one job |") :]
    table = table[: table.index("\n\n")]
    found: set[str] = set()
    folder = ""
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[0]:
            folder = cells[0].strip("`")
        for module in re.findall(r"`([\w]+\.py)`", cells[1]):
            found.add(folder + module)
    return found


def test_the_readme_module_table_lists_every_module_where_it_is() -> None:
    modules = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "kdns").rglob("*.py")
        if p.name not in {"__init__.py", "__main__.py"}
    }
    listed = _readme_modules()
    assert listed - modules == set(), "rows for modules that do not exist"
    assert modules - listed == set(), "modules the README's table does not list"


def _imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_tests_and_bench_do_not_import_each_other() -> None:
    crossings = []
    for folder, other in (("tests", "bench"), ("bench", "tests")):
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imported(path):
                if name == other or name.startswith(other + "."):
                    crossings.append(f"{path.relative_to(ROOT)} imports {name}")
    assert crossings == []
