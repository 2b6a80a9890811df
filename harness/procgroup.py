"""A child started in its own session (process group), stopped as a group, and waited for until the group is empty.

Servers and engines fork helpers that outlive their leader: after SIGTERM the vLLM API server exits in under a
second while its `VLLM::Worker` (EngineCore) and multiprocessing resource tracker stay alive until signalled
themselves. Waiting for the leader alone would leave them holding gigabytes; so every signal goes to the group and
the stop is over only when no live process of the group is left.

Every child the harness starts goes through `start`: a session of its own, the kernel asked to SIGTERM it when the
harness dies (PR_SET_PDEATHSIG, Linux), the harness's pid in its environment (HARNESS_PID), and an entry in one
registry of live groups. A group may have a marker (harness.group.MARK): torchrun starts its ranks in sessions of
their own, so what carries the marker belongs to the group too. A cancelled run (harness.cancel) stops the whole
registry at once (`terminate_all`, `stop_all`, `kill_all`); a worker checks the other side itself
(`watch_parent`), for ranks that torchrun starts and systems without prctl.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .group import marked

POLL_S = 0.1
SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)  # what cancels a run: held back while a child starts
HARNESS_PID = "HARNESS_PID"  # in every child's environment: the harness process it belongs to
PR_SET_PDEATHSIG = 1


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


def alive(pid: int) -> bool:
    """A live process (a zombie, dead but not yet reaped, is not one)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True


def _marked(marker: str) -> list[int]:
    return marked(marker) if marker else []


def _left(pgid: int, marker: str = "") -> list[int]:
    """The group's live processes and those outside it that carry its marker."""
    out = members(pgid)
    return out + [p for p in _marked(marker) if p not in out]


def signal_group(pgid: int, sig: int, marker: str = "") -> None:
    """`sig` to the group, and to every process that carries its marker; one that has gone is no error."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    for pid in _marked(marker):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_empty(pgid: int, timeout_s: float, marker: str = "") -> bool:
    """True once no live process of the group (nor any carrying its marker) is left, False if some still are after
    `timeout_s`."""
    end = time.monotonic() + timeout_s
    while _left(pgid, marker):
        if time.monotonic() > end:
            return False
        time.sleep(POLL_S)
    return True


# ---- the registry: every group the harness started and has not yet seen empty --------------------------------


@dataclass
class Entry:
    proc: subprocess.Popen[Any]  # text or bytes, as its starter asked (start's popen_kw)
    grace_s: float  # how long it may take to stop after SIGTERM
    marker: str = ""  # group.MARK's value in processes outside the group that belong to it (torchrun's ranks)
    terminated: float = 0.0  # when terminate_all sent SIGTERM (monotonic); its grace counts from then


_live: dict[int, Entry] = {}  # pgid (the leader's pid) -> entry; changed only by the main program, never a handler
_exit_hook = threading.Lock()
_hooked = False


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        f = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    f.restype = ctypes.c_int
    return f


_PRCTL = _prctl()


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send this process `sig` when its parent dies (Linux); False where that cannot be asked."""
    return _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _child_setup(parent: int, mask: set[int | signal.Signals]) -> Callable[[], None]:
    """Runs in the child between fork and exec: the parent's signal mask as it was before `start` held the cancel
    signals back, the kernel told to SIGTERM the child with the harness, and a harness that died before that
    leaves a child that never starts."""

    def setup() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(3)

    return setup


def start(
    argv: list[str], *, grace_s: float, marker: str = "", env: dict[str, str] | None = None, **popen_kw: Any
) -> subprocess.Popen[Any]:
    """subprocess.Popen in a session of its own, bound to die with the harness, and registered until `stop` or
    `kill` has seen its group empty. The cancel signals are held back from fork to registration, so a cancellation
    can never fall between a child's start and its entry."""
    env = {**(os.environ if env is None else env), HARNESS_PID: str(os.getpid())}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        proc = subprocess.Popen(
            argv, env=env, start_new_session=True, preexec_fn=_child_setup(os.getpid(), old), **popen_kw
        )
        _live[proc.pid] = Entry(proc, grace_s, marker)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    _hook_exit()
    return proc


def _hook_exit() -> None:
    """Whatever is still registered when the interpreter exits (a caller that is not the CLI) is stopped then."""
    global _hooked
    with _exit_hook:
        if not _hooked:
            atexit.register(stop_all)
            _hooked = True


def live() -> list[Entry]:
    """Registered groups, oldest first."""
    return list(_live.values())


def _forget(proc: subprocess.Popen[Any]) -> None:
    _live.pop(proc.pid, None)


@dataclass(frozen=True)
class Stopped:
    """How a stop ended: `text` says it for the report; `exit_code` is the leader's own exit status when it had
    exited before it was stopped (a server that crashed mid-run), None when the stop ended it."""

    text: str
    exit_code: int | None = None


def stop(proc: subprocess.Popen[Any], grace_s: float) -> str:
    """SIGTERM to the whole group, SIGKILL to what is left after `grace_s`, then wait until the group is empty.
    Says how it ended, for the report. The leader is reaped here; its orphans are reaped by init."""
    return stop_group(proc, grace_s).text


