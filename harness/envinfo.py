"""The environment fingerprint: versions plus the variables that shape determinism, secrets redacted."""
from __future__ import annotations

import platform
import re
from typing import Mapping

_RELEVANT = re.compile(r"^(ATB_|HCCL_|LCCL_|OMP_|MKL_|NPU_|PYTORCH_NPU_|ASCEND_|CUBLAS_|VLLM_|CLOSE_MATMUL_K_SHIFT$|HARNESS_)")
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
REDACTED = "<redacted>"


def redact(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if _SECRET.search(k) else v) for k, v in sorted(environ.items())}


def relevant_env(environ: Mapping[str, str]) -> dict[str, str]:
    return redact({k: v for k, v in environ.items() if _RELEVANT.match(k)})


def host() -> dict[str, str]:
    return {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine()}
