"""Transformers models on cpu, cuda or npu, with an explicit greedy loop so that each step's
fingerprint, top-k and timestamp are captured on the device with no extra forward pass."""

from __future__ import annotations

import inspect
import time
from typing import Any

import torch

from .. import devices
from ..fingerprint import fingerprint, to_hex
from ..jobs import Job
from ..records import MODEL_IDS, Generated

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tp_kwargs() -> dict[str, Any]:
    """transformers' own tensor parallel plan for the model (no hand-written sharding), over the worker group's
    process group: DistributedConfig where this transformers has it, the older tp_plan="auto" keyword otherwise
    (CANN images often ship older releases)."""
    try:
        from transformers.distributed import DistributedConfig  # type: ignore[attr-defined]  # a lazy module: no __all__
    except ImportError:
        return {"tp_plan": "auto"}
    return {"distributed_config": DistributedConfig(tp_plan="auto")}


class HFAdapter:
    remote = False

    def __init__(self, job: Job, device: torch.device, capture: bool = True):
        self.job, self.device = job, device
        self.capture = capture  # False only to measure what the per-step capture costs (tests/bench)
        # the model and its tokenizer from load() on: Any, as transformers' Auto* classes return unions of backends
        # whose stubs do not share every method used here, and every use comes after load()
        self.model: Any = None
        self.tok: Any = None

    def load(self) -> dict[str, float]:
        """Load timed by phase: weights into host memory, then onto the device, then a first forward."""
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated
        t0 = time.perf_counter()
        self.tok = AutoTokenizer.from_pretrained(self.job.model_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        model = AutoModelForCausalLM.from_pretrained(
            self.job.model_dir, dtype=DTYPES[self.job.dtype], **(tp_kwargs() if self.job.tp > 1 else {})
        )
        t1 = time.perf_counter()
        # transformers wraps PreTrainedModel.to in a decorator whose stub drops torch's signature
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        devices.synchronize(self.device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            self.model(input_ids=torch.tensor([[self.tok.eos_token_id]], device=self.device))
        devices.synchronize(self.device)
        t3 = time.perf_counter()
        # transformers >= 5.2x renamed past_key_values to cache; CANN images often ship older releases.
        params = inspect.signature(self.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos if eos is not None else self.tok.eos_token_id])
        return {"read": t1 - t0, "to_device": t2 - t1, "first_forward": t3 - t2}

    def render(self, prompt: dict[str, Any]) -> str:
        if prompt["chat"] and self.tok.chat_template:
            chat: str = self.tok.apply_chat_template(
                [{"role": "user", "content": prompt["text"]}], tokenize=False, add_generation_prompt=True
            )
            return chat
        text: str = prompt["text"]
        return text

    def encode(self, prompts: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch as the model sees it: (input ids, attention mask, position ids), left-padded, on the device."""
        enc = self.tok([self.render(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        # Left padding: positions count real tokens only, so a row's positions do not depend on its neighbours.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids, mask, pos

    @staticmethod
    def advance(mask: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask and positions for the next decode step (one new token per row)."""
        return torch.cat((mask, mask.new_ones((mask.shape[0], 1))), dim=-1), pos[:, -1:] + 1

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any) -> Any:
        """One forward pass, prefill or decode: the only way generate() (and harness.localize's replay) calls the
        model, so a replay runs the same kernels."""
        return self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_kw: cache},
        )

    @torch.inference_mode()
    def generate(self, prompts: list[dict[str, Any]]) -> list[Generated]:
        from transformers import DynamicCache

        dev, k, steps = self.device, self.job.top_logprobs, self.job.max_new_tokens
        ids, mask, pos = self.encode(prompts)
        cache = DynamicCache()
        rows = len(prompts)
        toks: list[list[int]] = [[] for _ in range(rows)]
        fps: list[list[str]] = [[] for _ in range(rows)]
        tids: list[list[list[int]]] = [[] for _ in range(rows)]
        tlps: list[list[list[float]]] = [[] for _ in range(rows)]
        times: list[list[float]] = [[] for _ in range(rows)]
        done = [False] * rows
        devices.synchronize(dev)
        t0 = time.perf_counter()
        out = self.forward(ids, mask, pos, cache)
        for step in range(steps):
            logits = out.logits[:, -1, :]
            nxt = logits.argmax(-1)
            if self.capture:
                fp = fingerprint(logits)
                top = torch.log_softmax(logits.float(), dim=-1).topk(k, dim=-1)
                # .tolist() blocks until the device has finished the step, so the timestamp is honest.
                nxt_h, fp_h, ids_h, lps_h = nxt.tolist(), fp.tolist(), top.indices.tolist(), top.values.tolist()
            else:
                nxt_h = nxt.tolist()
                fp_h, ids_h, lps_h = [[0, 0]] * rows, [[]] * rows, [[]] * rows
            now = time.perf_counter() - t0
            for r in range(rows):
                if done[r]:
                    continue
                toks[r].append(nxt_h[r])
                fps[r].append(to_hex(fp_h[r]))
                tids[r].append(ids_h[r])
                tlps[r].append(lps_h[r])
                times[r].append(now)
                done[r] = nxt_h[r] in self.eos
            if all(done) or step == steps - 1:
                break
            mask, pos = self.advance(mask, pos)
            out = self.forward(nxt[:, None], mask, pos, cache)
        return [
            Generated(
                tokens=toks[r],
                pieces=[self.tok.decode([t]) for t in toks[r]],
                text=self.tok.decode(toks[r], skip_special_tokens=True),
                finish_reason="stop" if done[r] else "length",
                fingerprints=fps[r],
                topk_ids=tids[r],
                topk_logprobs=tlps[r],
                ids=MODEL_IDS,
                token_times=times[r],
                prompt_tokens=int(mask[r, : ids.shape[1]].sum()),
            )
            for r in range(rows)
        ]

    def close(self) -> None:
        self.model = None  # the worker exits next; nothing else to release
