"""Model specs: chunked embedded weights are assembled and checked before use."""

from __future__ import annotations

import hashlib

import pytest

from assay.core.io import InputError
from assay.models import EMBEDDED, assemble_chunks


def test_assemble_chunks_checks_the_pinned_checksum(tmp_path):
    parts = []
    for i, data in enumerate([b"GGUF" + b"a" * 100, b"b" * 50, b"c" * 7]):
        p = tmp_path / f"part{i}"
        p.write_bytes(data)
        parts.append(p)
    whole = b"".join(p.read_bytes() for p in parts)
    good = hashlib.sha256(whole).hexdigest()
    out = assemble_chunks(parts, tmp_path / "m" / "model.gguf", good, "x")
    assert out.read_bytes() == whole
    with pytest.raises(InputError, match="expected 00"):
        assemble_chunks(parts[::-1], tmp_path / "m2" / "model.gguf", "00" * 32, "x")
    assert not (tmp_path / "m2" / "model.gguf").exists() and not (tmp_path / "m2" / "model.gguf.tmp").exists()
    with pytest.raises(InputError, match="chunk file"):
        assemble_chunks([tmp_path / "nope"], tmp_path / "m3" / "model.gguf", good, "x")


def test_registered_embedded_models():
    assert {"smollm2-135m-instruct", "gemma3-270m"} <= set(EMBEDDED)
    g = EMBEDDED["gemma3-270m"]
    assert len(g.chunks) == 4 and len(g.sha256) == 64
