"""An OpenAI-compatible server started per profile: its environment carries the profile's flags, its log goes to
the run directory, it is healthy before any request is sent, and it is stopped as a process group (SIGTERM, then
SIGKILL), waited for until none of the group is left (harness.procgroup). It is registered there like every child,
so a cancelled run stops it too, and the kernel SIGTERMs it if the harness dies without doing so.

Every way it can fail to start (command not found, port taken, exit during start-up, never healthy) is a
ServerError whose message is one line, with the log tail kept beside it for the report.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .. import procgroup
from ..ports import free_port, port_taken
from .spec import Endpoint, Server, redact_config, render

if TYPE_CHECKING:
    import httpx

POLL_S = 0.25


class ServerError(RuntimeError):
    def __init__(self, message: str, log_tail: list[str] | None = None):
        super().__init__(message)
        self.log_tail = log_tail or []


@dataclass
class Running:
    url: str
    pid: int
    log: Path
    start_s: float  # launch to healthy
    proc: subprocess.Popen[bytes] = field(repr=False)
    stopped: str = ""  # how it ended: "SIGTERM, group empty after 0.4 s", "exited with status 1 before ..."
    # its own exit status when it had exited before it was stopped (it crashed mid-run); None: the stop ended it
    exit_code: int | None = None


def log_tail(path: Path, n: int = 20) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-n:]


def values(
    spec: Server, *, model: str, port: int, device: str, dtype: str, config: str = "", python: str = ""
) -> dict[str, str]:
    """What the placeholders of the command and of the config template stand for."""
    return {
        "model": model,
        "port": str(port),
        "host": spec.host,
        "device": device,
        "dtype": dtype,
        # the profile's stack (`python`), else the harness's own: a server installed in its venv (python -m vllm...)
        "python": python or sys.executable,
        "config": config,
    }


def command(
    spec: Server, *, model: str, port: int, device: str, dtype: str, config: str = "", python: str = ""
) -> list[str]:
    """`python`: a profile's other stack, whose console scripts (vllm, transformers) are the ones its server means,
    before any of the same name on PATH; without one, a script beside this Python counts only when PATH has none."""
    # Filled in after splitting, so a model path with spaces stays one argument.
    vals = values(spec, model=model, port=port, device=device, dtype=dtype, config=config, python=python)
    argv = [arg.format(**vals) for arg in shlex.split(spec.command)]
    beside = Path(python or sys.executable).parent / argv[0]
    if os.sep not in argv[0] and (python or shutil.which(argv[0]) is None) and beside.is_file():
        argv[0] = str(beside)
    return argv


def _health(client: httpx.Client, url: str) -> str:
    """ "" when healthy, else what went wrong (kept for the time-out message: a TLS error is worth naming)."""
    import httpx

    try:
        code = client.get(url).status_code
        return "" if code == 200 else f"HTTP {code}"
    except httpx.HTTPError as e:
        from urllib.parse import urlsplit

        from .wire import connection_error

        u = urlsplit(url)
        return connection_error(e, f"{u.scheme}://{u.netloc}") or f"{type(e).__name__}: {str(e) or 'no answer'}"


@contextmanager
def started(
    spec: Server,
    endpoint: Endpoint,
    *,
    model: str,
    device: str,
    dtype: str,
    env: dict[str, str],
    log: Path,
    python: str = "",
) -> Iterator[Running]:
    """Start the server (with the profile's stack's `python` where it names one), wait for its health path, yield
    it, and stop it whatever happens inside."""
    port = spec.port or free_port(spec.host)
    if spec.port and port_taken(spec.host, port):
        raise ServerError(
            f"port {port} on {spec.host} is already in use by another process: stop it, or set "
            "server.port = 0 to let the harness pick a free port"
        )
    log.parent.mkdir(parents=True, exist_ok=True)
    vals = values(spec, model=model, port=port, device=device, dtype=dtype, python=python)
    with rendered_config(spec, log, vals) as config:
        argv = command(spec, model=model, port=port, device=device, dtype=dtype, config=config, python=python)
        with _running(spec, endpoint, argv, env, log, port) as run:
            yield run


@contextmanager
def rendered_config(spec: Server, log: Path, vals: dict[str, str]) -> Iterator[str]:
    """The config template filled in for this start, in a private directory that goes when the server has stopped
    (it may hold credentials); the copy kept beside the server log has them redacted."""
    if not spec.config:
        yield ""
        return
    template = Path(spec.config)
    text = render(template.read_text(encoding="utf-8"), vals)
    kept = log.with_name(log.name.removesuffix(".log") + ".config" + template.suffix)
    kept.write_text(redact_config(text), encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="harness-server-") as d:
        live = Path(d) / template.name
        with os.fdopen(os.open(live, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8") as f:
            f.write(text)
        yield str(live)


@contextmanager
def _running(
    spec: Server, endpoint: Endpoint, argv: list[str], env: dict[str, str], log: Path, port: int
) -> Iterator[Running]:
    url = endpoint.base_url.format(host=spec.host, port=port)
    t0 = time.monotonic()
    with open(log, "ab") as logf:
        try:
            # Own session, so stopping it also stops whatever it forked (uvicorn workers, MindIE daemons).
            proc = procgroup.start(
                argv,
                grace_s=spec.stop_grace_s,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
        except OSError as e:
            raise ServerError(
                f"server.command: cannot run {argv[0]!r} ({e.strerror or e}); is it installed and on PATH?"
            ) from None
    run = Running(url=url, pid=proc.pid, log=log, start_s=0.0, proc=proc)
    try:
        _wait_healthy(run, endpoint, spec.startup_timeout_s, t0)
        yield run
    finally:
        stop(run, spec.stop_grace_s)


def _wait_healthy(run: Running, endpoint: Endpoint, timeout_s: float, t0: float) -> None:
    import httpx

    from .wire import client_kwargs

    with httpx.Client(**client_kwargs(endpoint, timeout_s=5.0)) as client:
        while True:
            rc = run.proc.poll()
            if rc is not None:
                tail = log_tail(run.log)
                why = start_up_cause(tail, run.log)
                raise ServerError(
                    f"server exited with status {rc} during start-up, before {endpoint.health_path} "
                    f"answered: {why}; see {run.log}",
                    tail,
                )
            last = _health(client, run.url + endpoint.health_path)
            if not last:
                run.start_s = time.monotonic() - t0
                return
            if time.monotonic() - t0 > timeout_s:
                raise ServerError(
                    f"server not healthy at {run.url}{endpoint.health_path} after {timeout_s:.0f}s "
                    f"(server.startup_timeout_s; last answer: {last[:160]}); see its log",
                    log_tail(run.log),
                )
            time.sleep(POLL_S)


# Failures whose cause a server's log names (anywhere in its last 256 KiB: a traceback buries it), explained in a line.
KNOWN_CAUSES = (
    ("address already in use", "could not bind its port (address already in use)"),
    (
        "batch_invariant",
        "the engine failed in vLLM's batch-invariant kernels (VLLM_BATCH_INVARIANT=1), which need Triton: there is "
        "no CPU backend, so set it for npu / cuda only, under the profile's device_env",
    ),
    ("out of memory", "out of memory"),
)
_ERROR_LINE = re.compile(r"(Error|Exception|error:|fatal|FATAL)")


def known_cause(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - (256 << 10)))
            text = f.read().decode("utf-8", errors="replace").lower()
    except OSError:
        return ""
    return next((why for needle, why in KNOWN_CAUSES if needle in text), "")


def start_up_cause(tail: list[str], log: Path | None = None) -> str:
    """Why a server died during start-up: a known cause explained, else the last line of its log's tail that reads
    like an error (or the last line)."""
    if log is not None and (why := known_cause(log)):
        return why
    text = "\n".join(tail).lower()
    for needle, why in KNOWN_CAUSES:
        if needle in text:
            return why
    errors = [ln.strip() for ln in tail if _ERROR_LINE.search(ln)]
    last = (errors or [ln.strip() for ln in tail] or ["no output"])[-1]
    return f"log: {last[:200]}"


def stop(run: Running, grace_s: float) -> None:
    how = procgroup.stop_group(run.proc, grace_s)
    run.stopped, run.exit_code = how.text, how.exit_code
