"""The sampling stage: a Generator protocol, backends, and the resumable runner behind `assay sample`."""

from assay.sampling.base import BACKENDS, Decoding, Generated, Generator, PromptGroup
from assay.sampling.runner import SampleConfig, run_sampling, sample_seed

_HF_OPTIONS = {"dtype", "device", "max_batch", "trust_remote_code", "refill_fraction"}
_OPENAI_OPTIONS = {"base_url", "concurrency", "cache", "n_params", "api_key_env"}


def _hf_factory(model: str, **kw):
    # Imported on use: the CLI imports this package to build its parser, torch should not load then.
    from assay.sampling.hf import HFGenerator

    return HFGenerator(model, **{k: v for k, v in kw.items() if k in _HF_OPTIONS})


def _openai_factory(model: str, **kw):
    from assay.sampling.openai_api import OpenAIGenerator

    opts = {k: v for k, v in kw.items() if k in _OPENAI_OPTIONS}
    if "concurrency" not in opts and "max_batch" in kw:
        opts["concurrency"] = kw["max_batch"]
    return OpenAIGenerator(model, **opts)


if "hf" not in BACKENDS:
    BACKENDS.add("hf", _hf_factory)
if "openai" not in BACKENDS:
    BACKENDS.add("openai", _openai_factory)

__all__ = ["BACKENDS", "Decoding", "Generated", "Generator", "PromptGroup", "SampleConfig",
           "run_sampling", "sample_seed"]
