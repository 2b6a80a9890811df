"""The record: one JSON line per generated sequence. Torch-free, shared by worker and analysis."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Generated:
    """What an adapter returns per sequence; the worker adds where it ran to make a Record."""

    tokens: list[int]
    pieces: list[str]
    text: str
    finish_reason: str
    fingerprints: list[str]
    topk_ids: list[list[int]]
    topk_logprobs: list[list[float]]
    token_times: list[float]
    prompt_tokens: int = 0
    level: str = "logits"
    output_tokens: int = 0
    error: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Record:
    profile: str
    prompt_id: str
    schedule: str  # schedule name
    kind: str  # schedule kind
    batch_id: str
    batch: list[str]  # prompt ids in row order
    position: int  # this sequence's row in the batch
    tokens: list[int]
    pieces: list[str]  # each token decoded alone, to show text around a divergence
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length"
    fingerprints: list[str]  # per step: exact logits fingerprint (hex)
    topk_ids: list[list[int]]  # per step
    topk_logprobs: list[list[float]]
    token_times: list[float]  # per step: seconds since the batch started, after device sync
    prompt_tokens: int = 0
    level: str = "logits"  # what the comparison can see: "logits" (bits), "logprobs" (a server's), "text"
    output_tokens: int = 0  # generated tokens when they are counted, not listed (a server's usage); 0: len(tokens)
    error: str = ""  # a request that failed after its retries: no output, kept to be reported
    repeat: int = 0  # measured pass (perf suites run several)
    warmup: bool = False  # warm-up pass: excluded from every analysis
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return bool(self.error)

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
