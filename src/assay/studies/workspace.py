"""``assay study NAME [key=value ...]``: the studies that compare methods end to end.

Each study is a pipeline with its own config dataclass, run in one run directory; settings are
given as dotted overrides (``assay study sampling problems=60 k_se=1``) or from a recipe through
``assay run`` (``pipeline: study-sampling``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from assay.core.config import from_mapping, opt, parse_overrides
from assay.core.registry import Registry

STUDIES: Registry[tuple[str, str]] = Registry("study")
STUDIES.add("sampling", ("assay.studies.sampling", "StudySamplingConfig"))
STUDIES.add("curation", ("assay.studies.curation", "StudyCurationConfig"))
STUDIES.add("selection", ("assay.studies.selection", "StudySelectionConfig"))


@dataclass
class StudyConfig:
    POSITIONAL = "name"
    PASSTHROUGH = True
    name: str = opt("sampling", help="which study: " + ", ".join(STUDIES.names()))
    overrides: list = opt([], help="dotted key=value settings of the study")


def cli_run(cfg: StudyConfig) -> int:
    mod_name, cls_name = STUDIES.get(cfg.name)
    mod = importlib.import_module(mod_name)
    scfg = from_mapping(getattr(mod, cls_name), parse_overrides(cfg.overrides), where=f"study {cfg.name}")
    return int(mod.cli_run(scfg) or 0)


# ---- pieces the studies share: held-out problems, and students trained and evaluated side by side ----

# Fields of the shared ``train`` and ``eval`` sections that the studies fill in themselves.
TRAIN_OWNED = ("data", "out", "model", "seed", "max_steps")
EVAL_OWNED = ("model", "benchmark", "out", "template")


def train_section():
    """The ``train`` field of a study config: LoRA students (data, out, model, seed and steps set by the study)."""
    from assay.train import TrainConfig

    return field(default_factory=lambda: TrainConfig(method="lora", lr=2e-4, batch_size=8),
                 metadata={"help": "student training (data/out/model/seed/max_steps set by the study)"})


def eval_section():
    """The ``eval`` field of a study config: greedy evaluation on the study's held-out problems."""
    from assay.eval.stage import EvalConfig

    return field(default_factory=lambda: EvalConfig(max_new_tokens=256, max_batch=64),
                 metadata={"help": "evaluation (model/benchmark/out/template set by the study)"})


def sample_and_verify(r, problems, model: str, k: int, seed: int, template: str, max_new_tokens: int,
                      tag: str = "") -> tuple[str, str]:
    """Stages ``sample[_tag]`` and ``verify[_tag]``: k samples per problem at temperature 0.7, verified.
    Returns the (samples, verdicts) paths."""
    from assay.core.config import to_mapping
    from assay.sampling import SampleConfig, run_sampling
    from assay.verify import stage as verify

    pre, suf = (f"{tag}.", f"_{tag}") if tag else ("", "")
    scfg = SampleConfig(problems=str(problems), out=str(r.dir / f"{pre}samples.jsonl"), model=model, n=k, seed=seed,
                        template=template, temperature=0.7, max_new_tokens=max_new_tokens, max_batch=64)
    r.stage(f"sample{suf}", to_mapping(scfg), lambda: run_sampling(scfg), inputs=[problems], outputs=[scfg.out],
            models=[model])
    vcfg = verify.VerifyConfig(problems=str(problems), samples=scfg.out, out=str(r.dir / f"{pre}verdicts.jsonl"))
    r.stage(f"verify{suf}", to_mapping(vcfg), lambda: verify.cli_run(vcfg), inputs=[problems, scfg.out],
            outputs=[vcfg.out])
    return scfg.out, vcfg.out


def rg_problems(path, task: str, kwargs: dict, seed: int, size: int) -> None:
    """Distinct reasoning-gym problems of ``task`` (``rg:<name>``) drawn from ``seed`` onwards."""
    from assay.data.problems import ProblemsConfig
    from assay.data.problems import cli_run as write_problems

    write_problems(ProblemsConfig(source=task, out=str(path), seed=seed, size=size, task_kwargs=dict(kwargs),
                                  distinct=True))


def train_and_evaluate(r, sets: dict[str, str], base_eval, train, model: str, seed: int, steps: int,
                       versus: str = "") -> dict:
    """Evaluate the base model, then train one student per SFT set (the same ``steps`` optimizer steps
    each) and evaluate it under the base's protocol; paired gains against the base (and against the
    set named ``versus``, if any). Every step is a stage of run ``r``, skipped when already done."""
    import dataclasses
    import json
    from pathlib import Path

    from assay.core.config import to_mapping
    from assay.core.io import read_records
    from assay.core.progress import interactive
    from assay.core.records import SFTExample
    from assay.eval.stage import compare, run_eval
    from assay.train import run_training

    d = r.dir
    r.stage("eval_base", to_mapping(base_eval), lambda: run_eval(base_eval), inputs=[base_eval.benchmark],
            outputs=[base_eval.out], models=[base_eval.model])
    results = {"base": {"examples": 0, **json.loads((Path(base_eval.out) / "result.json").read_text())["metrics"]}}
    for name, data in sets.items():
        n_ex = len(read_records(data, SFTExample))
        if n_ex == 0:
            results[name] = {"examples": 0, "skipped": "no examples"}
            continue
        tcfg = dataclasses.replace(train, data=data, out=str(d / f"{name}.student"), model=model, seed=seed,
                                   max_steps=steps)
        r.stage(f"train_{name}", to_mapping(tcfg), lambda tcfg=tcfg: run_training(tcfg, progress=interactive()),
                inputs=[data], outputs=[tcfg.out], models=[model])
        ecfg = dataclasses.replace(base_eval, model=tcfg.out, out=str(d / f"eval.{name}"))
        r.stage(f"eval_{name}", to_mapping(ecfg), lambda ecfg=ecfg: run_eval(ecfg), inputs=[base_eval.benchmark, tcfg.out],
                outputs=[ecfg.out], models=[tcfg.out])
        c = compare(base_eval.out, ecfg.out)
        summ = json.loads((Path(tcfg.out) / "train_summary.json").read_text())
        results[name] = {"examples": n_ex, "greedy_pass@1": c["after"], "gain": c["gain"], "gain_ci95": c["gain_ci95"],
                         "p_value": c["p_value"], "train_tokens": summ["tokens"], "train_flops": summ["flops"],
                         "steps": summ["steps"]}
    ref = d / f"eval.{versus}"
    if versus and "skipped" not in results.get(versus, {"skipped": "not a set"}):
        for name, res in results.items():
            if name not in ("base", versus) and "skipped" not in res:
                c = compare(ref, d / f"eval.{name}")
                res[f"vs_{versus}"] = {"gain": c["gain"], "gain_ci95": c["gain_ci95"], "p_value": c["p_value"]}
    return results
