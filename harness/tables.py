"""The tables every report shows (tabulate, github style): verdicts with their level counts, every sequence that is
not bitwise, workers, latency changes (asv compare marks), percentiles, unique outputs. Plain data in, text out."""

from __future__ import annotations

from tabulate import tabulate

from .analysis import latency
from .analysis.determinism import Verdict
from .analysis.stats import Change
from .jobs import JobOutcome

MARK = {
    "pass": "pass",
    "fail": "FAIL",
    "report": "report",
    "no data": "NO DATA",
    "no baseline": "no baseline",
    "not comparable": "x NOT COMPARABLE",
    "updated": "updated",
}


def clip(s: str, n: int = 110) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


SHARES = ("repeatability", "batch-invariance", "tp-invariance", "baseline")


def _counts(v: Verdict) -> list[str | int]:
    """bitwise / tokens / close / diverged; at text level bits cannot be seen and close needs logprobs."""
    if v.property not in SHARES or v.expect == "-" or not v.sequences:
        return ["-"] * 4
    text = v.level == "text"
    tokens = v.token_identical - v.bitwise
    diverged = v.sequences - v.token_identical - v.close
    return ["n/a" if text else v.bitwise, v.token_identical if text else tokens, "n/a" if text else v.close, diverged]


def verdict_table(verdicts: list[Verdict]) -> str:
    """One row per property (and tensor parallel degree, in a column of its own when the suite has several)."""
    tp = any(v.tp != 1 for v in verdicts)
    rows = [
        [
            *([v.tp] if tp else []),
            v.property,
            v.expect,
            MARK[v.status],
            v.level if v.property in SHARES and v.sequences else "-",
            v.sequences,
            *_counts(v),
            v.max_unique or "-",
        ]
        for v in verdicts
    ]
    return tabulate(
        rows,
        headers=[
            *(["tp"] if tp else []),
            "property",
            "expect",
            "verdict",
            "compared on",
            "sequences",
            "bitwise",
            "tokens",
            "close",
            "diverged",
            "max unique outputs/prompt",
        ],
        tablefmt="github",
    )


def worst_lines(verdicts: list[Verdict]) -> list[str]:
    """The worst case of each property, whole: printed below the table rather than cut to fit a column; for the
    baseline also what it was compared with and at which level."""
    out = []
    for v in verdicts:
        if v.property == "baseline" and v.expect != "-":
            out.append(f"  baseline: {v.reason}")
        if v.worst or (v.property not in SHARES and v.reason):
            at = f" (tp {v.tp})" if v.tp != 1 else ""
            out.append(f"  {v.property}{at}: {v.worst.describe() if v.worst else v.reason}")
    return out


def sequences_md(v: Verdict) -> list[str]:
    """Every sequence that is not bitwise, grouped by prompt, folded: which prompts drift, where and how far."""
    rows = [c.row() for c in v.comparisons if c.level != "bitwise"]
    if not rows:
        return []
    rows.sort(
        key=lambda r: (
            r["prompt_id"],
            r["first_token_step"] if r["first_token_step"] is not None else 1 << 30,
            r["batch_id"],
        )
    )
    body = [
        [
            r["prompt_id"],
            r["batch_id"],
            r["batch_size"],
            r["position"],
            r["level"],
            _step(r["first_bit_step"]),
            _step(r["first_token_step"]),
            "-" if r["ref_margin"] is None else f"{r['ref_margin']:.3f}",
            f"{_yn(r['ref_in_other_topk'])}/{_yn(r['other_in_ref_topk'])}",
            "" if r["level"] in ("bitwise", "tokens") else f"{r['ref_token']!r} vs {r['other_token']!r}",
        ]
        for r in rows
    ]
    prompts = len({r["prompt_id"] for r in rows})
    table = tabulate(
        body,
        headers=[
            "prompt",
            "batch",
            "size",
            "pos",
            "level",
            "first bit step",
            "first token step",
            "ref margin",
            "in top-k (ref/other)",
            "tokens",
        ],
        tablefmt="github",
    )
    return [
        "",
        f"<details><summary>{v.property}: {len(rows)} of {v.sequences} sequences not bitwise, over {prompts} "
        f"prompts</summary>",
        "",
        table,
        "",
        "</details>",
        "",
    ]


def _step(x: int | None) -> str:
    return "-" if x is None else str(x)


def _yn(x: bool | None) -> str:
    return "-" if x is None else ("yes" if x else "no")


