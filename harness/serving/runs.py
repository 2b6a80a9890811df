"""A served suite's workers, each against its profile's own server: every server started with its profile's
environment and stack, the workers taking turns pass by pass, every server stopped, and the API key scrubbed from
every log the harness keeps."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from .. import cancel
from ..jobs import Job, JobOutcome
from ..runner import cancelled, child_env, run_interleaved, run_job
from ..suite import Profile, Suite
from . import server
from .info import served_device, server_program
from .wire import api_key


def run_served_all(
    suite: Suite,
    jobs: list[tuple[Profile, Job, Callable[[int], None]]],
    model_dir: Path,
    timeout_s: float,
    run_dir: Path,
    interleave: bool,
) -> list[JobOutcome]:
    """Each profile's worker against that profile's own server. Interleaved: every server is started first (each
    with its own environment), then the workers take turns pass by pass as in-process profiles do, so a neighbour
    or drift on the runner lands on both sides of the determinism cost; otherwise one server at a time (models too
    big for two)."""
    assert suite.endpoint is not None
    cancel.check()
    secret = api_key(suite.endpoint)
    jobs = [
        (prof, dataclasses.replace(job, endpoint=suite.endpoint, server=server_program(suite.server)), progress)
        for prof, job, progress in jobs
    ]
    if suite.server is None:  # already running: the profile's flags cannot reach it
        outs = [run_job(job, {}, timeout_s, run_dir, progress) for _, job, progress in jobs]
        scrub([Path(o.log) for o in outs], secret)
        return outs
    facts = served_device(suite.server, suite.model.device)  # once: npu-smi is slow on a busy host
    if not interleave:
        out = []
        for item in jobs:
            out += _against_servers(suite, [item], model_dir, timeout_s, run_dir, secret, paced=False, facts=facts)
        return out
    return _against_servers(suite, jobs, model_dir, timeout_s, run_dir, secret, paced=True, facts=facts)


def _against_servers(
    suite: Suite,
    jobs: list[tuple[Profile, Job, Callable[[int], None]]],
    model_dir: Path,
    timeout_s: float,
    run_dir: Path,
    secret: str,
    paced: bool,
    facts: dict[str, str] | None = None,
) -> list[JobOutcome]:
    """Start one server per job, run the workers (paced: taking turns), stop every server, then say how each
    ended. A server that does not start fails its own profile only. `facts` (served_device) join each worker's
    device description, and so the baseline key."""
    assert suite.endpoint is not None and suite.server is not None
    results: dict[str, JobOutcome] = {}
    running: list[tuple[Job, server.Running, Path, Callable[[int], None]]] = []
    with ExitStack() as stack:
        for prof, job, progress in jobs:
            log = run_dir / "logs" / f"{job.name}.server.log"
            start = time.monotonic()
            try:
                cancel.check()  # no server starts once the run is cancelled
                srv = stack.enter_context(
                    server.started(
                        suite.server,
                        suite.endpoint,
                        model=str(model_dir),
                        device=suite.model.device,
                        dtype=suite.model.dtype,
                        env=child_env(dict(prof.env)),
                        log=log,
                        python=prof.python,
                    )
                )
            except server.ServerError as e:
                scrub([log], secret)
                results[job.name] = JobOutcome.unstarted(
                    job,
                    "server-failed",
                    wall_s=time.monotonic() - start,
                    log=str(log),
                    stderr_tail=e.log_tail,
                    error=str(e),
                    server_log=str(log),
                )
                continue
            except cancel.Cancelled:  # while it started: it has been stopped (server.started's own cleanup)
                scrub([log], secret)
                results[job.name] = cancelled(job, wall_s=time.monotonic() - start, log=str(log), server_log=str(log))
                continue
            ep = dataclasses.replace(suite.endpoint, base_url=srv.url)
            running.append((dataclasses.replace(job, endpoint=ep, server_pid=srv.pid), srv, log, progress))
        if paced and len(running) > 1:
            outs = run_interleaved([(job, {}, progress) for job, _, _, progress in running], timeout_s, run_dir)
        else:
            outs = [run_job(job, {}, timeout_s, run_dir, progress) for job, _, _, progress in running]
    cancel.settle()  # the servers have stopped: what follows writes down how each job ended
    for out, (_, srv, log, _) in zip(outs, running):
        scrub([log, Path(out.log)], secret)
        out.server_log, out.server_stop, out.server_tail = str(log), srv.stopped, server.log_tail(log)
        if out.meta:
            out.meta["load_s"] = {"server_start": srv.start_s, **out.meta.get("load_s", {})}
            out.meta["server"] = {"pid": srv.pid, "argv": srv.proc.args, "stopped": srv.stopped}
            if isinstance(out.meta.get("device"), dict):
                out.meta["device"].update(facts or {})
        if srv.exit_code is not None and out.status != "cancelled":  # cancelled: SIGTERMed at the signal
            out.status = "server-crashed"
        if not out.ok:
            out.stderr_tail = out.stderr_tail + ["--- server log ---"] + server.log_tail(log)
            if out.status != "cancelled":  # e.g. the engine died at the first request: the log says why
                out.error = server.known_cause(log)
        results[out.name] = out
    return [results[job.name] for _, job, _ in jobs]


def scrub(paths: list[Path], secret: str) -> None:
    """Remove the API key from logs the harness keeps: a server (or library) may print what it was sent."""
    if not secret:
        return
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError:
            continue
        if secret.encode() in data:
            p.write_bytes(data.replace(secret.encode(), b"<redacted>"))
