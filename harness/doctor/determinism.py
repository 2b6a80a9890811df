"""The doctor's check of the determinism switches, in the environment and in each profile: misspelt names,
undocumented values (HCCL_DETERMINISTIC's per CANN release), and a bitwise expectation without the switches that
make it possible; and the transformers release the in-process adapters' calls need."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from .. import devices, profiles
from .core import Context, Finding, check

# The documented determinism switches: the values each may take, and the ones that make it deterministic.
DOCUMENTED = {
    "ATB_MATMUL_SHUFFLE_K_ENABLE": (("0", "1"), ("0",)),
    "HCCL_DETERMINISTIC": (("true", "false", "strict"), ("true", "strict")),
    "LCCL_DETERMINISTIC": (("0", "1"), ("1",)),
    "ATB_LLM_LCOC_ENABLE": (("0", "1"), ("0",)),
    "CLOSE_MATMUL_K_SHIFT": (("0", "1"), ("1",)),
}
REQUIRED_FOR_BITWISE = (
    "ATB_MATMUL_SHUFFLE_K_ENABLE",
    "HCCL_DETERMINISTIC",
    "LCCL_DETERMINISTIC",
    "ATB_LLM_LCOC_ENABLE",
)

_FLAG_LIKE = re.compile(r"^(ATB_|HCCL_|LCCL_|CLOSE_MATMUL)")

# HCCL_DETERMINISTIC's values by CANN release, as the environment-variable reference of each release lists them:
# - CANN 8.0.RC3 and 8.0.0: true | false only ("HCCL_DETERMINISTIC支持的取值如下: true ... false"):
#   hiascend.com/document/detail/zh/CANNCommunityEdition/80RC3alpha003/apiref/envref/envref_07_0095.html,
#   hiascend.com/document/detail/zh/canncommercial/800/apiref/envvar/envref_07_0099.html
# - CANN 8.2.RC1 onwards: true | false | strict (strict: "保序", the reduction order fixed bit for bit; AllReduce and
#   ReduceScatter only; Atlas A2 in symmetric layouts; INF/NaN mode only; on Atlas A3 it acts as true, and its static
#   graph mode refuses it): hiascend.com/document/detail/zh/CANNCommunityEdition/82RC1alpha003/maintenref/envvar/
#   envref_07_0099.html, and the same page for 8.3.RC1 and canncommercial/850 (8.5.0).
# - CANN 8.1: no page of its own was found, so strict there is a warning (not documented where checked), not an error.
STRICT_FROM = (8, 2)
STRICT_UNCHECKED = (8, 1)


def _major_minor(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def hccl_findings(where: str, env: dict[str, str], cann: str) -> list[Finding]:
    """HCCL_DETERMINISTIC=strict against the CANN release that will read it ("" when none is read: not an NPU)."""
    if env.get("HCCL_DETERMINISTIC", "").lower() != "strict" or not cann:
        return []
    mm = _major_minor(cann)
    fix = "use HCCL_DETERMINISTIC=true on this CANN, or move to CANN 8.2.RC1 or later for strict"
    if mm is None:
        return [
            Finding(
                "determinism.flags",
                "warning",
                f"{where}: HCCL_DETERMINISTIC=strict is documented from CANN 8.2.RC1; this host's CANN release is "
                f"{cann} (no version.cfg or ascend_toolkit_install.info read)",
                "source the toolkit's set_env.sh (ASCEND_HOME_PATH) so the doctor can read the release",
            )
        ]
    if mm < STRICT_UNCHECKED:
        return [
            Finding(
                "determinism.flags",
                "error",
                f"{where}: HCCL_DETERMINISTIC=strict on CANN {cann}, whose documentation allows true|false only: "
                "HCCL does not take it",
                fix,
            )
        ]
    if mm < STRICT_FROM:
        return [
            Finding(
                "determinism.flags",
                "warning",
                f"{where}: HCCL_DETERMINISTIC=strict on CANN {cann}: documented from 8.2.RC1 (8.0 allows true|false "
                "only); not confirmed for this release",
                fix,
            )
        ]
    return []


def flag_findings(where: str, env: dict[str, str], bitwise: bool, cann: str = "") -> list[Finding]:
    """Typos, undocumented values (HCCL_DETERMINISTIC's for the CANN release `cann`, when given), and a bitwise
    expectation without the switches that make it possible."""
    out = hccl_findings(where, env, cann)
    for k, v in env.items():
        if k in DOCUMENTED:
            allowed, _ = DOCUMENTED[k]
            if v not in allowed:
                out.append(
                    Finding(
                        "determinism.flags",
                        "error",
                        f"{where}: {k}={v!r} is not a documented value ({'|'.join(allowed)}): the library ignores it",
                        f"set {k} to one of {', '.join(allowed)}",
                    )
                )
        elif _FLAG_LIKE.match(k) and k not in profiles.FLAGS:
            near = difflib.get_close_matches(k, list(DOCUMENTED), n=1, cutoff=0.8)
            if near:
                out.append(
                    Finding(
                        "determinism.flags",
                        "error",
                        f"{where}: {k} is not a variable any library reads; did you mean {near[0]}?",
                        f"rename {k} to {near[0]}",
                    )
                )
    if bitwise:
        off = [k for k in REQUIRED_FOR_BITWISE if env.get(k) not in DOCUMENTED[k][1]]
        if off:
            want = ", ".join(f"{k}={'|'.join(DOCUMENTED[k][1])}" for k in off)
            out.append(
                Finding(
                    "determinism.flags",
                    "warning",
                    f"{where} expects bitwise on npu without {want}: matmul K order and collective reductions may "
                    "vary, so the expectation is likely to fail",
                    f"add {want} to the profile's env, or expect tokens",
                )
            )
    return out


def cann_release(ctx: Context) -> str:
    """The CANN release HCCL will be from, on an NPU (ASCEND_HOME_PATH of the checked environment first, then the
    default install root); "" elsewhere, where no HCCL reads the flags."""
    if ctx.device != "npu":
        return ""
    return devices.cann_version(home=devices.cann_home_env(dict(ctx.environ)))


@check("determinism.flags")
def determinism_flags(ctx: Context) -> Iterator[Finding]:
    cann = cann_release(ctx)
    found = flag_findings("the environment", dict(ctx.environ), False, cann)
    n = 0
    for s in ctx.suites:
        for p in getattr(s.suite, "profiles", ()) or ():
            n += 1
            bitwise = any(level == "bitwise" for _, level in dict(p.expect).get("npu", ()))
            found += flag_findings(f"{s.path} profile {p.name}", dict(p.env), bitwise, cann)
    yield from found
    if not found:
        inert = ctx.device != "npu"
        yield Finding(
            "determinism.flags",
            "info",
            f"{n} profile(s): switches are the documented ones with documented values"
            + (f"; the Ascend switches themselves are {ctx.not_applicable()}" if inert else ""),
        )


# The transformers release each call of the in-process adapters (harness/adapters/hf.py, harness/models.py) needs.
# pyproject pins transformers>=4.56, but a `--no-venv` run uses the image's own, which nothing else checks:
# - from_pretrained(dtype=...): the keyword replaced torch_dtype in 4.56.0 (huggingface/transformers#39782); before
#   it the keyword is not the model's dtype, so the suite's float32/bfloat16/float16 is not what loads.
# - forward(logits_to_keep=1): renamed from num_logits_to_keep in 4.49.0 (huggingface/transformers#35757); before it
#   the name is not the slice, and the last position's logits come out of a full-sequence lm_head matmul, whose bits
#   depend on the sequence length (the batch variance the harness measures).
TRANSFORMERS_FLOOR = {
    "from_pretrained(dtype=...)": (4, 56),
    "forward(logits_to_keep=...)": (4, 49),
}


@check("determinism.transformers")
def transformers_floor(ctx: Context) -> Iterator[Finding]:
    installed = ctx.probe.get("versions", {}).get("transformers", "")
    mm = _major_minor(installed)
    if mm is None:
        yield Finding(
            "determinism.transformers",
            "info",
            f"transformers {installed or 'not installed'} under {ctx.python}: python.imports says whether it imports",
        )
        return
    short = [call for call, floor in TRANSFORMERS_FLOOR.items() if mm < floor]
    if not short:
        yield Finding(
            "determinism.transformers",
            "info",
            f"transformers {installed} has what the adapters call: "
            + ", ".join(f"{c} (>= {'.'.join(map(str, f))})" for c, f in TRANSFORMERS_FLOOR.items()),
        )
        return
    need = ".".join(map(str, max(TRANSFORMERS_FLOOR.values())))
    yield Finding(
        "determinism.transformers",
        "error",
        f"transformers {installed} under {ctx.python} predates {', '.join(short)}: the hf adapter's load or forward "
        "does not do what the suite says (dtype, last-position logits)",
        f"{ctx.python} -m pip install 'transformers>={need}' (pip keeps the image's torch), or run in the harness's "
        "venv instead of --no-venv",
    )
