"""Text comparison for data filtering: when do two problems or two solutions count as the same?

Deduplication (select's ``dedup``, curate's ``dedup``) and decontamination (curate's
``decontaminate``, the quickstart's and studies' held-out check) are one question asked two ways:
within one list (is this text a repeat of an earlier one?) or against a reference list (does this
text match a benchmark item?). They differ only in *what* they compare, so both are answered here,
once, parameterised by a ``Match``:

- ``exact``: the same text after ``normalize_text`` (case, whitespace, spaces around punctuation);
- ``ngram``: a shared word n-gram (13 by default, the common decontamination practice; a text
  shorter than n is one gram, so short items still match whole);
- ``jaccard``: word-shingle Jaccard similarity at or above a threshold (near-duplicates).

Candidate pairs come from an inverted index of each text's features (its normal form, n-grams or
shingles), so only texts sharing a feature are ever compared.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

_WS = re.compile(r"\s+")
# A space next to a character that is neither a word character nor a space.
_SPACE_AROUND_PUNCT = re.compile(r" ?([^\w\s]) ?")
_WORD = re.compile(r"[a-z0-9]+(?:[.'-][a-z0-9]+)*|[^\sa-z0-9]")


def normalize_text(text: str) -> str:
    """The normal form under which two answers, or two solutions, count as the same.

    In order: Unicode NFKC normalisation; ``str.casefold()`` (Unicode lowercasing); every run of
    whitespace becomes one space; leading and trailing spaces are removed; a single space on
    either side of a punctuation character (anything that is neither a letter, digit, underscore
    nor whitespace, so ``+ = , . ( ) \\ $`` and the like) is removed.

    So ``"X + 1 = 2"``, ``"x+1=2"`` and ``"x  +1 =\\n2"`` are one text, while ``"x 1"`` and ``"x1"``
    stay different (a space between two word characters can carry meaning).
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _WS.sub(" ", text).strip()
    return _SPACE_AROUND_PUNCT.sub(r"\1", text)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (numbers and symbols count as words: '3 + 5' has three)."""
    return _WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """Word n-grams; a text shorter than n is one gram (so short items can still match whole)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


@dataclass(frozen=True)
class Match:
    """What two texts must share to count as the same.

    ``kind``: exact | ngram | jaccard; ``n``: the n-gram length (ngram) or shingle length
    (jaccard); ``threshold``: the Jaccard similarity that joins two texts; ``max_bucket``: a
    shingle found in more texts than this ("what is the") is boilerplate and proposes no pairs
    (near-duplicates share many rarer shingles too), which keeps the pair count near-linear.
    """

    kind: str = "exact"
    n: int = 13
    threshold: float = 0.8
    max_bucket: int = 200

    def __post_init__(self):
        if self.kind not in ("exact", "ngram", "jaccard"):
            raise ValueError(f"text match '{self.kind}': expected exact, ngram or jaccard")

    def features(self, text: str) -> set:
        if self.kind == "exact":
            return {normalize_text(text)}
        return ngrams(words(text), self.n)

    def same(self, a: set, b: set) -> bool:
        # exact and ngram: sharing one feature is the match; jaccard weighs all of them.
        return self.kind != "jaccard" or jaccard(a, b) >= self.threshold


def find_duplicates(texts: Sequence[str], how: Match, groups: Optional[Sequence[Hashable]] = None) -> list[int]:
    """Per text, the index of the first text of its cluster (itself when it is the first).

    Texts that match are joined (union-find, so matching is transitive), only within the same
    group when ``groups`` is given (select's ``dedup`` compares completions of one problem).
    """
    feats = [how.features(t) for t in texts]
    tag = groups if groups is not None else [None] * len(texts)
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i, j):
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the root is the smallest index: the first of the cluster

    index: dict[tuple, list[int]] = {}
    for i, fs in enumerate(feats):
        for f in fs:
            index.setdefault((tag[i], f), []).append(i)
    seen: set[tuple[int, int]] = set()
    for members in index.values():
        if how.kind != "jaccard":
            for j in members[1:]:  # one shared feature is enough: join the bucket, no pairwise work
                union(members[0], j)
            continue
        if len(members) > how.max_bucket:
            continue
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                i, j = members[x], members[y]
                if (i, j) in seen:
                    continue
                seen.add((i, j))
                if find(i) != find(j) and how.same(feats[i], feats[j]):
                    union(i, j)
    return [find(i) for i in range(len(texts))]


def find_matches(texts: Sequence[str], against: Sequence[str], how: Match) -> list[Optional[int]]:
    """Per text, the index of the first text of ``against`` it matches, or None."""
    ref = [how.features(t) for t in against]
    index: dict = {}
    for j, fs in enumerate(ref):
        for f in fs:
            index.setdefault(f, []).append(j)
    out: list[Optional[int]] = []
    for t in texts:
        fs = how.features(t)
        cands = sorted({j for f in fs for j in index.get(f, ())
                        if how.kind != "jaccard" or len(index[f]) <= how.max_bucket})
        out.append(next((j for j in cands if how.same(fs, ref[j])), None))
    return out


def clusters(texts: list[str], threshold: float = 0.8, shingle: int = 3, max_bucket: int = 200) -> list[int]:
    """Cluster id per text (the index of its cluster's first text) by word-shingle Jaccard >= threshold."""
    return find_duplicates(texts, Match("jaccard", n=shingle, threshold=threshold, max_bucket=max_bucket))
