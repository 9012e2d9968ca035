"""The one table of assay's commands: stages, pipelines and studies, by name.

``assay --help``, ``assay study NAME``, ``assay run RECIPE`` and the ``pipeline:`` name saved in
every resolved recipe all read this table, so a command cannot be known to one of them and
missing from another. Each entry names its module and config class as strings and is imported
only when used: the CLI stays fast, and this module imports no stage module (stage modules may
import it without a cycle).

Each stage module defines ``cli_run(cfg) -> int`` (prints; the CLI calls it), the library
function named in ``run`` (returns a typed result; pipelines and studies call it), and
``check(cfg, key="", skip=(), files=False)``, its own config check, which ``check_stage`` finds
here by the config's class. A study module defines its config, ``check(cfg)``, ``run(cfg)`` and
``format_report(results)``; adding one is one module plus one ``register`` line (see
``assay.studies``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Collection, Optional

from assay.core.io import InputError
from assay.core.registry import did_you_mean

KINDS = ("stage", "pipeline", "study", "command")


@dataclass(frozen=True)
class Command:
    """One command. ``kind``: a ``stage`` reads and writes files; a ``pipeline`` runs stages in a run
    directory from a recipe; a ``study`` is a pipeline run as ``assay study NAME``; a ``command``
    dispatches to others (``study``, ``run``)."""

    name: str
    module: str
    config: str
    help: str
    kind: str = "stage"
    run: str = ""  # the library function: run(cfg) -> typed result
    own_run_dir: bool = False  # manages its own run directory (no --run-dir flag)

    @property
    def recipe_name(self) -> str:
        """The ``pipeline:`` value of a recipe that runs this command ('' if recipes cannot)."""
        return {"pipeline": self.name, "study": f"study-{self.name}"}.get(self.kind, "")

    def load(self):
        return importlib.import_module(self.module)

    def config_class(self) -> type:
        return getattr(self.load(), self.config)


_TABLE: dict[tuple[str, str], Command] = {}


def register(cmd: Command) -> Command:
    """Add a command; studies are named within their kind (``assay study NAME``)."""
    if cmd.kind not in KINDS:
        raise ValueError(f"command kind '{cmd.kind}' is not one of {', '.join(KINDS)}")
    where = ("study" if cmd.kind == "study" else "top", cmd.name)
    if where in _TABLE:
        raise ValueError(f"command '{cmd.name}' is already registered")
    _TABLE[where] = cmd
    return cmd


def unregister(cmd: Command) -> None:
    _TABLE.pop(("study" if cmd.kind == "study" else "top", cmd.name), None)


def top_level() -> dict[str, Command]:
    """The ``assay COMMAND`` table, in registration order (the order of ``assay --help``)."""
    return {name: c for (space, name), c in _TABLE.items() if space == "top"}


def studies() -> dict[str, Command]:
    return {name: c for (space, name), c in _TABLE.items() if space == "study"}


def study(name: str) -> Command:
    known = studies()
    if name not in known:
        raise InputError(f"unknown study '{name}'{did_you_mean(name, list(known))}")
    return known[name]


def pipelines() -> dict[str, Command]:
    """Recipe pipeline name -> command (``quickstart``, ``study-sampling``, ...)."""
    return {c.recipe_name: c for c in _TABLE.values() if c.recipe_name}


def pipeline(name: str) -> Command:
    known = pipelines()
    if name not in known:
        raise InputError(f"unknown pipeline '{name}'{did_you_mean(name, list(known))}")
    return known[name]


def for_config(cfg: Any, kinds: Collection[str] = KINDS) -> Optional[Command]:
    """The command whose config class ``cfg`` is an instance of (by class name and module, no import)."""
    cls = type(cfg)
    for c in _TABLE.values():
        if c.kind in kinds and c.config == cls.__name__ and (c.module == cls.__module__ or
                                                             getattr(c.load(), c.config, None) is cls):
            return c
    return None


def recipe_name(cfg: Any) -> str:
    """The ``pipeline:`` name to save in ``cfg``'s resolved recipe."""
    c = for_config(cfg, ("pipeline", "study"))
    if c is None:
        raise ValueError(f"{type(cfg).__name__} is not the config of a registered pipeline or study")
    return c.recipe_name


def check_stage(cfg: Any, key: str = "", skip: Collection[str] = (), files: bool = False) -> None:
    """Check one stage's config with its module's ``check``. ``key`` is its section in a pipeline
    (``train``), ``skip`` the fields the pipeline fills in itself; ``files`` also checks input files
    (only a command given them has them). A config of no registered stage has nothing to check."""
    c = for_config(cfg, ("stage",))
    fn = getattr(c.load(), "check", None) if c is not None else None
    if fn is not None:
        fn(cfg, key, set(skip), files)


