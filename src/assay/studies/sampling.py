"""``assay study sampling``: weak-cheap vs strong-expensive sampling at matched compute.

Bansal et al. (2024): at a fixed sampling budget, k_WC = (N_SE / N_WC) k_SE samples from the
smaller model can beat k_SE samples from the larger one as training data, because they cover more
problems (coverage@k) with more distinct correct solutions (diversity@k), at some cost in false
positives (right answer, wrong reasoning). This study runs both arms on the same problems:

1. plan: the budget is the SE arm's cost at ``k_se`` samples per problem, with each model's own
   prompt lengths (tokenizers differ) and a completion-length guess (``assay.sampling.plan``);
2. sample each arm with that budget enforced on realized FLOPs (``assay.sampling.budget``), so
   the two arms' FLOPs match to within one sample;
3. verify, then per arm: coverage@k and diversity@k along the k axis, with FLOPs per problem at
   each k, so the curves can be compared at equal compute;
4. false positives: judge the answer-correct samples with an LLM judge (``judge=<model spec>``)
   or export human audit sheets (``judge=export``; import them with ``assay judge --backend
   import``);
5. optionally (``students=true``) fine-tune students on each arm's correct samples in the paper's
   setups (knowledge distillation: WC student on SE data; self-improvement: WC on WC data;
   weak-to-strong: SE student on WC data), evaluate them on held-out problems;
6. write ``report.md`` with the side-by-side table and plots.

Everything goes into one run directory with a manifest; every stage resumes.

The settings share the other studies' names: ``pool_size`` (was ``problems``), ``heldout_size``
(was ``heldout``), ``train`` the students' training section (was ``student_train``; the switch
that was ``train=true`` is ``students=true``). The old names still work in recipes and overrides.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from assay.commands import check_stage
from assay.core.checks import at_least, fail
from assay.core.config import ConfigError, opt
from assay.core.io import read_records, write_json, write_records
from assay.core.progress import interactive
from assay.core.records import Problem, Sample, Verdict
from assay.data.benchmarks import CHAIN_SUM_SMALL, HELDOUT_SEED
from assay.data.prompts import check_template
from assay.data.sources import check_task
from assay.data.text import normalize_text
from assay.eval.stage import EvalConfig, run_eval
from assay.models import check_model, stats_for
from assay.sampling import SampleConfig
from assay.sampling.backends import greedy_protocol, make_generator, resolve_options
from assay.sampling.budget import run_budgeted
from assay.sampling.plan import Arm, mean_prompt_tokens, samples_for_budget
from assay.select.stage import SelectConfig, check_selectors, run_select
from assay.studies.workspace import (
    check_disjoint,
    eval_metrics,
    open_run,
    problem_set,
    refuse_owned,
    rg_config,
    train_section,
)
from assay.train import (
    TrainConfig,  # noqa: F401  (the type of the ``train`` section)
    run_training,
)
from assay.verify.judge import LLMJudge, correct_items, export_audit, false_positive_rate, judgments_to_dicts
from assay.verify.stage import VerifyConfig, run_verify

# Fields of the students' training section that the study fills in itself.
OWNED = {"train": ("data", "out", "model", "seed")}


def _legacy(data: dict, where: str) -> dict:
    """The names this study's settings had before the studies shared one vocabulary."""
    if "train" in data and not isinstance(data["train"], dict):
        data["students"] = data.pop("train")  # `train=true` was the switch for the students
    for old, new in (("student_train", "train"), ("problems", "pool_size"), ("heldout", "heldout_size")):
        if old in data:
            if new in data:
                raise ConfigError(where, old, f"'{old}' is the old name of '{new}'; give only one of them")
            data[new] = data.pop(old)
    return data


@dataclass
class StudySamplingConfig:
    wc: str = opt("smollm2-135m-instruct", help="the weaker-cheaper model (fewer parameters)")
    se: str = opt("gemma3-270m", help="the stronger-expensive model (more parameters)")
    task: str = opt("rg:chain_sum", help="reasoning-gym task")
    task_kwargs: dict = opt(CHAIN_SUM_SMALL, help="the task's settings")
    LEGACY = staticmethod(_legacy)
    pool_size: int = opt(240, help="problem rows both arms sample (generator seeds seed..; repeated questions "
                                   "dropped); was 'problems'")
    seed: int = opt(0, help="problem and sampling seed")
    k_se: int = opt(4, help="samples per problem of the SE model; the budget is what they cost")
    completion_tokens: float = opt(12.0, help="completion-length guess for the plan (realized FLOPs are matched anyway)")
    template: str = opt("plain-v1", help="prompt template for both arms")
    temperature: float = opt(0.7, help="sampling temperature for both arms")
    max_new_tokens: int = opt(32, help="completion limit for both arms")
    stop: list = opt(["\n"], help="stop strings for both arms (the base model never emits EOS on its own)")
    max_batch: int = opt(64, help="rows decoded together")
    judge: str = opt("export", help="'' (none), 'export' (human audit CSVs), or a model spec for an LLM judge")
    judge_limit: int = opt(200, help="judge at most this many answer-correct samples per arm")
    students: bool = opt(False, help="fine-tune and evaluate students in the paper's three setups (was 'train')")
    train: TrainConfig = train_section(epochs=2)
    heldout_size: int = opt(200, help="students=true: held-out rows (seeds from 10000) for the students; was 'heldout'")
    student_selectors: list = opt(["correct", "finished", "dedup"],
                                  help="students=true: how each arm's samples become SFT data")
    run_dir: str = opt("runs/study-sampling", help="where everything goes")


