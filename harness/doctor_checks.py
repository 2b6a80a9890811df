"""The doctor's checks: the failure modes that stop a model before a single prompt runs (most from the MindIE FAQ),
each found by a small function over the doctor's Context. Registration order is the report's order."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
import shlex
import ssl
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from . import profiles, served
from .baselines import Store
from .doctor import Context, Finding, check
from .loadrun import weight_files
from .models import sha256

ENGINE_PYTHON = (3, 10)  # atb_llm and MindIE ship for Python 3.10 only
MINDIE_LOG = "MindIE's log (under $MINDIE_LOG_PATH, default ~/mindie/log/debug/)"
WORKER_LOG = "the worker log reports/<run>/logs/<profile>.log"
STATIC_TLS = "cannot allocate memory in static TLS block"
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
RECOMMENDED_MODE = 0o640
MEMORY_FRACTION = 0.8  # NPU_MEMORY_FRACTION's default: the share of device memory MindIE takes
# What OpenAI-compatible servers take inline (image_url / input_audio / video_url).
ACCEPTED_MEDIA = {
    "image": ("png", "jpeg", "webp", "gif", "bmp"),
    "audio": ("wav", "mp3", "x-wav", "mpeg"),
    "video": ("mp4",),
}


def _fmt_version(v: list[int] | tuple[int, ...]) -> str:
    return ".".join(map(str, v))


# ---- the suites -------------------------------------------------------------------------------------------


@check("suite.load")
def suite_load(ctx: Context) -> Iterator[Finding]:
    for s in ctx.suites:
        if s.error:
            yield Finding("suite.load", "error", s.error, "fix the suite file as the message says")
        else:
            yield Finding("suite.load", "info", f"{s.path} loads ({s.kind})")


# ---- the interpreter -------------------------------------------------------------------------------------


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


# ---- the model folder ------------------------------------------------------------------------------------


def _config(model: Path) -> dict | None:
    try:
        c = json.loads((model / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return c if isinstance(c, dict) else None


@check("model.config")
def model_config(ctx: Context) -> Iterator[Finding]:
    for e in ctx.model_errors:
        yield Finding("model.config", "error", f"model {e}", "fix --model or the suite's model.ref")
    for m in ctx.model_dirs:
        cfg = m / "config.json"
        if not cfg.is_file():
            yield Finding(
                "model.config",
                "error",
                f"{m} has no config.json",
                "copy config.json from the original checkpoint into the folder (every engine reads it first)",
            )
        elif not os.access(cfg, os.R_OK):
            yield Finding("model.config", "error", f"{cfg} is not readable", f"chmod 640 {shlex.quote(str(cfg))}")
        elif _config(m) is None:
            yield Finding(
                "model.config", "error", f"{cfg} is not a JSON object", "restore config.json from the checkpoint"
            )
        else:
            yield Finding("model.config", "info", f"{cfg} readable")


@check("model.permissions")
def model_permissions(ctx: Context) -> Iterator[Finding]:
    """MindIE checks the mode of config and weights: 640 (owner rw, group r). Wider lets others replace the
    weights; narrower keeps a service user in the group out."""
    strict = ctx.device == "npu" or "mindie" in ctx.engines
    for m in ctx.model_dirs:
        files = [f for f in [m / "config.json", *weight_files(m)] if f.is_file()]
        wide = [f for f in files if f.stat().st_mode & 0o777 & ~RECOMMENDED_MODE]
        narrow = [f for f in files if f not in wide and f.stat().st_mode & 0o777 != RECOMMENDED_MODE]
        names = lambda fs: ", ".join(f"{f.name} ({f.stat().st_mode & 0o777:o})" for f in fs[:4])  # noqa: E731
        fix = f"chmod 640 {shlex.quote(str(m))}/config.json {shlex.quote(str(m))}/*.safetensors; chmod 750 {shlex.quote(str(m))}"
        if wide and any(f.stat().st_mode & 0o022 for f in wide):
            yield Finding(
                "model.permissions",
                "error" if strict else "warning",
                f"{names(wide)} in {m}: writable by group or others (MindIE refuses such weights)",
                fix,
            )
        elif wide:
            yield Finding(
                "model.permissions",
                "warning" if strict else "info",
                f"{names(wide)} in {m}: wider than 640, which MindIE recommends",
                fix,
            )
        if narrow:
            yield Finding(
                "model.permissions",
                "warning" if strict else "info",
                f"{names(narrow)} in {m}: narrower than 640: a service user in the group (e.g. HwHiAiUser) cannot read",
                fix,
            )
        if files and not wide and not narrow:
            yield Finding("model.permissions", "info", f"config and weights in {m} are 640")


_TOKENIZER = (
    "import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]); print(len(t))"
)


@check("model.tokenizer")
def model_tokenizer(ctx: Context) -> Iterator[Finding]:
    for m in ctx.model_dirs:
        if not (m / "config.json").is_file():
            continue  # model.config said it; a tokenizer without its model is not the question
        p = ctx.run_python(_TOKENIZER, str(m))
        if p.returncode != 0:
            last = (p.stderr.strip().splitlines() or ["no output"])[-1]
            yield Finding(
                "model.tokenizer",
                "error",
                f"the tokenizer in {m} does not load: {last}",
                "restore tokenizer.json / tokenizer_config.json from the original checkpoint (a truncated or "
                "edited tokenizer.json is the usual cause)",
            )
            continue
        tj = m / "tokenizer.json"
        if not tj.is_file():
            yield Finding("model.tokenizer", "info", f"tokenizer in {m} loads; no tokenizer.json to hash")
            continue
        mine = sha256(tj)
        recorded = Store(ctx.baselines).model_file_hashes("tokenizer.json")
        other = {p: h for p, h in recorded.items() if h != mine}
        if other:
            p, h = next(iter(other.items()))
            yield Finding(
                "model.tokenizer",
                "error",
                f"{tj} sha256 {mine[:16]} differs from {h[:16]} recorded with {p}: the tokenizer is not the "
                "baselines' (corrupt, or another version)",
                "restore tokenizer.json from the checkpoint the baselines were made with, or, if the change is "
                "intended, re-record the baselines (--update-baselines --reason ...)",
            )
        elif recorded:
            yield Finding(
                "model.tokenizer",
                "info",
                f"tokenizer loads; tokenizer.json sha256 {mine[:16]} matches {len(recorded)} baseline(s)",
            )
        else:
            yield Finding(
                "model.tokenizer",
                "info",
                f"tokenizer loads; tokenizer.json sha256 {mine[:16]} is not recorded in {ctx.baselines} yet: the next "
                "--update-baselines records it (environment.model_files)",
            )


def _mm(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


@check("model.transformers-version")
def transformers_version(ctx: Context) -> Iterator[Finding]:
    installed = ctx.probe.get("versions", {}).get("transformers", "")
    for m in ctx.model_dirs:
        cfg = _config(m)
        if cfg is None:
            continue
        wrote = str(cfg.get("transformers_version", ""))
        if not wrote:
            yield Finding("model.transformers-version", "info", f"{m}/config.json records no transformers_version")
        elif not installed:
            yield Finding(
                "model.transformers-version", "info", f"config written by transformers {wrote}; none installed"
            )
        elif _mm(wrote) > _mm(installed):
            yield Finding(
                "model.transformers-version",
                "warning",
                f"{m}/config.json was written by transformers {wrote}, newer than the installed {installed}: "
                "its model type or fields may be unknown here",
                f"{ctx.python} -m pip install 'transformers>={wrote}', or use the config.json of the engine's version",
            )
        else:
            yield Finding(
                "model.transformers-version", "info", f"config written by transformers {wrote}; installed {installed}"
            )


QUANT_DTYPES = {"I8", "U8", "I4", "U4", "F8_E4M3", "F8_E5M2"}


def safetensors_dtypes(path: Path) -> dict[str, str]:
    """Tensor name -> dtype from a safetensors header (8-byte length, then JSON), without loading any tensor."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100 << 20:
                return {}
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return {}
    return {k: v.get("dtype", "") for k, v in header.items() if isinstance(v, dict) and k != "__metadata__"}


