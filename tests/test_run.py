"""The run seam: run directories that never collide, for every kind, and the one exit-code rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import run
from harness.errors import CHECK_FAILED, INFRA, OK, USAGE

from . import fakes
from .helpers import LOADTIME_SUITE, suite, write_suite
from .helpers import cli_in_process as harness


@pytest.fixture
def same_second(monkeypatch):
    """Every run starts in the same second: the case a time-stamped name alone cannot tell apart."""
    monkeypatch.setattr(run.time, "strftime", lambda fmt, *a: "20261127-120000")


def test_run_dirs_started_in_the_same_second_never_collide(tmp_path: Path, same_second):
    a, b = run.RunDir.create(tmp_path, "s"), run.RunDir.create(tmp_path, "s")
    assert (a.run_id, b.run_id) == ("20261127-120000-s", "20261127-120000-s-2")
    assert all((d.path / sub).is_dir() for d in (a, b) for sub in ("jobs", "records", "logs"))


def test_load_time_runs_get_their_own_directory_and_loads_file(tmp_path: Path, monkeypatch, same_second):
    fakes.install(monkeypatch, tmp_path / "model")
    path = write_suite(tmp_path / "lt.toml", LOADTIME_SUITE)
    out = tmp_path / "out"
    for _ in range(2):
        code, stdout, err = harness("run", path, "--out", out, "--baselines", tmp_path / "b")
        assert code == OK, (stdout, err)
    dirs = sorted(d.name for d in out.iterdir() if d.name != "history")
    assert dirs == ["20261127-120000-lt", "20261127-120000-lt-2"]
    for d in dirs:  # each run's loads file holds its own loads, not both runs' (the old path appended to one)
        lines = (out / d / "loads.jsonl").read_text().splitlines()
        assert len(lines) == 2 and {json.loads(x)["setting"] for x in lines} == {"1", "unset"}


def test_determinism_runs_in_the_same_second_too(tmp_path: Path, monkeypatch, same_second):
    fakes.install(monkeypatch, tmp_path / "model")
    path = suite(tmp_path)
    for _ in range(2):
        code, stdout, err = harness("run", path, "--out", tmp_path / "out", "--baselines", tmp_path / "b")
        assert code == OK, (stdout, err)
    assert sorted(d.name for d in (tmp_path / "out").iterdir() if d.name != "history") == [
        "20261127-120000-s",
        "20261127-120000-s-2",
    ]


@pytest.mark.parametrize(
    ("infra", "unusable", "failed", "code"),
    [
        (True, True, True, INFRA),
        (False, True, True, USAGE),
        (False, False, True, CHECK_FAILED),
        (False, False, False, OK),
    ],
)
def test_one_exit_code_rule(infra: bool, unusable: bool, failed: bool, code: int):
    assert run.exit_code(infra=infra, unusable=unusable, failed=failed) == code


def test_a_report_html_that_cannot_be_written_is_a_failed_check(tmp_path: Path, monkeypatch):
    """report.html is what a reader opens first: a page that cannot be drawn fails the run (exit 1) as a check of
    its own, named in the console, instead of a note under a green result."""
    from harness import html

    fakes.install(monkeypatch, tmp_path / "model")

    def broken(*args, **kwargs):
        raise ValueError("a chart that cannot be drawn")

    monkeypatch.setattr(html, "render", broken)
    path = suite(tmp_path)
    code, stdout, err = harness("run", path, "--out", tmp_path / "out", "--baselines", tmp_path / "b")
    assert code == CHECK_FAILED, (stdout, err)
    assert "x report.html not written: ValueError: a chart that cannot be drawn" in stdout
    kind, s = run.load(path, run.Options(out=tmp_path / "out2", baselines=tmp_path / "b"))
    assert run.REPORT_CHECK in run.items(kind, s)  # a pytest item of its own


def test_a_suite_for_other_devices_is_skipped_with_one_line(tmp_path: Path):
    """determinism-fp16.toml means something on npu and cuda: on the CPU default every check is skipped with one
    line, no worker starts, and the run folder says why."""
    fp16 = Path(__file__).resolve().parent.parent / "suites" / "determinism-fp16.toml"
    code, out, err = harness("run", fp16, "--out", tmp_path / "out", "--no-history")
    why = "suite determinism-fp16 runs on npu, cuda; skipped on cpu"
    assert code == OK and why in out, out + err
    [run_dir] = [d for d in (tmp_path / "out").iterdir()]
    assert why in (run_dir / "summary.md").read_text() and not list((run_dir / "records").iterdir())
    kind, s = run.load(fp16, run.Options(device="npu", out=tmp_path / "o2"))
    assert s.skipped_here() == "" and s.model.dtype == "float16"
    code, out, err = harness("run", fp16, "--dry-run", "--out", tmp_path / "o3")
    assert code == OK and why in out and "would skip" in out and not (tmp_path / "o3").exists()
