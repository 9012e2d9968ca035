"""Problem synthesis (JiuZhang3.0): a model writes new problems with worked solutions from seed texts.

- :mod:`assay.synth.templates`: the versioned synthesis prompts (eight levels, grade school to
  AIME, laid out as JiuZhang3.0's ``## Instruction`` / ``## Math Content`` / ``## Guidelines`` /
  ``## New Problem``) and the strict parser of their outputs;
- :mod:`assay.synth.stage`: ``assay synthesize``: seeds x templates x n calls of any backend,
  cached and resumable, parsed into ``Problem`` records, malformed outputs rejected with reasons,
  and (seed prompt -> output) chat rows for distilling a small synthesizer with ``assay train``.
"""
