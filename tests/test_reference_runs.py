"""A reference measured in the same run, with real worker processes: the reference stack comes from a setup file
(`--reference-setup`), the candidate is the `slow` adapter's forward pass, processes are the units of the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .helpers import cli_in_process as harness
from .helpers import install_slow_adapter, load_report, only_run_dir, refused, run_cli, write_suite

pytestmark = pytest.mark.process

SUITE = """
[suite]
name = "ref"
version = 1
[model]
ref = "{model}"
[generation]
max_new_tokens = 12
[prompts]
items = [
  {{id = "a", text = "Write a haiku about autumn leaves."}},
  {{id = "b", text = "List five fruits that are rich in vitamin C."}},
  {{id = "c", text = "def fibonacci(n):"}},
]
[[schedules]]
kind = "solo"
[perf]
warmup = 1
repeats = 1
processes = {processes}
[profiles.default]
"""


def _setup(tmp: Path, fraction: str) -> Path:
    f = tmp / f"stack-{fraction}.sh"
    f.write_text(f"export HARNESS_SLOW_FRACTION={fraction}\n")
    return f


def test_a_slower_candidate_fails_against_the_reference_stack(tiny_model: Path, tmp_path: Path):
    # tonight's stack: every forward pass six times as long, so that a loaded test runner cannot hide it
    env = install_slow_adapter(tmp_path, 5.0)
    suite = write_suite(tmp_path / "ref.toml", SUITE.format(model=tiny_model, processes=6))
    out = tmp_path / "out"
    p = run_cli(
        "run", str(suite), "--adapter", "slow", "--reference-setup", str(_setup(tmp_path, "0")),
        "--out", str(out), "--baselines", str(tmp_path / "b"), env=env,
    )  # fmt: skip
    assert p.returncode == 1, p.stdout + p.stderr
    rep = load_report(out)
    ref = rep["reference"]
    assert ref["profile"] == "reference" and ref["processes"] == 6
    tpot = next(c for c in ref["rows"]["default"] if c["metric"] == "solo tpot")
    assert tpot["status"] == "regressed" and tpot["ratio"] > 1.5 and tpot["runs"] == 6
    assert "torch" in ref["software"]["reference"] and "torch" in ref["software"]["default"]
    jobs = {j["name"]: j for j in rep["jobs"]}
    assert set(jobs) == {"reference", "default"}
    assert len(jobs["default"]["worker"]["processes"]) == 6 and jobs["default"]["completed"] == 6 * 2 * 3
    run = only_run_dir(out)
    assert sorted(x.name for x in (run / "jobs").glob("*.json") if not x.name.endswith(".env.json")) == [
        "default.json",
        "reference.json",
    ]
    assert (run / "logs" / "default.p5.log").is_file()
    env_json = json.loads((run / "jobs" / "reference.env.json").read_text())
    assert env_json["HARNESS_SLOW_FRACTION"] == "0"  # the setup file's export, kept for a replay
    assert (
        "against the reference 'reference'" in p.stdout and "Against the reference" in (run / "summary.md").read_text()
    )


def test_a_recorded_run_keeps_each_process_median_in_the_baselines_history(tiny_model: Path, tmp_path: Path):
    env = install_slow_adapter(tmp_path, 0.0)
    suite = write_suite(tmp_path / "ref.toml", SUITE.format(model=tiny_model, processes=2))
    store = tmp_path / "b"
    for k in range(2):
        p = run_cli(
            "run", str(suite), "--adapter", "slow", "--reference-setup", str(_setup(tmp_path, "0")),
            "--out", str(tmp_path / f"out{k}"), "--baselines", str(store), "--update-baselines", "--reason", f"r{k}",
            env=env,
        )  # fmt: skip
        assert p.returncode in (0, 1), p.stdout + p.stderr  # two tiny processes may differ: this is about storage
    (f,) = store.glob("*/ref/default.json")
    b = json.loads(f.read_text())
    assert len(b["runs"]) == 2 and len(b["processes"]) == 2  # one entry per recorded run, aligned
    for run_medians, per_process in zip(b["runs"], b["processes"]):
        assert set(per_process) >= {"solo tpot", "solo ttft"} and all(len(v) == 2 for v in per_process.values())
        lo, hi = min(per_process["solo tpot"]), max(per_process["solo tpot"])
        assert lo > 0 and hi / lo < 10 and run_medians["solo tpot"] > 0


def test_a_reference_worker_that_crashes_is_infrastructure(tiny_model: Path, tmp_path: Path):
    env = install_slow_adapter(tmp_path, 0.0)
    suite = write_suite(tmp_path / "ref.toml", SUITE.format(model=tiny_model, processes=2))
    out = tmp_path / "out"
    p = run_cli(
        "run", str(suite), "--adapter", "slow", "--reference-setup", str(_setup(tmp_path, "not-a-number")),
        "--out", str(out), "--baselines", str(tmp_path / "b"), env=env,
    )  # fmt: skip
    assert p.returncode == 3, p.stdout + p.stderr
    jobs = {j["name"]: j for j in load_report(out)["jobs"]}
    assert (
        jobs["reference"]["status"] in ("load-failed", "crashed") and jobs["default"]["completed"] >= 3
    )  # the candidate's kept


def test_bad_references_are_one_line_before_any_worker(tiny_model: Path, tmp_path: Path):
    suite = write_suite(tmp_path / "ref.toml", SUITE.format(model=tiny_model, processes=2))
    out = tmp_path / "out"
    for args, words in (
        (["--reference-python", str(tmp_path / "venv-old" / "bin" / "python")], ("reference", "no such file")),
        (["--reference-setup", str(tmp_path / "nope.sh")], ("setup", "no such file")),
        (["--reference", "nightly"], ("--reference 'nightly': no such profile",)),
    ):
        code, _, err = harness("run", suite, "--out", out, *args)
        refused(code, err, *words)
    assert not any(out.glob("*/logs/*.log"))  # no worker started
    no_perf = write_suite(
        tmp_path / "plain.toml", SUITE.format(model=tiny_model, processes=2).split("[perf]")[0] + "[profiles.default]\n"
    )
    refused(*harness("run", no_perf, "--out", out, "--reference-python", "python3")[::2], "need a suite with [perf]")
    wrong = write_suite(
        tmp_path / "wrong.toml",
        SUITE.format(model=tiny_model, processes=2).replace("[perf]", '[perf]\nreference = "nightly"'),
    )
    refused(*harness("run", wrong, "--out", out)[::2], "perf.reference", "no profile 'nightly'")
