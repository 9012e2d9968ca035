"""The ``assay`` command: a thin shell over the stage modules.

Each subcommand is a stage module's config dataclass (flags are derived from its fields) and its
``cli_run(cfg)``; the heavy imports happen only for the subcommand that runs. Bad input exits with
code 2 and a one-line ``file:line: what is wrong`` message, never a traceback.

``--run-dir DIR`` puts any command inside a run directory: relative output paths land in DIR,
relative input paths are looked up there first, and the command is recorded as a stage of DIR's
manifest (inputs and outputs with hashes, config, FLOPs, wall time; see ``assay.runs``).
``assay run RECIPE.yaml [key=value ...]`` runs a pipeline recipe with dotted overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Optional

from .config import add_config_args, config_from_args, to_mapping
from .io import InputError
from .redact import redact_text

# name -> (module, config class, help). Each module defines `cli_run(cfg) -> int`.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "problems": ("assay.problems", "ProblemsConfig", "load or generate a problem set as Problem JSONL"),
    "sample": ("assay.generate", "SampleConfig", "sample n completions per problem (resumable)"),
    "verify": ("assay.verify", "VerifyConfig", "extract final answers and judge them (all cores, time-limited)"),
    "stats": ("assay.metrics", "StatsConfig", "pass@k, coverage@k, maj@k, diversity@k, tokens, FLOPs"),
    "plan": ("assay.plan", "PlanConfig", "compute-matched samples per problem for several models under one budget"),
    "judge": ("assay.judge", "JudgeConfig", "false-positive rate: judge the reasoning of answer-correct samples (LLM or human audit)"),
    "curate": ("assay.curate", "CurateConfig", "LIMO curation steps from a recipe: difficulty, decontaminate, dedup, rubric, diverse"),
    "select": ("assay.select", "SelectConfig", "turn verified samples into an SFT dataset through a selector pipeline"),
    "train": ("assay.train", "TrainConfig", "supervised fine-tuning with TRL: LoRA or full (resumable)"),
    "eval": ("assay.evaluate", "EvalConfig", "greedy pass@1, avg@n, maj@k on a benchmark under a pinned protocol"),
    "serve": ("assay.serve", "ServeConfig", "serve a model over the OpenAI HTTP API (loopback by default)"),
    "report": ("assay.report", "ReportConfig", "write RUN_DIR/report.md with tables and plots"),
    "study": ("assay.study", "StudyConfig", "run a study: assay study sampling [key=value ...]"),
    "quickstart": ("assay.quickstart", "QuickstartConfig", "the main job: the whole loop on the embedded default model"),
    "run": ("assay.recipes", "RecipeConfig", "run a pipeline recipe: assay run recipes/quickstart.yaml train.lr=1e-4"),
}
# Commands that manage their own run directory.
OWN_RUN_DIR = {"quickstart", "run", "report", "serve", "study", "plan"}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (for its flags), keeping startup fast."""
    parser = argparse.ArgumentParser(prog="assay", description="Few well-chosen examples, measured.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, cls, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_target=(mod, cls))
        if name == command:
            add_config_args(p, getattr(importlib.import_module(mod), cls))
            if name not in OWN_RUN_DIR:
                p.add_argument("--run-dir", dest="_run_dir", default=None,
                               help="record this command as a stage of a run directory (outputs go there)")
    return parser


def _in_run_dir(cfg, run_dir: Path):
    """Point relative outputs into the run directory, and relative inputs there when they exist there."""
    changes = {}
    for name in getattr(cfg, "OUTPUTS", ()):
        v = getattr(cfg, name)
        if v and not Path(v).is_absolute():
            changes[name] = str(run_dir / v)
    for name in getattr(cfg, "INPUTS", ()):
        v = getattr(cfg, name)
        if v and not Path(v).is_absolute() and not Path(v).exists() and (run_dir / v).exists():
            changes[name] = str(run_dir / v)
    return dataclasses.replace(cfg, **changes)


def run_command(command: str, mod, cfg, run_dir: Optional[str]) -> int:
    if not run_dir:
        return int(mod.cli_run(cfg) or 0)
    from .runs import Run

    run = Run(run_dir)
    cfg = _in_run_dir(cfg, run.dir)
    inputs = [getattr(cfg, n) for n in getattr(cfg, "INPUTS", ()) if getattr(cfg, n) and Path(getattr(cfg, n)).exists()]
    outputs = [getattr(cfg, n) for n in getattr(cfg, "OUTPUTS", ())]
    models = [cfg.model] if hasattr(cfg, "model") else []
    rc = {"rc": 0}

    def go():
        rc["rc"] = int(mod.cli_run(cfg) or 0)
        return {"rc": rc["rc"]}

    # One entry per (command, output): two `sample` runs into one directory keep both lineages.
    name = f"{command}:{Path(outputs[0]).name}" if outputs else command
    run.stage(name, to_mapping(cfg), go, inputs=inputs, outputs=outputs, models=models)
    return rc["rc"]


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    mod_name, cls_name = args._target
    try:
        mod = importlib.import_module(mod_name)
        cfg = config_from_args(getattr(mod, cls_name), args)
        return run_command(args.command, mod, cfg, getattr(args, "_run_dir", None))
    except InputError as exc:
        print(f"assay: error: {redact_text(str(exc))}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        from .generate.openai_api import APIError

        if not isinstance(exc, APIError):
            raise
        print(f"assay: error: {redact_text(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("assay: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
