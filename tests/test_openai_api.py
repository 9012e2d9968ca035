"""The OpenAI-compatible client against real HTTP servers on loopback (never a mock of the client)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from assay.sampling.base import Decoding, PromptGroup
from assay.sampling.openai_api import APIError, OpenAIGenerator


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    from assay.sampling.serve import ServeConfig, make_server

    srv = make_server(ServeConfig(model=str(tiny_model_dir), name="tiny", port=0, max_batch=8))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()
    srv.server_close()


def _groups(n_problems=3, k=2):
    return [PromptGroup(f"q{i}", [{"role": "user", "content": f"What is {i} + 2?"}], [(j, 100 + j) for j in range(k)])
            for i in range(n_problems)]


def test_greedy_through_the_api_equals_the_local_backend(server, tiny_model_dir):
    from assay.sampling.hf import HFGenerator

    dec = Decoding(temperature=0.0, max_new_tokens=10)
    remote = {(g.problem_id, g.sample_index): g for g in OpenAIGenerator("tiny", base_url=server).generate(_groups(), dec)}
    local = {(g.problem_id, g.sample_index): g for g in HFGenerator(str(tiny_model_dir)).generate(_groups(), dec)}
    assert remote.keys() == local.keys() and len(remote) == 6
    for k in local:
        assert remote[k].text == local[k].text
        assert remote[k].prompt_tokens == local[k].prompt_tokens
        assert remote[k].completion_tokens == local[k].completion_tokens


def test_seeded_sampling_is_reproducible_and_cache_makes_reruns_free(server, tmp_path):
    dec = Decoding(temperature=1.0, max_new_tokens=8)
    a = OpenAIGenerator("tiny", base_url=server)
    first = {(g.problem_id, g.sample_index): g.text for g in a.generate(_groups(), dec)}
    second = {(g.problem_id, g.sample_index): g.text for g in a.generate(_groups(), dec)}
    assert first == second and a.requests_sent == 12  # same seeds, same draws
    c = OpenAIGenerator("tiny", base_url=server, cache=str(tmp_path / "cache.jsonl"), n_params=1e6)
    got = list(c.generate(_groups(), dec))
    assert c.requests_sent == 6 and all(g.flops > 0 for g in got)
    again = {(g.problem_id, g.sample_index): g.text for g in c.generate(_groups(), dec)}
    assert c.requests_sent == 6 and again == first


def _post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_server_rejects_bad_requests(server):
    def post(body):
        return _post(server + "/chat/completions", body)

    code, body = post({"messages": []})
    assert code == 400 and body["error"]["param"] == "messages" and body["error"]["type"] == "invalid_request_error"
    code, body = post({"model": "other", "messages": [{"role": "user", "content": "x"}]})
    assert code == 404 and body["error"]["code"] == "model_not_found"  # as OpenAI answers an unknown model
    code, body = post({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": 2, "seed": 1})
    assert code == 200 and len(body["choices"]) == 2 and body["usage"]["completion_tokens"] <= 6
    with urllib.request.urlopen(server + "/models") as r:
        assert json.loads(r.read())["data"][0]["id"] == "tiny"
    with pytest.raises(APIError, match="HTTP 404"):
        list(OpenAIGenerator("nope", base_url=server, max_retries=3).generate(_groups(1, 1), Decoding(max_new_tokens=2)))


# Each is wrong in one field; the server must name that field and answer 400 (never run it, never 500).
BAD_FIELDS = [
    ({"seed": 2**70}, "seed"), ({"seed": 1.5}, "seed"), ({"temperature": "NaN"}, "temperature"),
    ({"temperature": 2.5}, "temperature"), ({"temperature": True}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"), ({"n": 0}, "n"), ({"n": 129}, "n"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 10**9}, "max_tokens"), ({"max_tokens": "5"}, "max_tokens"), ({"stop": [1]}, "stop"),
    ({"stop": {"a": 1}}, "stop"), ({"logprobs": True}, "logprobs"), ({"top_logprobs": 2}, "top_logprobs"),
    ({"stream": "yes"}, "stream"), ({"stream_options": {"include_usage": True}}, "stream_options"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"top_k": 5}, "top_k"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "messages[0].content[0]"),
]


def test_official_client_gets_bad_request_naming_the_field_while_an_innocent_request_succeeds(server):
    import openai

    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)
    innocent = {}

    def run_innocent():
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                           n=2, seed=5, temperature=1.0)
        innocent["texts"] = [c.message.content for c in r.choices]

    t = threading.Thread(target=run_innocent)
    t.start()  # in flight while the bad requests arrive: none of them may take it down
    for fields, param in BAD_FIELDS:
        kw = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        kw.update(fields)
        known = {k: kw.pop(k) for k in list(kw) if k not in ("model", "messages", "max_tokens", "n", "seed", "stop")}
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(**kw, extra_body=known)
        assert exc.value.status_code == 400 and exc.value.body["param"] == param, (fields, exc.value.body)
    with pytest.raises(openai.BadRequestError, match="logprobs"):
        client.completions.create(model="tiny", prompt="1 +", max_tokens=3, logprobs=1)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="1 +", max_tokens=3)
    t.join(60)
    assert len(innocent["texts"]) == 2
    again = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                           n=2, seed=5, temperature=1.0)
    assert [c.message.content for c in again.choices] == innocent["texts"]  # seeded: the same draws


def test_a_seed_too_big_for_the_engine_fails_alone_not_its_batch_mates(server):
    """Regression: seed=2**70 overflowed torch's generator and failed everything batched with it (HTTP 500)."""
    results = {}

    def go(tag, body):
        results[tag] = _post(server + "/completions", body)

    threads = [threading.Thread(target=go, args=(f"ok{i}", {"prompt": f"{i} + 1 =", "max_tokens": 4, "seed": i}))
               for i in range(3)]
    threads += [threading.Thread(target=go, args=("bad", {"prompt": "1 + 1 =", "max_tokens": 4, "seed": 2**70}))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["bad"][0] == 400 and results["bad"][1]["error"]["param"] == "seed"
    assert all(results[f"ok{i}"][0] == 200 for i in range(3)), results


def test_streaming_matches_non_streaming_and_reports_length(server):
    import openai

    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=60)
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=7, temperature=0, n=2)
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=7, temperature=0, n=2,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    for i in range(2):
        deltas = [c.choices[0] for c in chunks if c.choices and c.choices[0].index == i]
        assert deltas[0].delta.role == "assistant"
        assert "".join(d.delta.content or "" for d in deltas) == full.choices[i].message.content
        assert [d.finish_reason for d in deltas if d.finish_reason] == ["length"]  # exactly once, on the last
        assert full.choices[i].finish_reason == "length" and full.choices[i].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens == 14
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens

    text = client.completions.create(model="tiny", prompt="1 + 1 =", max_tokens=5, temperature=0)
    streamed = list(client.completions.create(model="tiny", prompt="1 + 1 =", max_tokens=5, temperature=0,
                                              stream=True))
    assert all(c.object == "text_completion" for c in streamed)
    assert "".join(c.choices[0].text for c in streamed) == text.choices[0].text
    assert text.choices[0].finish_reason == "length" and streamed[-1].choices[0].finish_reason == "length"

    # On the wire: server-sent events, each `data: {...}` and a blank line, closed by `data: [DONE]`.
    req = urllib.request.Request(server + "/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"prompt": "1 +", "max_tokens": 3, "stream": True}).encode())
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.headers["Content-Type"] == "text/event-stream"
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2]) and len(events) >= 4


