"""The run history: rows appended atomically, CSV as Otava reads it, unreadable rows named and never fatal."""

from __future__ import annotations

import csv
import math
import threading
from pathlib import Path

import pytest

from harness import atomic, cli, history, options
from harness.history import Headline


def head(metrics: dict[str, float], *, torch: str = "2.13.0", profile: str = "default") -> Headline:
    return Headline(
        suite="s",
        profile=profile,
        hardware="cpu-avx512-intel-6-167-t2",
        env={"device": "cpu", "torch": torch, "transformers": "5.24.0"},
        metrics=metrics,
        model="smollm2-135m",
        model_hash="abc",
    )


def append(root: Path, *heads: Headline, when: float = 1_800_000_000.0) -> list[str]:
    written, problems = history.append(root, list(heads), run_id=f"run-{when:.0f}", exit_code=0, when=when)
    assert written
    return problems


def test_one_row_per_run_under_hardware_suite_profile(tmp_path: Path):
    append(tmp_path, head({"solo.tpot.p50": 50.0}), head({"solo.tpot.p50": 7.0}, profile="det"))
    append(tmp_path, head({"solo.tpot.p50": 51.5}), when=1_800_086_400.0)
    path = tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv"
    rows = list(csv.DictReader(path.open()))
    assert [r["solo.tpot.p50"] for r in rows] == ["50.0", "51.5"]
    assert rows[0]["env.torch"] == "2.13.0" and rows[0]["model_hash"] == "abc" and rows[0]["commit"] is not None
    assert (tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "det.csv").exists()
    h = history.read(path)
    assert not h.problems and h.metrics == ["solo.tpot.p50"] and h.series("solo.tpot.p50")[1] == [50.0, 51.5]
    assert h.rows[1].time.tzinfo is not None  # ISO 8601 with offset: Otava's time column


def test_a_new_metric_adds_a_column_and_keeps_the_old_rows(tmp_path: Path):
    append(tmp_path, head({"a": 1.0}))
    append(tmp_path, head({"a": 2.0, "b": 3.0}), when=1_800_000_100.0)
    h = history.read(tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv")
    assert not h.problems and h.series("a")[1] == [1.0, 2.0]
    assert math.isnan(h.rows[0].metrics["b"]) and h.series("b")[1] == [3.0]


def test_a_torn_row_is_one_line_and_the_other_rows_survive(tmp_path: Path):
    append(tmp_path, head({"a": 1.0}))
    append(tmp_path, head({"a": 2.0}), when=1_800_000_100.0)
    path = tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv"
    path.write_text(path.read_text()[:-9])  # a run killed mid-write (as a plain append would leave it)
    h = history.read(path)
    assert h.series("a")[1] == [1.0]
    assert h.problems == [
        f"{path}:3: the row is cut off (no line end: a run stopped while writing?); row skipped (correct or delete that line)"
    ]
    problems = append(tmp_path, head({"a": 3.0, "c": 1.0}), when=1_800_000_200.0)  # a new column: rewritten
    assert problems == h.problems
    after = history.read(path)
    assert after.series("a")[1] == [1.0, 3.0]  # nothing readable was lost, and the torn line is still there to fix
    assert len(after.problems) == 1 and ":3: " in after.problems[0]


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda line: line.replace("2.0", "fast"), "a = 'fast' is not a number"),
        (lambda line: line.replace(",", ",,", 1), "12 fields where the header has 11"),
        (lambda line: "yesterday" + line[25:], "is not an ISO 8601 time"),
    ],
)
def test_a_hand_edited_row_names_file_and_line(tmp_path: Path, edit, problem: str):
    for i, v in enumerate((1.0, 2.0, 3.0)):
        append(tmp_path, head({"a": v}), when=1_800_000_000.0 + i)
    path = tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = edit(lines[2])
    path.write_text("".join(lines))
    h = history.read(path)
    assert len(h.problems) == 1 and h.problems[0].startswith(f"{path}:3: ") and problem in h.problems[0], h.problems
    assert h.series("a")[1] == [1.0, 3.0]


def test_a_file_that_is_not_a_history_is_left_alone(tmp_path: Path):
    path = tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv"
    path.parent.mkdir(parents=True)
    path.write_text("name,value\nx,1\n")
    written, problems = history.append(tmp_path, [head({"a": 1.0})], run_id="r", exit_code=0)
    assert not written and path.read_text() == "name,value\nx,1\n"
    assert problems == [
        f"{path}:1: the header must start with 'time' and name each column once; file skipped",
        f"{path}: not appended to (its header is not a history's); move it aside",
    ]


