"""The request and response shapes of ``assay serve``: OpenAI bodies in, engine jobs and replies out.

Why a module of its own: every field a client sends must be checked before it reaches the batcher,
because one request the engine chokes on would fail every request decoded with it (a ``seed`` of
2**70 overflowed torch's generator and took its batch-mates down with HTTP 500). Each field is
checked for type and range here and a bad one is answered with OpenAI's error body, naming the
field, so a client sees ``openai.BadRequestError`` with a reason. Parameters this server cannot
honour (logprobs, penalties, tools, ...) are refused unless they ask for the default, instead of
being silently ignored; unknown parameters are refused as OpenAI does.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Any, Optional

from assay.sampling.base import Decoding

INT64 = (-(2**63), 2**63 - 1)
MAX_N = 128
MAX_STOP = 16
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Message keys the official client sends back (as null or empty) when a reply is reused as history.
_NULLABLE_MESSAGE_KEYS = {"refusal", "tool_calls", "function_call", "audio", "annotations"}


class RequestError(Exception):
    """A request that is answered with an error body instead of being run."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


@dataclass
class ParsedRequest:
    chat: bool
    messages: Optional[list]
    prompt: Optional[str]
    n: int
    seed: int
    """Sample i uses seed + i (a fresh random seed when the request gives none)."""
    decoding: Decoding
    stream: bool
    include_usage: bool


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(body: dict, name: str, lo: int, hi: int) -> Optional[int]:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise RequestError(f"'{name}' must be an integer in {lo}..{hi}, got {_show(v)}", name)
    return v


def _number(body: dict, name: str, default: float, lo: float, hi: float, lo_open: bool = False) -> float:
    v = body.get(name)
    if v is None:
        return default
    ok = _is_number(v) and math.isfinite(v) and (lo < v if lo_open else lo <= v) and v <= hi
    if not ok:
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise RequestError(f"'{name}' must be a number in {span}, got {_show(v)}", name)
    return float(v)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _only_default(body: dict, name: str, defaults: tuple, what: str) -> None:
    """Refuse a parameter this server does not implement unless it asks for the default behaviour."""
    if name in body and body[name] not in defaults:
        raise RequestError(f"'{name}' is not supported by this server ({what})", name, "unsupported_parameter")


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(f"{where}[{j}]: only text content parts ({{'type': 'text', 'text': ...}}) "
                                   "are supported", f"{where}[{j}]")
            texts.append(part["text"])
        return "\n".join(texts)
    raise RequestError(f"{where} must be a string or a non-empty list of text parts", where)


def _messages(body: dict) -> list[dict]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'", where)
        role = m.get("role")
        if role not in ROLES:
            raise RequestError(f"{where}.role must be one of {', '.join(ROLES)}, got {_show(role)} "
                               "(tool calls are not supported)", f"{where}.role")
        for k, v in m.items():
            if k in ("role", "content", "name"):
                continue
            if k not in _NULLABLE_MESSAGE_KEYS or v not in (None, [], ""):
                raise RequestError(f"{where}.{k} is not supported by this server", f"{where}.{k}")
        if "name" in m and not isinstance(m["name"], str):
            raise RequestError(f"{where}.name must be a string", f"{where}.name")
        out.append({"role": ROLES[role], "content": _text_content(m.get("content"), f"{where}.content")})
    return out


def _prompt(body: dict) -> str:
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if isinstance(p, list):
        raise RequestError("'prompt' must be one string (lists of prompts and token-id prompts are not supported)",
                           "prompt")
    if not isinstance(p, str) or not p:
        raise RequestError("'prompt' must be a non-empty string", "prompt")
    return p


COMMON = {"model", "n", "seed", "max_tokens", "temperature", "top_p", "stop", "stream", "stream_options",
          "logprobs", "frequency_penalty", "presence_penalty", "logit_bias", "user"}
CHAT_ONLY = {"messages", "max_completion_tokens", "top_logprobs", "response_format", "tools", "tool_choice",
             "functions", "function_call", "parallel_tool_calls", "metadata", "store"}
COMPLETIONS_ONLY = {"prompt", "echo", "suffix", "best_of"}


