"""One worker process per job: `python -m harness.worker JOB.json`.

Started by the runner with the profile's environment already in place, so the
flags are set before torch_npu, ATB or HCCL initialise. Loads the model once,
runs every batch and appends one JSON line per sequence, flushed per batch.
Exit 0 when every batch ran, 3 when the device or model cannot be used.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import atomic, hostnoise, procgroup
from .errors import INFRA, USAGE
from .jobs import Adapter, Job
from .records import Record

if TYPE_CHECKING:
    import torch


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak host RSS of this process, and peak device memory where the device reports it, in MB."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    out = {"peak_rss_mb": rss / (1 << 20) if sys.platform == "darwin" else rss / 1024}
    import torch

    mod = getattr(torch, device.type, None) if device.type in ("cuda", "npu") else None
    if mod is not None and hasattr(mod, "max_memory_allocated"):
        out["device_peak_mb"] = mod.max_memory_allocated(device) / (1 << 20)
    return out


def run(job: Job) -> int:
    if job.paced and not sys.stdin.readline():  # loads take turns too: the runner says when
        return INFRA
    from . import adapters

    try:
        cls = adapters.get(job.adapter)
    except adapters.AdapterError as e:
        print(f"error: {e}", file=sys.stderr)
        return USAGE
    if cls.remote:
        adapter = cls(job)
        return _run(job, adapter, {"import": 0.0}, adapter.describe, dict)
    t0 = time.perf_counter()
    import torch  # noqa: F401  (timed: import is a load phase on NPU images)

    from . import devices

    try:
        device = devices.prepare(job.device, deterministic=job.torch_deterministic)
        phases = {"import": time.perf_counter() - t0}
        if job.tp > 1:
            t0 = time.perf_counter()
            device = devices.init_group(device, job.collective_timeout_s)
            phases["init_group"] = time.perf_counter() - t0  # the rendezvous: waits for the slowest rank to start
    except devices.DeviceError as e:
        print(f"error: {e}", file=sys.stderr)
        return INFRA
    adapter = cls(job, device)
    try:
        return _run(
            job,
            adapter,
            phases,
            # An engine (vLLM) adds its own version to the device's description, and so to the baseline key.
            lambda: {**devices.describe(device), **(adapter.describe() if hasattr(adapter, "describe") else {})},
            lambda: {**peak_memory(device), "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()},
        )
    finally:
        if job.tp > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def _rank() -> dict[str, Any]:
    """Where this process sits in its worker group."""
    import socket

    import torch
    import torch.distributed as dist

    return {
        "rank": dist.get_rank(),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "node_rank": int(os.environ.get("HARNESS_NODE_RANK", "0")),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "backend": str(dist.get_backend()),
    }


def _gather(job: Job, part: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's part, in rank order, on every rank (the writer keeps them in the job's meta)."""
    if job.tp <= 1:
        return []
    import torch.distributed as dist

    parts: list[dict[str, Any]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(parts, part)
    return parts


def _writes(job: Job) -> bool:
    """One process writes records and meta: the group's first local rank on node 0 (c10d may number the hosts in any
    order, so not necessarily global rank 0), or the only process."""
    if job.tp <= 1:
        return True
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("HARNESS_NODE_RANK", "0") == "0"


def _run(
    job: Job,
    adapter: Adapter,
    phases: dict[str, float],
    describe: Callable[[], dict[str, Any]],
    after_load: Callable[[], dict[str, Any]],
) -> int:
    """Load, then every batch: one JSON line per sequence, flushed per batch."""
    from . import envinfo
    from .models import file_hashes

    try:
        phases = {**phases, **adapter.load()}
    except Exception as e:
        what = (
            str(e)
            if job.endpoint is not None
            else f"model {job.model_ref!r} would not load on {job.device}: {type(e).__name__}: {e}"
        )
        print(f"error: {what}", file=sys.stderr)
        return INFRA
    from .plan import worker_problem

    if problem := worker_problem(job, adapter):  # a prompt only the loaded tokenizer can measure (a chat template)
        print(f"error: {problem}", file=sys.stderr)
        adapter.close()
        return USAGE  # before the meta: the runner takes it as a refused job, one line, exit 2
    meta = {
        "job": job.name,
        "profile": job.profile,
        "pid": os.getpid(),
        "load_s": phases,
        **after_load(),
        "device": describe(),
        "host": envinfo.host(),
        "env": envinfo.relevant_env(os.environ),
        "model_files": file_hashes(job.model_dir),
    }
    if job.tp > 1:
        # every rank's load phases, memory and the flags it actually ran with, not only the writer's
        meta = {**meta, "tp": job.tp, **_rank(), "ranks": _gather(job, {**meta, **_rank()})}
    writes = _writes(job)
    meta_path = Path(job.meta)
    if writes:
        atomic.write_json(meta_path, meta)
    prompts = {p["id"]: p for p in job.prompts}
    own = {os.getpid()} | ({job.server_pid} if job.server_pid else set())
    run_s = 0.0
    tokens = sequences = 0
    passes = []
    with open(job.records if writes else os.devnull, "a", encoding="utf-8") as out:
        for (warmup, repeat), group in itertools.groupby(job.batches, key=lambda b: (b.warmup, b.repeat)):
            if job.paced and not sys.stdin.readline():
                break  # the runner closed the pipe: the run was stopped
            before, t_pass, started = hostnoise.snapshot(), time.perf_counter(), time.time()
            for b in group:
                gens = adapter.generate([prompts[i] for i in b.prompt_ids])
                for pos, (pid, g) in enumerate(zip(b.prompt_ids, gens)):
                    rec = Record(
                        profile=job.profile,
                        prompt_id=pid,
                        schedule=b.schedule,
                        kind=b.kind,
                        batch_id=b.id,
                        batch=list(b.prompt_ids),
                        position=pos,
                        repeat=b.repeat,
                        warmup=b.warmup,
                        **vars(g),
                    )
                    out.write(rec.to_json() + "\n")
                    tokens += g.output_tokens or len(g.tokens)
                    sequences += 1
                out.flush()  # a crash loses at most the batch in flight
            run_s += time.perf_counter() - t_pass
            passes.append(
                {
                    "repeat": repeat,
                    "warmup": warmup,
                    "started": started,
                    "seconds": time.perf_counter() - t_pass,
                    **hostnoise.between(before, hostnoise.snapshot(), own),
                }
            )
    if job.paced:  # the others may still be measuring: tearing the model down now would run beside their pass
        while sys.stdin.readline():
            pass
    meta = {
        **meta,
        "run_s": run_s,
        "generated_tokens": tokens,
        "sequences": sequences,
        "tokens_per_s": tokens / run_s if run_s else 0.0,
        "passes": passes,
    }
    if job.endpoint is not None and job.endpoint.oversize_check:
        meta["oversize"] = adapter.oversize()  # type: ignore[attr-defined]  # the endpoint adapter's own check
    adapter.close()
    if job.tp > 1:  # peak memory again, now that every batch has run
        ends = _gather(job, {"run_s": run_s, **after_load()})
        meta["ranks"] = [{**r, **e} for r, e in zip(meta["ranks"], ends)]
    if writes:
        atomic.write_json(meta_path, meta)
    return 0


def main(argv: list[str]) -> int:
    procgroup.watch_parent()  # a harness that died, even by SIGKILL, takes its workers with it
    if len(argv) != 1:
        print("usage: python -m harness.worker JOB.json", file=sys.stderr)
        return 2
    job = Job.from_json(Path(argv[0]).read_text(encoding="utf-8"))
    return run(job)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
