"""Training tokens/s: LoRA vs full fine-tuning, fp32 vs bf16 autocast, through ``assay.train.run_training``,
side by side in one run, each beside the machine's matmul peak in its dtype (``limits.py``).

All arms train on the same synthetic SFT set (one user turn, then an assistant turn of
arithmetic lines such as ``12 + 7 = 19.`` grown until the rendered chat is about ``--seq-len``
tokens long), with the same batch size, step count and seed. Throughput comes from
the per-step training log (``train_log.jsonl``, cumulative real tokens, FLOPs and elapsed
seconds) and leaves out the first ``--warmup-steps`` steps, which include one-off costs (lazy
initialisation, allocator growth, the first optimizer state allocation):

    tokens/s = (tokens[last] - tokens[warmup]) / (elapsed[last] - elapsed[warmup])

and the same for FLOPs/s (the FLOPs counted by ``assay.train``, see its module docstring: 3 F(T)
per sequence for full fine-tuning, 2 F(T) + 6 N_lora T for LoRA). Model loading, data
preparation and the final save are outside the measured window. bf16 is autocast over fp32 master
weights (``TrainConfig.dtype=bfloat16``): the FLOPs are the same count, so their rate over the bf16
peak says how much of the faster multiplies training actually uses. The final loss of each arm is
shown, so a bf16 arm that trains worse is visible beside its speed.

Each run is its own child process (spawned), so neither arm inherits the other's allocations or
warm caches, and peak RSS (``getrusage`` of that process: model load included) is per run. With
``--rounds`` > 1 the order alternates (lora, full / full, lora / ...) and the medians are shown.

    python benchmarks/bench_train.py --model tiny --steps 4
    python benchmarks/bench_train.py --model smollm2-135m-instruct --steps 8 --batch-size 4 --seq-len 256
    python benchmarks/bench_train.py --model smollm2-135m-instruct --methods lora --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import random
import resource
import shutil
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

from limits import Limits

from assay.core.io import write_records
from assay.core.records import SFTExample
from assay.train import METHODS, TrainConfig, run_training

LR = {"lora": 2e-4, "full": 1e-4}
PROMPT = "Add the numbers on each line and write each sum."


def chat_len(tok, messages: list[dict]) -> int:
    text = tok.apply_chat_template(messages, tokenize=False)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def completion_text(tok, target: int, rng: random.Random) -> tuple[str, int]:
    """Arithmetic lines until the rendered chat reaches ``target`` tokens, trimmed back to it."""
    text, n = "", 0
    while True:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        text += f"{a} + {b} = {a + b}. "
        n = chat_len(tok, [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": text}])
        if n >= target:
            break
    while n > target and len(text) > 1:  # overshoot is at most one line: cut characters off its end
        text = text[:-1]
        n = chat_len(tok, [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": text}])
    return text, n


def build_data(spec: str, path: Path, examples: int, seq_len: int, seed: int) -> list[int]:
    """Write the synthetic SFT set; returns the rendered chat length of each row."""
    from transformers import AutoTokenizer

    from assay.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve(spec))
    rng = random.Random(seed)
    rows, lengths = [], []
    for i in range(examples):
        text, n = completion_text(tok, seq_len, rng)
        lengths.append(n)
        rows.append(SFTExample(
            id=f"bench-{i}/0", messages=[{"role": "user", "content": PROMPT}, {"role": "assistant", "content": text}],
            problem_id=f"bench-{i}", sample_index=0, model="synthetic", prompt_template="bench",
            completion_tokens=len(tok(text, add_special_tokens=False)["input_ids"]), selected_by="bench"))
    write_records(path, rows)
    return lengths


def measure(log_path: Path, warmup: int) -> dict:
    """Tokens/s and FLOPs/s over the logged steps after ``warmup``."""
    rows = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: r["step"])
    base = [r for r in rows if r["step"] <= warmup]
    if not base or rows[-1]["step"] <= warmup:
        raise SystemExit(f"{log_path}: need more than {warmup} logged steps (got {len(rows)}); raise --steps")
    a, b = base[-1], rows[-1]
    dt = b["elapsed_s"] - a["elapsed_s"]
    return {"measured_steps": b["step"] - a["step"], "measured_tokens": b["tokens"] - a["tokens"],
            "measured_s": dt, "tokens_per_s": (b["tokens"] - a["tokens"]) / dt,
            "flops_per_s": (b["flops"] - a["flops"]) / dt,
            "first_steps_s": a["elapsed_s"], "final_loss": b["loss"]}


def one_run(kw: dict, warmup: int, threads: int) -> dict:
    """Runs in a fresh child process: train, then read the log. Its chatter goes to stderr."""
    import datasets
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    warnings.simplefilter("ignore", FutureWarning)
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its log dicts; stdout keeps the table
        summary = run_training(TrainConfig(**kw), progress=False)
    res = measure(Path(kw["out"]) / "train_log.jsonl", warmup)
    res.update(method=kw["method"], dtype=summary["dtype"], n_trainable=summary["n_trainable"], n_params=summary["n_params"],
               steps=summary["steps"], tokens=summary["tokens"], wall_s=summary["wall_s"],
               sequences=summary["sequences"], tokens_per_seq=summary["tokens"] / max(1, summary["sequences"]),
               peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               peak_gpu_mib=torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
               threads=torch.get_num_threads())
    return res


def run_isolated(kw: dict, warmup: int, threads: int) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        res = pool.apply(one_run, (kw, warmup, threads))
        pool.close()  # let the worker exit on its own (terminate() leaks its semaphores)
        pool.join()
    return res


def si(x: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {unit}"
    return f"{x:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="'tiny' (random 2-layer Llama) or a model spec")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    ap.add_argument("--warmup-steps", type=int, default=2, help="leading steps left out of the measurement")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256, help="target tokens per sequence (rendered chat)")
    ap.add_argument("--examples", type=int, default=32, help="rows in the synthetic SFT set")
    ap.add_argument("--methods", default=",".join(METHODS), help="training methods to compare")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes to compare (bfloat16: autocast)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per method (order alternates); medians are shown")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each run (0: torch default)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (data, logs, checkpoints)")
    args = ap.parse_args()
    if args.steps <= args.warmup_steps:
        ap.error(f"--steps ({args.steps}) must exceed --warmup-steps ({args.warmup_steps})")

    tmp = Path(tempfile.mkdtemp(prefix="assay-bench-train-"))
    try:
        bench(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def bench(args: argparse.Namespace, tmp: Path) -> None:
    spec = args.model
    if spec == "tiny":
        from assay.tiny import save_tiny

        spec = str(save_tiny(tmp / "tiny"))
    data = tmp / "sft.jsonl"
    lengths = build_data(spec, data, args.examples, args.seq_len, args.seed)
    methods, dtypes = args.methods.split(","), args.dtypes.split(",")
    print(f"model={args.model} steps={args.steps} (first {args.warmup_steps} not measured) batch={args.batch_size} "
          f"seq_len~{statistics.mean(lengths):.0f} (min {min(lengths)}, max {max(lengths)}) examples={args.examples} "
          f"rounds={args.rounds}", flush=True)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    limits = Limits(dtypes)
    print(limits.header(), flush=True)

    arms = [(m, d) for m in methods for d in dtypes]
    runs: dict[tuple, list[dict]] = {a: [] for a in arms}
    for r in range(args.rounds):
        for m, d in (arms if r % 2 == 0 else arms[::-1]):
            kw = dict(data=str(data), out=str(tmp / f"{m}-{d}-{r}"), model=spec, method=m, max_steps=args.steps,
                      batch_size=args.batch_size, save_steps=10**9, max_length=args.seq_len + 16, lr=LR[m],
                      dtype=d, seed=args.seed)
            res = run_isolated(kw, args.warmup_steps, args.threads)
            runs[(m, d)].append(res)
            print(f"[round {r + 1}/{args.rounds}] {m} {d}: {res['tokens_per_s']:.1f} tok/s over "
                  f"{res['measured_steps']} steps ({res['measured_tokens']} tokens, {res['measured_s']:.2f} s); "
                  f"first {args.warmup_steps} steps {res['first_steps_s']:.2f} s", file=sys.stderr, flush=True)

    keys = ("tokens_per_s", "flops_per_s", "peak_rss_mib", "final_loss")
    med = {a: {k: statistics.median(x[k] for x in runs[a]) for k in keys} for a in arms}
    gpu = runs[arms[0]][0]["peak_gpu_mib"] is not None
    first = runs[arms[0]][0]
    print(f"threads={first['threads']} tokens/seq={first['tokens_per_seq']:.1f} params={first['n_params']:,}")
    print()
    print("| method | dtype | trainable params | tokens/s | FLOPs/s | % of matmul peak | final loss | peak RSS MiB |"
          + (" peak GPU MiB |" if gpu else ""))
    print("|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for m, d in arms:
        x = med[(m, d)]
        row = (f"| {m} | {d} | {runs[(m, d)][0]['n_trainable']:,} | {x['tokens_per_s']:.1f} | {si(x['flops_per_s'])} | "
               f"{limits.fraction(x['flops_per_s'], d):.1%} | {x['final_loss']:.4f} | {x['peak_rss_mib']:.0f} |")
        if gpu:
            row += f" {max(r['peak_gpu_mib'] for r in runs[(m, d)]):.0f} |"
        print(row)
    print()
    ratios = {}
    if "lora" in methods and "full" in methods:
        for d in dtypes:
            ratios[f"lora/full {d}"] = med[("lora", d)]["tokens_per_s"] / med[("full", d)]["tokens_per_s"]
    if len(dtypes) > 1:
        for m in methods:
            ratios[f"{m} {dtypes[-1]}/{dtypes[0]}"] = med[(m, dtypes[-1])]["tokens_per_s"] / med[(m, dtypes[0])]["tokens_per_s"]
    print("tokens/s ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "limits": limits.as_dict(), "seq_lengths": lengths,
                       "runs": {f"{m}/{d}": v for (m, d), v in runs.items()},
                       "median": {f"{m}/{d}": v for (m, d), v in med.items()}, "ratios": ratios}, fh, indent=2)


if __name__ == "__main__":
    main()
