"""The sampling stage: a Generator protocol, backends, and the resumable runner behind `assay sample`."""

from .base import BACKENDS, Decoding, Generated, Generator, PromptGroup
from .runner import SampleConfig, cli_run, run_sampling, sample_seed


def _hf_factory(model: str, **kw):
    # Imported on use: the CLI imports this package to build its parser, torch should not load then.
    from .hf import HFGenerator

    return HFGenerator(model, **kw)


if "hf" not in BACKENDS:
    BACKENDS.add("hf", _hf_factory)

__all__ = ["BACKENDS", "Decoding", "Generated", "Generator", "PromptGroup", "SampleConfig", "cli_run",
           "run_sampling", "sample_seed"]
