"""The one filter protocol: every selector and curation step keeps the contract, and the unified
text matching (assay.data.text) gives exactly what the four separate implementations gave."""

from __future__ import annotations

import argparse
import random
import re
import unicodedata

import pytest

from assay.core.records import Problem, Sample, SFTExample, Verdict
from assay.data.text import Match, clusters, find_duplicates, find_matches, ngrams, normalize_text, words
from assay.select.curate import STEPS, Item
from assay.select.filters import Context, Rejection, Step, run_filters
from assay.select.stage import SELECTORS, LessOptions, SelectConfig, build_candidates, run_pipeline


def _sample(pid, i, text, tokens, finish="stop"):
    return Sample(problem_id=pid, sample_index=i, model="m", prompt_template="plain-v1", text=text,
                  prompt_tokens=10, completion_tokens=tokens, flops=1.0, finish_reason=finish,
                  decoding={}, seed=i)


def _candidates():
    problems = [Problem("a", "1 + 1 =", "2", "t"), Problem("b", "2 + 2 =", "4", "rg:u")]
    samples = [_sample("a", 0, "2", 1), _sample("a", 1, "The answer is 2", 4), _sample("a", 2, "3", 1),
               _sample("a", 3, "the answer is  2", 4), _sample("a", 4, "2 " * 50, 50, finish="length"),
               _sample("b", 0, "4", 1), _sample("b", 1, "so 4", 2), _sample("b", 2, "4", 1)]
    verdicts = [Verdict("a", 0, "2", True, "x"), Verdict("a", 1, "2", True, "x"), Verdict("a", 2, "3", False, "x"),
                Verdict("a", 4, "2", True, "x"), Verdict("b", 0, "4", True, "x"),
                Verdict("b", 1, None, False, "x", status="timeout", error="slow"), Verdict("b", 2, "4", True, "x")]
    return build_candidates(problems, samples, verdicts, where="t")


# One argument per registered selector that makes it drop something; a new selector must be added here.
SELECTOR_ARGS = {"correct": None, "finished": None, "dedup": None, "shortest": None, "longest": "2",
                 "max_per_problem": "1", "random": "3", "source": "t", "less": None}


