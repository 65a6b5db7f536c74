"""Notebook 07: LIN v3 Fig. 2 at CPU scale — does training stay linear across algorithms, learning rates, rollouts,
optimizers and model sizes, and is SFT less linear? The design, the table of what each setting's notebooks 00–02
measured, the figure, the claims and the results; the runs themselves are made by the grid runner
(`helpers.pipeline.robustness`), which hands over what they measured as a `Grid`.

The design is the params file's `robustness.settings`, a list of
{factor, value (a label), overrides: {dotted knob: value}, scale: {dotted knob: factor}, trajectory: rl | sft}:

- `overrides` set knobs; `rl.lr: origin.sgd_lr` (`SGD_LR`) is notebook 03's SGD lr
  (`helpers.experiments.nb03_origin.Study.sgd_lr`: the `origin.sgd_lr` number, or with `auto` the lr matched to the
  reference AdamW run's measured step length);
- `scale` multiplies this params file's value (rounded to 4 significant digits like notebook 03's lr scales, so the
  two notebooks share their cached runs), so the design follows the default;
- `trajectory: sft` analyses notebook 03's matched SFT run instead (same base, steps, spacing, optimizer and lr;
  `helpers.experiments.nb03_origin.Study.run(study.sft)`, cached and shared with notebook 03), through `trajectory.dir`.

The setting without changes is the reference: the params file's own run.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.experiments import claims as C
from helpers.experiments import paper

SGD_LR = "origin.sgd_lr"  # the overrides value that stands for notebook 03's SGD lr
TRAJECTORIES = ("rl", "sft")
SETTING_KEYS = {"factor", "value", "overrides", "scale", "trajectory"}
METRICS = {  # results key -> the notebook that writes it
    "weight_r2_median": "01_weight_linearity",
    "weight_r2_q1": "01_weight_linearity",
    "weight_r2_q3": "01_weight_linearity",
    "weight_r2_frac_above_0_7": "01_weight_linearity",
    "token_r2_median": "02_output_linearity",
    "token_r2_q1": "02_output_linearity",
    "token_r2_q3": "02_output_linearity",
    "base_accuracy": "00_trajectory",
    "final_accuracy": "00_trajectory",
    "train_seconds": "00_trajectory",
}
SPACES = ("weight", "token")  # the R² spaces: weight entries (notebook 01), token log-probs (notebook 02)
INTERVALS = {  # results key ([lo, hi] of the median) -> the notebook that writes it
    "weight_r2_median_ci": "01_weight_linearity",
    "token_r2_median_ci": "02_output_linearity",
}


# ------------------------------------------------------------------------------------------------------- the design


@dataclass(frozen=True)
class Setting:
    """One point of the design (see the module docstring)."""

    factor: str
    value: str
    overrides: dict = field(default_factory=dict, hash=False)
    scale: dict = field(default_factory=dict, hash=False)
    trajectory: str = "rl"

    @property
    def label(self) -> str:
        return f"{self.factor}={self.value}"

    @property
    def is_reference(self) -> bool:
        return not self.overrides and not self.scale and self.trajectory == "rl"

    @property
    def dirname(self) -> str:
        return re.sub(r"[^A-Za-z0-9.+=-]+", "-", self.label).strip("-")


def knob(cfg, dotted: str):
    """The value of a dotted knob (`rl.lr`) of `cfg`; KeyError when there is none."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def design(cfg) -> list[Setting]:
    """The settings of `cfg.robustness.settings`, checked: known keys, knobs that exist, numeric scales, one run
    directory per setting. Errors name the params file and the setting."""
    raw = cfg.robustness.settings
    if not raw:
        raise ValueError(f"{cfg.source}: robustness.settings is empty")
    out: list[Setting] = []
    for i, entry in enumerate(raw):
        where = f"{cfg.source}: robustness.settings[{i}]"
        if not isinstance(entry, Mapping) or "factor" not in entry or "value" not in entry:
            raise ValueError(f"{where}: expected a mapping with at least `factor` and `value`, got {entry!r}")
        if set(entry) - SETTING_KEYS:
            raise ValueError(
                f"{where}: unknown keys {sorted(set(entry) - SETTING_KEYS)} (known: {sorted(SETTING_KEYS)})"
            )
        s = Setting(
            str(entry["factor"]),
            str(entry["value"]),
            dict(entry.get("overrides") or {}),
            dict(entry.get("scale") or {}),
            str(entry.get("trajectory", "rl")),
        )
        where = f"{where} ({s.label})"
        if s.trajectory not in TRAJECTORIES:
            raise ValueError(f"{where}: trajectory must be one of {TRAJECTORIES}, got {s.trajectory!r}")
        for dotted in [*s.overrides, *s.scale]:
            try:
                knob(cfg, dotted)
            except KeyError:
                raise ValueError(f"{where}: no parameter {dotted!r} in {cfg.source}") from None
        for dotted, f in s.scale.items():
            if not isinstance(f, (int, float)) or not isinstance(knob(cfg, dotted), (int, float)):
                raise ValueError(f"{where}: scale {dotted}: {f!r} needs a number and a numeric knob")
        out.append(s)
    names = [s.dirname for s in out]
    if len(set(names)) != len(names):
        raise ValueError(f"{cfg.source}: robustness.settings: two settings share a run directory name ({names})")
    if sum(s.is_reference for s in out) > 1:
        raise ValueError(f"{cfg.source}: robustness.settings: more than one setting without changes (reference)")
    return out


