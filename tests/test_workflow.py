"""The shipped GitHub workflow for a self-hosted Ascend runner: valid against GitHub's workflow schema (check-jsonschema
with its vendored schema, no network), and what it runs: the workflow is parsed, and each nox command it runs is run
here, exactly as written plus --dry-run, with the job's environment and --device npu against real model
configurations (tests/fixtures/models/), on this CPU host: exit 0 and the jobs planned per degree."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import MODEL_FIXTURES as FIXTURES
from .helpers import ROOT
from .helpers import dry_run_jobs as jobs

pytestmark = pytest.mark.process  # runs the linter's CLI and nox
yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

WORKFLOW = ROOT / ".github" / "workflows" / "nightly-ascend.yml"
PROFILES = ("default", "deterministic", "strict")
# tp = "auto" on the 8 cards the workflow makes visible: the divisors of both head counts, up to 8
DEGREES = {
    "Qwen2.5-7B-Instruct": (1, 2, 4),  # 28 heads, 4 KV heads
    "Llama-3.1-8B": (1, 2, 4, 8),  # 32, 8
    "Qwen2.5-72B": (1, 2, 4, 8),  # 64, 8
    "DeepSeek-V2-Lite": (1, 2, 4, 8),  # 16, 16 (MLA)
}


def job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["determinism"]


def runs() -> list[str]:
    return [str(s["run"]).strip() for s in job()["steps"] if "run" in s]


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_nightly_workflow_is_valid():
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (pip install check-jsonschema)")
    p = lint(WORKFLOW)
    assert p.returncode == 0, p.stdout + p.stderr
    steps = job()["steps"]
    uses = [s.get("uses", "").split("@")[0] for s in steps]
    assert {"actions/cache/restore", "actions/cache/save", "actions/upload-artifact"} <= set(uses)
    assert [s["with"]["path"] for s in steps if s.get("uses", "").startswith("actions/cache/")] == [
        "reports/history"
    ] * 2


def test_the_linter_sees_a_broken_workflow(tmp_path: Path):
    pytest.importorskip("check_jsonschema", reason="check-jsonschema is not installed (pip install check-jsonschema)")
    broken = tmp_path / "broken.yml"
    broken.write_text(
        WORKFLOW.read_text().replace("runs-on:", "runs_on:").replace("timeout-minutes: 240", "timeout-minutes: soon")
    )
    p = lint(broken)
    assert p.returncode == 1 and "runs-on" in p.stdout + p.stderr


def test_every_card_and_the_version_files_are_mounted():
    words = shlex.split(job()["container"]["options"])
    devices = [words[i + 1] for i, w in enumerate(words) if w == "--device"]
    volumes = [words[i + 1].split(":")[1] for i, w in enumerate(words) if w == "-v"]
    assert devices == [f"/dev/davinci{i}" for i in range(8)] + [
        "/dev/davinci_manager",
        "/dev/devmm_svm",
        "/dev/hisi_hdc",
    ]
    assert {"/usr/local/Ascend/driver", "/usr/local/Ascend/firmware/version.info", "/usr/local/bin/npu-smi"} <= set(
        volumes
    )
    visible = str(job()["env"]["ASCEND_RT_VISIBLE_DEVICES"]).split(",")
    assert len(visible) == 8


def test_it_installs_the_npu_extra_without_touching_the_images_torch():
    from harness.tomltable import tomllib

    install = next(r for r in runs() if ".[npu]" in r)
    pip = next(shlex.split(ln) for ln in install.splitlines() if ".[npu]" in ln)
    constraint = pip[pip.index("--constraint") + 1]
    freeze = next(ln for ln in install.splitlines() if constraint in ln and "freeze" in ln)
    assert "torch" in freeze and "npu" in freeze  # the image's torch and torch_npu, pinned
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["npu"]
    names = {re.split(r"[<>=;\[ ]", r, maxsplit=1)[0].lower() for r in extra}
    assert not names & {"torch", "torch_npu", "torch-npu", "accelerate", "vllm"}  # nothing that replaces torch
    needed = {"transformers", "tokenizers", "safetensors", "numpy", "scipy", "tabulate", "tqdm", "jinja2"}
    assert needed | {"matplotlib", "markdown-it-py", "pytest", "tomli"} <= names


def test_the_doctor_runs_before_any_suite():
    commands = runs()
    doctor = next(i for i, r in enumerate(commands) if r.startswith("harness doctor"))
    assert "--device npu" in commands[doctor]
    assert all(i > doctor for i, r in enumerate(commands) if r.startswith("nox "))


def run_step(command: str, model: Path, tmp: Path) -> subprocess.CompletedProcess:
    """A step's nox command as the runner would run it, plus --dry-run (and the JUnit file and --out in `tmp`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASCEND_", "CUDA_VISIBLE"))}
    env |= {k: str(v) for k, v in job()["env"].items() if "${{" not in str(v)}
    env |= {"MODEL": str(model), "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])}
    words = shlex.split(command.replace('"$MODEL"', shlex.quote(str(model))))
    assert words[0] == "nox" and "--no-venv" in words and "--" in words, command
    extra = [] if "--dry-run" in words else ["--dry-run"]
    argv = [sys.executable, "-m", "nox", *words[1:], *extra, f"--junitxml={tmp / 'junit.xml'}", "--out", str(tmp / "o")]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("model", sorted(DEGREES))
def test_the_nightly_commands_plan_every_degree_on_real_configs(tmp_path: Path, model: str):
    steps = [r for r in runs() if r.startswith("nox --no-venv -s determinism")]
    assert len(steps) >= 2  # the plan and the suites
    planned: dict[str, list[tuple[str, int]]] = {}
    for i, command in enumerate(steps):
        p = run_step(command, FIXTURES / model, tmp_path / str(i))
        out = p.stdout + p.stderr
        assert p.returncode == 0, out[-4000:]
        assert "result: the run would start (exit 0)" in out and " skipped" in out and "failed" not in out
        assert not (tmp_path / str(i) / "o").exists()  # no run folder
        planned |= jobs(out)
    single = [("default", 1), ("deterministic", 1)]
    assert planned["determinism.toml"] == single and planned["determinism-bf16.toml"] == single
    tp = [(f"{p}-tp{d}", d) for p in PROFILES for d in DEGREES[model]]
    assert planned["determinism-tp.toml"] == tp and planned["determinism-tp-bf16.toml"] == tp
