"""Shared fixtures: a tiny random Llama and a tokenizer built here, so fast tests need no download."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

from assay.tiny import build_model as build_tiny_model  # noqa: F401  (re-exported for tests)
from assay.tiny import build_tokenizer, save_tiny  # noqa: F401


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved 2-layer random Llama with its tokenizer: a 'local HF folder' model spec."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer) loaded from the tiny folder."""
    from assay import models

    return models.load(str(tiny_model_dir))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"benchmark data not found at {SHARED_DATA} (CI has ../shared beside the checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _quiet_env():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield


@dataclass
class ScriptedOptions:
    """The options of a scripted backend: none (stands in for a backend's options dataclass)."""

    FLAT: ClassVar[dict] = {}
    PROTOCOL: ClassVar[tuple] = ()

    def validate(self, key):
        pass


@pytest.fixture
def scripted_backend():
    """``add(name, cls)`` registers ``cls(model, options)`` (a Generator) as backend ``name`` for one test,
    so a stage or study that builds generators by name runs a scripted model; returns the name."""
    from assay.sampling.backends import BACKENDS, Backend

    added = []

    def add(name: str, cls) -> str:
        BACKENDS.add(name, Backend(ScriptedOptions, cls))
        added.append(name)
        return name

    yield add
    for name in added:
        BACKENDS._items.pop(name, None)
