"""One line per localised case, from its entry in localize.json: pure text, no torch. For example (one line):

default batch-invariance: prompt 'c' in batch-sizes/0 (row 0 of 4) against solo/2: batch variance enters at
step 0 in layer 0 self_attn.q_proj (aten::mm, [2, 32] x [32, 32] solo vs [28, 32] batched), grows to 1.1e-08
by layer 1, flips no token
"""

from __future__ import annotations

from typing import Any

VARIANCE = {"batch-invariance": "batch variance", "repeatability": "run-to-run variance"}
TP = "tp-invariance"


def _shape(s: list[int]) -> str:
    return "[" + ", ".join(map(str, s)) + "]"


def where(path: str, layers: str) -> str:
    """`model.layers.0.self_attn.q_proj` as "layer 0 self_attn.q_proj"; a module outside the layers by its path."""
    if layers and path.startswith(layers + "."):
        index, _, rest = path[len(layers) + 1 :].partition(".")
        if index.isdigit():
            return f"layer {index} {rest}".rstrip() if rest else f"layer {index} (its own code, after its modules)"
    return path


def _ran(names: list[str], shown: int = 4) -> str:
    """ "aten::bmm" or "11 operators (aten::unsqueeze, aten::mul, ... aten::bmm)": what one side ran alone."""
    if len(names) == 1:
        return names[0]
    if not names:
        return "nothing"
    head = ", ".join(names[: shown - 1])
    return (
        f"{len(names)} operators ({head}, ... {names[-1]})"
        if len(names) > shown
        else f"{len(names)} operators ({', '.join(names)})"
    )


def _before(code: dict[str, Any] | None, labels: tuple[str, str]) -> str:
    """ "; before it the batched side alone ran 4 operators (...)": the code that led to the differing operator."""
    if not code:
        return ""
    alone = [(labels[0], code.get("ref_ran") or []), (labels[1], code.get("other_ran") or [])]
    said = [f"the {side} side alone ran {_ran(names)}" for side, names in alone if names]
    return "; before it " + " and ".join(said) if said else ""


def operator(op: dict[str, Any] | None, labels: tuple[str, str]) -> str:
    """ "aten::mm, [5, 576] x [576, 576] solo vs [25, 576] batched": the compared side's input shapes that differ."""
    if op is None:
        return "no operator inside it differs for the row: the difference is in its inputs"
    if op.get("why") == "different code":
        a = _ran(op.get("ref_ran") or [op["name"]])
        b = _ran(op.get("other_ran") or [op.get("other_name", "nothing")])
        return f"different operators: {a} {labels[0]} vs {b} {labels[1]}"
    ref, other = op.get("ref_inputs") or [], op.get("other_inputs") or []
    changed = [s for i, s in enumerate(other) if i >= len(ref) or s != ref[i]] or other
    a = " x ".join(map(_shape, ref)) or "no tensor inputs"
    b = " x ".join(map(_shape, changed)) or "no tensor inputs"
    said = f"{op['name']}, {a} {labels[0]} vs {b} {labels[1]}"
    return said + (": outputs in layouts that do not line up row by row" if op.get("why") == "not aligned" else "")


def _growth(entry: dict[str, Any], module: dict[str, Any]) -> str:
    layers = entry.get("layers") or []
    if layers and layers[-1]["index"] >= module["index"]:
        return f", grows to {layers[-1].get('max_abs', 0.0):.2g} by layer {layers[-1]['layer']}"
    return ""


def _flips(entry: dict[str, Any], case: dict[str, Any]) -> str:
    logits = entry.get("logits") or {}
    if logits.get("argmax_flips"):
        return f", flips the argmax at step {logits['step']}"
    if case.get("first_token_step") is not None:
        return f", flips no token here (the run's tokens diverge at step {case['first_token_step']})"
    return ", flips no token"


def _shares(ranks: list[int]) -> str:
    """ "rank 0's share", "the shares of ranks 0 and 2"."""
    if len(ranks) == 1:
        return f"rank {ranks[0]}'s share"
    names = ", ".join(map(str, ranks[:-1])) + f" and {ranks[-1]}" if ranks else "no rank"
    return f"the shares of ranks {names}"


