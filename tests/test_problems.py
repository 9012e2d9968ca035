"""Tests of the ``problems`` stage: presets against the real files, the generic mapping, reasoning-gym
generation and its label check, the hf: path on a local folder, and the CLI's exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from assay import cli
from assay.core.io import InputError, read_records
from assay.core.records import Problem
from assay.data.problems import ProblemsConfig, cli_run, load_problems, source_kind
from assay.data.sources import (
    SOURCES,
    check_expression_label,
    check_label,
    format_number,
    load_hf,
    load_jsonl,
    load_rg,
    safe_eval,
)

FIXTURES = Path(__file__).resolve().parent / "data"
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"benchmark data folder {SHARED_DATA} is absent (a fresh clone does not have it)")
    return SHARED_DATA


def load(source: str, **kw) -> list[Problem]:
    kept, rejected = load_problems(ProblemsConfig(source=source, **kw))
    assert rejected == []
    return kept


# --------------------------------------------------------------------------------------------
# Presets on the real files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset,count,first_id,first_answer,question_start", [
    ("gsm8k-test", 1319, "gsm8k-test-0", "18", "Janet’s ducks lay 16 eggs per day."),
    ("gsm8k-train", 7473, "gsm8k-train-0", "72", "Natalia sold clips to 48 of her friends"),
    ("math500", 500, "math500-0", r"\left( 3, \frac{\pi}{2} \right)", "Convert the point $(0,3)$"),
    ("aime24", 30, "aime24-60", "204", "Every morning Aya goes for a $9$-kilometer-long walk"),
    ("amc23", 40, "amc23-0", "27", "Cities $A$ and $B$ are $45$ miles apart."),
    ("svamp", 1000, "svamp-chal-777", "145", "There are 87 oranges and 290 bananas"),
])
def test_preset_real_file(shared_data, preset, count, first_id, first_answer, question_start):
    problems = load(preset, data_dir=str(shared_data))
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    first = problems[0]
    assert (first.id, first.answer, first.source) == (first_id, first_answer, preset)
    assert first.question.startswith(question_start)
    assert all(p.question.strip() and p.answer.strip() for p in problems)


def test_gsm8k_answer_is_final_number_without_commas(shared_data):
    problems = load("gsm8k-test", data_dir=str(shared_data))
    # Row 146 ends its solution with "#### 2,125".
    assert problems[146].answer == "2125"
    assert problems[146].meta["solution"].endswith("#### 2,125")
    assert problems[0].meta["solution"].startswith("Janet sells 16 - 3 - 4")
    assert all("," not in p.answer and p.answer.lstrip("-").replace(".", "").isdigit() for p in problems)


def test_math500_meta(shared_data):
    first = load("math500", data_dir=str(shared_data))[0]
    assert first.meta["subject"] == "Precalculus"
    assert first.meta["level"] == 2
    assert first.meta["unique_id"] == "test/precalculus/807.json"
    assert r"\boxed{\left( 3, \frac{\pi}{2} \right)}" in first.meta["solution"]


def test_amc23_float_answers_are_formatted(shared_data):
    problems = {p.id: p for p in load("amc23", data_dir=str(shared_data))}
    # The file's ids run 0..49 with gaps; id 17 (line 16) is the one negative answer, stored as -1.0.
    assert problems["amc23-17"].answer == "-1"
    assert all(not p.answer.endswith(".0") for p in problems.values())


def test_svamp_question_and_meta(shared_data):
    row = json.loads((shared_data / "svamp" / "test.jsonl").read_text(encoding="utf-8").splitlines()[1])
    p = load("svamp", data_dir=str(shared_data))[1]
    assert p.id == "svamp-chal-508"
    assert p.question == row["Body"] + " " + row["Question"]
    assert p.answer == "19"
    assert p.meta == {"equation": "( 30.0 - 11.0 )", "type": "Subtraction"}


def test_preset_data_dir_from_env(shared_data, monkeypatch):
    monkeypatch.setenv("ASSAY_DATA", str(shared_data))
    assert len(load("aime24")) == 30


def test_preset_missing_data_dir_says_how_to_fix(tmp_path):
    with pytest.raises(InputError, match=r"was not found.*--data-dir"):
        load_problems(ProblemsConfig(source="gsm8k-test", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(InputError, match=r"has no gsm8k/test.jsonl.*--data-dir"):
        load_problems(ProblemsConfig(source="gsm8k-test", data_dir=str(tmp_path)))


def test_registry_and_unknown_source():
    assert set(SOURCES.names()) == {"gsm8k-train", "gsm8k-test", "math500", "aime24", "amc23", "svamp"}
    with pytest.raises(InputError, match=r"did you mean 'gsm8k-test', 'gsm8k-train'"):
        source_kind("gsm8k")
    assert source_kind("rg:chain_sum") == ("rg", "chain_sum")
    assert source_kind("hf:openai/gsm8k") == ("hf", "openai/gsm8k")
    assert source_kind("some/file.jsonl") == ("jsonl", "some/file.jsonl")


def test_options_that_do_not_apply_are_rejected():
    with pytest.raises(InputError, match="'question_field' does not apply"):
        load_problems(ProblemsConfig(source="svamp", question_field="Body"))
    with pytest.raises(InputError, match="'task_kwargs' does not apply"):
        load_problems(ProblemsConfig(source=str(FIXTURES / "problems_generic.jsonl"), task_kwargs={"a": 1}))


# --------------------------------------------------------------------------------------------
# Generic JSONL mapping
# --------------------------------------------------------------------------------------------


def test_generic_mapping_with_id_field():
    path = FIXTURES / "problems_generic.jsonl"
    problems = load(str(path), question_field="prompt", answer_field="target", id_field="uid")
    assert [(p.id, p.answer) for p in problems] == [("p-a", "5"), ("p-b", "3.5"), ("p-c", "Paris"), ("p-d", "100")]
    assert problems[0].question == "What is 2 + 3?"
    assert problems[0].source == str(path)


def test_generic_mapping_line_based_ids():
    problems = load_jsonl(FIXTURES / "problems_generic.jsonl", question="prompt", answer="target")
    # Line 3 is blank: ids follow the line, so they stay put if blank lines come or go elsewhere.
    assert [p.id for p in problems] == ["problems_generic-0", "problems_generic-1", "problems_generic-3",
                                        "problems_generic-4"]


def test_missing_field_names_file_line_and_field():
    with pytest.raises(InputError) as exc:
        load_problems(ProblemsConfig(source=str(FIXTURES / "problems_missing_field.jsonl"),
                                     question_field="prompt", answer_field="target"))
    assert "problems_missing_field.jsonl:2: field 'target' missing" in str(exc.value)


def test_default_fields_are_question_and_answer():
    with pytest.raises(InputError, match=r"problems_generic.jsonl:1: field 'question' missing"):
        load_problems(ProblemsConfig(source=str(FIXTURES / "problems_generic.jsonl")))


def test_malformed_line_names_file_and_line():
    with pytest.raises(InputError, match=r"problems_malformed.jsonl:3: malformed JSON"):
        load_problems(ProblemsConfig(source=str(FIXTURES / "problems_malformed.jsonl"),
                                     question_field="prompt", answer_field="target"))


def test_duplicate_ids_are_an_error(tmp_path):
    path = tmp_path / "dups.jsonl"
    path.write_text('{"id": 1, "question": "a", "answer": "1"}\n{"id": 1, "question": "b", "answer": "2"}\n')
    with pytest.raises(InputError, match=r"duplicate problem id '1'"):
        load_problems(ProblemsConfig(source=str(path), id_field="id"))


def test_non_scalar_answer_is_an_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": [1, 2]}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:1: field 'answer': expected a string or number, got list"):
        load_jsonl(path)


def test_format_number():
    assert [format_number(v) for v in (145.0, 2.5, -1.0, 7)] == ["145", "2.5", "-1", "7"]


# --------------------------------------------------------------------------------------------
# reasoning-gym
# --------------------------------------------------------------------------------------------


def test_rg_is_deterministic_and_keeps_the_entry():
    a = load("rg:chain_sum", size=20, seed=3)
    b = load("rg:chain_sum", size=20, seed=3)
    c = load("rg:chain_sum", size=20, seed=4)
    assert a == b
    assert [p.question for p in a] != [p.question for p in c]
    p = a[0]
    assert p.id == "chain_sum-s3-0" and p.source == "reasoning_gym:chain_sum"
    entry = json.loads(p.meta["rg_entry"])
    assert entry["question"] == p.question and entry["answer"] == p.answer
    assert "expression" in entry["metadata"]
    assert p.meta["rg_task"] == "chain_sum"
    assert json.loads(p.meta["rg_config"]) == {"size": 20, "seed": 3}


def test_rg_task_kwargs_reach_the_generator():
    problems = load("rg:chain_sum", size=10, seed=0, task_kwargs={"min_terms": 2, "max_terms": 2})
    for p in problems:
        assert json.loads(p.meta["rg_entry"])["metadata"]["num_terms"] == 2
    assert json.loads(problems[0].meta["rg_config"]) == {"min_terms": 2, "max_terms": 2, "size": 10, "seed": 0}
    # From the command line the mapping arrives as text.
    assert load("rg:chain_sum", size=10, seed=0, task_kwargs="{min_terms: 2, max_terms: 2}") == problems


def test_rg_unknown_task_and_bad_kwargs():
    with pytest.raises(InputError, match=r"unknown reasoning-gym task 'chain_sums' \(did you mean 'chain_sum'"):
        load_rg("chain_sums", size=2, seed=0)
    with pytest.raises(InputError, match=r"rg:chain_sum: bad task_kwargs"):
        load_rg("chain_sum", size=2, seed=0, task_kwargs={"bogus": 1})


def test_safe_eval_is_exact_and_refuses_anything_else():
    assert safe_eval("10 + 4 * 9") == 46
    assert safe_eval("-( 3 - 5 ) * 2") == 4
    assert safe_eval("7 / 2") * 2 == 7
    assert safe_eval("0.1 + 0.2") == safe_eval("0.3")
    for bad in ("__import__('os').system('true')", "2 ** 3", "x + 1", "1 // 2", "[1]", "True + 1", "1 / 0"):
        with pytest.raises(ValueError):
            safe_eval(bad)


def test_check_label_rejects_a_planted_wrong_label():
    entry = {"question": "Calculate 10 + 4 * 9.", "answer": "126",
             "metadata": {"source_dataset": "basic_arithmetic", "expression": "10 + 4 * 9"}}
    bad = Problem(id="planted", question=entry["question"], answer="126", source="reasoning_gym:basic_arithmetic",
                  meta={"rg_task": "basic_arithmetic", "rg_entry": json.dumps(entry)})
    reason = check_label(bad)
    assert reason is not None and reason.startswith("wrong label") and "= 46" in reason
    good = Problem(**{**bad.__dict__, "answer": "46"})
    assert check_label(good) is None
    # Other tasks are not arithmetic over an expression and are left alone.
    other = Problem(**{**bad.__dict__, "meta": {**bad.meta, "rg_task": "word_sorting"}})
    assert check_label(other) is None
    assert check_expression_label("7 / 2", "3").startswith("wrong label")
    assert check_expression_label("7 / 0", "7").startswith("unevaluable expression")


def test_left_to_right_basic_arithmetic_is_rejected_not_kept():
    cfg = ProblemsConfig(source="rg:basic_arithmetic", size=200, seed=0,
                         task_kwargs={"allow_parentheses": False})
    kept, rejected = load_problems(cfg)
    assert len(kept) + len(rejected) == 200
    assert rejected, "the generator's left-to-right labels should be caught"
    assert all(check_label(p) is None for p in kept)
    assert all(r["reason"] and r["id"].startswith("basic_arithmetic-s0-") for r in rejected)


def test_offset_and_limit_carve_disjoint_pools():
    first = load("rg:chain_sum", size=30, seed=1, limit=10)
    second = load("rg:chain_sum", size=30, seed=1, offset=10, limit=10)
    assert len(first) == len(second) == 10
    assert not {p.id for p in first} & {p.id for p in second}
    assert [p.id for p in second] == [f"chain_sum-s1-{i}" for i in range(10, 20)]
    with pytest.raises(InputError, match="offset 30 is past the end"):
        load_problems(ProblemsConfig(source="rg:chain_sum", size=30, offset=30))


# --------------------------------------------------------------------------------------------
# Hugging Face datasets (a local folder through the same call as a hub name)
# --------------------------------------------------------------------------------------------


def test_hf_local_folder(tmp_path):
    folder = tmp_path / "tiny_hf"
    shutil.copytree(FIXTURES / "problems_hf", folder)
    problems = load_hf(str(folder), None, "train", question="problem", answer="solution")
    assert [(p.id, p.answer) for p in problems] == [("tiny_hf-train-0", "42"), ("tiny_hf-train-1", "5"),
                                                     ("tiny_hf-train-2", "2")]
    assert problems[0].source == f"hf:{folder}"
    via_config = load(f"hf:{folder}", question_field="problem", answer_field="solution", limit=2)
    assert via_config == problems[:2]
    with pytest.raises(InputError, match=r"row 0: field 'question' missing"):
        load_hf(str(folder), None, "train")
    with pytest.raises(InputError, match=r"could not load"):
        load_hf(str(folder), None, "validation", question="problem", answer="solution")


# --------------------------------------------------------------------------------------------
# Output files and the CLI
# --------------------------------------------------------------------------------------------


def test_mixed_output_loads_with_datasets(tmp_path):
    from datasets import load_dataset

    from assay.core.io import write_records

    mixed = load("rg:chain_sum", size=5, seed=0) + load(str(FIXTURES / "problems_generic.jsonl"),
                                                        question_field="prompt", answer_field="target")
    if SHARED_DATA.exists():
        mixed += load("math500", data_dir=str(SHARED_DATA), limit=3) + load("svamp", data_dir=str(SHARED_DATA),
                                                                            limit=3)
    out = tmp_path / "mixed.jsonl"
    write_records(out, mixed)
    ds = load_dataset("json", data_files=str(out), split="train")
    assert ds.num_rows == len(mixed)
    assert ds["id"] == [p.id for p in mixed]
    assert ds["answer"] == [p.answer for p in mixed]
    assert json.loads(ds[0]["meta"]["rg_entry"])["answer"] == mixed[0].answer
    assert read_records(out, Problem) == mixed


@pytest.fixture
def problems_cli(monkeypatch):
    # Only this stage's subcommand, so the test does not depend on the other stage modules.
    monkeypatch.setattr(cli, "COMMANDS", {"problems": cli.COMMANDS["problems"]})
    return cli.main


def test_cli_exits_2_on_a_bad_file(problems_cli, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    rc = problems_cli(["problems", "--source", str(FIXTURES / "problems_malformed.jsonl"),
                       "--question-field", "prompt", "--answer-field", "target", "--out", str(out)])
    assert rc == 2
    assert "problems_malformed.jsonl:3" in capsys.readouterr().err
    assert not out.exists()


def test_cli_writes_problems_config_and_rejects(problems_cli, tmp_path, capsys):
    out = tmp_path / "ba.jsonl"
    rc = problems_cli(["problems", "--source", "rg:basic_arithmetic", "--size", "50", "--seed", "7",
                       "--task-kwargs", "{allow_parentheses: false}", "--out", str(out)])
    assert rc == 0
    kept = read_records(out, Problem)
    rejected = [json.loads(line) for line in Path(str(out) + ".rejected.jsonl").read_text().splitlines()]
    assert len(kept) + len(rejected) == 50 and rejected
    assert set(rejected[0]) == {"id", "question", "answer", "source", "meta", "reason"}
    printed = capsys.readouterr().out
    assert f"rejected {len(rejected)} of 50" in printed and "wrong label" in printed
    saved = yaml.safe_load(Path(str(out) + ".config.yaml").read_text())
    assert saved["task_kwargs"] == {"allow_parentheses": False} and saved["seed"] == 7
    # Re-running from the saved config makes the same file; a clean run removes the stale rejects.
    again = tmp_path / "again.jsonl"
    assert cli_run(ProblemsConfig(**{**saved, "out": str(again)})) == 0
    assert again.read_text() == out.read_text()
    assert problems_cli(["problems", "--source", "rg:chain_sum", "--size", "5", "--out", str(out)]) == 0
    assert not Path(str(out) + ".rejected.jsonl").exists()


def test_distinct_keeps_first_of_repeated_questions(tmp_path):
    src = tmp_path / "p.jsonl"
    rows = [{"question": "1 + 1 =", "answer": "2"}, {"question": "2 + 2 =", "answer": "4"},
            {"question": " 1  +  1 = ", "answer": "2"}, {"question": "1 + 1 =", "answer": "2"}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept, rejected = load_problems(ProblemsConfig(source=str(src), distinct=True))
    assert [p.id for p in kept] == ["p-0", "p-1"]
    assert [r["reason"] for r in rejected] == ["duplicate question: same as p-0"] * 2
    kept, rejected = load_problems(ProblemsConfig(source=str(src)))
    assert len(kept) == 4 and not rejected
