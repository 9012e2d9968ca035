"""What each embedded instruct model is worth here: greedy accuracy, completion length and useful
tokens/s per task, each model with its own best prompt template (issue 15, item 2).

For every (task, model): the template is chosen on a small *dev* slice (the first ``--dev``
problems; best accuracy, ties to the shorter completions) and the model is then measured with it
on the next ``--test`` problems, so the template choice never sees the measured rows. Everything
goes through ``assay.eval.stage.run_eval`` (the verifier, the extractors and the protocol that
``assay eval`` uses), into one folder per cell, so a killed run resumes where it stopped.

``--throughput`` adds, per model, the same test rows of one task (``--speed-task``, the first
``--speed-n``) decoded by the HF engine in float32 and bfloat16 and by vLLM (``make vllm``), with
the generator built before the clock starts (model load and vLLM's ~70 s start-up excluded);
useful tok/s = completion tokens / generation wall time, and the greedy agreement with the HF
bf16 answers.

    python benchmarks/bench_teachers.py --out runs/bench-teachers --json runs/bench-teachers.json
    python benchmarks/bench_teachers.py --models qwen2.5-coder-0.5b-instruct --tasks chain34 --dev 4 --test 8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from assay.core.io import read_problems, read_records, write_records
from assay.core.records import Sample
from assay.data.benchmarks import BENCHMARKS
from assay.data.problems import cli_run as write_problems
from assay.eval.stage import EvalConfig, eval_options, run_eval
from assay.sampling.backends import make_generator

MODELS = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
# task -> (benchmark, max_new_tokens)
TASKS = {"chain2": ("rg-chain-sum-v1", 256), "chain34": ("rg-chain-sum-3-4-v1", 256),
         "arith": ("rg-basic-arithmetic-v1", 256), "gsm8k": ("gsm8k-test", 512), "math500": ("math500", 512)}
TEMPLATES = ["plain-v1", "boxed-v1", "answer-line-v1"]


def split(task: str, out: Path, dev: int, test: int) -> tuple[Path, Path]:
    """dev.jsonl and test.jsonl: the first ``dev`` rows of the benchmark and the next ``test``."""
    bench, _ = TASKS[task]
    d = out / task
    d.mkdir(parents=True, exist_ok=True)
    allf = d / "problems.jsonl"
    if not allf.exists():
        # All rows, then the first dev + test: a distinct-question benchmark drops repeats after its limit.
        write_problems(BENCHMARKS.get(bench).problems_config(str(allf), None, None))
    rows = read_problems(allf)
    if len(rows) < dev + test:
        raise SystemExit(f"{bench}: only {len(rows)} problems, asked for {dev} + {test}")
    for name, part in (("dev", rows[:dev]), ("test", rows[dev:dev + test])):
        if not (d / f"{name}.jsonl").exists():
            write_records(d / f"{name}.jsonl", part)
    return d / "dev.jsonl", d / "test.jsonl"


def short(model: str) -> str:
    return model.split("-instruct")[0]


def cell(cfg: EvalConfig, generator=None) -> dict:
    r = run_eval(cfg, generator=generator)
    samples = read_records(Path(cfg.out) / "greedy.samples.jsonl", Sample)
    m = r["metrics"]
    return {"pass@1": m["greedy_pass@1"], "ci95": m["greedy_ci95"], "correct": m["greedy_correct"],
            "n": len(samples), "mean_tokens": m["greedy_mean_tokens"],
            "capped": sum(s.finish_reason == "length" for s in samples) / len(samples),
            "tokens": r["completion_tokens"], "wall_s": r["wall_s"],
            "protocol": r["protocol"]["protocol_id"], "dtype": r["protocol"]["backend_options"].get("dtype")}


def measure(models: list[str], tasks: list[str], out: Path, dev: int, test: int, max_batch: int) -> dict:
    res: dict = {}
    for task in tasks:
        devf, testf = split(task, out, dev, test)
        tokens = TASKS[task][1]
        for model in models:
            base = out / task / short(model)
            tried = {}
            for tpl in TEMPLATES:
                tried[tpl] = cell(EvalConfig(model=model, benchmark=str(devf), out=str(base / f"dev.{tpl}"),
                                             template=tpl, max_new_tokens=tokens, max_batch=max_batch))
            best = max(TEMPLATES, key=lambda t: (tried[t]["correct"], -tried[t]["mean_tokens"]))
            got = cell(EvalConfig(model=model, benchmark=str(testf), out=str(base / f"test.{best}"), template=best,
                                  max_new_tokens=tokens, max_batch=max_batch))
            res.setdefault(task, {})[model] = {"template": best, "dev": {t: tried[t]["correct"] for t in TEMPLATES},
                                               **got}
            print(f"[bench] {task} {model}: template {best} (dev {tried[best]['correct']}/{dev}); "
                  f"test {got['correct']}/{got['n']} = {got['pass@1']:.3f}, mean {got['mean_tokens']:.0f} tokens, "
                  f"{got['capped']:.0%} capped", flush=True)
    return res


def throughput(models: list[str], task: str, out: Path, n: int, template_of: dict, max_batch: int,
               arms: list[str]) -> dict:
    """Per model: the same rows through the HF engine (fp32, bf16) and vLLM, generator built first."""
    testf = out / task / "test.jsonl"
    tokens = TASKS[task][1]
    rows = read_problems(testf)[:n]
    sub = out / task / f"speed{n}.jsonl"
    write_records(sub, rows)
    res: dict = {}
    for model in models:
        tpl = template_of.get(model, "boxed-v1")
        answers = {}
        for arm in arms:
            backend, dtype = arm.split(":")
            cfg = EvalConfig(model=model, benchmark=str(sub), out=str(out / task / short(model) / f"speed.{arm}"),
                             template=tpl, max_new_tokens=tokens, max_batch=max_batch, backend=backend, dtype=dtype)
            t0 = time.perf_counter()
            gen = make_generator(backend, model, eval_options(cfg))
            load_s = time.perf_counter() - t0
            try:
                c = cell(cfg, generator=gen)
            finally:
                if hasattr(gen, "close"):
                    gen.close()
            per = json.loads((Path(cfg.out) / "per_problem.json").read_text())["greedy"]
            answers[arm] = {s.problem_id: s.text for s in read_records(Path(cfg.out) / "greedy.samples.jsonl", Sample)}
            res.setdefault(model, {})[arm] = {**c, "load_s": round(load_s, 1), "template": tpl,
                                              "correct_ids": sorted(k for k, v in per.items() if v)}
            c["tok_s"] = c["tokens"] / c["wall_s"]
            print(f"[bench] speed {model} {arm}: {c['tok_s']:.1f} tok/s, {c['correct']}/{c['n']} correct, "
                  f"mean {c['mean_tokens']:.0f} tokens (load {load_s:.0f} s)", flush=True)
        ref = answers.get("hf:bfloat16")
        for arm, texts in answers.items():
            if ref is not None:
                res[model][arm]["same_text_as_hf_bf16"] = sum(texts[k] == ref.get(k) for k in texts)
    return res


def table(res: dict, tasks: list[str], models: list[str]) -> str:
    lines = ["| task | model | template (dev correct: plain / boxed / answer-line) | greedy pass@1 (95% CI) | "
             "correct | mean tokens | capped |", "|---|---|---|---|---:|---:|---:|"]
    for task in tasks:
        for model in models:
            c = res.get(task, {}).get(model)
            if not c:
                continue
            lo, hi = c["ci95"]
            dev = " / ".join(str(c["dev"][t]) for t in TEMPLATES)
            lines.append(f"| {task} | {short(model)} | {c['template']} ({dev}) | {c['pass@1']:.3f} ({lo:.3f} .. {hi:.3f})"
                         f" | {c['correct']}/{c['n']} | {c['mean_tokens']:.0f} | {c['capped']:.0%} |")
    return "\n".join(lines)


def sizes(a: argparse.Namespace, task: str) -> tuple[int, int]:
    """(dev, test) problem counts of a task: the --dev-long/--test-long ones for gsm8k and math500."""
    long = task in ("gsm8k", "math500")
    return (a.dev_long if long and a.dev_long else a.dev), (a.test_long if long and a.test_long else a.test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--dev", type=int, default=10, help="problems per task for the template choice")
    ap.add_argument("--test", type=int, default=100, help="measured problems per task (after the dev ones)")
    ap.add_argument("--test-long", type=int, default=None, help="measured problems for gsm8k and math500 (default --test)")
    ap.add_argument("--dev-long", type=int, default=None, help="dev problems for gsm8k and math500 (default --dev)")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--out", default="runs/bench-teachers")
    ap.add_argument("--json", default=None)
    ap.add_argument("--throughput", action="store_true", help="add the HF fp32 / bf16 / vLLM speed arms")
    ap.add_argument("--speed-task", default="gsm8k")
    ap.add_argument("--speed-n", type=int, default=32)
    ap.add_argument("--speed-arms", default="hf:float32,hf:bfloat16,vllm:bfloat16")
    ap.add_argument("--speed-template", default="", help="one template for every model's speed arms (default: each "
                                                          "model's best on the speed task)")
    ap.add_argument("--skip-accuracy", action="store_true")
    a = ap.parse_args()
    models, tasks, out = a.models.split(","), a.tasks.split(","), Path(a.out)
    res: dict = {}
    prev = json.loads(Path(a.json).read_text()) if a.json and Path(a.json).exists() else {}
    if not a.skip_accuracy:
        acc = {}
        for task in tasks:
            acc.update(measure(models, [task], out, *sizes(a, task), a.max_batch))
        res["accuracy"] = {**prev.get("accuracy", {}), **acc}
        print(table(res["accuracy"], tasks, models))
    if a.throughput:
        acc = res.get("accuracy") or prev.get("accuracy", {})
        tpl = {m: a.speed_template or c["template"] for m, c in acc.get(a.speed_task, {}).items()}
        tpl = {m: a.speed_template or tpl.get(m, "boxed-v1") for m in models}
        split(a.speed_task, out, *sizes(a, a.speed_task))  # the accuracy pass's rows, written if missing
        res["throughput"] = throughput(models, a.speed_task, out, a.speed_n, tpl, a.max_batch, a.speed_arms.split(","))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({**prev, **res}, indent=1))


if __name__ == "__main__":
    main()
