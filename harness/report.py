"""Human and machine reports of one run: summary.md (tabulate, github), report.json, console tables."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tabulate import tabulate

from . import __version__, atomic, envinfo, plan
from .analysis import latency
from .analysis.determinism import Verdict
from .analysis.stats import Change
from .baselines import Baseline, BaselineUse
from .jobs import JobOutcome
from .records import Record
from .status import RunStatus, run_result
from .suite import Suite
from .tables import (
    MARK,
    change_table,
    clip,
    jobs_table,
    latency_table,
    ranks_table,
    sequences_md,
    unique_table,
    verdict_table,
    worst_lines,
)

SCHEMA_VERSION = 1


@dataclass
class BaselineResult:
    device_key: str = ""
    verdicts: list[Verdict] = field(default_factory=list)  # property "baseline", one per profile
    changes: dict[str, list[Change]] = field(default_factory=dict)  # profile -> latency gate rows
    sources: dict[str, str] = field(default_factory=dict)  # profile -> baseline file and provenance
    notes: list[str] = field(default_factory=list)
    gated: dict[str, bool] = field(default_factory=dict)  # profile -> latency gated (same hardware)
    unwritable: bool = False  # --update-baselines could not write a file
    found: dict[str, Baseline] = field(default_factory=dict)  # profile -> the baseline compared with
    used: dict[str, BaselineUse] = field(default_factory=dict)  # job -> the baseline file judged against, its tier
    written: dict[str, Path] = field(default_factory=dict)  # job -> the baseline file --update-baselines wrote
    alpha_row: float = float("nan")  # the smallest per-row alpha the budget implied
    ungated_note: str = ""  # why timings were shown but not gated
    reference: dict[str, list[Change]] = field(default_factory=dict)  # profile -> rows against [perf] reference


@dataclass
class RunResult:
    suite: Suite
    run_id: str
    run_dir: Path
    jobs: list[JobOutcome]
    verdicts: list[Verdict]
    exit_code: int
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    baseline: BaselineResult = field(default_factory=BaselineResult)
    latency: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # profile -> metric -> raw samples
    cost: list[Change] = field(default_factory=list)  # cost_profile vs default
    cost_profile: str = "deterministic"  # the profile whose switches act on this path (profiles.cost_profile)
    failures: list[Record] = field(default_factory=list)  # requests that failed after retries
    cost_label: str = ""  # why the cost means less than it seems
    records: dict[str, list[Record]] = field(default_factory=dict)  # profile -> analysed records, for report.html
    model_dir: str = ""  # the prepared model folder: its tokenizer names top-k alternatives in report.html
    localization: list[dict[str, Any]] = field(default_factory=list)  # localize.json's entries (the end of the run)

    def all_verdicts(self) -> list[Verdict]:
        return self.verdicts + self.baseline.verdicts

    @property
    def result(self) -> RunStatus:
        return run_result(self.exit_code)


def failures_md(res: RunResult) -> list[str]:
    """Each failed request, then the tail of its server's log: what an on-call engineer reads first."""
    if not res.failures:
        return []
    rows = [[r.profile, r.prompt_id, r.batch_id, r.extra.get("attempts", 1), clip(r.error, 140)] for r in res.failures]
    md = [
        "## Failed requests",
        "",
        tabulate(rows, headers=["profile", "prompt", "batch", "attempts", "error"], tablefmt="github"),
        "",
    ]
    for j in res.jobs:
        if j.server_tail and any(r.profile == j.profile for r in res.failures):
            md += [f"Server log tail for `{j.profile}` ({j.server_log}):", "", "```", *j.server_tail, "```", ""]
    return md


def console(res: RunResult) -> str:
    out = [
        f"suite {res.suite.name} on {res.suite.model.device} ({res.suite.model.ref}, {res.suite.model.dtype})",
        "",
        jobs_table(res.jobs),
        "",
    ]
    for p in res.suite.profiles:
        vs = [v for v in res.all_verdicts() if v.profile == p.name]
        if vs:
            out += [f"profile {p.name}", verdict_table(vs), "worst cases and baseline:", *worst_lines(vs), ""]
        if p.name in res.baseline.changes:
            out += [
                f"latency of {p.name} against the baseline{_gated(res, p.name)}",
                change_table(res.baseline.changes[p.name]),
                "",
            ]
    out += reference_lines(res)
    if res.cost:
        out += [
            f"determinism cost ({res.cost_profile} against default, same run){_cost_label(res)}",
            change_table(res.cost, "default", res.cost_profile),
            "",
        ]
    # A server, or an engine that returns logprobs (vLLM in process): the headline figure per prompt.
    if (res.suite.endpoint is not None or any(v.level == "logprobs" for v in res.verdicts)) and any(
        v.unique_outputs for v in res.verdicts
    ):
        out += [
            "unique outputs per prompt (in brackets: distinct logprob patterns, where the engine returns them)",
            unique_table(res.verdicts),
            "",
        ]
    if res.suite.endpoint is not None and any(res.latency.values()):
        out += ["latency through the server", latency_table(res.latency), ""]
    if res.localization:
        out += ["where the variance enters (localize.json):", *[f"  {e['summary']}" for e in res.localization], ""]
    out += [f"! {j.describe()}" for j in res.jobs if not j.ok]
    out += [
        f"! request failed: {r.profile} prompt {r.prompt_id!r} in {r.batch_id}: {r.error}" for r in res.failures[:10]
    ]
    if len(res.failures) > 10:
        out += [f"! ... and {len(res.failures) - 10} more failed requests (see summary.md)"]
    out += [f"x {v.profile}: {v.reason}" for v in res.baseline.verdicts if v.status == "not comparable"]
    out += [f"note: {n}" for n in res.notes]
    out += [f"result: {res.result.upper()} (exit {res.exit_code}); report: {res.run_dir / 'summary.md'}"]
    return "\n".join(out)


