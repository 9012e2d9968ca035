"""Tests of the verify stage: extractors, the golden table, time limits, reasoning-gym, resume."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from assay.core.config import add_config_args, config_from_args
from assay.core.io import InputError, read_records
from assay.core.records import Problem, Sample, Verdict, key
from assay.verify.extract import DEFAULT_EXTRACTORS, EXTRACTORS, clean_answer, extract_answer
from assay.verify.stage import VerifyConfig, cli_run, verify_samples
from assay.verify.verifiers import VERIFIERS

GOLDEN = Path(__file__).parent / "golden" / "verify_golden.jsonl"


def sample(pid: str, text: str, i: int = 0) -> Sample:
    return Sample(pid, i, "test-model", "boxed-v1", text, 10, 10, 1.0, "stop", {"temperature": 0.0}, i)


def cfg(**kw) -> VerifyConfig:
    kw.setdefault("workers", 2)
    kw.setdefault("timeout_s", 5.0)
    return VerifyConfig(problems="p.jsonl", samples="s.jsonl", out="v.jsonl", **kw)


class ScriptedVerifier:
    """Test-only verifier whose behaviour is set by the problem's answer: sleep, raise or exit."""

    name = "scripted"

    def __init__(self, extractors: list[str]):
        self.extractors = extractors

    def verify(self, problem: Problem, completion: str):
        if problem.answer == "sleep":
            time.sleep(60)
        if problem.answer == "raise":
            raise ValueError("scripted failure")
        if problem.answer == "exit":
            os._exit(3)
        extracted = extract_answer(completion, self.extractors)
        return extracted, extracted == problem.answer


if "scripted" not in VERIFIERS:
    VERIFIERS.add("scripted", ScriptedVerifier)


# ------------------------------------------------------------------------------ extractors


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so $\\boxed{42}$.", "42"),
        ("\\boxed{1} first, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\fbox{7}", "7"),
        ("\\boxed 5 is it", "5"),
        ("\\boxed{3} and then, cut off: \\boxed{4", "3"),
        ("no box here", None),
    ],
)
def test_boxed(text, expected):
    assert EXTRACTORS.get("boxed")(text) == expected


def test_hashes_answer_tag_and_last_number():
    assert EXTRACTORS.get("hashes")("She earns 9 * 2 = 18.\n#### 18\n") == "18"
    assert EXTRACTORS.get("hashes")("#### 3\nwait\n#### 4") == "4"
    assert EXTRACTORS.get("hashes")("no marker") is None
    assert EXTRACTORS.get("answer_tag")("<answer>a</answer> <answer> -4 </answer>") == " -4 "
    assert EXTRACTORS.get("last_number")("after 3 days it costs $1,250.50") == "1,250.50"
    assert EXTRACTORS.get("last_number")("went from 5 to -3.5") == "-3.5"
    assert EXTRACTORS.get("last_number")("a ratio of 3/4") == "3/4"
    assert EXTRACTORS.get("last_number")("none") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is 42.", "42"),
        ("Therefore, the final answer is $\\frac{3}{4}$. Done.", "\\frac{3}{4}"),
        ("**Answer:** 3.5 apples and 2 pears", "3.5 apples and 2 pears"),
        ("The final answer is: $\\boxed{12}$", "12"),
        ("Answer:\n  17\n", "17"),
        ("The answer is 7. Wait, the answer is 8.", "8"),
        ("To answer this we add 2 and 3.", None),
    ],
)
def test_answer_phrase(text, expected):
    assert EXTRACTORS.get("answer_phrase")(text) == expected


@pytest.mark.parametrize(
    "raw, cleaned",
    [("1,000", "1000"), ("-12,345.5", "-12345.5"), ("\\$18.", "18"), ("$\\frac{1}{2}$.", "\\frac{1}{2}"),
     ("1{,}000", "1000"), ("(1,2)", "(1,2)"), ("\\(x+1\\)", "x+1"), ("  5  ", "5"), ("18 dollars", "18"),
     ("1,250 square feet.", "1250"), ("2 boxes and 15 pies", "2 boxes and 15 pies"), ("x + 2", "x + 2")],
)
def test_clean_answer(raw, cleaned):
    assert clean_answer(raw) == cleaned