def design_table(cfg) -> pd.DataFrame:
    """The design as written: factor, value, what each setting changes, and its trajectory."""

    def changes(s: Setting) -> str:
        parts = [f"{k} = {v}" for k, v in s.overrides.items()] + [f"{k} × {v:g}" for k, v in s.scale.items()]
        return ", ".join(parts) or "—"

    return pd.DataFrame(
        [
            {
                "factor": s.factor,
                "value": s.value,
                "changes": changes(s),
                "trajectory": s.trajectory,
                "run directory": "(the run's own)" if s.is_reference else f"robustness/{s.dirname}",
            }
            for s in design(cfg)
        ]
    )


# ------------------------------------------------------------------------------------------- what the runs measured


@dataclass
class SettingRun:
    """One setting's run as the grid runner hands it over: where it ran, with which overrides, how it went, and what
    its notebooks measured."""

    setting: Setting
    dir: Path
    overrides: dict
    status: str  # ran | complete | failed | not run
    knobs: dict  # the run's rl.optimizer and rl.lr
    results: dict[str, dict]  # notebook -> its results, only those written with the setting's params
    seconds: dict[str, float | None]  # notebook (of `results`) -> seconds of its last execution


@dataclass
class Grid:
    """The robustness grid's runs, in design order."""

    run_dir: Path  # the reference run directory
    notebooks: list[str]  # the notebooks each setting runs
    runs: list[SettingRun]
    seconds: float  # wall time the grid runner spent


def collect(grid: Grid, cfg) -> pd.DataFrame:
    """One row per setting: factor, value, trajectory, the numbers of `METRICS` and the (lo, hi) intervals of
    `INTERVALS` from its results (NaN when missing or from other params), `linear` (both R² medians above `cfg`'s bar,
    `claims.r2_threshold`), seconds (its notebooks' last execution times, training included when notebook 00 built
    the RL run), run directory and status."""
    rows = []
    for r in grid.runs:
        row: dict[str, Any] = {
            "factor": r.setting.factor,
            "value": r.setting.value,
            "trajectory": r.setting.trajectory,
            "reference": r.setting.is_reference,
            "optimizer": r.knobs.get("optimizer"),
            "lr": r.knobs.get("lr", math.nan),
        }
        for key, nb in METRICS.items():
            val = r.results.get(nb, {}).get(key)
            row[key] = float(val) if isinstance(val, (int, float)) else math.nan
        for key, nb in INTERVALS.items():
            row[key] = _interval(r.results.get(nb, {}).get(key))
        row["seconds"] = sum(s or 0.0 for s in r.seconds.values()) if r.results else math.nan
        row |= {"run": str(r.dir), "status": r.status, "measured": len(r.results) == len(grid.notebooks)}
        rows.append(row)
    t = pd.DataFrame(rows)
    thr = C.r2_threshold(cfg)
    t["linear"] = (t["weight_r2_median"] > thr) & (t["token_r2_median"] > thr)
    t.index = [f"{f}={v}" for f, v in zip(t["factor"], t["value"])]
    return t


