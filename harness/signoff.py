"""`harness signoff`: the pre-release answer in one place. The doctor first; then every suite of the sign-off file
(suites/signoff.toml) through the one seam in run.py against the stored baselines; then one report: GO, NO-GO or
INCOMPLETE on its first line, every gate with its verdict and run, the environment against the baselines', the
model files' hashes, and SHA256SUMS over every artifact so that `harness signoff --verify DIR` can check it later.

GO needs every gate to have run and passed: a gate that was skipped (no baseline for this host, timings of other
hardware, too few samples, a suite that did not run) makes the result INCOMPLETE, never GO.
Exit codes (the harness's one rule): 0 GO; 1 NO-GO or INCOMPLETE (the first line says which); 2 an input error (a
suite, the sign-off file, or an error the doctor found); 3 infrastructure (a worker or server failed).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from . import __version__, atomic, baselines, doctor, envinfo, run
from .errors import CHECK_FAILED, INFRA, OK, USAGE, HarnessError, one_line
from .models import file_hashes, sha256
from .tomltable import SuiteError, Table, read_toml

if TYPE_CHECKING:
    from .analysis.stats import Change

SIGNOFF_FORMAT = 1
SUMS = "SHA256SUMS"
GateVerdict = Literal["pass", "fail", "incomplete", "error", "not comparable", "not run", "not in scope"]
Result = Literal["GO", "NO-GO", "INCOMPLETE"]


@dataclass(frozen=True)
class GateSpec:
    suite: Path
    profiles: tuple[str, ...] = ()  # empty: the suite's own
    requires: tuple[str, ...] = ()  # Python modules of an extra: without them the gate is out of scope


@dataclass(frozen=True)
class Spec:
    path: Path
    gates: tuple[GateSpec, ...]
    device: str | None = None


def load_spec(path: Path) -> Spec:
    """The sign-off file; one line naming the file and key for anything wrong in it (exit 2)."""
    try:
        root = Table(str(path), "", read_toml(path, "sign-off file"))
        head = root.sub("signoff")
        version = head.get("version", int, expect=f"the sign-off format version, {SIGNOFF_FORMAT}")
        if version != SIGNOFF_FORMAT:
            raise head.fail("version", f"unsupported format {version}; this harness reads {SIGNOFF_FORMAT}")
        device = head.get("device", str, "", check=lambda v: v in ("", "cpu", "cuda", "npu"), expect="cpu|cuda|npu")
        raw = head.get("gates", list, expect='a list such as [{ suite = "determinism.toml" }]')
        head.done()
        root.done()
        gates = []
        for i, g in enumerate(raw):
            t = Table(str(path), f"signoff.gates[{i}]", g)
            suite = Path(path).parent / t.get("suite", str, expect="a suite file, relative to the sign-off file")
            if not suite.is_file():
                raise t.fail("suite", f"file {suite} not found")
            strings = {"check": lambda v: all(isinstance(x, str) for x in v), "expect": "a list of strings"}
            gates.append(
                GateSpec(
                    suite=suite,
                    profiles=tuple(t.get("profiles", list, [], **strings)),
                    requires=tuple(t.get("requires", list, [], **strings)),
                )
            )
            t.done()
    except SuiteError as e:
        raise HarnessError(str(e), USAGE) from None
    if not gates:
        raise HarnessError(f"{path}: signoff.gates: empty; name at least one suite", USAGE)
    return Spec(Path(path), tuple(gates), device or None)


def default_suites(path: Path) -> list[Path]:
    """The doctor's default scope: the sign-off file's suites (none when there is no such file)."""
    try:
        return [g.suite for g in load_spec(path).gates if available(g.requires)]
    except HarnessError:
        return []


def available(modules: tuple[str, ...]) -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in modules)


# ---- gates -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    name: str  # the suite file's stem
    suite: str
    verdict: GateVerdict
    exit_code: int | None = None
    run_dir: str = ""  # relative to the sign-off folder
    checks: tuple[run.Check, ...] = ()
    reasons: tuple[str, ...] = ()  # why it is not a pass
    todo: str = ""  # what to do about it
    judged_at: str = ""  # the timing rows' thresholds and what they were judged against: what a pass can claim


UNJUDGED = {
    "insufficient": "too few samples or baseline runs for these rows: add runs to the baseline (harness calibrate "
    "SUITE, or another --update-baselines) or raise the suite's repeats",
    "noisy": "only passes that ran beside other work decide these rows: rerun on a quiet runner",
    "underpowered": "this run could not have seen a change of the threshold's size (detectable > threshold): rerun "
    "on a quieter runner, raise the repeats, or calibrate thresholds for this runner (harness calibrate SUITE)",
}


def unjudged_rows(rows: list[Change]) -> list[tuple[str, str]]:
    """(metric, why) of the gated timing rows a run could not judge: `insufficient`, `noisy`, or `~` where the
    smallest change the run could detect is larger than the threshold (a pass that proves nothing). The rows are
    a run's timings against its baselines; the determinism cost and the load-time recommendation compare settings,
    not releases, and are not gates."""
    out = []
    for r in rows:
        if r.status in UNJUDGED:
            out.append((r.metric, r.status))
        elif r.status == "~" and r.detectable > r.threshold:  # nan compares false: unknown is not underpowered
            out.append((f"{r.metric} (detectable {r.detectable:.0%} > threshold {r.threshold:.0%})", "underpowered"))
    return out


def judged_at(rows: list[Change]) -> str:
    """The range of the gated timing rows' thresholds and the baseline runs behind them: a pass claims no
    regression beyond these, and a runner calibrated from few or drifting runs claims little."""
    gated = [r for r in rows if r.status not in ("not comparable", "failed")]
    if not gated:
        return ""
    thr = [r.threshold for r in gated]
    runs = sorted({r.runs for r in gated})
    against = " or ".join("1 run (within-run test)" if n == 0 else f"{n} runs" for n in runs)
    lo, hi = min(thr), max(thr)
    span = f"{lo:.0%}" if lo == hi else f"{lo:.0%} to {hi:.0%}"
    return f"{span} ({len(thr)} row{'s' if len(thr) > 1 else ''}; baseline {against})"


def judge(name: str, suite: str, outcome: run.Outcome, rel_dir: str) -> Gate:
    """A suite's outcome as one gate: its exit code first (3 and 2 are no verdict on the release), then its checks."""
    checks = tuple(outcome.checks)
    failed = [c for c in checks if c.outcome == "failed"]
    skipped = [c for c in checks if c.outcome == "skipped"]
    thin = sorted(set(unjudged_rows(outcome.timing)))
    line = lambda c: f"{c.group}::{c.name}: {one_line(c.message.splitlines()[0]) if c.message else c.outcome}"  # noqa: E731
    common = {
        "name": name,
        "suite": suite,
        "exit_code": outcome.exit_code,
        "run_dir": rel_dir,
        "checks": checks,
        "judged_at": judged_at(outcome.timing),
    }
    if outcome.exit_code == INFRA:
        return Gate(
            **common,
            verdict="error",
            reasons=tuple(map(line, failed)) or ("infrastructure error",),
            todo=f"read {rel_dir}/summary.md (worker or server log), fix the cause, rerun the sign-off",
        )
    if outcome.exit_code == USAGE:
        return Gate(
            **common,
            verdict="not comparable",
            reasons=tuple(map(line, failed)),
            todo="a baseline cannot be compared (suite changed or file damaged): review, then re-record it with "
            "--update-baselines --reason '...'",
        )
    if failed:
        return Gate(**common, verdict="fail", reasons=tuple(map(line, failed)), todo=f"see {rel_dir}/summary.md")
    if skipped or thin:
        todo = (
            [f"record this host's baselines: harness run {suite} --update-baselines --reason '...'"] if skipped else []
        )
        todo += [UNJUDGED[st] for st in sorted({st for _, st in thin})]
        return Gate(
            **common,
            verdict="incomplete",
            reasons=tuple(map(line, skipped)) + tuple(f"{m}: {st}" for m, st in thin),
            todo="; ".join(todo),
        )
    return Gate(**common, verdict="pass")


