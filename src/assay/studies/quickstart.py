"""``assay quickstart``: the whole loop on the embedded default model, as one resumable run.

evaluate the base model on held-out problems -> sample k solutions per problem on a disjoint
training pool -> verify -> select -> LoRA-train -> evaluate the trained model on the same held-out
problems -> report. Every step is the stage function the individual commands run, recorded in
the run directory's manifest (``assay.core.runs``), so a rerun skips finished stages and resumes the
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

from assay.core.config import opt, save_yaml, to_mapping
from assay.core.io import read_records, write_records
from assay.core.records import Problem
from assay.data.benchmarks import CHAIN_SUM_SMALL, HELDOUT_SEED
from assay.data.text import Match, find_matches
from assay.eval.stage import EvalConfig
from assay.models import DEFAULT_MODEL
from assay.sampling.runner import SampleConfig
from assay.select.stage import SelectConfig
from assay.train import TrainConfig


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
    sample: SampleConfig = field(default_factory=lambda: SampleConfig(temperature=0.7, max_new_tokens=64, max_batch=64),
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
    from assay.core.checks import at_least, check_model, check_stage, check_task, check_template, fail
    from assay.core.config import ConfigError

    defaults = QuickstartConfig()
    for section, names in OWNED.items():
        for name in names:
            if getattr(getattr(cfg, section), name) != getattr(getattr(defaults, section), name):
                what = "is set by the pipeline; set the top-level option instead (model, k, seed, template, run_dir)"
                raise ConfigError("quickstart", f"{section}.{name}", what,
                                  message=f"quickstart: {section}.{name} {what}")
    for name in ("pool_size", "heldout_size", "k"):
        at_least(name, getattr(cfg, name), 1)
    if cfg.heldout_seed < cfg.seed + cfg.pool_size and cfg.seed < cfg.heldout_seed + cfg.heldout_size:
        raise fail("heldout_seed", f"pool seeds {cfg.seed}..{cfg.seed + cfg.pool_size - 1} overlap held-out "
                                   f"seeds {cfg.heldout_seed}..{cfg.heldout_seed + cfg.heldout_size - 1}")
    check_template("template", cfg.template)
    for section in OWNED:
        check_stage(getattr(cfg, section), section, skip=OWNED[section])
    check_task("task", cfg.task, cfg.task_kwargs, "task_kwargs", cfg.seed)
    check_model("model", cfg.model)


def decontaminate(pool: list[Problem], heldout: list[Problem]) -> tuple[list[Problem], list[dict]]:
    """Drop pool problems whose question also appears (normalised) in the held-out set."""
    hits = find_matches([p.question for p in pool], [h.question for h in heldout], Match("exact"))
    kept, dropped = [], []
    for p, j in zip(pool, hits):
        if j is None:
            kept.append(p)
        else:
            dropped.append({**dataclasses.asdict(p), "reason": f"same question as held-out problem {heldout[j].id}"})
    return kept, dropped


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


def _write_problems(path: Path, source: str, kwargs: dict, seed: int, size: int) -> dict:
    from assay.data.problems import ProblemsConfig, cli_run

    cli_run(ProblemsConfig(source=source, out=str(path), seed=seed, size=size, task_kwargs=dict(kwargs), distinct=True))
    return {"problems": len(read_records(path, Problem))}


def run(cfg: QuickstartConfig) -> dict:
    from assay.core.progress import interactive
    from assay.core.runs import Run
    from assay.eval import metrics, report
    from assay.eval.stage import compare, run_eval
    from assay.sampling import run_sampling
    from assay.select.stage import run_select
    from assay.train import run_training
    from assay.verify import stage as verify

    cfg = resolve(cfg)
    run_ = Run(cfg.run_dir)
    d = run_.dir
    # The resolved recipe: `assay run <run_dir>/recipe.yaml` reproduces this run.
    save_yaml(d / "recipe.yaml", {"pipeline": "quickstart", **to_mapping(cfg)})
    heldout, pool_raw, pool = d / "heldout.jsonl", d / "pool.raw.jsonl", d / "pool.jsonl"
    task = {"task": cfg.task, "task_kwargs": cfg.task_kwargs, "distinct": True}

    run_.stage("heldout", {**task, "seed": cfg.heldout_seed, "size": cfg.heldout_size},
               lambda: _write_problems(heldout, cfg.task, cfg.task_kwargs, cfg.heldout_seed, cfg.heldout_size),
               outputs=[heldout, Path(str(heldout) + ".rejected.jsonl")])

    def make_pool():
        _write_problems(pool_raw, cfg.task, cfg.task_kwargs, cfg.seed, cfg.pool_size)
        kept, dropped = decontaminate(read_records(pool_raw, Problem), read_records(heldout, Problem))
        write_records(pool, kept)
        write_records(d / "pool.decontaminated.jsonl", dropped)
        print(f"[assay] pool: {len(kept)} problems, {len(dropped)} dropped as held-out duplicates")
        return {"problems": len(kept), "dropped_heldout_duplicates": len(dropped)}

    run_.stage("pool", {**task, "seed": cfg.seed, "size": cfg.pool_size}, make_pool, inputs=[heldout],
               outputs=[pool, d / "pool.decontaminated.jsonl"])

    base_eval = dataclasses.replace(cfg.eval, model=cfg.model, out=str(d / "eval_base"))
    run_.stage("eval_base", to_mapping(base_eval), lambda: run_eval(base_eval), inputs=[heldout],
               outputs=[d / "eval_base"], models=[cfg.model])
    run_.stage("sample", to_mapping(cfg.sample), lambda: run_sampling(cfg.sample), inputs=[pool],
               outputs=[cfg.sample.out], models=[cfg.model])
    vcfg = verify.VerifyConfig(problems=str(pool), samples=cfg.sample.out, out=str(d / "verdicts.jsonl"))
    run_.stage("verify", to_mapping(vcfg), lambda: verify.cli_run(vcfg), inputs=[pool, cfg.sample.out],
               outputs=[vcfg.out])
    scfg = metrics.StatsConfig(samples=cfg.sample.out, verdicts=vcfg.out, out=str(d / "pool_stats.json"),
                               ks=[k for k in (1, 2, 4, 8, 16, 32, 64) if k <= cfg.k], problems=str(pool))
    run_.stage("pool_stats", to_mapping(scfg), lambda: metrics.cli_run(scfg), inputs=[cfg.sample.out, vcfg.out],
               outputs=[scfg.out])
    run_.stage("select", to_mapping(cfg.select), lambda: run_select(cfg.select),
               inputs=[pool, cfg.sample.out, vcfg.out], outputs=[cfg.select.out])
    run_.stage("train", to_mapping(cfg.train), lambda: run_training(cfg.train, progress=interactive()),
               inputs=[cfg.select.out], outputs=[cfg.train.out], models=[cfg.model])
    trained_eval = dataclasses.replace(cfg.eval, model=cfg.train.out, out=str(d / "eval_trained"))
    run_.stage("eval_trained", to_mapping(trained_eval), lambda: run_eval(trained_eval),
               inputs=[heldout, cfg.train.out], outputs=[d / "eval_trained"], models=[cfg.train.out])
    cmp_ = compare(d / "eval_base", d / "eval_trained")
    report.write_report(d)
    return cmp_


def cli_run(cfg: QuickstartConfig) -> int:
    from assay.eval.report import before_after_table

    run(cfg)
    print(before_after_table(Path(cfg.run_dir)))
    print(f"[assay] report: {Path(cfg.run_dir) / 'report.md'}")
    return 0
