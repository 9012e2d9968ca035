"""``assay study selection``: does gradient similarity to a target task pick better training data?

LESS (Xia et al., 2024) and JiuZhang3.0 pick, from a mixed pool, the examples whose (Adam-
preconditioned LoRA) gradients point the way a few target examples' gradients do. The question
worth measuring is whether that beats cheaper choices at the same data size, so this study builds
one pool that mixes a target task with distractor tasks and makes four SFT sets of N examples:

- ``gradient-N``: the LESS pipeline (the ``less`` selector last) scored against target examples;
- ``random-N``: N drawn at random from the same pool;
- ``curated-N``: LIMO curation of the pool (difficulty band, decontamination, near-duplicate removal,
  rubric, N chosen round-robin across tasks), which does not know the target;
- ``target-only-N``: N drawn at random from the pool's target-task items only: the ceiling a
  selector that identified the task perfectly would reach.

The pool is the base model's own samples (correct, finished, deduplicated, one per problem). The
target examples are the base model's correct samples on a separate dev set of target problems, so
neither the held-out questions nor exact copies of them reach the selector. Every student trains
for the same number of optimizer steps and is evaluated greedily on held-out target problems next
to the base model, with paired tests against the base and against random-N. The report also says
what share of each set is target-task data and what the gradient selection cost in FLOPs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from assay.commands import check_stage
from assay.core.checks import at_least, fail
from assay.core.config import opt
from assay.core.io import InputError, read_records, write_json
from assay.core.records import Problem, Sample, SFTExample
from assay.data.benchmarks import CHAIN_SUM_SMALL, HELDOUT_SEED
from assay.data.prompts import check_template
from assay.data.sources import check_task
from assay.eval.stage import EvalConfig
from assay.models import DEFAULT_MODEL, check_model
from assay.select import less
from assay.select.curate import CurateConfig, run_curation
from assay.select.less import LessOptions
from assay.select.stage import SelectConfig, check_selectors, run_select
from assay.studies.workspace import (
    EVAL_OWNED,
    TRAIN_OWNED,
    check_disjoint,
    eval_section,
    open_run,
    problem_set,
    refuse_owned,
    rg_config,
    sample_and_verify,
    train_and_evaluate,
    train_section,
)
from assay.train import TrainConfig

# Fields the study fills in itself: setting them is refused (they would be overwritten).
GRADIENT_OWNED = ("targets", "n", "model")
OWNED = {"gradient": GRADIENT_OWNED, "train": TRAIN_OWNED, "eval": EVAL_OWNED}
DEV_SEED = 20_000  # dev (target-example) problems: item i from seed 20_000 + i, apart from pool and held-out


@dataclass
class StudySelectionConfig:
    model: str = opt(DEFAULT_MODEL, help="base model: the sampler, the gradient model and the student")
    target: str = opt("rg:chain_sum", help="the target task (reasoning-gym), evaluated on held-out problems")
    target_kwargs: dict = opt(CHAIN_SUM_SMALL, help="the target task's settings (a new mapping replaces the whole default)")
    distractors: list = opt(["rg:basic_arithmetic", "rg:gcd", "rg:letter_counting"],
                            help="the other reasoning-gym tasks mixed into the pool")
    distractor_kwargs: dict = opt({"basic_arithmetic": {"min_terms": 2, "max_terms": 3, "min_digits": 1,
                                                        "max_digits": 2}},
                                  help="settings of distractor tasks, by task name (default settings otherwise)")
    target_pool: int = opt(120, help="pool rows of the target task")
    distractor_pool: int = opt(160, help="pool rows of each distractor task (the base solves these less often)")
    dev_size: int = opt(48, help="dev problems of the target task whose correct samples are the target examples")
    n_targets: int = opt(16, help="target examples (one correct sample per dev problem, at most)")
    heldout_size: int = opt(360, help="held-out target rows (seeds from 10000; repeats dropped)")
    seed: int = opt(0, help="seed of the pool, samples, selections and training")
    k: int = opt(4, help="samples per pool and dev problem")
    n: int = opt(24, help="N: examples in every set")
    pool_selectors: list = opt(["correct", "finished", "dedup", "max_per_problem:1"],
                               help="selectors that turn samples into the candidate pool (and dev samples into targets)")
    curated: bool = opt(True, help="also build curated-N with the LIMO curation steps")
    band: list[int] = opt([1, 4], help="curated-N: keep problems solved this many times out of k (inclusive)")
    template: str = opt("plain-v1", help="prompt template for sampling, training and evaluation")
    sample_max_new_tokens: int = opt(96, help="completion limit when sampling pool and dev problems")
    train_steps: int = opt(24, help="the training budget: optimizer steps for every student")
    gradient: LessOptions = field(
        default_factory=lambda: LessOptions(warmup_fraction=0.25, max_length=256),
        metadata={"help": "LESS settings: warmup_fraction, warmup_epochs, lora_r, dim, max_length, checkpointing "
                          "(targets, n and model are set by the study)"})
    train: TrainConfig = train_section()
    eval: EvalConfig = eval_section()
    run_dir: str = opt("runs/study-selection", help="where everything goes")


def task_name(source: str) -> str:
    """``rg:chain_sum`` / ``reasoning_gym:chain_sum`` -> ``chain_sum``."""
    return source.rsplit(":", 1)[-1]


def check(cfg: StudySelectionConfig) -> None:
    """Every setting, before the first stage runs."""

    refuse_owned(cfg, OWNED, "study selection", "model, seed, n, template, train_steps, run_dir")
    tasks = [cfg.target, *cfg.distractors]
    for key, t in [("target", cfg.target)] + [("distractors", t) for t in cfg.distractors]:
        if not t.startswith("rg:"):
            raise fail(key, f"tasks must be rg:<name>, got {t}")
    if len({task_name(t) for t in tasks}) != len(tasks):
        raise fail("distractors", f"the target and distractors must be distinct tasks, got {tasks}")
    unused = set(cfg.distractor_kwargs) - {task_name(t) for t in cfg.distractors}
    if unused:
        print(f"[assay] study selection: distractor_kwargs for {', '.join(sorted(unused))} unused "
              f"(not among the distractors {', '.join(cfg.distractors)})")
    check_disjoint({"pool": ("seed", cfg.seed, cfg.seed + max(cfg.target_pool, cfg.distractor_pool)),
                    "held-out": ("heldout_size", HELDOUT_SEED, HELDOUT_SEED + cfg.heldout_size),
                    "dev": ("dev_size", DEV_SEED, DEV_SEED + cfg.dev_size)})
    if len(cfg.band) != 2:
        raise fail("band", f"must be [min, max], got {cfg.band}")
    for name in ("n", "n_targets", "k", "target_pool", "distractor_pool", "dev_size", "heldout_size",
                 "sample_max_new_tokens", "train_steps"):
        at_least(name, getattr(cfg, name), 1)
    check_template("template", cfg.template)
    check_selectors("pool_selectors", cfg.pool_selectors)
    less.check(cfg.gradient, "gradient", skip=GRADIENT_OWNED)
    for section in ("train", "eval"):
        check_stage(getattr(cfg, section), section, skip=OWNED[section])
    check_task("target", cfg.target, cfg.target_kwargs, "target_kwargs", cfg.seed)
    for t in cfg.distractors:
        check_task("distractors", t, cfg.distractor_kwargs.get(task_name(t), {}), "distractor_kwargs", cfg.seed)
    check_model("model", cfg.model)


def target_share(rows: list[SFTExample], task_of: dict[str, str], target: str) -> float:
    """Fraction of the rows whose problem is from the target task."""
    return sum(task_of[r.problem_id] == target for r in rows) / len(rows) if rows else 0.0


def scores_by_task(scores: dict[str, float], task_of: dict[str, str]) -> dict[str, dict]:
    """Mean LESS score and count per task, from ``select``'s ``scores.json`` (keys ``problem/sample``)."""
    acc: dict[str, list[float]] = {}
    for k, v in scores.items():
        acc.setdefault(task_of[k.rsplit("/", 1)[0]], []).append(v)
    return {t: {"candidates": len(v), "mean_score": sum(v) / len(v)} for t, v in sorted(acc.items())}