def check(cfg: StudySamplingConfig) -> None:
    """Every setting, before the first stage runs."""

    refuse_owned(cfg, OWNED, "study sampling", "wc, se, seed, run_dir")
    for name in ("pool_size", "k_se", "max_new_tokens", "max_batch"):
        at_least(name, getattr(cfg, name), 1)
    at_least("temperature", cfg.temperature, 0)
    at_least("judge_limit", cfg.judge_limit, 0)
    if cfg.completion_tokens <= 0:
        raise fail("completion_tokens", f"must be positive, got {cfg.completion_tokens!r}")
    if cfg.wc == cfg.se:
        raise fail("se", f"the two arms need two models, got '{cfg.wc}' twice")
    check_template("template", cfg.template)
    if cfg.students:
        at_least("heldout_size", cfg.heldout_size, 1)
        check_disjoint({"pool": ("seed", cfg.seed, cfg.seed + cfg.pool_size),
                        "held-out": ("heldout_size", HELDOUT_SEED, HELDOUT_SEED + cfg.heldout_size)})
        check_selectors("student_selectors", cfg.student_selectors)
        check_stage(cfg.train, "train", skip=OWNED["train"])
    check_task("task", cfg.task, cfg.task_kwargs, "task_kwargs", cfg.seed)
    for name in ("wc", "se"):
        check_model(name, getattr(cfg, name))
    if cfg.judge not in ("", "export"):
        check_model("judge", cfg.judge)


def _arm_name(cfg: StudySamplingConfig, spec: str) -> str:
    return "WC" if spec == cfg.wc else "SE"


def arm_curves(problems: list[Problem], samples: list[Sample], verdicts: list[Verdict]) -> dict:
    """coverage@j and diversity@j for j = 1..min k, with mean FLOPs per problem at each j.

    Uses the first j samples (by index) of each problem: the samples are i.i.d. draws, so this is an
    unbiased estimate, and the FLOPs at j are the realized FLOPs of exactly those samples.
    """

    ok = {(v.problem_id, v.sample_index): v.correct for v in verdicts}
    by_p: dict[str, list[Sample]] = {}
    for s in samples:
        by_p.setdefault(s.problem_id, []).append(s)
    for v in by_p.values():
        v.sort(key=lambda s: s.sample_index)
    k_min = min((len(v) for v in by_p.values()), default=0)
    rows = []
    for j in range(1, k_min + 1):
        covered, distinct, flops = 0, 0, 0.0
        for p in problems:
            first = by_p.get(p.id, [])[:j]
            correct = [s for s in first if ok.get((s.problem_id, s.sample_index))]
            covered += bool(correct)
            distinct += len({normalize_text(s.text) for s in correct})
            flops += sum(s.flops for s in first)
        n = len(problems)
        rows.append({"k": j, "coverage": covered / n, "diversity": distinct / n, "flops_per_problem": flops / n})
    acc = sum(ok.get((s.problem_id, s.sample_index), False) for s in samples) / max(1, len(samples))
    return {"curve": rows, "accuracy": acc, "k_min": k_min, "samples": len(samples)}


