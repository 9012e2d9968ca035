"""Feature extraction for gradient-based selection (LESS): examples/s, peak RAM, and fp32 vs bf16.

SmolLM2-135M-Instruct with LoRA (r=8, all linear layers); examples are real chat rows (a
reasoning-gym chain_sum question, then an assistant turn with the sum and "The answer is N",
padded with more sums to about ``--seq-len`` tokens), loss on the assistant turn. Per example:
gradient -> Adam preconditioning (moments of the same shape) -> projection to ``--dim``, in each
``--dtypes`` arm (bfloat16: autocast over the fp32 weights, as ``LessOptions.dtype`` runs it),
side by side in one run, each with its FLOP/s over the matmul peak of its dtype (``limits.py``).

What bf16 does to the selection: the last ``--targets`` examples are the target set, the others
the pool; each arm's LESS scores of the pool (mean cosine to the targets) are compared with the
fp32 arm's by Spearman rank correlation and by the overlap of the top quarter, and each example's
projected feature by its cosine with the fp32 one.

The dense seeded Rademacher block projection is timed on one example (fp32), against the sparse
sign sketch used for LoRA-sized inputs.

    python benchmarks/bench_gradsel.py --examples 24 --seq-len 256
"""

from __future__ import annotations

import argparse
import random
import resource
import time

import numpy as np
import torch
from limits import Limits


def rank(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x)] = np.arange(len(x))
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def examples(tok, count: int, seq_len: int, seed: int) -> list[tuple]:
    import reasoning_gym

    from assay.select.less import tokenize_example

    ds = reasoning_gym.create_dataset("chain_sum", size=count, seed=seed, min_terms=2, max_terms=3)
    rng, out = random.Random(seed), []
    for i in range(count):
        row = ds[i]
        text = f"{row['metadata']['expression']} = {row['answer']}. The answer is {row['answer']}."
        msgs = [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": text}]
        while len(tok.apply_chat_template(msgs, tokenize=False)) < seq_len * 3:  # ~3 characters a token
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            msgs[1]["content"] += f" Also {a} + {b} = {a + b}."
        out.append(tokenize_example(tok, msgs, seq_len))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=24)
    ap.add_argument("--targets", type=int, default=8, help="of the examples, the last this many are the targets")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--dense-probe", type=int, default=1, help="examples to time through the dense projection")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (long sequences)")
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model

    from assay import models
    from assay.select.less import (
        BlockProjector,
        SparseSignProjector,
        adam_precondition,
        enable_checkpointing,
        less_scores,
        lora_gradient,
    )
    from assay.train import step_flops

    dtypes = args.dtypes.split(",")
    limits = Limits(dtypes)
    model, tok = models.load(args.model)
    stats = models.stats_from_config(model.config)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear"))
    # A trained adapter, not the zero-initialised one: B = 0 gives A no gradient at all.
    g0 = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g0) * 1e-2)
    if args.checkpointing:
        enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    D = sum(p.numel() for p in params)
    m = torch.randn(D, generator=g0) * 1e-3
    v = torch.rand(D, generator=g0) * 1e-6
    ex = examples(tok, args.examples, args.seq_len, seed=0)
    lengths = [len(ids) for ids, _ in ex]
    flops = sum(step_flops([t], stats, "lora", D, args.checkpointing) for t in lengths)
    t = time.perf_counter()
    sparse = SparseSignProjector(D, args.dim, seed=0)
    t_init = time.perf_counter() - t

    print(f"model={args.model} LoRA r={args.rank} all-linear: {D:,} gradient coordinates; {len(ex)} examples of "
          f"{np.mean(lengths):.0f} tokens; d={args.dim}; checkpointing={args.checkpointing}; "
          f"threads={torch.get_num_threads()}")
    print(limits.header())
    feats, rates, grads0 = {}, {}, []
    for d in dtypes:
        lora_gradient(model, *ex[0], params=params, dtype=d)  # warm-up
        t_grad = t_proj = 0.0
        rows = []
        for ids, labels in ex:
            t = time.perf_counter()
            g = adam_precondition(lora_gradient(model, ids, labels, params=params, dtype=d).detach(), m, v)
            t_grad += time.perf_counter() - t
            t = time.perf_counter()
            rows.append(sparse(g).numpy())
            t_proj += time.perf_counter() - t
            if d == dtypes[0] and len(grads0) < args.dense_probe:
                grads0.append(g)
        feats[d] = np.stack(rows)
        rates[d] = len(ex) / (t_grad + t_proj)
        fps = flops / t_grad
        print(f"{d:>9}: gradient+preconditioning {t_grad / len(ex):.2f} s/example, sparse projection "
              f"{t_proj / len(ex) * 1000:.1f} ms; {rates[d]:.3f} examples/s; {fps / 1e9:.1f} GFLOP/s = "
              f"{limits.fraction(fps, d):.1%} of the {d} matmul peak", flush=True)
    ref = dtypes[0]
    n_pool = len(ex) - args.targets
    scores = {d: less_scores([feats[d][:n_pool]], [{"t": feats[d][n_pool:]}], [1.0]) for d in dtypes}
    for d in dtypes[1:]:
        a, b = feats[ref], feats[d]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        q = max(1, n_pool // 4)
        top = len(set(np.argsort(-scores[ref])[:q]) & set(np.argsort(-scores[d])[:q])) / q
        print(f"{d} vs {ref}: examples/s {rates[d] / rates[ref]:.2f}x; feature cosine min {cos.min():.4f} "
              f"mean {cos.mean():.4f}; LESS score Spearman {spearman(scores[ref], scores[d]):.3f} over {n_pool} "
              f"pool examples; top-{q} overlap {top:.0%}")
    if args.dense_probe:
        dense = BlockProjector(D, args.dim, seed=0)
        t = time.perf_counter()
        for g in grads0:
            dense(g)
        t_dense = (time.perf_counter() - t) / len(grads0)
        print(f"dense projection {t_dense:.2f} s per example (sparse sketch set-up once: {t_init:.2f} s)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
