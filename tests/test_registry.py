"""One registry for run kinds, adapters and doctor check modules: a plugin kind installed as a real distribution
(an entry point in `harness.kinds`) is accepted by the CLI, the pytest plugin and the sign-off alike."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness import registry, signoff
from harness.errors import USAGE

from .helpers import cli_in_process as harness
from .helpers import install_plugin, run_cli, run_plugin

TOY = """
from dataclasses import dataclass

from harness.run import Check, Outcome, RunDir


@dataclass(frozen=True)
class Toy:
    name: str = "toy"
    html: bool = False  # nothing for report.html to draw

    def load(self, path, data, opts):
        return tuple(data.get("toy", {}).get("words", []))

    def items(self, suite):
        return [("toy", w) for w in suite]

    def execute(self, suite, opts):
        rd = RunDir.create(opts.out, "toy")
        (rd.path / "summary.md").write_text("toy")
        checks = [Check("toy", w, "failed" if w == "bad" else "passed", f"{w} was said") for w in suite]
        return Outcome(int(any(c.outcome == "failed" for c in checks)), "toy ran", rd.path, checks)


KIND = Toy()
"""


def toy_suite(tmp: Path, words: list[str], kind: str = "toy") -> Path:
    path = tmp / f"{'-'.join(words)}.toml"
    path.write_text(f'[suite]\nname = "toy"\nkind = "{kind}"\n[toy]\nwords = {words!r}\n'.replace("'", '"'))
    return path


@pytest.fixture
def toy(tmp_path: Path, monkeypatch) -> dict[str, str]:
    env = install_plugin(tmp_path, "harness.kinds", "toy", "toy_kind", TOY, "KIND")
    monkeypatch.syspath_prepend(env["PYTHONPATH"])  # in-process callers find it as an installed distribution
    sys.modules.pop("toy_kind", None)
    return env


@pytest.mark.process
def test_a_plugin_kind_runs_from_the_cli_and_pytest(tmp_path: Path, toy: dict[str, str], monkeypatch):
    good, bad = toy_suite(tmp_path, ["hello", "world"]), toy_suite(tmp_path, ["hello", "bad"])
    p = run_cli("run", str(good), "--out", str(tmp_path / "r"), "--no-history", env=toy)
    assert p.returncode == 0 and "toy ran" in p.stdout, p.stdout + p.stderr
    p = run_cli("run", str(bad), "--out", str(tmp_path / "r"), "--no-history", env=toy)
    assert p.returncode == 1, p.stdout + p.stderr
    monkeypatch.setenv("PYTHONPATH", toy["PYTHONPATH"])
    p = run_plugin(bad, tmp_path / "junit.xml", "--out", str(tmp_path / "r"), "-rA", cwd=tmp_path)
    assert p.returncode == 1 and "PASSED hello-bad.toml::toy::hello" in p.stdout, p.stdout[-3000:]
    assert "FAILED hello-bad.toml::toy::bad" in p.stdout and "bad was said" in p.stdout


def test_a_plugin_kind_is_a_signoff_gate(tmp_path: Path, toy: dict[str, str], monkeypatch):
    monkeypatch.setattr(signoff, "run_doctor", lambda ctx: [])
    monkeypatch.setattr("harness.runner.prepare_model", lambda ref, timeout_s=0: tmp_path)  # the doctor's model
    toy_suite(tmp_path, ["hello"])
    (tmp_path / "signoff.toml").write_text('[signoff]\nversion = 1\ngates = [{ suite = "hello.toml" }]\n')
    code, out, err = harness("signoff", "--file", tmp_path / "signoff.toml", "--out", tmp_path / "r")
    assert code == 0 and out.startswith("GO: all 1 gates passed"), out + err


def test_unknown_names_and_misfits_are_one_line(tmp_path: Path, toy: dict[str, str]):
    code, out, err = harness("run", toy_suite(tmp_path, ["a"], kind="tyo"), "--out", tmp_path / "r")
    assert code == USAGE and "unknown run kind 'tyo'; did you mean 'toy'?" in err and len(err.splitlines()) == 1
    misfit = registry.Registry("run kind", "harness.none", {"bad": "harness.errors:USAGE"}, registry.kind_problem)
    with pytest.raises(registry.RegistryError, match=r"run kind 'bad' \(harness.errors:USAGE\) lacks load"):
        misfit.get("bad")
    with pytest.raises(registry.RegistryError, match="unknown adapter 'hff'; did you mean 'hf'"):
        registry.ADAPTERS.resolve("hff")
    assert set(registry.CHECKS.entries()) >= {"python", "serving"} and registry.KINDS.get("loadtime").name == "loadtime"
