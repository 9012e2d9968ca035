"""Which reasoning-gym scorers may see model text, and assay's own scorers for those that may not.

reasoning-gym scores a task with ``score_answer(answer, entry)``. Audited on the installed
version (the table is ``assay/data/rg_audit.yaml``), most scorers compare strings or parse
numbers, lists and JSON, and run as they are (``safe``). Some hand the answer to ``eval`` or
``sympy.parse_expr`` (``eval`` underneath), usually only to give partial credit, and one computes
its reference by ``eval`` of the problem text; those are scored by the functions here (``own``),
which give full credit exactly when reasoning-gym's scorer would (tested against it on benign
answers) but parse with ``assay.verify.safe_expr``, ``json``, ``ast.literal_eval`` or plain comparison.
A task the audit cannot vouch for is ``refused``: ``check()`` rejects it before anything runs.
A task missing from the table (a newer reasoning-gym) is refused too, until it is audited.

Only full credit counts as correct in assay, so an own scorer returns 1.0 or 0.0.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from typing import Any, Callable, Optional

import yaml

from assay.data import DATA_DIR
from assay.verify import safe_expr

AUDIT_FILE = DATA_DIR / "rg_audit.yaml"
STATUSES = ("safe", "own", "refused")
# Bump when an own scorer changes what it accepts: verdicts made by the old one are then stale.
SCORER_VERSION = "1"

Scorer = Callable[[str, dict], float]
OWN_SCORERS: dict[str, Scorer] = {}


def _own(*tasks: str) -> Callable[[Scorer], Scorer]:
    def deco(fn: Scorer) -> Scorer:
        for t in tasks:
            OWN_SCORERS[t] = fn
        return fn
    return deco


@functools.lru_cache(maxsize=1)
def audit() -> dict[str, dict]:
    """task -> {status, reason} from the audit file (validated)."""
    data = yaml.safe_load(AUDIT_FILE.read_text(encoding="utf-8"))
    tasks = data.get("tasks", {}) if isinstance(data, dict) else {}
    for task, row in tasks.items():
        if not isinstance(row, dict) or row.get("status") not in STATUSES or not row.get("reason"):
            raise ValueError(f"{AUDIT_FILE}: task '{task}' needs a status ({'/'.join(STATUSES)}) and a reason")
        if (row["status"] == "own") != (task in OWN_SCORERS):
            raise ValueError(f"{AUDIT_FILE}: task '{task}' is '{row['status']}' but "
                             f"{'has' if task in OWN_SCORERS else 'lacks'} an own scorer")
    return tasks


def audited_version() -> str:
    return str(yaml.safe_load(AUDIT_FILE.read_text(encoding="utf-8")).get("reasoning_gym_version", "?"))


def policy(task: str) -> tuple[str, str]:
    """(status, reason) for a task; a task not in the audit is refused."""
    row = audit().get(task)
    if row is None:
        return "refused", (f"not in assay's scorer audit (audited reasoning-gym {audited_version()}); "
                           f"add it to {AUDIT_FILE.name} after reading its score_answer")
    return row["status"], row["reason"]


def check_task(task: str) -> None:
    """ValueError naming the reason if assay will not score ``task``."""
    status, reason = policy(task)
    if status == "refused":
        raise ValueError(f"reasoning-gym task '{task}' is refused: {reason}")


@functools.lru_cache(maxsize=None)
def _rg_scorer(task: str) -> Scorer:
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


def score(task: str, answer: str, entry: dict) -> float:
    """The task's score for ``answer``; never gives model text to a scorer that executes it."""
    status, reason = policy(task)
    if status == "refused":
        raise ValueError(f"reasoning-gym task '{task}' is refused: {reason}")
    if status == "own":
        return OWN_SCORERS[task](answer, entry)
    return _rg_scorer(task)(answer, entry)


def _metadata(entry: dict) -> dict:
    md = entry.get("metadata", {})
    return md if isinstance(md, dict) else {}