def _gated(res: RunResult, profile: str) -> str:
    return "" if res.baseline.gated.get(profile) else " (shown, not gated: the baseline is from other hardware)"


def _cost_label(res: RunResult) -> str:
    return f" ({res.cost_label})" if res.cost_label else ""


def summary_md(res: RunResult) -> str:
    s = res.suite
    md = [
        f"# {s.name}: {res.result.upper()}",
        "",
        f"Run `{res.run_id}` · device `{s.model.device}` · model `{s.model.ref}` · dtype `{s.model.dtype}` · "
        f"case hash `{s.case_hash}` · harness {__version__}",
        "",
        "## Workers",
        "",
        jobs_table(res.jobs),
        "",
    ]
    if any(j.meta.get("ranks") for j in res.jobs):
        md += [
            "## Worker groups",
            "",
            "Each rank's load phases and peak memory (after the last batch).",
            "",
            ranks_table(res.jobs),
            "",
        ]
    crashed = [j for j in res.jobs if not j.ok]
    if crashed:
        md += ["## Crashes", ""]
        for j in crashed:
            md += [f"- {j.describe()}", "", "```", *j.stderr_tail[-10:], "```", ""]
    md += failures_md(res)
    for p in s.profiles:
        vs = [v for v in res.all_verdicts() if v.profile == p.name]
        if not vs:
            continue
        md += [f"## Profile `{p.name}`", ""]
        if p.description:
            md += [p.description, ""]
        env = ", ".join(f"`{k}={v}`" for k, v in envinfo.redact(dict(p.env)).items()) or "none"
        md += [
            f"Flags: {env}; torch deterministic algorithms: {'on' if p.torch_deterministic else 'off'}",
            "",
            verdict_table(vs),
            "",
        ]
        for v in vs:
            at = f" at tp {v.tp}" if v.tp != 1 else ""
            md += [f"- **{v.property}**{at} ({MARK[v.status]}): {v.reason}"]
            if v.worst:
                md += [f"  - worst: {v.worst.describe()}"]
            md += sequences_md(v)
        for j in res.jobs:
            if j.profile == p.name and j.name in res.baseline.sources:
                md += [f"- baseline{f' (tp {j.tp})' if j.tp != 1 else ''}: {res.baseline.sources[j.name]}"]
        md += [""]
        if p.name in res.baseline.changes:
            md += [
                f"Latency against the baseline{_gated(res, p.name)} (`+` worse, `-` better, `~` not significant, "
                "`x` not comparable, `!` failed):",
                "",
                change_table(res.baseline.changes[p.name]),
                "",
            ]
    if res.baseline.reference:
        md += ["## Against the reference, side by side", "", *reference_lines(res, markdown=True)]
    if res.cost:
        md += [
            "## Determinism cost",
            "",
            f"The `{res.cost_profile}` profile's latency relative to `default`, in the same run{_cost_label(res)}:",
            "",
            change_table(res.cost, "default", res.cost_profile),
            "",
        ]
    if any(res.latency.values()):
        md += ["## Latency", "", latency_table(res.latency), ""]
    if any(v.unique_outputs for v in res.verdicts):
        md += [
            "## Unique outputs per prompt",
            "",
            "Distinct token sequences (texts, where the server returns text only), "
            "and in brackets distinct logits bit patterns (logprob patterns for a server), across every sequence of "
            "the prompt in that property (reference included).",
            "",
            unique_table(res.verdicts),
            "",
        ]
    if res.localization:
        md += [
            "## Where it breaks",
            "",
            "The worst case of each property that failed or was only close, replayed with the recorded tokens and "
            "hooked module by module, then operator by operator (`harness localize`; every module's and operator's "
            "metrics in `localize.json`):",
            "",
            *[f"- {e['summary']}" for e in res.localization],
            "",
        ]
    if res.notes:
        md += ["## Notes", "", *[f"- {n}" for n in res.notes], ""]
    return "\n".join(md)


SOFTWARE = ("torch", "torch_npu", "cann", "transformers", "vllm", "vllm_ascend")


