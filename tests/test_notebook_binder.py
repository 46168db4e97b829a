"""Binder can run the tutorials: every module the notebooks import is installed by binder/'s files."""

import ast
import importlib.metadata
import json
import pathlib
import re
import sys

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = pathlib.Path(__file__).resolve().parent.parent


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-"):
        return None
    return normalise(re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0])


def notebook_imports(path: pathlib.Path) -> set:
    """Top-level modules a notebook imports, including ``%load_ext`` and ``%%remote`` cell bodies."""
    modules = set()
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        lines = []
        for line in source.splitlines():
            match = re.match(r"\s*%load_ext\s+(\w+)", line)
            if match:
                modules.add(match.group(1))
            lines.append("" if line.lstrip().startswith(("%", "!")) else line)
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return modules


def test_every_notebook_import_is_installed_by_binder():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    requirements = {
        name for name in map(requirement_name, (ROOT / "binder" / "requirements.txt").read_text().splitlines()) if name
    }
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert re.search(r"pip install .*-e \.", post_build), "postBuild must install Ember from the repository"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # postBuild installs Ember without dependencies: its own must all be in the requirements.
    needed = {requirement_name(dep) for dep in project["dependencies"]} | {"jupyterlab"}
    distributions = importlib.metadata.packages_distributions()
    for path in notebooks:
        for module in notebook_imports(path):
            if module in sys.stdlib_module_names or module == project["name"]:
                continue
            assert module in distributions, f"{path.name} imports {module}, which is not installed here"
            needed |= {normalise(dist) for dist in distributions[module]}
    missing = needed - requirements
    assert not missing, f"binder/requirements.txt lacks {sorted(missing)}"


def test_the_import_scan_sees_magics_and_remote_cells(tmp_path):
    notebook = {
        "cells": [
            {"cell_type": "code", "source": ["%load_ext ember\n", "import numpy as np"]},
            {"cell_type": "code", "source": ["%%remote --num-cpus 1\n", "from scipy import stats\n", "x = 1"]},
            {"cell_type": "markdown", "source": ["import nothing"]},
        ]
    }
    path = tmp_path / "n.ipynb"
    path.write_text(json.dumps(notebook))
    assert notebook_imports(path) == {"ember", "numpy", "scipy"}