def jobs_table(jobs: list[JobOutcome]) -> str:
    """One row per worker (or worker group: its writer's load phases; every rank's are in ranks_table)."""
    tp = any(j.tp != 1 for j in jobs)
    rows = []
    for j in jobs:
        load = sum(j.meta.get("load_s", {}).values()) if j.meta.get("load_s") else None
        run_s = j.meta.get("run_s")
        rows.append(
            [
                j.profile,
                *([j.tp] if tp else []),
                j.status,
                f"{j.completed}/{j.expected}",
                f"{load:.1f}" if load else "-",
                f"{run_s:.1f}" if run_s else "-",
                f"{j.meta['tokens_per_s']:.1f}" if "tokens_per_s" in j.meta else "-",
                f"{j.meta['sequences'] / run_s:.2f}" if run_s and "sequences" in j.meta else "-",
                f"{j.wall_s:.1f}",
            ]
        )
    return tabulate(
        rows,
        headers=[
            "profile",
            *(["tp"] if tp else []),
            "worker",
            "sequences",
            "load s",
            "generate s",
            "tokens/s",
            "sequences/s",
            "wall s",
        ],
        tablefmt="github",
    )


def _num(name: str, v: float) -> str:
    return "-" if v != v else f"{latency.scale(name, v):.4g}"


def change_table(changes: list[Change], before: str = "before", after: str = "after") -> str:
    """asv compare style: + worse, - better, ~ not significant, x not comparable or too few samples, ! failed."""
    rows = []
    for c in changes:
        ci = "-" if c.ci_low != c.ci_low else f"[{c.ci_low:.3f}, {c.ci_high:.3f}]"
        rows.append(
            [
                c.mark,
                f"{c.metric} ({latency.UNITS.get(latency.metric_kind(c.metric), '')})",
                _num(c.metric, c.before),
                _num(c.metric, c.after),
                "-" if c.ratio != c.ratio else f"{c.ratio:.3f}",
                ci,
                "-" if c.p != c.p else f"{c.p:.3g}",
                "-" if c.detectable != c.detectable else _pct1(c.detectable),
                f"{_pct1(c.threshold)}",
                c.status + (f": {c.note}" if c.note else ""),
            ]
        )
    return tabulate(
        rows,
        headers=["", "metric", before, after, "ratio", "95% CI", "p", "detectable", "threshold", "status"],
        tablefmt="github",
    )


def _pct1(x: float) -> str:
    return f"{100 * x:.1f}%"


def latency_table(samples: dict[str, dict[str, list[float]]]) -> str:
    rows = []
    for prof, metrics in samples.items():
        for name, xs in sorted(metrics.items()):
            q = latency.percentiles(xs)
            if q:
                rows.append(
                    [
                        prof,
                        f"{name} ({latency.UNITS.get(latency.metric_kind(name), '')})",
                        q["n"],
                        _num(name, q["p50"]),
                        _num(name, q["p90"]),
                        _num(name, q["p99"]),
                    ]
                )
    return tabulate(rows, headers=["profile", "metric", "n", "p50", "p90", "p99"], tablefmt="github")


def unique_table(verdicts: list[Verdict]) -> str:
    """Distinct outputs per prompt: tokens, and in brackets distinct logits bit patterns."""
    cols = [v for v in verdicts if v.unique_outputs]
    prompts = sorted({p for v in cols for p in v.unique_outputs})
    rows = [
        [p]
        + [
            f"{v.unique_outputs.get(p, '-')}" + (f" ({v.unique_bits.get(p, '-')})" if v.unique_bits else "")
            for v in cols
        ]
        for p in prompts
    ]
    return tabulate(rows, headers=["prompt"] + [f"{v.profile} {v.property}" for v in cols], tablefmt="github")


def ranks_table(jobs: list[JobOutcome]) -> str:
    """Every rank of every worker group: where it ran, its threads, load phases and peak memory."""
    rows = []
    for j in jobs:
        for r in j.meta.get("ranks", []):
            load = r.get("load_s", {})
            rows.append(
                [
                    j.name,
                    r.get("rank"),
                    f"{r.get('hostname')}:{r.get('pid')}",
                    r.get("backend"),
                    r.get("threads"),
                    " ".join(f"{k} {v:.2f}" for k, v in load.items()),
                    f"{sum(load.values()):.1f}",
                    f"{r.get('peak_rss_mb', 0):.0f}",
                    f"{r['device_peak_mb']:.0f}" if "device_peak_mb" in r else "-",
                ]
            )
    return tabulate(
        rows,
        headers=[
            "job",
            "rank",
            "host:pid",
            "backend",
            "threads",
            "load phases s",
            "load s",
            "peak RSS MB",
            "device peak MB",
        ],
        tablefmt="github",
    )
