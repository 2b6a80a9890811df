"""One seam for every kind of run: the CLI, the pytest plugin and nox all go through `load` and `execute` here.

A kind (determinism, served, load time; next tensor parallel, vLLM, sign-off) says how it parses its suite, which
checks it will report (pytest items) and how it runs, analyses and reports. What every kind shares lives here:
the options, the run directory, progress bars, the outcome and the exit-code rule. Adding a kind is its module
plus one line in KINDS.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CHECK_FAILED, INFRA, OK, USAGE, HarnessError
from .options import Options as Options  # re-exported: kinds import it from here too
from .outcome import REPORT_CHECK as REPORT_CHECK  # the data model, re-exported: kinds and tests name it run.X
from .outcome import Check as Check
from .outcome import Kind as Kind
from .outcome import Outcome as Outcome
from .outcome import items as items
from .outcome import renders_html
from .paths import SAFE_RULE, inside, safe_name, shown
from .registry import KINDS, RegistryError
from .tomltable import SuiteError, read_toml


@dataclass(frozen=True)
class RunDir:
    """reports/<time>-<suite>[-n]: created once, never shared with another run."""

    run_id: str
    path: Path

    @classmethod
    def create(cls, out: Path, name: str) -> RunDir:
        if not safe_name(name):  # suites check it; this guards any other caller
            raise HarnessError(f"run directory name {shown(name)} {SAFE_RULE}", USAGE)
        base = f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"
        inside(out, Path(out) / base)
        try:
            Path(out).mkdir(parents=True, exist_ok=True)
            for n in range(1, 10_000):
                run_id = base if n == 1 else f"{base}-{n}"
                try:
                    (Path(out) / run_id).mkdir()  # atomic: two runs started in the same second get two folders
                except FileExistsError:
                    continue
                d = cls(run_id, Path(out) / run_id)
                for sub in ("jobs", "records", "logs"):
                    (d.path / sub).mkdir()
                return d
        except OSError as e:  # --out itself was checked before the run: this is the disk or its permissions
            raise HarnessError(f"--out {out}: cannot create the run directory ({e.strerror or e})", INFRA) from None
        raise HarnessError(f"{out}: no free run directory name for {base}", INFRA)


class Progress:
    """A tqdm bar on stderr (sparse when not a terminal, so CI logs stay short), or nothing when disabled."""

    def __init__(self, desc: str, total: int, unit: str, enabled: bool = True):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                mininterval=0.5 if sys.stderr.isatty() else 15,
                dynamic_ncols=True,
            )

    def to(self, n: int) -> None:
        if self.bar is not None and n != self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exit_code(*, infra: bool, unusable: bool, failed: bool) -> int:
    """The one rule: 3 infrastructure, else 2 input that cannot be compared, else 1 a check failed, else 0."""
    return INFRA if infra else USAGE if unusable else CHECK_FAILED if failed else OK


def kind_name(data: dict[str, Any]) -> str:
    """`[suite] kind = "NAME"` names any registered kind (a plugin's included); without it, the tables of the
    built-in kinds say which: [loadtime], else [server] or [endpoint] (served), else determinism."""
    head = data.get("suite")
    if isinstance(head, dict) and "kind" in head:
        return str(head["kind"])
    if "loadtime" in data:
        return "loadtime"
    if "server" in data or "endpoint" in data:
        return "served"
    return "determinism"


def get(name: str) -> Kind:
    try:
        kind: Kind = KINDS.get(name)
    except RegistryError as e:
        raise HarnessError(f"suite.kind: {e}", USAGE) from None
    return kind


def directory_option(flag: str, path: Path) -> None:
    """A directory the run writes to, created if missing: a file there, or above it, is refused before any model
    loads rather than failing after the run."""
    p = Path(path)
    if "\0" in str(p):
        raise HarnessError(f"{flag} {str(p)!r}: a path cannot contain a NUL byte", USAGE)
    for d in (p, *p.parents):
        if d.is_dir():
            return
        if d.exists() or d.is_symlink():
            raise HarnessError(
                f"{flag} {p}: {d} is not a directory; name a directory (it is created if missing)", USAGE
            )


def execute(kind: Kind, suite: Any, opts: Options) -> Outcome:
    """Run a suite, then what every kind shares after it: its headline metrics appended to the history (a problem
    there is a note: the history is a convenience) and report.html (a page that cannot be written is a failed
    check: it is what a reader opens first). A dry run plans and stops before the first worker (harness.dryrun)."""
    if opts.dry_run:
        from . import dryrun

        return dryrun.execute(kind, suite, opts)
    out = kind.execute(suite, opts)
    notes: list[str] = []
    if opts.history is not None and out.headlines:
        from . import history

        written, problems = history.append(
            opts.history, out.headlines, run_id=out.run_dir.name, exit_code=out.exit_code
        )
        notes += problems + ([f"history: {len(written)} row(s) appended under {opts.history}"] if written else [])
    if renders_html(kind):
        notes += write_html(out, opts)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        notes += step_summary(Path(os.environ["GITHUB_STEP_SUMMARY"]), out.run_dir / "summary.md")
    if notes:
        last = out.console.rsplit("\n", 1)
        out.console = "\n".join([*last[:-1], *(f"note: {n}" for n in notes), last[-1]])
    return out


def write_html(out: Outcome, opts: Options) -> list[str]:
    """report.html from the run's result, as a check of its own; notes for the console."""
    if out.result is None:
        out.checks.append(Check(*REPORT_CHECK, "skipped", "this run produced no result to render"))
        return []
    from . import html

    missing = [str(m) for m in html.write(out.result, out.run_dir, opts.history, out.headlines)]
    out.checks.append(Check(*REPORT_CHECK, "failed" if missing else "passed", "; ".join(missing)))
    if missing:
        out.exit_code = max(out.exit_code, CHECK_FAILED)
    return [f"x {m}" for m in missing]


def step_summary(target: Path, summary: Path) -> list[str]:
    """GitHub Actions shows the file GITHUB_STEP_SUMMARY names on the run's page: this run's summary.md goes there."""
    try:
        text = summary.read_text(encoding="utf-8")
        with open(target, "a", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n\n")
    except OSError as e:
        return [f"GITHUB_STEP_SUMMARY {target}: not written ({e.strerror or e})"]
    return []


def load(path: str | Path, opts: Options) -> tuple[Kind, Any]:
    """The suite's kind and its validated suite, before any model loads or server starts."""
    if opts.update_baselines and not opts.reason.strip():
        raise HarnessError("--update-baselines needs --reason 'why these outputs and timings are the new truth'", USAGE)
    directory_option("--out", opts.out)
    directory_option("--baselines", opts.baselines)
    if opts.history is not None:
        directory_option("--history", opts.history)
    try:
        data = read_toml(path)
    except SuiteError as e:
        raise HarnessError(str(e), USAGE) from None
    kind = get(kind_name(data))
    if isinstance(data.get("suite"), dict):  # the kind is chosen; its own parser reads the rest of [suite]
        data = {**data, "suite": {k: v for k, v in data["suite"].items() if k != "kind"}}
    return kind, kind.load(Path(path), data, opts)
