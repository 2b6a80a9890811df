"""Property-based fuzzing of everything a user (or a careless file) hands the harness: suite TOML, prompt JSONL,
baseline JSON and command-line options. Whatever comes in, the harness either accepts it or says what is wrong
in one line (exit 2); it never shows a traceback and never writes outside the directories it was given.

Inputs: arbitrary bytes; the shipped kinds' valid suites (determinism, served, load time) with values replaced,
removed or added anywhere, serialised with tomli_w, or with bytes flipped; prompt files of such lines; baselines
the same way. Names that have led programs astray (traversal, NUL, over-long, look-alikes) are drawn often. The
CLI runs in-process with a fake model (tests/fakes.py), so a valid suite runs to its report in milliseconds.

A short run by default (about 15 s); `HARNESS_FUZZ=long` (the `nox -s fuzz` session) takes ten times the examples
per round.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from harness import baselines, cli, devicekey, envinfo, run
from harness.analysis import baseline as baseline_check
from harness.analysis import latency
from harness.errors import USAGE, HarnessError
from harness.records import Record

from . import fakes
from .helpers import ROOT, record, tiny_config, tiny_tokenizer, within

tomli_w = pytest.importorskip("tomli_w")

# The short profile is derandomized: a test lane (CI included) tries the same examples every time, so it can only
# fail on a change; `nox -s fuzz` (the long profile, a new seed per round) is where new inputs are explored.
settings.register_profile(
    "short",
    max_examples=100,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("long", parent=settings.get_profile("short"), max_examples=1000, derandomize=False)
FUZZ = settings.get_profile("long" if os.environ.get("HARNESS_FUZZ") == "long" else "short")
SOME = settings(FUZZ, max_examples=max(10, FUZZ.max_examples // 2))  # runs through the CLI, with a fake model
FEW = settings(FUZZ, max_examples=max(5, FUZZ.max_examples // 20))  # real processes

# Names that have led programs astray: traversal, absolute paths, NUL, over-long names, Unicode look-alikes
# (fullwidth letters and solidus, the one dot leader), shell and Windows specials.
HOSTILE = [
    "..",
    ".",
    "x/../../escaped",
    "../../../../../../escaped",
    "/abs/escaped",
    "a\0b",
    "a" * 300,
    "é" * 200,
    "ｘ",
    "..／..／x",
    "\u2024\u2024",
    "\u2024",
    "a/b",
    "a\\b",
    "~",
    "$HOME",
    "CON",
    "",
    " ",
    "-",
    "\n",
    "a\nb",
    "\ud7ff",
    "\u202e",
    "*",
    "[a]",
    "x" * 100,
    "x" * 101,
]
NAMES = st.sampled_from(HOSTILE) | st.text(max_size=12)
SCALARS = st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 40) | st.floats() | NAMES
VALUES = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(NAMES, c, max_size=4), max_leaves=8)
SMALL = st.recursive(
    st.booleans() | st.integers(-3, 20) | st.floats(-5, 50) | NAMES,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(NAMES, c, max_size=3),
    max_leaves=6,
)
KEYS = [
    "suite",
    "name",
    "version",
    "seed",
    "model",
    "ref",
    "dtype",
    "device",
    "adapter",
    "generation",
    "max_new_tokens",
    "top_logprobs",
    "close_k",
    "prompts",
    "items",
    "file",
    "id",
    "text",
    "chat",
    "attachments",
    "run",
    "timeout_s",
    "schedules",
    "kind",
    "count",
    "batch_size",
    "sizes",
    "trials",
    "min_size",
    "max_size",
    "prompt",
    "profiles",
    "env",
    "expect",
    "torch_deterministic",
    "default",
    "cpu",
    "repeatability",
    "batch-invariance",
    "perf",
    "warmup",
    "repeats",
    "threshold",
    "thresholds",
    "alpha",
    "baselines",
    "same_key",
    "endpoint",
    "server",
    "base_url",
    "api",
    "command",
    "loadtime",
    "omp",
    "outputs",
    "tokens",
    "pieces",
    "fingerprints",
    "topk_ids",
    "topk_logprobs",
    "latency",
    "load_s",
    "environment",
    "provenance",
    "case_hash",
    "schema_version",
    "level",
    "prompt_id",
]

PROMPTS = [{"id": "a", "text": "one two"}, {"id": "b", "text": "three", "chat": True}, {"id": "c", "text": "four"}]
DETERMINISM = {
    "suite": {"name": "fz", "version": 1, "seed": 1},
    "model": {"ref": "fake-model", "dtype": "float32", "device": "cpu"},
    "generation": {"max_new_tokens": 3, "top_logprobs": 2},
    "prompts": {"items": PROMPTS},
    "run": {"timeout_s": 30},
    "schedules": [
        {"kind": "solo"},
        {"kind": "repeat"},
        {"kind": "permutation", "count": 2},
        {"kind": "batch-sizes", "sizes": [1, 2]},
        {"kind": "needle", "trials": 1},
    ],
    "baselines": {"same_key": "bitwise"},
    "perf": {"warmup": 0, "repeats": 1},
    "profiles": {
        "default": {},
        "deterministic": {
            "env": {"HCCL_DETERMINISTIC": "true"},
            "torch_deterministic": True,
            "expect": {"cpu": "tokens"},
        },
    },
}
SERVED = {
    **{k: v for k, v in DETERMINISM.items() if k != "perf"},
    "endpoint": {"base_url": "http://127.0.0.1:9", "api": "chat", "retries": 0},
    "profiles": {"default": {}, "deterministic": {"env": {"A": "1"}}},
}
LOADTIME = {
    "suite": {"name": "lt", "version": 1},
    "model": {"ref": "fake-model"},
    "loadtime": {"omp": [1, "unset"], "repeats": 1, "drop_caches": False},
}
BASES = [DETERMINISM, SERVED, LOADTIME]


def _containers(doc):
    yield doc
    for v in doc.values() if isinstance(doc, dict) else doc:
        if isinstance(v, (dict, list)):
            yield from _containers(v)


def mutated(data, doc, values=VALUES, at_most: int = 3):
    """A copy of `doc` with a few values replaced, removed or added anywhere: structurally plausible, wrong."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, at_most), label="mutations")):
        target = data.draw(st.sampled_from(list(_containers(doc))), label="where")
        op = data.draw(st.sampled_from(["replace", "delete", "add"]), label="op")
        if isinstance(target, dict):
            if op == "add" or not target:
                target[data.draw(st.sampled_from(KEYS) | NAMES, label="key")] = data.draw(values, label="value")
            else:
                k = data.draw(st.sampled_from(sorted(target)), label="key")
                if op == "delete":
                    del target[k]
                else:
                    target[k] = data.draw(values, label="value")
        else:
            if op == "add" or not target:
                target.append(data.draw(values, label="value"))
            else:
                i = data.draw(st.integers(0, len(target) - 1), label="index")
                if op == "delete":
                    del target[i]
                else:
                    target[i] = data.draw(values, label="value")
    return doc


