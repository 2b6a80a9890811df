"""CPU instruction-set pins, verified: what each library was asked for, what the worker actually got, and the key
part a pin earns when every library honoured it.

ATen, oneDNN and MKL each pick their kernels, and so the order of their reductions, by the CPU's instruction set
and vendor: the same float32 model gives other bits on an Intel and an AMD host. Three variables cap that choice:
ATEN_CPU_CAPABILITY (ATen's vectorised kernels), ONEDNN_MAX_CPU_ISA (oneDNN's) and MKL_CBWR (MKL's code path). A
library silently ignores a value it does not accept or a host cannot run (MKL takes only AUTO and COMPATIBLE on a
non-Intel CPU; ATen takes only lower-case names), so the worker reads back what each library runs with and the
baseline key becomes the pin only when all three match what was asked. Readers run in the worker (torch imported);
`verify` and `key` are pure.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass

ATEN, ONEDNN, MKL = "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"
PINS = (ATEN, ONEDNN, MKL)
UNREADABLE = "unreadable"

# mkl_cbwr.h: what mkl_cbwr_get(MKL_CBWR_BRANCH) returns. 1 is "no CBWR" (MKL picks by CPU, the default).
CBWR_BRANCHES = {
    1: "off",
    2: "auto",
    3: "compatible",
    4: "sse2",
    6: "ssse3",
    7: "sse4_1",
    8: "sse4_2",
    9: "avx",
    10: "avx2",
    11: "avx512_mic",
    12: "avx512",
    13: "avx512_mic_e1",
    14: "avx512_e1",
}
# What oneDNN's verbose header (`info,cpu,isa:...`) says under each ONEDNN_MAX_CPU_ISA value, on a host that has
# it (oneDNN 3.12, checked on an AMD EPYC for every value up to AVX512_CORE_BF16; the AMX and FP16 lines are from
# oneDNN's cpu_isa_traits). A host without the set reports a lower one: the cap is then not honoured.
ONEDNN_ISAS = {
    "SSE41": "Intel SSE4.1",
    "AVX": "Intel AVX",
    "AVX2": "Intel AVX2",
    "AVX2_VNNI": "Intel AVX2 with Intel DL Boost",
    "AVX2_VNNI_2": "Intel AVX2 with Intel DL Boost, float16 and bfloat16 support",
    "AVX512_CORE": "Intel AVX-512 with AVX512BW, AVX512VL, and AVX512DQ extensions",
    "AVX512_CORE_VNNI": "Intel AVX-512 with Intel DL Boost",
    "AVX512_CORE_BF16": "Intel AVX-512 with Intel DL Boost and bfloat16 support",
    "AVX512_CORE_FP16": "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support",
    "AVX512_CORE_AMX": "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 "
    "and 8-bit integer support",
    "AVX512_CORE_AMX_FP16": "Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with "
    "bfloat16, float16 and 8-bit integer support",
}


@dataclass(frozen=True)
class Pin:
    key: str  # "pin-avx2-cbwr-compatible" when all three are set and honoured, else ""
    note: str  # one line when a pin was set and is not a verified pin (not honoured, unreadable, or partial)


def requested(environ: Mapping[str, str]) -> dict[str, str]:
    """The pins set in an environment (an empty value is unset, as the libraries read it)."""
    return {k: environ[k] for k in PINS if environ.get(k)}


def honoured(name: str, value: str, got: Mapping[str, str]) -> str:
    """Empty when the library runs with what `name=value` asks, else what it runs with instead (one phrase)."""
    if name == ATEN:
        cap = got.get("cpu_capability", UNREADABLE)
        return "" if cap.lower() == value else f"ATen runs {cap} (it takes default, avx2 or avx512, lower case)"
    if name == ONEDNN:
        isa = got.get("onednn_isa", UNREADABLE)
        want = ONEDNN_ISAS.get(value.upper())
        if isa == UNREADABLE:
            return "oneDNN's ISA could not be read (ONEDNN_VERBOSE set, or no oneDNN in this torch)"
        if want is None:
            return f"oneDNN runs {isa!r}; the harness does not know what {value!r} should read back as"
        return "" if isa == want else f"oneDNN runs {isa!r}"
    branch = got.get("mkl_cbwr", UNREADABLE)
    want_branch = value.split(",")[0].strip().lower()  # COMPATIBLE,STRICT: the branch, and a flag not read back
    if branch == UNREADABLE:
        return "MKL's CBWR branch could not be read (no mkl_cbwr_get in this torch)"
    return "" if branch == want_branch else f"MKL runs branch {branch} (non-Intel CPUs take only AUTO and COMPATIBLE)"


def key(pins: Mapping[str, str]) -> str:
    """The hardware part a verified pin gives: pin-avx2-cbwr-compatible (ATen and oneDNN at the same set named once)."""
    aten, isa = pins[ATEN].lower(), pins[ONEDNN].lower()
    parts = ["pin", aten, *([isa] if isa != aten else []), "cbwr", pins[MKL].lower()]
    return re.sub(r"[^a-z0-9.]+", "-", "-".join(parts)).strip("-")


def verify(environ: Mapping[str, str], got: Mapping[str, str]) -> Pin:
    """A pin is all three variables, each read back as asked; anything less keeps the CPU model's key, with a line."""
    asked = requested(environ)
    if not asked:
        return Pin("", "")
    missed = [f"{k}={v}: {why}" for k, v in asked.items() if (why := honoured(k, v, got))]
    unset = [k for k in PINS if k not in asked]
    if missed:
        return Pin(
            "",
            "CPU pin not honoured on this host, so its baselines stay under the CPU model's key: " + "; ".join(missed),
        )
    if unset:
        return Pin(
            "",
            f"{', '.join(asked)} set without {', '.join(unset)}: not a full CPU pin (the unpinned library still picks "
            "kernels by CPU), so its baselines stay under the CPU model's key",
        )
    return Pin(key(asked), "")


