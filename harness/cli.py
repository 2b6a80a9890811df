"""`harness run SUITE...`: the same run as `pytest suites/`, without pytest.

Exit codes: 0 all checks passed, 1 a check failed, 2 usage or input error, 3 infrastructure error.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, pipeline
from .errors import INFRA, USAGE, HarnessError
from .suite import DEVICES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 too; keep it to one line plus usage
        self.print_usage(sys.stderr)
        self.exit(USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Determinism and performance regression harness for LLM inference.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("run", help="run suites and report verdicts")
    r.add_argument("suites", nargs="+", type=Path, metavar="SUITE", help="suite TOML file(s)")
    add_run_options(r.add_argument)
    lt = sub.add_parser("loadtime", help="cold and warm model loads under OMP_NUM_THREADS settings")
    lt.add_argument("suite", type=Path, metavar="SUITE", help="load-time suite TOML file")
    lt.add_argument("--device", choices=DEVICES, default=None)
    lt.add_argument("--model", default=None, help="embedded alias, HF model directory or .gguf file")
    lt.add_argument("--out", type=Path, default=Path("reports"))
    lt.add_argument("--baselines", type=Path, default=Path("baselines"))
    lt.add_argument("--update-baselines", action="store_true")
    lt.add_argument("--reason", default="")
    lt.add_argument("--drop-caches", action=argparse.BooleanOptionalAction, default=None,
                    help="evict the model files from the page cache before each cold load (default: the suite's)")
    return p


def add_run_options(add, prefix: str = "") -> None:
    """Options shared with the pytest plugin (which prefixes none of them)."""
    add(f"--{prefix}device", choices=DEVICES, default=None, help="cpu, cuda or npu (overrides the suite)")
    add(f"--{prefix}model", default=None, help="embedded alias, HF model directory or .gguf file (overrides the suite)")
    add(f"--{prefix}profile", action="append", default=None, dest="profile",
        help="run only this profile (repeatable); default: all profiles of the suite")
    add("--out", type=Path, default=Path("reports"), help="report directory (default: reports/)")
    add("--worker-timeout", type=float, default=None, help="per-worker timeout in seconds (default: the suite's run.timeout_s)")
    add(f"--{prefix}adapter", default=None, help="adapter name from the harness.adapters registry (overrides the suite)")
    add("--baselines", type=Path, default=Path("baselines"), help="baseline store (default: baselines/)")
    add("--update-baselines", action="store_true", default=False,
        help="write this run's outputs and latency samples as the new baselines (needs --reason)")
    add("--reason", default="", help="why the baselines change (stored as provenance)")
    add("--endpoint", default=None, metavar="URL",
        help="a served suite against this already running server, instead of starting the suite's [server]")


def options(ns) -> pipeline.Options:
    """Options from parsed CLI arguments, or from pytest's config (same names)."""
    get = ns.getoption if hasattr(ns, "getoption") else lambda k: getattr(ns, k)
    return pipeline.Options(device=get("device"), model=get("model"), profiles=get("profile"), out=get("out"),
                            timeout_s=get("worker_timeout"), adapter=get("adapter"), baselines=get("baselines"),
                            update_baselines=get("update_baselines"), reason=get("reason"),
                            endpoint=get("endpoint"))


def loadtime_main(args) -> int:
    from . import loadtime, report_loadtime
    from .suite import SuiteError
    if args.update_baselines and not args.reason.strip():
        raise HarnessError("--update-baselines needs --reason 'why these load times are the new truth'", USAGE)
    try:
        suite = loadtime.load_suite(args.suite, model=args.model, device=args.device, drop_caches=args.drop_caches)
    except SuiteError as e:
        raise HarnessError(str(e), USAGE) from None
    run = loadtime.sweep(suite, args.out)
    loadtime.analyse(run, args.baselines, args.update_baselines, args.reason)
    run.exit_code = loadtime.exit_code(run)
    report_loadtime.write(run)
    print(report_loadtime.console(run), flush=True)
    return run.exit_code


def run_main(args) -> int:
    opts = options(args)
    suites = [pipeline.load_suite(s, opts) for s in args.suites]  # all validated before any runs
    code = 0
    for s in suites:
        res = pipeline.execute(s, opts)
        print(pipeline.report.console(res), flush=True)
        code = max(code, res.exit_code)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return (loadtime_main if args.command == "loadtime" else run_main)(args)
    except HarnessError as e:
        print(f"harness: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("harness: interrupted; records and loads measured so far are kept on disk", file=sys.stderr)
        return INFRA

if __name__ == "__main__":
    sys.exit(main())
