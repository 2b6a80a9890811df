"""The real embedded SmolLM2-135M-Instruct on CPU, through the real CLI and the real pytest plugin."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import plan
from harness.records import read_jsonl
from harness.suite_parse import load as load_suite

from ..helpers import load_report, only_run_dir, run_cli, run_plugin, write_suite

pytestmark = [pytest.mark.integration, pytest.mark.process]  # the real model, through the CLI in a subprocess

SUITE = """
[suite]
name = "mini"
version = 1
seed = 3
[model]
ref = "smollm2-135m"
dtype = "float32"
[generation]
max_new_tokens = 12
[prompts]
items = [
  {id = "capital", text = "What is the capital of France?", chat = true},
  {id = "gravity", text = "Explain gravity to a ten-year-old in three sentences.", chat = true},
  {id = "fib", text = "def fibonacci(n):\\n"},
  {id = "long", text = "Summarise: the printing press, invented around 1440, made books cheap, raised literacy and spread scientific ideas across Europe faster than ever before.", chat = true},
]
[[schedules]]
kind = "solo"
[[schedules]]
kind = "repeat"
[[schedules]]
kind = "batch-sizes"
sizes = [3, 4]
[[schedules]]
kind = "needle"
trials = 2
[profiles.default]
expect = { cpu = { repeatability = "bitwise", batch-invariance = "vary" } }
[profiles.deterministic]
env = { ATB_MATMUL_SHUFFLE_K_ENABLE = "0", HCCL_DETERMINISTIC = "true", HARNESS_TEST_API_KEY = "do-not-leak-me" }
torch_deterministic = true
expect = { cpu = { repeatability = "bitwise", batch-invariance = "tokens" } }
"""


def test_cli_on_the_real_model(tmp_path: Path, embedded_dir: Path):
    out = tmp_path / "reports"
    suite_file = write_suite(tmp_path / "mini.toml", SUITE)
    batches = plan.expand(load_suite(suite_file))
    total = plan.count_sequences(batches)
    compared = sum(len(b.prompt_ids) for b in batches if b.kind in ("batch-sizes", "needle"))
    p = run_cli("run", str(suite_file), "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "profile deterministic" in p.stdout and "batch-invariance" in p.stdout and "result: PASS" in p.stdout
    run = only_run_dir(out)
    rep = json.loads((run / "report.json").read_text())
    assert rep["schema_version"] == 1 and rep["result"] == "pass"
    by = {(v["profile"], v["property"]): v for v in rep["verdicts"]}
    # The negative control really sees bit-level variation on this CPU; tokens hold in float32.
    assert by["default", "batch-invariance"]["status"] == "pass"
    assert by["default", "batch-invariance"]["bitwise"] < by["default", "batch-invariance"]["sequences"] == compared
    assert by["deterministic", "repeatability"]["bitwise"] == 4
    for job in rep["jobs"]:
        assert job["status"] == "ok" and job["completed"] == total
        assert set(job["worker"]["load_s"]) == {"import", "read", "to_device", "first_forward"}
        assert job["worker"]["tokens_per_s"] > 0
    assert rep["jobs"][1]["worker"]["deterministic_algorithms"] is True
    assert rep["jobs"][1]["worker"]["env"]["ATB_MATMUL_SHUFFLE_K_ENABLE"] == "0"
    records = list(read_jsonl(run / "records" / "default.jsonl"))
    assert len(records) == total
    solo = next(r for r in records if r.kind == "solo" and r.prompt_id == "capital")
    assert "Paris" in solo.text
    assert len(solo.fingerprints) == len(solo.tokens) == len(solo.topk_ids) == len(solo.token_times)
    assert solo.token_times == sorted(solo.token_times) and solo.token_times[0] > 0
    assert solo.topk_ids[0][0] == solo.tokens[0]  # greedy: the chosen token is the top-1
    # Nothing secret lands on disk.
    for f in run.rglob("*"):
        if f.is_file():
            assert "do-not-leak-me" not in f.read_text(errors="replace"), f
    assert "## Unique outputs per prompt" in (run / "summary.md").read_text()


def test_pytest_plugin_items_and_failure_report(tmp_path: Path, embedded_dir: Path):
    suite = write_suite(
        tmp_path / "mini.toml", SUITE.replace('batch-invariance = "tokens"', 'batch-invariance = "bitwise"')
    )  # bitwise batch invariance fails on CPU
    junit = tmp_path / "junit.xml"
    p = run_plugin(suite, junit, "--out", str(tmp_path / "reports"), "--profile", "deterministic", cwd=tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"repeatability", "batch-invariance", "baseline", "html"}
    assert not list(cases["html"])  # report.html written: a pass, neither skipped nor failed
    assert cases["baseline"].find("skipped") is not None  # no baseline here: said, and not a pass or a failure
    assert cases["repeatability"].find("failure") is None
    failure = cases["batch-invariance"].find("failure")
    assert failure is not None
    text = failure.text or failure.get("message", "")
    assert "expected 'bitwise'" in text and "worst case: prompt" in text and "logits bits first differ" in text
    assert "Traceback" not in text
    # pytest's short summary names each failed item by node id: this one, and only this one.
    failed = [ln for ln in p.stdout.splitlines() if ln.startswith("FAILED ")]
    assert [ln.split(" - ", 1)[0] for ln in failed] == ["FAILED mini.toml::deterministic::batch-invariance"], p.stdout
    assert load_report(tmp_path / "reports")["exit_code"] == 1
