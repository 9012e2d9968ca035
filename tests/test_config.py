"""Typed configs: dotted overrides, nested sections and their defaults, errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest

from assay.core.config import from_mapping, opt, parse_overrides
from assay.core.io import InputError


@dataclass
class Inner:
    lr: float = opt(1e-3, help="learning rate")
    batch_size: int = opt(4, help="batch size")
    kwargs: dict = opt({"a": {"b": 1}}, help="a nested mapping")


@dataclass
class Outer:
    k: int = opt(2, help="k")
    # A pipeline's own defaults for a section differ from the section class's defaults.
    train: Inner = field(default_factory=lambda: Inner(lr=2e-4, batch_size=8), metadata={"help": "training"})


def test_nested_override_keeps_the_pipelines_other_defaults():
    cfg = from_mapping(Outer, parse_overrides(["train.batch_size=2", "k=5"]))
    assert (cfg.k, cfg.train.batch_size, cfg.train.lr) == (5, 2, 2e-4)
    assert from_mapping(Outer, {}).train == Inner(lr=2e-4, batch_size=8)


def test_dict_values_replace_and_defaults_are_not_shared():
    cfg = from_mapping(Outer, parse_overrides(["train.kwargs={c: 3}"]))
    assert cfg.train.kwargs == {"c": 3}
    a, b = Inner(), Inner()
    a.kwargs["a"]["b"] = 99
    assert b.kwargs == {"a": {"b": 1}}


def test_unknown_and_mistyped_keys_are_named():
    with pytest.raises(InputError, match="config.train: unknown key 'bach_size'.*batch_size"):
        from_mapping(Outer, parse_overrides(["train.bach_size=2"]))
    with pytest.raises(InputError, match="config.train.batch_size: expected an integer"):
        from_mapping(Outer, parse_overrides(["train.batch_size=two"]))


@dataclass
class Deep:
    inner: Inner = field(default_factory=lambda: Inner(lr=5.0), metadata={"help": "a section"})
    maybe: Optional[Inner] = field(default_factory=lambda: Inner(batch_size=16), metadata={"help": "optional"})
    band: list[int] = opt([1, 4], help="a typed list")


@dataclass
class Top:
    deep: Deep = field(default_factory=lambda: Deep(band=[2, 3]), metadata={"help": "two levels down"})


def test_sections_two_levels_down_optional_sections_and_typed_lists():
    cfg = from_mapping(Top, parse_overrides(["deep.inner.batch_size=1", "deep.maybe.lr=7", "deep.band=0,2"]))
    assert cfg.deep.inner == Inner(lr=5.0, batch_size=1)  # the outer pipeline's default kept, one key changed
    assert cfg.deep.maybe == Inner(lr=7.0, batch_size=16)
    assert cfg.deep.band == [0, 2]
    assert from_mapping(Top, {}).deep.band == [2, 3]
    assert from_mapping(Deep, {"maybe": None}).maybe is None
    with pytest.raises(InputError, match="deep.band: expected an integer"):
        from_mapping(Top, parse_overrides(["deep.band=a,b"]))
