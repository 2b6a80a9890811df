"""The baseline store: device keys, atomic writes that survive kill -9, and files that cannot be compared."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import baselines, devicekey, envinfo
from harness.records import Record

from .helpers import ROOT, record


def _ref(pid: str = "a", tokens=(1, 2, 3)) -> Record:
    return record(
        pid,
        tokens=tokens,
        pieces=[str(t) for t in tokens],
        text="x",
        fingerprints=[f"{t:032x}" for t in tokens],
        topk=[([t, 0], [-0.1, -2.0]) for t in tokens],
    )


CPU = {
    "device": "cpu",
    "cpu_capability": "AVX512",
    "cpu_model": "intel-6-167",
    "threads": "2",
    "torch": "2.13.0+cpu",
    "transformers": "5.24.0",
}


def _baseline(
    case_hash: str = "c0ffee", n_prompts: int = 1, device: dict | None = None, created: str = ""
) -> baselines.Baseline:
    info = device or CPU
    b = baselines.build(
        suite="s",
        profile="default",
        case_hash=case_hash,
        device_key=devicekey.device_key(info),
        environment={"device": info},
        reason="test",
        references=[_ref(f"p{i}") for i in range(n_prompts)],
        latency={"solo tpot": [0.05, 0.051]},
        load_s=[3.2],
    )
    if created:
        b.provenance["created"] = created
    return b


def test_device_key_names_device_chip_and_major_versions():
    assert (
        str(devicekey.device_key({"device": "cpu", "cpu_capability": "AVX512", "threads": "2", "torch": "2.13.0+cpu"}))
        == "cpu-avx512-t2-torch2.13"
    )
    assert (
        str(
            devicekey.device_key(
                {
                    "device": "npu",
                    "chip": "Ascend910B3",
                    "torch": "2.1.0",
                    "torch_npu": "2.1.0.post6",
                    "cann": "8.0.RC2",
                }
            )
        )
        == "npu-ascend910b3-torch2.1-torchnpu2.1-cann8.0"
    )
    assert (
        str(devicekey.device_key({"device": "cuda", "chip": "NVIDIA H100 80GB HBM3", "torch": "2.5.1", "cuda": "12.4"}))
        == "cuda-nvidia-h100-80gb-hbm3-torch2.5-cuda12.4"
    )
    # Two AVX512 hosts of other microarchitectures pick other MKL/oneDNN kernels: their bits are not comparable.
    key = devicekey.device_key(CPU)
    assert (key.hardware, key.software) == ("cpu-avx512-intel-6-167-t2", "torch2.13-tf5.24")
    assert str(key) == "cpu-avx512-intel-6-167-t2-torch2.13-tf5.24"
    served = devicekey.device_key({"device": "endpoint", "server": "vllm", "target": "npu", "host": "intel-6-167-c2"})
    assert (served.hardware, served.software) == ("endpoint-npu-intel-6-167-c2", "vllm")


def test_tiers_between_keys():
    key = devicekey.device_key(CPU)
    assert key.tier(devicekey.device_key(CPU)) == "same key"
    assert key.tier(devicekey.device_key({**CPU, "transformers": "5.30.1"})) == "other software"
    assert key.tier(devicekey.device_key({**CPU, "torch": "2.14.0"})) == "other software"
    assert key.tier(devicekey.device_key({**CPU, "cpu_model": "amd-26-2"})) == "other hardware"
    assert key.tier(devicekey.device_key({**CPU, "threads": "4"})) == "other hardware"
    assert key.tier(devicekey.device_key({"device": "npu", "chip": "Ascend910B3", "torch": "2.13.0"})) is None


def test_store_prefers_this_key_then_this_hardware_then_this_device_type(tmp_path: Path):
    store = baselines.Store(tmp_path)
    here = devicekey.device_key(CPU)
    other_hw = {**CPU, "cpu_model": "amd-26-2"}
    other_sw = {**CPU, "transformers": "5.30.1"}
    assert isinstance(store.check(here, "s", "default", "c0ffee"), baselines.Missing)
    baselines.write(store.path(devicekey.device_key(other_hw), "s", "default"), _baseline(device=other_hw))
    found = store.check(here, "s", "default", "c0ffee")
    assert isinstance(found, baselines.Found) and found.tier == "other hardware" and not found.same_hardware
    assert found.key.hardware == "cpu-avx512-amd-26-2-t2"
    # Same hardware beats other hardware, even when older.
    baselines.write(
        store.path(devicekey.device_key(other_sw), "s", "default"),
        _baseline(device=other_sw, created="2000-01-01T00:00:00"),
    )
    found = store.check(here, "s", "default", "c0ffee")
    assert found.tier == "other software" and found.same_hardware
    target = store.update(here, "s", "default", _baseline())
    assert target == tmp_path / str(here) / "s" / "default.json"
    assert store.check(here, "s", "default", "c0ffee").tier == "same key"
    # Recording one host's baseline removes no other's.
    assert len(list(tmp_path.glob("*/s/default.json"))) == 3
    # Another device type is never a stand-in.
    npu = devicekey.device_key({"device": "npu", "chip": "Ascend910B3", "torch": "2.13.0"})
    assert isinstance(store.check(npu, "s", "default", "c0ffee"), baselines.Missing)


def test_a_broken_file_under_this_key_is_unusable_but_another_hosts_is_passed_over(tmp_path: Path):
    store = baselines.Store(tmp_path)
    here = devicekey.device_key(CPU)
    other = devicekey.device_key({**CPU, "cpu_model": "amd-26-2"})
    store.path(other, "s", "default").parent.mkdir(parents=True)
    store.path(other, "s", "default").write_text("{not json")
    assert isinstance(store.check(here, "s", "default", "c0ffee"), baselines.Missing)
    store.path(here, "s", "default").parent.mkdir(parents=True)
    store.path(here, "s", "default").write_text("{not json")
    found = store.check(here, "s", "default", "c0ffee")
    assert isinstance(found, baselines.Unusable) and "corrupt baseline" in found.reason


def test_cpu_model_from_cpuinfo():
    from harness.envinfo import cpu_model

    intel = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 143\nflags\t: fpu amx_tile\n\nprocessor\t: 1\n"
    assert cpu_model(intel) == "intel-6-143"
    assert cpu_model("processor\t: 0\nCPU implementer\t: 0x48\nCPU part\t: 0xd01\n") == "arm-0x48-0xd01"


def test_environment_changes_name_what_moved_since_the_baseline():
    before = {"device": "cpu", "torch": "2.13.0+cpu", "transformers": "5.23.0"}
    after = {"device": "cpu", "torch": "2.13.0+cpu", "transformers": "5.24.0", "cpu_model": "intel-6-167"}
    assert envinfo.changes(before, after) == [
        "cpu_model not recorded -> intel-6-167",
        "transformers 5.23.0 -> 5.24.0",
    ]
    assert envinfo.changes(after, after) == []


def test_round_trip_keeps_references_samples_and_provenance(tmp_path: Path):
    p = tmp_path / "cpu-x" / "s" / "default.json"
    baselines.write(p, _baseline())
    b = baselines.load(p, "c0ffee")
    assert b.reference("p0").tokens == [1, 2, 3] and b.reference("p0").fingerprints[0].endswith("1")
    assert b.latency == {"solo tpot": [0.05, 0.051]} and b.load_s == [3.2]
    assert b.provenance["reason"] == "test" and b.provenance["harness_version"]
    assert json.loads(p.read_text())["schema_version"] == baselines.SCHEMA_VERSION


def test_a_run_history_keeps_process_medians_aligned_with_its_runs(tmp_path: Path):
    store = baselines.Store(tmp_path)
    key = devicekey.device_key(CPU)
    old = _baseline()
    old.runs = [{"solo tpot": 0.05}, {"solo tpot": 0.051}]  # recorded before process medians were kept
    f = store.save(key, "s", "default", old)
    assert "processes" not in json.loads(Path(f).read_text())  # a field never filled stays out of the file
    new = _baseline()
    new.processes = [{"solo tpot": [0.049, 0.052]}]
    baselines.with_history(new, store.check(key, "s", "default", "c0ffee"), CPU, fresh=False)
    assert len(new.runs) == 3 and new.processes == [{}, {}, {"solo tpot": [0.049, 0.052]}]
    baselines.write(Path(f), new)
    assert baselines.load(Path(f), "c0ffee").processes == new.processes
    again = _baseline()  # a run of one process after it: its entry is empty, the earlier one kept
    baselines.with_history(again, store.check(key, "s", "default", "c0ffee"), CPU, fresh=False)
    assert again.processes == [{}, {}, {"solo tpot": [0.049, 0.052]}, {}]
    Path(f).write_text(Path(f).read_text().replace("0.049", '"x"'))
    assert isinstance(store.check(key, "s", "default", "c0ffee"), baselines.Unusable)


@pytest.mark.parametrize(
    "content, words",
    [
        ("{not json", "corrupt baseline"),
        ('{"schema_version": 99, "suite": "s"}', "schema_version 99"),
        ('["a list"]', "not a baseline file"),
        ('{"schema_version": 1, "suite": "s"}', "malformed baseline"),
    ],
)
def test_unreadable_files_give_one_line(tmp_path: Path, content: str, words: str):
    p = tmp_path / "default.json"
    p.write_text(content)
    with pytest.raises(baselines.BaselineError) as e:
        baselines.load(p, "c0ffee")
    msg = str(e.value)
    assert words in msg and str(p) in msg and "\n" not in msg and "--update-baselines" in msg


def test_another_case_hash_is_not_comparable(tmp_path: Path):
    p = tmp_path / "default.json"
    baselines.write(p, _baseline("aaaa"))
    with pytest.raises(baselines.BaselineError, match="case hash aaaa.*bbbb"):
        baselines.load(p, "bbbb")


@pytest.mark.process
def test_kill_during_writes_leaves_a_readable_baseline(tmp_path: Path):
    """A real process rewriting a large baseline in a loop is killed with SIGKILL at several moments."""
    p = tmp_path / "cpu-x" / "s" / "default.json"
    baselines.write(p, _baseline())
    source = tmp_path / "big.json"
    baselines.write(source, _baseline(n_prompts=3000))  # a few MB: each write takes a while
    writer = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from harness import baselines
        big = baselines.load(baselines.Path({str(source)!r}), "c0ffee")
        print("ready", flush=True)
        while True:
            baselines.write(baselines.Path({str(p)!r}), big)
            print("wrote", flush=True)
    """)
    for delay in (0.0, 0.05, 0.2, 0.45, 0.8):
        proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        if delay:  # killed while rewriting a whole file that a finished write left: that file must stand
            assert proc.stdout.readline().strip() == "wrote"
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        b = baselines.load(p, "c0ffee")  # never half a file
        assert len(b.outputs) == 3000 if delay else len(b.outputs) in (1, 3000)
    assert not [f for f in p.parent.iterdir() if f.name != "default.json" and not f.name.startswith(".")]


def test_committed_baselines_match_their_suites_case_hash():
    """A change to how suites are hashed would silently turn every committed baseline into 'not comparable'."""
    from harness import suite_parse as S

    checked = 0
    for f in sorted((ROOT / "baselines").glob("*/*/*.json")):
        suite_file = ROOT / "suites" / f"{f.parent.name}.toml"
        data = json.loads(f.read_text())
        if suite_file.exists() and "outputs" in data and f.parent.name != "loadtime":
            assert data["case_hash"] == S.load(suite_file).case_hash, f"{f} no longer matches {suite_file.name}"
            checked += 1
    assert checked >= 8
