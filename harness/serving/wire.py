"""The OpenAI wire format, shared by the endpoint adapter, the runner and the preflight: the request body, its size
against the server's limit, the client's TLS and key settings. Torch-free."""

from __future__ import annotations

import base64
import functools
import json
import os
import ssl
from pathlib import Path
from typing import Any

from .spec import MIB, Endpoint


def api_key(ep: Endpoint) -> str:
    """The key from the environment; a named but missing variable is an input error, said before anything starts."""
    if not ep.api_key_env:
        return ""
    key = os.environ.get(ep.api_key_env, "")
    if not key:
        raise ValueError(f"endpoint.api_key_env names {ep.api_key_env}, which is not set (or empty) in the environment")
    return key


def client_kwargs(ep: Endpoint, timeout_s: float | None = None) -> dict[str, Any]:
    """httpx client settings: TLS verification on unless the suite turns it off, CA bundle, client certificate."""
    import httpx

    ctx = ssl.create_default_context(cafile=ep.ca_bundle or None)
    if not ep.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ep.client_cert:
        ctx.load_cert_chain(ep.client_cert, ep.client_key)
    key = api_key(ep)
    t = timeout_s or ep.request_timeout_s
    return {
        "verify": ctx,
        "timeout": httpx.Timeout(t, connect=min(t, 30.0)),
        "headers": {"Authorization": f"Bearer {key}"} if key else {},
    }


def connection_error(e: BaseException, url: str) -> str:
    """What a failed connection means, in words, or "" when the cause is not one of these: httpx keeps the cause
    (refused, unknown host, TLS) in its exception chain or in the text of an argument."""
    import socket

    seen: list[BaseException] = []
    todo = [e]
    while todo and len(seen) < 20:
        x = todo.pop(0)
        seen.append(x)
        todo += [a for a in (x.__cause__, x.__context__, *x.args) if isinstance(a, BaseException) and a not in seen]
    for x in seen:
        text = str(x)
        if isinstance(x, ConnectionRefusedError) or "Connection refused" in text:
            return f"server at {url} refused the connection (is it running, on that port?)"
        if isinstance(x, socket.gaierror):
            return f"server at {url}: host name not found ({x.strerror})"
        if "CERTIFICATE_REQUIRED" in text or "alert certificate required" in text:
            return (
                "TLS handshake failed: the server requires a client certificate "
                "(set endpoint.client_cert and client_key)"
            )
        if isinstance(x, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            why = getattr(x, "verify_message", "") or text.partition("verify failed: ")[2].split(" (_ssl")[0]
            return (
                f"TLS handshake failed: the server's certificate is not trusted ({why or 'verify failed'}); "
                "set endpoint.ca_bundle to the CA that signed it"
            )
        if "WRONG_VERSION_NUMBER" in text:
            return f"TLS handshake failed: the server at {url} does not speak TLS (is it http://?)"
        if isinstance(x, ssl.SSLError):
            return f"TLS handshake failed: {x.reason or text}"
    return ""


def request_body(
    ep: Endpoint,
    prompt: dict[str, Any],
    *,
    max_tokens: int,
    top_logprobs: int,
    seed: int,
    model: str = "",
    stream: bool = True,
    dropped: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model} if model else {}
    if ep.api == "chat":
        body |= {
            "messages": [{"role": "user", "content": _content(prompt)}],
            "logprobs": True,
            "top_logprobs": top_logprobs,
        }
    else:
        body |= {"prompt": prompt["text"], "logprobs": top_logprobs}
    body |= {"max_tokens": max_tokens, "temperature": 0, "seed": seed, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if ep.ignore_eos:
        body["ignore_eos"] = True
    return {k: v for k, v in body.items() if k not in dropped}


def _content(prompt: dict[str, Any]) -> str | list[dict[str, Any]]:
    """Plain text, or OpenAI content parts with each attachment inline as base64 (4/3 of the file's size)."""
    if not prompt.get("attachments"):
        text: str = prompt["text"]
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": prompt["text"]}]
    for a in prompt["attachments"]:
        data = _base64(a["path"])
        kind, sub = a["mime"].split("/", 1)
        if kind == "audio":
            parts.append({"type": "input_audio", "input_audio": {"data": data, "format": sub.removeprefix("x-")}})
        else:
            parts.append({"type": f"{kind}_url", f"{kind}_url": {"url": f"data:{a['mime']};base64,{data}"}})
    return parts


@functools.lru_cache(maxsize=64)
def _base64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def size_error(prompt: dict[str, Any], body: dict[str, Any], limit: int) -> str:
    """ "" when the encoded body fits the limit; else one line naming the prompt."""
    n = len(encode(body))
    if n <= limit:
        return ""
    k = len(prompt.get("attachments", ()))
    media = f" (its {k} attachment(s) count base64-encoded, 4/3 of their file size)" if k else ""
    return (
        f"prompt {prompt['id']!r} makes a {n / MIB:.2f} MiB request body{media}, over the limit of {limit / MIB:.2f} MiB "
        "(endpoint.max_body_bytes); shorten the prompt or raise the limit if the server accepts more"
    )


def suite_size_error(suite: Any, ep: Endpoint, prompt: dict[str, Any]) -> str:
    """size_error of PROMPT's body as SUITE sends it to EP: the run's preflight and the doctor ask alike."""
    body = request_body(
        ep,
        prompt,
        max_tokens=suite.generation.max_new_tokens,
        top_logprobs=suite.generation.top_logprobs,
        seed=suite.seed,
        model=ep.model,
    )
    return size_error(prompt, body, ep.max_body_bytes)
