"""Suite files into the frozen Suite: every table and key checked, one SuiteError line (file, key, what was
expected) for anything wrong. The data model is harness.suite, which never imports this module: `load` and `parse`
are imported from here."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .analysis.determinism import EXPECTATIONS
from .paths import SAFE_RULE, safe_name, shown
from .plan import size_problem
from .serving.spec import parse_endpoint, parse_server
from .suite import (
    BASELINE_LEVELS,
    DEVICES,
    DTYPES,
    LATENCY_METRICS,
    PROPERTIES,
    SCHEDULE_PARAMS,
    SUITE_FORMAT,
    BaselinePolicy,
    Generation,
    Localize,
    ModelSpec,
    Parallel,
    Perf,
    Profile,
    Prompt,
    Schedule,
    Suite,
)
from .suite_env import env_table
from .suite_prompts import parse_prompts
from .tomltable import Rule, Table, did_you_mean, read_toml


def load(path: str | Path) -> Suite:
    """The suite in a TOML file."""
    return parse(read_toml(path), str(path), base=Path(path).parent)


def parse_head(root: Table) -> tuple[str, int, str, tuple[str, ...]]:
    """The [suite] table every suite kind starts with: (name, seed, description, the devices it runs on)."""
    head = root.sub("suite")
    name = head.get("name", str, expect='a name such as "determinism"')
    if not safe_name(name):  # it names the run directory and the baseline folder
        raise head.fail("name", f"{shown(name)} {SAFE_RULE}")
    version = head.get("version", int, expect=f"the suite format version, {SUITE_FORMAT}")
    if version != SUITE_FORMAT:
        raise head.fail("version", f"unsupported suite format {version}; this harness reads version {SUITE_FORMAT}")
    seed = head.get("seed", int, 0)
    description = head.get("description", str, "")
    devices = head.get(
        "devices",
        list,
        list(DEVICES),
        check=lambda v: bool(v) and all(d in DEVICES for d in v),
        expect=f"a non-empty list of {', '.join(DEVICES)}: the devices this suite means something on",
    )
    head.done()
    return name, seed, description, tuple(devices)


def parse_model(root: Table) -> ModelSpec:
    m = root.sub("model", {})
    model = ModelSpec(
        ref=m.get("ref", str, ModelSpec.ref),
        dtype=m.get("dtype", str, ModelSpec.dtype, check=lambda v: v in DTYPES, expect=f"one of {', '.join(DTYPES)}"),
        device=m.get(
            "device", str, ModelSpec.device, check=lambda v: v in DEVICES, expect=f"one of {', '.join(DEVICES)}"
        ),
        adapter=m.get("adapter", str, ModelSpec.adapter),
    )
    m.done()
    return model


def parse(data: dict[str, Any], p: str, base: Path | None = None) -> Suite:
    """A suite from parsed TOML; relative prompt and attachment paths are read beside `base` (default: here)."""
    base = base or Path(".")
    root = Table(p, "", data)
    name, seed, description, devices = parse_head(root)
    model = parse_model(root)

    g = root.sub("generation", {})
    gen = Generation(
        max_new_tokens=g.get(
            "max_new_tokens", int, 64, check=lambda v: 1 <= v <= 32768, expect="an integer in [1, 32768]"
        ),
        greedy=g.get(
            "greedy",
            bool,
            True,
            check=lambda v: v,
            expect="true (only greedy decoding is deterministic by construction)",
        ),
        top_logprobs=g.get("top_logprobs", int, 5, check=lambda v: 2 <= v <= 100, expect="an integer in [2, 100]"),
    )
    gen = dataclasses.replace(
        gen,
        close_k=g.get(
            "close_k",
            int,
            0,
            check=lambda v: 0 <= v <= gen.top_logprobs,
            expect=f"0 (all {gen.top_logprobs} captured) or an integer in [1, top_logprobs]",
        ),
    )
    g.done()

    prompts = parse_prompts(root.sub("prompts"), base)

    r = root.sub("run", {})
    timeout = float(
        r.get("timeout_s", (int, float), 1800, check=lambda v: v > 0, expect="a positive number of seconds")
    )
    r.done()

    perf = _perf(root.sub("perf")) if "perf" in data else None
    parallel = _parallel(root.sub("parallel", {}))
    if parallel.multi and perf is not None:
        raise root.fail(
            "parallel.tp",
            "a [perf] suite times one process per profile; run tensor parallel degrees in a suite without [perf]",
        )
    policy = _baseline_policy(root.sub("baselines", {}))
    localize = _localize(root.sub("localize", {}))
    raw = root.get("schedules", list, expect="a list of [[schedules]] tables")
    if not raw:
        raise root.fail("schedules", 'empty; add at least a [[schedules]] kind = "solo"')
    schedules = tuple(_schedule(Table(p, f"schedules[{i}]", s), seed, prompts) for i, s in enumerate(raw))
    names = [s.name for s in schedules]
    for n in names:
        if names.count(n) > 1:
            raise root.fail("schedules", f"two schedules named {n!r}; give one a distinct `name`")
    if any(s.property == "batch-invariance" for s in schedules) and not any(s.kind == "solo" for s in schedules):
        raise root.fail("schedules", 'batch-invariance schedules need a kind = "solo" schedule as their reference')

    pt = root.sub("profiles")
    if not pt.data:
        raise root.fail("profiles", "empty; add at least [profiles.default]")
    for n in pt.data:
        if not safe_name(n):  # it names the worker's files and the baseline file
            raise root.fail("profiles", f"{shown(n)} {SAFE_RULE}")
    profiles = tuple(_profile(pt.sub(n), n).on_device(model.device) for n in list(pt.data))
    pt.done()
    if perf is not None and perf.reference and perf.reference not in pt.data:
        names = list(pt.data)
        raise root.fail(
            "perf.reference",
            f"no profile {perf.reference!r}{did_you_mean(perf.reference, names)}; name the profile the others are "
            f"gated against (one of {', '.join(names)})",
        )
    server = parse_server(root.sub("server"), base) if "server" in data else None
    media = next((x for x in prompts if x.attachments), None)
    endpoint = None
    if server is not None or "endpoint" in data:
        endpoint = parse_endpoint(root.sub("endpoint", {}), base, server)
        if "adapter" in data.get("model", {}) and model.adapter != "endpoint":
            raise root.fail(
                "model.adapter",
                f"{model.adapter!r} runs an in-process model; a suite with [endpoint] or "
                "[server] talks to a server (remove model.adapter)",
            )
        model = dataclasses.replace(model, adapter="endpoint")
        if endpoint.api != "chat" and media:
            raise root.fail(
                "endpoint.api",
                f'prompt {media.id!r} has attachments, which only the chat API carries; set api = "chat"',
            )
        if parallel.multi:
            raise root.fail(
                "parallel.tp",
                "a served model shards itself (its server's own tensor parallel option); remove [parallel]",
            )
        for prof in profiles:
            if prof.torch_deterministic:
                raise root.fail(
                    f"profiles.{prof.name}.torch_deterministic",
                    "acts on an in-process model only; a server "
                    "takes its switches from env (or its own command and config)",
                )

    elif media:
        raise root.fail(
            "prompts",
            f"prompt {media.id!r} has attachments; only a served model takes them "
            '(add [server] or [endpoint] with api = "chat")',
        )
    root.done()
    suite = Suite(
        name=name,
        path=p,
        model=model,
        generation=gen,
        prompts=prompts,
        schedules=schedules,
        profiles=profiles,
        seed=seed,
        timeout_s=timeout,
        description=description,
        perf=perf,
        baselines=policy,
        endpoint=endpoint,
        server=server,
        parallel=parallel,
        devices=devices,
        localize=localize,
    )
    if problem := size_problem(suite):  # from the counts alone: a billion permutations are never drawn
        raise root.fail(*problem)
    return suite


def _parallel(t: Table) -> Parallel:
    """[parallel]: degrees to run, the collective timeout, and torchrun's multi-node options."""
    tp = t.get(
        "tp",
        (list, str),
        [1],
        check=lambda v: (
            v == "auto"
            or (
                isinstance(v, list)
                and bool(v)
                and all(isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 4096 for x in v)
                and len(set(v)) == len(v)
            )
        ),
        expect='a non-empty list of distinct tensor parallel degrees such as [1, 3], or "auto" (every degree that '
        "divides the model's heads, up to the visible devices)",
    )
    nnodes = t.get("nnodes", int, 1, check=lambda v: 1 <= v <= 4096, expect="a positive number of hosts")
    auto = tp == "auto"
    par = Parallel(
        tp=(1,) if auto else tuple(sorted(tp)),
        auto=auto,
        max_tp=t.get("max", int, 8, check=lambda v: 1 <= v <= 4096, expect='the largest degree "auto" may pick'),
        collective_timeout_s=float(
            t.get(
                "collective_timeout_s", (int, float), 300, check=lambda v: v > 0, expect="a positive number of seconds"
            )
        ),
        nnodes=nnodes,
        node_rank=t.get(
            "node_rank", int, 0, check=lambda v: 0 <= v < nnodes, expect=f"an integer in [0, nnodes - 1 = {nnodes - 1}]"
        ),
        rdzv_endpoint=t.get(
            "rdzv_endpoint",
            str,
            "",
            check=lambda v: v == "" or (":" in v and v.rsplit(":", 1)[1].isdigit()),
            expect='"host:port" of the c10d rendezvous (node 0\'s address), or "" for a free local port',
        ),
        launcher=t.get(
            "launcher",
            str,
            "",
            check=lambda v: v == "" or "{args}" in v,
            expect='a command template containing {args} (torchrun\'s arguments), e.g. "srun torchrun {args}"',
        ),
    )
    t.done()
    for d in par.tp:
        if d > 1 and d % nnodes:
            raise t.fail("tp", f"degree {d} does not spread evenly over nnodes = {nnodes} hosts")
    if nnodes > 1 and not par.rdzv_endpoint:
        raise t.fail("rdzv_endpoint", "a group over several hosts needs node 0's host:port, the same on every host")
    return par


