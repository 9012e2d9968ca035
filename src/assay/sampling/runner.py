"""The sampling stage: problems in, Sample records out, resumable at any moment.

Each finished sample is appended and flushed as soon as it exists. On restart the output file is
read back (a torn last line from a SIGKILL is cut), the finished (problem_id, sample_index) keys
are skipped, and only the rest is sampled, so a killed job loses at most the samples in flight
and never writes one twice. Each sample has its own seed derived from (seed, problem_id,
sample_index), so a redone sample is the same draw whichever batch it lands in.

Resuming is only safe into a file made the same way. ``<out>.identity.json`` records what
changes the draws (model and its files' hashes, backend, decoding, template and its text, base
seed, dtype, device, the backend's other output-changing options) and each sampled problem's
question hash; a rerun that differs in any of them, or whose records disagree with it anywhere in the file, is refused. Output path, limit,
shard, n and max_batch are not part of it: per-sample seeds make a draw independent of them.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from assay.core.config import opt, save_yaml, to_mapping
from assay.core.executor import parse_shard  # noqa: F401  (re-exported: sample's --shard)
from assay.core.hashing import short_hash
from assay.core.identity import FileHashes, check_identity, load_record
from assay.core.io import InputError, open_resumable, read_problems, write_json
from assay.core.progress import bar as progress_bar
from assay.core.records import Problem, Sample, key
from assay.data.prompts import TEMPLATES
from assay.models import DEFAULT_MODEL, model_identity
from assay.sampling.backends import make_generator, options_of, protocol_options
from assay.sampling.base import Decoding, Generator, PromptGroup
from assay.sampling.forcing import BudgetForcing, decoding_with, forced


@dataclass
class SampleConfig:
    INPUTS, OUTPUTS = ("problems",), ("out",)
    problems: str = opt("problems.jsonl", help="Problem JSONL to sample from")
    out: str = opt("samples.jsonl", help="Sample JSONL to write (appended; rerun to resume)")
    model: str = opt(DEFAULT_MODEL, help="model spec: embedded name, local HF folder or hub id")
    backend: str = opt("hf", help="generation backend")
    n: int = opt(4, help="samples per problem")
    temperature: float = opt(0.7, help="sampling temperature; 0 means greedy")
    top_p: float = opt(1.0, help="nucleus sampling mass")
    max_new_tokens: int = opt(256, help="completion length limit")
    stop: list = opt([], help="stop strings (comma-separated on the command line)")
    seed: int = opt(0, help="base seed; each sample's seed derives from it and the sample's key")
    template: str = opt("boxed-v1", help="prompt template id")
    max_batch: int = opt(64, help="rows decoded together by the HF backend (64: 2.4x the tokens/s of 16 in bf16, benchmarks/RESULTS.md)")
    dtype: str = opt("auto", help="model dtype: auto (bfloat16 where the hardware multiplies it, else float32), float32, bfloat16, float16")
    device: str = opt("cpu", help="torch device")
    limit: Optional[int] = opt(None, help="use only the first N problems")
    shard: str = opt("0/1", help="'i/N': take problems whose position modulo N is i")
    trust_remote_code: bool = opt(False, help="allow custom model code from the model folder (off by default)")
    base_url: str = opt("", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL)")
    backend_options: dict = opt({}, help=("the backend's own options, over the flat flags above (hf: dtype, device, "
                                          "max_batch, trust_remote_code, refill_fraction; openai: base_url, "
                                          "concurrency, cache, n_params, api_key_env, max_retries, backoff_s, "
                                          "timeout_s, chat), e.g. n_params=7e9,concurrency=4"))
    executor: str = opt("local", help="where shards run: local (this process) or ray (Ray tasks, one shard per worker)")
    executor_options: dict = opt({}, help=("ray: address (default $RAY_ADDRESS, else a local cluster), workers "
                                           "(0: as many as fit), num_cpus, num_gpus per shard, max_retries"))
    budget: str = opt("", help=("sample until this many FLOPs are realized, then trim to it (e.g. 1e15); n is the "
                                "starting guess (see `assay plan`); raw samples go to <out>.all.jsonl"))
    forcing: BudgetForcing = field(default_factory=BudgetForcing, metadata={"help": (
        "s1 budget forcing (assay.sampling.forcing), off by default: forcing.min_tokens, forcing.waits, "
        "forcing.max_tokens, forcing.wait_text, forcing.answer_prefix, forcing.answer_tokens")})


def sample_seed(base: int, problem_id: str, sample_index: int) -> int:
    h = hashlib.sha256(f"{base}:{problem_id}:{sample_index}".encode()).digest()
    return int.from_bytes(h[:8], "little") & (2**63 - 1)


def select_problems(problems: list[Problem], limit: Optional[int], shard: str) -> list[Problem]:
    if limit is not None:
        problems = problems[:limit]
    i, n = parse_shard(shard)
    return [p for j, p in enumerate(problems) if j % n == i]


def plan_groups(problems: Iterable[Problem], n: int, seed: int, template: str,
                done: set[tuple[str, int]]) -> list[PromptGroup]:
    tpl = TEMPLATES.get(template)
    groups = []
    for p in problems:
        todo = [(i, sample_seed(seed, p.id, i)) for i in range(n) if (p.id, i) not in done]
        if todo:
            groups.append(PromptGroup(p.id, tpl.messages(p.question), todo))
    return groups


def backend_options(cfg: SampleConfig):
    """The checked options of ``cfg.backend``; the request cache lies beside the output unless set."""
    return options_of(cfg, defaults={"cache": str(cfg.out) + ".api_cache.jsonl"})


def _remote_dtype(dtype: str) -> str:
    """A server's precision is not ours to know; files sampled through one before ``auto`` existed
    recorded the default then, float32, and keep resuming."""
    return "float32" if dtype == "auto" else dtype


def _identity(cfg: SampleConfig, decoding: Decoding, hashes: FileHashes) -> dict:
    tpl = TEMPLATES.get(cfg.template)
    opts = backend_options(cfg)
    ident = {"model": model_identity(cfg.model, hashes), "backend": cfg.backend, "decoding": decoding.as_dict(),
             "template": {"id": tpl.id, "text": short_hash([tpl.system, tpl.user])}, "seed": cfg.seed,
             "dtype": getattr(opts, "dtype", _remote_dtype(cfg.dtype)), "device": getattr(opts, "device", cfg.device)}
    # Other output-changing options only when off their default, so files sampled before they
    # could be set (all with the default) still resume.
    defaults = protocol_options(type(opts)())
    extra = {k: v for k, v in protocol_options(opts).items() if k not in ident and v != defaults[k]}
    return {**ident, "backend_options": extra} if extra else ident


def _check_resume(existing: list[Sample], cfg: SampleConfig, decoding: Decoding, problems: list[Problem],
                  selected: list[Problem]) -> None:
    """Refuse to append to samples made otherwise (see the module docstring); then record this run's identity."""
    side = Path(str(cfg.out) + ".identity.json")
    record = load_record(side) or {}
    hashes = FileHashes(record.get("file_hashes"))
    ident = _identity(cfg, decoding, hashes)
    questions = dict(record.get("questions") or {}) if existing else {}
    fresh = f"choose another --out or delete {cfg.out} and {side.name} to sample afresh"
    if existing:
        check_identity(cfg.out, record.get("identity"), ident, "holds samples made with other settings", fresh)
        by_id = {p.id: p for p in problems}
        want = {"model": cfg.model, "prompt_template": cfg.template, "decoding": decoding.as_dict()}
        for s in existing:
            where = f"{cfg.out}: sample {s.problem_id}/{s.sample_index}"
            got = {"model": s.model, "prompt_template": s.prompt_template, "decoding": s.decoding}
            for k in want:
                if got[k] != want[k]:
                    raise InputError(f"{where} has {k}={got[k]!r}, this run asks for {want[k]!r}; {fresh}")
            if s.seed != sample_seed(cfg.seed, s.problem_id, s.sample_index):
                raise InputError(f"{where} was not drawn with base seed {cfg.seed}; {fresh}")
            p = by_id.get(s.problem_id)
            if p is None:
                raise InputError(f"{where} is of problem '{s.problem_id}', which is not in {cfg.problems}; {fresh}")
            if questions.get(p.id) != short_hash(p.question):
                raise InputError(f"{where}: the question of problem '{p.id}' in {cfg.problems} is not the one "
                                 f"it was drawn for; {fresh}")
    questions.update({p.id: short_hash(p.question) for p in selected})
    write_json(side, {"identity": ident, "questions": questions, "file_hashes": hashes.entries})


