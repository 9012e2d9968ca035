"""Judge parsing, human audit round trip, FPR with its interval, and the LLM judge's cache."""

from __future__ import annotations

import pytest

from assay.core.io import InputError
from assay.verify.judge import Judgment, LLMJudge, export_audit, false_positive_rate, import_audit, parse_verdict

# (judge output, expected verdict): what small and large judges actually write.
PARSE_TABLE = [
    ("Step 1 is right. Step 2 is right.\nVERDICT: VALID", True),
    ("The sum is wrong in step 2.\nVERDICT: INVALID", False),
    ("verdict: invalid.", False),
    ("**Verdict:** Valid", True),
    ("VERDICT: [INVALID]", False),
    ("At first I thought VERDICT: VALID, but step 3 divides by zero. VERDICT: INVALID", False),
    ("Final: \\boxed{incorrect}", False),
    ("The reasoning is sound. valid", True),
    ("The reasoning is probably fine.", None),
    ("", None),
    ("VERDICT: maybe", None),
    ("This is not invalid reasoning, it is fine", None),
]


@pytest.mark.parametrize("text,expected", PARSE_TABLE)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) is expected


def _items(n=3):
    return [{"problem_id": f"p{i}", "sample_index": i, "question": f"{i} + 1 =", "reference": str(i + 1),
             "solution": f"{i} + 1 = {i + 1}, \"so\", {i + 1}"} for i in range(n)]


def test_audit_round_trip_and_bad_label(tmp_path):
    path = tmp_path / "audit.csv"
    assert export_audit(_items(), path) == 3
    text = path.read_text()
    assert text.splitlines()[0] == "problem_id,sample_index,question,reference,solution,label"
    lines = text.splitlines()
    filled = [lines[0], lines[1] + "valid", lines[2] + "0", lines[3]]
    path.write_text("\n".join(filled) + "\n")
    js = import_audit(path)
    assert [(j.problem_id, j.sample_index, j.valid) for j in js] == [("p0", 0, True), ("p1", 1, False), ("p2", 2, None)]
    filled[2] = lines[2] + "meh"
    path.write_text("\n".join(filled) + "\n")
    with pytest.raises(InputError, match=r"audit.csv:3: field 'label': 'meh'"):
        import_audit(path)


def test_false_positive_rate_hand_computed():
    js = [Judgment("p", i, "human:x", v, "human") for i, v in enumerate([True, False, True, True, None])]
    r = false_positive_rate(js)
    assert r["fpr"] == 0.25 and r["judged"] == 4 and r["invalid"] == 1 and r["unjudged"] == 1
    lo, hi = r["ci95"]
    assert lo == pytest.approx(0.0456, abs=1e-3) and hi == pytest.approx(0.6994, abs=1e-3)
    assert false_positive_rate([])["fpr"] is None


class _ScriptedGenerator:
    """A real Generator-protocol object returning fixed texts, counting calls (the cache's test)."""

    def __init__(self, texts):
        self.texts, self.calls = texts, 0

    def generate(self, groups, decoding):
        from assay.sampling.base import Generated

        for i, g in enumerate(groups):
            self.calls += 1
            yield Generated(problem_id=g.problem_id, sample_index=0, seed=0, text=self.texts[i % len(self.texts)],
                            prompt_tokens=1, completion_tokens=1, flops=0.0, finish_reason="stop")


def test_llm_judge_parses_and_caches(tmp_path):
    gen = _ScriptedGenerator(["ok\nVERDICT: VALID", "bad\nVERDICT: INVALID", "unclear"])
    judge = LLMJudge(gen, "scripted", cache=tmp_path / "cache.jsonl")
    js = judge.judge(_items())
    assert [j.valid for j in js] == [True, False, None] and gen.calls == 3
    again = LLMJudge(gen, "scripted", cache=tmp_path / "cache.jsonl").judge(_items())
    assert gen.calls == 3 and [j.raw for j in again] == [j.raw for j in js]


def test_llm_judge_on_tiny_model_end_to_end(tiny_model_dir, tmp_path):
    from assay.sampling.hf import HFGenerator

    gen = HFGenerator(str(tiny_model_dir), max_batch=4)
    js = LLMJudge(gen, "tiny", max_new_tokens=6, cache=tmp_path / "c.jsonl").judge(_items(2))
    assert len(js) == 2 and all(j.template == "judge-v1" and isinstance(j.raw, str) for j in js)


@pytest.mark.parametrize("text", ["VERDICT: NOT VALID", "I think the reasoning is not valid.",
                                  "Step 2 is wrong, so this isn't correct. VERDICT: not valid"])
def test_negated_verdicts_are_invalid(text):
    assert parse_verdict(text) is False


def test_judge_cache_is_keyed_by_the_backend_precision(tmp_path):
    from assay.sampling.base import Generated

    """A verdict judged in fp32 is not served from the cache to a bf16 judge."""
    calls = []

    class Counting:
        def generate(self, groups, decoding):
            for g in groups:
                calls.append(g.problem_id)
                yield Generated(g.problem_id, 0, 0, "VERDICT: VALID", 1, 1, 0.0, "stop")

    items = _items(2)
    LLMJudge(Counting(), "m", cache=tmp_path / "c.jsonl", protocol={"dtype": "float32"}).judge(items)
    LLMJudge(Counting(), "m", cache=tmp_path / "c.jsonl", protocol={"dtype": "float32"}).judge(items)
    assert len(calls) == 2  # the second fp32 judge is served from the cache
    LLMJudge(Counting(), "m", cache=tmp_path / "c.jsonl", protocol={"dtype": "bfloat16"}).judge(items)
    assert len(calls) == 4
