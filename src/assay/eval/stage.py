"""The evaluate stage: a checkpoint's score on a named benchmark, under a pinned protocol.

Two numbers are comparable only if the same problems were asked the same way and judged by the
same rules. So every result stores its protocol (problem-set hash, prompt template id and its
text's hash, decoding, max tokens, samples and seed, the generation backend and its
output-changing options, verifier and extractors) and a short
``protocol_id`` hashed from it; :func:`compare` refuses results whose protocol ids differ.

Metrics: greedy pass@1 (one temperature-0 completion per problem, with a Wilson 95% interval),
and, when ``n > 0``, avg@n (mean accuracy of n sampled completions) and maj@k / pass@k from them.
Paired comparisons of two checkpoints on the same problems use McNemar's exact test on the
problems where they disagree, the right test for two classifiers scored on one test set.

The benchmark registry names the files in ``../shared/data`` and pinned reasoning-gym sets; a
problem JSONL path works too (it is hashed like any other).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from assay.core.checks import at_least, fail, keyed, one_of, passes
from assay.core.config import load_yaml, opt, save_yaml, to_mapping
from assay.core.executor import executor_options
from assay.core.hardware import DTYPES
from assay.core.io import InputError, read_problems, read_records, write_json, write_records
from assay.core.records import Problem, Sample, Verdict
from assay.data.benchmarks import BENCHMARKS
from assay.data.problems import cli_run as write_problems
from assay.data.prompts import TEMPLATES, check_template
from assay.eval.metrics import compute_stats
from assay.eval.stats import paired_comparison, wilson
from assay.models import DEFAULT_MODEL, check_model
from assay.sampling import SampleConfig
from assay.sampling.backends import check_backend, greedy_protocol, make_generator, options_of
from assay.sampling.forcing import BudgetForcing, check_forcing
from assay.sampling.sharded import run_sampling_on
from assay.verify import stage as verify
from assay.verify.extract import DEFAULT_EXTRACTORS

# 2: the backend and its output-changing options (dtype for hf) replace 'dtype'
# 3: dtype 'auto' recorded as resolved; in bf16/fp16 the batch shape (max_batch, refill_fraction) too
PROTOCOL_VERSION = 3


@dataclass
class EvalConfig:
    INPUTS, OUTPUTS = ("benchmark", "model"), ("out",)
    model: str = opt(DEFAULT_MODEL, help="model spec: embedded name, checkpoint folder (from `assay train`) or hub id")
    benchmark: str = opt("rg-chain-sum-v1", help="a named benchmark (see BENCHMARKS) or a Problem JSONL path")
    limit: Optional[int] = opt(None, help="evaluate on the first N problems only (part of the protocol)")
    out: str = opt("eval", help="output folder: problems, samples, verdicts, result.json")
    template: str = opt("plain-v1", help="prompt template id")
    max_new_tokens: int = opt(256, help="completion length limit")
    greedy: bool = opt(True, help="score one greedy completion per problem (pass@1)")
    n: int = opt(0, help="sampled completions per problem for avg@n / maj@k (0 = none)")
    temperature: float = opt(0.7, help="sampling temperature for the n samples")
    top_p: float = opt(1.0, help="nucleus mass for the n samples")
    seed: int = opt(0, help="seed of the sampled completions")
    backend: str = opt("hf", help="generation backend: hf (local) or openai (an OpenAI-compatible server, see --base-url)")
    max_batch: int = opt(64, help="rows decoded together (openai: concurrent requests)")
    dtype: str = opt("auto", help="hf: model dtype (auto: bfloat16 where the hardware multiplies it, else float32); the resolved dtype is part of the protocol since it changes greedy outputs")
    device: str = opt("cpu", help="hf: torch device")
    base_url: str = opt("", help="openai backend: server URL, e.g. http://127.0.0.1:8000/v1 (default $OPENAI_BASE_URL)")
    backend_options: dict = opt({}, help="the backend's own options over the flat flags (see `assay sample --help`), "
                                         "e.g. n_params=7e9")
    data_dir: Optional[str] = opt(None, help="folder of the shared benchmark files (default $ASSAY_DATA or ../shared/data)")
    trust_remote_code: bool = opt(False, help="allow custom model code from the model folder (off by default)")
    executor: str = opt("local", help="where the sampling shards run: local or ray (see `assay sample --help`)")
    executor_options: dict = opt({}, help="ray: address, workers, num_cpus, num_gpus, max_retries")
    forcing: BudgetForcing = field(default_factory=BudgetForcing, metadata={"help": (
        "s1 budget forcing, off by default (see `assay sample --help`): forcing.min_tokens=512 forcing.waits=2, "
        "forcing.max_tokens=256; part of the protocol")})


def problems_hash(problems: list[Problem]) -> str:
    """Hash of what is asked and expected (ids, questions, answers), not of file formatting."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.question, p.answer], ensure_ascii=False).encode())
    return h.hexdigest()


