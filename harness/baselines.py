"""Golden baselines: `baselines/<device-key>/<suite>/<profile>.json`.

Read-only unless the user passes --update-baselines; written atomically, so a kill
mid-write leaves the previous file whole. A file that is corrupt, of an unknown
schema, or made for another case hash is "not comparable", never a silent pass.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, atomic, envinfo
from .devicekey import TIERS, DeviceKey, device_key, same_machine, slug
from .errors import HarnessError, one_line
from .paths import inside
from .records import ID_SPACES, NO_IDS, Record
from .status import Tier

SCHEMA_VERSION = 1
# What a baseline keeps of each reference sequence: enough to show a divergence, not the timings.
_OUTPUT_KEYS = ("prompt_id", "tokens", "pieces", "text", "finish_reason", "fingerprints", "topk_ids", "topk_logprobs")
# Added after schema 1 was first written; older files take the default. An empty `ids` is read from the level
# (records.Record.ids): an older file at level "logprobs" holds hashes of the token text, and compares as such.
_OPTIONAL_KEYS = {"level": "logits", "ids": "", "topk_tokens": []}


class BaselineError(ValueError):
    """The baseline exists but cannot be compared; the message is one line naming the file and what to do."""

    def __init__(self, message: str):
        super().__init__(one_line(message))


@dataclass
class Baseline:
    suite: str
    profile: str
    case_hash: str
    device_key: str
    environment: dict[str, Any]
    provenance: dict[str, Any]
    outputs: dict[str, dict[str, Any]]  # prompt id -> reference sequence
    latency: dict[str, list[float]] = field(default_factory=dict)  # raw samples per metric (the latest run)
    load_s: list[float] = field(default_factory=list)  # raw load-time samples
    runs: list[dict[str, float]] = field(default_factory=list)  # per recorded run: metric -> median
    thresholds: dict[str, float] = field(default_factory=dict)  # calibrated on this runner (harness calibrate)
    calibration: dict[str, Any] = field(default_factory=dict)  # how: runs, date, host, budget, per-row alpha
    # aligned with runs, where any run was measured by several processes ([perf] processes): metric -> the medians of
    # that run's processes ({} for a run of one process); absent from files that never held one
    processes: list[dict[str, list[float]]] = field(default_factory=list)

    def run_medians_now(self) -> dict[str, float]:
        """The medians of the one run a file from before run histories holds."""
        return medians({**self.latency, **({"load": self.load_s} if self.load_s else {})})

    def run_medians(self) -> dict[str, list[float]]:
        """Metric -> the medians of every recorded run; files from before runs were kept count as one run."""
        runs = self.runs or [self.run_medians_now()]
        out: dict[str, list[float]] = {}
        for r in runs:
            for k, v in r.items():
                out.setdefault(k, []).append(v)
        return out

    def reference(self, prompt_id: str) -> Record:
        o = self.outputs[prompt_id]
        return Record(
            profile=self.profile,
            schedule="baseline",
            kind="baseline",
            batch_id="baseline",
            batch=[prompt_id],
            position=0,
            token_times=[],
            **{k: o[k] for k in _OUTPUT_KEYS},
            **{k: o.get(k, copy.copy(d)) for k, d in _OPTIONAL_KEYS.items()},
        )


MAX_RUNS = 20  # run medians kept per baseline: enough for a stable spread, recent enough to mean this runner


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: float(statistics.median(v)) for k, v in samples.items() if v}


def with_history(b: Baseline, prev: Found | Missing | Unusable, device: dict[str, Any], fresh: bool) -> None:
    """Timings accumulate run by run under one key on one machine type, so a gate can judge a run against how far
    runs drift on this runner; calibrated thresholds stay with them. `fresh`: start the history anew (calibrate)."""
    old = (
        prev.baseline
        if isinstance(prev, Found)
        and prev.tier == "same key"
        and same_machine(prev.baseline.environment.get("device", {}), device)
        and not fresh
        else None
    )
    now = b.processes[-1] if b.processes else {}
    before: list[dict[str, list[float]]] = []
    if old:
        n = len(old.runs) or 1
        before = ([{}] * n + old.processes)[-n:]  # runs recorded before processes were kept had none
    b.runs = (((old.runs or [old.run_medians_now()]) if old else []) + [b.run_medians_now()])[-MAX_RUNS:]
    kept = (before + [now])[-MAX_RUNS:]
    b.processes = kept if any(kept) else []
    if old:
        b.thresholds, b.calibration = old.thresholds, old.calibration


def suite_dir(suite_name: str, model_ref: str, model_overridden: bool) -> str:
    """A suite run on another model (--model) keeps its own baselines beside the suite's own."""
    return suite_name if not model_overridden else f"{suite_name}@{slug(Path(model_ref.rstrip('/')).name)}"


