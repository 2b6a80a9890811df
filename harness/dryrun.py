"""`--dry-run`: everything a run does before its first worker, and nothing after it.

`harness run --dry-run` (and `nox -s determinism -- --dry-run` through the pytest plugin, `harness signoff --dry-run`,
`harness doctor --dry-run`) validates the suites, reads the model's config.json (heads, KV heads, layers, sizes,
dtype, context; MoE and MLA said with what the harness does with them), resolves the degrees, checks them and every
prompt against the model as a real run does, and lists the jobs: each worker's command, the variables the harness
sets on top of the inherited environment (runner.worker_env and child_env, as a real run builds them), and for every
flag the library that reads it and whether this path loads that library (harness.profiles). No weights are loaded,
no model is converted, no torch or torch_npu is imported and no run folder is created, so the nightly's exact
command can be checked on any CPU host for `--device npu`. Exit 0 when the run would start; where a real run would
stop before its first worker, the same exit-2 line.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from tabulate import tabulate

from . import degrees, envinfo, group, modelinfo, plan, profiles, runner
from .errors import USAGE, HarnessError
from .options import Options
from .outcome import Check, Kind, Outcome, items
from .suite import Suite

RUN_DIR = Path("<out>/<run-id>")  # the folder a real run would create
STATUS = {
    profiles.READ: "read",
    profiles.MAYBE: "may be read",
    profiles.NOT_READ: "set, not read",
    profiles.UNKNOWN: "unknown",
}


def execute(kind: Kind, suite: Any, opts: Options) -> Outcome:
    """The plan as an Outcome: every check the run would report, skipped; the plan on the console. Raises
    HarnessError(USAGE) with the real run's line wherever the real run would stop before its first worker."""
    if isinstance(suite, Suite) and (why := suite.skipped_here()):
        head = f"dry run of {suite.path} ({kind.name}): {why}"
        checks = [Check(g, n, "skipped", why) for g, n in kind.items(suite)]
        return Outcome(
            0, f"{head}\nresult: the run would skip this suite (exit 0); nothing ran", Path(opts.out), checks
        )
    if isinstance(suite, Suite):
        lines = suite_plan(suite)
    elif hasattr(suite, "settings") and hasattr(suite, "model_ref"):
        lines = loadtime_plan(suite)
    else:
        lines = [f"kind {kind.name!r}: the suite is valid; this kind has no plan of its own to show"]
    head = f"dry run of {getattr(suite, 'path', '?')} ({kind.name}): nothing loaded, no run folder created"
    checks = [Check(g, n, "skipped", "dry run: planned, not run") for g, n in items(kind, suite)]
    console = "\n".join([head, *lines, "result: the run would start (exit 0); nothing ran"])
    return Outcome(0, console, Path(opts.out), checks)


# ---- the model ----------------------------------------------------------------------------------------------


def model_info(ref: str) -> modelinfo.ModelInfo:
    """The model as `runner.prepare_model` would find it, without converting it: its errors are the same lines."""
    info = modelinfo.read(ref)
    if info.unusable:
        raise HarnessError(info.problem, USAGE)
    return info


def prepared(ref: str) -> Path | None:
    """The doctor's model folder under --dry-run: the folder a run would load, or None while it is not converted."""
    info = model_info(ref)
    return Path(info.directory) if info.directory else None


def model_table(info: modelinfo.ModelInfo, dtype: str) -> str:
    def n(v: int | None) -> str:
        return f"{v:,}" if v is not None else "?"

    ctx = f"{info.context[0]:,} tokens ({info.context[1]})" if info.context else "not stated: left to the engine"
    rows = [
        ("read from", info.source or "?"),
        ("architecture", f"{info.architecture or '?'} ({info.model_type or '?'})"),
        ("attention heads / KV heads", f"{n(info.heads)} / {n(info.kv_heads)}"),
        ("layers / hidden size", f"{n(info.layers)} / {n(info.hidden)}"),
        ("dtype", f"{info.dtype or '?'} in the checkpoint; the suite loads it as {dtype}"),
        ("context", ctx),
        ("weights", info.weights or "?"),
        ("before the first worker", info.prepare or "loaded as it is (no conversion)"),
    ]
    return tabulate(rows, headers=[f"model {info.ref}", ""], tablefmt="github")


