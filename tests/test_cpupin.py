"""CPU instruction-set pins: verified in the worker, keyed by the pin when every library honoured it, one line and the
CPU model's key when one did not; the shipped `portable` profile, its place in the catalogue and in the cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import baselines, cpupin, devicekey, profiles
from harness import suite_parse as P
from harness.suite import SuiteError

from .helpers import ROOT, load_report, run_cli, write_suite

PINS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"}
GOT = {"cpu_capability": "AVX2", "onednn_isa": "Intel AVX2", "mkl_cbwr": "compatible"}
HOST = {"device": "cpu", "cpu_capability": "AVX2", "threads": "2", "torch": "2.13.0", "transformers": "5.24.0"}


def _x86_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text() and os.uname().machine == "x86_64"
    except OSError:
        return False


needs_avx2 = pytest.mark.skipif(not _x86_avx2(), reason="the AVX2 pin needs an x86-64 host with AVX2")


# ---- pure: verification and the key ----------------------------------------------------------------------------


def test_a_pin_every_library_honours_is_the_key_on_any_cpu_model():
    pin = cpupin.verify(PINS, GOT)
    assert pin == cpupin.Pin("pin-avx2-cbwr-compatible", "")
    amd = devicekey.device_key({**HOST, "cpu_model": "amd-25-17", "pin": pin.key})
    intel = devicekey.device_key({**HOST, "cpu_model": "intel-6-167", "pin": pin.key})
    assert str(amd) == "cpu-pin-avx2-cbwr-compatible-t2-torch2.13-tf5.24"
    assert amd.tier(intel) == "same key"  # so `same_key = "bitwise"` applies across the two hosts
    # ... while timings still tell the machines apart
    assert not devicekey.same_machine({**HOST, "cpu_model": "amd-25-17", "pin": pin.key}, {**HOST, "cpu_model": "x"})


@pytest.mark.parametrize(
    ("env", "got", "words"),
    [
        # MKL on an AMD CPU takes only AUTO and COMPATIBLE: AVX2 falls back to AUTO, silently
        ({**PINS, "MKL_CBWR": "AVX2"}, {**GOT, "mkl_cbwr": "auto"}, ["MKL_CBWR=AVX2", "branch auto"]),
        # a host without AMX: oneDNN runs the highest set it has
        (
            {**PINS, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"},
            {**GOT, "onednn_isa": cpupin.ONEDNN_ISAS["AVX512_CORE_BF16"]},
            ["ONEDNN_MAX_CPU_ISA=AVX512_CORE_AMX", "bfloat16 support"],
        ),
        # ATen takes lower-case names only; a host without AVX-512 runs AVX2 under avx512
        ({**PINS, "ATEN_CPU_CAPABILITY": "avx512"}, GOT, ["ATEN_CPU_CAPABILITY=avx512", "ATen runs AVX2"]),
        ({**PINS, "ONEDNN_MAX_CPU_ISA": "AVX3"}, GOT, ["does not know", "AVX3"]),
        (PINS, {**GOT, "onednn_isa": cpupin.UNREADABLE}, ["could not be read"]),
        ({"MKL_CBWR": "COMPATIBLE"}, GOT, ["not a full CPU pin", "ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA"]),
    ],
)
def test_a_pin_not_honoured_is_one_line_and_the_cpu_models_key(env, got, words):
    pin = cpupin.verify(env, got)
    assert pin.key == "" and "\n" not in pin.note
    for w in words:
        assert w in pin.note, (w, pin.note)
    info = {**HOST, "cpu_model": "amd-25-17", "pin": pin.key}
    assert devicekey.device_key(info).hardware == "cpu-avx2-amd-25-17-t2"  # never a pin it did not earn


def test_no_pin_set_says_nothing():
    assert cpupin.verify({"OMP_NUM_THREADS": "2"}, GOT) == cpupin.Pin("", "")


def test_pin_keys_name_each_library_once():
    assert cpupin.key({**PINS, "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512"}) == (
        "pin-avx512-avx512-core-cbwr-compatible"
    )
    assert cpupin.key({**PINS, "MKL_CBWR": "COMPATIBLE,STRICT"}) == "pin-avx2-cbwr-compatible-strict"


def test_what_the_libraries_say_is_parsed():
    header = "onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80af)\nonednn_verbose,v1,info,cpu,isa:Intel AVX2\n"
    assert cpupin.onednn_isa_line(header) == "Intel AVX2"
    assert cpupin.onednn_isa_line("") == cpupin.UNREADABLE
    config = (
        "  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64\n"
        "  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)\n"
    )
    assert cpupin.library_versions(config) == {"mkl": "2024.2", "onednn": "3.12.0"}


def test_a_baseline_with_a_malformed_pin_is_not_comparable(tmp_path: Path):
    b = baselines.build(
        suite="s",
        profile="portable",
        case_hash="h",
        device_key=devicekey.device_key(HOST),
        environment={"device": {**HOST, "pin": ["avx2"]}},
        reason="r",
        references=[],
        latency={},
        load_s=[],
    )
    baselines.write(tmp_path / "p.json", b)
    with pytest.raises(baselines.BaselineError, match=r"environment.device.pin: expected a string"):
        baselines.load(tmp_path / "p.json", "h")


# ---- the shipped profile, the catalogue and the cost -------------------------------------------------------------


@pytest.mark.parametrize("name", ["determinism.toml", "determinism-bf16.toml", "perf.toml"])
def test_the_shipped_portable_profile_is_read_on_cpu_and_left_out_elsewhere(name):
    s = P.load(ROOT / "suites" / name).with_overrides()
    port = s.profile("portable")
    assert dict(port.env) == PINS
    path = [profiles.run_path(s)]
    assert profiles.unread(port, path) == [] and profiles.note(port, "cpu", path) == ""
    assert {profiles.reader(k) for k in PINS} == {"ATen", "oneDNN", "MKL"}
    assert profiles.cost_profile(s) == "portable"
    assert profiles.cost_label(s) == "instruction-set pins: act on CPU"
    npu = P.load(ROOT / "suites" / name).with_overrides(device="npu")
    assert [p.name for p in npu.profiles] == ["default", "deterministic"]
    assert npu.left_out == ("portable (runs on cpu)",) and profiles.cost_profile(npu) == "deterministic"
    cuda = dict(P.load(ROOT / "suites" / name).with_overrides(device="cuda").profile("deterministic").env)
    assert cuda["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8" and cuda["NVIDIA_TF32_OVERRIDE"] == "0"


def test_asking_for_a_profile_on_a_device_it_does_not_run_on_is_refused():
    with pytest.raises(SuiteError, match=r"--profile portable: it runs on cpu only"):
        P.load(ROOT / "suites" / "perf.toml").with_overrides(device="npu", profiles=["portable"])


def test_a_profile_devices_list_is_checked(tmp_path: Path):
    body = (ROOT / "suites" / "perf.toml").read_text().replace('devices = ["cpu"]', 'devices = ["tpu"]')
    body = body.replace('file = "prompts/perf.jsonl"', f'file = "{ROOT / "suites" / "prompts" / "perf.jsonl"}"')
    with pytest.raises(SuiteError, match=r"profiles.portable.devices: expected a non-empty list of cpu"):
        P.load(write_suite(tmp_path / "p.toml", body))


# ---- real workers ------------------------------------------------------------------------------------------------

DESCRIBE = (
    "import json, os; from harness import devices; d = devices.prepare('cpu', deterministic=False); "
    "print(json.dumps(devices.describe(d)))"
)


def _describe(env: dict[str, str]) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in PINS and k not in ("ONEDNN_VERBOSE", "DNNL_VERBOSE")}
    p = subprocess.run(
        [sys.executable, "-c", DESCRIBE], capture_output=True, text=True, env={**clean, **env}, cwd=ROOT, timeout=120
    )
    assert p.returncode == 0, p.stderr
    out: dict[str, str] = json.loads(p.stdout.strip().splitlines()[-1])  # the probe's verbose lines never reach it
    return out


@pytest.mark.process
@needs_avx2
def test_a_worker_reads_back_what_each_library_runs_with():
    pinned = _describe(PINS)
    assert (pinned["cpu_capability"], pinned["onednn_isa"], pinned["mkl_cbwr"]) == ("AVX2", "Intel AVX2", "compatible")
    assert pinned["pin"] == "pin-avx2-cbwr-compatible" and "pin_note" not in pinned
    assert pinned["mkl"] and pinned["onednn"] and pinned["cpu_name"]
    # a value the library rejects (ATen takes lower case only): read back, one line, the CPU model's key
    rejected = _describe({**PINS, "ATEN_CPU_CAPABILITY": "AVX2"})
    assert rejected["pin"] == "" and "ATEN_CPU_CAPABILITY=AVX2: ATen runs" in rejected["pin_note"]
    assert devicekey.device_key(rejected).hardware.endswith(f"{rejected['cpu_model']}-t{rejected['threads']}")
    bare = _describe({})
    assert bare["mkl_cbwr"] == "off" and bare["pin"] == "" and "pin_note" not in bare


SUITE = """
[suite]
name = "tinypin"
version = 1
[model]
ref = "{model}"
[generation]
max_new_tokens = 6
[prompts]
items = [{{id = "a", text = "Say hello.", chat = true}}, {{id = "b", text = "Count to five."}}]
[[schedules]]
kind = "solo"
[perf]
warmup = 0
repeats = 2
threshold = 5.0    # plumbing, not speed
[profiles.portable]
env = {{ {env} }}
"""


def _suite(tmp: Path, model: Path, pins: dict[str, str]) -> Path:
    env = ", ".join(f'{k} = "{v}"' for k, v in pins.items())
    return write_suite(tmp / "tinypin.toml", SUITE.format(model=model, env=env))


@pytest.mark.process
@needs_avx2
def test_a_pinned_baseline_is_met_bitwise_from_another_cpu_model_and_bits_that_move_name_the_hosts(
    tmp_path: Path, tiny_model: Path
):
    suite, store = _suite(tmp_path, tiny_model, PINS), tmp_path / "baselines"
    r = run_cli(
        "run",
        str(suite),
        "--baselines",
        str(store),
        "--out",
        str(tmp_path / "r0"),
        "--update-baselines",
        "--reason",
        "pinned",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (f,) = store.rglob("portable.json")
    assert f.parent.parent.name.startswith("cpu-pin-avx2-cbwr-compatible-t")
    # as if recorded on a host of another CPU model (and vendor) that honoured the same pin
    b = json.loads(f.read_text())
    other = "amd-25-1" if b["environment"]["device"]["cpu_model"].startswith("intel") else "intel-6-167"
    b["environment"]["device"].update(cpu_model=other, cpu_name="Other CPU", mkl="2025.0")
    f.write_text(json.dumps(b))
    r = run_cli("run", str(suite), "--baselines", str(store), "--out", str(tmp_path / "r1"))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = load_report(tmp_path / "r1")
    v = next(v for v in rep["verdicts"] if v["property"] == "baseline")
    assert (v["status"], v["expect"], v["bitwise"]) == ("pass", "bitwise", 2)  # the same key: bits compared
    assert rep["perf_gated"] == {"portable": False}  # ... but timings of another machine are not gated
    # the same pin honoured on both hosts, and bits that differ: a failure naming what differs between them
    b["outputs"]["a"]["fingerprints"][0] = "0" * len(b["outputs"]["a"]["fingerprints"][0])
    f.write_text(json.dumps(b))
    r = run_cli("run", str(suite), "--baselines", str(store), "--out", str(tmp_path / "r2"))
    assert r.returncode == 1, r.stdout + r.stderr
    v = next(v for v in load_report(tmp_path / "r2")["verdicts"] if v["property"] == "baseline")
    assert "honoured by both hosts" in v["reason"] and f"cpu_model {other} -> " in v["reason"]
    assert "mkl 2025.0 -> " in v["reason"]


@pytest.mark.process
@needs_avx2
def test_a_pin_the_host_cannot_honour_is_one_line_and_never_a_pinned_baseline(tmp_path: Path, tiny_model: Path):
    suite, store = _suite(tmp_path, tiny_model, {**PINS, "ATEN_CPU_CAPABILITY": "AVX2"}), tmp_path / "baselines"
    r = run_cli(
        "run",
        str(suite),
        "--baselines",
        str(store),
        "--out",
        str(tmp_path / "r0"),
        "--update-baselines",
        "--reason",
        "rejected pin",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    notes = [ln for ln in r.stdout.splitlines() if "CPU pin not honoured" in ln]
    assert len(notes) == 1 and "ATEN_CPU_CAPABILITY=AVX2" in notes[0], r.stdout
    (f,) = store.rglob("portable.json")
    assert not f.parent.parent.name.startswith("cpu-pin")  # the CPU model's key
