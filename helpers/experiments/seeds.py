"""Reporting over seeds: one RL run is an anecdote, so notebooks 00–02 report their headline numbers per seed
(`helpers.lib.runs.per_seed` measures them). The same seed on the same machine reproduces bit for bit; another CPU
rounds differently and gives other numbers, inside the spread these runs show.

    by_seed = runs.per_seed(cfg, lambda traj: ...)     # {seed: what was measured on that seed's trajectory}
    describe([m["median"] for m in by_seed.values()])  # "0.885 ± 0.003 (3 seeds: ...)"
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from helpers.experiments.claims import across_seeds
from helpers.experiments.training_log import read_log


def spread(values: Sequence[float]) -> dict:
    """mean, sd (sample; 0 for one value), min and max of the defined per-seed values; n of them, and how many were
    undefined (NaN, e.g. a run where no token moved enough to get an R²)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    undefined = len(values) - len(v)
    if not v:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0, "undefined": undefined}
    return {
        "mean": statistics.mean(v),
        "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
        "min": min(v),
        "max": max(v),
        "n": len(v),
        "undefined": undefined,
    }


def describe(values: Sequence[float], fmt: str = ".3f") -> str:
    """'0.712 ± 0.015 (min 0.695, max 0.730; 3 seeds)', or the value alone for one seed; undefined seeds are counted."""
    s = spread(values)
    missing = f"; {s['undefined']} undefined" if s["undefined"] else ""
    if s["n"] == 0:
        return f"undefined on every seed ({s['undefined']})"
    if s["n"] == 1:
        return f"{s['mean']:{fmt}} (1 seed{missing})"
    return f"{s['mean']:{fmt}} ± {s['sd']:{fmt}} (min {s['min']:{fmt}}, max {s['max']:{fmt}}; {s['n']} seeds{missing})"


def across(by_seed: Mapping[int, Mapping], point: str, interval: str) -> tuple[float, tuple[float, float], str]:
    """The mean over seeds of each seed's `point`, the hull of their `interval`s (`claims.across_seeds`) and the
    per-seed numbers as a claim's detail ("seed 0: 0.612 [0.598, 0.627]; seed 1: …")."""
    mean, hull = across_seeds([m[point] for m in by_seed.values()], [m[interval] for m in by_seed.values()])
    detail = "; ".join(
        f"seed {s}: {m[point]:.3f} [{m[interval][0]:.3f}, {m[interval][1]:.3f}]" for s, m in by_seed.items()
    )
    return mean, hull, detail


def hull_how(interval: str, n_seeds: int) -> str:
    """How a claim's interval was made from each seed's `interval` (one seed: that interval itself)."""
    return interval if n_seeds == 1 else f"{interval}; hull over {n_seeds} seeds"


def check_made_at(by_seed: Mapping[int, Mapping], **settings) -> None:
    """An error when a seed's measurements were made at other `settings` (e.g. threshold, level) than a claim uses."""
    for seed, m in by_seed.items():
        other = {k: m.get(k) for k, v in settings.items() if m.get(k) != v}
        if other:
            raise ValueError(
                f"seed {seed}: measured at {other}, the claims need {settings} "
                f"(measure with the config's claims settings, claims.Settings.of(cfg))"
            )


def plot_accuracy(runs: Mapping[int, Path]):
    """Held-out greedy accuracy at every checkpoint of each run (`log.csv`), one line per seed."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for seed, run_dir in runs.items():
        d = read_log(run_dir, required=False)[["step", "heldout_accuracy"]].dropna()
        ax.plot(d["step"], d["heldout_accuracy"], "o-", ms=3, label=f"RL seed {seed}")
    ax.set(xlabel="step", ylabel="held-out accuracy (greedy)", title="Every seed's run")
    ax.legend()
    fig.tight_layout()
    return fig


def table(by_seed: Mapping[int, Mapping[str, float]], columns: Mapping[str, str]):
    """One row per seed of the `columns` (key → label) of each seed's measurements, then mean and sd rows."""
    t = pd.DataFrame({f"seed {s}": {label: m[key] for key, label in columns.items()} for s, m in by_seed.items()}).T
    return pd.concat([t, t.agg(["mean", "std"]).rename(index={"std": "sd"})]) if len(t) > 1 else t


def results(by_seed: Mapping[int, Mapping[str, float]], keys: Mapping[str, str]) -> dict:
    """{results key: [value per seed]} for the `keys` (measurement key → results key), plus `seeds`."""
    return {"seeds": list(by_seed)} | {out: [float(m[key]) for m in by_seed.values()] for key, out in keys.items()}
