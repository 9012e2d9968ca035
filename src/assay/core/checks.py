"""Checks that run before any work: the choice-valued settings of a stage, or of a whole pipeline.

A pipeline runs minutes of stages before the one whose section has a typo starts, so every
pipeline checks all of its sections first (``check_stage`` on each, with the fields the pipeline
fills in itself skipped), and every command checks its own config before it reads a file.
Names are checked against the registries the code runs with (templates, selectors, backends,
extractors, verifiers, curation steps, reasoning-gym tasks), so a check cannot drift from what
would run. A failure is a ``ConfigError`` naming the dotted key; the CLI and the recipe loader
turn it into the flag, the override or the file:line the value came from.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any, Callable, Collection

from assay.core.config import ConfigError
from assay.core.io import InputError
from assay.core.registry import did_you_mean

DTYPES = ("float32", "bfloat16", "float16", "float64")
# transformers' SchedulerType values, so the common names need no transformers import (5 s);
# anything else is looked up in the installed transformers before it is refused.
_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
               "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
               "warmup_stable_decay")


def fail(key: str, detail: str) -> ConfigError:
    return ConfigError(key, key, detail)


def one_of(key: str, value: Any, options: Collection[str], kind: str) -> None:
    if value not in options:
        raise fail(key, f"'{value}' is not a known {kind}{did_you_mean(str(value), sorted(options))}")


def at_least(key: str, value: float, low: float) -> None:
    if value < low:
        raise fail(key, f"must be at least {low:g}, got {value!r}")


def unit_interval(key: str, value: float, zero_ok: bool = False) -> None:
    if not ((0 <= value if zero_ok else 0 < value) and value <= 1):
        raise fail(key, f"must be in {'[' if zero_ok else '('}0, 1], got {value!r}")


def passes(key: str, fn: Callable, *args: Any) -> Any:
    """Run a parser or registry lookup that raises InputError, naming ``key`` on failure."""
    try:
        return fn(*args)
    except ConfigError:
        raise
    except InputError as exc:
        raise fail(key, str(exc)) from None


def check_model(key: str, spec: str) -> None:
    """The spec names a model that can be loaded: embedded (its packages installed), a folder, a hub id."""
    from assay import models

    emb = models.EMBEDDED.get(spec)
    if emb is None:
        passes(key, models.resolve, spec)
        return
    if (models.cache_dir() / "models" / spec / "config.json").exists():
        return
    needed = [m for m, _ in emb.chunks] or [emb.package]
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(key, f"model '{spec}' needs the package(s) {', '.join(missing)}: pip install {emb.pip_name}")


def check_task(key: str, task: str, kwargs: dict, kwargs_key: str, seed: int = 0) -> None:
    """A reasoning-gym task ``rg:<name>`` that exists and accepts ``kwargs`` (one item is generated)."""
    from assay.data.sources import load_rg, rg_task_names

    if not task.startswith("rg:"):
        raise fail(key, f"'{task}' must be a reasoning-gym task 'rg:<name>'")
    one_of(key, task[3:], rg_task_names(), "reasoning-gym task")
    passes(kwargs_key, load_rg, task[3:], 1, seed, dict(kwargs))


def check_template(key: str, template: str) -> None:
    from assay.data.prompts import TEMPLATES

    one_of(key, template, TEMPLATES.names(), "prompt template")


def check_selectors(key: str, specs: list) -> None:
    """Names and arguments: each selector checks its own argument."""
    from assay.select.stage import parse_pipeline

    for name, arg, flt in passes(key, parse_pipeline, [str(s) for s in specs]):
        passes(key, flt.check, arg)


def _backend(c, k, field="backend"):
    """The backend name, and its options (unknown ones, bad values) as the stage will build them."""
    from assay.sampling.backends import BACKENDS, options_of

    one_of(k(field), getattr(c, field), BACKENDS.names(), "generation backend")
    options_of(c, getattr(c, field), section=k("").rstrip("."))


def _sample(c, k, skip, files):
    from assay.sampling.runner import parse_shard

    _backend(c, k)
    if "template" not in skip:
        check_template(k("template"), c.template)
    one_of(k("dtype"), c.dtype, DTYPES, "dtype")
    if "n" not in skip:
        at_least(k("n"), c.n, 1)
    at_least(k("max_new_tokens"), c.max_new_tokens, 1)
    at_least(k("temperature"), c.temperature, 0)
    unit_interval(k("top_p"), c.top_p)
    at_least(k("max_batch"), c.max_batch, 1)
    if c.limit is not None:
        at_least(k("limit"), c.limit, 1)
    passes(k("shard"), parse_shard, c.shard)
    if c.budget:
        from assay.sampling.plan import parse_budget

        passes(k("budget"), parse_budget, c.budget)
    if "model" not in skip and c.backend == "hf":
        check_model(k("model"), c.model)
    if files:
        from assay.core.io import read_problems

        if not read_problems(c.problems):
            raise InputError(f"{c.problems}: no problems in it (the file is empty); nothing to sample")


def _verify(c, k, skip, files):
    from assay.verify.extract import EXTRACTORS
    from assay.verify.verifiers import VERIFIERS

    if not c.extractors:
        raise fail(k("extractors"), "needs at least one extractor")
    for name in c.extractors:
        one_of(k("extractors"), name, EXTRACTORS.names(), "answer extractor")
    one_of(k("verifier"), c.verifier, ["auto", *VERIFIERS.names()], "verifier")
    at_least(k("workers"), c.workers, 1)
    if c.timeout_s <= 0:
        raise fail(k("timeout_s"), f"must be positive, got {c.timeout_s!r}")


def _stats(c, k, skip, files):
    if not c.ks:
        raise fail(k("ks"), "needs at least one k")
    for v in c.ks:
        at_least(k("ks"), v, 1)


def _select(c, k, skip, files):
    if "selectors" not in skip:
        check_selectors(k("selectors"), c.selectors)
    one_of(k("method"), c.method, ("pipeline", "gradient"), "selection method")
    # The less section matters only when the less selector runs (method gradient appends it).
    if c.method == "gradient" or "less" in [str(s).partition(":")[0] for s in c.selectors]:
        _less(c.less, lambda name: k(f"less.{name}"), skip, files)


def _less(c, k, skip, files):
    if "targets" not in skip and not c.targets:
        raise fail(k("targets"), "the less selector needs target example files (SFT JSONL)")
    at_least(k("n"), c.n, 0)
    unit_interval(k("fraction"), c.fraction)
    unit_interval(k("warmup_fraction"), c.warmup_fraction)
    for name in ("warmup_epochs", "lora_r", "dim", "max_length"):
        at_least(k(name), getattr(c, name), 1)
    if "model" not in skip:
        check_model(k("model"), c.model)


def _train(c, k, skip, files):
    from assay.train import METHODS

    one_of(k("method"), c.method, METHODS, "training method")
    if c.scheduler not in _SCHEDULERS:
        from transformers.trainer_utils import SchedulerType

        one_of(k("scheduler"), c.scheduler, [s.value for s in SchedulerType], "learning-rate schedule")
    if c.lr <= 0:
        raise fail(k("lr"), f"must be positive, got {c.lr!r}")
    if "max_steps" not in skip and c.max_steps <= 0 and c.epochs <= 0:
        raise fail(k("epochs"), f"must be positive when max_steps is not set, got {c.epochs!r}")
    for name in ("batch_size", "grad_accum", "max_length", "save_steps", "logging_steps"):
        at_least(k(name), getattr(c, name), 1)
    at_least(k("keep_checkpoints"), c.keep_checkpoints, 0)
    at_least(k("lora.r"), c.lora.r, 1)
    if "model" not in skip:
        check_model(k("model"), c.model)


def _eval(c, k, skip, files):
    from assay.data.benchmarks import BENCHMARKS

    _backend(c, k)
    if "template" not in skip:
        check_template(k("template"), c.template)
    one_of(k("dtype"), c.dtype, DTYPES, "dtype")
    at_least(k("max_new_tokens"), c.max_new_tokens, 1)
    at_least(k("max_batch"), c.max_batch, 1)
    at_least(k("n"), c.n, 0)
    if not c.greedy and c.n < 1:
        raise fail(k("greedy"), "nothing to evaluate: greedy=false and n=0")
    if "limit" not in skip and c.limit is not None:
        at_least(k("limit"), c.limit, 1)
    if "benchmark" not in skip and c.benchmark not in BENCHMARKS and not Path(c.benchmark).exists():
        passes(k("benchmark"), BENCHMARKS.get, c.benchmark)
    if "model" not in skip and c.backend == "hf":
        check_model(k("model"), c.model)


def _problems(c, k, skip, files):
    from assay.data.problems import source_kind
    from assay.data.sources import rg_task_names

    kind, name = passes(k("source"), source_kind, c.source)
    if kind == "rg":
        one_of(k("source"), name, rg_task_names(), "reasoning-gym task")


def _judge(c, k, skip, files):
    from assay.verify.judge import JUDGE_TEMPLATES

    one_of(k("backend"), c.backend, ("llm", "export", "import"), "judge backend")
    if c.backend == "llm":
        _backend(c, k, "generator")
        one_of(k("template"), c.template, JUDGE_TEMPLATES.names(), "judge template")
        if c.generator == "hf":
            check_model(k("model"), c.model)
    at_least(k("limit"), c.limit, 0)


def _curate(c, k, skip, files):
    from assay.select.curate import STEPS

    for model, refs in c.references.items():
        if not isinstance(refs, list) or len(refs) != 2:
            raise fail(k(f"references.{model}"), f"expected [samples.jsonl, verdicts.jsonl], got {refs!r}")
    for i, spec in enumerate(c.steps):
        if not isinstance(spec, dict) or len(spec) != 1:
            raise fail(k("steps"), f"steps[{i}]: expected {{name: options}}, got {spec!r}")
        (name, opts), = spec.items()
        fn = passes(k("steps"), STEPS.get, name)
        params = [p for p in inspect.signature(fn).parameters if p not in ("items", "against")]
        params += ["benchmarks"] if name == "decontaminate" else []
        if opts is not None and not isinstance(opts, dict):
            raise fail(k("steps"), f"steps[{i}].{name}: options must be a mapping, got {opts!r}")
        for opt in opts or {}:
            one_of(k("steps"), opt, params, f"option of curation step '{name}' (steps[{i}])")


def _serve(c, k, skip, files):
    one_of(k("dtype"), c.dtype, DTYPES, "dtype")
    if not 0 <= c.port <= 65535:
        raise fail(k("port"), f"must be 0..65535, got {c.port}")
    at_least(k("max_batch"), c.max_batch, 1)
    _backend(c, k)
    if c.backend == "hf":
        check_model(k("model"), c.model)


def _plan(c, k, skip, files):
    from assay.sampling.plan import parse_budget

    check_template(k("template"), c.template)
    at_least(k("k_anchor"), c.k_anchor, 1)
    if c.completion_tokens <= 0:
        raise fail(k("completion_tokens"), f"must be positive, got {c.completion_tokens!r}")
    if c.budget:
        passes(k("budget"), parse_budget, c.budget)
    if not c.models:
        raise fail(k("models"), "give at least one model (--models a,b)")


_STAGES: dict[str, Callable] = {
    "SampleConfig": _sample, "VerifyConfig": _verify, "StatsConfig": _stats, "SelectConfig": _select, "LessOptions": _less,
    "TrainConfig": _train, "EvalConfig": _eval, "ProblemsConfig": _problems, "JudgeConfig": _judge,
    "CurateConfig": _curate, "ServeConfig": _serve, "PlanConfig": _plan,
}


def check_stage(cfg: Any, key: str = "", skip: Collection[str] = (), files: bool = False) -> None:
    """Check one stage's config. ``key`` is its section in a pipeline (``train``), ``skip`` the fields
    the pipeline fills in itself; ``files`` also checks input files (only a command given them has them)."""
    fn = _STAGES.get(type(cfg).__name__)
    if fn is not None:
        fn(cfg, lambda name: f"{key}.{name}" if key else name, set(skip), files)