@dataclass(frozen=True)
class Found:
    path: Path
    baseline: Baseline
    key: DeviceKey  # the baseline's
    tier: Tier

    @property
    def same_hardware(self) -> bool:
        """Timings compare only here: another CPU model or chip is another machine, not a regression."""
        return self.tier != "other hardware"

    def describe(self) -> str:
        prov = self.baseline.provenance
        return f"{self.path} ({self.tier}; {prov.get('created', '?')}, {prov.get('reason', '')!r})"


@dataclass(frozen=True)
class BaselineUse:
    """A stored baseline a run was judged against, and how its key relates to the run's: what a sign-off needs
    to say which baselines stood behind a verdict and what has changed since they were recorded."""

    path: Path
    tier: Tier
    environment: dict[str, Any]  # what it recorded: device, host
    commit: str  # the project commit it was recorded at

    @staticmethod
    def of(found: Found) -> BaselineUse:
        b = found.baseline
        env = {k: v for k, v in b.environment.items() if k in ("device", "host")}
        return BaselineUse(found.path, found.tier, env, str(b.provenance.get("project_commit", "")))


@dataclass(frozen=True)
class Missing:
    path: Path  # where this run's key would keep it


@dataclass(frozen=True)
class Unusable:
    path: Path
    reason: str  # one line naming the file and what to do: the run exits 2


@dataclass(frozen=True)
class NotWritten:
    reason: str
    disk: bool  # the disk refused (exit 3), not a name that leads out of the store (exit 2)


def record_hint(suite_path: object) -> str:
    return f"record one for this host with: harness run {suite_path} --update-baselines --reason '...'"


def missing_reason(found: Missing, key: DeviceKey, suite_path: object) -> str:
    return f"no baseline for {found.path.parent.parent.name} (nor any {key.device} one); {record_hint(suite_path)}"


