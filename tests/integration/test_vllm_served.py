"""The real vLLM OpenAI server, started by the harness per profile, configured by a YAML file (`--config {config}`),
in one harness run (this module's only one): a profile whose engine dies before the run (VLLM_BATCH_INVARIANT=1 has
no CPU backend), a normal profile compared on logprobs, and a profile whose server the test kills mid-run. Afterwards
no process of any of them (API server, VLLM::Worker, resource tracker) may be left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import procgroup

from ..helpers import ROOT, only_run_dir, write_suite
from .vllm_common import CPU, describe, groups, marked, marker, needs_vllm, survivors

pytestmark = [pytest.mark.integration, pytest.mark.process, needs_vllm]

KEY = "sk-vllm-test-4d1c9a"
CONFIG = f"""# rendered per start by the harness; vLLM reads it with --config
dtype: "{{dtype}}"
max-model-len: 1024
enforce-eager: true
seed: 0
api-key: "{KEY}"
"""

SUITE = f"""
[suite]
name = "vllm-served"
version = 1
seed = 7
[model]
ref = "smollm2-135m"
[server]
command = "{{python}} -m vllm.entrypoints.openai.api_server --model {{model}} --host {{host}} --port {{port}} --config {{config}}"
config = "vllm.yaml"
startup_timeout_s = 900
stop_grace_s = 10
[endpoint]
api = "chat"
api_key_env = "HARNESS_VLLM_TEST_KEY"
request_timeout_s = 120
retries = 0
[generation]
max_new_tokens = 8
top_logprobs = 4
[prompts]
file = "{ROOT / "suites" / "prompts" / "chat8.jsonl"}"
[[schedules]]
kind = "solo"
[[schedules]]
kind = "permutation"
count = 1
[profiles.default]
device_env = {{ cpu = {{ {CPU} }} }}
expect = {{ cpu = {{ repeatability = "tokens", batch-invariance = "tokens" }} }}
[profiles.killed]
description = "the test kills this server's leader mid-run"
device_env = {{ cpu = {{ {CPU} }} }}
[profiles.invariant]
env = {{ VLLM_BATCH_INVARIANT = "1", {CPU} }}
"""


def _leader_of(mark: dict) -> int:
    """The API server of the `killed` profile: the marked group leader whose command is the api_server module."""
    for pid in marked(mark):
        if "vllm.entrypoints.openai.api_server" in describe(pid) and os.getpgid(pid) == pid:
            return pid
    raise AssertionError("no vLLM API server found")


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_dir: Path):
    tmp = tmp_path_factory.mktemp("vllm-served")
    (tmp / "vllm.yaml").write_text(CONFIG)
    suite = write_suite(tmp / "s.toml", SUITE)
    mark = marker()
    out = tmp / "out"
    env = {**os.environ, **mark, "HARNESS_VLLM_TEST_KEY": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(out)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    killed: dict = {}
    seen: set[int] = set()  # every process group the run started, to look into afterwards
    try:
        end = time.monotonic() + 1500
        while time.monotonic() < end and proc.poll() is None:
            seen |= groups(mark) - {os.getpgid(0)}
            logs = list(out.glob("*/logs/killed.server.log"))
            # The first request is the worker's probe: wait for the run's own requests.
            if not killed and logs and logs[0].read_text(errors="replace").count("POST /v1/chat/completions") >= 3:
                leader = _leader_of(mark)
                group = [describe(p) for p in procgroup.members(leader)]
                os.kill(leader, signal.SIGKILL)  # mid-run: requests are in flight
                killed = {"leader": leader, "group": group}
            time.sleep(0.5)
        stdout, stderr = proc.communicate(timeout=1500)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, stdout + stderr, out, mark, killed, seen


def test_no_vllm_process_survives_a_normal_stop_a_kill_or_a_failed_start(run):
    rc, output, out, mark, killed, seen = run
    assert killed, "the killed profile's server never took a request\n" + output
    assert any("VLLM::" in s for s in killed["group"]), killed  # there was an engine process to leave behind
    assert len(seen) >= 3, seen  # three servers' groups (and the workers'), each looked into below
    assert survivors(mark, seen) == [], output
    rep = json.loads((only_run_dir(out) / "report.json").read_text())
    jobs = {j["profile"]: j for j in rep["jobs"]}
    assert jobs["default"]["worker"]["server"]["stopped"].startswith("SIGTERM, group empty")
    assert jobs["killed"]["status"] == "server-crashed"
    # Whether the helpers were still there to be killed or had followed their leader, the group is empty now.
    assert jobs["killed"]["worker"]["server"]["stopped"].startswith("exited with status -9"), jobs["killed"]


def test_an_engine_dying_before_the_run_is_one_line_naming_the_cause_and_exit_3(run):
    # With --enforce-eager, VLLM_BATCH_INVARIANT=1 passes start-up on CPU and the engine dies at the first request
    # (the worker's probe), in a Triton kernel launch; the harness reads the cause off the server's log.
    rc, output, out, _, _, _ = run
    assert rc == 3, output
    line = next((ln for ln in output.splitlines() if ln.startswith("! worker 'invariant'")), "")
    assert "batch-invariant kernels (VLLM_BATCH_INVARIANT=1)" in line and "no CPU backend" in line, output
    assert "Traceback" not in output
    assert "TypeError" in (only_run_dir(out) / "logs" / "invariant.server.log").read_text()  # kept with the run


def test_the_other_profile_compares_on_logprobs_through_a_config_file(run):
    rc, output, out, _, _, _ = run
    rep = json.loads((only_run_dir(out) / "report.json").read_text())
    v = next(v for v in rep["verdicts"] if v["profile"] == "default" and v["property"] == "batch-invariance")
    assert v["level"] == "logprobs" and v["status"] == "pass" and v["sequences"] == 8
    run_dir = only_run_dir(out)
    kept = (run_dir / "logs" / "default.server.config.yaml").read_text()
    assert 'api-key: "<redacted>"' in kept and 'dtype: "float32"' in kept
    assert not any(KEY.encode() in f.read_bytes() for f in run_dir.rglob("*") if f.is_file())
