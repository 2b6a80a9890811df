"""Process-group teardown with real processes: a leader that exits on SIGTERM while its helper ignores it (what the
vLLM API server and its `VLLM::Worker` do), a leader that dies mid-run, a server that fails its start-up, the
registry of started groups stopped at once, and a child that dies with a SIGKILLed harness."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import procgroup
from harness.serving import server
from harness.serving.spec import Endpoint, Server

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.process

# The leader forks a helper that ignores SIGTERM, writes the helper's pid, then waits (or exits at once).
LEADER = textwrap.dedent(
    """
    import os, signal, sys, time
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)
    open(sys.argv[1], "w").write(str(pid))
    if sys.argv[2] == "exit":
        sys.exit(5)
    while True:
        time.sleep(1)
    """
)


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, int]:
    pidfile = tmp_path / "helper.pid"
    proc = subprocess.Popen([sys.executable, "-c", LEADER, str(pidfile), mode], start_new_session=True)
    end = time.monotonic() + 30
    while not (pidfile.is_file() and pidfile.read_text()):
        assert time.monotonic() < end, "the leader never forked its helper"
        time.sleep(0.05)
    return proc, int(pidfile.read_text())


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def test_a_helper_that_ignores_sigterm_is_killed_and_the_group_is_empty(tmp_path: Path):
    proc, helper = _start(tmp_path, "wait")
    assert sorted(procgroup.members(proc.pid)) == sorted([proc.pid, helper])
    how = procgroup.stop(proc, grace_s=1.0)
    assert how.startswith("SIGKILL after ignoring SIGTERM") and "1 process(es)" in how, how
    assert procgroup.members(proc.pid) == [] and not _alive(helper)


def test_a_leader_that_died_mid_run_leaves_no_helper(tmp_path: Path):
    proc, helper = _start(tmp_path, "wait")
    os.kill(proc.pid, signal.SIGKILL)  # the server killed mid-run: only its helper is left
    proc.wait()
    assert procgroup.members(proc.pid) == [helper]
    how = procgroup.stop(proc, grace_s=0.5)
    assert how.startswith("exited with status -9") and "1 process(es) of its group outlived it" in how, how
    assert not _alive(helper)


def test_a_server_that_fails_its_start_up_leaves_no_helper(tmp_path: Path):
    pidfile = tmp_path / "helper.pid"
    spec = Server(command=f"{sys.executable} -c '{LEADER}' {pidfile} exit --port {{port}}", stop_grace_s=0.5)
    with pytest.raises(server.ServerError, match="exited with status 5 during start-up"):
        with server.started(spec, Endpoint(), model="", device="cpu", dtype="float32", env={}, log=tmp_path / "s.log"):
            pass
    helper = int(pidfile.read_text())
    assert not _alive(helper)


def test_every_started_group_is_registered_and_stop_all_empties_them_at_once(tmp_path: Path):
    """The registry a cancelled run stops: two groups whose helpers ignore SIGTERM are stopped together, so the
    whole stop takes one grace, not one per group."""
    started = []
    for i in range(2):
        pidfile = tmp_path / f"helper{i}.pid"
        proc = procgroup.start([sys.executable, "-c", LEADER, str(pidfile), "wait"], grace_s=1.0)
        started.append(proc)
    end = time.monotonic() + 30
    while not all((tmp_path / f"helper{i}.pid").is_file() for i in range(2)):
        assert time.monotonic() < end, "the leaders never forked their helpers"
        time.sleep(0.05)
    assert {e.proc.pid for e in procgroup.live()} >= {p.pid for p in started}
    t = time.monotonic()
    how = procgroup.stop_all()
    took = time.monotonic() - t
    assert len(how) >= 2 and all(h.startswith("SIGKILL after ignoring SIGTERM (run cancelled)") for h in how[-2:]), how
    assert took < 1.0 + 3.0, took  # one grace for both, and some polling
    assert not procgroup.live()
    for i in range(2):
        assert not _alive(int((tmp_path / f"helper{i}.pid").read_text()))


# A stand-in harness: starts a child the way the harness starts a server (any program), prints its pid, waits.
HARNESS = textwrap.dedent(
    """
    import sys, time
    from harness import procgroup
    child = procgroup.start(["sleep", "300"], grace_s=1.0)
    print(child.pid, flush=True)
    time.sleep(300)
    """
)


def test_a_child_dies_with_a_sigkilled_harness(tmp_path: Path):
    """SIGKILL leaves the harness no chance to stop anything: the kernel SIGTERMs the child (PR_SET_PDEATHSIG), also
    a program that knows nothing of the harness, as a server does."""
    if procgroup._PRCTL is None:  # noqa: SLF001
        pytest.skip("no prctl here: only workers poll for their parent")
    harness = subprocess.Popen(
        [sys.executable, "-c", HARNESS], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert harness.stdout is not None
    child = int(harness.stdout.readline())
    assert _alive(child)
    harness.kill()
    harness.wait()
    end = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < end, "the child outlived its SIGKILLed harness"
        time.sleep(0.02)
