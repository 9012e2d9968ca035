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
import os
from pathlib import Path

from assay.core.config import from_mapping, save_yaml, to_mapping
from assay.core.executor import executor_options, map_shards, shard_count
from assay.core.identity import load_record
from assay.core.io import InputError, open_resumable, read_problems, read_records, write_json, write_records
from assay.core.progress import bar as progress_bar
from assay.core.records import Sample, key
from assay.sampling.base import Decoding
from assay.sampling.runner import SampleConfig, _check_resume, run_sampling, select_problems


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
    all_problems = read_problems(cfg.problems)
    if not all_problems:
        raise InputError(f"{cfg.problems}: no problems in it (the file is empty); nothing to sample")
    problems = select_problems(all_problems, cfg.limit, "0/1")
    decoding = Decoding(cfg.temperature, cfg.top_p, cfg.max_new_tokens, tuple(cfg.stop))
    existing, writer = open_resumable(cfg.out, Sample, key)
    try:
        _check_resume(existing, cfg, decoding, all_problems, problems)
    finally:
        writer.close()
    save_yaml(Path(cfg.out).with_name(Path(cfg.out).name + ".config.yaml"), to_mapping(cfg))

    shards_dir = Path(str(cfg.out) + ".shards")
    plan_path = shards_dir / "plan.json"
    plan = load_record(plan_path)
    n = plan["shards"] if plan and not o.workers else shard_count(o)
    if plan and plan["shards"] != n:
        raise InputError(f"{plan_path}: this sampling was started with {plan['shards']} shards, this run asks for {n}; "
                         f"pass executor_options.workers={plan['shards']} to finish it")
    files = [shards_dir / f"{i:04d}-of-{n:04d}.jsonl" for i in range(n)]
    shards_dir.mkdir(parents=True, exist_ok=True)
    write_json(plan_path, {"shards": n, "files": [f.name for f in files]})

    done = {key(s) for s in existing}
    payloads = []
    for i, f in enumerate(files):
        mine = {p.id for j, p in enumerate(problems) if j % n == i}
        shard_cfg = dataclasses.replace(cfg, out=str(f), shard=f"{i}/{n}", executor="local", executor_options={})
        payloads.append({"cfg": to_mapping(shard_cfg), "progress": False,
                         "skip": sorted(k for k in done if k[0] in mine)})
    seen = [sum(_lines(f) for f in files)]  # a resumed run's shards already hold these
    todo = len(problems) * cfg.n - sum(1 for k in done if k[1] < cfg.n) - seen[0]
    bar = progress_bar(max(todo, 0), "sample", "sample", enabled=progress)

    def poll() -> None:
        count = sum(_lines(f) for f in files)
        bar.update(max(0, count - seen[0]))
        seen[0] = max(seen[0], count)

    try:
        results = map_shards(o, _sample_shard, payloads, poll=poll)
    finally:
        bar.close()
    merged = merge(cfg.out, existing, files, [p.id for p in problems])
    for f in files:  # only what this run recorded as its own
        for extra in ("", ".identity.json", ".config.yaml", ".api_cache.jsonl"):
            Path(str(f) + extra).unlink(missing_ok=True)
    plan_path.unlink(missing_ok=True)
    try:
        shards_dir.rmdir()
    except OSError:
        pass  # something else lives there: left alone
    summary = {k: sum(r[k] for r in results) for k in ("sampled", "completion_tokens", "flops")}
    summary["seconds"] = max((r["seconds"] for r in results), default=0.0)
    summary["already_done"] = len(existing)
    summary["shards"] = n
    summary["merged"] = merged
    return summary


def _lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def merge(out: str, existing: list[Sample], files: list[Path], order: list[str]) -> int:
    """``out`` := its own samples plus the shards', each key once, by problem position then sample index."""
    rank = {pid: i for i, pid in enumerate(order)}
    by_key: dict = {key(s): s for s in existing}
    for f in files:
        if f.exists():
            for s in read_records(f, Sample):
                by_key.setdefault(key(s), s)
    rows = sorted(by_key.values(), key=lambda s: (rank.get(s.problem_id, len(rank)), s.problem_id, s.sample_index))
    tmp = Path(str(out) + ".merging")
    write_records(tmp, rows)
    os.replace(tmp, out)
    return len(rows)