def _baseline_policy(t: Table) -> BaselinePolicy:
    d = BaselinePolicy()
    lv = Rule(check=lambda v: v in BASELINE_LEVELS, expect=f"one of {', '.join(BASELINE_LEVELS)}")
    policy = BaselinePolicy(
        same_key=t.get("same_key", str, d.same_key, **lv),
        other_software=t.get("other_software", str, d.other_software, **lv),
        other_hardware=t.get("other_hardware", str, d.other_hardware, **lv),
    )
    t.done()
    return policy


def _localize(t: Table) -> Localize:
    d = Localize()
    loc = Localize(
        auto=t.get("auto", bool, d.auto),
        max_cases=t.get("max_cases", int, d.max_cases, check=lambda v: 1 <= v <= 100, expect="an integer in [1, 100]"),
    )
    t.done()
    return loc


# The statistics keys of every timed section ([perf], [loadtime]).
ALPHA = Rule(check=lambda v: 0 < v < 0.5, expect="a significance level such as 0.05")
BUDGET = Rule(check=lambda v: 0 < v < 0.5, expect="the family-wise false-alarm rate per run, such as 0.01")


def _perf(t: Table) -> Perf:
    frac = Rule(check=lambda v: 0 < v < 10, expect="a relative change such as 0.05 (5%)")
    th = t.sub("thresholds", {})
    th.only(set(LATENCY_METRICS))
    per = tuple((m, float(th.get(m, (int, float), **frac))) for m in LATENCY_METRICS if m in th.data)
    th.done()
    perf = Perf(
        warmup=t.get("warmup", int, 0, check=lambda v: v >= 0, expect="a non-negative integer"),
        repeats=t.get("repeats", int, 1, check=lambda v: v >= 1, expect="a positive integer"),
        threshold=float(t.get("threshold", (int, float), 0.05, **frac)),
        thresholds=per,
        alpha=float(t.get("alpha", float, 0.05, **ALPHA)),
        budget=float(t.get("false_alarm_budget", float, 0.01, **BUDGET)),
        interleave=t.get("interleave", bool, True),
        noise_share=float(
            t.get(
                "noise_share", float, 0.25, check=lambda v: 0 < v <= 1, expect="a share of the host's CPU, such as 0.25"
            )
        ),
        reference=t.get("reference", str, ""),
        processes=t.get("processes", int, 0, check=lambda v: 1 <= v <= 100, expect="an integer in [1, 100]"),  # 0: auto
        reference_threshold=float(t.get("reference_threshold", (int, float), 0.02, **frac)),
    )

    t.done()
    return perf


