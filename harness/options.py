"""Run options, one definition for every front end: the CLI's arguments, the pytest plugin's options, the doctor
and the sign-off all build `Options` here, so none of them imports another's module (the CLI imports nothing back).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .suite import DEVICES


@dataclass
class Options:
    device: str | None = None
    model: str | None = None
    profiles: list[str] | None = None
    out: Path = Path("reports")
    timeout_s: float | None = None
    progress: bool = True
    adapter: str | None = None
    baselines: Path = Path("baselines")
    update_baselines: bool = False
    reason: str = ""
    endpoint: str | None = None  # URL of a server that is already running (the suite's [server] is not started)
    drop_caches: bool | None = None  # load time: evict the model files before each cold load (None: the suite's)
    fresh_runs: bool = False  # an update starts the baseline's run history anew (calibration's first run)
    parallel: dict[str, Any] = field(default_factory=dict)  # --nnodes, --node-rank, --rdzv-endpoint over [parallel]
    history: Path | None = None  # where each run appends its headline metrics (CLI default: <out>/history); None: off
    dry_run: bool = False  # plan and stop before the first worker (harness.dryrun)
    reference: str | None = None  # gate every other profile against this one, measured in the run ([perf] reference)
    reference_python: str | None = None  # the reference stack's interpreter (a `reference` profile if none is named)
    reference_setup: str | None = None  # ... and the shell file sourced before its workers start


def seconds(text: str) -> float:
    """A positive, finite number of seconds: 0, negative, nan and inf would kill every worker at once or never."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0 < v < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def degrees(text: str) -> list[int] | str:
    """Tensor parallel degrees, comma-separated: "1,4"; or "auto" (harness.degrees)."""
    if text == "auto":
        return text
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or any(d < 1 for d in out):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive degrees such as 1,4, or auto, got {text!r}"
        )
    return out


def add_run_options(add: Callable[..., Any]) -> None:
    """The run options, for argparse's `add_argument` and pytest's `addoption` alike."""
    add("--device", choices=DEVICES, default=None, help="cpu, cuda or npu (overrides the suite)")
    add("--model", default=None, help="embedded alias, HF model directory or .gguf file (overrides the suite)")
    add(
        "--profile",
        action="append",
        default=None,
        dest="profile",
        help="run only this profile (repeatable); default: all profiles of the suite",
    )
    add("--out", type=Path, default=Path("reports"), help="report directory (default: reports/)")
    add(
        "--worker-timeout",
        type=seconds,
        default=None,
        help="per-worker timeout in seconds (default: the suite's run.timeout_s)",
    )
    add("--adapter", default=None, help="adapter name from the harness.adapters registry (overrides the suite)")
    add("--baselines", type=Path, default=Path("baselines"), help="baseline store (default: baselines/)")
    add(
        "--update-baselines",
        action="store_true",
        default=False,
        help="write this run's outputs and latency samples as the new baselines (needs --reason)",
    )
    add("--reason", default="", help="why the baselines change (stored as provenance)")
    add(
        "--endpoint",
        default=None,
        metavar="URL",
        help="a served suite against this already running server, instead of starting the suite's [server]",
    )
    add(
        "--tp",
        type=degrees,
        default=None,
        metavar="1,4",
        help="tensor parallel degrees, e.g. 1,4 for a model whose heads 3 does not divide, or auto (suites with "
        "[parallel])",
    )
    add("--nnodes", type=int, default=None, help="tensor parallel: hosts in each worker group (overrides [parallel])")
    add(
        "--node-rank",
        type=int,
        default=None,
        help="tensor parallel: this host's rank among them; node 0 writes records and verdicts (overrides [parallel])",
    )
    add(
        "--rdzv-endpoint",
        default=None,
        metavar="HOST:PORT",
        help="tensor parallel: node 0's c10d rendezvous address, the same on every host (overrides [parallel])",
    )
    add(
        "--drop-caches",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="load time: evict the model files from the page cache before each cold load (default: the suite's)",
    )
    add(
        "--history",
        default=None,
        help="append this run's headline metrics here (default: <out>/history; '' or --no-history: off)",
    )
    add("--no-history", action="store_true", default=False, help="do not append to the run history")
    add(
        "--reference",
        default=None,
        metavar="PROFILE",
        help="gate every other profile against this one, measured side by side in this run (overrides [perf] reference)",
    )
    add(
        "--reference-python",
        default=None,
        metavar="PYTHON",
        help="the reference stack's interpreter: the reference profile's workers run with it (without a reference "
        "profile, a `reference` copy of the first profile is added)",
    )
    add(
        "--reference-setup",
        default=None,
        metavar="FILE",
        help="a shell file sourced before the reference profile's workers start (e.g. last release's set_env.sh)",
    )
    add(
        "--dry-run",
        action="store_true",
        default=False,
        help="plan only: suites, the model's config, degrees, jobs with each worker's environment and which library "
        "reads each flag; no weights loaded, no run folder (harness.dryrun)",
    )


def from_namespace(ns: argparse.Namespace) -> Options:
    """Options from parsed CLI arguments."""
    return _build(lambda k: getattr(ns, k))


def from_pytest(config: Any) -> Options:
    """Options from pytest's config (the same names, registered by add_run_options)."""
    return _build(config.getoption)


def _build(get: Callable[[str], Any]) -> Options:
    return Options(
        device=get("device"),
        model=get("model"),
        profiles=get("profile"),
        out=get("out"),
        timeout_s=get("worker_timeout"),
        adapter=get("adapter"),
        baselines=get("baselines"),
        update_baselines=get("update_baselines"),
        reason=get("reason"),
        endpoint=get("endpoint"),
        drop_caches=get("drop_caches"),
        parallel={
            k: v
            for k, v in (
                ("tp", get("tp")),
                ("nnodes", get("nnodes")),
                ("node_rank", get("node_rank")),
                ("rdzv_endpoint", get("rdzv_endpoint")),
            )
            if v is not None
        },
        history=history_dir(get("history"), get("no_history"), get("out")),
        dry_run=bool(get("dry_run")),
        reference=get("reference"),
        reference_python=get("reference_python"),
        reference_setup=get("reference_setup"),
    )


def history_dir(given: str | None, off: bool, out: Path) -> Path | None:
    """--history DIR; '' or --no-history: off; not given: beside the run directories, <out>/history."""
    if off or given == "":
        return None
    return Path(given) if given is not None else Path(out) / "history"
