"""Helpers shared by the tests: the real CLI in a real process, suite files, reports."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real command line, in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def cli_in_process(*argv: object) -> tuple[int, str, str]:
    """The CLI in this process (so monkeypatched fakes apply): (exit code, stdout, stderr)."""
    import contextlib
    import io

    from harness import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def install_adapter(tmp: Path, name: str, module: str, source: str, cls: str) -> dict[str, str]:
    """A real installed distribution (dist-info with a `harness.adapters` entry point) on PYTHONPATH, as a user
    would ship one: the env to run the CLI with, so its worker processes find the adapter too."""
    return install_plugin(tmp, "harness.adapters", name, module, source, cls)


def install_plugin(tmp: Path, group: str, name: str, module: str, source: str, attr: str) -> dict[str, str]:
    """A real installed distribution with one entry point in `group` (harness.kinds, harness.adapters,
    harness.checks), on PYTHONPATH: the env to run the CLI with."""
    site = tmp / "site"
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir(parents=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:{attr}\n")
    return {"PYTHONPATH": str(site)}


SLOW_ADAPTER = """
import os
import time

from harness.adapters.hf import HFAdapter

FRACTION = float(os.environ["HARNESS_SLOW_FRACTION"])


class SlowAdapter(HFAdapter):
    \"\"\"The real adapter, with every forward pass slower by HARNESS_SLOW_FRACTION.\"\"\"

    def load(self):
        phases = super().load()
        forward = self.model.forward

        def slow(*args, **kwargs):
            t = time.perf_counter()
            out = forward(*args, **kwargs)
            time.sleep(FRACTION * (time.perf_counter() - t))
            return out

        self.model.forward = slow
        return phases
"""


def install_slow_adapter(tmp: Path, fraction: float) -> dict[str, str]:
    """The `slow` adapter (the real model, every forward pass `fraction` slower): the env to run the CLI with."""
    return {
        **install_adapter(tmp, "slow", "slow_adapter", SLOW_ADAPTER, "SlowAdapter"),
        "HARNESS_SLOW_FRACTION": str(fraction),
    }


def run_plugin(suite: Path, junit: Path, *args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`pytest -p harness.pytest_plugin SUITE` in a real process, from `cwd`, with this checkout's harness."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "harness.pytest_plugin",
            str(suite),
            "-o",
            "testpaths=",
            f"--junitxml={junit}",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        },
    )


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def start_until_mid_run(suite: Path, out: Path, job: str, records: int) -> tuple[subprocess.Popen, Path, dict]:
    """`harness run SUITE` in a real process, returned once JOB's worker has written its meta and at least
    RECORDS records: the process, the run's records folder and that meta (pids of the worker or its ranks)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        recs = next(iter(out.glob("*/records")), None) if out.exists() else None
        meta = recs / f"{job}.meta.json" if recs else None
        if recs and meta and meta.exists() and lines(recs / f"{job}.jsonl") >= records:
            return proc, recs, json.loads(meta.read_text())
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the {job} worker never produced {records} records")


def write_suite(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def only_run_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir() and d.name != "history"]  # the run history lives beside the runs
    assert len(dirs) == 1, dirs
    return dirs[0]


def load_report(out: Path) -> dict:
    return json.loads((only_run_dir(out) / "report.json").read_text())
