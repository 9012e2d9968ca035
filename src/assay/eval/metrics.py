"""The ``stats`` stage: what a set of samples and their verdicts says about a model and its data.

Every claim assay makes ("this data is worth that compute") rests on a few numbers computed from
samples and verdicts: pass@k and coverage@k (how often k tries solve a problem), maj@k (what a
vote would pick), diversity@k (how many different correct solutions a problem yields, which is
what a fine-tuning set is made of), and the tokens and FLOPs spent. They live here, as pure
functions with their exact definitions (also in ``docs/metrics.md``), so that a benchmark script
and the CLI compute them identically and a reader can check them by hand.

Samples and verdicts are joined on ``(problem_id, sample_index)``; a key present on one side only
is an error rather than a silent drop, because dropping samples biases every estimate below.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np

from assay.core.checks import at_least, fail, keyed
from assay.core.config import opt, save_yaml, to_mapping
from assay.core.io import InputError, read_problems, read_records, write_json
from assay.core.records import Problem, Sample, Verdict, key
from assay.data.text import normalize_text  # moved to data.text, shared with dedup; still importable here

# --------------------------------------------------------------------------------------------
# Pure estimators
# --------------------------------------------------------------------------------------------


def _as_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k for one problem from ``n`` samples of which ``c`` are correct.

    Definition (Chen et al. 2021, "Evaluating Large Language Models Trained on Code")::

        pass@k = 1 - C(n - c, k) / C(n, k)

    the probability that k samples drawn without replacement from the n contain at least one
    correct one. It is computed in the product form

        1 - prod_{i = n-c+1}^{n} (1 - k / i)      (= 1.0 exactly when n - c < k)

    which never forms the binomials, so it stays accurate for n in the thousands.
    Requires integers with 1 <= k <= n and 0 <= c <= n; otherwise ``ValueError``.
    """
    n = _as_count(n, "n")
    c = _as_count(c, "c")
    k = _as_count(k, "k")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n:
        raise ValueError(f"k={k} > n={n}: pass@k needs at least k samples")
    if not 0 <= c <= n:
        raise ValueError(f"c={c} must be between 0 and n={n}")
    if n - c < k:
        # Every k-subset contains a correct sample.
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def coverage_at_k(counts: Iterable[tuple[int, int]], k: int) -> tuple[Optional[float], int]:
    """Unbiased estimate of coverage@k over a problem set; returns ``(value, problems_used)``.

    ``counts`` holds one ``(n, c)`` pair per problem. Coverage@k (Brown et al. 2024, "Large
    Language Monkeys"; Bansal et al. 2024, "Smaller, Weaker, Yet Better") is the fraction of
    problems solved by at least one of k samples; its unbiased estimate is the mean of
    ``pass_at_k(n, c, k)`` over the problems with n >= k. Problems with fewer than k samples are
    left out (they cannot estimate it) and the count of those used is returned with the value;
    the value is None when no problem has k samples.

    This is the same estimator as the benchmark pass@k averaged over problems; see
    ``docs/metrics.md`` for why both names exist.
    """
    k = _as_count(k, "k")
    values = [pass_at_k(n, c, k) for n, c in counts if n >= k]
    if not values:
        return None, 0
    return math.fsum(values) / len(values), len(values)


def majority_vote(voted: Sequence[tuple[Sample, Verdict]]) -> Optional[bool]:
    """Whether a majority vote over these (sample, verdict) pairs of one problem is correct.

    Each pair whose verdict has an extracted answer votes for ``normalize_text(extracted)``
    (an answer that normalises to the empty string does not vote). The answer with the most
    votes wins; a tie goes to the answer whose earliest voter has the smallest ``sample_index``.
    The winning answer is correct if the earliest of its voters whose verdict status is ``ok``
    was judged correct; if none of its voters was judged (all timed out or errored), it is not.
    Returns None when nobody voted, which callers count as incorrect.
    """
    groups: dict[str, list[tuple[Sample, Verdict]]] = {}
    for sample, verdict in sorted(voted, key=lambda sv: sv[0].sample_index):
        if verdict.extracted is None:
            continue
        answer = normalize_text(verdict.extracted)
        if answer:
            groups.setdefault(answer, []).append((sample, verdict))
    if not groups:
        return None
    # Groups are in order of first appearance (dicts keep insertion order), so max() keeping the
    # first maximum is exactly "ties go to the earliest sample".
    winner = max(groups.values(), key=len)
    for _, verdict in winner:
        if verdict.status == "ok":
            return bool(verdict.correct)
    return False


def maj_at_k(pairs: Sequence[tuple[Sample, Verdict]], k: int) -> bool:
    """maj@k for one problem: the majority vote over its first k samples (by ``sample_index``).

    One draw of k samples, not an average over random k-subsets, so it is noisier than pass@k
    for k < n. Requires at least k samples (``ValueError`` otherwise).
    """
    k = _as_count(k, "k")
    if k < 1 or k > len(pairs):
        raise ValueError(f"maj@k needs 1 <= k <= n, got k={k}, n={len(pairs)}")
    chosen = sorted(pairs, key=lambda sv: sv[0].sample_index)[:k]
    return bool(majority_vote(chosen))


