"""Tensor parallel without a model: [parallel] validation, the degree check against the model's heads, tp-invariance
analysis, torchrun's failure summary, per-flag backend notes, and check names per degree (fake workers)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from harness import group, profiles
from harness.analysis.determinism import tp_invariance
from harness.errors import OK
from harness.ports import free_port
from harness.suite import SuiteError
from harness.suite_parse import parse
from harness.suitekind import DETERMINISM

from . import fakes
from .helpers import TP_TOML, record, refused, write_suite
from .helpers import cli_in_process as harness

BASE = {
    "suite": {"name": "t", "version": 1},
    "prompts": {"items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]},
    "schedules": [{"kind": "solo"}, {"kind": "repeat"}, {"kind": "permutation", "count": 1}],
    "profiles": {"default": {}, "deterministic": {"env": {"HCCL_DETERMINISTIC": "true"}}},
}


def _suite(**parallel):
    return parse({**BASE, "parallel": parallel}, "t.toml")


def test_parallel_defaults_to_one_process_and_keeps_single_device_names():
    s = parse(BASE, "t.toml")
    assert s.parallel.tp == (1,) and not s.parallel.multi and s.parallel.collective_timeout_s == 300
    assert s.parallel.job_name("default", 1) == "default"
    assert DETERMINISM.items(s)[:3] == [
        ("default", "repeatability"),
        ("default", "batch-invariance"),
        ("default", "baseline"),
    ]


def test_degrees_name_jobs_and_checks_per_degree():
    s = _suite(tp=[3, 1], collective_timeout_s=12)
    assert s.parallel.tp == (1, 3) and s.parallel.collective_timeout_s == 12
    assert s.parallel.job_name("deterministic", 3) == "deterministic-tp3"
    names = [n for g, n in DETERMINISM.items(s) if g == "default"]
    assert names == [
        "tp1::repeatability",
        "tp1::batch-invariance",
        "tp1::baseline",
        "tp3::repeatability",
        "tp3::batch-invariance",
        "tp3::baseline",
        "tp-invariance",
    ]


@pytest.mark.parametrize(
    "parallel, words",
    [
        ({"tp": []}, "parallel.tp: expected a non-empty list"),
        ({"tp": [1, 1]}, "distinct"),
        ({"tp": [0]}, "parallel.tp"),
        ({"tp": [True]}, "parallel.tp"),
        ({"tp": "3"}, "parallel.tp: expected a non-empty list"),
        ({"collective_timeout_s": 0}, "parallel.collective_timeout_s"),
        ({"tpp": [3]}, "did you mean 'tp'"),
        ({"nnodes": 2, "tp": [3]}, "degree 3 does not spread evenly over nnodes = 2"),
        ({"nnodes": 2, "tp": [2]}, "parallel.rdzv_endpoint: a group over several hosts"),
        ({"nnodes": 2, "node_rank": 2, "tp": [2], "rdzv_endpoint": "h:1"}, "parallel.node_rank"),
        ({"rdzv_endpoint": "nohost"}, "parallel.rdzv_endpoint"),
        ({"launcher": "srun torchrun"}, "{args}"),
    ],
)
def test_bad_parallel_is_one_line(parallel, words):
    with pytest.raises(SuiteError) as e:
        _suite(**parallel)
    msg = str(e.value)
    assert words in msg and "\n" not in msg and msg.startswith("t.toml: ")


def test_parallel_refused_with_perf_and_with_a_server():
    with pytest.raises(SuiteError, match=r"parallel.tp: a \[perf\] suite"):
        parse({**BASE, "parallel": {"tp": [1, 3]}, "perf": {}}, "t.toml")
    with pytest.raises(SuiteError, match="parallel.tp: a served model shards itself"):
        parse({**BASE, "parallel": {"tp": [1, 3]}, "endpoint": {"base_url": "http://127.0.0.1:1"}}, "t.toml")


def _fake_model(monkeypatch, tmp_path: Path, heads: int = 9, kv: int = 3) -> list[str]:
    prepared = fakes.install(monkeypatch, tmp_path / "model")
    (tmp_path / "model" / "config.json").write_text(
        json.dumps({"num_attention_heads": heads, "num_key_value_heads": kv})
    )
    return prepared


def test_degree_that_does_not_divide_the_heads_is_refused_before_any_worker(tmp_path: Path, monkeypatch):
    _fake_model(monkeypatch, tmp_path)
    path = write_suite(tmp_path / "tp.toml", TP_TOML.replace("TP", "[1, 2]"))
    code, out, err = harness("run", path, "--out", tmp_path / "out")
    refused(
        code,
        err,
        f"{path}: parallel.tp: degree 2 does not divide the model's 9 attention heads and 3 KV heads",
        "divide both: 1, 3",
    )
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # no run, no worker


def test_fake_groups_give_per_degree_verdicts_and_tp_invariance(tmp_path: Path, monkeypatch):
    _fake_model(monkeypatch, tmp_path)
    path = write_suite(tmp_path / "tp.toml", TP_TOML.replace("TP", "[1, 3]"))
    out = tmp_path / "out"
    code, stdout, err = harness("run", path, "--out", out, "--baselines", tmp_path / "b")
    assert code == OK, (stdout, err)
    rep = json.loads(next(out.glob("*/report.json")).read_text())
    assert [(j["name"], j["tp"]) for j in rep["jobs"]] == [
        ("default-tp1", 1),
        ("default-tp3", 3),
        ("deterministic-tp1", 1),
        ("deterministic-tp3", 3),
    ]
    tpi = [v for v in rep["verdicts"] if v["property"] == "tp-invariance"]
    # the fake worker writes the same records at every degree: bitwise, batch for batch (2 solo + 4 repeat + 2 perm)
    assert [(v["profile"], v["tp"], v["status"], v["bitwise"], v["sequences"]) for v in tpi] == [
        ("default", 3, "report", 8, 8),
        ("deterministic", 3, "pass", 8, 8),
    ]
    assert {(v["property"], v["tp"]) for v in rep["verdicts"] if v["profile"] == "default"} >= {
        ("repeatability", 1),
        ("repeatability", 3),
        ("batch-invariance", 3),
    }
    assert "|   tp | property" in stdout
    # each degree is a series of its own in the run history: one row per run, TP 3 with its tp-invariance
    hist = {f.name: f.read_text().splitlines() for f in (out / "history").rglob("*.csv")}
    assert sorted(hist) == ["default-tp1.csv", "default-tp3.csv", "deterministic-tp1.csv", "deterministic-tp3.csv"]
    assert all(len(rows) == 2 for rows in hist.values())  # header and this run
    assert "tp-invariance.share_bitwise" in hist["deterministic-tp3.csv"][0]
    assert "tp-invariance.share_bitwise" not in hist["deterministic-tp1.csv"][0]


def _pair(tokens=(1, 2, 3, 4), fps=None, bid="solo/0", position=0):
    return record(tokens=tokens, fingerprints=fps, batch_id=bid, position=position)


def test_tp_invariance_pairs_batch_for_batch_and_reports_levels():
    ref = [_pair(bid="solo/0"), _pair(bid="solo/1"), _pair(bid="perm/0", position=1)]
    other = [
        _pair(bid="solo/0"),  # bitwise
        _pair(bid="solo/1", fps=["fp1", "XX", "fp3", "fp4"]),  # same tokens, bits differ at step 1
        _pair(bid="perm/0", position=1, tokens=(1, 2, 7, 8)),  # diverged at step 2
        _pair(bid="perm/9"),  # no twin at the reference degree
    ]
    v = tp_invariance(ref, other, "default", "tokens", tp=3, k=3)
    assert (v.property, v.tp, v.status, v.sequences, v.bitwise, v.token_identical) == (
        "tp-invariance",
        3,
        "fail",
        3,
        1,
        2,
    )
    assert v.worst is not None and v.worst.first_token_step == 2 and v.worst.batch_id == "perm/0"
    assert "TP 3 against TP 1" in v.reason and "1 sequences had no TP 1 twin" in v.reason
    tokens = [c for c in v.comparisons if c.level == "tokens"]
    assert tokens[0].first_bit_step == 1


def test_tp_invariance_bitwise_passes_and_no_data_when_reference_is_missing():
    same = [_pair(bid=f"solo/{i}") for i in range(3)]
    assert tp_invariance(same, same, "d", "bitwise", tp=3).status == "pass"
    assert tp_invariance([], same, "d", "bitwise", tp=3).status == "no data"


FAILED = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
harness.worker FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-27_20:03:57
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 16816)  (SIGTERM)
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-27_20:03:57
  host      : localhost
  rank      : 4 (local_rank: 1)
  exitcode  : -9 (pid: 16817)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 16817
=======================================================
"""


