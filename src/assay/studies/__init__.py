"""Studies that compare methods end to end, and the pipelines behind the quickstart and recipes.

A study is its config (a typed dataclass) plus its report; the steps studies share (held-out set
and training pool, sample+verify, students at a fixed step budget, paired comparisons, loading of
results, refusing pipeline-owned fields) live once in ``assay.studies.workspace``.

Adding a study is one new module plus one registry line. The module defines

- ``MyStudyConfig``: a dataclass of ``opt(...)`` fields, with a ``run_dir``;
- ``check(cfg)``: every setting, before the first stage runs;
- ``run(cfg) -> dict``: its stages on a ``workspace.open_run(cfg)`` run directory, built from the
  workspace's steps and the stages' library functions; it writes ``report.md``;
- ``format_report(results) -> str``: what ``assay study NAME`` prints;

and the line, in ``assay.commands`` (or at run time, as ``tests/test_workspace.py`` does)::

    register(Command("mine", "assay.studies.mine", "MyStudyConfig", "what it compares", kind="study",
                     run="run", own_run_dir=True))

after which ``assay study mine key=value ...`` runs it, and so does ``assay run`` on a recipe with
``pipeline: study-mine`` (the name every run saves in its ``recipe.yaml``).
"""
