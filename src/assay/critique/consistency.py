"""The consistency filter: a critique is kept only when it agrees with what is known.

The verifier knows whether each solution's final answer is right; a teacher's critique that says
otherwise is wrong about the one thing we can check, so its reasoning is not worth training on.
The steps, each a ``Filter`` (``assay.select.filters``) so every dropped critique keeps its step
and reason and the funnel adds up:

- ``parsed``: the critique ends with a conclusion the strict parser reads (``prompts.parse_critique``);
- ``verdict``: the teacher's verdict equals the verifier's (right <-> correct);
- ``corrected``: a critique that calls a solution wrong gives a corrected ``\\boxed{}`` answer that the
  same verifier accepts against the reference;
- ``length`` (optional): the critique's length is within [min_tokens, max_tokens];
- ``fits`` (optional): the training row (request + critique) fits the student's ``max_length``;
- ``per_problem`` and ``rows`` (optional): caps that turn the kept critiques into a dataset, e.g.
  one critique per problem for multi-problem CFT.

``confusion`` is each teacher's agreement with the verifier, before any filtering.
"""

from __future__ import annotations

import random
from typing import Optional

from assay.select.filters import Context, FunctionFilter, Step, run_filters


def _parsed(items, **_):
    return [c for c in items if c.verdict], [(c, c.parse_error or "no verdict") for c in items if not c.verdict]


def _verdict(items, **_):
    kept, rej = [], []
    for c in items:
        if (c.verdict == "right") == c.solution_correct:
            kept.append(c)
        else:
            rej.append((c, f"teacher says {c.verdict}, the verifier says the answer is "
                           f"{'correct' if c.solution_correct else 'incorrect'}"))
    return kept, rej


def _corrected(items, **_):
    kept, rej = [], []
    for c in items:
        if c.verdict != "wrong":
            kept.append(c)
        elif c.corrected is None:
            rej.append((c, "calls the solution wrong but gives no corrected \\boxed{} answer"))
        elif not c.corrected_correct:
            rej.append((c, f"corrected answer {c.corrected!r} is not the reference"))
        else:
            kept.append(c)
    return kept, rej


def _length(items, min_tokens: int = 0, max_tokens: int = 0):
    kept, rej = [], []
    for c in items:
        if c.completion_tokens < min_tokens:
            rej.append((c, f"{c.completion_tokens} tokens < min_tokens {min_tokens}"))
        elif max_tokens and c.completion_tokens > max_tokens:
            rej.append((c, f"{c.completion_tokens} tokens > max_tokens {max_tokens}"))
        else:
            kept.append(c)
    return kept, rej


def _fits(items, max_length: int = 0):
    kept, rej = [], []
    for c in items:
        if c.row_tokens is not None and c.row_tokens > max_length:
            rej.append((c, f"its training row is {c.row_tokens} tokens > max_length {max_length} (training would cut "
                           "the conclusion)"))
        else:
            kept.append(c)
    return kept, rej


def _per_problem(items, cap: int = 0, seed: int = 0):
    """At most ``cap`` critiques per problem, drawn at random (seeded) so no teacher or generator is favoured."""
    by_p: dict[str, list] = {}
    for c in items:
        by_p.setdefault(c.problem_id, []).append(c)
    chosen = set()
    for pid, cs in by_p.items():
        rng = random.Random(f"{seed}:{pid}")
        chosen.update(id(c) for c in rng.sample(cs, min(cap, len(cs))))
    return [c for c in items if id(c) in chosen], [(c, f"over {cap} per problem") for c in items if id(c) not in chosen]


def _rows(items, cap: int = 0, seed: int = 0):
    rng = random.Random(seed)
    chosen = {id(c) for c in rng.sample(items, min(cap, len(items)))}
    return [c for c in items if id(c) in chosen], [(c, f"over {cap} rows") for c in items if id(c) not in chosen]


def _options(fn, items, ctx):
    return fn(items, **(ctx.options or {}))


def consistency_steps(require_verdict: bool = True, require_corrected: bool = True, min_tokens: int = 0,
                      max_tokens: int = 0, max_length: int = 0, per_problem: int = 0, rows: int = 0,
                      seed: int = 0) -> list[Step]:
    steps = [("parsed", _parsed, {})]
    if require_verdict:
        steps.append(("verdict", _verdict, {}))
    if require_corrected:
        steps.append(("corrected", _corrected, {}))
    if min_tokens or max_tokens:
        steps.append(("length", _length, {"min_tokens": min_tokens, "max_tokens": max_tokens}))
    if max_length:
        steps.append(("fits", _fits, {"max_length": max_length}))
    if per_problem:
        steps.append((f"per_problem:{per_problem}", _per_problem, {"cap": per_problem, "seed": seed}))
    if rows:
        steps.append((f"rows:{rows}", _rows, {"cap": rows, "seed": seed}))
    return [Step(FunctionFilter(name.split(":")[0], fn, _options), Context(step=name, options=opts))
            for name, fn, opts in steps]


def consistency_filter(critiques: list, **options) -> tuple[list, list, list[dict]]:
    """(kept, rejections, funnel) of the critiques under :func:`consistency_steps` ``(**options)``."""
    return run_filters(list(critiques), consistency_steps(**options))


def confusion(critiques: list) -> dict[str, dict]:
    """Per teacher: verifier (correct/incorrect) x teacher verdict (right/wrong/unparsed) counts, the
    agreement among parsed critiques, and the share parsed."""
    out: dict[str, dict] = {}
    for c in critiques:
        t = out.setdefault(c.teacher, {"correct": {"right": 0, "wrong": 0, "unparsed": 0},
                                       "incorrect": {"right": 0, "wrong": 0, "unparsed": 0}})
        t["correct" if c.solution_correct else "incorrect"][c.verdict or "unparsed"] += 1
    for t in out.values():
        agree = t["correct"]["right"] + t["incorrect"]["wrong"]
        parsed = agree + t["correct"]["wrong"] + t["incorrect"]["right"]
        total = parsed + t["correct"]["unparsed"] + t["incorrect"]["unparsed"]
        t.update(critiques=total, parsed=parsed, agreement=agree / parsed if parsed else None,
                 parsed_share=parsed / total if total else None)
    return out


def agreement_line(conf: dict) -> str:
    def one(name: str, t: dict) -> str:
        a: Optional[float] = t["agreement"]
        return f"{name}: agrees with the verifier on {a:.2f} of {t['parsed']} parsed" if a is not None else \
            f"{name}: no parsed critique"
    return "; ".join(one(n, t) for n, t in conf.items())
