"""The parent side: prepares the model and runs one worker process per job.

It never imports torch or torch_npu and never holds a model. Each worker gets
os.environ plus its profile's variables, so flags are in place before any
device library starts. A worker that crashes, is killed or times out is
recorded with its exit status and stderr tail; the other jobs still run.
A cancelled run (harness.cancel) stops its workers within their grace and
reports them, and the jobs it did not start, as `cancelled`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness

from . import cancel, group, procgroup
from .errors import INFRA, USAGE, HarnessError
from .jobs import Job, JobOutcome, env_path, save_env
from .plan import Batch
from .status import WorkerStatus
from .suite import Parallel, Profile, Suite

PACKAGE_ROOT = str(Path(harness.__file__).resolve().parent.parent)
POLL_S = 0.5
WORKER_GRACE_S = 5.0  # a worker (or torchrun and its ranks) told to stop has this long before SIGKILL


def child_env(extra: dict[str, str | None]) -> dict[str, str]:
    """os.environ plus `extra`; a None value removes the variable (an "unset" setting)."""
    merged = {**os.environ, **extra}
    env = {k: v for k, v in merged.items() if v is not None}
    # The worker must import this harness even when it runs from a checkout (nox --no-venv).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    return env


def worker_env(
    env: dict[str, str | None], parallel: Parallel | None = None, launch: group.Launch | None = None
) -> dict[str, str | None]:
    """What a job's worker gets on top of os.environ (child_env then adds PYTHONPATH): a worker group's launcher its
    marker, thread count and node rank; the reference degree of a multi-degree suite the groups' thread count; the
    profile's own variables win over both. The dry run shows exactly this."""
    if launch is not None:
        return {**launch.env, **env}
    if parallel is not None and parallel.multi:
        return {"OMP_NUM_THREADS": str(group.suite_threads(parallel)), **env}
    return dict(env)


def prepare_model(ref: str, timeout_s: float = 1800) -> Path:
    """Resolve (and convert once, in a child process) the model; exit 2 for a bad reference, 3 if it will not load."""
    try:
        p = run_child([sys.executable, "-m", "harness.models", ref], timeout_s)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"model {ref!r}: preparation timed out after {timeout_s:.0f}s", INFRA) from None
    if p.returncode != 0:
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        msg = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "no output")
        raise HarnessError(msg.removeprefix("error: "), USAGE if p.returncode == 2 else INFRA)
    return Path(p.stdout.strip().splitlines()[-1])


def run_child(
    argv: list[str], timeout_s: float | None = None, env: dict[str, str | None] | None = None, marker: str = ""
) -> subprocess.CompletedProcess[str]:
    """A helper child before the workers (model conversion, a synthetic checkpoint) or after them (a replay,
    harness.localize, with a job's `env`; a replay's torchrun group with its `marker`, so that its ranks go with
    it), registered like them so that a cancelled run stops it too; none starts once the run is cancelled
    (Cancelled)."""
    cancel.check()
    return procgroup.run(argv, timeout=timeout_s, env=child_env(env or {}), marker=marker)


def make_job(suite: Suite, profile: Profile, batches: list[Batch], model_dir: Path, run_dir: Path, tp: int = 1) -> Job:
    name = suite.parallel.job_name(profile.name, tp)
    return Job(
        name=name,
        profile=profile.name,
        adapter=suite.model.adapter,
        model_ref=suite.model.ref,
        model_dir=str(model_dir),
        dtype=suite.model.dtype,
        device=suite.model.device,
        torch_deterministic=profile.torch_deterministic,
        max_new_tokens=suite.generation.max_new_tokens,
        top_logprobs=suite.generation.top_logprobs,
        prompts=tuple(dataclasses.asdict(p) for p in suite.prompts),
        batches=tuple(batches),
        records=str(run_dir / "records" / f"{name}.jsonl"),
        meta=str(run_dir / "records" / f"{name}.meta.json"),
        seed=suite.seed,
        tp=tp,
        collective_timeout_s=suite.parallel.collective_timeout_s,
    )


class _LineCounter:
    """Counts complete lines appended to a file since it was made (a later process of a profile appends to what the
    earlier ones wrote: harness.processes), reading only the new bytes."""

    def __init__(self, path: Path):
        self.path, self.offset, self.lines = path, path.stat().st_size if path.is_file() else 0, 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.lines
        self.offset += len(chunk)
        self.lines += chunk.count(b"\n")
        return self.lines


