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
4. false positives: human audit sheets of each arm's answer-correct samples are always exported;
   an LLM judge (``judge=<model spec>``, the strongest model at hand) judges them, and where a
   person has filled in a sample of the sheets (``human_labels``) the judge's agreement with
   those labels is reported beside its FPR, since an FPR is only as good as its judge;
5. students (``students=true``): in each of the paper's setups one student is trained on each
   arm's correct samples at the same optimizer-step budget and evaluated on held-out problems,
   WC-data against SE-data paired (knowledge distillation: a third, smaller model,
   ``kd_student``; self-improvement: the WC model, so its own data against SE's; weak-to-strong:
   the SE model, WC's data against its own);
6. write ``report.md`` with the side-by-side table, the paper's findings row by row, and plots.

Everything goes into one run directory with a manifest; every stage resumes.

The settings share the other studies' names: ``pool_size`` (was ``problems``), ``heldout_size``
(was ``heldout``), ``train`` the students' training section (was ``student_train``; the switch
that was ``train=true`` is ``students=true``). The old names still work in recipes and overrides.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

from assay.commands import check_stage
from assay.core.checks import at_least, fail
from assay.core.config import ConfigError, opt
from assay.core.io import read_records, write_json, write_records
from assay.core.records import Problem, Sample, Verdict
from assay.core.registry import did_you_mean
from assay.data.benchmarks import CHAIN_SUM_3_4, HELDOUT_SEED
from assay.data.prompts import check_template
from assay.data.sources import check_task
from assay.data.text import normalize_text
from assay.eval.stage import EvalConfig
from assay.eval.stats import paired_comparison, paired_mean_difference, wilson
from assay.models import check_model, stats_for
from assay.sampling import SampleConfig
from assay.sampling.backends import greedy_protocol, make_generator, resolve_options
from assay.sampling.budget import run_budgeted
from assay.sampling.plan import Arm, mean_prompt_tokens, samples_for_budget
from assay.select.stage import SelectConfig, check_selectors, run_select
from assay.studies.sampling_report import format_table, write_study_report
from assay.studies.workspace import (
    check_disjoint,
    open_run,
    problem_set,
    refuse_owned,
    rg_config,
    train_and_evaluate,
    train_section,
)
from assay.train import TrainConfig  # noqa: F401  (the type of the ``train`` section)
from assay.verify.judge import (
    LLMJudge,
    correct_items,
    export_audit,
    false_positive_rate,
    import_audit,
    judgments_to_dicts,
)
from assay.verify.stage import VerifyConfig, run_verify

# Fields of the students' training section that the study fills in itself.
OWNED = {"train": ("data", "out", "model", "seed", "max_steps")}


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


SETUPS = ("knowledge_distillation", "self_improvement", "weak_to_strong")


@dataclass
class StudySamplingConfig:
    wc: str = opt("qwen2.5-coder-0.5b-instruct", help="the weaker-cheaper model (fewer parameters)")
    se: str = opt("qwen2.5-coder-1.5b-instruct", help="the stronger-expensive model (more parameters; the same "
                                                     "family as wc, so only the size differs)")
    task: str = opt("rg:chain_sum", help="reasoning-gym task")
    task_kwargs: dict = opt(CHAIN_SUM_3_4, help="the task's settings (default: 3-4-term sums, where SE is ahead)")
    LEGACY = staticmethod(_legacy)
    pool_size: int = opt(40, help="problem rows both arms sample (generator seeds seed..; repeated questions "
                                  "dropped); was 'problems'")
    seed: int = opt(0, help="problem and sampling seed")
    k_se: int = opt(3, help="samples per problem of the SE model; the budget is what they cost")
    completion_tokens: float = opt(150.0, help="completion-length guess for the plan (realized FLOPs are matched anyway)")
    template: str = opt("boxed-v1", help="prompt template for both arms (and the students' evaluation)")
    temperature: float = opt(0.7, help="sampling temperature for both arms")
    max_new_tokens: int = opt(256, help="completion limit for both arms")
    stop: list = opt([], help="stop strings for both arms (a base model that never emits EOS needs one, e.g. ['\\n'])")
    max_batch: int = opt(64, help="rows decoded together")
    judge: str = opt("qwen2.5-coder-1.5b-instruct", help="a model spec for the LLM judge of false positives, "
                                                         "'export' (the audit CSVs only) or '' (none)")
    judge_limit: int = opt(40, help="judge at most this many answer-correct samples per arm")
    judge_max_new_tokens: int = opt(384, help="the judge's output limit")
    human_labels: dict = opt({}, help="filled-in audit sheets, {WC: path, SE: path}: the judge's agreement with "
                                      "these labels is reported")
    students: bool = opt(True, help="fine-tune and evaluate students in the paper's setups (was 'train')")
    setups: list = opt(list(SETUPS), help="which setups (knowledge_distillation, self_improvement, weak_to_strong; "
                                          "weak_to_strong trains the SE model, the slowest part on a CPU)")
    kd_student: str = opt("smollm2-135m-instruct", help="the knowledge-distillation student (smaller than both)")
    train_steps: int = opt(12, help="optimizer steps of every student (the same budget for both arms' data)")
    train: TrainConfig = train_section(batch_size=4)
    heldout_size: int = opt(60, help="students=true: held-out rows (seeds from 10000) for the students; was 'heldout'")
    student_selectors: list = opt(["correct", "finished", "dedup"],
                                  help="students=true: how each arm's samples become SFT data")
    run_dir: str = opt("runs/study-sampling", help="where everything goes")


