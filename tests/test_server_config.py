"""Servers configured by file ([server] config: a JSON or YAML template rendered per start into {config}, the kept
copy redacted) and profile variables per device (device_env)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from harness.serving.spec import redact_config, render
from harness.suite import SuiteError
from harness.suite_parse import load

from .helpers import ROOT, load_report, only_run_dir, run_cli, write_suite

FAKE = f"{{python}} {ROOT / 'tests' / 'fake_openai.py'}"

TEMPLATE = """{
  "ServerConfig": {
    "ipAddress": "{host}",
    "port": {port},
    "httpsEnabled": false,
    "tlsPrivateKey": "/etc/mindie/server.key.pem",
    "tlsPassword": "hunter2-do-not-keep",
    "maxPrefillTokens": 8192
  },
  "BackendConfig": {"modelWeightPath": "{model}", "npuMemSize": -1, "dtype": "{dtype}"}
}
"""


def _suite(tmp_path: Path, server: str, profiles: str = "") -> Path:
    profiles = profiles or '[profiles.default]\nexpect = { cpu = "report" }\n'
    return write_suite(
        tmp_path / "s.toml",
        f"""
[suite]
name = "conf"
version = 1
[model]
ref = "fake-model"
[server]
{server}
startup_timeout_s = 30
[endpoint]
api = "completions"
[generation]
max_new_tokens = 4
[prompts]
items = [{{id = "a", text = "one two three"}}, {{id = "b", text = "four five"}}]
[[schedules]]
kind = "solo"
{profiles}
""",
    )


def test_render_fills_known_placeholders_only():
    assert render('{"port": {port}, "x": {other}, "m": "{model}"}', {"port": "8", "model": "/m"}) == (
        '{"port": 8, "x": {other}, "m": "/m"}'
    )


def test_redaction_replaces_credentials_and_keeps_everything_else():
    yaml = 'api-key: "sk-123"\nhf_token: hf_abc\nmax-model-len: 2048\ndtype: float32\n'
    assert redact_config(yaml) == 'api-key: "<redacted>"\nhf_token: <redacted>\nmax-model-len: 2048\ndtype: float32\n'
    js = render(TEMPLATE, {"port": "1", "host": "h", "model": "m", "dtype": "float32"})
    kept = redact_config(js)
    assert "hunter2" not in kept and '"tlsPassword": "<redacted>",' in kept
    assert '"maxPrefillTokens": 8192' in kept and "/etc/mindie/server.key.pem" in kept  # not credentials
    assert json.loads(kept)["ServerConfig"]["port"] == 1


@pytest.mark.parametrize(
    "server, files, message",
    [
        ('command = "srv --config {config}"', {}, "server.command: uses {config} but server.config names no template"),
        ('command = "srv --port {port}"\nconfig = "c.json"', {"c.json": "{}"}, "has no {config} placeholder"),
        ('command = "srv {config}"\nconfig = "missing.yaml"', {}, "server.config: file"),
        ('command = "srv {config}"\nconfig = "c.toml"', {"c.toml": ""}, "expected a .json, .yaml or .yml template"),
        (
            'command = "srv {config}"\nconfig = "c.json"',
            {"c.json": '{"port": {port},}'},
            "not valid JSON once rendered",
        ),
    ],
)
def test_config_mistakes_are_one_line_usage_errors(tmp_path: Path, server: str, files: dict, message: str):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(SuiteError, match=None) as e:
        load(_suite(tmp_path, server))
    assert message in str(e.value) and "\n" not in str(e.value), e.value


def test_device_env_adds_variables_on_that_device_only(tmp_path: Path):
    suite = _suite(
        tmp_path,
        f'command = "{FAKE} --port {{port}}"',
        '[profiles.det]\nenv = { A = "1" }\ndevice_env = { npu = { VLLM_BATCH_INVARIANT = "1", A = "2" } }\n',
    )
    s = load(suite)
    assert dict(s.profile("det").env) == {"A": "1"}  # the file's device: cpu
    npu = s.with_overrides(device="npu")
    assert dict(npu.profile("det").env) == {"A": "2", "VLLM_BATCH_INVARIANT": "1"}
    assert dict(npu.with_overrides(device="cpu").profile("det").env) == {"A": "1"}
    assert s.profile_hash(s.profile("det")) != npu.profile_hash(npu.profile("det"))


@pytest.mark.parametrize(
    "device_env, message",
    [
        ('{ npx = { A = "1" } }', "profiles.det.device_env.npx: unknown device; did you mean 'npu'?"),
        ('{ npu = "A=1" }', "profiles.det.device_env.npu: expected a table of variables"),
        ("{ cuda = { A = 1 } }", "profiles.det.device_env.cuda.A: expected a string"),
    ],
)
def test_device_env_mistakes_are_one_line_usage_errors(tmp_path: Path, device_env: str, message: str):
    suite = _suite(tmp_path, 'command = "srv --port {port}"', f"[profiles.det]\ndevice_env = {device_env}\n")
    with pytest.raises(SuiteError) as e:
        load(suite)
    assert message in str(e.value) and "\n" not in str(e.value), e.value


@pytest.mark.process
def test_a_server_configured_by_file_gets_it_rendered_per_start_and_the_kept_copy_is_redacted(tmp_path: Path):
    (tmp_path / "server.json").write_text(TEMPLATE)
    # The port reaches the server only through the file, as MindIE's does.
    suite = _suite(tmp_path, f'command = "{FAKE} --config {{config}}"\nconfig = "server.json"')
    p = run_cli("run", str(suite), "--out", str(tmp_path / "out"), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    run = only_run_dir(tmp_path / "out")
    kept = run / "logs" / "default.server.config.json"
    conf = json.loads(kept.read_text())
    assert conf["ServerConfig"]["tlsPassword"] == "<redacted>" and conf["ServerConfig"]["port"] > 0
    assert conf["BackendConfig"]["dtype"] == "float32"
    assert not any(b"hunter2" in f.read_bytes() for f in run.rglob("*") if f.is_file())
    argv = load_report(tmp_path / "out")["jobs"][0]["worker"]["server"]["argv"]
    assert argv[0] == sys.executable and not Path(argv[-1]).exists()  # the live file went with the server


@pytest.mark.parametrize(
    "path",
    ["vllm.toml", "vllm-bf16.toml", "serving-vllm.toml", "serving-vllm-bf16.toml", "examples/serving-mindie.toml"],
)
def test_shipped_vllm_and_example_suites_load(path: str):
    s = load(ROOT / "suites" / path)
    assert s.profiles and (s.server is None or s.server.command)
    if path.startswith("examples/"):
        assert s.server is not None and s.server.config.endswith("mindie-config.json")
        npu = s.with_overrides(device="npu")
        assert dict(npu.profile("deterministic").env)["HCCL_DETERMINISTIC"] == "true"
    else:
        det = [p for p in s.profiles if p.name == "deterministic"]
        for p in det:  # on NPU and CUDA the batch-invariant kernels; on CPU they would crash the engine
            assert "VLLM_BATCH_INVARIANT" in dict(s.with_overrides(device="npu").profile(p.name).env)
            assert "VLLM_BATCH_INVARIANT" not in dict(p.env)


def test_a_start_up_failure_is_explained_in_one_line():
    from harness.serving.server import start_up_cause

    tail = [
        "INFO loading weights",
        '  File "vllm/model_executor/layers/batch_invariant.py", line 40, in init_batch_invariance',
        "RuntimeError: Engine core initialization failed. See root cause above.",
    ]
    assert start_up_cause(tail).startswith(
        "the engine failed in vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT=1)"
    )
    assert start_up_cause(["INFO ok", "ValueError: bad dtype", "INFO shutting down"]) == "log: ValueError: bad dtype"
    assert start_up_cause([]) == "log: no output"


def test_profiles_that_differ_only_on_other_devices_are_said_to_be_the_same_here():
    from harness.pipeline import flags_note

    s = load(ROOT / "suites" / "vllm.toml")
    assert flags_note(s).startswith("default, deterministic ran with the same variables on cpu")
    assert flags_note(s.with_overrides(device="npu")) == ""
