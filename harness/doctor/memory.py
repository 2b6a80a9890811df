"""The doctor's checks of memory: the weights against the host's available memory, and on an NPU against
one card's usable share (NPU_MEMORY_FRACTION)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..loadrun import weight_files
from .core import Context, Finding, check

MEMORY_FRACTION = 0.8  # NPU_MEMORY_FRACTION's default: the share of device memory MindIE takes


def meminfo(text: str | None = None) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    if text is None:
        try:
            text = Path("/proc/meminfo").read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts and parts[0].isdigit():
            out[k] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


KNOBS = (
    "lower npuMemSize (MindIE config.json) or raise NPU_MEMORY_FRACTION (default 0.8); shorten maxSeqLen and "
    "maxPrefillTokens; or spread the model over more cards (worldSize / tensor parallel)"
)


@check("memory.host")
def memory_host(ctx: Context) -> Iterator[Finding]:
    avail = meminfo().get("MemAvailable", 0)
    for m in ctx.model_dirs:
        size = sum(f.stat().st_size for f in weight_files(m))
        if not avail:
            yield Finding("memory.host", "info", f"weights {_gib(size)}; free host memory unknown")
        elif size > avail:
            yield Finding(
                "memory.host",
                "error",
                f"weights in {m} are {_gib(size)}, more than the {_gib(avail)} of host memory available: the "
                "load fails with out of memory",
                "free host memory (other processes, page cache of other models), or use a host with more; "
                "weights are read into host memory before they move to the device",
            )
        elif size > 0.8 * avail:
            yield Finding(
                "memory.host",
                "warning",
                f"weights {_gib(size)} against {_gib(avail)} available: under 20% left for activations and the KV cache",
                "free host memory before the run",
            )
        else:
            yield Finding("memory.host", "info", f"weights {_gib(size)}; host memory available {_gib(avail)}")


def device_verdict(weights: int, free: int, total: int, fraction: float, cards: int = 1) -> tuple[str, str]:
    """(severity, what) for weights against one card's usable memory: total x NPU_MEMORY_FRACTION, and what is free."""
    usable = min(free, int(total * fraction))
    per_card = weights / max(cards, 1)
    what = (
        f"weights {_gib(per_card)} per card against {_gib(usable)} usable "
        f"(free {_gib(free)}, total {_gib(total)} x NPU_MEMORY_FRACTION {fraction:g})"
    )
    if per_card > usable:
        return "error", what + ": out of memory at load"
    if per_card > 0.8 * usable:
        return "warning", what + ": under 20% left for the KV cache"
    return "info", what


_NPU_MEM = "import json, torch, torch_npu; f, t = torch.npu.mem_get_info(); print(json.dumps([f, t, torch.npu.device_count()]))"


@check("memory.device", devices=("npu",), looks_at="device memory")
def memory_device(ctx: Context) -> Iterator[Finding]:
    raw = ctx.environ.get("NPU_MEMORY_FRACTION", "")
    try:
        fraction = float(raw) if raw else MEMORY_FRACTION
    except ValueError:
        yield Finding("memory.device", "error", f"NPU_MEMORY_FRACTION={raw!r} is not a number", "a share such as 0.8")
        return
    p = ctx.run_python(_NPU_MEM)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        yield Finding("memory.device", "warning", f"device memory not readable: {last}", "check npu-smi info")
        return
    free, total, _ = json.loads(p.stdout.strip().splitlines()[-1])
    for m in ctx.model_dirs:
        sev, what = device_verdict(sum(f.stat().st_size for f in weight_files(m)), free, total, fraction)
        yield Finding("memory.device", sev, what, KNOBS if sev != "info" else "")  # type: ignore[arg-type]
