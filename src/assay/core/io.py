"""Reading and writing record files, with errors a user can act on.

Every reader reports the first problem as ``file:line: what is wrong`` (an ``InputError``, which
the CLI turns into exit code 2 without a traceback); nothing is skipped silently. Writers append
one record per line and flush, so a killed job leaves at most one torn last line, which
``open_resumable`` removes before carrying on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Type, TypeVar

from assay.core.records import Problem, from_dict, to_dict

T = TypeVar("T")


class InputError(Exception):
    """Bad user input (a file, a flag, a name). The CLI prints it and exits with code 2."""

def iter_json_lines(path: str | Path) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, object) for each non-blank line of a JSONL file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start}") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_numbered(path: str | Path, cls: Type[T]) -> list[tuple[int, T]]:
    """Read a JSONL file of ``cls`` records with their line numbers, failing at the first bad line."""
    out = []
    for lineno, obj in iter_json_lines(path):
        try:
            out.append((lineno, from_dict(cls, obj)))
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: {exc}") from None
    return out


def read_records(path: str | Path, cls: Type[T]) -> list[T]:
    """Read a JSONL file of ``cls`` records, failing at the first bad line."""
    return [rec for _, rec in read_numbered(path, cls)]


def read_problems(path: str | Path) -> list[Problem]:
    """Read a Problem file whose ids are unique; a repeated id stops at its line.

    Every stage joins samples, verdicts and judgments to problems by id, so a repeated id would
    pair a sample with the other question (or crash deep in the sampler); one check, here,
    guards them all.
    """
    first: dict[str, int] = {}
    out = []
    for lineno, p in read_numbered(path, Problem):
        if p.id in first:
            raise InputError(f"{path}:{lineno}: problem id '{p.id}' repeats line {first[p.id]}")
        first[p.id] = lineno
        out.append(p)
    return out


def write_records(path: str | Path, records: Iterable[Any]) -> int:
    """Write records atomically (temp file + rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(dumps(r) + "\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return n


def dumps(record: Any) -> str:
    obj = record if isinstance(record, dict) else to_dict(record)
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def repair_torn_tail(path: str | Path) -> int:
    """Cut a partial last line left by a killed writer; returns the bytes removed.

    Only the bytes after the last newline are removed: they are a record that was never
    completely written, so its work was not finished and will be redone.
    """
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return 0
        # Walk back to the last newline; torn tails are one record, so this is short.
        pos = size - 1
        chunk = 4096
        while pos > 0:
            start = max(0, pos - chunk)
            fh.seek(start)
            buf = fh.read(pos - start)
            idx = buf.rfind(b"\n")
            if idx >= 0:
                cut = start + idx + 1
                fh.truncate(cut)
                return size - cut
            pos = start
        fh.truncate(0)
        return size


class AppendWriter:
    """Appends records to a JSONL file, one flushed line each, safe to kill at any moment."""

    def __init__(self, path: str | Path, fsync_every: int = 32):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._since_sync = 0
        self._fsync_every = fsync_every

    def write(self, record: Any) -> None:
        # One write call per line keeps a kill from interleaving half-records.
        self._fh.write(dumps(record) + "\n")
        self._fh.flush()
        self._since_sync += 1
        if self._since_sync >= self._fsync_every:
            os.fsync(self._fh.fileno())
            self._since_sync = 0

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def __enter__(self) -> "AppendWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_resumable(path: str | Path, cls: Type[T], key_fn) -> tuple[list[T], AppendWriter]:
    """Open an output file for resuming: repair a torn tail, read what is done, append the rest.

    Raises InputError on a duplicated key, since that means the file was not written by us
    (or was concatenated by hand) and resuming would double-count.
    """
    path = Path(path)
    removed = repair_torn_tail(path)
    if removed:
        print(f"[assay] {path}: removed a partial last record ({removed} bytes) left by an interrupted run")
    done = read_records(path, cls) if path.exists() else []
    seen = set()
    for lineno, rec in enumerate(done, start=1):
        k = key_fn(rec)
        if k in seen:
            raise InputError(f"{path}: duplicate record {k}; refusing to resume into it")
        seen.add(k)
    return done, AppendWriter(path)
