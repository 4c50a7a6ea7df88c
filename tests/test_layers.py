"""The layer contract of pyproject.toml ([tool.importlinter], docs/design.md): no module imports from a layer above
its own, and none of data, models, weighting, metrics, report imports another of them. A new upward import or
import circle between layers fails here."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_no_module_imports_from_a_higher_layer():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.fail("lint-imports (import-linter, in the test extra) is not installed beside this Python")
    proc = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_every_module_has_a_layer():
    """A module outside the contract would escape it: every top-level module of attrnet is in one layer."""
    import pkgutil

    import attrnet
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    listed = {part.strip().split(".")[1] for layer in layers for part in layer.replace(":", "|").split("|")}
    modules = {m.name for m in pkgutil.iter_modules(attrnet.__path__)}
    assert modules - listed == set() and len(modules) > 20
