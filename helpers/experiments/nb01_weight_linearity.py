"""Notebook 01, weight linearity (LIN §3.1, Fig. 1a/1c, Fig. 8): the tables, summaries, claims and results over a
`helpers.lib.linearity.WeightLinearity` (R² against step of sampled, moved weight entries).

    wl = linearity.weight_r2(traj, seed=cfg.seed, **cfg.weight_linearity.entries)
    summary(wl, threshold, level)     # distribution, shares above the bars, exact bootstrap intervals, filter counts
    grid(wl, "mean"), by_module(wl)   # layer × module type, and per module type
    claims(wl, by_seed, cfg), results(wl, threshold, level)
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from helpers.experiments import claims as claims_mod
from helpers.experiments import paper, seeds
from helpers.lib.linearity import MODULES, WeightLinearity


# ------------------------------------------------------------------------------------------------------------ tables
def entries_table(wl: WeightLinearity) -> pd.DataFrame:
    """One row per kept entry: tensor (categorical, in tensor order), layer, module, index, r2, slope."""
    return pd.DataFrame({**wl.entries, "tensor": pd.Categorical(wl.entries["tensor"], categories=wl.tensors["tensor"])})


def tensors_table(wl: WeightLinearity) -> pd.DataFrame:
    """One row per tensor: what was sampled, dropped (by reason) and kept, and the median / mean R² of its entries."""
    return pd.DataFrame(wl.tensors)


def summary(wl: WeightLinearity, threshold: float = paper.R2_BAR, level: float = 0.95) -> dict:
    """`WeightLinearity.summary(threshold)` plus the share above the papers' 0.7 (`frac_above_bar`) and `level`
    intervals of the median and of the share above `threshold` (exact bootstraps over the kept entries,
    `helpers.experiments.claims`)."""
    v = wl.values
    core = wl.summary(threshold)
    counts = {k: core.pop(k) for k in ("kept", "sampled", "dropped", "dropped_range", "dropped_distinct")}
    return (
        core
        | {
            "level": level,
            "frac_above_bar": float((v > paper.R2_BAR).mean()) if v.size else np.nan,
            "median_ci": claims_mod.median_interval(v, level),
            "frac_above_ci": claims_mod.share_interval(int((v > threshold).sum()), v.size, level),
        }
        | counts
    )


def by_module(wl: WeightLinearity, threshold: float = paper.R2_BAR) -> pd.DataFrame:
    """Per module type: entries sampled / dropped (by reason) / kept, median and mean R², share above `threshold`
    (module types in `MODULES` order)."""
    counts = tensors_table(wl).groupby("module")[["sampled", "dropped_range", "dropped_distinct", "kept"]].sum()
    g = entries_table(wl).groupby("module", observed=True)["r2"]
    out = counts.join(
        pd.DataFrame(
            {"median": g.median(), "mean": g.mean(), "frac_above": g.apply(lambda s: float((s > threshold).mean()))}
        )
    )
    order = [m for m in MODULES if m in out.index] + sorted(set(out.index) - set(MODULES))
    return out.loc[order]


def by_layer(wl: WeightLinearity) -> pd.DataFrame:
    """Per transformer layer: kept entries, median / mean R² (tensors outside the layers left out)."""
    e = entries_table(wl).dropna(subset=["layer"])
    g = e.groupby(e["layer"].astype(int))["r2"]
    return pd.DataFrame({"kept": g.size(), "median": g.median(), "mean": g.mean()})


def grid(wl: WeightLinearity, stat: str = "mean") -> pd.DataFrame:
    """Layer × module type table of `stat` ("mean" as in LIN Fig. 8, or "median") of R²; row "—" holds tensors
    outside the layers (embedding, final norm, head)."""
    entries = entries_table(wl)
    e = entries.assign(row=entries["layer"].map(lambda x: "—" if pd.isna(x) else str(int(x))))
    table = e.pivot_table(index="row", columns="module", values="r2", aggfunc=stat, observed=True)
    rows = sorted((r for r in table.index if r != "—"), key=int) + (["—"] if "—" in table.index else [])
    cols = [m for m in MODULES if m in table.columns] + sorted(set(table.columns) - set(MODULES))
    return table.loc[rows, cols].rename_axis(index="layer", columns="module type")


def least_linear_module(wl: WeightLinearity) -> str:
    """The module type with the lowest median R² ("none" when nothing was kept)."""
    medians = by_module(wl)["median"].dropna()
    return str(medians.idxmin()) if len(medians) else "none"


def results(wl: WeightLinearity, threshold: float = paper.R2_BAR, level: float = 0.95) -> dict:
    """The numbers notebook 01 saves (`weight_r2_*`, `entries_*`), measured: `weight_r2_frac_above_0_7` is the
    share above the papers' 0.7, `weight_r2_frac_above_threshold` the share above `threshold` (the
    `claims.r2_threshold` knob, stored as `r2_threshold`), `weight_r2_median_ci` the `level` interval of the
    median."""
    s = summary(wl, threshold, level)
    mods = by_module(wl, threshold)
    layers = by_layer(wl)["median"]
    return {
        "weight_r2_median": s["median"],
        "weight_r2_q1": s["q1"],
        "weight_r2_q3": s["q3"],
        "weight_r2_median_ci": list(s["median_ci"]),
        "weight_r2_frac_above_0_7": s["frac_above_bar"],
        "weight_r2_frac_above_threshold": s["frac_above"],
        "r2_threshold": threshold,
        "weight_r2_mean": s["mean"],
        "entries_kept": s["kept"],
        "entries_dropped": s["dropped"],
        "entries_sampled": s["sampled"],
        "entries_dropped_range": s["dropped_range"],
        "entries_dropped_distinct": s["dropped_distinct"],
        "weight_r2_median_by_module": mods["median"].to_dict(),
        "entries_by_module": mods[["sampled", "dropped_range", "dropped_distinct", "kept"]].to_dict("index"),
        "weight_r2_median_by_layer": {str(k): v for k, v in layers.items()},
        "least_linear_module": least_linear_module(wl),
        "n_checkpoints": len(wl.steps),
        "steps": list(wl.steps),
        "settings": wl.settings,
    }


# ------------------------------------------------------------------------------------------------------------ claims
def claims(wl: WeightLinearity, by_seed: Mapping[int, dict], cfg) -> list[claims_mod.Claim]:
    """Notebook 01's claims: the share of moved entries above the R² bar and their median R² on every seed
    (`by_seed` = {seed: `summary(wl, threshold, level)`} at the config's `claims` bar and level), and whether norm
    weights are the least linear (`wl`: the run of rl.seed)."""
    st = claims_mod.Settings.of(cfg)
    seeds.check_made_at(by_seed, threshold=st.r2_threshold, level=st.level)
    thr, pct, n = st.r2_threshold, f"{st.level * 100:g} %", len(by_seed)
    share, share_iv, share_detail = seeds.across(by_seed, "frac_above", "frac_above_ci")
    med, med_iv, med_detail = seeds.across(by_seed, "median", "median_ci")
    share_paper = paper.get("weight_r2_share")
    return [
        claims_mod.Claim(
            "nb01.weight_r2_share",
            f"share of moved weight entries with R² > {thr:g}",
            share_paper,
            share,
            share_iv,
            claims_mod.above(share_paper.value),
            seeds.hull_how(f"{pct} exact bootstrap interval of the share over moved entries", n),
            share_detail,
        ),
        claims_mod.Claim(
            "nb01.weight_r2_median",
            f"median R² of moved weight entries is above {thr:g}",
            paper.get("weight_r2_median"),
            med,
            med_iv,
            claims_mod.above(thr),
            seeds.hull_how(f"{pct} exact bootstrap interval of the median over moved entries", n),
            med_detail,
        ),
        _norms_claim(wl, st.level, cfg.rl.seed),
    ]


def _norms_claim(wl: WeightLinearity, level: float, rl_seed: int) -> claims_mod.Claim:
    """Median R² of norm entries minus that of the other entries (< 0: norms are the least linear)."""
    r = wl.values
    norm = wl.norm_mask()
    norms, rest = r[norm], r[~norm]
    med = lambda v: float(np.median(v)) if v.size else math.nan  # noqa: E731
    d, iv = claims_mod.difference(
        med(norms), claims_mod.median_interval(norms, level), med(rest), claims_mod.median_interval(rest, level)
    )
    detail = (
        f"RL seed {rl_seed}: norms {med(norms):.3f} over {norms.size:,} entries, other modules "
        f"{med(rest):.3f} over {rest.size:,}"
        if norms.size
        else f"RL seed {rl_seed}: no norm entry moved enough to be kept"
    )
    return claims_mod.Claim(
        "nb01.norms_least_linear",
        "median R² of norm weights minus that of the other weights",
        paper.get("norms_least_linear"),
        d,
        iv,
        claims_mod.below(0),
        f"{level * 100:g} % exact bootstrap intervals of the two medians, combined in quadrature",
        detail,
    )
