"""assay synthesize with a scripted model: strict parsing, every rejection reason, the cache, resume."""

from __future__ import annotations

import json

import pytest

from assay.core.io import InputError, read_problems, read_records
from assay.core.records import SFTExample
from assay.sampling.base import Generated
from assay.synth.stage import SynthesizeConfig, read_seeds, run_synthesize
from assay.synth.templates import SYNTH_TEMPLATES, parse_synthesis

GOOD = "[Problem]\nTom has 3 apples and buys 4 more. How many now?\n[Solution]\nHe has 3 + 4 = 7. \\boxed{7}"


def test_parse_synthesis_is_strict():
    p = parse_synthesis(GOOD)
    assert (p.question, p.answer, p.error) == ("Tom has 3 apples and buys 4 more. How many now?", "7", None)
    assert parse_synthesis("Tom has 3 apples...\n**[Solution]**\n3 + 4 = \\boxed{7}").question == "Tom has 3 apples..."
    md = parse_synthesis("### Problem\nA store has 120 cars and sells 35. How many remain?\n\n**Solution:**\n"
                         "120 - 35 = 85. The answer is \\(\\boxed{85}\\).")
    assert (md.question, md.answer) == ("A store has 120 cars and sells 35. How many remain?", "85")
    assert parse_synthesis("Problem solving is fun.\nSolution: it is \\boxed{1}").error == "no [Solution] section"
    for text, why in [("[Problem]\nq\n", "no [Solution]"), ("[Problem]\nq\n[Solution]\nit is 7", "no complete"),
                      ("[Problem]\nq\n[Solution]\n\\boxed{7", "no complete"),
                      ("[Problem]\na\n[Problem]\nb\n[Solution]\n\\boxed{1}", "2 [Problem]"),
                      ("[Solution]\n\\boxed{1}\n[Problem]\nq", "before [Problem]"),
                      ("[Problem]\n\n[Solution]\n\\boxed{1}", "empty problem"),
                      ("[Problem]\nwhat is \\boxed{2}?\n[Solution]\n\\boxed{2}", "its own"),
                      ("[Problem]\nq\n[Solution]\na \\boxed{1}\n[Solution]\nb", "2 [Solution]")]:
        assert parse_synthesis(text).error and why in parse_synthesis(text).error, text


def test_every_level_has_the_jiuzhang_layout():
    assert len(SYNTH_TEMPLATES.names()) == 8
    prompt = SYNTH_TEMPLATES.get("aime-v1").prompt("x" * 5000)
    assert [h for h in ("## Instruction", "## Math Content", "## Guidelines", "## New Problem") if h in prompt] == \
        ["## Instruction", "## Math Content", "## Guidelines", "## New Problem"]
    assert "x" * 1000 in prompt and "x" * 1001 not in prompt and prompt.endswith("## New Problem\n")


class Scripted:
    """Writes GOOD for even calls and a malformed text for odd ones; optionally dies after some calls."""

    def __init__(self, fail_after: int = -1):
        self.calls, self.fail_after, self.model_name = 0, fail_after, "scripted"

    def generate(self, groups, decoding):
        for g in groups:
            if self.calls == self.fail_after:
                raise KeyboardInterrupt
            text = GOOD if self.calls % 2 == 0 else "I would write a problem about apples."
            self.calls += 1
            yield Generated(g.problem_id, 0, g.samples[0][1], text, 80, 30, 2e6, "stop")


def _seeds(tmp_path):
    path = tmp_path / "seeds.jsonl"
    rows = [{"id": "g1", "question": "Ann has 5 pens.", "answer": "She gives 2 away so 5 - 2 = 3. #### 3"},
            {"id": "m1", "problem": "Solve x + 1 = 2.", "solution": "Subtract one from both sides: x = 1."},
            {"text": "A plain text about triangles."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_seeds_from_gsm8k_math_and_text_rows_and_bad_ones_named_by_line(tmp_path):
    seeds = read_seeds(str(_seeds(tmp_path)))
    assert [s for s, _ in seeds] == ["g1", "m1", "seeds-3"]
    assert seeds[0][1] == "Ann has 5 pens.\n\nShe gives 2 away so 5 - 2 = 3. #### 3"
    assert seeds[1][1].endswith("x = 1.") and seeds[2][1] == "A plain text about triangles."
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "q"}\n{"id": "b", "title": "no text"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: no seed text"):
        read_seeds(str(bad))
    bad.write_text('{"id": "a", "question": "q"}\n{"id": "a", "question": "r"}\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: seed id 'a' repeats line 1"):
        read_seeds(str(bad))


def test_kept_problems_rejections_pairs_and_the_cache(tmp_path):
    cfg = SynthesizeConfig(seeds=str(_seeds(tmp_path)), templates=["grade-school-v1", "mine"],
                           custom_templates={"mine": "Create a problem about pens."}, n=2,
                           out=str(tmp_path / "synth.jsonl"))
    model = Scripted()
    res = run_synthesize(cfg, make=lambda *a: model)
    assert model.calls == res.calls == 3 * 2 * 2 and res.kept == 6 and res.rejected == 6
    probs = read_problems(cfg.out)
    assert all(p.answer == "7" and p.meta["solution"].startswith("He has") and p.source.startswith("synth:")
               for p in probs)
    assert {p.meta["template"] for p in probs} == {"grade-school-v1", "mine"} and len({p.id for p in probs}) == 6
    rejected = [json.loads(x) for x in open(cfg.out + ".rejected.jsonl")]
    assert all(r["step"] == "wellformed" and r["reason"] == "no [Solution] section" for r in rejected)
    pairs = read_records(cfg.out + ".pairs.jsonl", SFTExample)
    assert len(pairs) == 6 and pairs[0].messages[0]["content"].endswith("## New Problem\n")
    assert pairs[0].messages[1] == {"role": "assistant", "content": GOOD}
    summary = json.loads(open(cfg.out + ".summary.json").read())
    assert summary["flops"] == 12 * 2e6 and summary["flops_per_kept"] == 4e6
    again = Scripted()
    assert run_synthesize(cfg, make=lambda *a: again).kept == 6 and again.calls == 0
    hotter = Scripted()
    run_synthesize(SynthesizeConfig(**{**cfg.__dict__, "temperature": 0.7}), make=lambda *a: hotter)
    assert hotter.calls == 12  # another decoding is another question: not answered from the cache


def test_killed_mid_run_resumes_without_duplicates(tmp_path):
    cfg = SynthesizeConfig(seeds=str(_seeds(tmp_path)), n=2, out=str(tmp_path / "synth.jsonl"))
    with pytest.raises(KeyboardInterrupt):
        run_synthesize(cfg, make=lambda *a: Scripted(fail_after=4))
    rest = Scripted()
    res = run_synthesize(cfg, make=lambda *a: rest)
    assert rest.calls == 2 and res.calls == 6
    keys = [json.loads(x)["key"] for x in open(cfg.out + ".cache.jsonl")]
    assert len(keys) == len(set(keys)) == 6


def test_cli_refuses_an_unknown_template_with_a_suggestion(tmp_path, capsys):
    from assay.cli import main

    assert main(["synthesize", f"seeds={_seeds(tmp_path)}", "templates=[amc-10-v1]"]) == 2
    err = capsys.readouterr().err
    assert "'amc-10-v1' is not a known synthesis template" in err and "amc10-v1" in err