class Store:
    """`<root>/<device key>/<suite>/<profile>.json`. Several hosts' baselines live side by side; writing one never
    touches another's."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, key: DeviceKey, suite: str, profile: str) -> Path:
        return inside(self.root, self.root / str(key) / suite / f"{profile}.json")

    def check(self, key: DeviceKey, suite: str, profile: str, case_hash: str) -> Found | Missing | Unusable:
        """This key's baseline; else the newest of the same hardware (other software); else the newest of the same
        device type (other hardware). A file under this run's key that cannot be compared is Unusable, never
        skipped; other keys' files that cannot be read are passed over."""
        try:
            exact = self.path(key, suite, profile)
        except HarnessError as e:
            return Unusable(self.root, str(e))
        if exact.is_file():
            try:
                return Found(exact, load(exact, case_hash), key, "same key")
            except BaselineError as e:
                return Unusable(exact, str(e))
        best: tuple[int, str, Found] | None = None
        for p in self.files(suite, profile):
            if p == exact:
                continue
            try:
                b = load(p, case_hash)
            except BaselineError:
                continue
            theirs = device_key(b.environment.get("device", {}))
            tier = key.tier(theirs)
            if tier is None:
                continue
            rank = (-TIERS.index(tier), str(b.provenance.get("created", "")))
            if best is None or rank > best[:2]:
                best = (*rank, Found(p, b, theirs, tier))
        return best[2] if best else Missing(exact)

    def files(self, suite: str = "*", profile: str = "*") -> list[Path]:
        """Every stored file of `suite` and `profile` (glob patterns) under every key, inside the store."""
        return [inside(self.root, p) for p in sorted(self.root.glob(f"*/{suite}/{profile}.json")) if p.is_file()]

    def raw(self, suite: str = "*", profile: str = "*") -> Iterator[tuple[Path, dict[str, Any]]]:
        """(file, its JSON) for every readable stored file, for readers that look across keys and schemas (the
        doctor); a file that cannot be read is passed over."""
        for p in self.files(suite, profile):
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                yield p, data

    def model_file_hashes(self, name: str) -> dict[str, str]:
        """baseline file -> the sha256 of model file `name` recorded with it (environment.model_files)."""
        out = {}
        for p, data in self.raw():
            env = data.get("environment", {})
            h = env.get("model_files", {}).get(name) if isinstance(env, dict) else None
            if isinstance(h, str):
                out[str(p)] = h
        return out

    def save(self, key: DeviceKey, suite: str, profile: str, b: Baseline) -> Path | NotWritten:
        """`update`, with what went wrong as a value: every kind reports it the same way and keeps its report."""
        try:
            return self.update(key, suite, profile, b)
        except HarnessError as e:  # a name that leads out of --baselines: input, not the disk
            return NotWritten(f"{e}; the run's report is kept", disk=False)
        except OSError as e:
            where = self.path(key, suite, profile)
            return NotWritten(f"{where}: cannot write the baseline ({e.strerror or e}); the run's report is kept", True)

    def update(self, key: DeviceKey, suite: str, profile: str, b: Baseline) -> Path:
        target = self.path(key, suite, profile)
        write(target, b)
        return target


def build(
    *,
    suite: str,
    profile: str,
    case_hash: str,
    device_key: DeviceKey,
    environment: dict[str, Any],
    reason: str,
    references: list[Record],
    latency: dict[str, list[float]],
    load_s: list[float],
) -> Baseline:
    prov = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "harness_version": __version__,
        "project_commit": envinfo.project_commit(),
        "reason": reason,
    }
    outputs = {r.prompt_id: {k: getattr(r, k) for k in (*_OUTPUT_KEYS, *_OPTIONAL_KEYS)} for r in references}
    return Baseline(
        suite=suite,
        profile=profile,
        case_hash=case_hash,
        device_key=str(device_key),
        environment=environment,
        provenance=prov,
        outputs=outputs,
        latency=latency,
        load_s=load_s,
    )


def write(path: Path, b: Baseline) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a field a run never filled stays out, so files stay readable by the harness versions before it
    body = {k: v for k, v in vars(b).items() if k != "processes" or v}
    atomic.write_text(path, json.dumps({"schema_version": SCHEMA_VERSION, **body}, indent=1, sort_keys=True) + "\n")


