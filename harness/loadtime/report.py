"""Reports of a load-time sweep: console and summary.md tables, report.json, and a PNG plot."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

from tabulate import tabulate

from .. import __version__, atomic
from ..tables import change_table
from . import analysis as lt
from .data import LoadRun


def _s(x: float, fmt: str = ".2f") -> str:
    return "-" if x != x else format(x, fmt)


def settings_table(run: LoadRun) -> str:
    rows = [
        [
            x.model,
            x.setting,
            x.n_warm,
            _s(x.warm_p50),
            x.n_cold,
            _s(x.cold_p50),
            *(_s(x.phases_p50.get(p, math.nan)) for p in lt.PHASES),
            _s(x.peak_rss_mb, ".0f"),
            x.failed or "",
        ]
        for x in run.summaries
    ]
    return tabulate(
        rows,
        headers=[
            "model",
            "OMP_NUM_THREADS",
            "warm n",
            "warm p50 s",
            "cold n",
            "cold p50 s",
            *(f"{p} s" for p in lt.PHASES),
            "peak RSS MB",
            "failed",
        ],
        tablefmt="github",
    )


def sizes_table(run: LoadRun) -> str:
    rows = [
        [
            r.model,
            _s(r.params_b, "g"),
            _s(r.gb, ".3f"),
            _s(r.warm_p50),
            _s(r.cold_p50),
            _s(r.load_gbps),
            _s(r.read_s, ".3f") + (" (cold)" if r.read_cold else " (warm)"),
            _s(r.gb / r.read_s if r.read_s else math.nan),
            _s(r.efficiency),
        ]
        for r in run.sizes
    ]
    return tabulate(
        rows,
        headers=[
            "model",
            "params B",
            "GB",
            "warm load s",
            "cold load s",
            "load GB/s",
            "sequential read s",
            "read GB/s",
            "efficiency",
        ],
        tablefmt="github",
    )


def recommendation_lines(run: LoadRun) -> list[str]:
    r = run.recommendation
    if r is None:
        return ["no recommendation: no successful loads"]
    return [r.describe(), *(f"    {line}" for line in r.lines)]


def failures(run: LoadRun, setting: str | None = None) -> list[str]:
    """One line per model and distinct error, so a model that never loads does not flood the report."""
    groups: dict[tuple[str, str], list[lt.LoadSample]] = {}
    for s in run.samples:
        if s.status != "ok" and setting in (None, s.setting):
            groups.setdefault((s.model, s.error.split("' ", 1)[-1]), []).append(s)
    out = []
    for (model, err), ss in groups.items():
        total = sum(1 for s in run.samples if s.model == model)
        first = ss[0]
        where = f"OMP_NUM_THREADS={first.setting} round {first.repeat} ({'cold' if first.cold else 'warm'})"
        out.append(f"! {model}: {len(ss)} of {total} loads failed, first at {where}: worker {err}")
    return out


def console(run: LoadRun) -> str:
    out = [
        f"load time: {run.suite.model_ref} ({run.suite.dtype}) on {run.suite.device}; {run.cache_note}",
        "",
        settings_table(run),
        "",
        "recommendation: " + "\n".join(recommendation_lines(run)),
        "",
    ]
    if run.sizes:
        out += ["size scaling (efficiency = sequential read time / load time)", sizes_table(run), ""]
    if run.changes:
        out += ["against the baseline", change_table(run.changes), ""]
    if run.ungated:
        out += ["against another hardware's baseline (shown, not gated)", change_table(run.ungated), ""]
    out += failures(run) + [f"note: {n}" for n in run.baseline_notes]
    res = {0: "PASS", 1: "FAIL", 2: "ERROR", 3: "ERROR"}[run.exit_code]
    out.append(f"result: {res} (exit {run.exit_code}); report: {run.run_dir / 'summary.md'}")
    return "\n".join(out)


def summary_md(run: LoadRun) -> str:
    s = run.suite
    md = [
        f"# {s.name}: load time",
        "",
        f"Run `{run.run_id}` · model `{s.model_ref}` · dtype `{s.dtype}` · device `{s.device}` · case hash "
        f"`{s.case_hash}` · harness {__version__}",
        "",
        f"Each load is a fresh worker process; settings are interleaved round by round. {run.cache_note}.",
        "",
        "## Per setting",
        "",
        settings_table(run),
        "",
        "## Recommendation",
        "",
        *recommendation_lines(run),
        "",
    ]
    if run.recommendation and run.recommendation.comparisons:
        md += [
            "Each setting against the fastest:",
            "",
            change_table(run.recommendation.comparisons, "fastest", "this"),
            "",
        ]
    if run.sizes:
        md += [
            "## Scaling with size",
            "",
            "Load = read + to device + first forward (import excluded), at each model's "
            "fastest setting; efficiency = sequential read time of the same files / load time.",
            "",
            sizes_table(run),
            "",
        ]
    md += [f"![load time against OMP_NUM_THREADS]({run.plot})" if run.plot else f"({NO_PLOT})", ""]
    if run.changes:
        md += ["## Against the baseline", "", change_table(run.changes), ""]
    if run.ungated:
        md += ["## Against another hardware's baseline (shown, not gated)", "", change_table(run.ungated), ""]
    fails = failures(run)
    if fails or run.baseline_notes:
        md += ["## Notes", "", *[f"- {x}" for x in fails + run.baseline_notes], ""]
    return "\n".join(md)


NO_PLOT = "no plot: matplotlib is not installed (pip install 'llm-determinism-harness[loadtime]')"


def plot(run: LoadRun) -> str:
    """loadtime.png: load time against the setting, one line per model, solid warm and dashed cold; "" without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return ""
    settings = list(run.suite.settings)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, t in enumerate(run.targets):
        rows = {x.setting: x for x in run.summaries if x.model == t.label}
        color = f"C{i}"
        for attr, style, tag in (("warm_p50", "-", "warm"), ("cold_p50", "--", "cold")):
            ys = [getattr(rows[st], attr) if st in rows else math.nan for st in settings]
            if any(y == y for y in ys):
                ax.plot(settings, ys, style, marker="o", color=color, label=f"{t.label} ({t.gb:.2f} GB) {tag}")
    ax.set_xlabel("OMP_NUM_THREADS")
    ax.set_ylabel("load time, median (s)")
    ax.set_title(f"Cold and warm loads, {run.suite.device}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.run_dir / "loadtime.png", dpi=110)
    plt.close(fig)
    return "loadtime.png"


def to_json(run: LoadRun) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "harness_version": __version__,
        "run_id": run.run_id,
        "kind": "loadtime",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "exit_code": run.exit_code,
        "suite": {
            "name": run.suite.name,
            "path": run.suite.path,
            "case_hash": run.suite.case_hash,
            "settings": list(run.suite.settings),
            "model": run.suite.model_ref,
            "device": run.suite.device,
        },
        "cache": {"cold_measured": run.cold_ok, "note": run.cache_note},
        "device": run.device_info,
        "samples": [dataclasses.asdict(s) | {"total": s.total} for s in run.samples],
        "settings": [dataclasses.asdict(x) for x in run.summaries],
        "recommendation": None
        if run.recommendation is None
        else {
            **{k: v for k, v in dataclasses.asdict(run.recommendation).items() if k != "comparisons"},
            "comparisons": [dataclasses.asdict(c) | {"mark": c.mark} for c in run.recommendation.comparisons],
        },
        "sizes": [dataclasses.asdict(r) | {"load_gbps": r.load_gbps, "efficiency": r.efficiency} for r in run.sizes],
        "baseline": [dataclasses.asdict(c) | {"mark": c.mark} for c in run.changes],
        "baseline_not_gated": [dataclasses.asdict(c) | {"mark": c.mark} for c in run.ungated],
        "notes": run.baseline_notes,
    }


def write(run: LoadRun) -> None:
    run.plot = plot(run)
    atomic.write_text(run.run_dir / "summary.md", summary_md(run))
    atomic.write_json(run.run_dir / "report.json", to_json(run))
