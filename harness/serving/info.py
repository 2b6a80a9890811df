"""Which program a served suite's command starts, and the versions and chip it runs with: the served device key's
facts (vllm, vllm_ascend, MindIE, sglang; on npu the chip, CANN, driver and firmware)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from .. import devices
from .spec import Server

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_ENV_TAKES_VALUE = {"-u", "--unset", "-C", "--chdir"}  # env's options whose value is the next word
_PYTHON = re.compile(r"^(python[\d.]*|\{python\})$")
_PYTHON_TAKES_VALUE = {"-W", "-X", "-Q"}
_SHELLS = {"sh", "bash", "dash", "zsh"}
# The program -> the distribution whose version names it, where the harness can read it (this interpreter only).
# `transformers serve` is left out of the key on purpose: the committed served baselines (endpoint-cpu-*-transformers)
# were made without a version, and its version is still recorded beside the key (the "transformers" field).
VERSIONED = {"vllm": "vllm", "sglang": "sglang"}


def server_argv(command: str) -> list[str]:
    """The command's words from the program that serves: `env` and its options, VAR=value assignments, `exec` and
    `nohup` skipped, and a shell's `-c` string read as the command it runs."""

    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    i = 0
    while i < len(words):
        if Path(words[i]).name == "env":
            i += 1
            while i < len(words) and words[i].startswith("-"):
                i += 2 if words[i] in _ENV_TAKES_VALUE else 1
        elif _ASSIGNMENT.match(words[i]) or words[i] in ("exec", "nohup"):
            i += 1
        else:
            break
    rest = words[i:]
    if len(rest) >= 3 and Path(rest[0]).name in _SHELLS and rest[1] == "-c":
        return server_argv(rest[2])
    return rest


def program_name(argv: list[str]) -> str:
    """What serves, by name: `python -m vllm.entrypoints.openai.api_server` -> vllm, `python serve.py` -> serve,
    `/usr/local/Ascend/mindie/latest/mindie-service/bin/mindieservice_daemon` -> mindie, `vllm serve` -> vllm."""
    if not argv:
        return "unknown"
    name = Path(argv[0]).name
    if _PYTHON.match(name):
        args, j = argv[1:], 0
        while j < len(args):
            a = args[j]
            if a == "-m" and j + 1 < len(args):
                return args[j + 1].split(".")[0]
            if a.startswith("-m") and len(a) > 2:
                return a[2:].split(".")[0]
            if a == "-c":
                return "python"
            j += 2 if a in _PYTHON_TAKES_VALUE else 1
            if not a.startswith("-"):
                return Path(a).stem
        return "python"
    if name.startswith("mindieservice"):
        return "mindie"
    return name


def server_program(spec: Server | None) -> str:
    """What serves the model, for the baseline key: the real program's name (see program_name), or "external"."""
    if spec is None:
        return "external"
    return program_name(server_argv(spec.command))


def _this_interpreter(argv: list[str], path: str | None = None) -> bool:
    """Whether the server's program runs under this Python: `{python}`, a python in this interpreter's bin folder,
    or a script whose #! line names one (a venv's `vllm`). Paths are compared unresolved: a venv's python is a link
    to the system's, whose packages are not the venv's."""

    if not argv:
        return False
    if argv[0] == "{python}":
        return True
    ours = Path(os.path.abspath(sys.executable)).parent
    exe = shutil.which(argv[0], path=path)
    if exe is None:
        return False
    if _PYTHON.match(Path(exe).name):
        return Path(os.path.abspath(exe)).parent == ours
    try:
        with open(exe, "rb") as f:
            first = f.readline(512)
    except OSError:
        return False
    interp = first[2:].decode(errors="replace").split()[:1] if first.startswith(b"#!") else []
    return bool(interp) and Path(os.path.abspath(interp[0])).parent == ours


def _dist_version(*names: str) -> str:
    from importlib import metadata

    for n in names:
        try:
            return metadata.version(n)
        except metadata.PackageNotFoundError:
            continue
    return ""


def served_device(spec: Server | None, target: str, root: str = "") -> dict[str, str]:
    """What the endpoint adapter cannot see from its side of the socket, added to a started server's device
    description (an external server gets nothing: the harness cannot know what runs behind it): the server's
    version where this interpreter runs it (vllm, vllm_ascend, sglang; transformers recorded, not keyed), MindIE's
    from its install's version.info, and on an NPU host the chip (npu-smi, without torch_npu), CANN, driver and
    firmware, read from their files (under `root`, default /usr/local/Ascend)."""
    if spec is None:
        return {}

    root = root or devices.ASCEND_ROOT

    argv = server_argv(spec.command)
    prog = program_name(argv)
    out = {"server": prog}
    mine = _this_interpreter(argv)
    if prog in VERSIONED and mine and (v := _dist_version(VERSIONED[prog])):
        out["server_version"] = v
    if prog == "vllm" and mine and target == "npu" and (v := _dist_version("vllm_ascend", "vllm-ascend")):
        out["vllm_ascend"] = v
    if prog == "transformers" and mine and (v := _dist_version("transformers")):
        out["transformers"] = v
    if prog == "mindie":
        import shutil

        exe = argv[0] if os.path.isabs(argv[0]) else (shutil.which(argv[0]) or "")
        if (v := devices.mindie_version(near=exe, root=root)) != devices.UNKNOWN:
            out["server_version"] = v
    if target == "npu":
        out |= {
            "chip": devices.npu_smi_chip(),
            "cann": devices.cann_version(root, home=devices.cann_home_env()),
            "driver": devices.driver_version(root),
            "firmware": devices.firmware_version(root),
        }
    return out
