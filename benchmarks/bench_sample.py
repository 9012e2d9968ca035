"""Useful sampling tokens/s: assay's continuous batcher vs plain ``model.generate`` (and, with
``--vllm``, vLLM through assay's vllm backend), in fp32 and bf16, side by side in one run, with
each arm's fraction of the machine's measured limits.

Every arm gets the same prompts, n samples per prompt, the same decoding settings and the same
number of rows decoded together (the batch). "Useful" tokens are those a caller keeps: sampled
tokens up to and including EOS, never padding or the tokens that finished rows keep producing
inside ``generate``. Useful FLOPs count the same work for every arm (each prompt's prefill once,
then each useful token's forward over its real context, ``assay.models.forward_flops``), so an
arm's FLOP/s over the matmul peak of its dtype (measured in this run, ``limits.py``) says how
close it gets to what the cores can do. The engine arm also gives a lower bound on the bytes
it reads (weights once per step, each decoded row's KV) over the measured read bandwidth:
decoding at small batch is bound by memory, not by multiplies.

Same output distribution: greedy agreement (identical tokens at temperature 0 on 8 prompts) of
the engine with ``generate`` in each dtype, and of bf16 with fp32; mean completion lengths.
``--profile`` adds one profiled engine run per dtype, split into matmuls, attention, sampling
and the rest (norms, rotary, copies, Python).

    python benchmarks/bench_sample.py --model tiny
    python benchmarks/bench_sample.py --model smollm2-135m-instruct --batches 1,16,64 --profile
    python benchmarks/bench_sample.py --model smollm2-135m-instruct --batches 64 --max-new-tokens 512 --rounds 1
    python benchmarks/bench_sample.py --model smollm2-135m-instruct --batches 16,64 --vllm   # needs `make vllm`

The vLLM arm runs after the others (its server is started once per dtype, with room for the
largest batch, and stopped before anything else is timed); its batch is the number of requests
in flight, which is the number of sequences vLLM decodes at once. Its time includes the HTTP
round trips, as assay's sampling through it does.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from limits import Limits

from assay import models
from assay.data.prompts import TEMPLATES, render_ids
from assay.models import forward_flops
from assay.sampling.engine import ContinuousBatcher, GroupRequest


def load(spec: str, dtype: str = "float32"):
    if spec == "tiny":
        from assay.tiny import save_tiny

        spec = str(save_tiny(tempfile.mkdtemp(prefix="assay-tiny-")))
    model, tok = models.load(spec, dtype=dtype)
    return model, tok, models.stats_from_config(model.config)


def questions(count: int, seed: int) -> list[str]:
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=count, seed=seed)
    return [ds[i]["question"] for i in range(count)]


def eos_ids(model, tok) -> set[int]:
    ids = model.generation_config.eos_token_id
    return {tok.eos_token_id} | set(ids if isinstance(ids, list) else [ids])


def useful_len(row: list[int], eos: set[int], max_new: int) -> int:
    for i, t in enumerate(row[:max_new]):
        if t in eos:
            return i + 1
    return min(len(row), max_new)


def useful_flops(stats, prompt_len: int, n: int, length: int) -> float:
    """One sample's share of its prompt's prefill plus the decode of its useful tokens."""
    return forward_flops(stats, prompt_len) / n + forward_flops(stats, max(0, length - 1), context_before=prompt_len)


def run_generate(model, tok, stats, prompts, n, batch, temperature, max_new, seed):
    """Plain HF generate: batch rows per call, n return sequences per prompt."""
    eos = eos_ids(model, tok)
    per_call = max(1, batch // n)
    reps = n if batch >= n else batch
    tok.padding_side = "left"
    lengths, flops, t0 = [], 0.0, time.perf_counter()
    torch.manual_seed(seed)
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start:start + per_call]
        for _ in range(n // reps):
            enc = tok.pad({"input_ids": chunk}, return_tensors="pt")
            kw = dict(do_sample=True, temperature=temperature, top_p=1.0) if temperature > 0 else dict(do_sample=False)
            out = model.generate(**enc, max_new_tokens=max_new, num_return_sequences=reps,
                                 pad_token_id=tok.pad_token_id, **kw)
            P = enc["input_ids"].shape[1]
            for j, r in enumerate(out[:, P:].tolist()):
                length = useful_len(r, eos, max_new)
                lengths.append(length)
                flops += useful_flops(stats, len(chunk[j // reps]), n, length)
    dt = time.perf_counter() - t0
    return dict(tok_s=sum(lengths) / dt, flop_s=flops / dt, lengths=lengths)


def kv_bytes_per_token(model) -> int:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * next(model.parameters()).element_size()


def run_engine(model, tok, stats, prompts, n, batch, temperature, max_new, seed):
    eng = ContinuousBatcher(model, tok, stats, max_batch=batch, max_new_tokens=max_new, temperature=temperature)
    reqs = [GroupRequest(str(i), p, [(j, seed * 1000 + i * n + j) for j in range(n)]) for i, p in enumerate(prompts)]
    t0 = time.perf_counter()
    outs = list(eng.run(reqs))
    dt = time.perf_counter() - t0
    st = eng.stats
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv = kv_bytes_per_token(model)
    kv_read = sum(kv * (c.prompt_tokens * c.completion_tokens + c.completion_tokens ** 2 / 2) for c in outs)
    return dict(tok_s=st.useful_tokens / dt, flop_s=sum(c.flops for c in outs) / dt,
                bytes_s=(st.forward_passes * weight_bytes + kv_read) / dt,
                lengths=[c.completion_tokens for c in outs], util=st.useful_tokens / max(1, st.row_steps + len(outs)))


def greedy_engine(model, tok, stats, prompts, max_new) -> dict[int, list[int]]:
    eng = ContinuousBatcher(model, tok, stats, max_batch=len(prompts), max_new_tokens=max_new, temperature=0.0)
    return {int(c.group_id): c.token_ids for c in eng.run([GroupRequest(str(i), p, [(0, 0)]) for i, p in enumerate(prompts)])}


def greedy_generate(model, prompts, max_new) -> dict[int, list[int]]:
    return {i: model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=max_new, do_sample=False)[0, len(p):].tolist() for i, p in enumerate(prompts)}


def agreement(a: dict, b: dict, eos: set[int]) -> float:
    strip = lambda t: t[:-1] if t and t[-1] in eos else t  # generate keeps EOS, the engine's completion too
    return sum(strip(a[i]) == strip(b[i]) for i in a) / len(a)


_SPLIT = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm"), "attention": ("scaled_dot_product", "aten::_softmax_backward"),
          "sampling": ("aten::cumsum", "aten::_softmax", "aten::searchsorted", "aten::sort", "aten::argmax",
                       "aten::div", "aten::index")}


def profile_split(model, tok, stats, prompts, n, batch, temperature, max_new, seed) -> dict[str, float]:
    """Self CPU time of one engine run, by category (the rest: norms, rotary, copies, Python)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_engine(model, tok, stats, prompts, n, batch, temperature, max_new, seed)
    total, split = 0.0, {k: 0.0 for k in (*_SPLIT, "rest")}
    for ev in prof.key_averages():
        total += ev.self_cpu_time_total
        cat = next((k for k, names in _SPLIT.items() if any(x in ev.key for x in names)), "rest")
        split[cat] += ev.self_cpu_time_total
    return {k: v / total for k, v in split.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="'tiny' (random 2-layer Llama) or a model spec")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--n", type=int, default=4, help="samples per prompt")
    ap.add_argument("--rounds", type=float, default=2.0, help="samples per run = rounds x batch (at least n)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--profile", action="store_true", help="also profile one engine run per dtype at the last batch")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--vllm", action="store_true", help="add the vLLM arm (assay's vllm backend; `make vllm`)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = args.dtypes.split(",")
    limits = Limits(dtypes)
    loaded = {d: load(args.model, d) for d in dtypes}
    _, tok, stats = loaded[dtypes[0]]
    results = []
    print(f"model={args.model} params={stats.n_params:,} n={args.n} T={args.temperature} "
          f"max_new_tokens={args.max_new_tokens} threads={torch.get_num_threads()}")
    print(limits.header())
    print(f"{'batch':>5} {'dtype':>8} {'samples':>7} {'gen tok/s':>9} {'assay tok/s':>11} {'ratio':>5} "
          f"{'gen %peak':>9} {'assay %peak':>11} {'assay %bw':>9} {'len gen':>7} {'len assay':>9} {'util':>5}")
    for batch in [int(b) for b in args.batches.split(",")]:
        n_samples = max(args.n, int(round(args.rounds * batch / args.n)) * args.n)
        prompts = [render_ids(TEMPLATES.get("boxed-v1").messages(q), tok)
                   for q in questions(n_samples // args.n, seed=args.seed)]
        for d in dtypes:
            model, _, _ = loaded[d]
            g = run_generate(model, tok, stats, prompts, args.n, batch, args.temperature, args.max_new_tokens, args.seed)
            e = run_engine(model, tok, stats, prompts, args.n, batch, args.temperature, args.max_new_tokens, args.seed)
            row = dict(batch=batch, dtype=d, samples=n_samples, generate_tok_s=g["tok_s"], assay_tok_s=e["tok_s"],
                       ratio=e["tok_s"] / g["tok_s"], generate_flop_s=g["flop_s"], assay_flop_s=e["flop_s"],
                       generate_peak_fraction=limits.fraction(g["flop_s"], d),
                       assay_peak_fraction=limits.fraction(e["flop_s"], d),
                       assay_bandwidth_fraction=e["bytes_s"] / limits.bandwidth,
                       mean_len_generate=statistics.mean(g["lengths"]), mean_len_assay=statistics.mean(e["lengths"]),
                       row_util=e["util"])
            results.append(row)
            print(f"{batch:>5} {d:>8} {n_samples:>7} {g['tok_s']:>9.1f} {e['tok_s']:>11.1f} {row['ratio']:>5.2f} "
                  f"{row['generate_peak_fraction']:>9.1%} {row['assay_peak_fraction']:>11.1%} "
                  f"{row['assay_bandwidth_fraction']:>9.1%} {row['mean_len_generate']:>7.1f} "
                  f"{row['mean_len_assay']:>9.1f} {e['util']:>5.2f}", flush=True)
        if len(dtypes) > 1:
            by = {r["dtype"]: r for r in results if r["batch"] == batch}
            a, b = by[dtypes[0]], by[dtypes[-1]]
            print(f"{'':>5} {dtypes[-1]} / {dtypes[0]}: generate {b['generate_tok_s'] / a['generate_tok_s']:.2f}x, "
                  f"assay {b['assay_tok_s'] / a['assay_tok_s']:.2f}x; assay {dtypes[-1]} / generate {dtypes[0]} "
                  f"{b['assay_tok_s'] / a['generate_tok_s']:.2f}x", flush=True)
    eos = eos_ids(loaded[dtypes[0]][0], tok)
    few = prompts[:8]
    greedy_max = min(64, args.max_new_tokens)
    engine_out = {d: greedy_engine(loaded[d][0], tok, stats, few, greedy_max) for d in dtypes}
    agree = {}
    for d in dtypes:
        agree[f"engine_vs_generate_{d}"] = agreement(engine_out[d], greedy_generate(loaded[d][0], few, greedy_max), eos)
    if len(dtypes) > 1:
        agree[f"engine_{dtypes[-1]}_vs_{dtypes[0]}"] = agreement(engine_out[dtypes[-1]], engine_out[dtypes[0]], eos)
    print("greedy agreement on 8 prompts (64 tokens): " + ", ".join(f"{k} {v:.0%}" for k, v in agree.items()))
    if args.vllm:
        vllm_arm(args, dtypes, results, tok, stats, few, greedy_max, engine_out, eos, agree)
    splits = {}
    if args.profile:
        for d in dtypes:
            splits[d] = profile_split(loaded[d][0], tok, stats, prompts, args.n, batch, args.temperature,
                                      args.max_new_tokens, args.seed)
            print(f"profile of the engine, {d}, batch {batch}: " + ", ".join(f"{k} {v:.0%}" for k, v in splits[d].items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "limits": limits.as_dict(), "results": results,
                       "greedy_agreement": agree, "profile": splits}, fh, indent=2)


def vllm_arm(args, dtypes, results, tok, stats, few, greedy_max, engine_out, eos, agree) -> None:
    """vLLM on the same prompts, seeds and decoding; adds vllm_tok_s to each result row."""
    from assay.sampling.backends import make_generator
    from assay.sampling.base import Decoding, PromptGroup

    if args.model == "tiny":
        raise SystemExit("--vllm needs a real model spec (vLLM loads it from its folder)")
    batches = sorted({r["batch"] for r in results})
    print(f"{'batch':>5} {'dtype':>8} {'samples':>7} {'vllm tok/s':>10} {'vllm/assay':>10} {'vllm/gen':>8} "
          f"{'vllm %peak':>10} {'len vllm':>8}")
    for d in dtypes:
        gen = make_generator("vllm", args.model, {"dtype": d, "max_num_seqs": max(batches)})
        try:
            def run(groups, dec):
                t0 = time.perf_counter()
                outs = list(gen.generate(groups, dec))
                return outs, time.perf_counter() - t0

            warm = [PromptGroup("w", [{"role": "user", "content": "Hello"}], [(0, 1)])]
            run(warm, Decoding(temperature=args.temperature, max_new_tokens=16))
            for row in (r for r in results if r["dtype"] == d):
                batch = row["batch"]
                gen.client.concurrency = batch  # requests in flight = sequences decoded together
                prompts = [render_ids(TEMPLATES.get("boxed-v1").messages(q), tok)
                           for q in questions(row["samples"] // args.n, seed=args.seed)]
                ids = {str(i): p for i, p in enumerate(prompts)}
                gen.client._render = lambda g: ids[g.problem_id]  # the very token ids the other arms got
                groups = [PromptGroup(str(i), [], [(j, args.seed * 1000 + i * args.n + j) for j in range(args.n)])
                          for i in range(len(prompts))]
                outs, dt = run(groups, Decoding(temperature=args.temperature, max_new_tokens=args.max_new_tokens))
                toks = sum(o.completion_tokens for o in outs)
                row.update(vllm_tok_s=toks / dt, vllm_flop_s=sum(o.flops for o in outs) / dt,
                           mean_len_vllm=statistics.mean(o.completion_tokens for o in outs))
                row["vllm_peak_fraction"] = row["vllm_flop_s"] / row["assay_flop_s"] * row["assay_peak_fraction"]
                print(f"{batch:>5} {d:>8} {row['samples']:>7} {row['vllm_tok_s']:>10.1f} "
                      f"{row['vllm_tok_s'] / row['assay_tok_s']:>10.2f} {row['vllm_tok_s'] / row['generate_tok_s']:>8.2f} "
                      f"{row['vllm_peak_fraction']:>10.1%} {row['mean_len_vllm']:>8.1f}", flush=True)
            gen.client._render = lambda g: few[int(g.problem_id)]
            greedy = [PromptGroup(str(i), [], [(0, 0)]) for i in range(len(few))]
            got = {int(o.problem_id): o.text for o in gen.generate(greedy, Decoding(temperature=0.0,
                                                                                   max_new_tokens=greedy_max))}
            strip = lambda t: t[:-1] if t and t[-1] in eos else t  # noqa: E731
            agree[f"vllm_vs_engine_{d}"] = sum(got[i] == tok.decode(strip(engine_out[d][i]), skip_special_tokens=True)
                                               for i in got) / len(got)
        finally:
            gen.close()
    print("greedy agreement of vLLM's text with the engine's, 8 prompts: " + ", ".join(
        f"{k} {v:.0%}" for k, v in agree.items() if k.startswith("vllm")))


if __name__ == "__main__":
    main()
