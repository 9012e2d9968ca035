"""Masking credentials before anything is recorded: configs, manifests, argv and error messages.

Why: a server URL often carries its credentials (``http://user:pass@host/v1``,
``?api_key=...``, a signed ``?sig=...``), and assay records every config beside its output, the
command line in ``manifest.json`` and the URL in its error messages. Those files get committed,
shared and pasted into issues, so each write point passes what it records through this module,
while requests keep using the real values. It imports nothing from assay, so any module may use it.

What counts as a secret: the userinfo of a URL; a query or fragment parameter whose name mentions
a key, token, secret, password, signature, credential, session or auth; a config field or flag
named like a key, token, secret or password (``api_key_env`` names a variable, and is kept when it
looks like one); ``Bearer`` tokens and ``sk-`` / ``hf_`` style keys in free text.
"""

from __future__ import annotations

import re
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

_SECRET_PARAM = re.compile(r"key|token|secret|passw|pwd|sig|credential|session|auth|jwt|bearer|cookie")
_SECRET_FIELD = re.compile(r"(^|_)(api_?key|token|secret|password|passwd|credentials?|access_key)$")
# Environment variables that hold credentials: a process that needs none of them should not have them.
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|AUTH|COOKIE|SESSION|PRIVATE|^AWS_|^AZURE_|^GCP_|"
                         r"^GOOGLE_|^OPENAI_|^ANTHROPIC_|^HF_|^HUGGING|^WANDB_|_PROXY$|^PROXY", re.IGNORECASE)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)[^?#]*@")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")
_TEXT_SECRETS = [
    # `name=value` / `name: value` for secret-looking names (argv overrides, echoed payloads).
    (re.compile(r"(?i)\b([A-Za-z0-9_\-]*(?:api[_-]?key|token|secret|password|passwd))(\"?\s*[=:]\s*\"?)"
                r"(?!\*\*\*)([^\s&\"',;}]+)"), r"\1\2" + MASK),
    (re.compile(r"(?i)\b(bearer\s+)(?!\*\*\*)[A-Za-z0-9._~+/=\-]+"), r"\1" + MASK),
    (re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?basic\s+)(?!\*\*\*)[A-Za-z0-9+/=]+"), r"\1" + MASK),
    (re.compile(r"\b(sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{20,})"), MASK),
]


def _secret_param(name: str) -> bool:
    return bool(_SECRET_PARAM.search(re.sub(r"[^a-z]", "", name.lower())))


def _mask_params(s: str) -> str:
    """Mask the values of secret-named ``a=b&c=d`` parameters, keeping everything else verbatim."""
    out = []
    for item in s.split("&"):
        name, eq, _ = item.partition("=")
        out.append(f"{name}={MASK}" if eq and _secret_param(name) else item)
    return "&".join(out)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret query/fragment values masked; anything else unchanged."""
    if not isinstance(url, str) or "://" not in url:
        return url
    # Up to the last '@' before the query: a password with an unescaped '/' or '@' in it is still
    # masked whole (urlsplit would cut the authority at the '/' and miss it).
    m = _USERINFO.match(url)
    if m:
        url = f"{m.group(1)}{MASK}@{url[m.end():]}"
    try:
        parts = urlsplit(url)
    except ValueError:  # not parseable (a bad IPv6 literal, say): the userinfo is masked already
        return url
    return urlunsplit((parts.scheme, parts.netloc, parts.path, _mask_params(parts.query),
                       _mask_params(parts.fragment)))


def url_secrets(url: str) -> list[str]:
    """The secret strings inside a URL (userinfo parts, secret parameter values), to mask in echoes."""
    out = []
    m = _USERINFO.match(url) if isinstance(url, str) else None
    if m:
        userinfo = url[len(m.group(1)): m.end() - 1]
        out += [unquote(p) for p in userinfo.split(":", 1) if p]
    tail = url.partition("?")[2] if isinstance(url, str) else ""
    for item in re.split(r"[&#]", tail):
        name, eq, value = item.partition("=")
        if eq and value and _secret_param(name):
            out.append(unquote(value))
    return out


def redact_text(text: str) -> str:
    """Free text (an error message, a log line) with every URL redacted and key-like strings masked."""
    if not isinstance(text, str):
        return text
    text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    for pattern, repl in _TEXT_SECRETS:
        text = pattern.sub(repl, text)
    return text


def _secret_field(name: str) -> bool:
    return bool(_SECRET_FIELD.search(name.lower().replace("-", "_")))


def redact_config(obj: Any) -> Any:
    """A copy of a config mapping (nested dicts and lists) safe to write down."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            name = str(k)
            if isinstance(v, str) and v and _secret_field(name):
                out[k] = MASK
            elif isinstance(v, str) and name.lower().endswith("_env") and v and not _ENV_NAME.fullmatch(v):
                out[k] = MASK  # a key pasted where the name of its variable belongs
            else:
                out[k] = redact_config(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact_config(v) for v in obj]
    return redact_text(obj) if isinstance(obj, str) else obj


def redact_argv(argv: Iterable[str]) -> list[str]:
    """A command line safe to record: values of secret flags masked, URLs and overrides redacted."""
    out: list[str] = []
    mask_next = False
    for arg in argv:
        arg = str(arg)
        if mask_next:
            out.append(MASK)
            mask_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag.startswith("--") and _secret_field(flag[2:]):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                mask_next = True
            continue
        out.append(redact_text(arg))
    return out


def secret_env_name(name: str) -> bool:
    """Whether an environment variable's name says it holds a credential (keys, tokens, proxies)."""
    return bool(_SECRET_ENV.search(name))
