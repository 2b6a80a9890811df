"""Where does it break? `harness localize RUN_DIR`: for a compared sequence whose logits bits left its reference's,
the first module and operator whose output differs for that row, with msit's metrics per module and per layer.

- `cases`: which cases, from the run folder's jobs and records (torch-free);
- `command`: the command itself: picks the cases, starts one replay worker per job with the job's environment
  (harness.runner), writes localize.json and prints one line per case;
- `worker`: the worker (`python -m harness.localize.worker SPEC.json`), its adapter loaded by `load`;
- `replay`: teacher-forced replays through the adapter's own forward path, module hooks, operator capture
  (TorchDispatchMode); `tp`: a TP N case against its TP 1 twin (the group's worker and the comparison);
- `compare`: the comparison of one row's tensors (alignment, metrics; torch, no model);
- `summary`: the one-line reading of a result; `dump`: --dump's numpy files and manifest.

Importing this package imports no torch: the parent never does.
"""

from __future__ import annotations

UNHOOKABLE = (
    "{what}: the harness cannot hook this engine's modules (the model runs inside {engine}); to find the first "
    "differing operator, dump both runs with the engine's own tools and compare them: on Ascend `msit llm dump` "
    "(MindIE, vLLM-Ascend) or msprobe, then `msit llm compare` (docs/localize.md)"
)
