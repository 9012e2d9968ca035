"""Compute-matched planning (exact arithmetic) and budget-enforced sampling on the tiny model."""

from __future__ import annotations

import json

import pytest

from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, Sample
from assay.sampling.plan import Arm, paper_k, parse_budget, plan, samples_for_budget


def test_paper_rule_without_prompts_is_exact():
    # N_SE / N_WC = r = 3  ->  k_WC = 3 k_SE at equal FLOPs.
    se = Arm("se", n_params=27e9, prompt_tokens=0, completion_tokens=500)
    wc = Arm("wc", n_params=9e9, prompt_tokens=0, completion_tokens=500)
    budget = se.flops_per_problem(2) * 100  # SE gets k=2 on 100 problems
    assert samples_for_budget(se, budget, 100) == 2
    assert samples_for_budget(wc, budget, 100) == 6
    assert paper_k(2, 27e9, 9e9) == 6
    rows = plan([se, wc], budget, 100)
    assert [r["k"] for r in rows] == [2, 6] and [r["paper_k"] for r in rows] == [2, 6]
    assert rows[0]["budget_used"] == pytest.approx(1.0) and rows[1]["budget_used"] == pytest.approx(1.0)


def test_prompt_cost_and_tokenizer_lengths_change_k():
    # 2 N (P + k C) per problem: N=1e9, P=100, C=50 -> fixed 2e11, per sample 1e11.
    arm = Arm("a", n_params=1e9, prompt_tokens=100, completion_tokens=50)
    assert arm.flops_per_problem(0) == 2e11 and arm.flops_per_problem(1) == 3e11
    assert samples_for_budget(arm, budget=10 * 7e11, n_problems=10) == 5  # (7e11 - 2e11) / 1e11
    assert samples_for_budget(arm, budget=10 * 6.99e11, n_problems=10) == 4
    longer = Arm("b", n_params=1e9, prompt_tokens=150, completion_tokens=50)  # another tokenizer
    assert samples_for_budget(longer, budget=10 * 7e11, n_problems=10) == 4
    assert samples_for_budget(arm, budget=10 * 1e11, n_problems=10) == 0


def test_dollar_budgets_and_parsing():
    api = Arm("api", n_params=1e12, prompt_tokens=200, completion_tokens=400, price_in=1e-6, price_out=4e-6)
    # per problem: 2e-4 + k * 1.6e-3 dollars; $10 over 500 problems = 0.02 each -> k = 12.375 -> 12
    assert samples_for_budget(api, 10.0, 500, unit="dollars") == 12
    assert parse_budget("$10") == (10.0, "dollars") and parse_budget("1e15") == (1e15, "flops")
    assert parse_budget("3e14 flops") == (3e14, "flops") and parse_budget("2.5 usd") == (2.5, "dollars")
    with pytest.raises(InputError, match="expected a number"):
        parse_budget("lots")
    with pytest.raises(InputError, match="needs price_in"):
        samples_for_budget(Arm("x", 1e9, 10, 10), 5.0, 10, unit="dollars")


def test_sample_with_budget_realizes_it_within_one_sample(tiny_model_dir, tmp_path):
    from assay.sampling import SampleConfig
    from assay.sampling.budget import run_budgeted

    probs = [Problem(f"q{i}", f"What is {i} + {i}?", str(2 * i), "t") for i in range(6)]
    write_records(tmp_path / "p.jsonl", probs)
    base = dict(problems=str(tmp_path / "p.jsonl"), model=str(tiny_model_dir), temperature=1.0, max_new_tokens=12,
                max_batch=8)
    from assay.sampling import run_sampling

    # Calibrate with a pilot: the mean FLOPs of one sample.
    run_sampling(SampleConfig(out=str(tmp_path / "pilot.jsonl"), n=2, **base), progress=False)
    per_sample = sum(s.flops for s in read_records(tmp_path / "pilot.jsonl", Sample)) / 12
    budget = per_sample * 6 * 5.5  # about 5.5 samples per problem
    out = tmp_path / "b.jsonl"
    summary = run_budgeted(SampleConfig(out=str(out), n=2, **base), budget, progress=False)
    kept = read_records(out, Sample)
    realized = sum(s.flops for s in kept)
    assert realized <= budget and budget - realized <= max(s.flops for s in kept) * 1.5
    assert summary["realized_over_budget"] > 0.95 and summary["k_max"] - summary["k_min"] <= 1
    over = [json.loads(x) for x in (tmp_path / "b.jsonl.over_budget.jsonl").read_text().splitlines()]
    allp = read_records(tmp_path / "b.jsonl.all.jsonl", Sample)
    assert len(kept) + len(over) == len(allp) and all(o["reason"] == "over the FLOPs budget" for o in over)


def test_plan_cli_measures_prompts_per_tokenizer(tiny_model_dir, tmp_path, capsys):
    from assay.cli import main

    write_records(tmp_path / "p.jsonl", [Problem(f"q{i}", f"What is {i} + 1?", str(i + 1), "t") for i in range(4)])
    rc = main(["plan", "--models", f"{tiny_model_dir},api-model", "--problems", str(tmp_path / "p.jsonl"),
               "--k-anchor", "2", "--completion-tokens", "10", "n_params=[api-model=1000]",
               "prompt_tokens=[api-model=5]"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "api-model" in out and "budget" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(str(tiny_model_dir)) or line.startswith("api")]
    assert rows[0][4] == "2"  # the anchor gets k_anchor
    assert int(rows[1][4]) > 2  # a tiny API model gets many more
