"""The codebase keeps its own rules: ruff clean, and the layers import-linter enforces."""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: install the test extra (pip install -e '.[test]')")
    return found


def test_ruff_is_clean():
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_layer_contracts_hold():
    result = subprocess.run([_tool("lint-imports")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_agent_modules_import_without_the_server_extra():
    """Import every agents module with the server packages made unimportable."""
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'fastapi', 'uvicorn', 'psycopg', 'psycopg_pool',"
        " 'pgserver', 'apscheduler', 'pydantic_settings'}:\n"
        "            raise ImportError(f'{name} is a server dependency')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import importlib, pkgutil, agents, jinsuan.contract\n"
        "for pkg in (agents, jinsuan.contract):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "import jinsuan.cli.agent\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr


def _import_linter() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_module_of_jinsuan_lies_in_a_layer():
    """A module added straight under ``jinsuan/`` would escape the layers contract: refuse it."""
    (layers,) = [c["layers"] for c in _import_linter()["contracts"] if c["type"] == "layers"]
    named = {name.strip() for layer in layers for name in layer.replace("|", ":").split(":")}
    import jinsuan

    outside = [f"jinsuan.{m.name}" for m in pkgutil.iter_modules(jinsuan.__path__)
               if f"jinsuan.{m.name}" not in named]
    assert outside == [], f"put these in a layer of pyproject.toml's contract: {outside}"


def test_every_package_is_a_root_of_the_contracts():
    """A new top-level package (a room) is covered by the contracts only once it is named."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packaged = {p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packaged == set(_import_linter()["root_packages"])
