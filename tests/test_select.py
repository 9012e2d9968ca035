"""Selectors on hand-made candidates with exact expected outcomes, and the select stage's files."""

from __future__ import annotations

import json
import random

import pytest

from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, Sample, SFTExample, Verdict
from assay.select.filters import Context
from assay.select.stage import SELECTORS, SelectConfig, build_candidates, run_pipeline, run_select


def _apply(name, cands, arg=None):
    """One selector alone, as the pipeline runs it: (kept, [(candidate, reason)])."""
    kept, rej = SELECTORS.get(name).apply(cands, Context(step=name, arg=arg, rng=random.Random(0)))
    return kept, [(r.item, r.reason) for r in rej]


def _sample(pid: str, i: int, text: str, tokens: int, finish: str = "stop") -> Sample:
    return Sample(problem_id=pid, sample_index=i, model="m", prompt_template="plain-v1", text=text,
                  prompt_tokens=10, completion_tokens=tokens, flops=1.0, finish_reason=finish,
                  decoding={"temperature": 0.7}, seed=i)


def _pool():
    problems = [Problem("a", "1 + 1 =", "2", "t"), Problem("b", "2 + 2 =", "4", "t")]
    samples = [
        _sample("a", 0, "2", 1), _sample("a", 1, "The answer is 2", 4), _sample("a", 2, "3", 1),
        _sample("a", 3, "the answer is  2", 4),  # duplicate of 1 after normalisation
        _sample("a", 4, "2 " * 50, 50, finish="length"),
        _sample("b", 0, "4", 1), _sample("b", 1, "so 4", 2),
    ]
    verdicts = [Verdict("a", 0, "2", True, "x"), Verdict("a", 1, "2", True, "x"), Verdict("a", 2, "3", False, "x"),
                Verdict("a", 3, "2", True, "x"), Verdict("a", 4, "2", True, "x"), Verdict("b", 0, "4", True, "x"),
                Verdict("b", 1, None, False, "x", status="timeout", error="slow")]
    return problems, samples, verdicts


def _keys(cands):
    return [(c.problem.id, c.sample.sample_index) for c in cands]


def test_correct_finished_dedup_exact():
    cands = build_candidates(*_pool(), where="t")
    kept, rejected, funnel = run_pipeline(cands, ["correct", "finished", "dedup"], seed=0)
    assert _keys(kept) == [("a", 0), ("a", 1), ("b", 0)]
    reasons = {(c.problem.id, c.sample.sample_index): (step, r) for c, step, r in rejected}
    assert reasons[("a", 2)] == ("correct", "incorrect (extracted '3')")
    assert reasons[("b", 1)] == ("correct", "verification timeout")
    assert reasons[("a", 4)] == ("finished", "truncated at max_new_tokens")
    assert reasons[("a", 3)] == ("dedup", "duplicate of sample 1")
    assert [f["kept"] for f in funnel] == [7, 5, 4, 3]
    assert len(rejected) == 4  # nothing lost: kept + rejected = input


def test_shortest_longest_and_cap():
    cands = build_candidates(*_pool(), where="t")
    assert _keys(_apply("shortest", cands)[0]) == [("a", 0), ("b", 0)]
    # Ties on length break on sample_index: a/2 and a/0 both have 1 token.
    assert _keys(_apply("shortest", cands, "2")[0]) == [("a", 0), ("a", 2), ("b", 0), ("b", 1)]
    assert _keys(_apply("longest", cands)[0]) == [("a", 4), ("b", 1)]
    kept, rej = _apply("max_per_problem", cands, "2")
    per = {}
    for c in kept:
        per[c.problem.id] = per.get(c.problem.id, 0) + 1
    assert per == {"a": 2, "b": 2} and len(rej) == 3


def test_random_is_seeded_and_exact_size():
    cands = build_candidates(*_pool(), where="t")
    a, _, _ = run_pipeline(cands, ["random:3"], seed=1)
    b, _, _ = run_pipeline(cands, ["random:3"], seed=1)
    c, _, _ = run_pipeline(cands, ["random:3"], seed=2)
    assert len(a) == 3 and _keys(a) == _keys(b)
    assert any(_keys(run_pipeline(cands, ["random:3"], seed=s)[0]) != _keys(a) for s in range(2, 8))
    assert len(c) == 3


def test_source_keeps_one_task_by_full_or_short_name():
    problems = [Problem("x", "1 + 1 =", "2", "reasoning_gym:chain_sum"), Problem("y", "gcd(4, 6)", "2", "reasoning_gym:gcd")]
    samples = [_sample("x", 0, "2", 1), _sample("y", 0, "2", 1), _sample("x", 1, "2", 1)]
    cands = build_candidates(problems, samples, [], where="t")
    kept, rej = _apply("source", cands, "chain_sum")
    assert _keys(kept) == [("x", 0), ("x", 1)]
    assert [r for _, r in rej] == ["source reasoning_gym:gcd is not chain_sum"]
    assert _keys(_apply("source", cands, "reasoning_gym:gcd")[0]) == [("y", 0)]
    with pytest.raises(InputError, match="needs a source name"):
        run_pipeline(cands, ["source"], seed=0)


def test_unknown_selector_and_bad_args():
    cands = build_candidates(*_pool(), where="t")
    with pytest.raises(InputError, match="did you mean 'correct'"):
        run_pipeline(cands, ["corect"], seed=0)
    with pytest.raises(InputError, match="positive integer"):
        run_pipeline(cands, ["max_per_problem"], seed=0)
    with pytest.raises(InputError, match="takes no argument"):
        run_pipeline(cands, ["dedup:3"], seed=0)


def test_select_stage_writes_sft_rows_with_lineage(tmp_path):
    problems, samples, verdicts = _pool()
    for name, recs in (("p", problems), ("s", samples), ("v", verdicts)):
        write_records(tmp_path / f"{name}.jsonl", recs)
    cfg = SelectConfig(problems=str(tmp_path / "p.jsonl"), samples=str(tmp_path / "s.jsonl"),
                       verdicts=str(tmp_path / "v.jsonl"), out=str(tmp_path / "sft.jsonl"),
                       selectors=["correct", "finished", "dedup", "shortest"])
    summary = run_select(cfg)
    rows = read_records(tmp_path / "sft.jsonl", SFTExample)
    assert [(r.problem_id, r.sample_index) for r in rows] == [("a", 0), ("b", 0)]
    assert rows[0].messages == [{"role": "user", "content": "1 + 1 ="}, {"role": "assistant", "content": "2"}]
    assert rows[0].id == "a/0" and rows[0].selected_by == "correct>finished>dedup>shortest"
    rejected = [json.loads(x) for x in (tmp_path / "sft.jsonl.rejected.jsonl").read_text().splitlines()]
    assert len(rejected) + len(rows) == len(samples)
    assert summary["examples"] == 2 and summary["funnel"][-1] == {"step": "shortest", "kept": 2, "dropped": 1}
    # The output is a plain chat-messages dataset.
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(tmp_path / "sft.jsonl"), split="train")
    assert ds[1]["messages"][-1]["content"] == "4"


def test_sample_of_unknown_problem_is_an_error(tmp_path):
    problems, samples, verdicts = _pool()
    with pytest.raises(InputError, match="names a problem that is not in the problem file"):
        build_candidates(problems[:1], samples, verdicts, where="s.jsonl")
