"""The shipped GitHub workflow for a self-hosted Ascend runner, validated by a real linter: check-jsonschema with
its vendored GitHub workflow schema (no network)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import ROOT

pytestmark = pytest.mark.process  # runs the linter's CLI
pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (pip install check-jsonschema)")

WORKFLOW = ROOT / ".github" / "workflows" / "nightly-ascend.yml"


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_nightly_workflow_is_valid():
    p = lint(WORKFLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    text = WORKFLOW.read_text()
    assert "nox --no-venv -s determinism" in text
    assert "actions/cache/restore" in text and "actions/cache/save" in text and "path: reports/history" in text
    assert "actions/upload-artifact" in text and "apache-otava" in text


def test_the_linter_sees_a_broken_workflow(tmp_path: Path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text().replace("runs-on:", "runs_on:").replace("timeout-minutes: 240", "timeout-minutes: soon")
    )
    p = lint(broken)
    assert p.returncode == 1 and "runs-on" in p.stdout + p.stderr
