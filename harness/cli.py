"""`harness run SUITE...`: the same run as `pytest suites/`, without pytest. Any kind of suite (determinism, served,
load time) goes through the one seam in run.py.

Exit codes: 0 all checks passed, 1 a check failed, 2 usage or input error, 3 infrastructure error.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from . import __version__, run
from .errors import INFRA, HarnessError
from .suite import DEVICES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 too; one line, like every other input error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def seconds(text: str) -> float:
    """A positive, finite number of seconds: 0, negative, nan and inf would kill every worker at once or never."""
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0 < v < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return v


def degrees(text: str) -> list[int]:
    """Tensor parallel degrees, comma-separated: "1,4"."""
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or any(d < 1 for d in out):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive degrees such as 1,4, got {text!r}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Determinism and performance regression harness for LLM inference.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run suites (determinism, served, load time) and report verdicts")
    r.add_argument("suites", nargs="+", type=Path, metavar="SUITE", help="suite TOML file(s)")
    add_run_options(r.add_argument)
    # Kept for the runbooks that call it: the same as `harness run` on a load-time suite.
    lt = sub.add_parser("loadtime", help="the same as `harness run` on a load-time suite")
    lt.add_argument("suites", nargs="+", type=Path, metavar="SUITE", help="load-time suite TOML file(s)")
    add_run_options(lt.add_argument)
    cal = sub.add_parser("calibrate", help="N A/A runs of a perf suite: run history and thresholds for this runner")
    cal.add_argument("suites", nargs=1, type=Path, metavar="SUITE", help="a suite with a [perf] section")
    cal.add_argument("--runs", type=int, default=10, help="A/A runs (default 10; at least 3)")
    add_run_options(cal.add_argument)
    doc = sub.add_parser("doctor", help="preflight: the known failure modes of the environment, model and suites")
    doc.add_argument(
        "suites", nargs="*", type=Path, metavar="SUITE", help="suites to check (default: those of suites/signoff.toml)"
    )
    doc.add_argument("--python", default=None, help="the engine's interpreter (default: this one)")
    doc.add_argument("--json", action="store_true", help="findings as JSON on stdout")
    add_run_options(doc.add_argument)
    so = sub.add_parser("signoff", help="doctor, then every sign-off suite against the baselines: GO / NO-GO")
    so.add_argument(
        "--file",
        type=Path,
        default=Path("suites/signoff.toml"),
        help="the sign-off file (default: suites/signoff.toml)",
    )
    so.add_argument("--verify", type=Path, default=None, metavar="DIR", help="check a sign-off folder's SHA256SUMS")
    so.add_argument("--python", default=None, help="the engine's interpreter, for the doctor (default: this one)")
    add_run_options(so.add_argument)
    tr = sub.add_parser("trend", help="change points in the run history (Apache Otava); exit 1 on a gated regression")
    tr.add_argument(
        "--history", type=Path, default=Path("reports/history"), help="history folder (default: reports/history/)"
    )
    tr.add_argument(
        "--pvalue", type=probability, default=1e-5, help="Otava's significance level per series (default 1e-5)"
    )
    tr.add_argument(
        "--threshold",
        action="append",
        default=[],
        type=threshold,
        metavar="METRIC=FRACTION",
        help="how much worse a gated metric may shift, by kind or full name, e.g. tpot=0.03 (repeatable)",
    )
    tr.add_argument("--last", type=int, default=0, metavar="N", help="only the last N runs of each history")
    return p


def probability(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return v


def threshold(text: str) -> tuple[str, float]:
    name, _, value = text.partition("=")
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not name or not 0 <= v < math.inf:
        raise argparse.ArgumentTypeError(f"expected METRIC=FRACTION such as tpot=0.05, got {text!r}")
    return name, v


def add_run_options(add) -> None:
    """Options shared with the pytest plugin."""
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
        help="tensor parallel degrees, e.g. 1,4 for a model whose heads 3 does not divide (suites with [parallel])",
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


def options(ns) -> run.Options:
    """Options from parsed CLI arguments, or from pytest's config (same names)."""
    get = ns.getoption if hasattr(ns, "getoption") else lambda k: getattr(ns, k)
    return run.Options(
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
    )


def history_dir(given: str | None, off: bool, out: Path) -> Path | None:
    """--history DIR; '' or --no-history: off; not given: beside the run directories, <out>/history."""
    if off or given == "":
        return None
    return Path(given) if given is not None else Path(out) / "history"


def run_main(args) -> int:
    opts = options(args)
    suites = [run.load(s, opts) for s in args.suites]  # all validated before any runs
    code = 0
    for kind, suite in suites:
        outcome = run.execute(kind, suite, opts)
        print(outcome.console, flush=True)
        code = max(code, outcome.exit_code)
    return code


def calibrate_main(args) -> int:
    from .calibrate import calibrate

    code, lines = calibrate(args.suites[0], options(args), args.runs)
    print("\n".join(lines), flush=True)
    return code


def doctor_main(args) -> int:
    from . import doctor, signoff

    return doctor.main(args, signoff.default_suites(Path("suites/signoff.toml")))


def signoff_main(args) -> int:
    from . import signoff

    return signoff.main(args)


def trend_main(args) -> int:
    from . import trend

    return trend.main(args.history, args.pvalue, dict(args.threshold), max(0, args.last))


COMMANDS = {"calibrate": calibrate_main, "doctor": doctor_main, "signoff": signoff_main, "trend": trend_main}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS.get(args.command, run_main)(args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("harness: interrupted; records and loads measured so far are kept on disk", file=sys.stderr)
        return INFRA


if __name__ == "__main__":
    sys.exit(main())
