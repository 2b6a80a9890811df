"""Tensor parallel degrees that fit the model and the devices.

`tp = "auto"` in [parallel] (or `--tp auto`) runs every degree that divides the model's attention and KV heads
(transformers shards heads whole), up to the devices visible to the run: ASCEND_RT_VISIBLE_DEVICES on npu (else
/dev/davinciN, else one), CUDA_VISIBLE_DEVICES on cuda (else /dev/nvidiaN, else one). On CPU the "devices" of a gloo
group are processes that share the cores (torchrun oversubscribes them; harness.group gives each rank its share of
threads), so the cores do not cap the degree: `[parallel] max` (default 8) does, on every device. With one device
visible, or no degree above 1 that divides the heads, degree 1 runs alone and the tp-invariance check is skipped
with one line saying why. The degrees are chosen when the suite loads, from the model's files (harness.modelinfo:
no conversion, no torch), so the pytest items and the dry run name them; a fixed list is taken as written and
checked against the prepared model's heads before any worker starts (`check`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path

from . import modelinfo
from .errors import USAGE, HarnessError
from .suite import Suite

DEFAULT_MAX = 8
VISIBLE = {"npu": ("ASCEND_RT_VISIBLE_DEVICES", "davinci"), "cuda": ("CUDA_VISIBLE_DEVICES", "nvidia")}


def visible_devices(
    device: str, environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")
) -> tuple[int | None, str]:
    """How many devices a run on `device` may use, and where that was read; None on CPU (not a limit there)."""
    if device not in VISIBLE:
        return None, "on CPU a gloo group's ranks are processes sharing the cores, so only [parallel] max caps them"
    var, node = VISIBLE[device]
    env = os.environ if environ is None else environ
    if var in env:
        ids = [x for x in env[var].split(",") if x.strip()]
        return len(ids), f"{var}={env[var]}"
    try:
        found = [p for p in dev.iterdir() if re.fullmatch(rf"{node}\d+", p.name)]
    except OSError:
        found = []
    if found:
        return len(found), f"{len(found)} x {dev}/{node}N, {var} unset"
    return 1, f"{var} unset and no {dev}/{node}N: one device assumed"


def auto_degrees(info: modelinfo.ModelInfo, per_host: int | None, nnodes: int, most: int) -> tuple[int, ...]:
    """Divisors of the heads up to `most`, each spread evenly over the hosts within the devices of one host."""
    return tuple(
        d
        for d in info.divisors
        if d == 1 or (d <= most and d % nnodes == 0 and (per_host is None or d // nnodes <= per_host))
    )


def resolve(suite: Suite, environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> Suite:
    """The suite with `tp = "auto"` replaced by the degrees that fit; a fixed list is returned as it is."""
    par = suite.parallel
    if not par.auto:
        return suite
    info = modelinfo.read(suite.model.ref)
    if info.unusable:  # the line a real run's preparation gives
        raise HarnessError(info.problem, USAGE)
    if info.heads is None:
        raise HarnessError(
            f'{suite.path}: parallel.tp = "auto" needs the model\'s attention heads: {info.problem}; give the '
            "degrees instead (tp = [1, 4], or --tp 1,4)",
            USAGE,
        )
    count, where = visible_devices(suite.model.device, environ, dev)
    tp = auto_degrees(info, count, par.nnodes, par.max_tp)
    heads = f"the model's {info.heads} attention and {info.kv_heads} KV heads"
    if len(tp) > 1:
        cap = f"up to {par.max_tp} ([parallel] max)" if count is None else f"up to {count * par.nnodes} devices"
        why = f'tp = "auto": degrees {", ".join(map(str, tp))} divide {heads}, {cap}; {where}'
    elif count == 1 and len(info.divisors) > 1:
        why = f'tp = "auto": one device visible ({where}): the tensor parallel checks are skipped, degree 1 runs alone'
    else:
        why = (
            f'tp = "auto": no degree above 1 divides {heads} within {par.max_tp if count is None else count} '
            "device(s): the tensor parallel checks are skipped, degree 1 runs alone"
        )
    return dataclasses.replace(suite, parallel=dataclasses.replace(par, tp=tp, why=why))


def device_note(suite: Suite, environ: Mapping[str, str] | None = None, dev: Path = Path("/dev")) -> str:
    """A fixed degree larger than the devices this host shows: the group would not find its devices."""
    par = suite.parallel
    count, where = visible_devices(suite.model.device, environ, dev)
    need = max(par.tp) // par.nnodes
    if par.auto or count is None or need <= count:
        return ""
    return f"parallel.tp: degree {max(par.tp)} needs {need} devices on this host, {count} visible ({where})"


def check(suite: Suite, model_dir: Path) -> None:
    """Every degree must divide the model's attention and KV heads (transformers shards heads whole): one line and
    exit 2 before any worker starts, instead of a shape error in every rank."""
    if any(tp > 1 for tp in suite.parallel.tp):
        check_info(suite, modelinfo.from_config(Path(model_dir) / "config.json", suite.model.ref))


def check_info(suite: Suite, info: modelinfo.ModelInfo) -> None:
    """`check` against facts already read (the dry run's, from a GGUF header before its conversion)."""
    if not any(tp > 1 for tp in suite.parallel.tp):
        return
    if info.heads is None:
        raise HarnessError(
            f"{suite.path}: parallel.tp: cannot read the model's head counts: {info.problem}",
            USAGE,
        )
    bad = [tp for tp in suite.parallel.tp if tp not in info.divisors]
    if bad:
        raise HarnessError(
            f"{suite.path}: parallel.tp: degree {bad[0]} does not divide the model's {info.heads} attention heads and "
            f"{info.kv_heads} KV heads; use degrees that divide both: {', '.join(map(str, info.divisors))}",
            USAGE,
        )
