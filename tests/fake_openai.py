"""A small real OpenAI-compatible HTTP server that misbehaves on request, for the faults `transformers serve`
cannot produce on demand: 5xx, reset connections, malformed JSON, hangs, a body-size limit, auth, TLS.

Output is a deterministic function of the prompt (its words reversed), streamed one token per event, with
logprobs when started with --logprobs. A prompt containing FAULT:<kind> (optionally xN: only the first N
requests with that prompt) triggers: 500, 400, reset, badjson, hang.

    python tests/fake_openai.py --port P | --config FILE.json [--logprobs] [--key-env NAME] [--echo-auth] [--max-body BYTES]
                                [--certfile F --keyfile F [--client-ca F]]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN: Counter = Counter()
LOCK = threading.Lock()


def tokens_for(text: str, n: int) -> list[str]:
    words = text.split()[::-1] or ["empty"]
    return [(" " if i else "") + words[i % len(words)] for i in range(n)]


class Handler(BaseHTTPRequestHandler):
    args: argparse.Namespace

    def log_message(self, fmt, *a):  # like uvicorn: one line per request on stderr
        print(f"{self.address_string()} - {fmt % a}", file=sys.stderr, flush=True)

    def _json(self, code: int, obj: dict) -> None:
        raw = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _authorised(self) -> bool:
        got = self.headers.get("Authorization", "")
        if self.args.echo_auth:  # a careless server that logs credentials: the harness must not keep them
            print(f"auth header: {got}", file=sys.stderr, flush=True)
        if self.args.key_env and got != f"Bearer {os.environ[self.args.key_env]}":
            self._json(401, {"error": {"message": "invalid API key"}})
            return False
        return True

    def do_GET(self):
        if self.path == "/health":
            return self._json(200, {"status": "ok"})
        if self.path == "/v1/models":
            return self._json(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        if self.args.max_body and not 0 < n <= self.args.max_body:
            self.rfile.read(n)  # drained, so the client reads the answer rather than a reset
            self._json(413, {"error": {"message": f"Message len not in (0, {self.args.max_body}]"}})
            self.close_connection = True
            return
        body = json.loads(self.rfile.read(n))
        if not self._authorised():
            return
        chat = self.path == "/v1/chat/completions"
        text = body["messages"][-1]["content"] if chat else body["prompt"]
        if isinstance(
            text, list
        ):  # content parts: the text, then each attachment's decoded size (proves the round trip)
            sizes = [
                len(
                    base64.b64decode(
                        p.get("input_audio", {}).get("data")
                        or next(v["url"] for k, v in p.items() if k.endswith("_url")).split(",", 1)[1]
                    )
                )
                for p in text
                if p["type"] != "text"
            ]
            text = " ".join([p["text"] for p in text if p["type"] == "text"] + [f"media{n}" for n in sizes])
        fault = re.search(r"FAULT:(\w+?)(?:x(\d+))?\b", text)
        if fault:
            with LOCK:
                SEEN[text] += 1
                count = SEEN[text]
            kind, times = fault.group(1), int(fault.group(2) or 10**9)
            if count <= times:
                return self._fault(kind)
        toks = tokens_for(text, body.get("max_tokens", 16))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i, tok in enumerate(toks):
            choice = {"index": 0, "finish_reason": "length" if i == len(toks) - 1 else None}
            lp = -0.1 * (i % 7)
            top = [{"token": tok, "logprob": lp}, {"token": " other", "logprob": lp - 1.5}]
            if chat:
                choice["delta"] = {"content": tok}
                if self.args.logprobs:
                    choice["logprobs"] = {"content": [{"token": tok, "logprob": lp, "top_logprobs": top}]}
            else:
                choice["text"] = tok
                if self.args.logprobs:
                    choice["logprobs"] = {
                        "tokens": [tok],
                        "token_logprobs": [lp],
                        "top_logprobs": [{t["token"]: t["logprob"] for t in top}],
                    }
            self._event({"choices": [choice]})
            time.sleep(0.002)
        self._event({"choices": [], "usage": {"prompt_tokens": len(text.split()), "completion_tokens": len(toks)}})
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, obj: dict) -> None:
        self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
        self.wfile.flush()

    def _fault(self, kind: str) -> None:
        if kind == "500":
            return self._json(500, {"error": {"message": "internal error: out of KV cache blocks"}})
        if kind == "400":
            return self._json(400, {"error": {"message": "prompt rejected by policy"}})
        if kind == "hang":
            time.sleep(30)
            return
        if kind == "badjson":
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b'data: {"choices": [{"delta": {"content": "half\n\n')
            self.wfile.flush()
            self.close_connection = True
            return
        if kind == "reset":  # RST instead of FIN: the client sees "connection reset by peer"
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        raise ValueError(f"unknown fault {kind}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--config", help='a JSON file such as MindIE takes: {"ServerConfig": {"ipAddress": ..., "port": ...}}'
    )
    p.add_argument("--logprobs", action="store_true")
    p.add_argument("--key-env", default="")
    p.add_argument("--echo-auth", action="store_true")
    p.add_argument("--max-body", type=int, default=4194304, help="0: no limit")
    p.add_argument("--certfile")
    p.add_argument("--keyfile")
    p.add_argument("--client-ca", help="require a client certificate signed by this CA (mutual TLS)")
    args = p.parse_args()
    if args.config:
        with open(args.config, encoding="utf-8") as f:
            conf = json.load(f)
        conf = conf.get("ServerConfig", conf)  # MindIE's layout, or a flat one
        args.host, args.port = conf.get("ipAddress", args.host), conf["port"]
    if args.port is None:
        p.error("give --port or --config")
    Handler.args = args
    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True
    if args.certfile:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.certfile, args.keyfile)
        if args.client_ca:
            ctx.load_verify_locations(args.client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    flags = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("HCCL_", "ATB_", "LCCL_")))
    print(
        f"fake server on {args.host}:{args.port}; determinism flags: {flags or 'none'}; python {sys.executable}",
        file=sys.stderr,
        flush=True,
    )
    httpd.serve_forever()


if __name__ == "__main__":
    main()
