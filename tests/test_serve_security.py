"""`assay serve` against hostile or broken clients: bad bodies, stalled sockets, keys, exposure.

Every server here listens on 127.0.0.1; the refusal of a non-loopback host is tested on the path
that exits before anything is bound.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from assay.core.io import InputError
from assay.sampling.base import Generated


@pytest.fixture(scope="module")
def plain(tiny_model_dir):
    """A server without a key, with a short stall timeout and a small body limit."""
    from assay.sampling.serve import ServeConfig, make_server

    srv = make_server(ServeConfig(model=str(tiny_model_dir), name="tiny", port=0, max_batch=8, io_timeout_s=1.0,
                                  max_request_bytes=100_000))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _raw(port, headers: dict, body: bytes = b"", path="/v1/chat/completions", method="POST"):
    """One request with exactly these headers (http.client adds none of its own but Host)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.perf_counter()
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    if body:
        conn.send(body)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, (json.loads(data) if data else None), time.perf_counter() - t0


GOOD = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()


def test_bad_lengths_and_bodies_are_answered_at_once(plain):
    cases = [
        ({"Content-Length": "-1"}, b"", 400),  # today: rfile.read(-1) waits for EOF, the thread hangs
        ({"Content-Length": str(10**12)}, b"", 413),
        ({"Content-Length": "200000"}, b"", 413),  # over this server's max_request_bytes
        ({"Content-Length": "1_0"}, b"", 400),  # int() would accept it
        ({}, b"", 411),
        ({"Transfer-Encoding": "chunked"}, b"0\r\n\r\n", 411),
        ({"Content-Length": "9"}, b"not json!", 400),
        ({"Content-Length": "5"}, b"[1,2]", 400),  # JSON, but not an object
        ({"Content-Length": "10"}, b'{"a": NaN}', 400),  # Python's json would take NaN
        ({"Content-Length": "4"}, b'"\xff\xfe"', 400),  # not UTF-8
        ({"Content-Length": "0"}, b"", 400),
    ]
    for headers, body, want in cases:
        code, reply, seconds = _raw(plain, headers, body)
        assert code == want, (headers, body, reply)
        assert set(reply["error"]) == {"message", "type", "param", "code"} and seconds < 5, (headers, seconds)
    # The server is still healthy, and a keep-alive connection stays usable after a 400 that read its body.
    conn = http.client.HTTPConnection("127.0.0.1", plain, timeout=30)
    for body in (b"[]", GOOD):
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == (400 if body == b"[]" else 200)
    conn.close()


def test_a_client_that_stalls_mid_body_is_cut_off_and_frees_its_thread(plain):
    s = socket.create_connection(("127.0.0.1", plain), timeout=10)
    t0 = time.perf_counter()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
    assert s.recv(100) == b""  # closed by the server after io_timeout_s = 1 s, not left waiting
    assert time.perf_counter() - t0 < 8
    s.close()
    assert _raw(plain, {"Content-Length": str(len(GOOD))}, GOOD)[0] == 200


def test_a_prompt_over_the_context_length_is_a_400(plain):
    body = json.dumps({"prompt": "1 + 1 = 2. " * 50, "max_tokens": 2040}).encode()  # tiny model: 2048 positions
    code, reply, _ = _raw(plain, {"Content-Length": str(len(body))}, body, path="/v1/completions")
    assert code == 400 and reply["error"]["code"] == "context_length_exceeded"