# --- full credit is an exact match; reasoning-gym evals the answer only for partial credit ---

@_own("binary_matrix", "string_insertion")
def _exact(answer: str, entry: dict) -> float:
    return float(answer == entry["answer"])


@_own("spiral_matrix")
def _exact_stripped(answer: str, entry: dict) -> float:
    return float(bool(answer) and answer.strip() == str(entry["answer"]).strip())


@_own("n_queens")
def _one_of_valid(answer: str, entry: dict) -> float:
    valid = _metadata(entry).get("valid_answers", [])
    if isinstance(valid, str):  # stored as a Python list literal by some versions
        valid = ast.literal_eval(valid)
    return float(answer in valid)


# --- the reference is computed by eval of the problem text; the stored answer is that value ---

@_own("bitwise_arithmetic")
def _same_integer(answer: str, entry: dict) -> float:
    try:
        return float(int(str(answer), 0) == int(str(entry["answer"]), 0))
    except ValueError:
        return 0.0


@_own("number_sorting")
def _sorted_numbers(answer: str, entry: dict) -> float:
    try:
        user = json.loads(answer.replace("'", '"'))
    except json.JSONDecodeError:
        return 0.0
    try:
        expected = json.loads(entry["answer"])
    except json.JSONDecodeError:
        expected = ast.literal_eval(entry["answer"])  # the reference, never the answer
    if not isinstance(user, list) or len(user) != len(expected):
        return 0.0
    try:
        got, want = [float(x) for x in user], [float(x) for x in expected]
    except (TypeError, ValueError):
        return 0.0
    descending = _metadata(entry).get("direction") != "ascending"
    if got != sorted(got, reverse=descending):
        return 0.0
    return float(all(abs(a - b) <= 1 for a, b in zip(got, want)))


# --- expression answers: assay's own parser instead of sympy.parse_expr ---

@_own("countdown")
def _countdown(answer: str, entry: dict) -> float:
    if not answer.strip():
        return 0.0
    try:
        value = safe_expr.rational(answer)
    except safe_expr.ExprError:
        return 0.0
    md = _metadata(entry)
    numbers = md.get("numbers", [])
    numbers = json.loads(numbers) if isinstance(numbers, str) else numbers
    used = [int(m) for m in re.findall(r"\b\d+\b", answer)]
    if sorted(used) != sorted(int(n) for n in numbers):
        return 0.0
    target = float(md["target"])
    return float(abs(float(value) - target) <= 1e-6 + 1e-5 * abs(target))  # numpy.isclose's rule


@_own("puzzle24")
def _puzzle24(answer: str, entry: dict) -> float:
    try:
        value = safe_expr.rational(answer.strip())
    except safe_expr.ExprError:
        return 0.0
    cfg = _rg_scorer("puzzle24").__self__.config
    used = [int(n) for n in re.findall(r"\b\d+\b", answer)]
    if len(used) != 4 or any(n > cfg.max_value or n < cfg.min_value for n in used):
        return 0.0
    return float(int(value) == 24)  # int() truncates, as reasoning-gym's int() of its parsed value does


def _sympy(text: str, symbols: Optional[dict] = None) -> Any:
    return safe_expr.parse(text, safe_expr.SympyBuilder(symbols))


@_own("polynomial_multiplication")
def _same_polynomial(answer: str, entry: dict) -> float:
    try:
        return float(_sympy(answer) == _sympy(entry["answer"]))
    except safe_expr.ExprError:
        return 0.0


@_own("simple_integration", "intermediate_integration")
def _antiderivative(answer: str, entry: dict) -> float:
    import sympy

    md = _metadata(entry)
    var = md["variable"]
    x, c = sympy.Symbol(var), sympy.Symbol("C")
    try:
        user = _sympy(answer, {var: x, "C": c})
    except safe_expr.ExprError:
        return 0.0
    integrand = _sympy(md["integrand"], {var: x})
    return float(sympy.simplify(sympy.diff(user, x) - integrand) == 0)
