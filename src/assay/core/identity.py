"""What made an artifact, so that a resume can tell its own work from someone else's.

A resumable output (samples, verdicts, a training folder) may only be extended with work made
the same way: the same input contents, the same result-changing settings, the same model. Each
carries an identity (a JSON-ready dict) that is compared on resume; any difference is refused
with what differs and how to start fresh, because one artifact made under two configurations
gives numbers that belong to neither.

A model is identified by its spec and, for a local folder, by the sha256 of the files it loads
from (weights, config, tokenizer, adapter, ``ASSAY_BASE``): a folder retrained in place is
another model under the same name. Rehashing gigabytes on every rerun would be slow, so a known
hash is reused while the file's size and mtime are unchanged (``FileHashes``). Embedded models
are pinned by their package; a hub id is identified by its name only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from assay.core.hashing import sha256_file
from assay.core.io import InputError


class FileHashes:
    """sha256 of files, reusing a recorded hash while (size, mtime) say the file is untouched."""

    def __init__(self, known: Optional[dict] = None):
        self.entries: dict[str, list] = dict(known or {})

    def sha256(self, path: Path) -> str:
        st = path.stat()
        name = str(path.resolve())
        old = self.entries.get(name)
        if isinstance(old, list) and len(old) == 3 and old[:2] == [st.st_size, st.st_mtime_ns]:
            return old[2]
        digest = sha256_file(path)
        self.entries[name] = [st.st_size, st.st_mtime_ns, digest]
        return digest


def differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf that differs."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [(prefix or "identity", old, new)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_identity(where: str, recorded: Optional[dict], current: dict, made: str, fresh: str) -> None:
    """Refuse to resume ``where`` unless ``recorded`` equals ``current``.

    ``made`` says what the artifact holds ("holds samples made with other settings"); ``fresh``
    how to start over ("choose another --out or delete X").
    """
    if not isinstance(recorded, dict):
        raise InputError(f"{where}: has no identity record (made by an older assay?), so it cannot be told "
                         f"apart from work made with other settings; {fresh}")
    diffs = differences(recorded, current)
    if diffs:
        shown = ", ".join(f"{k}: {_short(a)} then, {_short(b)} now" for k, a, b in diffs[:4])
        more = f" and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise InputError(f"{where}: {made} ({shown}{more}); {fresh}")


def load_record(path: str | Path) -> Optional[dict]:
    """A JSON identity record, or None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable identity record ({exc}); delete it together with what it describes "
                         "to start fresh") from None
    return data if isinstance(data, dict) else None


def world_size() -> int:
    """Processes of this job: set by torchrun / accelerate launch; it changes the effective batch."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def main_process() -> bool:
    """Is this process rank 0 of its job (or the only one)? Set by torchrun / accelerate launch."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True