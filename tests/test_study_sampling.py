"""The compute-matched sampling study end to end on two tiny models of different size."""

from __future__ import annotations

import json

import pytest

from assay.core.io import read_records
from assay.core.records import Problem, Sample, Verdict
from assay.sampling.plan import Arm, samples_for_budget


@pytest.fixture(scope="module")
def two_tiny(tmp_path_factory):
    from assay.tiny import save_tiny

    root = tmp_path_factory.mktemp("pair")
    return str(save_tiny(root / "wc", layers=2)), str(save_tiny(root / "se", layers=6, seed=1))


def test_arm_curves_hand_computed():
    from assay.core.records import Problem, Sample, Verdict
    from assay.studies.sampling import arm_curves

    probs = [Problem("a", "q", "1", "t"), Problem("b", "q", "2", "t")]
    s = lambda p, i, text, f: Sample(p, i, "m", "t", text, 1, 1, f, "stop", {}, i)  # noqa: E731
    samples = [s("a", 0, "x", 1.0), s("a", 1, "y", 3.0), s("b", 0, "z", 2.0), s("b", 1, "z", 2.0)]
    verdicts = [Verdict("a", 0, "1", False, "m"), Verdict("a", 1, "1", True, "m"), Verdict("b", 0, "2", True, "m"),
                Verdict("b", 1, "2", True, "m")]
    r = arm_curves(probs, samples, verdicts)
    assert r["curve"] == [{"k": 1, "coverage": 0.5, "diversity": 0.5, "flops_per_problem": 1.5},
                          {"k": 2, "coverage": 1.0, "diversity": 1.0, "flops_per_problem": 4.0}]
    assert r["accuracy"] == 0.75


def test_study_matches_realized_flops_and_writes_report(two_tiny, tmp_path):
    from assay.cli import main

    wc, se = two_tiny
    run = tmp_path / "study"
    args = ["study", "sampling", f"wc={wc}", f"se={se}", "problems=10", "k_se=2", "completion_tokens=8",
            "max_new_tokens=8", f"run_dir={run}", "judge=export", "students=false"]
    assert main(args) == 0
    study = json.loads((run / "study.json").read_text())
    plan = json.loads((run / "plan.json").read_text())
    arms = {m: Arm(**{k: v for k, v in plan["arms"][m].items() if k != "k_planned"}) for m in (wc, se)}
    # The budget is what k_se=2 SE samples cost per problem; each arm gets the most samples that fit it.
    assert plan["budget_flops"] == pytest.approx(arms[se].flops_per_problem(2) * plan["problems"], rel=1e-12)
    for m in (wc, se):
        assert plan["arms"][m]["k_planned"] == samples_for_budget(arms[m], plan["budget_flops"], plan["problems"])
    k_wc, k_se = (plan["arms"][m]["k_planned"] for m in (wc, se))
    assert k_se == 2 and k_wc > k_se  # the cheaper model gets more samples
    for tag in ("WC", "SE"):
        kept = read_records(run / f"{tag}.samples.jsonl", Sample)
        over = [json.loads(line) for line in (run / f"{tag}.samples.jsonl.over_budget.jsonl").read_bytes().splitlines()]
        realized = study[tag]["budget"]["realized_flops"]
        # Realized FLOPs are the kept samples' own, within the budget by less than the first sample left out.
        assert realized == pytest.approx(sum(x.flops for x in kept), rel=1e-12)
        assert realized <= plan["budget_flops"] and over and plan["budget_flops"] - realized < over[0]["flops"]
        ok = {(v.problem_id, v.sample_index): v.correct for v in read_records(run / f"{tag}.verdicts.jsonl", Verdict)}
        assert study[tag]["accuracy"] == sum(ok[(x.problem_id, x.sample_index)] for x in kept) / len(kept)
    f_wc, f_se = study["WC"]["budget"]["realized_flops"], study["SE"]["budget"]["realized_flops"]
    assert abs(f_wc - f_se) / f_se < 0.05
    assert (run / "WC.audit.csv").exists() and (run / "SE.audit.csv").exists()
    report = (run / "report.md").read_text()
    assert "coverage@k" in report and "FLOPs ratio WC / SE" in report and (run / "plot_coverage_diversity.png").exists()
    # Rerun: every stage is done; nothing is sampled again.
    n_before = (run / "WC.samples.jsonl.all.jsonl").read_bytes().count(b"\n")
    assert main(args) == 0
    assert (run / "WC.samples.jsonl.all.jsonl").read_bytes().count(b"\n") == n_before