def ranking_quality(scores: dict[str, float], task_of: dict[str, str], target: str, ks: tuple = (5, 10, 24)) -> dict:
    """How well the LESS scores alone separate target-task candidates from the rest: ROC AUC (the
    chance a random target item outscores a random other one, ties half) and the target share of
    the top k. Tells "the ranking found the task" apart from "training on it helped"."""
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))
    is_t = [task_of[k.rsplit("/", 1)[0]] == target for k, _ in ranked]
    pos = [v for (k, v), t in zip(ranked, is_t) if t]
    neg = [v for (k, v), t in zip(ranked, is_t) if not t]
    auc = (sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))) if pos and neg else None
    return {"auc": auc, "precision_at": {k: sum(is_t[:k]) / min(k, len(is_t)) for k in ks if is_t}}


def run(cfg: StudySelectionConfig) -> dict:
    check(cfg)
    r = open_run(cfg)
    d = r.dir
    target = task_name(cfg.target)
    held = problem_set(r, "heldout", [rg_config(d / "heldout.jsonl", cfg.target, cfg.target_kwargs, HELDOUT_SEED,
                                                cfg.heldout_size)])
    dev = problem_set(r, "dev", [rg_config(d / "dev.raw.jsonl", cfg.target, cfg.target_kwargs, DEV_SEED, cfg.dev_size)],
                      d / "dev.jsonl", against=[held])
    # Neither held-out questions nor the dev questions (whose samples are the targets) stay in the pool.
    parts = [rg_config(d / f"pool.raw.{task_name(t)}.jsonl", t, kw, cfg.seed, size) for t, kw, size in
             [(cfg.target, cfg.target_kwargs, cfg.target_pool)] +
             [(t, cfg.distractor_kwargs.get(task_name(t), {}), cfg.distractor_pool) for t in cfg.distractors]]
    pool = problem_set(r, "pool", parts, d / "pool.jsonl", against=[held, dev])

    verified = {name: (str(probs), *sample_and_verify(r, probs, cfg.model, cfg.k, cfg.seed, cfg.template,
                                                     cfg.sample_max_new_tokens, tag=name))
                for name, probs in (("pool", pool), ("dev", dev))}

    def select_stage(name: str, files: tuple, out: Path, **kw) -> SelectConfig:
        sel = SelectConfig(problems=files[0], samples=files[1], verdicts=files[2], out=str(out), seed=cfg.seed, **kw)
        r.stage(f"select_{name}", sel, lambda: run_select(sel), inputs=list(sel.less.targets),
                outputs=[str(out) + ".gradient"])
        return sel

    targets = d / "targets.sft.jsonl"
    select_stage("targets", verified["dev"], targets, selectors=[*cfg.pool_selectors, f"random:{cfg.n_targets}"])
    n_targets = len(read_records(targets, SFTExample))
    if n_targets == 0:
        raise InputError(f"study selection: no target examples: the base model solved none of the {cfg.dev_size} dev "
                         f"problems in {cfg.k} tries (see {d / 'targets.sft.jsonl.funnel.json'}); raise dev_size or k")

    sets = {}
    grad = select_stage("gradient-N", verified["pool"], d / "gradient-N.sft.jsonl",
                        selectors=[*cfg.pool_selectors, "less"],
                        less=dataclasses.replace(cfg.gradient, targets=[str(targets)], n=cfg.n, model=cfg.model))
    sets["gradient-N"] = grad.out
    sets["random-N"] = select_stage("random-N", verified["pool"], d / "random-N.sft.jsonl",
                                    selectors=[*cfg.pool_selectors, f"random:{cfg.n}"]).out
    sets["target-only-N"] = select_stage("target-only-N", verified["pool"], d / "target-only-N.sft.jsonl",
                                         selectors=[*cfg.pool_selectors, f"source:{target}", f"random:{cfg.n}"]).out
    if cfg.curated:
        _, samples, verdicts = verified["pool"]
        ccfg = CurateConfig(problems=str(pool), out=str(d / "curated"), references={cfg.model: [samples, verdicts]},
                            steps=[{"difficulty": {"bands": {cfg.model: list(cfg.band)}}},
                                   {"decontaminate": {"benchmarks": [str(held), str(dev)], "n": 13}},
                                   {"dedup": {"threshold": 0.8}}, {"rubric": {}},
                                   {"diverse": {"n": cfg.n, "by": "source", "seed": cfg.seed}}])
        r.stage("curate", ccfg, lambda: run_curation(ccfg), inputs=[samples, verdicts, held, dev])
        sets["curated-N"] = str(d / "curated" / "sft.jsonl")

    base_eval = dataclasses.replace(cfg.eval, model=cfg.model, benchmark=str(held), out=str(d / "eval.base"),
                                    template=cfg.template)
    results = train_and_evaluate(r, sets, base_eval, cfg.train, cfg.model, cfg.seed, cfg.train_steps,
                                 versus="random-N")
    pool_problems = read_records(pool, Problem)
    task_of = {p.id: task_name(p.source) for p in pool_problems}
    for name, data in sets.items():
        results[name]["target_share"] = target_share(read_records(data, SFTExample), task_of, target)
    funnel = json.loads(Path(grad.out + ".funnel.json").read_text())
    pool_size = funnel["funnel"][len(cfg.pool_selectors)]["kept"]  # after the pool selectors, before gradient
    scores = json.loads((Path(grad.out + ".gradient") / "scores.json").read_text())
    by_task = scores_by_task(scores, task_of)
    out = {"target": target, "results": results, "heldout": len(read_records(held, Problem)),
           "train_steps": cfg.train_steps, "n": cfg.n, "n_targets": n_targets,
           "pool": {"problems": len(pool_problems), "candidates": pool_size,
                    "target_share": by_task.get(target, {}).get("candidates", 0) / max(1, pool_size)},
           "scores_by_task": by_task, "ranking": ranking_quality(scores, task_of, target, (5, 10, cfg.n)), "gradient_cost": funnel["funnel"][-1]["cost"],
           "sample_flops": funnel["sample_flops"],
           "dev_sample_flops": sum(x.flops for x in read_records(verified["dev"][1], Sample))}
    write_json(d / "study.json", out)
    (d / "report.md").write_text(format_report(out), encoding="utf-8")
    return out


