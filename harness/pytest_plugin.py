"""pytest integration: `pytest suites/` collects each suite file into items per profile and property,
for example `suites/determinism.toml::deterministic::batch-invariance`.

Loaded through the pytest11 entry point, so it imports nothing heavy at start-up: the
harness modules are imported when a suite file is actually collected.
"""
from __future__ import annotations

from pathlib import Path

import pytest

_EXIT = pytest.StashKey[int]()   # the harness exit code beyond pass/fail: 2 input error, 3 infrastructure


def pytest_addoption(parser: pytest.Parser) -> None:
    from .cli import add_run_options
    group = parser.getgroup("harness", "determinism harness")
    add_run_options(group.addoption)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_EXIT] = 0


def _is_suite(path: Path) -> bool:
    if path.suffix != ".toml":
        return False
    try:
        head = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(line.strip() == "[suite]" for line in head.splitlines())


def pytest_collect_file(file_path: Path, parent: pytest.Collector):
    if _is_suite(file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    code = session.config.stash.get(_EXIT, 0)
    if code > 1 and exitstatus in (0, 1):
        # A crashed worker, a model that would not load, or an unreadable baseline is not a test failure.
        session.exitstatus = code


class CheckFailed(Exception):
    """A verdict did not hold; the message is the useful part, not a traceback."""


class SuiteFile(pytest.File):
    def _options(self):
        from .cli import options
        return options(self.config)

    def collect(self):
        from .errors import HarnessError
        from .pipeline import load_suite
        from .suite import PROPERTIES
        try:
            self.suite = load_suite(self.path, self._options())
        except HarnessError as e:
            raise self.CollectError(str(e)) from None
        self._result = self._error = None
        props = [p for p in PROPERTIES if any(s.property == p for s in self.suite.schedules)] + ["baseline"]
        if self.suite.perf is not None:
            props.append("latency")
        if self.suite.endpoint is not None and self.suite.endpoint.oversize_check:
            props.append("input-limit")
        for prof in self.suite.profiles:
            yield ProfileNode.from_parent(self, name=prof.name, props=props)

    def result(self):
        """Run the whole suite once, on the first item that needs it."""
        from .errors import HarnessError
        from .pipeline import execute, report
        if self._result is None and self._error is None:
            capman = self.config.pluginmanager.getplugin("capturemanager")
            try:
                with capman.global_and_fixture_disabled():  # show progress and tables live
                    self._result = execute(self.suite, self._options())
                    print("\n" + report.console(self._result), flush=True)
            except HarnessError as e:
                self._error = e
                self._raise_exit(e.code)
            else:
                self._raise_exit(self._result.exit_code)
        if self._error is not None:
            raise CheckFailed(str(self._error))
        return self._result

    def _raise_exit(self, code: int) -> None:
        if code > 1:
            self.config.stash[_EXIT] = max(self.config.stash.get(_EXIT, 0), code)


class ProfileNode(pytest.Collector):
    def __init__(self, *, props: list[str], **kw):
        super().__init__(**kw)
        self.props = props

    def collect(self):
        for prop in self.props:
            yield VerdictItem.from_parent(self, name=prop)


class VerdictItem(pytest.Item):
    def runtest(self) -> None:
        res = self.parent.parent.result()
        profile = self.parent.name
        job = next(j for j in res.jobs if j.profile == profile)
        lines = []
        if not job.ok:
            lines.append(job.describe())
        if self.name == "latency":
            self._latency(res, profile, lines)
        elif (v := next((v for v in res.all_verdicts() if v.profile == profile and v.property == self.name), None)) is None:
            lines.append(f"no {self.name} verdict (the worker produced nothing to compare)")
        elif v.status == "no baseline":
            pytest.skip(v.reason)
        elif not v.passed:
            lines.append(f"{v.property} expected {v.expect!r}: {v.reason}")
            if v.worst:
                lines.append(f"worst case: {v.worst.describe()}")
        if lines:
            lines.append(f"report: {res.run_dir / 'summary.md'}")
            raise CheckFailed("\n".join(lines))

    @staticmethod
    def _latency(res, profile: str, lines: list[str]) -> None:
        from .report import change_table
        changes = res.baseline.changes.get(profile)
        if changes is None:
            if not lines:
                pytest.skip("no latency baseline to compare with")
            return
        bad = [c for c in changes if c.status == "regressed"]
        if bad:
            lines.append("latency regressed: " + "; ".join(f"{c.metric} x{c.ratio:.3f} (p={c.p:.3g})" for c in bad))
            lines.append(change_table(changes))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self):
        return self.path, None, f"{self.path.name}::{self.parent.name}::{self.name}"