# ---- determinism and served suites --------------------------------------------------------------------------


def suite_plan(suite: Suite) -> list[str]:
    out: list[str] = [f"device {suite.model.device}, adapter {suite.model.adapter}, dtype {suite.model.dtype}"]
    served_by_name = suite.endpoint is not None and (suite.server is None or "{model}" not in suite.server.command)
    model_dir = Path(suite.model.ref)
    if served_by_name:
        out.append(f"model {suite.model.ref!r}: a name the server resolves; no model folder is read")
    else:
        info = model_info(suite.model.ref)
        degrees.check_info(suite, info)  # the real run's line, exit 2
        if info.directory:
            model_dir = Path(info.directory)
            plan.check_context(suite, model_dir)  # the real run's line, exit 2
        else:
            out.append("prompt lengths: checked against the context once the model is converted")
        out += ["", model_table(info, suite.model.dtype), *(f"- {s}" for s in info.special)]
    batches = plan.expand(suite)
    par = suite.parallel
    out.append("")
    if par.multi:
        out.append(f"degrees: {', '.join(map(str, par.tp))}" + (f" ({par.why})" if par.why else ""))
        if note := degrees.device_note(suite):
            out.append(f"note: {note}")
    jobs = planned_jobs(suite, batches, model_dir)
    rows = [(j["name"], j["profile"], j["tp"], j["sequences"], j["path"]) for j in jobs]
    out.append(tabulate(rows, headers=["job", "profile", "tp", "sequences", "path"], tablefmt="github"))
    out += ["", "each worker: this shell's environment plus the variables below (child_env adds PYTHONPATH)"]
    for j in jobs:
        out.append(f"- {j['name']}: {j['command']}")
        out.append(f"  env: {' '.join(f'{k}={shlex.quote(v)}' for k, v in j['env'].items()) or '(none added)'}")
        out += [f"  {extra}" for extra in j["extra"]]
    inherited = envinfo.relevant_env({k: v for k, v in os.environ.items() if not k.startswith("HARNESS_")})
    out.append(
        "inherited by every worker from this shell (the variables that shape determinism): "
        + (", ".join(f"{k}={v}" for k, v in inherited.items()) or "none")
    )
    out += ["", flag_table(suite)]
    notes = [
        f"profile {p.name}: {n}" for p in suite.profiles if (n := profiles.note(p, suite.model.device, paths(suite)))
    ]
    notes += [n] if (n := profiles.flags_note(suite)) else []
    notes += [f"profiles left out on {suite.model.device}: {', '.join(suite.left_out)}"] if suite.left_out else []
    if any(tp > 1 for tp in par.tp):
        notes.append(
            f"OMP_NUM_THREADS above is this host's {group.cores()} core(s) shared by the largest group; on the runner "
            "it is the runner's cores shared the same way"
        )
    out += [f"note: {n}" for n in notes]
    return out


def paths(suite: Suite) -> list[profiles.RunPath]:
    return [profiles.run_path(suite, tp) for tp in suite.parallel.tp]