def format_report(out: dict) -> str:
    cost = out["gradient_cost"]
    lines = [f"# Selection study: gradient vs random vs curated, target task {out['target']}", "",
             f"Pool: {out['pool']['candidates']} candidate examples from {out['pool']['problems']} problems, "
             f"{out['pool']['target_share']:.0%} of them target-task. Every set has N = {out['n']} examples "
             f"(fewer if the pool ran short); every student trains {out['train_steps']} optimizer steps. "
             f"Held-out: {out['heldout']} target problems, greedy pass@1. Gradient targets: {out['n_targets']} "
             "correct base-model samples on separate dev problems.", "",
             "| data | examples | target share | greedy pass@1 | gain vs base (95% CI) | p | vs random-N (95% CI) | p |",
             "|---|---:|---:|---:|---|---:|---|---:|"]
    for name, r in out["results"].items():
        if name == "base":
            lines.append(f"| base model | 0 | | {r['greedy_pass@1']:.3f} | | | | |")
            continue
        if "skipped" in r:
            lines.append(f"| {name} | 0 | | (not trained: {r['skipped']}) | | | | |")
            continue
        lo, hi = r["gain_ci95"]
        vs = r.get("vs_random-N")
        vs_txt = f"{vs['gain']:+.3f} ({vs['gain_ci95'][0]:+.3f} .. {vs['gain_ci95'][1]:+.3f}) | {vs['p_value']:.2g}" \
            if vs else " | "
        lines.append(f"| {name} | {r['examples']} | {r['target_share']:.2f} | {r['greedy_pass@1']:.3f} | "
                     f"{r['gain']:+.3f} ({lo:+.3f} .. {hi:+.3f}) | {r['p_value']:.2g} | {vs_txt} |")
    lines += ["", "Mean LESS score by task (higher = more like the target examples):", "",
              "| task | candidates | mean score |", "|---|---:|---:|"]
    lines += [f"| {t} | {v['candidates']} | {v['mean_score']:.3g} |" for t, v in out["scores_by_task"].items()]
    rk = out["ranking"]
    prec = ", ".join(f"top {k}: {v:.2f}" for k, v in rk["precision_at"].items())
    auc = f"{rk['auc']:.3f}" if rk["auc"] is not None else "n/a"
    lines += ["", f"The LESS ranking alone: target-task share {prec}; ROC AUC target vs other tasks {auc} "
              "(0.5 = no better than chance)."]
    lines += ["", f"Gradient selection cost: {cost['flops']:.3g} FLOPs ({cost['warmup_flops']:.3g} warmup training, "
              f"{cost['feature_flops']:.3g} for {cost['gradients']} per-example gradients over {cost['checkpoints']} "
              f"checkpoints), plus {out['dev_sample_flops']:.3g} FLOPs sampling the dev problems for its targets; "
              f"sampling the pool cost {out['sample_flops']:.3g} FLOPs."]
    return "\n".join(lines) + "\n"
