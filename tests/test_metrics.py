"""The metrics against hand-computed values, the join's refusals, and `assay stats` end to end."""

from __future__ import annotations

import argparse
import json
import math
from fractions import Fraction

import pytest
import yaml

from assay.core.config import add_config_args, config_from_args
from assay.core.io import InputError, write_records
from assay.core.records import Problem, Sample, Verdict
from assay.eval.metrics import (
    StatsConfig,
    cli_run,
    compute_stats,
    coverage_at_k,
    distinct_correct,
    maj_at_k,
    normalize_text,
    pass_at_k,
)


def sample(pid: str, i: int, text: str = "", tokens: int = 10, flops: float = 100.0, **kw) -> Sample:
    fields = dict(
        problem_id=pid, sample_index=i, model="m", prompt_template="boxed-v1", text=text,
        prompt_tokens=5, completion_tokens=tokens, flops=flops, finish_reason="stop",
        decoding={"temperature": 0.7, "top_p": 1.0}, seed=1000 + i,
    )
    fields.update(kw)
    return Sample(**fields)


def verdict(pid: str, i: int, extracted, correct: bool, status: str = "ok") -> Verdict:
    return Verdict(problem_id=pid, sample_index=i, extracted=extracted, correct=correct,
                   method="exact", status=status)


def pairs_of(spec: list[tuple]) -> list[tuple[Sample, Verdict]]:
    """(extracted, correct[, status]) per sample index -> (sample, verdict) pairs of problem p."""
    out = []
    for i, item in enumerate(spec):
        extracted, correct, *status = item
        out.append((sample("p", i), verdict("p", i, extracted, correct, *status)))
    return out


# ------------------------------------------------------------------ pass@k / coverage@k


def test_pass_at_k_hand_values():
    # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-15)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4, abs=1e-15)
    # 1 - C(2,3)/C(4,3) with n-c < k: every 3-subset holds a correct sample
    assert pass_at_k(4, 2, 3) == 1.0
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    # 1 - C(8,4)/C(10,4) = 1 - 70/210 = 2/3
    assert pass_at_k(10, 2, 4) == pytest.approx(2 / 3, abs=1e-15)


def test_pass_at_k_matches_exact_binomial_form():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_stable_for_large_n():
    # C(10000, 5000) overflows a float; the product form does not need it.
    exact = 1 - Fraction(math.comb(9990, 5000), math.comb(10000, 5000))
    assert pass_at_k(10000, 10, 5000) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(3, 1, 4), (0, 0, 1), (5, 1, 0), (5, 6, 2), (5, -1, 2), (5.0, 1, 2)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_coverage_is_mean_pass_at_k_over_problems_with_enough_samples():
    counts = [(5, 2), (5, 0), (2, 2)]
    # k=2: the third problem (n=2) still counts; (0.7 + 0 + 1) / 3
    assert coverage_at_k(counts, 2) == (pytest.approx(1.7 / 3, abs=1e-15), 3)
    # k=4: only the two n=5 problems; (1 - C(3,4)/C(5,4) = 1, 0) / 2
    assert coverage_at_k(counts, 4) == (pytest.approx(0.5, abs=1e-15), 2)
    assert coverage_at_k(counts, 6) == (None, 0)


# ------------------------------------------------------------------ normalisation, maj@k, diversity@k


def test_normalize_text():
    assert normalize_text("  X + 1 =\n 2 ") == "x+1=2"
    assert normalize_text("x+1=2") == "x+1=2"
    assert normalize_text("The  Answer\tIS 4.") == "the answer is 4."
    assert normalize_text("x 1") == "x 1"
    assert normalize_text("\\frac{1}{2}") == "\\frac{1}{2}"
    assert normalize_text("Ｘ") == "x"  # NFKC folds the full-width letter


def test_maj_at_k_majority_wins():
    pairs = pairs_of([("3", False), ("4", True), ("4", True), ("3", False), ("4", True)])
    assert maj_at_k(pairs, 5) is True
    # first 4: "3" x2 vs "4" x2, tie -> "3" (sample 0 is earliest) -> wrong
    assert maj_at_k(pairs, 4) is False
    # first 3: "4" x2 beats "3" x1
    assert maj_at_k(pairs, 3) is True
    assert maj_at_k(pairs, 1) is False


def test_maj_at_k_tie_goes_to_earliest_sample():
    pairs = pairs_of([("7", True), ("8", False), ("8", False), ("7", True)])
    assert maj_at_k(pairs, 4) is True
    pairs = pairs_of([("8", False), ("7", True), ("7", True), ("8", False)])
    assert maj_at_k(pairs, 4) is False


def test_maj_at_k_missing_answers_do_not_vote():
    # Three samples without an answer would win if None voted; the single "5" decides.
    pairs = pairs_of([(None, False), (None, False), ("5", True), (None, False), ("  ", False)])
    assert maj_at_k(pairs, 5) is True
    assert maj_at_k(pairs, 2) is False  # nobody voted
    # Answers group by normal form: " X+1" and "x + 1" are one answer with two votes.
    pairs = pairs_of([("y", False), (" X+1", True), ("x + 1", True)])
    assert maj_at_k(pairs, 3) is True


