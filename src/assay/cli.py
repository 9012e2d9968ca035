"""The ``assay`` command: a thin shell over the stage modules.

Each subcommand is a stage module's config dataclass (flags are derived from its fields) and its
``cli_run(cfg)``; the heavy imports happen only for the subcommand that runs. Bad input exits with
code 2 and a one-line ``file:line: what is wrong`` message, never a traceback.

``--run-dir DIR`` puts any command inside a run directory: relative output paths land in DIR,
relative input paths are looked up there first, and the command is recorded as a stage of DIR's
manifest (inputs and outputs with hashes, config, FLOPs, wall time; see ``assay.core.runs``).
``assay run RECIPE.yaml [key=value ...]`` runs a pipeline recipe with dotted overrides.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path
from typing import Optional

from assay.core.config import ConfigError, add_config_args, config_from_args, locate, to_mapping
from assay.core.io import InputError
from assay.core.redact import redact_text

# name -> (module, config class, help). Each module defines `cli_run(cfg) -> int`.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "problems": ("assay.data.problems", "ProblemsConfig", "load or generate a problem set as Problem JSONL"),
    "sample": ("assay.sampling.stage", "SampleConfig", "sample n completions per problem (resumable)"),
    "verify": ("assay.verify.stage", "VerifyConfig", "extract final answers and judge them (all cores, time-limited)"),
    "stats": ("assay.eval.metrics", "StatsConfig", "pass@k, coverage@k, maj@k, diversity@k, tokens, FLOPs"),
    "plan": ("assay.sampling.plan", "PlanConfig", "compute-matched samples per problem for several models under one budget"),
    "judge": ("assay.verify.judge", "JudgeConfig", "false-positive rate: judge the reasoning of answer-correct samples (LLM or human audit)"),
    "curate": ("assay.select.curate", "CurateConfig", "LIMO curation steps from a recipe: difficulty, decontaminate, dedup, rubric, diverse"),
    "select": ("assay.select.stage", "SelectConfig", "turn verified samples into an SFT dataset through a selector pipeline"),
    "train": ("assay.train", "TrainConfig", "supervised fine-tuning with TRL: LoRA or full (resumable)"),
    "eval": ("assay.eval.stage", "EvalConfig", "greedy pass@1, avg@n, maj@k on a benchmark under a pinned protocol"),
    "serve": ("assay.sampling.serve", "ServeConfig", "serve a model over the OpenAI HTTP API (loopback by default)"),
    "report": ("assay.eval.report", "ReportConfig", "write RUN_DIR/report.md with tables and plots"),
    "study": ("assay.studies.workspace", "StudyConfig", "run a study: assay study sampling [key=value ...]"),
    "quickstart": ("assay.studies.quickstart", "QuickstartConfig", "the main job: the whole loop on the embedded default model"),
    "run": ("assay.studies.recipes", "RecipeConfig", "run a pipeline recipe: assay run recipes/quickstart.yaml train.lr=1e-4"),
}
# Commands that manage their own run directory.
OWN_RUN_DIR = {"quickstart", "run", "report", "serve", "study", "plan"}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one ``assay: error:`` line like every other bad input (argparse
    prints its usage block first, which buries the line that says what is wrong)."""

    command = ""  # set on the top-level parser, which reports unknown flags of the command too

    def error(self, message: str):
        where = self.prog.removeprefix("assay").strip() or self.command
        raise InputError(f"{where}: {message} (see assay {where} --help)" if where else
                         f"{message} (see assay --help)")


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (for its flags), keeping startup fast."""
    parser = _Parser(prog="assay", description="Few well-chosen examples, measured.")
    parser.command = command or ""
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
    from assay.core.checks import check_stage

    if not run_dir:
        check_stage(cfg, files=True)
        return int(mod.cli_run(cfg) or 0)
    from assay.core.runs import Run

    run = Run(run_dir)
    cfg = _in_run_dir(cfg, run.dir)
    check_stage(cfg, files=True)
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
    from assay.core.progress import quiet_library_bars

    # Entered before any command module loads: tqdm reads its TQDM_* defaults once, at import.
    with quiet_library_bars():
        return _main(sys.argv[1:] if argv is None else list(argv))


def _main(argv: list[str]) -> int:
    command = next((a for a in argv if not a.startswith("-")), None)
    args = None
    try:
        parser = build_parser(command if command in COMMANDS else None)
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        mod_name, cls_name = args._target
        mod = importlib.import_module(mod_name)
        cls = getattr(mod, cls_name)
        cfg = config_from_args(cls, args)
        return run_command(args.command, mod, cfg, getattr(args, "_run_dir", None))
    except ConfigError as exc:
        flags = [f.name for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None]
        msg = locate(exc, config_file=getattr(args, "_config", None), overrides=getattr(args, "overrides", []),
                     flags=flags, command=args.command)
        return _fail(msg, 2)
    except InputError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        if exc.filename is None:
            raise
        # A path the user gave that cannot be opened (a folder, no permission): input, not a bug.
        return _fail(f"{exc.filename}: {exc.strerror or exc}", 2)
    except RuntimeError as exc:
        from assay.sampling.openai_api import APIError

        if not isinstance(exc, APIError):
            raise
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        print("assay: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


def _fail(message: str, code: int) -> int:
    # One line, whatever the message quoted (a YAML snippet, a model's error text); credentials masked.
    print("assay: error: " + " ".join(redact_text(message).split()), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