def test_an_interrupted_write_leaves_the_old_file(tmp_path: Path, monkeypatch):
    append(tmp_path, head({"a": 1.0}))
    path = tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv"
    before = path.read_bytes()

    def die(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", die)
    written, problems = history.append(tmp_path, [head({"a": 2.0})], run_id="r", exit_code=0)
    assert not written and len(problems) == 1 and "No space left on device" in problems[0]
    assert path.read_bytes() == before and not list(path.parent.glob(".*tmp*"))


def test_simultaneous_runs_keep_every_row(tmp_path: Path):
    def runs(k: int) -> None:
        for i in range(5):
            history.append(tmp_path, [head({"a": float(k * 10 + i)})], run_id=f"{k}-{i}", exit_code=0)

    threads = [threading.Thread(target=runs, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    h = history.read(tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv")
    assert not h.problems and sorted(h.series("a")[1]) == sorted(float(k * 10 + i) for k in range(6) for i in range(5))


def test_environment_changes_name_the_upgrade(tmp_path: Path):
    append(tmp_path, head({"a": 1.0}, torch="2.12.1"))
    append(tmp_path, head({"a": 1.0}, torch="2.13.0"), when=1_800_000_100.0)
    rows = history.read(tmp_path / "cpu-avx512-intel-6-167-t2" / "s" / "default.csv").rows
    assert history.environment_changes(rows[0], rows[1]) == ["torch 2.12.1 -> 2.13.0"]


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], Path("o/history")),
        (["--history", "h"], Path("h")),
        (["--history", ""], None),
        (["--no-history"], None),
    ],
)
def test_history_option(argv: list[str], expected: Path | None):
    args = cli.build_parser().parse_args(["run", "x.toml", "--out", "o", *argv])
    assert options.from_namespace(args).history == expected


NIGHTLY = """
[suite]
name = "nightly"
version = 1
[model]
ref = "{model}"
[generation]
max_new_tokens = 6
[prompts]
items = [{{id = "a", text = "The sea is"}}, {{id = "b", text = "Count: one, two,"}}, {{id = "c", text = "Hello"}}]
[[schedules]]
kind = "solo"
[[schedules]]
kind = "batch-sizes"
sizes = [3]
[profiles.default]
expect = {{ cpu = "report" }}
"""


@pytest.mark.process
def test_two_real_runs_leave_two_rows_per_metric_and_trend_says_too_few(tmp_path: Path, tiny_model: Path):
    from .helpers import run_cli, write_suite

    suite = write_suite(tmp_path / "nightly.toml", NIGHTLY.format(model=tiny_model))
    out = tmp_path / "reports"
    for _ in range(2):
        p = run_cli("run", str(suite), "--out", str(out), "--baselines", str(tmp_path / "b"))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "history: 1 row(s) appended" in p.stdout
    files = list((out / "history").glob("*/nightly/default.csv"))
    assert len(files) == 1, files
    h = history.read(files[0])
    assert not h.problems and len(h.rows) == 2
    for m in (
        "batch-invariance.share_bitwise",
        "batch-invariance.share_tokens",
        "batch-invariance.max_unique",
        "solo.ttft.p50",
        "solo.tpot.p99",
        "batch-sizes.e2e.p50",
        "tok_s",
        "load.read",
    ):
        assert len(h.series(m)[1]) == 2, m  # every headline metric in both rows
    assert all(len(h.series(m)[1]) == 2 for m in h.metrics)
    assert h.rows[0].attributes["env.torch"] and h.rows[0].attributes["model_hash"]
    runs = sorted(d for d in out.iterdir() if d.name != "history")
    assert all((d / "report.html").stat().st_size > 10_000 for d in runs)
    assert "(2 runs)" in (runs[1] / "report.html").read_text()  # the second run's page shows the trend
    p = run_cli("trend", "--history", str(out / "history"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "too few runs for change points" in p.stdout and "result: PASS (exit 0)" in p.stdout


def test_each_run_appends_its_summary_to_the_github_step_summary(tmp_path: Path, monkeypatch):
    from . import fakes
    from .helpers import cli_in_process as harness
    from .helpers import suite

    fakes.install(monkeypatch, tmp_path / "model")
    target = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(target))
    for _ in range(2):
        code, out, err = harness("run", suite(tmp_path), "--out", tmp_path / "out", "--baselines", tmp_path / "b")
        assert code == 0, out + err
    text = target.read_text()
    assert text.count("# s: PASS") == 2 and "## Profile `default`" in text
