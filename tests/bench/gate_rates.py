"""How often the latency gate cries wolf, and how often it catches a real slowdown, on this runner with the shipped
perf suite: `python -m tests.bench.gate_rates --calibrate 10 --slow 0.10:10 --slow 0.05:10` (or `nox -s gaterates`).

1. Calibrate: N A/A runs become the baseline's run history and its per-metric thresholds (`harness calibrate`).
2. A/A false alarms: each calibration run judged against the other N-1 (leave one out), every gated row of both
   profiles under the suite's one false-alarm budget, exactly as the gate judges a new run.
3. Detection: runs with every forward pass slowed by a set fraction, through an adapter installed by entry point,
   against the calibrated baseline; a run is caught when it exits 1 with a regressed TPOT row.
4. Reference mode (`--side-by-side FRACTION:RUNS`, repeatable; `--processes P`, `--repeats R`): the `default` profile
   slowed by FRACTION against a reference stack measured in the same run (`--reference-setup` exporting a fraction
   of 0: today's stack), processes as the units; FRACTION 0 is the A/A case. A run counts when it exits 1 with a
   regressed TPOT row against the reference. Prints each run's wall time and the detectable change per row, then
   a power curve (detection rate against slowdown and processes per profile) from the runs' measured spread.
Needs the machine to itself: run nothing else beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from harness import baselines
from harness.analysis import latency, stats

from ..helpers import ROOT, install_slow_adapter


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def leave_one_out(files: list[Path], budget: float) -> tuple[int, int, list[str]]:
    """(A/A runs flagged, runs judged, the flagged rows): each recorded run against the others' spread."""
    per_profile = {f.stem: baselines.load(f, json.loads(f.read_text())["case_hash"]) for f in files}
    n = min(len(b.runs) for b in per_profile.values())
    flagged, rows_hit = 0, []
    for i in range(n):
        rows = []
        for prof, b in per_profile.items():
            others = [r for j, r in enumerate(b.runs) if j != i]
            for name, after in b.runs[i].items():
                kind = latency.metric_kind(name)
                if kind == "itl":
                    continue
                before = [r[name] for r in others if name in r]
                thr = b.thresholds.get(name, 0.05)
                ratio = after / float(np.median(before))
                p, _ = stats.between_runs(before, after, budget)
                rows.append(
                    stats.Change(
                        f"{prof} {name}",
                        "~",
                        len(before),
                        1,
                        float(np.median(before)),
                        after,
                        ratio,
                        p=p,
                        threshold=thr,
                        higher_is_better=kind in latency.HIGHER_IS_BETTER,
                    )
                )
        decided, _ = stats.family(rows, budget)
        hit = [c.metric for c in decided if c.status in ("regressed", "improved")]
        flagged += bool(hit)
        rows_hit += [f"run {i}: {m}" for m in hit]
    return flagged, n, rows_hit


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default="suites/perf.toml")
    ap.add_argument("--calibrate", type=int, default=10)
    ap.add_argument("--slow", action="append", default=[], metavar="FRACTION:RUNS")
    ap.add_argument("--budget", type=float, default=0.01)
    ap.add_argument("--side-by-side", action="append", default=[], metavar="FRACTION:RUNS")
    ap.add_argument("--processes", type=int, default=0, help="reference mode: processes per profile (0: the suite's)")
    ap.add_argument("--repeats", type=int, default=0, help="reference mode: measured passes per process")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gate-rates-"))
    if args.side_by_side:
        return side_by_side(args, tmp)
    store = tmp / "baselines"
    t0 = time.time()
    r = cli(
        "calibrate", args.suite, "--runs", str(args.calibrate), "--baselines", str(store), "--out", str(tmp / "cal")
    )
    print(r.stdout[-3000:], r.stderr[-2000:] if r.returncode else "", flush=True)
    if r.returncode != 0:
        return r.returncode
    files = sorted(store.glob("*/perf/*.json"))
    flagged, n, hits = leave_one_out(files, args.budget)
    print(f"A/A: {flagged}/{n} runs flagged (leave one out, budget {args.budget}); {hits}", flush=True)
    env = install_slow_adapter(tmp, 0.0)
    for spec in args.slow:
        frac, runs = spec.split(":")
        caught = 0
        for k in range(int(runs)):
            out = tmp / f"slow-{frac}-{k}"
            r = cli(
                "run",
                args.suite,
                "--baselines",
                str(store),
                "--out",
                str(out),
                "--adapter",
                "slow",
                env={**env, "HARNESS_SLOW_FRACTION": frac},
            )
            rep = json.loads(next(out.glob("*/report.json")).read_text())
            tpot = [c for rows in rep["perf"].values() for c in rows if c["metric"].endswith("tpot")]
            hit = r.returncode == 1 and any(c["status"] == "regressed" for c in tpot)
            caught += hit
            print(
                f"slow {frac} run {k}: exit {r.returncode}; tpot ratios "
                + ", ".join(f"{c['ratio']:.3f} {c['status']}" for c in tpot),
                flush=True,
            )
        print(f"detection at +{float(frac):.0%} per forward pass: {caught}/{runs} runs", flush=True)
    print(f"total {time.time() - t0:.0f} s; files in {tmp}", flush=True)
    return 0


