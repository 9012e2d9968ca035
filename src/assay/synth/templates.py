"""Synthesis prompts, versioned, and the strict parser of what a model writes under them.

The layout follows JiuZhang3.0's templates: an instruction naming the level, up to
``max_seed_chars`` of seed text as the math content, guidelines that ask for a ``[Problem]`` and a
``[Solution]`` of 250-350 words, and a ``## New Problem`` header the model continues. The
instructions are written here, not copied. A level's text changing is a new id (``-v2``), never an
edit: the id is in every synthesized problem and in the cache key.

The parser is strict: a problem is kept only with both sections, in order, once each, and a
complete ``\\boxed{}`` answer in the solution (the reference answer of the new problem). Anything
else is rejected with the reason; an answer is never guessed from loose text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from assay.core.registry import Registry
from assay.verify.extract import extract_boxed

GUIDELINES = (
    "Write ONE new problem inspired by the math content above (not a copy of it), then solve it. Use exactly "
    "this form:\n[Problem]\n<the new problem, self-contained, with one final answer>\n[Solution]\n<a "
    "step-by-step solution of 250-350 words that ends with the final answer in \\boxed{}>")


@dataclass(frozen=True)
class SynthTemplate:
    id: str
    level: str
    instruction: str
    guidelines: str = GUIDELINES

    def prompt(self, seed_text: str, max_seed_chars: int = 1000) -> str:
        content = seed_text.strip()[:max_seed_chars]
        return (f"## Instruction\n{self.instruction}\n\n## Math Content\n{content}\n\n## Guidelines\n"
                f"{self.guidelines}\n\n## New Problem\n")

    def messages(self, seed_text: str, max_seed_chars: int = 1000) -> list[dict]:
        return [{"role": "user", "content": self.prompt(seed_text, max_seed_chars)}]


SYNTH_TEMPLATES: Registry[SynthTemplate] = Registry("synthesis template")
LEVELS = {
    "grade-school": "Create a math word problem a grade school student can solve with the four operations.",
    "middle-school": "Create a middle school math problem (fractions, ratios, percentages, simple equations, "
                     "basic geometry).",
    "high-school": "Create a high school math problem (algebra, functions, geometry, counting, probability).",
    "college": "Create a college-level math problem (calculus, linear algebra, discrete mathematics).",
    "amc8": "Create a competition problem at the level of the AMC 8.",
    "amc10": "Create a competition problem at the level of the AMC 10.",
    "amc12": "Create a competition problem at the level of the AMC 12.",
    "aime": "Create a competition problem at the level of the AIME, whose answer is an integer from 0 to 999.",
}
for _level, _instruction in LEVELS.items():
    SYNTH_TEMPLATES.add(f"{_level}-v1", SynthTemplate(f"{_level}-v1", _level, _instruction))


def custom_template(tid: str, instruction: str) -> SynthTemplate:
    """A user's own level: its id and instruction, with the standard layout and guidelines."""
    return SynthTemplate(tid, "custom", instruction)


def _marker(word: str) -> re.Pattern:
    # "[Problem]" at a line's start (text may follow), or a line that is only a heading: "### Problem",
    # "**Problem:**" (models trained on markdown write the section names so).
    return re.compile(rf"^[ \t*#]*(?:\[\s*{word}\s*\][ \t*:]*|{word}[ \t*:]*$)", re.IGNORECASE | re.MULTILINE)


_PROBLEM, _SOLUTION = _marker("problem"), _marker("solution")


@dataclass(frozen=True)
class ParsedSynthesis:
    question: Optional[str]
    solution: Optional[str]
    answer: Optional[str]
    error: Optional[str] = None


def _bad(reason: str) -> ParsedSynthesis:
    return ParsedSynthesis(None, None, None, reason)


def parse_synthesis(text: str, max_question_chars: int = 2000) -> ParsedSynthesis:
    """The new problem, its solution and the solution's boxed answer, or the reason there are none.

    A model continuing ``## New Problem`` may start the problem without the ``[Problem]`` marker;
    the text before ``[Solution]`` is then the problem. A section may also be a heading line of
    its own (``### Problem``, ``**Solution**``); a sentence that merely starts with the word is not."""
    text = text or ""
    probs, sols = list(_PROBLEM.finditer(text)), list(_SOLUTION.finditer(text))
    if len(probs) > 1:
        return _bad(f"{len(probs)} [Problem] sections (one problem per output)")
    if not sols:
        return _bad("no [Solution] section")
    if len(sols) > 1:
        return _bad(f"{len(sols)} [Solution] sections")
    start = probs[0].end() if probs else 0
    if sols[0].start() < start:
        return _bad("[Solution] comes before [Problem]")
    question = text[start:sols[0].start()].strip()
    solution = text[sols[0].end():].strip()
    if not question:
        return _bad("empty problem")
    if len(question) > max_question_chars:
        return _bad(f"problem of {len(question)} characters (over {max_question_chars})")
    if extract_boxed(question) is not None:
        return _bad("the problem states its own \\boxed{} answer")
    answer = extract_boxed(solution)
    if answer is None or not answer.strip():
        return _bad("no complete \\boxed{} final answer in the solution")
    return ParsedSynthesis(question, solution, answer.strip())
