"""The critique stage with a scripted teacher whose verdicts are known: every filter branch, the
confusion matrix, the CFT rows, the cache, and resume after a kill."""

from __future__ import annotations

import json
import re

import pytest

from assay.core.io import InputError, read_records, write_records
from assay.core.records import Problem, SFTExample
from assay.critique.prompts import CRITIQUE_TEMPLATES, parse_critique
from assay.critique.solutions import Solution
from assay.critique.stage import Critique, CritiqueConfig, run_critique
from assay.sampling.base import Generated


def test_parse_is_strict():
    assert parse_critique("Steps fine.\nConclusion: right [END]").verdict == "right"
    p = parse_critique("Step 2 is wrong. Corrected: \\boxed{12}\n**Conclusion: Wrong** [END]\n\n")
    assert (p.verdict, p.corrected) == ("wrong", "12")
    assert parse_critique("Step 1 is fine.\n\n### Conclusion:\nRight [END]").verdict == "right"
    assert parse_critique("Conclusion: wrong\n### Conclusion:\nRight [END]").verdict is None
    assert parse_critique("Some heading\nRight [END]").verdict is None
    # Prose that mentions a conclusion mid-line is not one; repeating the verdict is not a conflict.
    assert parse_critique("In step 2 the conclusion: wrong sign.\nConclusion: right [END]").verdict == "right"
    assert parse_critique("Conclusion: right.\nConclusion: right [END]").verdict == "right"
    for text, why in [("", "empty"), ("Conclusion: right", "lacks [END]"), ("looks good", "last line"),
                      ("Conclusion: wrong, no.\nConclusion: right [END]", "earlier conclusion"),
                      ("Conclusion: incorrect\nConclusion: right [END]", "earlier conclusion"),
                      ("3. **Conclusion:** the solution is wrong.\nConclusion: right [END]", "earlier conclusion"),
                      ("Conclusion: right [END]\nactually more text", "last line"),
                      ("Conclusion: maybe [END]", "last line")]:
        p = parse_critique(text)
        assert p.verdict is None and why in p.error, text


# The solutions and what the scripted teacher says of each: (correct?, critique text, expected fate).
CASES = {
    "S-right-right": (True, "All steps check out.\nConclusion: right [END]", "kept"),
    "S-right-wrong": (True, "Step 1 is off. \\boxed{7}\nConclusion: wrong [END]", "verdict"),
    "S-wrong-right": (False, "Fine.\nConclusion: right [END]", "verdict"),
    "S-wrong-fixed": (False, "Step 2 adds wrongly; the sum is \\boxed{7}.\nConclusion: wrong [END]", "kept"),
    "S-wrong-nofix": (False, "Step 2 adds wrongly.\nConclusion: wrong [END]", "corrected"),
    "S-wrong-badfix": (False, "Step 2 adds wrongly; the sum is \\boxed{8}.\nConclusion: wrong [END]", "corrected"),
    "S-wrong-unparsed": (False, "I think it is wrong.", "parsed"),
}


class ScriptedTeacher:
    """Answers each critique request from CASES (found by the solution's text in the prompt)."""

    def __init__(self, fail_after: int = -1, prefix: str = ""):
        self.calls, self.fail_after, self.prefix = 0, fail_after, prefix
        self.model_name = "scripted"

    def generate(self, groups, decoding):
        assert decoding.temperature == 0.0
        for g in groups:
            if self.calls == self.fail_after:
                raise KeyboardInterrupt
            self.calls += 1
            user = g.messages[-1]["content"]
            name = next(k for k in CASES if k in user)
            yield Generated(g.problem_id, 0, 0, self.prefix + CASES[name][1], 50, 10 + self.calls, 1e6, "stop")


def _files(tmp_path, problems: int = 1):
    probs = [Problem(f"p{i}", f"What is 3 + 4? (#{i})", "7", "test") for i in range(problems)]
    write_records(tmp_path / "problems.jsonl", probs)
    sols = []
    for p in probs:
        for i, (name, (correct, _, _)) in enumerate(CASES.items()):
            text = f"{name}: 3 + 4 = {7 if correct else 9}. \\boxed{{{7 if correct else 9}}}"
            sols.append(Solution(p.id, i, f"gen{i % 2}", 0.6, text, "7" if correct else "9", correct, "boxed-v1",
                                 20, 1e5, "stop", i))
    write_records(tmp_path / "solutions.jsonl", sols)
    return CritiqueConfig(problems=str(tmp_path / "problems.jsonl"), solutions=str(tmp_path / "solutions.jsonl"),
                          out=str(tmp_path / "critiques.jsonl"), dataset=str(tmp_path / "cft.jsonl"),
                          teachers=["t-one"])