def run(cfg: StudySamplingConfig) -> dict:
    check(cfg)
    run_ = open_run(cfg)
    d = run_.dir
    pfile = problem_set(run_, "problems", [rg_config(d / "problems.jsonl", cfg.task, cfg.task_kwargs, cfg.seed,
                                                     cfg.pool_size)])
    problems = read_records(pfile, Problem)

    # 1. Plan: the SE arm at k_se sets the budget; prompts are measured per tokenizer.
    arms = {spec: Arm(spec, float(stats_for(spec).n_matmul), mean_prompt_tokens(spec, problems, cfg.template),
                      cfg.completion_tokens) for spec in (cfg.wc, cfg.se)}
    budget = arms[cfg.se].flops_per_problem(cfg.k_se) * len(problems)
    plan = {spec: samples_for_budget(a, budget, len(problems)) for spec, a in arms.items()}
    write_json(d / "plan.json", {"budget_flops": budget, "problems": len(problems),
                                 "arms": {s: {**dataclasses.asdict(a), "k_planned": plan[s]} for s, a in arms.items()}})
    print(f"[assay] study: budget {budget:.4g} FLOPs over {len(problems)} problems; planned k: "
          + ", ".join(f"{_arm_name(cfg, s)} {s} k={k}" for s, k in plan.items()))

    results = {}
    for spec in (cfg.wc, cfg.se):
        tag = _arm_name(cfg, spec)
        scfg = SampleConfig(problems=str(pfile), out=str(d / f"{tag}.samples.jsonl"), model=spec, n=max(1, plan[spec]),
                            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, stop=list(cfg.stop),
                            seed=cfg.seed, template=cfg.template, max_batch=cfg.max_batch)
        run_.stage(f"sample_{tag}", scfg, lambda scfg=scfg: run_budgeted(scfg, budget), extra={"budget": budget})
        vcfg = VerifyConfig(problems=str(pfile), samples=scfg.out, out=str(d / f"{tag}.verdicts.jsonl"))
        run_.stage(f"verify_{tag}", vcfg, lambda vcfg=vcfg: print(run_verify(vcfg).line()))
        samples, verdicts = read_records(scfg.out, Sample), read_records(vcfg.out, Verdict)
        res = arm_curves(problems, samples, verdicts)
        res["budget"] = json.loads(Path(scfg.out + ".budget.json").read_text())
        res["model"], res["n_params"] = spec, arms[spec].n_params
        items = correct_items(problems, samples, verdicts)[: cfg.judge_limit]
        if cfg.judge == "export":
            export_audit(items, d / f"{tag}.audit.csv")
            res["fpr"] = {"fpr": None, "judged": 0, "note": f"audit sheet {tag}.audit.csv exported ({len(items)} items)"}
        elif cfg.judge:
            judge_opts = resolve_options("hf", {"max_batch": 16})
            judge_gen = make_generator("hf", cfg.judge, judge_opts)
            js = LLMJudge(judge_gen, cfg.judge, cache=str(d / f"{tag}.judge_cache.jsonl"),
                          protocol=greedy_protocol(judge_opts)).judge(items)

            write_records(d / f"{tag}.judgments.jsonl", judgments_to_dicts(js))
            res["fpr"] = false_positive_rate(js)
        results[tag] = res
    if cfg.students:
        results["students"] = _students(cfg, run_, problems, results)
    write_json(d / "study.json", results)
    write_study_report(d, results)
    return results


def _students(cfg: StudySamplingConfig, run_, problems, results) -> dict:
    """The paper's three setups: (student model, data arm)."""
    d = run_.dir
    # Its identity is the problems config it is made with: another task (or settings) is another set.
    held = problem_set(run_, "heldout", [rg_config(d / "heldout.jsonl", cfg.task, cfg.task_kwargs, HELDOUT_SEED,
                                                   cfg.heldout_size)])
    setups = {"knowledge_distillation": (cfg.wc, "SE"), "self_improvement": (cfg.wc, "WC"),
              "weak_to_strong": (cfg.se, "WC")}
    out = {}
    for setup, (student, arm) in setups.items():
        scfg = SelectConfig(problems=str(d / "problems.jsonl"), samples=str(d / f"{arm}.samples.jsonl"),
                            verdicts=str(d / f"{arm}.verdicts.jsonl"), out=str(d / f"{setup}.sft.jsonl"),
                            selectors=list(cfg.student_selectors), seed=cfg.seed)
        run_.stage(f"select_{setup}", scfg, lambda scfg=scfg: run_select(scfg))
        tcfg = dataclasses.replace(cfg.train, data=scfg.out, out=str(d / f"{setup}.student"), model=student,
                                   seed=cfg.seed)
        run_.stage(f"train_{setup}", tcfg, lambda tcfg=tcfg: run_training(tcfg, progress=interactive()))
        for name, model in ((f"{setup}.base", student), (f"{setup}.trained", tcfg.out)):
            ecfg = EvalConfig(model=model, benchmark=str(held), out=str(d / f"eval.{name}"), template=cfg.template,
                              max_new_tokens=cfg.max_new_tokens)
            run_.stage(f"eval_{name}", ecfg, lambda ecfg=ecfg: run_eval(ecfg))
        base = eval_metrics(d / f"eval.{setup}.base")["greedy_pass@1"]
        trained = eval_metrics(d / f"eval.{setup}.trained")["greedy_pass@1"]
        out[setup] = {"student": student, "data": arm, "before": base, "after": trained}
    return out