def check(cfg: StudySamplingConfig) -> None:
    """Every setting, before the first stage runs."""

    refuse_owned(cfg, OWNED, "study sampling", "wc, se, seed, run_dir")
    for name in ("pool_size", "k_se", "max_new_tokens", "max_batch", "judge_max_new_tokens", "train_steps"):
        at_least(name, getattr(cfg, name), 1)
    at_least("temperature", cfg.temperature, 0)
    at_least("judge_limit", cfg.judge_limit, 0)
    for arm, path in cfg.human_labels.items():
        if arm not in ("WC", "SE"):
            raise fail(f"human_labels.{arm}", "the arms are WC and SE")
        if not Path(str(path)).exists():
            raise fail(f"human_labels.{arm}", f"{path}: no such file")
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
        for i, name in enumerate(cfg.setups):
            if name not in SETUPS:
                raise fail(f"setups.{i}", f"'{name}' is not a setup{did_you_mean(str(name), list(SETUPS))} "
                                          f"(one of {', '.join(SETUPS)})")
        if "knowledge_distillation" in cfg.setups:
            check_model("kd_student", cfg.kd_student)
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
    # Per problem at the arm's full budget: what the paired WC-vs-SE comparisons are made on.
    per = {}
    for p in problems:
        correct = [s for s in by_p.get(p.id, []) if ok.get((s.problem_id, s.sample_index))]
        per[p.id] = {"covered": bool(correct), "distinct": len({normalize_text(s.text) for s in correct})}
    return {"curve": rows, "accuracy": acc, "k_min": k_min, "samples": len(samples), "per_problem": per}


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
        items = correct_items(problems, samples, verdicts)
        _export_unless_labelled(items, d / f"{tag}.audit.csv")  # all of them, for a person to label
        res["fpr"] = {"fpr": None, "judged": 0, "note": f"audit sheet {tag}.audit.csv exported ({len(items)} items)"}
        if cfg.judge not in ("", "export"):
            res["fpr"], res["judge_agreement"] = _judge_arm(cfg, d, tag, items)
        results[tag] = res
    results["paired"] = _paired_arms(results)
    if cfg.students:
        results["students"] = _students(cfg, run_, problems, results)
    write_json(d / "study.json", results)
    write_study_report(d, results)
    return results


def _export_unless_labelled(items: list[dict], path: Path) -> None:
    """Write the audit sheet, unless a person has started labelling it (never overwrite their work)."""
    if path.exists() and any(j.valid is not None for j in import_audit(path)):
        print(f"[assay] {path}: has labels, kept as it is (pass it as human_labels to use them)")
        return
    export_audit(items, path)


def _judge_arm(cfg: StudySamplingConfig, d: Path, tag: str, items: list[dict]) -> tuple[dict, dict]:
    """The LLM judge on a seeded sample of ``judge_limit`` answer-correct items (a sample across
    problems, not the first problems' items) plus every item a person labelled; its FPR on the
    sample, and its agreement with the person on the labelled ones."""
    human = {(j.problem_id, j.sample_index): j for j in import_audit(cfg.human_labels[tag])
             if j.valid is not None} if tag in cfg.human_labels else {}
    rng = random.Random(cfg.seed)
    chosen = rng.sample(items, min(cfg.judge_limit, len(items)))
    keys = {(it["problem_id"], it["sample_index"]) for it in chosen}
    labelled = [it for it in items if (it["problem_id"], it["sample_index"]) in human and
                (it["problem_id"], it["sample_index"]) not in keys]
    opts = resolve_options("hf", {"max_batch": 16})
    gen = make_generator("hf", cfg.judge, opts)
    try:
        js = LLMJudge(gen, cfg.judge, max_new_tokens=cfg.judge_max_new_tokens,
                      cache=str(d / f"{tag}.judge_cache.jsonl"), protocol=greedy_protocol(opts)).judge(chosen + labelled)
    finally:
        if hasattr(gen, "close"):
            gen.close()
    write_records(d / f"{tag}.judgments.jsonl", judgments_to_dicts(js))
    fpr = false_positive_rate(js[: len(chosen)])
    return fpr, agreement(js, human)


