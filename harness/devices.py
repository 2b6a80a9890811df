"""cpu / cuda / npu behind one face. torch_npu is imported here only, inside a worker,
after the profile's environment is in place (ATB, HCCL and LCCL read it at start-up)."""
from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

# Versions recorded with every run: a change in any of them can move bits without changing the device key.
LIBRARIES = ("transformers", "numpy", "safetensors", "gguf", "accelerate")


class DeviceError(RuntimeError):
    """The requested device cannot be used in this process."""


def prepare(kind: str, *, deterministic: bool) -> torch.device:
    if kind == "npu":
        try:
            import torch_npu  # noqa: F401  (registers torch.npu)
        except ImportError as e:
            raise DeviceError(f"--device npu needs torch_npu ({e}); install the 'npu' extra or use the CANN image's Python") from None
        if not torch.npu.is_available():
            raise DeviceError("--device npu: torch_npu is installed but no NPU is visible (check ASCEND_RT_VISIBLE_DEVICES and npu-smi)")
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
    info = {"device": device.type, "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_model": cpu_model(), "threads": str(torch.get_num_threads())}
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
    return info


def cpu_model(cpuinfo: str | None = None) -> str:
    """Vendor, family and model as the kernel reports them. MKL and oneDNN pick kernels, and so the order of a
    reduction, per microarchitecture (AMX, cache sizes), not only per ISA: two "AVX512" hosts can differ in bits."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return platform.processor() or platform.machine()
    first = cpuinfo.split("\n\n", 1)[0]
    f = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in first.splitlines())}
    if "vendor_id" in f:
        vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(f["vendor_id"], f["vendor_id"])
        return f"{vendor}-{f.get('cpu family', '?')}-{f.get('model', '?')}"
    if "CPU implementer" in f:  # Arm (Kunpeng, Graviton): implementer and part
        return f"arm-{f['CPU implementer']}-{f.get('CPU part', '?')}"
    return platform.processor() or platform.machine()


def _cann_version() -> str:
    home = os.environ.get("ASCEND_HOME_PATH") or os.environ.get("ASCEND_TOOLKIT_HOME") or "/usr/local/Ascend/ascend-toolkit/latest"
    for name in ("version.cfg", "version.info"):
        try:
            for line in open(os.path.join(home, name), encoding="utf-8"):
                if "version" in line.lower() and "=" in line:
                    return line.split("=", 1)[1].strip()
        except OSError:
            continue
    return "unknown"