class _Worker:
    """One worker process: started in its own session (a timeout kills it and anything it started), its records
    counted as they land."""

    def __init__(
        self,
        job: Job,
        env: dict[str, str | None],
        run_dir: Path,
        progress: Callable[[int], None],
        launch: group.Launch | None = None,
    ):
        job_path = run_dir / "jobs" / f"{job.name}.json"
        job_path.write_text(job.to_json(), encoding="utf-8")
        self.job, self.progress, self.launch = job, progress, launch
        self.log = run_dir / "logs" / f"{job.name}.log"
        self.counter = _LineCounter(Path(job.records))
        self.start = time.monotonic()
        self.status: WorkerStatus = "ok"
        argv = [job.python or sys.executable, "-m", "harness.worker", str(job_path)]
        if launch is not None:  # a worker group: torchrun's ranks, each with its share of the cores and the marker
            argv, env = launch.argv, worker_env(env, launch=launch)
        save_env(env_path(job_path), env)
        with open(self.log, "wb") as logf:
            self.proc = procgroup.start(
                argv,
                grace_s=WORKER_GRACE_S,
                marker=launch.env[group.MARK] if launch is not None else "",
                env=child_env(env),
                stdin=subprocess.PIPE if job.paced else subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )

    def alive(self, timeout_s: float) -> bool:
        """Still running within its time; a worker past it is killed and marked."""
        self.progress(self.counter.poll())
        if self.proc.poll() is not None:
            return False
        if time.monotonic() - self.start > timeout_s:
            self.status = "timeout"
            self.kill()
            return False
        return True

    def go(self) -> None:
        """Let a paced worker take its next step (load, or one pass)."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died; finish() says how

    def close_stdin(self) -> None:
        """No more steps for a paced worker: it finishes what it has; one that died already has no pipe to close."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def kill(self) -> None:
        """The worker and anything it started (torchrun's ranks too); a group that has already gone is no error."""
        procgroup.kill(self.proc)

    def cancel(self) -> None:
        """The run was cancelled: SIGTERM to the group (and its ranks), SIGKILL after the grace."""
        self.status = "cancelled"
        self.close_stdin()
        procgroup.stop(self.proc, WORKER_GRACE_S)

    def finish(self) -> JobOutcome:
        self.close_stdin()
        self.proc.wait()
        # An engine's helpers (vLLM's EngineCore) can outlive a worker that crashed, and torchrun's ranks a launcher
        # that was killed (they carry its marker): the group goes with it.
        procgroup.stop(self.proc, WORKER_GRACE_S)
        job, log = self.job, self.log
        completed = self.counter.poll()
        self.progress(completed)
        rc, status = self.proc.returncode, self.status
        text = log.read_text(encoding="utf-8", errors="replace")
        tail = [ln for ln in text.splitlines() if ln.strip()][-20:]
        failed_rank = None
        if self.launch is not None and status != "cancelled":
            if (first := group.first_failure(text)) is not None:
                # the failing rank's own exit status and words, not the launcher's generic ChildFailedError
                failed_rank, rc = first.rank, first.exitcode
                tail = group.rank_tail(self.launch.ranks_dir, first.local_rank) or tail
        meta = {}
        if Path(job.meta).is_file():
            meta = json.loads(Path(job.meta).read_text(encoding="utf-8"))
        if (
            status == "ok" and rc == USAGE and not meta
        ):  # the worker refused the job itself (an adapter that does not fit)
            raise HarnessError(
                next(
                    (ln.removeprefix("error: ") for ln in reversed(tail) if ln.startswith("error:")),
                    f"worker {job.name!r} refused its job; see {log}",
                ),
                USAGE,
            )
        if status == "ok" and rc != 0:
            status = "load-failed" if rc == INFRA and not meta else "crashed"
        follower = self.launch is not None and self.launch.env["HARNESS_NODE_RANK"] != "0"
        if status == "ok" and completed < job.expected and not follower:  # node 0 writes a group's records
            status = "crashed"
        return JobOutcome(
            name=job.name,
            profile=job.profile,
            status=status,
            returncode=rc,
            wall_s=time.monotonic() - self.start,
            expected=job.expected,
            completed=completed,
            records=job.records,
            log=str(log),
            stderr_tail=tail,
            meta=meta,
            tp=job.tp,
            failed_rank=failed_rank,
            error=cancel.reason() if status == "cancelled" else "",
        )


