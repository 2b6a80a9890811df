from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# Fixtures that start a child process (model conversion) and load a model: a test using one is not fast-lane.
PROCESS_FIXTURES = {"embedded_dir", "tiny_model"}


def pytest_collection_modifyitems(items):
    # The fast lane is `-m "not process and not integration"`; an unmarked test that starts a process would
    # slip into it silently, so refuse to collect one.
    unmarked = [
        i.nodeid
        for i in items
        if PROCESS_FIXTURES & set(getattr(i, "fixturenames", ())) and i.get_closest_marker("process") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "mark these @pytest.mark.process (they start a process and load a model): " + ", ".join(unmarked)
        )


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once into the harness cache."""
    from harness.runner import prepare_model

    return prepare_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model(embedded_dir: Path, tmp_path_factory) -> Path:
    """A 2-layer random Llama with the real tokenizer: fast, and a real HF directory to load."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in embedded_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, out / f.name)
    return out
