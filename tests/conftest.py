from __future__ import annotations

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
    from .helpers import tiny_llama

    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"), embedded_dir)
