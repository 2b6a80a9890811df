"""The latency gate on the real embedded model: a user-registered adapter that wraps the real one with a
15% delay per token, installed through the `harness.adapters` entry point, must be flagged as regressed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..helpers import install_slow_adapter, load_report, run_cli, write_suite
from .suites import GATE_SUITE

pytestmark = [pytest.mark.integration, pytest.mark.process]  # the real model, through the CLI in a subprocess


def test_a_15_percent_slower_adapter_regresses_tpot(tmp_path: Path, embedded_dir: Path):
    suite = write_suite(tmp_path / "gate.toml", GATE_SUITE)
    store, env = tmp_path / "baselines", install_slow_adapter(tmp_path, 0.15)
    common = ("--baselines", str(store))
    r = run_cli(
        "run", str(suite), *common, "--out", str(tmp_path / "base"), "--update-baselines", "--reason", "A", env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr

    r = run_cli("run", str(suite), *common, "--out", str(tmp_path / "slow"), "--adapter", "slow", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = {c["metric"]: c for c in load_report(tmp_path / "slow")["perf"]["default"]}
    tpot = rows["solo tpot"]
    assert tpot["status"] == "regressed" and tpot["mark"] == "+", tpot
    # No upper bound: the two runs are separate, and the README measured 25% drift between runs on this VM
    # (prefill 116 -> 145 ms); a busier moment for the slow run only adds to the ratio.
    assert tpot["ratio"] > 1.08 and tpot["p"] < 0.05 and tpot["ci_low"] > 1.0
    # Outputs are the baseline's: the wrapper changes speed, not tokens or bits.
    v = next(v for v in load_report(tmp_path / "slow")["verdicts"] if v["property"] == "baseline")
    assert v["status"] == "pass"
    assert re.search(r"\|\s*\+\s*\|\s*solo tpot", r.stdout), r.stdout


def test_unknown_adapter_is_a_usage_error(tmp_path: Path):
    r = run_cli(
        "run",
        str(write_suite(tmp_path / "gate.toml", GATE_SUITE)),
        "--adapter",
        "slwo",
        env=install_slow_adapter(tmp_path, 0.15),
    )
    assert r.returncode == 2 and "did you mean 'slow'" in r.stderr and "Traceback" not in r.stderr