def run_job(
    job: Job,
    env: dict[str, str | None],
    timeout_s: float,
    run_dir: Path,
    progress: Callable[[int], None] = lambda n: None,
    parallel: Parallel | None = None,
) -> JobOutcome:
    """One job's worker (or worker group), waited for; once the run is cancelled, a job is not started and is
    reported as cancelled, and one running is stopped and reported so."""
    try:
        cancel.check()
        return _run_job(job, env, timeout_s, run_dir, progress, parallel)
    except cancel.Cancelled:  # before its worker started (one that did is stopped and reported by _run_job)
        return cancelled(job)
    finally:
        cancel.settle()  # what follows writes this job down: a first signal now is noted, and the next start sees it


def cancelled(job: Job, **kw: Any) -> JobOutcome:
    return JobOutcome.unstarted(job, "cancelled", error=cancel.reason(), **kw)


def _run_job(
    job: Job,
    env: dict[str, str | None],
    timeout_s: float,
    run_dir: Path,
    progress: Callable[[int], None],
    parallel: Parallel | None,
) -> JobOutcome:
    launch = None
    if job.tp > 1:
        parallel = parallel or Parallel()
        marker = f"{run_dir.name}/{job.name}/{os.getpid()}"
        launch = group.launch(
            job.name,
            job.tp,
            parallel,
            run_dir / "jobs" / f"{job.name}.json",
            run_dir / "logs" / f"{job.name}.ranks",
            marker,
            python=job.python,
        )
        if parallel.node_rank == 0 and (why := group.rendezvous_problem(launch.endpoint)):
            return JobOutcome.unstarted(job, "load-failed", stderr_tail=[f"error: {why}"])
    else:  # the reference degree of a multi-degree suite runs with its groups' thread count
        env = worker_env(env, parallel)
    w = _Worker(job, env, run_dir, progress, launch)
    try:
        while w.alive(timeout_s):
            time.sleep(POLL_S)
    except cancel.Cancelled:  # keep what it wrote; the report says it was cancelled
        w.cancel()
    except BaseException:  # Ctrl-C under pytest, or a bug: take the worker down with us, keep what it wrote
        w.kill()
        raise
    cancel.settle()  # it has ended: reading what it left must not be interrupted
    return w.finish()


def pass_sizes(job: Job) -> list[int]:
    """Sequences per pass (warm-up passes included), in the order the worker runs them."""
    return [
        sum(len(b.prompt_ids) for b in grp)
        for _, grp in itertools.groupby(job.batches, key=lambda b: (b.warmup, b.repeat))
    ]


def run_interleaved(
    jobs: list[tuple[Job, dict[str, str | None], Callable[[int], None]]], timeout_s: float, run_dir: Path
) -> list[JobOutcome]:
    """Profiles compared with each other take turns, pass by pass, each in its own long-lived process with its own
    environment: loads one after the other, then passes A B, B A, A B ... so that drift and a neighbour on the
    runner fall on both sides alike (and linear drift cancels). Each worker's time limit scales with the number of
    workers, since it waits while the others measure."""
    cancel.check()
    workers: list[_Worker] = []
    limit = timeout_s * len(jobs)

    def step(w: _Worker, done: Callable[[], bool]) -> None:
        w.go()
        while w.alive(limit) and not done():
            time.sleep(0.05)

    try:
        for job, env, progress in jobs:
            workers.append(_Worker(dataclasses.replace(job, paced=True), env, run_dir, progress))
        for w in workers:
            # defaults bind the loop variables (ruff B023); mypy cannot infer a lambda that has them
            step(w, lambda w=w: Path(w.job.meta).is_file())  # type: ignore[misc]
        need = list(itertools.accumulate(pass_sizes(workers[0].job)))
        for k, n in enumerate(need):
            for w in workers if k % 2 == 0 else workers[::-1]:
                step(w, lambda w=w, n=n: w.counter.poll() >= n)  # type: ignore[misc]
        for w in workers:
            w.close_stdin()
            while w.alive(limit):
                time.sleep(0.05)
    except cancel.Cancelled:  # every group has had SIGTERM already: each gets its grace, the report says cancelled
        for w in workers:
            w.cancel()
    except BaseException:
        for w in workers:
            w.kill()
        raise
    finally:
        cancel.settle()
    outs = {w.job.name: w.finish() for w in workers}
    return [outs.get(job.name) or cancelled(job) for job, _, _ in jobs]
