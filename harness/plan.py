"""Schedules expand into concrete batches: pure and seeded, so every run of a suite sends the same batches.

Before anything expands, the plan's size is bounded (`size_problem`, from the counts alone), and before any worker
starts, every prompt is measured against the model's context (`check_context`, from the model folder's
tokenizer.json and config.json)."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import USAGE, HarnessError
from .suite import Schedule, Suite, SuiteError

# The largest plan a suite may ask for, per profile (every pass, warm-ups included): the shipped suites ask for at
# most a few hundred sequences of 64 tokens; a suite over a thousand-prompt data set with every schedule and ten
# perf passes stays well inside. Beyond it a run cannot finish in any CI slot (10^8 tokens is days at a few
# thousand tokens/s), and the plan alone (a million batches in the job file) takes seconds and hundreds of MB.
MAX_SEQUENCES = 1_000_000
MAX_TOKENS = 100_000_000  # sequences x max_new_tokens


@dataclass(frozen=True)
class Batch:
    id: str  # "<schedule>/<index>", unique within a suite
    schedule: str  # schedule name
    kind: str  # schedule kind
    prompt_ids: tuple[str, ...]  # in batch order: position i is row i
    needle: str = ""  # the target prompt of a needle batch
    repeat: int = 0  # pass over the schedules (perf suites run several)
    warmup: bool = False  # a warm-up pass: run, recorded, excluded from analysis


def _chunks(ids: list[str], size: int) -> list[tuple[str, ...]]:
    size = size or len(ids)
    return [tuple(ids[i : i + size]) for i in range(0, len(ids), size)]


def _rng(s: Schedule) -> random.Random:
    # One stream per schedule: adding a schedule never reshuffles another.
    return random.Random(f"{s.seed}/{s.name}")


def expand_schedule(s: Schedule, ids: list[str]) -> list[Batch]:
    rng = _rng(s)
    groups: list[tuple[tuple[str, ...], str]] = []
    if s.kind == "solo":
        groups = [((i,), "") for i in ids]
    elif s.kind == "repeat":
        groups = [(c, "") for _ in range(s.count) for c in _chunks(ids, s.batch_size)]
    elif s.kind == "permutation":
        for _ in range(s.count):
            order = ids[:]
            rng.shuffle(order)
            groups += [(c, "") for c in _chunks(order, s.batch_size)]
    elif s.kind == "batch-sizes":
        for size in s.sizes:
            order = ids[:]
            rng.shuffle(order)
            groups += [(c, "") for c in _chunks(order, size)]
    elif s.kind == "needle":
        hi = s.max_size or len(ids)
        for t in range(s.trials):
            target = s.prompt or ids[t % len(ids)]
            size = rng.randint(s.min_size, hi)
            position = rng.randrange(size)
            fillers = rng.sample([i for i in ids if i != target], size - 1)
            groups.append((tuple(fillers[:position] + [target] + fillers[position:]), target))
    else:  # the suite validator rejects unknown kinds; this guards new kinds added there only
        raise ValueError(f"no expansion for schedule kind {s.kind!r}")
    return [Batch(f"{s.name}/{n}", s.name, s.kind, g, needle) for n, (g, needle) in enumerate(groups)]


def expand(suite: Suite) -> list[Batch]:
    """Every schedule, once per pass: `perf.warmup` warm-up passes, then `perf.repeats` measured ones."""
    if problem := size_problem(suite):  # the parser refuses these; a Suite built otherwise must not hang here
        raise SuiteError(f"{suite.path}: {problem[0]}: {problem[1]}")
    ids = [p.id for p in suite.prompts]
    once = [b for s in suite.schedules for b in expand_schedule(s, ids)]
    warmup, repeats = (suite.perf.warmup, suite.perf.repeats) if suite.perf else (0, 1)
    if warmup + repeats == 1:
        return once
    return [
        dataclasses.replace(b, id=f"{b.id}#{k}", repeat=k - warmup, warmup=k < warmup)
        for k in range(warmup + repeats)
        for b in once
    ]


def count_sequences(batches: list[Batch]) -> int:
    return sum(len(b.prompt_ids) for b in batches)


# ---- the plan's size, from the counts alone --------------------------------------------------------------------

_EXPANDS = {"solo": "", "repeat": "count", "permutation": "count", "batch-sizes": "sizes", "needle": "trials"}


def schedule_sequences(s: Schedule, prompts: int) -> int:
    """Sequences one pass of the schedule generates (needle: at most), computed without expanding it."""
    if s.kind in ("repeat", "permutation"):
        return s.count * prompts
    if s.kind == "batch-sizes":
        return len(s.sizes) * prompts
    if s.kind == "needle":
        return s.trials * (s.max_size or prompts)
    return prompts


def size_problem(suite: Suite) -> tuple[str, str] | None:
    """(key, what is wrong) when the plan exceeds MAX_SEQUENCES or MAX_TOKENS per profile, else None. The key is
    the schedule key (count, trials, sizes) that expands most, or perf.repeats / perf.warmup when one pass fits."""
    n, new = len(suite.prompts), suite.generation.max_new_tokens
    per = [(schedule_sequences(s, n), i, s) for i, s in enumerate(suite.schedules)]
    warmup, repeats = (suite.perf.warmup, suite.perf.repeats) if suite.perf else (0, 1)
    passes = warmup + repeats
    one_pass = sum(x for x, _, _ in per)
    total = one_pass * passes
    if total <= MAX_SEQUENCES and total * new <= MAX_TOKENS:
        return None
    most, i, s = max(per, key=lambda x: x[0])
    if passes > 1 and one_pass <= MAX_SEQUENCES and one_pass * new <= MAX_TOKENS:
        key = "perf.repeats" if repeats >= warmup else "perf.warmup"
        what = f"{repeats if repeats >= warmup else warmup} gives {passes:,} passes of {one_pass:,} sequences"
    else:
        field = _EXPANDS.get(s.kind, "")
        key = f"schedules[{i}].{field}" if field else "prompts"
        value = f"{len(s.sizes):,} sizes" if field == "sizes" else getattr(s, field) if field else f"{n:,} prompts"
        what = f"{value} gives {most:,} sequences" + (f" ({total:,} in all)" if total != most else "")
    return key, (
        f"{what}, x max_new_tokens {new:,} = {total * new:,} tokens per profile; the harness runs at most "
        f"{MAX_SEQUENCES:,} sequences and {MAX_TOKENS:,} generated tokens per profile (the shipped suites: a few "
        "hundred sequences); lower it, or generation.max_new_tokens"
    )


# ---- prompts against the model's context ------------------------------------------------------------------------


def model_context(model_dir: str | Path) -> tuple[int, str] | None:
    """The model's context in tokens and where it was read: config.json's max_position_embeddings (or n_positions;
    in text_config for multimodal models), times a rope scaling factor above 1. None when it cannot be read: the
    check is then left to the engine."""
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for c in (cfg, cfg.get("text_config") if isinstance(cfg, dict) else None):
        if not isinstance(c, dict):
            continue
        for key in ("max_position_embeddings", "n_positions"):
            n = c.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and n > 0:
                scaling: Any = c.get("rope_scaling") or c.get("rope_parameters")  # config.json's JSON
                factor = scaling.get("factor") if isinstance(scaling, dict) else None
                if isinstance(factor, (int, float)) and not isinstance(factor, bool) and factor > 1:
                    # Llama 3.1 (llama3) and DeepSeek-V2 (yarn) state the scaled context already, beside the
                    # original: 131072 = 8192 x 16 is not to be scaled again; Qwen2.5's yarn recipe scales 32768.
                    orig = scaling.get("original_max_position_embeddings")
                    if isinstance(orig, int) and not isinstance(orig, bool) and orig > 0:
                        if n >= orig * factor:
                            return n, f"{key} in {path} (rope scaling already included)"
                        return int(
                            orig * factor
                        ), f"original_max_position_embeddings x rope factor {factor:g} in {path}"
                    return int(n * factor), f"{key} x rope factor {factor:g} in {path}"
                return n, f"{key} in {path}"
    return None


def context_problem(
    lengths: Iterable[tuple[str, int]], max_new_tokens: int, context: tuple[int, str], how: str = ""
) -> str:
    """One line for the first prompt whose tokens + max_new_tokens exceed the context ("" when all fit)."""
    ctx, where = context
    over = [(pid, n) for pid, n in lengths if n + max_new_tokens > ctx]
    if not over:
        return ""
    pid, n = over[0]
    more = f" (and {len(over) - 1} more)" if len(over) > 1 else ""
    return (
        f"prompt {pid!r}{more}: {n:,} tokens{how} + generation.max_new_tokens {max_new_tokens:,} = "
        f"{n + max_new_tokens:,} exceed the model's context of {ctx:,} tokens ({where}); shorten the prompt or "
        "lower max_new_tokens"
    )


def check_context(suite: Suite, model_dir: str | Path) -> None:
    """Before any worker starts: every prompt's text, as the model folder's tokenizer.json counts it, plus
    max_new_tokens against the model's context; HarnessError(USAGE) naming the suite and prompt. A chat prompt's
    template adds tokens only the worker can count, so the worker checks again (`worker_problem`). Nothing to say
    when the folder has no tokenizer.json or config.json (a served model's name, a GGUF file)."""
    context = model_context(model_dir)
    path = Path(model_dir) / "tokenizer.json"
    if context is None or not path.is_file():
        return
    try:
        import tokenizers

        tok = tokenizers.Tokenizer.from_file(str(path))
        # one at a time: encode_batch starts a thread pool, and every worker forked after it would warn about it
        lengths = [(p.id, len(tok.encode(p.text, add_special_tokens=False).ids)) for p in suite.prompts]
    except Exception:  # noqa: BLE001  (a tokenizer this library cannot read: the worker's own tokenizer checks)
        return
    if problem := context_problem(lengths, suite.generation.max_new_tokens, context):
        raise HarnessError(f"{suite.path}: prompts: {problem}", USAGE)


def worker_problem(job: Any, adapter: Any) -> str:
    """In the worker, after the model loaded: every planned prompt as the adapter renders and tokenizes it (chat
    template included) against the context; "" when all fit, or the adapter has no tokenizer to ask."""
    tok, render = getattr(adapter, "tok", None), getattr(adapter, "render", None)
    context = model_context(job.model_dir)
    if job.endpoint is not None or tok is None or render is None or context is None:
        return ""
    used = {i for b in job.batches for i in b.prompt_ids}
    prompts = [p for p in job.prompts if p["id"] in used]
    lengths = [(p["id"], len(tok(render(p), add_special_tokens=False)["input_ids"])) for p in prompts]
    chat = any(p.get("chat") for p in prompts)
    return context_problem(lengths, job.max_new_tokens, context, " with its chat template" if chat else "")