def test_study_with_llm_judge_and_students(two_tiny, tmp_path):
    from assay.studies.sampling import StudySamplingConfig, run
    from assay.train import TrainConfig

    wc, se = two_tiny
    base = dict(wc=wc, se=se, pool_size=6, k_se=1, completion_tokens=8, max_new_tokens=6, judge=wc, students=True,
                heldout_size=4, train=TrainConfig(batch_size=2), train_steps=1, kd_student=wc,
                setups=["knowledge_distillation", "self_improvement", "weak_to_strong"])
    # The tiny models solve nothing: with the default selection there is nothing to train on, and
    # the study says so in its results and report instead of training on nothing.
    empty = run(StudySamplingConfig(run_dir=str(tmp_path / "s"), **base))
    assert all(r[arm] == {"examples": 0, "skipped": "no examples"} for r in empty["students"].values()
               for arm in ("WC", "SE"))
    assert not list((tmp_path / "s").glob("*.student"))
    assert "no data to train on" in (tmp_path / "s" / "report.md").read_text()
    # Random selection exercises the three setups end to end, each student on both arms' data.
    results = run(StudySamplingConfig(run_dir=str(tmp_path / "r"), student_selectors=["random:4"], **base))
    st = results["students"]
    assert set(st) == {"knowledge_distillation", "self_improvement", "weak_to_strong"}
    assert st["weak_to_strong"]["student"] == se and st["self_improvement"]["student"] == wc
    n_held = len(read_records(tmp_path / "r" / "heldout.jsonl", Problem))
    for setup, r in st.items():
        for arm in ("WC", "SE"):
            summ = json.loads((tmp_path / "r" / f"{setup}.{arm}.student" / "train_summary.json").read_text())
            assert summ["steps"] == 1  # the same step budget for both arms' data
            v = read_records(tmp_path / "r" / f"eval.{setup}.{arm}" / "greedy.verdicts.jsonl", Verdict)
            assert len(v) == n_held and r[arm]["greedy_pass@1"] == sum(x.correct for x in v) / len(v)
        # WC data against SE data, paired on the held-out problems.
        assert r["WC"][f"vs_{setup}.SE"]["gain"] == pytest.approx(r["WC"]["greedy_pass@1"] - r["SE"]["greedy_pass@1"])
    # No answer-correct samples, so the LLM judge had nothing to judge: FPR undefined, n = 0.
    assert results["WC"]["fpr"]["judged"] == 0 and results["WC"]["fpr"]["fpr"] is None
    report = (tmp_path / "r" / "report.md").read_text()
    assert "the paper's finding" in report and "weak-to-strong" in report


def test_judge_agreement_with_human_labels_hand_computed():
    from assay.studies.sampling import agreement
    from assay.verify.judge import Judgment

    def j(i, valid, who="llm:x"):
        return Judgment("p", i, who, valid, "t")

    human = {("p", i): j(i, v, "human") for i, v in enumerate([True, True, True, False, False, True])}
    judged = [j(0, True), j(1, True), j(2, False), j(3, False), j(4, True), j(5, None), j(9, False)]
    a = agreement(judged, human)
    # pairs (human, judge): TT TT TF FF FT T-: 5 with a verdict, 3 agree; item 9 has no label.
    assert a["n"] == 6 and a["unparsed"] == 1 and a["agreement"] == pytest.approx(3 / 5)
    assert a["confusion"]["human_valid_judge_valid"] == 2 and a["confusion"]["human_valid_judge_invalid"] == 1
    assert a["confusion"]["human_invalid_judge_valid"] == 1 and a["confusion"]["human_valid_judge_none"] == 1
    po, ph, pj = 3 / 5, 3 / 5, 3 / 5
    pe = ph * pj + (1 - ph) * (1 - pj)
    assert a["kappa"] == pytest.approx((po - pe) / (1 - pe))
    assert a["human_fpr"] == pytest.approx(2 / 6) and a["judge_fpr"] == pytest.approx(2 / 5)
    assert agreement(judged, {})["n"] == 0