def toml_bytes(doc) -> bytes | None:
    try:
        return tomli_w.dumps(doc).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        return None  # TOML cannot say it (a top-level value that is not a table, ...)


def one_line(e: BaseException) -> None:
    msg = str(e)
    assert len(msg.splitlines()) == 1 and msg.strip(), f"not one line: {msg!r}"


def load_only(path: Path, tmp: Path):
    """run.load as the CLI calls it: the validated suite, or a HarnessError with one line."""
    try:
        return run.load(path, run.Options(out=tmp / "out", baselines=tmp / "bl"))
    except HarnessError as e:
        one_line(e)
        assert e.code == USAGE, (e.code, str(e))
        return None


# ---- the parsers -----------------------------------------------------------------------------------------------


@FUZZ
@given(raw=st.binary(max_size=400) | st.sampled_from([b"\xe9\n", b"\xff\xfe[suite]", b'[suite]\nname = "\xe9"\n']))
def test_arbitrary_bytes_as_a_suite(raw: bytes):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "s.toml").write_bytes(raw)
        load_only(Path(d) / "s.toml", Path(d))


@FUZZ
@given(data=st.data())
def test_valid_suites_with_wrong_values(data):
    raw = toml_bytes(mutated(data, data.draw(st.sampled_from(BASES), label="base")))
    assume(raw is not None)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "s.toml").write_bytes(raw)
        load_only(Path(d) / "s.toml", Path(d))