def agreement(judged, human: dict) -> dict:
    """The judge against a person's labels on the items both judged: the confusion matrix (rows:
    the person; valid/invalid), raw agreement, Cohen's kappa, and both FPRs on those items."""
    pairs = [(human[(j.problem_id, j.sample_index)].valid, j.valid) for j in judged
             if (j.problem_id, j.sample_index) in human]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "note": "no human labels for this arm (human_labels)"}
    unparsed = sum(jv is None for _, jv in pairs)
    conf = {f"human_{'valid' if h else 'invalid'}_judge_{'valid' if jv else 'invalid' if jv is False else 'none'}":
            sum(1 for a, b in pairs if a == h and b == jv) for h in (True, False) for jv in (True, False, None)}
    both = [(h, jv) for h, jv in pairs if jv is not None]
    agree = sum(h == jv for h, jv in both)
    m = len(both)
    po = agree / m if m else None
    if m:
        ph, pj = sum(h for h, _ in both) / m, sum(jv for _, jv in both) / m
        pe = ph * pj + (1 - ph) * (1 - pj)
        kappa = (po - pe) / (1 - pe) if pe < 1 else None
    else:
        kappa = None
    return {"n": n, "unparsed": unparsed, "agreement": po, "agreement_ci95": list(wilson(agree, m)) if m else None,
            "kappa": kappa, "confusion": conf, "human_fpr": sum(not h for h, _ in pairs) / n,
            "judge_fpr": (sum(jv is False for _, jv in both) / m) if m else None}


def _paired_arms(results: dict) -> dict:
    """WC minus SE per problem at the matched budget: coverage (McNemar) and distinct correct solutions."""
    wc, se = results["WC"]["per_problem"], results["SE"]["per_problem"]
    cov = paired_comparison({k: v["covered"] for k, v in se.items()}, {k: v["covered"] for k, v in wc.items()})
    div = paired_mean_difference({k: float(v["distinct"]) for k, v in se.items()},
                                 {k: float(v["distinct"]) for k, v in wc.items()})
    return {"coverage_wc_minus_se": cov, "diversity_wc_minus_se": div}


def _students(cfg: StudySamplingConfig, run_, problems, results) -> dict:
    """Each setup's student trained on WC's and on SE's correct samples at the same step budget."""
    d = run_.dir
    # Its identity is the problems config it is made with: another task (or settings) is another set.
    held = problem_set(run_, "heldout", [rg_config(d / "heldout.jsonl", cfg.task, cfg.task_kwargs, HELDOUT_SEED,
                                                   cfg.heldout_size)])
    data = {}
    for arm in ("WC", "SE"):
        scfg = SelectConfig(problems=str(d / "problems.jsonl"), samples=str(d / f"{arm}.samples.jsonl"),
                            verdicts=str(d / f"{arm}.verdicts.jsonl"), out=str(d / f"{arm}.sft.jsonl"),
                            selectors=list(cfg.student_selectors), seed=cfg.seed)
        run_.stage(f"select_{arm}", scfg, lambda scfg=scfg: run_select(scfg))
        data[arm] = scfg.out
    student_of = {"knowledge_distillation": cfg.kd_student, "self_improvement": cfg.wc, "weak_to_strong": cfg.se}
    out = {}
    for setup in cfg.setups:
        student = student_of[setup]
        base_eval = EvalConfig(model=student, benchmark=str(held), out=str(d / f"eval.{setup}.base"),
                               template=cfg.template, max_new_tokens=cfg.max_new_tokens, max_batch=cfg.max_batch)
        r = train_and_evaluate(run_, {f"{setup}.{arm}": data[arm] for arm in ("WC", "SE")}, base_eval, cfg.train,
                               student, cfg.seed, cfg.train_steps, versus=f"{setup}.SE", base=f"{setup}.base")
        out[setup] = {"student": student, "base": r["base"]["greedy_pass@1"],
                      "WC": r[f"{setup}.WC"], "SE": r[f"{setup}.SE"]}
    return out


def format_report(results: dict) -> str:
    """What ``assay study sampling`` prints: the side-by-side table (report.md adds the plots)."""
    return format_table(results)