def library_versions(config: str) -> dict[str, str]:
    """MKL's and oneDNN's versions from torch.__config__.show(): a change in either can move bits under one key."""
    out = {}
    if m := re.search(r"Math Kernel Library Version ([\w.]+?)(?:-|\s)", config):
        out["mkl"] = m.group(1)
    if m := re.search(r"(?:MKL-DNN|oneDNN) v([\w.]+)", config):
        out["onednn"] = m.group(1)
    return out


def onednn_isa_line(verbose: str) -> str:
    """The ISA in oneDNN's verbose header: `onednn_verbose,v1,info,cpu,isa:Intel AVX2` -> Intel AVX2."""
    m = re.search(r"^onednn_verbose,(?:v\d+,)?info,cpu,isa:(.*)$", verbose, re.M)
    return m.group(1).strip() if m else UNREADABLE


def _torch_cpu() -> ctypes.CDLL | None:
    import torch

    try:
        return ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
    except OSError:
        return None


def mkl_cbwr() -> str:
    """The branch MKL runs (mkl_cbwr_get, or the service symbol torch's static MKL exports)."""
    lib = _torch_cpu()
    fn = next((getattr(lib, n) for n in ("mkl_cbwr_get", "mkl_serv_cbwr_get") if lib and hasattr(lib, n)), None)
    if fn is None:
        return UNREADABLE
    fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_int]
    code = int(fn(1))  # MKL_CBWR_BRANCH
    return CBWR_BRANCHES.get(code, f"branch {code}")


def onednn_isa() -> str:
    """The ISA oneDNN dispatches to, from its verbose header. oneDNN prints the header once per process, at its first
    primitive, so this must run before the model does (devices.prepare); stdout is caught at the descriptor."""
    import torch

    mkldnn = torch.backends.mkldnn
    if os.environ.get("ONEDNN_VERBOSE") or os.environ.get("DNNL_VERBOSE") or not mkldnn.is_available():  # type: ignore[no-untyped-call]
        return UNREADABLE  # the user's own verbose output owns the header
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            with mkldnn.verbose(mkldnn.VERBOSE_ON):  # type: ignore[no-untyped-call]  # torch leaves it untyped
                torch.zeros(1, 1).to_mkldnn()  # a reorder: the cheapest primitive there is
        except RuntimeError:
            pass
        finally:
            ctypes.CDLL(None).fflush(None)  # oneDNN writes through C stdio: flush it into the file
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        return onednn_isa_line(tmp.read().decode("utf-8", "replace"))


@functools.cache
def readback() -> dict[str, str]:
    """What the libraries of this worker run with; read once, before the model (see onednn_isa)."""
    import torch

    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": onednn_isa(),
        "mkl_cbwr": mkl_cbwr(),
        **library_versions(torch.__config__.show()),
    }


def facts(environ: Mapping[str, str]) -> dict[str, str]:
    """The worker's pin facts for its device info: the readback, the verified pin (or "") and its note."""
    got = readback()
    pin = verify(environ, got)
    return {**got, "pin": pin.key, **({"pin_note": pin.note} if pin.note else {})}
