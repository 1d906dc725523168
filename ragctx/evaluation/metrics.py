"""Metrics as small pure functions: answer scores, confidence intervals, scaling slopes, retrieval hits."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..tasks.needles import string_match_all

__all__ = ["string_match_all", "string_match_part", "exact_match", "token_f1", "bootstrap_ci", "loglog_slope",
           "spans_overlap", "doc_spans_overlap"]


def _normalize(text: str) -> str:
    """SQuAD normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalized prediction equals any normalized answer."""
    return float(any(_normalize(prediction) == _normalize(a) for a in answers))


def string_match_part(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the prediction contains any answer as whole words, case, punctuation and articles ignored (RULER's
    string_match_part): chatty models answer in sentences, which exact match scores 0. Punctuation reads as a space
    here, so "Reid's" holds "Reid" and "up.This" holds "up"."""
    pred = f" {_words(prediction)} "
    return float(any(f" {_words(a)} " in pred for a in answers if _words(a)))


def _words(text: str) -> str:
    text = "".join(" " if ch in string.punctuation else ch for ch in text.lower())
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 against the answers (SQuAD)."""
    pred = _normalize(prediction).split()
    best = 0.0
    for answer in answers:
        gold = _normalize(answer).split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if not pred or not gold:
            best = max(best, float(pred == gold))
        elif common:
            p, r = common / len(pred), common / len(gold)
            best = max(best, 2 * p * r / (p + r))
    return best


def bootstrap_ci(values: Sequence[float], *, n: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap confidence interval of the mean."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log(y) against log(x): ~2 for quadratic cost, ~1 for linear. None if < 2 points."""
    pts = [(x, y) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def spans_overlap(spans: Sequence[tuple[int, int]], targets: Sequence[tuple[int, int]]) -> float:
    """Share of target spans (needles) that some span (a retrieved chunk) overlaps: retrieval recall."""
    if not targets:
        return float("nan")
    hit = sum(any(s < te and ts < e for s, e in spans) for ts, te in targets)
    return hit / len(targets)


def doc_spans_overlap(spans: Sequence[tuple[str, int, int]], targets: Sequence[tuple[str, int, int]]) -> float:
    """Share of target spans (document, start, end) that some span of the same document overlaps: retrieval recall
    over several documents."""
    if not targets:
        return float("nan")
    by_doc: dict[str, list[tuple[int, int]]] = {}
    for d, s, e in spans:
        by_doc.setdefault(d, []).append((s, e))
    return sum(spans_overlap(by_doc.get(d, []), [(s, e)]) for d, s, e in targets) / len(targets)
