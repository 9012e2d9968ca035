"""``assay quickstart``: the core pipeline end to end on the embedded default model.

problems -> sample -> verify -> stats, each stage writing its records into one run directory.
Every stage resumes from its own output, so killing the quickstart and running it again picks
up where it stopped. It runs the same stage functions as the individual commands; nothing here
is special-cased.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .config import opt, save_yaml, to_mapping
from .io import write_json
from .models import DEFAULT_MODEL


@dataclass
class QuickstartConfig:
    model: str = opt(DEFAULT_MODEL, help="model spec to sample from")
    task: str = opt("rg:chain_sum", help="problem source (see `assay problems --help`)")
    task_kwargs: dict = opt({"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2},
                            help="reasoning-gym task settings")
    size: int = opt(48, help="number of problems")
    seed: int = opt(0, help="problem and sampling seed")
    n: int = opt(4, help="samples per problem")
    temperature: float = opt(0.7, help="sampling temperature")
    max_new_tokens: int = opt(256, help="completion length limit")
    template: str = opt("boxed-v1", help="prompt template id")
    max_batch: int = opt(32, help="rows decoded together")
    run_dir: str = opt("runs/quickstart", help="where every artifact of the run is written")


def run(cfg: QuickstartConfig) -> dict:
    from . import metrics, problems, verify
    from .generate import SampleConfig, run_sampling

    d = Path(cfg.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    save_yaml(d / "config.yaml", to_mapping(cfg))
    times = {}

    t = time.perf_counter()
    kind = cfg.task.split(":", 1)[0]
    pcfg = problems.ProblemsConfig(source=cfg.task, out=str(d / "problems.jsonl"), seed=cfg.seed,
                                   size=cfg.size, task_kwargs=cfg.task_kwargs if kind == "rg" else {},
                                   limit=None if kind == "rg" else cfg.size)
    problems.cli_run(pcfg)
    times["problems"] = time.perf_counter() - t

    t = time.perf_counter()
    scfg = SampleConfig(problems=pcfg.out, out=str(d / "samples.jsonl"), model=cfg.model, n=cfg.n,
                        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, seed=cfg.seed,
                        template=cfg.template, max_batch=cfg.max_batch)
    s = run_sampling(scfg)
    print(f"[assay] sampled {s['sampled']} ({s['already_done']} already done), {s['completion_tokens']} tokens")
    times["sample"] = time.perf_counter() - t

    t = time.perf_counter()
    vcfg = verify.VerifyConfig(problems=pcfg.out, samples=scfg.out, out=str(d / "verdicts.jsonl"))
    verify.cli_run(vcfg)
    times["verify"] = time.perf_counter() - t

    t = time.perf_counter()
    mcfg = metrics.StatsConfig(samples=scfg.out, verdicts=vcfg.out, out=str(d / "stats.json"),
                               ks=[k for k in (1, 2, 4, 8, 16) if k <= cfg.n], problems=pcfg.out)
    metrics.cli_run(mcfg)
    times["stats"] = time.perf_counter() - t
    write_json(d / "timings.json", times)
    return times


def cli_run(cfg: QuickstartConfig) -> int:
    times = run(cfg)
    print(f"[assay] quickstart done in {sum(times.values()):.0f} s; artifacts in {cfg.run_dir}")
    return 0
