"""Notebook 00, the RLVR trajectory: training curves, base vs final scores of every seed as a table, the results
summary and the claims (RL raises held-out accuracy on every seed; token entropy falls)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.experiments import claims as claims_mod
from helpers.experiments import paper, seeds
from helpers.lib import runs, scoring
from helpers.lib.scoring import PerItem


def plot_log(log: pd.DataFrame, smooth: int = 5):
    """Reward, held-out greedy accuracy, entropy and completion length against step (2 × 2 panels); per-step
    series are drawn raw (thin) and as a centred rolling mean over `smooth` steps."""
    panels = [
        ("reward", "mean reward"),
        ("heldout_accuracy", "held-out accuracy (greedy)"),
        ("entropy", "token entropy"),
        ("completion_length", "completion length (tokens)"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    for ax, (col, label) in zip(axes.flat, panels):
        d = log[["step", col]].dropna()
        if d.empty:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        elif col == "heldout_accuracy":
            ax.plot(d["step"], d[col], "o-")
        else:
            ax.plot(d["step"], d[col], lw=0.6, alpha=0.5)
            ax.plot(d["step"], d[col].rolling(smooth, center=True, min_periods=1).mean(), lw=1.8)
        ax.set(title=label)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def endpoint_scores(cfg) -> pd.DataFrame:
    """Held-out scores (`scoring.evaluate_checkpoints` on `runs.heldout_items`) of the base and of every seed's final
    checkpoint (`runs.endpoints`), one row per model: "base", "seed N", …"""
    rows = scoring.evaluate_checkpoints(runs.endpoints(cfg), cfg, runs.heldout_items(cfg))
    return pd.DataFrame.from_dict(rows, orient="index")


def summarize(traj, scores: pd.DataFrame, log: pd.DataFrame, info: dict, seed: int) -> dict:
    """results.json content of a trajectory: base / final held-out accuracy (greedy, fractions), avg@k and pass@k of
    the run of `seed` (the one later notebooks analyse), every seed's final greedy accuracy and gain, checkpoint count,
    training seconds (None when the run was not built here; `info` is the run's `cache.build_info`). `scores` has one
    row "base" and one "seed N" per seed (`endpoint_scores`)."""
    base, final = scores.loc["base"], scores.loc[f"seed {seed}"]
    finals = scores.drop(index="base")
    k = int(base["k"])
    ent = log[["step", "entropy"]].dropna()
    by_seed = [float(x) for x in finals["greedy_accuracy"]]
    return {
        "base_accuracy": float(base["greedy_accuracy"]),
        "final_accuracy": float(final["greedy_accuracy"]),
        "seeds": [int(label.split()[-1]) for label in finals.index],
        "final_accuracy_by_seed": by_seed,
        "gain_by_seed": [x - float(base["greedy_accuracy"]) for x in by_seed],
        "gain_min_over_seeds": min(by_seed) - float(base["greedy_accuracy"]),
        f"final_avg@{k}_by_seed": [float(x) for x in finals[f"avg@{k}"]],
        "heldout_items": int(base["n_items"]),
        f"base_avg@{k}": float(base[f"avg@{k}"]),
        f"final_avg@{k}": float(final[f"avg@{k}"]),
        f"base_pass@{k}": float(base[f"pass@{k}"]),
        f"final_pass@{k}": float(final[f"pass@{k}"]),
        "base_entropy": float(base["entropy"]),
        "final_entropy": float(final["entropy"]),
        "num_checkpoints": len(traj.steps),
        "final_step": int(traj.steps[-1]),
        "train_entropy_first": float(ent["entropy"].iloc[0]) if len(ent) else None,
        "train_entropy_last": float(ent["entropy"].iloc[-1]) if len(ent) else None,
        "train_seconds": (round(info["seconds"] + info.get("base_seconds", 0.0), 1) if "seconds" in info else None),
        "rl_seconds": info.get("seconds"),
        "base_seconds": info.get("base_seconds"),
    }


def claims(scores: pd.DataFrame, cfg) -> list[claims_mod.Claim]:
    """Notebook 00's claims from `scores` (`endpoint_scores`: a row "base" and one "seed N" per seed, with per-item
    greedy scores and the mean token entropy of the held-out samples): RL raises held-out greedy accuracy on every
    seed, and token entropy falls."""
    st = claims_mod.Settings.of(cfg)
    base, finals = scores.loc["base"], scores.drop(index="base")
    base_items = PerItem.scores(base["greedy_per_item"])
    gains = {}
    for label, row in finals.iterrows():
        point, iv = claims_mod.paired_difference(
            PerItem.scores(row["greedy_per_item"]), base_items, st.level, st.bootstrap
        )
        gains[int(label.split()[-1])] = {"gain": point, "ci": iv}
    gain, gain_iv, gain_detail = seeds.across(gains, "gain", "ci")
    drops = np.array([_float(e) for e in finals["entropy"]]) - _float(base["entropy"])
    n = len(finals)
    drop, drop_iv = float(np.mean(drops)), (float(np.min(drops)), float(np.max(drops)))
    return [
        claims_mod.Claim(
            "nb00.rl_gain",
            "held-out greedy accuracy gain of the final checkpoint over the base",
            paper.get("rl_gain"),
            gain,
            gain_iv,
            claims_mod.above(0, tolerance=st.accuracy_margin),
            seeds.hull_how(f"{st.level * 100:g} % paired bootstrap over {len(base_items)} held-out items", n),
            gain_detail,
        ),
        claims_mod.Claim(
            "nb00.entropy_falls",
            "final − base mean token entropy of held-out samples",
            paper.get("entropy_falls"),
            drop,
            drop_iv,
            claims_mod.below(0),
            f"mean over {n} seeds, interval = min–max over seeds"
            if n > 1
            else "1 seed: a point, no interval (one mean entropy per model)",
            "; ".join(f"{label}: {d:+.3f}" for label, d in zip(finals.index, drops)),
        ),
    ]


def _float(x) -> float:
    """A table cell as a float (None, e.g. an entropy the sampler did not report, as NaN)."""
    return float("nan") if x is None else float(x)
