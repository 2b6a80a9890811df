"""A determinism or served run against the stored baselines: outputs at the level the baseline's tier asks for,
latency against the baseline's run history under one false-alarm budget, or new baselines when asked."""

from __future__ import annotations

import dataclasses

from . import baselines, devicekey, envinfo, processes, report, timing
from .analysis import baseline as baseline_check
from .analysis import determinism, latency
from .jobs import JobOutcome
from .options import Options
from .records import Record
from .suite import Suite

REF = "\0reference:"  # keys the in-run reference rows apart from the job names in one family


def against_baselines(
    suite: Suite,
    jobs: list[JobOutcome],
    records: dict[str, list[Record]],
    samples: dict[str, dict[str, list[float]]],
    opts: Options,
) -> report.BaselineResult:
    """Outputs (and, for suites with [perf], latency) against the stored baselines; or write new ones when asked.
    What the outputs must meet depends on how the baseline's key relates to this run's (suite [baselines]);
    timings are gated only on the same hardware."""
    out = report.BaselineResult()
    store = baselines.Store(opts.baselines)
    sdir = baselines.suite_dir(suite.name, suite.model.ref, suite.model_overridden)
    for j in jobs:
        if "device" not in j.meta:
            continue  # the worker never loaded: nothing to compare or store
        before = len(out.verdicts)
        _one(suite, j, records, samples, opts, store, sdir, out)
        # a worker group's verdicts carry its degree (baseline files are per job: <profile>-tp3.json)
        out.verdicts[before:] = [dataclasses.replace(v, tp=j.tp) for v in out.verdicts[before:]]
    if suite.perf is not None:
        _decide(suite, jobs, records, out)
    if out.ungated_note:
        out.notes.append(out.ungated_note)  # said once for the run, not once per profile
    return out


def _one(
    suite: Suite,
    j: JobOutcome,
    records: dict[str, list[Record]],
    samples: dict[str, dict[str, list[float]]],
    opts: Options,
    store: baselines.Store,
    sdir: str,
    out: report.BaselineResult,
) -> None:
    key = devicekey.device_key(j.meta["device"])
    out.device_key = str(key)
    if opts.update_baselines:
        if v := _update(suite, store, key, sdir, j, records[j.name], samples[j.name], opts, out):
            out.verdicts.append(v)
        return
    found = store.check(key, sdir, j.name, suite.case_hash)
    if isinstance(found, baselines.Missing):
        out.verdicts.append(baseline_check.missing(j.profile, baselines.missing_reason(found, key, suite.path)))
        return
    if isinstance(found, baselines.Unusable):
        out.verdicts.append(baseline_check.not_comparable(j.profile, found.reason))
        return
    b, expect = found.baseline, suite.baselines.level(found.tier)
    note = (
        ""
        if found.tier == "same key"
        else (
            f"no baseline for this {'hardware' if found.tier == 'other hardware' else 'software'} ({key}); "
            f"compared with {found.key} at level {expect}; {baselines.record_hint(suite.path)}"
        )
    )
    v = baseline_check.evaluate(
        records[j.name],
        lambda pid: b.reference(pid) if pid in b.outputs else None,
        j.profile,
        expect,
        note,
        k=suite.generation.k,
    )
    then = b.environment.get("device", {})
    if not v.passed and (changed := envinfo.changes(then, j.meta["device"])):
        pin = str(j.meta["device"].get("pin", ""))
        # a pin both hosts honoured and bits that still moved: the pin does not cover what differs between them
        under = f"; {pin} was honoured by both hosts, yet the outputs differ" if pin and pin == then.get("pin") else ""
        v = dataclasses.replace(v, reason=f"{v.reason}{under}; since the baseline: {', '.join(changed)}")
    out.verdicts.append(v)
    out.sources[j.name] = found.describe()
    out.used[j.name] = baselines.BaselineUse.of(found)
    if suite.perf is None:
        return
    # under a CPU pin one key spans machines: timings still compare only on one machine type
    same = found.same_hardware and devicekey.same_machine(then, j.meta["device"])
    if not same:
        theirs, ours = (devicekey.device_key(d, pinned=False).hardware for d in (then, j.meta["device"]))
        out.ungated_note = (
            f"latency shown, not gated: the baselines were measured on other hardware "
            f"({theirs}; this run {ours}), and timings compare only on one "
            f"hardware; {baselines.record_hint(suite.path)}"
        )
    rows = timing.against(suite.perf, b, records[j.name], j.meta, suite.seed)
    out.changes[j.name] = rows if same else timing.ungated(rows)
    out.gated[j.name] = same
    out.found[j.name] = b