def _listof(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and all(ok(x) for x in v)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_Check = tuple[Callable[[Any], bool], str]  # a value's test, and what it expects
_TEXT: _Check = (lambda v: isinstance(v, str), "a string")
_TABLE: _Check = (lambda v: isinstance(v, dict), "an object")
_STRINGS: _Check = (_listof(lambda v: isinstance(v, str)), "a list of strings")
# Everything a run reads of a baseline, and what it must be: checked on load, so that a damaged file is "not
# comparable" with one line, never a KeyError or TypeError in the middle of a comparison.
_FIELDS: dict[str, _Check] = {
    "suite": _TEXT,
    "profile": _TEXT,
    "case_hash": _TEXT,
    "device_key": _TEXT,
    "environment": _TABLE,
    "provenance": _TABLE,
    "outputs": _TABLE,
    "load_s": (_listof(_num), "a list of numbers"),
    "latency": (
        lambda v: isinstance(v, dict) and all(_listof(_num)(x) for x in v.values()),
        "an object of lists of numbers",
    ),
    "runs": (
        _listof(lambda r: isinstance(r, dict) and all(_num(x) for x in r.values())),
        "a list of objects of numbers (each run's medians)",
    ),
    "thresholds": (lambda v: isinstance(v, dict) and all(_num(x) for x in v.values()), "an object of numbers"),
    "calibration": _TABLE,
    "processes": (
        _listof(lambda r: isinstance(r, dict) and all(_listof(_num)(x) for x in r.values())),
        "a list of objects of lists of numbers (each run's process medians)",
    ),
}
_OUTPUT_FIELDS: dict[str, _Check] = {
    "prompt_id": _TEXT,
    "tokens": (_listof(_int), "a list of integers"),
    "pieces": _STRINGS,
    "text": _TEXT,
    "finish_reason": _TEXT,
    "fingerprints": _STRINGS,
    "topk_ids": (_listof(_listof(_int)), "a list of lists of integers"),
    "topk_logprobs": (_listof(_listof(_num)), "a list of lists of numbers"),
    "level": (lambda v: v in ("logits", "logprobs", "text"), "logits, logprobs or text"),
    "ids": (lambda v: v in ("", *ID_SPACES), ", ".join(ID_SPACES)),
    "topk_tokens": (_listof(_STRINGS[0]), "a list of lists of strings"),
}
_KEY_FIELDS = (
    "device",
    "target",
    "host",
    "server",
    "cpu_capability",
    "cpu_model",
    "pin",
    "threads",
    "chip",
    "torch",
    "cuda",
    "torch_npu",
    "cann",
    "transformers",
    "vllm",
    "server_version",
    "vllm_ascend",
)  # what device_key reads


def _problem(b: Baseline) -> str:
    """What makes a parsed baseline unusable, or ""."""
    for k, (ok, what) in _FIELDS.items():
        if not ok(getattr(b, k)):
            return f"{k}: expected {what}"
    device = b.environment.get("device", {})
    if not isinstance(device, dict):
        return "environment.device: expected an object"
    for k in _KEY_FIELDS:
        v = device.get(k, "")
        if not (isinstance(v, str) or k == "threads" and _int(v)):
            return f"environment.device.{k}: expected a string"
    for pid, o in b.outputs.items():
        if not isinstance(o, dict):
            return f"outputs.{pid}: expected an object"
        if missing := [k for k in _OUTPUT_KEYS if k not in o]:
            return f"outputs.{pid}: {', '.join(missing)} missing"
        for k, (ok, what) in _OUTPUT_FIELDS.items():
            if k in o and not ok(o[k]):
                return f"outputs.{pid}.{k}: expected {what}"
        n = len(o["pieces"]) if o.get("ids") == NO_IDS else len(o["tokens"])  # no ids: text per token only
        kept = ("tokens", "fingerprints", "topk_ids", "topk_tokens", "topk_logprobs")
        if len(o["pieces"]) != n or any(len(o.get(k, ())) not in (0, n) for k in kept):
            return f"outputs.{pid}: {n} tokens without one piece (and fingerprint and top-k, where kept) per token"
    return ""


def load(path: Path, case_hash: str) -> Baseline:
    how = "rerun with --update-baselines --reason '...' to replace it"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise BaselineError(f"{path}: cannot read baseline ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BaselineError(f"{path}: corrupt baseline (not valid JSON: {e}); {how}") from None
    if not isinstance(data, dict) or "schema_version" not in data:
        raise BaselineError(f"{path}: not a baseline file (no schema_version); {how}")
    version = data.pop("schema_version")
    if version != SCHEMA_VERSION:
        raise BaselineError(
            f"{path}: schema_version {version!r} is not one this harness reads ({SCHEMA_VERSION}); "
            f"use the harness version that wrote it, or {how}"
        )
    try:
        b = Baseline(**data)
    except TypeError as e:
        raise BaselineError(f"{path}: malformed baseline ({e}); {how}") from None
    if problem := _problem(b):
        raise BaselineError(f"{path}: malformed baseline ({problem}); {how}")
    if b.case_hash != case_hash:
        raise BaselineError(
            f"{path}: made for case hash {b.case_hash}, the suite now hashes to {case_hash} "
            f"(prompts, model, dtype, generation or schedules changed); {how}"
        )
    return b
