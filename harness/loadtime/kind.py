"""The load-time kind (`harness run suites/loadtime.toml`): cold and warm model loads under OMP_NUM_THREADS settings, each in a fresh
worker process, with phases, peak memory, a recommendation, a baseline gate and size scaling.

Loads are interleaved (every setting once per round), so drift on a shared runner hits all settings
alike. Every sample is appended to loads.jsonl as it is taken.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import baselines, devicekey, runner, timing
from ..analysis import stats
from ..errors import INFRA, USAGE, HarnessError
from ..jobs import Job
from ..options import Options
from ..run import Check, Outcome, Progress, RunDir, exit_code
from ..suite import SuiteError, Table
from ..suite_parse import ALPHA, BUDGET, parse_head, parse_model
from . import analysis as lt
from . import report
from .data import AgainstBaseline, LoadRun, LoadSuite, Target

ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_NPU_ALLOC_CONF", "NPU_MEMORY_FRACTION")


def _settings(raw: list[object], t: Table) -> tuple[str, ...]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out: list[str] = []
    for v in raw:
        if v == "cores":
            v = cores
        if isinstance(v, bool) or not (v == "unset" or (isinstance(v, int) and v >= 1)):
            raise t.fail("omp", f'expected positive integers, "cores" or "unset", got {v!r}')
        if str(v) not in out:
            out.append(str(v))
    if not out:
        raise t.fail("omp", 'empty; give at least one setting, for example [1, "unset"]')
    return tuple(out)


# Each repeat is a cold and a warm load per setting (seconds to minutes each): a bound that no real sweep nears,
# so that a mistyped count is one line before anything starts instead of a sweep that never ends.
MAX_REPEATS = 1000
REPEATS = f"a positive integer up to {MAX_REPEATS} (each repeat is a cold and a warm load per setting)"


def load_suite(
    path: Path,
    data: dict[str, Any],
    *,
    model: str | None = None,
    device: str | None = None,
    drop_caches: bool | None = None,
) -> LoadSuite:
    from .. import synthetic

    p = str(path)
    root = Table(p, "", data)
    name, seed, _, _ = parse_head(root)
    spec = parse_model(root)
    t = root.sub("loadtime")
    settings = _settings(t.get("omp", list, [1, "cores", "unset"]), t)
    sizes = tuple(
        float(x)
        for x in t.get(
            "sizes",
            list,
            [],
            check=lambda v: all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and float(x) in synthetic.SHAPES for x in v
            ),
            expect=f"a list of synthetic sizes from {sorted(synthetic.SHAPES)}",
        )
    )
    suite = LoadSuite(
        name=name,
        path=p,
        model_ref=model or spec.ref,
        dtype=spec.dtype,
        device=device or spec.device,
        settings=settings,
        repeats=t.get("repeats", int, 4, check=lambda v: 1 <= v <= MAX_REPEATS, expect=REPEATS),
        sizes=sizes,
        size_repeats=t.get("size_repeats", int, 2, check=lambda v: 1 <= v <= MAX_REPEATS, expect=REPEATS),
        drop_caches=t.get("drop_caches", bool, True) if drop_caches is None else drop_caches,
        threshold=float(
            t.get("threshold", (int, float), 0.10, check=lambda v: 0 < v < 10, expect="a relative change such as 0.1")
        ),
        alpha=float(t.get("alpha", float, 0.05, **ALPHA)),
        budget=float(t.get("false_alarm_budget", float, 0.01, **BUDGET)),
        timeout_s=float(t.get("timeout_s", (int, float), 600, check=lambda v: v > 0, expect="seconds")),
        seed=seed,
    )
    t.done()
    root.done()
    return suite


# ---- page cache and the physical reference --------------------------------------------------------------


def drop_page_cache(files: list[Path]) -> tuple[bool, str]:
    """Evict the model's files from the page cache: no privilege needed, nothing else on the host is touched."""
    if not hasattr(os, "posix_fadvise"):
        return False, f"posix_fadvise is not available on {sys.platform}: cold loads cannot be measured here"
    try:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fdatasync(fd)  # dirty pages cannot be evicted
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    except OSError as e:
        return False, f"could not evict the model files from the page cache ({e}): cold loads not measured"
    return True, "model files evicted from the page cache with posix_fadvise(DONTNEED) before each cold load"


def sequential_read(files: list[Path], chunk: int = 16 << 20) -> float:
    """Seconds to read the files front to back: the physical limit a load is measured against."""
    buf = bytearray(chunk)
    t = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t


# ---- the sweep ---------------------------------------------------------------------------------------------


def _prepare_synthetic(size: float, tokenizer_dir: Path) -> Path:
    p = runner.run_child([sys.executable, "-m", "harness.synthetic", str(size), str(tokenizer_dir)])
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarnessError(f"synthetic {size}B checkpoint could not be generated: {tail}", INFRA)
    return Path(p.stdout.strip().splitlines()[-1])


