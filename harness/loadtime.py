"""`harness loadtime SUITE`: cold and warm model loads under OMP_NUM_THREADS settings, each in a fresh
worker process, with phases, peak memory, a recommendation, a baseline gate and size scaling.

Loads are interleaved (every setting once per round), so drift on a shared runner hits all settings
alike. Every sample is appended to loads.jsonl as it is taken.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from . import atomic, baselines, runner
from .analysis import loadtime as lt
from .analysis import stats
from .errors import CHECK_FAILED, INFRA, OK, USAGE, HarnessError
from .plan import Job
from .suite import SuiteError, _Table, parse_head, parse_model, read_toml

ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_NPU_ALLOC_CONF", "NPU_MEMORY_FRACTION")


@dataclass(frozen=True)
class LoadSuite:
    name: str
    path: str
    model_ref: str
    dtype: str
    device: str
    settings: tuple[str, ...]          # OMP_NUM_THREADS values; "unset" removes the variable
    repeats: int                       # rounds for the suite's model
    sizes: tuple[float, ...]           # synthetic checkpoints, billions of parameters
    size_repeats: int
    drop_caches: bool
    threshold: float
    alpha: float
    timeout_s: float
    seed: int = 0

    @property
    def case_hash(self) -> str:
        from . import synthetic
        body = [self.model_ref, self.dtype, [synthetic.config_dict(s) for s in self.sizes]]
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _settings(raw: list, t: _Table) -> tuple[str, ...]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    out: list[str] = []
    for v in raw:
        if v == "cores":
            v = cores
        if isinstance(v, bool) or not (v == "unset" or (isinstance(v, int) and v >= 1)):
            raise t.fail("omp", f"expected positive integers, \"cores\" or \"unset\", got {v!r}")
        if str(v) not in out:
            out.append(str(v))
    if not out:
        raise t.fail("omp", "empty; give at least one setting, for example [1, \"unset\"]")
    return tuple(out)


def load_suite(path: Path, *, model: str | None = None, device: str | None = None,
               drop_caches: bool | None = None) -> LoadSuite:
    from . import synthetic
    p = str(path)
    root = _Table(p, "", read_toml(path))
    name, seed, _ = parse_head(root)
    spec = parse_model(root)
    t = root.sub("loadtime")
    settings = _settings(t.get("omp", list, [1, "cores", "unset"]), t)
    sizes = tuple(float(x) for x in t.get("sizes", list, [], check=lambda v: all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and float(x) in synthetic.SHAPES for x in v),
        expect=f"a list of synthetic sizes from {sorted(synthetic.SHAPES)}"))
    suite = LoadSuite(
        name=name, path=p, model_ref=model or spec.ref, dtype=spec.dtype, device=device or spec.device, settings=settings,
        repeats=t.get("repeats", int, 4, check=lambda v: v >= 1, expect="a positive integer"),
        sizes=sizes, size_repeats=t.get("size_repeats", int, 2, check=lambda v: v >= 1, expect="a positive integer"),
        drop_caches=t.get("drop_caches", bool, True) if drop_caches is None else drop_caches,
        threshold=float(t.get("threshold", (int, float), 0.10, check=lambda v: 0 < v < 10, expect="a relative change such as 0.1")),
        alpha=float(t.get("alpha", float, 0.05, check=lambda v: 0 < v < 0.5, expect="a significance level such as 0.05")),
        timeout_s=float(t.get("timeout_s", (int, float), 600, check=lambda v: v > 0, expect="seconds")), seed=seed)
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


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".pt") and p.is_file())


# ---- the sweep ---------------------------------------------------------------------------------------------

@dataclass
class Target:
    label: str              # "embedded" or "synthetic-0.5b"
    model_dir: Path
    dtype: str
    params_b: float
    repeats: int

    @property
    def files(self) -> list[Path]:
        return weight_files(self.model_dir)

    @property
    def gb(self) -> float:
        return sum(f.stat().st_size for f in self.files) / 1e9


def _prepare_synthetic(size: float, tokenizer_dir: Path) -> Path:
    p = subprocess.run([sys.executable, "-m", "harness.synthetic", str(size), str(tokenizer_dir)], env=runner.child_env({}),
                       capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise HarnessError(f"synthetic {size}B checkpoint could not be generated: {tail}", INFRA)
    return Path(p.stdout.strip().splitlines()[-1])


def _load_once(suite: LoadSuite, target: Target, setting: str, repeat: int, cold: bool, run_dir: Path) -> lt.LoadSample:
    name = f"{target.label}-omp{setting}-r{repeat}-{'cold' if cold else 'warm'}"
    job = Job(name=name, profile=setting, adapter="hf", model_ref=target.label, model_dir=str(target.model_dir),
              dtype=target.dtype, device=suite.device, torch_deterministic=False, max_new_tokens=1, top_logprobs=2,
              prompts=[], batches=[], records=str(run_dir / "records" / f"{name}.jsonl"),
              meta=str(run_dir / "records" / f"{name}.meta.json"))
    env = {"OMP_NUM_THREADS": None if setting == "unset" else setting}
    out = runner.run_job(job, env, suite.timeout_s, run_dir)
    meta = out.meta
    return lt.LoadSample(model=target.label, setting=setting, repeat=repeat, cold=cold, status=out.status,
                         phases=meta.get("load_s", {}) if out.ok else {}, peak_rss_mb=meta.get("peak_rss_mb", math.nan),
                         device_peak_mb=meta.get("device_peak_mb", math.nan),
                         env={k: meta.get("env", {}).get(k, "(unset)") for k in ENV_KEYS},
                         error="" if out.ok else out.describe())


@dataclass
class LoadRun:
    suite: LoadSuite
    run_id: str
    run_dir: Path
    samples: list[lt.LoadSample]
    targets: list[Target]
    cache_note: str
    cold_ok: bool
    reads: dict[str, tuple[float, bool]]          # label -> (seconds, cold)
    device_info: dict
    recommendation: lt.Recommendation | None = None
    summaries: list[lt.SettingSummary] = dataclasses.field(default_factory=list)
    sizes: list[lt.SizeRow] = dataclasses.field(default_factory=list)
    changes: list[stats.Change] = dataclasses.field(default_factory=list)
    baseline_notes: list[str] = dataclasses.field(default_factory=list)
    not_comparable: bool = False
    plot: str = ""
    exit_code: int = OK


def sweep(suite: LoadSuite, out: Path, progress: bool = True) -> LoadRun:
    model_dir = runner.prepare_model(suite.model_ref)
    targets = [Target("embedded" if suite.model_ref == "smollm2-135m" else Path(suite.model_ref).name, model_dir,
                      suite.dtype, 0.135 if suite.model_ref == "smollm2-135m" else math.nan, suite.repeats)]
    targets += [Target(f"synthetic-{s:g}b", _prepare_synthetic(s, model_dir), "bfloat16", s, suite.size_repeats) for s in suite.sizes]
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{suite.name}"
    run_dir = out / run_id
    for sub in ("jobs", "records", "logs"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    cold_ok, note = (False, "page cache not dropped (drop_caches = false): every load is warm")
    if suite.drop_caches:
        cold_ok, note = drop_page_cache(targets[0].files)
    plan = [(t, r, st, cold) for t in targets for r in range(t.repeats) for st in suite.settings
            for cold in ((True, False) if cold_ok else (False,))]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(plan), desc=f"{suite.name}: loads", unit="load", file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 15)
    samples: list[lt.LoadSample] = []
    with open(run_dir / "loads.jsonl", "a", encoding="utf-8") as log:
        for t, r, st, cold in plan:
            if cold:
                drop_page_cache(t.files)
            s = _load_once(suite, t, st, r, cold, run_dir)
            samples.append(s)
            log.write(json.dumps(dataclasses.asdict(s)) + "\n")
            log.flush()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    reads = {}
    for t in targets:
        dropped = cold_ok and drop_page_cache(t.files)[0]
        reads[t.label] = (sequential_read(t.files), dropped)
    info = {}
    for name in sorted((run_dir / "records").glob("*-ompunset-*.meta.json")) + sorted((run_dir / "records").glob("*.meta.json")):
        info = json.loads(name.read_text()).get("device", {})
        if info:
            break
    return LoadRun(suite=suite, run_id=run_id, run_dir=run_dir, samples=samples, targets=targets, cache_note=note,
                   cold_ok=cold_ok, reads=reads, device_info=info)


def analyse(run: LoadRun, baseline_root: Path, update: bool, reason: str) -> None:
    s = run.suite
    main = run.targets[0].label
    settings = list(s.settings)
    run.summaries = [x for t in run.targets for x in lt.summarise(run.samples, t.label, settings)]
    run.recommendation = lt.recommend(run.samples, main, settings, s.alpha, s.threshold, s.seed)
    for t in run.targets:
        meds = {x.setting: x.warm_p50 for x in run.summaries if x.model == t.label and x.warm_p50 == x.warm_p50}
        if meds:
            best = min(meds, key=meds.get)
            read_s, read_cold = run.reads[t.label]
            run.sizes.append(lt.size_row(run.samples, t.label, t.params_b, t.gb, read_s, read_cold, best))
    if not run.device_info:
        return
    key = baselines.device_key(run.device_info)
    current = {st: {f"{main} warm": lt.totals(run.samples, main, st, False),
                    f"{main} cold": lt.totals(run.samples, main, st, True)} for st in settings}
    for st in settings:
        target = baselines.path_for(baseline_root, key, s.name, f"omp-{st}")
        if update:
            if not any(current[st].values()):
                run.baseline_notes.append(f"omp-{st}: no successful loads, baseline not written")
                continue
            baselines.write(target, baselines.build(suite=s.name, profile=f"omp-{st}", case_hash=s.case_hash,
                                                    device_key=key, environment={"device": run.device_info},
                                                    reason=reason, references=[],
                                                    latency={k: v for k, v in current[st].items() if v}, load_s=[]))
            run.baseline_notes.append(f"omp-{st}: baseline written to {target}")
            continue
        found, same = baselines.find(baseline_root, key, s.name, f"omp-{st}", s.device)
        if found is None:
            run.baseline_notes.append(f"omp-{st}: no baseline at {target}; create one with --update-baselines --reason '...'")
            continue
        try:
            b = baselines.load(found, s.case_hash)
        except baselines.BaselineError as e:
            run.baseline_notes.append(f"x omp-{st}: {e}")
            run.not_comparable = True
            continue
        if not same:
            run.baseline_notes.append(f"omp-{st}: baseline from another device key ({b.device_key}); load times compared anyway")
        for metric, xs in current[st].items():
            if xs or b.latency.get(metric):
                c = stats.compare(f"OMP_NUM_THREADS={st} {metric}", b.latency.get(metric, []), xs,
                                  threshold=s.threshold, alpha=s.alpha, seed=s.seed)
                run.changes.append(c)


def exit_code(run: LoadRun) -> int:
    if any(x.status != "ok" for x in run.samples):
        return INFRA
    if run.not_comparable:
        return USAGE
    return CHECK_FAILED if any(c.status == "regressed" for c in run.changes) else OK
