"""`harness run SUITE...`: the same run as `pytest suites/`, without pytest. Any kind of suite (determinism, served,
load time) goes through the one seam in run.py.

Exit codes: 0 all checks passed, 1 a check failed, 2 usage or input error, 3 infrastructure error.

SIGTERM, SIGHUP or SIGINT to any command stops every process it started (workers, torchrun groups and their ranks,
servers and their process groups) within the servers' stop grace, writes the report of what finished with the
unfinished jobs marked cancelled, and exits 3; a second signal kills them at once and exits 3 (harness.cancel).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import NoReturn

from . import __version__, cancel, run
from .errors import INFRA, HarnessError
from .options import add_run_options, from_namespace, seconds


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 too; one line, like every other input error
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    cal = sub.add_parser(
        "calibrate", help="N A/A runs of a perf or load-time suite: run history and thresholds for this runner"
    )
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
    loc = sub.add_parser(
        "localize", help="the first module and operator whose output bits differ, for a run's non-bitwise cases"
    )
    loc.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder, reports/<run-id>/")
    loc.add_argument("--profile", default=None, help="only this profile's cases")
    loc.add_argument("--prompt", default=None, metavar="ID", help="only this prompt's cases")
    loc.add_argument("--batch", default=None, metavar="B", help="only the cases compared in this batch (a batch id)")
    loc.add_argument(
        "--max-cases", type=positive, default=3, metavar="N", help="at most N cases, worst first (default 3)"
    )
    loc.add_argument("--dump", type=Path, default=None, metavar="DIR", help="write the tensors as .npy + manifest")
    loc.add_argument("--adapter", default=None, help="replay with this adapter instead of the job's")
    loc.add_argument("--timeout", type=seconds, default=1800.0, help="seconds for each replay worker (default 1800)")
    return p


def positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return v


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


def run_main(args: argparse.Namespace) -> int:
    opts = from_namespace(args)
    suites = [run.load(s, opts) for s in args.suites]  # all validated before any runs
    code = 0
    for kind, suite in suites:
        outcome = run.execute(kind, suite, opts)
        print(outcome.console, flush=True)
        code = max(code, outcome.exit_code)
    return code


def calibrate_main(args: argparse.Namespace) -> int:
    from .calibrate import calibrate

    code, lines = calibrate(args.suites[0], from_namespace(args), args.runs)
    print("\n".join(lines), flush=True)
    return code


def doctor_main(args: argparse.Namespace) -> int:
    from . import doctor, signoff

    return doctor.main(args, from_namespace(args), signoff.default_suites(Path("suites/signoff.toml")))


def signoff_main(args: argparse.Namespace) -> int:
    from . import signoff

    return signoff.main(args, from_namespace(args))


def trend_main(args: argparse.Namespace) -> int:
    from . import trend

    return trend.main(args.history, args.pvalue, dict(args.threshold), max(0, args.last))


def localize_main(args: argparse.Namespace) -> int:
    from .localize import command

    return command.main(args)


COMMANDS = {
    "calibrate": calibrate_main,
    "doctor": doctor_main,
    "localize": localize_main,
    "signoff": signoff_main,
    "trend": trend_main,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cancel.install()
    try:
        code = COMMANDS.get(args.command, run_main)(args)
        return INFRA if cancel.requested() else code
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return INFRA if cancel.requested() else e.code
    except KeyboardInterrupt:  # cancel.Cancelled too: a signal before this command's report could be written
        what = f"cancelled ({cancel.reason()})" if cancel.requested() else "interrupted"
        print(f"harness: {what}; records and loads measured so far are kept on disk", file=sys.stderr)
        return INFRA
    finally:
        cancel.finish()  # every process still registered: SIGTERM, its grace, SIGKILL


if __name__ == "__main__":
    sys.exit(main())
