"""The selection study: its bookkeeping on hand-made rows, and every stage end to end on a tiny model."""

from __future__ import annotations

import json

import pytest

from assay.core.io import InputError, read_records
from assay.core.records import Problem, SFTExample


def _row(pid: str) -> SFTExample:
    return SFTExample(f"{pid}/0", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], pid, 0,
                      "m", "plain-v1", 1, "t")


def test_target_share_and_scores_by_task_hand_computed():
    from assay.studies.selection import scores_by_task, target_share, task_name

    task_of = {"a": "chain_sum", "b": "gcd", "c": "chain_sum", "d": "gcd"}
    assert target_share([_row("a"), _row("b"), _row("c")], task_of, "chain_sum") == pytest.approx(2 / 3)
    assert target_share([], task_of, "chain_sum") == 0.0
    by = scores_by_task({"a/0": 0.5, "c/3": 0.1, "b/1": -0.2, "d/0": 0.0}, task_of)
    assert by == {"chain_sum": {"candidates": 2, "mean_score": pytest.approx(0.3)},
                  "gcd": {"candidates": 2, "mean_score": pytest.approx(-0.1)}}
    # Ranking c (0.9) > a (0.5) > d (0.0) > b (-0.2): targets a, c; every target pair beats every other one.
    from assay.studies.selection import ranking_quality
    rk = ranking_quality({"a/0": 0.5, "c/3": 0.9, "b/1": -0.2, "d/0": 0.0}, task_of, "chain_sum", ks=(1, 3, 9))
    assert rk == {"auc": 1.0, "precision_at": {1: 1.0, 3: pytest.approx(2 / 3), 9: 0.5}}
    rk = ranking_quality({"a/0": 0.0, "c/3": 0.9, "b/1": 0.5, "d/0": 0.0}, task_of, "chain_sum", ks=(2,))
    assert rk["auc"] == pytest.approx((1 + 1 + 0 + 0.5) / 4) and rk["precision_at"] == {2: 0.5}
    assert task_name("rg:chain_sum") == task_name("reasoning_gym:chain_sum") == "chain_sum"


@pytest.mark.parametrize("over, msg", [
    ({"distractors": ["gsm8k-test"]}, "must be rg:<name>"),
    ({"distractors": ["rg:chain_sum"]}, "distinct tasks"),
    ({"seed": 9_900}, "pool seeds 9900..10059 overlap held-out seeds 10000..10359"),
    ({"heldout_size": 10_001}, "held-out seeds 10000..20000 overlap dev seeds 20000..20047"),
    ({"band": [1]}, r"band: must be \[min, max\], got \[1\]"),
])
def test_bad_settings_are_named(over, msg, tmp_path):
    from assay.studies.selection import StudySelectionConfig, run

    with pytest.raises(InputError, match=msg):
        run(StudySelectionConfig(run_dir=str(tmp_path / "s"), **over))


def test_study_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    """Every stage runs and the bookkeeping holds. A random model solves nothing, so the pool
    selectors here skip 'correct' (the real-model run keeps it); numbers mean nothing."""
    from assay.cli import main

    run = tmp_path / "sel"
    # One-digit sums have few distinct questions, so pool, dev and held-out collide and decontamination bites.
    args = ["study", "selection", f"run_dir={run}", f"model={tiny_model_dir}", "distractors=[rg:gcd]",
            "target_kwargs={min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}", "target_pool=30",
            "distractor_pool=8", "dev_size=6", "n_targets=3", "heldout_size=40", "k=2", "n=4",
            "pool_selectors=[dedup, 'max_per_problem:1']",
            "sample_max_new_tokens=6", "train_steps=2", "train.batch_size=2", "eval.max_new_tokens=6",
            "gradient.warmup_epochs=2", "gradient.lora_r=4", "gradient.dim=256", "gradient.max_length=64"]
    assert main(args) == 0
    study = json.loads((run / "study.json").read_text())
    res = study["results"]
    assert set(res) == {"base", "gradient-N", "random-N", "target-only-N", "curated-N"}
    for name in ("gradient-N", "random-N", "target-only-N"):
        assert res[name]["examples"] == 4 and res[name]["steps"] == 2, name
    # Each set's target share is the fraction of its rows whose problem is a chain_sum problem of the pool.
    task_of = {p.id: p.source for p in read_records(run / "pool.jsonl", Problem)}
    for name in res:
        if name != "base":
            rows = read_records(run / ("curated/sft.jsonl" if name == "curated-N" else f"{name}.sft.jsonl"), SFTExample)
            hits = sum(task_of[r.problem_id] == "reasoning_gym:chain_sum" for r in rows)
            assert res[name]["examples"] == len(rows), name  # an empty set is reported, not trained
            assert res[name]["target_share"] == (hits / len(rows) if rows else 0.0), name
    assert res["target-only-N"]["target_share"] == 1.0
    assert "vs_random-N" in res["gradient-N"] and "vs_random-N" not in res["random-N"]
    # One candidate per problem; decontamination dropped some of the 30 + 8 problems, each with its reason.
    dropped = [json.loads(line) for line in (run / "pool.decontaminated.jsonl").read_bytes().splitlines()]
    assert dropped and all(d["reason"].startswith("same question as held-out problem") for d in dropped)
    raw = 0
    for t, asked in (("chain_sum", 30), ("gcd", 8)):
        kept = len((run / f"pool.raw.{t}.jsonl").read_bytes().splitlines())
        rej = run / f"pool.raw.{t}.jsonl.rejected.jsonl"
        # Every row asked for is either kept or rejected as a repeat, with its reason.
        repeats = [json.loads(line) for line in rej.read_bytes().splitlines()] if rej.exists() else []
        assert kept + len(repeats) == asked, t
        raw += kept
    assert study["pool"]["candidates"] == study["pool"]["problems"] == raw - len(dropped)
    assert set(study["scores_by_task"]) == {"chain_sum", "gcd"}
    assert sum(v["candidates"] for v in study["scores_by_task"].values()) == study["pool"]["candidates"]
    cost = study["gradient_cost"]
    assert cost["checkpoints"] == 2 and cost["gradients"] == 2 * (study["pool"]["candidates"] + study["n_targets"])
    # Dev and held-out questions never reach the pool.
    pool_q = {json.loads(line)["question"] for line in (run / "pool.jsonl").read_bytes().splitlines()}
    for other in ("heldout.jsonl", "dev.jsonl"):
        assert not pool_q & {json.loads(line)["question"] for line in (run / other).read_bytes().splitlines()}
    report = (run / "report.md").read_text()
    assert "| target-only-N | 4 | 1.00 |" in report and "Gradient selection cost" in report
    # Rerun: every stage is done already, nothing is sampled or trained again.
    before = (run / "manifest.json").read_text()
    assert main(args) == 0
    assert (run / "manifest.json").read_text() == before
