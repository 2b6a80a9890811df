"""One case replayed and localised in one process (the worker is harness.localize.worker).

Started like a run's worker (harness.runner: the job's own environment, so the same device, dtype, threads and
flags), it loads the job's adapter once and, per case, replays the reference batch and the compared batch side by
side with the recorded tokens (teacher forcing) through the adapter's own `encode` / `advance` / `forward`, the path
`generate` takes, so the same kernels run. Each forward pass up to the recorded first differing step is hooked: every
module's output for the compared row (padding dropped, positions aligned), in execution order. At the first pass
where a module's output bits differ, a second replay runs that module under a TorchDispatchMode that keeps every
operator's output for the row; the first operator whose output differs is named with both sides' input shapes.

"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ..fingerprint import fingerprint, to_hex
from . import dump as dumps
from .cases import Case, Side
from .compare import (
    Captured,
    Ctx,
    align,
    bits_equal,
    code_before,
    compare_pairs,
    first_difference,
    first_over,
    first_tensor,
    logits_metrics,
    take_row,
    tensors,
)


class Replay:
    """One batch, forward pass by forward pass, fed the recorded tokens (a row past its recorded end gets its own
    argmax, as generate() feeds a finished row)."""

    def __init__(self, adapter: Any, prompts: dict[str, dict[str, Any]], side: Side):
        from transformers import DynamicCache

        self.adapter, self.side = adapter, side
        self.ids, self.mask, self.pos = adapter.encode([prompts[p] for p in side.prompt_ids])
        self.cache = DynamicCache()
        self.step = -1  # the step whose logits the last pass gave
        self.rows, self.row = len(side.prompt_ids), side.position
        self.pad = int((self.mask[self.row] == 0).sum())
        self.ctx = Ctx(self.rows, self.row, self.ids.shape[1], self.ids.shape[1], self.pad)
        self.argmax: list[int] = []
        self.logits = torch.empty(0)

    def next(self) -> torch.Tensor:
        """The next forward pass; the compared row's logits."""
        if self.step < 0:
            out = self.adapter.forward(self.ids, self.mask, self.pos, self.cache)
        else:
            s = self.step
            fed = [t[s] if s < len(t) else self.argmax[r] for r, t in enumerate(self.side.tokens)]
            self.mask, self.pos = self.adapter.advance(self.mask, self.pos)
            self.ctx = Ctx(self.rows, self.row, 1, self.mask.shape[1], self.pad)
            nxt = torch.tensor(fed, dtype=self.ids.dtype, device=self.ids.device)[:, None]
            out = self.adapter.forward(nxt, self.mask, self.pos, self.cache)
        self.step += 1
        logits = out.logits[:, -1, :]
        self.argmax = logits.argmax(-1).tolist()
        self.logits = logits[self.row]
        return self.logits

    def matches_record(self) -> bool | None:
        """Whether this pass's logits fingerprint is the one the run recorded for the row (None: not recorded)."""
        if self.step >= len(self.side.fingerprints):
            return None
        return to_hex(fingerprint(self.logits[None]).tolist()[0]) == self.side.fingerprints[self.step]


def _label(name: str, model: Any) -> str:
    return name or type(model).__name__


@contextmanager
def module_outputs(model: Any, replay: Replay) -> Iterator[list[tuple[str, Captured]]]:
    """Every module's output for the replay's row, in the order the modules finish (a leaf before its parent)."""
    got: list[tuple[str, Captured]] = []
    calls: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def keep(mod: Any, args: Any, out: Any) -> None:
            t = first_tensor(out)
            if t is None:
                return
            k = calls.get(name, 0)
            calls[name] = k + 1
            c = take_row(t.detach(), replay.ctx)
            got.append((name if k == 0 else f"{name}#{k}", Captured(c.tensor.clone(), c.taken, c.shape)))

        return keep

    handles = [m.register_forward_hook(hook(_label(n, model))) for n, m in model.named_modules()]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
BACKEND = {"cpu": "CPU", "cuda": "CUDA", "npu": "PrivateUse1"}


def composite(func: Any, ins: list[torch.Tensor]) -> bool:
    """An operator the backend runs as its composite decomposition (no kernel of its own for this device): linear,
    matmul, scaled_dot_product_attention. Run the same decomposition with the mode on, to see the kernels it calls."""
    name = func.name()
    backend = BACKEND.get(ins[0].device.type) if ins else None
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return (
        backend is not None
        and has(name, COMPOSITE)
        and not has(name, getattr(torch._C.DispatchKey, backend))
        and not has(name, torch._C.DispatchKey.CompositeExplicitAutograd)
    )


