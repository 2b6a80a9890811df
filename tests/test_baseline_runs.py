"""Baselines through the real CLI on a tiny real model: written only on request, compared, and refused
with one clear line (exit 2) when corrupt, of an unknown schema, or made for another case hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import load_report, run_cli, write_suite

pytestmark = pytest.mark.process  # every test runs the CLI and real worker processes

SUITE = """
[suite]
name = "tinyperf"
version = 1
[model]
ref = "{model}"
[generation]
max_new_tokens = {tokens}
[prompts]
items = [{{id = "a", text = "Say hello.", chat = true}}, {{id = "b", text = "Count to five."}},
         {{id = "c", text = "Name a colour.", chat = true}}, {{id = "d", text = "def add(a, b):"}}]
[[schedules]]
kind = "solo"
[perf]
warmup = 1
repeats = 2
threshold = 5.0    # a tiny model's millisecond steps are noise; this test checks plumbing, not speed
[profiles.default]
"""


@pytest.fixture
def setup(tmp_path: Path, tiny_model: Path):
    suite = write_suite(tmp_path / "tinyperf.toml", SUITE.format(model=tiny_model, tokens=8))
    store = tmp_path / "baselines"
    return suite, store, tmp_path


def _run(suite: Path, store: Path, out: Path, *extra: str):
    return run_cli("run", str(suite), "--baselines", str(store), "--out", str(out), *extra)


def _only_file(store: Path) -> Path:
    files = list(store.rglob("default.json"))
    assert len(files) == 1, files
    return files[0]


def test_written_only_on_request_then_compared(setup):
    suite, store, tmp = setup
    r = _run(suite, store, tmp / "r0")
    assert r.returncode == 0, r.stderr
    assert not store.exists()  # read-only unless asked
    assert load_report(tmp / "r0")["verdicts"][0]["status"] == "no baseline"

    r = _run(suite, store, tmp / "r1", "--update-baselines")
    assert r.returncode == 2 and "--reason" in r.stderr and "Traceback" not in r.stderr

    r = _run(suite, store, tmp / "r2", "--update-baselines", "--reason", "first baseline")
    assert r.returncode == 0, r.stdout + r.stderr
    f = _only_file(store)
    assert f.parent.name == "tinyperf" and f.parent.parent.name.startswith("cpu-")
    data = json.loads(f.read_text())
    assert data["provenance"]["reason"] == "first baseline" and set(data["outputs"]) == {"a", "b", "c", "d"}
    assert len(data["latency"]["solo tpot"]) == 8  # 4 prompts x 2 measured passes, warm-up excluded
    before = f.read_text()

    r = _run(suite, store, tmp / "r3")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = load_report(tmp / "r3")
    v = next(v for v in rep["verdicts"] if v["property"] == "baseline")
    assert v["status"] == "pass" and v["expect"] == "bitwise" and v["bitwise"] == 4
    marks = {c["metric"]: c["mark"] for c in rep["perf"]["default"]}
    assert marks["solo tpot"] == "~" and marks["load"] == "x"  # one load sample can never be significant
    assert f.read_text() == before  # comparing never writes


def test_changed_outputs_fail_against_the_baseline(setup, tiny_model: Path):
    suite, store, tmp = setup
    assert _run(suite, store, tmp / "r0", "--update-baselines", "--reason", "r").returncode == 0
    f = _only_file(store)
    data = json.loads(f.read_text())
    data["outputs"]["b"]["tokens"][3] += 1  # as if an upgrade changed one token of one prompt
    f.write_text(json.dumps(data))
    r = _run(suite, store, tmp / "r1")
    assert r.returncode == 1, r.stdout + r.stderr
    v = next(v for v in load_report(tmp / "r1")["verdicts"] if v["property"] == "baseline")
    assert v["status"] == "fail" and v["worst"]["prompt_id"] == "b" and v["worst"]["first_token_step"] == 3


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda f, d: f.write_text(f.read_text()[: len(f.read_text()) // 2]), "corrupt baseline"),
        (lambda f, d: f.write_text(json.dumps({**d, "schema_version": 7})), "schema_version 7"),
    ],
)
def test_unusable_baselines_exit_2_with_one_line(setup, damage, words):
    suite, store, tmp = setup
    assert _run(suite, store, tmp / "r0", "--update-baselines", "--reason", "r").returncode == 0
    f = _only_file(store)
    damage(f, json.loads(f.read_text()))
    r = _run(suite, store, tmp / "r1")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if words in ln]
    assert len(lines) == 1 and str(f) in lines[0] and "--update-baselines" in lines[0]
    assert "Traceback" not in r.stdout + r.stderr


def test_another_case_hash_exits_2(setup, tiny_model: Path):
    suite, store, tmp = setup
    assert _run(suite, store, tmp / "r0", "--update-baselines", "--reason", "r").returncode == 0
    write_suite(suite, SUITE.format(model=tiny_model, tokens=9))  # generation changed: outputs not comparable
    r = _run(suite, store, tmp / "r1")
    assert r.returncode == 2 and "case hash" in r.stdout and "Traceback" not in r.stdout + r.stderr


def _as_other_hardware(store: Path) -> Path:
    """The recorded baseline, moved as if made on another CPU model of the same device type."""
    f = _only_file(store)
    b = json.loads(f.read_text())
    b["environment"]["device"]["cpu_model"] = "intel-6-85"
    other = store / "cpu-elsewhere" / f.parent.name / "default.json"
    other.parent.mkdir(parents=True)
    other.write_text(json.dumps(b))
    f.unlink()
    return other


def test_another_hardwares_baseline_is_met_at_close_and_an_unrelated_continuation_fails_naming_its_prompt(setup):
    suite, store, tmp = setup
    suite.write_text(suite.read_text().replace('ref = "', 'dtype = "bfloat16"\nref = "'))
    assert _run(suite, store, tmp / "r0", "--update-baselines", "--reason", "there").returncode == 0
    other = _as_other_hardware(store)
    r = _run(suite, store, tmp / "r1")
    assert r.returncode == 0, r.stdout + r.stderr
    v = load_report(tmp / "r1")["verdicts"][0]
    assert v["property"] == "baseline" and v["expect"] == "close" and v["status"] == "pass"
    assert "no baseline for this hardware" in v["reason"] and "compared with cpu-avx" in v["reason"]
    assert len(v["comparisons"]) == 4 and {c["prompt_id"] for c in v["comparisons"]} == {"a", "b", "c", "d"}
    # Prompt c's reference becomes unrelated text: other tokens from step 0, none in the other side's top-k.
    b = json.loads(other.read_text())
    ref = b["outputs"]["c"]
    ref["tokens"] = [t + 7 for t in ref["tokens"]]
    ref["topk_ids"] = [[t + 7 + j for j in range(len(ids))] for t, ids in zip(ref["tokens"], ref["topk_ids"])]
    ref["pieces"] = ["<unrelated>"] * len(ref["tokens"])
    other.write_text(json.dumps(b))
    r = _run(suite, store, tmp / "r2")
    assert r.returncode == 1, r.stdout + r.stderr
    v = load_report(tmp / "r2")["verdicts"][0]
    assert v["status"] == "fail" and v["expect"] == "close" and v["worst"]["prompt_id"] == "c"
    assert "prompt 'c'" in r.stdout and "3/4" in v["reason"]
