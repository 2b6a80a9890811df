"""Cancellation through the real CLI: SIGTERM, SIGHUP and SIGINT mid-run (what `timeout`, a CI cancel and Ctrl-C
send) stop every process the run started, for a single worker, a TP 3 torchrun group and a served profile with a
server whose helper ignores SIGTERM; the report of what finished is written with the job marked cancelled, and the
exit code is 3. A second signal kills at once; a SIGKILLed harness leaves no worker behind (PR_SET_PDEATHSIG).

Each test prints the time from the signal until no process of the run remained (`pytest -s` shows it)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import cancel, procgroup

from .helpers import ROOT, lines, load_report, start_until_mid_run, tiny_llama, write_suite

process = pytest.mark.process  # the CLI, its workers, torchrun and a server, signalled for real

SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGHUP": signal.SIGHUP, "SIGINT": signal.SIGINT}
BOUND_S = 30.0  # the workers' grace (5 s) or the server's (3 s here), with room for a busy 2-core runner

PROMPTS = ", ".join(f'{{id = "p{i}", text = "Tell me fact number {i} about the sea.", chat = true}}' for i in range(24))
IN_PROCESS = f"""
[suite]
name = "cancel"
version = 1
[model]
ref = "MODEL"
[generation]
max_new_tokens = 48
[prompts]
items = [{PROMPTS}]
PARALLEL
[[schedules]]
kind = "solo"
[profiles.only]
"""

# The server's leader forks a helper that ignores SIGTERM (as vLLM's EngineCore outlives its API server), then
# becomes the fake OpenAI server; only SIGKILL after the stop grace empties its group.
STUBBORN = f"""
import os, signal, sys, time
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(1)
os.execv(sys.executable, [sys.executable, {str(ROOT / "tests" / "fake_openai.py")!r}, *sys.argv[1:]])
"""
SERVED = """
[suite]
name = "cancel-served"
version = 1
[model]
ref = "fake-model"
[server]
command = "{python} {stubborn} --port {{port}} --logprobs"
startup_timeout_s = 60
stop_grace_s = {grace}
[endpoint]
api = "chat"
retries = 0
request_timeout_s = 120
[generation]
max_new_tokens = 6
[prompts]
items = [{{id = "a", text = "one two three"}}, {{id = "b", text = "four five six"}},
         {{id = "c", text = "seven eight"}}, {{id = "slow", text = "s FAULT:hang"}}]