def stop_group(proc: subprocess.Popen[Any], grace_s: float) -> Stopped:
    """`stop`, with whether the leader had exited on its own before it was stopped."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group's id
    entry = _live.get(pgid)
    marker = entry.marker if entry is not None else ""
    terminated = entry.terminated if entry is not None else 0.0
    cancelled = terminated > 0  # SIGTERMed already, with the rest of a cancelled run
    t = terminated if cancelled else time.monotonic()
    rc = None if cancelled else proc.poll()
    signal_group(pgid, signal.SIGTERM, marker)  # also when the leader has died: its helpers may not have
    try:
        proc.wait(max(0.0, grace_s - (time.monotonic() - t)))
    except subprocess.TimeoutExpired:
        pass
    left = 0
    if not wait_empty(pgid, max(0.0, grace_s - (time.monotonic() - t)), marker):
        left = len(_left(pgid, marker))
        signal_group(pgid, signal.SIGKILL, marker)
        proc.wait()
        if not wait_empty(pgid, 30.0, marker):
            return Stopped(f"{len(_left(pgid, marker))} process(es) of group {pgid} survived SIGKILL")
    _forget(proc)
    took = time.monotonic() - t
    if rc is not None:
        return Stopped(
            f"exited with status {rc} before it was stopped"
            + (f"; {left} process(es) of its group outlived it and were killed" if left else ""),
            exit_code=rc,
        )
    term = "SIGTERM (run cancelled)" if cancelled else "SIGTERM"
    if not left:
        return Stopped(f"{term}, group empty after {took:.1f} s")
    return Stopped(f"SIGKILL after ignoring {term} for {grace_s:.0f} s ({left} process(es) of its group)")


def kill(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL to the group and whatever carries its marker, then wait until none is left."""
    entry = _live.get(proc.pid)
    marker = entry.marker if entry is not None else ""
    signal_group(proc.pid, signal.SIGKILL, marker)
    proc.wait()
    if wait_empty(proc.pid, 30.0, marker):
        _forget(proc)


def terminate_all() -> None:
    """SIGTERM to every registered group at once, without waiting: safe in a signal handler (it changes nothing but
    each entry's `terminated`)."""
    now = time.monotonic()
    for e in live():
        signal_group(e.proc.pid, signal.SIGTERM, e.marker)
        e.terminated = e.terminated or now


def kill_all(wait_s: float = 2.0) -> None:
    """SIGKILL to every registered group, then a short wait until they are empty: the forced teardown."""
    entries = live()
    for e in entries:
        signal_group(e.proc.pid, signal.SIGKILL, e.marker)
    end = time.monotonic() + wait_s
    for e in entries:
        wait_empty(e.proc.pid, max(0.0, end - time.monotonic()), e.marker)


def stop_all() -> list[str]:
    """Stop every registered group, all at once: SIGTERM to each, then each gets what is left of its own grace
    before SIGKILL. Says how each ended."""
    entries = live()
    terminate_all()
    return [stop(e.proc, e.grace_s) for e in entries]


def run(
    argv: list[str], *, timeout: float | None = None, grace_s: float = 5.0, **popen_kw: Any
) -> subprocess.CompletedProcess[str]:
    """subprocess.run(capture_output=True, text=True) through `start`: a short helper child (model conversion) is
    registered like a worker, so a cancelled run stops it too. On a timeout it is killed and TimeoutExpired raised."""
    proc = start(argv, grace_s=grace_s, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc)
        raise
    except BaseException:
        stop(proc, grace_s)
        raise
    stop(proc, grace_s)  # it has exited: its group's helpers, if any, go with it
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


# ---- the child's side -----------------------------------------------------------------------------------------


def watch_parent(poll_s: float = 1.0) -> None:
    """In a worker, at its start: exit when the process that started it dies, even by SIGKILL, which leaves it no
    chance to clean up. On Linux the kernel sends SIGTERM (PR_SET_PDEATHSIG; a rank's parent is torchrun, which
    the same mechanism ties to the harness); a parent that died before that was asked, or the harness named in
    HARNESS_PID, ends it at once; where prctl is not available a thread polls the parent instead."""
    ppid = os.getppid()
    harness = int(os.environ.get(HARNESS_PID, "0") or 0)

    def gone() -> bool:
        return os.getppid() != ppid or (harness > 0 and not alive(harness))

    asked = die_with_parent(signal.SIGTERM)
    if gone():
        _orphaned()
    if not asked:

        def poll() -> None:
            while not gone():
                time.sleep(poll_s)
            _orphaned()

        threading.Thread(target=poll, name="watch-parent", daemon=True).start()


def _orphaned() -> None:
    """What a worker does when its harness has gone: SIGTERM to its own group (itself and anything it started),
    then, if it is still here, exit."""
    if os.getpgrp() == os.getpid():
        signal_group(os.getpid(), signal.SIGTERM)
    else:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    os._exit(3)
