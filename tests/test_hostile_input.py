"""Hostile and careless input (issue #13): each reproduction ends in one line naming the file, key or value and
what to do, with exit 2 (input) or 3 (environment), before any model loads where it can be known then, and never
with a traceback. Runs go through the real CLI in-process with a fake model (tests/fakes.py)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from harness import cli

from . import fakes
from .helpers import write_suite

SUITE = """
[suite]
name = "{name}"
version = 1
[model]
ref = "fake-model"
[generation]
max_new_tokens = 3
[prompts]
{prompts}
[[schedules]]
kind = "solo"
[[schedules]]
kind = "repeat"
[profiles.default]
"""
ITEMS = 'items = [{id = "a", text = "one"}, {id = "b", text = "two"}]'


def suite(tmp_path: Path, *, name: str = "s", prompts: str = ITEMS, file: str = "s.toml") -> Path:
    return write_suite(tmp_path / file, SUITE.format(name=name, prompts=prompts))


@pytest.fixture
def fake(monkeypatch, tmp_path: Path) -> list[str]:
    """The models 'prepared' by runs in this test: none may be, when the input is refused."""
    return fakes.install(monkeypatch, tmp_path / "model")


def harness(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


def refused(code: int, err: str, *words: str, exit: int = 2) -> str:
    """One line on stderr, with the words that tell the user what is wrong."""
    assert code == exit, (code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("harness") and " error: " in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_suite_file_not_utf8(tmp_path: Path, fake):
    bad = tmp_path / "b.toml"
    bad.write_bytes(b"\xe9\n")
    code, _, err = harness("run", bad, "--out", tmp_path / "out")
    refused(code, err, str(bad), "not UTF-8", "byte 0xe9")
    assert not fake and not (tmp_path / "out").exists()


def test_prompt_file_not_utf8(tmp_path: Path, fake):
    (tmp_path / "p.jsonl").write_bytes(b'{"id":"a","text":"one"}\n{"id":"c","text":"caf\xe9"}\n')
    code, _, err = harness("run", suite(tmp_path, prompts='file = "p.jsonl"'), "--out", tmp_path / "out")
    refused(code, err, "p.jsonl:2", "not UTF-8")
    assert not fake


@pytest.mark.parametrize("key", ["a\nb", "\x1b[31mred", "x\u2028y", "\x85", "\u202egnp.exe"])
def test_hostile_keys_are_named_escaped_on_one_line(tmp_path: Path, fake, key: str):
    f = suite(tmp_path)
    f.write_text(f.read_text().replace("[model]\n", f"[model]\n{json.dumps(key)} = 1\n"), encoding="utf-8")
    code, _, err = harness("run", f, "--out", tmp_path / "out")
    line = refused(code, err, "model.", "unknown key")
    assert key not in line and key.encode("unicode_escape").decode() in line


@pytest.mark.parametrize("flag, where", [("--out", "a-file"), ("--out", "a-file/sub"), ("--baselines", "a-file"),
                                         ("--baselines", "a-file/sub")])
def test_a_file_where_a_directory_goes_is_refused_before_the_model_loads(tmp_path: Path, fake, flag: str, where: str):
    (tmp_path / "a-file").write_text("not a directory\n")
    args = {"--out": tmp_path / "out", "--baselines": tmp_path / "bl", flag: tmp_path / where}
    code, _, err = harness("run", suite(tmp_path), *(x for kv in args.items() for x in kv))
    refused(code, err, f"{flag} {tmp_path / where}", "is not a directory")
    assert not fake  # refused before any model was prepared
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "-inf", "1e400", "soon"])
def test_worker_timeout_must_be_a_positive_finite_number(tmp_path: Path, fake, value: str):
    code, _, err = harness("run", suite(tmp_path), "--out", tmp_path / "out", f"--worker-timeout={value}")
    refused(code, err, "--worker-timeout", repr(value))
    assert not fake and not (tmp_path / "out").exists()


def test_worker_timeout_accepts_seconds(tmp_path: Path, fake):
    code, out, err = harness("run", suite(tmp_path), "--out", tmp_path / "out", "--worker-timeout", "0.5")
    assert code == 0, out + err