def _schedule(t: Table, suite_seed: int, prompts: tuple[Prompt, ...]) -> Schedule:
    kinds = list(SCHEDULE_PARAMS)
    kind = t.get("kind", str, expect=f"one of {', '.join(kinds)}")
    if kind not in SCHEDULE_PARAMS:
        raise t.fail("kind", f"unknown schedule {kind!r}{did_you_mean(kind, kinds)}")
    t.only({"kind", "name", "seed", *SCHEDULE_PARAMS[kind]})
    n = len(prompts)
    pos = Rule(check=lambda v: v >= 1, expect="a positive integer")
    size = Rule(check=lambda v: 0 <= v, expect="0 (all prompts) or a positive integer")
    params: dict[str, Any] = {}
    spec = SCHEDULE_PARAMS[kind]
    if "count" in spec:
        params["count"] = t.get("count", int, spec["count"], **pos)
    if "batch_size" in spec:
        params["batch_size"] = t.get("batch_size", int, 0, **size)
    if "sizes" in spec:
        sizes = t.get(
            "sizes",
            list,
            spec["sizes"],
            check=lambda v: v and all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v),
            expect="a non-empty list of positive integers",
        )
        params["sizes"] = tuple(sizes)
    if "trials" in spec:
        if n < 2:  # min_size's default (2) is not checked against the prompts, and the plan would fail mid-run
            raise t.fail("kind", "a needle schedule needs at least 2 prompts (the target and a filler); add a prompt")
        params["trials"] = t.get("trials", int, spec["trials"], **pos)
        params["min_size"] = t.get(
            "min_size", int, 2, check=lambda v: 2 <= v <= n, expect=f"an integer in [2, {n}] (the number of prompts)"
        )
        params["max_size"] = t.get(
            "max_size",
            int,
            0,
            check=lambda v: v == 0 or params["min_size"] <= v <= n,
            expect=f"0 (all prompts) or an integer in [min_size, {n}]",
        )
        params["prompt"] = t.get(
            "prompt",
            str,
            "",
            check=lambda v: v == "" or v in {p.id for p in prompts},
            expect='the id of a prompt in this suite, or "" for each prompt in turn',
        )
    s = Schedule(kind=kind, name=t.get("name", str, kind), seed=t.get("seed", int, suite_seed), **params)
    t.done()
    return s


