"""Cancellation: SIGTERM, SIGHUP or SIGINT to a harness command (what `timeout`, a CI job's cancel button or a
Kubernetes eviction sends) stops every process the command started, keeps the report of what finished, with the
unfinished jobs marked `cancelled`, and ends the command with exit code 3 (infrastructure). A second signal kills
what is left at once and exits 3 without a report.

How. Every child goes through harness.procgroup.start, into one registry of process groups (workers, torchrun
launchers and the ranks that carry their marker, servers, model conversions). The first signal SIGTERMs every
registered group at once, then raises Cancelled, as Ctrl-C raises KeyboardInterrupt, where the harness is waiting
for a child; the runner turns that into cancelled outcomes and waits for each group within its grace (a server's
stop_grace_s) before SIGKILL, and the run writes its report. Nothing new starts once a run is cancelled: `check()`
raises at every new start, and the runner reports the jobs it did not start as cancelled. Between a job's end and
the next start the harness is writing what it has (`settle()`): a first signal then is noted, not raised, so the
report is written whole; the next start sees it. The CLI stops whatever is still registered on its way out.

A second signal more than REPEAT_S after the first (`timeout` sends its signal twice: to the command and to its
process group) SIGKILLs every registered group and exits at once. A signal that was ignored when the harness
started stays ignored (`nohup` ignores SIGHUP). A harness that is itself SIGKILLed can do none of this: its
children notice by themselves (procgroup.watch_parent, PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

from . import procgroup
from .errors import INFRA

SIGNALS = procgroup.SIGNALS
REPEAT_S = 1.0


class Cancelled(KeyboardInterrupt):
    """The run was cancelled by a signal: a KeyboardInterrupt, so that `except Exception` never swallows it."""

    def __init__(self, signum: int):
        super().__init__(f"cancelled by {signal.Signals(signum).name}")
        self.signum = signum


@dataclass
class _State:
    signum: int = 0  # the first signal; 0 while not cancelled
    at: float = 0.0  # when it came (monotonic)
    settled: bool = False  # writing what finished: a first signal is noted, not raised
    previous: dict[int, object] = field(default_factory=dict)  # the handlers install() replaced


_state = _State()


def install() -> None:
    """Handle SIGTERM, SIGHUP and SIGINT as cancellation (main thread only; elsewhere Python cannot)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in SIGNALS:
        if signal.getsignal(sig) == signal.SIG_IGN:
            continue  # nohup, or a background job of a shell without job control: the caller asked for that
        _state.previous[sig] = signal.signal(sig, _handle)


def uninstall() -> None:
    """The handlers as they were, and no cancellation pending (for a caller that runs several commands)."""
    global _state
    for sig, old in _state.previous.items():
        signal.signal(sig, old)  # type: ignore[arg-type]
    _state = _State()


def _say(text: str) -> None:
    try:
        os.write(2, f"\nharness: {text}\n".encode())  # not print: the handler may interrupt a write to stderr
    except OSError:
        pass


def _handle(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    now = time.monotonic()
    if not _state.signum:
        _state.signum, _state.at = signum, now
        _say(
            f"{name}: cancelling; stopping every process this run started and writing the report of what finished "
            "(another signal kills them at once)"
        )
        procgroup.terminate_all()
        if not _state.settled:
            raise Cancelled(signum)
        return
    if now - _state.at < REPEAT_S:
        return  # the same request delivered twice (timeout signals both its command and the command's group)
    _say(f"{name} again: killing every process this run started; no report")
    procgroup.kill_all()
    os._exit(INFRA)


def requested() -> bool:
    """A cancel signal has come."""
    return bool(_state.signum)


def reason() -> str:
    """What cancelled the run, for the report: "SIGTERM to the harness"."""
    return f"{signal.Signals(_state.signum).name} to the harness" if _state.signum else ""


def check() -> None:
    """At the start of new work: raise Cancelled if the run is cancelled; from here a first signal raises again."""
    _state.settled = False
    if _state.signum:
        raise Cancelled(_state.signum)


def settle() -> None:
    """Work has ended and what follows writes it down: until the next check(), a first signal is noted, not
    raised, so that the report of what finished is written whole."""
    _state.settled = True


def finish() -> list[str]:
    """On the way out of a command: stop whatever is still registered (SIGTERM, each its grace, SIGKILL), then the
    handlers as they were before install() (a command run in process, as tests do, leaves none behind)."""
    try:
        return procgroup.stop_all()
    finally:
        uninstall()