@FUZZ
@given(data=st.data())
def test_valid_suites_with_bytes_flipped(data):
    raw = bytearray(toml_bytes(data.draw(st.sampled_from(BASES), label="base")))
    for _ in range(data.draw(st.integers(1, 4), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw[i : i + 1] = data.draw(st.binary(min_size=0, max_size=3), label="bytes")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "s.toml").write_bytes(bytes(raw))
        load_only(Path(d) / "s.toml", Path(d))


def _jsonl_line(data) -> bytes:
    kind = data.draw(st.sampled_from(["object", "bytes", "json"]), label="line")
    if kind == "bytes":
        return data.draw(st.binary(max_size=40), label="raw").replace(b"\n", b"")
    if kind == "json":
        return json.dumps(data.draw(VALUES, label="json")).encode()
    obj = mutated(data, data.draw(st.sampled_from(PROMPTS), label="prompt"), at_most=2)
    return json.dumps(obj, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode("utf-8", "surrogatepass")


@FUZZ
@given(data=st.data())
def test_prompt_files(data):
    extra = data.draw(st.integers(0, 4), label="lines")
    body = b"\n".join([json.dumps(p).encode() for p in PROMPTS[:2]] + [_jsonl_line(data) for _ in range(extra)])
    doc = {**DETERMINISM, "prompts": {"file": "p.jsonl"}}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "p.jsonl").write_bytes(body)
        (Path(d) / "s.toml").write_bytes(toml_bytes(doc))
        load_only(Path(d) / "s.toml", Path(d))


def _record(pid: str, profile: str = "default") -> Record:
    """A reference with the tokens, fingerprints and top-k the fake worker (tests/fakes.py) writes for `pid`."""
    toks = [len(pid) % 7, 1, 2]
    return record(
        pid,
        profile=profile,
        tokens=toks,
        pieces=[str(t) for t in toks],
        text="x",
        fingerprints=[f"{t:016x}" for t in toks],
        topk=[([t, t + 1], [-0.1, -2.0]) for t in toks],
        token_times=[0.01, 0.02, 0.03],
    )


KEY = devicekey.device_key(fakes.DEVICE)
BaselineError = baselines.BaselineError


def _valid_baseline() -> dict:
    b = baselines.build(
        suite="fz",
        profile="default",
        case_hash="0123456789abcdef",
        device_key=KEY,
        environment={"device": fakes.DEVICE, "host": {}, "env": {}},
        reason="fuzz",
        references=[_record("a"), _record("b")],
        latency={"solo tpot": [0.01, 0.02, 0.03, 0.02]},
        load_s=[0.5],
    )
    return json.loads(json.dumps({"schema_version": baselines.SCHEMA_VERSION, **vars(b)}))


def use_baseline(path: Path, case_hash: str) -> None:
    """Load a baseline file and use it the way a run does; only BaselineError, with one line, may come out."""
    try:
        b = baselines.load(path, case_hash)
    except BaselineError as e:
        one_line(e)
        return
    ours = [_record("a"), _record("b"), _record("zz")]
    baseline_check.evaluate(ours, lambda pid: b.reference(pid) if pid in b.outputs else None, "default", "bitwise")
    envinfo.changes(b.environment.get("device", {}), fakes.DEVICE)
    theirs = devicekey.device_key(b.environment.get("device", {}))
    baselines.Found(path, b, theirs, "same key").describe()
    latency.gate(
        {**b.latency, **({"load": b.load_s} if b.load_s else {})},
        {"solo tpot": [0.01, 0.02], "load": [0.5]},
        {},
        0.05,
        0.05,
        seed=0,
    )


@FUZZ
@given(data=st.data())
def test_baseline_files(data):
    kind = data.draw(st.sampled_from(["mutated", "bytes", "json"]), label="kind")
    if kind == "bytes":
        raw = data.draw(st.binary(max_size=200), label="raw")
    elif kind == "json":
        raw = json.dumps(data.draw(VALUES, label="json")).encode()
    else:
        doc = mutated(data, _valid_baseline(), at_most=3)
        raw = json.dumps(doc, ensure_ascii=data.draw(st.booleans(), label="ascii")).encode("utf-8", "surrogatepass")
    with tempfile.TemporaryDirectory() as d:
        store = baselines.Store(Path(d))
        for where in (store.path(KEY, "fz", "default"), Path(d) / "cpu-other-hw" / "fz" / "default.json"):
            where.parent.mkdir(parents=True, exist_ok=True)
            where.write_bytes(raw)
            use_baseline(where, "0123456789abcdef")
        found = store.check(KEY, "fz", "default", "0123456789abcdef")
        if isinstance(found, baselines.Unusable):
            assert "\n" not in found.reason


# ---- the real CLI, in-process, with a fake model ----------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file's bytes and every directory (None) under root."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def workspace():
    """A tree deep enough that a name climbing out of --out or --baselines still lands inside it, seen."""
    with tempfile.TemporaryDirectory() as d, pytest.MonkeyPatch.context() as mp:
        top = Path(d)
        root = top / "a" / "b" / "c" / "d" / "e" / "work"
        (root / "reports" / "20000101-000000-old").mkdir(parents=True)
        (root / "reports" / "20000101-000000-old" / "summary.md").write_text("an earlier run\n")
        (root / "a-file").write_text("not a directory\n")
        store = root / "baselines"
        store.mkdir()
        fakes.install(mp, top / "model")
        mp.chdir(root)
        yield top, root


def cli_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, out.getvalue(), err.getvalue()


OUT_CHOICES = ["reports", "a-file", "a-file/sub", "new/deeper"]
TIMEOUTS = ["-5", "0", "nan", "inf", "-inf", "1e400", "abc", "", "1", "0.5", "1e-300"]


def check_run(
    top: Path, root: Path, out_dir: str, before: dict[str, bytes], code: int, out: str, err: str, *, update: bool
) -> None:
    """No traceback; earlier files untouched; new files only in one new run directory under --out (and, when asked,
    under --baselines); a refusal before the run is one line on stderr."""
    assert "Traceback" not in out + err, out + err
    assert code in (0, 1, 2), (code, out, err)
    after = snapshot(top)
    store = str((root / "baselines").relative_to(top))
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed or update and all(p.startswith(store + "/") for p in changed), changed
    new = [p for p in after if p not in before and not (update and (p == store or p.startswith(store + "/")))]
    where = str((root / out_dir).relative_to(top))
    history = f"{where}/history"  # every run appends its headline metrics here, beside the run directories
    new = [p for p in new if p != history and not p.startswith(history + "/")]
    runs = {Path(p).relative_to(where).parts[0] for p in new if after[p] is not None and p.startswith(where + "/")}
    if not runs:  # refused before anything ran: one line, nothing written
        assert not new, new
        assert code == 2 and len(err.strip().splitlines()) == 1, (code, err)
        assert err.startswith("harness") and " error: " in err, err
        return
    assert len(runs) == 1, runs
    run_dir = f"{where}/{runs.pop()}"
    assert all(p == run_dir or p.startswith(run_dir + "/") or where == p or where.startswith(p + "/") for p in new), new
    assert {f"{run_dir}/summary.md", f"{run_dir}/report.json"} <= set(new), new


@SOME
@given(data=st.data())
def test_cli_with_a_fake_model(data):
    doc = (
        mutated(data, data.draw(st.sampled_from(BASES), label="base"), values=SMALL, at_most=2)
        if data.draw(st.booleans(), label="mutate")
        else copy.deepcopy(DETERMINISM)
    )
    if "suite" in doc and isinstance(doc["suite"], dict) and data.draw(st.booleans(), label="rename suite?"):
        doc["suite"]["name"] = data.draw(NAMES, label="suite name")
    if isinstance(doc.get("profiles"), dict) and data.draw(st.booleans(), label="rename profile?"):
        doc["profiles"][data.draw(NAMES, label="profile name")] = doc["profiles"].pop("default", {})
    raw = toml_bytes(doc)
    assume(raw is not None)
    out_dir = data.draw(st.sampled_from(OUT_CHOICES[:1] + OUT_CHOICES), label="--out")
    argv = ["run", "s.toml", "--out", out_dir, "--baselines", "baselines"]
    if data.draw(st.booleans(), label="timeout?"):
        argv += ["--worker-timeout", data.draw(st.sampled_from(TIMEOUTS), label="--worker-timeout")]
    if data.draw(st.booleans(), label="profile?"):
        argv += ["--profile", data.draw(st.sampled_from(["default", "deterministic"]) | NAMES, label="--profile")]
    if data.draw(st.booleans(), label="model?"):
        argv += ["--model", data.draw(NAMES, label="--model")]
    update = data.draw(st.booleans(), label="update?")
    if update:
        argv += ["--update-baselines", "--reason", data.draw(st.sampled_from(["fuzz", "", " "]), label="--reason")]
    argv = [a.replace("\0", "") for a in argv]  # argv is C strings: a NUL cannot reach the program
    with workspace() as (top, root):
        (root / "s.toml").write_bytes(raw)
        before = snapshot(top)
        code, out, err = cli_main(argv)
        check_run(top, root, out_dir, before, code, out, err, update=update)


@SOME
@given(data=st.data())
def test_cli_against_damaged_baselines(data):
    doc = mutated(data, _valid_baseline(), at_most=2)
    with workspace() as (top, root):
        (root / "s.toml").write_bytes(
            toml_bytes({**DETERMINISM, "schedules": [{"kind": "solo"}], "profiles": {"default": {}}})
        )
        kind, suite = run.load(root / "s.toml", run.Options())
        if doc.get("case_hash") == "0123456789abcdef":
            doc["case_hash"] = suite.case_hash
        target = root / "baselines" / str(KEY) / "fz" / "default.json"
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(doc))
        before = snapshot(top)
        code, out, err = cli_main(["run", "s.toml", "--out", "reports", "--baselines", "baselines"])
        check_run(top, root, "reports", before, code, out, err, update=False)


