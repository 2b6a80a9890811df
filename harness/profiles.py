"""The catalogue of known determinism switches, so a report can say which flags a device ignores."""

from __future__ import annotations

from .suite import Profile

# name -> (device that reads it, what it does)
FLAGS: dict[str, tuple[str, str]] = {
    "ATB_MATMUL_SHUFFLE_K_ENABLE": ("npu", "0 fixes the ATB matmul K-reduction order (about 10% slower matmul)"),
    "HCCL_DETERMINISTIC": ("npu", "true|strict: deterministic HCCL reductions"),
    "LCCL_DETERMINISTIC": ("npu", "1: deterministic LCCL reductions"),
    "ATB_LLM_LCOC_ENABLE": ("npu", "0: no communication/computation overlap in ATB models"),
    "CLOSE_MATMUL_K_SHIFT": ("npu", "1: no K-shift in ATB matmul"),
    "CUBLAS_WORKSPACE_CONFIG": ("cuda", ":4096:8 lets cuBLAS run deterministically"),
    "NCCL_ALGO": ("cuda", "fixes the NCCL reduction algorithm"),
}


def inert_flags(profile: Profile, device: str) -> list[str]:
    """The profile's known flags that the chosen device never reads."""
    return [k for k, _ in profile.env if k in FLAGS and FLAGS[k][0] != device]


def note(profile: Profile, device: str) -> str:
    inert = inert_flags(profile, device)
    if not inert:
        return ""
    where = sorted({FLAGS[k][0] for k in inert})
    return f"{', '.join(inert)}: read only on {'/'.join(where)}, so on {device} they cannot change results"
