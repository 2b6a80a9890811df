"""Device facts read from the Ascend install's own files (devices.py), and a served run's device key (harness/serving/info.py).

The trees under tests/fixtures/ascend/<layout>/ stand for /usr/local/Ascend. Their files are copied verbatim from
public reports of real hosts (vllm-ascend issue templates, MindIE and MindSpore setup notes, the Ascend fault
diagnosis guide), one release each:
  cann-8.0.RC2  ascend-toolkit/latest/version.cfg only (an 8.0.RC2 host with 7.0.RC1 and 7.0.0 installed before),
                driver and firmware of HDK 24.1.rc3
  cann-8.1.RC1  ascend-toolkit/latest/x86_64-linux/ascend_toolkit_install.info and version.cfg of one host,
                driver and firmware of HDK 25.0.rc1.1
  cann-8.2.RC1  ascend-toolkit/latest/toolkit/version.info only (Version=8.2.0.0.201, version_dir=8.2.RC1)
  cann-8.5.0    cann-8.5.0/aarch64-linux/ascend_toolkit_install.info (no ascend-toolkit), driver 24.1.rc1 and
                firmware 7.1.0.11.220 as the same guide prints them
  mindie-2.1.RC1  mindie/latest/version.info and the daemon's path
  npu-smi-info-910B3.txt  `npu-smi info` of a two-card 910B3 host, with its process table
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import devicekey, devices
from harness.serving import info as serverinfo
from harness.suite import Server
from harness.tomltable import tomllib

from .helpers import ROOT

FIX = ROOT / "tests" / "fixtures" / "ascend"
LAYOUTS = {  # layout -> (CANN release, driver, firmware)
    "cann-8.0.RC2": ("8.0.RC2", "24.1.rc3", "7.5.0.1.129"),
    "cann-8.1.RC1": ("8.1.RC1", "25.0.rc1.1", "7.7.0.1.231"),
    "cann-8.5.0": ("8.5.0", "24.1.rc1", "7.1.0.11.220"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_reads_its_release_driver_and_firmware(layout: str):
    cann, driver, firmware = LAYOUTS[layout]
    root = FIX / layout
    assert devices.cann_version(root) == cann
    assert devices.driver_version(root) == driver
    # firmware_version=1.0 is the file format's number, on every release: never taken for the firmware's.
    assert devices.firmware_version(root) == firmware


def test_version_cfg_gives_the_release_after_the_colon():
    cfg = FIX / "cann-8.0.RC2" / "ascend-toolkit" / "latest" / "version.cfg"
    assert cfg.read_text().splitlines()[0] == "runtime_running_version=[7.3.0.1.231:8.0.RC2]"
    assert devices.release_from_version_cfg(cfg) == "8.0.RC2"
    # The installed history ([7.0.0.5.242:7.0.RC1][7.1.0.3.220:7.0.0][...]) is not what runs.
    assert devices.read_info(cfg)["runtime_installed_version"].startswith("[7.0.0.5.242:7.0.RC1]")


def test_the_8_1_readers_agree():
    home = FIX / "cann-8.1.RC1" / "ascend-toolkit" / "latest"
    assert devices.release_from_install_info(home / "x86_64-linux" / "ascend_toolkit_install.info") == "8.1.RC1"
    assert devices.release_from_version_cfg(home / "version.cfg") == "8.1.RC1"


def test_toolkit_version_info_gives_version_dir_not_the_inner_number():
    root = FIX / "cann-8.2.RC1"
    assert devices.release_from_toolkit_version_info(root / "ascend-toolkit/latest/toolkit/version.info") == "8.2.RC1"
    assert devices.cann_version(root) == "8.2.RC1"


def test_the_8_5_layout_the_cann_link_and_the_exported_home(tmp_path: Path):
    """8.5 installs cann-<release>/ with a `cann` link to the one in use; an older ascend-toolkit may sit beside it."""
    root = tmp_path / "Ascend"
    shutil.copytree(FIX / "cann-8.5.0", root)
    shutil.copytree(FIX / "cann-8.1.RC1" / "ascend-toolkit", root / "ascend-toolkit")
    assert devices.cann_version(root) == "8.1.RC1"  # no link: ascend-toolkit/latest is what set_env.sh sets up
    (root / "cann").symlink_to("cann-8.5.0")
    assert devices.cann_version(root) == "8.5.0"
    # set_env.sh's ASCEND_HOME_PATH names the release in use, whatever the links say.
    assert devices.cann_version(root, home=str(root / "ascend-toolkit" / "latest")) == "8.1.RC1"
    assert devices.cann_home_env({"ASCEND_HOME_PATH": "/a", "ASCEND_TOOLKIT_HOME": "/b"}) == "/a"
    assert devices.cann_home_env({"ASCEND_TOOLKIT_HOME": "/b"}) == "/b"


def test_the_newest_cann_release_without_a_link(tmp_path: Path):
    for release in ("8.3.RC1", "8.5.0", "8.0.0"):
        info = tmp_path / f"cann-{release}" / "aarch64-linux" / "ascend_toolkit_install.info"
        info.parent.mkdir(parents=True)
        info.write_text(f"package_name=Ascend-cann-toolkit\nversion={release}\n")
    assert devices.cann_version(tmp_path) == "8.5.0"


def test_nothing_installed_is_unknown(tmp_path: Path):
    assert devices.cann_version(tmp_path) == "unknown"
    assert devices.driver_version(tmp_path) == "unknown"
    assert devices.firmware_version(tmp_path) == "unknown"
    assert devices.mindie_version(root=tmp_path) == "unknown"


def test_npu_smi_names_the_chip_as_torch_npu_does():
    text = (FIX / "npu-smi-info-910B3.txt").read_text()
    assert devices.npu_smi_chips(text) == ["910B3", "910B3"]  # the process table's rows are not cards
    assert devices.npu_smi_chip(text) == "Ascend910B3"
    mixed = text.replace("| 1     910B3 ", "| 1     910B4 ")
    assert devices.npu_smi_chip(mixed) == "unknown"
    assert devices.npu_smi_chip("") == "unknown"


def test_no_npu_smi_is_unknown(monkeypatch):
    if any(os.access(p, os.X_OK) for p in ("/usr/local/bin/npu-smi", "/usr/local/sbin/npu-smi")):
        pytest.skip("this host has npu-smi")
    monkeypatch.setenv("PATH", "")
    assert devices.npu_smi_chip() == "unknown"


def test_mindie_version_from_its_install():
    daemon = FIX / "mindie-2.1.RC1" / "mindie" / "latest" / "mindie-service" / "bin" / "mindieservice_daemon"
    assert devices.mindie_version(near=daemon.resolve(), root="/nonexistent") == "2.1.RC1.B152"
    assert devices.mindie_version(root=FIX / "mindie-2.1.RC1") == "2.1.RC1.B152"


@pytest.mark.process
def test_the_fact_readers_import_no_torch():
    """The runner (which never imports torch), the doctor and the served key use them."""
    code = "import sys, harness.devices, harness.runner; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


# ---- a served run: which program, which version, which host --------------------------------------------------


def suite_command(path: str) -> str:
    return tomllib.loads((ROOT / "suites" / path).read_text())["server"]["command"]


@pytest.mark.parametrize(
    "command, program",
    [
        (suite_command("serving-vllm.toml"), "vllm"),
        (suite_command("serving.toml"), "transformers"),
        (suite_command("examples/serving-mindie.toml"), "mindie"),
        ("vllm serve {model} --port {port}", "vllm"),
        ("A=1 B=2 python3 -u -m sglang.launch_server --port {port}", "sglang"),
        ("env -u HTTP_PROXY {python} -W ignore serve.py --port {port}", "serve"),
        ("bash -c 'exec env X=1 {python} -m vllm.entrypoints.openai.api_server'", "vllm"),
    ],
)
def test_the_server_program_is_the_real_one(command: str, program: str):
    assert serverinfo.server_program(Server(command=command)) == program
    assert serverinfo.server_program(None) == "external"


def committed_served() -> list[Path]:
    return sorted(p for p in (ROOT / "baselines").glob("endpoint-*/*/*.json"))


@pytest.mark.parametrize("path", committed_served(), ids=lambda p: str(p.relative_to(ROOT / "baselines")))
def test_committed_served_baselines_keep_their_key(path: Path, monkeypatch):
    """What a served CPU run of `transformers serve` records now (its version included) keys as it did."""
    monkeypatch.setattr(serverinfo, "_this_interpreter", lambda argv, path=None: True)
    monkeypatch.setattr(serverinfo, "_dist_version", lambda *names: "5.25.0" if "transformers" in names else "")
    info = json.loads(path.read_text())["environment"]["device"]
    facts = serverinfo.served_device(Server(command=suite_command("serving.toml")), info["target"])
    assert facts == {"server": "transformers", "transformers": "5.25.0"}
    assert str(devicekey.device_key({**info, **facts})) == path.parent.parent.name


def test_a_served_vllm_ascend_key_names_versions_chip_and_cann(monkeypatch):
    versions = {"vllm": "0.11.0", "vllm_ascend": "0.11.0rc1"}
    monkeypatch.setattr(
        serverinfo, "_dist_version", lambda *names: next((versions[n] for n in names if n in versions), "")
    )
    smi, text = devices.npu_smi_chip, (FIX / "npu-smi-info-910B3.txt").read_text()
    monkeypatch.setattr(devices, "npu_smi_chip", lambda: smi(text))
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    facts = serverinfo.served_device(
        Server(command=suite_command("serving-vllm.toml")), "npu", root=str(FIX / "cann-8.1.RC1")
    )
    assert facts == {
        "server": "vllm",
        "server_version": "0.11.0",
        "vllm_ascend": "0.11.0rc1",
        "chip": "Ascend910B3",
        "cann": "8.1.RC1",
        "driver": "25.0.rc1.1",
        "firmware": "7.7.0.1.231",
    }
    key = devicekey.device_key({"device": "endpoint", "target": "npu", "host": "arm-0x48-0xd01-c192", **facts})
    assert key.hardware == "endpoint-npu-arm-0x48-0xd01-c192-ascend910b3"
    assert key.software == "vllm0.11-vllmascend0.11-cann8.1"
    # On a CPU target vllm_ascend is not what runs, and there is no chip or CANN to read.
    cpu = serverinfo.served_device(Server(command=suite_command("serving-vllm.toml")), "cpu")
    assert cpu == {"server": "vllm", "server_version": "0.11.0"}


def test_vllm_from_another_interpreter_has_no_version(monkeypatch, tmp_path: Path):
    other = tmp_path / "bin" / "vllm"
    other.parent.mkdir()
    other.write_text("#!/opt/other-venv/bin/python3\n")
    other.chmod(0o755)
    monkeypatch.setattr(serverinfo, "_dist_version", lambda *names: "0.11.0")
    assert not serverinfo._this_interpreter([str(other), "serve"])
    assert serverinfo.served_device(Server(command=f"{other} serve {{model}}"), "cpu") == {"server": "vllm"}
    ours = tmp_path / "bin" / "ours"
    ours.write_text(f"#!{sys.executable}\n")
    ours.chmod(0o755)
    assert serverinfo._this_interpreter([str(ours)])


def test_the_mindie_example_names_mindie_and_its_version(tmp_path: Path, monkeypatch):
    root = tmp_path / "Ascend"
    shutil.copytree(FIX / "mindie-2.1.RC1", root)
    shutil.copytree(FIX / "cann-8.1.RC1", root, dirs_exist_ok=True)
    monkeypatch.setattr(devices, "npu_smi_chip", lambda: "Ascend910B3")
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    command = suite_command("examples/serving-mindie.toml").replace("/usr/local/Ascend", str(root))
    facts = serverinfo.served_device(Server(command=command), "npu", root=str(root))
    assert facts["server"] == "mindie" and facts["server_version"] == "2.1.RC1.B152" and facts["cann"] == "8.1.RC1"
    key = devicekey.device_key({"device": "endpoint", "target": "npu", "host": "h", **facts})
    assert key.software == "mindie2.1-cann8.1"


def test_the_in_process_vllm_key_names_vllm_ascend():
    info = {"device": "npu", "chip": "Ascend910B3", "torch": "2.5.1", "torch_npu": "2.5.1", "cann": "8.1.RC1"}
    key = devicekey.device_key({**info, "vllm": "0.9.1", "vllm_ascend": "0.9.1rc1"})
    assert key.software == "torch2.5-torchnpu2.5-cann8.1-vllm0.9-vllmascend0.9"
