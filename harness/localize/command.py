"""`harness localize RUN_DIR`: pick the cases, replay them in a worker with each job's environment, write
localize.json, print one line per case.

Exit 0 when every case was replayed (whether or not a module differs), 2 for bad input (no records, a profile,
prompt or batch not in the run, a case that is bitwise, an engine the harness cannot hook), 3 when the replay
worker fails (the model or device will not come up, a crash, a timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import atomic, group, runner
from ..errors import INFRA, USAGE, HarnessError
from ..jobs import Job, env_path, load_env
from ..registry import ADAPTERS, RegistryError
from ..suite import Parallel
from . import UNHOOKABLE, cases, summary

SCHEMA_VERSION = 1
FOLDER = "localize"  # in the run folder: each replay's spec, result and log
REMOTE = {"endpoint": "a server", "vllm": "vLLM's engine"}  # built-in adapters whose model the harness does not hold


@dataclass(frozen=True)
class Request:
    """What to localise in a run folder: the command line's choices, or the end of a run's (auto)."""

    profile: str | None = None
    prompt: str | None = None
    batch: str | None = None
    max_cases: int = 3
    adapter: str | None = None  # replay with this adapter instead of the job's
    dump: Path | None = None
    timeout: float = 1800.0
    wanted: frozenset[tuple[str, str]] | None = None  # (profile, property) pairs to look in; None: every pair

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Request:
        return cls(args.profile, args.prompt, args.batch, args.max_cases, args.adapter, args.dump, args.timeout)


def engine(job: Job, adapter: str) -> str:
    """The engine the model runs in when the harness cannot hold it (a server, vLLM), else "". A custom adapter
    without the hf adapter's forward path is found out by the worker, which says the same line."""
    if job.endpoint is not None:
        return "the server"
    try:
        target = ADAPTERS.resolve(adapter)
    except RegistryError as e:  # the run's adapter is not installed here, or --adapter names none
        raise HarnessError(f"profile {job.profile!r}: {e}", USAGE) from None
    return next((eng for name, eng in REMOTE.items() if target == ADAPTERS.builtin[name]), "")


def refusal(job: Job, adapter: str, where: str) -> str:
    return UNHOOKABLE.format(what=f"profile {job.profile!r} (adapter {adapter!r})", engine=where or "its engine")


