"""The environment each gate ran in against the one its baselines recorded, and the model files' hashes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import baselines
from ..models import file_hashes

if TYPE_CHECKING:
    pass

# What a release reader asks about first; shown even where the baselines do not record it.
VOLATILE = {"url"}  # a served run's URL names a free port picked per start: a difference there means nothing
HEADLINE = ("chip", "cpu_model", "driver", "firmware", "cann", "torch", "torch_npu", "transformers", "server")


def environment_rows(base: dict[str, Any], now: dict[str, Any], base_commit: str, commit: str) -> list[list[str]]:
    """field, baseline, this run, mark: `!` changed, blank same, `?` not recorded on one side."""
    dev = dict(base.get("device", {}))
    dev["python"] = base.get("host", {}).get("python", "")
    keys = [k for k in HEADLINE if k in dev or k in now] + sorted((set(dev) | set(now)) - set(HEADLINE) - VOLATILE)
    keys += [k for k in HEADLINE if k not in keys and now.get("device") == "npu"]
    rows = []
    for k in keys:
        a, b = str(dev.get(k, "") or "not recorded"), str(now.get(k, "") or "not recorded")
        rows.append([k, a, b, "?" if "not recorded" in (a, b) and a != b else "!" if a != b else ""])
    rows.append(
        ["harness commit", base_commit or "not recorded", commit or "unknown", "!" if base_commit != commit else ""]
    )
    return rows


@dataclass
class EnvDiff:
    baselines: list[str]
    rows: list[list[str]]


def environment_diff(per_gate: list[tuple[list[baselines.BaselineUse], dict[str, Any]]], commit: str) -> list[EnvDiff]:
    """One table per distinct (baseline environment, this run's device): which baselines share it, and each field."""
    out: dict[str, EnvDiff] = {}
    for used, now in per_gate:
        for u in used:
            rows = environment_rows(u.environment, now, u.commit, commit)
            key = json.dumps(rows, sort_keys=True)
            out.setdefault(key, EnvDiff([], rows)).baselines.append(str(u.path))
    return list(out.values())


def model_rows(dirs: list[Path], store: Path) -> list[list[str]]:
    """Every file of the model folders with its sha256, against what the baselines recorded."""
    rows = []
    for d in dirs:
        for name, h in file_hashes(d, None).items():
            rec = set(baselines.Store(store).model_file_hashes(name).values())
            mark = (
                "not recorded" if not rec else "matches the baselines" if rec == {h} else "DIFFERS from the baselines"
            )
            rows.append([str(d / name), h, mark])
    return rows
