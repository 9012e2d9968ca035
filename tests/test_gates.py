"""assay gate: every gate's reasons, a planted benchmark problem caught, agreement with a scripted solver."""

from __future__ import annotations

import json
import re

from assay.core.io import read_problems, write_records
from assay.core.records import Problem, Sample, Verdict
from assay.sampling.base import Generated
from assay.synth.gates import GateConfig, agreement_of, run_gates


def test_agreement_hand_computed():
    probs = [Problem(x, "q", "7", "t") for x in "abcd"]
    samples, verdicts = [], []
    answers = {"a": ["7", "7", "8", None], "b": ["8", "8", "7", "9"], "c": ["7", "8", None, None], "d": [None] * 4}
    for pid, ans in answers.items():
        for i, a in enumerate(ans):
            samples.append(Sample(pid, i, "m", "t", "", 1, 1, 1.0, "stop", {}, i))
            verdicts.append(Verdict(pid, i, a, a == "7", "m"))
    got = agreement_of(probs, samples, verdicts)
    assert got["a"] == {"agreement": 0.5, "majority": "7", "matches_reference": True, "k": 4}
    assert got["b"]["majority"] == "8" and not got["b"]["matches_reference"]
    assert got["c"]["majority"] is None and not got["c"]["matches_reference"]  # a tie is no majority
    assert got["d"] == {"agreement": 0.0, "majority": None, "matches_reference": False, "k": 4}


class Solver:
    """Answers 'What is A + B?' right, except questions containing 'tricky', which it gets wrong."""

    def __init__(self, model, options):
        self.model_name = model

    def generate(self, groups, decoding):
        for g in groups:
            q = g.messages[-1]["content"]
            a, b = map(int, re.search(r"(\d+) \+ (\d+)", q).groups())
            ans = a + b + (1 if "tricky" in q else 0)
            for i, seed in g.samples:
                yield Generated(g.problem_id, i, seed, f"The sum is \\boxed{{{ans}}}", 10, 6, 1e5, "stop")


def test_every_gate_with_its_reason(tmp_path, scripted_backend):
    solver_backend = scripted_backend("scripted-solver", Solver)
    from assay.data.benchmarks import BENCHMARKS
    from assay.data.problems import load_problems

    bench, _ = load_problems(BENCHMARKS.get("rg-chain-sum-v1").problems_config(str(tmp_path / "b.jsonl"), 3, None))
    planted = bench[1]
    q0 = "Ann has 3 pens and gets 4 more pens from Bob at school. What is 3 + 4?"
    probs = [Problem("s0", q0, "7", "synth"), Problem("s1", q0 + " Answer it.", "7", "synth"),
             Problem("s2", planted.question, planted.answer, "synth"),
             Problem("s3", "Lee owns 10 cards and wins 5 more in a game with friends. What is 10 + 5?", "15", "synth"),
             Problem("s4", "A tricky one: Kim reads 2 books then 6 more books over the long summer. What is 2 + 6?",
                     "8", "synth")]
    write_records(tmp_path / "synth.jsonl", probs)
    cfg = GateConfig(problems=str(tmp_path / "synth.jsonl"), out=str(tmp_path / "gated.jsonl"),
                     benchmarks=["rg-chain-sum-v1", "rg-basic-arithmetic-v1"], backend=solver_backend, k=3)
    res = run_gates(cfg)
    assert [(f["step"], f["kept"]) for f in res.funnel] == [("input", 5), ("dedup", 4), ("decontaminate", 3),
                                                           ("agreement", 2)]
    rej = {r["id"]: r for r in map(json.loads, open(cfg.out + ".rejected.jsonl"))}
    assert rej["s1"]["step"] == "dedup" and "near-duplicate of s0" in rej["s1"]["reason"]
    assert rej["s2"]["step"] == "decontaminate" and f"rg-chain-sum-v1:{planted.id}" in rej["s2"]["reason"]
    assert rej["s4"]["step"] == "agreement" and "majority answer '9' (1.00 of 3) is not the reference '8'" \
        in rej["s4"]["reason"]
    kept = read_problems(cfg.out)
    assert [p.id for p in kept] == ["s0", "s3"] and all(p.meta["verified"] and p.meta["agreement"] == 1.0 for p in kept)
    summary = json.loads(open(cfg.out + ".summary.json").read())
    assert summary["checked_benchmarks"] == ["rg-chain-sum-v1", "rg-basic-arithmetic-v1"]
    assert summary["solver_flops"] == 3 * 3 * 1e5

    loose = run_gates(GateConfig(**{**cfg.__dict__, "keep_unverified": True, "out": str(tmp_path / "all.jsonl")}))
    assert loose.kept == 3 and [p.meta["verified"] for p in read_problems(tmp_path / "all.jsonl")] == [True, True, False]


def test_benchmarks_not_on_this_machine_are_named_not_skipped_silently(tmp_path):
    write_records(tmp_path / "synth.jsonl", [Problem("s0", "What is 1 + 2?", "3", "synth")])
    res = run_gates(GateConfig(problems=str(tmp_path / "synth.jsonl"), out=str(tmp_path / "g.jsonl"),
                               steps=["decontaminate"], data_dir=str(tmp_path / "nowhere")))
    assert {"gsm8k-test", "math500"} <= set(res.unchecked_benchmarks) and "NOT checked against" in res.line()
    assert "rg-chain-sum-v1" in json.loads(open(tmp_path / "g.jsonl.summary.json").read())["checked_benchmarks"]


def test_a_gate_rerun_on_other_problems_is_not_refused_by_the_old_solver_samples(tmp_path, scripted_backend):
    solver = scripted_backend("scripted-solver", Solver)
    write_records(tmp_path / "a.jsonl", [Problem("s0", "What is 3 + 4?", "7", "synth")])
    cfg = GateConfig(problems=str(tmp_path / "a.jsonl"), out=str(tmp_path / "g.jsonl"), steps=["agreement"],
                     backend=solver, k=2)
    assert run_gates(cfg).kept == 1
    write_records(tmp_path / "a.jsonl", [Problem("s9", "What is 2 + 2?", "4", "synth")])
    assert run_gates(cfg).kept == 1 and read_problems(cfg.out)[0].id == "s9"