# ---- profile environments, [parallel], [perf], schedule counts and prompt lengths, through the CLI ---------------

# Names and values the OS refuses, or that only just fit: '=' and NUL anywhere, empty names, an over-long value.
ENV_NAMES = st.sampled_from(["A=B", "=", "=x", "X=", "\0", "A\0", ""]) | NAMES | st.sampled_from(["ok_NAME", "a.b-c"])
ENV_VALUES = st.sampled_from(["a\0b", "\0", "x" * 131_069, "x" * 131_070]) | NAMES | st.sampled_from(["", "a=b"])
# Mostly small counts (a run that finishes in milliseconds with the fake model), sometimes far too many.
COUNTS = (
    st.integers(1, 6)
    | st.integers(-3, 0)
    | st.integers(10**6, 2**63 - 1)
    | st.sampled_from([10**9, 2**63 - 1, 333_334])
)
PARALLEL = {k: v for k, v in DETERMINISM.items() if k != "perf"} | {"parallel": {"tp": [1, 2]}}


def os_accepts(env: dict) -> None:
    """The environment a worker or server would start with reaches a real process: the OS takes every variable."""
    from harness.runner import child_env

    subprocess.run(["true"], env=child_env(dict(env)), check=True, timeout=30)


def strict_runners(mp: pytest.MonkeyPatch) -> None:
    """The fake runners (tests/fakes.py), each first starting a real process with the profile's environment."""
    from harness import runner
    from harness.serving import runs as served_runs

    def run_job(job, env, *a, **kw):
        os_accepts(env)
        return fakes.run_job(job, env, *a, **kw)

    def run_interleaved(jobs, timeout_s, run_dir):
        for _, env, _ in jobs:
            os_accepts(env)
        return fakes.run_interleaved(jobs, timeout_s, run_dir)

    def run_served_all(suite, jobs, model_dir, timeout_s, run_dir, interleave):
        for prof, _, _ in jobs:
            os_accepts(dict(prof.env))
        return fakes.run_served_all(suite, jobs, model_dir, timeout_s, run_dir, interleave)

    mp.setattr(runner, "run_job", run_job)
    mp.setattr(runner, "run_interleaved", run_interleaved)
    mp.setattr(served_runs, "run_served_all", run_served_all)


