"""The critique prompt and its strict parser.

The teacher is asked for the structure of the One-Shot CFT prompt: the key concepts, a check of
each step, and for a wrong solution the errors and a corrected solution with its answer boxed,
ending with one line ``Conclusion: right [END]`` or ``Conclusion: wrong [END]``. Templates are
versioned like the sampling ones (a changed text is a new id, never an edit), and the id is in
every critique and in the cache key.

Parsing is strict on purpose: a critique is training data, and a guessed verdict would put a
critique that says one thing under a label that says another. Anything other than a final
conclusion line with one of the two words is "unparsed" with the reason, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from assay.core.registry import Registry
from assay.verify.extract import extract_boxed


@dataclass(frozen=True)
class CritiqueTemplate:
    id: str
    user: str
    """The user turn; ``{question}`` and ``{solution}`` are replaced. It is also the user turn of the
    CFT training rows, so the student learns to answer exactly this request."""
    system: Optional[str] = None

    def user_text(self, question: str, solution: str) -> str:
        # str.replace, not format: problems and solutions are full of braces (LaTeX).
        return self.user.replace("{question}", question).replace("{solution}", solution)

    def messages(self, question: str, solution: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.user_text(question, solution)}]


CRITIQUE_TEMPLATES: Registry[CritiqueTemplate] = Registry("critique template")
CRITIQUE_TEMPLATES.add("critique-v1", CritiqueTemplate(
    "critique-v1",
    "Please critique whether the following solution to the question is correct.\n\n"
    "Question:\n{question}\n\nSolution:\n{solution}\n\n"
    "First name the key concepts and methods the question needs. Then check each step of the solution in "
    "turn. If the solution is wrong, explain which step is wrong and why, and write a corrected solution with "
    "the final answer in \\boxed{}. Finish with a last line that is exactly 'Conclusion: right [END]' if the "
    "solution is correct, or 'Conclusion: wrong [END]' if it is not.",
))

VERDICTS = ("right", "wrong")
# The last non-empty line, allowing only markdown emphasis/heading marks and a list number around it.
_FINAL = re.compile(r"^[\s*#_>]*(?:\d{1,2}[.)]\s*)?[\s*_]*conclusion\s*[*_]*\s*:\s*[*_]*\s*(right|wrong)\s*[*_.]*\s*\[END\][\s*_]*$",
                    re.IGNORECASE)
_ANY = re.compile(r"conclusion\s*[*_]*\s*:\s*[*_]*\s*(right|wrong)\b", re.IGNORECASE)
_HEADING = re.compile(r"^[\s*#_>]*conclusion\s*[*_]*\s*:?[\s*_]*$", re.IGNORECASE)
_WORD_END = re.compile(r"^[\s*_]*(right|wrong)\s*[*_.]*\s*\[END\][\s*_]*$", re.IGNORECASE)
# A line that starts as a conclusion ("Conclusion: incorrect", "3. **Conclusion:** the solution is wrong").
_LINE = re.compile(r"^[\W\d_]*conclusion\s*[*_]*\s*:\s*(.*)$", re.IGNORECASE)


@dataclass(frozen=True)
class Parsed:
    verdict: Optional[str]
    """``right``, ``wrong`` or None (unparsed)."""
    corrected: Optional[str]
    """The content of the last ``\\boxed{}`` of the critique (the corrected answer of a 'wrong' one)."""
    error: Optional[str] = None
    """Why there is no verdict."""


def parse_critique(text: str) -> Parsed:
    """The verdict of a critique, strictly: its last non-empty line must be ``Conclusion: right [END]``
    or ``Conclusion: wrong [END]``, and no other line may conclude the opposite."""
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    if not lines:
        return Parsed(None, None, "empty critique")
    m = _FINAL.match(lines[-1])
    body = lines[:-1]
    if m is None and len(lines) > 1 and _HEADING.match(lines[-2]):
        m = _WORD_END.match(lines[-1])  # "### Conclusion:" on its own line, then "Right [END]"
        body = lines[:-2]
    if m is None:
        if _ANY.search(lines[-1]) and "[END]" not in lines[-1]:
            return Parsed(None, None, "the conclusion line lacks [END] (cut off, or not the requested format)")
        return Parsed(None, None, "the last line is not 'Conclusion: right [END]' or 'Conclusion: wrong [END]'")
    verdict = m.group(1).lower()
    for line in body:
        earlier = _LINE.match(line)
        if earlier is None:
            continue
        said = re.sub(r"[*_.\s]|\[END\]", "", earlier.group(1), flags=re.IGNORECASE).lower()
        if said != verdict:
            return Parsed(None, None, f"an earlier conclusion line does not say '{verdict}' as the last one does")
    return Parsed(verdict, extract_boxed(text))
