"""The determinism kind (an in-process model) and its served variant, as the registry names them: what a run of
either reports (its checks, known before it runs), and its Outcome, from the pipeline's result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import atomic, report, tables
from .errors import OK
from .jobs import JobOutcome
from .options import Options
from .outcome import Check, Outcome
from .pipeline import execute, load_suite
from .run import RunDir
from .suite import PROPERTIES, Suite


def checks(res: report.RunResult) -> list[Check]:
    """Each profile's verdicts as checks: pytest items and the console's verdict lines. A suite with several tensor
    parallel degrees names them per degree (`tp3::batch-invariance`) plus the profile's `tp-invariance`."""
    out = []
    par = res.suite.parallel
    if par.node_rank > 0:
        return [
            Check(j.profile, f"tp{j.tp}::group", "passed" if j.ok else "failed", "" if j.ok else j.describe())
            for j in res.jobs
        ]
    for p in res.suite.profiles:
        for name in DETERMINISM.items_for(res.suite, p.name):
            prefix, _, prop = name.rpartition("::")
            tp = int(prefix.removeprefix("tp")) if prefix else par.tp[0]
            degrees = par.tp if prop == "tp-invariance" else (tp,)
            jobs = [j for j in res.jobs if j.profile == p.name and j.tp in degrees]
            lines = [j.describe() for j in jobs if not j.ok]
            skip = ""
            found = [
                v
                for v in res.all_verdicts()
                if v.profile == p.name and v.property == prop and (prop == "tp-invariance" or v.tp == tp)
            ]
            if prop == "latency":
                changes = res.baseline.changes.get(p.name)
                bad = [c for c in changes or [] if c.status == "regressed"]
                ref = res.baseline.reference.get(p.name, [])
                slower = [c for c in ref if c.status == "regressed"]
                if (changes is None or not res.baseline.gated.get(p.name)) and not ref:
                    skip = res.baseline.ungated_note if changes is not None else "no latency baseline to compare with"
                elif bad:
                    lines += [
                        "latency regressed: " + "; ".join(f"{c.metric} x{c.ratio:.3f} (p={c.p:.3g})" for c in bad),
                        tables.change_table(changes or []),
                    ]
                if slower:
                    reference = res.suite.perf.reference if res.suite.perf else ""
                    lines += [
                        f"slower than the reference {reference!r} in this run: "
                        + "; ".join(f"{c.metric} x{c.ratio:.3f} (p={c.p:.3g})" for c in slower),
                        tables.change_table(ref, reference, p.name),
                    ]
            elif prop == "tp-invariance" and len(par.tp) < 2:
                skip = par.why or "one degree: nothing to compare tp-invariance with"
            elif not found:
                lines.append(f"no {prop} verdict (the worker produced nothing to compare)")
            elif all(v.status == "no baseline" for v in found):
                skip = found[0].reason
            for v in found:
                if not v.passed:
                    at = f" at tp {v.tp}" if prop == "tp-invariance" else ""
                    lines.append(f"{v.property}{at} expected {v.expect!r}: {v.reason}")
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

    def load(self, path: Path, data: dict[str, Any], opts: Options) -> Suite:
        return load_suite(path, data, opts)

    def items_for(self, suite: Suite, profile: str) -> list[str]:
        props = [p for p in PROPERTIES if any(s.property == p for s in suite.schedules)] + ["baseline"]
        if suite.perf is not None:
            props.append("latency")
        if suite.endpoint is not None and suite.endpoint.oversize_check:
            props.append("input-limit")
        if not suite.parallel.multi:
            return props  # one process per profile: the names every single-device suite has always had
        names = [f"tp{tp}::{n}" for tp in suite.parallel.tp for n in props]
        return names + (["tp-invariance"] if len(suite.parallel.tp) > 1 or suite.parallel.auto else [])

    def items(self, suite: Suite) -> list[tuple[str, str]]:
        if suite.parallel.node_rank > 0:  # another host's share of the groups: did it finish; node 0 judges
            return [(p.name, f"tp{tp}::group") for p in suite.profiles for tp in suite.parallel.tp if tp > 1]
        return [(p.name, n) for p in suite.profiles for n in self.items_for(suite, p.name)]

    def execute(self, suite: Suite, opts: Options) -> Outcome:
        from .headline import from_run

        if why := suite.skipped_here():  # no worker starts; the run folder says why, so a link to it holds
            rd = RunDir.create(opts.out, suite.name)
            atomic.write_text(rd.path / "summary.md", f"# {suite.name}: skipped\n\n{why}\n")
            skipped = [Check(group, name, "skipped", why) for group, name in self.items(suite)]
            return Outcome(OK, f"{why}\nresult: SKIPPED (exit 0); report: {rd.path / 'summary.md'}", rd.path, skipped)
        res = execute(suite, opts)
        return Outcome(
            res.exit_code,
            report.console(res),
            res.run_dir,
            checks(res),
            from_run(res),
            res,
            timing=[c for cs in res.baseline.changes.values() for c in cs]
            + [c for cs in res.baseline.reference.values() for c in cs],
            baselines=list(res.baseline.used.values()),
            written=dict(res.baseline.written),
            device=device_facts(res.jobs),
        )


def device_facts(jobs: list[JobOutcome]) -> dict[str, Any]:
    """The device and software the first worker that loaded read, with its Python."""
    for j in jobs:
        if d := j.meta.get("device"):
            return {**d, "python": j.meta.get("host", {}).get("python", "")}
    return {}


DETERMINISM = SuiteKind("determinism")
SERVED = SuiteKind("served")
