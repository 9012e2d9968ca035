"""The ``assay`` command: a thin shell over the stage modules.

Each subcommand is a stage module's config dataclass (flags are derived from its fields) and its
``cli_run(cfg)``; the heavy imports happen only for the subcommand that runs. Bad input exits with
code 2 and a one-line ``file:line: what is wrong`` message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

from .config import add_config_args, config_from_args
from .io import InputError

# name -> (module, config class, help). Each module defines `cli_run(cfg) -> int`.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "problems": ("assay.problems", "ProblemsConfig", "load or generate a problem set as Problem JSONL"),
    "sample": ("assay.generate", "SampleConfig", "sample n completions per problem (resumable)"),
    "verify": ("assay.verify", "VerifyConfig", "extract final answers and judge them (all cores, time-limited)"),
    "stats": ("assay.metrics", "StatsConfig", "pass@k, coverage@k, maj@k, diversity@k, tokens, FLOPs"),
    "quickstart": ("assay.quickstart", "QuickstartConfig", "the main job on the embedded default model"),
}


def build_parser(command: Optional[str] = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (for its flags), keeping startup fast."""
    parser = argparse.ArgumentParser(prog="assay", description="Few well-chosen examples, measured.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, cls, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_target=(mod, cls))
        if name == command:
            add_config_args(p, getattr(importlib.import_module(mod), cls))
    return parser


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
        return int(mod.cli_run(cfg) or 0)
    except InputError as exc:
        print(f"assay: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("assay: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
