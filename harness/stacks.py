"""A profile that is another software stack: the interpreter its workers run with (`python`) and a shell file sourced
before they start (`setup`, such as CANN's set_env.sh), so that tonight's image and last release's are measured side
by side in one run. Both are checked before any worker starts: a path that is not a Python, a Python that cannot
run this harness's worker, a setup file that is missing or fails, each one line (exit 2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import USAGE, HarnessError
from .suite import Suite
from .tomltable import SuiteError

PROBE_S = 120.0  # a cold interpreter on a busy runner, importing nothing heavy
# What the probe reads in the other interpreter: its version, this harness's, and the stack's own packages (from
# their metadata, so nothing is imported). The worker reads the same again when it loads.
PROBE = """
import json, sys
from importlib import metadata
def v(name):
    try:
        return metadata.version(name)
    except Exception:
        return ""
try:
    import harness
    h = harness.__version__
except Exception as e:
    h = "not importable: " + type(e).__name__ + ": " + str(e)
names = ("torch", "torch_npu", "transformers", "vllm", "vllm_ascend", "httpx")
print(json.dumps({"python": sys.version.split()[0], "harness": h, **{n: v(n) for n in names}}))
"""
SHELL_NOISE = frozenset({"_", "SHLVL", "PWD", "OLDPWD"})  # what bash itself sets, not the setup file
SEPARATOR = "\0--harness-setup--\0"


@dataclass(frozen=True)
class Stack:
    """A profile's software stack as checked: the interpreter, what its setup file exports, and the versions the
    probe read there."""

    python: str = ""  # "" : this interpreter
    setup: str = ""
    env: dict[str, str | None] = field(default_factory=dict)  # exported (None: unset) by the setup file
    versions: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """ "python /opt/venv-cann80/bin/python (3.10.14), torch 2.1.0, torch_npu 2.1.0.post8" """
        parts = [f"python {self.python or sys.executable} ({self.versions.get('python', '?')})"]
        parts += [f"{k} {v}" for k, v in self.versions.items() if k not in ("python", "harness") and v]
        return ", ".join(parts)


def _env0(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split("\0") if "=" in item)


def source(setup: str, where: str) -> dict[str, str | None]:
    """What sourcing `setup` in bash exports on top of this environment (None: a variable it unset). HarnessError
    (USAGE) when the file is missing or sourcing it fails."""
    path = Path(setup)
    if not path.is_file():
        raise HarnessError(
            f"{where} setup {setup!r}: no such file (give a shell file to source, e.g. set_env.sh)", USAGE
        )
    script = 'env -0; printf "\\0--harness-setup--\\0"; . "$1" >&2 || exit $?; env -0'
    try:
        p = subprocess.run(
            ["bash", "-c", script, "setup", str(path)], capture_output=True, text=True, timeout=PROBE_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{where} setup {setup!r}: still running after {PROBE_S:.0f} s", USAGE) from None
    if p.returncode != 0 or SEPARATOR not in p.stdout:
        said = next((ln for ln in reversed(p.stderr.splitlines()) if ln.strip()), "no message")
        raise HarnessError(f"{where} setup {setup!r} failed (exit {p.returncode}): {said}", USAGE)
    before_text, after_text = p.stdout.split(SEPARATOR, 1)
    before, after = _env0(before_text), _env0(after_text)
    out: dict[str, str | None] = {k: v for k, v in after.items() if before.get(k) != v and k not in SHELL_NOISE}
    out.update({k: None for k in before if k not in after and k not in SHELL_NOISE})
    return out


def probe(
    python: str, env: dict[str, str | None], where: str, needs: tuple[str, ...] = ("harness", "torch")
) -> dict[str, str]:
    """The versions `python` reports (with the setup's variables, from the workers' working directory); HarnessError
    (USAGE) when it is not a Python, cannot import this harness, or lacks a package the worker `needs`."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    try:
        p = subprocess.run(
            [python, "-c", PROBE], capture_output=True, text=True, timeout=PROBE_S, env=full, check=False
        )
    except FileNotFoundError:
        raise HarnessError(f"{where} python {python!r}: no such file", USAGE) from None
    except PermissionError:
        raise HarnessError(f"{where} python {python!r}: not executable", USAGE) from None
    except OSError as e:  # an exec format error: a file that is not a program
        raise HarnessError(f"{where} python {python!r}: not a Python ({e.strerror or e})", USAGE) from None
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{where} python {python!r}: no answer after {PROBE_S:.0f} s", USAGE) from None
    try:
        versions = json.loads(p.stdout.strip().splitlines()[-1])
        assert isinstance(versions, dict)
    except (IndexError, ValueError, AssertionError):
        said = next((ln for ln in reversed(p.stderr.splitlines()) if ln.strip()), f"exit {p.returncode}")
        raise HarnessError(f"{where} python {python!r}: not a Python that runs a script ({said})", USAGE) from None
    theirs = str(versions.get("harness", ""))
    # a served stack runs the server only (the harness's own Python runs the client): it needs no harness there
    if "harness" in needs and theirs.startswith("not importable"):
        raise HarnessError(
            f"{where} python {python!r}: the harness is {theirs}; install it there (pip install -e <this checkout>)",
            USAGE,
        )
    if "harness" in needs and theirs != __version__:
        raise HarnessError(
            f"{where} python {python!r} runs harness {theirs}, this is {__version__}: both sides must run the same "
            "harness worker (install this checkout there)",
            USAGE,
        )
    missing = [n for n in needs if n != "harness" and not versions.get(n)]
    if missing:
        raise HarnessError(
            f"{where} python {python!r} has no {', '.join(missing)}: the worker needs it there (or a setup file that "
            "puts it on the path)",
            USAGE,
        )
    return {k: str(v) for k, v in versions.items()}


