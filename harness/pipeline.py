"""A run as a pipeline of small steps: load → plan → prepare → run → analyse → report.

Shared by the CLI and the pytest plugin, so both produce the same records, verdicts and reports.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import adapters, baselines, plan, profiles, report, runner
from .analysis import baseline as baseline_check
from .analysis import determinism, latency
from .errors import CHECK_FAILED, INFRA, OK, USAGE, HarnessError
from .records import Record, read_jsonl
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
    adapter: str | None = None
    baselines: Path = Path("baselines")
    update_baselines: bool = False
    reason: str = ""


def load_suite(path: str | Path, opts: Options) -> Suite:
    if opts.update_baselines and not opts.reason.strip():
        raise HarnessError("--update-baselines needs --reason 'why these outputs and timings are the new truth'", USAGE)
    try:
        suite = load_suite_file(path).with_overrides(model=opts.model, device=opts.device, profiles=opts.profiles,
                                                     adapter=opts.adapter)
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


def analyse(suite: Suite, records: dict[str, list[Record]]) -> list[determinism.Verdict]:
    props = [p for p in PROPERTIES if any(s.property == p for s in suite.schedules)]
    verdicts = []
    for name, recs in records.items():
        prof = suite.profile(name)
        verdicts += [determinism.evaluate(recs, prof.name, prop, prof.expectation(suite.model.device, prop))
                     for prop in props]
    return verdicts


def against_baselines(suite: Suite, jobs: list[runner.JobOutcome], records: dict[str, list[Record]],
                      samples: dict[str, dict[str, list[float]]], opts: Options) -> report.BaselineResult:
    """Outputs (and, for suites with [perf], latency) against the stored baselines; or write new ones when asked."""
    out = report.BaselineResult()
    sdir = baselines.suite_dir(suite.name, suite.model.ref, suite.model_overridden)
    for j in jobs:
        if "device" not in j.meta:
            continue  # the worker never loaded: nothing to compare or store
        key = baselines.device_key(j.meta["device"])
        out.device_key = key
        target = baselines.path_for(opts.baselines, key, sdir, j.profile)
        if opts.update_baselines:
            if not j.ok:
                out.notes.append(f"baseline for {j.profile} not written: {j.describe()}")
                continue
            load_s = sum(j.meta.get("load_s", {}).values())
            b = baselines.build(suite=suite.name, profile=j.profile, case_hash=suite.case_hash, device_key=key,
                                environment={"device": j.meta["device"], "host": j.meta.get("host", {}),
                                             "env": j.meta.get("env", {})}, reason=opts.reason,
                                references=baseline_check.references(records[j.profile]),
                                latency=samples[j.profile], load_s=[load_s] if load_s else [])
            baselines.write(target, b)
            out.verdicts.append(determinism.Verdict(profile=j.profile, property="baseline", expect="-", status="updated",
                                                    reason=f"written to {target} ({opts.reason})", sequences=len(b.outputs),
                                                    bitwise=0, token_identical=0))
            continue
        found, same_key = baselines.find(opts.baselines, key, sdir, j.profile, suite.model.device)
        if found is None:
            out.verdicts.append(baseline_check.missing(j.profile, str(target)))
            continue
        try:
            b = baselines.load(found, suite.case_hash)
        except baselines.BaselineError as e:
            out.verdicts.append(baseline_check.not_comparable(j.profile, str(e)))
            continue
        note = "" if same_key else f"baseline made under device key {b.device_key}, this run is {key}: tokens compared, not bits"
        out.verdicts.append(baseline_check.evaluate(records[j.profile], lambda pid: b.reference(pid) if pid in b.outputs else None,
                                                    j.profile, same_key, note))
        out.sources[j.profile] = f"{found} ({b.provenance.get('created', '?')}, {b.provenance.get('reason', '')!r})"
        if suite.perf is not None:
            before = {**b.latency, **({"load": b.load_s} if b.load_s else {})}
            after = dict(samples[j.profile])
            if "load_s" in j.meta:
                after["load"] = [sum(j.meta["load_s"].values())]
            out.changes[j.profile] = latency.gate(before, after, dict(suite.perf.thresholds), suite.perf.threshold,
                                                  suite.perf.alpha, seed=suite.seed)
    return out


def determinism_cost(suite: Suite, samples: dict[str, dict[str, list[float]]]):
    """The deterministic profile's latency relative to the default one, measured in the same run."""
    if suite.perf is None or "default" not in samples or "deterministic" not in samples:
        return []
    return latency.gate(samples["default"], samples["deterministic"], dict(suite.perf.thresholds), suite.perf.threshold,
                        suite.perf.alpha, seed=suite.seed)


def exit_code(jobs: list[runner.JobOutcome], verdicts: list[determinism.Verdict], base: report.BaselineResult) -> int:
    if any(not j.ok for j in jobs):
        return INFRA
    if any(v.status == "not comparable" for v in base.verdicts):
        return USAGE
    regressed = any(c.status == "regressed" for cs in base.changes.values() for c in cs)
    return OK if all(v.passed for v in verdicts + base.verdicts) and not regressed else CHECK_FAILED


def execute(suite: Suite, opts: Options) -> report.RunResult:
    started = time.time()
    model_dir = runner.prepare_model(suite.model.ref)
    run_id, run_dir = new_run_dir(opts.out, suite)
    jobs = run_profiles(suite, model_dir, run_dir, opts)
    records = {j.profile: [r for r in read_jsonl(Path(j.records)) if not r.warmup] for j in jobs}
    verdicts = analyse(suite, records)
    samples = {name: latency.samples(recs) for name, recs in records.items()}
    base = against_baselines(suite, jobs, records, samples, opts)
    notes = [f"profile {p.name}: {n}" for p in suite.profiles if (n := profiles.note(p, suite.model.device))]
    res = report.RunResult(suite=suite, run_id=run_id, run_dir=run_dir, jobs=jobs, verdicts=verdicts,
                           exit_code=exit_code(jobs, verdicts, base), notes=notes + base.notes, started=started,
                           baseline=base, latency=samples, cost=determinism_cost(suite, samples))
    report.write(res)
    return res
