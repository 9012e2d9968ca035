"""Content hashes: what every lineage record, resume check and protocol id is made of.

One place for them, so that an artifact hashed by the manifest, a model folder hashed by a
resume check and a benchmark file hashed by an eval protocol are hashed the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from assay.core.redact import redact_config

# Big or derived folders whose contents are not part of an artifact's identity.
SKIP_DIRS = {"checkpoints", "__pycache__"}



def sha256_file(path: str | Path) -> str:
    """sha256 of one file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def short_hash(obj: Any) -> str:
    """16 hex digits of the sha256 of ``obj``'s canonical JSON."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = []
    for p in sorted(path.rglob("*")):
        if p.is_file() and not (set(p.relative_to(path).parts[:-1]) & SKIP_DIRS):
            files.append(p)
    return files


def hash_path(path: str | Path) -> dict[str, Any]:
    """sha256 over a file, or over a folder's relative names and contents (checkpoints/ left out)."""
    path = Path(path)
    h = hashlib.sha256()
    size = 0
    for f in _files(path):
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
                size += len(block)
    return {"path": str(path), "sha256": h.hexdigest(), "bytes": size}


def config_hash(config: Any) -> str:
    # Over the redacted config: a hash of a config with a password in it would let one test guesses.
    return hashlib.sha256(json.dumps(redact_config(config), sort_keys=True, default=str).encode()).hexdigest()[:16]