def side_by_side(args: argparse.Namespace, tmp: Path) -> int:
    """Reference mode: each run measures the reference stack and the candidate in one run, interleaved."""
    import re

    text = (ROOT / args.suite).read_text()
    if args.processes:
        text = text.replace("[perf]", f"[perf]\nprocesses = {args.processes}", 1)
    if args.repeats:
        text = re.sub(r"(?m)^repeats = \d+", f"repeats = {args.repeats}", text)
    suite = tmp / "perf.toml"
    suite.write_text(text)
    (tmp / "prompts").symlink_to(ROOT / "suites" / "prompts")
    fast = tmp / "today.sh"
    fast.write_text("export HARNESS_SLOW_FRACTION=0\n")
    env = install_slow_adapter(tmp, 0.0)
    spreads: list[float] = []
    for spec in args.side_by_side:
        frac, runs = spec.split(":")
        hits, walls = 0, []
        for k in range(int(runs)):
            out = tmp / f"side-{frac}-{k}"
            t0 = time.time()
            r = cli(
                "run", str(suite), "--adapter", "slow", "--profile", "default", "--reference-setup", str(fast),
                "--out", str(out), "--baselines", str(tmp / "no-baselines"), "--no-history",
                env={**env, "HARNESS_SLOW_FRACTION": frac},
            )  # fmt: skip
            walls.append(time.time() - t0)
            rep = json.loads(next(out.glob("*/report.json")).read_text())
            rows = [c for cs in rep.get("reference", {}).get("rows", {}).values() for c in cs]
            flagged = [c for c in rows if c["status"] in ("regressed", "improved")]
            tpot = [c for c in rows if c["metric"].endswith("tpot")]
            hit = r.returncode == 1 and any(c["status"] == "regressed" for c in tpot)
            hits += hit if float(frac) > 0 else bool(flagged)
            print(
                f"side by side {frac} run {k}: exit {r.returncode}, {walls[-1]:.0f} s; "
                + "; ".join(f"{c['metric']} x{c['ratio']:.3f} p={c['p']:.2g} {c['status']} "
                            f"(detectable {c['detectable']:.1%})" for c in rows),
                flush=True,
            )  # fmt: skip
        what = "A/A runs flagged anything" if float(frac) == 0 else f"caught +{float(frac):.0%} per forward pass"
        print(f"side by side: {what}: {hits}/{runs} runs; median wall {float(np.median(walls)):.0f} s", flush=True)
        spreads += [sd for sd in map(_spread, tpot_rows(tmp.glob(f"side-{frac}-*/*/report.json"))) if sd > 0]
    if spreads:
        print(power_table(float(np.sqrt(np.mean(np.square(spreads)))), len(spreads), args.budget), flush=True)
    return 0


def tpot_rows(reports: Iterable[Path]) -> list[dict]:
    """The TPOT rows against the reference, one per run."""
    out = []
    for f in reports:
        rows = json.loads(f.read_text()).get("reference", {}).get("rows", {}).values()
        out += [c for cs in rows for c in cs if c["metric"].endswith("tpot") and c.get("runs", 0) >= 2]
    return out


def _spread(c: dict) -> float:
    """The standard deviation of one run's log ratios of process medians, read back from its 95% interval."""
    n = c["runs"]
    se = math.log(c["ci_high"] / c["ci_low"]) / (2 * float(scipy_stats.t.ppf(0.975, n - 1)))
    return se * math.sqrt(n)


def power_table(sd: float, runs: int, budget: float, rows: int = 5, threshold: float = 0.02) -> str:
    """Detection rate of a slowdown against processes per profile, for the paired test of process medians with the
    measured spread `sd` of their log ratios: significant at the run's first Holm level (budget / rows: TTFT, TPOT,
    end to end, tokens/s and load against the reference) and above the threshold. Simulated, 20,000 runs a cell."""
    rng = np.random.default_rng(0)
    alpha = budget / rows
    slowdowns = (0.0, 0.02, 0.03, 0.05, 0.10)
    lines = [
        f"power curve from the measured spread of process-median log ratios (TPOT, sd {sd:.4f} over {runs} runs; "
        f"alpha {alpha:g}, threshold {threshold:.0%}):",
        "P      " + "  ".join(f"{'A/A' if d == 0 else f'+{d:.0%}':>6}" for d in slowdowns),
    ]
    for p in (3, 4, 6, 8, 10, 12, 16, 20):
        cells = []
        for d in slowdowns:
            mean = rng.normal(math.log1p(d), sd / math.sqrt(p), 20000)
            s = sd * np.sqrt(rng.chisquare(p - 1, 20000) / (p - 1))
            pval = 2 * scipy_stats.t.sf(np.abs(mean / (s / math.sqrt(p))), p - 1)
            cells.append(float(np.mean((pval < alpha) & (np.abs(np.expm1(mean)) > threshold))))
        lines.append(f"{p:<7}" + "  ".join(f"{c:>6.2f}" for c in cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
