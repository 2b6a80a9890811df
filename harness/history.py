"""Run history: every run appends its headline metrics to one CSV per hardware, suite and profile
(`<history>/<hardware>/<suite>/<profile>.csv`), one row per run. CSV with a time column, attribute columns and
numeric metric columns is what Apache Otava reads as it is, so `harness trend` and Otava's own CLI share the files.

The hardware part of the device key names the file, not the software part: a torch, CANN or transformers upgrade
stays in the same history, and its `env.*` columns show the change point where it happened.

Appends rewrite the whole file (temp file, fsync, rename) under a lock: a crash leaves the old file or the new one,
and two runs finishing at once both keep their row. A row that cannot be read (torn, hand-edited) is one line
naming the file and line; it is kept in the file as it is, and the other rows are read.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from . import atomic
from .paths import inside, safe_name

# Attribute columns, in this order, before the metrics; `env.*` columns (the environment fingerprint) follow them.
ATTRIBUTES = ("time", "run_id", "harness_version", "commit", "model", "model_hash", "exit_code")
ENV_PREFIX = "env."


@dataclass(frozen=True)
class Headline:
    """One profile's (or load-time setting's) headline figures from one run: what a kind puts in its Outcome."""

    suite: str
    profile: str
    hardware: str  # the hardware part of the device key: names the history file
    env: dict[str, str]  # torch, transformers, torch_npu, cann, chip or CPU model, python, ...
    metrics: dict[str, float]
    model: str = ""
    model_hash: str = ""


@dataclass(frozen=True)
class Row:
    line: int  # in the file, 1 = the header
    time: datetime
    attributes: dict[str, str]  # every non-metric column, env.* included
    metrics: dict[str, float]  # nan where the run did not measure it


@dataclass
class History:
    path: Path
    header: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per unreadable row: file, line, what, the fix
    lines: list[str] = field(default_factory=list)  # the file's lines as they are (unreadable ones kept)

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.header if is_metric(c)]

    def series(self, metric: str) -> tuple[list[Row], list[float]]:
        """The rows that measured `metric`, and its values, oldest first."""
        rows = [r for r in self.rows if math.isfinite(r.metrics.get(metric, math.nan))]
        return rows, [r.metrics[metric] for r in rows]


def is_metric(column: str) -> bool:
    return column not in ATTRIBUTES and not column.startswith(ENV_PREFIX)


def path_for(root: Path, hardware: str, suite: str, profile: str) -> Path:
    for part in (hardware, suite, profile):
        if not safe_name(part):  # suites and device keys are safe already; this guards any other caller
            raise ValueError(f"history key part {part!r} is not a safe file name")
    return inside(root, Path(root) / hardware / suite / f"{profile}.csv")


def _fmt(v: float) -> str:
    return "" if not math.isfinite(v) else repr(float(v))


def _line(values: list[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def parse(path: Path, text: str) -> History:
    """Every readable row; each unreadable one is a problem line, never an exception."""
    h = History(Path(path), lines=text.splitlines(keepends=True))
    if not h.lines:
        return h
    try:
        h.header = next(csv.reader([h.lines[0]]))
    except csv.Error as e:
        h.problems.append(f"{path}:1: unreadable header ({e}); the file is not a history (move it aside)")
        return h
    if not h.header or h.header[0] != "time" or len(set(h.header)) != len(h.header):
        h.problems.append(f"{path}:1: the header must start with 'time' and name each column once; file skipped")
        h.header = []
        return h
    for n, raw in enumerate(h.lines[1:], start=2):
        if not raw.strip():
            continue
        problem = ""
        try:
            values = next(csv.reader([raw]))
        except csv.Error as e:
            values, problem = [], f"unreadable CSV ({e})"
        if not problem and not raw.endswith("\n"):
            problem = "the row is cut off (no line end: a run stopped while writing?)"
        elif not problem and len(values) != len(h.header):
            problem = f"{len(values)} fields where the header has {len(h.header)}"
        row: Row | None = None
        if not problem:
            cells = dict(zip(h.header, values))
            try:
                when = datetime.fromisoformat(cells["time"])
            except ValueError:
                problem = f"time {cells['time']!r} is not an ISO 8601 time"
            else:
                metrics = {}
                for c in h.header:
                    if is_metric(c):
                        try:
                            metrics[c] = float(cells[c]) if cells[c].strip() else math.nan
                        except ValueError:
                            problem = f"{c} = {cells[c]!r} is not a number"
                            break
                if not problem:
                    attrs = {c: cells[c] for c in h.header if not is_metric(c)}
                    row = Row(n, when, attrs, metrics)
        if row is None:
            h.problems.append(f"{path}:{n}: {problem}; row skipped (correct or delete that line)")
        else:
            h.rows.append(row)
    return h


def read(path: Path) -> History:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return History(Path(path))
    return parse(path, text)


def read_all(root: Path) -> list[History]:
    return [read(p) for p in sorted(Path(root).glob("*/*/*.csv"))]


def render(h: History, new: dict[str, str]) -> str:
    """The file's text with one more row. The columns are the union of the file's and the new row's; when that
    adds columns, every readable row is rewritten under the new header, and an unreadable line is kept as it is."""
    header = list(h.header) or list(ATTRIBUTES)
    for c in new:
        if c not in header:
            header.append(c)
    out = [_line(header)]
    readable = {r.line: r for r in h.rows}
    for n, raw in enumerate(h.lines[1:], start=2):
        r = readable.get(n)
        if header == h.header or r is None:
            out.append(raw if raw.endswith("\n") else raw + "\n")
        else:
            cells = {**r.attributes, **{k: _fmt(v) for k, v in r.metrics.items()}}
            out.append(_line([cells.get(c, "") for c in header]))
    out.append(_line([new.get(c, "") for c in header]))
    return "".join(out)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One writer at a time per history folder: the read-modify-rename of two runs must not lose a row."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename is still atomic; only a simultaneous append can be lost
        yield
        return
    with open(Path(root) / ".lock", "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def row_for(
    head: Headline, *, run_id: str, harness_version: str, commit: str, exit_code: int, when: float
) -> dict[str, str]:
    cells = {
        "time": datetime.fromtimestamp(when).astimezone().isoformat(timespec="seconds"),
        "run_id": run_id,
        "harness_version": harness_version,
        "commit": commit,
        "model": head.model,
        "model_hash": head.model_hash,
        "exit_code": str(exit_code),
    }
    cells.update({f"{ENV_PREFIX}{k}": str(v) for k, v in sorted(head.env.items())})
    cells.update({k: _fmt(v) for k, v in sorted(head.metrics.items())})
    return cells


def append(
    root: Path, heads: list[Headline], *, run_id: str, exit_code: int, when: float | None = None
) -> tuple[list[Path], list[str]]:
    """Append one row per headline. (files written, problem lines): unreadable rows already there, or a file that
    could not be written. Never raises for the disk: the run's own reports are already written."""
    from . import __version__
    from .envinfo import project_commit

    commit = project_commit()
    when = time.time() if when is None else when
    written, problems = [], []
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        with _locked(root):
            for head in heads:
                path = path_for(root, head.hardware, head.suite, head.profile)
                h = read(path)
                problems += h.problems
                if h.lines and not h.header:  # not a history this code wrote: leave it as it is
                    problems.append(f"{path}: not appended to (its header is not a history's); move it aside")
                    continue
                cells = row_for(
                    head, run_id=run_id, harness_version=__version__, commit=commit, exit_code=exit_code, when=when
                )
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_text(path, render(h, cells))
                written.append(path)
    except (OSError, ValueError) as e:
        problems.append(
            f"history {root}: not written ({getattr(e, 'strerror', None) or e}); the run's reports are kept"
        )
    return written, problems


