"""The end of a run: where the variance enters, for the worst case of every property that failed or was only close
(a suite's [localize]; `auto = false` turns it off). The same replay as `harness localize RUN_DIR`, and the same
localize.json; what it finds goes into report.json, summary.md and report.html.

Localising is a diagnosis, not a check: a replay that cannot run (an engine the harness cannot hook, a worker that
fails) is a note on the run, and the run's exit code stays what its verdicts made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..analysis.determinism import Verdict
from ..errors import HarnessError

LOCALISED = ("repeatability", "batch-invariance", "tp-invariance")
WORSE_THAN_TOKENS = ("close", "diverged")


@dataclass
class Localization:
    """What the auto step found: localize.json's entries, and a note when it could not run."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def wanted(verdicts: list[Verdict]) -> frozenset[tuple[str, str]]:
    """(profile, property) pairs to localise: those that failed, and those whose worst sequence is only close or
    diverged while the profile did not set out to see variation (a `vary` negative control that saw it did its job)."""
    out = set()
    for v in verdicts:
        if v.property not in LOCALISED:
            continue
        worse = v.worst is not None and v.worst.level in WORSE_THAN_TOKENS and v.expect != "vary"
        if not v.passed or worse:
            out.add((v.profile, v.property))
    return frozenset(out)


def run(run_dir: Path, verdicts: list[Verdict], max_cases: int, timeout: float) -> Localization:
    """Localise the wanted pairs' worst cases in the finished run folder; nothing when none is wanted."""
    from .command import Request, localize_run

    pairs = wanted(verdicts)
    if not pairs:
        return Localization()
    try:
        doc = localize_run(run_dir, Request(max_cases=max_cases, timeout=timeout, wanted=pairs))
    except HarnessError as e:
        return Localization(notes=[f"localize: {e}"])
    return Localization(doc["localization"], doc["seconds"])