def protocol(cfg: EvalConfig, problems: list[Problem]) -> dict:
    tpl = TEMPLATES.get(cfg.template)
    p = {
        # A file benchmark is identified by its content hash below, not by where it lies.
        "version": PROTOCOL_VERSION, "limit": cfg.limit,
        "benchmark": cfg.benchmark if cfg.benchmark in BENCHMARKS.names() else Path(cfg.benchmark).name,
        "problems_sha256": problems_hash(problems), "n_problems": len(problems),
        "template": tpl.id, "template_sha256": hashlib.sha256(json.dumps([tpl.system, tpl.user]).encode()).hexdigest()[:16],
        "max_new_tokens": cfg.max_new_tokens, "greedy": cfg.greedy, "n": cfg.n,
        "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed} if cfg.n else None,
        # What answers: a local model and a server of the same weights are two protocols until shown equal.
        "backend": cfg.backend, "backend_options": greedy_protocol(eval_options(cfg)),
        "verifier": "auto", "extractors": list(DEFAULT_EXTRACTORS),
    }
    if cfg.forcing.active:
        # Only when on: unforced protocols keep the ids they had before forcing existed.
        p["forcing"] = dataclasses.asdict(cfg.forcing)
    p["protocol_id"] = hashlib.sha256(json.dumps(p, sort_keys=True).encode()).hexdigest()[:12]
    return p


def _sample_and_verify(cfg: EvalConfig, d: Path, tag: str, n: int, temperature: float, generator) -> tuple:
    scfg = SampleConfig(problems=str(d / "problems.jsonl"), out=str(d / f"{tag}.samples.jsonl"), model=cfg.model,
                        n=n, temperature=temperature, top_p=cfg.top_p if temperature > 0 else 1.0,
                        max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, template=cfg.template,
                        max_batch=cfg.max_batch, dtype=cfg.dtype, device=cfg.device,
                        trust_remote_code=cfg.trust_remote_code, backend=cfg.backend, base_url=cfg.base_url,
                        backend_options=dict(cfg.backend_options), executor=cfg.executor,
                        executor_options=dict(cfg.executor_options), forcing=cfg.forcing)
    summary = run_sampling_on(scfg, generator=generator)
    vcfg = verify.VerifyConfig(problems=scfg.problems, samples=scfg.out, out=str(d / f"{tag}.verdicts.jsonl"))
    verify.cli_run(vcfg)
    return read_records(scfg.out, Sample), read_records(vcfg.out, Verdict), summary


def eval_options(cfg: EvalConfig):
    """The checked options of ``cfg.backend`` (a server's request cache goes in the output folder)."""

    return options_of(cfg, defaults={"cache": str(Path(cfg.out) / "api_cache.jsonl")})


def _lazy_generator(cfg: EvalConfig):
    """Load the model once for both the greedy and the sampled pass, and only if there is work."""

    options = eval_options(cfg)
    holder: dict[str, Any] = {}

    class Lazy:
        model_name = cfg.model

        def generate(self, groups, decoding):
            if "g" not in holder:
                holder["g"] = make_generator(cfg.backend, cfg.model, options)
            return holder["g"].generate(groups, decoding)

        def close(self):
            g = holder.pop("g", None)
            if g is not None and hasattr(g, "close"):
                g.close()

    return Lazy()