def model_files(folder: Path, context: int) -> None:
    """The fake model's folder gets a real tokenizer.json (a token per word) and a config.json: the parent's context
    and tensor-parallel checks read them."""
    tiny_tokenizer(folder)
    tiny_config(folder, context, num_attention_heads=4, num_key_value_heads=2)


def draw_targeted(data) -> dict:
    """A valid suite with one part drawn wide: the profiles' environments, [parallel], [perf], one schedule's
    counts, or max_new_tokens. The rest stays valid, so the drawn part is what decides how the run ends."""
    from harness.suite import SCHEDULE_PARAMS

    target = data.draw(st.sampled_from(["env", "parallel", "perf", "counts", "max_new_tokens"]), label="target")
    base = {"env": st.sampled_from([DETERMINISM, PARALLEL, SERVED]), "parallel": st.just(PARALLEL)}.get(
        target, st.just(DETERMINISM)
    )
    doc = copy.deepcopy(data.draw(base, label="base"))
    if target == "env":
        for prof in doc["profiles"].values():
            prof["env"] = data.draw(st.dictionaries(ENV_NAMES, ENV_VALUES, min_size=1, max_size=3), label="env")
            if data.draw(st.booleans(), label="device_env?"):
                prof["device_env"] = {"cpu": data.draw(st.dictionaries(ENV_NAMES, ENV_VALUES, max_size=2), label="cpu")}
    elif target == "parallel":
        par = doc["parallel"]
        par["tp"] = data.draw(st.lists(st.integers(-1, 5) | COUNTS, max_size=3) | st.just([1, 2]), label="tp")
        for key, values in (
            ("nnodes", st.integers(-1, 3) | COUNTS),
            ("node_rank", st.integers(-1, 3)),
            ("collective_timeout_s", st.floats(-1, 1e6) | st.integers(-1, 10)),
            ("rdzv_endpoint", st.sampled_from(["", "127.0.0.1:29500", "host", "h:x", ":1"]) | NAMES),
            ("launcher", st.sampled_from(["", "srun {args}", "{args}", "nothing"]) | NAMES),
        ):
            if data.draw(st.booleans(), label=f"parallel.{key}?"):
                par[key] = data.draw(values, label=f"parallel.{key}")
    elif target == "perf":
        for key in ("warmup", "repeats"):
            if data.draw(st.booleans(), label=f"perf.{key}?"):
                doc["perf"][key] = data.draw(st.integers(-1, 3) | COUNTS, label=f"perf.{key}")
    elif target == "counts":
        if data.draw(st.booleans(), label="no perf?"):
            del doc["perf"]
        for _ in range(data.draw(st.integers(1, 2), label="changes")):
            sch = data.draw(st.sampled_from(doc["schedules"]), label="schedule")
            keys = sorted(SCHEDULE_PARAMS[sch["kind"]])
            if not keys:
                continue
            key = data.draw(st.sampled_from(keys), label="key")
            if key == "sizes":
                sch[key] = data.draw(st.lists(COUNTS, max_size=4), label="sizes")
            elif key != "prompt":
                sch[key] = data.draw(COUNTS, label=key)
    else:
        doc["generation"]["max_new_tokens"] = data.draw(st.integers(-1, 64) | COUNTS, label="max_new_tokens")
    return doc


