"""One claims protocol for every notebook: a paper's statement, the number measured here with an interval, the rule
that decides, and a verdict in {holds, does not hold, inconclusive}.

    c = claims.Claim("nb01.weight_r2_share", "share of moved weights with R² > 0.7", paper.get("weight_r2_share"),
                     measured=0.62, interval=(0.60, 0.64), rule=claims.above(0.7), how="binomial over entries")
    c.verdict          # "does not hold": the whole interval lies below 0.7
    run.compare([c])   # table + verdict sentences, stored in results/<notebook>.json under "claims"

A rule compares the interval, never the point estimate, with a threshold: `above(t)` holds when the interval lies
above t, does not hold when it lies below t (+ a tolerance: the smallest effect worth claiming), and is inconclusive
when it straddles — the data cannot decide. The statistics that make the intervals live here too: a bootstrap over
held-out items (items × samples), exact percentile-bootstrap intervals of a median and of a share, the hull over
seeds, differences of independent estimates, the Bonferroni level for a best-of-K, and the split of held-out items into
a half that selects and a half that reports.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from helpers.experiments import paper as paper_mod

VERDICTS = ("holds", "does not hold", "inconclusive")


# ---------------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    """`op` ">" (the claim says the quantity is above `threshold`) or "<" (below). `tolerance` ≥ 0 widens the
    "does not hold" side: with ">" the claim fails when the whole interval lies below threshold + tolerance (no effect
    of that size), with "<" when it lies above threshold − tolerance."""

    op: str
    threshold: float
    tolerance: float = 0.0

    def __post_init__(self):
        if self.op not in (">", "<"):
            raise ValueError(f"rule op must be '>' or '<', not {self.op!r}")
        if not self.tolerance >= 0:
            raise ValueError(f"rule tolerance must be ≥ 0, not {self.tolerance}")

    def decide(self, lo: float, hi: float) -> str:
        """The verdict of an interval (a bound may be infinite — an unbounded side; NaN or None: undefined)."""
        if not (_defined(lo) and _defined(hi)):
            return "inconclusive"
        if self.op == ">":
            return (
                "holds"
                if lo > self.threshold
                else "does not hold"
                if hi < self.threshold + self.tolerance
                else "inconclusive"
            )
        return (
            "holds"
            if hi < self.threshold
            else "does not hold"
            if lo > self.threshold - self.tolerance
            else "inconclusive"
        )

    def __str__(self) -> str:
        t = _num(self.threshold)
        if self.op == ">":
            fail = f"below {_num(self.threshold + self.tolerance)}" if self.tolerance else f"below {t}"
            return f"holds if the interval lies above {t}; does not hold if it lies {fail}; else inconclusive"
        fail = f"above {_num(self.threshold - self.tolerance)}" if self.tolerance else f"above {t}"
        return f"holds if the interval lies below {t}; does not hold if it lies {fail}; else inconclusive"


def above(threshold: float, tolerance: float = 0.0) -> Rule:
    return Rule(">", float(threshold), float(tolerance))


def below(threshold: float, tolerance: float = 0.0) -> Rule:
    return Rule("<", float(threshold), float(tolerance))


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(float(x))


def _defined(x) -> bool:
    return x is not None and not math.isnan(float(x))


def _bound(x, side: int) -> str:
    """One bound of an interval whose other bound is defined: infinite — or missing, as JSON stores ±∞ — is
    unbounded on that side (`side` −1 lower, +1 upper)."""
    if not _defined(x) or math.isinf(x):
        return "∞" if side > 0 else "−∞"
    return f"{x:.3f}"


def _num(x: float) -> str:
    return f"{x:.3g}"


# --------------------------------------------------------------------------------------------------------- claims


@dataclass(frozen=True)
class Claim:
    """One claim: `id` (stable, `<notebook>.<name>`), the statement, the paper's number, the measured point estimate
    with its interval, the rule, how the interval was made (`how`), and an optional `detail` (the numbers behind the
    estimate, e.g. per seed)."""

    id: str
    claim: str
    paper: paper_mod.Number
    measured: float
    interval: tuple[float, float]
    rule: Rule
    how: str
    detail: str = ""

    @property
    def ci_low(self) -> float:
        return float(self.interval[0])

    @property
    def ci_high(self) -> float:
        return float(self.interval[1])

    @property
    def verdict(self) -> str:
        return self.rule.decide(self.ci_low, self.ci_high)

    def measured_text(self) -> str:
        return measured_text(self.measured, self.ci_low, self.ci_high)

    def sentence(self) -> str:
        """The verdict sentence: what was measured, against what, and what the rule concludes."""
        why = {
            "holds": "as the paper says",
            "does not hold": "unlike the paper",
            "inconclusive": "the interval is too wide to decide",
        }[self.verdict]
        detail = f"; {self.detail}" if self.detail else ""
        return (
            f"{self.claim}: {self.measured_text()} ({self.how}{detail}) — {self.verdict.upper()}, {why} "
            f"(paper: {self.paper.text})."
        )

    def record(self) -> dict:
        """The results.json entry: id, paper, measured, ci_low, ci_high, verdict, rule (+ claim, source, how)."""
        num = lambda x: float(x) if _finite(x) else None  # noqa: E731
        return {
            "id": self.id,
            "claim": self.claim,
            "paper": self.paper.text,
            "source": self.paper.source,
            "measured": num(self.measured),
            "ci_low": num(self.ci_low),
            "ci_high": num(self.ci_high),
            "verdict": self.verdict,
            "rule": str(self.rule),
            "how": self.how,
            "detail": self.detail,
        }


def measured_text(measured, lo, hi) -> str:
    """`0.620 [0.600, 0.640]`; `not measured` without a point, `[interval undefined]` without an interval; an
    unbounded side (±∞, stored as null in JSON) shows as ∞."""
    if not _finite(measured):
        return "not measured"
    if not (_finite(lo) or _finite(hi)):
        return f"{measured:.3f} [interval undefined]"
    return f"{measured:.3f} [{_bound(lo, -1)}, {_bound(hi, 1)}]"


def table(claims: Iterable[Claim | Mapping]):
    """The "paper vs measured" table (a pandas DataFrame) of claims or of their stored records."""
    import pandas as pd

    recs = [c.record() if isinstance(c, Claim) else dict(c) for c in claims]
    rows = [
        {
            "claim": r["claim"],
            "paper": f"{r['paper']} ({r['source']})",
            "measured [interval]": measured_text(r["measured"], r["ci_low"], r["ci_high"]),
            "verdict": r["verdict"],
            "interval": r["how"] + (f"; {r['detail']}" if r.get("detail") else ""),
        }
        for r in recs
    ]
    return pd.DataFrame(rows, columns=["claim", "paper", "measured [interval]", "verdict", "interval"]).set_index(
        "claim"
    )


# ------------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """The `claims` params section: confidence level, bootstrap resamples, the smallest accuracy and R² differences
    a verdict counts as an effect, the R² bar of "linear" (null: the papers' 0.7) and the seed of the held-out split."""

    level: float = 0.95
    bootstrap: int = 2000
    accuracy_margin: float = 0.02
    r2_margin: float = 0.05
    r2_threshold: float = paper_mod.R2_BAR
    split_seed: int = 0

    @classmethod
    def of(cls, cfg) -> Settings:
        c = cfg["claims"]
        thr = c["r2_threshold"]
        return cls(
            level=float(c["level"]),
            bootstrap=int(c["bootstrap"]),
            accuracy_margin=float(c["accuracy_margin"]),
            r2_margin=float(c["r2_margin"]),
            r2_threshold=paper_mod.R2_BAR if thr is None else float(thr),
            split_seed=int(c["split_seed"]),
        )


def r2_threshold(cfg) -> float:
    """The R² bar of "linear" for this config (`claims.r2_threshold`, null = the papers' 0.7)."""
    return Settings.of(cfg).r2_threshold


# ---------------------------------------------------------------------------------------------------- statistics


def _alpha(level: float) -> float:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), not {level}")
    return 1 - level


