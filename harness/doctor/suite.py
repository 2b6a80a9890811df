"""The doctor's check of the suites in scope: each loads as the run would load it."""

from __future__ import annotations

from collections.abc import Iterator

from .core import Context, Finding, check


@check("suite.load")
def suite_load(ctx: Context) -> Iterator[Finding]:
    for s in ctx.suites:
        if s.error:
            yield Finding("suite.load", "error", s.error, "fix the suite file as the message says")
        else:
            yield Finding("suite.load", "info", f"{s.path} loads ({s.kind})")
