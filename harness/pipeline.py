"""The determinism kind (and its served variant) as a pipeline of small steps:
load → plan → prepare → run → analyse → report.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import (
    adapters,
    against,
    degrees,
    hostnoise,
    plan,
    processes,
    profiles,
    report,
    runner,
    stacks,
    timing,
)
from .analysis import determinism, latency
from .errors import USAGE, HarnessError
from .jobs import Job, JobOutcome
from .localize import auto
from .profiles import flags_note
from .records import Record, read_jsonl
from .run import Options, Progress, RunDir, exit_code
from .serving import runs as served_runs
from .suite import PROPERTIES, Profile, Suite, SuiteError
from .suite_parse import parse


def load_suite(path: str | Path, data: dict[str, Any], opts: Options) -> Suite:
    if opts.parallel and "parallel" in data:
        # --tp, --nnodes, --node-rank, --rdzv-endpoint: the same suite file on every host, for any model's heads; a
        # suite without [parallel] is single-device and stays so (one nox session runs both kinds)
        data = {**data, "parallel": {**data["parallel"], **opts.parallel}}
    try:
        suite = parse(data, str(path), base=Path(path).parent).with_overrides(
            model=opts.model, device=opts.device, profiles=opts.profiles, adapter=opts.adapter, endpoint=opts.endpoint
        )
        suite = stacks.with_reference(
            stacks.resolved(suite, Path(path).parent),
            opts.reference,
            stacks.resolve(opts.reference_python or "", Path.cwd()) or None,
            stacks.resolve(opts.reference_setup or "", Path.cwd()) or None,
        )
    except SuiteError as e:
        raise HarnessError(str(e), USAGE) from None
    try:
        adapters.resolve(suite.model.adapter)
    except adapters.AdapterError as e:
        raise HarnessError(f"{suite.path}: model.adapter: {e}", USAGE) from None
    if suite.endpoint is not None:
        preflight(suite)
        if suite.server is None and len(suite.profiles) > 1:
            # A running server has one environment: one profile describes it; choose which with --profile.
            suite = dataclasses.replace(suite, profiles=suite.profiles[:1])
    return degrees.resolve(suite)  # tp = "auto": the degrees, from the model's files, before any item is named


def preflight(suite: Suite) -> None:
    """Everything about a served suite that can be wrong before a server starts: one line each, exit 2."""
    import ssl

    ep = suite.endpoint
    assert ep is not None  # only a served suite is preflighted (load_suite asks)
    try:
        from .serving import wire

        kwargs = wire.client_kwargs(ep)
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
    for prompt in map(dataclasses.asdict, suite.prompts):
        if err := wire.suite_size_error(suite, ep, prompt):
            raise HarnessError(f"{suite.path}: {err}", USAGE)


def check_stacks(suite: Suite) -> dict[str, stacks.Stack]:
    """Each profile's software stack (`python`, `setup`), checked before any worker starts: one line, exit 2."""
    needs = stacks.needs(suite.model.adapter, suite.endpoint is not None)
    try:
        return {p.name: stacks.check(p.python, p.setup, f"profile {p.name!r}", needs) for p in suite.profiles}
    except HarnessError as e:
        raise HarnessError(f"{suite.path}: {e}", USAGE) from None


