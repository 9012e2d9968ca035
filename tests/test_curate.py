"""Every curation step on small hand-made cases with exact expected outcomes, then the whole funnel."""

from __future__ import annotations

import json

import pytest

from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, Sample, SFTExample, Verdict
from assay.data.text import clusters, ngrams, words
from assay.select.curate import (
    CurateConfig,
    Item,
    decontaminate,
    dedup,
    difficulty,
    diverse,
    load_keywords,
    rubric,
    rubric_scores,
    run_curation,
)


def P(i, q, **meta):
    return Problem(f"p{i}", q, "1", "t", meta)


def S(pid, i, text):
    return Sample(pid, i, "m", "plain-v1", text, 5, len(words(text)), 1.0, "stop", {}, i)


def test_difficulty_band_exact():
    items = [Item(P(0, "a"), attempts={"strong": (2, 32), "weak": (0, 8)}),
             Item(P(1, "b"), attempts={"strong": (5, 32), "weak": (0, 8)}),
             Item(P(2, "c"), attempts={"strong": (1, 32), "weak": (1, 8)}),
             Item(P(3, "d"), attempts={"strong": (0, 32), "weak": (0, 8)}),
             Item(P(4, "e"), attempts={"weak": (0, 8)})]
    kept, rej = difficulty(items, bands={"strong": [1, 3], "weak": [0, 0]})
    assert [it.problem.id for it in kept] == ["p0"]
    assert [r for _, r in rej] == ["solved 5/32 by strong, outside the band 1-3",
                                   "solved 1/8 by weak, outside the band 0-0",
                                   "solved 0/32 by strong, outside the band 1-3",
                                   "no samples from strong"]


def test_decontaminate_13_grams_and_short_items():
    bench = [P(90, "the quick brown fox jumps over the lazy dog near the river bank today at noon"),
             P(91, "What is 3 + 5 ?")]
    items = [Item(P(0, "Yesterday the quick brown fox jumps over the lazy dog near the river bank today at noon again")),
             Item(P(1, "the quick brown fox jumps over the lazy cat near the river bank today at noon")),
             Item(P(2, "what is 3 + 5?")), Item(P(3, "what is 3 + 6?"))]
    kept, rej = decontaminate(items, against=bench, n=13)
    assert [it.problem.id for it in kept] == ["p1", "p3"]
    assert [r for _, r in rej] == ["shares a 13-gram with benchmark item p90", "shares a 13-gram with benchmark item p91"]
    assert len(ngrams(words("a b c"), 13)) == 1


def test_dedup_clusters_near_duplicates():
    qs = ["Tom has 3 apples and buys 5 more apples at the shop today",
          "Tom has 3 apples and buys 5 more apples at the shop today!",
          "A train leaves the station at noon and travels at 60 miles per hour",
          "Tom has three apples and buys five more pears"]
    assert clusters(qs, threshold=0.8) == [0, 0, 2, 3]
    kept, rej = dedup([Item(P(i, q)) for i, q in enumerate(qs)], threshold=0.8)
    assert [it.problem.id for it in kept] == ["p0", "p2", "p3"]
    assert [(it.problem.id, it.group, r) for it, r in rej] == [("p1", "cluster-0", "near-duplicate of p0 (Jaccard >= 0.8)")]


def test_rubric_scores_and_top_chain():
    kw = load_keywords()
    s = rubric_scores("First add. Therefore 8. Let me check: 3 + 5 = 8, indeed. Alternatively count up.", kw,
                      length_scale=100)
    assert s["elaboration"] == pytest.approx(len(words("First add. Therefore 8. Let me check: 3 + 5 = 8, indeed. "
                                                       "Alternatively count up.")) / 100)
    assert s["self_verification"] > 0 and s["exploration"] > 0 and s["granularity"] > 0
    assert rubric_scores("8", kw)["self_verification"] == 0.0
    plain, rich = S("p0", 0, "8"), S("p0", 1, "3 + 5 = 8. Let me check: 8 - 5 = 3, so it is right. Therefore 8.")
    items = [Item(P(0, "3 + 5 ="), chains=[plain, rich]), Item(P(1, "2 + 2 ="), chains=[])]
    kept, rej = rubric(items)
    assert kept[0].best is rich and kept[0].scores["rubric"]["chains_scored"] == 2
    assert [r for _, r in rej] == ["no correct chain to keep"]
    # Weights are configurable: all weight on elaboration still prefers the longer chain,
    # all weight on nothing-but-exploration ties (0 = 0) and the lower sample index wins.
    kept, _ = rubric([Item(P(0, "q"), chains=[plain, rich])], weights={"elaboration": 0, "self_verification": 0,
                                                                     "exploration": 1, "granularity": 0})
    assert kept[0].best is plain
    with pytest.raises(InputError, match="unknown weight"):
        rubric(items, weights={"length": 1})


