"""The environment fingerprint: versions plus the variables that shape determinism, secrets redacted."""

from __future__ import annotations

import platform
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

_RELEVANT = re.compile(
    r"^(ATB_|HCCL_|LCCL_|OMP_|MKL_|ONEDNN_|DNNL_|ATEN_CPU_CAPABILITY$|NPU_|PYTORCH_NPU_|ASCEND_|CUBLAS_|VLLM_"
    r"|CLOSE_MATMUL_K_SHIFT$|HARNESS_)"
)
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
REDACTED = "<redacted>"


def redact(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if _SECRET.search(k) else v) for k, v in sorted(environ.items())}


def relevant_env(environ: Mapping[str, str]) -> dict[str, str]:
    return redact({k: v for k, v in environ.items() if _RELEVANT.match(k)})


def changes(before: Mapping[str, object], after: Mapping[str, object], missing: str = "not recorded") -> list[str]:
    """What differs between two environment descriptions, one 'field before -> after' each (sorted): why bits moved
    under one baseline key, or what changed between two history rows."""
    return [
        f"{k} {before.get(k, missing) or missing} -> {after.get(k, missing) or missing}"
        for k in sorted(set(before) | set(after))
        if before.get(k) != after.get(k)
    ]


def host() -> dict[str, str]:
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine()}


def _first_cpu(cpuinfo: str | None) -> dict[str, str] | None:
    """The first processor's fields of /proc/cpuinfo (or of `cpuinfo`); None when it cannot be read."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                cpuinfo = fh.read()
        except OSError:
            return None
    first = cpuinfo.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in first.splitlines())}


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name ("AMD EPYC", "Intel(R) Xeon(R) ..."): recorded so a report can name the host."""
    f = _first_cpu(cpuinfo) or {}
    return f.get("model name") or platform.processor() or platform.machine()


def cpu_model(cpuinfo: str | None = None) -> str:
    """Vendor, family and model as the kernel reports them. MKL and oneDNN pick kernels, and so the order of a
    reduction, per microarchitecture (AMX, cache sizes), not only per ISA: two "AVX512" hosts can differ in bits."""
    f = _first_cpu(cpuinfo)
    if f is None:
        return platform.processor() or platform.machine()
    if "vendor_id" in f:
        vendor = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}.get(f["vendor_id"], f["vendor_id"])
        return f"{vendor}-{f.get('cpu family', '?')}-{f.get('model', '?')}"
    if "CPU implementer" in f:  # Arm (Kunpeng, Graviton): implementer and part
        return f"arm-{f['CPU implementer']}-{f.get('CPU part', '?')}"
    return platform.processor() or platform.machine()


def project_commit() -> str:
    """The harness checkout's commit, recorded with baselines, history rows and sign-offs."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""