def test_maj_at_k_uses_first_judged_voter_of_the_winner():
    pairs = pairs_of([("6", False, "timeout"), ("6", True), ("2", False)])
    assert maj_at_k(pairs, 3) is True
    pairs = pairs_of([("6", False, "timeout"), ("6", False, "error"), ("2", False)])
    assert maj_at_k(pairs, 3) is False


def test_maj_at_k_orders_by_sample_index_not_list_order():
    pairs = pairs_of([("1", True), ("2", False), ("2", False)])
    assert maj_at_k(list(reversed(pairs)), 1) is True


def test_diversity_counts_distinct_normalised_correct_texts():
    texts = ["So x = 4.", "so  X=4 .", "Wrong: 5", "x is 4", "SO X = 4."]
    correct = [True, True, False, True, True]
    pairs = [(sample("p", i, text=t), verdict("p", i, "4", ok)) for i, (t, ok) in enumerate(zip(texts, correct))]
    assert distinct_correct(pairs, 5) == 2  # "so x=4." x3, "x is 4"
    assert distinct_correct(pairs, 3) == 1
    assert distinct_correct(pairs, 1) == 1
    with pytest.raises(ValueError):
        distinct_correct(pairs, 6)


# ------------------------------------------------------------------ compute_stats


def build_run():
    """Problem a: n=4, c=2; problem b: n=4, c=0; problem c: n=2, c=1."""
    samples, verdicts = [], []
    spec = {
        "a": [("x=1", "1", True, 10), ("x = 1", "1", True, 20), ("wrong", "2", False, 30), ("no", None, False, 40)],
        "b": [("b0", "9", False, 10), ("b1", "9", False, 10), ("b2", None, False, 10), ("b3", "8", False, 10)],
        "c": [("c0", "3", True, 50), ("c1", "4", False, 50)],
    }
    for pid, rows in spec.items():
        for i, (text, ext, ok, tokens) in enumerate(rows):
            samples.append(sample(pid, i, text=text, tokens=tokens, flops=1000.0))
            verdicts.append(verdict(pid, i, ext, ok))
    verdicts[5] = verdict("b", 1, "9", False, status="timeout")
    return samples, verdicts


def test_compute_stats_hand_values():
    samples, verdicts = build_run()
    stats = compute_stats(None, samples, verdicts, [1, 2, 4, 8])
    rows = {r["k"]: r for r in stats["by_k"]}

    # k=1: (2/4 + 0 + 1/2) / 3
    assert rows[1]["pass_at_k"] == pytest.approx(1 / 3, abs=1e-15)
    assert rows[1]["coverage_at_k"] == rows[1]["pass_at_k"]
    # k=2: a: 1 - C(2,2)/C(4,2) = 5/6; b: 0; c: 1 - 0 = 1
    assert rows[2]["pass_at_k"] == pytest.approx((5 / 6 + 1) / 3, abs=1e-15)
    assert rows[2]["problems"] == 3
    # k=4: only a and b have 4 samples
    assert rows[4]["pass_at_k"] == pytest.approx(0.5, abs=1e-15)
    assert rows[4]["problems"] == 2
    assert rows[8] == {"k": 8, "problems": 0, "pass_at_k": None, "coverage_at_k": None, "maj_at_k": None,
                       "diversity_at_k": None, "diversity_at_k_solved": None, "problems_solved_at_k": 0}

    # maj@1: a (1, correct), b (9, wrong), c (3, correct)
    assert rows[1]["maj_at_k"] == pytest.approx(2 / 3, abs=1e-15)
    # maj@4: a: "1" x2 wins; b: "9" x2 wins (its first judged voter is wrong)
    assert rows[4]["maj_at_k"] == pytest.approx(0.5, abs=1e-15)

    # diversity@2: a: "x=1" and "x = 1" are one text -> 1; b: 0; c: 1
    assert rows[2]["diversity_at_k"] == pytest.approx(2 / 3, abs=1e-15)
    assert rows[2]["diversity_at_k_solved"] == 1.0
    assert rows[2]["problems_solved_at_k"] == 2
    assert rows[4]["diversity_at_k"] == pytest.approx(0.5, abs=1e-15)

    s = stats["summary"]
    assert s["samples"] == 10 and s["problems"] == 3 and s["correct"] == 3
    assert s["accuracy"] == pytest.approx(0.3, abs=1e-15)
    assert s["pass_at_1_mean_over_problems"] == pytest.approx(1 / 3, abs=1e-15)
    assert s["mean_completion_tokens"] == pytest.approx(24.0, abs=1e-12)  # 240 / 10
    assert s["mean_completion_tokens_correct"] == pytest.approx(80 / 3, abs=1e-12)  # (10+20+50)/3
    assert s["total_flops"] == 10000.0
    assert s["flops_per_correct"] == pytest.approx(10000 / 3, abs=1e-9)
    assert (s["timeouts"], s["errors"]) == (1, 0)
    assert s["samples_per_problem_min"] == 2 and s["samples_per_problem_max"] == 4
    assert stats["provenance"]["models"] == ["m"]
    assert stats["provenance"]["seeds"] == [1000, 1001, 1002, 1003]
    assert stats["per_problem"][0] == {"problem_id": "a", "n": 4, "correct": 2}


