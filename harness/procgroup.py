"""A child started in its own session (process group), stopped as a group, and waited for until the group is empty.

Servers and engines fork helpers that outlive their leader: after SIGTERM the vLLM API server exits in under a
second while its `VLLM::Worker` (EngineCore) and multiprocessing resource tracker stay alive until signalled
themselves. Waiting for the leader alone would leave them holding gigabytes; so every signal goes to the group and
the stop is over only when no live process of the group is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

POLL_S = 0.1


def members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, from /proc; where there is no /proc, the leader's group
    answering signal 0 stands for "not empty"."""
    if not os.path.isdir("/proc/self"):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # Fields after the command (which may contain spaces and parentheses): state ppid pgrp ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            out.append(int(name))
    return out


def signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def wait_empty(pgid: int, timeout_s: float) -> bool:
    """True once no live process of the group is left, False if some still are after `timeout_s`."""
    end = time.monotonic() + timeout_s
    while members(pgid):
        if time.monotonic() > end:
            return False
        time.sleep(POLL_S)
    return True


def stop(proc: subprocess.Popen, grace_s: float) -> str:
    """SIGTERM to the whole group, SIGKILL to what is left after `grace_s`, then wait until the group is empty.
    Says how it ended, for the report. The leader is reaped here; its orphans are reaped by init."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id
    t = time.monotonic()
    rc = proc.poll()
    signal_group(pgid, signal.SIGTERM)  # also when the leader has died: its helpers may not have
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        pass
    left = 0
    if not wait_empty(pgid, max(0.0, grace_s - (time.monotonic() - t))):
        left = len(members(pgid))
        signal_group(pgid, signal.SIGKILL)
        proc.wait()
        if not wait_empty(pgid, 30.0):
            return f"{len(members(pgid))} process(es) of group {pgid} survived SIGKILL"
    took = time.monotonic() - t
    if rc is not None:
        return f"exited with status {rc} before it was stopped" + (
            f"; {left} process(es) of its group outlived it and were killed" if left else ""
        )
    if not left:
        return f"SIGTERM, group empty after {took:.1f} s"
    return f"SIGKILL after ignoring SIGTERM for {grace_s:.0f} s ({left} process(es) of its group)"
