"""The doctor's checks of memory: the weights against the host's available memory, and on an NPU each tensor
parallel degree's shard (weights / degree) against the usable share (NPU_MEMORY_FRACTION) of the cards its group
runs on, by the MindIE FAQ's free >= 1.3 x weights / cards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from ..loadtime.data import weight_files
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


# The MindIE FAQ's sizing rule: each card needs free memory of at least 1.3 x (weights / cards), the 0.3 for the
# KV cache, activations and workspace; below it the weights may load but the service does not start.
HEADROOM = 1.3


def device_verdict(weights: int, free: int, total: int, fraction: float, cards: int = 1) -> tuple[str, str]:
    """(severity, what) for one card's shard of the weights (weights / cards, tensor parallel) against that card's
    usable memory (what is free, at most total x NPU_MEMORY_FRACTION), by the FAQ's free >= 1.3 x weights / cards."""
    usable = min(free, int(total * fraction))
    per_card = weights / max(cards, 1)
    what = (
        f"weights {_gib(per_card)} per card ({cards} card(s)) against {_gib(usable)} usable "
        f"(free {_gib(free)}, total {_gib(total)} x NPU_MEMORY_FRACTION {fraction:g})"
    )
    if per_card > usable:
        return "error", what + ": out of memory at load"
    if HEADROOM * per_card > usable:
        return "error", what + f": under the {HEADROOM:g} x weights per card the KV cache and activations need"
    return "info", what


# Every visible card's free and total memory: a degree-d group uses the first d of them (LOCAL_RANK -> device).
_NPU_MEM = (
    "import json, torch, torch_npu; "
    "print(json.dumps([list(torch.npu.mem_get_info(i)) for i in range(torch.npu.device_count())]))"
)


def tp_degrees(ctx: Context) -> list[int | str]:
    """The tensor parallel degrees the suites in scope plan (each degree's group holds a 1/degree shard per card;
    tp-invariance also runs the smallest, often 1); [1] without suites. A degree not yet resolved to a number
    (`tp = "auto"`) counts as every visible card, the most it can become."""
    numbers: set[int] = set()
    auto = False
    for s in ctx.suites:
        tp = getattr(getattr(s.suite, "parallel", None), "tp", None)
        for d in tp if isinstance(tp, tuple | list) else () if tp is None else (tp,):
            if isinstance(d, int) and d > 0:
                numbers.add(d)
            elif isinstance(d, str):
                auto = True
    return [*sorted(numbers), *(["auto"] if auto else [])] or [1]


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
    cards: list[list[int]] = json.loads(p.stdout.strip().splitlines()[-1])
    if not cards:
        yield Finding("memory.device", "error", "no NPU visible", "check ASCEND_RT_VISIBLE_DEVICES and npu-smi info")
        return
    degrees = tp_degrees(ctx)
    for m in ctx.model_dirs:
        weights = sum(f.stat().st_size for f in weight_files(m))
        for degree in degrees:
            d = len(cards) if degree == "auto" else int(degree)
            if d > len(cards):
                yield Finding(
                    "memory.device",
                    "warning",
                    f"tp={d} needs {d} cards; {len(cards)} visible: its memory is not judged here",
                    "make the cards visible (ASCEND_RT_VISIBLE_DEVICES, the container's --device list) or lower tp",
                )
                continue
            # The tightest card of the group decides: a neighbour's process on one card fails the whole group.
            free, total = min(cards[:d], key=lambda c: min(c[0], int(c[1] * fraction)))
            sev, what = device_verdict(weights, free, total, fraction, cards=d)
            yield Finding("memory.device", sev, f"{m}, tp={d}: {what}", KNOBS if sev != "info" else "")  # type: ignore[arg-type]
