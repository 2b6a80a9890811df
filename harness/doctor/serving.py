"""The doctor's checks of served suites: their TLS files (present, readable, not expired, key matching the
certificate), every request body as the server will see it (media formats, the body limit), and a MindIE
config.json as the harness renders it (the server's own TLS files, the prefill limits the FAQ names)."""

from __future__ import annotations

import dataclasses
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..serving import spec as served
from .core import Context, Finding, check

# What OpenAI-compatible servers take inline (image_url / input_audio / video_url).
ACCEPTED_MEDIA = {
    "image": ("png", "jpeg", "webp", "gif", "bmp"),
    "audio": ("wav", "mp3", "x-wav", "mpeg"),
    "video": ("mp4",),
}


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


def tls_findings(where: str, base: Path, ep: dict[str, Any], now: float) -> Iterator[Finding]:
    paths = {k: v for k in ("ca_bundle", "client_cert", "client_key") if isinstance(v := ep.get(k), str) and v}
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
    from ..serving import wire
    from ..suite_parse import parse

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


# MindIE resolves the relative TLS paths of config.json against its install folder (MIES_INSTALL_PATH).
MINDIE_HOME = "/usr/local/Ascend/mindie/latest/mindie-service"


def mindie_findings(where: str, cfg: dict[str, Any], home: Path) -> Iterator[Finding]:
    """A rendered MindIE config.json against the MindIE FAQ's start-up failures that can be seen before it starts:
    httpsEnabled with TLS files that are not there, and maxPrefillTokens below maxInputTokenLen."""
    server = cfg.get("ServerConfig") or {}
    backend = cfg.get("BackendConfig") or {}
    deploy = backend.get("ModelDeployConfig") or {}
    schedule = backend.get("ScheduleConfig") or {}
    if server.get("httpsEnabled"):
        files = [server.get(k) for k in ("tlsCert", "tlsPk", "tlsPkPwd")]
        files += [str(Path(server.get("tlsCaPath") or "") / f) for f in server.get("tlsCaFile") or []]
        files += [str(Path(server.get("tlsCrlPath") or "") / f) for f in server.get("tlsCrlFiles") or []]
        missing = [f for f in files if isinstance(f, str) and f and not (home / f).is_file()]
        if missing:
            yield Finding(
                "serving.mindie",
                "error",
                f"{where}: httpsEnabled, but {len(missing)} TLS file(s) are not under {home}: {', '.join(missing)}",
                "put the server's certificates there (MindIE's security/ folders), or set httpsEnabled false and "
                "base_url http:// for a test host",
            )
    inp, prefill = deploy.get("maxInputTokenLen"), schedule.get("maxPrefillTokens")
    if isinstance(inp, int) and isinstance(prefill, int) and prefill < inp:
        yield Finding(
            "serving.mindie",
            "error",
            f"{where}: ScheduleConfig.maxPrefillTokens {prefill} < ModelDeployConfig.maxInputTokenLen {inp}: "
            "MindIE refuses to start",
            f"raise maxPrefillTokens to at least {inp}",
        )


@check("serving.mindie")
def serving_mindie(ctx: Context) -> Iterator[Finding]:
    import json

    rendered = 0
    for s in ctx.suites:
        srv = s.data.get("server")
        if not isinstance(srv, dict) or not isinstance(srv.get("config"), str) or not srv["config"]:
            continue
        template = s.path.parent / srv["config"]
        vals = {"model": "model", "port": "0", "host": str(srv.get("host", "127.0.0.1")), "device": ctx.device}
        vals |= {"dtype": "bfloat16", "python": "python", "config": str(template)}
        try:
            cfg = json.loads(served.render(template.read_text(encoding="utf-8"), vals))
        except (OSError, ValueError) as e:
            yield Finding("serving.mindie", "info", f"{s.path}: server.config {template} not checked ({e})")
            continue
        if not isinstance(cfg, dict) or "ServerConfig" not in cfg:
            continue  # not a MindIE config
        rendered += 1
        home = Path(ctx.environ.get("MIES_INSTALL_PATH") or MINDIE_HOME)
        found = list(mindie_findings(f"{s.path}: {template.name}", cfg, home))
        yield from found
        if not found:
            yield Finding("serving.mindie", "info", f"{s.path}: {template.name} passes the MindIE start-up checks")
    if not rendered:
        yield Finding("serving.mindie", "info", "no MindIE config in scope")