def quantized(model: Path) -> str:
    """Why the weights look quantized, or ""."""
    described = sorted(model.glob("quant_model_description*.json"))
    if described:
        return f"{described[0].name} is present"
    for f in weight_files(model):
        if f.suffix != ".safetensors":
            continue
        q = [k for k, d in safetensors_dtypes(f).items() if d in QUANT_DTYPES and k.endswith("weight")]
        if q:
            return f"{f.name} holds {len(q)} integer weight tensor(s) (e.g. {q[0]})"
    return ""


@check("model.quantize")
def model_quantize(ctx: Context) -> Iterator[Finding]:
    """MindIE reads config.json's `quantize` (w8a8, w8a16, w4a16, ...) to choose the kernels; without it the
    integer weights load as float and the model fails or talks nonsense."""
    for m in ctx.model_dirs:
        cfg = _config(m)
        if cfg is None:
            continue
        why = quantized(m)
        if not why:
            yield Finding("model.quantize", "info", f"weights in {m} are not quantized")
        elif cfg.get("quantize"):
            yield Finding("model.quantize", "info", f"quantized ({why}); config.json quantize = {cfg['quantize']!r}")
        else:
            yield Finding(
                "model.quantize",
                "error" if ctx.device == "npu" or "mindie" in ctx.engines else "warning",
                f"weights in {m} are quantized ({why}) but config.json has no `quantize`",
                'add "quantize": "w8a8" (or the scheme the weights were made with: w8a16, w4a16, ...) to config.json',
            )


