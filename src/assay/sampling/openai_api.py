"""The OpenAI-compatible client backend: sampling, judging and teachers behind any such server.

vLLM, SGLang, llama.cpp, hosted APIs and ``assay serve`` all speak this API, so one client covers
them. It sends one request per sample (n=1 with the sample's own seed, so a sample does not
depend on its batch-mates, as in the local backend), runs up to ``concurrency`` requests at once,
retries 429/5xx and connection errors with exponential backoff and jitter, and keeps a request
cache on disk: a rerun with the same payloads is answered from the cache without a request.

The API key is read from the environment (``$OPENAI_API_KEY`` by default) and is never printed,
logged, cached or written to a config: the cache key is the redacted URL and the payload only.
Credentials inside the URL (``http://user:pass@host/v1`` is sent as HTTP Basic auth, a query such
as ``?api_key=...`` is kept on every request) are used for requests and masked everywhere the URL
is shown (``assay.core.redact``).
FLOPs: the server's model size is unknown to the client; pass ``n_params`` to charge
2 x n_params x tokens per sample (the prompt split among the group's samples), otherwise 0.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence
from urllib.parse import unquote, urlsplit, urlunsplit

from assay.core.io import InputError, open_resumable
from assay.core.redact import MASK, redact_text, redact_url, url_secrets
from assay.sampling.base import Decoding, Generated, PromptGroup

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class APIError(RuntimeError):
    pass


@dataclass
class CachedResponse:
    key: str
    response: dict

    kind = "api_cache"


class OpenAIGenerator:
    def __init__(self, model: str, base_url: str = "", concurrency: int = 8, max_retries: int = 5,
                 backoff_s: float = 0.5, timeout_s: float = 600.0, cache: Optional[str] = None,
                 n_params: Optional[float] = None, api_key_env: str = "OPENAI_API_KEY", chat: bool = True,
                 *, api_key: Optional[str] = None, render: Optional[Callable[[PromptGroup], list[int]]] = None,
                 flops: Optional[Callable[[int, int, int], float]] = None, context: Optional[int] = None):
        """``api_key``, ``render``, ``flops`` and ``context`` are for backends built on this client (the
        managed vLLM server): a key held in memory instead of an environment variable, prompts sent as
        token ids rendered by the caller (completions API), FLOPs counted from (prompt tokens,
        completion tokens, samples sharing the prompt) by the caller's formula instead of 2 x n_params
        x tokens, and the server's context length: a rendered prompt whose tokens plus the completion
        limit exceed it is refused here, since vLLM would silently shorten the completion to fit."""
        self.model_name = model
        self.context = context
        real = (base_url or os.environ.get("OPENAI_BASE_URL", "")).strip()
        if not real:
            raise InputError("openai backend: no server URL (pass base_url / --base-url or set OPENAI_BASE_URL)")
        self._base, self._basic_auth = _split_base_url(real)
        # Shown and hashed (cache key) without credentials; requests use self._base.
        self.base_url = redact_url(real).rstrip("/")
        self._url_secrets = url_secrets(real)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env or ""):
            raise InputError("openai backend: api_key_env must be the name of an environment variable "
                             "(the key goes in that variable, never on the command line)")
        self.concurrency, self.max_retries, self.backoff_s = max(1, concurrency), max_retries, backoff_s
        self.timeout_s, self.n_params, self.chat = timeout_s, n_params, chat
        self._api_key_env = api_key_env
        self._api_key, self._render, self._flops = api_key, render, flops
        self.cache_path = cache
        self.requests_sent = 0
        self._lock = threading.Lock()

    # -- HTTP -------------------------------------------------------------------------------------
    def _url(self, route: str) -> str:
        scheme, netloc, path, query = self._base
        return urlunsplit((scheme, netloc, f"{path.rstrip('/')}/{route}", query, ""))

    def _headers(self) -> tuple[dict, list[str]]:
        """Request headers, and the secret strings that must never appear in a message."""
        headers = {"Content-Type": "application/json"}
        key = self._api_key or os.environ.get(self._api_key_env)
        secrets = list(self._url_secrets)
        if key:
            if not re.fullmatch(r"[\x21-\x7e]+", key):
                raise InputError(f"${self._api_key_env} holds characters that cannot go in an HTTP header "
                                 "(spaces, newlines or non-ASCII)")
            headers["Authorization"] = f"Bearer {key}"
            secrets.append(key)
        elif self._basic_auth:
            headers["Authorization"] = f"Basic {self._basic_auth}"
        return headers, secrets

    def _shown(self, text: str, secrets: Sequence[str]) -> str:
        """``text`` fit for a message: URLs redacted, the key masked even if a server echoed it."""
        for s in secrets:
            if len(s) >= 4:  # masking a 1-3 character key would garble every message
                text = text.replace(s, MASK)
        return redact_text(text)

    def _post(self, route: str, payload: dict) -> dict:
        url = self._url(route)
        headers, secrets = self._headers()
        shown_url = f"{self.base_url}/{route}"
        data = json.dumps(payload).encode()
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                with self._lock:
                    self.requests_sent += 1
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except ValueError:
                    raise APIError(f"non-JSON response from {shown_url}: "
                                   f"{self._shown(raw[:200].decode('utf-8', 'replace'), secrets)}") from None
            except urllib.error.HTTPError as exc:
                body = exc.read()[:300].decode("utf-8", "replace")
                last = f"HTTP {exc.code} from {shown_url}: {self._shown(body, secrets)}"
                if exc.code not in RETRY_STATUS:
                    raise APIError(last) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                reason = self._shown(str(getattr(exc, "reason", exc)), secrets)
                last = f"{type(exc).__name__} talking to {shown_url}: {reason}"
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * (2 ** attempt) * (0.5 + random.random()))
        raise APIError(f"giving up after {self.max_retries + 1} attempts: {last}")

    def _payload(self, g: PromptGroup, seed: int, decoding: Decoding) -> tuple[str, dict]:
        p = {"model": self.model_name, "temperature": decoding.temperature, "top_p": decoding.top_p,
             "max_tokens": g.max_new_tokens or decoding.max_new_tokens, "n": 1, "seed": seed}
        if decoding.stop:
            p["stop"] = list(decoding.stop)
        if self._render is not None:
            p["prompt"] = self._render(g)
            if self.context is not None and len(p["prompt"]) + p["max_tokens"] > self.context:
                raise InputError(f"problem '{g.problem_id}': its prompt of {len(p['prompt'])} tokens and "
                                 f"{p['max_tokens']} new tokens exceed the server's context of {self.context} "
                                 "tokens (backend_options.max_model_len raises it)")
            return "completions", p
        if g.prompt is not None or not self.chat:
            p["prompt"] = (g.prompt if g.prompt is not None else "\n\n".join(m["content"] for m in g.messages)) \
                + g.continuation
            return "completions", p
        if g.continuation:
            # A chat API answers a conversation; it cannot be made to go on from a partial answer.
            raise InputError("openai backend: budget forcing continues a completion, which the chat API cannot; "
                             "use backend_options.chat=false (the completions API), or the hf or vllm backend")
        p["messages"] = g.messages
        return "chat/completions", p

    # -- Generator protocol -----------------------------------------------------------------------
    def generate(self, groups: Sequence[PromptGroup], decoding: Decoding) -> Iterator[Generated]:
        cache: dict[str, dict] = {}
        writer = None
        if self.cache_path:
            rows, writer = open_resumable(self.cache_path, CachedResponse, lambda r: r.key)
            cache = {r.key: r.response for r in rows}
        jobs = []
        for g in groups:
            for index, seed in g.samples:
                route, payload = self._payload(g, seed, decoding)
                key = hashlib.sha256(json.dumps([self.base_url, route, payload], sort_keys=True).encode()).hexdigest()
                jobs.append((g, index, seed, route, payload, key, len(g.samples)))
        lock = threading.Lock()

        def fetch(job):
            resp = self._post(job[3], job[4])
            if writer is not None:
                with lock:  # cached as soon as it arrives, even if the consumer stops early
                    writer.write(CachedResponse(job[5], resp))
            return resp

        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        try:
            futures = {}
            for job in jobs:
                if job[5] in cache:
                    yield self._generated(job, cache[job[5]])
                else:
                    futures[pool.submit(fetch, job)] = job
            for fut in as_completed(futures):
                yield self._generated(futures[fut], fut.result())
        finally:
            # On an error or Ctrl-C, requests not yet sent are cancelled instead of all being sent.
            pool.shutdown(wait=True, cancel_futures=True)
            if writer is not None:
                writer.close()

    def _generated(self, job, resp: dict) -> Generated:
        g, index, seed, route, payload, _, group_size = job
        try:
            choice = resp["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
            usage = resp.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise APIError(f"unexpected response shape from {self.base_url}/{route}: "
                           f"{redact_text(str(resp)[:200])}") from None
        pt, ct = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        if self._flops is not None:
            flops = self._flops(pt, ct, group_size)
        else:
            flops = 2.0 * self.n_params * (pt / group_size + ct) if self.n_params else 0.0
        reason = choice.get("finish_reason")
        if reason not in ("stop", "length"):
            # Some servers leave it out; a completion that used its whole allowance was cut, not done.
            reason = "length" if ct and ct >= int(payload.get("max_tokens") or 0) else "stop"
        return Generated(g.problem_id, index, seed, text or "", pt, ct, flops, reason)


def _split_base_url(url: str) -> tuple[tuple[str, str, str, str], Optional[str]]:
    """(scheme, host[:port], path, query) for requests, and the userinfo as a Basic auth token.

    urllib would otherwise put ``user:pass@`` into the Host it connects to (and into its errors).
    """
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        parts.port  # raises on a port that is not a number in 0..65535
    except ValueError as exc:
        raise InputError(f"base_url {shown}: not a valid URL ({redact_text(str(exc))})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"base_url {shown}: expected http://HOST[:PORT]/PATH or https://...")
    userinfo, _, hostport = parts.netloc.rpartition("@")
    basic = None
    if userinfo:
        user, _, password = userinfo.partition(":")
        basic = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    return (parts.scheme, hostport, parts.path, parts.query), basic
