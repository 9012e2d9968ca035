"""The ``verify`` stage: find the final answer in each completion and judge it against the reference.

Every number assay reports (pass@k, maj@k, what a training run gained) rests on these verdicts,
so judging is delegated to tools built for it: Math-Verify for math answers (symbolic and numeric
equivalence: ``\\frac{1}{2}`` = ``0.5``, ``{1,2}`` = ``{2,1}``) and reasoning-gym's own scorers for
its tasks. What is ours is the part those tools leave open: which span of a free-form completion
is *the* answer (a configurable chain of extractors), and running the judges on all cores with a
hard per-item time limit (see ``assay.verify.pool``), because one pathological answer must not
stall a run of thousands.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from assay.core.checks import at_least, fail, keyed, one_of
from assay.core.config import from_mapping, load_yaml, opt, save_yaml, to_mapping
from assay.core.executor import ShardPlan, executor_options, parse_shard
from assay.core.hashing import short_hash
from assay.core.io import InputError, open_resumable, read_numbered, read_problems, read_records
from assay.core.progress import bar as progress_bar
from assay.core.records import Problem, Sample, Verdict, key
from assay.verify import sandbox
from assay.verify.extract import DEFAULT_EXTRACTORS, EXTRACTORS, extract_answer
from assay.verify.pool import TimedPool
from assay.verify.verifiers import VERIFIERS, _judge_version, choose_verifier


@dataclass
class VerifyConfig:
    """Settings of ``assay verify``."""

    INPUTS, OUTPUTS = ("problems", "samples"), ("out",)

    problems: str = opt(help="Problem JSONL with the reference answers (required)")
    samples: str = opt(help="Sample JSONL of completions to judge (required)")
    out: str = opt(help="Verdict JSONL to write (required); an existing one is resumed, not overwritten")
    workers: int = opt(os.cpu_count() or 1, help="verifier processes")
    timeout_s: float = opt(5.0, help="wall-clock limit per completion; an overdue one is a 'timeout' verdict")
    extractors: list[str] = opt(DEFAULT_EXTRACTORS, help="answer extractors, tried in order: " + ", ".join(EXTRACTORS))
    verifier: str = opt("auto", help="auto (reasoning_gym for rg problems, else math_verify) or one of: " + ", ".join(VERIFIERS))
    executor: str = opt("local", help="where shards run: local (this process) or ray (Ray tasks, one shard per worker)")
    executor_options: dict = opt({}, help="ray: address, workers, num_cpus (also each shard's verifier processes), "
                                          "num_gpus, max_retries")


def index_problems(problems: list[Problem]) -> dict[str, Problem]:
    by_id: dict[str, Problem] = {}
    for p in problems:
        if p.id in by_id:
            raise InputError(f"problem id '{p.id}' appears more than once")
        by_id[p.id] = p
    return by_id


def judged_hash(problem: Problem, text: str, verifier: str, extractors: list[str]) -> str:
    """What a verdict judged: the completion, the reference it was held against, and the rules
    (the verifier, its extractors, and the version of the code that scores)."""
    reference = [problem.answer, problem.meta.get("rg_task"), problem.meta.get("rg_entry")]
    task = problem.meta.get("rg_task") if isinstance(problem.meta.get("rg_task"), str) else None
    return short_hash([text, reference, verifier, list(extractors), _judge_version(verifier, task)])


def _stamped(v: Verdict, s: Sample, by_id: dict[str, Problem], cfg: VerifyConfig) -> Verdict:
    p = by_id[s.problem_id]
    return dataclasses.replace(v, input_hash=judged_hash(p, s.text, choose_verifier(p, cfg.verifier), cfg.extractors))


def verify_samples(problems: list[Problem], samples: list[Sample], cfg: VerifyConfig) -> list[Verdict]:
    """One Verdict per sample, in the order of ``samples``."""

    by_id = index_problems(problems)
    verdicts: list[Optional[Verdict]] = [None] * len(samples)
    for i, v in iter_verdicts(problems, samples, cfg):
        verdicts[i] = _stamped(v, samples[i], by_id, cfg)
    return verdicts  # type: ignore[return-value]


def _check_samples(cfg: VerifyConfig, problems: list[Problem], numbered: list[tuple[int, Sample]]) -> None:
    """Each sample must name a known problem, once."""
    ids, seen = {p.id for p in problems}, {}
    for lineno, s in numbered:
        if s.problem_id not in ids:
            close = difflib.get_close_matches(s.problem_id, list(ids), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise InputError(f"{cfg.samples}:{lineno}: sample {s.sample_index} of problem_id "
                             f"'{s.problem_id}': no such problem in {cfg.problems}{hint}")
        if key(s) in seen:
            raise InputError(f"{cfg.samples}:{lineno}: sample {key(s)} repeats line {seen[key(s)]}")
        seen[key(s)] = lineno


def _check_resume_config(path: Path, cfg: VerifyConfig) -> None:
    """Refuse to mix verdicts judged under different rules into one file."""
    old = load_yaml(path) if path.exists() else {}
    for field in ("extractors", "verifier"):
        if field in old and old[field] != getattr(cfg, field):
            raise InputError(
                f"{path}: the existing verdicts were made with {field}={old[field]!r}, not {getattr(cfg, field)!r}; "
                "choose another --out or delete the old output to start over"
            )


def _check_done(cfg: VerifyConfig, done: list[Verdict], numbered: list[tuple[int, Sample]],
                by_id: dict[str, Problem]) -> None:
    """Refuse to resume past verdicts that judged something other than the current inputs hold.

    Refused rather than redone: a sample that changed under its verdict means the samples (or
    problems) were replaced after verification, most often by pointing --out at another run's
    verdicts, and whatever was computed from the old pairs is stale too; starting afresh costs
    only the cheapest stage, and an append-only file stays safe to kill.
    """
    at = {key(s): (lineno, s) for lineno, s in numbered}
    fresh = f"choose another --out or delete {cfg.out} to verify afresh"
    for v in done:
        if key(v) not in at:
            raise InputError(f"{cfg.out}: holds a verdict of sample {v.problem_id}/{v.sample_index}, which is not "
                             f"in {cfg.samples}; {fresh}")
        lineno, s = at[key(v)]
        if v.input_hash != _stamped(v, s, by_id, cfg).input_hash:
            why = ("the verdict has no input hash (made by an older assay?)" if v.input_hash is None else
                   "its text or its problem's reference changed since")
            raise InputError(f"{cfg.samples}:{lineno}: sample {s.problem_id}/{s.sample_index} is not the one its "
                             f"verdict in {cfg.out} judged ({why}); {fresh}")


@dataclass
class VerifyResult:
    """The verdicts now in ``out`` (resumed ones included): how many, correct, timed out, errored."""

    n: int
    correct: int
    timeouts: int
    errors: int
    out: str

    def line(self) -> str:
        pct = f" ({100 * self.correct / self.n:.1f}%)" if self.n else ""
        return (f"[assay] verify: {self.n} verdicts, {self.correct} correct{pct}, {self.timeouts} timeouts, "
                f"{self.errors} errors -> {self.out}")


def cli_run(cfg: VerifyConfig) -> int:
    print(run_verify(cfg).line())
    return 0


def check(c: VerifyConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    if not c.extractors:
        raise fail(k("extractors"), "needs at least one extractor")
    for name in c.extractors:
        one_of(k("extractors"), name, EXTRACTORS.names(), "answer extractor")
    one_of(k("verifier"), c.verifier, ["auto", *VERIFIERS.names()], "verifier")
    at_least(k("workers"), c.workers, 1)
    executor_options(c.executor, c.executor_options, k("executor_options"))
    if c.timeout_s <= 0:
        raise fail(k("timeout_s"), f"must be positive, got {c.timeout_s!r}")


def run_verify(cfg: VerifyConfig, progress: bool = True, skip: Iterable = (), shard: str = "0/1") -> VerifyResult:
    """Judge every sample of ``cfg.samples`` not yet judged in ``cfg.out`` (resumable).

    For a sharded run (``executor: ray``): ``shard`` 'i/N' judges only the samples whose line
    position modulo N is i, and ``skip`` names keys judged elsewhere (the merged output). Neither
    is a config field: they say which part of the work this call does, not how it is judged."""

    o = executor_options(cfg.executor, cfg.executor_options)
    if o is not None:
        return _run_verify_sharded(cfg, o, progress)
    problems = read_problems(cfg.problems)
    numbered = read_numbered(cfg.samples, Sample)
    samples = [s for _, s in numbered]
    _check_samples(cfg, problems, numbered)
    by_id = {p.id: p for p in problems}
    config_path = Path(str(cfg.out) + ".config.yaml")
    _check_resume_config(config_path, cfg)
    done, writer = open_resumable(cfg.out, Verdict, key)
    with writer:
        _check_done(cfg, done, numbered, by_id)
        save_yaml(config_path, cfg)
        done_keys = {key(v) for v in done} | {tuple(k) for k in skip}
        i_shard, n_shards = parse_shard(shard)
        todo = [s for j, s in enumerate(samples) if j % n_shards == i_shard and key(s) not in done_keys]
        mine = len(todo) + len(done)
        verdicts = list(done)  # _check_done: every one is of a current sample
        # Written in input order (a short reorder buffer) so reruns give byte-identical files.
        buffer: dict[int, Verdict] = {}
        next_i = 0
        with progress_bar(mine, "verify", "sample", initial=len(done), enabled=progress) as bar:
            for i, v in iter_verdicts(problems, todo, cfg):
                buffer[i] = _stamped(v, todo[i], by_id, cfg)
                bar.update(1)
                while next_i in buffer:
                    writer.write(buffer[next_i])
                    verdicts.append(buffer.pop(next_i))
                    next_i += 1
    return VerifyResult(len(verdicts), sum(v.correct for v in verdicts), sum(v.status == "timeout" for v in verdicts),
                        sum(v.status == "error" for v in verdicts), str(cfg.out))


def _verify_shard(payload: dict) -> dict:
    """One shard, in a Ray worker: the local stage on every N-th sample."""
    r = run_verify(from_mapping(VerifyConfig, payload["cfg"]), progress=False, skip=payload["skip"],
                   shard=payload["shard"])
    return dataclasses.asdict(r)


def _run_verify_sharded(cfg: VerifyConfig, o, progress: bool) -> VerifyResult:
    """``executor: ray``: every N-th sample per Ray task, merged in the samples' order (as a local run writes)."""
    problems = read_problems(cfg.problems)
    numbered = read_numbered(cfg.samples, Sample)
    _check_samples(cfg, problems, numbered)
    config_path = Path(str(cfg.out) + ".config.yaml")
    _check_resume_config(config_path, cfg)
    done, writer = open_resumable(cfg.out, Verdict, key)
    with writer:
        _check_done(cfg, done, numbered, {p.id: p for p in problems})
    save_yaml(config_path, cfg)
    plan = ShardPlan(cfg.out, o, "verify")
    position = {key(s): j for j, (_, s) in enumerate(numbered)}
    done_keys = sorted(key(v) for v in done)
    per_shard = max(1, int(o.num_cpus))  # the task's CPUs are its verifier processes
    payloads = [{"cfg": to_mapping(dataclasses.replace(cfg, out=str(f), executor="local", executor_options={},
                                                       workers=per_shard)),
                 "shard": f"{i}/{plan.n}", "skip": [k for k in done_keys if position[k] % plan.n == i]}
                for i, f in enumerate(plan.files)]
    plan.run(o, _verify_shard, payloads, len(numbered) - len(done), "sample", progress=progress)
    plan.merge(Verdict, key, done, lambda v: position[key(v)])
    plan.cleanup()
    verdicts = read_records(cfg.out, Verdict)
    return VerifyResult(len(verdicts), sum(v.correct for v in verdicts), sum(v.status == "timeout" for v in verdicts),
                        sum(v.status == "error" for v in verdicts), str(cfg.out))


