"""The run's data model, shared by the seam (run.py), the dry run and every kind: a check, a run kind's contract, and
the typed Outcome every report, history row and sign-off gate is written from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .options import Options
from .status import CheckOutcome

if TYPE_CHECKING:
    from .analysis.stats import Change
    from .baselines import BaselineUse


@dataclass(frozen=True)
class Check:
    """One reported check: a pytest item `SUITE::GROUP::NAME`, and a line of the console verdict."""

    group: str  # a profile, or a load-time setting
    name: str  # a property: batch-invariance, baseline, latency, ...
    outcome: CheckOutcome
    message: str = ""


@dataclass
class Outcome:
    """What a run knew at its end, typed: the report files, the history row, report.html and the sign-off are all
    written from it; none of them reads report.json back or parses the console's prose."""

    exit_code: int
    console: str
    run_dir: Path
    checks: list[Check] = field(default_factory=list)
    headlines: list[Any] = field(default_factory=list)  # history.Headline per profile or setting: the history row
    result: Any = None  # the kind's full result, for report.html
    timing: list[Change] = field(default_factory=list)  # timing rows against the stored baselines
    baselines: list[BaselineUse] = field(default_factory=list)
    written: dict[str, Path] = field(default_factory=dict)  # group -> the baseline this run wrote (when asked)
    device: dict[str, Any] = field(default_factory=dict)  # this run's device and software, as the worker read them


class Kind(Protocol):
    """A run kind: registered in harness.registry.KINDS (or the entry-point group harness.kinds). A kind whose
    Outcome.result report.html cannot draw sets a class attribute `html = False`."""

    @property
    def name(self) -> str: ...  # read-only: a frozen dataclass's field or a class attribute

    def load(self, path: Path, data: dict[str, Any], opts: Options) -> Any:
        """The validated suite from the file's TOML; HarnessError(USAGE) with one line for anything wrong in it."""
        ...

    def items(self, suite: Any) -> list[tuple[str, str]]:
        """(group, name) of every check the run will report, known before it runs."""
        ...

    def execute(self, suite: Any, opts: Options) -> Outcome: ...


REPORT_CHECK = ("report", "html")  # every kind's run ends with its report.html: a check of its own


def items(kind: Kind, suite: Any) -> list[tuple[str, str]]:
    """(group, name) of every check a run of `suite` reports: the kind's, and report.html where the kind has one."""
    return [*kind.items(suite), *([REPORT_CHECK] if renders_html(kind) else [])]


def renders_html(kind: Kind) -> bool:
    """A kind whose Outcome.result report.html can draw (the built-in ones); a plugin kind says `html = False`."""
    return bool(getattr(kind, "html", True))