def _interval(value) -> tuple[float, float]:
    """A stored [lo, hi] as floats; (NaN, NaN) when missing or not two numbers."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(x, (int, float)) for x in value):
        return float(value[0]), float(value[1])
    return math.nan, math.nan


def _f(x, fmt: str = ".2f") -> str:
    return format(x, fmt) if x is not None and math.isfinite(x) else "n/a"


def fig2_table(t: pd.DataFrame) -> pd.DataFrame:
    """The numbers of the figure: median and IQR of weight and token R², share of weights above the papers' bar,
    held-out accuracy base → final, whether both medians clear the bar and the seconds each setting took."""
    iqr = lambda a, b: [f"{_f(x)} – {_f(y)}" for x, y in zip(t[a], t[b])]  # noqa: E731
    return pd.DataFrame(
        {
            "factor": t["factor"],
            "value": t["value"],
            "weight R² median": t["weight_r2_median"].round(3),
            "weight R² IQR": iqr("weight_r2_q1", "weight_r2_q3"),
            f"weights R² > {paper.R2_BAR:g}": [_f(x, ".0%") for x in t["weight_r2_frac_above_0_7"]],
            "token R² median": t["token_r2_median"].round(3),
            "token R² IQR": iqr("token_r2_q1", "token_r2_q3"),
            "held-out acc": [f"{_f(a)} → {_f(b)}" for a, b in zip(t["base_accuracy"], t["final_accuracy"])],
            "linear": np.where(t["measured"], np.where(t["linear"], "yes", "no"), "not measured"),
            "seconds": t["seconds"].round(0),
        },
        index=t.index,
    )


def plot(t: pd.DataFrame, cfg):
    """LIN v3 Fig. 2 style: median (marker) and IQR (bar) of weight and token R² per setting, settings grouped by
    factor, `cfg`'s R² bar, the paper's lowest RL median, and the reference's medians as dotted lines."""
    factors = list(dict.fromkeys(t["factor"]))
    x, pos, ticks = 0.0, [], []
    for f in factors:
        n = int((t["factor"] == f).sum())
        pos += [x + i for i in range(n)]
        ticks.append((x + (n - 1) / 2, f))
        x += n + 0.8
    pos = np.array(pos)
    fig, ax = plt.subplots(figsize=(max(6.4, 0.75 * len(t) + 2.5), 4.4))
    ref = t[t["reference"]]
    for i, (space, label) in enumerate((("weight", "weights"), ("token", "token log-probs"))):
        med, q1, q3 = (t[f"{space}_r2_{k}"].to_numpy(float) for k in ("median", "q1", "q3"))
        ax.errorbar(
            pos + (i - 0.5) * 0.22,
            med,
            yerr=[med - q1, q3 - med],
            fmt="os"[i],
            capsize=3,
            color=f"C{i}",
            label=f"{label} (median, IQR)",
        )
        if len(ref) and math.isfinite(ref[f"{space}_r2_median"].iloc[0]):
            ax.axhline(ref[f"{space}_r2_median"].iloc[0], color=f"C{i}", ls=":", lw=1)
    thr, rl = C.r2_threshold(cfg), paper.get("robust_rl")
    ax.axhline(thr, color="k", ls="--", lw=1, label=f"R² = {thr:g} (the bar)")
    ax.axhline(rl.value, color="0.5", ls="-.", lw=1, label=f"paper: lowest RL median ({rl.source})")
    ax.grid(axis="x", visible=False)
    ax.set_xticks(pos, list(t["value"]), rotation=30, ha="right", fontsize=8)
    for centre, f in ticks:
        ax.annotate(
            f,
            (centre, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 4),
            textcoords="offset points",
            ha="center",
            fontsize=9,
            fontweight="bold",
        )
    for edge in np.cumsum([int((t["factor"] == f).sum()) + 0.8 for f in factors])[:-1]:
        ax.axvline(edge - 0.9, color="0.8", lw=0.8)
    ax.set(xlim=(pos.min() - 0.6, pos.max() + 0.6), ylim=(0, 1.02), ylabel="R² vs step")
    ax.set_title("Linearity across settings (LIN v3 Fig. 2)", pad=18)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------------------- claims


def claims(t: pd.DataFrame, cfg) -> list[C.Claim]:
    """Notebook 07's claims (`helpers.experiments.claims`) from `collect`'s table: every RL setting linear, and SFT
    less linear than the reference RL run in weight and token space."""
    st = C.Settings.of(cfg)
    rl, sft = t[t["trajectory"] == "rl"], t[t["trajectory"] == "sft"]
    return [rl_settings_linear(rl, st), *sft_less_linear(rl[rl["reference"]], sft, st)]


def _ci(x: float, interval: tuple[float, float]) -> str:
    return f"{_f(x, '.3f')} [{_f(interval[0], '.3f')}, {_f(interval[1], '.3f')}]"