@pytest.fixture
def no_model_less(monkeypatch, tmp_path):
    """The less selector with its model work replaced: warmup training and scores are canned, the
    bookkeeping (ranking, rejections, cost) is the selector's own."""
    import assay.select.less as less

    monkeypatch.setattr(less, "run_training", lambda cfg, progress=False: {"flops": 10.0})
    monkeypatch.setattr(less, "gradient_scores", lambda model, pool, *a, **k: (
        [float(len(r.messages[-1]["content"])) for r in pool], {"flops": 5.0, "checkpoints": 1}))
    t = tmp_path / "t.jsonl"
    from assay.core.io import write_records

    write_records(t, [SFTExample("t0", [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                                 "p", 0, "m", "plain-v1", 1, "t")])
    return LessOptions(targets=[str(t)], n=3)


@pytest.mark.parametrize("name", sorted(SELECTOR_ARGS))
def test_every_selector_keeps_the_filter_contract(name, no_model_less, tmp_path):
    assert set(SELECTOR_ARGS) == set(SELECTORS.names())
    cands = _candidates()
    flt = SELECTORS.get(name)
    arg = SELECTOR_ARGS[name]
    step = name if arg is None else f"{name}:{arg}"
    flt.check(arg)
    ctx = Context(step=step, arg=arg, rng=random.Random(0), options=no_model_less, workdir=tmp_path / "w")
    kept, rej = flt.apply(cands, ctx)
    assert rej, f"{name}: the fixture should make it drop something"
    # Nothing lost, nothing doubled: kept + rejected is the input, each candidate once.
    assert sorted(map(id, kept + [r.item for r in rej])) == sorted(map(id, cands))
    assert all(isinstance(r, Rejection) and r.step == step and isinstance(r.reason, str) and r.reason for r in rej)
    if name != "less":  # less ranks (best first); every other filter keeps its input order
        assert kept == [c for c in cands if any(c is k for k in kept)]
    else:
        assert ctx.cost["flops"] == 15.0


def _curation_cases():
    P = lambda i, q, **m: Problem(f"p{i}", q, "1", "t", m)  # noqa: E731
    S = lambda pid, i, text: _sample(pid, i, text, len(words(text)))  # noqa: E731
    qs = ["Tom has 3 apples and buys 5 more apples at the shop today",
          "Tom has 3 apples and buys 5 more apples at the shop today!",
          "what is 3 + 5 ?", "A train leaves at noon"]
    items = [Item(P(i, q, topic=str(i % 2)), chains=[S(f"p{i}", 0, "8. Let me check: yes")] if i != 3 else [],
                  attempts={"m": (i, 4)}) for i, q in enumerate(qs)]
    return items, {"difficulty": {"bands": {"m": [1, 2]}}, "decontaminate": {"against": [P(9, "What is 3 + 5?")]},
                   "dedup": {"threshold": 0.8}, "rubric": {}, "diverse": {"n": 2, "by": "topic"}}


@pytest.mark.parametrize("name", sorted(_curation_cases()[1]))
def test_every_curation_step_keeps_the_filter_contract(name):
    items, options = _curation_cases()
    assert set(options) == set(STEPS.names())
    kept, rej = STEPS.get(name).apply(items, Context(step=name, options=options[name]))
    assert rej, f"{name}: the fixture should make it drop something"
    assert sorted(map(id, kept + [r.item for r in rej])) == sorted(map(id, items))
    assert kept == [it for it in items if any(it is k for k in kept)]
    assert all(r.step == name and isinstance(r.reason, str) and r.reason for r in rej)


def test_run_filters_funnel_and_lost_items_are_an_error():
    class Loses:
        name = "loses"

        def check(self, arg):
            pass

        def apply(self, items, ctx):
            return items[1:], []

    kept, rej, funnel = run_pipeline(_candidates(), ["correct", "dedup"], seed=0)
    assert funnel == [{"step": "input", "kept": 8}, {"step": "correct", "kept": 5, "dropped": 3},
                      {"step": "dedup", "kept": 4, "dropped": 1}]
    with pytest.raises(RuntimeError, match="filter 'loses' lost items: 3 in, 2 kept"):
        run_filters([1, 2, 3], [Step(Loses(), Context(step="loses"))])


def test_old_gradient_flags_still_parse_into_the_less_section():
    from assay.commands import check_stage
    from assay.core.config import ConfigError, add_config_args, config_from_args
    from assay.select.stage import selectors_of

    p = argparse.ArgumentParser()
    add_config_args(p, SelectConfig)
    cfg = config_from_args(SelectConfig, p.parse_args(["--method", "gradient", "--targets", "t.jsonl", "--n", "100",
                                                       "--dim", "256", "less.lora_r=4"]))
    assert (cfg.less.targets, cfg.less.n, cfg.less.dim, cfg.less.lora_r) == (["t.jsonl"], 100, 256, 4)
    assert selectors_of(cfg) == ["correct", "finished", "dedup", "max_per_problem:4", "less"]
    new = config_from_args(SelectConfig, p.parse_args(["--selectors", "correct,dedup,less", "less.targets=[t.jsonl]"]))
    assert selectors_of(new) == ["correct", "dedup", "less"] and new.less.targets == ["t.jsonl"]
    # The less section is checked by its own options, only when the less selector runs.
    with pytest.raises(ConfigError, match="less.warmup_fraction: must be in"):
        check_stage(SelectConfig(selectors=["dedup", "less"], less=LessOptions(targets=["t"], warmup_fraction=2)))
    with pytest.raises(ConfigError, match="less.targets: the less selector needs target"):
        check_stage(SelectConfig(method="gradient"))
    check_stage(SelectConfig(less=LessOptions(warmup_fraction=2)))  # not run, not checked
    with pytest.raises(ConfigError, match="takes no argument"):
        check_stage(SelectConfig(selectors=["less:3"], less=LessOptions(targets=["t"])))


# ---- the unified matching equals the four implementations it replaced (copied here verbatim) ----------

_WS = re.compile(r"\s+")
_PUNCT = re.compile(r" ?([^\w\s]) ?")


def _old_normalize(text):
    text = unicodedata.normalize("NFKC", text).casefold()
    return _PUNCT.sub(r"\1", _WS.sub(" ", text).strip())


def _old_select_dedup(cands):
    seen, kept, rej = {}, [], []
    for c in cands:
        k = (c.problem.id, _old_normalize(c.sample.text))
        if k in seen:
            rej.append((c, f"duplicate of sample {seen[k].sample.sample_index}"))
        else:
            seen[k] = c
            kept.append(c)
    return kept, rej


def _old_clusters(texts, threshold=0.8, shingle=3, max_bucket=200):
    sh = [ngrams(words(t), shingle) for t in texts]
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    index = {}
    for i, s in enumerate(sh):
        for g in s:
            index.setdefault(g, []).append(i)
    seen = set()
    for members in index.values():
        if len(members) > max_bucket:
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if (i, j) in seen:
                    continue
                seen.add((i, j))
                a, b = sh[i], sh[j]
                if find(i) != find(j) and (len(a & b) / len(a | b) if a or b else 1.0) >= threshold:
                    parent[max(find(i), find(j))] = min(find(i), find(j))
    return [find(i) for i in range(len(texts))]


def _old_decontaminate_ngram(questions, against, n):
    index = {}
    for pid, q in against:
        for g in ngrams(words(q), n):
            index.setdefault(g, pid)
    return [{index[g] for g in ngrams(words(q), n) if g in index} for q in questions]


def _old_quickstart_decontaminate(pool, heldout):
    seen = {_old_normalize(q): pid for pid, q in heldout}
    return [seen.get(_old_normalize(q)) for q in pool]


def _texts(seed, n=120):
    """Short arithmetic questions with exact, case/space and near-duplicate repeats, and boilerplate."""
    rng = random.Random(seed)
    vocab = ["tom", "has", "3", "apples", "+", "5", "=", "?", "buys", "more", "the", "shop", "what", "is", "7"]
    base = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 16))) for _ in range(n // 3)]
    out = []
    for _ in range(n):
        t = rng.choice(base)
        r = rng.random()
        if r < 0.2:
            t = t.upper().replace(" ", "  ")
        elif r < 0.4:
            w = t.split()
            w[rng.randrange(len(w))] = rng.choice(vocab)
            t = " ".join(w)
        elif r < 0.5:
            t = t.replace(" + ", "+")
        out.append(t)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_unified_matching_equals_the_old_implementations(seed):
    texts = _texts(seed)
    assert [normalize_text(t) for t in texts] == [_old_normalize(t) for t in texts]
    # select's dedup: exact normalised completion, per problem.
    problems = [Problem(f"p{i}", "q", "1", "t") for i in range(3)]
    cands = build_candidates(problems, [_sample(f"p{i % 3}", i, t, 1) for i, t in enumerate(texts)], [], where="t")
    new = SELECTORS.get("dedup")(cands, None, random.Random(0))
    old = _old_select_dedup(cands)
    assert [c.sample.sample_index for c in new[0]] == [c.sample.sample_index for c in old[0]]
    assert [(c.sample.sample_index, r) for c, r in new[1]] == [(c.sample.sample_index, r) for c, r in old[1]]
    assert len(old[1]) > 5  # the fixture has repeats
    # curate's dedup: shingle-Jaccard clusters, at several thresholds and shingle sizes.
    for threshold, shingle in ((0.8, 3), (0.5, 2), (0.3, 1)):
        assert clusters(texts, threshold, shingle) == _old_clusters(texts, threshold, shingle)
    assert len(set(_old_clusters(texts, 0.5, 2))) < len(set(_old_clusters(texts, 0.8, 3))) < len(texts)
    # Boilerplate shingles propose no pairs, as before.
    assert clusters(texts, 0.5, 2, max_bucket=3) == _old_clusters(texts, 0.5, 2, max_bucket=3)
    # curate's decontaminate: any shared word n-gram; the item named is one the old code could name.
    pool, bench = texts[: len(texts) // 2], list(enumerate(texts[len(texts) // 2:]))
    for n in (13, 4, 2):
        hits = find_matches(pool, [q for _, q in bench], Match("ngram", n=n))
        old = _old_decontaminate_ngram(pool, bench, n)
        assert [h is None for h in hits] == [not o for o in old]
        assert all(h is None or bench[h][0] in o for h, o in zip(hits, old))
    # the quickstart's held-out check: exact normalised question.
    hits = find_matches(pool, [q for _, q in bench], Match("exact"))
    old = _old_quickstart_decontaminate(pool, bench)
    assert [h is None for h in hits] == [o is None for o in old] and any(o is not None for o in old)
    assert all(h is None or _old_normalize(bench[h][1]) == _old_normalize(bench[o][1]) for h, o in zip(hits, old))


def test_quickstart_decontaminate_reasons_unchanged():
    from assay.studies.workspace import decontaminate

    held = [Problem("h0", "What is 3 + 5?", "8", "t"), Problem("h1", "2+2", "4", "t")]
    pool = [Problem("a", "what is 3+5 ?", "8", "t"), Problem("b", "2 + 3", "5", "t"), Problem("c", "2 + 2", "4", "t")]
    kept, dropped = decontaminate(pool, held)
    assert [p.id for p in kept] == ["b"]
    assert [(d["id"], d["reason"]) for d in dropped] == [("a", "same question as held-out problem h0"),
                                                         ("c", "same question as held-out problem h1")]


def test_find_duplicates_by_kind():
    texts = ["A b c d", "a  B c d", "a b c e", "x y z"]
    assert find_duplicates(texts, Match("exact")) == [0, 0, 2, 3]
    assert find_duplicates(texts, Match("ngram", n=3)) == [0, 0, 0, 3]  # "a b c" is shared
    assert find_duplicates(texts, Match("exact"), groups=["g", "h", "g", "g"]) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="expected exact, ngram or jaccard"):
        Match("fuzzy")