def test_flops_per_correct_is_none_without_correct_samples():
    samples = [sample("p", i, flops=7.0) for i in range(3)]
    verdicts = [verdict("p", i, "0", False) for i in range(3)]
    s = compute_stats(None, samples, verdicts, [1])["summary"]
    assert s["total_flops"] == 21.0
    assert s["flops_per_correct"] is None
    assert s["mean_completion_tokens_correct"] is None


def test_join_refuses_unmatched_and_duplicate_keys():
    samples, verdicts = build_run()
    with pytest.raises(InputError, match=r"sample \(problem_id='c', sample_index=1\) has no verdict"):
        compute_stats(None, samples, verdicts[:-1], [1])
    extra = verdicts + [verdict("z", 0, "1", True)]
    with pytest.raises(InputError, match=r"verdict \(problem_id='z', sample_index=0\) has no matching sample"):
        compute_stats(None, samples, extra, [1])
    with pytest.raises(InputError, match=r"samples: duplicate key \(problem_id='a', sample_index=0\)"):
        compute_stats(None, samples + [samples[0]], verdicts, [1])
    with pytest.raises(InputError, match=r"verdicts: duplicate key"):
        compute_stats(None, samples, verdicts + [verdicts[0]], [1])
    with pytest.raises(InputError, match="ks"):
        compute_stats(None, samples, verdicts, [0])


def test_problem_set_checks():
    samples, verdicts = build_run()
    problems = [Problem(id=p, question="q", answer="1", source="t") for p in ("a", "b", "c", "d")]
    stats = compute_stats(problems, samples, verdicts, [1])
    assert stats["summary"]["problems_without_samples"] == 1
    assert stats["problems_without_samples"] == ["d"]
    with pytest.raises(InputError, match="problem_id='c'"):
        compute_stats(problems[:2], samples, verdicts, [1])


# ------------------------------------------------------------------ the CLI stage


def test_cli_run_end_to_end(tmp_path, capsys):
    samples, verdicts = build_run()
    write_records(tmp_path / "samples.jsonl", samples)
    write_records(tmp_path / "verdicts.jsonl", verdicts)
    out = tmp_path / "out" / "stats.json"
    cfg = StatsConfig(samples=str(tmp_path / "samples.jsonl"), verdicts=str(tmp_path / "verdicts.jsonl"),
                      out=str(out), ks=[1, 2, 4])
    assert cli_run(cfg) == 0

    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[0].split() == ["k", "pass@k", "coverage@k", "maj@k", "diversity@k", "problems"]
    assert lines[2].split() == ["1", "0.3333", "0.3333", "0.6667", "0.667", "3"]
    assert lines[4].split() == ["4", "0.5000", "0.5000", "0.5000", "0.500", "2"]
    assert len({len(line) for line in lines[:5]}) == 1  # aligned columns
    assert "samples=10 problems=3 accuracy=0.3000 mean_tokens=24.0 flops/correct=3.333e+03" in printed

    data = json.loads(out.read_text())
    assert [r["k"] for r in data["by_k"]] == [1, 2, 4]
    assert data["by_k"][1]["pass_at_k"] == pytest.approx((5 / 6 + 1) / 3, abs=1e-15)
    assert data["summary"]["flops_per_correct"] == pytest.approx(10000 / 3)
    assert data["provenance"] == {
        "models": ["m"],
        "prompt_templates": ["boxed-v1"],
        "decoding": [{"temperature": 0.7, "top_p": 1.0}],
        "seeds": [1000, 1001, 1002, 1003],
        "verify_methods": ["exact"],
    }
    assert data["inputs"]["samples"] == cfg.samples
    saved = yaml.safe_load((tmp_path / "out" / "stats.json.config.yaml").read_text())
    assert saved["ks"] == [1, 2, 4] and saved["out"] == str(out)


def test_flags_resolve_and_join_error_names_files(tmp_path):
    # Built from StatsConfig alone (as `assay stats` does) so the test does not need the other stages.
    parser = argparse.ArgumentParser()
    add_config_args(parser, StatsConfig)
    samples, verdicts = build_run()
    write_records(tmp_path / "s.jsonl", samples)
    write_records(tmp_path / "v.jsonl", verdicts[:-1])
    args = parser.parse_args(["--samples", str(tmp_path / "s.jsonl"), "--verdicts", str(tmp_path / "v.jsonl"),
                              "--out", str(tmp_path / "o.json"), "--ks", "1,2"])
    cfg = config_from_args(StatsConfig, args)
    assert cfg.ks == [1, 2] and cfg.problems is None
    with pytest.raises(InputError, match=r"s\.jsonl / .*v\.jsonl: sample \(problem_id='c', sample_index=1\) has no verdict"):
        cli_run(cfg)
    assert not (tmp_path / "o.json").exists()
