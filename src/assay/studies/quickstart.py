"""``assay quickstart``: the whole loop on the embedded default model, as one resumable run.

evaluate the base model on held-out problems -> sample k solutions per problem on a disjoint
training pool -> verify -> select -> LoRA-train -> evaluate the trained model on the same held-out
problems -> report. Every step is the library function of the stage the individual commands run
(``run_problems``, ``run_sample``, ``run_verify``, ...; the shared steps through
``assay.studies.workspace``), recorded in the run directory's manifest (``assay.core.runs``), so a rerun skips finished stages and resumes the
one that was interrupted.

The default is sized to show a real effect in minutes on 2 CPU cores: reasoning-gym chain_sum
with two terms of 1-2 digits (the base model's greedy accuracy is about a quarter), the prompt
template on which the base model scores best (``plain-v1``, measured against the others in
benchmarks/RESULTS.md), and a held-out set of ~300 distinct questions, large enough for
McNemar's test to separate the gain from noise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from assay.commands import check_stage
from assay.core.checks import at_least
from assay.core.config import opt
from assay.core.progress import interactive
from assay.data.benchmarks import CHAIN_SUM_SMALL, HELDOUT_SEED
from assay.data.prompts import check_template
from assay.data.sources import check_task
from assay.eval import report
from assay.eval.metrics import StatsConfig, format_table, run_stats
from assay.eval.report import before_after_table
from assay.eval.stage import EvalConfig, compare, run_eval
from assay.models import DEFAULT_MODEL, check_model
from assay.sampling.runner import SampleConfig
from assay.select.stage import SelectConfig, run_select
from assay.studies.workspace import check_disjoint, heldout_and_pool, open_run, refuse_owned, sample_and_verify
from assay.train import TrainConfig, run_training


@dataclass
class QuickstartConfig:
    model: str = opt(DEFAULT_MODEL, help="base model spec")
    task: str = opt("rg:chain_sum", help="reasoning-gym task the pool and the held-out set are drawn from")
    task_kwargs: dict = opt(CHAIN_SUM_SMALL, help="the task's settings")
    pool_size: int = opt(320, help="training-pool rows drawn (generator seeds seed..seed+pool_size-1); repeated "
                                   "questions and questions also in the held-out set are dropped")
    heldout_size: int = opt(360, help="held-out rows drawn (generator seeds heldout_seed..; disjoint from the pool); "
                                      "repeated questions are dropped, so slightly fewer problems remain")
    heldout_seed: int = opt(HELDOUT_SEED, help="first generator seed of the held-out set")
    seed: int = opt(0, help="seed of the pool, the samples, the selection and the training")
    k: int = opt(4, help="samples per training problem")
    template: str = opt("plain-v1", help="prompt template for sampling, training and evaluation")
    run_dir: str = opt("runs/quickstart", help="where every artifact, the manifest and the report go")
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(temperature=0.7, max_new_tokens=64, max_batch=128),
                                 metadata={"help": "sampling settings (problems/out/model/n/seed/template are set by the pipeline)"})
    select: SelectConfig = field(default_factory=lambda: SelectConfig(selectors=["correct", "finished", "dedup", "max_per_problem:4"]),
                                 metadata={"help": "selection (inputs/out/seed are set by the pipeline)"})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(method="lora", lr=2e-4, epochs=2, batch_size=8),
                               metadata={"help": "training (data/out/model/seed are set by the pipeline)"})
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(max_new_tokens=256, max_batch=64),
                             metadata={"help": "evaluation (model/benchmark/out/template are set by the pipeline)"})


# Fields of the nested stage configs that the pipeline owns: setting them in a recipe is a mistake.
OWNED = {
    "sample": ("problems", "out", "model", "n", "seed", "template"),
    "select": ("problems", "samples", "verdicts", "out", "seed"),
    "train": ("data", "out", "model", "seed"),
    "eval": ("model", "benchmark", "out", "template", "limit"),
}


def check(cfg: QuickstartConfig) -> None:
    """Every setting of every section, before the first stage runs (a typo in ``train`` would
    otherwise surface only after the held-out set, the pool, an evaluation and sampling)."""

    refuse_owned(cfg, OWNED, "quickstart", "model, k, seed, template, run_dir", by="the pipeline")
    for name in ("pool_size", "heldout_size", "k"):
        at_least(name, getattr(cfg, name), 1)
    check_disjoint({"held-out": ("heldout_seed", cfg.heldout_seed, cfg.heldout_seed + cfg.heldout_size),
                    "pool": ("seed", cfg.seed, cfg.seed + cfg.pool_size)})
    check_template("template", cfg.template)
    for section in OWNED:
        check_stage(getattr(cfg, section), section, skip=OWNED[section])
    check_task("task", cfg.task, cfg.task_kwargs, "task_kwargs", cfg.seed)
    check_model("model", cfg.model)


def resolve(cfg: QuickstartConfig) -> QuickstartConfig:
    """Check every setting, then fill in the pipeline-owned fields of the stage configs, so the saved
    config is the one run."""
    check(cfg)
    d = Path(cfg.run_dir)
    return dataclasses.replace(
        cfg,
        sample=dataclasses.replace(cfg.sample, problems=str(d / "pool.jsonl"), out=str(d / "samples.jsonl"),
                                   model=cfg.model, n=cfg.k, seed=cfg.seed, template=cfg.template),
        select=dataclasses.replace(cfg.select, problems=str(d / "pool.jsonl"), samples=str(d / "samples.jsonl"),
                                   verdicts=str(d / "verdicts.jsonl"), out=str(d / "sft.jsonl"), seed=cfg.seed),
        train=dataclasses.replace(cfg.train, data=str(d / "sft.jsonl"), out=str(d / "trained"), model=cfg.model,
                                  seed=cfg.seed),
        eval=dataclasses.replace(cfg.eval, benchmark=str(d / "heldout.jsonl"), template=cfg.template),
    )


def run(cfg: QuickstartConfig) -> dict:
    """The whole loop; the paired before/after comparison on the held-out problems."""

    cfg = resolve(cfg)
    run_ = open_run(cfg)  # saves the resolved recipe: `assay run <run_dir>/recipe.yaml`
    d = run_.dir
    heldout, pool = heldout_and_pool(run_, cfg.task, cfg.task_kwargs, cfg.heldout_seed, cfg.heldout_size, cfg.seed,
                                     cfg.pool_size, say=True)
    base_eval = dataclasses.replace(cfg.eval, model=cfg.model, out=str(d / "eval_base"))
    run_.stage("eval_base", base_eval, lambda: run_eval(base_eval))
    samples, verdicts = sample_and_verify(run_, pool, cfg.model, cfg.k, cfg.seed, cfg.template,
                                          cfg.sample.max_new_tokens, sample=cfg.sample)
    scfg = StatsConfig(samples=samples, verdicts=verdicts, out=str(d / "pool_stats.json"),
                       ks=[k for k in (1, 2, 4, 8, 16, 32, 64) if k <= cfg.k], problems=str(pool))

    def stats():
        res = run_stats(scfg)
        print(format_table(res.stats))
        print(f"[assay] wrote {res.out}")
        return {"out": res.out}

    run_.stage("pool_stats", scfg, stats)
    run_.stage("select", cfg.select, lambda: run_select(cfg.select))
    run_.stage("train", cfg.train, lambda: run_training(cfg.train, progress=interactive()))
    trained_eval = dataclasses.replace(cfg.eval, model=cfg.train.out, out=str(d / "eval_trained"))
    run_.stage("eval_trained", trained_eval, lambda: run_eval(trained_eval))
    cmp_ = compare(d / "eval_base", d / "eval_trained")
    report.write_report(d)
    return cmp_


def print_result(cfg: QuickstartConfig, result: dict) -> None:
    print(before_after_table(Path(cfg.run_dir)))
    print(f"[assay] report: {Path(cfg.run_dir) / 'report.md'}")


def cli_run(cfg: QuickstartConfig) -> int:
    print_result(cfg, run(cfg))
    return 0
