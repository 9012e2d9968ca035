"""The solutions stage and the CFT study end to end on tiny models, with a scripted teacher backend."""

from __future__ import annotations

import json
import re

import pytest

from assay.core.io import InputError, read_problems, read_records
from assay.critique.solutions import Solution, SolutionsConfig, run_solutions
from assay.sampling.base import Generated
from assay.verify.extract import extract_boxed


@pytest.fixture(scope="module")
def two_tiny(tmp_path_factory):
    from assay.tiny import save_tiny

    root = tmp_path_factory.mktemp("gens")
    return str(save_tiny(root / "a", layers=2)), str(save_tiny(root / "b", layers=2, seed=1))


def _problems(path, n=3):
    from assay.data.problems import ProblemsConfig, run_problems

    run_problems(ProblemsConfig(source="rg:chain_sum", out=str(path), size=n, distinct=True,
                                task_kwargs={"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}))
    return path


def test_solutions_from_every_generator_and_temperature_are_verified_and_deduplicated(two_tiny, tmp_path):
    a, b = two_tiny
    cfg = SolutionsConfig(problems=str(_problems(tmp_path / "p.jsonl")), out=str(tmp_path / "s.jsonl"),
                          generators=[a, b, a], temperatures=[0.7, 1.0], n=2, max_new_tokens=6)
    res = run_solutions(cfg)
    sols = read_records(cfg.out, Solution)
    dups = [json.loads(x) for x in open(cfg.out + ".rejected.jsonl")]
    # The third generator is the first again, with the same seeds: all of its solutions are duplicates.
    assert len(sols) + len(dups) == 3 * 2 * 2 * 3 and len(dups) >= 12 and res.duplicates == len(dups)
    assert all(d["step"] == "dedup" and d["reason"].startswith("same text as solution") for d in dups)
    assert {(s.generator, s.temperature) for s in sols} >= {(a, 0.7), (a, 1.0), (b, 0.7), (b, 1.0)}
    for pid in {s.problem_id for s in sols}:
        idx = [s.sample_index for s in sols if s.problem_id == pid]
        assert idx == list(range(len(idx)))  # dense, unique keys after dedup
    verdicts = {}
    for part in ("g0-t0", "g1-t1"):
        for line in open(f"{cfg.out}.parts/{part}.verdicts.jsonl"):
            v = json.loads(line)
            verdicts[(part, v["problem_id"], v["sample_index"])] = v["correct"]
    for s in sols:
        part, ref = s.source.split(":")
        pid, i = ref.rsplit("/", 1)
        if (part, pid, int(i)) in verdicts:
            assert s.correct == verdicts[(part, pid, int(i))]
    again = run_solutions(cfg)  # resumed from the parts: same result, nothing redrawn
    assert read_records(cfg.out, Solution) == sols and again.solutions == res.solutions


def test_seed_problems_are_chosen_by_the_students_pass_rate(two_tiny, tmp_path):
    a, _ = two_tiny
    cfg = SolutionsConfig(problems=str(_problems(tmp_path / "p.jsonl", 4)), out=str(tmp_path / "s.jsonl"),
                          generators=[a], temperatures=[0.7], n=1, max_new_tokens=4, student=a, student_n=3,
                          band=[0.0, 1.0], seeds=2)
    res = run_solutions(cfg)
    seeds = json.loads(open(cfg.out + ".seeds.json").read())
    assert len(seeds["rates"]) == 4 and len(seeds["chosen"]) == 2 == len(res.seeds["chosen"])
    assert {s.problem_id for s in read_records(cfg.out, Solution)} == set(seeds["chosen"])
    assert [p.id for p in read_problems(cfg.out + ".seeds.jsonl")] == sorted(seeds["chosen"], key=lambda p: int(
        re.sub(r"\D", "", p) or 0)) or len(read_problems(cfg.out + ".seeds.jsonl")) == 2
    # A random tiny model solves nothing: a band above zero has no problem in it, said in one line.
    with pytest.raises(InputError, match=r"no problem has a pass rate .* in the band \[0.5, 1.0\]"):
        run_solutions(SolutionsConfig(**{**cfg.__dict__, "band": [0.5, 1.0], "out": str(tmp_path / "t.jsonl")}))


# ---- the study, with a teacher that knows the references ----

class ReferenceTeacher:
    """Says right when the solution's boxed answer is the reference, else wrong with the reference boxed."""

    refs: dict = {}

    def __init__(self, model, options):
        self.model_name = model

    def generate(self, groups, decoding):
        for g in groups:
            user = g.messages[-1]["content"]
            q = max((q for q in self.refs if q in user), key=len)
            solution = user.split("Solution:\n", 1)[1].rsplit("\n\nFirst name", 1)[0]
            if extract_boxed(solution) == self.refs[q]:
                text = "The steps are right.\nConclusion: right [END]"
            else:
                text = f"The sum is wrong; correctly it is \\boxed{{{self.refs[q]}}}.\nConclusion: wrong [END]"
            yield Generated(g.problem_id, 0, 0, text, 40, 30, 1e6, "stop")


def test_study_cft_end_to_end_on_tiny_models(two_tiny, scripted_backend, tmp_path, monkeypatch):
    teacher_backend = scripted_backend("scripted-teacher", ReferenceTeacher)
    from assay.critique import stage

    a, b = two_tiny
    run = tmp_path / "cft"
    real = stage.run_critique

    def with_refs(cfg, make=None):  # the teacher learns the references of the problems it is shown
        ReferenceTeacher.refs = {p.question: p.answer for p in read_problems(cfg.problems)}
        return real(cfg, make)

    monkeypatch.setattr("assay.studies.cft.run_critique", with_refs)
    from assay.studies.cft import StudyCFTConfig
    from assay.studies.cft import run as run_study

    cfg = StudyCFTConfig(student=a, seed_pool=4, student_n=2, band=[0.0, 1.0], generators=[a, b], temperatures=[0.7],
                         n=2, teachers=["t1", "t2"], multi_teachers=["t1"], multi_generators=[b], multi_pool=6,
                         critique_backend=teacher_backend, solution_max_new_tokens=6, train_steps=2, eval_every=1,
                         validation_size=4, heldout_size=4, transfer_size=4, run_dir=str(run))
    cfg.eval.max_new_tokens = 4
    cfg.train.max_length = 2048  # the critique request alone is ~400 tiny-tokenizer tokens
    out = run_study(cfg)
    arms = out["arms"]
    assert set(arms) == {"base", "one-shot-CFT", "SFT", "multi-problem-CFT"}
    # A random model solves nothing: no correct solution, so no SFT rows, and the arm says so.
    assert arms["SFT"] == {"examples": 0, "skipped": "no rows"}
    one = arms["one-shot-CFT"]
    oneshot = json.loads((run / "oneshot.critiques.jsonl.summary.json").read_text())
    assert one["examples"] == oneshot["rows"] == 2 * 2 * 2  # 2 generators x 2 solutions, each critiqued by 2 teachers
    assert arms["multi-problem-CFT"]["examples"] == min(one["examples"], 6)
    for name in ("one-shot-CFT", "multi-problem-CFT"):
        arm = arms[name]
        assert sorted(arm["curve"]) == [1, 2] and arm["chosen_step"] == max(arm["curve"], key=lambda s: (arm["curve"][s], s))
        assert arm["steps"] == 2 and set(arm["heldout"]["vs_base"]) == {"gain", "gain_ci95", "p_value"}
        assert (run / f"eval.{name}.val.1").exists() and (run / f"eval.{name}.transfer").exists()
    assert "checkpoint-1" in arms["one-shot-CFT"]["model"] or arms["one-shot-CFT"]["chosen_step"] == 2
    report = (run / "report.md").read_text()
    assert "one-shot-CFT" in report and "Validation accuracy over training steps" in report and "t2" in report
    # A rerun is all cache and finished stages: the same numbers.
    assert run_study(cfg)["arms"]["one-shot-CFT"]["heldout"] == one["heldout"]
    # A changed filter setting redoes the critique stages, but every critique comes from the shared cache.
    calls = (run / "cache" / "critiques.jsonl").read_text().count("\n")
    cfg.critique_min_tokens = 35
    shorter = run_study(cfg)
    assert (run / "cache" / "critiques.jsonl").read_text().count("\n") == calls
    assert shorter["arms"]["one-shot-CFT"] == {"examples": 0, "skipped": "no rows"}


def test_the_paper_recipe_is_a_valid_study_config(monkeypatch):
    """recipes/cft-paper.yaml names hub models (not resolvable offline) and vLLM (built by `make vllm`)."""
    from pathlib import Path

    import assay.critique.solutions as solutions
    import assay.eval.stage as eval_stage
    import assay.studies.cft as cft
    from assay.studies.recipes import load_recipe

    if not (Path(__file__).resolve().parents[1] / ".venv-vllm").exists():
        pytest.skip("the recipe's teachers and eval use vLLM: `make vllm` builds .venv-vllm (CI does)")
    for mod in (cft, solutions, eval_stage):
        monkeypatch.setattr(mod, "check_model", lambda *a, **k: None)
    name, cfg = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "cft-paper.yaml")
    assert name == "study-cft" and cfg.student == "Qwen/Qwen2.5-Math-7B" and len(cfg.teachers) == 7
    cft.check(cfg)
    assert cfg.train.lr == 5e-6 and cfg.train.method == "full" and cfg.train_steps % cfg.eval_every == 0


def test_bad_study_settings_are_one_line_before_any_stage(tmp_path, capsys):
    from assay.cli import main

    run = tmp_path / "cft"
    assert main(["study", "cft", "eval_every=5", f"run_dir={run}"]) == 2
    assert "override 'eval_every=5': must divide train_steps=16" in capsys.readouterr().err
    assert main(["study", "cft", "critique_options.max_batch=0", f"run_dir={run}"]) == 2
    assert "'critique_options.max_batch=0': must be at least 1" in capsys.readouterr().err
    assert main(["study", "cft", "train.max_steps=3", f"run_dir={run}"]) == 2
    assert "'train.max_steps=3'" in (err := capsys.readouterr().err) and "is set by the study" in err
    assert not run.exists()
