"""The selectors of ``assay select``: small filters from verified samples to the ones worth training on.

Apart from the stage (``assay.select.stage``) so that a model-backed selector (``less`` in
``assay.select.less``) can build on the candidates and register itself without importing the stage,
which imports it for its options section.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from assay.core.io import InputError
from assay.core.records import Problem, Sample, SFTExample, Verdict, key
from assay.core.registry import Registry
from assay.data.prompts import TEMPLATES
from assay.data.text import Match, find_duplicates
from assay.select.filters import Filter, FunctionFilter


@dataclass
class Candidate:
    problem: Problem
    sample: Sample
    verdict: Optional[Verdict]


# Each selector is a plain function ``(candidates, arg, rng) -> (kept, [(candidate, reason)])`` that
# keeps its input order; the registry holds it wrapped as a Filter (assay.select.filters).
SELECTORS: Registry[Filter] = Registry("selector")


def _int_arg(name: str, arg: Optional[str]) -> int:
    try:
        v = int(arg) if arg is not None else None
    except ValueError:
        v = None
    if v is None or v < 1:
        raise InputError(f"selector '{name}': needs a positive integer, e.g. '{name}:2' (got {arg!r})")
    return v


def _no_arg(name: str, arg: Optional[str]) -> None:
    if arg is not None:
        raise InputError(f"selector '{name}' takes no argument (got '{name}:{arg}')")


def correct(cands, arg, rng):
    """Keep samples whose verdict is correct (a missing verdict counts as not verified)."""
    _no_arg("correct", arg)
    kept, rej = [], []
    for c in cands:
        if c.verdict is None:
            rej.append((c, "no verdict"))
        elif c.verdict.status != "ok":
            rej.append((c, f"verification {c.verdict.status}"))
        elif not c.verdict.correct:
            rej.append((c, f"incorrect (extracted {c.verdict.extracted!r})"))
        else:
            kept.append(c)
    return kept, rej


def finished(cands, arg, rng):
    """Drop completions cut off by max_new_tokens: they never learned to stop."""
    _no_arg("finished", arg)
    kept = [c for c in cands if c.sample.finish_reason != "length"]
    return kept, [(c, "truncated at max_new_tokens") for c in cands if c.sample.finish_reason == "length"]


def dedup(cands, arg, rng):
    """Keep the first of identical completions (after whitespace/case normalisation) per problem."""
    _no_arg("dedup", arg)
    first = find_duplicates([c.sample.text for c in cands], Match("exact"), groups=[c.problem.id for c in cands])
    kept = [c for i, c in enumerate(cands) if first[i] == i]
    return kept, [(c, f"duplicate of sample {cands[first[i]].sample.sample_index}") for i, c in enumerate(cands)
                  if first[i] != i]


def _by_problem(cands: list[Candidate]) -> dict[str, list[Candidate]]:
    groups: dict[str, list[Candidate]] = {}
    for c in cands:
        groups.setdefault(c.problem.id, []).append(c)
    return groups


def _extreme(cands, arg, name: str, longest: bool):
    m = 1 if arg is None else _int_arg(name, arg)
    kept_ids = set()
    for group in _by_problem(cands).values():
        # Ties break on sample_index so the choice is deterministic.
        order = sorted(group, key=lambda c: ((-1 if longest else 1) * c.sample.completion_tokens, c.sample.sample_index))
        kept_ids.update(id(c) for c in order[:m])
    kept = [c for c in cands if id(c) in kept_ids]
    rej = [(c, f"not among the {m} {'longest' if longest else 'shortest'} of its problem") for c in cands
           if id(c) not in kept_ids]
    return kept, rej


def shortest(cands, arg, rng):
    """Keep the m shortest completions per problem (default 1)."""
    return _extreme(cands, arg, "shortest", longest=False)


def longest(cands, arg, rng):
    """Keep the m longest completions per problem (default 1)."""
    return _extreme(cands, arg, "longest", longest=True)


def max_per_problem(cands, arg, rng):
    """Keep at most m per problem, chosen at random (seeded)."""
    m = _int_arg("max_per_problem", arg)
    kept_ids = set()
    for group in _by_problem(cands).values():
        pick = group if len(group) <= m else rng.sample(group, m)
        kept_ids.update(id(c) for c in pick)
    kept = [c for c in cands if id(c) in kept_ids]
    return kept, [(c, f"over the limit of {m} per problem") for c in cands if id(c) not in kept_ids]


def random_n(cands, arg, rng):
    """Keep N candidates chosen uniformly at random (seeded); all of them if there are fewer."""
    n = _int_arg("random", arg)
    if len(cands) <= n:
        return list(cands), []
    pick = set(id(c) for c in rng.sample(cands, n))
    return [c for c in cands if id(c) in pick], [(c, f"not drawn in random:{n}") for c in cands if id(c) not in pick]


def source(cands, arg, rng):
    """Keep problems from one source: its full name (``reasoning_gym:chain_sum``) or last part (``chain_sum``)."""
    if not arg:
        raise InputError("selector 'source' needs a source name, e.g. 'source:chain_sum'")

    def match(p: Problem) -> bool:
        return p.source == arg or p.source.rsplit(":", 1)[-1] == arg

    kept = [c for c in cands if match(c.problem)]
    return kept, [(c, f"source {c.problem.source} is not {arg}") for c in cands if not match(c.problem)]


def _selector(name: str, fn) -> FunctionFilter:
    # A selector's argument is checked by running it on no candidates: the parse is the check.
    def check(arg: Optional[str]) -> None:
        fn([], arg, random.Random(0))

    return FunctionFilter(name, fn, call=lambda f, items, ctx: f(items, ctx.arg, ctx.rng), check=check)


for _name, _fn in (("correct", correct), ("finished", finished), ("dedup", dedup), ("shortest", shortest),
                   ("longest", longest), ("max_per_problem", max_per_problem), ("random", random_n),
                   ("source", source)):
    SELECTORS.add(_name, _selector(_name, _fn))


def build_candidates(problems: list[Problem], samples: list[Sample], verdicts: list[Verdict],
                     where: str) -> list[Candidate]:
    by_id = {p.id: p for p in problems}
    vmap = {key(v): v for v in verdicts}
    cands = []
    for s in samples:
        p = by_id.get(s.problem_id)
        if p is None:
            raise InputError(f"{where}: sample {s.problem_id}/{s.sample_index} names a problem that is not in the problem file")
        cands.append(Candidate(p, s, vmap.get(key(s))))
    return cands


def to_example(c: Candidate, selected_by: str) -> SFTExample:
    msgs = TEMPLATES.get(c.sample.prompt_template).messages(c.problem.question)
    msgs.append({"role": "assistant", "content": c.sample.text})
    return SFTExample(id=f"{c.problem.id}/{c.sample.sample_index}", messages=msgs, problem_id=c.problem.id,
                      sample_index=c.sample.sample_index, model=c.sample.model,
                      prompt_template=c.sample.prompt_template, completion_tokens=c.sample.completion_tokens,
                      selected_by=selected_by)