def bonferroni(level: float, k: int) -> float:
    """The level of each of k intervals so that all k hold together at `level` (for a best-of-k choice)."""
    return 1 - _alpha(level) / max(int(k), 1)


def bootstrap_mean(x: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of per-item scores (resampling items; an item's score may average
    k samples, so this is the bootstrap over items × samples with items as clusters)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for i in range(0, n_boot, 256):
        b = min(256, n_boot - i)
        means[i : i + b] = x[rng.integers(0, x.size, size=(b, x.size))].mean(axis=1)
    a = _alpha(level)
    lo, hi = np.quantile(means, [a / 2, 1 - a / 2])
    return float(lo), float(hi)


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """mean(a − b) over the same items and its paired bootstrap interval."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs scores on the same items (shapes {a.shape} and {b.shape})")
    d = a - b
    return (float(d.mean()) if d.size else math.nan), bootstrap_mean(d, level, n_boot, seed)


def median_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The percentile-bootstrap interval of the median, computed exactly (B → ∞): a resample's median is at or below
    the j-th order statistic when at least half the resample is, a Binomial(n, j/n) event."""
    from scipy.stats import binom

    v = np.sort(np.asarray(values, dtype=np.float64))
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return math.nan, math.nan
    a = _alpha(level)
    need = n // 2 + 1  # resampled values ≤ v[j] for the median to be ≤ v[j]
    cdf = binom.sf(need - 1, n, np.arange(1, n + 1) / n)  # P(median* ≤ v[j]) for j = 0 .. n-1
    lo = int(np.searchsorted(cdf, a / 2))
    hi = int(np.searchsorted(cdf, 1 - a / 2))
    return float(v[min(lo, n - 1)]), float(v[min(hi, n - 1)])


def share_interval(count: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The percentile-bootstrap interval of a share count / n, computed exactly: the resampled count is
    Binomial(n, count / n)."""
    from scipy.stats import binom

    if n <= 0:
        return math.nan, math.nan
    a, p = _alpha(level), count / n
    return float(binom.ppf(a / 2, n, p) / n), float(binom.ppf(1 - a / 2, n, p) / n)


def binomial_interval(p: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of an accuracy p measured on n items (when only the mean is known, e.g. a training log)."""
    from scipy.stats import norm

    if n <= 0 or not _finite(p):
        return math.nan, math.nan
    z = norm.ppf(1 - _alpha(level) / 2)
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def difference(
    a: float, a_interval: tuple[float, float], b: float, b_interval: tuple[float, float]
) -> tuple[float, tuple[float, float]]:
    """a − b of two independent estimates, the interval's half-widths combined in quadrature on each side."""
    (alo, ahi), (blo, bhi) = a_interval, b_interval
    d = a - b
    return d, (d - math.hypot(a - alo, bhi - b), d + math.hypot(ahi - a, b - blo))


def across_seeds(
    points: Sequence[float], intervals: Sequence[tuple[float, float]]
) -> tuple[float, tuple[float, float]]:
    """Mean over seeds and the hull of the seeds' intervals (it covers every seed's interval); undefined (NaN) when
    any seed's value or interval is, since a hull that leaves a seed out does not cover it."""
    if (
        not points
        or len(points) != len(intervals)
        or not all(_finite(p) and _finite(lo) and _finite(hi) for p, (lo, hi) in zip(points, intervals))
    ):
        return math.nan, (math.nan, math.nan)
    return float(np.mean(points)), (min(lo for lo, _ in intervals), max(hi for _, hi in intervals))


def split(n_items: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint halves of item indices 0..n−1 (seeded shuffle): (select, report). A best setting is chosen on
    `select` and its score reported on `report`, so the reported number is not inflated by the choice."""
    if n_items < 2:
        raise ValueError(f"splitting held-out items needs at least 2, not {n_items}")
    perm = np.random.default_rng(seed).permutation(n_items)
    half = n_items // 2
    return np.sort(perm[:half]), np.sort(perm[half:])