def open_output(cfg: SampleConfig, shard: str) -> tuple:
    """Check the inputs and resume ``cfg.out`` as :func:`run_sampling` and the sharded runner both
    do: (the selected problems, the decoding, the samples already there, the open writer)."""
    all_problems = read_problems(cfg.problems)
    if not all_problems:
        raise InputError(f"{cfg.problems}: no problems in it (the file is empty); nothing to sample")
    problems = select_problems(all_problems, cfg.limit, shard)
    if cfg.n < 1:
        raise InputError(f"n={cfg.n}: need at least one sample per problem")
    TEMPLATES.get(cfg.template)
    decoding = decoding_with(Decoding(cfg.temperature, cfg.top_p, cfg.max_new_tokens, tuple(cfg.stop)), cfg.forcing)
    existing, writer = open_resumable(cfg.out, Sample, key)
    try:
        _check_resume(existing, cfg, decoding, all_problems, problems)
    except BaseException:
        writer.close()
        raise
    save_yaml(Path(cfg.out).with_name(Path(cfg.out).name + ".config.yaml"), to_mapping(cfg))
    return problems, decoding, existing, writer


def run_sampling(cfg: SampleConfig, generator: Optional[Generator] = None, progress: bool = True,
                 skip: Iterable[tuple[str, int]] = ()) -> dict:
    """Sample what is missing from ``cfg.out``; returns a summary of this invocation.

    ``skip``: keys done elsewhere (a sharded run's merged output), not sampled again here."""
    problems, decoding, existing, writer = open_output(cfg, cfg.shard)
    done = {key(s) for s in existing}
    groups = plan_groups(problems, cfg.n, cfg.seed, cfg.template, done | {tuple(k) for k in skip})
    todo = sum(len(g.samples) for g in groups)
    summary = {"already_done": len(done), "sampled": 0, "completion_tokens": 0, "flops": 0.0, "seconds": 0.0}
    if todo == 0:
        writer.close()
        return summary
    built = generator is None
    if built:
        generator = make_generator(cfg.backend, cfg.model, backend_options(cfg))

    t0 = time.perf_counter()
    bar = progress_bar(todo, "sample", "sample", enabled=progress)
    try:
        for g in forced(generator, decoding).generate(groups, decoding):
            writer.write(Sample(problem_id=g.problem_id, sample_index=g.sample_index, model=cfg.model,
                                prompt_template=cfg.template, text=g.text, prompt_tokens=g.prompt_tokens,
                                completion_tokens=g.completion_tokens, flops=g.flops,
                                finish_reason=g.finish_reason, decoding=decoding.as_dict(), seed=g.seed,
                                forcing=g.forcing))
            summary["sampled"] += 1
            summary["completion_tokens"] += g.completion_tokens
            summary["flops"] += g.flops
            elapsed = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(tok_s=f"{summary['completion_tokens'] / max(elapsed, 1e-9):.1f}")
    finally:
        writer.close()
        bar.close()
        if built and hasattr(generator, "close"):
            generator.close()  # a vLLM server it started is stopped with the stage, not at exit
    summary["seconds"] = time.perf_counter() - t0
    return summary
