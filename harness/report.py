"""Human and machine reports of one run: summary.md (tabulate, github), report.json, console tables."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate

from . import __version__, atomic, envinfo
from .analysis import latency
from .analysis.determinism import Verdict
from .records import Record
from .analysis.stats import Change
from .runner import JobOutcome
from .suite import Suite

SCHEMA_VERSION = 1
MARK = {"pass": "pass", "fail": "FAIL", "report": "report", "no data": "NO DATA", "no baseline": "no baseline",
        "not comparable": "x NOT COMPARABLE", "updated": "updated"}


@dataclass
class BaselineResult:
    device_key: str = ""
    verdicts: list[Verdict] = field(default_factory=list)          # property "baseline", one per profile
    changes: dict[str, list[Change]] = field(default_factory=dict)  # profile -> latency gate rows
    sources: dict[str, str] = field(default_factory=dict)           # profile -> baseline file and provenance
    notes: list[str] = field(default_factory=list)


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
    cost: list[Change] = field(default_factory=list)                         # deterministic vs default
    failures: list[Record] = field(default_factory=list)                     # requests that failed after retries

    def all_verdicts(self) -> list[Verdict]:
        return self.verdicts + self.baseline.verdicts

    @property
    def result(self) -> str:
        return {0: "pass", 1: "fail"}.get(self.exit_code, "error")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _clip(s: str, n: int = 110) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


SHARES = ("repeatability", "batch-invariance", "baseline")


def verdict_table(verdicts: list[Verdict]) -> str:
    def shares(v: Verdict) -> tuple[str, str]:
        if v.property not in SHARES or v.expect == "-":
            return "-", "-"
        return ("n/a" if v.level == "text" else _pct(v.share_bitwise)), _pct(v.share_tokens)

    rows = [[v.property, v.expect, MARK[v.status], v.level if v.property in SHARES and v.sequences else "-", v.sequences, *shares(v),
             v.max_unique or "-", _clip(v.worst.describe() if v.worst else ("-" if v.property in SHARES else v.reason), 90)]
            for v in verdicts]
    return tabulate(rows, headers=["property", "expect", "verdict", "compared on", "sequences", "bitwise", "identical",
                                   "max unique outputs/prompt", "worst case"], tablefmt="github")


def jobs_table(jobs: list[JobOutcome]) -> str:
    rows = []
    for j in jobs:
        load = sum(j.meta.get("load_s", {}).values()) if j.meta.get("load_s") else None
        run_s = j.meta.get("run_s")
        rows.append([j.profile, j.status, f"{j.completed}/{j.expected}", f"{load:.1f}" if load else "-",
                     f"{run_s:.1f}" if run_s else "-",
                     f"{j.meta['tokens_per_s']:.1f}" if "tokens_per_s" in j.meta else "-",
                     f"{j.meta['sequences'] / run_s:.2f}" if run_s and "sequences" in j.meta else "-", f"{j.wall_s:.1f}"])
    return tabulate(rows, headers=["profile", "worker", "sequences", "load s", "generate s", "tokens/s", "sequences/s",
                                   "wall s"], tablefmt="github")


def failures_md(res: RunResult) -> list[str]:
    """Each failed request, then the tail of its server's log: what an on-call engineer reads first."""
    if not res.failures:
        return []
    rows = [[r.profile, r.prompt_id, r.batch_id, r.extra.get("attempts", 1), _clip(r.error, 140)] for r in res.failures]
    md = ["## Failed requests", "", tabulate(rows, headers=["profile", "prompt", "batch", "attempts", "error"],
                                             tablefmt="github"), ""]
    for j in res.jobs:
        if j.server_log and any(r.profile == j.profile for r in res.failures):
            from .server import log_tail
            md += [f"Server log tail for `{j.profile}` ({j.server_log}):", "", "```", *log_tail(Path(j.server_log)), "```", ""]
    return md


def _num(name: str, v: float) -> str:
    return "-" if v != v else f"{latency.scale(name, v):.4g}"