def job_env(run_dir: Path, run: cases.JobRun) -> dict[str, str | None]:
    """What the job's worker got on top of os.environ (jobs/<job>.env.json); a run folder written before that file
    falls back on the variables the worker recorded in its meta (records/<job>.meta.json: the ones that shape
    determinism, ATB_* OMP_* MKL_* ...)."""
    env = load_env(env_path(run.path))
    if env is not None:
        return env
    try:
        meta = json.loads((run_dir / "records" / f"{run.job.name}.meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    from ..envinfo import REDACTED

    recorded = meta.get("env", {}) if isinstance(meta, dict) else {}
    return {k: str(v) for k, v in recorded.items() if v != REDACTED and not k.startswith("HARNESS_")}


def replay(run_dir: Path, run: cases.JobRun, todo: list[cases.Case], args: Request, first: int) -> dict[str, Any]:
    """One worker for one job's cases: its result file's content. A TP N job's cases (tp-invariance): its worker
    group first, then its TP 1 twin's worker against what the group kept."""
    if todo and todo[0].tp > 1:
        return replay_tp(run_dir, run, todo, args, first)
    return _replay(run_dir, run, todo, args, first, run.job.name, {})


def _replay(
    run_dir: Path,
    run: cases.JobRun,
    todo: list[cases.Case],
    args: Request,
    first: int,
    name: str,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """`run`'s replay worker with its environment; `name` names its files in the localize folder, `extra` joins its
    spec."""
    folder = run_dir / FOLDER
    folder.mkdir(exist_ok=True)
    spec_path, out, log = folder / f"{name}.spec.json", folder / f"{name}.result.json", folder / f"{name}.log"
    out.unlink(missing_ok=True)
    adapter = args.adapter or run.job.adapter
    spec = {
        "job": str(run.path),
        "adapter": args.adapter or "",
        "cases": [c.to_dict() for c in todo],
        "dump": str(args.dump) if args.dump else "",
        "first": first,
        "out": str(out),
        "unhookable": refusal(run.job, adapter, engine(run.job, adapter)),
        **extra,
    }
    atomic.write_json(spec_path, spec)
    argv = [run.job.python or sys.executable, "-m", "harness.localize.worker", str(spec_path)]  # the job's stack
    try:
        p = runner.run_child(argv, args.timeout, job_env(run_dir, run))
    except subprocess.TimeoutExpired:
        raise HarnessError(
            f"the replay of job {name!r} timed out after {args.timeout:.0f}s; see {log}", INFRA
        ) from None
    log.write_text(p.stdout + p.stderr, encoding="utf-8")
    said = next((ln.removeprefix("error: ") for ln in reversed(p.stderr.splitlines()) if ln.startswith("error: ")), "")
    if p.returncode == USAGE:
        raise HarnessError(said or f"the replay of job {name!r} refused its cases; see {log}", USAGE)
    if p.returncode != 0 or not out.is_file():
        tail = said or next((ln for ln in reversed(p.stderr.splitlines()) if ln.strip()), "no output")
        raise HarnessError(f"the replay of job {name!r} failed (exit {p.returncode}): {tail}; see {log}", INFRA)
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return result


def replay_tp(run_dir: Path, run: cases.JobRun, todo: list[cases.Case], args: Request, first: int) -> dict[str, Any]:
    """tp-invariance cases of the TP N job `run`: its worker group keeps rank 0's module outputs (localize/<job>.case
    <N>.pt), then the TP 1 job's worker replays the reference and compares; the captures are removed once compared."""
    ref_path = run_dir / "jobs" / f"{todo[0].reference_job}.json"
    try:
        ref = cases.JobRun(Job.from_json(ref_path.read_text(encoding="utf-8")), ref_path, [])
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise HarnessError(f"{ref_path}: not a job file the harness wrote ({type(e).__name__}: {e})", USAGE) from None
    folder = run_dir / FOLDER
    folder.mkdir(exist_ok=True)
    captures = [folder / f"{run.job.name}.case{first + i + 1}.pt" for i in range(len(todo))]
    for c in captures:
        c.unlink(missing_ok=True)
    t0 = time.monotonic()
    got = _group(run_dir, run, todo, args, captures)
    held = {"tp": run.job.tp, "load_s": got["load_s"], "seconds": time.monotonic() - t0}
    result = _replay(run_dir, ref, todo, args, first, run.job.name, {"captures": [str(c) for c in captures]})
    for c in captures:
        c.unlink(missing_ok=True)
    result["results"] = [{**r, "group": held} for r in result["results"]]
    return result


def _group(
    run_dir: Path, run: cases.JobRun, todo: list[cases.Case], args: Request, captures: list[Path]
) -> dict[str, Any]:
    """The TP N job's worker group (`python -m harness.localize.tp` under torchrun, as the run launched its workers,
    with the environment its ranks got): rank 0 writes one capture per case. Its result file's content."""
    folder, name = run_dir / FOLDER, run.job.name
    spec_path, out = folder / f"{name}.group.spec.json", folder / f"{name}.group.result.json"
    log, ranks = folder / f"{name}.group.log", folder / f"{name}.ranks"
    out.unlink(missing_ok=True)
    shutil.rmtree(ranks, ignore_errors=True)  # an earlier replay's rank logs would be read as this one's
    adapter = args.adapter or run.job.adapter
    spec = {
        "job": str(run.path),
        "adapter": args.adapter or "",
        "cases": [c.to_dict() for c in todo],
        "captures": [str(c) for c in captures],
        "out": str(out),
        "unhookable": refusal(run.job, adapter, engine(run.job, adapter)),
    }
    atomic.write_json(spec_path, spec)
    marker = f"{run_dir.resolve().name}/localize/{name}/{os.getpid()}"
    par = Parallel(tp=(1, run.job.tp), collective_timeout_s=run.job.collective_timeout_s)
    launch = group.launch(
        name, run.job.tp, par, spec_path, ranks, marker, module="harness.localize.tp", python=run.job.python
    )
    # the ranks' recorded variables (the profile's flags, their thread count) over the launch's; a fresh marker
    recorded = {k: v for k, v in job_env(run_dir, run).items() if not k.startswith("HARNESS_")}
    try:
        p = runner.run_child(launch.argv, args.timeout, {**launch.env, **recorded}, marker=marker)
    except subprocess.TimeoutExpired:
        raise HarnessError(
            f"the worker group replaying job {name!r} timed out after {args.timeout:.0f}s; see {ranks}", INFRA
        ) from None
    log.write_text(p.stdout + p.stderr, encoding="utf-8")
    if p.returncode == 0 and out.is_file():
        result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
        return result
    fail = group.first_failure(p.stdout + p.stderr)
    tail = group.rank_tail(ranks, fail.local_rank) if fail else []
    said = next((ln.removeprefix("error: ") for ln in reversed(tail) if ln.startswith("error: ")), "")
    code = fail.exitcode if fail else p.returncode
    if code == USAGE:
        raise HarnessError(said or f"the worker group replaying job {name!r} refused its cases; see {ranks}", USAGE)
    last = said or next((ln for ln in reversed(tail or (p.stdout + p.stderr).splitlines()) if ln.strip()), "no output")
    who = f"rank {fail.rank}, " if fail else ""
    raise HarnessError(
        f"the worker group replaying job {name!r} failed ({who}exit {code}): {last}; see {ranks if fail else log}",
        INFRA,
    )


def localize_run(run_dir: Path, req: Request) -> dict[str, Any]:
    """Pick the cases, replay them job by job, write localize.json: its content. HarnessError: bad input (USAGE) or a
    replay worker that failed (INFRA)."""
    runs = cases.read_run(run_dir)
    for r in runs:  # an engine that cannot be hooked: one line before any case is looked for or worker started
        adapter = req.adapter or r.job.adapter
        if (req.profile in (None, r.job.profile)) and (where := engine(r.job, adapter)):
            raise HarnessError(refusal(r.job, adapter, where), USAGE)
    chosen = cases.select(
        runs, profile=req.profile, prompt=req.prompt, batch=req.batch, max_cases=req.max_cases, wanted=req.wanted
    )
    by_job = {r.job.name: r for r in runs}
    entries: list[dict[str, Any]] = []
    t0 = time.monotonic()
    grouped: dict[str, list[cases.Case]] = defaultdict(list)
    for c in chosen:
        grouped[c.job].append(c)
    done = 0
    for job_name, todo in grouped.items():
        got = replay(run_dir, by_job[job_name], todo, req, done)
        for c, res in zip(todo, got["results"]):
            entry = {"case": c.shown(), **res}
            entry = {"summary": summary.line(entry), **entry, "load_s": got["load_s"]}
            entries.append(entry)
        done += len(todo)
    doc = {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_dir.resolve().name,
        "seconds": time.monotonic() - t0,
        "localization": entries,
    }
    atomic.write_json(run_dir / "localize.json", doc)
    return doc


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    doc = localize_run(run_dir, Request.from_args(args))
    entries = doc["localization"]
    if not entries:
        print(f"nothing to localise: every compared sequence in {run_dir} is bitwise identical to its reference")
    for e in entries:
        print(e["summary"])
    print(f"localize.json: {run_dir / 'localize.json'} ({len(entries)} case(s), {doc['seconds']:.1f} s)")
    return 0