class Operators(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch leaves the mode machinery unannotated
    """Every operator's outputs for the row while it is active, with the shapes of its tensor inputs (and, for a
    dump, the inputs themselves)."""

    def __init__(self, replay: Replay, keep_inputs: bool):
        super().__init__()  # type: ignore[no-untyped-call]
        self.replay, self.keep_inputs = replay, keep_inputs
        self.got: list[tuple[str, Captured]] = []
        self.inputs: list[list[list[int]]] = []  # per output kept: its operator's input shapes
        self.raw_inputs: list[list[torch.Tensor]] = []  # per output kept: its operator's inputs (for a dump)
        self.module_inputs: list[tuple[str, Captured]] = []  # the module's own tensor inputs, for the row
        self.output: Captured | None = None  # the module's output, for the row

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        ins = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if composite(func, ins):  # aten::linear: see the aten::mm it runs, as the dispatcher would run it
            with self:
                return func._op_dk(COMPOSITE, *args, **kwargs)
        kept = [a.detach().clone() for a in ins] if self.keep_inputs else []
        out = func(*args, **kwargs)
        name = func._schema.name
        for k, t in enumerate(tensors(out)):
            c = take_row(t.detach(), self.replay.ctx)
            self.got.append((name if k == 0 else f"{name}[{k}]", Captured(c.tensor.clone(), c.taken, c.shape)))
            self.inputs.append([list(a.shape) for a in ins])
            self.raw_inputs.append(kept)
        return out


class Enough(Exception):
    """Raised by the hook once the module has run: the rest of the forward pass is not needed."""


@contextmanager
def inside(model: Any, path: str, call: int, replay: Replay, keep_inputs: bool) -> Iterator[Operators]:
    """Operators (and the inputs) of one call of the module at `path` during the next forward pass, which stops
    there (Enough)."""
    module = _module(model, path)
    ops = Operators(replay, keep_inputs)
    seen = [0]
    active = [False]

    def pre(mod: Any, args: Any, kwargs: Any) -> None:
        if seen[0] == call:  # its data inputs (not positions or cache indices, which differ with the padding)
            data = (a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor) and a.is_floating_point())
            for i, t in enumerate(data):
                c = take_row(t.detach(), replay.ctx)
                ops.module_inputs.append((f"input{i}", Captured(c.tensor.clone(), c.taken, c.shape)))
            ops.__enter__()  # type: ignore[no-untyped-call]
            active[0] = True

    def post(mod: Any, args: Any, out: Any) -> None:
        if active[0]:
            ops.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            active[0] = False
            if (t := first_tensor(out)) is not None:
                c = take_row(t.detach(), replay.ctx)
                ops.output = Captured(c.tensor.clone(), c.taken, c.shape)
            raise Enough
        seen[0] += 1

    handles = [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]
    try:
        yield ops
    finally:
        if active[0]:
            ops.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        for h in handles:
            h.remove()


def _module(model: Any, path: str) -> Any:
    """The module a label names (the root is labelled by its class)."""
    return model if path == _label("", model) else model.get_submodule(path)


def _layers(model: Any) -> str:
    """The path of the model's stack of layers: its longest ModuleList ("model.layers")."""
    lists = [(len(m), n) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists)[1] if lists else ""


def _replays(adapter: Any, prompts: dict[str, dict[str, Any]], case: Case) -> tuple[Replay, Replay]:
    return Replay(adapter, prompts, case.reference), Replay(adapter, prompts, case.compared)


def _modules(
    adapter: Any, prompts: dict[str, dict[str, Any]], case: Case
) -> tuple[int | None, list[dict[str, Any]], tuple[Replay, Replay], tuple[Any, Any], dict[str, bool]]:
    """Forward passes 0 .. the recorded first differing step, both sides hooked: the first pass where a module's
    output differs for the row (None: none did), that pass's module comparison, the replays (stopped there), both
    sides' captured outputs, and whether each side's logits matched the run's recorded fingerprints."""
    model = adapter.model
    ref, other = _replays(adapter, prompts, case)
    matches = {"reference": True, "compared": True}
    modules: list[dict[str, Any]] = []
    got: tuple[Any, Any] = ([], [])
    for f in range(case.first_bit_step + 1):
        with module_outputs(model, ref) as got_a:
            ref.next()
        with module_outputs(model, other) as got_b:
            other.next()
        for side, r in (("reference", ref), ("compared", other)):
            matches[side] = matches[side] and r.matches_record() is not False
        modules, got = compare_pairs(got_a, ref.ctx, got_b, other.ctx), (got_a, got_b)
        if first_difference(modules) is not None:
            return f, modules, (ref, other), got, matches
    return None, modules, (ref, other), got, matches


def _parent(modules: list[dict[str, Any]], entry: dict[str, Any], root: str) -> dict[str, Any] | None:
    """The call of the module that holds `entry`'s module, during the same pass (it finishes after it)."""
    path = entry["name"].partition("#")[0]
    if path == root:
        return None
    up = path.rsplit(".", 1)[0] if "." in path else root
    return next(
        (
            e
            for e in modules
            if e["index"] > entry["index"] and e.get("why") != "different code" and e["name"].partition("#")[0] == up
        ),
        None,
    )


