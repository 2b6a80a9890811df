"""The sign-off's report: signoff.md, signoff.json, the console lines, and the manifest over them."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__, atomic, doctor
from ..errors import one_line
from ..models import sha256
from ..status import Decision

if TYPE_CHECKING:
    pass
from .environment import EnvDiff
from .gates import Gate
from .manifest import SUMS, write_sums


@dataclass
class SignoffResult:
    result: Decision
    exit_code: int
    reason: str
    folder: Path
    findings: list[doctor.Finding]
    gates: list[Gate]
    env: list[EnvDiff] = field(default_factory=list)
    models: list[list[str]] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    commit: str = ""
    spec: str = ""


MARK = {
    "pass": "✓",
    "fail": "!",
    "incomplete": "x",
    "error": "!",
    "not comparable": "x",
    "not run": "x",
    "not in scope": "-",
}


def gate_rows(res: SignoffResult) -> list[list[str]]:
    rows = []
    for g in res.gates:
        link = f"[{g.run_dir}]({g.run_dir}/summary.md)" if g.run_dir else ""
        if g.run_dir and (res.folder / g.run_dir / "report.html").is_file():
            link += f" ([html]({g.run_dir}/report.html))"
        rows.append([MARK[g.verdict], g.name, g.verdict, g.judged_at, "; ".join(g.reasons)[:400], g.todo, link])
    return rows


def markdown(res: SignoffResult) -> str:
    from tabulate import tabulate

    md = [
        f"# {res.result}: {res.reason}",
        "",
        f"Sign-off `{res.folder.name}` · {time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime(res.started))} · "
        f"harness {__version__} at commit `{res.commit or 'unknown'}` · sign-off file `{res.spec}`",
        "",
        "GO needs every gate run and passed; a skipped gate makes the result INCOMPLETE. Verify this folder later "
        f"with `harness signoff --verify {res.folder}` (or `sha256sum -c {SUMS}` inside it).",
        "",
        "## Gates",
        "",
        tabulate(
            gate_rows(res),
            headers=["", "gate", "verdict", "timing thresholds", "why", "what to do", "run"],
            tablefmt="github",
        ),
        "",
        "A timing gate's pass claims no regression beyond its thresholds; calibrated thresholds are as wide as the "
        "runner's run-to-run drift (harness calibrate SUITE --runs N: more runs, narrower thresholds).",
        "",
    ]
    for g in res.gates:
        if g.checks:
            md += [f"<details><summary>{g.name}: {len(g.checks)} checks</summary>", ""]
            md += [
                f"- `{c.group}::{c.name}` {c.outcome}" + (f": {one_line(c.message)[:300]}" if c.message else "")
                for c in g.checks
            ]
            md += ["", "</details>", ""]
    md += ["## Doctor", "", doctor.table(res.findings), "", doctor.summary(res.findings), ""]
    md += ["## Environment against the baselines", ""]
    if not res.env:
        md += ["No baseline was compared with (see the gates), so there is no recorded environment to diff.", ""]
    for e in res.env:
        md += [
            f"Baselines: {', '.join(f'`{b}`' for b in e.baselines[:6])}"
            + (f" and {len(e.baselines) - 6} more" if len(e.baselines) > 6 else ""),
            "",
            tabulate(e.rows, headers=["field", "baseline", "this run", ""], tablefmt="github"),
            "",
        ]
    md += ["`!` changed · `?` recorded on one side only", "", "## Model files", ""]
    md += [
        tabulate(res.models, headers=["file", "sha256", "baselines"], tablefmt="github") if res.models else "none",
        "",
    ]
    md += ["## Artifacts", "", f"Every file of this folder is listed with its sha256 in `{SUMS}`.", ""]
    return "\n".join(md)


def to_json(res: SignoffResult) -> dict[str, Any]:
    return {
        "result": res.result,
        "reason": res.reason,
        "exit_code": res.exit_code,
        "schema_version": 1,
        "harness_version": __version__,
        "commit": res.commit,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(res.started)),
        "signoff_file": res.spec,
        "gates": [
            {
                **{k: v for k, v in dataclasses.asdict(g).items() if k != "checks"},
                "checks": [dataclasses.asdict(c) for c in g.checks],
            }
            for g in res.gates
        ],
        "doctor": doctor.to_json(res.findings),
        "environment": [dataclasses.asdict(e) for e in res.env],
        "model_files": [{"file": f, "sha256": h, "baselines": m} for f, h, m in res.models],
        "manifest": SUMS,
    }


def console(res: SignoffResult) -> str:
    from tabulate import tabulate

    rows = [[r[0], r[1], r[2], r[3], r[4][:160], r[6]] for r in gate_rows(res)]
    return "\n".join(
        [
            f"{res.result}: {res.reason}",
            tabulate(rows, headers=["", "gate", "verdict", "timing thresholds", "why", "run"], tablefmt="github"),
            doctor.summary(res.findings),
            f"report: {res.folder / 'signoff.md'}; manifest {res.folder / SUMS} (sha256 {sha256(res.folder / SUMS)[:16]})",
            f"result: {res.result} (exit {res.exit_code})",
        ]
    )


def write(res: SignoffResult) -> None:
    atomic.write_text(res.folder / "signoff.md", markdown(res))
    atomic.write_json(res.folder / "signoff.json", to_json(res))
    write_sums(res.folder)
