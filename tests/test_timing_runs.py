"""Timing on a shared runner, with real processes: host noise sensing sees a real CPU hog by name; profiles take
turns pass by pass; a hog started halfway through a perf run neither becomes a determinism cost nor goes unnamed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import hostnoise

from .helpers import ROOT, load_report, only_run_dir, run_cli, run_plugin, write_suite

pytestmark = pytest.mark.process

HOG = """
import ctypes
ctypes.CDLL(None).prctl(15, b"cpu-hog", 0, 0, 0)   # PR_SET_NAME: what /proc/<pid>/stat shows
while True:
    pass
"""

SUITE = """
[suite]
name = "turns"
version = 1
[model]
ref = "{model}"
[generation]
max_new_tokens = 24
[prompts]
items = [
  {{id = "a", text = "Write a haiku about autumn leaves."}},
  {{id = "b", text = "List five fruits that are rich in vitamin C."}},
  {{id = "c", text = "def fibonacci(n):"}},
  {{id = "d", text = "The old library at the end of the street"}},
]
[[schedules]]
kind = "solo"
[perf]
warmup = 1
repeats = {repeats}
thresholds = {{ ttft = 0.30 }}
[profiles.default]
[profiles.deterministic]
env = {{ HCCL_DETERMINISTIC = "true" }}
torch_deterministic = true
"""


def _hog() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOG])


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc")
def test_noise_sensing_names_a_busy_neighbour():
    hog = _hog()
    try:
        time.sleep(0.3)
        a = hostnoise.snapshot()
        time.sleep(1.5)
        b = hostnoise.snapshot()
    finally:
        hog.kill()
        hog.wait()
    s = hostnoise.between(a, b, own=set())  # the hog is our child: judged from outside
    assert s["others_share"] > 0.3  # one busy core of this host's cores (2 here: about 50%)
    assert ["cpu-hog", hog.pid] in [t[:2] for t in s["top"]]  # among the busiest (other jobs may share the host)
    assert "cpu-hog" in hostnoise.describe(s)


def _passes(run: Path) -> list[tuple[float, str, int, bool]]:
    out = []
    for prof in ("default", "deterministic"):
        meta = json.loads((run / "records" / f"{prof}.meta.json").read_text())
        out += [(p["started"], prof, p["repeat"], p["warmup"]) for p in meta["passes"]]
    return sorted(out)


def test_profiles_take_turns_pass_by_pass(tmp_path: Path, tiny_model: Path):
    suite = write_suite(tmp_path / "turns.toml", SUITE.format(model=tiny_model, repeats=3))
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"))
    assert p.returncode == 0, p.stdout + p.stderr
    order = [prof for _, prof, _, _ in _passes(only_run_dir(tmp_path / "out"))]
    # warm-up A B, then B A, A B, B A: linear drift falls on both sides alike
    assert order == [
        "default",
        "deterministic",
        "deterministic",
        "default",
        "default",
        "deterministic",
        "deterministic",
        "default",
    ]
    rep = load_report(tmp_path / "out")
    # 3 measured passes x 4 prompts, less the passes another job on this host made noisy (left out of both sides)
    noisy = {
        k
        for _, _, k, w in _passes(only_run_dir(tmp_path / "out"))
        if not w and any(f"pass {k} ran beside other work" in n for n in rep["notes"])
    }
    expected = 4 * (3 - len(noisy)) if len(noisy) < 3 else 12  # every pass noisy: all are kept, moves are `noisy`
    assert rep["determinism_cost"] and all(c["n_before"] == c["n_after"] == expected for c in rep["determinism_cost"])


def test_a_hog_halfway_through_is_named_and_is_not_a_determinism_cost(tmp_path: Path, tiny_model: Path):
    # A 30% threshold: far below what a hog on one of two cores does to one side (about 2x), far above the run-to-run
    # wobble of a tiny model's millisecond steps, which a 5% threshold at alpha 0.05 over 4 rows would flag by chance.
    body = SUITE.format(model=tiny_model, repeats=4).replace("thresholds = { ttft = 0.30 }", "threshold = 0.30")
    suite = write_suite(tmp_path / "turns.toml", body)
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    hog = None
    try:
        deadline = time.monotonic() + 300
        while hog is None and time.monotonic() < deadline and proc.poll() is None:
            recs = list(out.glob("*/records/deterministic.jsonl"))
            # warm-up (4) plus two measured passes (8) of the second profile: halfway through the measured passes
            if recs and len(recs[0].read_text().splitlines()) >= 12:
                hog = _hog()
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        proc.kill()
    assert hog is not None, "the run ended before the hog could start"
    assert proc.returncode == 0, stdout + stderr
    rep = load_report(out)
    assert any("cpu-hog" in n for n in rep["notes"]), rep["notes"]
    moved = [c for c in rep["determinism_cost"] if c["status"] in ("regressed", "improved")]
    assert not moved, moved


ONE = SUITE.split("[profiles.deterministic]")[0]


def test_calibrate_keeps_the_run_history_and_fits_thresholds(tmp_path: Path, tiny_model: Path):
    suite = write_suite(tmp_path / "turns.toml", ONE.format(model=tiny_model, repeats=2))
    store = tmp_path / "baselines"
    p = run_cli("calibrate", str(suite), "--runs", "3", "--baselines", str(store), "--out", str(tmp_path / "out"))
    assert p.returncode == 0, p.stdout + p.stderr
    (f,) = store.glob("*/turns/default.json")
    b = json.loads(f.read_text())
    assert len(b["runs"]) == 3 and b["calibration"]["runs"] == 3 and b["calibration"]["budget"] == 0.01
    assert set(b["thresholds"]) == {"solo ttft", "solo tpot", "solo e2e", "solo tok_s", "load"}
    assert all(t >= 0.01 for t in b["thresholds"].values())
    assert "default: 3 runs, per-row alpha 0.002" in p.stdout  # budget 0.01 over 5 gated rows
    # The next run is judged against the three runs' spread, under the calibrated thresholds.
    r = run_cli("run", str(suite), "--baselines", str(store), "--out", str(tmp_path / "next"))
    assert r.returncode in (0, 1), r.stdout + r.stderr
    rows = {c["metric"]: c for c in load_report(tmp_path / "next")["perf"]["default"]}
    assert rows["solo tpot"]["runs"] == 3 and rows["solo tpot"]["threshold"] == b["thresholds"]["solo tpot"]


def test_timings_against_another_hardwares_baseline_are_shown_not_gated(tmp_path: Path, tiny_model: Path):
    suite = write_suite(tmp_path / "turns.toml", ONE.format(model=tiny_model, repeats=2))
    store = tmp_path / "baselines"
    p = run_cli(
        "run",
        str(suite),
        "--baselines",
        str(store),
        "--out",
        str(tmp_path / "a"),
        "--update-baselines",
        "--reason",
        "elsewhere",
    )
    assert p.returncode == 0, p.stdout + p.stderr
    # The same file, as if recorded on another CPU model ten times slower: a gate would call this an improvement.
    (f,) = store.glob("*/turns/default.json")
    b = json.loads(f.read_text())
    b["environment"]["device"]["cpu_model"] = "intel-6-85"
    b["latency"] = {k: [10 * x for x in v] for k, v in b["latency"].items()}
    b["runs"] = []
    other = store / "cpu-elsewhere" / "turns" / "default.json"
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps(b))
    f.unlink()
    junit = tmp_path / "junit.xml"
    r = run_plugin(
        suite, junit, "-q", "-rs", "--baselines", str(store), "--out", str(tmp_path / "b"), cwd=tmp_path, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "shown, not gated" in r.stdout and "other hardware" in r.stdout
    rep = load_report(tmp_path / "b")
    assert rep["perf_gated"] == {"default": False}
    tpot = next(c for c in rep["perf"]["default"] if c["metric"] == "solo tpot")
    assert tpot["status"] == "not comparable" and tpot["mark"] == "x" and tpot["ratio"] < 0.5  # shown, gates nothing
    v = next(v for v in rep["verdicts"] if v["property"] == "baseline")
    assert v["expect"] == "close" and "no baseline for this hardware" in v["reason"]