def test_paper_rows_say_reproduces_only_when_the_interval_excludes_zero():
    from assay.studies.sampling import _paired_arms
    from assay.studies.sampling_report import paper_rows

    per = lambda cov, dist: {f"q{i}": {"covered": c, "distinct": d} for i, (c, d) in enumerate(zip(cov, dist))}  # noqa: E731
    res = {"WC": {"per_problem": per([1] * 30, [3] * 30)}, "SE": {"per_problem": per([1] * 10 + [0] * 20, [1] * 30)}}
    res["paired"] = _paired_arms(res)
    rows = {a: c for a, _, c in paper_rows(res)}
    assert rows["WC has higher coverage at matched compute"] == "reproduces"
    assert res["paired"]["coverage_wc_minus_se"]["only_after"] == 20
    assert rows["WC has higher diversity (distinct correct per problem)"] == "reproduces"
    res = {"WC": {"per_problem": per([1, 0, 0, 0] * 5, [1] * 20)}, "SE": {"per_problem": per([0, 1, 1, 0] * 5, [1] * 20)}}
    res["paired"] = _paired_arms(res)
    rows = {a: c for a, _, c in paper_rows(res)}
    assert rows["WC has higher coverage at matched compute"] == "not reproduced (opposite direction, n.s.)"
    res = {"WC": {"per_problem": per([1] * 20, [2] * 20)}, "SE": {"per_problem": per([1] * 20, [2] * 20)}}
    res["paired"] = _paired_arms(res)
    assert {c for _, _, c in paper_rows(res)} == {"not reproduced (no difference)"}


def test_a_labelled_audit_sheet_is_never_overwritten(tmp_path):
    from assay.studies.sampling import _export_unless_labelled
    from assay.verify.judge import import_audit

    items = [{"problem_id": "p", "sample_index": 0, "question": "q", "reference": "1", "solution": "s"}]
    f = tmp_path / "WC.audit.csv"
    _export_unless_labelled(items, f)
    lines = f.read_text().splitlines()
    f.write_text("\n".join([lines[0], lines[1] + "valid"]) + "\n")
    assert [j.valid for j in import_audit(f)] == [True]
    _export_unless_labelled(items + items, f)
    assert [j.valid for j in import_audit(f)] == [True]


def test_study_killed_mid_sampling_resumes_without_duplicates(two_tiny, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    wc, se = two_tiny
    run = tmp_path / "k"
    cmd = [sys.executable, "-m", "assay.cli", "study", "sampling", f"wc={wc}", f"se={se}", "problems=40", "k_se=2",
           "completion_tokens=24", "max_new_tokens=24", "stop=[]", "temperature=1.0", f"run_dir={run}",
           "judge=export", "students=false"]
    raw = run / "WC.samples.jsonl.all.jsonl"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if raw.exists() and raw.read_bytes().count(b"\n") >= 10:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the study ended before the kill"
    assert not (run / "study.json").exists()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # Not str.splitlines: random tiny-model text contains characters it treats as line breaks.
    keys = [(r.problem_id, r.sample_index) for r in read_records(raw, Sample)]
    assert len(keys) == len(set(keys))
    study = json.loads((run / "study.json").read_text())
    f_wc, f_se = study["WC"]["budget"]["realized_flops"], study["SE"]["budget"]["realized_flops"]
    assert abs(f_wc - f_se) / f_se < 0.05
