"""Useful sampling tokens/s: assay's continuous batcher vs plain ``model.generate``, side by side.

Both arms get the same prompts, n samples per prompt, the same decoding settings and the same
number of rows decoded together (the batch). "Useful" tokens are those a caller keeps: sampled
tokens up to and including EOS, never padding or the tokens that finished rows keep producing
inside ``generate``. The same output distribution is checked by greedy agreement (identical tokens
at temperature 0 on a subset) and by the mean completion length at the benchmark temperature.

    python benchmarks/bench_sample.py --model tiny
    python benchmarks/bench_sample.py --model smollm2-135m-instruct --batches 1,16,64
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from assay import models
from assay.data.prompts import TEMPLATES, render_ids
from assay.sampling.engine import ContinuousBatcher, GroupRequest


def load(spec: str):
    if spec == "tiny":
        from assay.tiny import save_tiny

        spec = str(save_tiny(tempfile.mkdtemp(prefix="assay-tiny-")))
    model, tok = models.load(spec)
    return model, tok, models.stats_from_config(model.config)


def questions(count: int, seed: int) -> list[str]:
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=count, seed=seed)
    return [ds[i]["question"] for i in range(count)]


def useful_len(row: list[int], eos: set[int], pad: int, max_new: int) -> int:
    for i, t in enumerate(row[:max_new]):
        if t in eos:
            return i + 1
    return min(len(row), max_new)


def run_generate(model, tok, prompts, n, batch, temperature, max_new, seed):
    """Plain HF generate: batch rows per call, n return sequences per prompt."""
    eos = {tok.eos_token_id} | set(
        model.generation_config.eos_token_id if isinstance(model.generation_config.eos_token_id, list)
        else [model.generation_config.eos_token_id])
    per_call = max(1, batch // n)
    reps = n if batch >= n else batch
    tok.padding_side = "left"
    lengths, t0 = [], time.perf_counter()
    torch.manual_seed(seed)
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start:start + per_call]
        for _ in range(n // reps):
            enc = tok.pad({"input_ids": chunk}, return_tensors="pt")
            kw = dict(do_sample=True, temperature=temperature, top_p=1.0) if temperature > 0 else dict(do_sample=False)
            out = model.generate(**enc, max_new_tokens=max_new, num_return_sequences=reps,
                                 pad_token_id=tok.pad_token_id, **kw)
            P = enc["input_ids"].shape[1]
            lengths += [useful_len(r, eos, tok.pad_token_id, max_new) for r in out[:, P:].tolist()]
    return sum(lengths) / (time.perf_counter() - t0), lengths


def run_engine(model, tok, stats, prompts, n, batch, temperature, max_new, seed):
    eng = ContinuousBatcher(model, tok, stats, max_batch=batch, max_new_tokens=max_new, temperature=temperature)
    reqs = [GroupRequest(str(i), p, [(j, seed * 1000 + i * n + j) for j in range(n)]) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    outs = list(eng.run(reqs))
    dt = time.perf_counter() - t0
    return eng.stats.useful_tokens / dt, [c.completion_tokens for c in outs], eng.stats, outs


def greedy_agreement(model, tok, stats, prompts, max_new) -> float:
    eng = ContinuousBatcher(model, tok, stats, max_batch=len(prompts), max_new_tokens=max_new, temperature=0.0)
    ours = {int(c.group_id): c.token_ids for c in eng.run([GroupRequest(str(i), p, [(0, 0)]) for i, p in enumerate(prompts)])}
    same = 0
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             max_new_tokens=max_new, do_sample=False)[0, len(p):].tolist()
        same += ours[i] == ref
    return same / len(prompts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (random 2-layer Llama) or a model spec")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--rounds", type=float, default=2.0, help="samples per run = rounds x batch (at least n)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok, stats = load(args.model)
    results = []
    print(f"model={args.model} params={stats.n_params:,} n={args.n} T={args.temperature} "
          f"max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}")
    print(f"{'batch':>5} {'samples':>7} {'generate tok/s':>15} {'assay tok/s':>12} {'ratio':>6} "
          f"{'len gen':>8} {'len assay':>9} {'row util':>8}")
    for batch in [int(b) for b in args.batches.split(",")]:
        n_samples = max(args.n, int(round(args.rounds * batch / args.n)) * args.n)
        qs = questions(n_samples // args.n, seed=args.seed)
        prompts = [render_ids(TEMPLATES.get("boxed-v1").messages(q), tok) for q in qs]
        g_rate, g_len = run_generate(model, tok, prompts, args.n, batch, args.temperature, args.max_new_tokens, args.seed)
        e_rate, e_len, st, _ = run_engine(model, tok, stats, prompts, args.n, batch, args.temperature,
                                          args.max_new_tokens, args.seed)
        util = st.useful_tokens / max(1, st.row_steps + len(e_len))
        row = dict(batch=batch, samples=n_samples, generate_tok_s=g_rate, assay_tok_s=e_rate, ratio=e_rate / g_rate,
                   mean_len_generate=statistics.mean(g_len), mean_len_assay=statistics.mean(e_len), row_util=util)
        results.append(row)
        print(f"{batch:>5} {n_samples:>7} {g_rate:>15.1f} {e_rate:>12.1f} {e_rate / g_rate:>6.2f} "
              f"{row['mean_len_generate']:>8.1f} {row['mean_len_assay']:>9.1f} {util:>8.2f}", flush=True)
    agree = greedy_agreement(model, tok, stats, prompts[:8], min(64, args.max_new_tokens))
    print(f"greedy agreement with generate on 8 prompts: {agree:.0%}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results, "greedy_agreement": agree}, fh, indent=2)


if __name__ == "__main__":
    main()
