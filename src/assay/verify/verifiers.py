"""Verifiers: judging one extracted answer against one problem's reference.

Judging is delegated to tools built for it: Math-Verify for math answers (symbolic and numeric
equivalence: ``\\frac{1}{2}`` = ``0.5``, ``{1,2}`` = ``{2,1}``) and reasoning-gym's scorers, as
audited in ``assay.verify.rg``. A verifier is a small protocol, registered by name.
"""

from __future__ import annotations

import functools
import json
from typing import Callable, Optional, Protocol

from assay.core.records import Problem
from assay.core.registry import Registry
from assay.verify import rg as verify_rg
from assay.verify.extract import DEFAULT_EXTRACTORS, extract_answer


class Verifier(Protocol):
    """Judges one completion against one problem.

    Optional hooks, looked up with getattr: ``warmup()`` (imports, run once per worker before its
    time limit starts), ``check(problem)`` (raise ValueError if the problem lacks what this
    verifier needs; run once per problem in the parent), ``method_for(problem) -> str`` (recorded
    in Verdict.method; default ``name``) and ``preload`` (module names to import once, up front).
    """

    name: str

    def verify(self, problem: Problem, completion: str) -> tuple[Optional[str], bool]: ...


VERIFIERS: Registry[Callable[[list[str]], Verifier]] = Registry("verifier")
"""name -> factory taking the extractor names."""


def _parse_math(answer: str) -> list:
    from math_verify import parse

    # Boxing makes Math-Verify parse the whole string as one LaTeX answer.
    return parse("\\boxed{" + answer + "}", parsing_timeout=None)


_parse_gold = functools.lru_cache(maxsize=1 << 16)(_parse_math)  # many samples share one gold


def math_equal(gold: str, prediction: str) -> bool:
    """Math-Verify's judgement of ``prediction`` against ``gold``, with its signal timeouts off.

    Call it only under an external time limit (``TimedPool``): it can run for ever.
    """
    from math_verify import verify

    return bool(verify(_parse_gold(gold), _parse_math(prediction), timeout_seconds=None))


class MathVerifyVerifier:
    """Math answers: extract, then ask Math-Verify whether it equals ``problem.answer``."""

    name = "math_verify"
    preload = ("math_verify",)

    def __init__(self, extractors: list[str] = DEFAULT_EXTRACTORS):
        self.extractors = list(extractors)

    def warmup(self) -> None:
        import logging

        # It warns once per process that its timeout is off; ours is enforced by the pool instead.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        math_equal("\\frac{1}{2}", "0.5")  # builds the LaTeX parser, ~0.1 s

    def verify(self, problem: Problem, completion: str) -> tuple[Optional[str], bool]:
        extracted = extract_answer(completion, self.extractors)
        if extracted is None:
            return None, False
        return extracted, math_equal(problem.answer, extracted)


def rg_task_entry(problem: Problem) -> tuple[str, dict]:
    """The reasoning-gym task name and entry stored in ``problem.meta``; ValueError if malformed."""
    task, raw = problem.meta.get("rg_task"), problem.meta.get("rg_entry")
    if not isinstance(task, str) or not task:
        raise ValueError("meta.rg_task (the reasoning-gym task name) is missing")
    if not isinstance(raw, str):
        raise ValueError("meta.rg_entry (the reasoning-gym entry as a JSON string) is missing")
    try:
        entry = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"meta.rg_entry is not valid JSON ({exc.msg})") from None
    if not isinstance(entry, dict) or "answer" not in entry:
        raise ValueError("meta.rg_entry must be a JSON object with at least 'question' and 'answer'")
    return task, entry


class ReasoningGymVerifier:
    """reasoning-gym tasks, scored as audited in ``assay.verify.rg``; only a full 1.0 counts.

    Scorers give partial credit to near misses (``-4.5`` for ``-4`` scores 0.5 in chain_sum);
    a verdict is binary, and a near miss is a wrong answer. A task whose scorer would execute the
    answer is scored by assay's own code or refused at ``check()``, before anything runs.
    """

    name = "reasoning_gym"
    preload = ("reasoning_gym", "assay.verify.rg", "assay.verify.safe_expr")

    def __init__(self, extractors: list[str] = DEFAULT_EXTRACTORS):
        self.extractors = list(extractors)

    def warmup(self) -> None:
        import reasoning_gym  # noqa: F401  (about 1 s of imports)
        import sympy  # noqa: F401  (the algebra tasks' own scorers need it)

    def check(self, problem: Problem) -> None:
        task, _ = rg_task_entry(problem)
        import reasoning_gym

        if task not in reasoning_gym.factory.DATASETS:
            raise ValueError(f"unknown reasoning-gym task '{task}'")
        verify_rg.check_task(task)

    def method_for(self, problem: Problem) -> str:
        return f"reasoning_gym:{problem.meta.get('rg_task', '?')}"

    def verify(self, problem: Problem, completion: str) -> tuple[Optional[str], bool]:
        task, entry = rg_task_entry(problem)
        extracted = extract_answer(completion, self.extractors)
        if extracted is None:
            return None, False
        return extracted, verify_rg.score(task, extracted, entry) == 1.0


VERIFIERS.add("math_verify", MathVerifyVerifier)
VERIFIERS.add("reasoning_gym", ReasoningGymVerifier)


def choose_verifier(problem: Problem, verifier: str) -> str:
    """``auto``: reasoning-gym problems (``meta.rg_task``) go to reasoning_gym, the rest to math_verify."""
    if verifier != "auto":
        return verifier
    return "reasoning_gym" if "rg_task" in problem.meta else "math_verify"



@functools.lru_cache(maxsize=None)
def _judge_version(verifier: str, rg_task: Optional[str]) -> list:
    """The code that judges: the judging library's version and, for reasoning-gym, whose scorer."""
    from importlib import metadata

    package = {"math_verify": "math-verify", "reasoning_gym": "reasoning-gym"}.get(verifier)
    try:
        version = metadata.version(package) if package else None
    except metadata.PackageNotFoundError:
        version = None
    if verifier == "reasoning_gym" and rg_task:
        return [version, verify_rg.policy(rg_task)[0], verify_rg.SCORER_VERSION]
    return [version]