def distinct_correct(pairs: Sequence[tuple[Sample, Verdict]], k: int) -> int:
    """diversity@k for one problem: distinct correct solution texts among its first k samples.

    The texts of the samples judged correct among the k with the smallest ``sample_index`` are
    put through ``normalize_text`` and the distinct results are counted. Requires at least k
    samples (``ValueError`` otherwise).
    """
    k = _as_count(k, "k")
    if k < 1 or k > len(pairs):
        raise ValueError(f"diversity@k needs 1 <= k <= n, got k={k}, n={len(pairs)}")
    chosen = sorted(pairs, key=lambda sv: sv[0].sample_index)[:k]
    return len({normalize_text(s.text) for s, v in chosen if v.correct})


# --------------------------------------------------------------------------------------------
# Joining and aggregating
# --------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> Optional[float]:
    return math.fsum(values) / len(values) if values else None


def _unique_sorted(values: Iterable[Any]) -> list:
    return sorted(set(values))


def join(samples: Sequence[Sample], verdicts: Sequence[Verdict]) -> dict[str, list[tuple[Sample, Verdict]]]:
    """Pair each sample with its verdict, grouped by problem id (in order of first appearance).

    Raises ``InputError`` naming the key for a duplicated key on either side, a verdict with no
    sample, or a sample with no verdict.
    """
    by_key: dict[tuple[str, int], Sample] = {}
    for s in samples:
        k = key(s)
        if k in by_key:
            raise InputError(f"samples: duplicate key (problem_id={k[0]!r}, sample_index={k[1]})")
        by_key[k] = s
    verdict_by_key: dict[tuple[str, int], Verdict] = {}
    for v in verdicts:
        k = key(v)
        if k in verdict_by_key:
            raise InputError(f"verdicts: duplicate key (problem_id={k[0]!r}, sample_index={k[1]})")
        if k not in by_key:
            raise InputError(f"verdict (problem_id={k[0]!r}, sample_index={k[1]}) has no matching sample")
        verdict_by_key[k] = v
    grouped: dict[str, list[tuple[Sample, Verdict]]] = {}
    for k, s in by_key.items():
        v = verdict_by_key.get(k)
        if v is None:
            raise InputError(f"sample (problem_id={k[0]!r}, sample_index={k[1]}) has no verdict")
        grouped.setdefault(s.problem_id, []).append((s, v))
    return grouped


def compute_stats(
    problems: Optional[Sequence[Problem]],
    samples: Sequence[Sample],
    verdicts: Sequence[Verdict],
    ks: Sequence[int] = (1, 4, 8, 16),
) -> dict:
    """All metrics for one run, as a JSON-ready dict (the ``stats.json`` layout).

    ``problems`` may be None; when given, a sample for an unknown problem is an ``InputError``
    and problems without samples are counted in ``summary.problems_without_samples`` (they
    contribute to no metric). For each k, pass@k, coverage@k, maj@k and diversity@k use only
    the problems with at least k samples; ``by_k[i].problems`` says how many that was.
    """
    ks_clean = sorted({_as_k(k) for k in ks})
    if not ks_clean:
        raise InputError("ks: give at least one k")
    grouped = join(samples, verdicts)

    without_samples: list[str] = []
    if problems is not None:
        known = {p.id for p in problems}
        for pid in grouped:
            if pid not in known:
                raise InputError(f"samples for problem_id={pid!r}, which is not in the problem set")
        without_samples = [p.id for p in problems if p.id not in grouped]

    counts = {pid: (len(pairs), sum(1 for _, v in pairs if v.correct)) for pid, pairs in grouped.items()}

    by_k = []
    for k in ks_clean:
        value, used = coverage_at_k(counts.values(), k)
        eligible = [pairs for pairs in grouped.values() if len(pairs) >= k]
        maj = _mean([float(maj_at_k(pairs, k)) for pairs in eligible])
        div = [distinct_correct(pairs, k) for pairs in eligible]
        solved = [d for d in div if d > 0]
        by_k.append({
            "k": k,
            "problems": used,
            "pass_at_k": value,
            "coverage_at_k": value,
            "maj_at_k": maj,
            "diversity_at_k": _mean(div),
            "diversity_at_k_solved": _mean(solved),
            "problems_solved_at_k": len(solved),
        })

    all_pairs = [sv for pairs in grouped.values() for sv in pairs]
    correct = [s for s, v in all_pairs if v.correct]
    total_flops = math.fsum(s.flops for s, _ in all_pairs)
    status = Counter(v.status for _, v in all_pairs)
    sizes = [n for n, _ in counts.values()]
    summary = {
        "samples": len(all_pairs),
        "problems": len(grouped),
        "problems_without_samples": len(without_samples),
        "samples_per_problem_min": min(sizes) if sizes else None,
        "samples_per_problem_max": max(sizes) if sizes else None,
        "correct": len(correct),
        "accuracy": _mean([float(v.correct) for _, v in all_pairs]),
        "pass_at_1_mean_over_problems": _mean([c / n for n, c in counts.values()]),
        "mean_completion_tokens": _mean([s.completion_tokens for s, _ in all_pairs]),
        "mean_completion_tokens_correct": _mean([s.completion_tokens for s in correct]),
        "total_flops": total_flops,
        # None rather than inf: strict JSON has no infinity, and "no correct sample" is the fact.
        "flops_per_correct": total_flops / len(correct) if correct else None,
        "truncated": sum(1 for s, _ in all_pairs if s.finish_reason == "length"),
        "timeouts": status.get("timeout", 0),
        "errors": status.get("error", 0),
        "verdict_status": dict(sorted(status.items())),
    }

    decodings = {json.dumps(s.decoding, sort_keys=True) for s, _ in all_pairs}
    provenance = {
        "models": _unique_sorted(s.model for s, _ in all_pairs),
        "prompt_templates": _unique_sorted(s.prompt_template for s, _ in all_pairs),
        "decoding": [json.loads(d) for d in sorted(decodings)],
        "seeds": _unique_sorted(s.seed for s, _ in all_pairs),
        "verify_methods": _unique_sorted(v.method for _, v in all_pairs),
    }

    return {
        "summary": summary,
        "by_k": by_k,
        "provenance": provenance,
        "per_problem": [{"problem_id": pid, "n": n, "correct": c} for pid, (n, c) in counts.items()],
        "problems_without_samples": without_samples,
    }


