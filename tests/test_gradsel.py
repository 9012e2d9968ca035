"""LESS core: JL projection, Adam preconditioning, per-example LoRA gradients, planted-example selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assay.select.less import BlockProjector, adam_precondition, less_scores, lora_gradient, top_indices


def test_projection_preserves_inner_products_within_jl_bound():
    rng = np.random.default_rng(0)
    D, d, n = 5000, 2048, 12
    x = rng.normal(size=(n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    proj = BlockProjector(D, d, seed=3, block=1024)
    y = proj(x).numpy()
    # JL: for unit vectors, |<Px,Py> - <x,y>| <= eps with eps ~ sqrt(8 log(n) / d); check all pairs.
    eps = np.sqrt(8 * np.log(n) / d)
    err = np.abs(y @ y.T - x @ x.T)
    assert err.max() <= eps, (err.max(), eps)
    # Seeded: the same seed and block size give the same matrix; another seed another one.
    assert torch.allclose(BlockProjector(D, d, seed=3, block=1024)(x), proj(x))
    assert not torch.allclose(BlockProjector(D, d, seed=4, block=1024)(x), proj(x))


def test_adam_precondition_formula():
    g, m, v = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0]), torch.tensor([0.25, 1.0])
    f = adam_precondition(g, m, v, beta1=0.9, beta2=0.99, eps=0.0)
    m2 = 0.9 * m + 0.1 * g
    v2 = 0.99 * v + 0.01 * g * g
    assert torch.allclose(f, m2 / v2.sqrt())


def test_lora_gradient_matches_an_independent_autograd_reference(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.tensor([5, 9, 12, 7, 3, 8])
    labels = torch.tensor([-100, -100, -100, 7, 3, 8])
    g = lora_gradient(model, ids, labels)
    # Reference: explicit log-softmax cross-entropy over the labelled positions, then .backward().
    params = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    logits = model(input_ids=ids[None]).logits[0, :-1]
    target = labels[1:]
    keep = target != -100
    loss = -torch.log_softmax(logits[keep], dim=-1).gather(1, target[keep][:, None]).mean()
    loss.backward()
    ref = torch.cat([p.grad.reshape(-1) for p in params])
    assert g.shape == ref.shape and torch.allclose(g, ref, atol=1e-6)


def test_selection_finds_planted_near_copies_of_the_target():
    rng = np.random.default_rng(1)
    D = 400
    targets = {"task": rng.normal(size=(5, D))}
    pool = rng.normal(size=(60, D))
    planted = [7, 19, 33, 52]
    for i, j in zip(planted, range(4)):
        pool[i] = targets["task"][j] + 0.1 * rng.normal(size=D)
    proj = BlockProjector(D, 256, seed=0, block=128)
    tf = proj(pool.astype(np.float32)).numpy()
    tg = {"task": proj(targets["task"].astype(np.float32)).numpy()}
    scores = less_scores([tf, tf], [tg, tg], [1e-4, 5e-5])
    assert sorted(top_indices(scores, n=4)) == planted
    assert len(top_indices(scores, fraction=0.1)) == 6
    with pytest.raises(ValueError):
        top_indices(scores)


def test_sparse_projection_preserves_inner_products():
    from assay.select.less import SparseSignProjector

    rng = np.random.default_rng(2)
    D, d, n = 20000, 2048, 12
    x = rng.normal(size=(n, D)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = SparseSignProjector(D, d, seed=5, s=4)(x).numpy()
    assert np.abs(y @ y.T - x @ x.T).max() <= np.sqrt(8 * np.log(n) / d)
    assert np.allclose(SparseSignProjector(D, d, seed=5, s=4)(x).numpy(), y)


def test_feature_store_resumes_without_recomputing(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from assay.select.less import FeatureStore, SparseSignProjector, extract_features

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    D = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ex = [(torch.tensor([1, 2, 3, 4 + i]), torch.tensor([-100, 2, 3, 4 + i])) for i in range(6)]
    proj = SparseSignProjector(D, 16, seed=0)
    full = extract_features(model, ex, FeatureStore(str(tmp_path / "a.npy"), 6, 16), proj, progress=False)
    part = FeatureStore(str(tmp_path / "b.npy"), 6, 16)
    extract_features(model, ex[:4], part, proj, flush_every=2, progress=False)  # "killed" after 4 rows
    resumed = FeatureStore(str(tmp_path / "b.npy"), 6, 16)
    assert resumed.done == 4
    calls = []
    orig = proj.__call__
    extract_features(model, ex, resumed, lambda g: (calls.append(1), orig(g))[1], progress=False)
    assert len(calls) == 2 and np.allclose(np.asarray(resumed.array), np.asarray(full.array), atol=1e-6)


def test_select_method_gradient_end_to_end_finds_planted_copies(tiny_model_dir, tmp_path):
    from assay.core.io import read_records, write_records
    from assay.core.records import Problem, Sample, SFTExample
    from assay.select.stage import LessOptions, SelectConfig, run_select

    words_ = ["apple", "river", "stone", "cloud", "seven", "green", "house", "light", "music", "paper"]
    probs = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i), "t") for i in range(16)]
    samples = [Sample(f"p{i}", 0, "m", "plain-v1", " ".join(words_[(i * j) % 10] for j in range(1, 9)), 5, 8, 1.0,
                      "stop", {}, i) for i in range(16)]
    for name, recs in (("p", probs), ("s", samples)):
        write_records(tmp_path / f"{name}.jsonl", recs)
    # The target task: exact copies of pool items 3 and 11 (question and solution).
    planted = [3, 11]
    tgt = [SFTExample(f"t{i}", [{"role": "user", "content": probs[i].question},
                                {"role": "assistant", "content": samples[i].text}], f"p{i}", 0, "m", "plain-v1", 8, "t")
           for i in planted]
    write_records(tmp_path / "target.jsonl", tgt)
    cfg = SelectConfig(problems=str(tmp_path / "p.jsonl"), samples=str(tmp_path / "s.jsonl"), verdicts="",
                       out=str(tmp_path / "sel.jsonl"), selectors=["dedup", "less"],
                       less=LessOptions(targets=[str(tmp_path / "target.jsonl")], n=4, model=str(tiny_model_dir),
                                        warmup_fraction=0.5, warmup_epochs=2, lora_r=4, dim=512))
    s = run_select(cfg)
    rows = read_records(tmp_path / "sel.jsonl", SFTExample)
    assert s["examples"] == 4 and s["funnel"][-1]["step"] == "less"
    assert {r.selected_by for r in rows} == {"dedup>less"}
    assert {f"p{i}" for i in planted} <= {r.problem_id for r in rows}
    ck = sorted((tmp_path / "sel.jsonl.gradient" / "warmup" / "checkpoints").glob("checkpoint-*"))
    assert len(ck) == 2 and all((c / "optimizer.pt").exists() for c in ck)
    # Selection compute: 2 checkpoints x (16 pool + 2 target) gradients, each priced as a LoRA training sequence.
    cost = s["funnel"][-1]["cost"]
    assert cost["checkpoints"] == 2 and cost["gradients"] == 2 * 18
    assert cost["feature_flops"] > 0 and cost["warmup_flops"] > 0
    assert s["selection_flops"] == cost["warmup_flops"] + cost["feature_flops"]


def test_checkpointed_gradient_equals_plain(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from assay.select.less import enable_checkpointing

    def make():
        torch.manual_seed(0)
        return get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                              LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))

    ids, labels = torch.arange(3, 40), torch.arange(3, 40)
    plain = lora_gradient(make(), ids, labels)
    m = make()
    enable_checkpointing(m)
    m.train()
    assert torch.allclose(lora_gradient(m, ids, labels), plain, atol=1e-6)
