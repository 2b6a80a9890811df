"""The doctor's check of the determinism switches, in the environment and in each profile: misspelt names,
undocumented values, and a bitwise expectation without the switches that make it possible."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from .. import profiles
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


def flag_findings(where: str, env: dict[str, str], bitwise: bool) -> list[Finding]:
    """Typos, undocumented values, and a bitwise expectation without the switches that make it possible."""
    out = []
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


@check("determinism.flags")
def determinism_flags(ctx: Context) -> Iterator[Finding]:
    found = flag_findings("the environment", dict(ctx.environ), False)
    n = 0
    for s in ctx.suites:
        for p in getattr(s.suite, "profiles", ()) or ():
            n += 1
            bitwise = any(level == "bitwise" for _, level in dict(p.expect).get("npu", ()))
            found += flag_findings(f"{s.path} profile {p.name}", dict(p.env), bitwise)
    yield from found
    if not found:
        inert = ctx.device != "npu"
        yield Finding(
            "determinism.flags",
            "info",
            f"{n} profile(s): switches are the documented ones with documented values"
            + (f"; the Ascend switches themselves are {ctx.not_applicable()}" if inert else ""),
        )
