"""The real path: the embedded models (SmolLM2-135M-Instruct, Gemma 3 270M) through the stages (slow tier)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    from assay import models

    model, tok = models.load("smollm2-135m-instruct")
    return model, tok


def test_embedded_model_resolves_to_cached_safetensors(smol):
    from pathlib import Path

    from assay import models

    path = Path(models.resolve("smollm2-135m-instruct"))
    assert (path / "model.safetensors").exists() and (path / "ASSAY_SOURCE").exists()
    s = models.stats_for("smollm2-135m-instruct")
    # 134.5M parameters with tied embeddings; 30 layers of 9 heads x 64.
    assert s.n_params == 134_515_008 and s.n_layers == 30 and s.d_attn == 576


def test_engine_matches_generate_on_smollm2(smol):
    from assay.prompts import TEMPLATES, render_ids

    model, tok = smol
    qs = ["What is 12 + 7?", "A shop sells 3 pens for 5 dollars. How much do 9 pens cost?", "What is 9 * 8?"]
    _assert_engine_matches_generate(model, tok, [render_ids(TEMPLATES.get("boxed-v1").messages(q), tok) for q in qs], 24)


def _assert_engine_matches_generate(model, tok, prompts, max_new_tokens):
    from assay import models
    from assay.generate.engine import ContinuousBatcher, GroupRequest

    eng = ContinuousBatcher(model, tok, models.stats_from_config(model.config), max_batch=2,
                            max_new_tokens=max_new_tokens)
    got = {int(c.group_id): c.token_ids for c in eng.run([GroupRequest(str(i), p, [(0, 0)]) for i, p in enumerate(prompts)])}
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False)[0, len(p):].tolist()
        assert got[i] == ref


def test_quickstart_full_loop_reduced(tmp_path):
    """The real quickstart at reduced sizes: every stage runs on SmolLM2, a rerun redoes nothing."""
    from assay.cli import main

    run = tmp_path / "qs"
    args = ["quickstart", f"run_dir={run}", "pool_size=24", "heldout_size=16", "k=2", "sample.max_new_tokens=32",
            "train.max_steps=3", "eval.max_new_tokens=32"]
    assert main(args) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    stages = manifest["stages"]
    assert list(stages) == ["heldout", "pool", "eval_base", "sample", "verify", "pool_stats", "select", "train",
                            "eval_trained"]
    assert all(s["status"] == "done" for s in stages.values())
    assert stages["sample"]["flops"] > 0 and stages["train"]["flops"] > 0 and stages["eval_base"]["flops"] > 0
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    pool = (run / "pool.jsonl").read_text().splitlines()
    assert len(samples) == 2 * len(pool) and all(s["model"] == "smollm2-135m-instruct" for s in samples)
    base = json.loads((run / "eval_base" / "result.json").read_text())
    trained = json.loads((run / "eval_trained" / "result.json").read_text())
    assert base["protocol"]["protocol_id"] == trained["protocol"]["protocol_id"]
    assert trained["model"] == str(run / "trained") and (run / "trained" / "model.safetensors").exists()
    report = (run / "report.md").read_text()
    assert "Before / after" in report and "greedy pass@1" in report and (run / "plot_accuracy.png").exists()
    # Rerunning finds every stage done and adds nothing.
    assert main(args) == 0
    assert len((run / "samples.jsonl").read_text().splitlines()) == len(samples)
    assert json.loads((run / "manifest.json").read_text())["stages"]["train"]["finished"] == stages["train"]["finished"]


def test_gemma_from_chunk_packages_matches_generate():
    """The second embedded model: assembled from 4 packages, checksum-verified, converted, sampled."""
    from assay import models
    from assay.prompts import TEMPLATES, render_ids

    s = models.stats_for("gemma3-270m")
    assert s.n_params == 268_098_176 and s.n_layers == 18
    model, tok = models.load("gemma3-270m")
    prompts = [render_ids(TEMPLATES.get("plain-v1").messages(q), tok)
               for q in ("State the final answer to the following arithmetic problem: 12 + 7 =", "What is 9 * 8?")]
    _assert_engine_matches_generate(model, tok, prompts, 12)


def test_study_sampling_real_models_reduced(tmp_path):
    from assay.cli import main

    run = tmp_path / "study"
    assert main(["study", "sampling", "problems=16", "k_se=2", f"run_dir={run}"]) == 0
    study = json.loads((run / "study.json").read_text())
    f_wc, f_se = study["WC"]["budget"]["realized_flops"], study["SE"]["budget"]["realized_flops"]
    assert study["WC"]["model"] == "smollm2-135m-instruct" and study["SE"]["model"] == "gemma3-270m"
    assert abs(f_wc - f_se) / f_se < 0.05
    plan = json.loads((run / "plan.json").read_text())["arms"]
    # The plan gives the cheaper model more samples (realized counts follow the realized lengths).
    assert plan["smollm2-135m-instruct"]["k_planned"] > plan["gemma3-270m"]["k_planned"]


def test_study_curation_real_model_reduced(tmp_path):
    """Curated-N vs random-N vs random-4N on SmolLM2 at toy sizes: every stage runs, the funnel is written."""
    from assay.cli import main

    run = tmp_path / "cur"
    assert main(["study", "curation", f"run_dir={run}", "pool_size=48", "heldout_size=16", "k=4", "n=3",
                 "train_steps=2", "sample_max_new_tokens=32", "eval.max_new_tokens=32"]) == 0
    study = json.loads((run / "study.json").read_text())
    assert [f["step"] for f in study["funnel"]] == ["input", "difficulty", "decontaminate", "dedup", "rubric", "diverse"]
    assert study["results"]["base"]["greedy_pass@1"] >= 0
    trained = [k for k, v in study["results"].items() if k != "base" and "skipped" not in v]
    assert "random-4N" in trained and all(study["results"][k]["steps"] == 2 for k in trained)
    assert (run / "curated" / "01_difficulty.rejected.jsonl").exists() and "Curation funnel" in (run / "report.md").read_text()


def test_study_selection_real_model_reduced(tmp_path):
    """Gradient vs random vs curated vs target-only on SmolLM2 at toy sizes: every stage runs on real samples."""
    from assay.cli import main

    run = tmp_path / "sel"
    assert main(["study", "selection", f"run_dir={run}", "target_pool=40", "distractor_pool=24",
                 "distractors=[rg:basic_arithmetic]", "dev_size=16", "n_targets=4", "heldout_size=16", "k=2", "n=3",
                 "train_steps=2", "sample_max_new_tokens=32", "eval.max_new_tokens=32", "gradient.warmup_epochs=2",
                 "gradient.dim=1024", "gradient.max_length=128"]) == 0
    study = json.loads((run / "study.json").read_text())
    res = study["results"]
    assert res["base"]["greedy_pass@1"] >= 0 and res["target-only-N"]["target_share"] == 1.0
    assert res["gradient-N"]["examples"] == 3 and res["gradient-N"]["steps"] == 2
    assert study["gradient_cost"]["feature_flops"] > 0 and "chain_sum" in study["scores_by_task"]
    assert "Gradient selection cost" in (run / "report.md").read_text()