def test_every_filter_branch_with_its_reason_and_the_confusion_matrix(tmp_path):
    cfg = _files(tmp_path)
    teacher = ScriptedTeacher()
    res = run_critique(cfg, make=lambda backend, model, options: teacher)
    assert teacher.calls == len(CASES) and res.generated == len(CASES)
    crits = read_records(cfg.out, Critique)
    assert len(crits) == len(CASES)
    rejected = [json.loads(x) for x in open(str(cfg.out) + ".rejected.jsonl")]
    fate = {r["sample_index"]: r["step"] for r in rejected}
    for i, (name, (_, _, expected)) in enumerate(CASES.items()):
        assert fate.get(i, "kept") == expected, name
    reasons = {r["sample_index"]: r["reason"] for r in rejected}
    assert "teacher says wrong, the verifier says the answer is correct" == reasons[1]
    assert "no corrected" in reasons[4] and "'8' is not the reference" in reasons[5] and "last line" in reasons[6]
    assert [(f["step"], f["kept"]) for f in res.funnel] == [("input", 7), ("parsed", 6), ("verdict", 4),
                                                           ("corrected", 2)]
    c = res.confusion["t-one"]
    assert c["correct"] == {"right": 1, "wrong": 1, "unparsed": 0}
    assert c["incorrect"] == {"right": 1, "wrong": 3, "unparsed": 1}
    assert (c["parsed"], c["agreement"]) == (6, 4 / 6)
    # The rows are chat turns `assay train` takes: the critique request (problem + solution), then the critique.
    rows = read_records(cfg.dataset, SFTExample)
    assert [r.sample_index for r in rows] == [0, 3]
    user, assistant = rows[1].messages
    assert user["role"] == "user" and "What is 3 + 4?" in user["content"] and "S-wrong-fixed" in user["content"]
    assert user["content"] == CRITIQUE_TEMPLATES.get("critique-v1").user_text(
        "What is 3 + 4? (#0)", read_records(cfg.solutions, Solution)[3].text)
    assert assistant == {"role": "assistant", "content": CASES["S-wrong-fixed"][1]}
    assert rows[1].model == "t-one" and rows[1].selected_by == "parsed>verdict>corrected"
    summary = json.loads(open(str(cfg.out) + ".summary.json").read())
    assert summary["rows"] == 2 and summary["flops"] == 7e6


def test_a_rerun_is_answered_by_the_cache_and_a_second_teacher_only_adds_its_own(tmp_path):
    cfg = _files(tmp_path)
    run_critique(cfg, make=lambda *a: ScriptedTeacher())
    again = ScriptedTeacher()
    res = run_critique(cfg, make=lambda *a: again)
    assert again.calls == 0 and res.generated == 0 and res.rows == 2
    built = []
    two = CritiqueConfig(**{**cfg.__dict__, "teachers": ["t-one", "t-two"]})
    res = run_critique(two, make=lambda backend, model, options: built.append(model) or ScriptedTeacher())
    assert built == ["t-two"] and res.generated == len(CASES) and res.critiques == 2 * len(CASES)
    assert set(res.confusion) == {"t-one", "t-two"}


