"""``assay run RECIPE.yaml [key=value ...]``: pipelines as YAML recipes with dotted overrides.

A recipe names its pipeline (``pipeline: quickstart``) and sets any of that pipeline's config
fields; dotted overrides on the command line win (``train.lr=1e-4``). The resolved recipe, every
field filled in, is saved in the run directory as ``recipe.yaml``, so rerunning that file
reproduces the run.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from .config import deep_merge, from_mapping, load_yaml, opt, parse_overrides
from .io import InputError
from .registry import Registry

# pipeline name -> (module, config class); the module has `cli_run(cfg)`.
PIPELINES: Registry[tuple[str, str]] = Registry("pipeline")
PIPELINES.add("quickstart", ("assay.quickstart", "QuickstartConfig"))
PIPELINES.add("study-sampling", ("assay.study_sampling", "StudySamplingConfig"))
PIPELINES.add("study-curation", ("assay.study_curation", "StudyCurationConfig"))
PIPELINES.add("study-selection", ("assay.study_selection", "StudySelectionConfig"))


@dataclass
class RecipeConfig:
    POSITIONAL = "recipe"
    PASSTHROUGH = True
    recipe: str = opt("recipes/quickstart.yaml", help="the recipe YAML file")
    overrides: list = opt([], help="dotted key=value overrides of the pipeline's config")


def load_recipe(path: str | Path, overrides: list[str] = ()) -> tuple[str, object]:
    """(pipeline name, its resolved config) from a recipe file and overrides."""
    data = load_yaml(path)
    name = data.pop("pipeline", None)
    if not name:
        raise InputError(f"{path}: missing 'pipeline' (one of {', '.join(PIPELINES.names())})")
    mod_name, cls_name = PIPELINES.get(name)
    cls = getattr(importlib.import_module(mod_name), cls_name)
    data = deep_merge(data, parse_overrides(list(overrides)))
    return name, from_mapping(cls, data, where=str(path))


def cli_run(cfg: RecipeConfig) -> int:
    name, pcfg = load_recipe(cfg.recipe, cfg.overrides)
    mod = importlib.import_module(PIPELINES.get(name)[0])
    # The pipeline saves its resolved recipe as <run_dir>/recipe.yaml.
    return int(mod.cli_run(pcfg) or 0)