def check(python: str, setup: str, where: str, needs: tuple[str, ...] = ("harness", "torch")) -> Stack:
    """The stack a profile names, checked; an empty Stack when it names neither."""
    if not python and not setup:
        return Stack()
    env = source(setup, where) if setup else {}
    exe = python or sys.executable
    return Stack(python=python, setup=setup, env=env, versions=probe(exe, env, where, needs))


def with_reference(suite: Suite, name: str | None, python: str | None, setup: str | None) -> Suite:
    """The suite with the command line's reference: `--reference PROFILE` names it; `--reference-python` and
    `--reference-setup` make it another stack (with no reference named, a `reference` copy of the first profile is
    added, so a nightly compares tonight's image with last release's without editing the suite)."""
    if name is None and python is None and setup is None:
        return suite
    if suite.perf is None:
        raise SuiteError(
            f"{suite.path}: --reference, --reference-python and --reference-setup need a suite with [perf] "
            "(a reference is a timed comparison)"
        )
    profiles = list(suite.profiles)
    ref = name or suite.perf.reference
    if not ref:
        ref = "reference"
        if not any(p.name == ref for p in profiles):
            first = profiles[0]
            what = ", ".join(x for x in (python, setup) if x)
            profiles.insert(0, dataclasses.replace(first, name=ref, description=f"the reference stack ({what})"))
    if not any(p.name == ref for p in profiles):
        names = ", ".join(p.name for p in profiles)
        raise SuiteError(f"{suite.path}: --reference {ref!r}: no such profile (it has {names})")
    profiles = [
        dataclasses.replace(p, python=python or p.python, setup=setup or p.setup) if p.name == ref else p
        for p in profiles
    ]
    return dataclasses.replace(suite, profiles=tuple(profiles), perf=dataclasses.replace(suite.perf, reference=ref))


def resolve(path: str, base: Path) -> str:
    """A suite's `python` or `setup` relative to its file's folder; a bare name (python3.10) is looked up on PATH."""
    if not path or os.path.isabs(path):
        return path
    if os.sep not in path:
        return shutil.which(path) or path
    return str((base / path).resolve())


def resolved(suite: Suite, base: Path) -> Suite:
    """Every profile's `python` and `setup` as paths (relative ones from the suite file's folder)."""
    if not any(p.python or p.setup for p in suite.profiles):
        return suite
    profiles = tuple(
        dataclasses.replace(p, python=resolve(p.python, base), setup=resolve(p.setup, base)) for p in suite.profiles
    )
    return dataclasses.replace(suite, profiles=profiles)


def needs(adapter: str, served: bool) -> tuple[str, ...]:
    """What a stack's interpreter must have: this harness's worker and its in-process engine; for a served suite
    nothing the harness can name (the stack runs the server, whose command fails at its start if it cannot run)."""
    if served:
        return ()
    return ("harness", "vllm") if adapter == "vllm" else ("harness", "torch", "transformers")