def software(j: JobOutcome) -> str:
    """What a profile's workers ran with, as they read it: "python 3.11.7, torch 2.13.0+cpu, transformers 5.25.0"."""
    dev, host = j.meta.get("device") or {}, j.meta.get("host") or {}
    parts = [f"python {host['python']}"] if host.get("python") else []
    return ", ".join(parts + [f"{k} {dev[k]}" for k in SOFTWARE if dev.get(k)]) or "not read (the worker never loaded)"


def reference_lines(res: RunResult, markdown: bool = False) -> list[str]:
    """Each profile against the reference measured in this run: how it was measured, each side's software, the rows."""
    perf, rows = res.suite.perf, res.baseline.reference
    if perf is None or not rows:
        return []
    jobs = {j.profile: j for j in res.jobs}
    units = perf.units
    how = (
        f"{units} processes per profile, started A B then B A and measured pass by pass in turn; each process's "
        "median is one sample (paired t-test of the log ratios)"
        if units > 1
        else "one process per profile, passes in turn; the sequences are the samples (Mann-Whitney)"
    )
    out = [
        f"against the reference {perf.reference!r}, side by side in this run ({how}; a change counts above "
        f"{perf.reference_threshold:.0%}, one false-alarm budget {perf.budget:g} with the baseline rows)",
    ]
    if markdown:
        out += [""]
    for name in [perf.reference, *rows]:
        if name in jobs:
            line = f"{name}: {software(jobs[name])}"
            out += [f"- {line}" if markdown else f"  {line}"]
    for prof, cs in rows.items():
        out += [
            "",
            f"{prof} against {perf.reference}:" if not markdown else f"`{prof}` against `{perf.reference}`:",
            "",
        ]
        out += [change_table(cs, perf.reference, prof), ""]
    return out


def reference_json(res: RunResult) -> dict[str, Any]:
    perf = res.suite.perf
    if perf is None or not res.baseline.reference:
        return {}
    jobs = {j.profile: j for j in res.jobs}
    return {
        "profile": perf.reference,
        "processes": perf.units,
        "threshold": perf.reference_threshold,
        "software": {p: software(jobs[p]) for p in [perf.reference, *res.baseline.reference] if p in jobs},
        "rows": {
            p: [{**dataclasses.asdict(c), "mark": c.mark} for c in cs] for p, cs in res.baseline.reference.items()
        },
    }


BULKY = ("modules", "operators")  # every module's and operator's metrics: localize.json keeps them


def localization_json(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """report.json's localization: each case without the per-module and per-operator lists."""
    return [{k: v for k, v in e.items() if k not in BULKY} for e in entries]


def to_json(res: RunResult) -> dict[str, Any]:
    s = res.suite
    env = envinfo.relevant_env(os.environ)
    return {
        "schema_version": SCHEMA_VERSION,
        "harness_version": __version__,
        "run_id": res.run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(res.started)),
        "result": res.result,
        "exit_code": res.exit_code,
        "suite": {
            "name": s.name,
            "path": s.path,
            "case_hash": s.case_hash,
            "model": s.model.ref,
            "dtype": s.model.dtype,
            "device": s.model.device,
        },
        "environment": {"host": envinfo.host(), "env": env},
        "jobs": [
            {
                **{k: v for k, v in dataclasses.asdict(j).items() if k != "meta"},
                "profile_hash": s.profile_hash(s.profile(j.profile)),
                "worker": j.meta,
                "description": j.describe(),
            }
            for j in res.jobs
        ],
        "device_key": res.baseline.device_key,
        "verdicts": [
            {
                **{k: val for k, val in dataclasses.asdict(v).items() if k != "comparisons"},
                "share_bitwise": v.share_bitwise,
                "share_tokens": v.share_tokens,
                "comparisons": [c.row() for c in v.comparisons],
            }
            for v in res.all_verdicts()
        ],
        "needles": {b.id: b.needle for b in plan.expand(s) if b.needle},
        "baselines": res.baseline.sources,
        "latency": {
            prof: {name: {**latency.percentiles(xs), "samples": xs} for name, xs in m.items()}
            for prof, m in res.latency.items()
        },
        "perf": {
            prof: [{**dataclasses.asdict(c), "mark": c.mark} for c in cs] for prof, cs in res.baseline.changes.items()
        },
        "perf_gated": res.baseline.gated,
        "determinism_cost": [{**dataclasses.asdict(c), "mark": c.mark} for c in res.cost],
        "determinism_cost_label": res.cost_label,
        "determinism_cost_profile": res.cost_profile,
        "failed_requests": [
            {k: getattr(r, k) for k in ("profile", "prompt_id", "batch_id", "error", "extra")} for r in res.failures
        ],
        "reference": reference_json(res),
        "localization": localization_json(res.localization),
        "notes": res.notes,
    }


def write(res: RunResult) -> None:
    res.run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(res.run_dir / "summary.md", summary_md(res))
    atomic.write_json(res.run_dir / "report.json", to_json(res))
