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
from .analysis.determinism import Verdict
from .runner import JobOutcome
from .suite import Suite

SCHEMA_VERSION = 1
MARK = {"pass": "pass", "fail": "FAIL", "report": "report", "no data": "NO DATA"}


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

    @property
    def result(self) -> str:
        return {0: "pass", 1: "fail"}.get(self.exit_code, "error")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _clip(s: str, n: int = 110) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def verdict_table(verdicts: list[Verdict]) -> str:
    rows = [[v.property, v.expect, MARK[v.status], v.sequences, _pct(v.share_bitwise), _pct(v.share_tokens),
             v.max_unique, _clip(v.worst.describe() if v.worst else "-", 90)] for v in verdicts]
    return tabulate(rows, headers=["property", "expect", "verdict", "sequences", "bitwise", "token-identical",
                                   "max unique outputs/prompt", "worst case"], tablefmt="github")


def jobs_table(jobs: list[JobOutcome]) -> str:
    rows = []
    for j in jobs:
        load = sum(j.meta.get("load_s", {}).values()) if j.meta.get("load_s") else None
        rows.append([j.profile, j.status, f"{j.completed}/{j.expected}", f"{load:.1f}" if load else "-",
                     f"{j.meta['run_s']:.1f}" if "run_s" in j.meta else "-",
                     f"{j.meta['tokens_per_s']:.1f}" if "tokens_per_s" in j.meta else "-", f"{j.wall_s:.1f}"])
    return tabulate(rows, headers=["profile", "worker", "sequences", "load s", "generate s", "tokens/s", "wall s"],
                    tablefmt="github")


def unique_table(verdicts: list[Verdict]) -> str:
    """Distinct outputs per prompt: tokens, and in brackets distinct logits bit patterns."""
    cols = [v for v in verdicts if v.unique_outputs]
    prompts = sorted({p for v in cols for p in v.unique_outputs})
    rows = [[p] + [f"{v.unique_outputs.get(p, '-')} ({v.unique_bits.get(p, '-')})" for v in cols] for p in prompts]
    return tabulate(rows, headers=["prompt"] + [f"{v.profile} {v.property}" for v in cols], tablefmt="github")


def console(res: RunResult) -> str:
    out = [f"suite {res.suite.name} on {res.suite.model.device} ({res.suite.model.ref}, {res.suite.model.dtype})", "",
           jobs_table(res.jobs), ""]
    for p in res.suite.profiles:
        vs = [v for v in res.verdicts if v.profile == p.name]
        if vs:
            out += [f"profile {p.name}", verdict_table(vs), ""]
    out += [f"! {j.describe()}" for j in res.jobs if not j.ok]
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
    for p in s.profiles:
        vs = [v for v in res.verdicts if v.profile == p.name]
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
        md += [""]
    if res.verdicts:
        md += ["## Unique outputs per prompt", "", "Distinct token sequences, and in brackets distinct logits bit patterns, "
               "across every sequence of the prompt in that property (reference included).", "",
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
        "verdicts": [{**dataclasses.asdict(v), "share_bitwise": v.share_bitwise, "share_tokens": v.share_tokens}
                     for v in res.verdicts],
        "notes": res.notes,
    }


def write(res: RunResult) -> None:
    res.run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(res.run_dir / "summary.md", summary_md(res))
    atomic.write_text(res.run_dir / "report.json", json.dumps(to_json(res), indent=1))