def test_killed_mid_run_resumes_without_loss_or_duplicates(tmp_path):
    cfg = _files(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_critique(cfg, make=lambda *a: ScriptedTeacher(fail_after=3))
    cache = [json.loads(x) for x in open(str(cfg.out) + ".cache.jsonl")]
    assert len(cache) == 3
    rest = ScriptedTeacher()
    res = run_critique(cfg, make=lambda *a: rest)
    assert rest.calls == len(CASES) - 3 and res.rows == 2
    keys = [json.loads(x)["key"] for x in open(str(cfg.out) + ".cache.jsonl")]
    assert len(keys) == len(set(keys)) == len(CASES)


def test_changing_the_template_or_decoding_is_not_answered_from_the_cache(tmp_path):
    cfg = _files(tmp_path)
    run_critique(cfg, make=lambda *a: ScriptedTeacher())
    longer = ScriptedTeacher()
    run_critique(CritiqueConfig(**{**cfg.__dict__, "max_new_tokens": 100}), make=lambda *a: longer)
    assert longer.calls == len(CASES)


def test_multi_problem_variant_keeps_one_critique_per_problem_and_caps_rows(tmp_path):
    cfg = CritiqueConfig(**{**_files(tmp_path, problems=3).__dict__, "per_problem": 1, "rows": 2})
    res = run_critique(cfg, make=lambda *a: ScriptedTeacher())
    rows = read_records(cfg.dataset, SFTExample)
    assert len(rows) == 2 and len({r.problem_id for r in rows}) == 2
    assert [f["step"] for f in res.funnel][-2:] == ["per_problem:1", "rows:2"]
    assert [f["kept"] for f in res.funnel][-2:] == [3, 2]
    rejected = [json.loads(x) for x in open(str(cfg.out) + ".rejected.jsonl")]
    assert sum(r["reason"] == "over 1 per problem" for r in rejected) == 3


def test_a_solution_of_an_unknown_problem_is_one_line_naming_the_file_and_line(tmp_path):
    cfg = _files(tmp_path)
    rows = (tmp_path / "solutions.jsonl").read_text().splitlines()
    rows[2] = rows[2].replace('"p0"', '"nope"')
    (tmp_path / "solutions.jsonl").write_text("\n".join(rows) + "\n")
    with pytest.raises(InputError, match=r"solutions.jsonl:3: solution nope/2 names a problem"):
        run_critique(cfg, make=lambda *a: ScriptedTeacher())


def test_cli_refuses_an_unknown_teacher_and_template_before_any_work(tmp_path, capsys):
    from assay.cli import main

    cfg = _files(tmp_path)
    base = ["critique", f"problems={cfg.problems}", f"solutions={cfg.solutions}", f"out={cfg.out}"]
    assert main(base + ["teachers=[qwen2.5-coder-1.5b-instrct]"]) == 2
    err = capsys.readouterr().err
    assert "teachers" in err and "not an embedded model" in err and "qwen2.5-coder-1.5b-instruct" in err
    assert main(base + ["template=critique-v9"]) == 2
    err = capsys.readouterr().err
    assert "critique-v1" in err and "Traceback" not in err
    assert not (tmp_path / "critiques.jsonl.cache.jsonl").exists()


def test_a_repeated_solution_key_and_a_repeated_teacher_are_refused(tmp_path):
    from assay.critique.stage import check

    cfg = _files(tmp_path)
    rows = (tmp_path / "solutions.jsonl").read_text().splitlines()
    (tmp_path / "solutions.jsonl").write_text("\n".join(rows + [rows[1]]) + "\n")
    with pytest.raises(InputError, match=r"solutions.jsonl:8: solution p0/1 repeats line 2"):
        run_critique(cfg, make=lambda *a: ScriptedTeacher())
    with pytest.raises(Exception, match="names a teacher twice"):
        check(CritiqueConfig(**{**cfg.__dict__, "teachers": ["t-one", "t-one"]}))


def test_rows_too_long_for_the_students_max_length_are_dropped_with_their_length(tmp_path, tiny_model_dir):
    cfg = CritiqueConfig(**{**_files(tmp_path).__dict__, "max_length": 120, "tokenizer": str(tiny_model_dir)})
    res = run_critique(cfg, make=lambda *a: ScriptedTeacher())
    crits = read_records(cfg.out, Critique)
    assert all(c.row_tokens and c.row_tokens > 100 for c in crits)
    fits = next(f for f in res.funnel if f["step"] == "fits")
    long_ones = sum(c.row_tokens > 120 for c in crits if c.verdict and (c.verdict == "right") == c.solution_correct)
    rejected = [json.loads(x) for x in open(str(cfg.out) + ".rejected.jsonl") if '"fits"' in x]
    assert fits["dropped"] == len(rejected) and all("> max_length 120" in r["reason"] for r in rejected)
    assert long_ones >= fits["dropped"]


def test_another_server_is_another_cache_key():
    from assay.sampling.backends import resolve_options
    from assay.sampling.cached import served_by

    a, b = (served_by("openai", resolve_options("openai", {"base_url": u})) for u in
            ("http://127.0.0.1:8000/v1", "http://user:secret@10.0.0.2:8000/v1"))
    assert a != b and "secret" not in json.dumps(b) and served_by("hf", resolve_options("hf")) == {}
    assert served_by("vllm", resolve_options("vllm", {"python": "/usr/bin/python3"})) == {"generator": "vllm"}


def test_length_bounds_drop_critiques_with_their_token_counts(tmp_path):
    cfg = CritiqueConfig(**{**_files(tmp_path).__dict__, "min_tokens": 12, "max_tokens": 14})
    res = run_critique(cfg, make=lambda *a: ScriptedTeacher())  # the scripted critiques are 11..17 tokens long
    step = next(f for f in res.funnel if f["step"] == "length")
    reasons = [json.loads(x)["reason"] for x in open(str(cfg.out) + ".rejected.jsonl") if '"length"' in x]
    assert step["dropped"] == len(reasons) > 0
    assert all(re.fullmatch(r"\d+ tokens (< min_tokens 12|> max_tokens 14)", r) for r in reasons)