def planned_jobs(suite: Suite, batches: list[plan.Batch], model_dir: Path) -> list[dict[str, Any]]:
    """The jobs pipeline.run_profiles starts, in its order, each with its command and environment."""
    par, n = suite.parallel, plan.count_sequences(batches)
    out = []
    for prof in suite.profiles:
        for tp in par.tp if suite.endpoint is None else (1,):
            if tp == 1 and par.node_rank > 0:
                continue  # one process runs on node 0 alone
            job = runner.make_job(suite, prof, batches, model_dir, RUN_DIR, tp)
            env: dict[str, str | None] = dict(prof.env)
            extra: list[str] = []
            argv = [sys.executable, "-m", "harness.worker", str(RUN_DIR / "jobs" / f"{job.name}.json")]
            if suite.server is not None:
                flags = " ".join(f"{k}={shlex.quote(v)}" for k, v in prof.env) or "(none added)"
                extra.append(f"server: {suite.server.command}")
                extra.append(f"  its env: this shell's plus {flags}; the worker above only sends it requests")
                env = {}
            elif suite.endpoint is not None:
                extra.append(
                    f"a server already running at {suite.endpoint.base_url}: the profile's variables cannot reach it"
                )
                env = {}
            elif tp > 1:
                fixed = dataclasses.replace(par, rdzv_endpoint=par.rdzv_endpoint or "127.0.0.1:<free port>")
                marker = f"<run-id>/{job.name}/<pid>"
                launch = group.launch(
                    job.name,
                    tp,
                    fixed,
                    RUN_DIR / "jobs" / f"{job.name}.json",
                    RUN_DIR / "logs" / f"{job.name}.ranks",
                    marker,
                )
                argv, env = launch.argv, runner.worker_env(env, launch=launch)
                backend = profiles.BACKENDS.get(suite.model.device, "gloo").lower()
                extra.append(
                    f"torchrun adds per rank: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT; "
                    f"each rank joins a {backend} process group"
                )
            else:
                env = runner.worker_env(env, par)
            shown = {k: v for k, v in sorted(env.items()) if v is not None}
            unset = sorted(k for k, v in env.items() if v is None)
            extra += [f"unset: {', '.join(unset)}"] if unset else []
            out.append(
                {
                    "name": job.name,
                    "profile": prof.name,
                    "tp": tp,
                    "sequences": n,
                    "path": profiles.run_path(suite, tp).describe(),
                    "command": shlex.join(argv),
                    "env": {**shown, "PYTHONPATH": runner.child_env({})["PYTHONPATH"]},
                    "extra": extra,
                }
            )
    return out


def flag_table(suite: Suite) -> str:
    """Every variable and switch each profile sets, the library that reads it, and per degree whether this path
    loads that library."""
    ps = paths(suite)
    rows = []
    for prof in suite.profiles:
        flags: list[tuple[str, str]] = list(prof.env)
        if prof.torch_deterministic:
            flags.append((profiles.TORCH_DETERMINISTIC, "True"))
        for name, value in flags:
            lib = profiles.reader(name)
            status = [STATUS[p.status(name)] if lib else "not a known switch" for p in ps]
            if name == profiles.TORCH_DETERMINISTIC and suite.model.device == "npu":
                lib = "ATen; torch_npu passes it to aclnn"
            does = profiles.FLAGS[name].does if name in profiles.FLAGS else ""
            rows.append((prof.name, cell(f"{name}={value}"), lib or "-", *status, cell(does)))
    if not rows:
        return "flags: no profile sets any variable or switch"
    heads = ["profile", "flag", "read by", *(f"tp{p.tp}" if suite.parallel.multi else "on this path" for p in ps)]
    return tabulate(rows, headers=[*heads, "what it does"], tablefmt="github")


def cell(text: str) -> str:
    """A table cell: a `|` in a value would end it."""
    return text.replace("|", "\\|")


# ---- load-time suites ---------------------------------------------------------------------------------------


def loadtime_plan(suite: Any) -> list[str]:
    info = model_info(suite.model_ref)
    loads = len(suite.settings) * suite.repeats * (2 if suite.drop_caches else 1)
    rows = [
        (
            f"omp-{st}",
            f"OMP_NUM_THREADS={st}" if st != "unset" else "OMP_NUM_THREADS unset",
            suite.repeats,
            "cold and warm" if suite.drop_caches else "warm",
        )
        for st in suite.settings
    ]
    out = [
        f"device {suite.device}, dtype {suite.dtype}",
        "",
        model_table(info, suite.dtype),
        "",
        tabulate(rows, headers=["setting", "worker env", "rounds", "loads"], tablefmt="github"),
        f"{loads} loads of the suite's model, each in a fresh worker: python -m harness.worker <out>/<run-id>/jobs/...",
    ]
    if suite.sizes:
        sizes = ", ".join(f"{s:g}B" for s in suite.sizes)
        out.append(
            f"synthetic checkpoints generated first (a child process each): {sizes}, {suite.size_repeats} rounds"
        )
    return out
