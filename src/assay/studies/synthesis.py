"""``assay study synthesis``: is a distilled small synthesizer's data worth training on, and when is it cheaper?

JiuZhang3.0 (Zhou et al., 2024) distils a strong model into a small problem synthesizer, picks
high-value seeds by gradient influence to train it further, and trains on the synthetic corpus.
This study runs that loop on the embedded models and compares, at one student step budget, N
problems (each with its worked solution) from:

- ``teacher-N``: the teacher writing directly from seed texts;
- ``synth-N``: the synthesizer distilled from ``distill_seeds`` teacher calls;
- ``boosted-N``: that synthesizer trained further on the teacher's outputs from the seeds LESS
  ranks highest for the target task (``boost_seeds`` x ``boost_n`` calls);
- ``random-boost-N``: the same, from as many random seeds (the control for value selection);
- ``real-N``: real problems of the target task with the teacher's verified solutions.

Every synthetic set passes the gates (near-duplicates, decontamination against every benchmark,
solver agreement) before N are drawn. Students are evaluated greedily on held-out target problems
with McNemar tests; the cost ledger says what each kept problem cost and at what pool size the
synthesizer is cheaper than the teacher.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from assay.commands import check_stage
from assay.core.checks import at_least, fail
from assay.core.config import opt
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import SFTExample
from assay.data.benchmarks import CHAIN_SUM_SMALL, HELDOUT_SEED
from assay.data.prompts import TEMPLATES, check_template
from assay.data.sources import check_task
from assay.eval.stage import EvalConfig
from assay.models import DEFAULT_MODEL, check_model
from assay.sampling import SampleConfig
from assay.select.less import LessOptions, less_rank
from assay.select.stage import SelectConfig, run_select
from assay.studies.synthesis_report import costs, format_report
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
    train_summary,
)
from assay.synth.gates import GateConfig, run_gates
from assay.synth.stage import TEACHER, SynthesizeConfig, run_synthesize
from assay.synth.templates import SYNTH_TEMPLATES
from assay.train import TrainConfig, run_training

OWNED = {"train": TRAIN_OWNED, "eval": EVAL_OWNED, "distill": TRAIN_OWNED}
DEV_SEED = 20_000
REAL_SEED = 30_000


@dataclass
class StudySynthesisConfig:
    student: str = opt(DEFAULT_MODEL, help="the model every arm fine-tunes")
    teacher: str = opt(TEACHER, help="the strong model that writes problems (and the real problems' solutions)")
    synthesizer: str = opt(DEFAULT_MODEL, help="the small model distilled into a synthesizer")
    solver: str = opt("qwen2.5-coder-0.5b-instruct", help="the agreement gate's solver")
    task: str = opt("rg:chain_sum", help="the target task (reasoning-gym)")
    task_kwargs: dict = opt(CHAIN_SUM_SMALL, help="its settings")
    teacher_backend: str = opt("hf", help="the teacher's backend (hf, vllm, openai)")
    teacher_options: dict = opt({}, help="that backend's own options")
    solver_backend: str = opt("hf", help="the solver's backend")
    solver_options: dict = opt({}, help="that backend's own options")
    synth_template: str = opt("grade-school-v1", help="the synthesis template (level)")
    seed_pool: int = opt(64, help="real target problems (seeds seed..) whose texts seed synthesis")
    distill_seeds: int = opt(16, help="teacher calls the synthesizer is distilled from")
    direct_seeds: int = opt(24, help="teacher calls of the teacher-N arm")
    synth_outputs: int = opt(48, help="outputs of each synthesizer (it is cheap; the gates keep fewer)")
    boost_seeds: int = opt(6, help="seeds chosen by LESS (or at random, for the control) for boosting")
    boost_n: int = opt(2, help="teacher calls per boosting seed")
    n: int = opt(16, help="N: problems per arm after the gates (fewer when fewer pass)")
    real_pool: int = opt(32, help="real target problems (seeds from 30000) the real-N arm draws from (the teacher "
                                  "solves them; N verified solutions are kept)")
    dev_size: int = opt(16, help="target examples (seeds from 20000, teacher-solved) LESS scores against")
    solver_k: int = opt(3, help="the agreement gate's solver answers per problem")
    synth_max_new_tokens: int = opt(384, help="synthesis output limit")
    template: str = opt("boxed-v1", help="the students' prompt (training and evaluation)")
    distill_steps: int = opt(16, help="optimizer steps distilling the synthesizer")
    boost_steps: int = opt(8, help="optimizer steps boosting it")
    distill: TrainConfig = field(default_factory=lambda: TrainConfig(method="full", lr=2e-5, batch_size=4,
                                                                     max_length=1024, warmup=0.1),
                                 metadata={"help": "synthesizer training (data/out/model/seed/steps set by the study)"})
    less: LessOptions = field(default_factory=lambda: LessOptions(warmup_fraction=0.5, warmup_epochs=2, dim=2048,
                                                                  max_length=768),
                              metadata={"help": "LESS value selection (targets and model set by the study)"})
    train_steps: int = opt(16, help="optimizer steps of every student")
    train: TrainConfig = train_section(batch_size=4)
    heldout_size: int = opt(80, help="held-out target rows (seeds from 10000)")
    eval: EvalConfig = eval_section()
    prices: dict = opt({}, help="dollars per token, {model: [prompt, completion]}, for the ledger's dollar column "
                                "(e.g. an API teacher)")
    seed: int = opt(0, help="seed of the pools, sampling, selection and training")
    run_dir: str = opt("runs/study-synthesis", help="where everything goes")


def check(cfg: StudySynthesisConfig) -> None:
    refuse_owned(cfg, OWNED, "study synthesis", "student, synthesizer, seed, template, *_steps, run_dir")
    for name in ("seed_pool", "distill_seeds", "direct_seeds", "synth_outputs", "boost_seeds", "boost_n", "n",
                 "dev_size", "real_pool", "solver_k", "synth_max_new_tokens", "distill_steps", "boost_steps", "train_steps",
                 "heldout_size"):
        at_least(name, getattr(cfg, name), 1)
    need = cfg.distill_seeds + cfg.direct_seeds + cfg.n
    if cfg.seed_pool < need:
        raise fail("seed_pool", f"must hold distill_seeds + direct_seeds + n = {need} disjoint seeds, got {cfg.seed_pool}")
    check_disjoint({"seed pool": ("seed_pool", cfg.seed, cfg.seed + cfg.seed_pool),
                    "held-out": ("heldout_size", HELDOUT_SEED, HELDOUT_SEED + cfg.heldout_size),
                    "dev": ("dev_size", DEV_SEED, DEV_SEED + cfg.dev_size),
                    "real": ("real_pool", REAL_SEED, REAL_SEED + cfg.real_pool)})
    check_task("task", cfg.task, cfg.task_kwargs, "task_kwargs", cfg.seed)
    check_template("template", cfg.template)
    if cfg.synth_template not in SYNTH_TEMPLATES:
        SYNTH_TEMPLATES.get(cfg.synth_template)
    for name in ("student", "synthesizer") + (("teacher",) if cfg.teacher_backend == "hf" else ()) + (
            ("solver",) if cfg.solver_backend == "hf" else ()):
        check_model(name, getattr(cfg, name))
    for section, skip in OWNED.items():
        check_stage(getattr(cfg, section), section, skip=skip)


def _synth(r, cfg, name: str, model: str, seeds: Path, calls: int, n: int = 1, teacher: bool = False,
           seed_offset: int = 0) -> Path:
    d = r.dir
    scfg = SynthesizeConfig(seeds=str(seeds), templates=[cfg.synth_template], n=n, model=model, limit=calls,
                            max_new_tokens=cfg.synth_max_new_tokens, seed=cfg.seed + seed_offset,
                            out=str(d / f"{name}.synth.jsonl"),
                            **({"backend": cfg.teacher_backend, "backend_options": dict(cfg.teacher_options)}
                               if teacher else {}))
    r.stage(f"synthesize_{name}", scfg, lambda: _said(run_synthesize(scfg)))
    return Path(scfg.out)


def _synth_many(r, cfg, name: str, model: str, seeds: Path) -> Path:
    """``synth_outputs`` outputs of a synthesizer: as many per seed as it takes, over every seed."""
    per_seed = -(-cfg.synth_outputs // max(1, len(read_problems(seeds))))
    return _synth(r, cfg, name, model, seeds, 0, n=per_seed)


def _gate(r, cfg, name: str, synth: Path) -> Path:
    gcfg = GateConfig(problems=str(synth), out=str(r.dir / f"{name}.gated.jsonl"), solver=cfg.solver, k=cfg.solver_k,
                      seed=cfg.seed, backend=cfg.solver_backend, backend_options=dict(cfg.solver_options))
    r.stage(f"gate_{name}", gcfg, lambda: _said(run_gates(gcfg)))
    return Path(gcfg.out)


def _said(res):
    print(res.line())
    return res


def sft_from_synthetic(problems: str | Path, template: str, n: int, seed: int, out: str | Path) -> dict:
    """N synthetic problems drawn at random (seeded) as student rows: the solving prompt -> the written solution."""
    probs = read_problems(problems)
    chosen = random.Random(seed).sample(probs, min(n, len(probs)))
    rows = [SFTExample(p.id, TEMPLATES.get(template).messages(p.question) +
                       [{"role": "assistant", "content": p.meta["solution"]}], p.id, 0, p.meta.get("model", ""),
                       template, 0, "gated>random") for p in chosen]
    return {"rows": write_records(out, rows), "available": len(probs)}


def _train_synth(r, cfg, name: str, data: Path, model: str, steps: int) -> str:
    if not read_records(data, SFTExample):
        raise InputError(f"{data}: the teacher wrote no well-formed problem to train the '{name}' synthesizer on "
                         f"(reasons in {str(data).removesuffix('.pairs.jsonl')}.rejected.jsonl)")
    tcfg = dataclasses.replace(cfg.distill, data=str(data), out=str(r.dir / f"{name}.synthesizer"), model=model,
                               seed=cfg.seed, max_steps=steps)
    r.stage(f"train_{name}", tcfg, lambda: run_training(tcfg, progress=False))
    return tcfg.out


def _seed_files(r, cfg, pool: Path) -> dict[str, Path]:
    """Disjoint seed slices of the real pool: distillation, the teacher arm, and the rest (synthesizers, boosting)."""
    probs = read_problems(pool)
    a, b = cfg.distill_seeds, cfg.distill_seeds + cfg.direct_seeds
    out = {}
    for name, part in (("distill", probs[:a]), ("direct", probs[a:b]), ("rest", probs[b:])):
        out[name] = r.dir / f"seeds.{name}.jsonl"
        write_records(out[name], part)
    return out


def _value_seeds(r, cfg, pairs: Path, dev_rows: Path, seeds: Path) -> dict:
    """The boosting seeds, among the distillation seeds: the ``boost_seeds`` whose teacher outputs LESS scores
    highest for the target task, and as many at random (the control)."""
    work = r.dir / "value"
    work.mkdir(exist_ok=True)
    out = work / "choice.json"

    def make():
        rows = read_records(pairs, SFTExample)
        o = dataclasses.replace(cfg.less, model=cfg.synthesizer)
        scores, cost = less_rank(rows, {"target": read_records(dev_rows, SFTExample)}, o, work, cfg.seed)
        best = [rows[i].id.split("/")[0] for i in sorted(range(len(rows)), key=lambda i: -scores[i])]
        top = list(dict.fromkeys(best))[: cfg.boost_seeds]
        ids = [p.id for p in read_problems(seeds)]
        rand = random.Random(cfg.seed).sample(ids, min(cfg.boost_seeds, len(ids)))
        choice = {"scores": {row.id: s for row, s in zip(rows, scores)}, "less": top, "random": rand, "cost": cost}
        write_json(out, choice)
        return {"less": top, "random": rand, "flops": cost["flops"]}

    r.stage("value", {"pairs": str(pairs), "dev": str(dev_rows), "less": dataclasses.asdict(cfg.less),
                      "model": cfg.synthesizer, "boost_seeds": cfg.boost_seeds, "seed": cfg.seed}, make,
            inputs=[pairs, dev_rows, seeds], outputs=[out])
    return json.loads(out.read_text())


def run(cfg: StudySynthesisConfig) -> dict:
    check(cfg)
    r = open_run(cfg)
    d = r.dir
    held = problem_set(r, "heldout", [rg_config(d / "heldout.jsonl", cfg.task, cfg.task_kwargs, HELDOUT_SEED,
                                                cfg.heldout_size)])
    dev = problem_set(r, "dev", [rg_config(d / "dev.jsonl", cfg.task, cfg.task_kwargs, DEV_SEED, cfg.dev_size)])
    pool = problem_set(r, "pool", [rg_config(d / "pool.raw.jsonl", cfg.task, cfg.task_kwargs, cfg.seed,
                                             cfg.seed_pool)], d / "pool.jsonl", against=[held, dev])
    real_probs = problem_set(r, "real", [rg_config(d / "real.raw.jsonl", cfg.task, cfg.task_kwargs, REAL_SEED,
                                                   cfg.real_pool)], d / "real.jsonl", against=[held, dev])
    seeds = _seed_files(r, cfg, pool)
    # Real problems and the LESS targets: the teacher's verified solutions, one per problem.
    sets, real = {}, {}
    for name, probs, limit in (("real", real_probs, cfg.n), ("dev", dev, cfg.dev_size)):
        s, v = sample_and_verify(r, probs, cfg.teacher, 1, cfg.seed, cfg.template, cfg.synth_max_new_tokens, tag=name,
                                 sample=SampleConfig(temperature=0.7, max_new_tokens=cfg.synth_max_new_tokens,
                                                     backend=cfg.teacher_backend,
                                                     backend_options=dict(cfg.teacher_options)))
        sel = SelectConfig(problems=str(probs), samples=s, verdicts=v, out=str(d / f"{name}.sft.jsonl"),
                           selectors=["correct", "finished", "max_per_problem:1", f"random:{limit}"], seed=cfg.seed)
        r.stage(f"select_{name}", sel, lambda sel=sel: run_select(sel))
        real[name] = {"samples": s, "rows": sel.out}
    sets["real-N"] = real["real"]["rows"]
    # The teacher directly; the distilled synthesizer; boosted by LESS-chosen and by random seeds.
    direct = _synth(r, cfg, "teacher", cfg.teacher, seeds["direct"], cfg.direct_seeds, teacher=True)
    distill = _synth(r, cfg, "distill", cfg.teacher, seeds["distill"], cfg.distill_seeds, teacher=True)
    synthesizer = _train_synth(r, cfg, "distilled", Path(str(distill) + ".pairs.jsonl"), cfg.synthesizer,
                               cfg.distill_steps)
    choice = _value_seeds(r, cfg, Path(str(distill) + ".pairs.jsonl"), Path(real["dev"]["rows"]), seeds["distill"])
    made = {"teacher": direct, "synth": _synth_many(r, cfg, "synth", synthesizer, seeds["rest"])}
    for tag, ids in (("boosted", choice["less"]), ("random-boost", choice["random"])):
        chosen = d / f"seeds.{tag}.jsonl"
        write_records(chosen, [p for p in read_problems(seeds["distill"]) if p.id in set(ids)])
        # Another sampling seed: the distillation call of each seed is not drawn again.
        extra = _synth(r, cfg, f"{tag}-teacher", cfg.teacher, chosen, len(ids), n=cfg.boost_n, teacher=True,
                       seed_offset=1)
        boosted = _train_synth(r, cfg, tag, Path(str(extra) + ".pairs.jsonl"), synthesizer, cfg.boost_steps)
        made[tag] = _synth_many(r, cfg, tag, boosted, seeds["rest"])
    gated = {}
    for tag, synth in made.items():
        gated[tag] = _gate(r, cfg, tag, synth)
        out = d / f"{tag}-N.sft.jsonl"
        r.stage(f"rows_{tag}", {"gated": str(gated[tag]), "n": cfg.n, "seed": cfg.seed, "template": cfg.template},
                lambda g=gated[tag], out=out: sft_from_synthetic(g, cfg.template, cfg.n, cfg.seed, out),
                inputs=[gated[tag]], outputs=[out])
        sets[f"{tag}-N"] = str(out)
    base_eval = dataclasses.replace(cfg.eval, model=cfg.student, benchmark=str(held), out=str(d / "eval.base"),
                                    template=cfg.template)
    results = train_and_evaluate(r, sets, base_eval, cfg.train, cfg.student, cfg.seed, cfg.train_steps,
                                 versus="real-N")
    synth_training = {tag: train_summary(d / f"{tag}.synthesizer")["flops"]
                      for tag in ("distilled", "boosted", "random-boost")}
    out = {"results": results, "costs": costs(d, made, gated, synth_training, choice, cfg.prices), "n": cfg.n,
           "train_steps": cfg.train_steps, "heldout": len(read_problems(held)), "teacher": cfg.teacher,
           "synthesizer": cfg.synthesizer, "student": cfg.student, "choice": {k: choice[k] for k in ("less", "random")},
           "funnels": {tag: json.loads(Path(str(g) + ".summary.json").read_text())["funnel"]
                       for tag, g in gated.items()},
           "wellformed": {tag: json.loads(Path(str(s) + ".summary.json").read_text()) for tag, s in made.items()}}
    write_json(d / "study.json", out)
    (d / "report.md").write_text(format_report(out), encoding="utf-8")
    return out
