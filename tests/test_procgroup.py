"""Process-group teardown with real processes: a leader that exits on SIGTERM while its helper ignores it (what the
vLLM API server and its `VLLM::Worker` do), a leader that dies mid-run, and a server that fails its start-up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import procgroup, server
from harness.served import Endpoint, Server

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