@dataclass
class _VerifyCall:
    """What a pool worker runs: one verifier, called on (problem, completion)."""

    verifier: Any

    def warmup(self) -> None:
        hook = getattr(self.verifier, "warmup", None)
        if hook is not None:
            hook()

    def __call__(self, problem: Problem, completion: str) -> tuple[Optional[str], bool]:
        with sandbox.guarded():
            extracted, correct = self.verifier.verify(problem, completion)
        return extracted, bool(correct)


def _safe_extract(text: str, extractors: list[str]) -> Optional[str]:
    try:
        return extract_answer(text, extractors)
    except Exception:
        return None


def iter_verdicts(problems: list[Problem], samples: list[Sample], cfg: VerifyConfig) -> Iterator[tuple[int, Verdict]]:
    """Yield (index into ``samples``, Verdict) as verdicts complete, in completion order."""
    for name in cfg.extractors:
        EXTRACTORS.get(name)  # an unknown name fails now, with suggestions, not in a worker
    if not cfg.extractors:
        raise InputError("extractors: give at least one of " + ", ".join(EXTRACTORS))
    if cfg.workers < 1:
        raise InputError(f"workers: must be at least 1, got {cfg.workers}")
    if not cfg.timeout_s > 0:
        raise InputError(f"timeout_s: must be positive, got {cfg.timeout_s}")
    by_id = index_problems(problems)
    verifiers: dict[str, Any] = {}
    checked: set[tuple[str, str]] = set()
    tasks: list[tuple[str, tuple]] = []
    for s in samples:
        p = by_id.get(s.problem_id)
        if p is None:
            raise InputError(f"sample {key(s)}: unknown problem_id '{s.problem_id}'")
        name = choose_verifier(p, cfg.verifier)
        if name not in verifiers:
            verifiers[name] = VERIFIERS.get(name)(list(cfg.extractors))
        check = getattr(verifiers[name], "check", None)
        if check is not None and (name, p.id) not in checked:
            try:
                check(p)
            except ValueError as exc:
                raise InputError(f"problem '{p.id}' cannot be judged by {name}: {exc}") from None
            checked.add((name, p.id))
        tasks.append((name, (p, s.text)))
    if not tasks:
        return
    handlers = {name: _VerifyCall(v) for name, v in verifiers.items()}
    preload = [__name__] + [m for v in verifiers.values() for m in getattr(v, "preload", ())]
    with TimedPool(handlers, min(cfg.workers, len(tasks)), cfg.timeout_s, preload=preload) as pool:
        for out in pool.imap_unordered(tasks):
            s = samples[out.index]
            name, (p, _) = tasks[out.index]
            method_for = getattr(verifiers[name], "method_for", None)
            method = method_for(p) if method_for is not None else verifiers[name].name
            if out.status == "ok":
                extracted, correct = out.value
                yield out.index, Verdict(s.problem_id, s.sample_index, extracted, correct, method)
            else:
                extracted = _safe_extract(s.text, cfg.extractors)
                yield out.index, Verdict(s.problem_id, s.sample_index, extracted, False, method, out.status, out.error)
