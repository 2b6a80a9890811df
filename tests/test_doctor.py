"""The doctor: every check fires on a real broken fixture (a file, a folder, a suite, an interpreter) and stays quiet
on a clean one. Checks that ask the engine's interpreter run it in a subprocess: those tests are marked process."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import struct
import sys
from pathlib import Path

import pytest

from harness import doctor, models
from harness.doctor import memory, python
from harness.run import Options

from .helpers import ROOT, run_cli, write_suite

SUITE = """
[suite]
name = "d"
version = 1
[model]
ref = "smollm2-135m"
[prompts]
items = [{ id = "a", text = "hello" }]
[[schedules]]
kind = "solo"
[profiles.default]
"""


def model_folder(tmp: Path, *, config: dict | None = None, tensors: dict | None = None, mode: int = 0o640) -> Path:
    """A model folder with a config.json and one safetensors file whose header declares `tensors` (name -> dtype)."""
    d = tmp / "model"
    d.mkdir(exist_ok=True)
    if config is not None:
        (d / "config.json").write_text(json.dumps(config))
        os.chmod(d / "config.json", mode)
    header = {
        k: {"dtype": v, "shape": [2, 2], "data_offsets": [0, 4]} for k, v in (tensors or {"w.weight": "F32"}).items()
    }
    raw = json.dumps(header).encode()
    (d / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)
    os.chmod(d / "model.safetensors", mode)
    return d


def findings(ctx: doctor.Context, check: str) -> list[doctor.Finding]:
    out = doctor.run_checks(ctx, only=[check])
    assert out, f"{check} said nothing"
    assert all(f.id == check for f in out)
    return out


def severities(fs: list[doctor.Finding]) -> set[str]:
    return {f.severity for f in fs}


def test_every_check_is_registered_with_an_id_in_the_report_order():
    """The topic modules' order in harness.registry.CHECKS, whichever was imported first (this file imports
    memory before python)."""
    want = [
        "suite.load",
        "python.version",
        "python.pip",
        "python.imports",
        "python.static-tls",
        "model.config",
        "model.permissions",
        "model.tokenizer",
        "model.transformers-version",
        "model.quantize",
        "memory.host",
        "memory.device",
        "loadtime.omp",
        "loadtime.alloc-conf",
        "determinism.flags",
        "determinism.transformers",
        "serving.tls",
        "serving.body",
        "serving.mindie",
    ]
    assert list(doctor.registry())[: len(want)] == want


def test_a_model_folder_without_config_json_is_an_error(tmp_path: Path):
    d = model_folder(tmp_path)
    (fs,) = findings(doctor.Context(model_dirs=[d]), "model.config")
    assert fs.severity == "error" and "no config.json" in fs.found and "copy config.json" in fs.fix
    assert doctor.exit_code([fs]) == 2


def test_a_config_json_that_is_not_json_is_an_error(tmp_path: Path):
    d = model_folder(tmp_path, config={})
    (d / "config.json").write_text('{"model_type": "llama",')
    (fs,) = findings(doctor.Context(model_dirs=[d]), "model.config")
    assert fs.severity == "error" and "not a JSON object" in fs.found


@pytest.mark.parametrize("mode", [0o777, 0o600])
def test_weights_with_mode_777_or_600_are_named(tmp_path: Path, mode: int):
    d = model_folder(tmp_path, config={"model_type": "llama"}, mode=mode)
    npu = findings(doctor.Context(device="npu", model_dirs=[d]), "model.permissions")
    cpu = findings(doctor.Context(device="cpu", model_dirs=[d]), "model.permissions")
    # 777: anyone can replace the weights (MindIE refuses them); 600: the service user's group cannot read them.
    assert severities(npu) == ({"error"} if mode == 0o777 else {"warning"}), npu
    assert severities(cpu) == ({"warning"} if mode == 0o777 else {"info"}), cpu
    assert f"({mode:o})" in npu[0].found and "chmod 640" in npu[0].fix


def test_weights_with_mode_640_pass(tmp_path: Path):
    d = model_folder(tmp_path, config={"model_type": "llama"}, mode=0o640)
    (f,) = findings(doctor.Context(device="npu", model_dirs=[d]), "model.permissions")
    assert f.severity == "info" and "640" in f.found


def test_quantized_weights_without_quantize_in_config(tmp_path: Path):
    d = model_folder(tmp_path, config={"model_type": "llama"}, tensors={"q.weight": "I8", "q.weight_scale": "F32"})
    (f,) = findings(doctor.Context(device="npu", model_dirs=[d]), "model.quantize")
    assert f.severity == "error" and "no `quantize`" in f.found and '"quantize": "w8a8"' in f.fix
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantize": "w8a8"}))
    (f,) = findings(doctor.Context(device="npu", model_dirs=[d]), "model.quantize")
    assert f.severity == "info" and "w8a8" in f.found


def test_a_msmodelslim_description_marks_weights_quantized(tmp_path: Path):
    d = model_folder(tmp_path, config={"model_type": "llama"})
    (d / "quant_model_description_w8a8.json").write_text("{}")
    (f,) = findings(doctor.Context(device="cpu", model_dirs=[d]), "model.quantize")
    assert f.severity == "warning" and "quant_model_description_w8a8.json" in f.found


def test_weights_larger_than_host_memory(tmp_path: Path):
    d = model_folder(tmp_path, config={"model_type": "llama"})
    total = memory.meminfo()["MemTotal"]
    with open(d / "model-00002.safetensors", "wb") as f:  # sparse: as large as twice this host's memory, no disk
        f.truncate(2 * total)
    (f,) = findings(doctor.Context(model_dirs=[d]), "memory.host")
    assert f.severity == "error" and "out of memory" in f.found


def test_device_memory_names_the_knobs():
    gib = 1 << 30
    sev, what = memory.device_verdict(weights=60 * gib, free=62 * gib, total=64 * gib, fraction=0.8)
    assert sev == "error" and "NPU_MEMORY_FRACTION 0.8" in what  # 64 x 0.8 = 51.2 GiB usable < 60
    assert memory.device_verdict(60 * gib, 62 * gib, 64 * gib, 0.8, cards=2)[0] == "info"
    assert all(k in memory.KNOBS for k in ("npuMemSize", "NPU_MEMORY_FRACTION", "maxSeqLen", "maxPrefillTokens"))
    (f,) = findings(doctor.Context(device="cpu"), "memory.device")
    assert f.found == "device memory: not applicable on cpu"


def loadtime_baselines(root: Path, warm: dict[str, float]) -> Path:
    from harness.envinfo import cpu_model

    for setting, s in warm.items():
        p = root / "cpu-x-t2-torch2.13" / "loadtime" / f"omp-{setting}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        env = {"device": {"device": "cpu", "cpu_model": cpu_model()}}
        p.write_text(json.dumps({"environment": env, "latency": {"embedded warm": [s, s, s, s]}}))
    return root


def test_omp_num_threads_against_the_load_time_baseline(tmp_path: Path):
    root = loadtime_baselines(tmp_path / "b", {"1": 2.0, "2": 1.5, "unset": 2.4})
    (f,) = findings(doctor.Context(baselines=root, environ={"OMP_NUM_THREADS": "1"}), "loadtime.omp")
    assert f.severity == "warning" and f.fix == "export OMP_NUM_THREADS=2"
    (f,) = findings(doctor.Context(baselines=root, environ={"OMP_NUM_THREADS": "2"}), "loadtime.omp")
    assert f.severity == "info" and "fastest" in f.found
    (f,) = findings(doctor.Context(baselines=tmp_path / "none", environ={}), "loadtime.omp")
    assert f.severity == "info" and "no load-time baseline" in f.found


def test_expandable_segments_on_npu():
    (f,) = findings(doctor.Context(device="npu", environ={}), "loadtime.alloc-conf")
    assert f.severity == "warning" and f.fix == "export PYTORCH_NPU_ALLOC_CONF=expandable_segments:True"
    ok = doctor.Context(device="npu", environ={"PYTORCH_NPU_ALLOC_CONF": "expandable_segments:True"})
    assert severities(findings(ok, "loadtime.alloc-conf")) == {"info"}
    assert findings(doctor.Context(device="cpu"), "loadtime.alloc-conf")[0].found.endswith("not applicable on cpu")


def suite_ctx(path: Path, **kw) -> doctor.Context:
    return doctor.Context(suites=[doctor.suite_file(path, Options())], environ=kw.pop("environ", {}), **kw)


def test_a_misspelt_determinism_variable_is_caught(tmp_path: Path):
    s = write_suite(
        tmp_path / "s.toml",
        SUITE + 'env = { HCCL_DETERMINSTIC = "true", ATB_MATMUL_SHUFFLE_K_ENABLE = "0" }\n',
    )
    fs = findings(suite_ctx(s), "determinism.flags")
    (typo,) = [f for f in fs if f.severity == "error"]
    assert "HCCL_DETERMINSTIC" in typo.found and "did you mean HCCL_DETERMINISTIC?" in typo.found


def test_a_misspelt_variable_in_the_environment_is_caught():
    fs = findings(doctor.Context(environ={"LCCL_DETERMINISITC": "1"}), "determinism.flags")
    assert any(f.severity == "error" and "did you mean LCCL_DETERMINISTIC" in f.found for f in fs)


def test_an_undocumented_value_is_an_error(tmp_path: Path):
    s = write_suite(tmp_path / "s.toml", SUITE + 'env = { HCCL_DETERMINISTIC = "yes" }\n')
    fs = findings(suite_ctx(s), "determinism.flags")
    assert any(f.severity == "error" and "'yes' is not a documented value (true|false|strict)" in f.found for f in fs)


def test_bitwise_without_the_switches_is_a_warning(tmp_path: Path):
    body = SUITE + 'env = { HCCL_DETERMINISTIC = "strict" }\nexpect = { npu = "bitwise" }\n'
    fs = findings(suite_ctx(write_suite(tmp_path / "s.toml", body)), "determinism.flags")
    (w,) = fs
    assert w.severity == "warning" and "ATB_MATMUL_SHUFFLE_K_ENABLE=0" in w.found and "HCCL" not in w.found


def test_the_shipped_profiles_are_clean():
    ctx = doctor.Context(
        suites=[doctor.suite_file(ROOT / "suites" / f, Options()) for f in ("determinism.toml", "perf.toml")],
        environ={},
    )
    (f,) = findings(ctx, "determinism.flags")
    assert f.severity == "info" and "not applicable on cpu" in f.found


SERVED = """
[suite]
name = "sv"
version = 1
[model]
ref = "smollm2-135m"
[server]
command = "true {port}"
[endpoint]
api = "chat"
{endpoint}
[prompts]
{prompts}
[[schedules]]
kind = "solo"
[profiles.default]
"""


def served(tmp: Path, endpoint: str = "", prompts: str = 'items = [{ id = "a", text = "hi" }]') -> Path:
    return write_suite(tmp / "served.toml", SERVED.replace("{endpoint}", endpoint).replace("{prompts}", prompts))


def test_a_tls_path_that_does_not_exist(tmp_path: Path):
    s = served(tmp_path, 'base_url = "https://{host}:{port}"\nca_bundle = "missing/ca.pem"')
    fs = findings(suite_ctx(s), "serving.tls")
    assert [f.severity for f in fs] == ["error"] and "ca.pem does not exist" in fs[0].found
    # The run would refuse the suite too: one line, the same file.
    assert any(f.severity == "error" and "ca.pem" in f.found for f in findings(suite_ctx(s), "suite.load"))


def make_cert(path: Path, days: int) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "harness-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=400))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_an_expired_ca_bundle(tmp_path: Path):
    pytest.importorskip("cryptography")
    make_cert(tmp_path / "ca.pem", days=-3)
    s = served(tmp_path, 'base_url = "https://{host}:{port}"\nca_bundle = "ca.pem"')
    (f,) = findings(suite_ctx(s), "serving.tls")
    assert f.severity == "error" and "expired on" in f.found
    make_cert(tmp_path / "ca.pem", days=10)
    (f,) = findings(suite_ctx(s), "serving.tls")
    assert f.severity == "warning" and "expires on" in f.found
    make_cert(tmp_path / "ca.pem", days=365)
    (f,) = findings(suite_ctx(s), "serving.tls")
    assert f.severity == "info" and "1 TLS file(s)" in f.found


def test_a_prompt_over_4_mib(tmp_path: Path):
    big = "x" * (4 * (1 << 20) + 10)
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"id": "big", "text": big}) + "\n" + json.dumps({"id": "ok", "text": "hi"}) + "\n"
    )
    s = served(tmp_path, prompts='file = "p.jsonl"')
    (f,) = findings(suite_ctx(s), "serving.body")
    assert f.severity == "error" and "prompt 'big'" in f.found and "4.00 MiB" in f.found


def test_media_the_server_does_not_take(tmp_path: Path):
    (tmp_path / "clip.ogg").write_bytes(b"OggS" + b"\0" * 100)
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"id": "a", "text": "what is this?", "attachments": ["clip.ogg"]}) + "\n"
    )
    (w, ok) = findings(suite_ctx(served(tmp_path, prompts='file = "p.jsonl"')), "serving.body")
    assert w.severity == "warning" and "audio/ogg" in w.found and ok.severity == "info"


def test_the_static_tls_line_names_this_torch_libgomp(tmp_path: Path):
    err = "ImportError: /usr/lib/aarch64-linux-gnu/libgomp.so.1: cannot allocate memory in static TLS block"
    torch_dir = tmp_path / "torch"
    (torch_dir / "lib").mkdir(parents=True)
    (torch_dir / "lib" / "libgomp-a34b3233.so.1").write_bytes(b"")
    line = python.static_tls_fix(err, python.libgomp(str(torch_dir)))
    assert line == f"export LD_PRELOAD={torch_dir}/lib/libgomp-a34b3233.so.1" + "${LD_PRELOAD:+:$LD_PRELOAD}"
    # Without a libgomp in torch, the library the message names.
    assert python.static_tls_fix(err, []).startswith("export LD_PRELOAD=/usr/lib/aarch64-linux-gnu/libgomp.so.1")
    assert python.static_tls_fix("ModuleNotFoundError: No module named 'torch'", []) == ""


def test_pip_version_line():
    line = "pip 23.0.1 from /usr/lib/python3/dist-packages/pip (python 3.11)\n"
    assert python._pip_dir(line) == "/usr/lib/python3/dist-packages/pip"


def test_a_check_that_crashes_is_named_not_fatal(monkeypatch):
    monkeypatch.setitem(doctor.REGISTRY, "boom", lambda ctx: iter([1 / 0]))
    (f,) = doctor.run_checks(doctor.Context(), only=["boom"])
    assert f.id == "boom" and f.severity == "warning" and "ZeroDivisionError" in f.found


# ---- the engine's interpreter, in subprocesses --------------------------------------------------------------


def shadow(tmp: Path, module: str, source: str, files: dict[str, str] | None = None) -> dict[str, str]:
    """A package that shadows `module` on PYTHONPATH: the environment to run the engine's interpreter with."""
    site = tmp / "site"
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(source)
    for name, text in (files or {}).items():
        (site / module / name).parent.mkdir(parents=True, exist_ok=True)
        (site / module / name).write_text(text)
    return {**os.environ, "PYTHONPATH": str(site)}


