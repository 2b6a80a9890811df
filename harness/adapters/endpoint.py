"""An OpenAI-compatible server (MindIE Service, vLLM, SGLang, `transformers serve`) as an adapter.

A batch is a set of concurrent streaming requests submitted in batch order; the server's own batching
decides which requests share a forward pass, exactly as in production. Greedy decoding, a fixed seed,
`max_tokens`, and `ignore_eos` where the server accepts it. When the server streams logprobs with top
logprobs they stand in for the logits fingerprint (level "logprobs"); otherwise outputs are compared as
text, character by character (level "text"). Torch-free: it runs in a worker that never imports torch.

The API key is read from the environment variable the suite names and only ever put in a request header.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import envinfo
from ..jobs import Job
from ..records import CHARS, MODEL_IDS, NO_IDS, Generated
from ..serving.spec import Endpoint
from ..serving.wire import client_kwargs, connection_error, encode, request_body, size_error

if TYPE_CHECKING:
    import torch

# Fields a server may refuse (transformers serve answers 422 to unknown fields); dropped one by one at the probe.
OPTIONAL = ("ignore_eos", "seed", "logprobs", "top_logprobs", "stream_options")
RETRY_STATUS = {408, 429, 500, 502, 503, 504}


class RequestFailed(Exception):
    def __init__(self, message: str, retry: bool, status: int = 0, vague: bool = False):
        super().__init__(message)
        self.retry, self.status = retry, status
        self.vague = vague  # a connection failure whose cause the async stack did not keep


@dataclass
class Step:
    """One generated token: its text and logprob, and the top-k alternatives' (text, logprob) by rank. `token_id`
    and `top_ids` are the model's ids of the same, where the engine gives them (vLLM in process; a server does not)."""

    token: str
    logprob: float
    top: list[tuple[str, float]]
    token_id: int | None = None
    top_ids: list[int] | None = None


def _steps(choice: dict[str, Any], api: str) -> list[Step]:
    lp = choice.get("logprobs")
    if not lp:
        return []
    if api == "chat":
        return [
            Step(
                e.get("token", ""),
                float(e.get("logprob", 0.0)),
                [(t.get("token", ""), float(t.get("logprob", 0.0))) for t in e.get("top_logprobs") or []],
            )
            for e in lp.get("content") or []
        ]
    tops = lp.get("top_logprobs") or []
    return [
        Step(
            tok,
            float(lp_ if lp_ is not None else 0.0),
            sorted(((k, float(v)) for k, v in (tops[i] or {}).items()), key=lambda kv: -kv[1]) if i < len(tops) else [],
        )
        for i, (tok, lp_) in enumerate(zip(lp.get("tokens") or [], lp.get("token_logprobs") or []))
    ]


def _piece(choice: dict[str, Any], api: str) -> str:
    if api == "chat":
        content: str = (choice.get("delta") or choice.get("message") or {}).get("content") or ""
        return content
    text: str = choice.get("text") or ""
    return text


def _html(text: str) -> bool:
    return text.startswith("<") and re.search(r"<(!doctype|html|head|body|title)\b", text[:2000], re.I) is not None


