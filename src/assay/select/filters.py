"""One filter protocol for selection and curation: items in; kept items and rejections out.

A selector of ``assay select`` (``correct``, ``dedup``, ``less``...) and a LIMO curation step of
``assay curate`` (``difficulty``, ``decontaminate``...) are the same idea, as in datatrove's
filters: each has a name, takes the items it is given and returns the ones it keeps plus, for
every other one, a ``Rejection`` naming the step and the reason. So both stages run their steps
through the one ``run_filters`` loop, which checks that nothing is lost (kept + rejected = input),
writes rejections the same way (``write_rejected``) and keeps the same funnel: one row per step
with the counts kept and dropped, and the step's compute when it reports one (LESS's FLOPs).
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Optional, Protocol, Sequence

from assay.core.io import write_records


class Rejection(NamedTuple):
    item: Any
    step: str
    reason: str


@dataclass
class Context:
    """What a filter may use besides its items; filled in by the stage that runs it."""

    step: str
    """The label of this step in the funnel and in rejections (``max_per_problem:4``, ``dedup``)."""
    arg: Optional[str] = None
    """A selector's argument (``4`` in ``max_per_problem:4``)."""
    options: Any = None
    """A curation step's {option: value}; a model-backed selector's own config section (``LessOptions``)."""
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    seed: int = 0
    workdir: Optional[Path] = None
    """Where a filter that writes files (model checkpoints, features) keeps them."""
    cost: dict = field(default_factory=dict)
    """Compute the filter spent (``flops`` and its parts), recorded in its funnel row."""

class Filter(Protocol):
    name: str

    def check(self, arg: Optional[str]) -> None:
        """Raise InputError for a bad argument, before any work."""

    def apply(self, items: list, ctx: Context) -> tuple[list, list[Rejection]]:
        """(kept, rejections); keeps its input order unless ranking is its job (``less`` returns best first)."""

class FunctionFilter:
    """A filter from a plain function ``fn(items, ...) -> (kept, [(item, reason)])``.

    ``call(fn, items, ctx)`` says how the context becomes the function's arguments: selectors
    take ``(items, arg, rng)``, curation steps ``(items, **options)``. The plain function stays
    importable and testable on its own; ``__wrapped__`` lets ``inspect.signature`` see its options.
    """

    def __init__(self, name: str, fn: Callable, call: Callable[[Callable, list, Context], tuple],
                 check: Optional[Callable[[Optional[str]], None]] = None):
        self.name, self.fn, self._call, self._check = name, fn, call, check
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        # Still the plain function: old callers (and inspect.signature, for a step's options) use it so.
        return self.fn(*args, **kwargs)

    def check(self, arg: Optional[str]) -> None:
        if self._check is not None:
            self._check(arg)

    def apply(self, items: list, ctx: Context) -> tuple[list, list[Rejection]]:
        kept, rej = self._call(self.fn, items, ctx)
        return kept, [Rejection(it, ctx.step, reason) for it, reason in rej]


@dataclass
class Step:
    filter: Filter
    ctx: Context


def run_filters(items: list, steps: Sequence[Step],
                after: Optional[Callable[[int, Step, list, list[Rejection]], None]] = None
                ) -> tuple[list, list[Rejection], list[dict]]:
    """Apply the steps in order: (kept, every rejection, the funnel). ``after(i, step, kept, rejected)``
    runs after each step (curate writes both sides of every step)."""
    rejected: list[Rejection] = []
    funnel: list[dict] = [{"step": "input", "kept": len(items)}]
    for i, st in enumerate(steps):
        n_in = len(items)
        items, rej = st.filter.apply(items, st.ctx)
        # The audit trail is only worth having when it is complete.
        if len(items) + len(rej) != n_in:
            raise RuntimeError(f"filter '{st.ctx.step}' lost items: {n_in} in, {len(items)} kept + {len(rej)} rejected")
        rejected.extend(rej)
        row = {"step": st.ctx.step, "kept": len(items), "dropped": len(rej)}
        if st.ctx.cost:
            row["cost"] = dict(st.ctx.cost)
        funnel.append(row)
        if after is not None:
            after(i, st, items, rej)
    return items, rejected, funnel


def funnel_flops(funnel: Iterable[dict]) -> float:
    """The compute the steps reported (selection FLOPs: LESS's warmup and gradients)."""
    return float(sum(row.get("cost", {}).get("flops", 0.0) for row in funnel))


def write_rejected(path, rejected: Iterable[Rejection], row: Callable[[Any], dict]) -> int:
    """One JSONL row per rejection: the item's identifying fields, then its step and reason."""

    return write_records(path, [{**row(r.item), "step": r.step, "reason": r.reason} for r in rejected])