# ---- memory ----------------------------------------------------------------------------------------------


def meminfo(text: str | None = None) -> dict[str, int]:
    """/proc/meminfo in bytes."""
    if text is None:
        try:
            text = Path("/proc/meminfo").read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        k, _, v = line.partition(":")
        parts = v.split()
        if parts and parts[0].isdigit():
            out[k] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


KNOBS = (
    "lower npuMemSize (MindIE config.json) or raise NPU_MEMORY_FRACTION (default 0.8); shorten maxSeqLen and "
    "maxPrefillTokens; or spread the model over more cards (worldSize / tensor parallel)"
)


@check("memory.host")
def memory_host(ctx: Context) -> Iterator[Finding]:
    avail = meminfo().get("MemAvailable", 0)
    for m in ctx.model_dirs:
        size = sum(f.stat().st_size for f in weight_files(m))
        if not avail:
            yield Finding("memory.host", "info", f"weights {_gib(size)}; free host memory unknown")
        elif size > avail:
            yield Finding(
                "memory.host",
                "error",
                f"weights in {m} are {_gib(size)}, more than the {_gib(avail)} of host memory available: the "
                "load fails with out of memory",
                "free host memory (other processes, page cache of other models), or use a host with more; "
                "weights are read into host memory before they move to the device",
            )
        elif size > 0.8 * avail:
            yield Finding(
                "memory.host",
                "warning",
                f"weights {_gib(size)} against {_gib(avail)} available: under 20% left for activations and the KV cache",
                "free host memory before the run",
            )
        else:
            yield Finding("memory.host", "info", f"weights {_gib(size)}; host memory available {_gib(avail)}")


def device_verdict(weights: int, free: int, total: int, fraction: float, cards: int = 1) -> tuple[str, str]:
    """(severity, what) for weights against one card's usable memory: total x NPU_MEMORY_FRACTION, and what is free."""
    usable = min(free, int(total * fraction))
    per_card = weights / max(cards, 1)
    what = (
        f"weights {_gib(per_card)} per card against {_gib(usable)} usable "
        f"(free {_gib(free)}, total {_gib(total)} x NPU_MEMORY_FRACTION {fraction:g})"
    )
    if per_card > usable:
        return "error", what + ": out of memory at load"
    if per_card > 0.8 * usable:
        return "warning", what + ": under 20% left for the KV cache"
    return "info", what


_NPU_MEM = "import json, torch, torch_npu; f, t = torch.npu.mem_get_info(); print(json.dumps([f, t, torch.npu.device_count()]))"


@check("memory.device", devices=("npu",), looks_at="device memory")
def memory_device(ctx: Context) -> Iterator[Finding]:
    raw = ctx.environ.get("NPU_MEMORY_FRACTION", "")
    try:
        fraction = float(raw) if raw else MEMORY_FRACTION
    except ValueError:
        yield Finding("memory.device", "error", f"NPU_MEMORY_FRACTION={raw!r} is not a number", "a share such as 0.8")
        return
    p = ctx.run_python(_NPU_MEM)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        yield Finding("memory.device", "warning", f"device memory not readable: {last}", "check npu-smi info")
        return
    free, total, _ = json.loads(p.stdout.strip().splitlines()[-1])
    for m in ctx.model_dirs:
        sev, what = device_verdict(sum(f.stat().st_size for f in weight_files(m)), free, total, fraction)
        yield Finding("memory.device", sev, what, KNOBS if sev != "info" else "")  # type: ignore[arg-type]


# ---- load time -------------------------------------------------------------------------------------------


