"""pytest integration: `pytest suites/` collects each suite file into items per profile and property,
for example `suites/determinism.toml::deterministic::batch-invariance`.

Loaded through the pytest11 entry point, so it imports nothing heavy at start-up: the
harness modules are imported when a suite file is actually collected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr, TracebackStyle

    from .errors import HarnessError
    from .options import Options
    from .run import Kind, Outcome

_EXIT = pytest.StashKey[int]()  # the harness exit code beyond pass/fail: 2 input error, 3 infrastructure


def pytest_addoption(parser: pytest.Parser) -> None:
    from .options import add_run_options

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


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> SuiteFile | None:
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
    kind: Kind
    suite: Any  # the kind's own suite type
    _outcome: Outcome | None
    _error: HarnessError | None

    def _options(self) -> Options:
        from .options import from_pytest

        return from_pytest(self.config)

    def collect(self) -> Iterator[GroupNode]:
        from . import run
        from .errors import HarnessError

        try:
            self.kind, self.suite = run.load(self.path, self._options())
        except HarnessError as e:
            raise self.CollectError(str(e)) from None
        self._outcome = self._error = None
        groups: dict[str, list[str]] = {}
        for group, name in run.items(self.kind, self.suite):
            groups.setdefault(group, []).append(name)
        for group, names in groups.items():
            yield GroupNode.from_parent(self, name=group, names=names)

    def outcome(self) -> Outcome:
        """Run the whole suite once, on the first item that needs it."""
        from . import run
        from .errors import HarnessError

        if self._outcome is None and self._error is None:
            capman = self.config.pluginmanager.getplugin("capturemanager")
            try:
                with capman.global_and_fixture_disabled():  # show progress and tables live
                    self._outcome = run.execute(self.kind, self.suite, self._options())
                    print("\n" + self._outcome.console, flush=True)
            except HarnessError as e:
                self._error = e
                self._raise_exit(e.code)
            else:
                self._raise_exit(self._outcome.exit_code)
        if self._error is not None:
            raise CheckFailed(str(self._error))
        assert self._outcome is not None  # the run above set one or the other
        return self._outcome

    def _raise_exit(self, code: int) -> None:
        if code > 1:
            self.config.stash[_EXIT] = max(self.config.stash.get(_EXIT, 0), code)


class GroupNode(pytest.Collector):
    """A profile (or a load-time setting): one item per check. A check named `tp3::batch-invariance` sits in a
    node `tp3` below it, so `SUITE::PROFILE::tp3::batch-invariance` is its pytest id."""

    def __init__(self, *, names: list[str], group: str = "", prefix: str = "", **kw: Any) -> None:
        super().__init__(**kw)
        self.names, self.group, self.prefix = names, group or self.name, prefix

    def collect(self) -> Iterator[CheckItem | GroupNode]:
        order: dict[str, list[str] | None] = {}  # first appearance order: items and sub-groups as listed
        for name in self.names:
            head, sep, rest = name.partition("::")
            if sep:
                order.setdefault(head, [])
                order[head].append(rest)  # type: ignore[union-attr]
            else:
                order[name] = None
        for name, sub in order.items():
            if sub is None:
                yield CheckItem.from_parent(self, name=name)
            else:
                yield GroupNode.from_parent(
                    self, name=name, names=sub, group=self.group, prefix=f"{self.prefix}{name}::"
                )


class CheckItem(pytest.Item):
    @property
    def _node(self) -> GroupNode:
        return cast(GroupNode, self.parent)  # made only by GroupNode.collect

    def runtest(self) -> None:
        out = cast(SuiteFile, self.getparent(SuiteFile)).outcome()  # a GroupNode is always below a SuiteFile
        group, name = self._node.group, self._node.prefix + self.name
        check = next((c for c in out.checks if (c.group, c.name) == (group, name)), None)
        if check is None:
            raise CheckFailed(f"no {name} verdict for {group}; report: {out.run_dir / 'summary.md'}")
        if check.outcome == "skipped":
            pytest.skip(check.message)
        if check.outcome == "failed":
            raise CheckFailed(check.message)

    def repr_failure(
        self, excinfo: pytest.ExceptionInfo[BaseException], style: TracebackStyle | None = None
    ) -> str | TerminalRepr:
        if isinstance(excinfo.value, CheckFailed):
            return str(excinfo.value)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"{self.path.name}::{self._node.group}::{self._node.prefix}{self.name}"
