"""The dry run (`--dry-run`), `tp = "auto"` and the flag catalogue by reader and path, on real model configurations
(tests/fixtures/models/: Qwen2.5-7B-Instruct, Llama-3.1-8B, Qwen2.5-72B, DeepSeek-V2-Lite) for --device npu on this
CPU host: no torch_npu, no weights, no run folder."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from harness import degrees, modelinfo, profiles
from harness.errors import OK, USAGE
from harness.suite import Profile
from harness.suite_parse import parse

from . import fakes
from .helpers import MODEL_FIXTURES as FIXTURES
from .helpers import ROOT, TP_TOML, cli_in_process, run_cli, write_suite
from .helpers import dry_run_jobs as jobs

QWEN7 = FIXTURES / "Qwen2.5-7B-Instruct"
TP_SUITE = ROOT / "suites" / "determinism-tp.toml"
CARDS = "0,1,2,3,4,5,6,7"


@pytest.fixture
def cards(monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", CARDS)


@pytest.mark.parametrize(
    "model, heads, layers, degrees_",
    [
        ("Qwen2.5-7B-Instruct", "28 / 4", "28 / 3,584", (1, 2, 4)),
        ("Llama-3.1-8B", "32 / 8", "32 / 4,096", (1, 2, 4, 8)),
        ("Qwen2.5-72B", "64 / 8", "80 / 8,192", (1, 2, 4, 8)),
        ("DeepSeek-V2-Lite", "16 / 16", "27 / 2,048", (1, 2, 4, 8)),
    ],
)
def test_dry_run_on_npu_plans_each_degree_from_the_config(tmp_path: Path, cards, model, heads, layers, degrees_):
    code, out, err = cli_in_process(
        "run", TP_SUITE, "--dry-run", "--device", "npu", "--model", FIXTURES / model, "--out", tmp_path / "out"
    )
    assert code == OK, (out, err)
    assert f"| attention heads / KV heads | {heads}" in re.sub(r" +", " ", out)
    assert f"| layers / hidden size | {layers}" in re.sub(r" +", " ", out)
    assert jobs(out)["determinism-tp.toml"] == [
        (f"{p}-tp{d}", d) for p in ("default", "deterministic", "strict") for d in degrees_
    ]
    assert f'tp = "auto": degrees {", ".join(map(str, degrees_))} divide' in out
    assert "result: the run would start (exit 0)" in out
    assert not (tmp_path / "out").exists()  # no run folder
    if model == "DeepSeek-V2-Lite":
        assert "MoE: 64 routed experts, 6 per token, 2 shared" in out and "MLA: keys and values" in out
        assert "163,840 tokens" in out  # yarn: max_position_embeddings already includes the factor 40


def test_each_worker_environment_and_flag_readers_per_degree(cards):
    code, out, _ = cli_in_process(
        "run", TP_SUITE, "--dry-run", "--device", "npu", "--model", QWEN7, "--profile", "deterministic"
    )
    assert code == OK
    tp4 = next(ln for ln in out.splitlines() if ln.startswith("- deterministic-tp4: "))
    assert "-m torch.distributed.run" in tp4 and "--nproc-per-node 4" in tp4
    env = out.splitlines()[out.splitlines().index(tp4) + 1]
    for var in ("HCCL_DETERMINISTIC=true", "HARNESS_NODE_RANK=0", "OMP_NUM_THREADS=", "PYTHONPATH="):
        assert var in env, env
    rows = {
        ln.split("|")[2].strip(): [c.strip() for c in ln.split("|")[3:-2]]
        for ln in out.splitlines()
        if "=" in ln and ln.startswith("| deterministic")
    }
    assert rows["HCCL_DETERMINISTIC=true"] == ["HCCL", "set, not read", "read", "read"]  # tp1, tp2, tp4
    assert rows["ATB_MATMUL_SHUFFLE_K_ENABLE=0"] == ["ATB", "set, not read", "set, not read", "set, not read"]
    assert rows["LCCL_DETERMINISTIC=1"][1:] == ["set, not read"] * 3


def test_one_visible_card_runs_degree_one_and_says_why(monkeypatch):
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0")
    code, out, err = cli_in_process("run", TP_SUITE, "--dry-run", "--device", "npu", "--model", QWEN7)
    assert code == OK, err
    assert jobs(out)["determinism-tp.toml"] == [("default-tp1", 1), ("deterministic-tp1", 1), ("strict-tp1", 1)]
    assert "one device visible (ASCEND_RT_VISIBLE_DEVICES=0): the tensor parallel checks are skipped" in out


def test_the_cpu_default_still_runs_degrees_one_and_three():
    # the embedded SmolLM2-135M (9 heads, 3 KV heads) on this 2-core host: gloo ranks share the cores, max = 8 caps
    code, out, err = cli_in_process("run", TP_SUITE, "--dry-run")
    assert code == OK, err
    assert [tp for _, tp in jobs(out)["determinism-tp.toml"]] == [1, 3, 1, 3, 1, 3]
    assert "on CPU a gloo group's ranks are processes sharing the cores" in out


def test_a_fixed_degree_that_does_not_divide_is_the_real_runs_line(tmp_path: Path):
    code, out, err = cli_in_process("run", TP_SUITE, "--dry-run", "--device", "npu", "--model", QWEN7, "--tp", "1,3")
    assert code == USAGE and "Traceback" not in err
    assert "parallel.tp: degree 3 does not divide the model's 28 attention heads and 4 KV heads" in err
    assert "use degrees that divide both: 1, 2, 4" in err


@pytest.mark.parametrize("what", ["missing", "no-config"])
def test_a_model_that_would_not_prepare_is_the_real_runs_line(tmp_path: Path, what):
    model = tmp_path / "m"
    if what == "no-config":
        model.mkdir()
    code, _, err = cli_in_process("run", TP_SUITE, "--dry-run", "--device", "npu", "--model", model)
    assert code == USAGE
    assert ("no such file or directory" if what == "missing" else "directory has no config.json") in err


@pytest.mark.process
def test_the_dry_run_imports_no_torch_for_npu():
    code = (
        "import sys; from harness import cli; rc = cli.main(['run', 'suites/determinism.toml', 'suites/determinism-tp.toml',"
        f" '--dry-run', '--device', 'npu', '--model', {str(QWEN7)!r}]);"
        " bad = [m for m in ('torch', 'torch_npu', 'transformers') if m in sys.modules];"
        " print('imported:', bad); sys.exit(rc or (1 if bad else 0))"
    )
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr
    assert "imported: []" in p.stdout


def test_auto_degrees_from_devices(tmp_path: Path):
    s = parse(json.loads(json.dumps(_tp_suite())), "t.toml").with_overrides(model=str(QWEN7), device="npu")
    assert s.parallel.auto and s.parallel.multi and s.parallel.tp == (1,)
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("davinci0", "davinci1", "davinci2", "davinci3", "davinci_manager", "devmm_svm"):
        (dev / name).touch()
    assert degrees.resolve(s, {}, dev).parallel.tp == (1, 2, 4)  # four /dev/davinciN, nothing set
    assert degrees.resolve(s, {"ASCEND_RT_VISIBLE_DEVICES": "0,1"}, dev).parallel.tp == (1, 2)
    assert degrees.resolve(s, {}, tmp_path / "none").parallel.tp == (1,)  # no cards to be seen: one assumed
    cuda = s.with_overrides(device="cuda")
    assert degrees.resolve(cuda, {"CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}, dev).parallel.tp == (1, 2, 4)
    cpu = s.with_overrides(device="cpu")
    assert degrees.resolve(cpu, {}, dev).parallel.tp == (1, 2, 4)  # CPU: [parallel] max (8) caps, not the cores
    small = parse({**_tp_suite(), "parallel": {"tp": "auto", "max": 2}}, "t.toml").with_overrides(model=str(QWEN7))
    assert degrees.resolve(small, {}, dev).parallel.tp == (1, 2)
    two_hosts = {"tp": "auto", "nnodes": 2, "rdzv_endpoint": "h:1"}
    multi = parse({**_tp_suite(), "parallel": two_hosts}, "t.toml").with_overrides(model=str(QWEN7), device="npu")
    assert degrees.resolve(multi, {"ASCEND_RT_VISIBLE_DEVICES": "0"}, dev).parallel.tp == (1, 2)  # 1 card x 2 hosts


def test_auto_refuses_a_model_whose_heads_cannot_be_read(tmp_path: Path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    s = parse(_tp_suite(), "t.toml").with_overrides(model=str(tmp_path / "m"))
    with pytest.raises(Exception, match=r'parallel.tp = "auto" needs the model\'s attention heads'):
        degrees.resolve(s, {})


def test_a_run_on_one_card_skips_tp_invariance_with_the_reason(tmp_path: Path, monkeypatch):
    model = tmp_path / "model"
    shutil.copytree(QWEN7, model)
    fakes.install(monkeypatch, model)
    monkeypatch.setenv("ASCEND_RT_VISIBLE_DEVICES", "0")
    path = write_suite(tmp_path / "tp.toml", TP_TOML.replace("TP", '"auto"'))
    code, out, err = cli_in_process(
        "run", path, "--device", "npu", "--model", model, "--out", tmp_path / "o", "--baselines", tmp_path / "b"
    )
    assert code == OK, (out, err)
    rep = json.loads(next((tmp_path / "o").glob("*/report.json")).read_text())
    assert [j["name"] for j in rep["jobs"]] == ["default-tp1", "deterministic-tp1"]
    assert any("one device visible (ASCEND_RT_VISIBLE_DEVICES=0)" in n for n in rep["notes"])


def test_flags_by_reader_and_path():
    det = Profile("d", env=(("ATB_MATMUL_SHUFFLE_K_ENABLE", "0"), ("HCCL_DETERMINISTIC", "true")))
    hf_npu = profiles.RunPath("hf", "npu")
    assert profiles.unread(det, [hf_npu]) == ["ATB_MATMUL_SHUFFLE_K_ENABLE", "HCCL_DETERMINISTIC"]
    assert profiles.unread(det, [profiles.RunPath("hf", "npu", 4)]) == ["ATB_MATMUL_SHUFFLE_K_ENABLE"]
    assert profiles.unread(det, [profiles.RunPath("mindie", "npu")]) == []  # atb_llm on ATB; HCCL when multi-card
    assert profiles.RunPath("vllm", "npu").status("ATB_MATMUL_SHUFFLE_K_ENABLE") == profiles.READ
    assert profiles.RunPath("vllm", "npu").status("LCCL_DETERMINISTIC") == profiles.MAYBE
    assert profiles.RunPath("hf", "cuda").status("CUBLAS_WORKSPACE_CONFIG") == profiles.READ
    assert profiles.RunPath("hf", "cpu").status("MKL_CBWR") == profiles.READ
    assert profiles.RunPath("external", "npu").status("HCCL_DETERMINISTIC") == profiles.UNKNOWN
    note = profiles.note(det, "npu", [hf_npu])
    assert note.startswith("ATB_MATMUL_SHUFFLE_K_ENABLE, HCCL_DETERMINISTIC: set, not read on this path")
    assert profiles.reader("ATB_LLM_RAZOR_ATTENTION_ENABLE") == "ATB_LLM" and profiles.reader("PATH") == ""


def test_gguf_header_and_converted_dir_agree(monkeypatch, tmp_path: Path):
    cached = modelinfo.read("smollm2-135m")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))  # nothing converted here: read from the GGUF header
    header = modelinfo.read("smollm2-135m")
    assert header.source.startswith("GGUF metadata") and "converted once from" in header.prepare
    assert (header.heads, header.kv_heads, header.layers, header.hidden) == (9, 3, 30, 576)
    assert (cached.heads, cached.kv_heads) == (9, 3)


def test_context_with_rope_scaling_stated_beside_the_original():
    from harness import plan

    assert plan.model_context(FIXTURES / "Llama-3.1-8B")[0] == 131072  # llama3: not scaled again
    assert plan.model_context(FIXTURES / "DeepSeek-V2-Lite")[0] == 163840  # yarn, 4096 x 40
    assert plan.model_context(QWEN7)[0] == 32768


@pytest.mark.process
def test_signoff_and_doctor_dry_runs_create_nothing(tmp_path: Path):
    p = run_cli("signoff", "--dry-run", "--out", tmp_path / "out", timeout=300)
    assert p.returncode == OK, p.stdout[-3000:] + p.stderr
    assert "sign-off dry run" in p.stdout and p.stdout.count("result: the run would start") >= 3
    assert not (tmp_path / "out").exists()
    p = run_cli("doctor", "--dry-run", "suites/determinism-tp.toml", "--device", "npu", "--model", str(QWEN7))
    assert "dry run of suites/determinism-tp.toml" in p.stdout, p.stdout + p.stderr


def _tp_suite() -> dict:
    return {
        "suite": {"name": "t", "version": 1},
        "prompts": {"items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}]},
        "schedules": [{"kind": "solo"}, {"kind": "repeat"}],
        "parallel": {"tp": "auto"},
        "profiles": {"default": {}},
    }
