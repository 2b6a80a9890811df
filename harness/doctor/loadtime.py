"""The doctor's checks of what makes a model load slowly: OMP_NUM_THREADS against the fastest setting in this
hardware's load-time baselines, and the NPU allocator's expandable segments."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

from ..baselines import Store
from .core import Context, Finding, check


def omp_recommendation(root: Path, cpu_model: str, device: str) -> tuple[str, dict[str, float], str]:
    """(fastest setting, median warm load per setting, baseline folder) from this hardware's load-time baselines."""
    best: dict[str, float] = {}
    where = ""
    for p, b in Store(root).raw("loadtime", "omp-*"):
        try:
            dev = b["environment"]["device"]
        except (KeyError, TypeError):
            continue
        if dev.get("device") != device or (device == "cpu" and dev.get("cpu_model") != cpu_model):
            continue
        warm = [v for k, v in b.get("latency", {}).items() if k.endswith("warm") and v]
        if warm:
            best[p.stem.removeprefix("omp-")] = float(statistics.median(warm[0]))
            where = str(p.parent)
    if not best:
        return "", {}, ""
    return min(best, key=best.__getitem__), best, where


@check("loadtime.omp")
def loadtime_omp(ctx: Context) -> Iterator[Finding]:
    from ..envinfo import cpu_model

    mine = cpu_model() if ctx.device == "cpu" else ""
    best, meds, where = omp_recommendation(ctx.baselines, mine, ctx.device)
    now = ctx.environ.get("OMP_NUM_THREADS", "unset") or "unset"
    if not best:
        yield Finding(
            "loadtime.omp",
            "info",
            f"OMP_NUM_THREADS={now}; no load-time baseline for this hardware ({ctx.device} {mine}) to recommend from",
            "nox -s loadtime -- --update-baselines --reason '...' records one",
        )
        return
    line = "unset OMP_NUM_THREADS" if best == "unset" else f"export OMP_NUM_THREADS={best}"
    if now == best:
        yield Finding("loadtime.omp", "info", f"OMP_NUM_THREADS={now}: the fastest in {where}")
    elif now in meds and meds[now] > 1.10 * meds[best]:
        yield Finding(
            "loadtime.omp",
            "warning",
            f"OMP_NUM_THREADS={now}: warm load {meds[now]:.2f} s in {where}, against {meds[best]:.2f} s with {best}",
            line,
        )
    else:
        yield Finding(
            "loadtime.omp",
            "info",
            f"OMP_NUM_THREADS={now}; fastest in {where}: {best} ({meds[best]:.2f} s), within 10% or not measured",
            line,
        )


@check("loadtime.alloc-conf", devices=("npu",), looks_at="PYTORCH_NPU_ALLOC_CONF")
def alloc_conf(ctx: Context) -> Iterator[Finding]:
    conf = ctx.environ.get("PYTORCH_NPU_ALLOC_CONF", "")
    if "expandable_segments:True" in conf:
        yield Finding("loadtime.alloc-conf", "info", f"PYTORCH_NPU_ALLOC_CONF={conf}")
        return
    yield Finding(
        "loadtime.alloc-conf",
        "warning",
        f"PYTORCH_NPU_ALLOC_CONF={conf or '(unset)'}: without expandable segments the allocator fragments, and "
        "large models load slower or run out of memory",
        "export PYTORCH_NPU_ALLOC_CONF=expandable_segments:True",
    )
