"""Side-by-side step timing: interleaved rounds, medians, IQRs and per-pair ratios.

Shared machines are noisy, so the benchmarks never compare numbers taken at
different moments. :func:`interleaved` calls every variant once per round,
each round starting one variant later (A B C, B C A, C A B, ...), after each
has warmed up, so slow spells hit all variants alike;
:func:`summarize` then reports each variant's median and interquartile range and,
against a baseline, the median of the per-round ratios with a distribution-free
interval for that median (:func:`median_interval`). No JAX needed here: the
PyTorch peer uses the same functions.

>>> rounds = {"a": [1.0, 2.0, 3.0, 4.0], "b": [2.0, 4.0, 6.0, 8.0]}
>>> summarize(rounds, baseline="a")["b"]["ratio_median"]
2.0
"""

from __future__ import annotations

import math
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "format_ms",
    "interleaved",
    "median_interval",
    "peak_rss_bytes",
    "quantile",
    "rounds_bar",
    "summarize",
]


def interleaved(
    variants: Mapping[str, Callable[[], Any]],
    *,
    steps: int,
    warmup: int = 2,
    on_round: Callable[[int], Any] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each variant over ``steps`` interleaved rounds.

    Each callable runs one step and must return only once the step is done
    (``jax.block_until_ready``, ``torch.cuda.synchronize``). Every variant is
    first called ``warmup`` times (compilation, caches), then round ``i`` calls
    each variant once, starting from the ``i``-th (A B C, B C A, C A B, ...), so
    no variant always runs right after the same neighbour. ``on_round(k)``, if
    given, is called outside the timed calls after the ``k``-th round (a
    progress bar's update).
    """
    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1.")
    if warmup < 0:
        raise ValueError(f"warmup={warmup} must be 0 or more.")
    if not variants:
        raise ValueError("variants is empty; pass at least one named step function.")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(steps):
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
        if on_round is not None:
            on_round(i + 1)
    return times


def rounds_bar(total: int, desc: str, show: bool = True):
    """A tqdm bar over timed rounds; pass ``on_round=lambda _: bar.update()``."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="round", disable=not show, dynamic_ncols=True)


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` with linear interpolation (NumPy's default)."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_interval(
    values: Sequence[float], confidence: float = 0.95
) -> tuple[float, float, float]:
    """A distribution-free interval for the median of ``values``: ``(low, high, coverage)``.

    With ``values`` sorted as x(1) <= ... <= x(n), the interval [x(k), x(n+1-k)]
    holds the population median unless k or more values fall on one side of it,
    so its coverage is exactly ``1 - 2 P(B <= k - 1)`` with B ~ Binomial(n, 1/2)
    for any continuous distribution of independent values. ``k`` is the largest
    that still gives ``coverage >= confidence``; when no ``k`` does (n < 6 for
    95%), the interval is [min, max] and ``coverage`` says how much less it is.
    For 20 rounds at 95% that is [x(6), x(15)] with coverage 0.959.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be between 0 and 1 (e.g. 0.95).")
    if len(values) == 0:
        raise ValueError("median_interval of an empty sequence")
    ordered = sorted(values)
    n = len(ordered)

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k < (n + 1) // 2 and coverage(k + 1) >= confidence:
        k += 1
    return ordered[k - 1], ordered[n - k], coverage(k)


def summarize(times: Mapping[str, Sequence[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Median, quartiles and IQR of each variant's step times; ratios against ``baseline``.

    ``ratio_median`` is the median over rounds of ``variant[i] / baseline[i]``
    (a pair measured back to back), with its quartiles and its 95%
    :func:`median_interval` (``ratio_ci_low``, ``ratio_ci_high``,
    ``ratio_ci_coverage``): the median ratio is "within noise" of 1 when
    that interval holds 1.
    """
    if baseline not in times:
        raise ValueError(f"baseline={baseline!r} is not one of the variants {sorted(times)}.")
    base = times[baseline]
    out = {}
    for name, values in times.items():
        if len(values) != len(base):
            raise ValueError(f"{name} has {len(values)} rounds, {baseline} has {len(base)}.")
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        q25, q75 = quantile(values, 0.25), quantile(values, 0.75)
        low, high, coverage = median_interval(ratios)
        out[name] = {
            "median_s": statistics.median(values),
            "q25_s": q25,
            "q75_s": q75,
            "iqr_s": q75 - q25,
            "ratio_median": statistics.median(ratios),
            "ratio_q25": quantile(ratios, 0.25),
            "ratio_q75": quantile(ratios, 0.75),
            "ratio_ci_low": low,
            "ratio_ci_high": high,
            "ratio_ci_coverage": coverage,
            "rounds": len(values),
        }
    return out


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far, in bytes (POSIX)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def format_ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal, for tables: ``0.0123`` -> ``"12.3"``."""
    return f"{seconds * 1e3:.1f}"