def _load_once(suite: LoadSuite, target: Target, setting: str, repeat: int, cold: bool, run_dir: Path) -> lt.LoadSample:
    # The label may be a model directory's own name: as a file name, only its safe part.
    name = f"{devicekey.slug(target.label)}-omp{setting}-r{repeat}-{'cold' if cold else 'warm'}"
    job = Job(
        name=name,
        profile=setting,
        model_ref=target.label,
        model_dir=str(target.model_dir),
        device=suite.device,
        dtype=target.dtype,
        records=str(run_dir / "records" / f"{name}.jsonl"),
        meta=str(run_dir / "records" / f"{name}.meta.json"),
    )
    env = {"OMP_NUM_THREADS": None if setting == "unset" else setting}
    out = runner.run_job(job, env, suite.timeout_s, run_dir)
    meta = out.meta
    return lt.LoadSample(
        model=target.label,
        setting=setting,
        repeat=repeat,
        cold=cold,
        status=out.status,
        phases=meta.get("load_s", {}) if out.ok else {},
        peak_rss_mb=meta.get("peak_rss_mb", math.nan),
        device_peak_mb=meta.get("device_peak_mb", math.nan),
        env={k: meta.get("env", {}).get(k, "(unset)") for k in ENV_KEYS},
        error="" if out.ok else out.describe(),
    )


def sweep(suite: LoadSuite, out: Path, progress: bool = True) -> LoadRun:
    model_dir = runner.prepare_model(suite.model_ref)
    targets = [
        Target(
            "embedded" if suite.model_ref == "smollm2-135m" else Path(suite.model_ref).name,
            model_dir,
            suite.dtype,
            0.135 if suite.model_ref == "smollm2-135m" else math.nan,
            suite.repeats,
        )
    ]
    targets += [
        Target(f"synthetic-{s:g}b", _prepare_synthetic(s, model_dir), "bfloat16", s, suite.size_repeats)
        for s in suite.sizes
    ]
    rd = RunDir.create(out, suite.name)
    run_dir = rd.path
    cold_ok, note = (False, "page cache not dropped (drop_caches = false): every load is warm")
    if suite.drop_caches:
        cold_ok, note = drop_page_cache(targets[0].files)
    plan = [
        (t, r, st, cold)
        for t in targets
        for r in range(t.repeats)
        for st in suite.settings
        for cold in ((True, False) if cold_ok else (False,))
    ]
    samples: list[lt.LoadSample] = []
    with (
        open(run_dir / "loads.jsonl", "x", encoding="utf-8") as log,
        Progress(f"{suite.name}: loads", len(plan), "load", progress) as bar,
    ):
        for t, r, st, cold in plan:
            if cold:
                drop_page_cache(t.files)
            s = _load_once(suite, t, st, r, cold, run_dir)
            samples.append(s)
            log.write(json.dumps(dataclasses.asdict(s)) + "\n")
            log.flush()
            bar.to(len(samples))
    reads = {}
    for t in targets:
        dropped = cold_ok and drop_page_cache(t.files)[0]
        reads[t.label] = (sequential_read(t.files), dropped)
    info = {}
    for name in sorted((run_dir / "records").glob("*-ompunset-*.meta.json")) + sorted(
        (run_dir / "records").glob("*.meta.json")
    ):
        info = json.loads(name.read_text()).get("device", {})
        if info:
            break
    return LoadRun(
        suite=suite,
        run_id=rd.run_id,
        run_dir=run_dir,
        samples=samples,
        targets=targets,
        cache_note=note,
        cold_ok=cold_ok,
        reads=reads,
        device_info=info,
    )


