"""Where a result was made: the device key of a baseline (`baselines/<device-key>/...`), in a hardware and a
software part, and how two keys relate (same key, other software, other hardware). Pure: device facts in, a key out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .status import Tier


def _mm(version: str) -> str:
    """Major.minor of a version string: '2.13.0+cpu' -> '2.13', '8.0.RC2' -> '8.0'."""
    parts = re.split(r"[.+]", version)
    return ".".join(parts[:2]) if version else "unknown"


def slug(s: str) -> str:
    """A safe directory-name part: ASCII letters, digits, '.' and '-', never '.' or '..', at most 64 characters."""
    return re.sub(r"[^a-z0-9.]+", "-", s.lower()).strip("-").strip(".")[:64] or "unknown"


TIERS: tuple[Tier, ...] = ("same key", "other software", "other hardware")


@dataclass(frozen=True)
class DeviceKey:
    """Where a result was made, in two parts. Bits compare under the whole key, tokens across software (a torch,
    CANN or transformers upgrade), `close` across hardware of one device type, and timings on one hardware only."""

    device: str  # cpu | cuda | npu | endpoint
    hardware: str  # device type, chip or CPU ISA and model, thread or device count
    software: str  # major versions of what computes: torch, torch_npu, CANN, CUDA, transformers, the server

    def __str__(self) -> str:
        return f"{self.hardware}-{self.software}" if self.software else self.hardware

    def tier(self, other: DeviceKey) -> Tier | None:
        """How `other` (a baseline's key) relates to this run's; None for another device type."""
        if other.device != self.device:
            return None
        if other.hardware != self.hardware:
            return "other hardware"
        return "same key" if other.software == self.software else "other software"


def device_key(info: dict[str, Any], *, pinned: bool = True) -> DeviceKey:
    """On CPU the ISA, the CPU model and the thread count decide how reductions split, unless the worker ran under a
    verified instruction-set pin (cpupin: ATen, oneDNN and MKL each read back as asked): then the pin and the thread
    count are the hardware, the same on every x86 host that honours it (`pinned=False`: the machine's own key, which
    timings need). On a server, what serves it and on which host (and chip, on an NPU host), with the server's
    version and what it runs on (vllm_ascend, CANN) where the harness could read them (serving.info.served_device).
    A served CPU run of `transformers serve` keeps the key it had before those were read
    (endpoint-cpu-<host>-transformers), so the committed baselines stay found."""
    dev = info.get("device", "cpu")
    if dev == "endpoint":
        hw = ["endpoint", info.get("target", ""), info.get("host", ""), info.get("chip", "")]
        server = info.get("server", "external")
        sw = [f"{server}{_mm(info['server_version'])}" if info.get("server_version") else server]
        if info.get("vllm_ascend"):
            sw.append(f"vllmascend{_mm(info['vllm_ascend'])}")
        if info.get("cann"):
            sw.append(f"cann{_mm(info['cann'])}")
    else:
        hw = [dev]
        if dev == "cpu" and pinned and info.get("pin"):
            hw += [info["pin"], f"t{info.get('threads', '?')}"]
        elif dev == "cpu":
            hw += [info.get("cpu_capability", "unknown"), info.get("cpu_model", ""), f"t{info.get('threads', '?')}"]
        else:
            hw.append(info.get("chip", "unknown"))
        sw = [f"torch{_mm(info.get('torch', ''))}"]
        if dev == "cuda":
            sw.append(f"cuda{_mm(info.get('cuda', ''))}")
        if dev == "npu":
            sw += [f"torchnpu{_mm(info.get('torch_npu', ''))}", f"cann{_mm(info.get('cann', ''))}"]
        if info.get("transformers"):
            sw.append(f"tf{_mm(info['transformers'])}")
        if info.get("vllm"):
            sw.append(f"vllm{_mm(info['vllm'])}")
        if info.get("vllm_ascend"):
            sw.append(f"vllmascend{_mm(info['vllm_ascend'])}")
    return DeviceKey(dev, "-".join(slug(p) for p in hw if p), "-".join(slug(p) for p in sw if p))


def same_machine(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two device descriptions of one machine type: under a pin the key no longer says, and timings need it."""
    return device_key(a, pinned=False).hardware == device_key(b, pinned=False).hardware