@pytest.mark.process
def test_a_dependency_that_does_not_import(tmp_path: Path):
    env = shadow(tmp_path, "transformers", "raise ImportError('libcudart.so.12: cannot open shared object file')")
    fs = findings(doctor.Context(environ=env), "python.imports")
    (err,) = [f for f in fs if f.severity == "error"]
    assert "`import transformers` fails" in err.found and "libcudart.so.12" in err.found
    assert "LLMPythonModel initializes fail" in err.fix and "log" in err.fix and "pip install transformers" in err.fix
    assert any(f.found == "torch_npu: not applicable on cpu" for f in fs)


@pytest.mark.process
def test_static_tls_on_import_gives_the_ld_preload_line(tmp_path: Path):
    """A real interpreter whose `import torch` fails with the loader's message, in a torch folder with its libgomp."""
    msg = "/usr/lib/aarch64-linux-gnu/libgomp.so.1: cannot allocate memory in static TLS block"
    env = shadow(tmp_path, "torch", f"raise ImportError({msg!r})", {"lib/libgomp-6e1a1d1b.so.1.0.0": ""})
    ctx = doctor.Context(environ=env)
    (f,) = findings(ctx, "python.static-tls")
    assert f.severity == "error" and "cannot allocate memory in static TLS block" in f.found
    lib = tmp_path / "site" / "torch" / "lib" / "libgomp-6e1a1d1b.so.1.0.0"
    assert f.fix.startswith(f"export LD_PRELOAD={lib}" + "${LD_PRELOAD:+:$LD_PRELOAD}")
    # python.imports leaves it to python.static-tls rather than saying it twice.
    assert not [x for x in findings(ctx, "python.imports") if x.severity == "error"]