def run_profiles(suite: Suite, model_dir: Path, run_dir: Path, opts: Options) -> list[JobOutcome]:
    batches = plan.expand(suite)
    timeout = opts.timeout_s or suite.timeout_s
    checked = check_stacks(suite)

    def env(p: Profile) -> dict[str, str | None]:
        return {**dict(p.env), **checked[p.name].env}  # the setup file's exports go with the profile's workers

    def job_of(p: Profile, tp: int = 1) -> Job:
        # served: the stack is the server's (serving.runs starts it with p.python); both sides' clients are this one
        python = p.python if suite.endpoint is None else ""
        return dataclasses.replace(runner.make_job(suite, p, batches, model_dir, run_dir, tp), python=python)

    # Interleaving is for timing profiles against each other on one device; worker groups run one after another.
    interleave = (
        suite.perf is not None and suite.perf.interleave and len(suite.profiles) > 1 and not suite.parallel.multi
    )
    if suite.endpoint is None and not interleave:
        outcomes = []
        for prof in suite.profiles:
            for tp in suite.parallel.tp:  # a worker group per degree: a crash in one leaves the others to run
                if tp == 1 and suite.parallel.node_rank > 0:
                    continue  # one process runs on node 0 alone
                job = job_of(prof, tp)
                with Progress(f"{suite.name}:{job.name}", plan.count_sequences(batches), "seq", opts.progress) as bar:
                    outcomes.append(runner.run_job(job, env(prof), timeout, run_dir, bar.to, suite.parallel))
        return outcomes
    units = suite.perf.units if suite.perf is not None and suite.endpoint is None else 1
    bars = [
        Progress(f"{suite.name}:{p.name}", units * plan.count_sequences(batches), "seq", opts.progress)
        for p in suite.profiles
    ]
    jobs = [job_of(p) for p in suite.profiles]
    try:
        if suite.endpoint is None:
            todo: list[tuple[Job, dict[str, str | None], Callable[[int], None]]] = [
                (job, env(p), bar.to) for p, job, bar in zip(suite.profiles, jobs, bars)
            ]
            if units > 1:
                return processes.run(todo, units, timeout, run_dir)
            return runner.run_interleaved(todo, timeout, run_dir)
        served = [dataclasses.replace(p, env=tuple(sorted(_setenv(env(p)).items()))) for p in suite.profiles]
        return served_runs.run_served_all(
            suite,
            [(p, job, bar.to) for p, job, bar in zip(served, jobs, bars)],
            model_dir,
            timeout,
            run_dir,
            interleave=interleave,
        )
    finally:
        for bar in bars:
            bar.close()


def _setenv(env: dict[str, str | None]) -> dict[str, str]:
    """A server's variables: what a setup file unset cannot be carried in a profile's env, only what it set."""
    return {k: v for k, v in env.items() if v is not None}


def analyse(suite: Suite, jobs: list[JobOutcome], records: dict[str, list[Record]]) -> list[determinism.Verdict]:
    """Per job (profile and degree): the schedules' properties; per profile: each degree against the smallest."""
    props = [p for p in PROPERTIES if any(s.property == p for s in suite.schedules)]
    dev, k = suite.model.device, suite.generation.k
    verdicts = []
    for j in jobs:
        prof = suite.profile(j.profile)
        verdicts += [
            dataclasses.replace(
                determinism.evaluate(records[j.name], prof.name, prop, prof.expectation(dev, prop), k=k), tp=j.tp
            )
            for prop in props
        ]
    if len(suite.parallel.tp) > 1:
        ref_tp, *others = suite.parallel.tp
        for prof in suite.profiles:
            ref = records.get(suite.parallel.job_name(prof.name, ref_tp), [])
            verdicts += [
                determinism.tp_invariance(
                    ref,
                    records.get(suite.parallel.job_name(prof.name, tp), []),
                    prof.name,
                    prof.expectation(dev, "tp-invariance"),
                    tp=tp,
                    ref_tp=ref_tp,
                    k=k,
                )
                for tp in others
            ]
    return verdicts