def rl_settings_linear(rl: pd.DataFrame, st: C.Settings) -> C.Claim:
    """The least linear RL setting's R² median (weight or token, whichever is lower) above the bar; interval [min of
    lows, min of highs] over settings and spaces — NaN, so inconclusive, when a setting has no median or interval."""
    names = [f"{label} ({space})" for label in rl.index for space in SPACES]
    a = np.array(
        [(r[f"{space}_r2_median"], *r[f"{space}_r2_median_ci"]) for _, r in rl.iterrows() for space in SPACES],
        dtype=np.float64,
    ).reshape(-1, 3)
    missing = [n for n, row in zip(names, a) if not np.isfinite(row).all()]
    known = np.isfinite(a[:, 0])
    low = float(a[known, 0].min()) if known.any() else math.nan
    interval = (float(a[:, 1].min()), float(a[:, 2].min())) if len(a) and not missing else (math.nan, math.nan)
    detail = f"least linear: {names[int(np.nanargmin(a[:, 0]))]}" if known.any() else "no RL setting measured"
    if missing:
        detail += f"; no median or interval for {', '.join(missing)}"
    return C.Claim(
        "nb07.rl_settings_linear",
        f"every RL setting linear (least linear setting's weight / token R² median above {st.r2_threshold:g})",
        paper.get("robust_rl"),
        low,
        interval,
        C.above(st.r2_threshold),
        f"exact bootstrap intervals of each setting's medians at {100 * st.level:.4g} % (notebooks 01 / "
        f"02); the least linear's [min of the lows, min of the highs] over {len(rl)} RL settings × 2 spaces",
        detail,
    )


def sft_less_linear(ref: pd.DataFrame, sft: pd.DataFrame, st: C.Settings) -> list[C.Claim]:
    """Reference RL − SFT R² median in weight and in token space (the first row of each; NaN when one is empty)."""

    def median(df: pd.DataFrame, space: str) -> tuple[str, float, tuple[float, float]]:
        if df.empty:
            return "none", math.nan, (math.nan, math.nan)
        return str(df.index[0]), float(df[f"{space}_r2_median"].iloc[0]), tuple(df[f"{space}_r2_median_ci"].iloc[0])

    out = []
    for space in SPACES:
        (ra, a, ai), (sb, b, bi) = median(ref, space), median(sft, space)
        d, interval = C.difference(a, ai, b, bi)
        out.append(
            C.Claim(
                f"nb07.sft_less_linear_{space}",
                f"SFT less linear than RL ({space} R² median, reference RL − SFT)",
                paper.get("robust_sft"),
                d,
                interval,
                C.above(0, tolerance=st.r2_margin),
                f"difference of two runs' exact bootstrap intervals of the median at "
                f"{100 * st.level:.4g} %, half-widths in quadrature",
                f"{ra} {_ci(a, ai)}, {sb} {_ci(b, bi)}",
            )
        )
    return out


def results(grid: Grid, t: pd.DataFrame) -> dict:
    """The keys notebook 07 saves: `settings` (one dict per setting) and summary numbers."""
    m = t[t["measured"]]
    rl, sft = m[m["trajectory"] == "rl"], m[m["trajectory"] == "sft"]
    keep = ["factor", "value", "trajectory", *METRICS, *INTERVALS, "linear", "seconds", "status"]
    settings = [
        {**{k: row[k] for k in keep}, "overrides": r.overrides, "run": os.path.relpath(r.dir, grid.run_dir)}
        for r, (_, row) in zip(grid.runs, t.iterrows())
    ]
    ref = rl[rl["reference"]]
    first = lambda df, col: float(df[col].iloc[0]) if len(df) else None  # noqa: E731
    return {
        "settings": settings,
        "n_settings": len(t),
        "n_measured": len(m),
        "n_linear": int(m["linear"].sum()),
        "linear_settings": list(m.index[m["linear"]]),
        "nonlinear_settings": list(m.index[~m["linear"]]),
        "rl_weight_r2_median_min": float(rl["weight_r2_median"].min()) if len(rl) else None,
        "rl_weight_r2_median_max": float(rl["weight_r2_median"].max()) if len(rl) else None,
        "rl_token_r2_median_min": float(rl["token_r2_median"].min()) if len(rl) else None,
        "rl_token_r2_median_max": float(rl["token_r2_median"].max()) if len(rl) else None,
        "reference_weight_r2_median": first(ref, "weight_r2_median"),
        "reference_token_r2_median": first(ref, "token_r2_median"),
        "sft_weight_r2_median": first(sft, "weight_r2_median"),
        "sft_token_r2_median": first(sft, "token_r2_median"),
        "settings_seconds": float(t["seconds"].sum()),
        "batch_seconds": grid.seconds,
    }
