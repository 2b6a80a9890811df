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


# Collective-communication switches and what reads them: the process group's backend, or a library beside it.
COMM_FLAGS: dict[str, str] = {
    "HCCL_DETERMINISTIC": "hccl",
    "LCCL_DETERMINISTIC": "lccl (ATB's in-server collectives on Ascend)",
    "ATB_LLM_LCOC_ENABLE": "ATB models (MindIE's compute/communication overlap)",
    "NCCL_ALGO": "nccl",
}


def group_note(profile: str, tp: int, meta: dict) -> str:
    """What a worker group's ranks actually ran with (read back in each rank), flag by flag, and whether the
    backend they used reads it: on gloo every HCCL/LCCL switch is set and ignored, and the report must say so."""
    ranks = meta.get("ranks") or []
    if tp <= 1 or not ranks:
        return ""
    backend = str(ranks[0].get("backend", "?"))
    parts = []
    for flag, reader in COMM_FLAGS.items():
        values = sorted({str(r.get("env", {}).get(flag)) for r in ranks if flag in r.get("env", {})})
        if not values:
            continue
        same = values[0] if len(values) == 1 else f"{'/'.join(values)} (ranks differ)"
        where = f"read by {backend}" if reader == backend else f"read by {reader}; ignored by {backend}"
        parts.append(f"{flag}={same} ({where})")
    head = f"profile {profile} tp{tp}: {len(ranks)} ranks on {backend}"
    return f"{head} ran with " + "; ".join(parts) if parts else f"{head}, no collective-communication flags set"
