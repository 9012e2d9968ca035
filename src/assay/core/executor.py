"""Where a stage's shards run: in this process (``local``) or as Ray tasks (``ray``).

A stage that maps over records splits its work into shards that share no state; each shard
writes its own resumable file, and the stage merges the files in a fixed order into the output a
local run writes. This module only runs the shards. Ray's own fault tolerance does the rest: a
task whose worker process dies is retried (``max_retries``) and, since its shard file is
resumable, the retry continues where the dead worker stopped; errors raised by the stage's code
(bad input) are not retried and reach the caller as themselves.

On a cluster, ``address`` (or ``$RAY_ADDRESS``) names it (``ray start --head`` on one node,
``ray start --address HEAD:6379`` on the others); with neither, Ray starts a local cluster for
this process. ``num_gpus=1`` gives each shard a GPU of its own (Ray sets ``CUDA_VISIBLE_DEVICES``),
so one vLLM server per GPU.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from assay.core.config import ConfigError, from_mapping, parse_option_string
from assay.core.identity import load_record
from assay.core.io import InputError, read_records, write_json, write_records
from assay.core.progress import bar as progress_bar
from assay.core.registry import did_you_mean

EXECUTORS = ("local", "ray")


@dataclass
class RayOptions:
    """``executor_options`` of ``executor: ray``."""

    address: str = ""  # a running cluster (ray://, HOST:PORT or auto); "" : $RAY_ADDRESS, else a local cluster
    workers: int = 0  # shards run at once; 0: as many as the cluster has room for (by num_cpus/num_gpus)
    num_cpus: float = 1.0  # CPUs each shard's task reserves
    num_gpus: float = 0.0  # GPUs each shard's task reserves (1 for a vLLM server per GPU)
    max_retries: int = 3  # times a task is rerun after its worker process died


def executor_options(executor: str, options: Any, key: str = "executor_options") -> Optional[RayOptions]:
    """The checked options of ``executor`` (None for local); errors name ``key.<option>``."""
    if executor not in EXECUTORS:
        at = key[: -len("executor_options")] + "executor" if key.endswith("executor_options") else "executor"
        raise ConfigError(at, at, f"'{executor}' is not an executor{did_you_mean(executor, list(EXECUTORS))}")
    if executor == "local":
        if options:
            raise ConfigError(key, key, "the local executor takes no options")
        return None
    if isinstance(options, RayOptions):
        o = options
    else:
        if isinstance(options, str):
            options = parse_option_string(options, key)
        if options is not None and not isinstance(options, dict):
            raise ConfigError(key, key, f"expected a mapping of ray options, got {options!r}")
        names = list(RayOptions.__dataclass_fields__)
        for k in options or {}:
            if k not in names:
                raise ConfigError(f"{key}.{k}", f"{key}.{k}",
                                  f"'{k}' is not an option of the ray executor{did_you_mean(str(k), names)}")
        o = from_mapping(RayOptions, dict(options or {}), key)
    for name in ("workers", "max_retries"):
        if getattr(o, name) < 0:
            raise ConfigError(f"{key}.{name}", f"{key}.{name}", f"must be at least 0, got {getattr(o, name)!r}")
    for name in ("num_cpus", "num_gpus"):
        v = getattr(o, name)
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"{key}.{name}", f"{key}.{name}", f"must be a non-negative number, got {v!r}")
    if o.num_cpus == 0 and o.num_gpus == 0:
        raise ConfigError(f"{key}.num_cpus", f"{key}.num_cpus", "a task must reserve some CPUs or GPUs")
    return o


def ray_init(o: RayOptions):
    """Connect to (or start) the cluster once per process; a local cluster binds 127.0.0.1 only
    (a Ray cluster runs whatever code reaches it)."""
    try:
        import ray
    except ImportError:
        raise InputError("executor ray: ray is not installed (pip install 'assay[ray]')") from None
    if not ray.is_initialized():
        address = o.address or os.environ.get("RAY_ADDRESS") or None
        local = {"_node_ip_address": "127.0.0.1"} if address is None else {}
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=True, configure_logging=True,
                     logging_level="warning", **local)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError for a bad address
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise InputError(f"executor ray: cannot start or reach the cluster "
                             f"{address or '(local)'}: {type(exc).__name__}: {first}") from None
    return ray


def shard_count(o: RayOptions) -> int:
    """``workers``, or as many tasks as the cluster's CPUs (or GPUs) hold at once."""
    if o.workers:
        return o.workers
    res = ray_init(o).cluster_resources()
    fits = [res.get("CPU", 0) / o.num_cpus if o.num_cpus else math.inf,
            res.get("GPU", 0) / o.num_gpus if o.num_gpus else math.inf]
    return max(1, int(min(fits)))


