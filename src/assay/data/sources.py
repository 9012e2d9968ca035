"""Where problems come from: benchmark files, reasoning-gym generators and Hugging Face datasets.

Every source ends as a list of ``Problem`` records with stable ids, so later stages never need to
know which upstream schema a problem had. Each upstream set names its fields differently (``question``
or ``problem`` or ``Body`` + ``Question``), writes answers as solutions, floats or strings, and some
generators mislabel their own answers; the mapping from each schema, and the checks that catch a
bad row or a bad label, live here so they are written once and tested against the real files.

A bad row is an ``InputError`` naming ``file:line`` and the field, never a skipped row: a silently
shrunken benchmark changes every number computed from it.
"""

from __future__ import annotations

import ast
import json
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from assay.core.checks import fail, one_of, passes
from assay.core.io import InputError, iter_json_lines
from assay.core.records import Problem
from assay.core.registry import Registry, did_you_mean

DEFAULT_DATA_DIR = "../shared/data"
"""Where the benchmark files live when neither ``data_dir`` nor ``$ASSAY_DATA`` says otherwise."""

PresetLoader = Callable[[Path], list[Problem]]
SOURCES: Registry[PresetLoader] = Registry("problem source")
"""Preset name -> loader taking the data dir. ``rg:<task>``, ``hf:<name>`` and file paths are handled
by ``assay.data.problems.load_problems`` around this registry."""

PRESET_FILES: dict[str, str] = {}
"""Preset name -> its file, relative to the data dir."""


# --------------------------------------------------------------------------------------------
# Field access and answer formatting
# --------------------------------------------------------------------------------------------