def _operators(
    adapter: Any, prompts: dict[str, dict[str, Any]], case: Case, step: int, entry: dict[str, Any], keep: bool
) -> tuple[Operators, Operators, Replay, Replay]:
    """Both sides replayed again to pass `step`, the module call `entry` names under the operator capture."""
    name = entry["name"] if entry["name"] != "nothing" else entry["other_name"]  # a module only one side ran
    path, _, call = name.partition("#")
    a, b = _replays(adapter, prompts, case)
    for _ in range(step):
        a.next(), b.next()
    with inside(adapter.model, path, int(call or 0), a, keep) as ops_a, contextlib.suppress(Enough):
        a.next()
    with inside(adapter.model, path, int(call or 0), b, keep) as ops_b, contextlib.suppress(Enough):
        b.next()
    return ops_a, ops_b, a, b


def localize(adapter: Any, prompts: dict[str, dict[str, Any]], case: Case, dump: Path | None) -> dict[str, Any]:
    """One case: the first forward pass, module and operator where the compared row's bits leave the reference's."""
    t0 = time.perf_counter()
    model = adapter.model
    step, modules, (ref, other), got, matches = _modules(adapter, prompts, case)
    la, lb = ref.logits, other.logits
    result: dict[str, Any] = {"replay_matches_records": matches, "dtype": str(la.dtype).removeprefix("torch.")}
    first = first_difference(modules)
    if step is None or first is None:
        return {
            **result,
            "status": "no module differs",
            "steps_compared": case.first_bit_step + 1,
            "logits": {"step": ref.step, **logits_metrics(la, lb)},
            "seconds": time.perf_counter() - t0,
        }
    while bits_equal(la, lb) and ref.step < case.first_bit_step:  # the hidden state moved first: the logits follow
        la, lb = ref.next(), other.next()
    logits = {"step": ref.step, **logits_metrics(la, lb)}
    # The first module whose output differs, replayed under the operator capture. Where its data inputs differ
    # already, the difference came from its parent's own code (attention between the projections): the parent then.
    entry = first
    while True:
        ops_a, ops_b, a2, b2 = _operators(adapter, prompts, case, step, entry, dump is not None)
        inputs_equal = all(
            e.get("equal") is not False for e in compare_pairs(ops_a.module_inputs, a2.ctx, ops_b.module_inputs, b2.ctx)
        )
        parent = None if inputs_equal else _parent(modules, entry, _label("", model))
        if parent is None:
            break
        entry = parent
    operators = compare_pairs(ops_a.got, a2.ctx, ops_b.got, b2.ctx)
    for e in operators:
        ia, ib = e["index"], e["other_index"]
        e["ref_inputs"] = ops_a.inputs[ia] if ia < len(ops_a.inputs) else []
        e["other_inputs"] = ops_b.inputs[ib] if ib < len(ops_b.inputs) else []
    op = first_difference(operators, unaligned=True)
    ran_both = entry.get("why") != "different code"
    i, j = entry["index"], entry["other_index"]
    repeats = ran_both and all(
        o.output is not None and bits_equal(o.output.tensor, g[k][1].tensor)
        for o, g, k in zip((ops_a, ops_b), got, (i, j))
    )
    layers = _layers(model)
    path = entry["name"] if entry["name"] != "nothing" else entry["other_name"]
    result.update(
        status="localized",
        step=step,
        module={**entry, "class": type(_module(model, path.partition("#")[0])).__name__},
        first_output=first["name"],  # the first module whose output differs (inside `module` when its code did it)
        module_inputs_equal=inputs_equal,
        operator=op,
        code_before=code_before(operators, op) if op is not None else None,
        operator_pass_repeats=repeats,  # the module's output under the operator capture is the one hooked before
        operators=operators,
        modules=modules,
        layers_path=layers,
        layers=[
            {"layer": int(e["name"].rsplit(".", 1)[1]), **e}
            for e in modules
            if layers and e["name"].startswith(layers + ".") and e["name"][len(layers) + 1 :].isdigit()
        ],
        logits=logits,
        **first_over(modules),
    )
    if dump is not None:
        pairs = [(path, align(got[0][i][1], ref.ctx, got[1][j][1], other.ctx) if ran_both else None)]
        pairs += [
            (
                f"op{e['index']:03d}-{e['name']}",
                align(ops_a.got[e["index"]][1], a2.ctx, ops_b.got[e["other_index"]][1], b2.ctx),
            )
            for e in operators
            if e.get("comparable")
        ]
        raw = (
            ([], [])
            if op is None or op.get("why") == "different code"
            else (ops_a.raw_inputs[op["index"]], ops_b.raw_inputs[op["other_index"]])
        )
        result["dump"] = str(dumps.write(dump, case, result, pairs, raw))
    result["seconds"] = time.perf_counter() - t0
    return result
