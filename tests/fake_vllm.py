"""Just enough of vLLM's offline API for the `vllm` adapter's generate(): `SamplingParams`, and an `LLM` whose
generate() answers with RequestOutput-shaped objects, each step's logprobs a dict keyed by token id of Logprob
(logprob, rank, decoded_token), as vLLM's are. Tests install it in place of the real package, which this venv lacks."""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from unittest import mock


@dataclass
class Logprob:  # vllm.logprobs.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm.outputs.CompletionOutput, the fields the adapter reads
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None
    text: str
    finish_reason: str | None = "length"
    index: int = 0


@dataclass
class RequestOutput:
    outputs: list[CompletionOutput]


class SamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)


@dataclass
class LLM:
    """Answers each generate() with the next prepared outputs, one per input, in input order."""

    answers: list[CompletionOutput] = field(default_factory=list)
    calls: list[tuple[list[dict], SamplingParams]] = field(default_factory=list)

    def generate(self, inputs, params, use_tqdm=True):
        self.calls.append((list(inputs), params))
        out, self.answers = self.answers[: len(inputs)], self.answers[len(inputs) :]
        assert len(out) == len(inputs), "the test prepared fewer outputs than the adapter asked for"
        return [RequestOutput([c]) for c in out]


class Tokenizer:
    chat_template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(w) for w in text.split()] or [0]


def step(chosen: int, top: list[tuple[int, float]], text, chosen_logprob: float = -9.0) -> dict[int, Logprob]:
    """One step's logprobs as vLLM returns them: the top-k by rank, and the chosen token where it is outside them,
    ranked below them. `text(id)` is each token's decoded text."""
    d = {i: Logprob(lp, r, text(i)) for r, (i, lp) in enumerate(top, start=1)}
    if chosen not in d:
        d[chosen] = Logprob(chosen_logprob, len(top) + 4, text(chosen))
    return d


@contextlib.contextmanager
def installed() -> Iterator[types.ModuleType]:
    """This module as `vllm` while the block runs (the adapter imports it inside generate())."""
    mod = types.ModuleType("vllm")
    mod.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    mod.LLM = LLM  # type: ignore[attr-defined]
    mod.__version__ = "0.0-fake"  # type: ignore[attr-defined]
    with mock.patch.dict(sys.modules, {"vllm": mod}):
        yield mod


def adapter(answers: list[CompletionOutput], top_logprobs: int = 5, max_new_tokens: int = 8):
    """A VLLMAdapter past load(): the fake engine and tokenizer in place (generate() within installed())."""
    from harness.adapters.vllm import VLLMAdapter

    job = types.SimpleNamespace(top_logprobs=top_logprobs, seed=0, max_new_tokens=max_new_tokens)
    a = VLLMAdapter(job)  # type: ignore[arg-type]
    a.llm, a.tok = LLM(list(answers)), Tokenizer()
    return a