def format_number(value: float | int) -> str:
    """``145.0`` -> ``"145"``, ``2.5`` -> ``"2.5"``: upstream files store integer answers as floats."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def get_field(row: dict, name: str, where: str) -> Any:
    if name not in row:
        raise InputError(f"{where}: field '{name}' missing (fields: {', '.join(sorted(row)) or 'none'})")
    value = row[name]
    if value is None:
        raise InputError(f"{where}: field '{name}' is null")
    return value


def text_field(row: dict, name: str, where: str) -> str:
    value = get_field(row, name, where)
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{name}': expected a string, got {type(value).__name__} ({value!r:.60})")
    if not value.strip():
        raise InputError(f"{where}: field '{name}' is empty")
    return value


def answer_field(row: dict, name: str, where: str) -> str:
    """A reference answer as text; numbers are accepted because several sets store them as floats."""
    value = get_field(row, name, where)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{where}: field '{name}': expected a string or number, got {type(value).__name__}")
    text = value.strip() if isinstance(value, str) else format_number(value)
    if not text:
        raise InputError(f"{where}: field '{name}' is empty")
    return text


def id_field(row: dict, name: str, where: str) -> str:
    value = get_field(row, name, where)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise InputError(f"{where}: field '{name}': expected a non-empty string or integer id, got {value!r:.60}")
    return str(value)


def map_rows(
    rows: Iterable[tuple[str, int, dict]],
    *,
    source: str,
    id_prefix: str,
    question: str,
    answer: str,
    ident: Optional[str],
) -> list[Problem]:
    """The generic mapping: ``rows`` yields (where, index, row); ids are the ``ident`` field verbatim
    (the user chose them, perhaps to join with other data) or ``<id_prefix>-<index>``."""
    out = []
    for where, index, row in rows:
        pid = id_field(row, ident, where) if ident else f"{id_prefix}-{index}"
        out.append(Problem(id=pid, question=text_field(row, question, where),
                           answer=answer_field(row, answer, where), source=source))
    return out


def file_rows(path: Path) -> Iterable[tuple[str, int, dict]]:
    # index = line - 1: the row's position in the upstream file (blank lines keep their number).
    for lineno, row in iter_json_lines(path):
        yield f"{path}:{lineno}", lineno - 1, row


def load_jsonl(path: str | Path, question: str = "question", answer: str = "answer",
               ident: Optional[str] = None) -> list[Problem]:
    """Any JSONL file with a field mapping; ids are ``<file stem>-<line - 1>`` unless ``ident`` is given."""
    path = Path(path)
    return map_rows(file_rows(path), source=str(path), id_prefix=path.stem,
                    question=question, answer=answer, ident=ident)


# --------------------------------------------------------------------------------------------
# Presets: the files in the shared data dir
# --------------------------------------------------------------------------------------------


def resolve_data_dir(data_dir: Optional[str] = None) -> Path:
    """``data_dir`` if given, else ``$ASSAY_DATA``, else ``../shared/data`` relative to the cwd."""
    return Path(data_dir or os.environ.get("ASSAY_DATA") or DEFAULT_DATA_DIR).expanduser().resolve()


def _preset(name: str, relpath: str):
    """Register a row converter ``(row, where, index) -> Problem`` as a preset loader of ``relpath``."""

    def deco(convert: Callable[[dict, str, int], Problem]) -> Callable[[dict, str, int], Problem]:
        def load(data_dir: Path) -> list[Problem]:
            path = Path(data_dir) / relpath
            if not path.exists():
                what = "has no " + relpath if Path(data_dir).is_dir() else "was not found"
                raise InputError(
                    f"preset '{name}': data dir {data_dir} {what}; pass --data-dir DIR (or set ASSAY_DATA) "
                    f"to the folder holding {relpath}"
                )
            return [convert(row, where, index) for where, index, row in file_rows(path)]

        load.__doc__ = f"Preset '{name}': {relpath} in the data dir. {convert.__doc__ or ''}".strip()
        SOURCES.add(name, load)
        PRESET_FILES[name] = relpath
        return convert

    return deco


def _gsm8k(split: str) -> Callable[[dict, str, int], Problem]:
    def convert(row: dict, where: str, index: int) -> Problem:
        solution = text_field(row, "answer", where)
        if "####" not in solution:
            raise InputError(f"{where}: field 'answer' has no '#### N' final answer")
        # Upstream writes thousands separators ("#### 1,080") in 93 of 8,792 answers.
        final = solution.rsplit("####", 1)[1].strip().replace(",", "")
        if not final:
            raise InputError(f"{where}: field 'answer' has an empty '####' final answer")
        return Problem(id=f"gsm8k-{split}-{index}", question=text_field(row, "question", where), answer=final,
                       source=f"gsm8k-{split}", meta={"solution": solution})

    convert.__doc__ = "Answer = the number after '####', commas removed; the full solution in meta."
    return convert


_preset("gsm8k-train", "gsm8k/train.jsonl")(_gsm8k("train"))
_preset("gsm8k-test", "gsm8k/test.jsonl")(_gsm8k("test"))


@_preset("math500", "math500/test.jsonl")
def _math500(row: dict, where: str, index: int) -> Problem:
    """Solution, subject, level and unique_id kept in meta."""
    level = get_field(row, "level", where)
    if isinstance(level, bool) or not isinstance(level, int):
        raise InputError(f"{where}: field 'level': expected an integer, got {level!r:.60}")
    return Problem(id=f"math500-{index}", question=text_field(row, "problem", where),
                   answer=answer_field(row, "answer", where), source="math500",
                   meta={"solution": text_field(row, "solution", where), "subject": text_field(row, "subject", where),
                         "level": level, "unique_id": text_field(row, "unique_id", where)})


def _competition(name: str) -> Callable[[dict, str, int], Problem]:
    def convert(row: dict, where: str, index: int) -> Problem:
        # amc23 carries the statement as both 'problem' and 'question'; other copies have one of them.
        qfield = "problem" if "problem" in row or "question" not in row else "question"
        meta = {k: text_field(row, k, where) for k in ("solution", "url") if row.get(k) is not None}
        return Problem(id=f"{name}-{id_field(row, 'id', where)}", question=text_field(row, qfield, where),
                       answer=answer_field(row, "answer", where), source=name, meta=meta)

    convert.__doc__ = "Ids from the file's 'id'; statement from 'problem' (or 'question'); solution/url in meta."
    return convert


_preset("aime24", "aime24/test.jsonl")(_competition("aime24"))
_preset("amc23", "amc23/test.jsonl")(_competition("amc23"))


@_preset("svamp", "svamp/test.jsonl")
def _svamp(row: dict, where: str, index: int) -> Problem:
    """Question = Body + ' ' + Question; Answer without a trailing '.0'; Equation and Type in meta."""
    answer = get_field(row, "Answer", where)
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        raise InputError(f"{where}: field 'Answer': expected a number, got {answer!r:.60}")
    return Problem(id=f"svamp-{id_field(row, 'ID', where)}",
                   question=f"{text_field(row, 'Body', where).strip()} {text_field(row, 'Question', where).strip()}",
                   answer=format_number(answer), source="svamp",
                   meta={"equation": text_field(row, "Equation", where), "type": text_field(row, "Type", where)})


# --------------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------------


def rg_task_names() -> list[str]:
    import reasoning_gym  # noqa: F401  (importing it registers the tasks)
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def _jsonable(obj: Any) -> Any:
    # Task metadata is not guaranteed to be plain JSON; sets are the one case worth keeping exact.
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return repr(obj)


def load_rg(task: str, size: int, seed: int, task_kwargs: Optional[dict] = None) -> list[Problem]:
    """``size`` problems of reasoning-gym ``task``, reproducible from (task, kwargs, size, seed).

    The full entry is kept as a JSON string in ``meta["rg_entry"]`` because the task's own
    ``score_answer`` needs its metadata, whose shape differs per task (Arrow wants one schema per
    column). Tasks whose answers are judged rather than compared (``answer`` is None, e.g.
    ``rush_hour``) get an empty ``answer``.
    """
    import reasoning_gym

    names = rg_task_names()
    if task not in names:
        raise InputError(f"unknown reasoning-gym task '{task}'{did_you_mean(task, names)}")
    kwargs = dict(task_kwargs or {})
    for reserved in ("size", "seed"):
        if reserved in kwargs:
            raise InputError(f"rg:{task}: set '{reserved}' as a config field, not inside task_kwargs")
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise InputError(f"rg:{task}: bad task_kwargs {kwargs}: {exc or type(exc).__name__}") from None
    rg_config = json.dumps({**kwargs, "size": size, "seed": seed}, sort_keys=True, default=_jsonable)
    out = []
    for index in range(size):
        entry = dataset[index]
        answer = entry.get("answer")
        out.append(Problem(
            id=f"{task}-s{seed}-{index}",
            question=str(entry["question"]),
            answer="" if answer is None else str(answer),
            source=f"reasoning_gym:{task}",
            meta={"rg_task": task, "rg_entry": json.dumps(entry, ensure_ascii=False, default=_jsonable),
                  "rg_config": rg_config},
        ))
    return out


# Tasks whose label is a pure function of metadata["expression"] under exact arithmetic. Measured
# (seed 42, 2,000 each): chain_sum and decimal_chain_sum 0 mismatches; basic_arithmetic 20 (1%,
# floor division where the exact value is a fraction); basic_arithmetic with allow_parentheses=False
# 1,334 (67%: evaluated left to right, floor division, and '/ 0').
LABEL_CHECKED_TASKS = frozenset({"basic_arithmetic", "chain_sum", "decimal_chain_sum"})


def safe_eval(expression: str) -> Fraction:
    """The exact value of an arithmetic expression: numeric literals, + - * /, unary minus, parentheses.

    Parsed with ``ast`` and walked node by node (never ``eval``); anything else is a ValueError.
    Fractions keep ``/`` exact, so a label computed with floor division or float rounding shows up.
    """
    text = expression.strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression ({exc.msg})") from None
    ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            # The literal's own text, so 0.1 is exactly 1/10 and not the nearest binary float.
            return Fraction(ast.get_source_segment(text, node) or repr(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            left, right = walk(node.left), walk(node.right)
            if right == 0:
                raise ValueError("division by zero")
            return left / right
        raise ValueError(f"unsupported syntax {type(node).__name__}")

    try:
        return walk(tree.body)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None


def check_expression_label(expression: str, label: str) -> Optional[str]:
    """None when ``label`` is the exact value of ``expression``, else the reason to reject it."""
    try:
        value = safe_eval(expression)
    except ValueError as exc:
        return f"unevaluable expression: {expression!r}: {exc}"
    try:
        labelled = Fraction(label.strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return f"non-numeric label: {label!r} for {expression!r}"
    if labelled != value:
        return f"wrong label: {expression} = {value}, labelled {label}"
    return None


def check_label(problem: Problem) -> Optional[str]:
    """The reason ``problem`` has a wrong reference answer, or None when it is fine or not checkable."""
    if problem.meta.get("rg_task") not in LABEL_CHECKED_TASKS:
        return None
    expression = json.loads(problem.meta.get("rg_entry") or "{}").get("metadata", {}).get("expression")
    if not isinstance(expression, str):
        return None
    return check_expression_label(expression, problem.answer)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


def load_hf(name: str, subset: Optional[str], split: str, question: str = "question", answer: str = "answer",
            ident: Optional[str] = None) -> list[Problem]:
    """``datasets.load_dataset(name, subset, split=split)`` through the generic field mapping.

    ``name`` is a hub id or a local folder of jsonl/parquet files (how the tests run it).
    """
    import datasets

    try:
        dataset = datasets.load_dataset(name, subset, split=split)
    except (OSError, ValueError) as exc:
        raise InputError(f"hf:{name}: could not load subset={subset!r} split={split!r}: {exc}") from None
    label = f"hf:{name}" + (f"/{subset}" if subset else "") + f"[{split}]"
    prefix = "-".join([Path(name.rstrip("/")).name] + ([subset] if subset else []) + [split])
    rows = ((f"{label} row {i}", i, row) for i, row in enumerate(dataset))
    return map_rows(rows, source=f"hf:{name}", id_prefix=prefix, question=question, answer=answer, ident=ident)


def check_task(key: str, task: str, kwargs: dict, kwargs_key: str, seed: int = 0) -> None:
    """A reasoning-gym task ``rg:<name>`` that exists and accepts ``kwargs`` (one item is generated)."""

    if not task.startswith("rg:"):
        raise fail(key, f"'{task}' must be a reasoning-gym task 'rg:<name>'")
    one_of(key, task[3:], rg_task_names(), "reasoning-gym task")
    passes(kwargs_key, load_rg, task[3:], 1, seed, dict(kwargs))