def change_table(changes: list[Change], before: str = "before", after: str = "after") -> str:
    """asv compare style: + worse, - better, ~ not significant, x not comparable or too few samples, ! failed."""
    rows = []
    for c in changes:
        ci = "-" if c.ci_low != c.ci_low else f"[{c.ci_low:.3f}, {c.ci_high:.3f}]"
        rows.append([c.mark, f"{c.metric} ({latency.UNITS.get(latency.metric_kind(c.metric), '')})", _num(c.metric, c.before),
                     _num(c.metric, c.after), "-" if c.ratio != c.ratio else f"{c.ratio:.3f}", ci,
                     "-" if c.p != c.p else f"{c.p:.3g}", "-" if c.detectable != c.detectable else _pct1(c.detectable),
                     f"{_pct1(c.threshold)}", c.status + (f": {c.note}" if c.note else "")])
    return tabulate(rows, headers=["", "metric", before, after, "ratio", "95% CI", "p", "detectable", "threshold", "status"],
                    tablefmt="github")


def _pct1(x: float) -> str:
    return f"{100 * x:.1f}%"


def latency_table(samples: dict[str, dict[str, list[float]]]) -> str:
    rows = []
    for prof, metrics in samples.items():
        for name, xs in sorted(metrics.items()):
            q = latency.percentiles(xs)
            if q:
                rows.append([prof, f"{name} ({latency.UNITS.get(latency.metric_kind(name), '')})", q["n"],
                             _num(name, q["p50"]), _num(name, q["p90"]), _num(name, q["p99"])])
    return tabulate(rows, headers=["profile", "metric", "n", "p50", "p90", "p99"], tablefmt="github")


def unique_table(verdicts: list[Verdict]) -> str:
    """Distinct outputs per prompt: tokens, and in brackets distinct logits bit patterns."""
    cols = [v for v in verdicts if v.unique_outputs]
    prompts = sorted({p for v in cols for p in v.unique_outputs})
    rows = [[p] + [f"{v.unique_outputs.get(p, '-')}" + (f" ({v.unique_bits.get(p, '-')})" if v.unique_bits else "")
                   for v in cols] for p in prompts]
    return tabulate(rows, headers=["prompt"] + [f"{v.profile} {v.property}" for v in cols], tablefmt="github")


def console(res: RunResult) -> str:
    out = [f"suite {res.suite.name} on {res.suite.model.device} ({res.suite.model.ref}, {res.suite.model.dtype})", "",
           jobs_table(res.jobs), ""]
    for p in res.suite.profiles:
        vs = [v for v in res.all_verdicts() if v.profile == p.name]
        if vs:
            out += [f"profile {p.name}", verdict_table(vs), ""]
        if p.name in res.baseline.changes:
            out += [f"latency of {p.name} against the baseline", change_table(res.baseline.changes[p.name]), ""]
    if res.cost:
        out += ["determinism cost (deterministic against default, same run)", change_table(res.cost, "default", "deterministic"), ""]
    if res.suite.endpoint is not None:
        if any(v.unique_outputs for v in res.verdicts):
            out += ["unique outputs per prompt (in brackets: distinct logprob patterns, where the server gives them)",
                    unique_table(res.verdicts), ""]
        if any(res.latency.values()):
            out += ["latency through the server", latency_table(res.latency), ""]
    out += [f"! {j.describe()}" for j in res.jobs if not j.ok]
    out += [f"! request failed: {r.profile} prompt {r.prompt_id!r} in {r.batch_id}: {r.error}" for r in res.failures[:10]]
    if len(res.failures) > 10:
        out += [f"! ... and {len(res.failures) - 10} more failed requests (see summary.md)"]
    out += [f"x {v.profile}: {v.reason}" for v in res.baseline.verdicts if v.status == "not comparable"]
    out += [f"note: {n}" for n in res.notes]
    out += [f"result: {res.result.upper()} (exit {res.exit_code}); report: {res.run_dir / 'summary.md'}"]
    return "\n".join(out)


