"""Resume only into work made the same way, and one problem-id check for every stage.

Each refusal is checked through the CLI (exit code 2, one line saying what differs and how to
start fresh) and the refused output must be left as it was.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from assay.cli import main
from assay.core.hardware import resolve_dtype
from assay.core.io import read_records, write_records
from assay.core.records import Problem, Sample, Verdict

QUESTIONS = ["What is 12 + 7?", "Tom has 3 apples and buys 5 more. How many?", "Calculate 5 - 3 - 6.",
             "What is 9 * 8?"]


def _problems(path: Path, n: int = 3, question=lambda i: QUESTIONS[i % len(QUESTIONS)]) -> Path:
    write_records(path, [Problem(f"p{i}", question(i), str(i), "t") for i in range(n)])
    return path


def _sample_args(problems: Path, out: Path, model, *extra: str) -> list[str]:
    return ["sample", "--problems", str(problems), "--out", str(out), "--model", str(model), "--n", "2",
            "--max-new-tokens", "4", "--temperature", "1.0", "--max-batch", "4", *extra]


def _refused(argv: list[str], capsys, *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


# ------------------------------------------------------------------ sample


def test_sample_rerun_with_another_seed_is_refused(tiny_model_dir, tmp_path, capsys):
    probs, out = _problems(tmp_path / "p.jsonl"), tmp_path / "s.jsonl"
    assert main(_sample_args(probs, out, tiny_model_dir)) == 0
    before = out.read_bytes()
    _refused(_sample_args(probs, out, tiny_model_dir, "--seed", "99"), capsys,
             f"{out}: holds samples made with other settings", "seed: 0 then, 99 now", "choose another --out or delete")
    assert out.read_bytes() == before
    # dtype is not in the records at all; only the identity record knows it.
    # The default 'auto' is recorded as the dtype it resolved to, so the other one is refused.
    ran = resolve_dtype("auto")
    other = "float32" if ran == "bfloat16" else "bfloat16"
    _refused(_sample_args(probs, out, tiny_model_dir, "--dtype", other), capsys, f"dtype: '{ran}' then")
    assert out.read_bytes() == before


def test_sample_checks_every_record_not_only_the_first_and_last(tiny_model_dir, tmp_path, capsys):
    probs, out = _problems(tmp_path / "p.jsonl"), tmp_path / "s.jsonl"
    assert main(_sample_args(probs, out, tiny_model_dir)) == 0
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    mid = rows[len(rows) // 2]
    mid["decoding"]["temperature"] = 0.3  # a record appended by another run
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _refused(_sample_args(probs, out, tiny_model_dir), capsys,
             f"sample {mid['problem_id']}/{mid['sample_index']} has decoding=", "'temperature': 0.3")
    mid["decoding"]["temperature"] = 1.0
    mid["seed"] += 1  # drawn from another base seed
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    _refused(_sample_args(probs, out, tiny_model_dir), capsys, "was not drawn with base seed 0")


def test_sample_refuses_changed_question_changed_model_files_and_missing_identity(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    probs, out = _problems(tmp_path / "p.jsonl"), tmp_path / "s.jsonl"
    assert main(_sample_args(probs, out, model)) == 0
    # The same id with another question: its samples answer something else.
    _problems(probs, question=lambda i: QUESTIONS[i] + (" Twice." if i == 1 else ""))
    _refused(_sample_args(probs, out, model), capsys, "the question of problem 'p1'", "is not the one it was drawn for")
    _problems(probs)
    # A model folder retrained in place is another model under the same spec.
    raw = (model / "config.json").read_text()
    (model / "config.json").write_text(json.dumps({**json.loads(raw), "rope_theta": 1234.0}))
    _refused(_sample_args(probs, out, model), capsys, "model.files.config.json")
    (model / "config.json").write_text(raw)
    assert main(_sample_args(probs, out, model)) == 0
    # A file without an identity record cannot be told apart from other work.
    Path(str(out) + ".identity.json").unlink()
    _refused(_sample_args(probs, out, model), capsys, "has no identity record", f"delete {out}")


def test_sample_resume_ignores_what_does_not_change_draws(tiny_model_dir, tmp_path):
    """limit, n and max_batch are not identity: raising them resumes, and the result equals a fresh run."""
    probs = _problems(tmp_path / "p.jsonl", n=4)
    grown = tmp_path / "grown.jsonl"
    assert main(_sample_args(probs, grown, tiny_model_dir, "--limit", "2")) == 0
    assert len(read_records(grown, Sample)) == 4
    args = ["--limit", "3", "n=3", "max_batch=1"]
    assert main(_sample_args(probs, grown, tiny_model_dir, *args)) == 0
    assert main(_sample_args(probs, tmp_path / "fresh.jsonl", tiny_model_dir, *args)) == 0

    def by_key(path):
        return {(s.problem_id, s.sample_index): (s.text, s.seed) for s in read_records(path, Sample)}

    assert len(by_key(grown)) == 9 and by_key(grown) == by_key(tmp_path / "fresh.jsonl")


# ------------------------------------------------------------------ verify


def _verify_files(tmp_path: Path) -> list[str]:
    write_records(tmp_path / "p.jsonl", [Problem(f"p{i}", "q", str(i), "t") for i in range(3)])
    write_records(tmp_path / "s.jsonl", [Sample(f"p{i}", j, "m", "plain-v1", f"\\boxed{{{i + j}}}", 1, 1, 1.0, "stop",
                                                {}, 0) for i in range(3) for j in range(2)])
    return ["verify", "--problems", str(tmp_path / "p.jsonl"), "--samples", str(tmp_path / "s.jsonl"),
            "--out", str(tmp_path / "v.jsonl"), "--workers", "1"]


def _rewrite(path: Path, cls, change) -> None:
    write_records(path, [change(r) for r in read_records(path, cls)])


def test_verify_resume_refuses_a_verdict_of_a_changed_sample(tmp_path, capsys):
    args = _verify_files(tmp_path)
    assert main(args) == 0
    verdicts = tmp_path / "v.jsonl"
    before = verdicts.read_bytes()
    assert all(v.input_hash for v in read_records(verdicts, Verdict))
    assert main(args) == 0 and verdicts.read_bytes() == before  # an identical rerun resumes
    # p1/0 said 1 (correct); now it says 2, and its old verdict must not stand for it.
    _rewrite(tmp_path / "s.jsonl", Sample, lambda s: Sample(**{**s.__dict__, "text": "\\boxed{2}"})
             if (s.problem_id, s.sample_index) == ("p1", 0) else s)
    _refused(args, capsys, f"{tmp_path / 's.jsonl'}:3: sample p1/0 is not the one its verdict", "changed since",
             f"delete {verdicts} to verify afresh")
    assert verdicts.read_bytes() == before


def test_verify_resume_refuses_a_changed_reference_and_an_orphan_verdict(tmp_path, capsys):
    args = _verify_files(tmp_path)
    assert main(args) == 0
    _rewrite(tmp_path / "p.jsonl", Problem, lambda p: Problem(p.id, p.question, "7", p.source) if p.id == "p2" else p)
    _refused(args, capsys, "sample p2/0 is not the one its verdict")
    write_records(tmp_path / "p.jsonl", [Problem(f"p{i}", "q", str(i), "t") for i in range(3)])
    assert main(args) == 0  # the reference is back: the verdicts are valid again
    # The samples file lost a sample that has a verdict: the verdict file no longer describes it.
    write_records(tmp_path / "s.jsonl", read_records(tmp_path / "s.jsonl", Sample)[:-1])
    _refused(args, capsys, "holds a verdict of sample p2/1, which is not in")


def test_verify_resume_refuses_verdicts_of_another_scorer_version(tmp_path, capsys, monkeypatch):
    from assay.verify import stage as verify

    args = _verify_files(tmp_path)
    assert main(args) == 0
    # The judging library was upgraded (or an own scorer changed): old verdicts are not its verdicts.
    monkeypatch.setattr(verify, "_judge_version", lambda verifier, task: ["another version"])
    _refused(args, capsys, "is not the one its verdict")


# ------------------------------------------------------------------ repeated problem ids


def _repeated(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    write_records(path, [Problem("a", "1 + 1 =", "2", "t"), Problem("b", "2 + 2 =", "4", "t"),
                         Problem("a", "3 + 3 =", "6", "t")])
    write_records(tmp_path / "s.jsonl", [Sample("a", 0, "m", "plain-v1", "\\boxed{6}", 1, 1, 1.0, "stop", {}, 0)])
    write_records(tmp_path / "v.jsonl", [Verdict("a", 0, "6", True, "x")])
    return path


@pytest.mark.parametrize("stage", ["sample", "verify", "stats", "select", "judge", "curate", "eval", "plan"])
def test_every_stage_refuses_repeated_problem_ids(stage, tiny_model_dir, tmp_path, capsys):
    p = _repeated(tmp_path)
    s, v, o = str(tmp_path / "s.jsonl"), str(tmp_path / "v.jsonl"), str(tmp_path / "out")
    argv = {
        "sample": ["sample", "--problems", str(p), "--out", o, "--model", str(tiny_model_dir), "--n", "1"],
        "verify": ["verify", "--problems", str(p), "--samples", s, "--out", o],
        "stats": ["stats", "--problems", str(p), "--samples", s, "--verdicts", v, "--out", o],
        "select": ["select", "--problems", str(p), "--samples", s, "--verdicts", v, "--out", o],
        "judge": ["judge", "--problems", str(p), "--samples", s, "--verdicts", v, "--backend", "export",
                  "--audit", o],
        "curate": ["curate", "--problems", str(p), "--out", o],
        "eval": ["eval", "--benchmark", str(p), "--model", str(tiny_model_dir), "--out", o],
        "plan": ["plan", "--models", str(tiny_model_dir), "--problems", str(p)],
    }[stage]
    _refused(argv, capsys, f"{p}:3: problem id 'a' repeats line 1")
    # Nothing was written (eval makes its folder first, but no problems or samples in it).
    assert not Path(o).is_file() and not (Path(o).is_dir() and list(Path(o).rglob("*.jsonl")))


def test_judge_refuses_a_sample_of_an_unknown_problem(tmp_path, capsys):
    _repeated(tmp_path)
    write_records(tmp_path / "p.jsonl", [Problem("a", "1 + 1 =", "2", "t")])
    write_records(tmp_path / "s.jsonl", [Sample("a", 0, "m", "plain-v1", "2", 1, 1, 1.0, "stop", {}, 0),
                                         Sample("zz", 0, "m", "plain-v1", "2", 1, 1, 1.0, "stop", {}, 0)])
    write_records(tmp_path / "v.jsonl", [Verdict("a", 0, "2", True, "x"), Verdict("zz", 0, "2", True, "x")])
    _refused(["judge", "--problems", str(tmp_path / "p.jsonl"), "--samples", str(tmp_path / "s.jsonl"),
              "--verdicts", str(tmp_path / "v.jsonl"), "--backend", "export", "--audit", str(tmp_path / "a.csv")],
             capsys, f"{tmp_path / 's.jsonl'}:2: sample zz/0 names problem 'zz'")
    assert not (tmp_path / "a.csv").exists()