@pytest.mark.process
def test_pip_of_another_python(tmp_path: Path):
    other = shutil.which("python3", path="/usr/bin")
    if other is None or os.path.realpath(other) == os.path.realpath(sys.executable):
        pytest.skip("needs a second Python at /usr/bin/python3")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pip").write_text(f'#!/bin/sh\nexec {other} -m pip "$@"\n')
    (bin_dir / "pip").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    (f,) = findings(doctor.Context(environ=env), "python.pip")
    assert f.severity == "warning" and "not the engine's" in f.found and f"{sys.executable} -m pip install" in f.fix
    ours = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    (f,) = findings(doctor.Context(environ=ours), "python.pip")
    assert f.severity == "info", f


@pytest.mark.process
def test_mindie_needs_python_3_10(tmp_path: Path):
    s = served(tmp_path).read_text().replace('command = "true {port}"', 'command = "mindieservice_daemon {port}"')
    path = write_suite(tmp_path / "mindie.toml", s)
    ctx = doctor.Context(suites=[doctor.SuiteFile(path, __import__("tomllib").loads(s))], environ=dict(os.environ))
    (f,) = findings(ctx, "python.version")
    if sys.version_info[:2] == (3, 10):
        assert f.severity == "info"
    else:
        assert f.severity == "error" and "need Python 3.10" in f.found
    assert {"atb_llm", "mindie_llm"} <= set(python.needed_modules(ctx))


