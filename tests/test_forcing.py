"""s1 budget forcing: every branch on a scripted generator, then the real engine on the tiny model
(its forced outputs have the minimum length, and the continuation and answer texts sit where
the stop was overridden or the thinking cut), vLLM's stand-in server, and eval's protocol."""

from __future__ import annotations

import pytest

from assay.core.io import read_records
from assay.core.records import Problem, Sample
from assay.sampling.base import Decoding, Generated, PromptGroup
from assay.sampling.forcing import BudgetForcing, ForcedGenerator, check_forcing


class Scripted:
    """Each call answers every request with the next script entry: (text, tokens, finish_reason)."""

    model_name = "scripted"

    def __init__(self, script):
        self.script, self.calls = list(script), []

    def generate(self, groups, decoding):
        text, n, reason = self.script.pop(0)
        for g in groups:
            self.calls.append({"continuation": g.continuation, "max_new": g.max_new_tokens, "seed": g.samples[0][1],
                               "id": g.problem_id})
            for i, seed in g.samples:
                yield Generated(g.problem_id, i, seed, text, 10, n, 1.0 * n, reason)


def _run(script, forcing, max_new=100):
    inner = Scripted(script)
    out = list(ForcedGenerator(inner, forcing).generate(
        [PromptGroup("p", [{"role": "user", "content": "q"}], [(0, 7)])], Decoding(0.0, 1.0, max_new)))
    assert len(out) == 1
    return out[0], inner.calls


def test_a_stop_before_the_minimum_becomes_wait_until_the_minimum_is_reached():
    f = BudgetForcing(min_tokens=25, waits=5)
    g, calls = _run([("a", 10, "stop"), ("b", 10, "stop"), ("c", 10, "stop"), ("d", 10, "stop")], f)
    # 10 < 25 -> Wait; 20 < 25 -> Wait; 30 >= 25: the model's stop stands.
    assert g.text == "a\nWaitb\nWaitc"
    assert g.forcing == {"thinking_tokens": 30, "answer_tokens": 0, "waits": 2, "cut": False, "rounds": 3}
    assert g.completion_tokens == 30 and g.flops == 30.0 and g.finish_reason == "stop"
    assert [c["continuation"] for c in calls] == ["", "a\nWait", "a\nWaitb\nWait"]
    assert [c["max_new"] for c in calls] == [100, 90, 80]  # the budget left
    # Each round has its own seed; the sample keeps its own; ids are unique per sample.
    assert calls[0]["seed"] == 7 and len({c["seed"] for c in calls}) == 3 and g.seed == 7 and g.problem_id == "p"


def test_waits_cap_the_overrides_and_min_zero_overrides_every_stop():
    g, _ = _run([("a", 5, "stop")] * 4, BudgetForcing(min_tokens=1000, max_tokens=2000, waits=2))
    assert g.text == "a\nWaita\nWaita" and g.forcing["waits"] == 2 and g.forcing["thinking_tokens"] == 15
    g, _ = _run([("a", 5, "stop")] * 4, BudgetForcing(waits=3, wait_text=" Wait,"))  # s1: ignore the end 3 times
    assert g.text == "a Wait,a Wait,a Wait,a" and g.forcing["rounds"] == 4


def test_the_maximum_cuts_and_appends_the_answer_prefix():
    f = BudgetForcing(max_tokens=40, answer_tokens=8)
    g, calls = _run([("think", 40, "length"), (" 42", 3, "stop")], f)
    assert g.text == "think\n\nFinal Answer: 42"
    assert g.forcing == {"thinking_tokens": 40, "answer_tokens": 3, "waits": 0, "cut": True, "rounds": 2}
    assert g.completion_tokens == 43 and [c["max_new"] for c in calls] == [40, 8]
    # A wait round that runs into the maximum is cut too.
    g, calls = _run([("a", 30, "stop"), ("b", 10, "length"), ("!", 2, "stop")],
                    BudgetForcing(min_tokens=35, waits=3, max_tokens=40))
    assert g.text == "a\nWaitb\n\nFinal Answer:!" and g.forcing["cut"] and [c["max_new"] for c in calls] == [40, 10, 64]
    # Without a maximum, the decoding's limit ends it as usual.
    g, _ = _run([("a", 100, "length")], BudgetForcing(waits=2), max_new=100)
    assert g.text == "a" and g.finish_reason == "length" and not g.forcing["cut"]


def test_settings_are_checked_with_their_keys():
    from assay.core.config import ConfigError

    key = lambda n: f"forcing.{n}"  # noqa: E731
    check_forcing(key, BudgetForcing())
    for bad, where in ((BudgetForcing(min_tokens=10), "forcing.waits"), (BudgetForcing(waits=-1), "forcing.waits"),
                       (BudgetForcing(max_tokens=0), "forcing.max_tokens"),
                       (BudgetForcing(min_tokens=50, waits=1, max_tokens=10), "forcing.min_tokens"),
                       (BudgetForcing(waits=1, wait_text=""), "forcing.wait_text")):
        with pytest.raises(ConfigError) as e:
            check_forcing(key, bad)
        assert e.value.key == where


# --- the real engine, tiny model ---------------------------------------------------------------

def _tiny_gen(tiny):
    from assay.sampling.hf import HFGenerator

    return HFGenerator.from_loaded(*tiny, "tiny", max_batch=4)


def _groups(n=3):
    return [PromptGroup(f"p{i}", [{"role": "user", "content": f"What is {i} + {i + 2}?"}], [(0, 11 + i)])
            for i in range(n)]


