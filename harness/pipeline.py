"""A run as a pipeline of small steps: load → plan → prepare → run → analyse → report.

Shared by the CLI and the pytest plugin, so both produce the same records, verdicts and reports.
"""
from __future__ import annotations

import dataclasses
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
    endpoint: str | None = None        # URL of a server that is already running (the suite's [server] is not started)


def load_suite(path: str | Path, opts: Options) -> Suite:
    if opts.update_baselines and not opts.reason.strip():
        raise HarnessError("--update-baselines needs --reason 'why these outputs and timings are the new truth'", USAGE)
    try:
        suite = load_suite_file(path).with_overrides(model=opts.model, device=opts.device, profiles=opts.profiles,
                                                     adapter=opts.adapter, endpoint=opts.endpoint)
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
        from .adapters import endpoint as ep_mod
        kwargs = ep_mod.client_kwargs(suite.endpoint)
    except ImportError as e:
        raise HarnessError(f"{suite.path}: serving needs httpx ({e}); pip install 'llm-determinism-harness[serving]'", USAGE) from None
    except ValueError as e:
        raise HarnessError(f"{suite.path}: {e}", USAGE) from None
    except (ssl.SSLError, OSError) as e:
        raise HarnessError(f"{suite.path}: endpoint.client_cert / client_key / ca_bundle: cannot load ({e})", USAGE) from None
    del kwargs
    ep = suite.endpoint
    for prompt in map(dataclasses.asdict, suite.prompts):
        body = ep_mod.request_body(ep, prompt, max_tokens=suite.generation.max_new_tokens,
                                   top_logprobs=suite.generation.top_logprobs, seed=suite.seed, model=ep.model)
        if err := ep_mod.size_error(prompt, body, ep.max_body_bytes):
            raise HarnessError(f"{suite.path}: {err}", USAGE)


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

        timeout = opts.timeout_s or suite.timeout_s
        try:
            if suite.endpoint is None:
                outcomes.append(runner.run_job(job, dict(prof.env), timeout, run_dir, progress))
            else:
                outcomes.append(runner.run_served(suite, prof, job, model_dir, timeout, run_dir, progress))
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
            if not j.ok or any(r.failed for r in records[j.profile]):
                why = j.describe() if not j.ok else "some requests failed, so some outputs are missing"
                out.notes.append(f"baseline for {j.profile} not written: {why}")
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
                                                    bitwise=0, token_identical=0,
                                                    level=determinism.lowest_level(records[j.profile])))
            continue
        found, same_key = baselines.find(opts.baselines, key, sdir, j.profile,
                                         "endpoint" if suite.endpoint else suite.model.device)
        if found is None:
            out.verdicts.append(baseline_check.missing(j.profile, str(target)))
            continue
        try:
            b = baselines.load(found, suite.case_hash)
        except baselines.BaselineError as e:
            out.verdicts.append(baseline_check.not_comparable(j.profile, str(e)))
            continue
        note = "" if same_key else f"baseline made under device key {b.device_key}, this run is {key}: tokens compared, not bits"
        v = baseline_check.evaluate(records[j.profile], lambda pid: b.reference(pid) if pid in b.outputs else None,
                                    j.profile, same_key, note)
        if not v.passed and (changed := baselines.environment_changes(b.environment.get("device", {}), j.meta["device"])):
            v = dataclasses.replace(v, reason=f"{v.reason}; since the baseline: {', '.join(changed)}")
        out.verdicts.append(v)
        out.sources[j.profile] = f"{found} ({b.provenance.get('created', '?')}, {b.provenance.get('reason', '')!r})"
        if suite.perf is not None and not same_key:
            out.notes.append(f"latency of {j.profile} not gated: the baseline was measured under {b.device_key}, "
                             f"this run is {key} (another device, host or software); timings compare only under one key")
        elif suite.perf is not None:
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


