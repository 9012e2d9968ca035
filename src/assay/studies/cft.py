"""``assay study cft``: does critiquing one problem's solutions make a better problem solver?

One-Shot CFT (Wang et al., 2025) reports that fine-tuning on ~600 consistent critiques of 100
solutions to ONE problem lifts Qwen2.5-Math-7B by +14.9 points over six benchmarks. This study
asks the same question of the embedded models, with the comparisons the CFT papers make:

- ``base``: the student as it is;
- ``one-shot-CFT``: the seed problem (chosen by the student's own pass rate, in a band of moderate
  difficulty) is solved by every generator at several temperatures, each solution is critiqued by
  every teacher, and the consistent critiques are the training rows;
- ``SFT``: the imitation baseline: the seed problem's *correct* solutions as plain SFT rows;
- ``multi-problem-CFT``: one consistent critique each of many problems, as many rows as one-shot.

Every arm trains the same number of optimizer steps; each checkpoint is evaluated greedily on a
validation split of the target task (the curve of accuracy over steps), the best one there is
evaluated once on the held-out target set and on another task (the paper claims transfer), with
McNemar tests against the base and against SFT. The test sets never choose anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from assay.commands import check_stage
from assay.core.checks import at_least, fail, one_of
from assay.core.config import ConfigError, opt
from assay.core.io import read_problems, read_records, write_json, write_records
from assay.core.records import SFTExample
from assay.critique.solutions import GENERATORS, Solution, SolutionsConfig, run_solutions
from assay.critique.stage import TEACHER, CritiqueConfig, run_critique
from assay.data.benchmarks import BENCHMARKS, CHAIN_SUM_SMALL, HELDOUT_SEED
from assay.data.prompts import TEMPLATES, check_template
from assay.data.sources import check_task
from assay.eval.stage import EvalConfig, compare, run_eval
from assay.models import DEFAULT_MODEL, check_model
from assay.sampling.backends import BACKENDS, resolve_options
from assay.studies.cft_report import format_report
from assay.studies.workspace import (
    EVAL_OWNED,
    TRAIN_OWNED,
    check_disjoint,
    eval_metrics,
    eval_section,
    open_run,
    problem_set,
    refuse_owned,
    rg_config,
    train_section,
    train_summary,
)
from assay.train import TrainConfig, run_training

OWNED = {"train": TRAIN_OWNED + ("save_steps", "keep_checkpoints"), "eval": EVAL_OWNED}
VALIDATION_SEED = 20_000
MULTI_SEED = 5_000
ARITH = BENCHMARKS.get("rg-basic-arithmetic-v1")


@dataclass
class StudyCFTConfig:
    student: str = opt(DEFAULT_MODEL, help="the model fine-tuned in every arm")
    task: str = opt("rg:chain_sum", help="the target task (reasoning-gym)")
    task_kwargs: dict = opt(CHAIN_SUM_SMALL, help="the target task's settings")
    transfer_task: str = opt(ARITH.source, help="another task the students are tested on (transfer)")
    transfer_kwargs: dict = opt(dict(ARITH.task_kwargs), help="its settings")
    seed: int = opt(0, help="seed of the seed-problem pool, sampling, the dataset caps and training")
    seed_pool: int = opt(16, help="candidate seed problems (seeds seed..); the student's pass rate picks one")
    student_n: int = opt(16, help="the student's tries per candidate seed problem")
    band: list = opt([0.1, 0.7], help="keep seed problems the student solves this share of tries (inclusive)")
    seeds: int = opt(1, help="seed problems of the one-shot arm (1: one-shot)")
    generators: list = opt(GENERATORS, help="models that write the seed problem's solutions")
    temperatures: list = opt([0.6, 1.0], help="each generator samples at each temperature")
    n: int = opt(4, help="solutions per (generator, temperature)")
    teachers: list = opt([TEACHER, "qwen2.5-coder-0.5b-instruct"], help="models that critique every solution")
    critique_max_new_tokens: int = opt(640, help="critique length limit")
    critique_min_tokens: int = opt(24, help="drop critiques shorter than this (a bare 'Conclusion: right' teaches "
                                            "nothing)")
    critique_backend: str = opt("hf", help="the teachers' backend (hf, vllm, openai)")
    critique_options: dict = opt({}, help="that backend's own options (see `assay sample --help`)")
    multi_pool: int = opt(32, help="problems of the multi-problem arm (seeds from 5000); one critique each kept")
    multi_generators: list = opt(["qwen2.5-coder-0.5b-instruct"], help="multi-problem arm: who writes the solutions "
                                                                        "(one each, t=0.7)")
    multi_teachers: list = opt([TEACHER], help="multi-problem arm: who critiques them")
    solutions_backend: str = opt("hf", help="the generators' and the student's sampling backend (hf, vllm, openai)")
    solutions_options: dict = opt({}, help="that backend's own options")
    template: str = opt("boxed-v1", help="the solving prompt: generators, the SFT arm and every evaluation")
    solution_max_new_tokens: int = opt(320, help="solution length limit")
    train_steps: int = opt(16, help="optimizer steps of every arm (the training budget)")
    eval_every: int = opt(4, help="evaluate a checkpoint on the validation split every this many steps")
    train: TrainConfig = train_section(method="full", lr=2e-5, batch_size=4, max_length=1024, warmup=0.1)
    validation_size: int = opt(32, help="validation rows of the target task (seeds from 20000): checkpoint choice")
    heldout_size: int = opt(80, help="held-out rows of the target task (seeds from 10000)")
    transfer_size: int = opt(50, help="held-out rows of the transfer task (seeds from 10000)")
    eval: EvalConfig = eval_section()
    run_dir: str = opt("runs/study-cft", help="where everything goes")


def check(cfg: StudyCFTConfig) -> None:
    """Every setting, before the first stage runs."""
    refuse_owned(cfg, OWNED, "study cft", "student, seed, template, train_steps, eval_every, run_dir")
    for name in ("seed_pool", "student_n", "seeds", "n", "critique_max_new_tokens", "multi_pool",
                 "solution_max_new_tokens", "train_steps", "eval_every", "validation_size", "heldout_size",
                 "transfer_size"):
        at_least(name, getattr(cfg, name), 1)
    if cfg.train_steps % cfg.eval_every:
        raise fail("eval_every", f"must divide train_steps={cfg.train_steps}, got {cfg.eval_every}")
    check_disjoint({"seed pool": ("seed", cfg.seed, cfg.seed + cfg.seed_pool),
                    "multi-problem pool": ("multi_pool", MULTI_SEED, MULTI_SEED + cfg.multi_pool),
                    "held-out": ("heldout_size", HELDOUT_SEED, HELDOUT_SEED + cfg.heldout_size),
                    "validation": ("validation_size", VALIDATION_SEED, VALIDATION_SEED + cfg.validation_size)})
    check_template("template", cfg.template)
    check_task("task", cfg.task, cfg.task_kwargs, "task_kwargs", cfg.seed)
    check_task("transfer_task", cfg.transfer_task, cfg.transfer_kwargs, "transfer_kwargs", HELDOUT_SEED)
    check_model("student", cfg.student)
    check_stage(_solutions(cfg, Path(cfg.run_dir)), skip=("generators",))
    for name in ("generators", "multi_generators", "teachers", "multi_teachers"):
        if len(set(getattr(cfg, name))) < len(getattr(cfg, name)):
            raise fail(name, f"names a model twice: {getattr(cfg, name)}")
    for name in ("generators", "multi_generators") + (("teachers", "multi_teachers") if cfg.critique_backend == "hf"
                                                       else ()):
        if not getattr(cfg, name):
            raise fail(name, "give at least one model")
        for g in getattr(cfg, name):
            check_model(name, g)
    one_of("critique_backend", cfg.critique_backend, BACKENDS.names(), "generation backend")
    try:
        resolve_options(cfg.critique_backend, cfg.critique_options)
    except ConfigError as exc:  # named as the study's key, not the stage's
        raise fail(exc.key.replace("backend_options", "critique_options", 1), exc.detail) from None
    for section, skip in OWNED.items():
        check_stage(getattr(cfg, section), section, skip=skip)


def _solutions(cfg: StudyCFTConfig, d: Path, multi: bool = False) -> SolutionsConfig:
    if multi:
        return SolutionsConfig(problems=str(d / "multi.problems.jsonl"), out=str(d / "multi.solutions.jsonl"),
                               generators=list(cfg.multi_generators), temperatures=[0.7], n=1, template=cfg.template,
                               max_new_tokens=cfg.solution_max_new_tokens, seed=cfg.seed,
                               backend=cfg.solutions_backend, backend_options=dict(cfg.solutions_options))
    return SolutionsConfig(problems=str(d / "seedpool.jsonl"), out=str(d / "oneshot.solutions.jsonl"),
                           generators=list(cfg.generators), temperatures=list(cfg.temperatures), n=cfg.n,
                           template=cfg.template, max_new_tokens=cfg.solution_max_new_tokens, seed=cfg.seed,
                           student=cfg.student, student_n=cfg.student_n, band=list(cfg.band), seeds=cfg.seeds,
                           backend=cfg.solutions_backend, backend_options=dict(cfg.solutions_options))


def _critique(cfg: StudyCFTConfig, d: Path, tag: str, teachers: list, rows: int = 0) -> CritiqueConfig:
    problems = d / ("seedpool.jsonl" if tag == "oneshot" else "multi.problems.jsonl")
    return CritiqueConfig(problems=str(problems), solutions=str(d / f"{tag}.solutions.jsonl"),
                          out=str(d / f"{tag}.critiques.jsonl"), dataset=str(d / f"{tag}.cft.jsonl"),
                          teachers=list(teachers), max_new_tokens=cfg.critique_max_new_tokens, seed=cfg.seed,
                          generator=cfg.critique_backend, backend_options=dict(cfg.critique_options),
                          per_problem=1 if tag == "multi" else 0, rows=rows, max_length=cfg.train.max_length,
                          min_tokens=cfg.critique_min_tokens, cache=str(d / "cache" / "critiques.jsonl"),
                          tokenizer=cfg.student)


def sft_rows(problems_path: str, solutions_path: str, template: str, out: str) -> dict:
    """The imitation baseline: every correct solution as a (solving prompt, solution) row."""
    by_id = {p.id: p for p in read_problems(problems_path)}
    rows = []
    for s in read_records(solutions_path, Solution):
        if s.correct:
            msgs = TEMPLATES.get(template).messages(by_id[s.problem_id].question)
            rows.append(SFTExample(id=f"{s.problem_id}/{s.sample_index}", problem_id=s.problem_id,
                                   messages=msgs + [{"role": "assistant", "content": s.text}],
                                   sample_index=s.sample_index, model=s.generator, prompt_template=template,
                                   completion_tokens=s.completion_tokens, selected_by="correct"))
    return {"rows": write_records(out, rows)}


def _eval(r, cfg: StudyCFTConfig, name: str, model: str, bench: Path):
    ecfg = dataclasses.replace(cfg.eval, model=model, benchmark=str(bench), out=str(r.dir / f"eval.{name}"),
                               template=cfg.template)
    r.stage(f"eval_{name}", ecfg, lambda: run_eval(ecfg))
    return ecfg.out


def _problems(r, cfg: StudyCFTConfig) -> dict[str, Path]:
    d = r.dir
    sets = {
        "validation": problem_set(r, "validation", [rg_config(d / "validation.jsonl", cfg.task, cfg.task_kwargs,
                                                              VALIDATION_SEED, cfg.validation_size)]),
        "heldout": problem_set(r, "heldout", [rg_config(d / "heldout.jsonl", cfg.task, cfg.task_kwargs, HELDOUT_SEED,
                                                        cfg.heldout_size)]),
        "transfer": problem_set(r, "transfer", [rg_config(d / "transfer.jsonl", cfg.transfer_task,
                                                          cfg.transfer_kwargs, HELDOUT_SEED, cfg.transfer_size)]),
    }
    against = [sets["validation"], sets["heldout"]]
    sets["seedpool"] = problem_set(r, "seedpool", [rg_config(d / "seedpool.raw.jsonl", cfg.task, cfg.task_kwargs,
                                                             cfg.seed, cfg.seed_pool)], d / "seedpool.jsonl",
                                   against=against)
    sets["multi"] = problem_set(r, "multi", [rg_config(d / "multi.raw.jsonl", cfg.task, cfg.task_kwargs, MULTI_SEED,
                                                       cfg.multi_pool)], d / "multi.problems.jsonl",
                                against=against + [sets["seedpool"]])
    return sets


def _data(r, cfg: StudyCFTConfig) -> tuple[dict[str, str], dict]:
    """The three training sets, and what made them (seed choice, funnels, confusion matrices)."""
    d = r.dir
    sol = _solutions(cfg, d)
    r.stage("oneshot_solutions", sol, lambda: _said(run_solutions(sol)))
    one = _critique(cfg, d, "oneshot", cfg.teachers)
    r.stage("oneshot_critique", one, lambda: _said(run_critique(one)))
    sft = str(d / "oneshot.sft.jsonl")
    r.stage("oneshot_sft", {"template": cfg.template, "solutions": sol.out}, lambda: sft_rows(
        sol.out + ".seeds.jsonl", sol.out, cfg.template, sft), inputs=[sol.out], outputs=[sft])
    n_rows = len(read_records(one.dataset, SFTExample))
    msol = _solutions(cfg, d, multi=True)
    r.stage("multi_solutions", msol, lambda: _said(run_solutions(msol)))
    multi = _critique(cfg, d, "multi", cfg.multi_teachers, rows=max(n_rows, 1))
    r.stage("multi_critique", multi, lambda: _said(run_critique(multi)))
    info = {"seeds": json.loads(Path(sol.out + ".seeds.json").read_text()),
            "solutions": json.loads(Path(sol.out + ".summary.json").read_text()),
            "oneshot": json.loads(Path(one.out + ".summary.json").read_text()),
            "multi": json.loads(Path(multi.out + ".summary.json").read_text()),
            "multi_solutions": json.loads(Path(msol.out + ".summary.json").read_text())}
    return {"one-shot-CFT": one.dataset, "SFT": sft, "multi-problem-CFT": multi.dataset}, info


def _said(result):
    print(result.line())
    return result


def _train_arm(r, cfg: StudyCFTConfig, name: str, data: str, sets: dict) -> dict:
    """Train one arm with a checkpoint every ``eval_every`` steps; its validation curve; the step it picks."""
    d = r.dir
    tcfg = dataclasses.replace(cfg.train, data=data, out=str(d / f"{name}.student"), model=cfg.student, seed=cfg.seed,
                               max_steps=cfg.train_steps, save_steps=cfg.eval_every, keep_checkpoints=0)
    r.stage(f"train_{name}", tcfg, lambda: run_training(tcfg, progress=False))
    curve = {}
    for step in range(cfg.eval_every, cfg.train_steps + 1, cfg.eval_every):
        model = tcfg.out if step == cfg.train_steps else str(Path(tcfg.out) / "checkpoints" / f"checkpoint-{step}")
        curve[step] = eval_metrics(_eval(r, cfg, f"{name}.val.{step}", model, sets["validation"]))["greedy_pass@1"]
    best = max(curve, key=lambda s: (curve[s], s))  # ties go to the later step: the full budget is the default
    model = tcfg.out if best == cfg.train_steps else str(Path(tcfg.out) / "checkpoints" / f"checkpoint-{best}")
    summ = train_summary(tcfg.out)
    return {"examples": len(read_records(data, SFTExample)), "curve": curve, "chosen_step": best, "model": model,
            "train_tokens": summ["tokens"], "train_flops": summ["flops"], "steps": summ["steps"]}


def run(cfg: StudyCFTConfig) -> dict:
    check(cfg)
    r = open_run(cfg)
    sets = _problems(r, cfg)
    data, info = _data(r, cfg)
    base_val = eval_metrics(_eval(r, cfg, "base.val", cfg.student, sets["validation"]))["greedy_pass@1"]
    arms = {"base": {"examples": 0, "curve": {0: base_val}, "chosen_step": 0, "model": cfg.student}}
    for name, path in data.items():
        if not read_records(path, SFTExample):
            arms[name] = {"examples": 0, "skipped": "no rows"}
            continue
        arms[name] = _train_arm(r, cfg, name, path, sets)
    for name, arm in arms.items():
        if "skipped" in arm:
            continue
        for split in ("heldout", "transfer"):
            out = _eval(r, cfg, f"{name}.{split}", arm["model"], sets[split])
            arm[split] = {"greedy_pass@1": eval_metrics(out)["greedy_pass@1"], "out": out}
    for name, arm in arms.items():
        if name == "base" or "skipped" in arm:
            continue
        for split in ("heldout", "transfer"):
            for ref in ("base", "SFT"):
                if ref != name and "skipped" not in arms.get(ref, {"skipped": 1}):
                    c = compare(arms[ref][split]["out"], arm[split]["out"])
                    arm[split][f"vs_{ref}"] = {"gain": c["gain"], "gain_ci95": c["gain_ci95"], "p_value": c["p_value"]}
    out = {"arms": arms, "data": info, "train_steps": cfg.train_steps, "eval_every": cfg.eval_every,
           "student": cfg.student, "teachers": list(cfg.teachers), "generators": list(cfg.generators),
           "sizes": {k: len(read_problems(v)) for k, v in sets.items()}, "template": cfg.template}
    write_json(r.dir / "study.json", out)
    (r.dir / "report.md").write_text(format_report(out), encoding="utf-8")
    return out
