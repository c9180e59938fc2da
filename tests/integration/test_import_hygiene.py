"""Importing a library module must not import Ray: `marquee --help`, unit tests and the CLI's
lazy commands stay light. Each check runs in a fresh interpreter (a process start, so not a unit test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["training.xgb_train", "ops.cli", "marquee.schema", "marquee.home",
                                    "models.retrieval", "features.offline_store"])
def test_importing_does_not_import_ray(module):
    code = f"import sys, {module}; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} imported ray"