class _Flaky(BaseHTTPRequestHandler):
    """A real server that fails the first two requests with 503, then answers."""

    calls = 0
    auth = []

    def log_message(self, *a):
        return

    def do_POST(self):
        type(self).calls += 1
        type(self).auth.append(self.headers.get("Authorization"))
        self.rfile.read(int(self.headers["Content-Length"]))
        if type(self).calls <= 2:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = json.dumps({"choices": [{"message": {"content": "42"}, "finish_reason": "stop"}],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_retries_with_backoff_then_succeeds_and_sends_key_only_in_header(monkeypatch, capsys):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    try:
        gen = OpenAIGenerator("m", base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1", backoff_s=0.01)
        out = list(gen.generate(_groups(1, 1), Decoding(max_new_tokens=4)))
        assert [g.text for g in out] == ["42"] and _Flaky.calls == 3 and gen.requests_sent == 3
        assert _Flaky.auth[-1] == "Bearer sk-test-secret"
        assert "sk-test-secret" not in capsys.readouterr().out
    finally:
        srv.shutdown()
        srv.server_close()


def test_assay_serve_cli_and_sample_through_it(tiny_model_dir, tmp_path):
    """`assay serve` in its own process, `assay sample --backend openai` against it, resumable."""
    from assay.cli import main
    from assay.core.io import read_records, write_records
    from assay.core.records import Problem, Sample

    proc = subprocess.Popen([sys.executable, "-m", "assay.cli", "serve", "--model", str(tiny_model_dir), "--port", "0",
                             "--name", "tiny"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)/v1", line)
        assert m, line
        url = m.group(0)
        write_records(tmp_path / "p.jsonl", [Problem(f"q{i}", f"{i} + 1 =", str(i + 1), "t") for i in range(3)])
        args = ["sample", "--backend", "openai", "--base-url", url, "--model", "tiny", "--problems",
                str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "s.jsonl"), "--n", "2", "--max-new-tokens", "6"]
        assert main(args) == 0
        samples = read_records(tmp_path / "s.jsonl", Sample)
        assert len(samples) == 6 and all(s.model == "tiny" for s in samples)
        assert main(args + ["--n", "3"]) == 0  # resume: only the 3 new indices are requested
        assert len(read_records(tmp_path / "s.jsonl", Sample)) == 9
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_judge_command_through_the_openai_backend(server, tmp_path):
    from assay.cli import main
    from assay.core.io import write_records
    from assay.core.records import Problem, Sample, Verdict

    write_records(tmp_path / "p.jsonl", [Problem("a", "1 + 1 =", "2", "t")])
    write_records(tmp_path / "s.jsonl", [Sample("a", 0, "m", "plain-v1", "1 + 1 = 2", 3, 4, 1.0, "stop", {}, 0)])
    write_records(tmp_path / "v.jsonl", [Verdict("a", 0, "2", True, "x")])
    rc = main(["judge", "--problems", str(tmp_path / "p.jsonl"), "--samples", str(tmp_path / "s.jsonl"),
               "--verdicts", str(tmp_path / "v.jsonl"), "--out", str(tmp_path / "j.jsonl"), "--generator", "openai",
               "--base-url", server, "--model", "tiny", "--max-new-tokens", "4"])
    assert rc == 0
    j = json.loads((tmp_path / "j.jsonl").read_text().split("\n")[0])
    assert j["judge"] == "llm:tiny" and j["template"] == "judge-v1"
    assert json.loads((tmp_path / "j.jsonl.fpr.json").read_text())["judge"] == "llm:tiny"