def format_table(results: dict) -> str:
    wc, se = results["WC"], results["SE"]
    rows = [("model", wc["model"], se["model"]),
            ("parameters (matmul)", f"{wc['n_params']:.4g}", f"{se['n_params']:.4g}"),
            ("samples per problem", f"{wc['budget']['k_min']}-{wc['budget']['k_max']}",
             f"{se['budget']['k_min']}-{se['budget']['k_max']}"),
            ("realized FLOPs", f"{wc['budget']['realized_flops']:.4g}", f"{se['budget']['realized_flops']:.4g}"),
            ("sample accuracy", f"{wc['accuracy']:.3f}", f"{se['accuracy']:.3f}"),
            (f"coverage@k (k={wc['k_min']} / {se['k_min']})", f"{wc['curve'][-1]['coverage']:.3f}" if wc["curve"] else "-",
             f"{se['curve'][-1]['coverage']:.3f}" if se["curve"] else "-"),
            ("diversity@k (distinct correct / problem)", f"{wc['curve'][-1]['diversity']:.3f}" if wc["curve"] else "-",
             f"{se['curve'][-1]['diversity']:.3f}" if se["curve"] else "-")]
    f = [results[t].get("fpr") or {} for t in ("WC", "SE")]
    rows.append(("false-positive rate (judged)", *[
        (f"{x['fpr']:.3f} [{x['ci95'][0]:.3f}, {x['ci95'][1]:.3f}] n={x['judged']}" if x.get("fpr") is not None
         else x.get("note", "not judged")) for x in f]))
    ratio = wc["budget"]["realized_flops"] / se["budget"]["realized_flops"] if se["budget"]["realized_flops"] else float("nan")
    rows.append(("FLOPs ratio WC / SE", f"{ratio:.4f}", ""))
    w = max(len(r[0]) for r in rows)
    w1 = max(len(str(r[1])) for r in rows)
    lines = [f"{'':<{w}}  {'WC':<{w1}}  SE"] + [f"{a:<{w}}  {b:<{w1}}  {c}" for a, b, c in rows]
    if "students" in results:
        lines.append("")
        lines.append("student (setup)                          before  after")
        for setup, r in results["students"].items():
            lines.append(f"{setup} ({r['student']} on {r['data']} data)".ljust(41) + f"{r['before']:.3f}   {r['after']:.3f}")
    return "\n".join(lines)


def write_study_report(d: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for tag, style in (("WC", "o-"), ("SE", "s-")):
        c = results[tag]["curve"]
        axes[0].plot([r["flops_per_problem"] for r in c], [r["coverage"] for r in c], style, label=f"{tag} {results[tag]['model']}")
        axes[1].plot([r["flops_per_problem"] for r in c], [r["diversity"] for r in c], style, label=tag)
    axes[0].set_xlabel("sampling FLOPs per problem")
    axes[0].set_ylabel("coverage@k")
    axes[1].set_xlabel("sampling FLOPs per problem")
    axes[1].set_ylabel("diversity@k (distinct correct)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(d / "plot_coverage_diversity.png", dpi=110)
    plt.close(fig)
    plots = ["![coverage and diversity vs FLOPs](plot_coverage_diversity.png)"]
    judged = [(t, results[t]["fpr"]) for t in ("WC", "SE") if (results[t].get("fpr") or {}).get("fpr") is not None]
    if judged:
        fig, ax = plt.subplots(figsize=(4, 3.2))
        vals = [f["fpr"] for _, f in judged]
        err = [[v - f["ci95"][0] for v, (_, f) in zip(vals, judged)], [f["ci95"][1] - v for v, (_, f) in zip(vals, judged)]]
        ax.bar([f"{t} (n={f['judged']})" for t, f in judged], vals, yerr=err, capsize=6, color=["#2a7ab0", "#e08a1e"][: len(judged)])
        ax.set_ylabel("false-positive rate (95% CI)")
        fig.tight_layout()
        fig.savefig(d / "plot_fpr.png", dpi=110)
        plt.close(fig)
        plots.append("![false-positive rate](plot_fpr.png)")
    lines = ["# Compute-matched sampling study", "", "```", format_table(results), "```", "", *plots, "",
             "Both arms sample the same problems; the budget is enforced on realized FLOPs (see plan.json and "
             "*.samples.jsonl.budget.json). Per-stage inputs, outputs and FLOPs are in manifest.json.", ""]
    (d / "report.md").write_text("\n".join(lines), encoding="utf-8")


def format_report(results: dict) -> str:
    """What ``assay study sampling`` prints: the side-by-side table (report.md adds the plots)."""
    return format_table(results)
