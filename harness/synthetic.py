"""Synthetic Llama checkpoints for load-time scaling: random weights from a fixed seed, bfloat16,
safetensors sharded as real checkpoints are, generated once into the cache.

`python -m harness.synthetic SIZE_B TOKENIZER_DIR` prints the directory (run in a child process, so the parent
never imports torch).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from .models import cache_dir

# Shapes of common small Llama models, by nominal size in billions of parameters.
SHAPES = {
    0.1: dict(
        hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4
    ),
    0.5: dict(
        hidden_size=1280, intermediate_size=3456, num_hidden_layers=20, num_attention_heads=20, num_key_value_heads=4
    ),
    1.0: dict(
        hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8
    ),
}
VOCAB, SEED, SHARD = 49152, 0, "500MB"  # the embedded model's vocabulary: its tokenizer is copied in
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def config_dict(size_b: float) -> dict[str, Any]:
    if size_b not in SHAPES:
        raise KeyError(f"no synthetic shape for {size_b}B; known sizes: {', '.join(map(str, SHAPES))}")
    return dict(
        vocab_size=VOCAB,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
        **SHAPES[size_b],
    )


def directory(size_b: float) -> Path:
    key = hashlib.sha256(json.dumps([config_dict(size_b), SEED, SHARD], sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / "synthetic" / f"llama-{size_b}b-bf16-{key}"


def ensure(size_b: float, tokenizer_dir: Path) -> Path:
    out = directory(size_b)
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**config_dict(size_b))
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    # transformers wraps PreTrainedModel.to in a decorator whose stub drops torch's signature
    model = model.to_empty(device="cpu").to(torch.bfloat16)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp, max_shard_size=SHARD)
    for name in TOKENIZER_FILES:  # a loadable model directory, as a real checkpoint is
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy(Path(tokenizer_dir) / name, tmp / name)
    tmp.rename(out)  # a half-written checkpoint is never taken for a finished one
    return out


def files(model_dir: Path) -> list[Path]:
    return sorted(Path(model_dir).glob("*.safetensors"))


def main(argv: list[str]) -> int:
    try:
        print(ensure(float(argv[0]), Path(argv[1])))
    except (KeyError, ValueError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