def test_diverse_round_robin_over_groups():
    items = [Item(P(i, f"q{i}", topic=t)) for i, t in enumerate(["a"] * 6 + ["b"] * 2 + ["c"])]
    kept, rej = diverse(items, n=6, by="topic", seed=0)
    topics = sorted(it.problem.meta["topic"] for it in kept)
    assert topics == ["a", "a", "a", "b", "b", "c"]  # b and c exhausted, the rest from a
    assert len(rej) == 3 and all("round-robin across 3 groups" in r for _, r in rej)
    again, _ = diverse(items, n=6, by="topic", seed=0)
    assert [it.problem.id for it in again] == [it.problem.id for it in kept]


def test_run_curation_writes_funnel_and_both_sides(tmp_path):
    problems = [P(0, "What is 3 + 5 ?"), P(1, "What is 3 + 5?"), P(2, "What is 7 + 1 ?"), P(3, "What is 9 - 4 ?")]
    samples = [S("p0", 0, "8"), S("p0", 1, "3 + 5 = 8. Let me check: yes. Therefore 8."), S("p1", 0, "8"),
               S("p2", 0, "9"), S("p3", 0, "5")]
    verdicts = [Verdict("p0", 0, "8", True, "x"), Verdict("p0", 1, "8", True, "x"), Verdict("p1", 0, "8", True, "x"),
                Verdict("p2", 0, "9", False, "x"), Verdict("p3", 0, "5", True, "x")]
    bench = [P(99, "What is 9 - 4 ?")]
    for name, recs in (("p", problems), ("s", samples), ("v", verdicts), ("bench", bench)):
        write_records(tmp_path / f"{name}.jsonl", recs)
    cfg = CurateConfig(problems=str(tmp_path / "p.jsonl"), out=str(tmp_path / "cur"),
                       references={"m": [str(tmp_path / "s.jsonl"), str(tmp_path / "v.jsonl")]},
                       steps=[{"difficulty": {"bands": {"m": [1, 2]}}},
                              {"decontaminate": {"benchmarks": [str(tmp_path / "bench.jsonl")]}},
                              {"dedup": {"threshold": 0.8}}, {"rubric": {}}])
    s = run_curation(cfg)
    assert [(f["step"], f["kept"]) for f in s["funnel"]] == [("input", 4), ("difficulty", 3), ("decontaminate", 2),
                                                              ("dedup", 1), ("rubric", 1)]
    rows = read_records(tmp_path / "cur" / "sft.jsonl", SFTExample)
    assert [(r.problem_id, r.sample_index) for r in rows] == [("p0", 1)]
    rej = [json.loads(x) for x in (tmp_path / "cur" / "02_decontaminate.rejected.jsonl").read_text().split("\n") if x]
    assert rej[0]["id"] == "p3" and rej[0]["scores"]["contaminated_by"] == "p99"
    assert (tmp_path / "cur" / "03_dedup.rejected.jsonl").read_text().count("near-duplicate of p0") == 1
    with pytest.raises(InputError, match="did you mean 'threshold'"):
        run_curation(CurateConfig(problems=str(tmp_path / "p.jsonl"), out=str(tmp_path / "c2"),
                                  steps=[{"dedup": {"treshold": 0.8}}]))


def test_truncated_chains_count_for_difficulty_but_are_never_chosen(tmp_path):
    import dataclasses

    problems = [P(0, "What is 3 + 5 ?")]
    long = "3 + 5 = 8. Let me check that again carefully: 3 + 5 is 8, so 8 and so on and so on"
    samples = [S("p0", 0, "8"), dataclasses.replace(S("p0", 1, long), finish_reason="length")]
    verdicts = [Verdict("p0", 0, "8", True, "x"), Verdict("p0", 1, "8", True, "x")]
    for name, recs in (("p", problems), ("s", samples), ("v", verdicts)):
        write_records(tmp_path / f"{name}.jsonl", recs)

    def best(finished_only: bool) -> list:
        out = tmp_path / f"cur{finished_only}"
        s = run_curation(CurateConfig(problems=str(tmp_path / "p.jsonl"), out=str(out), finished_only=finished_only,
                                      references={"m": [str(tmp_path / "s.jsonl"), str(tmp_path / "v.jsonl")]},
                                      steps=[{"difficulty": {"bands": {"m": [2, 2]}}}, {"rubric": {}}]))
        assert s["funnel"][1] == {"step": "difficulty", "kept": 1, "dropped": 0}  # both attempts count as solved
        return [r.sample_index for r in read_records(out / "sft.jsonl", SFTExample)]

    # The rubric prefers the longer, self-checking chain, but it was cut off at max_new_tokens.
    assert best(finished_only=False) == [1]
    assert best(finished_only=True) == [0]
