"""The determinism kind (and its served variant) as a pipeline of small steps:
load → plan → prepare → run → analyse → report.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from . import adapters, baselines, hostnoise, perfgate, plan, profiles, report, runner
from .analysis import baseline as baseline_check
from .analysis import determinism, latency
from .errors import USAGE, HarnessError
from .jobs import JobOutcome
from .records import Record, read_jsonl
from .run import Check, Options, Outcome, Progress, RunDir, exit_code
from .suite import PROPERTIES, Suite, SuiteError, parse


def load_suite(path: str | Path, data: dict, opts: Options) -> Suite:
    try:
        suite = parse(data, str(path), base=Path(path).parent).with_overrides(
            model=opts.model, device=opts.device, profiles=opts.profiles, adapter=opts.adapter, endpoint=opts.endpoint
        )
    except SuiteError as e:
        raise HarnessError(str(e), USAGE) from None
    try:
        adapters.resolve(suite.model.adapter)
    except KeyError as e:
        raise HarnessError(f"{suite.path}: model.adapter: {e.args[0]}", USAGE) from None
    if suite.endpoint is not None:
        preflight(suite)
        if suite.server is None and len(suite.profiles) > 1:
            # A running server has one environment: one profile describes it; choose which with --profile.
            suite = dataclasses.replace(suite, profiles=suite.profiles[:1])
    return suite


def preflight(suite: Suite) -> None:
    """Everything about a served suite that can be wrong before a server starts: one line each, exit 2."""
    import ssl

    try:
        from . import wire

        kwargs = wire.client_kwargs(suite.endpoint)
    except ImportError as e:
        raise HarnessError(
            f"{suite.path}: serving needs httpx ({e}); pip install 'llm-determinism-harness[serving]'", USAGE
        ) from None
    except ValueError as e:
        raise HarnessError(f"{suite.path}: {e}", USAGE) from None
    except (ssl.SSLError, OSError) as e:
        raise HarnessError(
            f"{suite.path}: endpoint.client_cert / client_key / ca_bundle: cannot load ({e})", USAGE
        ) from None
    del kwargs
    ep = suite.endpoint
    for prompt in map(dataclasses.asdict, suite.prompts):
        body = wire.request_body(
            ep,
            prompt,
            max_tokens=suite.generation.max_new_tokens,
            top_logprobs=suite.generation.top_logprobs,
            seed=suite.seed,
            model=ep.model,
        )
        if err := wire.size_error(prompt, body, ep.max_body_bytes):
            raise HarnessError(f"{suite.path}: {err}", USAGE)


def run_profiles(suite: Suite, model_dir: Path, run_dir: Path, opts: Options) -> list[JobOutcome]:
    batches = plan.expand(suite)
    timeout = opts.timeout_s or suite.timeout_s
    if suite.perf is not None and suite.perf.interleave and suite.endpoint is None and len(suite.profiles) > 1:
        bars = [
            Progress(f"{suite.name}:{p.name}", plan.count_sequences(batches), "seq", opts.progress)
            for p in suite.profiles
        ]
        try:
            return runner.run_interleaved(
                [
                    (runner.make_job(suite, p, batches, model_dir, run_dir), dict(p.env), bar.to)
                    for p, bar in zip(suite.profiles, bars)
                ],
                timeout,
                run_dir,
            )
        finally:
            for bar in bars:
                bar.close()
    outcomes = []
    for prof in suite.profiles:
        job = runner.make_job(suite, prof, batches, model_dir, run_dir)
        with Progress(f"{suite.name}:{prof.name}", plan.count_sequences(batches), "seq", opts.progress) as bar:
            if suite.endpoint is None:
                outcomes.append(runner.run_job(job, dict(prof.env), timeout, run_dir, bar.to))
            else:
                outcomes.append(runner.run_served(suite, prof, job, model_dir, timeout, run_dir, bar.to))
    return outcomes


def analyse(suite: Suite, records: dict[str, list[Record]]) -> list[determinism.Verdict]:
    props = [p for p in PROPERTIES if any(s.property == p for s in suite.schedules)]
    verdicts = []
    for name, recs in records.items():
        prof = suite.profile(name)
        verdicts += [
            determinism.evaluate(
                recs, prof.name, prop, prof.expectation(suite.model.device, prop), k=suite.generation.k
            )
            for prop in props
        ]
    return verdicts


def _record_hint(suite: Suite) -> str:
    return f"record one for this host with: harness run {suite.path} --update-baselines --reason '...'"


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
        key = baselines.device_key(j.meta["device"])
        out.device_key = str(key)
        if opts.update_baselines:
            if v := _update(suite, store, key, sdir, j, records[j.profile], samples[j.profile], opts, out):
                out.verdicts.append(v)
            continue
        found = store.check(key, sdir, j.profile, suite.case_hash)
        if isinstance(found, baselines.Missing):
            out.verdicts.append(
                baseline_check.missing(
                    j.profile,
                    f"no baseline for {found.path.parent.parent.name} "
                    f"(nor any {key.device} one); {_record_hint(suite)}",
                )
            )
            continue
        if isinstance(found, baselines.Unusable):
            out.verdicts.append(baseline_check.not_comparable(j.profile, found.reason))
            continue
        b, expect = found.baseline, suite.baselines.level(found.tier)
        note = (
            ""
            if found.tier == "same key"
            else (
                f"no baseline for this {'hardware' if found.tier == 'other hardware' else 'software'} ({key}); "
                f"compared with {found.key} at level {expect}; {_record_hint(suite)}"
            )
        )
        v = baseline_check.evaluate(
            records[j.profile],
            lambda pid, b=b: b.reference(pid) if pid in b.outputs else None,
            j.profile,
            expect,
            note,
            k=suite.generation.k,
        )
        if not v.passed and (
            changed := baselines.environment_changes(b.environment.get("device", {}), j.meta["device"])
        ):
            v = dataclasses.replace(v, reason=f"{v.reason}; since the baseline: {', '.join(changed)}")
        out.verdicts.append(v)
        out.sources[j.profile] = found.describe()
        if suite.perf is None:
            continue
        if not found.same_hardware:
            out.ungated_note = (
                f"latency shown, not gated: the baselines were measured on other hardware "
                f"({found.key.hardware}; this run {key.hardware}), and timings compare only on one "
                f"hardware; {_record_hint(suite)}"
            )
        rows = perfgate.against(suite.perf, b, records[j.profile], j.meta, suite.seed)
        out.changes[j.profile] = rows if found.same_hardware else perfgate.ungated(rows)
        out.gated[j.profile] = found.same_hardware
        out.found[j.profile] = b
    if suite.perf is not None:
        _decide(suite, jobs, records, out)
    if out.ungated_note:
        out.notes.append(out.ungated_note)  # said once for the run, not once per profile
    return out


def _decide(suite: Suite, jobs: list[JobOutcome], records: dict[str, list[Record]], out: report.BaselineResult) -> None:
    """One false-alarm budget for every gated row of the run; a row that only noisy passes decide is `noisy`."""
    assert suite.perf is not None
    gated = {p: cs for p, cs in out.changes.items() if out.gated.get(p)}
    decided, out.alpha_row = perfgate.decide(gated, suite.perf.budget)
    for j in jobs:
        if j.profile not in decided:
            continue
        noisy = perfgate.noisy_passes(j.meta, suite.perf.noise_share)
        without = (
            perfgate.against(
                suite.perf,
                out.found[j.profile],
                [r for r in records[j.profile] if r.repeat not in noisy],
                j.meta,
                suite.seed,
            )
            if noisy
            else []
        )
        out.changes[j.profile] = perfgate.recheck(decided[j.profile], without, noisy, out.alpha_row)
    if gated:
        rows = sum(len(cs) for cs in gated.values())
        out.notes.append(
            f"false-alarm budget {suite.perf.budget:g} per run over {rows} gated latency rows "
            f"(Holm-Bonferroni; the smallest p is compared with {out.alpha_row:.2g})"
        )


def _update(
    suite: Suite,
    store: baselines.Store,
    key: baselines.DeviceKey,
    sdir: str,
    j: JobOutcome,
    records: list[Record],
    samples: dict[str, list[float]],
    opts: Options,
    out: report.BaselineResult,
) -> determinism.Verdict | None:
    if not j.ok or any(r.failed for r in records):
        why = j.describe() if not j.ok else "some requests failed, so some outputs are missing"
        out.notes.append(f"baseline for {j.profile} not written: {why}")
        return None
    load_s = sum(j.meta.get("load_s", {}).values())
    b = baselines.build(
        suite=suite.name,
        profile=j.profile,
        case_hash=suite.case_hash,
        device_key=key,
        environment={"device": j.meta["device"], "host": j.meta.get("host", {}), "env": j.meta.get("env", {})},
        reason=opts.reason,
        references=baseline_check.references(records),
        latency=samples,
        load_s=[load_s] if load_s else [],
    )
    if suite.perf is not None:
        # Timings accumulate run by run under one key, so the gate can see how far runs drift on this runner.
        prev = store.check(key, sdir, j.profile, suite.case_hash)
        keep = isinstance(prev, baselines.Found) and prev.tier == "same key" and not opts.fresh_runs
        old = prev.baseline if keep and isinstance(prev, baselines.Found) else None
        b.runs = ((old.runs or [old.run_medians_now()]) if old else []) + [
            baselines.medians({**samples, **({"load": [load_s]} if load_s else {})})
        ]
        b.runs = b.runs[-baselines.MAX_RUNS :]
        if old:
            b.thresholds, b.calibration = old.thresholds, old.calibration
    try:
        target = store.update(key, sdir, j.profile, b)
    except HarnessError as e:  # a name that leads out of --baselines: input, not the disk
        return baseline_check.not_comparable(j.profile, f"{e}; the run's report is kept")
    except OSError as e:
        out.unwritable = True
        return baseline_check.not_comparable(
            j.profile,
            f"{store.path(key, sdir, j.profile)}: cannot write the baseline "
            f"({e.strerror or e}); the run's report is kept",
        )
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


def noise_notes(suite: Suite, jobs: list[JobOutcome]) -> list[str]:
    """Every measured pass that ran beside other work, and what that work was."""
    if suite.perf is None:
        return []
    return [
        f"profile {j.profile} pass {k} ran beside other work: {hostnoise.describe(p)}"
        for j in jobs
        for k, p in sorted(perfgate.noisy_passes(j.meta, suite.perf.noise_share).items())
    ]


def input_limit(jobs: list[JobOutcome]) -> list[determinism.Verdict]:
    """The deliberate oversized request (endpoint.oversize_check): a 4xx with a message passes."""
    out = []
    for j in jobs:
        o = j.meta.get("oversize")
        if o is None:
            continue
        reason = f"{o['sent_bytes']} bytes against a limit of {o['limit_bytes']}: " + (
            f"HTTP {o['status']}: {o['message']}" if o["passed"] else o["message"]
        )
        out.append(
            determinism.Verdict(
                profile=j.profile,
                property="input-limit",
                expect="4xx",
                status="pass" if o["passed"] else "fail",
                reason=reason,
                sequences=1,
                bitwise=0,
                token_identical=0,
            )
        )
    return out


def served_notes(suite: Suite, jobs: list[JobOutcome]) -> list[str]:
    if suite.endpoint is None:
        return []
    ep, notes = suite.endpoint, []
    if suite.server is None:
        p = suite.profiles[0]
        flags = ", ".join(f"{k}={v}" for k, v in p.env) or "none"
        notes.append(
            f"endpoint {ep.base_url} was already running: the harness could not apply profile {p.name!r}'s "
            f"flags ({flags}) to it; its results describe whatever environment that server was started with"
        )
    if not ep.verify:
        notes.append("TLS verification is off (endpoint.verify = false): the server's identity was not checked")
    for j in jobs:
        d = j.meta.get("device", {})
        if d.get("device") != "endpoint":
            continue
        level = {
            "logprobs": "logprobs with top logprobs: compared like logits fingerprints (bitwise = identical logprobs)",
            "text": "text only: outputs compared as text, character by character; bits and margins cannot be seen",
        }
        notes.append(
            f"profile {j.profile}: the server at {d.get('url')} returned {level.get(d.get('level'), d.get('level'))}"
        )
        if d.get("dropped_fields"):
            notes.append(
                f"profile {j.profile}: the server refused {', '.join(d['dropped_fields'])}; requests went without"
                + (
                    " (without ignore_eos, a sequence may end before max_new_tokens)"
                    if "ignore_eos" in d["dropped_fields"]
                    else ""
                )
            )
        if j.server_stop:
            notes.append(
                f"profile {j.profile}: server started in {j.meta.get('load_s', {}).get('server_start', 0):.1f} s, "
                f"stopped: {j.server_stop}; log {j.server_log}"
            )
    return notes


def failed_requests(records: dict[str, list[Record]]) -> list[Record]:
    return [r for recs in records.values() for r in recs if r.failed]


def _model_dir(suite: Suite) -> Path:
    """The prepared model directory; a running endpoint, or a server command without {model}, needs none."""
    if suite.endpoint is not None and (suite.server is None or "{model}" not in suite.server.command):
        return Path(suite.model.ref)
    return runner.prepare_model(suite.model.ref)


def flags_note(suite: Suite) -> str:
    """When no profile's flags can act on this device, every profile ran the same arithmetic: say so, so that a
    passing `deterministic` profile is not read as evidence about the flags."""
    dev = suite.model.device if suite.endpoint is None else ""
    flagged = [p for p in suite.profiles if p.env]
    if not dev or not flagged or any(len(profiles.inert_flags(p, dev)) < len(p.env) for p in flagged):
        return ""
    torch_only = [p.name for p in suite.profiles if p.torch_deterministic]
    return (
        f"none of the profiles' flags act on {dev}: {', '.join(p.name for p in suite.profiles)} ran identical "
        f"arithmetic"
        + (f" (apart from torch.use_deterministic_algorithms in {', '.join(torch_only)})" if torch_only else "")
        + "; their verdicts and any cost between them say nothing about the Ascend switches"
    )


def execute(suite: Suite, opts: Options) -> report.RunResult:
    started = time.time()
    model_dir = _model_dir(suite)
    rd = RunDir.create(opts.out, suite.name)
    jobs = run_profiles(suite, model_dir, rd.path, opts)
    every = {j.profile: list(read_jsonl(Path(j.records))) for j in jobs}
    records = {name: [r for r in recs if not r.warmup] for name, recs in every.items()}
    failures = failed_requests(every)
    verdicts = analyse(suite, records) + input_limit(jobs)
    samples = {name: latency.samples(recs) for name, recs in records.items()}
    base = against_baselines(suite, jobs, records, samples, opts)
    notes = [f"profile {p.name}: {n}" for p in suite.profiles if (n := profiles.note(p, suite.model.device))]
    flags = flags_note(suite)
    every_verdict = verdicts + base.verdicts
    code = exit_code(
        infra=any(not j.ok for j in jobs) or bool(failures) or base.unwritable,
        unusable=any(v.status == "not comparable" for v in every_verdict),
        failed=not all(v.passed for v in every_verdict)
        or any(c.status == "regressed" for p, cs in base.changes.items() if base.gated.get(p) for c in cs),
    )
    res = report.RunResult(
        suite=suite,
        run_id=rd.run_id,
        run_dir=rd.path,
        jobs=jobs,
        verdicts=verdicts,
        exit_code=code,
        notes=notes + ([flags] if flags else []) + served_notes(suite, jobs) + base.notes + noise_notes(suite, jobs),
        started=started,
        baseline=base,
        latency=samples,
        cost=perfgate.cost(suite.perf, {j.profile: j for j in jobs}, records, suite.seed) if suite.perf else [],
        failures=failures,
        cost_label=""
        if not flags
        else "flags inert here: any difference is noise or torch.use_deterministic_algorithms, not the Ascend switches",
    )
    report.write(res)
    return res


def checks(res: report.RunResult) -> list[Check]:
    """Each profile's verdicts as checks: pytest items and the console's verdict lines."""
    out = []
    for p in res.suite.profiles:
        job = next((j for j in res.jobs if j.profile == p.name), None)
        crashed = [job.describe()] if job is not None and not job.ok else []
        for name in DETERMINISM.items_for(res.suite, p.name):
            lines = list(crashed)
            skip = ""
            if name == "latency":
                changes = res.baseline.changes.get(p.name)
                bad = [c for c in changes or [] if c.status == "regressed"]
                if changes is None or not res.baseline.gated.get(p.name):
                    skip = res.baseline.ungated_note if changes is not None else "no latency baseline to compare with"
                elif bad:
                    lines += [
                        "latency regressed: " + "; ".join(f"{c.metric} x{c.ratio:.3f} (p={c.p:.3g})" for c in bad),
                        report.change_table(changes),
                    ]
            elif (
                v := next((v for v in res.all_verdicts() if v.profile == p.name and v.property == name), None)
            ) is None:
                lines.append(f"no {name} verdict (the worker produced nothing to compare)")
            elif v.status == "no baseline":
                skip = v.reason
            elif not v.passed:
                lines.append(f"{v.property} expected {v.expect!r}: {v.reason}")
                if v.worst:
                    lines.append(f"worst case: {v.worst.describe()}")
            if lines:
                out.append(Check(p.name, name, "failed", "\n".join(lines + [f"report: {res.run_dir / 'summary.md'}"])))
            else:
                out.append(Check(p.name, name, "skipped" if skip else "passed", skip))
    return out


@dataclass(frozen=True)
class SuiteKind:
    """Determinism (an in-process model) and served (an OpenAI-compatible server): one pipeline, two kinds."""

    name: str

    def load(self, path: Path, data: dict, opts: Options) -> Suite:
        return load_suite(path, data, opts)

    def items_for(self, suite: Suite, profile: str) -> list[str]:
        props = [p for p in PROPERTIES if any(s.property == p for s in suite.schedules)] + ["baseline"]
        if suite.perf is not None:
            props.append("latency")
        if suite.endpoint is not None and suite.endpoint.oversize_check:
            props.append("input-limit")
        return props

    def items(self, suite: Suite) -> list[tuple[str, str]]:
        return [(p.name, n) for p in suite.profiles for n in self.items_for(suite, p.name)]

    def execute(self, suite: Suite, opts: Options) -> Outcome:
        res = execute(suite, opts)
        return Outcome(res.exit_code, report.console(res), res.run_dir, checks(res))


DETERMINISM = SuiteKind("determinism")
SERVED = SuiteKind("served")
