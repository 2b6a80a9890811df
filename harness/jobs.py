"""The contract between the runner (parent) and a worker (child): what one worker is asked to do, and what came
of it. Typed here; JSON only at the process boundary (`python -m harness.worker JOB.json`)."""

from __future__ import annotations

import dataclasses
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .plan import Batch
from .records import Generated
from .serving.spec import Endpoint
from .status import WorkerStatus


@dataclass(frozen=True)
class Job:
    """Everything one worker process needs. No batches: load the model, report the phases, and stop (a load-time
    sample)."""

    name: str
    profile: str
    model_ref: str
    model_dir: str
    device: str
    dtype: str
    records: str  # JSONL the worker appends to, one line per sequence
    meta: str  # JSON the worker writes after loading and again at the end
    adapter: str = "hf"
    torch_deterministic: bool = False
    prompts: tuple[dict[str, Any], ...] = ()  # Prompt fields, as the adapters read them
    batches: tuple[Batch, ...] = ()
    max_new_tokens: int = 1
    top_logprobs: int = 2
    seed: int = 0
    endpoint: Endpoint | None = None  # a served model: the URL filled in
    server: str = "external"  # the program serving it, for the device key
    server_pid: int = 0  # its process: its CPU time is the measurement, not a neighbour's
    paced: bool = False  # wait for a line on stdin before each pass (interleaved profiles)
    tp: int = 1  # tensor parallel degree: > 1 runs under torchrun, one process per device, rank 0 writes
    collective_timeout_s: float = 300.0  # a collective that waits longer fails the group
    python: str = ""  # the interpreter its worker runs with (another stack: harness.stacks); "" the harness's own

    @property
    def expected(self) -> int:
        return sum(len(b.prompt_ids) for b in self.batches)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Job:
        d = json.loads(text)
        d["prompts"] = tuple(d["prompts"])
        d["batches"] = tuple(Batch(**{**b, "prompt_ids": tuple(b["prompt_ids"])}) for b in d["batches"])
        d["endpoint"] = Endpoint(**d["endpoint"]) if d["endpoint"] else None
        return cls(**d)


def env_path(job_path: Path) -> Path:
    """Where the variables a job's worker got on top of os.environ are kept: beside its job file, so a later replay of
    the job (harness.localize) starts its worker with the same environment."""
    return job_path.with_name(job_path.name.removesuffix(".json") + ".env.json")


def save_env(path: Path, env: dict[str, str | None]) -> None:
    """The worker's added variables (None: unset), with secret-named values redacted: a replay inherits those from
    its own environment instead."""
    from .envinfo import redact

    shown = redact({k: v for k, v in env.items() if v is not None})
    path.write_text(
        json.dumps({k: (shown[k] if v is not None else None) for k, v in sorted(env.items())}, indent=1),
        encoding="utf-8",
    )


def load_env(path: Path) -> dict[str, str | None] | None:
    """What save_env kept, redacted values left out (inherited); None when the job has no such file (a run folder
    written before it)."""
    from .envinfo import REDACTED

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): (None if v is None else str(v)) for k, v in data.items() if v != REDACTED}


@dataclass
class JobOutcome:
    name: str
    profile: str
    status: WorkerStatus
    returncode: int | None
    wall_s: float
    expected: int  # sequences planned
    completed: int  # sequences on disk
    records: str
    log: str
    stderr_tail: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why the server would not start, a known cause its log names, or what cancelled the run
    server_log: str = ""  # the server's log, for a served model
    server_stop: str = ""  # how the server ended
    server_tail: list[str] = field(default_factory=list)  # the server log's last lines, for the report
    tp: int = 1
    failed_rank: int | None = None  # a worker group: the rank torchrun saw fail first

    @classmethod
    def unstarted(cls, job: Job, status: WorkerStatus, wall_s: float = 0.0, log: str = "", **why: Any) -> JobOutcome:
        """A job whose worker never ran (refused before launch, or its server would not start): nothing completed."""
        return cls(
            name=job.name,
            profile=job.profile,
            status=status,
            returncode=None,
            wall_s=wall_s,
            expected=job.expected,
            completed=0,
            records=job.records,
            log=log,
            tp=job.tp,
            **why,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def worker_error(self) -> str:
        """The worker's own last `error:` line, which names the cause (a refused connection, a model that will not
        load); the server log appended after it is not the worker's."""
        own = self.stderr_tail
        if "--- server log ---" in own:
            own = own[: own.index("--- server log ---")]
        return next((ln.removeprefix("error: ") for ln in reversed(own) if ln.startswith("error: ")), "")

    def describe(self) -> str:
        said = self._describe()
        if self.error and self.status not in ("server-failed", "cancelled"):
            said += f"; the server's log says: {self.error}"
        return said

    def _describe(self) -> str:
        if self.ok:
            return f"worker {self.name!r} finished {self.completed}/{self.expected} sequences"
        if self.status == "server-failed":
            return f"server for profile {self.profile!r} did not start: {self.error}"
        if self.status == "cancelled":
            why = self.error or "a signal to the harness"
            if self.returncode is None:
                return f"worker {self.name!r} cancelled ({why}) before it started"
            done = f" after {self.completed}/{self.expected} sequences" if self.expected else ""  # a load: none
            return f"worker {self.name!r} cancelled ({why}) and stopped{done}"
        if self.status == "server-crashed":
            return (
                f"server for profile {self.profile!r} {self.server_stop}, after {self.completed}/{self.expected} "
                f"sequences; see {self.server_log}"
            )
        if self.status == "load-failed" and (err := self.worker_error()):
            rank = f" (rank {self.failed_rank})" if self.failed_rank is not None else ""
            return f"worker {self.name!r} could not start{rank}: {err}"
        rc = self.returncode
        how = {
            "timeout": f"timed out after {self.wall_s:.0f}s and was killed",
            "load-failed": "could not load the model or device",
        }.get(self.status)
        if how is None:
            how = (
                f"was killed by {signal.Signals(-rc).name}" if rc is not None and rc < 0 else f"exited with status {rc}"
            )
        tail = " | ".join(self.stderr_tail[-3:])
        if self.failed_rank is not None:
            how = f"failed: rank {self.failed_rank} {how}"
        return f"worker {self.name!r} {how} after {self.completed}/{self.expected} sequences" + (
            f"; stderr: {tail}" if tail else ""
        )


@runtime_checkable
class Adapter(Protocol):
    """What the worker needs of an engine. `remote` adapters (a server) get no torch device: the worker imports no
    torch for them. An adapter class is built as `cls(job)` when remote, else `cls(job, device)`."""

    remote: bool

    def load(self) -> dict[str, float]:
        """Load the model (or connect); return seconds per load phase."""
        ...

    def generate(self, prompts: list[dict[str, Any]]) -> list[Generated]:
        """One batch, in row order: one Generated per prompt."""
        ...

    def close(self) -> None: ...


ADAPTER_METHODS = ("load", "generate", "close")


def adapter_problem(cls: object) -> str:
    """ "" when `cls` can serve as an adapter; else what it lacks, for one line at resolve time."""
    if not isinstance(cls, type):
        return f"is a {type(cls).__name__}, not a class"
    missing = [m for m in ADAPTER_METHODS if not callable(getattr(cls, m, None))]
    if missing:
        return f"lacks {', '.join(missing)}() (an adapter needs load(), generate(prompts) and close(); see harness.jobs.Adapter)"
    if not isinstance(getattr(cls, "remote", None), bool):
        return "lacks a boolean class attribute `remote` (False for an in-process model, True for a server)"
    return ""
