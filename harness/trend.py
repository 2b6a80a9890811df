"""`harness trend`: persistent shifts in each metric's run history, found by Apache Otava's e-divisive means with
its Student t merge step (the Hunter paper's method), never by statistics written here.

Each change point is reported with the run where it starts, the means before and after, the relative change, its
p-value, and the environment fields that changed at that run (a torch, transformers or CANN upgrade is named). A
change point that makes a gated metric worse beyond its threshold is a regression: exit 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from tabulate import tabulate  # type: ignore[import-not-found, import-untyped, unused-ignore]

from .history import History, Row, environment_changes, read_all

MIN_RUNS = 5  # below this a t-test of before against after cannot reach the default p-value anyway
# Otava's default is 0.001, but its p-value is a t-test at the best split, after searching every split: on 30 runs of
# 1% noise, 2.8% of series showed a change point at 0.001, 0.25% at 1e-4 and 0.05% at 1e-5 (2,000 series each), while
# a 5% step was found in 200 of 200 at 1e-5 (a 3% step in 185). A nightly trend looks at hundreds of series.
PVALUE = 1e-5
WINDOW = 50  # Otava's default sliding window (runs)
# Gated metric kinds and how much worse a persistent shift may be before the trend fails (relative).
THRESHOLDS = {"ttft": 0.30, "tpot": 0.05, "e2e": 0.05, "tok_s": 0.05, "warm": 0.10, "cold": 0.10, "share_tokens": 0.05}
LOWER_IS_WORSE = ("tok_s", "share_bitwise", "share_tokens")
OTAVA_MISSING = (
    "harness trend needs Apache Otava: pip install --no-deps apache-otava==0.8.0 (it uses numpy and scipy, "
    "which the harness has), or run nox -s trend"
)


def kind_of(metric: str) -> tuple[str, str]:
    """(kind, statistic): 'solo.tpot.p50' -> ('tpot', 'p50'); 'batch-invariance.share_tokens' -> ('share_tokens', '')."""
    parts = metric.split(".")
    if len(parts) >= 2 and parts[-1] in ("p50", "p99"):
        return parts[-2], parts[-1]
    return parts[-1], ""


def direction(metric: str) -> int:
    """+1 when a higher value is worse (latency, load time, unique outputs), -1 when lower is worse."""
    return -1 if kind_of(metric)[0] in LOWER_IS_WORSE else 1


def threshold(metric: str, thresholds: dict[str, float]) -> float | None:
    """The gate for this metric (by full name, else by kind), or None: a median or share only; tails are noisy."""
    if metric in thresholds:
        return thresholds[metric]
    kind, stat = kind_of(metric)
    return thresholds.get(kind) if stat in ("", "p50") else None


@dataclass(frozen=True)
class Shift:
    """One change point Otava found in one history file's metric."""

    file: Path
    metric: str
    index: int  # the first run after the shift, 0-based in the metric's series
    row: Row  # that run
    before: float
    after: float
    p: float
    env: tuple[str, ...]  # environment fields that changed at that run
    gate: float | None  # threshold, None: not gated

    @property
    def rel(self) -> float:
        return self.after / self.before - 1 if self.before else math.nan

    @property
    def worse(self) -> bool:
        return self.rel * direction(self.metric) > 0

    @property
    def regressed(self) -> bool:
        return self.gate is not None and self.worse and abs(self.rel) > self.gate

    @property
    def status(self) -> str:
        if self.regressed:
            return "regressed"
        if not self.worse:
            return "improved"
        return "worse, not gated" if self.gate is None else f"worse, within {100 * self.gate:g}%"

    @property
    def mark(self) -> str:
        return "+" if self.regressed else "-" if not self.worse else "~"


def change_points(values: list[float], pvalue: float = PVALUE, window: int = WINDOW) -> list[tuple[int, float]]:
    """(index where the new level starts, p-value) for each change point Otava finds."""
    from otava.analysis import compute_change_points  # type: ignore[import-not-found, import-untyped, unused-ignore]

    points, _weak = compute_change_points(list(map(float, values)), window_len=window, max_pvalue=pvalue)
    return [(int(c.index), float(c.stats.pvalue)) for c in points]


