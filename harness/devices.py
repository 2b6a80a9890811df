"""cpu / cuda / npu behind one face. torch_npu is imported here only, inside a worker,
after the profile's environment is in place (ATB, HCCL and LCCL read it at start-up).

The Ascend install's facts (CANN release, driver, firmware, the chip as npu-smi names it) are read from files
and `npu-smi`, never through torch_npu: pure functions of the install root, so the parent (which never imports
torch), the doctor and a served run's key can read them, and tests can point them at fixture trees. torch itself
is imported inside the functions that need a device, for the same reason."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from . import envinfo

if TYPE_CHECKING:
    import torch

# Versions recorded with every run: a change in any of them can move bits without changing the device key.
LIBRARIES = ("transformers", "numpy", "safetensors", "gguf", "accelerate")


class DeviceError(RuntimeError):
    """The requested device cannot be used in this process."""


def prepare(kind: str, *, deterministic: bool) -> torch.device:
    import torch

    if kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers torch.npu)
        except ImportError as e:
            raise DeviceError(
                f"--device npu needs torch_npu ({e}); install the 'npu' extra or use the CANN image's Python"
            ) from None
        if not torch.npu.is_available():  # type: ignore[attr-defined]  # torch_npu adds torch.npu at import
            raise DeviceError(
                "--device npu: torch_npu is installed but no NPU is visible (check ASCEND_RT_VISIBLE_DEVICES and npu-smi)"
            )
    elif kind == "cuda":
        if deterministic:
            # cuBLAS refuses deterministic mode without a fixed workspace; must be set before CUDA starts.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: torch sees no CUDA device (is this a CPU build of torch?)")
    elif kind == "cpu":
        from . import cpupin

        cpupin.readback()  # before the model: oneDNN says its ISA only at its first primitive
    else:
        raise DeviceError(f"unknown device {kind!r}; expected cpu, cuda or npu")
    if deterministic:
        torch.use_deterministic_algorithms(True)
    return torch.device(kind)


def synchronize(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)  # type: ignore[attr-defined]  # added by torch_npu


def describe(device: torch.device) -> dict[str, str]:
    """Chip and software versions: the parts of the environment that decide bit-level results."""
    import torch

    info = {
        "device": device.type,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": envinfo.cpu_model(),
        "cpu_name": envinfo.cpu_name(),
        "threads": str(torch.get_num_threads()),
    }
    if device.type == "cpu":
        from . import cpupin

        # what ATen, oneDNN and MKL run with, their versions, and the pin they earn (verified, not assumed)
        info.update(cpupin.facts(os.environ))
    for lib in LIBRARIES:
        try:
            info[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    if device.type == "cuda":
        info["chip"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    elif device.type == "npu":
        import torch_npu

        info["chip"] = torch.npu.get_device_name(device)  # type: ignore[attr-defined]  # added by torch_npu
        info["torch_npu"] = torch_npu.__version__
        info["cann"] = cann_version(home=cann_home_env())
        # Driver and firmware move kernels too; recorded so a sign-off can name them when bits move.
        info["driver"] = driver_version()
        info["firmware"] = firmware_version()
    return info


# ---- the Ascend install, read from its files -----------------------------------------------------------------
# Shapes, as the Ascend installation guides print them and as they appear verbatim in many public issue reports
# (vllm-ascend's bug template asks for exactly these files); the fixtures under tests/fixtures/ascend/ copy them:
#   <toolkit home>/version.cfg                 runtime_running_version=[7.3.0.1.231:8.0.RC2]  (inner:release)
#   <toolkit home>/<arch>-linux/ascend_toolkit_install.info    package_name=Ascend-cann-toolkit / version=8.1.RC1
#   <toolkit home>/toolkit/version.info        Version=8.2.0.0.201 (inner) / version_dir=8.2.RC1 (release)
#   CANN 8.5: /usr/local/Ascend/cann-8.5.0/<arch>-linux/ascend_toolkit_install.info (version=8.5.0), with
#             /usr/local/Ascend/cann -> cann-8.5.0; set_env.sh exports ASCEND_HOME_PATH=/usr/local/Ascend/cann-8.5.0
#   driver/version.info                        Version=24.1.rc2 (the Ascend HDK release), package_version=...
#   firmware/version.info                      Version=7.5.0.1.129 (the firmware's own number),
#                                              firmware_version=1.0 (the file's format, not a release),
#                                              package_version=24.1.rc3 (the HDK package it came in)
ASCEND_ROOT = "/usr/local/Ascend"
UNKNOWN = "unknown"


def read_info(path: str | os.PathLike[str]) -> dict[str, str]:
    """`key=value` lines (version.info, version.cfg, *_install.info) as a dict; {} when the file is unreadable."""
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                k, sep, v = line.partition("=")
                if sep and k.strip() and not k.lstrip().startswith("#"):
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def _field(info: dict[str, str], name: str) -> str:
    """A field whatever its case (driver files say `Version`, install files `version`)."""
    return next((v for k, v in info.items() if k.lower() == name.lower() and v), "")


def release_from_version_cfg(path: str | os.PathLike[str]) -> str:
    """The CANN release in a toolkit's version.cfg: `runtime_running_version=[7.3.0.1.231:8.0.RC2]` -> 8.0.RC2
    (before the colon is the inner component version); the toolkit's, then the runtime's, then any *_running_version."""
    info = read_info(path)
    keys = ["toolkit_running_version", "runtime_running_version"]
    keys += sorted(k for k in info if k.endswith("_running_version") and k not in keys)
    for k in keys:
        raw = info.get(k, "").strip().strip("[]")
        if raw:
            return raw.rpartition(":")[2].strip() or raw
    return ""


def release_from_install_info(path: str | os.PathLike[str]) -> str:
    """`version=8.1.RC1` from an ascend_toolkit_install.info."""
    return _field(read_info(path), "version")


def release_from_toolkit_version_info(path: str | os.PathLike[str]) -> str:
    """`version_dir=8.2.RC1` from <home>/toolkit/version.info (its `Version=` is the inner number, 8.2.0.0.201)."""
    return _field(read_info(path), "version_dir")


def cann_home_env(environ: dict[str, str] | None = None) -> str:
    """The toolkit home set_env.sh exported, if any: it names the release in use when several are installed."""
    env = os.environ if environ is None else environ
    return env.get("ASCEND_HOME_PATH") or env.get("ASCEND_TOOLKIT_HOME") or ""


def cann_homes(root: str | os.PathLike[str] = ASCEND_ROOT, home: str = "") -> list[Path]:
    """Where a toolkit may live, most authoritative first: the exported home, `cann` (8.5's link to the release in
    use), `ascend-toolkit/latest` (before 8.5), then every `cann-<release>`, newest first."""
    r = Path(root)
    out = [Path(home)] if home else []
    out += [r / "cann", r / "ascend-toolkit" / "latest"]
    out += sorted(r.glob("cann-*"), key=lambda p: _release_order(p.name[len("cann-") :]), reverse=True)
    return [p for p in dict.fromkeys(out) if p.is_dir()]


def _release_order(release: str) -> tuple[tuple[int, int, str], ...]:
    """A sort key for a release name: numbers compare as numbers, and a named part (RC1, alpha001) sorts before a
    number in the same place, so 8.0.RC3 < 8.0.0 (the GA that followed it) < 8.1.RC1 < 8.5.0."""
    parts = re.split(r"[.\-]", release)
    return tuple((0, int(p), "") if p.isdigit() else (-1, 0, p.lower()) for p in parts)


def cann_version(root: str | os.PathLike[str] = ASCEND_ROOT, home: str = "") -> str:
    """The CANN release (8.0.RC2, 8.1.RC1, 8.5.0) of the toolkit in use, or "unknown". Per home: the install info
    of this machine's architecture (then any), version.cfg after the colon, then toolkit/version.info."""
    arch = f"{platform.machine()}-linux"
    for h in cann_homes(root, home):
        infos = sorted(h.glob("*-linux/ascend_toolkit_install.info"), key=lambda p: p.parent.name != arch)
        for found in (
            *(release_from_install_info(p) for p in infos),
            release_from_version_cfg(h / "version.cfg"),
            release_from_toolkit_version_info(h / "toolkit" / "version.info"),
        ):
            if found:
                return found
    return UNKNOWN


