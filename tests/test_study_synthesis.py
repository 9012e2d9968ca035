"""The synthesis study end to end on tiny models, with a scripted teacher and solver (backends registered here)."""

from __future__ import annotations

import json
import random
import re

import pytest

from assay.sampling.base import Generated


def _sum(text: str) -> int:
    a, op, b = re.search(r"(-?\d+) ([+-]) (-?\d+)", text).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


class Teacher:
    """Writes a well-formed new sum problem for a synthesis prompt; solves a sum problem correctly otherwise."""

    def __init__(self, model, options):
        self.model_name = model

    def generate(self, groups, decoding):
        for g in groups:
            prompt = g.messages[-1]["content"]
            for i, seed in g.samples:
                if "## New Problem" in prompt:
                    rng = random.Random(seed)
                    a, b = rng.randint(1, 60), rng.randint(1, 60)
                    text = f"[Problem]\nMia has {a} shells and finds {b} more. What is {a} + {b}?\n[Solution]\n" \
                           f"She has {a} + {b} = {a + b}. \\boxed{{{a + b}}}"
                else:
                    text = f"The result is \\boxed{{{_sum(prompt)}}}"
                yield Generated(g.problem_id, i, seed, text, 50, 30, 1e6, "stop")


def test_study_synthesis_end_to_end_on_tiny_models(tiny_model_dir, scripted_backend, tmp_path):
    scripted = scripted_backend("scripted-teacher", Teacher)
    from assay.studies.synthesis import StudySynthesisConfig
    from assay.studies.synthesis import run as run_study

    tiny, run_dir = str(tiny_model_dir), tmp_path / "syn"
    cfg = StudySynthesisConfig(student=tiny, synthesizer=tiny, teacher="teacher", solver="solver",
                               teacher_backend=scripted, solver_backend=scripted, seed_pool=20, distill_seeds=4,
                               direct_seeds=6, synth_outputs=4, boost_seeds=2, boost_n=2, n=4, dev_size=4, real_pool=6,
                               solver_k=2, synth_max_new_tokens=8, distill_steps=2, boost_steps=1, train_steps=2,
                               heldout_size=6, run_dir=str(run_dir), prices={"teacher": [1e-6, 4e-6]})
    cfg.distill.max_length = 1024
    cfg.less.dim = 256
    cfg.eval.max_new_tokens = 4
    out = run_study(cfg)
    res = out["results"]
    assert res["teacher-N"]["examples"] == 4 and res["real-N"]["examples"] == 4
    assert res["teacher-N"]["steps"] == 2 and set(res["teacher-N"]["vs_real-N"]) == {"gain", "gain_ci95", "p_value"}
    # The tiny synthesizers write nothing well-formed: their arms say so instead of training on nothing.
    for tag in ("synth-N", "boosted-N", "random-boost-N"):
        assert res[tag] == {"examples": 0, "skipped": "no examples"}
    assert out["funnels"]["teacher"][-1]["step"] == "agreement" and out["funnels"]["teacher"][-1]["kept"] == 6
    c = out["costs"]
    assert c["teacher"]["flops_per_kept"] == pytest.approx((6 * 1e6 + c["teacher"]["gate_flops"]) / 6)
    assert c["synth"]["kept"] == 0 and c["synth"]["flops_per_kept"] is None and c["synth"]["break_even_pool"] is None
    # The scripted teacher reports 50 prompt and 30 completion tokens a call: 6 calls at the given prices.
    assert c["teacher"]["dollars"] == pytest.approx(6 * (50e-6 + 120e-6)) and "Dollars" in (run_dir / "report.md").read_text()
    assert c["boosted"]["fixed"]["less"] > 0 and "less" not in c["random-boost"]["fixed"]
    assert len(out["choice"]["less"]) == 2 and len(out["choice"]["random"]) == 2
    report = (run_dir / "report.md").read_text()
    assert "break-even pool" in report and "teacher-N" in report
    pairs = [json.loads(x) for x in open(run_dir / "distill.synth.jsonl.pairs.jsonl")]
    assert len(pairs) == 4 and pairs[0]["messages"][0]["content"].endswith("## New Problem\n")


def test_the_paper_recipe_is_a_valid_study_config(monkeypatch):
    from pathlib import Path

    import assay.eval.stage as eval_stage
    import assay.studies.synthesis as synthesis
    import assay.synth.gates as gates
    from assay.studies.recipes import load_recipe

    root = Path(__file__).resolve().parents[1]
    if not (root / ".venv-vllm").exists():
        pytest.skip("the recipe's solver and eval use vLLM: `make vllm` builds .venv-vllm (CI does)")
    for mod in (synthesis, gates, eval_stage):
        monkeypatch.setattr(mod, "check_model", lambda *a, **k: None)
    monkeypatch.setattr("assay.train.check_model", lambda *a, **k: None, raising=False)
    name, cfg = load_recipe(root / "recipes" / "synthesis-paper.yaml")
    assert name == "study-synthesis" and cfg.teacher_backend == "openai" and cfg.distill.lr == 1e-5
    synthesis.check(cfg)


def test_bad_settings_are_one_line_before_any_stage(tmp_path, capsys):
    from assay.cli import main

    run = tmp_path / "syn"
    assert main(["study", "synthesis", "seed_pool=10", f"run_dir={run}"]) == 2
    assert "distill_seeds + direct_seeds + n = 56" in capsys.readouterr().err
    assert main(["study", "synthesis", "synth_template=aime-v9", f"run_dir={run}"]) == 2
    assert "did you mean 'aime-v1'" in capsys.readouterr().err
    assert main(["study", "synthesis", "distill.max_steps=3", f"run_dir={run}"]) == 2
    assert "is set by the study" in capsys.readouterr().err
    assert not run.exists()
