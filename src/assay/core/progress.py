"""Progress bars that stay readable wherever they are read.

On a terminal a tqdm bar redraws itself in place with carriage returns. Anywhere else (a CI log,
``| tee``, a file) those redraws pile up on one line (a 100-problem ``assay eval`` wrote one
20,000-character line) and nested bars garble each other. So ``bar`` gives tqdm only when the
stream is a terminal, and otherwise a plain line every few seconds::

    [assay] sample: 120/400 (30%), 4.1 sample/s, eta 68 s

Every loop in assay that shows progress goes through ``bar``. Bars drawn inside libraries (the
HF Trainer's, datasets') are switched off off-terminal by ``quiet_library_bars``; the Trainer
still prints its per-step log lines.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator, Optional, TextIO

INTERVAL_S = 5.0


def interactive(stream: Optional[TextIO] = None) -> bool:
    """Whether ``stream`` (default stderr) is a terminal, where a redrawn bar is readable."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class LineProgress:
    """tqdm's ``update``/``set_postfix``/``close`` interface, printing at most one line per ``interval``."""

    def __init__(self, total: Optional[int], desc: str, unit: str = "it", initial: int = 0,
                 stream: Optional[TextIO] = None, interval: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.clock = interval, clock
        self.postfix: dict = {}
        self._start_n = initial
        self._t0 = self._last = clock()
        self._shown = initial
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self._last >= self.interval:
            self._emit(now)

    def set_postfix(self, **kw) -> None:
        self.postfix = kw

    def close(self) -> None:
        # The last count always shows, so a log ends on the total even between two intervals.
        if not self._closed and self.n != self._shown:
            self._emit(self.clock(), final=True)
        self._closed = True

    def line(self, now: float, final: bool = False) -> str:
        elapsed = now - self._t0
        rate = (self.n - self._start_n) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"]
        if rate > 0:
            parts.append(f"{rate:.1f} {self.unit}/s")
        if final or (self.total and self.n >= self.total):
            parts.append(f"{elapsed:.0f} s")
        elif rate > 0 and self.total:
            parts.append(f"eta {max(0, self.total - self.n) / rate:.0f} s")
        parts += [f"{k}={v}" for k, v in self.postfix.items()]
        return f"[assay] {self.desc}: " + ", ".join(parts)

    def _emit(self, now: float, final: bool = False) -> None:
        print(self.line(now, final), file=self.stream, flush=True)
        self._last, self._shown = now, self.n

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_Silent":
        return self

    def __exit__(self, *exc) -> None:
        pass


def bar(total: Optional[int], desc: str, unit: str = "it", initial: int = 0, enabled: bool = True,
        stream: Optional[TextIO] = None, interval: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic):
    """A progress bar for ``total`` items: tqdm on a terminal, rate-limited lines elsewhere, or nothing."""
    if not enabled:
        return _Silent()
    stream = sys.stderr if stream is None else stream
    if interactive(stream):
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, unit, initial, stream, interval, clock)


@contextlib.contextmanager
def quiet_library_bars(stream: Optional[TextIO] = None) -> Iterator[None]:
    """Off a terminal, switch off the tqdm bars libraries draw themselves (the HF Trainer's, datasets').

    Those bars do not pass ``disable``, so tqdm's ``TQDM_DISABLE`` default reaches them without
    touching their code. tqdm reads it once, when it is first imported, so this only works if it
    is entered before that: ``assay.cli.main`` enters it first thing. ``bar`` draws tqdm only on a
    terminal, where this does nothing. The variable is restored afterwards.
    """
    if interactive(stream) or "TQDM_DISABLE" in os.environ:
        yield
        return
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TQDM_DISABLE", None)
