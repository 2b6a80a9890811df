"""vLLM in the worker process (the `vllm` adapter) on the embedded model: one harness run per module (one engine
start), each planned batch one generate() call, records at the logprobs level, load phases from vLLM's start-up,
and nothing of the engine left afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..helpers import ROOT, load_report, only_run_dir, run_cli, write_suite
from .vllm_common import CPU, marker, needs_vllm, survivors

pytestmark = [pytest.mark.integration, pytest.mark.process, needs_vllm]

SUITE = f"""
[suite]
name = "vllm-inproc"
version = 1
seed = 7
[model]
ref = "smollm2-135m"
adapter = "vllm"
[generation]
max_new_tokens = 8
top_logprobs = 4
[prompts]
file = "{ROOT / "suites" / "prompts" / "chat8.jsonl"}"
[[schedules]]
kind = "solo"
[[schedules]]
kind = "batch-sizes"
sizes = [8]
[profiles.default]
device_env = {{ cpu = {{ {CPU} }} }}
expect = {{ cpu = "tokens" }}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory, embedded_dir: Path):
    tmp = tmp_path_factory.mktemp("vllm-inproc")
    mark = marker()
    p = run_cli("run", str(write_suite(tmp / "s.toml", SUITE)), "--out", str(tmp / "out"), env=mark, timeout=1200)
    return p, tmp / "out", mark


def test_runs_and_compares_on_logprobs(run):
    p, out, _ = run
    assert p.returncode == 0, p.stdout + p.stderr
    rep = load_report(out)
    inv = next(v for v in rep["verdicts"] if v["property"] == "batch-invariance")
    assert inv["level"] == "logprobs" and inv["sequences"] == 8 and inv["status"] == "pass"
    assert "compared on" in p.stdout and "logprobs" in p.stdout


def test_records_carry_the_chosen_token_its_logprob_and_the_top_k(run):
    _, out, _ = run
    recs = [json.loads(ln) for ln in (only_run_dir(out) / "records" / "default.jsonl").read_text().splitlines()]
    assert len(recs) == 16 and {r["batch_id"].split("/")[0] for r in recs} == {"solo", "batch-sizes"}
    for r in recs:
        assert r["level"] == "logprobs" and len(r["tokens"]) == 8 and r["finish_reason"] == "length"
        assert all(len(ids) == 4 and len(lps) == 4 for ids, lps in zip(r["topk_ids"], r["topk_logprobs"]))
        assert [ids[0] for ids in r["topk_ids"]] == r["tokens"]  # greedy: the chosen token is the top-1
        assert all(lps == sorted(lps, reverse=True) for lps in r["topk_logprobs"])
        assert len(set(r["fingerprints"])) > 1 and r["text"]
    batched = [r for r in recs if r["kind"] == "batch-sizes"]
    assert len({r["batch_id"] for r in batched}) == 1  # the 8 went in one generate() call


def test_load_phases_come_from_the_engine_start_up_and_no_engine_process_is_left(run):
    _, out, mark = run
    meta = json.loads((only_run_dir(out) / "records" / "default.meta.json").read_text())
    phases = meta["load_s"]
    assert {"import", "import_vllm", "weights", "engine_init", "engine_other"} <= set(phases), phases
    assert phases["weights"] > 0 and phases["engine_init"] > 0
    assert meta["device"]["vllm"] and meta["device"]["device"] == "cpu"
    assert survivors(mark, {meta["pid"]}) == []  # the worker's group: the engine ran inside it
