"""``assay study curation``: does LIMO-style curation beat random data at the same training budget?

From one pool of the base model's own verified samples, three SFT sets are built:

- ``curated-N``: the curation steps (difficulty band, decontamination against the held-out set,
  near-duplicate removal, rubric, diverse selection of N);
- ``random-N``: N correct samples drawn at random (one per problem, deduplicated);
- ``random-4N``: 4N the same way (or as many as the pool has).

Each trains a LoRA student for the same number of optimizer steps (the training budget), and all
are evaluated greedily on the same held-out problems under one protocol, next to the base model.
The report shows the accuracies side by side with McNemar tests against the base and the
curation funnel; the per-item reasons are in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from assay.commands import check_stage
from assay.core.checks import at_least, fail
from assay.core.config import opt
from assay.core.io import read_records, write_json
from assay.core.records import Problem
from assay.data.benchmarks import CHAIN_SUM_SMALL, HELDOUT_SEED
from assay.data.prompts import check_template
from assay.data.sources import check_task
from assay.eval.stage import EvalConfig
from assay.models import DEFAULT_MODEL, check_model
from assay.select.curate import CurateConfig, run_curation
from assay.select.stage import SelectConfig, run_select
from assay.studies.workspace import (
    EVAL_OWNED,
    TRAIN_OWNED,
    check_disjoint,
    eval_section,
    heldout_and_pool,
    open_run,
    refuse_owned,
    sample_and_verify,
    train_and_evaluate,
    train_section,
)
from assay.train import TrainConfig

OWNED = {"train": TRAIN_OWNED, "eval": EVAL_OWNED}


@dataclass
class StudyCurationConfig:
    model: str = opt(DEFAULT_MODEL, help="base model: the reference sampler and the student")
    task: str = opt("rg:chain_sum", help="reasoning-gym task")
    task_kwargs: dict = opt(CHAIN_SUM_SMALL, help="the task's settings")
    pool_size: int = opt(400, help="pool rows (seeds seed..); repeats and held-out questions dropped")
    heldout_size: int = opt(360, help="held-out rows (seeds from 10000; repeats dropped)")
    seed: int = opt(0, help="seed of the pool, samples, selection and training")
    k: int = opt(8, help="samples per pool problem (the difficulty band is counted out of k)")
    n: int = opt(24, help="N: size of the curated set and of random-N (random-4N has 4N)")
    band: list[int] = opt([1, 4], help="difficulty band: keep problems solved this many times out of k (inclusive)")
    template: str = opt("plain-v1", help="prompt template for sampling, training and evaluation")
    sample_max_new_tokens: int = opt(64, help="completion limit when sampling the pool")
    train_steps: int = opt(24, help="the training budget: optimizer steps for every student")
    train: TrainConfig = train_section()
    eval: EvalConfig = eval_section()
    run_dir: str = opt("runs/study-curation", help="where everything goes")


def check(cfg: StudyCurationConfig) -> None:
    """Every setting, before the first stage runs."""

    refuse_owned(cfg, OWNED, "study curation", "model, seed, template, train_steps, run_dir")
    for name in ("pool_size", "heldout_size", "k", "n", "sample_max_new_tokens", "train_steps"):
        at_least(name, getattr(cfg, name), 1)
    check_disjoint({"pool": ("seed", cfg.seed, cfg.seed + cfg.pool_size),
                    "held-out": ("heldout_size", HELDOUT_SEED, HELDOUT_SEED + cfg.heldout_size)})
    if len(cfg.band) != 2 or not 0 <= cfg.band[0] <= cfg.band[1] <= cfg.k:
        raise fail("band", f"must be [min, max] with 0 <= min <= max <= k={cfg.k}, got {cfg.band}")
    check_template("template", cfg.template)
    for section, skip in OWNED.items():
        check_stage(getattr(cfg, section), section, skip=skip)
    check_task("task", cfg.task, cfg.task_kwargs, "task_kwargs", cfg.seed)
    check_model("model", cfg.model)


def run(cfg: StudyCurationConfig) -> dict:
    check(cfg)
    r = open_run(cfg)
    d = r.dir
    held, pool = heldout_and_pool(r, cfg.task, cfg.task_kwargs, HELDOUT_SEED, cfg.heldout_size, cfg.seed,
                                  cfg.pool_size)
    samples, verdicts = sample_and_verify(r, pool, cfg.model, cfg.k, cfg.seed, cfg.template, cfg.sample_max_new_tokens)

    ccfg = CurateConfig(problems=str(pool), out=str(d / "curated"), references={cfg.model: [samples, verdicts]},
                        steps=[{"difficulty": {"bands": {cfg.model: list(cfg.band)}}},
                               {"decontaminate": {"benchmarks": [str(held)], "n": 13}},
                               {"dedup": {"threshold": 0.8}}, {"rubric": {}},
                               {"diverse": {"n": cfg.n, "by": "group", "seed": cfg.seed}}])
    # The references and benchmarks are read too, though named inside nested fields.
    r.stage("curate", ccfg, lambda: run_curation(ccfg), inputs=[samples, verdicts, held])
    sets = {"curated-N": str(d / "curated" / "sft.jsonl")}
    for name, size in (("random-N", cfg.n), ("random-4N", 4 * cfg.n)):
        sel = SelectConfig(problems=str(pool), samples=samples, verdicts=verdicts, out=str(d / f"{name}.sft.jsonl"),
                           selectors=["correct", "finished", "dedup", "max_per_problem:1", f"random:{size}"],
                           seed=cfg.seed)
        r.stage(f"select_{name}", sel, lambda sel=sel: run_select(sel))
        sets[name] = sel.out

    base_eval = dataclasses.replace(cfg.eval, model=cfg.model, benchmark=str(held), out=str(d / "eval.base"),
                                    template=cfg.template)
    results = train_and_evaluate(r, sets, base_eval, cfg.train, cfg.model, cfg.seed, cfg.train_steps)
    funnel = json.loads((d / "curated" / "funnel.json").read_text())["funnel"]
    out = {"results": results, "funnel": funnel, "heldout": len(read_records(held, Problem)),
           "train_steps": cfg.train_steps}
    write_json(d / "study.json", out)
    (d / "report.md").write_text(format_report(out), encoding="utf-8")
    return out


def format_report(out: dict) -> str:
    lines = ["# Curation study: curated-N vs random-N vs random-4N", "",
             f"Held-out: {out['heldout']} problems, greedy pass@1; every student trains for {out['train_steps']} "
             "optimizer steps (the same training budget).", "",
             "| data | examples | greedy pass@1 | gain vs base (95% CI) | McNemar p | train tokens |",
             "|---|---:|---:|---|---:|---:|"]
    for name, r in out["results"].items():
        if name == "base":
            lines.append(f"| base model | 0 | {r['greedy_pass@1']:.3f} | | | |")
        elif "skipped" in r:
            lines.append(f"| {name} | 0 | (not trained: {r['skipped']}) | | | |")
        else:
            lo, hi = r["gain_ci95"]
            lines.append(f"| {name} | {r['examples']} | {r['greedy_pass@1']:.3f} | {r['gain']:+.3f} ({lo:+.3f} .. {hi:+.3f}) "
                         f"| {r['p_value']:.2g} | {r['train_tokens']} |")
    lines += ["", "Curation funnel (per-item reasons in curated/NN_step.rejected.jsonl):", "",
              "| step | kept | dropped |", "|---|---:|---:|"]
    lines += [f"| {f['step']} | {f['kept']} | {f.get('dropped', '')} |" for f in out["funnel"]]
    return "\n".join(lines) + "\n"
