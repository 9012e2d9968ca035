"""The Generator protocol: what any sampling backend (HF, vLLM, an OpenAI-compatible server) must do.

A backend takes groups of samples that share one prompt and yields finished completions in any
order; the runner (``assay.sampling.runner``) owns records, resume and progress, so a backend is
only the part that talks to an engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Protocol, Sequence


@dataclass(frozen=True)
class Decoding:
    """What the sampler is asked for; stored in every Sample."""

    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)
    forcing: Any = None
    """A :class:`assay.sampling.forcing.BudgetForcing` when a thinking budget is forced, else None.
    Backends never see it: the runner wraps them in a ``ForcedGenerator`` that removes it."""

    def as_dict(self) -> dict:
        d = {"temperature": self.temperature, "top_p": self.top_p,
             "max_new_tokens": self.max_new_tokens, "stop": list(self.stop)}
        # Only when set, so unforced samples keep the records (and resume identities) they had.
        if self.forcing is not None:
            d["forcing"] = dataclasses.asdict(self.forcing)
        return d


@dataclass
class PromptGroup:
    """One problem's prompt and the samples still to draw for it."""

    problem_id: str
    messages: list[dict]
    samples: list[tuple[int, int]]
    """(sample_index, seed) pairs."""
    prompt: Optional[str] = None
    """A raw text prompt (completions API); when set, ``messages`` is ignored and no chat template applies."""
    continuation: str = ""
    """Text the completion already has (budget forcing's earlier rounds): appended after the rendered
    prompt, so the model continues it; the returned text is only what comes after it."""
    max_new_tokens: Optional[int] = None
    """This group's completion limit, over the decoding's (each forced sample has its own budget left)."""


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
    forcing: Optional[dict] = None
    """What budget forcing did (``ForcedGenerator``): thinking tokens, continuations, whether it cut."""


class Generator(Protocol):
    """A sampling backend."""

    model_name: str

    def generate(self, groups: Sequence[PromptGroup], decoding: Decoding) -> Iterator[Generated]:
        """Yield one Generated per requested (problem, sample), as each finishes."""
        ...


# The registry of backends and the one constructor are in ``assay.sampling.backends``.
