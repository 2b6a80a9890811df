"""Worker groups: a job at tensor parallel degree N runs as N torchrun ranks, one process per device.

The parent side only (no torch): torchrun's command line, each rank's thread count, the rendezvous port, which rank
failed first (torchrun's own summary) and its stderr tail, and the marker that leaves no rank behind. torchrun starts
every rank in a session of its own, so killing the launcher's process group does not reach them: each rank carries
a marker in its environment, and harness.procgroup signals and waits for whatever carries the launcher's marker as
part of its group (a stop, a kill, a cancelled run).
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port, port_taken
from .suite import Parallel

MARK = "HARNESS_GROUP"  # in every rank's environment: the sweep's handle on ranks the launcher left behind
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def omp_threads(nproc: int) -> int:
    """Threads per rank: the host's cores shared out, at least one. N ranks each with every core's worth of OpenMP
    threads would oversubscribe the host N times, and a rank that waits for a core holds the others in the next
    all-reduce."""
    return max(1, cores() // nproc)


def suite_threads(par: Parallel) -> int:
    """One thread count for every process of every degree in a suite (TP 1 included): the largest group's share
    of this host's cores. A CPU matmul may split its reduction by thread count, so the same count on both sides
    keeps tp-invariance about the sharding and the all-reduce alone; and on a busy host an OpenMP team larger than
    the free cores waits at every barrier (measured here: 24 forwards took 5 s with one thread, 100-170 s with two,
    while other work held the cores)."""
    return omp_threads(max(par.tp) // par.nnodes)


def rendezvous_problem(endpoint: str) -> str:
    """ "" when this host can host the rendezvous at `endpoint`; else why not. torchrun whose c10d port is held by
    something else connects to it as a client and waits for its join timeout (600 s by default): refuse first."""
    host, _, port = endpoint.rpartition(":")
    if host.strip("[]") not in LOCAL_HOSTS and host != socket.gethostname():
        return ""  # another host's port: only that host can tell
    try:
        taken = port_taken(host.strip("[]") if host != "localhost" else "127.0.0.1", int(port))
    except OSError as e:
        taken, why = True, e.strerror or str(e)
    else:
        why = "address in use"
    if taken:
        return (
            f"rendezvous port {endpoint} is in use on this host ({why}); choose another "
            "[parallel] rdzv_endpoint, or leave it empty for a free port"
        )
    return ""


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    ranks_dir: Path  # torchrun --log-dir: <id>/attempt_0/<local rank>/stderr.log
    endpoint: str


def launch(
    job_name: str,
    tp: int,
    par: Parallel,
    job_path: Path,
    log_dir: Path,
    marker: str,
    module: str = "harness.worker",
    python: str = "",
) -> Launch:
    """torchrun's command line for `python -m MODULE JOB_PATH` on every rank (the run's worker, or harness.localize's
    group capture with its spec), and what each rank gets in its environment."""
    nproc = tp // par.nnodes
    endpoint = par.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    args = [
        "--nnodes",
        str(par.nnodes),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        job_name,
        # the other hosts have this long to join; a rendezvous that never completes ends the job, not the night
        "--rdzv-conf",
        f"join_timeout={int(par.collective_timeout_s)}",
        "--max-restarts",
        "0",
        "--log-dir",
        str(log_dir),
        "--redirects",
        "3",
        "-m",
        module,
        str(job_path),
    ]
    if par.launcher:
        argv = shlex.split(par.launcher.replace("{args}", shlex.join(args)))
    else:
        argv = [python or sys.executable, "-m", "torch.distributed.run", *args]
    env = {MARK: marker, "OMP_NUM_THREADS": str(suite_threads(par)), "HARNESS_NODE_RANK": str(par.node_rank)}
    return Launch(argv=argv, env=env, ranks_dir=log_dir, endpoint=endpoint)


def marked(marker: str) -> list[int]:
    """Live processes whose environment carries `marker` (Linux /proc; elsewhere none can be found)."""
    needle = f"{MARK}={marker}".encode() + b"\0"
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            env = (d / "environ").read_bytes()
        except OSError:
            continue
        if needle in env and int(d.name) != os.getpid():
            found.append(int(d.name))
    return found


_ROOT = re.compile(r"Root Cause \(first observed failure\):")
_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)")
_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


@dataclass(frozen=True)
class Failure:
    rank: int
    local_rank: int
    exitcode: int


def first_failure(launcher_log: str) -> Failure | None:
    """The rank torchrun names as the first observed failure, from its summary (ChildFailedError)."""
    lines = launcher_log.splitlines()
    start = next((i for i, ln in enumerate(lines) if _ROOT.search(ln)), None)
    if start is None:
        return None
    rank = local = code = None
    for ln in lines[start + 1 : start + 12]:
        if (m := _RANK.match(ln)) and rank is None:
            rank, local = int(m[1]), int(m[2])
        elif (m := _EXIT.match(ln)) and code is None:
            code = int(m[1])
    if rank is None or local is None or code is None:
        return None
    return Failure(rank, local, code)


def rank_tail(ranks_dir: Path, local_rank: int, n: int = 20) -> list[str]:
    """The last non-empty lines a rank wrote (stderr, then stdout), from torchrun's --log-dir."""
    out: list[str] = []
    for name in ("stderr.log", "stdout.log"):
        for f in sorted(ranks_dir.glob(f"*/attempt_*/{local_rank}/{name}")):
            out += [ln for ln in f.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if out:
            break
    return out[-n:]
