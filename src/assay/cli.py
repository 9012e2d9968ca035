"""The ``assay`` command: a thin shell over the stage modules.

Each subcommand is an entry of the command table (``assay.commands``): a module's config dataclass
(flags are derived from its fields) and its ``cli_run(cfg)``; the heavy imports happen only for the subcommand that runs. Bad input exits with
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

from assay import commands
from assay.core.config import ConfigError, add_config_args, config_from_args, locate
from assay.core.io import InputError
from assay.core.progress import quiet_library_bars
from assay.core.redact import redact_text
from assay.core.runs import Run, declared
from assay.sampling.openai_api import APIError

# name -> (module, config class, help) of every top-level command, from the one command table
# (``assay.commands``); read at call time, so a test can narrow it.
COMMANDS: dict[str, tuple[str, str, str]] = {n: (c.module, c.config, c.help) for n, c in commands.top_level().items()}
# Commands that manage their own run directory.
OWN_RUN_DIR = {n for n, c in commands.top_level().items() if c.own_run_dir}


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
    if not run_dir:
        commands.check_stage(cfg, files=True)
        return int(mod.cli_run(cfg) or 0)

    run = Run(run_dir)
    cfg = _in_run_dir(cfg, run.dir)
    commands.check_stage(cfg, files=True)
    rc = {"rc": 0}

    def go():
        rc["rc"] = int(mod.cli_run(cfg) or 0)
        return {"rc": rc["rc"]}

    # One entry per (command, output): two `sample` runs into one directory keep both lineages.
    outputs = declared(cfg)[1]
    name = f"{command}:{Path(outputs[0]).name}" if outputs else command
    run.stage(name, cfg, go)  # inputs, outputs and models from the config's declared fields
    return rc["rc"]


def main(argv: Optional[list[str]] = None) -> int:
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
