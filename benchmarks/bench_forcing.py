"""s1 budget forcing, measured: accuracy against thinking tokens for one model on one benchmark
(issue 15, item 4).

Each arm is one ``assay eval`` (``run_eval``) of the same problems with one forcing setting:
maximum budgets cut the thinking and append "Final Answer:", minimum budgets replace early stops
by "Wait" (at most ``waits`` times), and the unforced arm is the plain evaluation. Every arm's
protocol carries its forcing, so none of them compares as equal to another. Writes a JSON of the
arms and a plot of greedy pass@1 (95% Wilson interval) against mean thinking tokens.

    python benchmarks/bench_forcing.py --model qwen2.5-coder-1.5b-instruct --problems runs/bench-teachers/gsm8k/test.jsonl \
        --n 40 --template boxed-v1 --out runs/bench-forcing --plot benchmarks/plots/forcing.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from assay.core.io import read_problems, read_records, write_records
from assay.core.records import Sample
from assay.eval.stage import EvalConfig, run_eval
from assay.sampling.forcing import BudgetForcing

# name -> (forcing, max_new_tokens of the eval)
ARMS = {
    "max64": (BudgetForcing(max_tokens=64, answer_tokens=32), 512),
    "max128": (BudgetForcing(max_tokens=128, answer_tokens=32), 512),
    "max256": (BudgetForcing(max_tokens=256, answer_tokens=32), 512),
    "unforced": (BudgetForcing(), 512),
    "wait1": (BudgetForcing(waits=1, max_tokens=768, answer_tokens=32), 768),
    "min512": (BudgetForcing(min_tokens=512, waits=3, max_tokens=768, answer_tokens=32), 768),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--problems", required=True, help="a Problem JSONL (its first --n rows are used)")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--template", default="boxed-v1")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--out", default="runs/bench-forcing")
    ap.add_argument("--plot", default=None)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    sub = out / "problems.jsonl"
    write_records(sub, read_problems(a.problems)[: a.n])
    res = {}
    for name in a.arms.split(","):
        forcing, tokens = ARMS[name]
        cfg = EvalConfig(model=a.model, benchmark=str(sub), out=str(out / name), template=a.template,
                         max_new_tokens=tokens, max_batch=a.max_batch, forcing=forcing)
        r = run_eval(cfg)
        samples = read_records(out / name / "greedy.samples.jsonl", Sample)
        thinking = [(s.forcing or {}).get("thinking_tokens", s.completion_tokens) for s in samples]
        m = r["metrics"]
        res[name] = {"forcing": r["protocol"].get("forcing"), "pass@1": m["greedy_pass@1"], "ci95": m["greedy_ci95"],
                     "correct": m["greedy_correct"], "n": len(samples),
                     "mean_thinking_tokens": sum(thinking) / len(thinking),
                     "mean_completion_tokens": m["greedy_mean_tokens"],
                     "cuts": sum(bool((s.forcing or {}).get("cut")) for s in samples),
                     "waits": sum((s.forcing or {}).get("waits", 0) for s in samples),
                     "capped": sum(s.finish_reason == "length" for s in samples),
                     "protocol": r["protocol"]["protocol_id"], "wall_s": r["wall_s"]}
        x = res[name]
        print(f"[bench] {name}: {x['correct']}/{x['n']} = {x['pass@1']:.3f}, thinking {x['mean_thinking_tokens']:.0f} "
              f"tokens, {x['cuts']} cut, {x['waits']} waits, {x['capped']} capped", flush=True)
        (out / "forcing.json").write_text(json.dumps({"model": a.model, "template": a.template, "arms": res}, indent=1))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for name, x in res.items():
            lo, hi = x["ci95"]
            kind = "o" if name.startswith("max") else "s" if name == "unforced" else "^"
            ax.errorbar([x["mean_thinking_tokens"]], [x["pass@1"]], yerr=[[x["pass@1"] - lo], [hi - x["pass@1"]]],
                        fmt=kind, capsize=4)
            ax.annotate(name, (x["mean_thinking_tokens"], x["pass@1"]), textcoords="offset points", xytext=(5, 4),
                        fontsize=8)
        ax.set_xlabel("mean thinking tokens per problem")
        ax.set_ylabel("greedy pass@1 (95% CI)")
        ax.set_title(f"budget forcing: {a.model}, {x['n']} problems", fontsize=9)
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=100)


if __name__ == "__main__":
    main()