def map_shards(o: Optional[RayOptions], fn: Callable[[Any], Any], payloads: Sequence[Any],
               poll: Optional[Callable[[], None]] = None) -> list:
    """``[fn(p) for p in payloads]``, locally (``o`` None) or as Ray tasks; results in payload order.

    ``fn`` must be a module-level function (Ray ships it by reference); ``poll`` is called every
    couple of seconds while tasks run (a progress bar over the shard files)."""
    if o is None:
        return [fn(p) for p in payloads]
    ray = ray_init(o)
    remote = ray.remote(num_cpus=o.num_cpus, num_gpus=o.num_gpus, max_retries=o.max_retries,
                        retry_exceptions=False)(fn)
    refs = [remote.remote(p) for p in payloads]
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=2.0)
            ray.get(ready)  # a failed shard stops the run now, not when the others are done
            if poll is not None:
                poll()
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        _cancel(ray, pending)
        # The stage's own error (a bad input found in a shard) is raised as itself, one line as locally.
        cause = getattr(exc, "cause", None)
        if isinstance(cause, Exception) and not isinstance(cause, ray.exceptions.RayError):
            raise cause from None
        raise InputError(f"executor ray: a shard failed: {_first_line(exc)}") from None
    except ray.exceptions.RayError as exc:  # a worker lost more often than max_retries, a node gone
        _cancel(ray, pending)
        raise InputError(f"executor ray: a shard could not finish after {o.max_retries} retries "
                         f"({type(exc).__name__}: {_first_line(exc)}); rerun the command to resume") from None
    except BaseException:
        _cancel(ray, pending)
        raise


def _cancel(ray, refs) -> None:
    for r in refs:
        ray.cancel(r, force=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[-1][:300]


def parse_shard(shard: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in shard.split("/"))
        if not (0 <= i < n):
            raise ValueError
        return i, n
    except ValueError:
        raise InputError(f"shard '{shard}': expected 'i/N' with 0 <= i < N") from None


class ShardPlan:
    """The shard files of one sharded output: ``<out>.shards/IIII-of-NNNN.jsonl``, their count
    recorded in ``plan.json`` so a rerun with another count is refused instead of mixing
    partitions, a progress bar over their lines, the merge into ``out`` and the cleanup of
    exactly the files recorded here."""

    SIDECARS = ("", ".identity.json", ".config.yaml", ".api_cache.jsonl")

    def __init__(self, out: str, o: RayOptions, stage: str):
        self.out, self.stage = str(out), stage
        self.dir = Path(self.out + ".shards")
        self.plan_path = self.dir / "plan.json"
        plan = load_record(self.plan_path)
        n = plan["shards"] if plan and not o.workers else shard_count(o)
        if plan and plan["shards"] != n:
            raise InputError(f"{self.plan_path}: this {stage} was started with {plan['shards']} shards, this run asks "
                             f"for {n}; pass executor_options.workers={plan['shards']} to finish it")
        self.n = n
        self.files = [self.dir / f"{i:04d}-of-{n:04d}.jsonl" for i in range(n)]
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json(self.plan_path, {"shards": n, "files": [f.name for f in self.files]})

    def lines(self) -> int:
        total = 0
        for f in self.files:
            try:
                with open(f, "rb") as fh:
                    total += fh.read().count(b"\n")
            except FileNotFoundError:
                pass
        return total

    def run(self, o: RayOptions, fn: Callable[[Any], Any], payloads: Sequence[Any], todo: int, unit: str,
            progress: bool = True) -> list:
        """``map_shards`` with a bar counting the shards' new lines."""
        seen = [self.lines()]  # a resumed run's shards already hold these
        bar = progress_bar(max(0, todo - seen[0]), self.stage, unit, enabled=progress)

        def poll() -> None:
            count = self.lines()
            bar.update(max(0, count - seen[0]))
            seen[0] = max(seen[0], count)

        try:
            return map_shards(o, fn, payloads, poll=poll)
        finally:
            bar.close()

    def merge(self, cls: type, key: Callable, existing: list, order: Callable,
              keep: Callable[[Any], bool] = lambda r: True) -> int:
        """``out`` := its own records plus the shards' that ``keep`` accepts (what this run asked
        for), each key once, sorted by ``order``; written atomically."""
        by_key = {key(r): r for r in existing}
        for f in self.files:
            if f.exists():
                for r in read_records(f, cls):
                    if keep(r):
                        by_key.setdefault(key(r), r)
        rows = sorted(by_key.values(), key=order)
        tmp = Path(self.out + ".merging")
        write_records(tmp, rows)
        os.replace(tmp, self.out)
        return len(rows)

    def cleanup(self) -> None:
        for f in self.files:
            for extra in self.SIDECARS:
                Path(str(f) + extra).unlink(missing_ok=True)
        self.plan_path.unlink(missing_ok=True)
        try:
            self.dir.rmdir()
        except OSError:
            pass  # something else lives there: left alone