def library_function(cmd: Command):
    return getattr(cmd.load(), cmd.run)


_S, _P = "stage", "pipeline"
for _c in (
    Command("problems", "assay.data.problems", "ProblemsConfig", "load or generate a problem set as Problem JSONL",
            run="run_problems"),
    Command("sample", "assay.sampling.stage", "SampleConfig", "sample n completions per problem (resumable)",
            run="run_sample"),
    Command("verify", "assay.verify.stage", "VerifyConfig",
            "extract final answers and judge them (all cores, time-limited)", run="run_verify"),
    Command("stats", "assay.eval.metrics", "StatsConfig", "pass@k, coverage@k, maj@k, diversity@k, tokens, FLOPs",
            run="run_stats"),
    Command("plan", "assay.sampling.plan", "PlanConfig",
            "compute-matched samples per problem for several models under one budget", run="run_plan",
            own_run_dir=True),
    Command("judge", "assay.verify.judge", "JudgeConfig",
            "false-positive rate: judge the reasoning of answer-correct samples (LLM or human audit)",
            run="run_judge"),
    Command("solutions", "assay.critique.solutions", "SolutionsConfig",
            "candidate solutions from many generators, verified (seeds chosen by a student's pass rate)",
            run="run_solutions"),
    Command("critique", "assay.critique.stage", "CritiqueConfig",
            "teachers critique solutions; the consistency filter keeps CFT rows for `assay train`",
            run="run_critique"),
    Command("synthesize", "assay.synth.stage", "SynthesizeConfig",
            "a model writes new problems with worked solutions from seed texts (JiuZhang3.0 templates)",
            run="run_synthesize"),
    Command("gate", "assay.synth.gates", "GateConfig",
            "quality gates for synthetic problems: near-duplicates, benchmark contamination, solver agreement",
            run="run_gates"),
    Command("curate", "assay.select.curate", "CurateConfig",
            "LIMO curation steps from a recipe: difficulty, decontaminate, dedup, rubric, diverse",
            run="run_curation"),
    Command("select", "assay.select.stage", "SelectConfig",
            "turn verified samples into an SFT dataset through a selector pipeline", run="run_select"),
    Command("train", "assay.train", "TrainConfig", "supervised fine-tuning with TRL: LoRA or full (resumable)",
            run="run_training"),
    Command("eval", "assay.eval.stage", "EvalConfig",
            "greedy pass@1, avg@n, maj@k on a benchmark under a pinned protocol", run="run_eval"),
    Command("serve", "assay.sampling.serve", "ServeConfig",
            "serve a model over the OpenAI HTTP API (loopback by default)", run="cli_run", own_run_dir=True),
    Command("report", "assay.eval.report", "ReportConfig", "write RUN_DIR/report.md with tables and plots",
            run="run_report", own_run_dir=True),
    Command("study", "assay.studies.workspace", "StudyConfig", "run a study: assay study sampling [key=value ...]",
            kind="command", run="run_named_study", own_run_dir=True),
    Command("quickstart", "assay.studies.quickstart", "QuickstartConfig",
            "the main job: the whole loop on the embedded default model", kind=_P, run="run", own_run_dir=True),
    Command("run", "assay.studies.recipes", "RecipeConfig",
            "run a pipeline recipe: assay run recipes/quickstart.yaml train.lr=1e-4", kind="command",
            run="run_recipe", own_run_dir=True),
    Command("sampling", "assay.studies.sampling", "StudySamplingConfig",
            "weak-cheap vs strong-expensive sampling at matched compute", kind="study", run="run", own_run_dir=True),
    Command("curation", "assay.studies.curation", "StudyCurationConfig",
            "LIMO-style curation vs random data at the same training budget", kind="study", run="run",
            own_run_dir=True),
    Command("selection", "assay.studies.selection", "StudySelectionConfig",
            "gradient (LESS) selection vs random and curated data for a target task", kind="study", run="run",
            own_run_dir=True),
    Command("cft", "assay.studies.cft", "StudyCFTConfig",
            "critique fine-tuning on one problem vs SFT on its solutions vs multi-problem CFT", kind="study",
            run="run", own_run_dir=True),
    Command("synthesis", "assay.studies.synthesis", "StudySynthesisConfig",
            "JiuZhang3.0: distilled synthesizer vs teacher vs real problems, with value selection and a cost ledger",
            kind="study", run="run", own_run_dir=True),
):
    register(_c)
