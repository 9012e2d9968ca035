"""Which span of a free-form completion is *the* answer: a configurable chain of extractors.

Verifiers judge an answer; a completion is prose. The extractors here (``\\boxed{}``, ``<answer>``,
``#### N``, "The answer is", the last number) are tried in a configurable order, and the answer
is cleaned of presentation (delimiters, units, thousands separators) before it is judged.
"""

from __future__ import annotations

import re
from typing import Callable, Optional

from assay.core.registry import Registry

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