class _Gate:
    """A fake backend: the first call waits for a signal; a group whose prompt is POISON makes it raise."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.release = threading.Event()

    def generate(self, groups, decoding):
        self.calls.append([g.prompt for g in groups])
        if len(self.calls) == 1:
            self.release.wait(30)
        if any(g.prompt == "POISON" for g in groups):
            raise ValueError("the engine chokes on this one")
        for g in groups:
            for i, seed in g.samples:
                yield Generated(g.problem_id, i, seed, f"{g.prompt}:{i}", 1, 1, 0.0, "stop")


def test_batcher_reruns_a_failed_batch_request_by_request_so_only_the_bad_one_fails():
    from assay.sampling.serve import Batcher, _Job
    from assay.sampling.serve_requests import parse_request

    gate = _Gate()
    batcher = Batcher(gate)

    def job(prompt, n=2):
        j = _Job(prompt, parse_request({"prompt": prompt, "n": n, "seed": 1}, False, "m", 16))
        batcher.submit(j)
        return j

    def events(j):
        out = []
        while not out or out[-1][0] not in ("done", "error"):
            out.append(j.events.get(timeout=30))
        return out

    warm = job("warm", 1)
    while not gate.calls:
        time.sleep(0.01)
    innocent, poison = job("innocent"), job("POISON")  # queued together while the batcher is busy
    gate.release.set()
    assert [e[0] for e in events(warm)] == ["ready", "choice", "done"]
    got = events(innocent)
    assert [e[0] for e in got] == ["ready", "choice", "choice", "done"]
    assert sorted(e[1].text for e in got[1:3]) == ["innocent:0", "innocent:1"]
    bad = events(poison)
    assert bad[-1][0] == "error" and bad[-1][1].status == 500 and "chokes" in bad[-1][1].message
    assert ["innocent", "POISON"] in gate.calls and ["innocent"] in gate.calls  # batched, then isolated
    assert innocent.req.decoding.max_new_tokens == 16  # the default never exceeds the server's limit


def test_host_check_refuses_exposure_without_a_key(monkeypatch):
    from assay.sampling.serve import ServeConfig, check_config, is_loopback

    for host in ("127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "", "::", "192.168.1.5", "10.0.0.1", "example.com", "localhost.evil.com"):
        assert not is_loopback(host), host
        with pytest.raises(InputError, match="reachable from other machines"):
            check_config(ServeConfig(host=host))
    monkeypatch.setenv("ASSAY_TEST_SERVE_KEY", "k-123456")
    assert check_config(ServeConfig(host="0.0.0.0", api_key_env="ASSAY_TEST_SERVE_KEY")) == "k-123456"
    assert check_config(ServeConfig(host="0.0.0.0", api_key="k-abc")) == "k-abc"
    assert check_config(ServeConfig()) == ""
    monkeypatch.delenv("ASSAY_TEST_SERVE_KEY")
    with pytest.raises(InputError, match="not set"):
        check_config(ServeConfig(host="0.0.0.0", api_key_env="ASSAY_TEST_SERVE_KEY"))
    with pytest.raises(InputError, match="not both"):
        check_config(ServeConfig(api_key="a", api_key_env="B"))
    with pytest.raises(InputError, match="printable ASCII"):
        check_config(ServeConfig(api_key="has space"))
    assert "k-abc" not in repr(ServeConfig(api_key="k-abc"))


def test_serve_on_all_interfaces_without_a_key_exits_2_before_binding(tiny_model_dir):
    r = subprocess.run([sys.executable, "-m", "assay.cli", "serve", "--model", str(tiny_model_dir), "--host",
                        "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "reachable from other machines" in r.stderr and "--api-key-env" in r.stderr


def test_a_keyed_server_answers_401_without_the_key_and_never_prints_it(tiny_model_dir):
    import openai

    key = "sk-assay-test-0123456789abcdef"
    env = {**os.environ, "ASSAY_TEST_SERVE_KEY": key}
    proc = subprocess.Popen([sys.executable, "-m", "assay.cli", "serve", "--model", str(tiny_model_dir), "--port", "0",
                             "--name", "tiny", "--api-key-env", "ASSAY_TEST_SERVE_KEY"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "Bearer" in line and key not in line
        url = line.split(" at ")[1].split()[0].rstrip(";")
        port = int(url.split(":")[2].split("/")[0])
        for auth in (None, "Bearer wrong-key", f"Basic {key}", f"Bearer {key}x"):
            headers = {"Content-Length": str(len(GOOD))} | ({"Authorization": auth} if auth else {})
            code, reply, _ = _raw(port, headers, GOOD)
            assert code == 401 and reply["error"]["code"] == "invalid_api_key", auth
            assert key not in json.dumps(reply)
        assert _raw(port, {}, path="/v1/models", method="GET")[0] == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0, timeout=60)
        assert [m.id for m in client.models.list()] == ["tiny"]
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
        assert r.choices[0].finish_reason in ("stop", "length")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert key not in line + out + err
