"""Feature extraction for gradient-based selection: examples/s and peak RAM (issue 6's benchmark).

SmolLM2-135M-Instruct with LoRA (r=8, all linear layers), synthetic examples of ``--seq-len``
tokens with the loss on the second half, per-example gradient -> Adam preconditioning (moments
of the same shape) -> projection to ``--dim``. Two projections side by side on the same
gradients: the sparse sign sketch used for LoRA-sized inputs, and the dense seeded Rademacher
block projection (timed on the projection alone, since it dominates at this size).

    python benchmarks/bench_gradsel.py --examples 6 --seq-len 256
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--examples", type=int, default=6)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--dim", type=int, default=8192)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dense-probe", type=int, default=1, help="examples to time through the dense projection")
    ap.add_argument("--checkpointing", action="store_true", help="gradient checkpointing (long sequences)")
    args = ap.parse_args()

    from peft import LoraConfig, get_peft_model

    from assay import models
    from assay.select.less import BlockProjector, SparseSignProjector, adam_precondition, lora_gradient

    model, _ = models.load(args.model)
    model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules="all-linear"))
    if args.checkpointing:
        from assay.select.less import enable_checkpointing

        enable_checkpointing(model)
    params = [p for p in model.parameters() if p.requires_grad]
    D = sum(p.numel() for p in params)
    g0 = torch.Generator().manual_seed(0)
    m = torch.randn(D, generator=g0) * 1e-3
    v = torch.rand(D, generator=g0) * 1e-6
    vocab = model.config.vocab_size
    ex = []
    for i in range(args.examples):
        ids = torch.randint(0, vocab, (args.seq_len,), generator=g0)
        labels = ids.clone()
        labels[: args.seq_len // 2] = -100
        ex.append((ids, labels))
    t = time.perf_counter()
    sparse = SparseSignProjector(D, args.dim, seed=0)
    t_init = time.perf_counter() - t
    lora_gradient(model, *ex[0], params=params)  # warm-up
    t_grad = t_proj = 0.0
    grads = []
    for ids, labels in ex:
        t = time.perf_counter()
        g = adam_precondition(lora_gradient(model, ids, labels, params=params).detach(), m, v)
        t_grad += time.perf_counter() - t
        t = time.perf_counter()
        sparse(g)
        t_proj += time.perf_counter() - t
        grads.append(g)
    dense = BlockProjector(D, args.dim, seed=0)
    t = time.perf_counter()
    for g in grads[: args.dense_probe]:
        dense(g)
    t_dense = (time.perf_counter() - t) / max(1, args.dense_probe)
    n = len(ex)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"model={args.model} LoRA r={args.rank} all-linear: {D:,} gradient coordinates; seq_len={args.seq_len}; "
          f"d={args.dim}; checkpointing={args.checkpointing}; threads={torch.get_num_threads()}")
    print(f"per example: gradient+preconditioning {t_grad / n:.2f} s, sparse projection {t_proj / n * 1000:.1f} ms, "
          f"dense projection {t_dense:.2f} s (sparse sketch set-up once: {t_init:.2f} s)")
    print(f"examples/s with the sparse projection: {n / (t_grad + t_proj):.3f}; peak RSS {rss:.0f} MiB")
    if args.dense_probe:
        print(f"dense / sparse projection time per example: {t_dense / max(t_proj / n, 1e-9):.0f}x")


if __name__ == "__main__":
    main()