def _entered(entry: dict[str, Any], layers: str) -> str:
    """Where a TP difference enters, as far as whole tensors tell: "its input, gathered from the 3 ranks, is
    bit-identical to TP 1's: ..." (the all-reduce), or which shares already differ."""
    at, tp = entry.get("enters") or {}, entry.get("tp", "N")
    if at.get("at") == "all-reduce":
        return (
            f"its input, gathered from the {tp} ranks, is bit-identical to TP 1's: the difference enters in the "
            f"row-parallel product, {tp} partial matmuls summed by the all-reduce (another summation order)"
        )
    if at.get("at") == "sharded code":
        text = (
            f"its input, gathered from the {tp} ranks, already differs ({_shares(at.get('ranks_differing') or [])}): "
            "the difference entered in the sharded code before it"
        )
        first = next((m for m in entry.get("modules", []) if m["name"] == at.get("first_sharded")), None)
        if first is not None:
            ulps = (first.get("rank0_slice") or {}).get("ulps", 0.0)
            shard = first.get("shard", "").removeprefix("sharded: ")
            text += f", first seen in rank 0's share at {where(first['name'], layers)} ({shard}, {ulps:.2g} ulp)"
        return text
    return str(at.get("detail", ""))


def tp_line(entry: dict[str, Any]) -> str:
    """A tp-invariance case: the first whole module output to differ, where the difference enters, and why the
    operators are not compared."""
    case = entry["case"]
    cmp_ = case["compared"]
    head = (
        f"{case['profile']} {TP}: prompt {case['prompt_id']!r} in {cmp_['batch_id']} (row {cmp_['position']} of "
        f"{len(cmp_['batch'])}), TP {case.get('tp', entry.get('tp', 'N'))} against TP 1"
    )
    sharded = entry.get("not_comparable", 0)
    note = f"; {sharded} sharded outputs on rank 0 not compared" if sharded else ""
    if entry["status"] != "localized":
        redo = "" if all(entry.get("replay_matches_records", {}).values()) else ", and the replay did not reproduce"
        return (
            f"{head}: no whole module output differs through step {case['first_bit_step']}, where the records' "
            f"logits bits differ{note}{redo}"
        )
    module, layers = entry["module"], entry.get("layers_path", "")
    op = entry.get("operator") or {}
    ops = (
        "operators not compared: they run on rank 0's shard"
        if op.get("why") == "sharded"
        else "operators not captured across the group"
    )
    text = (
        f"{head}: the difference first shows at step {entry['step']} in {where(module['name'], layers)}, the first whole "
        f"output to differ ({_entered(entry, layers)}; {ops})"
    )
    text += _growth(entry, module)
    if not all(entry.get("replay_matches_records", {}).values()):
        text += " (the replay's logits are not bit for bit the run's: read it as this host's behaviour now)"
    return text + _flips(entry, case)


def line(entry: dict[str, Any]) -> str:
    case = entry["case"]
    if case["property"] == TP:
        return tp_line(entry)
    ref, cmp_ = case["reference"], case["compared"]
    head = (
        f"{case['profile']} {case['property']}: prompt {case['prompt_id']!r} in {cmp_['batch_id']} "
        f"(row {cmp_['position']} of {len(cmp_['batch'])}) against {ref['batch_id']}"
    )
    if entry["status"] != "localized":
        note = (
            ""
            if all(entry.get("replay_matches_records", {}).values())
            else " (the replay did not reproduce the recorded logits)"
        )
        return (
            f"{head}: no module differs through step {case['first_bit_step']}, where the records' logits bits "
            f"differ{note}"
        )
    solo = len(ref["batch"]) == 1 and case["property"] == "batch-invariance"
    labels = ("solo", "batched") if solo else ("reference", "compared")
    module = entry["module"]
    layers_path = entry.get("layers_path", "")
    text = (
        f"{head}: {VARIANCE.get(case['property'], 'the difference')} enters at step {entry['step']} in "
        f"{where(module['name'], layers_path)}"
    )
    if entry.get("first_output", module["name"]) != module["name"]:
        text += f"'s own code (before {where(entry['first_output'], layers_path)})"
    text += f" ({operator(entry.get('operator'), labels)}{_before(entry.get('code_before'), labels)})"
    if not entry.get("module_inputs_equal", True):
        text += " (its inputs already differ: the difference entered in code outside any module)"
    layers = entry.get("layers") or []
    if layers and layers[-1]["index"] >= module["index"]:
        text += f", grows to {layers[-1].get('max_abs', 0.0):.2g} by layer {layers[-1]['layer']}"
    if not all(entry.get("replay_matches_records", {}).values()):
        text += " (the replay's logits are not bit for bit the run's: read it as this host's behaviour now)"
    logits = entry.get("logits") or {}
    if logits.get("argmax_flips"):
        text += f", flips the argmax at step {logits['step']}"
    else:
        text += ", flips no token"
        if case.get("first_token_step") is not None:
            text += f" here (the run's tokens diverge at step {case['first_token_step']})"
    return text
