"""What a model is, from its files alone: no torch, no transformers, no conversion. The dry run, `tp = "auto"` and
the degree check read the attention and KV heads, layers, sizes, dtype and context here: from an HF directory's
config.json, from the embedded model's cached conversion, or from a GGUF file's own metadata (the header only)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from . import models, plan

WEIGHTS = ("*.safetensors", "*.bin", "*.pt", "*.gguf")


@dataclass(frozen=True)
class ModelInfo:
    ref: str
    source: str = ""  # the file the facts were read from
    prepare: str = ""  # what a run does before its first worker; "" when the reference is loaded as it is
    directory: str = ""  # the folder the workers load; "" until a conversion makes it
    architecture: str = ""
    model_type: str = ""
    heads: int | None = None
    kv_heads: int | None = None
    layers: int | None = None
    hidden: int | None = None
    dtype: str = ""
    context: tuple[int, str] | None = None  # tokens, and where that was read (plan.model_context)
    weights: str = ""  # the weight files beside config.json, or what is missing
    special: tuple[str, ...] = ()  # MoE, MLA, ...: what the harness does with them
    problem: str = ""  # why heads are unknown
    unusable: bool = False  # the reference itself is wrong: a real run's preparation refuses it with `problem`

    @property
    def divisors(self) -> list[int]:
        """Degrees that divide both the attention and the KV heads (transformers shards heads whole)."""
        if self.heads is None:
            return []
        kv = self.kv_heads or self.heads
        return [d for d in range(1, self.heads + 1) if self.heads % d == 0 and kv % d == 0]


def _int(cfg: dict[str, Any], *keys: str) -> int | None:
    for k in keys:
        v = cfg.get(k)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            return v
    return None


def text_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal models nest it in text_config)."""
    inner = cfg.get("text_config")
    if "num_attention_heads" not in cfg and isinstance(inner, dict):
        return inner
    return cfg


def special(cfg: dict[str, Any]) -> tuple[str, ...]:
    """MoE and MLA, said with what the harness does with them."""
    out = []
    experts = _int(cfg, "n_routed_experts", "num_experts", "num_local_experts")
    if experts:
        per = _int(cfg, "num_experts_per_tok", "moe_topk")
        shared = _int(cfg, "n_shared_experts", "num_shared_experts")
        dense = _int(cfg, "first_k_dense_replace")
        out.append(
            f"MoE: {experts} routed experts, {per or '?'} per token"
            + (f", {shared} shared" if shared else "")
            + (f", the first {dense} layer(s) dense" if dense else "")
            + ". The harness runs it like a dense model (same schedules and checks); the router's top-k is a "
            "discrete choice, so a last-bit change from another batch can send a token to another expert and move "
            "tokens sooner than in a dense model. Under tensor parallel transformers' plan shards the attention, "
            "the dense and shared-expert MLPs; routed experts stay whole on every rank (their plan is expert "
            "parallel, which the harness does not use)"
        )
    if cfg.get("kv_lora_rank"):
        out.append(
            f"MLA: keys and values are compressed into a {cfg['kv_lora_rank']}-wide latent"
            + (f" (queries into {cfg['q_lora_rank']})" if cfg.get("q_lora_rank") else "")
            + f" shared by all heads; num_key_value_heads = {cfg.get('num_key_value_heads')} is what the degrees "
            "must divide (the heads are sharded after the up-projection). It needs a transformers with its model "
            "type built in: the harness never runs a checkpoint's own code (no trust_remote_code)"
        )
    return tuple(out)


