"""A profile that is another software stack: its interpreter and setup file, checked before any worker starts.

The other stack is real: this venv's base interpreter (another executable, which cannot import the harness on its
own) with a setup file that exports the venv's packages to it, as CANN's set_env.sh exports its libraries.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

import pytest

from harness import __version__, stacks
from harness.errors import HarnessError

from .helpers import ROOT

BASE = os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _setup(tmp_path: Path, pythonpath: str) -> Path:
    f = tmp_path / "set_env.sh"
    f.write_text(
        f'export PYTHONPATH="{pythonpath}"\nexport ASCEND_TOOLKIT_HOME=/usr/local/Ascend/ascend-toolkit/8.0\nunset HARNESS_UNSET_ME\n'
    )
    return f


def test_another_interpreter_with_its_setup_is_a_stack(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HARNESS_UNSET_ME", "1")
    pythonpath = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    st = stacks.check(BASE, str(_setup(tmp_path, pythonpath)), "profile 'reference'")
    assert st.versions["harness"] == __version__ and st.versions["python"] == sys.version.split()[0]
    assert st.versions["torch"]  # read from the stack's own metadata
    assert st.env["PYTHONPATH"] == pythonpath and st.env["ASCEND_TOOLKIT_HOME"].endswith("8.0")
    assert st.env["HARNESS_UNSET_ME"] is None and "SHLVL" not in st.env
    assert BASE in st.describe() and "torch" in st.describe()
    assert stacks.check("", "", "x") == stacks.Stack()


def _refused(python: str, setup: str, *words: str) -> None:
    with pytest.raises(HarnessError) as e:
        stacks.check(python, setup, "profile 'reference'")
    assert e.value.code == 2 and "\n" not in str(e.value)
    for w in words:
        assert w in str(e.value), str(e.value)


def test_what_is_not_a_stack_is_one_line(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the checkout: its harness would be importable from the working directory
    _refused(str(tmp_path / "nope" / "python"), "", "no such file")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _refused(str(text), "", "not executable")
    text.chmod(0o755)
    _refused(str(text), "", "not a Python")
    _refused(sys.executable, str(tmp_path / "missing.sh"), "setup", "no such file")
    bad = tmp_path / "bad.sh"
    bad.write_text("echo 'CANN 8.0 not installed here' >&2\nreturn 3\n")
    _refused(sys.executable, str(bad), "failed (exit 3)", "CANN 8.0 not installed here")
    # the base interpreter alone cannot import the harness (its packages live in the venv)
    _refused(BASE, str(_setup(tmp_path, "/nonexistent")), "not importable", "pip install")
    _refused(BASE, str(_setup(tmp_path, str(ROOT))), "has no torch")  # the harness, but not what its worker needs


def test_a_stack_with_another_harness_is_refused(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other" / "harness"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text('__version__ = "0.0.9"\n')
    _refused(BASE, str(_setup(tmp_path, str(other.parent))), "runs harness 0.0.9", f"this is {__version__}")
