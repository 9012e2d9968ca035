"""``assay serve``: any local model (a trained checkpoint included) behind the OpenAI HTTP API.

Why: the OpenAI-compatible API is the lingua franca of samplers, judges and teachers. Serving our
own HF backend through it means the OpenAI client backend (``assay.sampling.openai_api``) is
tested against a real HTTP server on loopback, and a user can put a fine-tuned checkpoint to work
as a judge or a teacher for any tool that speaks the API (the official ``openai`` client included).

Endpoints: ``GET /v1/models[/NAME]``, ``POST /v1/chat/completions``, ``POST /v1/completions``, with
``stream: true`` as server-sent events. Requests that arrive together are decoded together: a
batching thread drains the queue and runs them through one continuous batcher, grouped by
decoding settings. ``seed`` makes a request reproducible (sample i of a request uses seed + i).

Robustness: every field is checked before a request can join a batch (``assay.sampling.serve_requests``),
and if a batch fails anyway each of its requests is rerun alone, so one bad request fails alone.
Bodies are bounded (413), a stalled client is cut off after ``io_timeout_s``, and errors come back
as OpenAI error bodies. Streaming sends each choice when it finishes (the engine yields whole
completions), then its finish_reason, then ``data: [DONE]``.

Security: it binds to 127.0.0.1 by default. Any other address needs an API key (``--api-key-env
VAR``, or ``--api-key``, which ``ps`` shows), checked as a Bearer token in constant time, and the
server refuses to start without one. The key is never printed or logged; requests are not logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import queue
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
from urllib.parse import unquote, urlsplit

from assay.core.checks import at_least, fail, keyed, one_of
from assay.core.config import opt
from assay.core.hardware import DTYPES
from assay.core.io import InputError
from assay.models import DEFAULT_MODEL, check_model
from assay.sampling.backends import check_backend, make_generator, options_of
from assay.sampling.base import PromptGroup
from assay.sampling.serve_requests import (
    ParsedRequest,
    RequestError,
    chunk,
    completion_body,
    error_body,
    finish_reason,
    no_constants,
    parse_request,
    usage,
)


@dataclass
class ServeConfig:
    model: str = opt(DEFAULT_MODEL, help="model spec to serve (embedded name, checkpoint folder, hub id)")
    name: str = opt("", help="model name the API reports and accepts (default: the spec)")
    host: str = opt("127.0.0.1", help="bind address; anything but loopback requires an API key")
    port: int = opt(8000, help="port; 0 picks a free one (printed on start)")
    backend: str = opt("hf", help="generation backend behind the API (openai: relay another server)")
    max_batch: int = opt(32, help="rows decoded together")
    dtype: str = opt("auto", help="model dtype (auto: bfloat16 where the hardware multiplies it, else float32)")
    device: str = opt("cpu", help="torch device")
    backend_options: dict = opt({}, help="the backend's own options (see `assay sample --help`), e.g. refill_fraction=0.25")
    max_tokens_limit: int = opt(4096, help="refuse requests asking for more new tokens than this")
    trust_remote_code: bool = opt(False, help="allow custom model code from the model folder (off by default)")
    api_key_env: str = opt("", help="environment variable holding the API key clients must send as a Bearer token")
    api_key: str = opt("", help="the API key itself (visible in `ps`: prefer --api-key-env)", repr=False)
    max_request_bytes: int = opt(4_000_000, help="refuse request bodies larger than this (HTTP 413)")
    io_timeout_s: float = opt(30.0, help="close a connection whose client stalls this long mid-request")


# -- exposure and authentication ---------------------------------------------------------------
def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False  # "", "0.0.0.0"-like names, or a hostname that may resolve to anything


def resolve_api_key(cfg: ServeConfig) -> str:
    """The key clients must present ("" for none); raises InputError on a bad setting."""
    if cfg.api_key and cfg.api_key_env:
        raise InputError("serve: give --api-key-env or --api-key, not both")
    key = cfg.api_key
    if cfg.api_key_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", cfg.api_key_env):
            raise InputError("serve: --api-key-env must name an environment variable (put the key in the variable)")
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise InputError(f"serve: ${cfg.api_key_env} is not set or is empty")
    if key and not re.fullmatch(r"[\x21-\x7e]+", key):
        raise InputError("serve: the API key must be printable ASCII without spaces (it travels in an HTTP header)")
    return key


def check_config(cfg: ServeConfig) -> str:
    """Validate a config before anything is loaded or bound; returns the API key ("" for none)."""
    if not 0 <= cfg.port <= 65535:
        raise InputError(f"serve: port {cfg.port} is not in 0..65535")
    for name in ("max_batch", "max_tokens_limit", "max_request_bytes"):
        if getattr(cfg, name) < 1:
            raise InputError(f"serve: {name} must be at least 1, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.io_timeout_s) and cfg.io_timeout_s > 0):
        raise InputError(f"serve: io_timeout_s must be a positive number of seconds, got {cfg.io_timeout_s}")
    key = resolve_api_key(cfg)
    if not is_loopback(cfg.host) and not key:
        raise InputError(f"serve: --host {cfg.host or '(all interfaces)'} is reachable from other machines and this "
                         "server would have no authentication; set --api-key-env VAR (the key in $VAR) to require "
                         "a Bearer key, or bind 127.0.0.1")
    return key


# -- batching ----------------------------------------------------------------------------------
@dataclass
class _Job:
    id: str
    req: ParsedRequest
    events: "queue.Queue[tuple]" = field(default_factory=queue.Queue)
    """("ready", prompt_tokens or None), ("choice", Generated) per choice, ("done",); or ("error", RequestError)."""
    delivered: set = field(default_factory=set)
    finished: bool = False
    cancelled: bool = False

    def fail(self, err: RequestError) -> None:
        if not self.finished:
            self.finished = True
            self.events.put(("error", err))

    def deliver(self, g) -> None:
        if self.finished or g.sample_index in self.delivered:
            return
        self.delivered.add(g.sample_index)
        self.events.put(("choice", g))
        if len(self.delivered) == self.req.n:
            self.finished = True
            self.events.put(("done",))


class Batcher:
    """One thread owns the model; HTTP threads hand it jobs and read their events."""

    def __init__(self, generator):
        self.generator = generator
        conf = getattr(getattr(generator, "model", None), "config", None)
        self.context = getattr(conf, "max_position_embeddings", None) or getattr(conf, "n_positions", None)
        self.jobs: "queue.Queue[_Job]" = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def submit(self, job: _Job) -> None:
        self.jobs.put(job)

    def _loop(self) -> None:
        while True:
            batch = [self.jobs.get()]
            while True:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            try:
                by_decoding: dict = {}
                for j in batch:
                    if self._prepare(j):
                        by_decoding.setdefault(j.req.decoding, []).append(j)
                for decoding, jobs in by_decoding.items():
                    self._run(jobs, decoding)
            except Exception as exc:  # the thread must live on: without it every later request would hang
                for j in batch:
                    j.fail(RequestError(f"server error: {type(exc).__name__}: {exc}", status=500))

    def _prepare(self, job: _Job) -> bool:
        """Render and measure the prompt alone, so a prompt the model cannot take fails only its request."""

        render = getattr(self.generator, "_prompt_ids", None)  # the HF backend's own prompt rendering
        n_prompt = None
        if render is not None:
            param = "messages" if job.req.chat else "prompt"
            try:
                n_prompt = len(render(PromptGroup(job.id, job.req.messages or [], [], prompt=job.req.prompt)))
            except Exception as exc:
                job.fail(RequestError(f"the prompt cannot be rendered for this model: {type(exc).__name__}: {exc}",
                                      param))
                return False
            if n_prompt == 0:
                job.fail(RequestError("the prompt is empty after tokenization", param))
                return False
            want = n_prompt + job.req.decoding.max_new_tokens
            if self.context and want > self.context:
                job.fail(RequestError(f"This model's maximum context length is {self.context} tokens, but "
                                      f"{want} were requested ({n_prompt} in the prompt, "
                                      f"{job.req.decoding.max_new_tokens} in max_tokens)", param,
                                      "context_length_exceeded"))
                return False
        job.events.put(("ready", n_prompt))
        return True

    def _run(self, jobs: list, decoding) -> None:
        live = [j for j in jobs if not j.finished and not j.cancelled]
        if not live:
            return
        by_id = {j.id: j for j in live}
        groups = [PromptGroup(j.id, j.req.messages, [(i, j.req.seed + i) for i in range(j.req.n)
                                                     if i not in j.delivered], prompt=j.req.prompt) for j in live]
        try:
            for g in self.generator.generate(groups, decoding):
                if g.problem_id in by_id:
                    by_id[g.problem_id].deliver(g)
                if all(j.finished or j.cancelled for j in live):
                    break
        except Exception as exc:
            if len(live) > 1:
                # Alone, only the request that breaks the engine fails; the others finish (choices
                # already sent are not redone: their seeds make the rest the same draws).
                for j in live:
                    self._run([j], decoding)
                return
            live[0].fail(RequestError(f"generation failed: {type(exc).__name__}: {exc}", status=500))
            return
        for j in live:
            if not j.cancelled:
                j.fail(RequestError("generation ended before every choice was produced", status=500))


# -- HTTP --------------------------------------------------------------------------------------
def make_handler(batcher: Batcher, name: str, cfg: ServeConfig, api_key: str = ""):
    key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
    routes = {"/v1/chat/completions": True, "/v1/completions": False}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = cfg.io_timeout_s  # a client that stalls mid-request frees its thread after this

        def log_message(self, fmt, *args):  # requests are not logged: they may carry keys and data
            return

        def _send(self, code: int, obj: dict, headers: Optional[dict] = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            if self.close_connection or not getattr(self, "_body_read", True):
                # Unread body bytes would be parsed as the next request: close instead.
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def _fail(self, err: RequestError, headers: Optional[dict] = None) -> None:
            type_ = "server_error" if err.status >= 500 else "invalid_request_error"
            self._send(err.status, error_body(err.message, type_, err.param, err.code), headers)

        def _authorized(self) -> bool:
            if key_digest is None:
                return True
            got = self.headers.get("Authorization", "")
            scheme, _, token = got.strip().partition(" ")
            # Digests of equal length: compare_digest then leaks neither the key nor its length.
            ok = scheme.lower() == "bearer" and hmac.compare_digest(
                hashlib.sha256(token.strip().encode("utf-8", "replace")).digest(), key_digest)
            if not ok:
                msg = "Incorrect API key provided" if got else "Missing API key: send 'Authorization: Bearer KEY'"
                self.close_connection = True
                self._fail(RequestError(msg, None, "invalid_api_key", 401), {"WWW-Authenticate": "Bearer"})
            return ok

        def do_GET(self):
            self._body_read = True
            path = urlsplit(self.path).path.rstrip("/")
            if not path.startswith("/v1/"):
                return self._fail(RequestError(f"no route {path}", None, "not_found", 404))
            if not self._authorized():
                return
            card = {"id": name, "object": "model", "created": 0, "owned_by": "assay"}
            if path == "/v1/models":
                return self._send(200, {"object": "list", "data": [card]})
            if path.startswith("/v1/models/"):
                if unquote(path[len("/v1/models/"):]) == name:
                    return self._send(200, card)
                return self._fail(RequestError(f"The model '{path[11:][:80]}' does not exist", None,
                                               "model_not_found", 404))
            return self._fail(RequestError(f"no route {path}", None, "not_found", 404))

        def do_POST(self):
            self._body_read = False
            path = urlsplit(self.path).path.rstrip("/")
            if path not in routes:
                return self._fail(RequestError(f"no route {path}", None, "not_found", 404))
            if not self._authorized():
                return
            try:
                req = parse_request(self._body(), routes[path], name, cfg.max_tokens_limit)
            except RequestError as err:
                return self._fail(err)
            job = _Job(uuid.uuid4().hex, req)
            batcher.submit(job)
            first = job.events.get()
            if first[0] == "error":
                return self._fail(first[1])
            rid = f"{'chatcmpl' if req.chat else 'cmpl'}-{job.id}"
            if req.stream:
                return self._stream(job, rid, first[1])
            outs = []
            while True:
                ev = job.events.get()
                if ev[0] == "error":
                    return self._fail(ev[1])
                if ev[0] == "done":
                    break
                outs.append(ev[1])
            outs.sort(key=lambda o: o.sample_index)
            n_prompt = first[1] if first[1] is not None else outs[0].prompt_tokens
            self._send(200, completion_body(req, rid, name, outs, n_prompt))

        def _body(self) -> dict:
            if self.headers.get("Transfer-Encoding"):
                raise RequestError("chunked request bodies are not supported: send Content-Length", status=411)
            values = self.headers.get_all("Content-Length") or []
            if not values:
                raise RequestError("Content-Length is required", status=411)
            if len(set(v.strip() for v in values)) != 1 or not re.fullmatch(r"[0-9]{1,15}", values[0].strip()):
                raise RequestError("Content-Length must be one non-negative integer")
            length = int(values[0])
            if length > cfg.max_request_bytes:
                raise RequestError(f"the request body ({length} bytes) is over this server's limit of "
                                   f"{cfg.max_request_bytes} bytes", None, "request_too_large", 413)
            raw = self.rfile.read(length)
            if len(raw) < length:
                raise RequestError("the request body ended before Content-Length bytes arrived")
            self._body_read = True
            try:
                body = json.loads(raw.decode("utf-8"), parse_constant=no_constants) if raw else None
            except (UnicodeDecodeError, ValueError, RecursionError) as exc:
                raise RequestError(f"the body is not valid JSON: {str(exc)[:200]}") from None
            if not isinstance(body, dict):
                raise RequestError("the body must be a JSON object")
            return body

        def _event(self, obj) -> None:
            data = b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        def _stream(self, job: _Job, rid: str, n_prompt: Optional[int]) -> None:
            req, created = job.req, int(time.time())
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            outs = []
            try:
                if req.chat:
                    for i in range(req.n):
                        self._event(chunk(req, rid, name, created, i, role=True))
                while True:
                    ev = job.events.get()
                    if ev[0] == "error":
                        err = ev[1]
                        self._event(error_body(err.message, "server_error" if err.status >= 500
                                               else "invalid_request_error", err.param, err.code))
                        break
                    if ev[0] == "done":
                        if req.include_usage:
                            n_p = n_prompt if n_prompt is not None else outs[0].prompt_tokens
                            self._event(chunk(req, rid, name, created,
                                              usage_=usage(n_p, sum(o.completion_tokens for o in outs))))
                        break
                    o = ev[1]
                    outs.append(o)
                    if o.text:
                        self._event(chunk(req, rid, name, created, o.sample_index, text=o.text))
                    reason = finish_reason(o.finish_reason, o.completion_tokens, req.decoding.max_new_tokens)
                    self._event(chunk(req, rid, name, created, o.sample_index, reason=reason))
                self._event(b"[DONE]")
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                job.cancelled = True  # the client left: the batcher stops once no one waits
                self.close_connection = True

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck client must not keep the process alive


def make_server(cfg: ServeConfig, generator=None) -> ThreadingHTTPServer:
    """Check the config, load the model (unless given a generator) and bind; raises InputError."""
    api_key = check_config(cfg)
    if generator is None:
        generator = make_generator(cfg.backend, cfg.model, options_of(cfg))
    host = cfg.host.strip().strip("[]")
    server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6}) if ":" in host else _Server
    handler = make_handler(Batcher(generator), cfg.name or cfg.model, cfg, api_key)
    try:
        return server_cls((host, cfg.port), handler)
    except OSError as exc:
        raise InputError(f"serve: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from None


def cli_run(cfg: ServeConfig) -> int:
    server = make_server(cfg)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in host else host
    auth = "; clients must send 'Authorization: Bearer <key>'" if resolve_api_key(cfg) else ""
    print(f"[assay] serving {cfg.name or cfg.model} at http://{shown}:{port}/v1{auth} (Ctrl-C to stop)", flush=True)
    if not is_loopback(cfg.host):
        print(f"[assay] warning: listening on {cfg.host or 'all interfaces'}, reachable from other machines; "
              "traffic is plain HTTP (the key included), so put a TLS proxy in front on untrusted networks",
              file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("[assay] serve: stopped", flush=True)
    finally:
        server.server_close()
    return 0


def check(c: ServeConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    one_of(k("dtype"), c.dtype, DTYPES, "dtype")
    if not 0 <= c.port <= 65535:
        raise fail(k("port"), f"must be 0..65535, got {c.port}")
    at_least(k("max_batch"), c.max_batch, 1)
    check_backend(k, c)
    if c.backend == "hf":
        check_model(k("model"), c.model)