def environment_changes(before: Row, after: Row) -> list[str]:
    """The environment fields (and model, harness version) that differ between two runs: 'torch 2.12 -> 2.13'."""
    from .envinfo import changes

    def env(r: Row) -> dict[str, str]:
        return {
            k.removeprefix(ENV_PREFIX): v
            for k, v in r.attributes.items()
            if k.startswith(ENV_PREFIX) or k in ("model_hash", "harness_version")
        }

    return changes(env(before), env(after), missing="none")


def model_hash(model_dir: str | Path) -> str:
    """A cheap identity of a model directory: its config and the names and sizes of its weight files (reading
    14 GB of weights each night to hash them would cost more than the run)."""
    import hashlib

    d = Path(model_dir)
    if not d.is_dir():
        return ""
    h = hashlib.sha256()
    for p in sorted(d.iterdir()):
        if p.name == "config.json":
            h.update(p.read_bytes())
        elif p.suffix in (".safetensors", ".bin", ".gguf", ".pt") and p.is_file():
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def environment(device_info: dict[str, object]) -> dict[str, str]:
    """The fingerprint columns: what the worker reported about device and software, plus Python."""
    import platform

    env = {k: str(v) for k, v in device_info.items() if isinstance(v, (str, int, float)) and k != "url"}
    env["python"] = platform.python_version()
    return env
