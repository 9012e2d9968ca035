"""``assay run RECIPE.yaml [key=value ...]``: pipelines as YAML recipes with dotted overrides.

A recipe names its pipeline (``pipeline: quickstart``) and sets any of that pipeline's config
fields; dotted overrides on the command line win (``train.lr=1e-4``). The resolved recipe, every
field filled in, is saved in the run directory as ``recipe.yaml``, so rerunning that file
reproduces the run. The pipeline names are those of the command table (``assay.commands``):
``quickstart`` and ``study-<name>`` for every registered study.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from assay import commands
from assay.core.config import ConfigError, deep_merge, from_mapping, key_line, load_yaml, locate, opt, parse_overrides
from assay.core.io import InputError
from assay.studies.workspace import print_study


@dataclass
class RecipeConfig:
    POSITIONAL = "recipe"
    PASSTHROUGH = True
    recipe: str = opt("recipes/quickstart.yaml", help="the recipe YAML file")
    overrides: list = opt([], help="dotted key=value overrides of the pipeline's config")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[str, object]:
    """(pipeline name, its resolved config) from a recipe file and overrides; a bad key or value is
    reported at the line of the file (or the override) that set it."""
    data = load_yaml(path)
    name = data.pop("pipeline", None)
    if not name:
        raise InputError(f"{path}: missing 'pipeline' (one of {', '.join(sorted(commands.pipelines()))})")
    try:
        cmd = commands.pipeline(str(name))
    except InputError as exc:
        raise InputError(f"{path}:{key_line(path, 'pipeline')}: {exc}") from None
    data = deep_merge(data, parse_overrides(list(overrides)))
    try:
        return name, from_mapping(cmd.config_class(), data, where=str(path))
    except ConfigError as exc:
        raise InputError(locate(exc, config_file=str(path), overrides=list(overrides), command=str(path))) from None


def run_recipe(cfg: RecipeConfig) -> tuple[object, object]:
    """Run the recipe's pipeline: (its resolved config, what its library function returned)."""
    name, pcfg = load_recipe(cfg.recipe, cfg.overrides)
    mod = commands.pipeline(name).load()
    try:
        # The pipeline checks itself again when it starts; this first check is the one that can
        # name the recipe's line.
        mod.check(pcfg)
    except ConfigError as exc:
        raise InputError(locate(exc, config_file=cfg.recipe, overrides=cfg.overrides, command=cfg.recipe)) from None
    # The pipeline saves its resolved recipe as <run_dir>/recipe.yaml.
    return pcfg, mod.run(pcfg)


def cli_run(cfg: RecipeConfig) -> int:
    pcfg, results = run_recipe(cfg)
    cmd = commands.for_config(pcfg, ("pipeline", "study"))
    # A study prints its summary; another pipeline has its own (the quickstart's before/after table).
    (print_study if cmd.kind == "study" else cmd.load().print_result)(pcfg, results)
    return 0