@SOME
@given(data=st.data())
def test_cli_environments_parallel_perf_and_counts(data):
    """Whatever the environments, degrees, passes and counts: exit 0, 1 or 2 with no traceback, within two minutes;
    an environment the harness accepts is one the OS accepts (a real process starts with it)."""
    raw = toml_bytes(draw_targeted(data))
    assume(raw is not None)
    with workspace() as (top, root), pytest.MonkeyPatch.context() as mp:
        strict_runners(mp)
        model_files(top / "model", 4096)
        (root / "s.toml").write_bytes(raw)
        before = snapshot(top)
        with within(120):
            code, out, err = cli_main(["run", "s.toml", "--out", "reports", "--baselines", "baselines"])
        check_run(top, root, "reports", before, code, out, err, update=False)


@SOME
@given(
    words=st.lists(st.integers(0, 80), min_size=1, max_size=4),
    max_new=st.integers(-1, 100) | st.sampled_from([32768, 32769, 10**9]),
    context=st.integers(1, 200),
    chat=st.booleans(),
)
def test_cli_prompt_lengths_against_the_context(words: list[int], max_new: int, context: int, chat: bool):
    """Prompts of any length against any context: a prompt whose tokens + max_new_tokens exceed the model's context
    is refused in one line, exit 2, before anything is written; prompts that fit run."""
    prompts = [{"id": f"p{i}", "text": " ".join(["word"] * n), "chat": chat} for i, n in enumerate(words)]
    doc = {**DETERMINISM, "prompts": {"items": prompts}, "generation": {"max_new_tokens": max_new}}
    if len(prompts) < 2:
        doc["schedules"] = [s for s in doc["schedules"] if s["kind"] != "needle"]
    with workspace() as (top, root):
        model_files(top / "model", context)
        (root / "s.toml").write_bytes(toml_bytes(doc))
        before = snapshot(top)
        with within(120):
            code, out, err = cli_main(["run", "s.toml", "--out", "reports", "--baselines", "baselines"])
        check_run(top, root, "reports", before, code, out, err, update=False)
        valid = all(words) and 1 <= max_new <= 32768
        if valid and max(words) + max_new > context:
            assert code == 2 and "exceed the model's context" in err, (code, err)
        elif valid:
            assert code in (0, 1), (code, out, err)


# ---- a few through real processes -------------------------------------------------------------------------------


@pytest.mark.process
@FEW
@given(data=st.data())
def test_cli_process_refuses_bad_suites_in_one_line(data):
    raw = (
        data.draw(st.binary(max_size=200), label="raw")
        if data.draw(st.booleans(), label="bytes?")
        else toml_bytes(mutated(data, data.draw(st.sampled_from(BASES), label="base")))
    )
    assume(raw is not None)
    with tempfile.TemporaryDirectory() as d:
        suite = Path(d) / "s.toml"
        suite.write_bytes(raw)
        assume(load_only(suite, Path(d)) is None)  # a valid suite would load a real model
        p = subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(Path(d) / "out")],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (Path(d) / "out").exists()
