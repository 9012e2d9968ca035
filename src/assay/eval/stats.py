"""The statistics behind every reported number: intervals for one accuracy, tests for a difference.

A gain is reported with its paired interval and McNemar's exact p-value, computed on the
problems where two models disagree: the right test for two classifiers scored on one test set.
"""

from __future__ import annotations

import math


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    w = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - w), min(1.0, c + w))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test on the discordant pairs."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_comparison(before: dict[str, bool], after: dict[str, bool]) -> dict:
    """Accuracy before and after on the problems both scored, the gain with its 95% interval (normal
    interval of a paired difference in proportions) and McNemar's exact p-value."""
    ids = sorted(set(before) & set(after))
    only_a = sum(before[i] and not after[i] for i in ids)
    only_b = sum(after[i] and not before[i] for i in ids)
    n = len(ids)
    acc_a = sum(before[i] for i in ids) / n
    acc_b = sum(after[i] for i in ids) / n
    var = ((only_a + only_b) / n - (acc_b - acc_a) ** 2) / n
    half = 1.96 * math.sqrt(max(var, 0.0))
    return {"n": n, "before": acc_a, "after": acc_b, "gain": acc_b - acc_a,
            "gain_ci95": [acc_b - acc_a - half, acc_b - acc_a + half], "only_before": only_a,
            "only_after": only_b, "p_value": mcnemar_exact(only_a, only_b)}


def paired_mean_difference(a: dict[str, float], b: dict[str, float]) -> dict:
    """Mean of b - a over the keys both have, with a normal 95% interval of the paired differences
    (for per-problem counts such as distinct correct solutions, where McNemar does not apply)."""
    ids = sorted(set(a) & set(b))
    n = len(ids)
    if n == 0:
        return {"n": 0, "diff": None, "ci95": None}
    d = [b[i] - a[i] for i in ids]
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1)) if n > 1 else 0.0
    half = 1.96 * sd / math.sqrt(n)
    return {"n": n, "diff": mean, "ci95": [mean - half, mean + half]}