def test_tiny_model_max_budget_cuts_at_exactly_max_tokens_and_answers_after_the_prefix(tiny):
    gen = _tiny_gen(tiny)
    plain = {g.problem_id: g for g in gen.generate(_groups(), Decoding(0.0, 1.0, 12))}
    f = BudgetForcing(max_tokens=12, answer_tokens=6, answer_prefix="\nFinal Answer:")
    forced = {g.problem_id: g for g in ForcedGenerator(gen, f).generate(_groups(), Decoding(0.0, 1.0, 256))}
    tok = tiny[1]
    for pid, g in forced.items():
        if plain[pid].finish_reason != "length":
            continue  # it stopped on its own before the budget: nothing to cut
        assert g.forcing["cut"] and g.forcing["thinking_tokens"] == 12
        head, sep, answer = g.text.partition("\nFinal Answer:")
        assert sep and head == plain[pid].text  # greedy: the thinking is the unforced 12 tokens
        assert 1 <= g.forcing["answer_tokens"] <= 6 and g.completion_tokens == 12 + g.forcing["answer_tokens"]
        assert len(tok(answer, add_special_tokens=False)["input_ids"]) <= 6 + 1
    assert any(g.forcing["cut"] for g in forced.values())


def test_tiny_model_min_budget_overrides_eos_with_wait_until_the_minimum(tiny):
    """The tiny model is made to end early by declaring a token it samples early an EOS (seeded
    sampling at T=1: the same seed draws the same tokens, so it stops there)."""
    model, tok = tiny
    gen = _tiny_gen(tiny)
    dec = Decoding(1.0, 1.0, 40)
    plain = {g.problem_id: g for g in gen.generate(_groups(), dec)}
    ids = tok(plain["p0"].text, add_special_tokens=False)["input_ids"]
    j = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
    old = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, ids[j]]
    try:
        early = {g.problem_id: g for g in gen.generate(_groups(), dec)}
        assert early["p0"].finish_reason == "stop" and early["p0"].completion_tokens < 20
        f = BudgetForcing(min_tokens=20, waits=8)
        forced = {g.problem_id: g for g in ForcedGenerator(gen, f).generate(_groups(), dec)}
    finally:
        model.generation_config.eos_token_id = old
    g = forced["p0"]
    assert g.text.startswith(early["p0"].text + "\nWait")  # the stop became the continuation, right there
    assert g.forcing["waits"] >= 1 and g.text.count("\nWait") >= g.forcing["waits"]
    for g in forced.values():
        # the minimum holds unless the waits ran out or the limit came first
        assert (g.forcing["thinking_tokens"] >= 20 or g.forcing["waits"] == 8
                or g.forcing["thinking_tokens"] >= 40), g.forcing
        assert g.completion_tokens == g.forcing["thinking_tokens"]
        if g.forcing["waits"] < 8:
            assert g.forcing["thinking_tokens"] >= 20


def test_eval_records_forcing_in_protocol_and_samples(tiny_model_dir, tmp_path):
    from assay.core.io import write_records
    from assay.eval.stage import EvalConfig, run_eval

    probs = [Problem(f"q{i}", f"What is {i} + 1?", str(i + 1), "test") for i in range(3)]
    write_records(tmp_path / "p.jsonl", probs)
    base = dict(model=str(tiny_model_dir), benchmark=str(tmp_path / "p.jsonl"), max_new_tokens=10, max_batch=4,
                dtype="float32")
    plain = run_eval(EvalConfig(out=str(tmp_path / "plain"), **base))
    f = BudgetForcing(max_tokens=6, answer_tokens=3)
    r = run_eval(EvalConfig(out=str(tmp_path / "forced"), forcing=f, **base))
    assert "forcing" not in plain["protocol"] and r["protocol"]["forcing"]["max_tokens"] == 6
    assert r["protocol"]["protocol_id"] != plain["protocol"]["protocol_id"]
    samples = read_records(tmp_path / "forced" / "greedy.samples.jsonl", Sample)
    assert all(s.decoding["forcing"]["max_tokens"] == 6 and s.forcing["thinking_tokens"] <= 6 for s in samples)
    assert r["metrics"]["greedy_forced_cuts"] == sum(s.forcing["cut"] for s in samples)
    assert all(s.forcing is None and "forcing" not in s.decoding
               for s in read_records(tmp_path / "plain" / "greedy.samples.jsonl", Sample))
    # A forced eval folder does not resume as an unforced one.
    from assay.core.io import InputError
    from assay.eval.stage import compare

    with pytest.raises(InputError, match=r"other settings \(forcing\)"):
        run_eval(EvalConfig(out=str(tmp_path / "forced"), **base))
    with pytest.raises(InputError, match=r"differ in: forcing\)"):
        compare(tmp_path / "plain", tmp_path / "forced")


def test_chat_api_refuses_a_continuation_in_one_line():
    from assay.core.io import InputError
    from assay.sampling.openai_api import OpenAIGenerator

    gen = OpenAIGenerator("m", base_url="http://127.0.0.1:9/v1")
    g = PromptGroup("p", [{"role": "user", "content": "q"}], [(0, 1)], continuation="so far")
    with pytest.raises(InputError, match="budget forcing"):
        gen._payload(g, 1, Decoding())
    # The completions API continues: the prompt text then the continuation.
    gen.chat = False
    route, p = gen._payload(PromptGroup("p", [{"role": "user", "content": "q"}], [(0, 1)], continuation=" so far",
                                        max_new_tokens=5), 1, Decoding())
    assert route == "completions" and p["prompt"] == "q so far" and p["max_tokens"] == 5