[[schedules]]
kind = "solo"
[profiles.only]
expect = {{ cpu = "report" }}
"""


@pytest.fixture(autouse=True)
def signals_reach_the_cli():
    """The harness keeps a signal ignored that it started with ignored (nohup): a pytest started with SIGHUP
    ignored would pass that on, so the test process handles the three meanwhile and the CLI starts with them at
    their defaults."""
    ignored = {s: signal.getsignal(s) for s in SIGNALS.values() if signal.getsignal(s) == signal.SIG_IGN}
    for s in ignored:
        signal.signal(s, lambda *a: None)
    yield
    for s, h in ignored.items():
        signal.signal(s, h)


@pytest.fixture(scope="module")
def tiny_model_tp3(embedded_dir: Path, tmp_path_factory) -> Path:
    """A 2-layer random Llama whose 6 attention and 3 KV heads split 3 ways, with the real tokenizer."""
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama-tp3"), embedded_dir, heads=6, kv_heads=3, hidden=48)


def run_processes(harness_pid: int, known: set[int]) -> list[int]:
    """Live processes of the run: those carrying the harness's pid in their environment (every child it starts,
    and what they start: torchrun's ranks, the server's helper), and those the run named (worker, ranks, server)."""
    needle = f"{procgroup.HARNESS_PID}={harness_pid}".encode() + b"\0"
    found = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (d / "environ").read_bytes():
                found.add(int(d.name))
        except OSError:
            continue
    return sorted(p for p in found | known if procgroup.alive(p))


def known_pids(recs: Path, job: str, meta: dict) -> set[int]:
    pids = {r["pid"] for r in meta.get("ranks", [])} | {meta["pid"]}
    spec = json.loads((recs.parent / "jobs" / f"{job}.json").read_text())
    return pids | ({spec["server_pid"]} if spec.get("server_pid") else set())


def gone_after(harness_pid: int, known: set[int], since: float, bound_s: float = BOUND_S) -> float:
    """Seconds from `since` until no process of the run is left; fails past `bound_s`."""
    while left := run_processes(harness_pid, known):
        assert time.monotonic() - since < bound_s, f"still alive {bound_s:.0f} s after the signal: {left}"
        time.sleep(0.02)
    return time.monotonic() - since


def _in_process(tmp_path: Path, model: Path, tp: int) -> Path:
    body = IN_PROCESS.replace("MODEL", str(model))
    body = body.replace("PARALLEL", f"[parallel]\ntp = [{tp}]\ncollective_timeout_s = 60" if tp > 1 else "")
    return write_suite(tmp_path / "cancel.toml", body)


def _served(tmp_path: Path, grace: float = 3) -> Path:
    stubborn = tmp_path / "stubborn_server.py"
    stubborn.write_text(STUBBORN)
    return write_suite(tmp_path / "served.toml", SERVED.format(python=sys.executable, stubborn=stubborn, grace=grace))


def _cancel_mid_run(suite: Path, out: Path, job: str, records: int, sig: signal.Signals, kind: str) -> dict:
    """Start the run, signal the harness mid-run, and check what every kind of run must do: nothing left within
    the bound, exit 3, a report whose job is cancelled with the finished records kept."""
    proc, recs, meta = start_until_mid_run(suite, out, job, records)
    known = known_pids(recs, job, meta)
    assert run_processes(proc.pid, known), "the run's processes were not found"
    t = time.monotonic()
    proc.send_signal(sig)
    if sig == signal.SIGTERM:
        proc.send_signal(sig)  # as timeout(1) does: to the command, then to its process group; one request
    took = gone_after(proc.pid, known, t)
    stdout, stderr = proc.communicate(timeout=120)
    print(f"teardown {kind} {sig.name}: {took:.2f} s to no process; harness exited after {time.monotonic() - t:.2f} s")
    assert proc.returncode == 3, stdout[-3000:] + stderr[-3000:]
    rep = load_report(out)
    j = next(j for j in rep["jobs"] if j["name"] == job)
    assert j["status"] == "cancelled" and rep["exit_code"] == 3, j
    assert f"cancelled ({sig.name} to the harness) and stopped after" in j["description"]
    assert records <= j["completed"] <= j["expected"] and lines(recs / f"{job}.jsonl") == j["completed"]
    done = [json.loads(x) for x in (recs / f"{job}.jsonl").read_text().splitlines()]
    # stopped mid-run: sequences left unstarted, or the one in flight (a served request) recorded as cut short
    assert j["completed"] < j["expected"] or any(r.get("error") for r in done), done[-1]
    assert f"worker {job!r} cancelled ({sig.name} to the harness)" in stdout
    assert "Traceback" not in stderr
    return j


@process
@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_stops_a_single_worker_and_reports_it_cancelled(tmp_path: Path, tiny_model: Path, sig: str):
    _cancel_mid_run(_in_process(tmp_path, tiny_model, 1), tmp_path / "r", "only", 2, SIGNALS[sig], "single")


@process
@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_stops_a_tp3_group_and_its_ranks(tmp_path: Path, tiny_model_tp3: Path, sig: str):
    j = _cancel_mid_run(_in_process(tmp_path, tiny_model_tp3, 3), tmp_path / "r", "only-tp3", 2, SIGNALS[sig], "tp3")
    assert j["tp"] == 3


@process
@pytest.mark.parametrize("sig", SIGNALS)
def test_a_signal_stops_the_server_group_within_its_grace(tmp_path: Path, sig: str):
    j = _cancel_mid_run(_served(tmp_path), tmp_path / "r", "only", 3, SIGNALS[sig], "served")
    assert j["server_stop"].startswith("SIGKILL after ignoring SIGTERM (run cancelled)"), j["server_stop"]


@process
def test_a_second_signal_kills_at_once(tmp_path: Path):
    """The server's helper ignores SIGTERM and its grace is long: the first signal would wait it out, the second
    does not."""
    out = tmp_path / "r"
    proc, recs, meta = start_until_mid_run(_served(tmp_path, grace=120), out, "only", 3)
    known = known_pids(recs, "only", meta)
    proc.send_signal(signal.SIGTERM)
    time.sleep(2)  # past the window in which a repeat is the same request
    assert proc.poll() is None and run_processes(proc.pid, known), "nothing left to force"
    t = time.monotonic()
    proc.send_signal(signal.SIGINT)
    took = gone_after(proc.pid, known, t, bound_s=15)
    proc.communicate(timeout=60)
    print(f"teardown forced by a second signal: {took:.2f} s")
    assert proc.returncode == 3


@process
def test_a_sigkilled_harness_leaves_no_worker(tmp_path: Path, tiny_model: Path):
    """SIGKILL gives the harness no chance: the kernel SIGTERMs its worker (PR_SET_PDEATHSIG)."""
    proc, recs, meta = start_until_mid_run(_in_process(tmp_path, tiny_model, 1), tmp_path / "r", "only", 2)
    known = known_pids(recs, "only", meta)
    t = time.monotonic()
    proc.kill()
    took = gone_after(proc.pid, known, t, bound_s=10)
    proc.communicate(timeout=60)
    print(f"teardown after SIGKILL of the harness: {took:.2f} s")
    assert proc.returncode == -signal.SIGKILL


# ---- the handler itself, in this process: no child, a signal to ourselves -------------------------------------


@pytest.fixture
def installed():
    cancel.install()
    if signal.getsignal(signal.SIGTERM) is not cancel._handle:  # noqa: SLF001
        cancel.uninstall()
        pytest.skip("SIGTERM is ignored in this process: the harness would leave it so")
    yield
    cancel.uninstall()


def _deliver(sig: signal.Signals) -> None:
    signal.pthread_kill(threading.main_thread().ident, sig)
    time.sleep(0.05)  # the handler runs at the next bytecode; a sleep is interrupted by it


def test_a_first_signal_raises_where_the_harness_waits_and_a_repeat_is_the_same_request(installed, monkeypatch):
    monkeypatch.setattr(cancel, "REPEAT_S", 60.0)  # a stall on a busy host must not make it a second (exit) request
    assert not cancel.requested()
    with pytest.raises(cancel.Cancelled) as e:
        _deliver(signal.SIGTERM)
    assert e.value.signum == signal.SIGTERM and cancel.reason() == "SIGTERM to the harness"
    _deliver(signal.SIGINT)  # within REPEAT_S: timeout(1)'s second copy, not a second request (which would exit)
    with pytest.raises(cancel.Cancelled):
        cancel.check()  # nothing new starts once cancelled


def test_a_signal_while_settled_is_noted_and_the_next_start_sees_it(installed):
    cancel.settle()  # a job has ended: its report is being written
    _deliver(signal.SIGHUP if signal.getsignal(signal.SIGHUP) is cancel._handle else signal.SIGTERM)  # noqa: SLF001
    assert cancel.requested()
    with pytest.raises(cancel.Cancelled):
        cancel.check()


def test_uninstall_restores_the_handlers_and_forgets_the_cancellation():
    """A command run in process (as tests do) leaves neither its handlers nor its cancellation behind."""
    before = signal.getsignal(signal.SIGTERM)
    if before == signal.SIG_IGN:
        pytest.skip("SIGTERM is ignored in this process: the harness would leave it so")
    cancel.install()
    try:
        with pytest.raises(cancel.Cancelled):
            _deliver(signal.SIGTERM)
    finally:
        cancel.uninstall()
    assert not cancel.requested() and signal.getsignal(signal.SIGTERM) == before
