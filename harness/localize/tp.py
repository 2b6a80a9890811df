"""Tensor parallel localisation: a TP N job's sequence against its TP 1 twin (same batch, same row).

Two workers, each with its own job's environment. The TP N side runs as a torchrun group like the run's own workers
(`python -m harness.localize.tp SPEC.json` on every rank): every rank replays the compared batch with the recorded
tokens (the collectives need them all), and rank 0 keeps every module's output for the row at every pass up to the
records' first differing step, plus the input of each module whose output is whole after a collective (a
row-parallel layer's input gathered from every rank), and saves them (torch.save). The TP 1 side then replays its
batch in one process (harness.localize.worker, which calls `localize_tp` here), loads those captures and compares
pass by pass, module by module, only where rank 0's tensor is whole.

What is whole on rank 0 with transformers' tensor parallel plan: the output of a row-parallel layer (`o_proj`,
`down_proj`), whose forward ends with the all-reduce (checked on the tiny Llama: rank 0's `o_proj` output is TP 1's
to rounding, not a partial sum); the embedding (its vocabulary shards are summed); every module the plan leaves
replicated (norms, rotary embedding, decoder layers, attention and MLP blocks, whose outputs are their row-parallel
layers'); the logits (the column-parallel `lm_head` gathers its output). What is not: a column-parallel layer's
output (`q_proj`, `k_proj`, `v_proj`, `gate_proj`, `up_proj`: rank 0 holds its share of the heads or features) and
whatever is computed from it before the next row-parallel layer (`act_fn`). Those entries are marked `sharded` and
never counted as the first difference; rank 0's share is compared with the same features of TP 1 (`rank0_slice`) as
a hint. Operators inside a module that holds sharded layers work on shards and partial sums, so they are not
compared (`operator.why = "sharded"`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from .. import atomic, procgroup
from ..errors import USAGE
from . import dump as dumps
from .cases import Case
from .compare import (
    Captured,
    Ctx,
    align,
    bits_equal,
    compare_pairs,
    first_difference,
    first_over,
    logits_metrics,
    metrics,
    take_row,
)
from .load import Refused, load_adapter
from .replay import Replay, _layers, _module, module_outputs

SHARDED_OUTPUT = ("colwise",)  # rank 0's output holds its share of the features
SHARDED_INPUT = ("rowwise",)  # rank 0's input holds its share of the features; its output is whole (all-reduce)
WHOLE_INPUT = ("colwise_gather_output",)  # replicated input, output gathered: whole on both ends
Named = list[tuple[str, Captured]]  # captures in the order they were taken


def styles(model: Any) -> dict[str, str]:
    """Each module's tensor parallel style, from the model's own plan (`model.layers.*.self_attn.q_proj`: colwise)."""
    plan: dict[str, str] = getattr(model, "_tp_plan", None) or {}
    names = [n for n, _ in model.named_modules() if n]
    return {n: style for pattern, style in plan.items() for n in names if fnmatchcase(n, pattern)}


def _plain(name: str, c: Captured) -> dict[str, Any]:
    """A capture as torch.load(weights_only=True) reads it back: plain containers and CPU tensors."""
    return {"name": name, "tensor": c.tensor.detach().cpu(), "taken": c.taken, "shape": list(c.shape)}


def _captured(d: dict[str, Any], device: torch.device) -> tuple[str, Captured]:
    """A capture read back, on the TP 1 side's device."""
    return d["name"], Captured(d["tensor"].to(device), d["taken"], tuple(d["shape"]))


