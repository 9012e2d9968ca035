"""The ``verify`` stage: find the final answer in each completion and judge it against the reference.

Every number assay reports (pass@k, maj@k, what a training run gained) rests on these verdicts,
so judging is delegated to tools built for it: Math-Verify for math answers (symbolic and numeric
equivalence: ``\\frac{1}{2}`` = ``0.5``, ``{1,2}`` = ``{2,1}``) and reasoning-gym's own scorers for
its tasks. What is ours is the part those tools leave open: which span of a free-form completion
is *the* answer (a configurable chain of extractors), and running the judges on all cores with a
hard per-item time limit (see ``assay.verify_pool``), because one pathological answer must not
stall a run of thousands.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from .config import load_yaml, opt, save_yaml
from .identity import short_hash
from .io import InputError, open_resumable, read_numbered, read_problems
from .records import Problem, Sample, Verdict, key
from .registry import Registry


Extractor = Callable[[str], Optional[str]]
EXTRACTORS: Registry[Extractor] = Registry("extractor")

DEFAULT_EXTRACTORS = ["boxed", "answer_tag", "hashes", "answer_phrase", "last_number"]

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b\s*")
_TOKEN_RE = re.compile(r"[^\s$]+")
_THOUSANDS_RE = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_NUMBER_THEN_WORDS_RE = re.compile(r"([-+]?(?:\d[\d,]*(?:\.\d+)?|\.\d+))\s+[A-Za-z][A-Za-z '-]*")
_NUMBER_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_ANSWER_OPEN_RE = re.compile(r"<answer>", re.IGNORECASE)
_ANSWER_CLOSE_RE = re.compile(r"</answer>", re.IGNORECASE)
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*)")
# "answer" alone is too common in prose ("to answer this...") to count without a colon.
_PHRASE_RE = re.compile(
    r"(?:\bfinal\s+answer\s*(?:\*\*)?\s*(?:is\b\s*:?|:)|\bthe\s+answer\s+is\b\s*:?|\banswer\s*(?:\*\*)?\s*:)",
    re.IGNORECASE,
)
_PHRASE_WINDOW = 2000
_MATH_DELIMS = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]


def _brace_pairs(text: str) -> dict[int, int]:
    """Position of each ``{`` -> its closing ``}``, in one pass (unclosed ones are absent)."""
    stack, pairs, i = [], {}, 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2  # \{ and \} are literal braces in LaTeX, not grouping
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


@EXTRACTORS.register("boxed")
def extract_boxed(text: str) -> Optional[str]:
    """The content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` (also ``\\boxed 5``)."""
    # A box cut off by max_new_tokens is not an answer, so fall back to the last complete one.
    # Brace pairs are found once: a degenerate completion can repeat "\\boxed{" thousands of times.
    pairs: Optional[dict[int, int]] = None
    for m in reversed(list(_BOX_RE.finditer(text))):
        start = m.end()
        if start < len(text) and text[start] == "{":
            pairs = _brace_pairs(text) if pairs is None else pairs
            if start in pairs:
                return text[start + 1 : pairs[start]]
        elif m.group(0).endswith((" ", "\t")):
            token = _TOKEN_RE.match(text, start)
            if token:
                return token.group(0)
    return None


@EXTRACTORS.register("answer_tag")
def extract_answer_tag(text: str) -> Optional[str]:
    """The content of the last ``<answer>...</answer>`` (the format reasoning-gym prompts ask for)."""
    # Last closing tag, then the last opening tag before it: linear even with many unclosed tags.
    closes = list(_ANSWER_CLOSE_RE.finditer(text))
    if not closes:
        return None
    opens = list(_ANSWER_OPEN_RE.finditer(text, 0, closes[-1].start()))
    return text[opens[-1].end() : closes[-1].start()] if opens else None


@EXTRACTORS.register("hashes")
def extract_hashes(text: str) -> Optional[str]:
    """What follows the last ``#### `` on its line (GSM8K's answer format)."""
    found = _HASHES_RE.findall(text)
    return found[-1] if found else None


def _first_math_or_sentence(rest: str) -> str:
    for open_, close in _MATH_DELIMS:
        if rest.startswith(open_):
            end = rest.find(close, len(open_))
            if end > 0:
                return rest[len(open_) : end]
    # Up to the end of the sentence; a period inside a number (3.5) does not end it.
    m = re.search(r"\.(?=\s|$)|\n", rest)
    return rest[: m.start()] if m else rest


@EXTRACTORS.register("answer_phrase")
def extract_answer_phrase(text: str) -> Optional[str]:
    """What follows the last ``Answer:``, ``The answer is`` or ``final answer is``."""
    for m in reversed(list(_PHRASE_RE.finditer(text))):
        # A window, not the whole tail: an answer is short, and repeats must not cost O(n^2).
        rest = text[m.end() : m.end() + _PHRASE_WINDOW]
        if not rest.split("\n", 1)[0].strip():
            rest = rest.lstrip()  # "Answer:" alone on its line, the answer on the next
        rest = rest.lstrip(" \t*")
        boxed = extract_boxed(rest.split("\n", 1)[0])
        candidate = boxed if boxed is not None else _first_math_or_sentence(rest)
        if candidate.strip(" \t*$."):
            return candidate.strip(" \t*")
    return None


@EXTRACTORS.register("last_number")
def extract_last_number(text: str) -> Optional[str]:
    """The last number in the text (integer, decimal, ``a/b`` or with thousands separators)."""
    found = _NUMBER_RE.findall(text)
    return found[-1] if found else None


def clean_answer(answer: str) -> str:
    """Strip what is presentation, not value: math delimiters, ``$``, a trailing period, a unit
    word after a number, thousands separators (``1,000``)."""
    s = answer.strip()
    prev = None
    while s != prev:
        prev = s
        s = s.strip().rstrip(".").strip()
        for open_, close in _MATH_DELIMS:
            if s.startswith(open_) and s.endswith(close) and len(s) >= len(open_) + len(close):
                s = s[len(open_) : len(s) - len(close)]
        s = s.replace("\\$", "").strip("$")
    s = s.replace("{,}", ",")
    # "18 dollars", "8 days": Math-Verify would read the word as a product of symbols.
    unit = _NUMBER_THEN_WORDS_RE.fullmatch(s)
    if unit:
        s = unit.group(1)
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return s


def extract_answer(text: str, extractors: list[str] = DEFAULT_EXTRACTORS) -> Optional[str]:
    """The cleaned answer from the first extractor (in the given order) that finds a non-empty one."""
    for name in extractors:
        raw = EXTRACTORS.get(name)(text)
        if raw is not None:
            cleaned = clean_answer(raw)
            if cleaned:
                return cleaned
    return None


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
    """reasoning-gym tasks, scored as audited in ``assay.verify_rg``; only a full 1.0 counts.

    Scorers give partial credit to near misses (``-4.5`` for ``-4`` scores 0.5 in chain_sum);
    a verdict is binary, and a near miss is a wrong answer. A task whose scorer would execute the
    answer is scored by assay's own code or refused at ``check()``, before anything runs.
    """

    name = "reasoning_gym"
    preload = ("reasoning_gym", "assay.verify_rg", "assay.safe_expr")

    def __init__(self, extractors: list[str] = DEFAULT_EXTRACTORS):
        self.extractors = list(extractors)

    def warmup(self) -> None:
        import reasoning_gym  # noqa: F401  (about 1 s of imports)
        import sympy  # noqa: F401  (the algebra tasks' own scorers need it)

    def check(self, problem: Problem) -> None:
        from . import verify_rg

        task, _ = rg_task_entry(problem)
        import reasoning_gym

        if task not in reasoning_gym.factory.DATASETS:
            raise ValueError(f"unknown reasoning-gym task '{task}'")
        verify_rg.check_task(task)

    def method_for(self, problem: Problem) -> str:
        return f"reasoning_gym:{problem.meta.get('rg_task', '?')}"

    def verify(self, problem: Problem, completion: str) -> tuple[Optional[str], bool]:
        from . import verify_rg

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


@dataclass
class VerifyConfig:
    """Settings of ``assay verify``."""

    INPUTS, OUTPUTS = ("problems", "samples"), ("out",)

    problems: str = opt(help="Problem JSONL with the reference answers (required)")
    samples: str = opt(help="Sample JSONL of completions to judge (required)")
    out: str = opt(help="Verdict JSONL to write (required); an existing one is resumed, not overwritten")
    workers: int = opt(os.cpu_count() or 1, help="verifier processes")
    timeout_s: float = opt(5.0, help="wall-clock limit per completion; an overdue one is a 'timeout' verdict")
    extractors: list[str] = opt(DEFAULT_EXTRACTORS, help="answer extractors, tried in order: " + ", ".join(EXTRACTORS))
    verifier: str = opt("auto", help="auto (reasoning_gym for rg problems, else math_verify) or one of: " + ", ".join(VERIFIERS))


def index_problems(problems: list[Problem]) -> dict[str, Problem]:
    by_id: dict[str, Problem] = {}
    for p in problems:
        if p.id in by_id:
            raise InputError(f"problem id '{p.id}' appears more than once")
        by_id[p.id] = p
    return by_id


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
        from . import verify_rg

        return [version, verify_rg.policy(rg_task)[0], verify_rg.SCORER_VERSION]
    return [version]


def judged_hash(problem: Problem, text: str, verifier: str, extractors: list[str]) -> str:
    """What a verdict judged: the completion, the reference it was held against, and the rules
    (the verifier, its extractors, and the version of the code that scores)."""
    reference = [problem.answer, problem.meta.get("rg_task"), problem.meta.get("rg_entry")]
    task = problem.meta.get("rg_task") if isinstance(problem.meta.get("rg_task"), str) else None
    return short_hash([text, reference, verifier, list(extractors), _judge_version(verifier, task)])


def _stamped(v: Verdict, s: Sample, by_id: dict[str, Problem], cfg: VerifyConfig) -> Verdict:
    p = by_id[s.problem_id]
    return dataclasses.replace(v, input_hash=judged_hash(p, s.text, choose_verifier(p, cfg.verifier), cfg.extractors))


def verify_samples(problems: list[Problem], samples: list[Sample], cfg: VerifyConfig) -> list[Verdict]:
    """One Verdict per sample, in the order of ``samples``."""
    from .verify_pool import iter_verdicts

    by_id = index_problems(problems)
    verdicts: list[Optional[Verdict]] = [None] * len(samples)
    for i, v in iter_verdicts(problems, samples, cfg):
        verdicts[i] = _stamped(v, samples[i], by_id, cfg)
    return verdicts  # type: ignore[return-value]


def _check_samples(cfg: VerifyConfig, problems: list[Problem], numbered: list[tuple[int, Sample]]) -> None:
    """Each sample must name a known problem, once."""
    ids, seen = {p.id for p in problems}, {}
    for lineno, s in numbered:
        if s.problem_id not in ids:
            close = difflib.get_close_matches(s.problem_id, list(ids), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise InputError(f"{cfg.samples}:{lineno}: sample {s.sample_index} of problem_id "
                             f"'{s.problem_id}': no such problem in {cfg.problems}{hint}")
        if key(s) in seen:
            raise InputError(f"{cfg.samples}:{lineno}: sample {key(s)} repeats line {seen[key(s)]}")
        seen[key(s)] = lineno


def _check_resume_config(path: Path, cfg: VerifyConfig) -> None:
    """Refuse to mix verdicts judged under different rules into one file."""
    old = load_yaml(path) if path.exists() else {}
    for field in ("extractors", "verifier"):
        if field in old and old[field] != getattr(cfg, field):
            raise InputError(
                f"{path}: the existing verdicts were made with {field}={old[field]!r}, not {getattr(cfg, field)!r}; "
                "choose another --out or delete the old output to start over"
            )


def _check_done(cfg: VerifyConfig, done: list[Verdict], numbered: list[tuple[int, Sample]],
                by_id: dict[str, Problem]) -> None:
    """Refuse to resume past verdicts that judged something other than the current inputs hold.

    Refused rather than redone: a sample that changed under its verdict means the samples (or
    problems) were replaced after verification, most often by pointing --out at another run's
    verdicts, and whatever was computed from the old pairs is stale too; starting afresh costs
    only the cheapest stage, and an append-only file stays safe to kill.
    """
    at = {key(s): (lineno, s) for lineno, s in numbered}
    fresh = f"choose another --out or delete {cfg.out} to verify afresh"
    for v in done:
        if key(v) not in at:
            raise InputError(f"{cfg.out}: holds a verdict of sample {v.problem_id}/{v.sample_index}, which is not "
                             f"in {cfg.samples}; {fresh}")
        lineno, s = at[key(v)]
        if v.input_hash != _stamped(v, s, by_id, cfg).input_hash:
            why = ("the verdict has no input hash (made by an older assay?)" if v.input_hash is None else
                   "its text or its problem's reference changed since")
            raise InputError(f"{cfg.samples}:{lineno}: sample {s.problem_id}/{s.sample_index} is not the one its "
                             f"verdict in {cfg.out} judged ({why}); {fresh}")


def cli_run(cfg: VerifyConfig) -> int:
    from .progress import bar as progress_bar
    from .verify_pool import iter_verdicts

    problems = read_problems(cfg.problems)
    numbered = read_numbered(cfg.samples, Sample)
    samples = [s for _, s in numbered]
    _check_samples(cfg, problems, numbered)
    by_id = {p.id: p for p in problems}
    config_path = Path(str(cfg.out) + ".config.yaml")
    _check_resume_config(config_path, cfg)
    done, writer = open_resumable(cfg.out, Verdict, key)
    with writer:
        _check_done(cfg, done, numbered, by_id)
        save_yaml(config_path, cfg)
        done_keys = {key(v) for v in done}
        todo = [s for s in samples if key(s) not in done_keys]
        verdicts = list(done)  # _check_done: every one is of a current sample
        # Written in input order (a short reorder buffer) so reruns give byte-identical files.
        buffer: dict[int, Verdict] = {}
        next_i = 0
        with progress_bar(len(samples), "verify", "sample", initial=len(samples) - len(todo)) as bar:
            for i, v in iter_verdicts(problems, todo, cfg):
                buffer[i] = _stamped(v, todo[i], by_id, cfg)
                bar.update(1)
                while next_i in buffer:
                    writer.write(buffer[next_i])
                    verdicts.append(buffer.pop(next_i))
                    next_i += 1
    n = len(verdicts)
    correct = sum(v.correct for v in verdicts)
    timeouts = sum(v.status == "timeout" for v in verdicts)
    errors = sum(v.status == "error" for v in verdicts)
    pct = f" ({100 * correct / n:.1f}%)" if n else ""
    print(f"[assay] verify: {n} verdicts, {correct} correct{pct}, {timeouts} timeouts, {errors} errors -> {cfg.out}")
    return 0