def from_config(path: Path, ref: str, prepare: str = "", directory: str = "") -> ModelInfo:
    """The facts of config.json at `path`; `problem` says why the heads are unknown."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return ModelInfo(ref, str(path), prepare, directory, problem=f"cannot read {path} ({e})")
    cfg = text_config(raw)
    heads = _int(cfg, "num_attention_heads", "n_head", "num_heads")
    archs = raw.get("architectures")
    return ModelInfo(
        ref=ref,
        source=str(path),
        prepare=prepare,
        directory=directory,
        architecture=str(archs[0]) if isinstance(archs, list) and archs else "",
        model_type=str(raw.get("model_type", "")),
        heads=heads,
        kv_heads=_int(cfg, "num_key_value_heads", "n_head_kv", "num_kv_heads") or heads,
        layers=_int(cfg, "num_hidden_layers", "n_layer", "num_layers"),
        hidden=_int(cfg, "hidden_size", "n_embd", "d_model"),
        dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or raw.get("torch_dtype") or ""),
        context=plan.model_context(path.parent),
        weights=weights(path.parent),
        special=special(cfg),
        problem="" if heads else f"{path} names no num_attention_heads",
    )


def weights(model_dir: Path) -> str:
    files = sorted({f for pattern in WEIGHTS for f in model_dir.glob(pattern) if f.is_file()})
    if not files:
        return "no weight files beside config.json (safetensors, bin): the workers would have nothing to load"
    size = sum(f.stat().st_size for f in files)
    return f"{len(files)} file(s), {size / 2**30:.2f} GiB ({files[0].suffix[1:]}), not loaded by the dry run"


def read(ref: str) -> ModelInfo:
    """The model a run would load, without preparing it: an HF directory's config.json as it is; the embedded alias
    or a .gguf file from its cached conversion when there is one, else from the GGUF header."""
    try:
        path = models.locate(ref)
    except models.ModelError as e:
        return ModelInfo(ref, problem=str(e), unusable=True)
    if path.is_dir():
        if not (path / "config.json").is_file():  # models.prepare's own line
            why = f"--model {ref}: directory has no config.json; is it a Hugging Face model directory?"
            return ModelInfo(ref, problem=why, unusable=True)
        return from_config(path / "config.json", ref, directory=str(path))
    out = models.converted_dir(path)
    if (out / "config.json").is_file():
        return from_config(out / "config.json", ref, f"converted once already, into {out}", str(out))
    prepare = f"converted once from {path.name} into {out} (a child process) before the first worker"
    try:
        meta = gguf_metadata(path)
    except (OSError, ValueError, struct.error) as e:
        return ModelInfo(ref, str(path), prepare, problem=f"cannot read the GGUF header of {path} ({e})")
    arch = str(meta.get("general.architecture", ""))

    def key(name: str) -> int | None:
        v = meta.get(f"{arch}.{name}")
        return v if isinstance(v, int) and v > 0 else None

    heads = key("attention.head_count")
    ctx = key("context_length")
    return ModelInfo(
        ref=ref,
        source=f"GGUF metadata of {path}",
        prepare=prepare,
        architecture=arch,
        model_type=arch,
        heads=heads,
        kv_heads=key("attention.head_count_kv") or heads,
        layers=key("block_count"),
        hidden=key("embedding_length"),
        dtype="float32 (dequantised from GGUF)",
        context=(ctx, f"{arch}.context_length in the GGUF header") if ctx else None,
        weights=f"{path.stat().st_size / 2**20:.0f} MiB GGUF, not loaded by the dry run",
        problem="" if heads else f"{path}: no {arch}.attention.head_count in its GGUF header",
    )


# GGUF value types (the GGUF specification): scalar struct formats, string (8) and array (9)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_metadata(path: Path, limit: int = 64) -> dict[str, Any]:
    """The key/value header of a GGUF file (version 2 or 3), arrays skipped; stops after `limit` keys."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        version, _tensors, count = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        out: dict[str, Any] = {}
        for _ in range(min(count, limit)):
            name = _string(f)
            out[name] = _value(f, struct.unpack("<I", f.read(4))[0])
    return out


def _string(f: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", f.read(8))
    return f.read(n).decode("utf-8", errors="replace")


def _value(f: BinaryIO, kind: int) -> Any:
    if kind in _SCALARS:
        fmt = "<" + _SCALARS[kind]
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]
    if kind == 8:
        return _string(f)
    if kind == 9:
        inner, n = struct.unpack("<IQ", f.read(12))
        for _ in range(n):  # skipped: the tokenizer's arrays are the only large ones
            _value(f, inner)
        return None
    raise ValueError(f"unknown GGUF value type {kind}")