@contextmanager
def layer_inputs(
    model: Any, replay: Replay, named: dict[str, str], gather: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[list[tuple[str, Captured]]]:
    """The first data input of each module in `named` (path: style), for the replay's row: a row-parallel layer's
    input gathered from every rank along the features (`gather`, a collective: every rank runs it), so rank 0 holds
    the whole input that TP 1 multiplies."""
    got: list[tuple[str, Captured]] = []
    calls: dict[str, int] = {}

    def hook(name: str, style: str) -> Callable[..., None]:
        def keep(mod: Any, args: Any, kwargs: Any) -> None:
            data = (a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor) and a.is_floating_point())
            t = next(data, None)
            if t is None:  # no data input (the same on every rank: none of them gathers)
                return
            k = calls.get(name, 0)
            calls[name] = k + 1
            c = take_row(t.detach(), replay.ctx)
            row = gather(c.tensor.contiguous()) if style in SHARDED_INPUT else c.tensor.clone()
            shape = (*c.shape[:-1], row.shape[-1])
            got.append((name if k == 0 else f"{name}#{k}", Captured(row, c.taken, shape)))

        return keep

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n, s), with_kwargs=True) for n, s in named.items()]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def capture(adapter: Any, prompts: dict[str, dict[str, Any]], case: Case) -> dict[str, Any] | None:
    """Every rank: the compared batch replayed pass by pass up to the records' first differing step. Rank 0 returns
    what it kept (the others None): per pass the module outputs and the whole-making layers' inputs for the row,
    the row's logits and whether they are the run's."""
    import torch.distributed as dist

    model = adapter.model
    world, rank0 = dist.get_world_size(), dist.get_rank() == 0
    st = styles(model)
    inputs = {n: s for n, s in st.items() if s in SHARDED_INPUT + WHOLE_INPUT}

    def gather(t: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        return torch.cat(parts, dim=-1)

    replay = Replay(adapter, prompts, case.compared)
    passes = []
    for _ in range(case.first_bit_step + 1):
        outs_cm: AbstractContextManager[list[tuple[str, Captured]]] = (
            module_outputs(model, replay) if rank0 else nullcontext([])
        )
        with outs_cm as outs, layer_inputs(model, replay, inputs, gather) as ins:
            replay.next()
        if rank0:
            passes.append(
                {
                    "modules": [_plain(n, c) for n, c in outs],
                    "inputs": [_plain(n, c) for n, c in ins],
                    "logits": replay.logits.detach().cpu().clone(),
                    "matches": replay.matches_record(),
                }
            )
    return {"tp": world, "styles": st, "passes": passes} if rank0 else None


# ---- the TP 1 side: the comparison -------------------------------------------------------------------------------


def _head_dim(model: Any) -> int:
    cfg = getattr(model, "config", None)
    hd = getattr(cfg, "head_dim", None)
    if isinstance(hd, int) and hd > 0:
        return hd
    hidden, heads = getattr(cfg, "hidden_size", 0), getattr(cfg, "num_attention_heads", 0)
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else 0


def shard_text(path: str, held: int, whole: int, head_dim: int) -> str:
    """ "sharded: rank 0 holds heads 0..2 of 9": what rank 0's output is a share of."""
    leaf = path.partition("#")[0].rsplit(".", 1)[-1]
    if head_dim and leaf in ("q_proj", "k_proj", "v_proj") and held % head_dim == 0 and whole % head_dim == 0:
        what = "heads" if leaf == "q_proj" else "KV heads"
        return f"sharded: rank 0 holds {what} 0..{held // head_dim - 1} of {whole // head_dim}"
    return f"sharded: rank 0 holds features 0..{held - 1} of {whole}"


def mark_sharded(
    entries: list[dict[str, Any]],
    ours: list[tuple[str, Captured]],
    theirs: list[tuple[str, Captured]],
    ctx: Ctx,
    st: dict[str, str],
    head_dim: int,
) -> list[dict[str, Any]]:
    """Module entries with rank 0's sharded outputs marked not comparable (`why: sharded`, `equal: None`, so never the
    first difference), each with rank 0's share compared against the same features of TP 1 (`rank0_slice`); whole
    outputs of a parallel layer carry its style (`tp_style`)."""
    out = []
    for e in entries:
        if e.get("why") == "different code":
            out.append(e)
            continue
        path = e["name"].partition("#")[0]
        style = st.get(path, "")
        a, b = ours[e["index"]][1], theirs[e["other_index"]][1]
        if e["ref_shape"] == e["other_shape"] and style not in SHARDED_OUTPUT:
            out.append({**e, "tp_style": style} if style else e)
            continue
        held, whole = b.tensor.shape[-1], a.tensor.shape[-1]
        kept = {k: v for k, v in e.items() if k in ("index", "other_index", "name", "ref_shape", "other_shape")}
        marked: dict[str, Any] = {
            **kept,
            "equal": None,
            "comparable": False,
            "why": "sharded",
            "shard": shard_text(path, held, whole, head_dim),
            "tp_style": style or "computed from a sharded input",
        }
        if held <= whole and a.tensor.shape[:-1] == b.tensor.shape[:-1]:
            pair = align(Captured(a.tensor[..., :held], a.taken, a.shape), ctx, b, ctx)
            if pair is not None:
                marked["rank0_slice"] = metrics(*pair)
        out.append(marked)
    return out


def compare_pass(
    ours: list[tuple[str, Captured]], theirs: list[tuple[str, Captured]], ctx: Ctx, st: dict[str, str], head_dim: int
) -> list[dict[str, Any]]:
    """One pass's module outputs, TP 1 against rank 0 of TP N: both sides ran the same batch, so one Ctx serves."""
    return mark_sharded(compare_pairs(ours, ctx, theirs, ctx), ours, theirs, ctx, st, head_dim)


def _ranks_differing(ours: torch.Tensor, theirs: torch.Tensor, n: int) -> list[int]:
    """The ranks whose share of a gathered input (equal chunks along the features) differs from TP 1's."""
    return [r for r, (x, y) in enumerate(zip(ours.chunk(n, -1), theirs.chunk(n, -1))) if not bits_equal(x, y)]


def _first_sharded(modules: list[dict[str, Any]], before: int) -> dict[str, Any] | None:
    """The first sharded module (before index `before`) whose rank-0 share differs from the same features of TP 1."""
    return next(
        (
            e
            for e in modules
            if e.get("why") == "sharded" and e["index"] < before and (e.get("rank0_slice") or {}).get("equal") is False
        ),
        None,
    )


def enters(
    entry: dict[str, Any],
    modules: list[dict[str, Any]],
    ours_in: list[tuple[str, Captured]],
    theirs_in: list[tuple[str, Captured]],
    ctx: Ctx,
    n: int,
) -> dict[str, Any]:
    """Where the difference can be said to enter, given the first whole module whose output differs: for a
    row-parallel layer, whether its whole input (gathered from the N ranks) is TP 1's; if it is, the partial
    products and their all-reduce (another order of the sum) made the difference."""
    style = entry.get("tp_style", "")
    mine = dict(ours_in)
    other = dict(theirs_in)
    name = entry["name"]
    if name not in mine or name not in other:
        return {
            "at": "module",
            "inputs_compared": False,
            "detail": "a replicated module whose inputs were not captured across the group",
        }
    pair = align(mine[name], ctx, other[name], ctx)
    if pair is None:
        return {"at": "module", "inputs_compared": False, "detail": "its inputs do not line up row by row"}
    m = metrics(*pair)
    out: dict[str, Any] = {"input": m, "inputs_compared": True}
    if style in SHARDED_INPUT:
        if m["equal"]:
            return {
                **out,
                "at": "all-reduce",
                "detail": f"its input, gathered from the {n} ranks, is bit-identical to TP 1's: the difference enters "
                f"in the row-parallel product ({n} partial matmuls over 1/{n} of the features each, summed by the "
                "all-reduce: another summation order)",
            }
        ranks = _ranks_differing(*pair, n)
        first = _first_sharded(modules, entry["index"])
        seen = (
            f"; rank 0's share first differs at {first['name']} ({first['shard']}, "
            f"{first['rank0_slice']['ulps']:.2g} ulp)"
            if first
            else ""
        )
        return {
            **out,
            "at": "sharded code",
            "ranks_differing": ranks,
            "first_sharded": first["name"] if first else None,
            "detail": f"its input, gathered from the {n} ranks, already differs (in the share of rank(s) "
            f"{', '.join(map(str, ranks))}): the difference entered in the sharded code before it{seen}",
        }
    if m["equal"]:
        return {
            **out,
            "at": "module",
            "detail": "its input is bit-identical: the difference enters in its column-parallel product over each "
            "rank's share of the outputs (a narrower matmul), gathered",
        }
    return {**out, "at": "before", "detail": "its input already differs"}


def _has_parallel(path: str, st: dict[str, str]) -> str:
    """The first parallel layer at or under `path` ("": none: the module and its operators are replicated)."""
    return next((n for n in st if n == path or n.startswith(path + ".")), "")


def operator_note(path: str, st: dict[str, str], n: int) -> dict[str, Any]:
    """Why the operator level is not given for a TP case: what the operators inside the module hold on rank 0."""
    inner = _has_parallel(path, st)
    if inner == path and st[path] in SHARDED_INPUT:
        detail = (
            f"its matmul multiplies rank 0's 1/{n} of the input features into a partial sum that the all-reduce "
            "completes; TP 1 multiplies all of them at once: no operator inside holds the same tensor on both sides"
        )
    elif inner:
        detail = (
            f"its operators work on rank 0's share ({inner} is {st[inner]}: 1/{n} of the heads or features, or a "
            "partial sum): no operator inside holds the same tensor on both sides"
        )
    else:
        return {
            "why": "not captured",
            "detail": "a replicated module: its operators are whole on both sides, but the operator capture runs in "
            "one process and the TP side is a worker group (not done)",
        }
    return {"why": "sharded", "detail": detail}


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = torch.load(path, weights_only=True)
    return data


def localize_tp(
    adapter: Any, prompts: dict[str, dict[str, Any]], case: Case, captures: Path, dump: Path | None
) -> dict[str, Any]:
    """One TP case on the TP 1 side: the reference batch replayed pass by pass against the group's captures."""
    t0 = time.perf_counter()
    cap = _load(captures)
    model, st, n = adapter.model, cap["styles"], int(cap["tp"])
    hd = _head_dim(model)
    named = {p: s for p, s in st.items() if s in SHARDED_INPUT + WHOLE_INPUT}
    ref = Replay(adapter, prompts, case.reference)
    matches = {"reference": True, "compared": all(p["matches"] is not False for p in cap["passes"])}
    step: int | None = None
    modules: list[dict[str, Any]] = []
    ours: tuple[Named, Named] = ([], [])  # module outputs, layer inputs
    theirs: tuple[Named, Named] = ([], [])
    for f, other in enumerate(cap["passes"]):
        with module_outputs(model, ref) as got, layer_inputs(model, ref, named, lambda t: t.clone()) as got_in:
            ref.next()
        matches["reference"] = matches["reference"] and ref.matches_record() is not False
        dev = ref.logits.device
        ours = (got, got_in)
        theirs = ([_captured(d, dev) for d in other["modules"]], [_captured(d, dev) for d in other["inputs"]])
        modules = compare_pass(ours[0], theirs[0], ref.ctx, st, hd)
        if first_difference(modules) is not None:
            step = f
            break
    la = ref.logits
    lb = cap["passes"][ref.step]["logits"].to(la.device)
    result: dict[str, Any] = {"replay_matches_records": matches, "dtype": str(la.dtype).removeprefix("torch."), "tp": n}
    sharded = sum(e.get("why") == "sharded" for e in modules)
    first = first_difference(modules)
    if step is None or first is None:
        return {
            **result,
            "status": "no module differs",
            "steps_compared": len(cap["passes"]),
            "not_comparable": sharded,
            "logits": {"step": ref.step, **logits_metrics(la, lb)},
            "seconds": time.perf_counter() - t0,
        }
    ctx = ref.ctx
    while bits_equal(la, lb) and ref.step < case.first_bit_step:  # the hidden state moved first: the logits follow
        la = ref.next()
        lb = cap["passes"][ref.step]["logits"].to(la.device)
    path = first["name"].partition("#")[0]
    where = enters(first, modules, ours[1], theirs[1], ctx, n)
    layers = _layers(model)
    result.update(
        status="localized",
        step=step,
        module={**first, "class": type(_module(model, path)).__name__},
        first_output=first["name"],
        module_inputs_equal=where["input"]["equal"] if where.get("inputs_compared") else None,
        enters=where,
        operator=operator_note(path, st, n),
        code_before=None,
        operator_pass_repeats=None,
        operators=[],
        modules=modules,
        not_comparable=sharded,
        layers_path=layers,
        layers=[
            {"layer": int(e["name"].rsplit(".", 1)[1]), **e}
            for e in modules
            if layers and e["name"].startswith(layers + ".") and e["name"][len(layers) + 1 :].isdigit()
        ],
        logits={"step": ref.step, **logits_metrics(la, lb)},
        **first_over(modules),
    )
    if dump is not None:
        i, j = first["index"], first["other_index"]
        pairs = [(first["name"], align(ours[0][i][1], ctx, theirs[0][j][1], ctx))]
        if where.get("inputs_compared"):
            a, b = dict(ours[1])[first["name"]], dict(theirs[1])[first["name"]]
            pairs.append((f"{first['name']}.input", align(a, ctx, b, ctx)))
        result["dump"] = str(dumps.write(dump, case, result, pairs, ([], [])))
    result["seconds"] = time.perf_counter() - t0
    return result


# ---- the group's worker: `python -m harness.localize.tp SPEC.json` on every rank ---------------------------------


def run(spec: dict[str, Any]) -> int:
    import torch.distributed as dist

    try:
        job, adapter, load_s = load_adapter(spec, group=True)
    except Refused as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code
    prompts = {p["id"]: p for p in job.prompts}
    try:
        with torch.inference_mode():
            for c, where in zip(spec["cases"], spec["captures"]):
                kept = capture(adapter, prompts, Case.from_dict(c))
                if kept is not None:
                    torch.save(kept, where)
        if dist.get_rank() == 0:
            atomic.write_json(Path(spec["out"]), {"load_s": load_s, "tp": dist.get_world_size()})
    finally:
        adapter.close()
        dist.destroy_process_group()
    return 0


def main(argv: list[str]) -> int:
    procgroup.watch_parent()  # torchrun that died takes its ranks with it
    if len(argv) != 1:
        print("usage: python -m harness.localize.tp SPEC.json (under torchrun)", file=sys.stderr)
        return USAGE
    return run(json.loads(Path(argv[0]).read_text(encoding="utf-8")))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
