"""The record: one JSON line per generated sequence. Torch-free, shared by worker and analysis."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    extra: dict[str, Any] = field(default_factory=dict)
    ids: str = ""  # what tokens and topk_ids hold: see Record
    topk_tokens: list[list[str]] = field(default_factory=list)


# What a record's `tokens` and `topk_ids` hold (Record.ids):
MODEL_IDS = "model"  # the model's vocabulary ids (hf; vLLM in process: the ids its logprobs are keyed by)
NO_IDS = "none"  # the engine gives token text only (a server's logprobs): both empty; pieces and topk_tokens hold text
CHARS = "chars"  # level "text": tokens are the output's Unicode code points, one per character; no top-k
TEXT_HASH = "text-hash"  # read only: records and baselines written before `ids` at level "logprobs" hold
# text_hash() of the token text in tokens and topk_ids; nothing writes it any more
ID_SPACES = (MODEL_IDS, NO_IDS, CHARS, TEXT_HASH)
_BEFORE_IDS = {"logits": MODEL_IDS, "logprobs": TEXT_HASH, "text": CHARS}  # what a record without `ids` held


def text_hash(token: str) -> int:
    """The 48-bit hash of a token's text that records before `ids` stored in place of ids at level "logprobs": kept
    to compare text with such a record (a baseline written by an older harness), never written."""
    return int.from_bytes(hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=6).digest(), "big")


@dataclass
class Record:
    profile: str
    prompt_id: str
    schedule: str  # schedule name
    kind: str  # schedule kind
    batch_id: str
    batch: list[str]  # prompt ids in row order
    position: int  # this sequence's row in the batch
    tokens: list[int]  # in the id space `ids` names; empty where the engine gives no ids (pieces identify them)
    pieces: list[str]  # each token decoded alone, to show text around a divergence
    text: str
    finish_reason: str  # "stop" (end of sequence) or "length"
    fingerprints: list[str]  # per step: exact logits fingerprint (hex)
    topk_ids: list[list[int]]  # per step, in the id space `ids` names; empty where the engine gives no ids
    topk_logprobs: list[list[float]]  # per step, in the order of topk_ids (or of topk_tokens where there are no ids)
    token_times: list[float]  # per step: seconds since the batch started, after device sync
    prompt_tokens: int = 0
    level: str = "logits"  # what the comparison can see: "logits" (bits), "logprobs" (a server's), "text"
    output_tokens: int = 0  # generated tokens when they are counted, not listed (a server's usage); 0: len(tokens)
    error: str = ""  # a request that failed after its retries: no output, kept to be reported
    repeat: int = 0  # measured pass (perf suites run several)
    warmup: bool = False  # warm-up pass: excluded from every analysis
    extra: dict[str, Any] = field(default_factory=dict)
    # What `tokens` and `topk_ids` hold: MODEL_IDS, NO_IDS, CHARS (or, read from an older file, TEXT_HASH). Empty
    # in a record written before the field: read from its level as it was then written (_BEFORE_IDS).
    ids: str = ""
    # Per step, the top-k alternatives' text in the order of topk_logprobs, where the engine gives text: a server's
    # logprobs (its only top-k), vLLM in process (beside the ids). Empty otherwise: the tokenizer names topk_ids.
    topk_tokens: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ids:
            self.ids = _BEFORE_IDS.get(self.level, MODEL_IDS)

    @property
    def token_keys(self) -> list[int] | list[str]:
        """What identifies each generated token within this record's own id space: its ids, else its text."""
        return self.pieces if self.ids == NO_IDS else self.tokens

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def ttft(self) -> float:
        return self.token_times[0] if self.token_times else float("nan")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
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
