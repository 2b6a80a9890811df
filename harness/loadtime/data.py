"""The data of a load-time run: the suite, what is loaded, and what was measured. Plain data, shared by the
sweep (kind.py) and its reports (report.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import baselines
from ..analysis import stats
from . import analysis as lt


@dataclass(frozen=True)
class LoadSuite:
    name: str
    path: str
    model_ref: str
    dtype: str
    device: str
    settings: tuple[str, ...]  # OMP_NUM_THREADS values; "unset" removes the variable
    repeats: int  # rounds for the suite's model
    sizes: tuple[float, ...]  # synthetic checkpoints, billions of parameters
    size_repeats: int
    drop_caches: bool
    threshold: float
    alpha: float  # the OMP recommendation's per-comparison level
    budget: float  # the family-wise false-alarm rate of the run's baseline rows
    timeout_s: float
    seed: int = 0

    @property
    def case_hash(self) -> str:
        from .. import synthetic

        body = [self.model_ref, self.dtype, [synthetic.config_dict(s) for s in self.sizes]]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file())


@dataclass
class Target:
    label: str  # "embedded" or "synthetic-0.5b"
    model_dir: Path
    dtype: str
    params_b: float
    repeats: int

    @property
    def files(self) -> list[Path]:
        return weight_files(self.model_dir)

    @property
    def gb(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e9


@dataclass
class AgainstBaseline:
    """One OMP setting against its baseline: the rows gated and shown, what was said, and whether it failed."""

    gated: list[stats.Change] = dataclasses.field(default_factory=list)
    shown: list[stats.Change] = dataclasses.field(default_factory=list)  # against another hardware: not gated
    notes: list[str] = dataclasses.field(default_factory=list)
    failed: bool = False  # the baseline could not be compared or written


@dataclass
class LoadRun:
    suite: LoadSuite
    run_id: str
    run_dir: Path
    samples: list[lt.LoadSample]
    targets: list[Target]
    cache_note: str
    cold_ok: bool
    reads: dict[str, tuple[float, bool]]  # label -> (seconds, cold)
    device_info: dict[str, Any]
    recommendation: lt.Recommendation | None = None
    summaries: list[lt.SettingSummary] = dataclasses.field(default_factory=list)
    sizes: list[lt.SizeRow] = dataclasses.field(default_factory=list)
    against: dict[str, AgainstBaseline] = dataclasses.field(default_factory=dict)  # setting -> its baseline
    not_comparable: bool = False
    unwritable: bool = False
    ungated_note: str = ""  # why load times were shown but not gated
    used: list[baselines.BaselineUse] = dataclasses.field(default_factory=list)  # the baselines judged against
    written: dict[str, Path] = dataclasses.field(default_factory=dict)  # profile (omp-N) -> the baseline written
    alpha_row: float = 0.0  # what the smallest p was compared with under the run's budget (Holm)
    plot: str = ""
    exit_code: int = 0

    @property
    def changes(self) -> list[stats.Change]:
        """Every setting's rows against a baseline of this hardware: the gate."""
        return [c for b in self.against.values() for c in b.gated]

    @property
    def ungated(self) -> list[stats.Change]:
        return [c for b in self.against.values() for c in b.shown]

    @property
    def baseline_notes(self) -> list[str]:
        notes = [n for b in self.against.values() for n in b.notes]
        if self.changes:
            runs = max(c.runs for c in self.changes)
            notes.append(
                f"false-alarm budget {self.suite.budget:g} per run over {len(self.changes)} gated load-time rows "
                f"(Holm-Bonferroni; the smallest p is compared with {self.alpha_row:.2g}); "
                + (f"judged against the spread of {runs} baseline runs" if runs else "one baseline run: within-run p")
            )
        return notes + ([self.ungated_note] if self.ungated_note else [])  # said once for the run
