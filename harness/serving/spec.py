"""Served suites: the [server] that the harness starts per profile and the [endpoint] it talks to."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..tomltable import Rule, SuiteError, Table

APIS = ("completions", "chat")
PLACEHOLDERS = ("model", "port", "host", "device", "dtype", "python", "config")
CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
MIB = 1 << 20


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible server the harness talks to: where, which API, how securely, how patiently."""

    base_url: str = "http://{host}:{port}"  # {host} and {port} come from [server]
    api: str = "completions"  # "completions" (raw text) or "chat" (messages)
    model: str = ""  # the request's "model"; "": the first id from GET /v1/models
    health_path: str = "/health"
    api_key_env: str = ""  # name of the environment variable that holds the API key
    ca_bundle: str = ""  # https: CA bundle to verify the server with; "": the system store
    client_cert: str = ""  # mutual TLS (MindIE's default): client certificate and key, PEM
    client_key: str = ""
    verify: bool = True
    request_timeout_s: float = 300.0
    retries: int = 2  # extra attempts after a transient failure (reset, timeout, 5xx, bad JSON)
    backoff_s: float = 0.5  # first back-off; doubles per attempt
    max_body_bytes: int = 4 * MIB  # MindIE rejects messages over 4 MiB
    ignore_eos: bool = True  # sent where the server accepts it, so every sequence runs max_new_tokens
    oversize_check: bool = False  # also send one body over max_body_bytes and expect a 4xx


@dataclass(frozen=True)
class Server:
    """How to start the server per profile; without it the endpoint must already be running."""

    command: str  # template: {model} {port} {host} {device} {dtype} {python} (this Python) {config}
    config: str = ""  # a config file template (JSON or YAML, same placeholders), rendered per start into {config}
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port picked at each start
    startup_timeout_s: float = 300.0
    stop_grace_s: float = 10.0  # after SIGTERM, before SIGKILL


def render(template: str, values: dict[str, str]) -> str:
    """Only the known {placeholders} are filled in: JSON and YAML have braces of their own."""
    return re.sub(r"\{(" + "|".join(PLACEHOLDERS) + r")\}", lambda m: values.get(m.group(1), m.group(0)), template)


# A config key whose value is a credential (vLLM's api-key, hf-token; MindIE's passwords); a key file's path stays.
SECRET_KEY = re.compile(r"(secret|passw(or)?d|pwd|api[_-]?key|token)$", re.I)
_ENTRY = re.compile(r"""^(\s*-?\s*["']?([\w.-]+)["']?\s*:\s*)(.+?)(,?\s*)$""")


