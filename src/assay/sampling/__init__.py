"""The sampling stage: a Generator protocol, backends, and the resumable runner behind `assay sample`."""

from assay.sampling.backends import BACKENDS, Backend, HFOptions, OpenAIOptions, make_generator
from assay.sampling.base import Decoding, Generated, Generator, PromptGroup
from assay.sampling.runner import SampleConfig, run_sampling, sample_seed

__all__ = ["BACKENDS", "Backend", "Decoding", "Generated", "Generator", "HFOptions", "OpenAIOptions",
           "PromptGroup", "SampleConfig", "make_generator", "run_sampling", "sample_seed"]