def test_first_failure_is_torchruns_root_cause():
    assert group.first_failure(FAILED) == group.Failure(rank=4, local_rank=1, exitcode=-9)
    assert group.first_failure("all fine") is None


def test_rank_tail_reads_torchruns_log_dir(tmp_path: Path):
    d = tmp_path / "none_abc" / "attempt_0" / "1"
    d.mkdir(parents=True)
    (d / "stderr.log").write_text("a\n\nb\nerror: model would not load\n")
    assert group.rank_tail(tmp_path, 1) == ["a", "b", "error: model would not load"]
    assert group.rank_tail(tmp_path, 2) == []


def test_threads_per_rank_share_the_cores(monkeypatch):
    monkeypatch.setattr(group, "cores", lambda: 8)
    assert [group.omp_threads(n) for n in (1, 3, 8, 16)] == [8, 2, 1, 1]
    # every process of a suite gets its largest group's share, the reference degree included
    assert group.suite_threads(_suite(tp=[1, 3]).parallel) == 2
    assert group.suite_threads(_suite(tp=[1, 4], nnodes=2, rdzv_endpoint="h:1").parallel) == 4
    la = group.launch("d-tp2", 2, _suite(tp=[1, 2, 4]).parallel, Path("j"), Path("r"), "m")
    assert la.env["OMP_NUM_THREADS"] == "2"