def decide(findings: list[doctor.Finding], gates: list[Gate]) -> tuple[Result, int, str]:
    """(result, exit code, the first line's reason). Exit codes keep the harness's rule: 3 infrastructure, else 2
    input, else 1 anything short of GO, else 0."""
    counted = [g for g in gates if g.verdict != "not in scope"]
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        return "NO-GO", USAGE, f"the doctor found {len(errors)} error(s): {', '.join(sorted({f.id for f in errors}))}"
    codes = [g.exit_code or 0 for g in counted]
    code = INFRA if INFRA in codes else USAGE if USAGE in codes else OK
    failed = [g.name for g in counted if g.verdict == "fail"]
    if failed:
        return "NO-GO", max(code, CHECK_FAILED), f"{len(failed)} of {len(counted)} gates failed: {', '.join(failed)}"
    short = [f"{g.name} ({g.verdict})" for g in counted if g.verdict != "pass"]
    if short or not counted:
        why = ", ".join(short) or "no gate ran"
        return "INCOMPLETE", max(code, CHECK_FAILED), f"{len(short)} of {len(counted)} gates not judged: {why}"
    return "GO", OK, f"all {len(counted)} gates passed"


# ---- the environment against the baselines ---------------------------------------------------------------

# What a release reader asks about first; shown even where the baselines do not record it.
VOLATILE = {"url"}  # a served run's URL names a free port picked per start: a difference there means nothing
HEADLINE = ("chip", "cpu_model", "driver", "firmware", "cann", "torch", "torch_npu", "transformers", "server")