def redact_config(text: str) -> str:
    """The rendered config as kept with the run: the value of every key named like a credential is replaced,
    line by line (JSON or YAML, one key per line), so the copy never holds what the live file did."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _ENTRY.match(line.rstrip("\n"))
        if m and SECRET_KEY.search(m.group(2)) and m.group(3).strip() not in ("{", "["):
            quote = '"' if m.group(3).startswith('"') else ""
            line = f"{m.group(1)}{quote}<redacted>{quote}{m.group(4)}" + ("\n" if line.endswith("\n") else "")
        out.append(line)
    return "".join(out)


def base_url(url: str, where: str) -> str:
    from urllib.parse import urlsplit

    u = urlsplit(url.replace("{host}", "h").replace("{port}", "1"))
    if u.scheme not in ("http", "https") or not u.netloc:
        raise SuiteError(f"{where}: expected an http:// or https:// URL such as https://10.0.0.5:1025, got {url!r}")
    return url.rstrip("/")


def _template_fields(template: str) -> list[str]:
    import string

    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise SuiteError(str(e)) from None


def parse_server(t: Table, base: Path) -> Server:
    cmd = t.get(
        "command",
        str,
        check=lambda s: s.strip() != "",
        expect='the command that starts the server, e.g. "transformers serve {model} --port {port}"',
    )
    try:
        fields = _template_fields(cmd)
    except SuiteError as e:
        raise t.fail("command", f"malformed template ({e}); write literal braces as {{{{ and }}}}") from None
    bad = [f for f in fields if f not in PLACEHOLDERS]
    if bad:
        raise t.fail(
            "command", f"unknown placeholder {{{bad[0]}}}; known: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
        )
    config = t.get("config", str, "")
    template = ""
    if config:
        path = base / config
        if path.suffix.lower() not in CONFIG_SUFFIXES:
            raise t.fail("config", f"expected a .json, .yaml or .yml template, got {config!r}")
        if not path.is_file():
            raise t.fail("config", f"file {path} not found")
        if "config" not in fields:
            raise t.fail("command", "has no {config} placeholder, so the rendered server.config would not reach it")
        try:
            template = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise t.fail("config", f"cannot read {path} as UTF-8 text ({e})") from None
        if path.suffix.lower() == ".json":
            try:
                json.loads(render(template, {p: "1" for p in PLACEHOLDERS}))
            except json.JSONDecodeError as e:
                raise t.fail("config", f"{path} is not valid JSON once rendered: {e.msg} at line {e.lineno}") from None
        config = str(path.resolve())
    elif "config" in fields:
        raise t.fail("command", "uses {config} but server.config names no template to render into it")
    secs = Rule(check=lambda v: v > 0, expect="a positive number of seconds")
    srv = Server(
        command=cmd,
        config=config,
        host=t.get("host", str, "127.0.0.1", check=lambda s: s.strip() != "", expect="a host name or address"),
        port=t.get("port", int, 0, check=lambda v: 0 <= v <= 65535, expect="0 (pick a free port) or a port number"),
        startup_timeout_s=float(t.get("startup_timeout_s", (int, float), 300, **secs)),
        stop_grace_s=float(t.get("stop_grace_s", (int, float), 10, **secs)),
    )
    t.done()
    if srv.port == 0 and "port" not in fields and "{port}" not in template:
        raise t.fail("command", "has no {port} placeholder, so set server.port to the port the command listens on")
    return srv


def parse_endpoint(t: Table, base: Path, server: Server | None) -> Endpoint:
    d = Endpoint()
    url = t.get(
        "base_url",
        str,
        d.base_url if server else ...,
        expect='the server\'s URL, e.g. "https://10.0.0.5:1025" (or add a [server] section to start one)',
    )
    url = base_url(url, f"{t.path}: {t.key('base_url')}")
    if server is None and ("{host}" in url or "{port}" in url):
        raise t.fail("base_url", "uses {host}/{port}, which only a [server] section can fill in")

    def path(k: str) -> str:
        v = t.get(k, str, "")
        if v and not (base / v).is_file():
            raise t.fail(k, f"file {base / v} not found")
        return str((base / v).resolve()) if v else ""

    secs = Rule(check=lambda v: v > 0, expect="a positive number of seconds")
    ep = Endpoint(
        base_url=url,
        api=t.get("api", str, d.api, check=lambda v: v in APIS, expect=f"one of {', '.join(APIS)}"),
        model=t.get("model", str, ""),
        health_path=t.get(
            "health_path", str, d.health_path, check=lambda v: v.startswith("/"), expect="a path such as /health"
        ),
        api_key_env=t.get(
            "api_key_env",
            str,
            "",
            check=lambda v: v == "" or v.replace("_", "a").isalnum(),
            expect="the NAME of an environment variable (the key itself never goes in a suite)",
        ),
        ca_bundle=path("ca_bundle"),
        client_cert=path("client_cert"),
        client_key=path("client_key"),
        verify=t.get("verify", bool, True),
        request_timeout_s=float(t.get("request_timeout_s", (int, float), d.request_timeout_s, **secs)),
        retries=t.get("retries", int, d.retries, check=lambda v: 0 <= v <= 10, expect="an integer in [0, 10]"),
        backoff_s=float(t.get("backoff_s", (int, float), d.backoff_s, check=lambda v: v >= 0, expect="seconds, >= 0")),
        max_body_bytes=t.get(
            "max_body_bytes", int, d.max_body_bytes, check=lambda v: v >= 1024, expect="a size in bytes, >= 1024"
        ),
        ignore_eos=t.get("ignore_eos", bool, True),
        oversize_check=t.get("oversize_check", bool, False),
    )
    t.done()
    if bool(ep.client_cert) != bool(ep.client_key):
        raise t.fail(
            "client_key" if ep.client_cert else "client_cert", "mutual TLS needs both client_cert and client_key"
        )
    return ep
