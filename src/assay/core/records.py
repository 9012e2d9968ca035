"""The records that cross stage boundaries.

Every stage reads and writes one of these as JSONL, one record per line, so any artifact can be
opened with ``datasets.load_dataset("json", data_files=...)``, grepped, or diffed. Field types are
checked on read (see ``assay.core.io``) so that a bad file fails at its first bad line, not three
stages later.

Values nested under ``meta``/``decoding`` must keep one type per key across a file, because
Arrow (behind ``datasets``) infers one schema per column; heterogeneous payloads (for example a
reasoning-gym entry) are stored as JSON strings for that reason.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional


@dataclass
class Problem:
    """One problem with its reference answer."""

    id: str
    """Stable identifier, unique within a problem set (e.g. ``gsm8k-test-17``)."""
    question: str
    """The problem statement shown to the model."""
    answer: str
    """The reference final answer (a number, an expression, a string for reasoning-gym)."""
    source: str
    """Where it came from: a preset name, a file path, ``reasoning_gym:<task>`` or ``hf:<name>``."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Anything else worth keeping (subject, level, the full reference solution, ...)."""

    kind: ClassVar[str] = "problem"


@dataclass
class Sample:
    """One sampled completion for one problem."""

    problem_id: str
    sample_index: int
    """0..n-1 within the problem; (problem_id, sample_index) is the record's key."""
    model: str
    """The model spec that produced it (name or path)."""
    prompt_template: str
    """Id and version of the prompt template, e.g. ``boxed-v1``."""
    text: str
    """The completion, without the prompt and without a matched stop string."""
    prompt_tokens: int
    completion_tokens: int
    flops: float
    """Forward FLOPs charged to this sample; see ``assay.models.forward_flops``."""
    finish_reason: str
    """``stop`` (EOS or a stop string) or ``length`` (hit max_new_tokens)."""
    decoding: dict[str, Any]
    """temperature, top_p, max_new_tokens, stop: what the sampler was asked for."""
    seed: int
    """The per-sample seed; with the same model and decoding it reproduces the sample."""
    forcing: Optional[dict[str, Any]] = None
    """Under budget forcing (``decoding.forcing``): thinking_tokens, answer_tokens, waits (times a
    stop was overridden), cut (the thinking was cut at its maximum), rounds; else None."""

    kind: ClassVar[str] = "sample"


@dataclass
class Verdict:
    """The verification result for one sample."""

    problem_id: str
    sample_index: int
    extracted: Optional[str]
    """The final answer found in the completion, or None when none was found."""
    correct: bool
    method: str
    """How it was judged: ``math_verify``, ``reasoning_gym:<task>``, ``exact``, ..."""
    status: str = "ok"
    """``ok``, ``timeout`` (exceeded the per-item limit) or ``error``."""
    error: Optional[str] = None
    """What went wrong when status is ``error`` or ``timeout``."""
    input_hash: Optional[str] = None
    """16 hex digits naming what was judged: the sample text, the problem's reference (answer and
    reasoning-gym entry), the verifier and extractors (``assay.verify.stage.judged_hash``). A resumed
    verify refuses a verdict whose hash the current sample no longer matches."""

    kind: ClassVar[str] = "verdict"


@dataclass
class SFTExample:
    """One supervised fine-tuning row: a chat whose last turn (the assistant's) carries the loss."""

    id: str
    """``<problem_id>/<sample_index>``: unique within a dataset."""
    messages: list[dict[str, Any]]
    """Chat turns ``{"role", "content"}``: the prompt the sample was drawn with, then its completion."""
    problem_id: str
    """The source problem."""
    sample_index: int
    """The source sample within the problem; with problem_id it finds the Sample and Verdict."""
    model: str
    """The model that wrote the completion."""
    prompt_template: str
    """Template id and version the prompt was rendered with."""
    completion_tokens: int
    selected_by: str
    """The selector pipeline that kept it, e.g. ``correct>dedup>max_per_problem:2``."""

    kind: ClassVar[str] = "sft"


RECORD_TYPES: dict[str, type] = {c.kind: c for c in (Problem, Sample, Verdict, SFTExample)}


def _check_type(value: Any, annotation: Any) -> bool:
    """Shallow structural check of a JSON value against a field annotation."""
    if annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_check_type(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is dict or annotation is dict:
        return isinstance(value, dict)
    if origin is list or annotation is list:
        return isinstance(value, list)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def from_dict(cls: type, data: Any) -> Any:
    """Build a record from a decoded JSON object; raises ValueError naming the bad field."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value = data[f.name]
            if not _check_type(value, hints[f.name]):
                raise ValueError(
                    f"field '{f.name}': expected {_type_name(hints[f.name])}, got {type(value).__name__} ({value!r:.60})"
                )
            kwargs[f.name] = value
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"missing field '{f.name}'")
    if hints.get("flops") is float and "flops" in kwargs:
        kwargs["flops"] = float(kwargs["flops"])
    return cls(**kwargs)


def to_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record)


def key(record: Any) -> tuple[str, int]:
    """The identity of a Sample or Verdict."""
    return (record.problem_id, record.sample_index)