def other_keys(gate: Gate, used: list[baselines.BaselineUse]) -> Gate:
    """A gate judged against another key's baseline (another torch, CANN or chip) passed at that tier's weaker
    level; for a release that is not enough: the baselines of this key must be recorded (and reviewed) first."""
    other = sorted({f"{u.path} ({u.tier})" for u in used if u.tier != "same key"})
    if gate.verdict != "pass" or not other:
        return gate
    return dataclasses.replace(
        gate,
        verdict="incomplete",
        reasons=(
            f"no baseline for this key: compared with {', '.join(other[:3])}" + (" ..." if len(other) > 3 else ""),
        ),
        todo=f"review, then record this key's baselines: harness run {gate.suite} --update-baselines --reason '...'",
    )


def environment_rows(base: dict, now: dict, base_commit: str, commit: str) -> list[list[str]]:
    """field, baseline, this run, mark: `!` changed, blank same, `?` not recorded on one side."""
    dev = dict(base.get("device", {}))
    dev["python"] = base.get("host", {}).get("python", "")
    keys = [k for k in HEADLINE if k in dev or k in now] + sorted((set(dev) | set(now)) - set(HEADLINE) - VOLATILE)
    keys += [k for k in HEADLINE if k not in keys and now.get("device") == "npu"]
    rows = []
    for k in keys:
        a, b = str(dev.get(k, "") or "not recorded"), str(now.get(k, "") or "not recorded")
        rows.append([k, a, b, "?" if "not recorded" in (a, b) and a != b else "!" if a != b else ""])
    rows.append(
        ["harness commit", base_commit or "not recorded", commit or "unknown", "!" if base_commit != commit else ""]
    )
    return rows


@dataclass
class EnvDiff:
    baselines: list[str]
    rows: list[list[str]]


def environment_diff(per_gate: list[tuple[list[baselines.BaselineUse], dict]], commit: str) -> list[EnvDiff]:
    """One table per distinct (baseline environment, this run's device): which baselines share it, and each field."""
    out: dict[str, EnvDiff] = {}
    for used, now in per_gate:
        for u in used:
            rows = environment_rows(u.environment, now, u.commit, commit)
            key = json.dumps(rows, sort_keys=True)
            out.setdefault(key, EnvDiff([], rows)).baselines.append(str(u.path))
    return list(out.values())


def model_rows(dirs: list[Path], store: Path) -> list[list[str]]:
    """Every file of the model folders with its sha256, against what the baselines recorded."""
    rows = []
    for d in dirs:
        for name, h in file_hashes(d, None).items():
            rec = set(baselines.Store(store).model_file_hashes(name).values())
            mark = (
                "not recorded" if not rec else "matches the baselines" if rec == {h} else "DIFFERS from the baselines"
            )
            rows.append([str(d / name), h, mark])
    return rows


# ---- the manifest ----------------------------------------------------------------------------------------


def write_sums(folder: Path) -> Path:
    """SHA256SUMS over every file in the folder (sha256sum's format: `sha256sum -c` checks it too)."""
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}" for p in _files(folder)]
    atomic.write_text(folder / SUMS, "\n".join(lines) + "\n")
    return folder / SUMS


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != SUMS)


def outside(folder: Path, name: str) -> str:
    """Why a manifest entry does not name a file inside `folder` ("" when it does)."""
    rel = Path(name)
    if rel.is_absolute():
        return "an absolute path"
    if ".." in rel.parts:
        return "a path with '..'"
    try:
        (folder / rel).resolve().relative_to(folder.resolve())
    except ValueError:
        return "a link out of the folder"
    return ""


def verify(folder: Path) -> tuple[int, list[str]]:
    """(0, []) when every file matches SHA256SUMS; (1, what changed); HarnessError(USAGE) for no manifest."""
    sums = Path(folder) / SUMS
    try:
        text = sums.read_text(encoding="utf-8")
    except OSError as e:
        raise HarnessError(
            f"{sums}: cannot read the manifest ({e.strerror or e}); is {folder} a sign-off folder?", USAGE
        ) from None
    listed: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        h, sep, name = line.partition("  ")
        if not sep or len(h) != 64 or not name:
            raise HarnessError(f"{sums}:{n}: not a `sha256  path` line", USAGE)
        listed[name] = h
    problems = []
    for name, h in listed.items():
        p = Path(folder) / name
        if why := outside(Path(folder), name):
            problems.append(f"refused: {name} ({why}; a manifest vouches only for the folder it sits in)")
        elif not p.is_file():
            problems.append(f"missing: {name}")
        elif sha256(p) != h:
            problems.append(f"changed: {name} (sha256 {sha256(p)[:16]}, manifest {h[:16]})")
    problems += [
        f"not in the manifest: {p.relative_to(folder).as_posix()}"
        for p in _files(Path(folder))
        if p.relative_to(folder).as_posix() not in listed
    ]
    return (CHECK_FAILED if problems else OK), problems