def test_launch_line_and_environment(tmp_path: Path):
    s = _suite(tp=[1, 3], collective_timeout_s=30)
    la = group.launch("default-tp3", 3, s.parallel, tmp_path / "job.json", tmp_path / "ranks", "mark-1")
    assert la.argv[1:3] == ["-m", "torch.distributed.run"]
    a = la.argv
    assert a[a.index("--nproc-per-node") + 1] == "3" and a[a.index("--max-restarts") + 1] == "0"
    assert a[a.index("--rdzv-endpoint") + 1].startswith("127.0.0.1:") and a[-3:-1] == ["-m", "harness.worker"]
    assert "join_timeout=30" in a and la.env[group.MARK] == "mark-1"
    custom = _suite(tp=[2], nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400", launcher="srun -N2 {args}")
    lb = group.launch("d-tp2", 2, custom.parallel, tmp_path / "job.json", tmp_path / "ranks", "m")
    assert lb.argv[:2] == ["srun", "-N2"] and "--nnodes" in lb.argv and "10.0.0.1:29400" in lb.argv
    assert lb.argv[lb.argv.index("--nproc-per-node") + 1] == "1" and lb.env["HARNESS_NODE_RANK"] == "1"


def test_a_held_rendezvous_port_is_refused():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert "is in use on this host" in group.rendezvous_problem(f"127.0.0.1:{port}")
    assert group.rendezvous_problem(f"127.0.0.1:{free_port()}") == ""
    assert group.rendezvous_problem("node0.example:29400") == ""  # another host: only it can tell


def test_group_note_says_per_flag_what_the_backend_ignores():
    ranks = [{"backend": "gloo", "env": {"HCCL_DETERMINISTIC": "strict", "OMP_NUM_THREADS": "1"}} for _ in range(3)]
    note = profiles.group_note("strict", 3, {"ranks": ranks})
    assert (
        note == "profile strict tp3: 3 ranks on gloo ran with HCCL_DETERMINISTIC=strict (read by hccl; ignored by gloo)"
    )
    ranks[2]["env"]["HCCL_DETERMINISTIC"] = "true"
    assert "strict/true (ranks differ)" in profiles.group_note("strict", 3, {"ranks": ranks})
    hccl = [{"backend": "hccl", "env": {"HCCL_DETERMINISTIC": "true"}}]
    assert "(read by hccl)" in profiles.group_note("d", 2, {"ranks": hccl})
    assert profiles.group_note("d", 1, {}) == ""


def test_command_line_degrees_override_the_suite(tmp_path: Path, monkeypatch):
    # --model to a bigger checkpoint needs other degrees: --tp gives them without editing the suite
    _fake_model(monkeypatch, tmp_path, heads=28, kv=4)
    path = write_suite(tmp_path / "tp.toml", TP_TOML.replace("TP", "[1, 3]"))
    code, _, err = harness("run", path, "--out", tmp_path / "o1")
    refused(code, err, "degree 3 does not divide the model's 28 attention heads and 4 KV heads", "both: 1, 2, 4")
    code, stdout, err = harness("run", path, "--out", tmp_path / "o2", "--tp", "1,4", "--profile", "default")
    assert code == OK, (stdout, err)
    rep = json.loads(next((tmp_path / "o2").glob("*/report.json")).read_text())
    assert [j["name"] for j in rep["jobs"]] == ["default-tp1", "default-tp4"]
    code, _, err = harness("run", path, "--nnodes", "2", "--tp", "1,4")
    refused(code, err, "parallel.rdzv_endpoint: a group over several hosts needs node 0's host:port")
