"""vLLM in the worker process (`vllm.LLM`; vLLM-Ascend is the same class with a plugin): the engine is built once,
with the profile's environment already in place (VLLM_BATCH_INVARIANT, HCCL_*, ... are read at start-up), and each
planned batch is ONE `generate` call, so the harness decides which sequences share the forward passes, not the
arrival order at a server.

Greedy, seeded, `logprobs = top_logprobs`, `ignore_eos`; `max_num_seqs` covers the largest planned batch, so the
scheduler runs the batch together. vLLM returns logprobs, not logits: records are at the `logprobs` level, built as
the endpoint adapter builds them (each step's fingerprint hashes the chosen token's text, its logprob and the
top-k's), with the model's token ids the logprobs are keyed by in `tokens` and `topk_ids` (ids = "model") and the
decoded text beside them (`pieces`, `topk_tokens`), so the in-process and served records compare alike on text.
Exact equality of the fingerprints is meaningful: the logprobs come back as the same float32 values, bit for bit,
or they differ.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any

from ..jobs import Job
from ..records import Generated
from .endpoint import Step, generated

if TYPE_CHECKING:
    import torch

# Start-up phases vLLM logs (vllm 0.32), and the modules that log them; the rest of the engine's construction is
# `engine_other`.
PHASE_LOGGERS = ("vllm.model_executor.model_loader.default_loader", "vllm.v1.engine.core")
PHASES = {
    "weights": re.compile(r"Loading weights took ([\d.]+) s"),
    "engine_init": re.compile(r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
}


class _Phases(logging.Filter):
    """Reads the phase timings off the records as they pass, and lets every record through. A filter, not a handler:
    vLLM configures logging (dictConfig) during start-up, which empties the handlers of every "vllm.*" logger but
    leaves their filters."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        for name, pattern in PHASES.items():
            if m := pattern.search(msg):
                self.seen[name] = float(m.group(1))
        return True


class VLLMAdapter:
    remote = False

    def __init__(self, job: Job, device: torch.device | None = None):
        self.job, self.device = job, device
        # vllm.LLM and its tokenizer, from load(): Any, as vllm is untyped (and not installed where mypy runs)
        self.llm: Any = None
        self.tok: Any = None

    def load(self) -> dict[str, float]:
        # The engine core in this process: its start-up logs pass the filter below, and no engine process can
        # outlive the worker. A profile may still set it to 1.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        t0 = time.perf_counter()
        import vllm

        t1 = time.perf_counter()
        phases = _Phases()
        for name in PHASE_LOGGERS:
            logging.getLogger(name).addFilter(phases)
        try:
            widest = max((len(b.prompt_ids) for b in self.job.batches), default=1)
            self.llm = vllm.LLM(
                model=self.job.model_dir,
                dtype=self.job.dtype,
                seed=self.job.seed,
                max_num_seqs=max(widest, 1),
                # Every planned batch is prefilled in one step: no prompt waits for a later one.
                max_num_batched_tokens=max(16384, widest * 2048),
                # No torch.compile / graph capture: on CPU it adds 80 s of start-up and changes no result here.
                enforce_eager=self.job.device == "cpu",
                max_logprobs=self.job.top_logprobs,
            )
        finally:
            for name in PHASE_LOGGERS:
                logging.getLogger(name).removeFilter(phases)
        total = time.perf_counter() - t1
        self.tok = self.llm.get_tokenizer()
        seen = phases.seen
        return {"import_vllm": t1 - t0, **seen, "engine_other": max(0.0, total - sum(seen.values()))}

    def describe(self) -> dict[str, str]:
        """Added to the device's description: the engine's version is part of the baseline key's software, and so is
        vLLM-Ascend's where it is installed (the platform plugin that runs the model on an NPU: its kernels and
        graph mode decide the bits there)."""
        from importlib import metadata

        import vllm

        out = {"vllm": vllm.__version__}
        for dist in ("vllm_ascend", "vllm-ascend"):
            try:
                out["vllm_ascend"] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        return out

    def _ids(self, prompt: dict[str, Any]) -> list[int]:
        # As vLLM's own servers do: chat prompts through the model's template with no extra special tokens,
        # plain text as the completions API tokenizes it.
        if prompt["chat"] and getattr(self.tok, "chat_template", None):
            text = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt["text"]}], tokenize=False, add_generation_prompt=True
            )
            ids: list[int] = self.tok.encode(text, add_special_tokens=False)
            return ids
        plain: list[int] = self.tok.encode(prompt["text"])
        return plain

    def generate(self, prompts: list[dict[str, Any]]) -> list[Generated]:
        from vllm import SamplingParams

        k = self.job.top_logprobs
        params = SamplingParams(
            temperature=0.0,
            seed=self.job.seed,
            max_tokens=self.job.max_new_tokens,
            logprobs=k,
            ignore_eos=True,
        )
        inputs = [{"prompt_token_ids": self._ids(p)} for p in prompts]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        result = []
        for inp, out in zip(inputs, outs):
            c = out.outputs[0]
            steps = []
            for tid, lps in zip(c.token_ids, c.logprobs or []):
                # Each step's logprobs are keyed by token id: the top k by rank (the chosen token is added when
                # outside them; tied values share a rank), with their ids and their decoded text.
                top = sorted(((i, lp) for i, lp in lps.items() if lp.rank is not None), key=lambda e: e[1].rank)[:k]
                chosen = lps[tid]
                steps.append(
                    Step(
                        chosen.decoded_token or "",
                        chosen.logprob,
                        [(lp.decoded_token or "", lp.logprob) for _, lp in top],
                        token_id=int(tid),
                        top_ids=[int(i) for i, _ in top],
                    )
                )
            # One generate call per batch: no per-token times (the served path measures TTFT and TPOT).
            usage = {"prompt_tokens": len(inp["prompt_token_ids"]), "completion_tokens": len(c.token_ids)}
            result.append(generated([c.text], [], steps, c.finish_reason or "length", usage))
        return result

    def close(self) -> None:
        self.llm = None  # the worker exits next; its process group is reaped by the runner