# ---- the run ---------------------------------------------------------------------------------------------


@dataclass
class SignoffResult:
    result: Result
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


def run_doctor(ctx: doctor.Context) -> list[doctor.Finding]:
    return doctor.run_checks(ctx)


def execute(spec: Spec, opts: run.Options, python: str | None = None) -> SignoffResult:
    started = time.time()
    rd = run.RunDir.create(opts.out, "signoff")
    for sub in ("jobs", "records", "logs"):
        (rd.path / sub).rmdir()  # a sign-off keeps its suites' runs under runs/
    in_scope = [g for g in spec.gates if available(g.requires)]
    ctx = doctor.build_context(
        [g.suite for g in in_scope],
        device=opts.device,
        model=opts.model,
        python=python,
        baselines=opts.baselines,
        opts=opts,
    )
    findings = run_doctor(ctx)
    atomic.write_json(rd.path / "doctor.json", doctor.to_json(findings))
    done: dict[int, Gate] = {
        i: Gate(g.suite.stem, str(g.suite), "not in scope", reasons=(f"needs {', '.join(g.requires)}, not installed",))
        for i, g in enumerate(spec.gates)
        if g not in in_scope
    }
    todo = [(i, g) for i, g in enumerate(spec.gates) if i not in done]
    per_gate: list[tuple[list[baselines.BaselineUse], dict]] = []
    commit = envinfo.project_commit()  # the same commit the baselines record
    models = model_rows(ctx.model_dirs, opts.baselines)

    def report(pending: str) -> SignoffResult:
        """The sign-off as it stands, written whole: after the doctor and after every gate, so a sign-off killed
        at gate N leaves a report of the gates before it, INCOMPLETE, naming the ones that never ran."""
        left = {i: Gate(g.suite.stem, str(g.suite), "not run", reasons=(pending,)) for i, g in todo if i not in done}
        gates = [{**done, **left}[i] for i in range(len(spec.gates))]
        result, code, reason = decide(findings, gates)
        res = SignoffResult(
            result=result,
            exit_code=code,
            reason=reason,
            folder=rd.path,
            findings=findings,
            gates=gates,
            env=environment_diff(per_gate, commit),
            models=models,
            started=started,
            commit=commit,
            spec=str(spec.path),
        )
        write(res)
        return res

    if any(f.severity == "error" for f in findings):
        return report("the doctor found errors")
    runs = rd.path / "runs"
    runs.mkdir()
    loaded = []
    for i, g in todo:
        o = dataclasses.replace(opts, out=runs, profiles=opts.profiles or list(g.profiles) or None)
        loaded.append((i, g, o, *run.load(g.suite, o)))  # all validated before anything runs
    stopped = "the sign-off stopped before this gate ran (killed or interrupted): rerun it"
    res = report(stopped)
    for i, g, o, kind, suite in loaded:
        print(f"signoff: gate {g.suite.stem} ({g.suite})", file=sys.stderr, flush=True)
        try:
            outcome = run.execute(kind, suite, o)  # the gate's history row and report.html, as any run's
        except HarnessError as e:  # the model would not prepare, the run directory could not be made
            done[i] = Gate(g.suite.stem, str(g.suite), "error", e.code, reasons=(str(e),), todo="fix and rerun")
        else:
            rel = outcome.run_dir.relative_to(rd.path).as_posix()
            done[i] = other_keys(judge(g.suite.stem, str(g.suite), outcome, rel), outcome.baselines)
            per_gate.append((outcome.baselines, outcome.device))
        res = report(stopped)
    return res


# ---- the report ------------------------------------------------------------------------------------------

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


def to_json(res: SignoffResult) -> dict:
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


def main(args: Any, opts: run.Options) -> int:
    if args.verify is not None:
        code, problems = verify(args.verify)
        for p in problems:
            print(f"signoff --verify: {p}")
        print(
            f"signoff --verify {args.verify}: "
            + ("every file matches SHA256SUMS" if code == OK else f"{len(problems)} problem(s)")
        )
        return code
    spec = load_spec(args.file)
    if spec.device and not opts.device:
        opts.device = spec.device
    if opts.update_baselines:
        raise HarnessError(
            "signoff judges against the baselines; record them with harness run --update-baselines", USAGE
        )
    res = execute(spec, opts, args.python)
    print(console(res), flush=True)
    return res.exit_code