def noise_notes(suite: Suite, jobs: list[JobOutcome]) -> list[str]:
    """Every measured pass that ran beside other work, and what that work was."""
    if suite.perf is None:
        return []
    return [
        f"profile {j.profile} pass {k} ran beside other work: {hostnoise.describe(p)}"
        for j in jobs
        for k, p in sorted(timing.noisy_passes(j.meta, suite.perf.noise_share).items())
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


check_degrees = degrees.check  # every degree must divide the model's attention and KV heads


def execute(suite: Suite, opts: Options) -> report.RunResult:
    started = time.time()
    model_dir = _model_dir(suite)
    check_degrees(suite, model_dir)
    plan.check_context(suite, model_dir)  # every prompt + max_new_tokens within the model's context
    rd = RunDir.create(opts.out, suite.name)
    jobs = run_profiles(suite, model_dir, rd.path, opts)
    if suite.parallel.node_rank > 0:
        return follower(suite, rd, jobs, started)
    every = {j.name: list(read_jsonl(Path(j.records))) for j in jobs}
    records = {name: [r for r in recs if not r.warmup] for name, recs in every.items()}
    failures = failed_requests(every)
    verdicts = analyse(suite, jobs, records) + input_limit(jobs)
    samples = {name: latency.samples(recs) for name, recs in records.items()}
    base = against.against_baselines(suite, jobs, records, samples, opts)
    paths = [profiles.run_path(suite, tp) for tp in suite.parallel.tp]
    notes = [f"profile {p.name}: {n}" for p in suite.profiles if (n := profiles.note(p, suite.model.device, paths))]
    notes += [suite.parallel.why] if suite.parallel.why else []
    notes += [n for j in jobs if (n := profiles.group_note(j.profile, j.tp, j.meta))]
    notes += [
        f"profile {j.name}: {pin}" for j in jobs if (pin := str((j.meta.get("device") or {}).get("pin_note", "")))
    ]
    notes += [f"profiles left out on {suite.model.device}: {', '.join(suite.left_out)}"] if suite.left_out else []
    flags = flags_note(suite)
    where = localize_at_end(suite, rd.path, verdicts)
    every_verdict = verdicts + base.verdicts
    code = exit_code(
        infra=any(not j.ok for j in jobs) or bool(failures) or base.unwritable,
        unusable=any(v.status == "not comparable" for v in every_verdict),
        failed=not all(v.passed for v in every_verdict)
        or any(c.status == "regressed" for p, cs in base.changes.items() if base.gated.get(p) for c in cs)
        or any(c.status == "regressed" for cs in base.reference.values() for c in cs),
    )
    res = report.RunResult(
        suite=suite,
        run_id=rd.run_id,
        run_dir=rd.path,
        jobs=jobs,
        verdicts=verdicts,
        exit_code=code,
        notes=notes
        + ([flags] if flags else [])
        + served_notes(suite, jobs)
        + base.notes
        + noise_notes(suite, jobs)
        + where.notes,
        started=started,
        baseline=base,
        latency=samples,
        cost=timing.cost(suite.perf, {j.profile: j for j in jobs}, records, suite.seed, profiles.cost_profile(suite))
        if suite.perf
        else [],
        cost_profile=profiles.cost_profile(suite),
        failures=failures,
        records=records,
        model_dir=str(model_dir),
        cost_label=profiles.cost_label(suite),
        localization=where.entries,
    )
    report.write(res)
    return res


def localize_at_end(suite: Suite, run_dir: Path, verdicts: list[determinism.Verdict]) -> auto.Localization:
    """[localize] auto: where the variance enters, for the worst case of each property that failed or was only
    close; said on stderr first, since a replay takes tens of seconds per case."""
    if not suite.localize.auto or not (pairs := auto.wanted(verdicts)):
        return auto.Localization()
    shown = ", ".join(f"{p} {prop}" for p, prop in sorted(pairs))
    print(f"localize: where the variance enters, at most {suite.localize.max_cases} case(s): {shown}", file=sys.stderr)
    return auto.run(run_dir, verdicts, suite.localize.max_cases, suite.timeout_s)


def follower(suite: Suite, rd: RunDir, jobs: list[JobOutcome], started: float) -> report.RunResult:
    """Another host of a multi-node group: its ranks ran, node 0 wrote the records and judges them. This host reports
    only whether its part of each group finished."""
    res = report.RunResult(
        suite=suite,
        run_id=rd.run_id,
        run_dir=rd.path,
        jobs=jobs,
        verdicts=[],
        exit_code=exit_code(infra=any(not j.ok for j in jobs), unusable=False, failed=False),
        notes=[
            f"node {suite.parallel.node_rank} of {suite.parallel.nnodes}: this host's ranks of each worker group; "
            f"the records and verdicts are on node 0 (rendezvous {suite.parallel.rdzv_endpoint})"
        ],
        started=started,
    )
    report.write(res)
    return res