def parse_request(body: dict, chat: bool, served: str, max_tokens_limit: int) -> ParsedRequest:
    """Check every field of a /v1/chat/completions or /v1/completions body; raise RequestError."""
    known = COMMON | (CHAT_ONLY if chat else COMPLETIONS_ONLY)
    for k in body:
        if k not in known:
            raise RequestError(f"Unrecognized request argument supplied: {k}", k, "unrecognized_argument")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("'model' must be a string", "model")
    if model not in (None, served):
        raise RequestError(f"The model '{model[:80]}' does not exist: this server has '{served}'", "model",
                           "model_not_found", status=404)
    n = _int(body, "n", 1, MAX_N) or 1
    seed = _int(body, "seed", *INT64)
    max_tokens = _int(body, "max_completion_tokens", 1, max_tokens_limit) if chat else None
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1, max_tokens_limit) or min(256, max_tokens_limit)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    # top_p = 0 would drop every token (the engine keeps none whose preceding mass reaches top_p).
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) for s in stop):
        raise RequestError(f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise RequestError("'stream' must be true or false", "stream")
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not stream:
            raise RequestError("'stream_options' is only allowed with stream=true", "stream_options")
        if not isinstance(opts, dict) or set(opts) - {"include_usage"} or \
                not isinstance(opts.get("include_usage", False), bool):
            raise RequestError("'stream_options' must be {\"include_usage\": true|false}", "stream_options")
        include_usage = bool(opts.get("include_usage", False))
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise RequestError("'user' must be a string", "user")
    _unsupported(body, chat, n)
    messages = _messages(body) if chat else None
    prompt = None if chat else _prompt(body)
    return ParsedRequest(chat, messages, prompt, n, random.randrange(2**62) if seed is None else seed,
                         Decoding(temperature, top_p, max_tokens, tuple(s for s in stop if s)), bool(stream),
                         include_usage)


def _unsupported(body: dict, chat: bool, n: int) -> None:
    no_logprobs = "the engine does not return token log-probabilities"
    _only_default(body, "logprobs", (None, False) if chat else (None,), no_logprobs)
    _only_default(body, "top_logprobs", (None,), no_logprobs)
    _only_default(body, "frequency_penalty", (None, 0), "no repetition penalties")
    _only_default(body, "presence_penalty", (None, 0), "no repetition penalties")
    _only_default(body, "logit_bias", (None, {}), "no logit bias")
    _only_default(body, "response_format", (None, {"type": "text"}), "plain text output only")
    _only_default(body, "tools", (None, []), "no tool calls")
    _only_default(body, "functions", (None, []), "no tool calls")
    _only_default(body, "tool_choice", (None, "none"), "no tool calls")
    _only_default(body, "function_call", (None, "none"), "no tool calls")
    _only_default(body, "echo", (None, False), "the prompt is not echoed")
    _only_default(body, "suffix", (None, ""), "no insertion")
    _only_default(body, "best_of", (None, n), "best_of must equal n")
    _only_default(body, "store", (None, False), "nothing is stored")
    for name, types in (("parallel_tool_calls", bool), ("metadata", dict)):
        if body.get(name) is not None and not isinstance(body[name], types):
            raise RequestError(f"'{name}' has the wrong type", name)


# -- replies ------------------------------------------------------------------------------------
def finish_reason(reason: Optional[str], completion_tokens: int, max_tokens: int) -> str:
    """Always "stop" or "length": a completion that used its whole allowance was cut."""
    if reason in ("stop", "length"):
        return reason
    return "length" if completion_tokens >= max_tokens else "stop"


def completion_body(req: ParsedRequest, rid: str, name: str, outs: list, prompt_tokens: int) -> dict:
    choices = []
    for o in outs:
        reason = finish_reason(o.finish_reason, o.completion_tokens, req.decoding.max_new_tokens)
        if req.chat:
            choices.append({"index": o.sample_index, "message": {"role": "assistant", "content": o.text},
                            "logprobs": None, "finish_reason": reason})
        else:
            choices.append({"index": o.sample_index, "text": o.text, "logprobs": None, "finish_reason": reason})
    completion_tokens = sum(o.completion_tokens for o in outs)
    return {"id": rid, "object": "chat.completion" if req.chat else "text_completion", "created": int(time.time()),
            "model": name, "choices": choices, "usage": usage(prompt_tokens, completion_tokens),
            "assay": {"flops": sum(o.flops for o in outs), "seed": req.seed}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chunk(req: ParsedRequest, rid: str, name: str, created: int, index: Optional[int] = None, text: str = "",
          reason: Optional[str] = None, role: bool = False, usage_: Optional[dict] = None) -> dict:
    """One streamed event, shaped as OpenAI's ``chat.completion.chunk`` or streamed ``text_completion``.

    ``index=None`` is the usage-only chunk (empty choices) sent last with include_usage.
    """
    choices = []
    if index is not None:
        if req.chat:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            choices.append({"index": index, "delta": delta, "logprobs": None, "finish_reason": reason})
        else:
            choices.append({"index": index, "text": text, "logprobs": None, "finish_reason": reason})
    out = {"id": rid, "object": "chat.completion.chunk" if req.chat else "text_completion", "created": created,
           "model": name, "choices": choices}
    if req.include_usage:
        out["usage"] = usage_
    return out


def no_constants(name: str):
    """``json.loads`` hook: NaN and Infinity are not JSON, whatever Python's parser accepts."""
    raise ValueError(f"{name} is not valid JSON")