def driver_version(root: str | os.PathLike[str] = ASCEND_ROOT) -> str:
    """`Version=24.1.rc2` from driver/version.info: the Ascend HDK release."""
    info = read_info(Path(root) / "driver" / "version.info")
    return _field(info, "version") or _field(info, "package_version") or UNKNOWN


def firmware_version(root: str | os.PathLike[str] = ASCEND_ROOT) -> str:
    """`Version=7.5.0.1.129` from firmware/version.info. Its `firmware_version=1.0` is the file format's number, the
    same on every release, so it is not read; `package_version` (the HDK release) only when Version is missing."""
    info = read_info(Path(root) / "firmware" / "version.info")
    return _field(info, "version") or _field(info, "package_version") or UNKNOWN


# A card's first row: its id, its name (with a letter: the process table's `| 0   0   | 139667 |` rows are not cards)
# and a health state (OK, Warning, Alarm, Critical as npu-smi prints them).
_SMI_ROW = re.compile(r"^\|\s*(\d+)\s+(\d*[A-Za-z][\w-]*)\s*\|\s*(OK|Warning|Alarm|Critical)\s*\|", re.I)


def npu_smi_chips(text: str) -> list[str]:
    """The Name column of `npu-smi info`, one entry per card: `| 0     910B3    | OK    | ...` -> "910B3"."""
    return [m.group(2) for line in text.splitlines() if (m := _SMI_ROW.match(line.strip()))]