def input_limit(jobs: list[runner.JobOutcome]) -> list[determinism.Verdict]:
    """The deliberate oversized request (endpoint.oversize_check): a 4xx with a message passes."""
    out = []
    for j in jobs:
        o = j.meta.get("oversize")
        if o is None:
            continue
        reason = (f"{o['sent_bytes']} bytes against a limit of {o['limit_bytes']}: "
                  + (f"HTTP {o['status']}: {o['message']}" if o["passed"] else o["message"]))
        out.append(determinism.Verdict(profile=j.profile, property="input-limit", expect="4xx",
                                       status="pass" if o["passed"] else "fail", reason=reason, sequences=1,
                                       bitwise=0, token_identical=0))
    return out


def served_notes(suite: Suite, jobs: list[runner.JobOutcome]) -> list[str]:
    if suite.endpoint is None:
        return []
    ep, notes = suite.endpoint, []
    if suite.server is None:
        p = suite.profiles[0]
        flags = ", ".join(f"{k}={v}" for k, v in p.env) or "none"
        notes.append(f"endpoint {ep.base_url} was already running: the harness could not apply profile {p.name!r}'s "
                     f"flags ({flags}) to it; its results describe whatever environment that server was started with")
    if not ep.verify:
        notes.append("TLS verification is off (endpoint.verify = false): the server's identity was not checked")
    for j in jobs:
        d = j.meta.get("device", {})
        if d.get("device") != "endpoint":
            continue
        level = {"logprobs": "logprobs with top logprobs: compared like logits fingerprints (bitwise = identical logprobs)",
                 "text": "text only: outputs compared as text, character by character; bits and margins cannot be seen"}
        notes.append(f"profile {j.profile}: the server at {d.get('url')} returned {level.get(d.get('level'), d.get('level'))}")
        if d.get("dropped_fields"):
            notes.append(f"profile {j.profile}: the server refused {', '.join(d['dropped_fields'])}; requests went without"
                         + (" (without ignore_eos, a sequence may end before max_new_tokens)" if "ignore_eos" in d["dropped_fields"] else ""))
        if j.server_stop:
            notes.append(f"profile {j.profile}: server started in {j.meta.get('load_s', {}).get('server_start', 0):.1f} s, "
                         f"stopped: {j.server_stop}; log {j.server_log}")
    return notes


def failed_requests(records: dict[str, list[Record]]) -> list[Record]:
    return [r for recs in records.values() for r in recs if r.failed]


def exit_code(jobs: list[runner.JobOutcome], verdicts: list[determinism.Verdict], base: report.BaselineResult,
              failures: list[Record] = ()) -> int:
    if any(not j.ok for j in jobs) or failures:
        return INFRA
    if any(v.status == "not comparable" for v in verdicts + base.verdicts):
        return USAGE
    regressed = any(c.status == "regressed" for cs in base.changes.values() for c in cs)
    return OK if all(v.passed for v in verdicts + base.verdicts) and not regressed else CHECK_FAILED


def _model_dir(suite: Suite) -> Path:
    """The prepared model directory; a running endpoint, or a server command without {model}, needs none."""
    if suite.endpoint is not None and (suite.server is None or "{model}" not in suite.server.command):
        return Path(suite.model.ref)
    return runner.prepare_model(suite.model.ref)


def execute(suite: Suite, opts: Options) -> report.RunResult:
    started = time.time()
    model_dir = _model_dir(suite)
    run_id, run_dir = new_run_dir(opts.out, suite)
    jobs = run_profiles(suite, model_dir, run_dir, opts)
    every = {j.profile: list(read_jsonl(Path(j.records))) for j in jobs}
    records = {name: [r for r in recs if not r.warmup] for name, recs in every.items()}
    failures = failed_requests(every)
    verdicts = analyse(suite, records) + input_limit(jobs)
    samples = {name: latency.samples(recs) for name, recs in records.items()}
    base = against_baselines(suite, jobs, records, samples, opts)
    notes = [f"profile {p.name}: {n}" for p in suite.profiles if (n := profiles.note(p, suite.model.device))]
    res = report.RunResult(suite=suite, run_id=run_id, run_dir=run_dir, jobs=jobs, verdicts=verdicts,
                           exit_code=exit_code(jobs, verdicts, base, failures),
                           notes=notes + served_notes(suite, jobs) + base.notes, started=started,
                           baseline=base, latency=samples, cost=determinism_cost(suite, samples), failures=failures)
    report.write(res)
    return res
