"""``assay study NAME [key=value ...]``: the studies that compare methods end to end.

Each study is a pipeline with its own config dataclass, run in one run directory; settings are
given as dotted overrides (``assay study sampling problems=60 k_se=1``) or from a recipe through
``assay run`` (``pipeline: study-sampling``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from .config import from_mapping, opt, parse_overrides
from .registry import Registry

STUDIES: Registry[tuple[str, str]] = Registry("study")
STUDIES.add("sampling", ("assay.study_sampling", "StudySamplingConfig"))
STUDIES.add("curation", ("assay.study_curation", "StudyCurationConfig"))


@dataclass
class StudyConfig:
    POSITIONAL = "name"
    PASSTHROUGH = True
    name: str = opt("sampling", help="which study: " + ", ".join(STUDIES.names()))
    overrides: list = opt([], help="dotted key=value settings of the study")


def cli_run(cfg: StudyConfig) -> int:
    mod_name, cls_name = STUDIES.get(cfg.name)
    mod = importlib.import_module(mod_name)
    scfg = from_mapping(getattr(mod, cls_name), parse_overrides(cfg.overrides), where=f"study {cfg.name}")
    return int(mod.cli_run(scfg) or 0)
