"""Benchmark metrics from per-sample correctness: mean@n with its standard error, maj@n and the
unbiased pass@k. Pure functions of plain values (no I/O, no answer parsing).

Conventions (pinned by hand-computed tests):
- Every problem has the same number n of samples; a sample with no extractable answer is
  incorrect, and does not vote.
- mean@n = the mean over problems of each problem's fraction of correct samples. Its standard
  error treats problems as the sampled unit (each problem's n samples are one cluster): the
  sample standard deviation (n - 1 denominator) of the per-problem fractions over sqrt(P), for P
  problems. It thus covers both the choice of problems and the sampling noise within each; it
  is NaN for a single problem.
- maj@n = the fraction of problems whose majority answer (over equivalence classes, ties broken
  as in `mgrpo.algos.voting`) is correct; a problem where no sample gives an answer counts as
  wrong. The vote itself is done by the caller; here it is one boolean per problem.
- pass@k = the mean over problems of the unbiased estimator of Chen et al. (2021, Codex),
  1 - C(n - c, k) / C(n, k) for c correct of n samples, computed in its numerically stable
  product form 1 - prod_{i = n - c + 1}^{n} (1 - k / i); exactly 1 when n - c < k. It is the
  probability that k samples drawn *without replacement* from the n include a correct one.
  Departure from verl: its best@k (`bootstrap_metric`) resamples with replacement and so
  under-reports (1 correct of 4 gives pass@4 = 1 here and 1 - (3/4)^4 = 0.684 there; verl PR
  #7240). TRL reports no pass@k.
- k runs over 1, 2, 4, ... up to n, and n itself (`pass_ks`).
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with c correct samples out of n (see the module docstring).

    Raises ValueError unless 0 <= c <= n and 1 <= k <= n.
    """
    if not (0 <= c <= n):
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not (1 <= k <= n):
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def pass_ks(n: int) -> list[int]:
    """The k of the reported pass@k: powers of two up to n, and n itself."""
    if n < 1:
        raise ValueError(f"need n >= 1, got {n}")
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def mean_and_standard_error(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) with the n - 1 sample standard deviation; the error is
    NaN for fewer than two values. Raises ValueError on an empty sequence."""
    if not values:
        raise ValueError("no values")
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, statistics.stdev(values) / math.sqrt(len(values))  # stdev: exact rational sums


def benchmark_metrics(correct: Sequence[Sequence[bool]], majority_correct: Sequence[bool]) -> dict[str, float]:
    """mean@n, its standard error, maj@n and pass@k for every k of `pass_ks(n)`.

    Args:
        correct: per problem, the correctness of each of its n samples (n the same for all).
        majority_correct: per problem, whether its majority answer is correct.
    Returns:
        {'mean@n': ., 'mean@n_se': ., 'maj@n': ., 'pass@1': ., 'pass@2': ., ...} with n and k as
        numbers, e.g. 'mean@8'.
    """
    if not correct:
        raise ValueError("no problems")
    if len(majority_correct) != len(correct):
        raise ValueError(f"{len(correct)} problems but {len(majority_correct)} majority results")
    n = len(correct[0])
    if n < 1 or any(len(row) != n for row in correct):
        raise ValueError("every problem needs the same number n >= 1 of samples")
    counts = [sum(bool(x) for x in row) for row in correct]
    mean, se = mean_and_standard_error([c / n for c in counts])
    out = {f"mean@{n}": mean, f"mean@{n}_se": se, f"maj@{n}": sum(map(bool, majority_correct)) / len(correct)}
    for k in pass_ks(n):
        out[f"pass@{k}"] = math.fsum(pass_at_k(n, c, k) for c in counts) / len(counts)
    return out
