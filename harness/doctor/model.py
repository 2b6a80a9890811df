"""The doctor's checks of the model folder: config.json, the files' modes, the tokenizer against the
baselines', the transformers version that wrote the config, and quantized weights without `quantize`."""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..baselines import Store
from ..loadtime.data import weight_files
from ..models import sha256
from .core import Context, Finding, check

RECOMMENDED_MODE = 0o640


def _config(model: Path) -> dict[str, Any] | None:
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

        def names(fs: list[Path]) -> str:
            return ", ".join(f"{f.name} ({f.stat().st_mode & 0o777:o})" for f in fs[:4])

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
            where, h = next(iter(other.items()))
            yield Finding(
                "model.tokenizer",
                "error",
                f"{tj} sha256 {mine[:16]} differs from {h[:16]} recorded with {where}: the tokenizer is not the "
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


def _version_tuple(v: str) -> tuple[int, ...]:
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
        elif _version_tuple(wrote) > _version_tuple(installed):
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
