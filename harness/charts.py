"""report.html's charts, drawn by matplotlib as inline SVG (vector, no JavaScript, a few tens of kB each): latency
distributions, load time by phase, the per-layer growth of a localised difference, and the trend of the last runs
with Otava's change points."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from . import history

TREND_RUNS = 30  # runs shown in each trend chart
MAX_TREND_METRICS = 9


_salt = 0


def svg(fig: Any) -> str:
    """The figure as inline SVG markup: text kept as text, and ids salted so that several charts on one page do
    not share clip paths."""
    import matplotlib
    import matplotlib.pyplot as plt
    from markupsafe import Markup

    global _salt
    _salt += 1
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"chart{_salt}"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return Markup(text[text.index("<svg") :])


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_figure(result: Any) -> dict[str, Any] | None:
    """TTFT and TPOT per profile (all schedules pooled), box from p25 to p75, whiskers p1 to p99; the baseline's
    samples beside each profile when a baseline was found."""
    from .analysis import latency

    boxes: dict[str, list[tuple[str, list[float]]]] = {"ttft": [], "tpot": []}
    for prof, metrics in result.latency.items():
        found = result.baseline.found.get(prof)
        for kind in boxes:
            now = [x for name, xs in metrics.items() if latency.metric_kind(name) == kind for x in xs]
            before = (
                [x for name, xs in found.latency.items() if latency.metric_kind(name) == kind for x in xs]
                if found is not None
                else []
            )
            if before:
                boxes[kind].append((f"{prof}\nbaseline", [1000 * x for x in before]))
            if now:
                boxes[kind].append((f"{prof}\nthis run", [1000 * x for x in now]))
    if not any(boxes.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (kind, data) in zip(axes, boxes.items()):
        if data:
            ax.boxplot([d for _, d in data], whis=(1, 99), showfliers=False)
            ax.set_xticks(range(1, len(data) + 1), [lbl for lbl, _ in data], fontsize=8)
        ax.set_title(f"{kind.upper()} (ms)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return {
        "title": "Latency distributions",
        "note": "per profile, every schedule pooled; box p25-p75, line the median, whiskers p1-p99",
        "svg": svg(fig),
    }


def load_figure(result: Any) -> dict[str, Any] | None:
    """Each profile's model load, by phase (seconds)."""
    loads = [(j.profile, j.meta.get("load_s") or {}) for j in result.jobs if j.meta.get("load_s")]
    if not loads:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(loads)))
    phases = list(dict.fromkeys(p for _, ph in loads for p in ph))
    left = [0.0] * len(loads)
    for i, phase in enumerate(phases):
        widths = [ph.get(phase, 0.0) for _, ph in loads]
        ax.barh([p for p, _ in loads], widths, left=left, label=phase, color=f"C{i}")
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("seconds")
    ax.legend(fontsize=8, ncol=len(phases), loc="upper left", bbox_to_anchor=(0, -0.25 - 0.1 / len(loads)))
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return {"title": "Load time", "note": "each profile's worker, by phase", "svg": svg(fig)}


def trend_metrics(h: history.History) -> list[str]:
    from .trend import THRESHOLDS, kind_of, threshold

    wanted = [m for m in h.metrics if threshold(m, THRESHOLDS) is not None or kind_of(m)[0] == "share_bitwise"]
    solo = [m for m in wanted if not kind_of(m)[1] or m.startswith("solo.")]
    return (solo if len(solo) >= 2 else wanted)[:MAX_TREND_METRICS]


def trends(root: Path, headlines: list[history.Headline]) -> list[dict[str, Any]]:
    """The last TREND_RUNS runs of each history this run appended to; change points marked where Otava is
    installed."""
    try:
        import otava.analysis  # noqa: F401

        from .trend import MIN_RUNS, PVALUE, change_points

        have_otava = True
    except ImportError:
        have_otava = False
    out = []
    for head in headlines:
        try:
            h = history.read(history.path_for(root, head.hardware, head.suite, head.profile))
        except ValueError:
            continue
        metrics = trend_metrics(h)
        if len(h.rows) < 2 or not metrics:
            continue
        plt = _plt()
        from matplotlib.ticker import MaxNLocator

        cols = 3
        nrows = math.ceil(len(metrics) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(11, 2.4 * nrows), squeeze=False)
        marks = []
        for ax, m in zip(axes.flat, metrics):
            rows, values = h.series(m)
            rows, values = rows[-TREND_RUNS:], values[-TREND_RUNS:]
            xs = list(range(len(values)))
            ax.plot(xs, values, marker="o", markersize=3, lw=1)
            ax.set_title(m, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # runs are whole
            ax.grid(alpha=0.3)
            if have_otava and len(values) >= MIN_RUNS:
                for i, p in change_points(values, PVALUE):
                    ax.axvline(i - 0.5, color="#d32f2f", ls="--", lw=1)
                    env = history.environment_changes(rows[i - 1], rows[i])
                    marks.append(
                        f"{m}: from run {rows[i].attributes.get('run_id', i)} (p {p:.2g})"
                        + (f"; changed: {', '.join(env)}" if env else "")
                    )
        for ax in list(axes.flat)[len(metrics) :]:
            ax.set_visible(False)
        fig.tight_layout()
        out.append(
            {
                "title": f"{head.profile} ({head.hardware})",
                "runs": len(h.rows),
                "svg": svg(fig),
                "marks": marks,
                "note": ""
                if have_otava
                else "change points not marked: Apache Otava is not installed (pip install --no-deps apache-otava)",
            }
        )
    return out


def layer_figure(entry: dict[str, Any]) -> str:
    """max |Δ| and max relative difference of each decoder layer's output, log scale; a bit-identical layer sits on
    the axis floor (a log axis has no zero)."""
    plt = _plt()
    layers = entry["layers"]
    xs = [e["layer"] for e in layers]
    fig, ax = plt.subplots(figsize=(6.4, 2.4))
    values = [e.get(m, 0.0) or 0.0 for e in layers for m in ("max_abs", "max_rel")]
    floor = min((x for x in values if x > 0), default=1e-12) / 10
    for metric, label in (("max_abs", "max |Δ|"), ("max_rel", "max |Δ| / max |ref|")):
        ys = [max(e.get(metric, 0.0) or 0.0, floor) for e in layers]
        ax.plot(xs, ys, marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("decoder layer (output)")
    ax.set_title(f"step {entry.get('step', '?')}: the difference layer by layer", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(True, which="major", alpha=0.3)
    return svg(fig)
