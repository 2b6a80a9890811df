"""Crash isolation with real worker processes on a tiny real model: a worker killed, timed out,
or unable to load leaves the other profiles' results and its own finished batches on disk."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from .helpers import install_adapter, lines, load_report, only_run_dir, run_cli, start_until_mid_run, write_suite

pytestmark = pytest.mark.process  # every test runs the CLI and real worker processes

PROMPTS = ", ".join(f'{{id = "p{i}", text = "Tell me fact number {i} about the sea.", chat = true}}' for i in range(40))
SUITE = f"""
[suite]
name = "crash"
version = 1
[model]
ref = "tiny"
[generation]
max_new_tokens = 48
[prompts]
items = [{PROMPTS}]
[[schedules]]
kind = "solo"
[[schedules]]
kind = "batch-sizes"
sizes = [4]
[profiles.first]
[profiles.second]
"""


def _suite(tmp_path: Path, model: Path) -> Path:
    return write_suite(tmp_path / "crash.toml", SUITE.replace('ref = "tiny"', f'ref = "{model}"'))


def test_killed_worker_mid_run(tmp_path: Path, tiny_model: Path):
    out = tmp_path / "reports"
    proc, _, meta = start_until_mid_run(_suite(tmp_path, tiny_model), out, "first", records=3)
    os.kill(meta["pid"], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr
    rep = load_report(out)
    first, second = rep["jobs"]
    assert first["status"] == "crashed" and first["returncode"] == -signal.SIGKILL
    assert "killed by SIGKILL" in first["description"]
    assert 3 <= first["completed"] < first["expected"] == 80
    run = only_run_dir(out)
    assert lines(run / "records" / "first.jsonl") == first["completed"]  # finished batches stay on disk, whole
    assert second["status"] == "ok" and second["completed"] == second["expected"] == 80
    assert rep["result"] == "error" and "killed by SIGKILL" in stdout
    summary = (run / "summary.md").read_text()
    assert "## Crashes" in summary and "killed by SIGKILL" in summary
    assert any(v["profile"] == "second" and v["sequences"] == 40 for v in rep["verdicts"])


HANG = '''
import time
from harness.adapters.hf import HFAdapter


class HangAdapter(HFAdapter):
    """The real adapter, stuck in its first generate call."""

    def generate(self, prompts):
        while True:
            time.sleep(60)
'''


def test_worker_timeout_is_killed_and_reported(tmp_path: Path, tiny_model: Path):
    # A worker that never finishes, so the timeout is certain (a real one only times out if it happens to be slow).
    env = install_adapter(tmp_path, "hang", "hang_adapter", HANG, "HangAdapter")
    out = tmp_path / "r"
    p = run_cli(
        "run",
        str(_suite(tmp_path, tiny_model)),
        "--out",
        str(out),
        "--profile",
        "first",
        "--adapter",
        "hang",
        "--worker-timeout",
        "3",
        env=env,
    )
    assert p.returncode == 3, p.stdout + p.stderr
    job = load_report(out)["jobs"][0]
    assert job["status"] == "timeout" and job["completed"] == 0 < job["expected"]
    # The runner polls every 0.5 s and reports the worker's wall time, so "after 3s" may read "after 4s".
    assert 3 <= job["wall_s"] < 10 and f"timed out after {job['wall_s']:.0f}s and was killed" in job["description"]
    assert f"timed out after {job['wall_s']:.0f}s" in p.stdout


def test_model_that_will_not_load_exit_3(tmp_path: Path):
    bad = tmp_path / "bad-model"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "llama", "hidden_size": "wide"}')
    out = tmp_path / "r"
    p = run_cli("run", str(_suite(tmp_path, bad)), "--out", str(out), "--profile", "first")
    assert p.returncode == 3
    assert "Traceback" not in p.stdout + p.stderr
    job = load_report(out)["jobs"][0]
    assert job["status"] == "load-failed" and job["completed"] == 0
    assert "would not load on cpu" in job["description"]


def test_corrupt_gguf_exit_3_one_line(tmp_path: Path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(256))
    p = run_cli(
        "run", str(_suite(tmp_path, bad)), "--out", str(tmp_path / "r"), env={"HARNESS_CACHE": str(tmp_path / "cache")}
    )
    assert p.returncode == 3
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot prepare model" in lines[0] and "broken.gguf" in lines[0]
