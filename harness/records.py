"""The record: one JSON line per generated sequence. Torch-free, shared by worker and analysis."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator


@dataclass
class Record:
    profile: str
    prompt_id: str
    schedule: str                 # schedule name
    kind: str                     # schedule kind
    batch_id: str
    batch: list[str]              # prompt ids in row order
    position: int                 # this sequence's row in the batch
    tokens: list[int]
    pieces: list[str]             # each token decoded alone, to show text around a divergence
    text: str
    finish_reason: str            # "stop" (end of sequence) or "length"
    fingerprints: list[str]       # per step: exact logits fingerprint (hex)
    topk_ids: list[list[int]]     # per step
    topk_logprobs: list[list[float]]
    token_times: list[float]      # per step: seconds since the batch started, after device sync
    prompt_tokens: int = 0
    repeat: int = 0               # measured pass (perf suites run several)
    warmup: bool = False          # warm-up pass: excluded from every analysis
    extra: dict = field(default_factory=dict)

    @property
    def ttft(self) -> float:
        return self.token_times[0] if self.token_times else float("nan")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        return cls(**d)


def read_jsonl(path: Path) -> Iterator[Record]:
    """Every complete line; a torn last line (a worker killed mid-write) is skipped, not fatal."""
    try:
        f = open(path, encoding="utf-8")
    except FileNotFoundError:
        return
    with f:
        for line in f:
            if not line.endswith("\n"):
                break
            yield Record.from_dict(json.loads(line))