def omp_recommendation(root: Path, cpu_model: str, device: str) -> tuple[str, dict[str, float], str]:
    """(fastest setting, median warm load per setting, baseline folder) from this hardware's load-time baselines."""
    best: dict[str, float] = {}
    where = ""
    for p, b in Store(root).raw("loadtime", "omp-*"):
        try:
            dev = b["environment"]["device"]
        except (KeyError, TypeError):
            continue
        if dev.get("device") != device or (device == "cpu" and dev.get("cpu_model") != cpu_model):
            continue
        warm = [v for k, v in b.get("latency", {}).items() if k.endswith("warm") and v]
        if warm:
            best[p.stem.removeprefix("omp-")] = float(statistics.median(warm[0]))
            where = str(p.parent)
    if not best:
        return "", {}, ""
    return min(best, key=best.__getitem__), best, where


@check("loadtime.omp")
def loadtime_omp(ctx: Context) -> Iterator[Finding]:
    from .envinfo import cpu_model

    mine = cpu_model() if ctx.device == "cpu" else ""
    best, meds, where = omp_recommendation(ctx.baselines, mine, ctx.device)
    now = ctx.environ.get("OMP_NUM_THREADS", "unset") or "unset"
    if not best:
        yield Finding(
            "loadtime.omp",
            "info",
            f"OMP_NUM_THREADS={now}; no load-time baseline for this hardware ({ctx.device} {mine}) to recommend from",
            "nox -s loadtime -- --update-baselines --reason '...' records one",
        )
        return
    line = "unset OMP_NUM_THREADS" if best == "unset" else f"export OMP_NUM_THREADS={best}"
    if now == best:
        yield Finding("loadtime.omp", "info", f"OMP_NUM_THREADS={now}: the fastest in {where}")
    elif now in meds and meds[now] > 1.10 * meds[best]:
        yield Finding(
            "loadtime.omp",
            "warning",
            f"OMP_NUM_THREADS={now}: warm load {meds[now]:.2f} s in {where}, against {meds[best]:.2f} s with {best}",
            line,
        )
    else:
        yield Finding(
            "loadtime.omp",
            "info",
            f"OMP_NUM_THREADS={now}; fastest in {where}: {best} ({meds[best]:.2f} s), within 10% or not measured",
            line,
        )


@check("loadtime.alloc-conf", devices=("npu",), looks_at="PYTORCH_NPU_ALLOC_CONF")
def alloc_conf(ctx: Context) -> Iterator[Finding]:
    conf = ctx.environ.get("PYTORCH_NPU_ALLOC_CONF", "")
    if "expandable_segments:True" in conf:
        yield Finding("loadtime.alloc-conf", "info", f"PYTORCH_NPU_ALLOC_CONF={conf}")
        return
    yield Finding(
        "loadtime.alloc-conf",
        "warning",
        f"PYTORCH_NPU_ALLOC_CONF={conf or '(unset)'}: without expandable segments the allocator fragments, and "
        "large models load slower or run out of memory",
        "export PYTORCH_NPU_ALLOC_CONF=expandable_segments:True",
    )


# ---- determinism profiles --------------------------------------------------------------------------------

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


# ---- serving ---------------------------------------------------------------------------------------------


def cert_expiry(path: Path) -> float | None:
    """The earliest notAfter of the PEM certificates in `path`, as a POSIX time; None when none parse."""
    data = path.read_bytes()
    try:
        from cryptography import x509

        certs = x509.load_pem_x509_certificates(data)
        return min(c.not_valid_after_utc.timestamp() for c in certs)
    except ImportError:
        pass
    except ValueError:
        return None
    info = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]  # noqa: SLF001  (the stdlib's only PEM reader)
    return ssl.cert_time_to_seconds(info["notAfter"])