@pytest.mark.process
def test_a_corrupt_tokenizer_json(tmp_path: Path, embedded_dir: Path):
    d = tmp_path / "m"
    shutil.copytree(embedded_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
    (d / "tokenizer.json").write_bytes((d / "tokenizer.json").read_bytes()[:5000])
    (f,) = findings(doctor.Context(model_dirs=[d], environ=dict(os.environ)), "model.tokenizer")
    assert f.severity == "error" and "does not load" in f.found and "tokenizer.json" in f.fix


@pytest.mark.process
def test_a_tokenizer_json_other_than_the_baselines(tmp_path: Path, embedded_dir: Path):
    d = tmp_path / "m"
    shutil.copytree(embedded_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
    b = tmp_path / "b" / "key" / "suite" / "default.json"
    b.parent.mkdir(parents=True)
    b.write_text(json.dumps({"environment": {"model_files": {"tokenizer.json": "0" * 64}}}))
    (f,) = findings(
        doctor.Context(model_dirs=[d], baselines=tmp_path / "b", environ=dict(os.environ)), "model.tokenizer"
    )
    assert f.severity == "error" and "differs from 0000000000000000" in f.found and str(b) in f.found
    b.write_text(json.dumps({"environment": {"model_files": {"tokenizer.json": models.sha256(d / "tokenizer.json")}}}))
    (f,) = findings(
        doctor.Context(model_dirs=[d], baselines=tmp_path / "b", environ=dict(os.environ)), "model.tokenizer"
    )
    assert f.severity == "info" and "matches 1 baseline" in f.found


@pytest.mark.process
def test_config_written_by_a_newer_transformers(tmp_path: Path):
    d = model_folder(tmp_path, config={"model_type": "llama", "transformers_version": "99.1.0"})
    (f,) = findings(doctor.Context(model_dirs=[d], environ=dict(os.environ)), "model.transformers-version")
    assert f.severity == "warning" and "99.1.0" in f.found and "newer than the installed" in f.found


@pytest.mark.process
def test_a_clean_environment_has_no_error(tmp_path: Path):
    """This checkout's sign-off suites and the embedded model, with this interpreter's pip first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    r = run_cli("doctor", "--json", env={"PATH": path})
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["counts"]["error"] == 0, [f for f in out["findings"] if f["severity"] == "error"]
    assert {f["id"] for f in out["findings"]} >= set(doctor.registry())


@pytest.mark.process
def test_the_cli_exits_2_on_an_error_and_names_the_check(tmp_path: Path):
    d = model_folder(tmp_path)  # no config.json
    s = write_suite(tmp_path / "s.toml", SUITE)
    r = run_cli("doctor", str(s), "--model", str(d))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "| model.config" in r.stdout and "error" in r.stdout and "doctor: 1 error(s)" in r.stdout
    r = run_cli("doctor", str(s), "--python", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such interpreter" in r.stderr and "Traceback" not in r.stderr


# ---- device memory per card for the TP degree, HCCL_DETERMINISTIC per CANN release, the transformers floor -----

ASCEND = ROOT / "tests" / "fixtures" / "ascend"
GIB = 1 << 30


def npu_host(tmp: Path, cards: int, free_gib: float, total_gib: float = 64) -> str:
    """An interpreter that answers the doctor's device-memory probe as `cards` cards with this much free would."""
    script = tmp / "npu-python"
    mem = [[int(free_gib * GIB), int(total_gib * GIB)]] * cards
    script.write_text(f"#!/bin/sh\necho '{json.dumps(mem)}'\n")
    script.chmod(0o755)
    return str(script)


def tp_suite(*degrees: int | str) -> doctor.SuiteFile:
    from types import SimpleNamespace

    return doctor.SuiteFile(Path("tp.toml"), {}, suite=SimpleNamespace(parallel=SimpleNamespace(tp=degrees)))


def seventy_b(tmp: Path) -> Path:
    d = model_folder(tmp, config={"model_type": "llama"})
    with open(d / "model-00002.safetensors", "wb") as f:  # sparse: a 70B model's 140 GB in bfloat16, no disk
        f.truncate(140 * GIB)
    return d


def test_a_70b_model_over_8_cards_is_judged_per_card(tmp_path: Path):
    d = seventy_b(tmp_path)
    py = npu_host(tmp_path, cards=8, free_gib=62)
    (f,) = findings(doctor.Context(device="npu", python=py, model_dirs=[d], suites=[tp_suite(8)]), "memory.device")
    assert f.severity == "info" and "tp=8" in f.found and "17.50 GiB per card (8 card(s))" in f.found
    # tp-invariance's reference degree 1 holds every weight on one card: that job cannot load.
    fs = findings(doctor.Context(device="npu", python=py, model_dirs=[d], suites=[tp_suite(1, 8)]), "memory.device")
    assert [(f.severity, "tp=1" in f.found) for f in fs] == [("error", True), ("info", False)]
    assert "out of memory at load" in fs[0].found and "npuMemSize" in fs[0].fix
    # "auto" may become every visible card; a degree above them is not judged but said.
    fs = findings(doctor.Context(device="npu", python=py, model_dirs=[d], suites=[tp_suite("auto")]), "memory.device")
    assert [f.severity for f in fs] == ["info"] and "tp=8" in fs[0].found
    (f,) = findings(doctor.Context(device="npu", python=py, model_dirs=[d], suites=[tp_suite(16)]), "memory.device")
    assert f.severity == "warning" and "tp=16 needs 16 cards; 8 visible" in f.found


def test_a_shard_under_the_faq_headroom_is_an_error(tmp_path: Path):
    """17.5 GiB per card loads into 20 GiB free, but the FAQ's 1.3 x 17.5 = 22.75 GiB does not fit."""
    d = seventy_b(tmp_path)
    py = npu_host(tmp_path, cards=8, free_gib=20)
    (f,) = findings(doctor.Context(device="npu", python=py, model_dirs=[d], suites=[tp_suite(8)]), "memory.device")
    assert f.severity == "error" and "under the 1.3 x weights per card" in f.found
    assert memory.device_verdict(int(17.5 * GIB), 23 * GIB, 64 * GIB, 0.8)[0] == "info"


def strict_ctx(tmp: Path, home: Path | None, device: str = "npu") -> doctor.Context:
    s = write_suite(tmp / "s.toml", SUITE + 'env = { HCCL_DETERMINISTIC = "strict" }\n')
    environ = {"ASCEND_HOME_PATH": str(home)} if home else {}
    return suite_ctx(s, device=device, environ=environ)


def test_hccl_strict_on_cann_8_0_is_an_error(tmp_path: Path):
    fs = findings(strict_ctx(tmp_path, ASCEND / "cann-8.0.RC2" / "ascend-toolkit" / "latest"), "determinism.flags")
    (f,) = [f for f in fs if "HCCL_DETERMINISTIC=strict" in f.found]
    assert f.severity == "error" and "CANN 8.0.RC2" in f.found and "true|false only" in f.found
    assert "HCCL_DETERMINISTIC=true" in f.fix


def test_hccl_strict_per_cann_release(tmp_path: Path):
    (f,) = findings(strict_ctx(tmp_path, ASCEND / "cann-8.1.RC1" / "ascend-toolkit" / "latest"), "determinism.flags")
    assert f.severity == "warning" and "CANN 8.1.RC1" in f.found and "documented from 8.2.RC1" in f.found
    (f,) = findings(strict_ctx(tmp_path, ASCEND / "cann-8.5.0" / "cann-8.5.0"), "determinism.flags")
    assert f.severity == "info" and "documented values" in f.found
    # No HCCL reads it off an NPU; on one whose release cannot be read, say so.
    (f,) = findings(strict_ctx(tmp_path, None, device="cpu"), "determinism.flags")
    assert f.severity == "info"
    if not Path("/usr/local/Ascend").exists():  # an NPU host's own install would be read instead
        (f,) = findings(strict_ctx(tmp_path, tmp_path / "no-toolkit"), "determinism.flags")
        assert f.severity == "warning" and "release is unknown" in f.found


def transformers_at(tmp: Path, version: str) -> dict[str, str]:
    """An environment whose interpreter reports this transformers version (a dist-info first on the path)."""
    info = tmp / "site" / f"transformers-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: transformers\nVersion: {version}\n")
    return {**os.environ, "PYTHONPATH": str(tmp / "site")}


@pytest.mark.process
def test_a_transformers_below_the_adapters_floor(tmp_path: Path):
    (f,) = findings(doctor.Context(environ=transformers_at(tmp_path, "4.48.3")), "determinism.transformers")
    assert f.severity == "error" and "4.48.3" in f.found
    assert "from_pretrained(dtype=...)" in f.found and "forward(logits_to_keep=...)" in f.found
    assert "pip install 'transformers>=4.56'" in f.fix


@pytest.mark.process
def test_a_transformers_between_the_floors(tmp_path: Path):
    (f,) = findings(doctor.Context(environ=transformers_at(tmp_path, "4.52.4")), "determinism.transformers")
    assert f.severity == "error" and "from_pretrained(dtype=...)" in f.found and "logits_to_keep" not in f.found
    (f,) = findings(doctor.Context(environ=dict(os.environ)), "determinism.transformers")
    assert f.severity == "info" and "has what the adapters call" in f.found


def mindie_suite(tmp: Path, **changes: object) -> Path:
    """The shipped MindIE example with its config.json, changed as given (section.key = value)."""
    import json
    import shutil

    examples = ROOT / "suites" / "examples"
    shutil.copy(examples / "serving-mindie.toml", tmp / "serving-mindie.toml")
    (tmp / "prompts").mkdir()
    shutil.copy(ROOT / "suites" / "prompts" / "general.jsonl", tmp / "prompts" / "general.jsonl")
    text = (examples / "mindie-config.json").read_text()
    for key, value in changes.items():
        text = re.sub(rf'("{key}": )[^,\n]+', lambda m, v=value: m[1] + json.dumps(v), text)
    (tmp / "mindie-config.json").write_text(text)
    return tmp / "serving-mindie.toml"


def test_mindie_config_with_https_names_the_missing_server_tls_files(tmp_path: Path):
    s = mindie_suite(tmp_path, httpsEnabled=True)
    home = tmp_path / "mindie-service"
    (f,) = findings(suite_ctx(s, environ={"MIES_INSTALL_PATH": str(home)}), "serving.mindie")
    assert f.severity == "error" and "httpsEnabled" in f.found and "security/certs/server.pem" in f.found
    for rel in ("security/certs/server.pem", "security/keys/server.key.pem", "security/pass/key_pwd.txt",
                "security/ca/ca.pem", "security/certs/server_crl.pem"):  # fmt: skip
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text("pem")
    (ok,) = findings(suite_ctx(s, environ={"MIES_INSTALL_PATH": str(home)}), "serving.mindie")
    assert ok.severity == "info" and "passes" in ok.found


def test_mindie_prefill_below_the_input_limit_is_an_error(tmp_path: Path):
    (f,) = findings(suite_ctx(mindie_suite(tmp_path, maxPrefillTokens=1024)), "serving.mindie")
    assert f.severity == "error" and "maxPrefillTokens 1024 < ModelDeployConfig.maxInputTokenLen 2048" in f.found
    assert f.fix == "raise maxPrefillTokens to at least 2048"
