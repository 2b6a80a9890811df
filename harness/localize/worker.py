"""The worker side of `harness localize`: `python -m harness.localize.worker SPEC.json`.

Started like a run's worker (harness.runner: the job's own environment, so the same device, dtype, threads and
flags), it loads the job's adapter once and localises each case of its spec: in this process (harness.localize.replay),
or, for a tensor parallel case, as the TP 1 side against the worker group's captures (harness.localize.tp).

Exit 0 with the result file written, 2 when the adapter cannot be hooked, 3 when the model or device fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from .. import atomic, procgroup
from ..errors import USAGE
from .cases import Case
from .load import Refused, load_adapter
from .replay import localize
from .tp import localize_tp


def run(spec: dict[str, Any]) -> int:
    try:
        job, adapter, load_s = load_adapter(spec)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    prompts = {p["id"]: p for p in job.prompts}
    results = []
    with torch.inference_mode():
        for i, c in enumerate(spec["cases"]):
            case = Case.from_dict(c)
            where = Path(spec["dump"]) / f"case{spec.get('first', 0) + i + 1}" if spec.get("dump") else None
            if spec.get("captures"):  # a TP case: this is its TP 1 side, against the worker group's captures
                results.append(localize_tp(adapter, prompts, case, Path(spec["captures"][i]), where))
            else:
                results.append(localize(adapter, prompts, case, where))
    adapter.close()
    atomic.write_json(Path(spec["out"]), {"load_s": load_s, "results": results})
    return 0


def main(argv: list[str]) -> int:
    procgroup.watch_parent()  # a harness that died takes its replay with it
    if len(argv) != 1:
        print("usage: python -m harness.localize.worker SPEC.json", file=sys.stderr)
        return USAGE
    return run(json.loads(Path(argv[0]).read_text(encoding="utf-8")))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
