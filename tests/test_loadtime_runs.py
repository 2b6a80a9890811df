"""The load-time sweep on a tiny real model, with real worker processes: phases, the recommendation,
the plot, a baseline round trip, and a loader killed mid-sweep."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from .helpers import ROOT, only_run_dir, run_cli, write_suite

pytestmark = pytest.mark.process  # every test runs the CLI and real loader processes

SUITE = """
[suite]
name = "tinyload"
version = 1
[model]
ref = "{model}"
[loadtime]
omp = [1, "unset"]
repeats = {repeats}
drop_caches = true
"""


def _report(out: Path) -> dict:
    return json.loads((only_run_dir(out) / "report.json").read_text())


def test_sweep_phases_recommendation_plot_and_baseline(tmp_path: Path, tiny_model: Path):
    suite = write_suite(tmp_path / "tl.toml", SUITE.format(model=tiny_model, repeats=2))
    store = tmp_path / "baselines"
    r = run_cli(
        "loadtime",
        str(suite),
        "--out",
        str(tmp_path / "a"),
        "--baselines",
        str(store),
        "--update-baselines",
        "--reason",
        "first",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rep = _report(tmp_path / "a")
    assert len(rep["samples"]) == 2 * 2 * 2  # rounds x settings x (cold, warm)
    assert rep["cache"]["cold_measured"] is True
    for s in rep["samples"]:
        assert s["status"] == "ok" and set(s["phases"]) == {"import", "read", "to_device", "first_forward"}
        assert all(v > 0 for v in s["phases"].values()) and s["peak_rss_mb"] > 50
    assert {s["env"]["OMP_NUM_THREADS"] for s in rep["samples"]} == {"1", "(unset)"}
    warm = {x["setting"]: x["warm_p50"] for x in rep["settings"]}
    assert rep["recommendation"]["setting"] == min(warm, key=warm.get)
    assert "recommendation: fastest: OMP_NUM_THREADS=" in r.stdout
    run = only_run_dir(tmp_path / "a")
    assert (run / "loadtime.png").stat().st_size > 5000 and "loadtime.png" in (run / "summary.md").read_text()
    assert len((run / "loads.jsonl").read_text().splitlines()) == 8
    assert sorted(p.name for p in store.rglob("*.json")) == ["omp-1.json", "omp-unset.json"]

    r = run_cli("loadtime", str(suite), "--out", str(tmp_path / "b"), "--baselines", str(store))
    assert r.returncode == 0, r.stdout + r.stderr
    rows = _report(tmp_path / "b")["baseline"]
    assert {c["metric"].split(" ", 1)[0] for c in rows} == {"OMP_NUM_THREADS=1", "OMP_NUM_THREADS=unset"}
    assert {c["status"] for c in rows} == {"insufficient"}  # two loads per side can never be significant


def test_calibrate_keeps_load_time_run_histories_and_a_run_is_judged_against_their_spread(
    tmp_path: Path, tiny_model: Path
):
    suite = write_suite(tmp_path / "tl.toml", SUITE.format(model=tiny_model, repeats=1))
    store = tmp_path / "baselines"
    p = run_cli("calibrate", str(suite), "--runs", "3", "--baselines", str(store), "--out", str(tmp_path / "cal"))
    assert p.returncode == 0, p.stdout + p.stderr
    files = {f.stem: json.loads(f.read_text()) for f in store.rglob("*.json")}
    assert sorted(files) == ["omp-1", "omp-unset"]
    metrics = {f"{tiny_model.name} warm", f"{tiny_model.name} cold"}  # the model is named by its folder
    for b in files.values():
        assert len(b["runs"]) == 3 and set(b["runs"][0]) == metrics
        assert b["calibration"]["runs"] == 3 and b["calibration"]["budget"] == 0.01
        assert set(b["thresholds"]) == metrics
    assert "omp-1: 3 runs, per-row alpha 0.0025" in p.stdout  # budget 0.01 over 2 settings x (warm, cold)
    # one more recording appends to the history instead of replacing it
    r = run_cli("loadtime", str(suite), "--out", str(tmp_path / "more"), "--baselines", str(store),
                "--update-baselines", "--reason", "fourth")  # fmt: skip
    assert r.returncode == 0 and "(4 run(s) in its history)" in r.stdout, r.stdout + r.stderr
    # a run with one load per side is judged against the four runs' spread, under the calibrated thresholds and the
    # run's one budget
    r = run_cli("loadtime", str(suite), "--out", str(tmp_path / "next"), "--baselines", str(store))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    rows = {c["metric"]: c for c in _report(tmp_path / "next")["baseline"]}
    assert len(rows) == 4 and all(c["runs"] == 4 for c in rows.values())
    warm = f"{tiny_model.name} warm"
    assert rows[f"OMP_NUM_THREADS=1 {warm}"]["threshold"] == files["omp-1"]["thresholds"][warm]
    assert "false-alarm budget 0.01 per run over 4 gated load-time rows" in r.stdout
    assert "judged against the spread of 4 baseline runs" in r.stdout


def test_a_killed_loader_is_reported_and_the_sweep_goes_on(tmp_path: Path, tiny_model: Path):
    suite = write_suite(tmp_path / "tl.toml", SUITE.format(model=tiny_model, repeats=2))
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.cli",
            "loadtime",
            str(suite),
            "--out",
            str(out),
            "--baselines",
            str(tmp_path / "b"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    parent, killed, deadline = psutil.Process(proc.pid), None, time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        for child in parent.children(recursive=True):
            try:
                if (
                    "harness.worker" in " ".join(child.cmdline())
                    and "r0-cold" in " ".join(child.cmdline())
                    and "ompunset" in " ".join(child.cmdline())
                ):
                    child.send_signal(signal.SIGKILL)
                    killed = child.pid
                    break
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=600)
    assert killed is not None, "never saw the loader to kill"
    assert proc.returncode == 3, stdout + stderr
    rep = _report(out)
    bad = [s for s in rep["samples"] if s["status"] != "ok"]
    assert len(bad) == 1 and bad[0]["setting"] == "unset" and "SIGKILL" in bad[0]["error"]
    assert len(rep["samples"]) == 8 and sum(s["status"] == "ok" for s in rep["samples"]) == 7
    assert "! " in stdout and "SIGKILL" in stdout and "Traceback" not in stdout + stderr


def test_bad_settings_are_a_usage_error(tmp_path: Path):
    suite = write_suite(
        tmp_path / "tl.toml", SUITE.format(model="x", repeats=2).replace('[1, "unset"]', '[0, "unset"]')
    )
    r = run_cli("loadtime", str(suite))
    assert r.returncode == 2 and "loadtime.omp" in r.stderr and "Traceback" not in r.stderr
