"""Seeds are part of the embedded default: one RL run is an anecdote, so notebook 00 trains `rl.seeds` runs (RL seeds
rl.seed, rl.seed + 1, …, all from the same base model and task split) and notebooks 01 and 02 report their headline
numbers per seed. The same seed on the same machine reproduces bit for bit; another CPU rounds differently and gives
other numbers, inside the spread these runs show.

    dirs = run_dirs(cfg)                         # {seed: run directory}, missing seeds trained side by side
    r2 = per_seed(cfg, lambda traj: ...)         # {seed: what the function measured on that seed's trajectory}

A user's run (`trajectory.dir`) is a single run whatever `rl.seeds` says: its seed is reported as `rl.seed`.
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence


def seed_list(cfg) -> list[int]:
    """The RL seeds of the config: rl.seed … rl.seed + rl.seeds − 1 (just rl.seed for a user's run)."""
    n = 1 if cfg.trajectory.dir else int(cfg.rl.get("seeds", 1))
    if n < 1:
        raise ValueError(f"{cfg.source}: rl.seeds must be at least 1, got {n}")
    return [int(cfg.rl.seed) + i for i in range(n)]


def config_for(cfg, seed: int):
    """`cfg` with its RL run at `seed` (base model, split and every other knob unchanged; `config.derive`)."""
    from .config import derive

    return derive(cfg, {"rl.seed": int(seed)})


def run_dirs(cfg, workers: int = 2) -> dict[int, Path]:
    """{seed: run directory} of every seed. Seeds not yet cached are trained `workers` at a time, each in its own
    single-threaded process (the base model is built first, once); a user's run is returned as it is."""
    from .trajectory import run_dir
    from .training import base_model, cached_trajectory, embedded_trajectory, in_processes

    seeds = seed_list(cfg)
    if cfg.trajectory.dir:
        return {seeds[0]: run_dir(cfg)}
    missing = [s for s in seeds if cached_trajectory(config_for(cfg, s)) is None]
    if missing:
        base_model(cfg)
        in_processes(embedded_trajectory, [(config_for(cfg, s),) for s in missing], workers)
    return {s: run_dir(config_for(cfg, s)) for s in seeds}


def per_seed(cfg, measure: Callable[[Any], Any]) -> dict[int, Any]:
    """{seed: measure(trajectory)} over every seed's trajectory (`trajectory.from_config` of that seed)."""
    from .trajectory import from_config

    run_dirs(cfg)
    return {s: measure(from_config(config_for(cfg, s))) for s in seed_list(cfg)}


def spread(values: Sequence[float]) -> dict:
    """mean, sd (sample; 0 for one value), min and max of the defined per-seed values; n of them, and how many were
    undefined (NaN, e.g. a run where no token moved enough to get an R²)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    undefined = len(values) - len(v)
    if not v:
        return {"mean": math.nan, "sd": math.nan, "min": math.nan, "max": math.nan, "n": 0, "undefined": undefined}
    return {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0, "min": min(v),
            "max": max(v), "n": len(v), "undefined": undefined}


def describe(values: Sequence[float], fmt: str = ".3f") -> str:
    """'0.712 ± 0.015 (min 0.695, max 0.730; 3 seeds)', or the value alone for one seed; undefined seeds are counted."""
    s = spread(values)
    missing = f"; {s['undefined']} undefined" if s["undefined"] else ""
    if s["n"] == 0:
        return f"undefined on every seed ({s['undefined']})"
    if s["n"] == 1:
        return f"{s['mean']:{fmt}} (1 seed{missing})"
    return (f"{s['mean']:{fmt}} ± {s['sd']:{fmt}} (min {s['min']:{fmt}}, max {s['max']:{fmt}}; "
            f"{s['n']} seeds{missing})")


def across(by_seed: Mapping[int, Mapping], point: str, interval: str) -> tuple[float, tuple[float, float], str]:
    """The mean over seeds of each seed's `point`, the hull of their `interval`s (`claims.across_seeds`) and the
    per-seed numbers as a claim's detail ("seed 0: 0.612 [0.598, 0.627]; seed 1: …")."""
    from .claims import across_seeds

    mean, hull = across_seeds([m[point] for m in by_seed.values()], [m[interval] for m in by_seed.values()])
    detail = "; ".join(f"seed {s}: {m[point]:.3f} [{m[interval][0]:.3f}, {m[interval][1]:.3f}]"
                       for s, m in by_seed.items())
    return mean, hull, detail


def hull_how(interval: str, n_seeds: int) -> str:
    """How a claim's interval was made from each seed's `interval` (one seed: that interval itself)."""
    return interval if n_seeds == 1 else f"{interval}; hull over {n_seeds} seeds"


def check_made_at(by_seed: Mapping[int, Mapping], **settings) -> None:
    """An error when a seed's measurements were made at other `settings` (e.g. threshold, level) than a claim uses."""
    for seed, m in by_seed.items():
        other = {k: m.get(k) for k, v in settings.items() if m.get(k) != v}
        if other:
            raise ValueError(f"seed {seed}: measured at {other}, the claims need {settings} "
                             f"(measure with the config's claims settings, claims.Settings.of(cfg))")


def plot_accuracy(runs: Mapping[int, Path]):
    """Held-out greedy accuracy at every checkpoint of each run (`log.csv`), one line per seed."""
    import matplotlib.pyplot as plt

    from .training import read_log

    fig, ax = plt.subplots(figsize=(7, 4))
    for seed, run_dir in runs.items():
        d = read_log(run_dir, required=False)[["step", "heldout_accuracy"]].dropna()
        ax.plot(d["step"], d["heldout_accuracy"], "o-", ms=3, label=f"RL seed {seed}")
    ax.set(xlabel="step", ylabel="held-out accuracy (greedy)", title="Every seed's run")
    ax.legend()
    fig.tight_layout()
    return fig


def endpoints(cfg) -> dict[str, Path]:
    """{"base": the shared step-0 model, "seed N": each seed's last checkpoint} for
    `evaluation.evaluate_checkpoints`."""
    from .trajectory import from_config

    trajs = {s: from_config(config_for(cfg, s)) for s in run_dirs(cfg)}
    first = next(iter(trajs.values()))
    return {"base": first.path(first.steps[0])} | {f"seed {s}": t.path(t.steps[-1]) for s, t in trajs.items()}


def table(by_seed: Mapping[int, Mapping[str, float]], columns: Mapping[str, str]):
    """One row per seed of the `columns` (key → label) of each seed's measurements, then mean and sd rows."""
    import pandas as pd

    t = pd.DataFrame({f"seed {s}": {label: m[key] for key, label in columns.items()} for s, m in by_seed.items()}).T
    return pd.concat([t, t.agg(["mean", "std"]).rename(index={"std": "sd"})]) if len(t) > 1 else t


def results(by_seed: Mapping[int, Mapping[str, float]], keys: Mapping[str, str]) -> dict:
    """{results key: [value per seed]} for the `keys` (measurement key → results key), plus `seeds`."""
    return {"seeds": list(by_seed)} | {out: [float(m[key]) for m in by_seed.values()] for key, out in keys.items()}
