"""A run as a pipeline of small steps: load → plan → prepare → run → analyse → report.

Shared by the CLI and the pytest plugin, so both produce the same records, verdicts and reports.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import adapters, plan, profiles, report, runner
from .analysis import determinism
from .errors import CHECK_FAILED, INFRA, OK, USAGE, HarnessError
from .records import read_jsonl
from .suite import PROPERTIES, Suite, SuiteError
from .suite import load as load_suite_file


@dataclass
class Options:
    device: str | None = None
    model: str | None = None
    profiles: list[str] | None = None
    out: Path = Path("reports")
    timeout_s: float | None = None
    progress: bool = True


def load_suite(path: str | Path, opts: Options) -> Suite:
    try:
        suite = load_suite_file(path).with_overrides(model=opts.model, device=opts.device, profiles=opts.profiles)
    except SuiteError as e:
        raise HarnessError(str(e), USAGE) from None
    try:
        adapters.resolve(suite.model.adapter)
    except KeyError as e:
        raise HarnessError(f"{suite.path}: model.adapter: {e.args[0]}", USAGE) from None
    return suite


def new_run_dir(out: Path, suite: Suite) -> tuple[str, Path]:
    base = f"{time.strftime('%Y%m%d-%H%M%S')}-{suite.name}"
    run_id, n = base, 1
    while (out / run_id).exists():
        n += 1
        run_id = f"{base}-{n}"
    (out / run_id).mkdir(parents=True)
    return run_id, out / run_id


def _bar(desc: str, total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="seq", file=sys.stderr, mininterval=0.5 if sys.stderr.isatty() else 15,
                dynamic_ncols=True)


def run_profiles(suite: Suite, model_dir: Path, run_dir: Path, opts: Options) -> list[runner.JobOutcome]:
    batches = plan.expand(suite)
    outcomes = []
    for prof in suite.profiles:
        job = runner.make_job(suite, prof, batches, model_dir, run_dir)
        bar = _bar(f"{suite.name}:{prof.name}", plan.count_sequences(batches), opts.progress)

        def progress(n: int, bar=bar) -> None:
            if bar is not None and n != bar.n:
                bar.update(n - bar.n)

        try:
            outcomes.append(runner.run_job(job, dict(prof.env), opts.timeout_s or suite.timeout_s, run_dir, progress))
        finally:
            if bar is not None:
                bar.close()
    return outcomes


def analyse(suite: Suite, jobs: list[runner.JobOutcome]) -> list[determinism.Verdict]:
    props = [p for p in PROPERTIES if any(s.property == p for s in suite.schedules)]
    verdicts = []
    for j in jobs:
        records = list(read_jsonl(Path(j.records)))
        prof = suite.profile(j.profile)
        verdicts += [determinism.evaluate(records, prof.name, prop, prof.expectation(suite.model.device, prop))
                     for prop in props]
    return verdicts


def exit_code(jobs: list[runner.JobOutcome], verdicts: list[determinism.Verdict]) -> int:
    if any(not j.ok for j in jobs):
        return INFRA
    return OK if all(v.passed for v in verdicts) else CHECK_FAILED


def execute(suite: Suite, opts: Options) -> report.RunResult:
    started = time.time()
    model_dir = runner.prepare_model(suite.model.ref)
    run_id, run_dir = new_run_dir(opts.out, suite)
    jobs = run_profiles(suite, model_dir, run_dir, opts)
    verdicts = analyse(suite, jobs)
    notes = [f"profile {p.name}: {n}" for p in suite.profiles if (n := profiles.note(p, suite.model.device))]
    res = report.RunResult(suite=suite, run_id=run_id, run_dir=run_dir, jobs=jobs, verdicts=verdicts,
                           exit_code=exit_code(jobs, verdicts), notes=notes, started=started)
    report.write(res)
    return res
