"""Gradient-based data selection (LESS, Xia et al. 2024; JiuZhang3.0's value estimation): the core.

A training example is valuable for a target task when one optimizer step on it would move the
model the way a step on the target data would. LESS estimates that with LoRA gradients:

- a training example's feature is its Adam update direction at a warmup checkpoint,
  m' = b1 m + (1 - b1) g, v' = b2 v + (1 - b2) g^2, feature = m' / (sqrt(v') + eps),
  with (m, v) the checkpoint's optimizer moments; a target example's feature is its plain gradient;
- both are randomly projected to d dimensions (Johnson-Lindenstrauss: inner products and
  cosines survive with error ~ 1/sqrt(d));
- a training example's score is, per checkpoint, the max over target tasks of its mean cosine
  to the task's examples, summed over checkpoints weighted by their learning rate.

This module is the ``less`` selector: it composes the machinery of ``assay.select.gradients``
(projection, preconditioning, per-example LoRA gradients, features, scores) behind the one filter
protocol (``--selectors correct,dedup,less``): it runs the warmup training itself, so the select
stage knows nothing of models or training, and it has its own options section (``LessOptions``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from assay.core.checks import at_least, fail, keyed, one_of, unit_interval
from assay.core.config import opt
from assay.core.executor import executor_options
from assay.core.hardware import resolve_dtype
from assay.core.io import InputError, read_records, write_json, write_records
from assay.core.records import SFTExample
from assay.models import check_model
from assay.select.filters import Context, Rejection

# Re-exported: the machinery was here before it had a module of its own.
from assay.select.gradients import (  # noqa: F401
    BlockProjector,
    FeatureStore,
    SparseSignProjector,
    adam_precondition,
    checkpoint_lr,
    checkpoint_moments,
    enable_checkpointing,
    extract_features,
    gradient_scores,
    less_scores,
    lora_gradient,
    normalize_rows,
    tokenize_example,
    top_indices,
)
from assay.select.selectors import SELECTORS, to_example
from assay.train import LoraOptions, TrainConfig, run_training

# ---- the ``less`` selector --------------------------------------------------------------------------

@dataclass
class LessOptions:
    """The ``less`` selector's settings: ``SelectConfig.less`` (``less.n=100``), or a study's section."""

    targets: list = opt([], help="SFT JSONL files of target examples, one task per file")
    n: int = opt(0, help="keep the top N (or use fraction)")
    fraction: float = opt(0.05, help="keep the top fraction when n is 0")
    model: str = opt("smollm2-135m-instruct", help="the model whose LoRA gradients are the features")
    warmup_fraction: float = opt(0.05, help="fraction of the pool for the warmup LoRA run")
    warmup_epochs: int = opt(4, help="warmup epochs; one checkpoint (with optimizer state) per epoch")
    lora_r: int = opt(8, help="LoRA rank of the warmup")
    dim: int = opt(8192, help="projection dimension")
    max_length: int = opt(512, help="truncate examples to this many tokens")
    checkpointing: bool = opt(False, help="gradient checkpointing, for chains longer than memory allows")
    dtype: str = opt("auto", help="compute dtype of the warmup and the gradients: bfloat16 (autocast), float32, or "
                                  "auto (bfloat16 where the hardware multiplies it)")
    executor: str = opt("local", help="where the pool's gradient features are computed: local or ray (row ranges "
                                      "as Ray tasks)")
    executor_options: dict = opt({}, help="ray: address, workers, num_cpus, num_gpus, max_retries")


def less_rank(pool: list[SFTExample], targets: dict[str, list[SFTExample]], o: LessOptions, work: Path,
              seed: int) -> tuple[list[float], dict]:
    """LESS scores of ``pool`` rows for the ``targets`` tasks: a warmup LoRA run on a seeded slice of the
    pool, then per-checkpoint gradient features; (scores in pool order, cost with ``flops`` and its parts)."""
    # Seeded by the stage's seed, not a step's derived RNG: the warmup slice does not move when steps
    # are added before this one.
    warm = random.Random(seed).sample(pool, max(1, math.ceil(o.warmup_fraction * len(pool))))
    write_records(work / "warmup.jsonl", warm)
    per_epoch = max(1, math.ceil(len(warm) / 8))
    warm_cfg = TrainConfig(
        data=str(work / "warmup.jsonl"), out=str(work / "warmup"), model=o.model,
        lora=LoraOptions(r=o.lora_r, alpha=2 * o.lora_r), epochs=o.warmup_epochs, batch_size=8,
        save_steps=per_epoch, keep_checkpoints=0, merge=False, seed=seed, max_length=o.max_length, dtype=o.dtype)
    warm_summary = run_training(warm_cfg, progress=False)
    scores, cost = gradient_scores(o.model, pool, targets, work / "warmup", o.dim, seed, o.max_length,
                                   work / "features", checkpointing=o.checkpointing,
                                   dtype=resolve_dtype(o.dtype, "cpu"),  # features are taken on the CPU
                                   executor=executor_options(o.executor, o.executor_options, "less.executor_options"))
    out = {"warmup_flops": warm_summary["flops"], "feature_flops": cost.pop("flops"), **cost}
    out["flops"] = out["warmup_flops"] + out["feature_flops"]
    return scores, out


class LessSelector:
    """LESS over the candidates it is given: warmup LoRA, per-checkpoint features, the top scores.

    Needs ``ctx.options`` (LessOptions) and ``ctx.workdir`` (warmup run, features, ``scores.json``);
    reports the warmup's and the gradients' FLOPs in ``ctx.cost``, which the funnel records.
    """

    name = "less"

    def check(self, arg: Optional[str]) -> None:
        if arg is not None:
            raise InputError(f"selector 'less' takes no argument (got 'less:{arg}'); set less.n or less.fraction")

    def apply(self, cands: list, ctx: Context) -> tuple[list, list[Rejection]]:
        self.check(ctx.arg)
        o: LessOptions = ctx.options
        if not o.targets:
            raise InputError("selector 'less' needs less.targets (SFT JSONL files of target examples)")
        if not cands:
            raise InputError("selector 'less': the steps before it left no candidates")
        pool = [to_example(c, "pool") for c in cands]
        targets = {Path(t).stem: read_records(t, SFTExample) for t in o.targets}
        scores, cost = less_rank(pool, targets, o, Path(ctx.workdir), ctx.seed)
        work = Path(ctx.workdir)
        top = top_indices(scores, n=o.n or None, fraction=None if o.n else o.fraction)
        chosen = set(top)
        write_json(work / "scores.json", {f"{c.problem.id}/{c.sample.sample_index}": float(s)
                                          for c, s in zip(cands, scores)})
        ctx.cost.update(cost)
        # Kept in score order, best first, as LESS ranks them (the one filter that orders its output).
        kept = [cands[i] for i in top]
        rej = [Rejection(c, ctx.step, f"gradient score {scores[i]:.4g} below the top {len(top)}")
               for i, c in enumerate(cands) if i not in chosen]
        return kept, rej


SELECTORS.add("less", LessSelector())


def check(c: LessOptions, key: str = "", skip=(), files: bool = False) -> None:
    """The ``less`` section: ``skip`` names the fields a pipeline fills in itself."""

    k = keyed(key)
    if "targets" not in skip and not c.targets:
        raise fail(k("targets"), "the less selector needs target example files (SFT JSONL)")
    at_least(k("n"), c.n, 0)
    unit_interval(k("fraction"), c.fraction)
    unit_interval(k("warmup_fraction"), c.warmup_fraction)
    for name in ("warmup_epochs", "lora_r", "dim", "max_length"):
        at_least(k(name), getattr(c, name), 1)
    one_of(k("dtype"), c.dtype, ("auto", "float32", "bfloat16"), "dtype")
    executor_options(c.executor, c.executor_options, k("executor_options"))
    if "model" not in skip:
        check_model(k("model"), c.model)
