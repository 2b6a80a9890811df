"""A replay worker's adapter: the job's (or --adapter's), loaded on its device, or refused with the exit code and the
one line its parent prints. Shared by the single-process worker (harness.localize.worker) and the TP group's
(harness.localize.tp)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import INFRA, USAGE
from ..jobs import Job

HOOKABLE = ("encode", "advance", "forward")  # what the replay needs of an adapter (harness.adapters.hf.HFAdapter)


class Refused(Exception):
    """The worker cannot replay its job: `code` is its exit status (USAGE, INFRA), the message its one line."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def load_adapter(spec: dict[str, Any], group: bool = False) -> tuple[Job, Any, float]:
    """The spec's job (with --adapter's replacement), its adapter loaded on its device (in a torchrun group's process
    group when `group`), and the load's seconds. Refused: an adapter the harness cannot hook (USAGE), or a device,
    group or model that will not come up (INFRA)."""
    from .. import adapters, devices

    job = Job.from_json(Path(spec["job"]).read_text(encoding="utf-8"))
    if spec.get("adapter"):
        job = Job.from_json(json.dumps({**json.loads(job.to_json()), "adapter": spec["adapter"]}))
    try:
        cls = adapters.get(job.adapter)
    except adapters.AdapterError as e:
        raise Refused(str(e), USAGE) from None
    if cls.remote or not all(callable(getattr(cls, m, None)) for m in HOOKABLE):
        raise Refused(spec["unhookable"], USAGE)
    try:
        device = devices.prepare(job.device, deterministic=job.torch_deterministic)
        if group:
            device = devices.init_group(device, job.collective_timeout_s)
        adapter = cls(job, device)
        t0 = time.perf_counter()
        adapter.load()
        return job, adapter, time.perf_counter() - t0
    except Exception as e:  # a device, group or model that will not come up: infrastructure
        at = f" at TP {job.tp}" if group else ""
        raise Refused(
            f"model {job.model_ref!r} would not load on {job.device}{at}: {type(e).__name__}: {e}", INFRA
        ) from None
