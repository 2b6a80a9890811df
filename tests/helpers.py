"""Helpers shared by the tests: the real CLI in a real process or in this one, suite files, model-folder files,
records built by hand, reports. Test modules share through here, never by importing one another."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from harness.jobs import Job
from harness.records import Record

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """The real command line, in a real process."""
    return subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def cli_in_process(*argv: object) -> tuple[int, str, str]:
    """The CLI in this process (so monkeypatched fakes apply): (exit code, stdout, stderr)."""
    import contextlib
    import io

    from harness import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def refused(code: int, err: str, *words: str, exit: int = 2) -> str:
    """One line on stderr, with the words that tell the user what is wrong."""
    assert code == exit, (code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("harness") and " error: " in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def install_adapter(tmp: Path, name: str, module: str, source: str, cls: str) -> dict[str, str]:
    """A real installed distribution (dist-info with a `harness.adapters` entry point) on PYTHONPATH, as a user
    would ship one: the env to run the CLI with, so its worker processes find the adapter too."""
    return install_plugin(tmp, "harness.adapters", name, module, source, cls)


def install_plugin(tmp: Path, group: str, name: str, module: str, source: str, attr: str) -> dict[str, str]:
    """A real installed distribution with one entry point in `group` (harness.kinds, harness.adapters,
    harness.checks), on PYTHONPATH: the env to run the CLI with."""
    site = tmp / "site"
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir(parents=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {module}:{attr}\n")
    return {"PYTHONPATH": str(site)}


SLOW_ADAPTER = """
import os
import time

from harness.adapters.hf import HFAdapter

FRACTION = float(os.environ["HARNESS_SLOW_FRACTION"])


class SlowAdapter(HFAdapter):
    \"\"\"The real adapter, with every forward pass slower by HARNESS_SLOW_FRACTION.\"\"\"

    def load(self):
        phases = super().load()
        forward = self.model.forward

        def slow(*args, **kwargs):
            t = time.perf_counter()
            out = forward(*args, **kwargs)
            time.sleep(FRACTION * (time.perf_counter() - t))
            return out

        self.model.forward = slow
        return phases
"""


def install_slow_adapter(tmp: Path, fraction: float) -> dict[str, str]:
    """The `slow` adapter (the real model, every forward pass `fraction` slower): the env to run the CLI with."""
    return {
        **install_adapter(tmp, "slow", "slow_adapter", SLOW_ADAPTER, "SlowAdapter"),
        "HARNESS_SLOW_FRACTION": str(fraction),
    }


def run_plugin(suite: Path, junit: Path, *args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """`pytest -p harness.pytest_plugin SUITE` in a real process, from `cwd`, with this checkout's harness."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "harness.pytest_plugin",
            str(suite),
            "-o",
            "testpaths=",
            f"--junitxml={junit}",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        },
    )


def lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def start_until_mid_run(suite: Path, out: Path, job: str, records: int) -> tuple[subprocess.Popen, Path, dict]:
    """`harness run SUITE` in a real process, returned once JOB's worker has written its meta and at least
    RECORDS records: the process, the run's records folder and that meta (pids of the worker or its ranks)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        recs = next(iter(out.glob("*/records")), None) if out.exists() else None
        meta = recs / f"{job}.meta.json" if recs else None
        if recs and meta and meta.exists() and lines(recs / f"{job}.jsonl") >= records:
            return proc, recs, json.loads(meta.read_text())
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the {job} worker never produced {records} records")


def write_suite(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


# A determinism suite on the fake model (tests/fakes.py): two prompts, solo and repeat, three new tokens.
FAKE_SUITE = """
[suite]
name = "{name}"
version = 1
[model]
ref = "fake-model"
[generation]
max_new_tokens = 3
[prompts]
{prompts}
[[schedules]]
kind = "solo"
[[schedules]]
kind = "repeat"
[profiles.default]
"""
FAKE_ITEMS = 'items = [{id = "a", text = "one"}, {id = "b", text = "two"}]'

# A load-time sweep on the fake model: two OMP settings, one repeat, caches left alone.
LOADTIME_SUITE = """
[suite]
name = "lt"
version = 1
[model]
ref = "fake-model"
[loadtime]
omp = [1, "unset"]
repeats = 1
drop_caches = false
"""


def suite(tmp_path: Path, *, name: str = "s", prompts: str = FAKE_ITEMS, file: str = "s.toml") -> Path:
    """FAKE_SUITE named `name` with `prompts` as its [prompts] body, written to tmp_path / file."""
    return write_suite(tmp_path / file, FAKE_SUITE.format(name=name, prompts=prompts))


def tiny_tokenizer(folder: Path, words: list[str] | None = None) -> None:
    """A real tokenizers.json: one token per whitespace-separated word (unknown words are <unk>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = words or ["one", "two", "three", "four", "five", "six", "word", "sys"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


def tiny_config(folder: Path, context: int, **extra) -> None:
    """A config.json with a context of `context` tokens (max_position_embeddings) and two attention heads."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": "llama", "max_position_embeddings": context, "num_attention_heads": 2, **extra}
    (folder / "config.json").write_text(json.dumps(cfg))


def record(
    prompt_id: str = "p",
    *,
    kind: str = "solo",
    tokens: Sequence[int] = (1, 2, 3, 4),
    fingerprints: Sequence[str] | None = None,
    topk: Sequence[tuple[Sequence[int], Sequence[float]]] | None = None,
    batch: Sequence[str] | None = None,
    position: int = 0,
    batch_id: str | None = None,
    **fields,
) -> Record:
    """A Record built by hand, for analysis: profile "default", schedule named as its kind, batch `batch_id` (default
    f"{kind}/0") of `batch` (default: this prompt alone), finish "length", no text, a step every 0.1 s, and per token t
    the piece f"<{t}>" and the fingerprint f"fp{t}". `topk` is (ids, logprobs) per step; by default the chosen token
    first at -0.1, then 900 + step at -0.6 (a margin of 0.5) and 950 at -2.0. Any other Record field (profile, schedule,
    pieces, text, token_times, topk_ids, topk_logprobs, level, warmup, ...) is given by name and wins."""
    tokens = list(tokens)
    topk = topk or [([t, 900 + i, 950], [-0.1, -0.6, -2.0]) for i, t in enumerate(tokens)]
    values = {
        "profile": "default",
        "prompt_id": prompt_id,
        "schedule": kind,
        "kind": kind,
        "batch_id": batch_id or f"{kind}/0",
        "batch": list(batch) if batch is not None else [prompt_id],
        "position": position,
        "tokens": tokens,
        "pieces": [f"<{t}>" for t in tokens],
        "text": "",
        "finish_reason": "length",
        "fingerprints": list(fingerprints) if fingerprints is not None else [f"fp{t}" for t in tokens],
        "topk_ids": [list(ids) for ids, _ in topk],
        "topk_logprobs": [list(lps) for _, lps in topk],
        "token_times": [0.1 * (i + 1) for i in range(len(tokens))],
    }
    return Record(**{**values, **fields})


def job(name: str = "default", tp: int = 1, profile: str = "default") -> Job:
    """A Job as a run folder's jobs/<job>.json holds it, for tests that read records without running a worker."""
    return Job(
        name=name,
        profile=profile,
        model_ref="m",
        model_dir="m",
        device="cpu",
        dtype="float32",
        records="",
        meta="",
        tp=tp,
    )


@contextlib.contextmanager
def within(seconds: int) -> Iterator[None]:
    """Fail, instead of sitting silent, when the block takes longer than `seconds` (a plan expanding forever, a
    parser in a loop): an AssertionError, so that a hypothesis example fails like any other."""

    def hung(*_: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    except TimeoutError as e:
        raise AssertionError(str(e)) from None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# A tensor parallel suite on the fake model; TP is replaced by the degrees ([1, 3], "auto").
TP_TOML = """
[suite]
name = "tp"
version = 1
[prompts]
items = [{id = "a", text = "x"}, {id = "b", text = "y"}]
[parallel]
tp = TP
[[schedules]]
kind = "solo"
[[schedules]]
kind = "repeat"
[[schedules]]
kind = "permutation"
count = 1
[profiles.default]
[profiles.deterministic]
env = { HCCL_DETERMINISTIC = "true" }
expect = { cpu = "bitwise" }
"""


def only_run_dir(out: Path) -> Path:
    dirs = [d for d in out.iterdir() if d.is_dir() and d.name != "history"]  # the run history lives beside the runs
    assert len(dirs) == 1, dirs
    return dirs[0]


def load_report(out: Path) -> dict:
    return json.loads((only_run_dir(out) / "report.json").read_text())


MODEL_FIXTURES = ROOT / "tests" / "fixtures" / "models"  # published config.json of real models (no weights)


def dry_run_jobs(out: str) -> dict[str, list[tuple[str, int]]]:
    """The planned jobs per suite, read off the dry run's job tables."""
    found: dict[str, list[tuple[str, int]]] = {}
    suite = ""
    for line in out.splitlines():
        if m := re.match(r"dry run of (\S+) ", line):
            suite = Path(m[1]).name
            found[suite] = []
        elif m := re.match(r"\| (\S+)\s+\| \S+\s+\|\s+(\d+) \|\s+\d+ \|", line):
            found[suite].append((m[1], int(m[2])))
    return found


def tiny_llama(out: Path, tokenizer_dir: Path, *, heads: int = 4, kv_heads: int = 2, hidden: int = 32) -> Path:
    """A 2-layer random Llama (seed 0) saved in `out`, with the tokenizer files of `tokenizer_dir`: fast, and a real
    HF directory to load. Heads and KV heads choose which tensor parallel degrees it splits into."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=49152,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            shutil.copy(f, out / f.name)
    return out
