"""`harness localize --dump DIR`: both sides' tensors of the first differing module and of its operators, as numpy
files with a manifest, for msit, msprobe or a notebook.

Per case a folder DIR/case<N>/ holds `<tensor>.reference.npy` and `<tensor>.compared.npy` for the module's output
and each operator's output inside it (the compared row, padding dropped, positions aligned), the first differing
operator's whole inputs on both sides (`input<i>.reference.npy`, ...: the batch as the kernel saw it, to replay the
kernel alone), and manifest.json naming the module, operator, step, rows, shapes and dtypes. numpy has no bfloat16:
such tensors are saved as float32 (exact), and the manifest says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from .cases import Case


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", ".", name).strip(".") or "tensor"


def _save(folder: Path, stem: str, side: str, t: torch.Tensor) -> dict[str, Any]:
    import numpy as np

    saved = t.detach().cpu()
    if saved.dtype == torch.bfloat16:
        saved = saved.to(torch.float32)  # exact: every bfloat16 is a float32
    name = f"{stem}.{side}.npy"
    np.save(folder / name, saved.numpy())
    return {
        "file": name,
        "side": side,
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "saved_as": str(saved.dtype).removeprefix("torch."),
    }


def write(
    folder: Path,
    case: Case,
    result: dict[str, Any],
    pairs: list[tuple[str, tuple[torch.Tensor, torch.Tensor] | None]],
    raw_inputs: tuple[list[torch.Tensor], list[torch.Tensor]],
) -> Path:
    """Write the tensors and manifest.json into `folder`; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.npy"), folder / "manifest.json"]:  # a dump of an earlier run of this command
        old.unlink(missing_ok=True)
    files = []
    for i, (name, pair) in enumerate(pairs):
        if pair is None:
            continue
        stem = _safe(name)
        what = "module output" if i == 0 else "operator output"
        for side, t in zip(("reference", "compared"), pair):
            files.append({"tensor": name, "what": what, **_save(folder, stem, side, t)})
    op = result.get("operator") or {}
    for side, ins in zip(("reference", "compared"), raw_inputs):
        for k, t in enumerate(ins):
            files.append(
                {
                    "tensor": f"{op.get('name', '')} input {k}",
                    "what": "operator input (whole batch)",
                    **_save(folder, f"input{k}", side, t),
                }
            )
    manifest = {
        "module": result["module"]["name"],
        "module_class": result["module"].get("class", ""),
        "operator": op.get("name"),
        "operator_index": op.get("index"),
        "operator_inputs": {"reference": op.get("ref_inputs"), "compared": op.get("other_inputs")},
        "step": result["step"],
        "dtype": result["dtype"],
        "profile": case.profile,
        "property": case.property,
        "prompt_id": case.prompt_id,
        "reference": {**case.reference.shown(), "rows": len(case.reference.prompt_ids)},
        "compared": {**case.compared.shown(), "rows": len(case.compared.prompt_ids)},
        "row": {"reference": case.reference.position, "compared": case.compared.position},
        "layout": "per tensor the compared row only, padding dropped and positions aligned; inputs whole",
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return folder
