"""Worker groups under real torchrun: the embedded model at TP 3 against TP 1 over gloo, and faults in a group (a rank
killed, a rank hanging in a collective, a rank that cannot load, a held rendezvous port), each ending its job as
`crashed` or `load-failed` with the rank named, the other jobs run, exit 3 and no process left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import (
    ROOT,
    install_adapter,
    lines,
    load_report,
    only_run_dir,
    run_cli,
    run_plugin,
    start_until_mid_run,
    write_suite,
)

pytestmark = pytest.mark.process  # torchrun, its ranks and a real model


def group_pids(run_id: str, job: str = "") -> list[int]:
    """Live processes carrying this run's (and job's) group marker: torchrun's ranks are in sessions of their own,
    so only their environment ties them to the run."""
    needle = f"HARNESS_GROUP={run_id}/{job}".encode()
    found = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (d / "environ").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


REAL = """
[suite]
name = "tp-real"
version = 1
[model]
ref = "smollm2-135m"
[generation]
max_new_tokens = 6
[prompts]
items = [{id = "fr", chat = true, text = "What is the capital of France?"},
         {id = "add", chat = true, text = "What is 17 + 25?"}]
[parallel]
tp = [1, 3]
[[schedules]]
kind = "solo"
[[schedules]]
kind = "repeat"
[profiles.deterministic]
env = { HCCL_DETERMINISTIC = "true", LCCL_DETERMINISTIC = "1" }
expect = { cpu = { repeatability = "bitwise", tp-invariance = "tokens" } }
"""


def test_embedded_model_at_tp3_against_tp1_under_torchrun(tmp_path: Path, embedded_dir: Path):
    suite = write_suite(tmp_path / "tp.toml", REAL)
    junit = tmp_path / "junit.xml"
    p = run_plugin(suite, junit, "--out", str(tmp_path / "r"), "-rA", cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    for item in (
        "tp.toml::deterministic::tp1::repeatability",
        "tp.toml::deterministic::tp3::repeatability",
        "tp.toml::deterministic::tp-invariance",
    ):
        assert f"PASSED {item}" in p.stdout, p.stdout[-3000:]
    rep = load_report(tmp_path / "r")
    tp3 = next(j for j in rep["jobs"] if j["name"] == "deterministic-tp3")
    ranks = tp3["worker"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1, 2] and len({r["pid"] for r in ranks}) == 3
    for r in ranks:  # every rank's load phases, memory, threads and the flags it ran with
        assert r["backend"] == "gloo" and r["threads"] == max(1, len(os.sched_getaffinity(0)) // 3)
        assert {"read", "init_group", "first_forward"} <= set(r["load_s"]) and r["peak_rss_mb"] > 100
        assert r["env"]["HCCL_DETERMINISTIC"] == "true" and r["env"]["OMP_NUM_THREADS"] == str(r["threads"])
    v = next(v for v in rep["verdicts"] if v["property"] == "tp-invariance")
    assert v["tp"] == 3 and v["sequences"] == 6 and v["token_identical"] == 6  # solo 2 + repeat 4, twin by twin
    note = next(n for n in rep["notes"] if "tp3" in n)
    assert "HCCL_DETERMINISTIC=true (read by hccl; ignored by gloo)" in note and "LCCL_DETERMINISTIC=1" in note
    assert "| default" not in p.stdout and "Worker groups" in (only_run_dir(tmp_path / "r") / "summary.md").read_text()
    assert not group_pids(only_run_dir(tmp_path / "r").name)


TINY = """
[suite]
name = "tp-faults"
version = 1
[model]
ref = "MODEL"
[generation]
max_new_tokens = 24
[prompts]
items = [PROMPTS]
[parallel]
tp = [2]
collective_timeout_s = 15
[[schedules]]
kind = "solo"
"""
PROMPTS = ", ".join(f'{{id = "p{i}", text = "Tell me fact number {i} about the sea.", chat = true}}' for i in range(12))


def _tiny(tmp_path: Path, model: Path, profiles: str, parallel: str = "") -> Path:
    """The fault suite on the tiny model (4 heads, 2 KV heads: TP 2); `parallel` adds [parallel] keys."""
    body = TINY.replace("MODEL", str(model)).replace("PROMPTS", PROMPTS)
    body = body.replace("collective_timeout_s = 15\n", f"collective_timeout_s = 15\n{parallel}")
    return write_suite(tmp_path / "faults.toml", body + profiles)


def test_killed_rank_tears_the_group_down(tmp_path: Path, tiny_model: Path):
    out = tmp_path / "r"
    suite = _tiny(tmp_path, tiny_model, "[profiles.first]\n[profiles.second]\n")
    proc, recs, meta = start_until_mid_run(suite, out, "first-tp2", records=2)
    os.kill(meta["ranks"][1]["pid"], signal.SIGKILL)
    killed = time.monotonic()
    run_id = recs.parent.name
    while group_pids(run_id, "first-tp2/"):
        assert time.monotonic() - killed < 60, "the group outlived its dead rank"
        time.sleep(0.05)
    teardown = time.monotonic() - killed
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr[-3000:]
    first, second = load_report(out)["jobs"]
    assert first["status"] == "crashed" and first["failed_rank"] == 1 and first["returncode"] == -signal.SIGKILL
    assert "failed: rank 1 was killed by SIGKILL" in first["description"]
    assert 2 <= first["completed"] < first["expected"] == 12
    assert lines(recs / "first-tp2.jsonl") == first["completed"]  # finished batches stay, whole
    assert second["status"] == "ok" and second["completed"] == 12
    assert "rank 1 was killed by SIGKILL" in stdout
    assert not group_pids(run_id)
    print(f"teardown after a rank's death: {teardown:.2f} s")  # docs/tensor-parallel.md quotes it (-s shows it)


FAULTY = '''
import os
import time

import torch.distributed as dist

from harness.adapters.hf import HFAdapter


class FaultAdapter(HFAdapter):
    """The real adapter, with the fault its profile names in TEST_FAULT, on rank 1 only."""

    calls = 0

    def _mine(self, fault):
        return os.environ.get("TEST_FAULT") == fault and dist.is_initialized() and dist.get_rank() == 1

    def load(self):
        if self._mine("load"):
            raise OSError("injected: rank 1 cannot read its shard")
        return super().load()

    def generate(self, prompts):
        self.calls += 1
        if self._mine("hang") and self.calls == 3:
            while True:  # rank 0 waits in the next all-reduce until the collective timeout
                time.sleep(60)
        return super().generate(prompts)
'''


def test_hanging_and_unloadable_ranks_end_their_jobs_and_the_rest_run(tmp_path: Path, tiny_model: Path):
    env = install_adapter(tmp_path, "faulty", "faulty_adapter", FAULTY, "FaultAdapter")
    profiles = (
        '[profiles.hang]\nenv = { TEST_FAULT = "hang" }\n'
        '[profiles.noload]\nenv = { TEST_FAULT = "load" }\n'
        "[profiles.fine]\n"
    )
    out = tmp_path / "r"
    t0 = time.monotonic()
    p = run_cli("run", str(_tiny(tmp_path, tiny_model, profiles)), "--out", str(out), "--adapter", "faulty", env=env)
    wall = time.monotonic() - t0
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    hang, noload, fine = load_report(out)["jobs"]
    assert hang["status"] == "crashed" and hang["completed"] == 2 and hang["failed_rank"] is not None
    # rank 0 gives up in the all-reduce rank 1 never joins: gloo's timeout, named in its stderr tail
    assert hang["failed_rank"] == 0 and any("imed out" in ln or "Timeout" in ln for ln in hang["stderr_tail"])
    assert noload["status"] == "load-failed" and noload["failed_rank"] == 1
    assert "could not start (rank 1)" in noload["description"] and "injected" in noload["description"]
    assert fine["status"] == "ok" and fine["completed"] == 12
    assert not group_pids(only_run_dir(out).name)
    print(f"three groups, one hanging (collective timeout 15 s) and one unloadable: {wall:.1f} s")


def test_a_held_rendezvous_port_fails_the_job_not_the_night(tmp_path: Path, tiny_model: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        path = _tiny(tmp_path, tiny_model, "[profiles.first]\n", f'rdzv_endpoint = "127.0.0.1:{port}"\n')
        out = tmp_path / "r"
        p = run_cli("run", str(path), "--out", str(out))
    assert p.returncode == 3, p.stdout + p.stderr
    job = load_report(out)["jobs"][0]
    assert job["status"] == "load-failed" and job["completed"] == 0
    assert f"rendezvous port 127.0.0.1:{port} is in use" in job["description"]


def _records(out: Path, job: str) -> dict[tuple[str, int], tuple[list[int], list[str]]]:
    lines = (only_run_dir(out) / "records" / f"{job}.jsonl").read_text().splitlines()
    return {(r["batch_id"], r["position"]): (r["tokens"], r["fingerprints"]) for r in map(json.loads, lines)}


def test_two_nodes_of_one_process_match_one_node_of_two(tmp_path: Path, tiny_model: Path):
    """Two torchrun launchers on this host joined by a c10d rendezvous on 127.0.0.1, as two servers would be: the
    same shards and the same gloo all-reduces as one launcher with two processes, so the same bits."""
    # One thread per rank on both sides: the thread count is the only other thing that differs between them.
    suite = _tiny(tmp_path, tiny_model, '[profiles.d]\nenv = { OMP_NUM_THREADS = "1" }\n')
    one = run_cli("run", str(suite), "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    from harness.ports import free_port

    endpoint = f"127.0.0.1:{free_port()}"

    def node(rank: int) -> subprocess.Popen:
        args = ["--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint]
        return subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", str(suite), "--out", str(tmp_path / f"n{rank}"), *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    n0 = node(0)
    host, port = endpoint.split(":")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # node 0 hosts the rendezvous store (two hosts would never race for it)
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                break
        time.sleep(0.1)
    n1 = node(1)
    outs = [n.communicate(timeout=600) for n in (n0, n1)]
    assert (n0.returncode, n1.returncode) == (0, 0), outs
    ranks = load_report(tmp_path / "n0")["jobs"][0]["worker"]["ranks"]
    assert sorted(r["node_rank"] for r in ranks) == [0, 1] and len({r["pid"] for r in ranks}) == 2
    follower = load_report(tmp_path / "n1")
    assert follower["jobs"][0]["status"] == "ok" and follower["verdicts"] == []
    assert "node 1 of 2" in outs[1][0] and not (only_run_dir(tmp_path / "n1") / "records" / "d-tp2.jsonl").exists()
    a, b = _records(tmp_path / "one", "d-tp2"), _records(tmp_path / "n0", "d-tp2")
    assert len(a) == 12 and a == b  # tokens and logits fingerprints, sequence by sequence


def test_worker_timeout_kills_the_launcher_and_sweeps_its_ranks(tmp_path: Path, tiny_model: Path):
    """torchrun SIGKILLed by the runner cannot stop its ranks, which live in sessions of their own: the marker sweep
    must, or they would hang on as orphans (here rank 0 would wait out a 300 s collective timeout)."""
    env = install_adapter(tmp_path, "faulty", "faulty_adapter", FAULTY, "FaultAdapter")
    suite = _tiny(tmp_path, tiny_model, '[profiles.hang]\nenv = { TEST_FAULT = "hang" }\n')
    suite.write_text(suite.read_text().replace("collective_timeout_s = 15", "collective_timeout_s = 300"))
    out = tmp_path / "r"
    p = run_cli("run", str(suite), "--out", str(out), "--adapter", "faulty", "--worker-timeout", "40", env=env)
    assert p.returncode == 3, p.stdout[-3000:] + p.stderr[-3000:]
    job = load_report(out)["jobs"][0]
    assert job["status"] == "timeout" and job["completed"] == 2 and "timed out after" in job["description"]
    assert not group_pids(only_run_dir(out).name)
