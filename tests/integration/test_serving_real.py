"""The embedded model behind the real `transformers serve --continuous-batching`, started and stopped by the
harness per profile, with concurrent requests: the serving path end to end, nothing stubbed."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ..helpers import ROOT, load_report, only_run_dir, run_cli, write_suite

pytestmark = [pytest.mark.integration, pytest.mark.process]  # the real model, through the CLI in a subprocess

SUITE = f"""
[suite]
name = "served-real"
version = 1
seed = 5
[model]
ref = "smollm2-135m"
[server]
command = "transformers serve {{model}} --device {{device}} --dtype {{dtype}} --host {{host}} --port {{port}} --continuous-batching --cb-block-size 32 --cb-num-blocks 256 --cb-max-batch-tokens 2048 --log-level info"
[endpoint]
api = "chat"
[generation]
max_new_tokens = 10
[prompts]
file = "{ROOT / "suites" / "prompts" / "general.jsonl"}"
[[schedules]]
kind = "solo"
[[schedules]]
kind = "permutation"
count = 1
[[schedules]]
kind = "needle"
trials = 2
min_size = 8
[profiles.deterministic]
env = {{ HCCL_DETERMINISTIC = "true" }}
expect = {{ cpu = "tokens" }}
"""


@pytest.mark.skipif(
    shutil.which("transformers") is None and not (Path(os.sys.executable).parent / "transformers").exists(),
    reason="transformers serve not installed (extra: serving)",
)
def test_transformers_serve_per_profile_with_concurrent_requests(tmp_path: Path, embedded_dir: Path):
    suite = write_suite(tmp_path / "served.toml", SUITE)
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"), timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    rep = load_report(tmp_path / "out")
    run = only_run_dir(tmp_path / "out")
    job = rep["jobs"][0]
    assert job["status"] == "ok" and job["completed"] == job["expected"] > 32
    srv = job["worker"]["server"]
    assert srv["argv"][1:3] == ["serve", str(embedded_dir)] and srv["stopped"].startswith("SIGTERM")
    with pytest.raises(ProcessLookupError):
        os.kill(srv["pid"], 0)  # stopped, not left behind
    inv = next(v for v in rep["verdicts"] if v["property"] == "batch-invariance")
    assert inv["level"] == "text" and inv["status"] == "pass" and inv["sequences"] >= 16 + 16
    prompts = (ROOT / "suites" / "prompts" / "general.jsonl").read_text().splitlines()
    assert set(inv["unique_outputs"]) == {json.loads(ln)["id"] for ln in prompts if ln.strip()}
    assert any("returned text only" in n for n in rep["notes"])
    assert (
        "permutation ttft" in rep["latency"]["deterministic"]
        and rep["latency"]["deterministic"]["needle tpot"]["n"] >= 16
    )
    log = (run / "logs" / "deterministic.server.log").read_text()
    assert "POST /v1/chat/completions" in log and "Uvicorn running" in log
    assert "unique outputs per prompt" in p.stdout
