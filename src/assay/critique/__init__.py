"""Critique fine-tuning (CFT): solutions from many generators, teacher critiques, a consistency filter.

One-Shot CFT (Wang et al., 2025) and CFT (Wang et al., 2025) train a model to *critique* a candidate
solution instead of imitating a correct one. The data comes from three stages, each a library
function with a command:

- ``solutions`` (:mod:`assay.critique.solutions`): candidate solutions to seed problems from many
  generators and temperatures, deduplicated and verified; optionally the seed problems are chosen
  by the student's own pass rate (a band of moderate difficulty);
- ``critique`` (:mod:`assay.critique.stage`): each teacher critiques each solution under a versioned
  prompt (:mod:`assay.critique.prompts`); calls are cached, so a rerun costs nothing and a killed run
  resumes; the consistency filter (:mod:`assay.critique.consistency`) keeps a critique only when its
  verdict matches the verifier's and its corrected answer (for a wrong solution) is the reference;
  the kept critiques become chat rows that ``assay train`` takes.
"""
