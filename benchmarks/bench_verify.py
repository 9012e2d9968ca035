"""Benchmark and sanity check of the verify stage on MATH-500.

Each reference solution's last ``\\boxed{}`` must be judged equal to the reference answer, so the
500 items are both a correctness check (every disagreement is printed, and the exit code is 1)
and a fixed workload for timing the pooled, time-limited verifier against the plain
single-process loop people write by hand (Math-Verify with its default signal timeouts). Its
limit is the number of cores (it does no matrix multiplies), so it prints the pool's fraction
of perfect scaling over the workers.

    python benchmarks/bench_verify.py [PATH] [--workers N]

PATH defaults to ../shared/data/math500/test.jsonl relative to the repository root.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from assay.core.records import Problem, Sample
from assay.verify.extract import clean_answer, extract_boxed
from assay.verify.stage import VerifyConfig, verify_samples

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO / ".." / "shared" / "data" / "math500" / "test.jsonl"


def load(path: Path) -> tuple[list[Problem], list[Sample]]:
    problems, samples = [], []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            if not line.strip():
                continue
            row = json.loads(line)
            pid = row.get("unique_id", f"math500-{i}")
            problems.append(Problem(pid, row["problem"], row["answer"], "math500"))
            samples.append(Sample(pid, 0, "reference", "solution", row["solution"], 0, 0, 0.0, "stop", {}, 0))
    return problems, samples


def plain_loop(problems: list[Problem], samples: list[Sample]) -> list[bool]:
    from math_verify import parse, verify

    out = []
    for p, s in zip(problems, samples):
        extracted = extract_boxed(s.text)
        if extracted is None:
            out.append(False)
            continue
        gold = parse("\\boxed{" + p.answer + "}")
        pred = parse("\\boxed{" + clean_answer(extracted) + "}")
        out.append(bool(verify(gold, pred)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help="MATH-500 test.jsonl")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout-s", type=float, default=5.0)
    args = ap.parse_args()
    path = Path(args.path)
    if not path.exists():
        print(f"bench_verify: {path} not found; pass the path to MATH-500's test.jsonl", file=sys.stderr)
        return 2
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    problems, samples = load(path)
    n = len(samples)
    cfg = VerifyConfig(str(path), str(path), "-", workers=args.workers, timeout_s=args.timeout_s, extractors=["boxed"])

    t = time.perf_counter()
    verdicts = verify_samples(problems, samples, cfg)  # includes starting the fork server and workers
    pool_cold = time.perf_counter() - t
    # Same work again with fresh workers (no shared caches); the fork server is already up.
    t = time.perf_counter()
    verify_samples(problems, samples, cfg)
    pool_warm = time.perf_counter() - t
    # The same one-item warm-up each pool worker gets before its clock starts (lazy sympy imports).
    warm = Problem("warm-up", "", "\\frac{1}{2}", "")
    plain_loop([warm], [Sample("warm-up", 0, "", "", "\\boxed{0.5}", 0, 0, 0.0, "stop", {}, 0)])
    t = time.perf_counter()
    plain = plain_loop(problems, samples)
    plain_s = time.perf_counter() - t

    bad = 0
    for p, s, v, ok in zip(problems, samples, verdicts, plain):
        if not (v.correct and ok and v.status == "ok"):
            bad += 1
            print(f"DISAGREE {p.id}: answer={p.answer!r} extracted={v.extracted!r} pooled={v.correct} "
                  f"status={v.status} error={v.error} plain={ok}")
    print(f"items: {n}, agree: {n - bad}/{n}")
    print(f"plain single-process loop : {plain_s:7.2f} s  {n / plain_s:7.1f} items/s")
    print(f"pool, {args.workers} workers, cold  : {pool_cold:7.2f} s  {n / pool_cold:7.1f} items/s"
          f"  ({plain_s / pool_cold:.2f}x plain)")
    print(f"pool, {args.workers} workers, warm  : {pool_warm:7.2f} s  {n / pool_warm:7.1f} items/s"
          f"  ({plain_s / pool_warm:.2f}x plain)")
    # Parsing and symbolic comparison do no matrix multiplies, so a matmul peak says nothing here;
    # the limit is the cores: N workers can at most be N times the single-process loop.
    cores = min(args.workers, os.cpu_count() or 1)
    print(f"limit: {cores} cores -> at most {cores}x plain; the warm pool reaches "
          f"{plain_s / pool_warm / cores:.0%} of that (no matmuls: FLOP/s do not apply)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
