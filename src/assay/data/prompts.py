"""Versioned prompt templates.

A score is only comparable to another if both came from the same prompt, so every template has
an id with a version (``boxed-v1``) that is stored in each Sample; changing a template's text
means adding a new version, never editing the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from assay.core.checks import one_of
from assay.core.registry import Registry


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    """Name and version, e.g. ``boxed-v1``."""
    user: str
    """The user turn; ``{question}`` is replaced by the problem text."""
    system: Optional[str] = None
    """A system turn, or None to keep the model's default."""

    def messages(self, question: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        # str.replace, not str.format: problem texts are full of braces (LaTeX).
        msgs.append({"role": "user", "content": self.user.replace("{question}", question)})
        return msgs


TEMPLATES: Registry[PromptTemplate] = Registry("prompt template")

for _t in (
    PromptTemplate("boxed-v1", "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."),
    PromptTemplate("answer-line-v1", "{question}\nSolve it step by step, then end with a line of the form 'The answer is N'."),
    PromptTemplate("plain-v1", "{question}"),
):
    TEMPLATES.add(_t.id, _t)


def render_ids(msgs: list[dict], tokenizer) -> list[int]:
    """Token ids of a chat prompt, through the tokenizer's chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)
    # Base models without a chat template see the turns as plain text.
    text = "\n\n".join(m["content"] for m in msgs) + "\n"
    return tokenizer(text)["input_ids"]


def prompt_ids(tokenizer, messages: list[dict], prompt: Optional[str] = None, continuation: str = "") -> list[int]:
    """A request's token ids as the local backends build them: the raw ``prompt`` or the chat
    ``messages`` rendered, then the ``continuation`` (text the completion already has) tokenized
    without special tokens, so the model goes on from it."""
    ids = list(tokenizer(prompt)["input_ids"]) if prompt is not None else render_ids(messages, tokenizer)
    if continuation:
        ids += list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    return ids


def check_template(key: str, template: str) -> None:
    one_of(key, template, TEMPLATES.names(), "prompt template")
