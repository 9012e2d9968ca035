"""Credentials in a --base-url or an API key never reach a config, a manifest, a cache or a message.

The requests themselves must still carry them: the recording server below checks what arrived.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from assay.core.redact import redact_argv, redact_config, redact_text, redact_url
from assay.sampling.base import Decoding, PromptGroup
from assay.sampling.openai_api import APIError, OpenAIGenerator

SECRETS = ("hunter2pw", "qqsecret2", "toksecret3", "sigsecret4", "sk-envkey-0123456789abcdef")


def _creds_url(port: int) -> str:
    return f"http://alice:hunter2pw@127.0.0.1:{port}/v1?api_key=qqsecret2&token=toksecret3&sig=sigsecret4&v=7"


def _assert_clean(text: str, where: str) -> None:
    for s in SECRETS:
        assert s not in text, f"{s} leaked into {where}"


def test_redact_url_masks_userinfo_and_secret_parameters_only():
    assert redact_url("http://u:p@h:8/v1?api_key=k&api-version=2024&x=1") == \
        "http://***@h:8/v1?api_key=***&api-version=2024&x=1"
    assert redact_url("https://h/v1?token=t&access_token=a&sig=s&X-Amz-Signature=z&key=k#access_token=f") == \
        "https://h/v1?token=***&access_token=***&sig=***&X-Amz-Signature=***&key=***#access_token=***"
    assert redact_url("https://TOKEN@h/v1") == "https://***@h/v1"
    assert redact_url("http://u:pa/ss@h/v1") == "http://***@h/v1"  # an unescaped '/' in the password
    for plain in ("http://127.0.0.1:8000/v1", "https://api.openai.com/v1", "smollm2-135m-instruct", ""):
        assert redact_url(plain) == plain


def test_redact_config_text_and_argv():
    cfg = {"base_url": "http://u:pw1@h/v1?token=t1", "api_key": "k1", "api_key_env": "OPENAI_API_KEY",
           "other_env": "sk-pasted-instead-of-a-name", "sample": {"stop": ["http://a:pw2@b"], "n": 4},
           "template": "basic arithmetic", "max_new_tokens": 256}
    out = redact_config(cfg)
    assert out == {"base_url": "http://***@h/v1?token=***", "api_key": "***", "api_key_env": "OPENAI_API_KEY",
                   "other_env": "***", "sample": {"stop": ["http://***@b"], "n": 4}, "template": "basic arithmetic",
                   "max_new_tokens": 256}
    assert cfg["api_key"] == "k1"  # a copy: the running config keeps the real values
    msg = redact_text('HTTP 401 from http://u:pw@h/v1: {"api_key": "abc123", "auth": "Bearer xyz.789"}')
    assert "pw" not in msg and "abc123" not in msg and "xyz.789" not in msg and "http://***@h/v1" in msg
    assert redact_argv(["assay", "serve", "--api-key", "k9", "--api-key=k8", "--base-url", "http://u:p@h/",
                        "api_key=k7", "--n", "4"]) == \
        ["assay", "serve", "--api-key", "***", "--api-key=***", "--base-url", "http://***@h/", "api_key=***",
         "--n", "4"]


class _Recorder(BaseHTTPRequestHandler):
    """Records each request; answers 200, or 400 echoing the path and Authorization header back."""

    seen: list = []
    echo_error = False

    def log_message(self, *a):
        return

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append((self.path, self.headers.get("Authorization")))
        if type(self).echo_error:
            body = json.dumps({"error": {"message": f"bad request to {self.path} with "
                                                   f"{self.headers.get('Authorization')}"}}).encode()
            code = 400
        else:
            body = json.dumps({"choices": [{"message": {"content": "42"}}],  # no finish_reason, as some servers
                               "usage": {"prompt_tokens": 5, "completion_tokens": 4}}).encode()
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def recorder():
    _Recorder.seen, _Recorder.echo_error = [], False
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _group():
    return [PromptGroup("q", [{"role": "user", "content": "1 + 1?"}], [(0, 7)])]


def test_requests_use_the_real_url_basic_auth_and_query(recorder, monkeypatch):
    import base64

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    gen = OpenAIGenerator("m", base_url=_creds_url(recorder), max_retries=0)
    out = list(gen.generate(_group(), Decoding(max_new_tokens=4)))
    path, auth = _Recorder.seen[0]
    assert path == "/v1/chat/completions?api_key=qqsecret2&token=toksecret3&sig=sigsecret4&v=7"
    assert auth == "Basic " + base64.b64encode(b"alice:hunter2pw").decode()
    # The reply had no finish_reason and used all 4 tokens: it was cut, not finished.
    assert out[0].finish_reason == "length"
    _assert_clean(gen.base_url, "OpenAIGenerator.base_url")


def test_errors_never_show_url_credentials_or_the_key_even_when_echoed(recorder, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", SECRETS[-1])
    _Recorder.echo_error = True
    with pytest.raises(APIError) as exc:
        list(OpenAIGenerator("m", base_url=_creds_url(recorder), max_retries=0).generate(_group(), Decoding()))
    assert _Recorder.seen[0][1] == f"Bearer {SECRETS[-1]}"  # the echo really contained it
    assert "HTTP 400 from http://***@127.0.0.1" in str(exc.value)
    _assert_clean(str(exc.value), "the HTTP error")
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    with pytest.raises(APIError) as exc:
        list(OpenAIGenerator("m", base_url=_creds_url(closed), max_retries=0).generate(_group(), Decoding()))
    assert "talking to http://***@127.0.0.1" in str(exc.value)
    _assert_clean(str(exc.value), "the connection error")


def _problems(tmp_path: Path) -> str:
    from assay.core.io import write_records
    from assay.core.records import Problem

    write_records(tmp_path / "p.jsonl", [Problem(f"q{i}", f"{i} + 1 =", str(i + 1), "t") for i in range(2)])
    return str(tmp_path / "p.jsonl")


def test_sample_through_a_url_with_credentials_records_none_of_them(server_url, tmp_path, monkeypatch, capfd):
    from assay.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", SECRETS[-1])
    port = int(server_url.rsplit(":", 1)[1].split("/")[0])
    args = ["sample", "--backend", "openai", "--base-url", _creds_url(port), "--model", "tiny", "--problems",
            _problems(tmp_path), "--out", "s.jsonl", "--n", "2", "--max-new-tokens", "3",
            "--run-dir", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", ["assay", *args])  # what the manifest records
    assert main(args) == 0
    cfg = (tmp_path / "run" / "s.jsonl.config.yaml").read_text()
    assert "http://***@127.0.0.1" in cfg and "api_key=***" in cfg and "v=7" in cfg
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["sample:s.jsonl"]["config"]["base_url"].startswith("http://***@127.0.0.1")
    assert "--base-url" in manifest["argv"]
    # Error path: the served model is 'tiny', 'nope' is a 404 whose message names the URL.
    assert main(args[:5] + ["--model", "nope"] + args[7:-2] + ["--out", str(tmp_path / "e.jsonl")]) == 1
    out, err = capfd.readouterr()
    assert "HTTP 404 from http://***@127.0.0.1" in err
    # A URL that cannot be parsed is a one-line input error, masked too.
    bad = _creds_url(port).replace(f":{port}", ":notaport")
    assert main(args[:4] + [bad] + args[5:-2] + ["--out", str(tmp_path / "b.jsonl")]) == 2
    out2, err2 = capfd.readouterr()
    assert "not a valid URL" in err2 and "Traceback" not in err2
    for f in sorted(tmp_path.rglob("*")):
        if f.is_file():
            _assert_clean(f.read_text(errors="replace"), str(f))
    _assert_clean(out + err + out2 + err2, "stdout/stderr")


@pytest.fixture(scope="module")
def server_url(tiny_model_dir):
    from assay.sampling.serve import ServeConfig, make_server

    srv = make_server(ServeConfig(model=str(tiny_model_dir), name="tiny", port=0, max_batch=8))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def test_saved_configs_and_manifests_are_redacted(tmp_path, monkeypatch):
    from dataclasses import dataclass

    from assay.core.config import opt, save_yaml
    from assay.core.hashing import config_hash
    from assay.core.runs import Run

    @dataclass
    class Cfg:
        base_url: str = opt("")
        api_key: str = opt("")

    save_yaml(tmp_path / "c.yaml", Cfg("http://alice:hunter2pw@h/v1?token=toksecret3", "qqsecret2"))
    text = (tmp_path / "c.yaml").read_text()
    _assert_clean(text, "c.yaml")
    assert "http://***@h/v1?token=***" in text
    monkeypatch.setattr(sys, "argv", ["assay", "x", "--api-key", "qqsecret2", "--base-url", "http://a:hunter2pw@h"])
    run = Run(tmp_path / "run")
    config = {"base_url": "http://alice:hunter2pw@h/v1", "n": 1}
    run.stage("s", config, lambda: None)
    _assert_clean((tmp_path / "run" / "manifest.json").read_text(), "manifest.json")
    # Resume still works: the same config (and the same config with other credentials) is done.
    assert run.is_done("s", config, []) and run.is_done("s", {**config, "base_url": "http://bob:x@h/v1"}, [])
    assert config_hash({"n": 1}) != config_hash({"n": 2})
