"""s1 budget forcing (Muennighoff et al. 2025): control how long a model thinks at inference.

*Minimum*: when the model stops (EOS or a stop string) before it has thought ``min_tokens``
tokens, the stop is dropped, ``wait_text`` ("Wait") is appended and the model goes on from
there, at most ``waits`` times; with ``min_tokens: 0`` every stop is overridden ``waits`` times
(s1's "ignore the end of thinking N times"). *Maximum*: when the thinking reaches
``max_tokens``, it is cut, ``answer_prefix`` ("Final Answer:") is appended and the model gets
``answer_tokens`` more tokens to answer.

It wraps any Generator that can continue a completion (``PromptGroup.continuation``: the HF
engine, vLLM, an OpenAI-compatible completions API): each round re-prompts with the prompt plus
the text so far, as s1's own implementation does, so the engines need nothing special. The
models here have no end-of-thinking delimiter, so the end of thinking is the end of the
completion. Token counts and FLOPs are summed over the rounds (each round's prefill of the grown
prompt is real work); inserted texts are not counted as generated tokens. Every sample records
what forcing did (``Sample.forcing``) and its decoding carries the settings, so forced and
unforced samples never resume into each other or compare as equal in eval.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

from assay.core.checks import at_least, fail
from assay.sampling.base import Decoding, Generated, PromptGroup


@dataclass(frozen=True)
class BudgetForcing:
    """The thinking budget; all off by default."""

    min_tokens: int = 0
    """Thinking tokens before the model may stop; a stop before that is replaced by ``wait_text``
    (0: every stop, up to ``waits`` times)."""
    waits: int = 0
    """How many times at most a stop is overridden (0: never; the minimum is off)."""
    max_tokens: Optional[int] = None
    """Thinking tokens at most; at the limit the thinking is cut and ``answer_prefix`` appended
    (None: no cut, the decoding's max_new_tokens ends a completion as usual)."""
    wait_text: str = "\nWait"
    """Appended where a stop was overridden."""
    answer_prefix: str = "\n\nFinal Answer:"
    """Appended where the thinking was cut."""
    answer_tokens: int = 64
    """Tokens the model may add after ``answer_prefix``."""

    @property
    def active(self) -> bool:
        return self.waits > 0 or self.max_tokens is not None


def check_forcing(key, f: BudgetForcing) -> None:
    """Every setting, naming its key (``forcing.min_tokens``)."""
    at_least(key("min_tokens"), f.min_tokens, 0)
    at_least(key("waits"), f.waits, 0)
    at_least(key("answer_tokens"), f.answer_tokens, 1)
    if f.max_tokens is not None:
        at_least(key("max_tokens"), f.max_tokens, 1)
        if f.min_tokens > f.max_tokens:
            raise fail(key("min_tokens"), f"{f.min_tokens} is above forcing.max_tokens ({f.max_tokens})")
    if f.min_tokens > 0 and f.waits == 0:
        raise fail(key("waits"), "forcing.min_tokens needs waits >= 1 (how many times a stop may be overridden)")
    if f.waits > 0 and not f.wait_text:
        raise fail(key("wait_text"), "must not be empty when waits > 0 (it is what the model continues from)")


def decoding_with(decoding: Decoding, forcing: Optional[BudgetForcing]) -> Decoding:
    """``decoding`` carrying ``forcing`` when it is active (an inactive one is not recorded)."""
    return dataclasses.replace(decoding, forcing=forcing if forcing is not None and forcing.active else None)


def _round_seed(seed: int, r: int) -> int:
    if r == 0:
        return seed
    h = hashlib.sha256(f"{seed}:round{r}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


@dataclass
class _State:
    group: PromptGroup
    index: int
    seed: int
    text: str = ""
    thinking: int = 0
    answer: int = 0
    waits: int = 0
    cut: bool = False
    rounds: int = 0
    prompt_tokens: int = 0
    flops: float = 0.0

    @property
    def key(self) -> str:
        # One request per sample and round: the engines key shared prefills by group id.
        return f"{self.group.problem_id}\x00{self.index}"


class ForcedGenerator:
    """A Generator that forces ``forcing`` on ``inner``, round by round."""

    def __init__(self, inner, forcing: BudgetForcing):
        self.inner, self.forcing = inner, forcing
        self.model_name = getattr(inner, "model_name", "")

    def close(self) -> None:
        if hasattr(self.inner, "close"):
            self.inner.close()

    def generate(self, groups: Sequence[PromptGroup], decoding: Decoding) -> Iterator[Generated]:
        f = self.forcing
        cap = f.max_tokens if f.max_tokens is not None else decoding.max_new_tokens
        inner_dec = Decoding(decoding.temperature, decoding.top_p, max(cap, f.answer_tokens), decoding.stop)
        work = [_State(g, i, s) for g in groups for i, s in g.samples]
        while work:
            by_key = {st.key: st for st in work}
            requests = [PromptGroup(st.key, st.group.messages, [(st.index, _round_seed(st.seed, st.rounds))],
                                    prompt=st.group.prompt, continuation=st.group.continuation + st.text,
                                    max_new_tokens=f.answer_tokens if st.cut else cap - st.thinking)
                        for st in work]
            nxt = []
            for out in self.inner.generate(requests, inner_dec):
                st = by_key[out.problem_id]
                st.rounds += 1
                st.prompt_tokens = st.prompt_tokens or out.prompt_tokens
                st.flops += out.flops
                st.text += out.text
                if st.cut:  # the answer after the cut: done whatever it did
                    st.answer += out.completion_tokens
                    yield self._done(st, out.finish_reason)
                    continue
                st.thinking += out.completion_tokens
                if out.finish_reason == "length" or st.thinking >= cap:
                    if f.max_tokens is None:
                        yield self._done(st, "length")
                        continue
                    st.cut = True
                    st.text += f.answer_prefix
                    nxt.append(st)
                elif st.waits < f.waits and (f.min_tokens == 0 or st.thinking < f.min_tokens):
                    st.waits += 1
                    st.text += f.wait_text
                    nxt.append(st)
                else:
                    yield self._done(st, out.finish_reason)
            work = nxt

    def _done(self, st: _State, reason: str) -> Generated:
        return Generated(st.group.problem_id, st.index, st.seed, st.text, st.prompt_tokens, st.thinking + st.answer,
                         st.flops, reason, forcing={"thinking_tokens": st.thinking, "answer_tokens": st.answer,
                                                    "waits": st.waits, "cut": st.cut, "rounds": st.rounds})


def forced(generator, decoding: Decoding):
    """``generator`` itself, or wrapped to force ``decoding.forcing`` when that is set."""
    if decoding.forcing is None:
        return generator
    return ForcedGenerator(generator, decoding.forcing)
