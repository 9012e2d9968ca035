"""A process pool that enforces a wall-clock limit on every item, for code that can hang.

Symbolic equivalence can run forever on innocent-looking input (``9^{9^{9^{9^{9}}}}`` asks sympy
for a number with more digits than there are atoms in the universe). Math-Verify's own limit is
``signal.alarm``, which only works in a main thread and cannot interrupt a long C call, so the
limit is enforced from outside instead: the parent hands one item at a time to each worker over a
pipe, waits on all pipes with a deadline, kills a worker whose item is overdue, reports that item
as ``timeout`` and starts a replacement. ``multiprocessing.Pool`` cannot do this: it has no
per-task timeout, and a stuck task there keeps its worker forever.

Workers come from the ``forkserver`` start method by default. A plain ``fork`` would copy the
parent's threads' locks (tqdm's monitor, torch's OpenMP pool when sampling ran in the same
process) into a child that can then deadlock; ``spawn`` is safe but re-imports everything for
each replacement. The fork server is a clean single-threaded process with the heavy modules
preloaded, so a replacement is cheap (measured on 2 cores: 0.15 s per replacement, against 0.5 s
with fork, which must re-import Math-Verify, and 0.6 s with spawn). Like any non-fork pool, a
script that calls it must guard its entry point with ``if __name__ == "__main__":``.

The pool knows nothing of verification: the verify stage (``assay.verify.stage``) hands it one
task per sample. Its workers are hardened for untrusted input (``assay.verify.sandbox``).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any, Iterable, Iterator, Optional, Sequence

try:
    import resource
except ImportError:  # not on Windows; there the parent's limit is all there is
    resource = None  # type: ignore[assignment]

from assay.verify import sandbox

DEFAULT_START_METHOD = "forkserver"

# Generous: a cold start imports sympy (about 1 s) and the run is useless without workers.
STARTUP_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    """What became of one task: its position in the input, and its value or why there is none."""

    index: int
    status: str
    """``ok``, ``timeout`` or ``error``."""
    value: Any = None
    error: Optional[str] = None


class WorkerStartupError(RuntimeError):
    """A worker died or hung before it could take work; retrying would fail the same way."""

def _set_cpu_budget(seconds: float) -> None:
    """Have the kernel kill this worker once it uses ``seconds`` more CPU time.

    The parent's wall-clock limit normally fires first; this covers a parent that was SIGKILLed
    mid-item, which would otherwise leave an orphan spinning on a power tower for hours. Nothing
    inside the worker could do it: a long sympy call in C holds the GIL, so no thread or signal
    handler runs, and with forkserver the worker's parent is the fork server, which outlives the
    run while workers exist, so PR_SET_PDEATHSIG would not fire either.
    """
    if resource is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _worker_main(conn: Any, handlers: dict[str, Any], cpu_budget_s: float) -> None:
    if resource is not None:
        # Being killed by the CPU limit must not leave a core file per pathological item.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    # Ctrl-C reaches the whole process group; the parent alone decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Handlers judge model-written text: no secrets to read, no file to grow, nothing to run.
    sandbox.harden_worker()
    try:
        for handler in handlers.values():
            warmup = getattr(handler, "warmup", None)
            if warmup is not None:
                warmup()
    except BaseException:
        conn.send(("failed", traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, name, args = msg
        _set_cpu_budget(cpu_budget_s)
        try:
            reply = (index, "ok", handlers[name](*args), None)
        except Exception as exc:
            reply = (index, "error", None, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable return value
            conn.send((index, "error", None, f"could not return the result: {type(exc).__name__}: {exc}"))


class _Worker:
    def __init__(self, ctx: Any, handlers: dict[str, Any], timeout_s: float):
        self.conn, child_conn = ctx.Pipe(duplex=True)
        # Twice the wall-clock limit plus slack, so that it never fires while the parent is alive.
        args = (child_conn, handlers, 2 * timeout_s + 5)
        self.proc = ctx.Process(target=_worker_main, args=args, daemon=True)
        self.proc.start()
        child_conn.close()
        self.started = time.monotonic()
        self.ready = False
        self.task: Optional[int] = None
        self.deadline = float("inf")

    def send(self, index: int, name: str, args: tuple, timeout_s: float) -> None:
        self.task = index
        try:
            self.conn.send((index, name, args))
            self.deadline = time.monotonic() + timeout_s
        except (OSError, ValueError):
            self.deadline = time.monotonic()  # it died while idle; collected as a crash next round

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()

    def ask_to_stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass


class TimedPool:
    """``workers`` processes, each item limited to ``timeout_s`` seconds of wall-clock time.

    ``handlers`` maps a name to a picklable callable; a task is ``(name, args)`` and runs as
    ``handlers[name](*args)`` in a worker. A handler may define ``warmup()``, run once per worker
    before it takes work, so that imports do not count against the first item's limit.
    """

    def __init__(
        self,
        handlers: dict[str, Any],
        workers: int,
        timeout_s: float,
        start_method: str = DEFAULT_START_METHOD,
        preload: Sequence[str] = (),
    ):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.handlers = handlers
        self.workers = workers
        self.timeout_s = timeout_s
        self.ctx = mp.get_context(start_method)
        if start_method == "forkserver":
            # Only takes effect if this process has not started its fork server yet.
            self.ctx.set_forkserver_preload([__name__, *preload])
        self._pool: list[_Worker] = []
        self.replaced = 0

    def _spawn(self) -> _Worker:
        return _Worker(self.ctx, self.handlers, self.timeout_s)

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._pool[self._pool.index(w)] = self._spawn()
        self.replaced += 1

    def imap_unordered(self, tasks: Iterable[tuple[str, tuple]]) -> Iterator[Outcome]:
        """Run every task; yield one Outcome per task as it finishes, in completion order."""
        pending = deque(enumerate(tasks))
        if not pending:
            return
        try:
            with sandbox.scrubbed_environ():  # the fork server starts with the first worker
                self._pool = [self._spawn() for _ in range(min(self.workers, len(pending)))]
            busy = 0
            while pending or busy:
                for w in self._pool:
                    if w.ready and w.task is None and pending:
                        index, (name, args) = pending.popleft()
                        w.send(index, name, args, self.timeout_s)
                        busy += 1
                now = time.monotonic()
                deadlines = [w.deadline if w.ready else w.started + STARTUP_TIMEOUT_S for w in self._pool]
                remaining = max(0.0, min(deadlines) - now)
                waitables = [w.conn for w in self._pool] + [w.proc.sentinel for w in self._pool]
                ready = set(wait(waitables, timeout=remaining))
                for w in list(self._pool):
                    outcome = self._collect(w, ready)
                    if outcome is not None:
                        busy -= 1
                        yield outcome
                now = time.monotonic()
                for w in list(self._pool):
                    if w.task is not None and now >= w.deadline:
                        index, busy = w.task, busy - 1
                        self._replace(w)
                        yield Outcome(index, "timeout", error=f"exceeded the {self.timeout_s:g} s limit")
                    elif not w.ready and now >= w.started + STARTUP_TIMEOUT_S:
                        raise WorkerStartupError(f"a verify worker did not start within {STARTUP_TIMEOUT_S:g} s")
        finally:
            self.close()

    def _collect(self, w: _Worker, ready: set) -> Optional[Outcome]:
        """Read what worker ``w`` has to say; returns an Outcome when it finished or lost a task."""
        if w.conn in ready:
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                msg = None
            if msg is not None:
                if msg[0] == "ready":
                    w.ready = True
                    return None
                if msg[0] == "failed":
                    raise WorkerStartupError(f"a verify worker failed to start:\n{msg[1]}")
                index, status, value, error = msg
                w.task, w.deadline = None, float("inf")
                return Outcome(index, status, value, error)
        elif w.proc.sentinel not in ready:
            return None
        # The pipe closed or the process ended without a reply: it crashed (segfault, OOM kill).
        w.proc.join(1.0)
        code = w.proc.exitcode
        if not w.ready:
            raise WorkerStartupError(f"a verify worker exited with code {code} before it was ready")
        index = w.task
        self._replace(w)
        if index is None:
            return None
        return Outcome(index, "error", error=f"the worker process died (exit code {code})")

    def close(self, grace_s: float = 1.0) -> None:
        # Idle workers exit on their own; a busy one may be deep in sympy and is killed at once.
        for w in self._pool:
            if w.task is None:
                w.ask_to_stop()
        end = time.monotonic() + grace_s
        for w in self._pool:
            if w.task is None:
                w.proc.join(max(0.0, end - time.monotonic()))
            w.kill()
        self._pool = []

    def __enter__(self) -> "TimedPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