def _error_message(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace").strip()
    if _html(text):  # an error page: its title says it, the markup around it says nothing
        m = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        text = html.unescape(m.group(1) if m else re.sub(r"<[^>]*>", " ", text))
        return " ".join(text.split())[:300] or "(an HTML page without text)"
    try:
        obj = json.loads(text)
        err = obj.get("error", obj.get("detail", obj.get("message", obj))) if isinstance(obj, dict) else obj
        if isinstance(err, dict):
            err = err.get("message", err)
        text = str(err)
    except json.JSONDecodeError:
        pass
    return " ".join(text.split())[:300] or "(empty body)"


def _http_error(status: int, raw: bytes, server: str) -> str:
    """ "HTTP 400: <the server's message>"; an HTML page comes from a proxy in front of the server (nginx, a load
    balancer), not from an OpenAI-compatible API, and is named as such."""
    msg = _error_message(raw)
    if not _html(raw.decode("utf-8", errors="replace").strip()):
        return f"HTTP {status}: {msg}"
    hint = "; set endpoint.client_cert and client_key" if "certificate" in msg.lower() else ""
    return f"HTTP {status} from the proxy{f' ({server})' if server else ''}: {msg}{hint}"


def generated(
    text_pieces: list[str],
    times: list[float],
    steps: list[Step],
    finish: str,
    usage: dict[str, Any],
    error: str = "",
    extra: dict[str, Any] | None = None,
) -> Generated:
    text = "".join(text_pieces)
    n_out = int(usage.get("completion_tokens") or 0) or len(steps)
    common: dict[str, Any] = dict(
        text=text,
        finish_reason=finish if not error else "error",
        token_times=times,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=n_out,
        error=error,
        extra=extra or {},
    )
    if steps:
        # Ids where every step has them (vLLM in process), else none: a server gives token text only, and the text
        # (pieces, topk_tokens) is then what identifies a token; never a hash of it in an id field.
        with_ids = all(s.token_id is not None and s.top_ids is not None for s in steps)
        return Generated(
            tokens=[s.token_id for s in steps if s.token_id is not None] if with_ids else [],
            ids=MODEL_IDS if with_ids else NO_IDS,
            pieces=[s.token for s in steps],
            # Tied top-k entries in a canonical order: engines list exact ties (common in bfloat16) in either order.
            fingerprints=[
                hashlib.blake2b(
                    json.dumps([s.token, s.logprob, sorted(s.top, key=lambda e: (-e[1], e[0]))]).encode(),
                    digest_size=8,
                ).hexdigest()
                for s in steps
            ],
            topk_ids=[list(s.top_ids or []) for s in steps] if with_ids else [],
            topk_tokens=[[t for t, _ in s.top] for s in steps],
            topk_logprobs=[[lp for _, lp in s.top] for s in steps],
            level="logprobs",
            **common,
        )
    # Text only: characters are the unit, so a divergence is located to the character.
    return Generated(
        tokens=[ord(c) for c in text],
        ids=CHARS,
        pieces=list(text),
        fingerprints=[],
        topk_ids=[],
        topk_logprobs=[],
        level="text",
        **common,
    )


class EndpointAdapter:
    remote = True  # the worker imports no torch and prepares no device for it

    def __init__(self, job: Job, device: torch.device | None = None):
        self.job = job
        assert job.endpoint is not None, "a served job carries its endpoint"
        self.server = job.server
        self.ep: Endpoint = job.endpoint
        self.url = self.ep.base_url + ("/v1/chat/completions" if self.ep.api == "chat" else "/v1/completions")
        self.loop = asyncio.new_event_loop()
        # an httpx.AsyncClient from load() on: Any, as the methods that use it run only after load()
        self.client: Any = None
        self.model = self.ep.model
        self.dropped: frozenset[str] = frozenset()
        self.level = "unknown"

    # -- the worker's adapter interface --------------------------------------------------------------------------
    def load(self) -> dict[str, float]:
        """Connect, learn the model id, and probe which optional fields the server takes; fails -> worker exit 3."""
        import httpx

        self.client = httpx.AsyncClient(
            **client_kwargs(self.ep), limits=httpx.Limits(max_connections=256, max_keepalive_connections=256)
        )
        t0 = time.perf_counter()
        self.loop.run_until_complete(self._probe())
        return {"probe": time.perf_counter() - t0}

    def describe(self) -> dict[str, Any]:
        # A server the harness started runs on this host: its CPU model and cores belong in the baseline key. What
        # this side of the socket cannot see (the server's version, vllm_ascend, the NPU chip, CANN) the runner adds
        # to this description when the job ends (serving.info.served_device); an external server gets neither.
        host = f"{envinfo.cpu_model()}-c{os.cpu_count()}" if self.server != "external" else ""
        return {
            "device": "endpoint",
            "server": self.server,
            "target": self.job.device,
            "host": host,
            "url": self.ep.base_url,
            "api": self.ep.api,
            "model": self.model,
            "level": self.level,
            "dropped_fields": sorted(self.dropped),
        }

    def generate(self, prompts: list[dict[str, Any]]) -> list[Generated]:
        return self.loop.run_until_complete(self._batch(prompts))

    def oversize(self) -> dict[str, Any]:
        """One request just over the body limit: a sound server answers 4xx with a message, rather than failing."""
        return self.loop.run_until_complete(self._oversize())

    def close(self) -> None:
        if self.client is not None:
            self.loop.run_until_complete(self.client.aclose())
        self.loop.close()

    # -- internals -----------------------------------------------------------------------------------------------
    def _body(self, prompt: dict[str, Any], max_tokens: int | None = None, stream: bool = True) -> dict[str, Any]:
        return request_body(
            self.ep,
            prompt,
            max_tokens=max_tokens or self.job.max_new_tokens,
            top_logprobs=self.job.top_logprobs,
            seed=self.job.seed,
            model=self.model,
            stream=stream,
            dropped=self.dropped,
        )

    async def _probe(self) -> None:
        import httpx

        if not self.model:
            try:
                r = await self.client.get(self.ep.base_url + "/v1/models")
                data = r.json().get("data") or [] if r.status_code == 200 else []
                self.model = data[0].get("id", "") if data else ""
            except (httpx.HTTPError, OSError, ValueError, AttributeError):
                self.model = ""  # servers without /v1/models take requests without "model"
        prompt = self.job.prompts[0]
        for _ in range(len(OPTIONAL) + 1):
            try:
                g = await self._stream(self._body(prompt, max_tokens=2))
                self.level = g.level
                return
            except RequestFailed as e:
                named = [f for f in OPTIONAL if f in str(e) and f not in self.dropped]
                if e.status in (400, 422) and named:
                    self.dropped |= {named[0]}
                    continue
                why = (self._diagnose() or str(e)) if e.vague else str(e)
                raise RuntimeError(f"probe request to {self.url}: {why}") from None
        raise RuntimeError(f"endpoint {self.url} refuses every probe request")

    def _diagnose(self) -> str:
        """The cause of a connection failure that the async stack lost (anyio drops the TLS alert of a server that
        wants a client certificate): one plain request to the health path shows it."""
        import httpx

        try:
            with httpx.Client(**client_kwargs(self.ep, timeout_s=10.0)) as c:
                c.get(self.ep.base_url + self.ep.health_path)
        except httpx.HTTPError as e:
            return connection_error(e, self.ep.base_url)
        return ""

    async def _batch(self, prompts: list[dict[str, Any]]) -> list[Generated]:
        # Tasks start in creation order, so requests go out in batch order; the server decides the rest.
        tasks = [asyncio.ensure_future(self._one(p)) for p in prompts]
        return list(await asyncio.gather(*tasks))

    async def _one(self, prompt: dict[str, Any]) -> Generated:
        body = self._body(prompt)
        if err := size_error(prompt, body, self.ep.max_body_bytes):
            return generated([], [], [], "error", {}, error=err + "; not sent")
        errors: list[str] = []
        for attempt in range(self.ep.retries + 1):
            try:
                g = await self._stream(body)
                g.extra = {"attempts": attempt + 1, **({"retried_after": errors} if errors else {})}
                return g
            except RequestFailed as e:
                errors.append(str(e))
                if not e.retry or attempt == self.ep.retries:
                    break
                await asyncio.sleep(self.ep.backoff_s * 2**attempt)
        why = errors[-1] + (f" (after {len(errors)} attempts: {'; '.join(errors[:-1])})" if len(errors) > 1 else "")
        return generated([], [], [], "error", {}, error=why, extra={"attempts": len(errors)})

    async def _stream(self, body: dict[str, Any]) -> Generated:
        import httpx

        pieces: list[str] = []
        times: list[float] = []
        steps: list[Step] = []
        usage: dict[str, Any] = {}
        finish, done = "", False
        t0 = time.perf_counter()
        try:
            async with self.client.stream(
                "POST", self.url, content=encode(body), headers={"Content-Type": "application/json"}
            ) as r:
                if r.status_code >= 400:
                    msg = _http_error(r.status_code, await r.aread(), r.headers.get("server", ""))
                    raise RequestFailed(msg, retry=r.status_code in RETRY_STATUS, status=r.status_code)
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    try:
                        chunk = json.loads(data)
                    except json.JSONDecodeError:
                        raise RequestFailed(f"malformed JSON in the event stream: {data[:80]!r}", retry=True) from None
                    if not isinstance(chunk, dict):
                        raise RequestFailed(f"unexpected event in the stream: {data[:80]!r}", retry=True)
                    if chunk.get("error"):
                        raise RequestFailed(f"server error in the stream: {_error_message(data.encode())}", retry=True)
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        piece = _piece(choice, self.ep.api)
                        if piece:
                            times.append(time.perf_counter() - t0)
                            pieces.append(piece)
                        steps += _steps(choice, self.ep.api)
                        finish = choice.get("finish_reason") or finish
        except httpx.TimeoutException as e:
            raise RequestFailed(
                f"timed out ({type(e).__name__}, endpoint.request_timeout_s = {self.ep.request_timeout_s:g})",
                retry=True,
            ) from None
        except (httpx.TransportError, OSError) as e:  # OSError: a TLS alert anyio lets through unwrapped
            why = connection_error(e, self.ep.base_url)
            raise RequestFailed(
                why or f"connection failed ({type(e).__name__}: {str(e) or 'closed by the server'})",
                retry=True,
                vague=not why,
            ) from None
        if not (done or finish):
            raise RequestFailed(
                "the stream ended before the response was complete (no finish_reason, no [DONE])", retry=True
            )
        if steps and len(steps) < len(pieces):
            steps = []  # logprobs for only part of the output: compare the text rather than half the steps
        return generated(pieces, times, steps, finish or "stop", usage)

    async def _oversize(self) -> dict[str, Any]:
        import httpx

        base = encode(self._body({"id": "oversize", "text": ""}, max_tokens=1, stream=False))
        filler = "a " * ((self.ep.max_body_bytes - len(base)) // 2 + 512)
        content = encode(self._body({"id": "oversize", "text": filler}, max_tokens=1, stream=False))
        out = {"sent_bytes": len(content), "limit_bytes": self.ep.max_body_bytes}
        try:
            r = await self.client.post(self.url, content=content, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as e:
            return {
                **out,
                "status": 0,
                "passed": False,
                "message": f"the server failed instead of rejecting it: {type(e).__name__}: {str(e) or 'connection closed'}",
            }
        msg = _error_message(r.content)
        ok = 400 <= r.status_code < 500
        return {
            **out,
            "status": r.status_code,
            "passed": ok,
            "message": msg if ok else f"expected a 4xx rejection, got HTTP {r.status_code}: {msg[:120]}",
        }