def tls_findings(where: str, base: Path, ep: dict, now: float) -> Iterator[Finding]:
    paths = {
        k: ep.get(k) for k in ("ca_bundle", "client_cert", "client_key") if isinstance(ep.get(k), str) and ep.get(k)
    }
    ok = {}
    for k, v in paths.items():
        p = base / v
        if not p.is_file():
            yield Finding(
                "serving.tls",
                "error",
                f"{where}: endpoint.{k} {p} does not exist",
                f"point endpoint.{k} at the PEM file (paths are relative to the suite), or copy it there",
            )
        elif not os.access(p, os.R_OK):
            yield Finding("serving.tls", "error", f"{where}: endpoint.{k} {p} is not readable", f"chmod 600 {p}")
        else:
            ok[k] = p
    for k in ("ca_bundle", "client_cert"):
        if k not in ok:
            continue
        try:
            end = cert_expiry(ok[k])
        except (OSError, ssl.SSLError, ValueError) as e:
            yield Finding("serving.tls", "error", f"{where}: endpoint.{k} {ok[k]}: not a PEM certificate ({e})", "")
            continue
        if end is None:
            yield Finding("serving.tls", "error", f"{where}: endpoint.{k} {ok[k]} holds no PEM certificate", "")
        elif end < now:
            yield Finding(
                "serving.tls",
                "error",
                f"{where}: endpoint.{k} {ok[k]} expired on {time.strftime('%Y-%m-%d', time.gmtime(end))}",
                "issue a new certificate (MindIE: replace it and restart the service)",
            )
        elif end < now + 30 * 86400:
            yield Finding(
                "serving.tls",
                "warning",
                f"{where}: endpoint.{k} {ok[k]} expires on {time.strftime('%Y-%m-%d', time.gmtime(end))}",
                "renew it before the release",
            )
    if "client_cert" in ok and "client_key" in ok:
        try:
            ssl.create_default_context().load_cert_chain(ok["client_cert"], ok["client_key"])
        except (ssl.SSLError, OSError) as e:
            yield Finding(
                "serving.tls",
                "error",
                f"{where}: client_key does not load with client_cert ({e})",
                "use the key the certificate was issued for (unencrypted PEM)",
            )


@check("serving.tls")
def serving_tls(ctx: Context) -> Iterator[Finding]:
    served_suites = [s for s in ctx.suites if isinstance(s.data.get("endpoint"), dict)]
    found = [
        f for s in served_suites for f in tls_findings(str(s.path), s.path.parent, s.data["endpoint"], time.time())
    ]
    yield from found
    if not served_suites:
        yield Finding("serving.tls", "info", "no served suite in scope")
    elif not found:
        n = sum(
            bool(s.data["endpoint"].get(k)) for s in served_suites for k in ("ca_bundle", "client_cert", "client_key")
        )
        yield Finding(
            "serving.tls",
            "info",
            f"{len(served_suites)} served suite(s): {n} TLS file(s), present, readable and not expired"
            if n
            else f"{len(served_suites)} served suite(s), none with TLS files",
        )


@check("serving.body")
def serving_body(ctx: Context) -> Iterator[Finding]:
    """Prompts as the server will see them: attachments in formats it takes, each body under its limit (MindIE:
    4 MiB) after base64, which makes media 4/3 of their size."""
    from . import wire
    from .suite_parse import parse

    served_suites = [s for s in ctx.suites if isinstance(s.data.get("endpoint"), dict)]
    if not served_suites:
        yield Finding("serving.body", "info", "no served suite in scope")
        return
    for s in served_suites:
        try:
            suite = parse(s.data, str(s.path), base=s.path.parent)  # without the run's preflight: every prompt
        except Exception as e:  # noqa: BLE001  (the suite.load finding names the problem)
            yield Finding("serving.body", "info", f"{s.path}: not checked, the suite does not parse ({e})")
            continue
        ep = suite.endpoint or served.Endpoint()
        over = 0
        for prompt in suite.prompts:
            for a in prompt.attachments:
                kind, _, sub = a.mime.partition("/")
                if sub not in ACCEPTED_MEDIA.get(kind, ()):
                    yield Finding(
                        "serving.body",
                        "warning",
                        f"{s.path}: prompt {prompt.id!r} attachment {Path(a.path).name} is {a.mime}; servers take "
                        f"{kind} as {', '.join(ACCEPTED_MEDIA.get(kind, ()))}",
                        f"convert it (e.g. ffmpeg / PIL) to {ACCEPTED_MEDIA.get(kind, ('a supported format',))[0]}",
                    )
            if err := wire.suite_size_error(suite, ep, dataclasses.asdict(prompt)):
                over += 1
                yield Finding(
                    "serving.body",
                    "error",
                    f"{s.path}: {err.split('; ')[0]}",
                    "shorten the prompt or its media (the server answers 'Message len not in (0, 4194304]'), or "
                    "raise endpoint.max_body_bytes to the server's real limit",
                )
        if not over:
            yield Finding(
                "serving.body", "info", f"{s.path}: {len(suite.prompts)} prompt(s) under {ep.max_body_bytes} bytes"
            )