def test_extractor_order_is_configurable():
    text = "#### 5\nor rather \\boxed{6}. The answer is 7"
    assert extract_answer(text) == "6"
    assert extract_answer(text, ["hashes", "boxed"]) == "5"
    assert extract_answer(text, ["answer_phrase"]) == "7"
    assert extract_answer("\\boxed{} then 9", ["boxed", "last_number"]) == "9"  # empty box: next extractor
    assert DEFAULT_EXTRACTORS[0] == "boxed" and DEFAULT_EXTRACTORS[-1] == "last_number"


def test_extraction_stays_fast_on_degenerate_completions():
    # Small models loop; the parent extracts timed-out items itself, so this must never be quadratic.
    texts = ["\\boxed{" * 20000, "<answer>" * 20000 + "</answer>", "The answer is: \n" * 20000,
             "\\boxed " * 20000, "9" * 100000 + " apples"]
    t = time.monotonic()
    for text in texts:
        extract_answer(text)
    assert time.monotonic() - t < 2


def test_unknown_extractor_suggests_a_name():
    with pytest.raises(InputError, match="did you mean 'boxed'"):
        verify_samples([Problem("p", "q", "1", "t")], [sample("p", "1")], cfg(extractors=["boxd"]))


# ------------------------------------------------------------------------------ golden table


def test_golden_table():
    rows = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(rows) >= 40
    problems = [Problem(f"g{i}", "", r["gold"], "golden") for i, r in enumerate(rows)]
    samples = [sample(f"g{i}", r["prediction"]) for i, r in enumerate(rows)]
    verdicts = verify_samples(problems, samples, cfg())
    wrong = [
        f"row {i} ({r['note']}): gold={r['gold']!r} extracted={v.extracted!r} got {v.correct}, expected {r['expected']}"
        for i, (r, v) in enumerate(zip(rows, verdicts))
        if v.correct != r["expected"] or v.status != "ok"
    ]
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------ time limits and failures


def test_pathological_expression_times_out_and_the_run_continues():
    problems = [Problem("tower", "q", "1", "t"), Problem("half", "q", "\\frac{1}{2}", "t")]
    samples = [sample("tower", "so \\boxed{9^{9^{9^{9^{9}}}}}")] + [
        sample("half", "The answer is 0.5." if i % 2 else "\\boxed{2}", i) for i in range(1, 9)
    ]
    t = time.monotonic()
    verdicts = verify_samples(problems, samples, cfg(timeout_s=1.0))
    assert time.monotonic() - t < 20
    tower = verdicts[0]
    assert (tower.status, tower.correct, tower.extracted) == ("timeout", False, "9^{9^{9^{9^{9}}}}")
    assert all(v.status == "ok" for v in verdicts[1:])
    assert [v.correct for v in verdicts[1:]] == [i % 2 == 1 for i in range(1, 9)]


def test_sleep_error_and_crash_are_contained():
    problems = [Problem(a, "q", a, "t") for a in ("sleep", "raise", "exit", "7")]
    samples = [sample(p.id, "\\boxed{7}") for p in problems] + [sample("7", "\\boxed{8}", 1)]
    t = time.monotonic()
    verdicts = verify_samples(problems, samples, cfg(timeout_s=1.0, verifier="scripted"))
    assert time.monotonic() - t < 20
    by = {key(v): v for v in verdicts}
    assert by[("sleep", 0)].status == "timeout" and by[("sleep", 0)].extracted == "7"
    assert by[("raise", 0)].status == "error" and "scripted failure" in by[("raise", 0)].error
    assert by[("exit", 0)].status == "error" and "exit code 3" in by[("exit", 0)].error
    assert by[("7", 0)].correct and not by[("7", 1)].correct
    assert all(not v.correct for v in verdicts[:3]) and {v.method for v in verdicts} == {"scripted"}