def run_eval(cfg: EvalConfig, generator=None) -> dict:
    """Evaluate and write ``out/result.json``; reruns resume the sampling and verification."""

    if not cfg.greedy and cfg.n < 1:
        raise InputError("eval: nothing to do: greedy=false and n=0")
    eval_options(cfg)  # a bad backend option fails before anything is written
    d = Path(cfg.out)
    d.mkdir(parents=True, exist_ok=True)
    old = d / "eval_config.yaml"
    if old.exists() and any((d / f).exists() for f in ("greedy.samples.jsonl", "sampled.samples.jsonl")):
        prev = load_yaml(old)
        # Where the shards ran does not change a result.
        # A key an older assay did not write had its default then (forcing: off).
        defaults = to_mapping(EvalConfig())
        changed = sorted(k for k, v in to_mapping(cfg).items()
                         if prev.get(k, defaults.get(k)) != v and k not in ("executor", "executor_options"))
        if changed:
            raise InputError(f"{d}: holds an evaluation made with other settings ({', '.join(changed)}); "
                             "choose another --out or delete it")
    save_yaml(d / "eval_config.yaml", to_mapping(cfg))
    pfile = d / "problems.jsonl"
    if cfg.benchmark in BENCHMARKS.names():
        write_problems(BENCHMARKS.get(cfg.benchmark).problems_config(str(pfile), cfg.limit, cfg.data_dir))
        problems = read_problems(pfile)
    elif Path(cfg.benchmark).exists():
        problems = read_problems(cfg.benchmark)[: cfg.limit]
        write_records(pfile, problems)
    else:
        BENCHMARKS.get(cfg.benchmark)  # raises with a did-you-mean
    if not problems:
        raise InputError(f"{cfg.benchmark}: no problems")
    proto = protocol(cfg, problems)
    gen = generator or (_lazy_generator(cfg) if cfg.executor == "local" else None)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {}
    tokens, flops = 0, 0.0
    per_problem: dict[str, Any] = {}
    if cfg.greedy:
        samples, verdicts, _ = _sample_and_verify(cfg, d, "greedy", 1, 0.0, gen)
        c = sum(v.correct for v in verdicts)
        metrics["greedy_pass@1"] = c / len(verdicts)
        metrics["greedy_ci95"] = list(wilson(c, len(verdicts)))
        metrics["greedy_correct"] = c
        metrics["greedy_mean_tokens"] = sum(s.completion_tokens for s in samples) / len(samples)
        if cfg.forcing.active:
            fs = [s.forcing or {} for s in samples]
            metrics["greedy_mean_thinking_tokens"] = sum(f.get("thinking_tokens", 0) for f in fs) / len(fs)
            metrics["greedy_forced_waits"] = sum(f.get("waits", 0) for f in fs)
            metrics["greedy_forced_cuts"] = sum(bool(f.get("cut")) for f in fs)
        tokens += sum(s.completion_tokens for s in samples)
        flops += sum(s.flops for s in samples)
        per_problem["greedy"] = {v.problem_id: v.correct for v in verdicts}
    if cfg.n:
        samples, verdicts, _ = _sample_and_verify(cfg, d, "sampled", cfg.n, cfg.temperature, gen)
        ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= cfg.n]
        stats = compute_stats(problems, samples, verdicts, ks)
        metrics[f"avg@{cfg.n}"] = stats["summary"]["accuracy"]
        for row in stats["by_k"]:
            metrics[f"pass@{row['k']}"] = row["pass_at_k"]
            metrics[f"maj@{row['k']}"] = row["maj_at_k"]
        tokens += sum(s.completion_tokens for s in samples)
        flops += sum(s.flops for s in samples)
    if generator is None and gen is not None:
        gen.close()  # a vLLM server it started goes with the stage
    result = {"model": cfg.model, "benchmark": cfg.benchmark, "protocol": proto, "metrics": metrics,
              "completion_tokens": tokens, "flops": flops, "wall_s": round(time.perf_counter() - t0, 3)}
    write_json(d / "result.json", result)
    write_json(d / "per_problem.json", per_problem)
    return result


def load_result(path: str | Path) -> dict:
    p = Path(path)
    p = p / "result.json" if p.is_dir() else p
    if not p.exists():
        raise InputError(f"{p}: no eval result (run `assay eval --out {p.parent}` first)")
    return json.loads(p.read_text(encoding="utf-8"))


def compare(before: str | Path, after: str | Path) -> dict:
    """Paired greedy comparison of two eval folders on the same problems, same protocol."""
    before, after = (Path(p).parent if Path(p).is_file() else Path(p) for p in (before, after))
    a, b = load_result(before), load_result(after)
    if a["protocol"]["protocol_id"] != b["protocol"]["protocol_id"]:
        diff = sorted(k for k in {**a["protocol"], **b["protocol"]}
                      if a["protocol"].get(k) != b["protocol"].get(k) and k != "protocol_id")
        raise InputError(f"{before} and {after} were evaluated under different protocols (differ in: {', '.join(diff)})")
    pa = json.loads((before / "per_problem.json").read_text()).get("greedy")
    pb = json.loads((after / "per_problem.json").read_text()).get("greedy")
    if pa is None or pb is None:
        raise InputError(f"compare needs greedy results in both {before} and {after} (run eval with greedy=true)")
    return paired_comparison(pa, pb)


def cli_run(cfg: EvalConfig) -> int:
    r = run_eval(cfg)
    m = r["metrics"]
    parts = []
    if "greedy_pass@1" in m:
        lo, hi = m["greedy_ci95"]
        parts.append(f"greedy pass@1 {m['greedy_pass@1']:.3f} [{lo:.3f}, {hi:.3f}]")
    parts += [f"{k} {v:.3f}" for k, v in m.items() if k.startswith(("avg@", "maj@"))]
    print(f"[assay] eval {cfg.model} on {cfg.benchmark} ({r['protocol']['n_problems']} problems, "
          f"protocol {r['protocol']['protocol_id']}): " + ", ".join(parts) + f" -> {cfg.out}/result.json")
    return 0


def check(c: EvalConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    check_backend(k, c)
    if "template" not in skip:
        check_template(k("template"), c.template)
    one_of(k("dtype"), c.dtype, DTYPES, "dtype")
    at_least(k("max_new_tokens"), c.max_new_tokens, 1)
    at_least(k("max_batch"), c.max_batch, 1)
    at_least(k("n"), c.n, 0)
    executor_options(c.executor, c.executor_options, k("executor_options"))
    check_forcing(lambda n: k(f"forcing.{n}"), c.forcing)
    if not c.greedy and c.n < 1:
        raise fail(k("greedy"), "nothing to evaluate: greedy=false and n=0")
    if "limit" not in skip and c.limit is not None:
        at_least(k("limit"), c.limit, 1)
    if "benchmark" not in skip and c.benchmark not in BENCHMARKS and not Path(c.benchmark).exists():
        passes(k("benchmark"), BENCHMARKS.get, c.benchmark)
    if "model" not in skip and c.backend == "hf":
        check_model(k("model"), c.model)