def _as_k(k: Any) -> int:
    try:
        k = _as_count(k, "k")
    except ValueError as exc:
        raise InputError(f"ks: {exc}") from None
    if k < 1:
        raise InputError(f"ks: every k must be >= 1, got {k}")
    return k


# --------------------------------------------------------------------------------------------
# The CLI stage
# --------------------------------------------------------------------------------------------


@dataclass
class StatsConfig:
    """Settings of ``assay stats``."""

    INPUTS, OUTPUTS = ("samples", "verdicts", "problems"), ("out",)

    samples: str = opt(help="Sample JSONL written by `assay sample`")
    verdicts: str = opt(help="Verdict JSONL written by `assay verify` for those samples")
    out: str = opt("stats.json", help="where to write the metrics as JSON (the config is saved beside it)")
    ks: list[int] = opt([1, 4, 8, 16], help="the k values for pass@k, coverage@k, maj@k and diversity@k")
    problems: Optional[str] = opt(
        None, help="optional Problem JSONL; problems in it without samples are reported, unknown ids rejected"
    )


def _fmt(value: Optional[float], digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt_sci(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3e}"


def format_table(stats: dict) -> str:
    """The plain-text table and summary line that ``assay stats`` prints."""
    header = ["k", "pass@k", "coverage@k", "maj@k", "diversity@k", "problems"]
    rows = [
        [str(r["k"]), _fmt(r["pass_at_k"], 4), _fmt(r["coverage_at_k"], 4), _fmt(r["maj_at_k"], 4),
         _fmt(r["diversity_at_k"], 3), str(r["problems"])]
        for r in stats["by_k"]
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    s = stats["summary"]
    summary = (
        f"samples={s['samples']} problems={s['problems']} accuracy={_fmt(s['accuracy'], 4)} "
        f"mean_tokens={_fmt(s['mean_completion_tokens'], 1)} flops/correct={_fmt_sci(s['flops_per_correct'])}"
    )
    extras = [f"{name}={s[name]}" for name in ("timeouts", "errors", "truncated", "problems_without_samples") if s[name]]
    if extras:
        summary += " " + " ".join(extras)
    return "\n".join(lines + [summary])


@dataclass
class StatsResult:
    """The metrics ``run_stats`` wrote to ``out`` (``stats``: by_k rows, summary, inputs, config)."""

    stats: dict
    out: str


def cli_run(cfg: StatsConfig) -> int:
    """Print the table of ``run_stats``."""
    r = run_stats(cfg)
    print(format_table(r.stats))
    print(f"[assay] wrote {r.out}")
    return 0


def check(c: StatsConfig, key: str = "", skip=(), files: bool = False) -> None:
    k = keyed(key)
    if not c.ks:
        raise fail(k("ks"), "needs at least one k")
    for v in c.ks:
        at_least(k("ks"), v, 1)


def run_stats(cfg: StatsConfig) -> StatsResult:
    """Read samples and verdicts, write the metrics to ``cfg.out`` and ``<out>.config.yaml``."""
    if not cfg.samples or not cfg.verdicts:
        raise InputError("stats needs --samples and --verdicts")
    samples = read_records(cfg.samples, Sample)
    verdicts = read_records(cfg.verdicts, Verdict)
    problems = read_problems(cfg.problems) if cfg.problems else None
    try:
        stats = compute_stats(problems, samples, verdicts, cfg.ks)
    except InputError as exc:
        raise InputError(f"{cfg.samples} / {cfg.verdicts}: {exc}") from None
    stats["inputs"] = {"samples": cfg.samples, "verdicts": cfg.verdicts, "problems": cfg.problems}
    stats["config"] = to_mapping(cfg)
    write_json(cfg.out, stats)
    save_yaml(Path(str(cfg.out) + ".config.yaml"), cfg)
    return StatsResult(stats, str(cfg.out))