def _decide(suite: Suite, jobs: list[JobOutcome], records: dict[str, list[Record]], out: report.BaselineResult) -> None:
    """One false-alarm budget for every gated row of the run, against the stored baselines and against the reference
    measured in the run alike; a baseline row that only noisy passes decide is `noisy`."""
    assert suite.perf is not None
    gated = {p: cs for p, cs in out.changes.items() if out.gated.get(p)}
    against_ref = {
        f"{REF}{p}": cs
        for p, cs in timing.reference(suite.perf, {j.profile: j for j in jobs}, records, suite.seed).items()
    }
    decided, out.alpha_row = timing.decide({**gated, **against_ref}, suite.perf.budget)
    out.reference = {k.removeprefix(REF): decided[k] for k in against_ref}
    gated = {**gated, **against_ref}
    for j in jobs:
        if j.name not in decided or j.name not in out.found:
            continue
        noisy = timing.noisy_passes(j.meta, suite.perf.noise_share)
        without = (
            timing.against(
                suite.perf,
                out.found[j.name],
                [r for r in records[j.name] if r.repeat not in noisy],
                j.meta,
                suite.seed,
            )
            if noisy
            else []
        )
        out.changes[j.name] = timing.recheck(decided[j.name], without, noisy, out.alpha_row)
    if gated:
        rows = sum(len(cs) for cs in gated.values())
        out.notes.append(
            f"false-alarm budget {suite.perf.budget:g} per run over {rows} gated latency rows "
            f"(Holm-Bonferroni; the smallest p is compared with {out.alpha_row:.2g})"
        )


def _update(
    suite: Suite,
    store: baselines.Store,
    key: devicekey.DeviceKey,
    sdir: str,
    j: JobOutcome,
    records: list[Record],
    samples: dict[str, list[float]],
    opts: Options,
    out: report.BaselineResult,
) -> determinism.Verdict | None:
    if not j.ok or any(r.failed for r in records):
        why = j.describe() if not j.ok else "some requests failed, so some outputs are missing"
        out.notes.append(f"baseline for {j.name} not written: {why}")
        return None
    load_s = sum(j.meta.get("load_s", {}).values())
    b = baselines.build(
        suite=suite.name,
        profile=j.profile,
        case_hash=suite.case_hash,
        device_key=key,
        environment={
            "device": j.meta["device"],
            "host": j.meta.get("host", {}),
            "env": j.meta.get("env", {}),
            "model_files": j.meta.get("model_files", {}),  # the doctor compares tokenizer.json with it
        },
        reason=opts.reason,
        references=baseline_check.references(records),
        latency=samples,
        load_s=[load_s] if load_s else [],
    )
    if suite.perf is not None:
        if suite.perf.units > 1 and suite.endpoint is None:  # what the in-run reference tests: each process's median
            b.processes = [processes.medians(records, suite.perf.repeats, latency.sequence_metrics)]
        prev = store.check(key, sdir, j.name, suite.case_hash)
        baselines.with_history(b, prev, j.meta["device"], opts.fresh_runs)
    target = store.save(key, sdir, j.name, b)
    if isinstance(target, baselines.NotWritten):
        out.unwritable = out.unwritable or target.disk
        return baseline_check.not_comparable(j.profile, target.reason)
    out.written[j.name] = target
    return determinism.Verdict(
        profile=j.profile,
        property="baseline",
        expect="-",
        status="updated",
        reason=f"written to {target} ({opts.reason})",
        sequences=len(b.outputs),
        bitwise=0,
        token_identical=0,
        level=determinism.lowest_level(records),
    )
