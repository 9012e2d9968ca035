"""``assay serve``: any local model (a trained checkpoint included) behind the OpenAI HTTP API.

Why: the OpenAI-compatible API is the lingua franca of samplers, judges and teachers. Serving our
own HF backend through it means the OpenAI client backend (``assay.generate.openai_api``) is
tested against a real HTTP server on loopback, and a user can put a fine-tuned checkpoint to work
as a judge or a teacher for any tool that speaks the API.

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions``, ``POST /v1/completions`` (no
streaming). Requests that arrive together are decoded together: a batching thread drains the
queue and runs them through one continuous batcher, grouped by decoding settings. ``seed``
makes a request reproducible (sample i of a request uses seed + i). It binds to 127.0.0.1 by
default and has no authentication: do not expose it.
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

from .config import opt
from .models import DEFAULT_MODEL


@dataclass
class ServeConfig:
    model: str = opt(DEFAULT_MODEL, help="model spec to serve (embedded name, checkpoint folder, hub id)")
    name: str = opt("", help="model name the API reports and accepts (default: the spec)")
    host: str = opt("127.0.0.1", help="bind address (loopback by default; there is no authentication)")
    port: int = opt(8000, help="port; 0 picks a free one (printed on start)")
    max_batch: int = opt(32, help="rows decoded together")
    dtype: str = opt("float32", help="model dtype")
    device: str = opt("cpu", help="torch device")
    max_tokens_limit: int = opt(4096, help="refuse requests asking for more new tokens than this")
    trust_remote_code: bool = opt(False, help="allow custom model code from the model folder (off by default)")


class BadRequest(Exception):
    pass


@dataclass
class _Job:
    group_id: str
    messages: Optional[list]
    prompt: Optional[str]
    n: int
    seed: int
    decoding: object
    future: Future


class Batcher:
    """One thread owns the model; HTTP threads hand it jobs and wait on futures."""

    def __init__(self, generator):
        self.generator = generator
        self.jobs: "queue.Queue[_Job]" = queue.Queue()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def submit(self, job: _Job) -> None:
        self.jobs.put(job)

    def _loop(self) -> None:
        from .generate.base import PromptGroup

        while True:
            first = self.jobs.get()
            batch = [first]
            while True:
                try:
                    batch.append(self.jobs.get_nowait())
                except queue.Empty:
                    break
            by_decoding: dict = {}
            for j in batch:
                by_decoding.setdefault(j.decoding, []).append(j)
            for decoding, jobs in by_decoding.items():
                results: dict[str, list] = {j.group_id: [] for j in jobs}
                groups = [PromptGroup(j.group_id, j.messages, [(i, j.seed + i) for i in range(j.n)], prompt=j.prompt)
                          for j in jobs]
                try:
                    for g in self.generator.generate(groups, decoding):
                        results[g.problem_id].append(g)
                    for j in jobs:
                        j.future.set_result(sorted(results[j.group_id], key=lambda g: g.sample_index))
                except Exception as exc:  # the request fails, the server stays up
                    for j in jobs:
                        if not j.future.done():
                            j.future.set_exception(exc)


def _decoding(body: dict, limit: int):
    from .generate.base import Decoding

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", 256))
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= limit:
        raise BadRequest(f"max_tokens must be an integer in 1..{limit}")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("stop must be a string or a list of strings")
    try:
        temperature = float(body.get("temperature", 1.0))
        top_p = float(body.get("top_p", 1.0))
    except (TypeError, ValueError):
        raise BadRequest("temperature and top_p must be numbers") from None
    return Decoding(temperature, top_p, max_tokens, tuple(stop))


def make_handler(batcher: Batcher, name: str, limit: int):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):  # requests are not logged: they may carry keys and data
            return

        def _send(self, code: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, msg: str) -> None:
            self._send(code, {"error": {"message": msg, "type": "invalid_request_error" if code == 400 else "server_error"}})

        def do_GET(self):
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "assay"}]})
            else:
                self._error(404, f"no route {self.path}")

        def do_POST(self):
            route = self.path.rstrip("/")
            if route not in ("/v1/chat/completions", "/v1/completions"):
                return self._error(404, f"no route {self.path}")
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                if body.get("stream"):
                    raise BadRequest("stream=true is not supported")
                if body.get("model") not in (None, name):
                    raise BadRequest(f"model '{body.get('model')}' is not served here (this server has '{name}')")
                n = body.get("n", 1)
                if not isinstance(n, int) or not 1 <= n <= 128:
                    raise BadRequest("n must be an integer in 1..128")
                seed = body.get("seed")
                seed = random.randrange(2**62) if seed is None else int(seed)
                decoding = _decoding(body, limit)
                chat = route.endswith("chat/completions")
                if chat:
                    msgs = body.get("messages")
                    if not isinstance(msgs, list) or not msgs or not all(
                            isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") for m in msgs):
                        raise BadRequest("messages must be a non-empty list of {role, content} objects")
                    job = _Job(uuid.uuid4().hex, [{"role": m["role"], "content": m["content"]} for m in msgs], None,
                               n, seed, decoding, Future())
                else:
                    prompt = body.get("prompt")
                    if not isinstance(prompt, str):
                        raise BadRequest("prompt must be a string")
                    job = _Job(uuid.uuid4().hex, None, prompt, n, seed, decoding, Future())
            except (BadRequest, ValueError) as exc:
                return self._error(400, str(exc))
            batcher.submit(job)
            try:
                outs = job.future.result()
            except Exception as exc:
                return self._error(500, f"generation failed: {type(exc).__name__}: {exc}")
            prompt_tokens = outs[0].prompt_tokens if outs else 0
            completion_tokens = sum(o.completion_tokens for o in outs)
            if chat:
                choices = [{"index": o.sample_index, "message": {"role": "assistant", "content": o.text},
                            "finish_reason": o.finish_reason} for o in outs]
            else:
                choices = [{"index": o.sample_index, "text": o.text, "finish_reason": o.finish_reason} for o in outs]
            self._send(200, {"id": f"assay-{job.group_id}", "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": name, "choices": choices,
                             "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                       "total_tokens": prompt_tokens + completion_tokens},
                             "assay": {"flops": sum(o.flops for o in outs), "seed": seed}})

    return Handler


def make_server(cfg: ServeConfig, generator=None) -> ThreadingHTTPServer:
    if generator is None:
        from .generate.hf import HFGenerator

        generator = HFGenerator(cfg.model, dtype=cfg.dtype, device=cfg.device, max_batch=cfg.max_batch,
                                trust_remote_code=cfg.trust_remote_code)
    server = ThreadingHTTPServer((cfg.host, cfg.port), make_handler(Batcher(generator), cfg.name or cfg.model,
                                                                     cfg.max_tokens_limit))
    server.daemon_threads = True
    return server


def cli_run(cfg: ServeConfig) -> int:
    server = make_server(cfg)
    host, port = server.server_address[:2]
    print(f"[assay] serving {cfg.name or cfg.model} at http://{host}:{port}/v1 (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