def analyse(run: LoadRun, baseline_root: Path, update: bool, reason: str, fresh: bool = False) -> None:
    """Summaries and the recommendation; then each setting against its stored baseline (its run history where it
    has one, every setting's rows under the run's one false-alarm budget), or new baselines when asked: each a run
    appended to the history the baseline already holds on this machine (`fresh`: a history started anew)."""
    s = run.suite
    main = run.targets[0].label
    settings = list(s.settings)
    run.summaries = [x for t in run.targets for x in lt.summarise(run.samples, t.label, settings)]
    run.recommendation = lt.recommend(run.samples, main, settings, s.alpha, s.threshold, s.seed)
    for t in run.targets:
        meds = {x.setting: x.warm_p50 for x in run.summaries if x.model == t.label and x.warm_p50 == x.warm_p50}
        if meds:
            best = min(meds, key=meds.__getitem__)
            read_s, read_cold = run.reads[t.label]
            run.sizes.append(lt.size_row(run.samples, t.label, t.params_b, t.gb, read_s, read_cold, best))
    if not run.device_info:
        return
    store = baselines.Store(baseline_root)
    key = devicekey.device_key(run.device_info)
    current = {
        st: {
            f"{main} warm": lt.totals(run.samples, main, st, False),
            f"{main} cold": lt.totals(run.samples, main, st, True),
        }
        for st in settings
    }
    hint = baselines.record_hint(s.path)
    for st in settings:
        run.against[st] = against = AgainstBaseline()
        profile = f"omp-{st}"
        if update:
            if not any(current[st].values()):
                against.notes.append(f"{profile}: no successful loads, baseline not written")
                continue
            b = baselines.build(
                suite=s.name,
                profile=profile,
                case_hash=s.case_hash,
                device_key=key,
                environment={"device": run.device_info},
                reason=reason,
                references=[],
                latency={k: v for k, v in current[st].items() if v},
                load_s=[],
            )
            baselines.with_history(b, store.check(key, s.name, profile, s.case_hash), run.device_info, fresh)
            target = store.save(key, s.name, profile, b)
            if isinstance(target, baselines.NotWritten):
                run.unwritable = run.unwritable or target.disk
                run.not_comparable = run.not_comparable or not target.disk
                against.failed = True
                against.notes.append(f"x {profile}: {target.reason}")
            else:
                run.written[profile] = target
                against.notes.append(f"{profile}: baseline written to {target} ({len(b.runs)} run(s) in its history)")
            continue
        found = store.check(key, s.name, profile, s.case_hash)
        if isinstance(found, baselines.Missing):
            against.notes.append(f"{profile}: {baselines.missing_reason(found, key, s.path)}")
            continue
        if isinstance(found, baselines.Unusable):
            against.failed = run.not_comparable = True
            against.notes.append(f"x {profile}: {found.reason}")
            continue
        b, runs = found.baseline, found.baseline.run_medians()
        changes = [
            stats.compare(
                f"OMP_NUM_THREADS={st} {metric}",
                b.latency.get(metric, []),
                xs,
                threshold=b.thresholds.get(metric, s.threshold),  # calibrated on this runner first
                alpha=s.budget,
                seed=s.seed,
                runs=runs.get(metric, ()),
            )
            for metric, xs in current[st].items()
            if xs or b.latency.get(metric)
        ]
        run.used.append(baselines.BaselineUse.of(found))
        if found.same_hardware:
            against.gated = changes
        else:
            against.shown = timing.ungated(changes)
            run.ungated_note = (
                f"load times shown, not gated: the baselines were measured on other hardware "
                f"({found.key.hardware}; this run {key.hardware}); {hint}"
            )
    gated = {st: a.gated for st, a in run.against.items() if a.gated}
    if gated:
        decided, run.alpha_row = timing.decide(gated, s.budget)
        for st, rows in decided.items():
            run.against[st].gated = rows


def checks(run: LoadRun) -> list[Check]:
    out = []
    for st in run.suite.settings:
        failed = [x for x in run.samples if x.setting == st and x.status != "ok"]
        out.append(Check(f"omp-{st}", "loads", "failed" if failed else "passed", "\n".join(report.failures(run, st))))
        against = run.against.get(st, AgainstBaseline())
        regressed = [c for c in against.gated if c.status == "regressed"]
        if regressed or against.failed:
            msg = "; ".join([f"{c.metric} x{c.ratio:.3f} (p={c.p:.3g})" for c in regressed] + against.notes)
            out.append(Check(f"omp-{st}", "baseline", "failed", msg))
        else:
            why = "; ".join(against.notes) or (run.ungated_note if against.shown else "")
            out.append(Check(f"omp-{st}", "baseline", "passed" if against.gated else "skipped", why))
    return out


@dataclass(frozen=True)
class LoadtimeKind:
    name: str = "loadtime"

    def load(self, path: Path, data: dict[str, Any], opts: Options) -> LoadSuite:
        try:
            return load_suite(path, data, model=opts.model, device=opts.device, drop_caches=opts.drop_caches)
        except SuiteError as e:
            raise HarnessError(str(e), USAGE) from None

    def items(self, suite: LoadSuite) -> list[tuple[str, str]]:
        return [(f"omp-{st}", n) for st in suite.settings for n in ("loads", "baseline")]

    def execute(self, suite: LoadSuite, opts: Options) -> Outcome:
        run = sweep(suite, opts.out, opts.progress)
        analyse(run, opts.baselines, opts.update_baselines, opts.reason, opts.fresh_runs)
        run.exit_code = exit_code(
            infra=any(x.status != "ok" for x in run.samples) or run.unwritable,
            unusable=run.not_comparable,
            failed=any(c.status == "regressed" for c in run.changes),
        )
        report.write(run)
        from ..headline import from_loadrun

        return Outcome(
            run.exit_code,
            report.console(run),
            run.run_dir,
            checks(run),
            from_loadrun(run),
            run,
            timing=run.changes,  # the gated rows; those against other hardware are shown, not judged
            baselines=run.used,
            written=run.written,
            device=run.device_info,
        )


KIND = LoadtimeKind()
