"""What else the host is doing while a pass is measured: CPU time of other processes (/proc/stat against this
process's own), steal time, load average, CPU frequency, and the busiest other processes by name. Torch-free and
cheap (one read of /proc per pass boundary); where /proc is missing (macOS) nothing is sampled and nothing is
judged noisy."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    busy: int  # jiffies spent by all CPUs outside idle and iowait
    total: int
    steal: int
    procs: dict[int, tuple[str, int, int]] = field(default_factory=dict)  # pid -> (name, ppid, utime + stime)


def _proc(pid: str) -> tuple[str, int, int] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
    # rest[0] is the state (field 3); utime and stime are fields 14 and 15, ppid field 4
    return name, int(rest[1]), int(rest[11]) + int(rest[12])


def snapshot() -> Snapshot | None:
    try:
        cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    v = [int(x) for x in cpu] + [0] * 10
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    procs = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit() and (p := _proc(pid)) is not None:
            procs[int(pid)] = p
    return Snapshot(busy=user + nice + system + irq + softirq + steal, total=sum(v[:8]), steal=steal, procs=procs)


def _tree(procs: dict[int, tuple[str, int, int]], roots: set[int]) -> set[int]:
    """The roots and every descendant: a worker's own work, or a server and the engine processes it started."""
    out, grew = set(roots), True
    while grew:
        kids = {pid for pid, (_, ppid, _) in procs.items() if ppid in out and pid not in out}
        out |= kids
        grew = bool(kids)
    return out


def between(a: Snapshot | None, b: Snapshot | None, own: set[int], top: int = 3) -> dict[str, Any]:
    """Shares of the whole machine's CPU time between two snapshots. `own`: pids whose work is the measurement
    (this worker, and for a served run the server), with their descendants."""
    if a is None or b is None or b.total <= a.total:
        return {}
    total = b.total - a.total
    mine = _tree(b.procs, own)
    used = {pid: b.procs[pid][2] - a.procs[pid][2] for pid in b.procs if pid in a.procs}
    own_ticks = sum(t for pid, t in used.items() if pid in mine)
    others = max(0, b.busy - a.busy - own_ticks - (b.steal - a.steal))
    # at least 1% of the machine: a kernel thread's odd tick is not a neighbour
    busiest = sorted(((t, pid) for pid, t in used.items() if pid not in mine and t >= total / 100), reverse=True)[:top]
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = float("nan")
    return {
        "others_share": others / total,
        "steal_share": (b.steal - a.steal) / total,
        "load1": load1,
        "mhz": _mhz(),
        "top": [[b.procs[pid][0], pid, round(t / total, 3)] for t, pid in busiest],
    }


def _mhz() -> float:
    try:
        vals = [
            float(ln.split(":")[1]) for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("cpu MHz")
        ]
    except (OSError, ValueError, IndexError):
        return float("nan")
    return sum(vals) / len(vals) if vals else float("nan")


def describe(sample: dict[str, Any]) -> str:
    """ "others used 48% of the CPU (python3[1234] 47%)"."""
    if not sample:
        return "not sampled"
    busy = ", ".join(f"{name}[{pid}] {100 * share:.0f}%" for name, pid, share in sample.get("top", []))
    steal = f", steal {100 * sample['steal_share']:.0f}%" if sample.get("steal_share", 0) > 0.01 else ""
    return f"other processes used {100 * sample['others_share']:.0f}% of the CPU{steal}" + (
        f" ({busy})" if busy else ""
    )
