"""The Generator protocol: what any sampling backend (HF, vLLM, an OpenAI-compatible server) must do.

A backend takes groups of samples that share one prompt and yields finished completions in any
order; the runner (``assay.sampling.runner``) owns records, resume and progress, so a backend is
only the part that talks to an engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Protocol, Sequence


@dataclass(frozen=True)
class Decoding:
    """What the sampler is asked for; stored in every Sample."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p,
                "max_new_tokens": self.max_new_tokens, "stop": list(self.stop)}


@dataclass
class PromptGroup:
    """One problem's prompt and the samples still to draw for it."""

    problem_id: str
    messages: list[dict]
    samples: list[tuple[int, int]]
    """(sample_index, seed) pairs."""
    prompt: Optional[str] = None
    """A raw text prompt (completions API); when set, ``messages`` is ignored and no chat template applies."""

@dataclass
class Generated:
    problem_id: str
    sample_index: int
    seed: int
    text: str
    prompt_tokens: int
    completion_tokens: int
    flops: float
    finish_reason: str


class Generator(Protocol):
    """A sampling backend."""

    model_name: str

    def generate(self, groups: Sequence[PromptGroup], decoding: Decoding) -> Iterator[Generated]:
        """Yield one Generated per requested (problem, sample), as each finishes."""
        ...


# The registry of backends and the one constructor are in ``assay.sampling.backends``.