def npu_smi_chip(text: str | None = None, timeout_s: float = 20.0) -> str:
    """The host's chip as torch_npu names it ("Ascend910B3"), read from `npu-smi info` without torch_npu; "unknown"
    without npu-smi (a CPU host, or a container that does not mount it) or when the cards are not all alike."""
    if text is None:
        smi = shutil.which("npu-smi") or next(
            (p for p in ("/usr/local/bin/npu-smi", "/usr/local/sbin/npu-smi") if os.access(p, os.X_OK)), None
        )
        if smi is None:
            return UNKNOWN
        try:
            p = subprocess.run([smi, "info"], capture_output=True, text=True, timeout=timeout_s)
        except (OSError, subprocess.SubprocessError):
            return UNKNOWN
        text = p.stdout if p.returncode == 0 else ""
    names = set(npu_smi_chips(text))
    return f"Ascend{names.pop()}" if len(names) == 1 else UNKNOWN


def mindie_version(near: str | os.PathLike[str] = "", root: str | os.PathLike[str] = ASCEND_ROOT) -> str:
    """MindIE's release from its install's version.info (`Ascend-mindie : MindIE 2.1.RC2.B080`, or the
    `mindie-service: ...` line), looked for above `near` (the daemon's path: .../mindie/latest/mindie-service/bin/
    mindieservice_daemon) and then at <root>/mindie/latest; "unknown" when none is readable."""
    places = [p / "version.info" for p in Path(near).parents] if near and os.path.isabs(near) else []
    places.append(Path(root) / "mindie" / "latest" / "version.info")
    for path in places:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}
        v = fields.get("ascend-mindie", "") or fields.get("mindie-service", "")
        if v:
            return v.removeprefix("MindIE").strip()
    return UNKNOWN


BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def init_group(device: torch.device, timeout_s: float) -> torch.device:
    """Join the torchrun worker group: the backend the device's collectives run on (torch_npu is already imported by
    prepare(), after the profile's HCCL/LCCL variables were set, so HCCL reads them), and this rank's own device."""
    import datetime

    import torch
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    elif device.type == "npu":
        torch.npu.set_device(local)  # type: ignore[attr-defined]  # added by torch_npu
        device = torch.device("npu", local)
    try:
        dist.init_process_group(BACKENDS[device.type], timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:
        raise DeviceError(f"{BACKENDS[device.type]} process group did not start: {type(e).__name__}: {e}") from None
    return device
