"""cpu / cuda / npu behind one face. torch_npu is imported here only, inside a worker,
after the profile's environment is in place (ATB, HCCL and LCCL read it at start-up)."""

from __future__ import annotations

import os
from importlib import metadata

import torch

from . import envinfo

# Versions recorded with every run: a change in any of them can move bits without changing the device key.
LIBRARIES = ("transformers", "numpy", "safetensors", "gguf", "accelerate")


class DeviceError(RuntimeError):
    """The requested device cannot be used in this process."""


def prepare(kind: str, *, deterministic: bool) -> torch.device:
    if kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers torch.npu)
        except ImportError as e:
            raise DeviceError(
                f"--device npu needs torch_npu ({e}); install the 'npu' extra or use the CANN image's Python"
            ) from None
        if not torch.npu.is_available():
            raise DeviceError(
                "--device npu: torch_npu is installed but no NPU is visible (check ASCEND_RT_VISIBLE_DEVICES and npu-smi)"
            )
    elif kind == "cuda":
        if deterministic:
            # cuBLAS refuses deterministic mode without a fixed workspace; must be set before CUDA starts.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if not torch.cuda.is_available():
            raise DeviceError("--device cuda: torch sees no CUDA device (is this a CPU build of torch?)")
    elif kind != "cpu":
        raise DeviceError(f"unknown device {kind!r}; expected cpu, cuda or npu")
    if deterministic:
        torch.use_deterministic_algorithms(True)
    return torch.device(kind)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize(device)


def describe(device: torch.device) -> dict[str, str]:
    """Chip and software versions: the parts of the environment that decide bit-level results."""
    info = {
        "device": device.type,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": envinfo.cpu_model(),
        "threads": str(torch.get_num_threads()),
    }
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

        info["chip"] = torch.npu.get_device_name(device)
        info["torch_npu"] = torch_npu.__version__
        info["cann"] = _cann_version()
        # Driver and firmware move kernels too; recorded so a sign-off can name them when bits move.
        info["driver"] = _version_file("/usr/local/Ascend/driver/version.info")
        info["firmware"] = _version_file("/usr/local/Ascend/firmware/version.info")
    return info


def _version_file(path: str) -> str:
    """`Version=24.1.rc2` from an Ascend version.info; "unknown" when absent."""
    try:
        for line in open(path, encoding="utf-8"):
            k, _, v = line.partition("=")
            if k.strip().lower() == "version":
                return v.strip()
    except OSError:
        pass
    return "unknown"


def _cann_version() -> str:
    home = (
        os.environ.get("ASCEND_HOME_PATH")
        or os.environ.get("ASCEND_TOOLKIT_HOME")
        or "/usr/local/Ascend/ascend-toolkit/latest"
    )
    for name in ("version.cfg", "version.info"):
        try:
            for line in open(os.path.join(home, name), encoding="utf-8"):
                if "version" in line.lower() and "=" in line:
                    return line.split("=", 1)[1].strip()
        except OSError:
            continue
    return "unknown"


BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def init_group(device: torch.device, timeout_s: float) -> torch.device:
    """Join the torchrun worker group: the backend the device's collectives run on (torch_npu is already imported by
    prepare(), after the profile's HCCL/LCCL variables were set, so HCCL reads them), and this rank's own device."""
    import datetime

    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    elif device.type == "npu":
        torch.npu.set_device(local)
        device = torch.device("npu", local)
    try:
        dist.init_process_group(BACKENDS[device.type], timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:
        raise DeviceError(f"{BACKENDS[device.type]} process group did not start: {type(e).__name__}: {e}") from None
    return device