def summary_md(res: RunResult) -> str:
    s = res.suite
    md = [f"# {s.name}: {res.result.upper()}", "",
          f"Run `{res.run_id}` · device `{s.model.device}` · model `{s.model.ref}` · dtype `{s.model.dtype}` · "
          f"case hash `{s.case_hash}` · harness {__version__}", "", "## Workers", "", jobs_table(res.jobs), ""]
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
        md += [f"Flags: {env}; torch deterministic algorithms: {'on' if p.torch_deterministic else 'off'}", "",
               verdict_table(vs), ""]
        for v in vs:
            md += [f"- **{v.property}** ({MARK[v.status]}): {v.reason}"]
            if v.worst:
                md += [f"  - worst: {v.worst.describe()}"]
        if p.name in res.baseline.sources:
            md += [f"- baseline: {res.baseline.sources[p.name]}"]
        md += [""]
        if p.name in res.baseline.changes:
            md += ["Latency against the baseline (`+` worse, `-` better, `~` not significant, `x` not comparable, "
                   "`!` failed):", "", change_table(res.baseline.changes[p.name]), ""]
    if res.cost:
        md += ["## Determinism cost", "", "The `deterministic` profile's latency relative to `default`, in the same run:", "",
               change_table(res.cost, "default", "deterministic"), ""]
    if any(res.latency.values()):
        md += ["## Latency", "", latency_table(res.latency), ""]
    if any(v.unique_outputs for v in res.verdicts):
        md += ["## Unique outputs per prompt", "", "Distinct token sequences (texts, where the server returns text only), "
               "and in brackets distinct logits bit patterns (logprob patterns for a server), across every sequence of "
               "the prompt in that property (reference included).", "",
               unique_table(res.verdicts), ""]
    if res.notes:
        md += ["## Notes", "", *[f"- {n}" for n in res.notes], ""]
    return "\n".join(md)


def to_json(res: RunResult) -> dict:
    s = res.suite
    env = envinfo.relevant_env(os.environ)
    return {
        "schema_version": SCHEMA_VERSION, "harness_version": __version__, "run_id": res.run_id,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(res.started)),
        "result": res.result, "exit_code": res.exit_code,
        "suite": {"name": s.name, "path": s.path, "case_hash": s.case_hash, "model": s.model.ref, "dtype": s.model.dtype,
                  "device": s.model.device},
        "environment": {"host": envinfo.host(), "env": env},
        "jobs": [{**{k: v for k, v in dataclasses.asdict(j).items() if k != "meta"},
                  "profile_hash": s.profile_hash(s.profile(j.profile)), "worker": j.meta, "description": j.describe()}
                 for j in res.jobs],
        "device_key": res.baseline.device_key,
        "verdicts": [{**dataclasses.asdict(v), "share_bitwise": v.share_bitwise, "share_tokens": v.share_tokens}
                     for v in res.all_verdicts()],
        "baselines": res.baseline.sources,
        "latency": {prof: {name: {**latency.percentiles(xs), "samples": xs} for name, xs in m.items()}
                    for prof, m in res.latency.items()},
        "perf": {prof: [{**dataclasses.asdict(c), "mark": c.mark} for c in cs] for prof, cs in res.baseline.changes.items()},
        "determinism_cost": [{**dataclasses.asdict(c), "mark": c.mark} for c in res.cost],
        "failed_requests": [{k: getattr(r, k) for k in ("profile", "prompt_id", "batch_id", "error", "extra")}
                            for r in res.failures],
        "notes": res.notes,
    }


def _finite(x):
    """NaN is not JSON; an undefined statistic is written as null."""
    if isinstance(x, float) and x != x or x in (float("inf"), float("-inf")):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write(res: RunResult) -> None:
    res.run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(res.run_dir / "summary.md", summary_md(res))
    atomic.write_text(res.run_dir / "report.json", json.dumps(_finite(to_json(res)), indent=1))
