"""Where problems come from: sources, the problems stage, benchmark presets, prompt templates, text
utilities; and the data files assay ships (the reasoning-gym scorer audit, rubric keyword lists)."""

from pathlib import Path

DATA_DIR = Path(__file__).parent
"""The folder of the data files that ship with assay (``*.yaml``)."""
