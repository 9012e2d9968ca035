"""The Hugging Face transformers backend: the continuous batcher over a local or hub model."""

from __future__ import annotations

from typing import Iterator, Sequence

from assay import models
from assay.data.prompts import prompt_ids
from assay.sampling.base import Decoding, Generated, PromptGroup
from assay.sampling.engine import ContinuousBatcher, EngineStats, GroupRequest


class HFGenerator:
    def __init__(self, model: str, *, dtype: str = "float32", device: str = "cpu", max_batch: int = 32,
                 refill_fraction: float = 0.125, trust_remote_code: bool = False):
        self.model_name = model
        self.model, self.tokenizer = models.load(model, dtype=dtype, device=device,
                                                 trust_remote_code=trust_remote_code)
        self.mstats = models.stats_from_config(self.model.config)
        self.max_batch, self.refill_fraction = max_batch, refill_fraction
        self.engine_stats = EngineStats()

    @classmethod
    def from_loaded(cls, model, tokenizer, name: str, max_batch: int = 32, refill_fraction: float = 0.125):
        """Wrap an already-loaded model (tests, evaluation right after training)."""
        self = cls.__new__(cls)
        self.model_name, self.model, self.tokenizer = name, model, tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.mstats = models.stats_from_config(model.config)
        self.max_batch, self.refill_fraction = max_batch, refill_fraction
        self.engine_stats = EngineStats()
        return self

    def _prompt_ids(self, g: PromptGroup) -> list[int]:
        return prompt_ids(self.tokenizer, g.messages, g.prompt, g.continuation)

    def generate(self, groups: Sequence[PromptGroup], decoding: Decoding) -> Iterator[Generated]:
        engine = ContinuousBatcher(
            self.model, self.tokenizer, self.mstats, max_batch=self.max_batch,
            max_new_tokens=decoding.max_new_tokens, temperature=decoding.temperature, top_p=decoding.top_p,
            stop=decoding.stop, refill_fraction=self.refill_fraction)
        self.engine_stats = engine.stats
        requests = (GroupRequest(g.problem_id, self._prompt_ids(g), g.samples, g.max_new_tokens) for g in groups)
        for c in engine.run(requests):
            yield Generated(c.group_id, c.sample_index, c.seed, c.text, c.prompt_tokens, c.completion_tokens,
                            c.flops, c.finish_reason)



