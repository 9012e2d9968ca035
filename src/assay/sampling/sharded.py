"""Sampling spread over shards: ``executor: ray`` runs each shard as a Ray task, then merges.

Shard i of N samples the problems at positions i, i+N, ... into its own resumable file under
``<out>.shards/``, through the same runner a local run uses, so a shard resumes after any kill.
Per-sample seeds make a draw the same in whichever shard and batch it lands, so the merged
output holds the records a local run writes; the merge orders them by problem position and
sample index (a local run writes them as they finish) and writes ``out`` atomically, keeping any
samples ``out`` already had. ``<out>.identity.json`` is checked and written as for a local run,
so a sharded and a local run resume each other's files. The shard count is recorded in
``<out>.shards/plan.json``: a rerun with another count is refused instead of mixing partitions.
After a merge the shard files this run recorded are deleted, and nothing else.
"""

from __future__ import annotations

import dataclasses

from assay.core.config import from_mapping, to_mapping
from assay.core.executor import ShardPlan, executor_options
from assay.core.io import InputError
from assay.core.records import Sample, key
from assay.sampling.runner import SampleConfig, open_output, run_sampling


def run_sampling_on(cfg: SampleConfig, generator=None, progress: bool = True) -> dict:
    """:func:`run_sampling` on ``cfg.executor``: in this process, or sharded over Ray."""
    if cfg.executor == "local":
        executor_options("local", cfg.executor_options)
        return run_sampling(cfg, generator=generator, progress=progress)
    if generator is not None:
        raise InputError("sample: a generator object cannot be shipped to Ray workers; each shard builds its own")
    return run_sharded(cfg, progress=progress)


def _sample_shard(payload: dict) -> dict:
    """One shard, in a Ray worker: the local runner on its slice of the problems."""
    cfg = from_mapping(SampleConfig, payload["cfg"])
    return run_sampling(cfg, progress=payload["progress"], skip=payload["skip"])


def run_sharded(cfg: SampleConfig, progress: bool = True) -> dict:
    o = executor_options(cfg.executor, cfg.executor_options, "executor_options")
    if cfg.shard != "0/1":
        raise InputError(f"sample: --shard {cfg.shard} with --executor {cfg.executor}: the executor makes the shards; "
                         "pass one or the other")
    problems, _, existing, writer = open_output(cfg, "0/1")
    writer.close()  # the shards write; the merge replaces out whole

    plan = ShardPlan(cfg.out, o, "sample")
    n = plan.n
    done = {key(s) for s in existing}
    payloads = []
    for i, f in enumerate(plan.files):
        mine = {p.id for j, p in enumerate(problems) if j % n == i}
        shard_cfg = dataclasses.replace(cfg, out=str(f), shard=f"{i}/{n}", executor="local", executor_options={})
        payloads.append({"cfg": to_mapping(shard_cfg), "progress": False,
                         "skip": sorted(k for k in done if k[0] in mine)})
    todo = len(problems) * cfg.n - sum(1 for k in done if k[1] < cfg.n)
    results = plan.run(o, _sample_shard, payloads, todo, "sample", progress=progress)
    rank = {p.id: j for j, p in enumerate(problems)}
    # Shard files of an earlier run with a larger --limit or --n may hold more than asked now: only
    # the asked-for records are merged (the identity records those problems' questions).
    merged = plan.merge(Sample, key, existing,
                        lambda s: (rank.get(s.problem_id, len(rank)), s.problem_id, s.sample_index),
                        keep=lambda s: s.problem_id in rank and s.sample_index < cfg.n)
    plan.cleanup()
    summary = {k: sum(r[k] for r in results) for k in ("sampled", "completion_tokens", "flops")}
    summary["seconds"] = max((r["seconds"] for r in results), default=0.0)
    summary["already_done"] = len(existing)
    summary["shards"] = n
    summary["merged"] = merged
    return summary