def _proc_children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except (OSError, ValueError):
            continue
        if d.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(d))
    return kids


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_does_not_outlive_a_killed_run(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        from assay.core.records import Problem, Sample
        from assay.verify.stage import VerifyConfig, verify_samples
        if __name__ == "__main__":
            p = [Problem("t", "q", "1", "t")]
            s = [Sample("t", 0, "m", "t", "\\\\boxed{9^{9^{9^{9^{9}}}}}", 0, 0, 0.0, "stop", {}, 0)]
            verify_samples(p, s, VerifyConfig("p", "s", "o", workers=1, timeout_s=3.0))
    """))
    run = subprocess.Popen([sys.executable, str(script)])
    worker = None
    try:
        end = time.monotonic() + 30
        while worker is None or _cpu_seconds(worker) < 0.5:  # busy on the item, well before its deadline
            assert time.monotonic() < end and run.poll() is None
            servers = [c for c in _proc_children(run.pid) if "forkserver" in Path(f"/proc/{c}/cmdline").read_text()]
            workers = [w for s in servers for w in _proc_children(s)]
            worker = workers[0] if workers else None
            time.sleep(0.05)
    finally:
        run.kill()  # SIGKILL: no cleanup runs in the parent
        run.wait()
    # The kernel's CPU limit (2 x 3 s + 5 s past the item's start) ends the orphan.
    end = time.monotonic() + 40
    while Path(f"/proc/{worker}").exists() and "Z" not in Path(f"/proc/{worker}/stat").read_text().split()[2]:
        assert time.monotonic() < end, "the orphaned worker is still running"
        time.sleep(0.2)


def test_workers_and_timeout_are_validated():
    p, s = [Problem("p", "q", "1", "t")], [sample("p", "1")]
    with pytest.raises(InputError, match="workers"):
        verify_samples(p, s, cfg(workers=0))
    with pytest.raises(InputError, match="timeout_s"):
        verify_samples(p, s, cfg(timeout_s=0))
    with pytest.raises(InputError, match="did you mean 'math_verify'"):
        verify_samples(p, s, cfg(verifier="mathverify"))
    assert verify_samples(p, [], cfg()) == []


# ------------------------------------------------------------------------------ reasoning-gym


@pytest.fixture(scope="module")
def rg_problems() -> list[Problem]:
    import reasoning_gym

    ds = reasoning_gym.create_dataset("chain_sum", size=5, seed=1)
    return [
        Problem(f"rg-{i}", e["question"], e["answer"], "reasoning_gym:chain_sum",
                {"rg_task": "chain_sum", "rg_entry": json.dumps(e)})
        for i, e in enumerate(ds)
    ]


def test_reasoning_gym_scoring_counts_only_full_credit(rg_problems):
    assert rg_problems[0].answer == "-4"  # the near miss below depends on it
    samples = [
        sample("rg-0", "4 - 1 - 7 = -4, so <answer>-4</answer>", 0),
        sample("rg-0", "<answer>-4.5</answer>", 1),  # reasoning-gym gives 0.5 for this
        sample("rg-0", "I think it is \\boxed{4}", 2),
        sample("rg-0", "no idea", 3),
    ] + [sample(p.id, f"The answer is {p.answer}.") for p in rg_problems[1:]]
    math = Problem("m", "q", "\\frac{1}{2}", "t")
    verdicts = verify_samples(rg_problems + [math], samples + [sample("m", "\\boxed{0.5}")], cfg())
    import reasoning_gym

    entry = json.loads(rg_problems[0].meta["rg_entry"])
    assert reasoning_gym.get_score_answer_fn("chain_sum")("-4.5", entry) == 0.5
    assert [v.correct for v in verdicts[:4]] == [True, False, False, False]
    assert verdicts[1].extracted == "-4.5" and verdicts[3].extracted is None
    assert all(v.correct for v in verdicts[4:])
    assert {v.method for v in verdicts[:-1]} == {"reasoning_gym:chain_sum"}
    assert verdicts[-1].method == "math_verify"


def test_reasoning_gym_bad_meta_is_an_input_error(rg_problems):
    bad = Problem("b", "q", "1", "t", {"rg_task": "chain_sum", "rg_entry": "{not json"})
    with pytest.raises(InputError, match="problem 'b'.*not valid JSON"):
        verify_samples([bad], [sample("b", "1")], cfg())
    with pytest.raises(InputError, match="rg_task"):
        verify_samples([Problem("m", "q", "1", "t")], [sample("m", "1")], cfg(verifier="reasoning_gym"))


# ------------------------------------------------------------------------------ the CLI stage


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r if isinstance(r, dict) else r.__dict__) + "\n" for r in rows), encoding="utf-8")
    return path


def stage_files(tmp_path: Path, n: int = 12) -> VerifyConfig:
    problems = [Problem(f"p{i}", "q", str(i), "t") for i in range(n // 2)]
    samples = [sample(f"p{i // 2}", f"\\boxed{{{i // 2 + (i % 2)}}}", i % 2) for i in range(n)]
    return VerifyConfig(
        problems=str(write_jsonl(tmp_path / "problems.jsonl", problems)),
        samples=str(write_jsonl(tmp_path / "samples.jsonl", samples)),
        out=str(tmp_path / "verdicts.jsonl"),
        workers=2,
    )


def test_cli_run_writes_verdicts_config_and_summary(tmp_path, capsys):
    c = stage_files(tmp_path)
    assert cli_run(c) == 0
    verdicts = read_records(c.out, Verdict)
    assert [key(v) for v in verdicts] == [(f"p{i // 2}", i % 2) for i in range(12)]
    assert [v.correct for v in verdicts] == [i % 2 == 0 for i in range(12)]
    assert "12 verdicts, 6 correct (50.0%), 0 timeouts, 0 errors" in capsys.readouterr().out
    saved = Path(c.out + ".config.yaml").read_text()
    assert "timeout_s: 5.0" in saved and "- boxed" in saved


def test_resume_after_a_kill_has_no_duplicates(tmp_path, capsys):
    c = stage_files(tmp_path)
    cli_run(c)
    full = Path(c.out).read_text(encoding="utf-8")
    lines = full.splitlines(keepends=True)
    # Half the verdicts plus a torn line, as a kill mid-write leaves them.
    Path(c.out).write_text("".join(lines[:6]) + lines[6][:15], encoding="utf-8")
    capsys.readouterr()
    assert cli_run(c) == 0
    assert Path(c.out).read_text(encoding="utf-8") == full
    assert "12 verdicts, 6 correct" in capsys.readouterr().out
    assert cli_run(c) == 0  # nothing left to do
    assert Path(c.out).read_text(encoding="utf-8") == full


def test_resume_refuses_other_extractors(tmp_path):
    c = stage_files(tmp_path)
    cli_run(c)
    c.extractors = ["last_number"]
    with pytest.raises(InputError, match="extractors"):
        cli_run(c)


def test_unknown_problem_id_names_the_file_and_sample(tmp_path):
    c = stage_files(tmp_path)
    with open(c.samples, "a", encoding="utf-8") as fh:
        fh.write("\n" + json.dumps(sample("p-missing", "1", 4).__dict__) + "\n")
    with pytest.raises(InputError) as exc:
        cli_run(c)
    msg = str(exc.value)
    assert f"{c.samples}:14:" in msg and "'p-missing'" in msg and "problems.jsonl" in msg


def test_malformed_input_is_a_clear_input_error(tmp_path):
    c = stage_files(tmp_path)
    Path(c.samples).write_text('{"problem_id": "p0", "sample_index": 0\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"samples.jsonl:1: malformed JSON"):
        cli_run(c)
    write_jsonl(Path(c.samples), [{**sample("p0", "1").__dict__, "sample_index": "zero"}])
    with pytest.raises(InputError, match=r"samples.jsonl:1: field 'sample_index': expected int"):
        cli_run(c)
    write_jsonl(Path(c.samples), [sample("p0", "1"), sample("p1", "1"), sample("p0", "2")])
    with pytest.raises(InputError, match=r"samples.jsonl:3: sample \('p0', 0\) repeats line 1"):
        cli_run(c)
    write_jsonl(Path(c.samples), [sample("p0", "1")])
    write_jsonl(Path(c.problems), [Problem("p0", "q", "1", "t"), Problem("p0", "q", "2", "t")])
    with pytest.raises(InputError, match="problems.jsonl:2: problem id 'p0' repeats line 1"):
        cli_run(c)


def test_config_from_flags():
    parser = argparse.ArgumentParser()
    add_config_args(parser, VerifyConfig)
    args = parser.parse_args(["--problems", "p", "--samples", "s", "--out", "o",
                              "--extractors", "hashes,boxed", "--timeout-s", "2", "workers=3"])
    c = config_from_args(VerifyConfig, args)
    assert (c.extractors, c.timeout_s, c.workers, c.verifier) == (["hashes", "boxed"], 2.0, 3, "auto")
