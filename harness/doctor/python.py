"""The doctor's checks of the engine's interpreter: its version, its pip, and whether what the run needs
imports under it (an import that fails on static TLS gets the LD_PRELOAD line that fixes it)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .core import Context, Finding, check

ENGINE_PYTHON = (3, 10)  # atb_llm and MindIE ship for Python 3.10 only
MINDIE_LOG = "MindIE's log (under $MINDIE_LOG_PATH, default ~/mindie/log/debug/)"
WORKER_LOG = "the worker log reports/<run>/logs/<profile>.log"
STATIC_TLS = "cannot allocate memory in static TLS block"


def _fmt_version(v: list[int] | tuple[int, ...]) -> str:
    return ".".join(map(str, v))


@check("python.version")
def python_version(ctx: Context) -> Iterator[Finding]:
    p = ctx.probe
    if "error" in p:
        yield Finding("python.version", "error", p["error"], "pass the engine's interpreter with --python PATH")
        return
    v = tuple(p["version"])
    where = f"Python {_fmt_version(v)} at {p['executable']}"
    if v[:2] < (3, 10):
        yield Finding("python.version", "error", f"{where}; the harness needs 3.10 or newer", "use Python 3.10+")
    elif "mindie" in ctx.engines and v[:2] != ENGINE_PYTHON:
        yield Finding(
            "python.version",
            "error",
            f"{where}; atb_llm and MindIE need Python {_fmt_version(ENGINE_PYTHON)}",
            f"run with the image's Python {_fmt_version(ENGINE_PYTHON)} (--python /usr/local/python3.10/bin/python3)",
        )
    elif ctx.device != "npu":
        yield Finding("python.version", "info", f"{where}; atb_llm/MindIE's 3.10: {ctx.not_applicable()}")
    else:
        yield Finding("python.version", "info", where)


def _pip_dir(text: str) -> str:
    """'pip 23.2 from /x/site-packages/pip (python 3.11)' -> '/x/site-packages/pip'."""
    m = re.search(r" from (.+?) \(python [\d.]+\)\s*$", text.strip())
    return m.group(1) if m else ""


@check("python.pip")
def python_pip(ctx: Context) -> Iterator[Finding]:
    """`pip install x` must install into the interpreter that runs the engine, or x stays 'missing'."""
    import shutil

    p = ctx.probe
    if "error" in p:
        return
    path = ctx.environ.get("PATH", os.defpath)
    pip = shutil.which("pip", path=path)
    if not p.get("pip"):
        yield Finding(
            "python.pip", "warning", f"{p['executable']} has no pip", f"{p['executable']} -m ensurepip --upgrade"
        )
        return
    if pip is None:
        yield Finding("python.pip", "info", f"no `pip` on PATH; use {p['executable']} -m pip")
        return
    try:
        out = subprocess.run([pip, "--version"], capture_output=True, text=True, timeout=60, env=dict(ctx.environ))
    except (OSError, subprocess.SubprocessError) as e:
        yield Finding("python.pip", "warning", f"`{pip} --version` failed: {e}", f"use {p['executable']} -m pip")
        return
    theirs = _pip_dir(out.stdout)
    if theirs and os.path.realpath(theirs) == os.path.realpath(p["pip"]):
        yield Finding("python.pip", "info", f"`pip` on PATH ({pip}) installs into {p['prefix']}")
        return
    yield Finding(
        "python.pip",
        "warning",
        f"`pip` on PATH ({pip}) is {out.stdout.strip() or 'unreadable'}, not the engine's {p['executable']}: "
        "what it installs, the engine will not see",
        f"install with `{p['executable']} -m pip install ...`, or put {Path(p['executable']).parent} first on PATH",
    )


# ---- imports ---------------------------------------------------------------------------------------------


def needed_modules(ctx: Context) -> dict[str, str]:
    """module -> why the run needs it."""
    out = {"torch": "every in-process run", "transformers": "the hf adapter and tokenizers"}
    if ctx.device == "npu":
        out["torch_npu"] = "--device npu"
    if "mindie" in ctx.engines:
        out |= {"atb_llm": "MindIE's model runner", "mindie_llm": "MindIE Service"}
    return out


def libgomp(torch_dir: str) -> list[str]:
    """The libgomp this torch installation ships (pip wheels: torch/lib or torch.libs beside it)."""
    if not torch_dir:
        return []
    d = Path(torch_dir)
    found = sorted(d.glob("lib/libgomp*.so*")) + sorted(d.parent.glob("torch.libs/libgomp*.so*"))
    return [str(p) for p in found]


def static_tls_fix(stderr: str, torch_libgomp: list[str]) -> str:
    """The LD_PRELOAD line for an import that failed with the static-TLS message; "" for any other failure.
    Preloading the library that needs static TLS lets the loader place it before the TLS space fills up."""
    if STATIC_TLS not in stderr:
        return ""
    named = re.findall(r"(/\S+?\.so[\w.]*): " + re.escape(STATIC_TLS), stderr)
    libs = torch_libgomp or [n for n in named if "gomp" in n] or named
    if not libs:
        return "export LD_PRELOAD=<the library named in the message>:$LD_PRELOAD"
    return f"export LD_PRELOAD={libs[0]}" + "${LD_PRELOAD:+:$LD_PRELOAD}"


@check("python.imports")
def imports(ctx: Context) -> Iterator[Finding]:
    """The "LLMPythonModel initializes fail" case: an engine dependency that does not import."""
    log = MINDIE_LOG if "mindie" in ctx.engines else WORKER_LOG
    for module, why in needed_modules(ctx).items():
        ok, err = ctx.try_import(module)
        if ok:
            version = ctx.probe.get("versions", {}).get(module, "")
            yield Finding("python.imports", "info", f"{module} {version} imports ({why})".replace("  ", " "))
        elif STATIC_TLS in err:
            continue  # python.static-tls says what this is and gives the line to fix it
        else:
            last = (err.splitlines() or ["no output"])[-1]
            yield Finding(
                "python.imports",
                "error",
                f"`import {module}` fails under {ctx.python} ({why}): {last}",
                f"install or repair {module} for that interpreter ({ctx.python} -m pip install {module.replace('_', '-')}); "
                f"the engine reports this as 'LLMPythonModel initializes fail': read {log}",
            )
    for module in ("torch_npu", "atb_llm", "mindie_llm"):
        if module not in needed_modules(ctx):
            yield Finding("python.imports", "info", f"{module}: {ctx.not_applicable()}")


@check("python.static-tls")
def static_tls(ctx: Context) -> Iterator[Finding]:
    torch_dir = ctx.probe.get("torch_dir", "")
    for module in needed_modules(ctx):
        ok, err = ctx.try_import(module)
        if ok or STATIC_TLS not in err:
            continue
        line = next((ln for ln in err.splitlines() if STATIC_TLS in ln), err)
        yield Finding(
            "python.static-tls",
            "error",
            f"`import {module}`: {line.strip()}",
            static_tls_fix(err, libgomp(torch_dir)) + f" (then rerun; put it in the environment of {ctx.python})",
        )
        return
    yield Finding("python.static-tls", "info", f"no '{STATIC_TLS}' on import of {', '.join(needed_modules(ctx))}")
