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