def _profile(t: Table, name: str) -> Profile:
    env = env_table(t.sub("env", {}))
    de = t.sub("device_env", {})
    device_env = []
    for dev in list(de.data):
        if dev not in DEVICES:
            raise de.fail(
                dev, f"unknown device{did_you_mean(dev, list(DEVICES))}; device_env maps cpu, cuda or npu to variables"
            )
        if not isinstance(de.data[dev], dict):
            raise de.fail(
                dev, f'expected a table of variables such as {{ VLLM_BATCH_INVARIANT = "1" }}, got {de.data[dev]!r}'
            )
        device_env.append((dev, env_table(de.sub(dev))))
        de.used.add(dev)
    ex = t.sub("expect", {})
    expect = []
    for dev in list(ex.data):
        if dev not in DEVICES:
            raise ex.fail(dev, f"unknown device{did_you_mean(dev, list(DEVICES))}")
        v = ex.data[dev]
        if isinstance(v, str):
            per = {prop: v for prop in PROPERTIES}
        else:
            sub = ex.sub(dev)
            per = {}
            for prop in list(sub.data):
                if prop not in PROPERTIES:
                    raise sub.fail(prop, f"unknown property{did_you_mean(prop, list(PROPERTIES))}")
                per[prop] = sub.data[prop]
            sub.used.update(sub.data)
        for e in per.values():
            if e not in EXPECTATIONS:
                raise ex.fail(
                    dev, f"expected one of {', '.join(EXPECTATIONS)} (or a table of them per property), got {e!r}"
                )
        ex.used.add(dev)
        expect.append((dev, tuple(sorted(per.items()))))
    prof = Profile(
        name=name,
        env=env,
        device_env=tuple(device_env),
        torch_deterministic=t.get("torch_deterministic", bool, False),
        expect=tuple(expect),
        description=t.get("description", str, ""),
        python=t.get("python", str, "", check=lambda v: bool(v.strip()), expect="the path of a Python interpreter"),
        setup=t.get("setup", str, "", check=lambda v: bool(v.strip()), expect="the path of a shell file to source"),
        devices=tuple(
            t.get(
                "devices",
                list,
                [],
                check=lambda v: bool(v) and all(d in DEVICES for d in v),
                expect=f"a non-empty list of {', '.join(DEVICES)}: the devices this profile runs on",
            )
        ),
    )
    t.done()
    return prof
