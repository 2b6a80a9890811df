"""Time to localise one case on the embedded model (nox -s bench): `harness localize` end to end, the replay
worker's start and model load included. Reported, not asserted (the issue's budget: 30 s on the 2-core VM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..helpers import only_run_dir, run_cli, write_suite

SUITE = """
[suite]
name = "locbench"
version = 1
[model]
ref = "smollm2-135m"
dtype = "float32"
[generation]
max_new_tokens = 8
[prompts]
file = "{prompts}"
[[schedules]]
kind = "solo"
[[schedules]]
kind = "batch-sizes"
sizes = [8]
[profiles.default]
expect = {{ cpu = "report" }}
"""


@pytest.mark.integration
@pytest.mark.process  # embedded_dir converts the model in a child process; the CLI starts workers
def test_time_to_localise_one_case_on_the_embedded_model(benchmark, embedded_dir: Path, tmp_path: Path):
    prompts = tmp_path / "prompts.jsonl"
    general = Path(__file__).resolve().parents[2] / "suites" / "prompts" / "general.jsonl"
    prompts.write_text("".join(general.read_text().splitlines(keepends=True)[:8]))
    suite = write_suite(tmp_path / "locbench.toml", SUITE.format(prompts=prompts))
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"), "--no-history")
    assert p.returncode == 0, p.stderr
    run_dir = only_run_dir(tmp_path / "out")

    def localise():
        q = run_cli("localize", str(run_dir), "--max-cases", "1")
        assert q.returncode == 0, q.stderr
        return q

    q = benchmark.pedantic(localise, rounds=1, iterations=1)
    (entry,) = json.loads((run_dir / "localize.json").read_text())["localization"]
    benchmark.extra_info.update(
        module=entry.get("module", {}).get("name"),
        operator=(entry.get("operator") or {}).get("name"),
        case_s=entry["seconds"],
        load_s=entry["load_s"],
    )
    print(
        f"\n{q.stdout.strip()}\ncase {entry['seconds']:.1f} s, model load {entry['load_s']:.1f} s in the replay worker"
    )