def shifts(h: History, metric: str, pvalue: float, thresholds: dict[str, float], last: int = 0) -> list[Shift]:
    rows, values = h.series(metric)
    if last:
        rows, values = rows[-last:], values[-last:]
    if len(values) < MIN_RUNS:
        return []
    found = change_points(values, pvalue)
    out = []
    bounds = [0, *(i for i, _ in found), len(values)]
    for k, (i, p) in enumerate(found):
        # Means of the segments on either side, as Otava's merge step judged them.
        before = values[bounds[k] : i]
        after = values[i : bounds[k + 2]]
        out.append(
            Shift(
                file=h.path,
                metric=metric,
                index=i,
                row=rows[i],
                before=sum(before) / len(before),
                after=sum(after) / len(after),
                p=p,
                env=tuple(environment_changes(rows[i - 1], rows[i])),
                gate=threshold(metric, thresholds),
            )
        )
    return out


@dataclass
class Trend:
    histories: list[History]
    shifts: list[Shift] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [p for h in self.histories for p in h.problems]

    @property
    def exit_code(self) -> int:
        return 1 if any(s.regressed for s in self.shifts) else 0


def analyse(
    histories: list[History], pvalue: float = PVALUE, thresholds: dict[str, float] | None = None, last: int = 0
) -> Trend:
    thr = {**THRESHOLDS, **(thresholds or {})}
    t = Trend(histories)
    for h in histories:
        for m in h.metrics:
            t.shifts += shifts(h, m, pvalue, thr, last)
    return t


def _num(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.4g}"


def render(t: Trend, root: Path, pvalue: float) -> str:
    out = []
    rows = []
    for h in t.histories:
        n = len(h.rows)
        found = [s for s in t.shifts if s.file == h.path]
        rows.append(
            [
                h.path.relative_to(root) if h.path.is_relative_to(root) else h.path,
                n,
                len(h.metrics),
                h.rows[-1].attributes.get("time", "") if h.rows else "-",
                len(found) if n >= MIN_RUNS else f"too few runs ({n} < {MIN_RUNS})",
            ]
        )
    out += [tabulate(rows, headers=["history", "runs", "metrics", "last run", "change points"], tablefmt="github"), ""]
    short = [h for h in t.histories if len(h.rows) < MIN_RUNS]
    if short and len(short) == len(t.histories):
        most = max(len(h.rows) for h in t.histories)
        out += [
            f"too few runs for change points: at most {most} run(s) per history, and Otava's test needs at least "
            f"{MIN_RUNS}; no change point can be reported yet",
            "",
        ]
    if t.shifts:
        table = [
            [
                s.mark,
                s.file.relative_to(root) if s.file.is_relative_to(root) else s.file,
                s.metric,
                f"{s.index + 1} ({s.row.attributes.get('run_id') or s.row.time.isoformat()})",
                _num(s.before),
                _num(s.after),
                f"{100 * s.rel:+.1f}%",
                f"{s.p:.2g}",
                s.status,
                "; ".join(s.env) or "nothing",
            ]
            for s in sorted(t.shifts, key=lambda s: (not s.regressed, str(s.file), s.metric))
        ]
        out += [
            f"change points (Apache Otava e-divisive, p < {pvalue:g}; `+` a gated metric worse beyond its threshold, "
            "`~` worse within it or not gated, `-` better):",
            tabulate(
                table,
                headers=[
                    "",
                    "history",
                    "metric",
                    "from run",
                    "before",
                    "after",
                    "change",
                    "p",
                    "status",
                    "env changed",
                ],
                tablefmt="github",
            ),
            "",
        ]
    elif not short or len(short) < len(t.histories):
        out += [f"no change points at p < {pvalue:g}", ""]
    out += [f"! {p}" for p in t.problems]
    bad = sum(s.regressed for s in t.shifts)
    out.append(
        f"result: {'FAIL' if bad else 'PASS'} (exit {t.exit_code}): {bad} regression(s) among {len(t.shifts)} "
        f"change point(s) in {len(t.histories)} histor{'y' if len(t.histories) == 1 else 'ies'}"
    )
    return "\n".join(out)


def main(root: Path, pvalue: float = PVALUE, thresholds: dict[str, float] | None = None, last: int = 0) -> int:
    from .errors import USAGE, HarnessError

    if not Path(root).is_dir():
        raise HarnessError(f"--history {root}: no history there (each run appends to <out>/history/)", USAGE)
    histories = [h for h in read_all(root) if h.header or h.problems]
    if not histories:
        raise HarnessError(f"--history {root}: no history files (<hardware>/<suite>/<profile>.csv) there", USAGE)
    try:
        import otava.analysis  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        raise HarnessError(OTAVA_MISSING, USAGE) from None
    t = analyse(histories, pvalue, thresholds, last)
    print(render(t, Path(root), pvalue), flush=True)
    return t.exit_code
