"""Notebook 06 (RELEX): its experiments on `helpers.lib.relex` decompositions — the extrapolation grid against
two-point weight extrapolation, ablations (rank, fit, window), denoising, coefficient linearity, weight-space
alignment and bending fits chosen by validation in time —, each scored model carrying its per-item held-out scores,
their figures, and the paper-vs-measured claims (`helpers.experiments.claims`) whose intervals come from those per-item
scores. `score` is a `Scorer` (held-out metrics of a model directory, memoised).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from helpers.experiments import claims as claims_mod
from helpers.experiments import paper
from helpers.lib import extrapolation, runs
from helpers.lib.cache import cache_dir
from helpers.lib.linearity import parse_name, r2
from helpers.lib.relex import (
    BENDING,
    VERSION,
    Decomposition,
    choose_fit,
    decompose,
    extrapolate,
    fingerprint,
    fit,
    observed_steps,
    prefix_step,
    project,
    reconstruct,
)
from helpers.lib.scoring import CachedScorer, PerItem


class Scorer(CachedScorer):
    """`scoring.CachedScorer` on the first `relex.eval_items` held-out problems (all when null): `checkpoint(path)`
    is the `evaluate` dict of a model directory, `scored(path)` its table cells (avg@k with the `eval` section's k,
    and the per-item scores)."""

    def __init__(self, cfg):
        super().__init__(cfg, runs.heldout_items(cfg), cfg.relex.eval_items)

    def scored(self, path) -> dict:
        """{"accuracy": avg@k, "per_item": each item's share of its k samples correct} of a model directory."""
        res = self.checkpoint(path)
        return {"accuracy": float(res[self.metric]), "per_item": PerItem.of(res)}


def targets(traj, t_cut: int, horizons: Sequence[float]) -> list[int]:
    """The final step and each horizon multiple of T_cut (deduplicated, sorted)."""
    return sorted({traj.steps[-1], *(int(round(h * t_cut)) for h in horizons)})


def two_point(traj, t_cut: int, step: int, norms: str) -> Path:
    """The two-point weight extrapolation θ_0 + (step / t_cut)(θ_{t_cut} − θ_0) (helpers.lib.extrapolation), cached."""
    out = cache_dir(
        "two-point", {"trajectory": fingerprint(traj, [0, t_cut]), "t1": t_cut, "target": step, "norms": norms}, VERSION
    )
    if (out / "extrapolation.json").is_file():
        return out
    return extrapolation.extrapolate(traj, 0, t_cut, step, out, norms)


PAPER_FRACTION = paper.get("relex_prefix").value  # the paper's headline prefix (T_cut as a share of the run)


def paper_fraction(fractions: Sequence[float]) -> float:
    """The prefix fraction closest to the paper's headline prefix `PAPER_FRACTION`."""
    return min(fractions, key=lambda f: abs(f - PAPER_FRACTION))


def prefix_decomposition(traj, rc, fraction: float | None = None) -> Decomposition:
    """The SVD of the prefix `fraction` (default: the configured fraction closest to `PAPER_FRACTION`), at the largest
    rank any experiment of the `relex` section `rc` uses (lower ranks use its leading directions)."""
    if fraction is None:
        fraction = paper_fraction(rc.t_cut_fractions)
    rank = max([int(rc.rank), *rc.ablation.ranks])
    return decompose(traj, prefix_step(traj, fraction, int(rc.min_points)), rank, int(rc.chunk_mb) << 20)


def full_decomposition(traj, rc) -> Decomposition:
    """The SVD of the whole trajectory at the largest reconstruction rank (explained variance, denoising).
    A trajectory in which no tensor moved is an error (there is nothing to extrapolate)."""
    dec = decompose(traj, None, max(rc.denoise.ranks), int(rc.chunk_mb) << 20)
    if not any(f.rank for f in dec.factors.values()):
        raise ValueError(
            f"{traj.path(traj.steps[-1])}: no tensor moved between step 0 and step {traj.steps[-1]} "
            "(an RL run with no update, e.g. every reward equal), so there is nothing to extrapolate"
        )
    return dec


def real_curve(traj, score: Scorer) -> pd.DataFrame:
    """Held-out accuracy (and per-item scores) of every real checkpoint (step 0 = base)."""
    rows = [
        {"step": s, **score.scored(traj.path(s)), "greedy": score.checkpoint(traj.path(s)).get("greedy_accuracy")}
        for s in traj.steps
    ]
    return pd.DataFrame(rows)


def extrapolation_grid(traj, rc, score: Scorer, real: pd.DataFrame) -> pd.DataFrame:
    """RELEX (rank `rc.rank`, fit `rc.fit`) and two-point extrapolation from each prefix T_cut = fraction × the last
    step to each target (the final step, horizons × T_cut); `real_accuracy` = the real checkpoint's, if there is one.
    `per_item`: each model's per-item scores."""
    real_at = dict(zip(real.step, real.accuracy))
    rows = []
    for fraction in rc.t_cut_fractions:
        dec = prefix_decomposition(traj, rc, fraction)
        for step in targets(traj, dec.t_cut, rc.horizons):
            common = {
                "fraction": fraction,
                "t_cut": dec.t_cut,
                "observed": len(dec.steps),
                "target_step": step,
                "horizon": round(step / dec.t_cut, 2),
                "real_accuracy": real_at.get(step, float("nan")),
            }
            path = extrapolate(dec, step, rank=rc.rank, kind=rc.fit, degree=rc.degree, window=rc.window)
            rows.append({"method": "relex", **common, **score.scored(path)})
            path = two_point(traj, dec.t_cut, step, rc.norms)
            rows.append({"method": "two_point", **common, **score.scored(path)})
    return pd.DataFrame(rows)


def grid_table(grid: pd.DataFrame) -> pd.DataFrame:
    """The extrapolation grid one row per (prefix, target): RELEX, two-point and the real checkpoint side by side
    (targets beyond the run have no real checkpoint: NaN)."""
    keys = ["fraction", "t_cut", "target_step", "horizon"]
    wide = grid.pivot_table(index=keys, columns="method", values="accuracy")
    return wide.join(grid.groupby(keys).real_accuracy.first().rename("real")).sort_index()


def ablation_grid(traj, rc, score: Scorer) -> pd.DataFrame:
    """Accuracy of RELEX variants from one prefix (`rc.ablation.t_cut_fraction`): every rank × fit with the whole
    prefix, and rank 1 + linear on each window; targets: the final step and `rc.ablation.horizons` × T_cut.
    A variant the prefix has too few points for gets NaN (per_item None) and a note."""
    ab = rc.ablation
    dec = prefix_decomposition(traj, rc, ab.t_cut_fraction)
    variants = [(r, f, None) for r in ab.ranks for f in ab.fits] + [(1, "linear", w) for w in ab.windows]
    rows = []
    for rank, kind, window in variants:
        effective = max(min(f.rank, rank) for f in dec.factors.values())
        for step in targets(traj, dec.t_cut, ab.horizons):
            row = {
                "rank": rank,
                "effective_rank": effective,
                "fit": kind,
                "window": window,
                "t_cut": dec.t_cut,
                "observed": len(dec.steps),
                "target_step": step,
                "accuracy": float("nan"),
                "per_item": None,
                "note": "",
            }
            try:
                row.update(score.scored(extrapolate(dec, step, rank=rank, kind=kind, degree=rc.degree, window=window)))
            except ValueError as e:
                row["note"] = str(e)
            rows.append(row)
    return pd.DataFrame(rows)


def bent_prefixes(rc) -> list[float]:
    """The prefixes of the bending-fit comparison: the extrapolation grid's (`rc.t_cut_fractions`), then the
    ablations' (`rc.ablation.t_cut_fraction`)."""
    return list(dict.fromkeys([*rc.t_cut_fractions, rc.ablation.t_cut_fraction]))


def rank1_coefficients(dec: Decomposition) -> dict[str, np.ndarray]:
    """c_t = ⟨δ_t, v_1⟩ at the prefix's steps, per tensor that moved."""
    return {n: f.coefficients[:, 0] for n, f in dec.factors.items() if f.rank}


def bent_fits(traj, rc, score: Scorer) -> pd.DataFrame:
    """Bending fits chosen by validation in time, against RELEX's line, from each prefix (`bent_prefixes`).

    On the prefix's own checkpoints only, `relex.choose_fit` fits each candidate of `rc.bend.kinds` (linear always
    among them) to the rank-1 coefficients of the earlier checkpoints and scores its prediction of the last
    `rc.bend.holdout` share; then every candidate is refitted on the whole prefix and extrapolated to the final step
    (rank 1, `relex.extrapolate`) and scored. One row per prefix × candidate: `chosen` (the prefix's chosen kind) and
    `reason`, the candidate's `validation_error` and `note` (why it was not validated, or for how many tensors the
    linear fit stood in), `refit_fallbacks` (tensors the linear fit stands in for at the refit), accuracy and per_item
    (NaN / None for a bending kind the linear fit stands in for on every tensor: its checkpoint would be the line's).
    """
    final = traj.steps[-1]
    rows = []
    for fraction in bent_prefixes(rc):
        dec = prefix_decomposition(traj, rc, fraction)
        c = rank1_coefficients(dec)
        choice = choose_fit(dec.steps, c, rc.bend.kinds, rc.bend.holdout, rc.degree)
        for kind, error in choice.errors.items():
            fits = [fit(dec.steps, v, kind, rc.degree) for v in c.values()]
            fallbacks = [f.fallback for f in fits if getattr(f, "fallback", "")]
            row = {
                "fraction": fraction,
                "t_cut": dec.t_cut,
                "observed": len(dec.steps),
                "n_train": choice.n_train,
                "n_holdout": choice.n_holdout,
                "kind": kind,
                "chosen": choice.kind,
                "reason": choice.reason,
                "validation_error": error,
                "note": choice.notes[kind],
                "refit_fallbacks": len(fallbacks),
                "target_step": final,
                "accuracy": float("nan"),
                "per_item": None,
            }
            if len(fallbacks) < len(fits):
                row.update(score.scored(extrapolate(dec, final, rank=1, kind=kind, degree=rc.degree)))
            else:
                refit = f"refit: the line stands in on every tensor ({fallbacks[0]})"
                row["note"] = "; ".join(x for x in (row["note"], refit) if x)
            rows.append(row)
    return pd.DataFrame(rows)


def bent_chosen(bent: pd.DataFrame) -> pd.DataFrame:
    """Per prefix of `bent_fits`: the chosen kind, why, and the final-step accuracy of the chosen kind and the line."""
    line = bent[bent.kind == "linear"].set_index("fraction").accuracy
    chosen = bent[bent.kind == bent.chosen].set_index("fraction")
    out = chosen[["t_cut", "chosen", "reason", "accuracy"]].rename(columns={"accuracy": "accuracy_chosen"})
    return out.assign(accuracy_linear=line).reset_index()


def bent_table(bent: pd.DataFrame, ablations: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """`bent_fits` one row per prefix: the chosen kind and why, each candidate's validation error, the final-step
    accuracy of each candidate and of the chosen one, the rank-1 polynomial / sinusoid ablation rows from the same
    prefix where the ablation grid has them (NaN elsewhere), the real final checkpoint, and the candidates' notes."""
    final = bent.target_step.iloc[0]
    ab = ablations[(ablations["rank"] == 1) & ablations.window.isna() & (ablations.target_step == final)]
    ab = ab.set_index(["t_cut", "fit"]).accuracy
    rows = []
    for (fraction, t_cut), g in bent.groupby(["fraction", "t_cut"], sort=False):
        first = g.iloc[0]
        acc = dict(zip(g.kind, g.accuracy))
        rows.append(
            {
                "fraction": fraction,
                "t_cut": t_cut,
                "fitted / held out": f"{first.n_train} / {first.n_holdout}",
                "chosen": first.chosen,
                **{f"error {k}": e for k, e in zip(g.kind, g.validation_error)},
                **{f"accuracy {k}": a for k, a in acc.items()},
                "accuracy chosen": acc[first.chosen],
                **{f"ablation {k}": ab.get((t_cut, k), float("nan")) for k in ("polynomial", "sinusoid")},
                "real": float(real.accuracy[real.step == final].iloc[0]),
                "reason / notes": "; ".join([first.reason, *(f"{k}: {n}" for k, n in zip(g.kind, g.note) if n)]),
            }
        )
    return pd.DataFrame(rows).set_index(["fraction", "t_cut"])


@dataclass
class BentCurve:
    fraction: float
    name: str
    t_cut: int
    chosen: str
    steps: np.ndarray  # every non-base step of the trajectory
    c: np.ndarray  # ⟨δ_t, v_1⟩ at `steps` (v_1 from this prefix)
    grid: np.ndarray  # steps 0 .. the last, where the fits are drawn
    fits: dict[str, np.ndarray]  # kind -> its whole-prefix fit on `grid` (kinds the line stands in for left out)


def bent_curves(traj, rc, bent: pd.DataFrame) -> list[BentCurve]:
    """Per prefix of `bent`, the rank-1 coefficient of one tensor over the whole run (`relex.project`) and each
    candidate's fit from the prefix. The tensor: the one with the largest s₁ in the headline prefix (the configured
    fraction closest to `PAPER_FRACTION`), the largest weight in the validation error; the same one in every panel."""
    head = prefix_decomposition(traj, rc)
    name = max((n for n, f in head.factors.items() if f.rank), key=lambda n: head.factors[n].s[0])
    steps = observed_steps(traj)
    grid = np.linspace(0, steps[-1], 200)
    out = []
    for fraction, g in bent.groupby("fraction", sort=False):
        dec = prefix_decomposition(traj, rc, fraction)
        c, _ = project(dec, name, steps, int(rc.chunk_mb) << 20)
        own = dec.factors[name].coefficients[:, 0]
        fits = {k: fit(dec.steps, own, k, rc.degree) for k in g.kind}
        curves = {k: np.asarray(f(grid)) for k, f in fits.items() if not getattr(f, "fallback", "")}
        out.append(BentCurve(fraction, name, dec.t_cut, g.chosen.iloc[0], np.asarray(steps), c[:, 0], grid, curves))
    return out


def denoising(traj, rc, score: Scorer, real: pd.DataFrame) -> pd.DataFrame:
    """Rank-r reconstruction θ_0 + Σ c_r(t) v_r (SVD of the whole trajectory) vs the raw checkpoint at observed steps
    (`rc.denoise.steps` evenly spaced ones, always including the last; null = all); per-item scores of both."""
    dec = full_decomposition(traj, rc)
    steps = dec.steps
    if rc.denoise.steps and rc.denoise.steps < len(steps):
        steps = [steps[int(round(i))] for i in np.linspace(len(steps) - 1, 0, int(rc.denoise.steps))][::-1]
    raw = real.set_index("step")
    rows = [
        {
            "step": s,
            "rank": r,
            "raw_accuracy": raw.accuracy[s],
            "raw_per_item": raw.per_item[s],
            **score.scored(reconstruct(dec, s, rank=r)),
        }
        for s in steps
        for r in rc.denoise.ranks
    ]
    return pd.DataFrame(rows)


def explained_variance_table(dec: Decomposition) -> pd.DataFrame:
    """Per moving tensor: layer, module type, size, λ_1/Σλ, and the top singular values."""
    rows = []
    for name, f in dec.factors.items():
        if f.rank:
            layer, module = parse_name(name)
            rows.append(
                {
                    "tensor": name,
                    "layer": layer,
                    "module": module,
                    "numel": math.prod(f.shape),
                    "explained_variance": f.explained_variance,
                    "s1": f.s[0],
                    "s2_over_s1": f.s[1] / f.s[0] if f.rank > 1 else float("nan"),
                }
            )
    return pd.DataFrame(rows)


def representative(dec: Decomposition, modules: Sequence[str]) -> list[str]:
    """For each module type, its tensor in the middle layer (or the only one) among the tensors that moved."""
    table = explained_variance_table(dec)
    out = []
    for module in modules:
        hits = table[table.module == module]
        if len(hits):
            layers = hits.layer.dropna()
            mid = hits if layers.empty else hits[hits.layer == sorted(layers)[len(layers) // 2]]
            out.append(mid.tensor.iloc[0])
    return out


@dataclass
class CoefficientSeries:
    name: str
    steps: np.ndarray  # every non-base step of the trajectory
    c: np.ndarray  # ⟨δ_t, v_1⟩ at `steps` (v_1 from the prefix)
    t_cut: int
    predicted: np.ndarray  # the prefix fit at `steps`


def coefficient_series(dec: Decomposition, names: Sequence[str], rc) -> list[CoefficientSeries]:
    """Rank-1 coefficients of `names` over the whole trajectory (v_1 from the prefix `dec`) and the prefix fit."""
    steps = observed_steps(dec.traj)
    out = []
    for name in names:
        c, _ = project(dec, name, steps, int(rc.chunk_mb) << 20)
        pred = fit(dec.steps, dec.factors[name].coefficients[:, 0], rc.fit, rc.degree, rc.window)(np.asarray(steps))
        out.append(CoefficientSeries(name, np.asarray(steps), c[:, 0], dec.t_cut, np.asarray(pred)))
    return out


def coefficient_summary(series: Sequence[CoefficientSeries]) -> pd.DataFrame:
    """In-sample R² (prefix) and out-of-sample R² (steps after T_cut) of c_t against the step
    (helpers.lib.linearity.r2), and the relative error of the prefix fit's prediction at the last step."""
    rows = []
    for s in series:
        inside, after = s.steps <= s.t_cut, s.steps > s.t_cut
        rows.append(
            {
                "tensor": s.name,
                "t_cut": s.t_cut,
                "r2_in_sample": float(r2(s.c[inside], s.steps[inside])) if inside.sum() > 2 else float("nan"),
                "r2_out_of_sample": float(r2(s.c[after], s.steps[after])) if after.sum() > 2 else float("nan"),
                "r2_all": float(r2(s.c, s.steps)),
                "final_relative_error": abs(s.predicted[-1] - s.c[-1]) / max(abs(s.c[-1]), 1e-30),
            }
        )
    return pd.DataFrame(rows)


def alignment(dec: Decomposition, rc) -> pd.DataFrame:
    """Weight-space agreement of the predicted delta with the real one at every checkpoint after the prefix (RELEX
    Fig. 6), mean over the tensors that moved: cosine(Δ̂_t, δ_t) and ‖Δ̂_t‖/‖δ_t‖ for RELEX (rank `rc.rank`, fit
    `rc.fit`) and for two-point extrapolation Δ̂_t = (t/T_cut)·δ_{T_cut}. A RELEX cosine that stays high far beyond the
    prefix means the prefix's direction does not drift."""
    later = [s for s in observed_steps(dec.traj) if s > dec.t_cut]
    if not later:
        return pd.DataFrame(columns=["step", "horizon", "method", "cosine", "norm_ratio"])
    t = np.asarray(later, dtype=np.float64)
    cos = {"relex": [], "two_point": []}
    ratio = {"relex": [], "two_point": []}
    for name, f in dec.factors.items():
        if not f.rank:
            continue
        c, gram = project(dec, name, [dec.t_cut, *later], int(rc.chunk_mb) << 20)
        norm = np.sqrt(np.diag(gram))
        r = min(int(rc.rank), f.rank)
        pred = np.stack([fit(dec.steps, f.coefficients[:, i], rc.fit, rc.degree, rc.window)(t) for i in range(r)], 1)
        pred_norm = np.linalg.norm(pred, axis=1)  # the v_r are orthonormal
        cos["relex"].append((pred * c[1:, :r]).sum(1) / (pred_norm * norm[1:]))
        ratio["relex"].append(pred_norm / norm[1:])
        cos["two_point"].append(gram[0, 1:] / (norm[0] * norm[1:]))
        ratio["two_point"].append(t / dec.t_cut * norm[0] / norm[1:])
    rows = [
        {
            "step": s,
            "horizon": s / dec.t_cut,
            "method": m,
            "cosine": float(np.mean([x[i] for x in cos[m]])),
            "norm_ratio": float(np.mean([x[i] for x in ratio[m]])),
        }
        for m in cos
        for i, s in enumerate(later)
    ]
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------------------------------
# Figures


def plot_explained_variance(table: pd.DataFrame):
    """Histogram of λ_1/Σλ over tensors, and its spread by module type."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    sns.histplot(table.explained_variance, bins=20, binrange=(0, 1), ax=a)
    a.axvline(table.explained_variance.median(), color="k", ls="--", label="median")
    a.set(xlabel="rank-1 explained variance λ₁/Σλ", ylabel="tensors", title="Rank 1 per tensor")
    a.legend()
    sns.stripplot(table, x="module", y="explained_variance", ax=b, size=4)
    b.set(ylim=(0, 1.02), ylabel="λ₁/Σλ", title="By module type")
    plt.setp(b.get_xticklabels(), rotation=45, ha="right")
    return fig


def plot_coefficients(series: Sequence[CoefficientSeries], summary: pd.DataFrame):
    """c_t = ⟨δ_t, v_1⟩ against the step: the prefix (filled), later checkpoints (hollow), the prefix fit."""
    n = len(series)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False)
    for ax, s, (_, row) in zip(axes[0], series, summary.iterrows()):
        inside = s.steps <= s.t_cut
        ax.plot(s.steps[inside], s.c[inside], "o", label="prefix (fitted)")
        ax.plot(s.steps[~inside], s.c[~inside], "o", mfc="none", label="later (held out)")
        ax.plot(s.steps, s.predicted, "-", color="C3", label="fit")
        ax.axvline(s.t_cut, color="gray", ls=":")
        ax.set(title=s.name.replace("model.", "").replace(".weight", ""), xlabel="step")
        ax.text(
            0.03,
            0.97,
            f"R² in {row.r2_in_sample:.2f} / out {row.r2_out_of_sample:.2f}",
            transform=ax.transAxes,
            va="top",
            fontsize=8,
        )
    axes[0][0].set_ylabel("c_t = ⟨δ_t, v₁⟩")
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_extrapolation(real: pd.DataFrame, grid: pd.DataFrame):
    """Accuracy vs target step, one panel per prefix: real checkpoints, RELEX and two-point extrapolations."""
    prefixes = grid[["fraction", "t_cut"]].drop_duplicates()
    fig, axes = plt.subplots(1, len(prefixes), figsize=(4.6 * len(prefixes), 3.6), squeeze=False, sharey=True)
    for ax, (_, p) in zip(axes[0], prefixes.iterrows()):
        ax.plot(real.step, real.accuracy, "-", color="gray", label="real checkpoints")
        for method, marker in (("relex", "o"), ("two_point", "s")):
            g = grid[(grid.t_cut == p.t_cut) & (grid.fraction == p.fraction) & (grid.method == method)]
            ax.plot(g.target_step, g.accuracy, marker + "--", label=method.replace("_", "-"))
        ax.axvline(p.t_cut, color="k", ls=":", label="T_cut")
        ax.set(title=f"prefix {p.fraction:.0%} (T_cut = {int(p.t_cut)})", xlabel="target step")
    axes[0][0].set_ylabel("held-out accuracy")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ablations(table: pd.DataFrame, final_accuracy: float):
    """Accuracy of each RELEX variant at each target; the line is the real final checkpoint."""
    t = table.assign(
        variant=[
            f"r{r} {f}" + (f" w{int(w)}" if w == w and w is not None else "")
            for r, f, w in zip(table["rank"], table.fit, table.window)
        ]
    )
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * t.variant.nunique() + 2), 3.8))
    sns.barplot(t, x="variant", y="accuracy", hue="target_step", ax=ax)
    ax.axhline(final_accuracy, color="k", ls="--", label="real final")
    ax.set(ylabel="held-out accuracy", title=f"Ablations (T_cut = {t.t_cut.iloc[0]})")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    ax.legend(fontsize=8, title="target step")
    return fig


def plot_alignment(table: pd.DataFrame, t_cut: int):
    """Cosine and norm ratio of the predicted vs the real delta after the prefix, RELEX vs two-point."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for method, g in table.groupby("method"):
        a.plot(g.step, g.cosine, "o-", label=method.replace("_", "-"))
        b.plot(g.step, g.norm_ratio, "o-", label=method.replace("_", "-"))
    a.set(xlabel="step", ylabel="mean cosine(Δ̂, δ)", title=f"Direction (prefix T_cut = {t_cut})")
    b.axhline(1.0, color="gray", ls=":")
    b.set(xlabel="step", ylabel="mean ‖Δ̂‖ / ‖δ‖", title="Magnitude")
    a.legend()
    fig.tight_layout()
    return fig


def plot_bent_fits(curves: Sequence[BentCurve]):
    """One panel per prefix: the tensor's real rank-1 coefficient (filled: the prefix, hollow: later checkpoints) and
    each candidate's fit from the prefix, the chosen one drawn thick."""
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False, sharey=True)
    for ax, cv in zip(axes[0], curves):
        inside = cv.steps <= cv.t_cut
        ax.plot(cv.steps[inside], cv.c[inside], "ko", ms=4, label="prefix")
        ax.plot(cv.steps[~inside], cv.c[~inside], "ko", mfc="none", ms=4, label="later (real)")
        for i, (kind, y) in enumerate(cv.fits.items()):
            chosen = kind == cv.chosen
            label = kind + (" (chosen)" if chosen else "")
            ax.plot(
                cv.grid, y, "--" if kind == "linear" else "-", color=f"C{i}", lw=2.2 if chosen else 1.2, label=label
            )
        ax.axvline(cv.t_cut, color="gray", ls=":")
        ax.set(title=f"prefix {cv.fraction:.0%} (T_cut = {cv.t_cut})", xlabel="step")
        ax.legend(fontsize=7, loc="lower right")
    lo, hi = min(cv.c.min() for cv in curves), max(cv.c.max() for cv in curves)
    pad = 0.5 * (hi - lo)
    axes[0][0].set(
        ylim=(min(lo, 0) - pad, hi + pad),
        ylabel=f"c_t = ⟨δ_t, v₁⟩\n{curves[0].name.replace('model.', '').replace('.weight', '')}",
    )
    fig.tight_layout()
    return fig


def plot_denoising(table: pd.DataFrame):
    """Raw checkpoint vs its rank-r reconstruction, accuracy against the step."""
    fig, ax = plt.subplots()
    raw = table.drop_duplicates("step")
    ax.plot(raw.step, raw.raw_accuracy, "o-", color="gray", label="raw checkpoint")
    for r, g in table.groupby("rank"):
        ax.plot(g.step, g.accuracy, "o--", label=f"rank-{r} reconstruction")
    ax.set(xlabel="step", ylabel="held-out accuracy", title="Denoising: reconstruction at observed steps")
    ax.legend()
    return fig


# ----------------------------------------------------------------------------------------------------------------------
# Paper vs measured

MOST = 0.5  # "rank 1 carries most" / "keeps most of the gain": more than half (the paper gives no number)


@dataclass(frozen=True, eq=False)
class Measured:
    """Notebook 06's tables and the `claims` settings that judge them: the one argument of `claims` and `results`.
    Every scored row carries `per_item` (`scoring.PerItem`), all on the same held-out items."""

    settings: claims_mod.Settings
    ev: pd.DataFrame  # explained_variance_table of the whole run
    real: pd.DataFrame  # real_curve
    grid: pd.DataFrame  # extrapolation_grid
    ablations: pd.DataFrame  # ablation_grid
    denoise: pd.DataFrame  # denoising
    coefficients: pd.DataFrame  # coefficient_summary
    alignment: pd.DataFrame  # alignment
    bent: pd.DataFrame  # bent_fits

    def real_at(self, step: int) -> np.ndarray:
        """The per-item scores of the real checkpoint at `step`."""
        return PerItem.scores(self.real.per_item[self.real.step == step].iloc[0])

    @property
    def n_items(self) -> int:
        return len(self.real_at(self.real.step.iloc[0]))


def _paired(m: Measured, a: np.ndarray, b: np.ndarray) -> tuple[float, tuple[float, float]]:
    s = m.settings
    return claims_mod.paired_difference(a, b, s.level, s.bootstrap)


def _paired_how(m: Measured, n: int) -> str:
    return f"{m.settings.level:.0%} paired bootstrap over {n} held-out items"


def _ratio_of_means(
    num: np.ndarray, den: np.ndarray, level: float, n_boot: int, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """mean(num) / mean(den) and its percentile-bootstrap interval, resampling items (both means from the same
    resample). Unbounded (−∞, ∞) when the interval of mean(den) reaches 0: the ratio is then not identified (as a
    Fieller interval would be)."""
    n = len(num)
    point = float(num.mean() / den.mean()) if den.mean() != 0 else math.nan
    rng = np.random.default_rng(seed)
    tops, bottoms = np.empty(n_boot), np.empty(n_boot)
    for i in range(0, n_boot, 256):
        idx = rng.integers(0, n, size=(min(256, n_boot - i), n))
        tops[i : i + len(idx)], bottoms[i : i + len(idx)] = num[idx].mean(1), den[idx].mean(1)
    a = 1 - level
    if np.quantile(bottoms, a / 2) <= 0:
        return point, (-math.inf, math.inf)
    lo, hi = np.quantile(tops / bottoms, [a / 2, 1 - a / 2])
    return point, (float(lo), float(hi))


def _rank1(m: Measured) -> claims_mod.Claim:
    ev = m.ev.explained_variance.dropna().to_numpy()
    return claims_mod.Claim(
        "nb06.rank1",
        "rank 1 carries most of each tensor's delta trajectory (median λ₁/Σλ over tensors)",
        paper.get("relex_rank1"),
        float(np.median(ev)) if len(ev) else math.nan,
        claims_mod.median_interval(ev, m.settings.level),
        claims_mod.above(MOST),
        f"exact {m.settings.level:.0%} bootstrap interval of the median over {len(ev)} tensors; "
        "'most' = more than half",
    )


def _reconstruction(m: Measured) -> claims_mod.Claim:
    """(rank-r reconstruction at the last step − base) / (final − base), r the smallest denoising rank."""
    last = m.real.step.iloc[-1]
    d = m.denoise
    row = d[(d["rank"] == d["rank"].min()) & (d.step == last)].iloc[0]
    base, final = m.real_at(m.real.step.iloc[0]), m.real_at(last)
    kept, interval = _ratio_of_means(
        PerItem.scores(row.per_item) - base, final - base, m.settings.level, m.settings.bootstrap
    )
    return claims_mod.Claim(
        "nb06.reconstruction_keeps_gain",
        f"the rank-{row['rank']} reconstruction of the final checkpoint keeps most of the RL gain (share kept)",
        paper.get("relex_reconstruction"),
        kept,
        interval,
        claims_mod.above(MOST),
        f"{_paired_how(m, len(base))} of the share (unbounded when the RL gain's own interval reaches 0); "
        "'most' = more than half",
        f"RL gain {final.mean() - base.mean():+.3f} at step {last}",
    )


def _prefix(m: Measured) -> claims_mod.Claim:
    relex = m.grid[m.grid.method == "relex"]
    frac, last = paper_fraction(relex.fraction.unique()), m.real.step.iloc[-1]
    row = relex[(relex.fraction == frac) & (relex.target_step == last)].iloc[0]
    final = m.real_at(last)
    diff, interval = _paired(m, PerItem.scores(row.per_item), final)
    return claims_mod.Claim(
        "nb06.prefix_matches_full",
        f"RELEX from a {frac:.0%} prefix matches full RLVR at the final step (RELEX − full RL)",
        paper.get("relex_prefix"),
        diff,
        interval,
        claims_mod.above(-m.settings.accuracy_margin),
        _paired_how(m, len(final)),
        f"T_cut = {row.t_cut}, step {last}: {row.accuracy:.3f} vs {final.mean():.3f}",
    )


def _horizon(m: Measured) -> claims_mod.Claim:
    relex = m.grid[m.grid.method == "relex"]
    smallest = relex[relex.fraction == relex.fraction.min()]
    far = smallest[smallest.horizon == smallest.horizon.max()].iloc[0]
    own = m.real_at(far.t_cut)
    diff, interval = _paired(m, PerItem.scores(far.per_item), own)
    return claims_mod.Claim(
        "nb06.horizon_improves",
        f"RELEX {far.horizon:g}× beyond the smallest prefix still improves on the prefix's own checkpoint",
        paper.get("relex_horizon"),
        diff,
        interval,
        claims_mod.above(0, m.settings.accuracy_margin),
        _paired_how(m, len(own)),
        f"T_cut = {far.t_cut}, step {far.target_step}: {far.accuracy:.3f} vs {own.mean():.3f}",
    )


ABLATIONS = {  # claim name -> (paper key, what varies, the variants compared with rank 1 + linear)
    "rank_k_no_gain": ("relex_rank_k", "rank k > 1", lambda ab: (ab["rank"] > 1) & (ab.fit == "linear")),
    "nonlinear_fit_no_gain": (
        "relex_nonlinear_fit",
        "a non-linear fit",
        lambda ab: (ab["rank"] == 1) & (ab.fit != "linear"),
    ),
}


def best_variant(m: Measured, name: str) -> tuple[str | None, np.ndarray | None, np.ndarray]:
    """The ablation variant (rank × fit × target, whole prefix) of `ABLATIONS[name]` with the largest mean gain over
    rank 1 + linear at the same target on the selection half of the items: (its label, its per-item gains, the
    report half); (None, None, report half) when no such variant was measured."""
    ab = m.ablations[m.ablations.window.isna() & m.ablations.accuracy.notna()]
    ref = ab[(ab["rank"] == 1) & (ab.fit == "linear")].set_index("target_step").per_item
    gains = {
        f"rank {r} {f} at step {t}": PerItem.scores(cell) - PerItem.scores(ref[t])
        for r, f, t, cell in ab[ABLATIONS[name][2](ab)][["rank", "fit", "target_step", "per_item"]].itertuples(
            index=False
        )
        if t in ref.index
    }
    select, report = claims_mod.split(m.n_items, m.settings.split_seed)
    if not gains:
        return None, None, report
    label = max(gains, key=lambda k: gains[k][select].mean())
    return label, gains[label], report


def _ablation(m: Measured, name: str) -> claims_mod.Claim:
    """The paper says no gain: the best variant (chosen on the selection half) minus rank 1 + linear, on the report
    half. Rule below(margin, tolerance=margin), the mirror of an "improves" claim's above(0, tolerance=margin): it
    holds when the interval rules out a gain as large as the margin, does not hold when it establishes a gain (> 0)."""
    key, what, _ = ABLATIONS[name]
    label, gain, report = best_variant(m, name)
    s, margin = m.settings, m.settings.accuracy_margin
    diff, interval = (
        (math.nan, (math.nan, math.nan))
        if label is None
        else (float(gain[report].mean()), claims_mod.bootstrap_mean(gain[report], s.level, s.bootstrap))
    )
    return claims_mod.Claim(
        f"nb06.{name}",
        f"extrapolation with {what} gains nothing over rank 1 + linear (best variant − rank 1 linear)",
        paper.get(key),
        diff,
        interval,
        claims_mod.below(margin, margin),
        f"best variant chosen on the selection half; {_paired_how(m, len(report))} of the report half",
        f"best: {label}" if label else "not measured (prefix too short or no such variant in the ablation grid)",
    )


def bent_rows(m: Measured) -> tuple[pd.Series | None, pd.Series | None, pd.DataFrame]:
    """On the headline prefix (the one of the prefix claim): (RELEX's line, the bending candidate with the lowest
    validation error among those validated and scored — None when there is none —, all of that prefix's rows)."""
    frac = paper_fraction(m.grid[m.grid.method == "relex"].fraction.unique())
    rows = m.bent[m.bent.fraction == frac]
    line = rows[rows.kind == "linear"]
    bending = rows[rows.kind.isin(list(BENDING)) & rows.validation_error.notna() & rows.accuracy.notna()]
    best = bending.loc[bending.validation_error.idxmin()] if len(bending) else None
    return (line.iloc[0] if len(line) else None), best, rows


def _bent_fit(m: Measured) -> claims_mod.Claim:
    """The best-validated bending fit minus RELEX's line at the final step, from the headline prefix. The bending kind
    is chosen by validation in time on the weights (`relex.choose_fit`), not on any held-out item, so every item
    reports (no selection/report split is needed)."""
    line, best, rows = bent_rows(m)
    n = m.n_items
    if line is None or best is None:
        notes = [f"{k}: {x}" for k, x in zip(rows.kind, rows.note) if x and k != "linear"]
        why = "; ".join([*dict.fromkeys(rows.reason), *notes]) or "no bent-fit rows"
        where = f" (T_cut = {line.t_cut}, {line.observed} checkpoints)" if line is not None else ""
        diff, interval, detail = math.nan, (math.nan, math.nan), f"not measured{where}: {why}"
    else:
        diff, interval = _paired(m, PerItem.scores(best.per_item), PerItem.scores(line.per_item))
        detail = (
            f"T_cut = {line.t_cut}, step {line.target_step}: {best.kind} (validation error "
            f"{best.validation_error:.3g} vs linear {line.validation_error:.3g}; chosen: {line.chosen}) "
            f"{best.accuracy:.3f} vs linear {line.accuracy:.3f}"
        )
    return claims_mod.Claim(
        "nb06.bent_fit",
        "a bending fit chosen by validation in time predicts the final checkpoint better than RELEX's line from the "
        "same prefix (bent − linear)",
        paper.get("relex_bent_fit"),
        diff,
        interval,
        claims_mod.above(0, m.settings.accuracy_margin),
        f"{_paired_how(m, n)}; the bending kind is chosen in weight space (no held-out item), so all items report",
        detail,
    )


def _denoising(m: Measured) -> claims_mod.Claim:
    """RELEX − two-point from the same prefixes, each item's difference averaged over the (T_cut, target) pairs."""
    keys = ["t_cut", "target_step"]  # two prefix fractions that snap to the same T_cut count once
    pairs = m.grid.drop_duplicates(["method", *keys]).pivot(index=keys, columns="method", values="per_item")
    d = np.mean([PerItem.scores(r) - PerItem.scores(t) for r, t in zip(pairs.relex, pairs.two_point)], axis=0)
    s = m.settings
    return claims_mod.Claim(
        "nb06.denoising",
        "the rank-1 projection helps: RELEX beats two-point extrapolation from the same prefixes",
        paper.get("relex_denoising"),
        float(d.mean()),
        claims_mod.bootstrap_mean(d, s.level, s.bootstrap),
        claims_mod.above(0, s.accuracy_margin),
        f"{_paired_how(m, len(d))} of each item's mean difference over {len(pairs)} (T_cut, target) pairs",
        f"reconstruction − raw checkpoint (mean): {reconstruction_minus_raw(m):+.3f}",
    )


def reconstruction_minus_raw(m: Measured) -> float:
    """Mean over the denoising rows of the rank-r reconstruction's accuracy minus the raw checkpoint's."""
    return float((m.denoise.accuracy - m.denoise.raw_accuracy).mean())


def claims(m: Measured) -> list[claims_mod.Claim]:
    """Every RELEX claim of SPEC §6, ids `nb06.*`."""
    return [
        _rank1(m),
        _reconstruction(m),
        _prefix(m),
        _horizon(m),
        *(_ablation(m, n) for n in ABLATIONS),
        _denoising(m),
        _bent_fit(m),
    ]


def results(m: Measured) -> dict:
    """The notebook's results.json: the headline numbers (the claims' point estimates), the extrapolation grid per
    method, the ablations, the denoising table, the coefficient R²s, the weight-space alignment and the bending-fit
    sweep with the kind chosen per prefix — per-item scores left out."""

    def records(df, cols):
        return df[cols].to_dict("records")

    c = {x.id: x.measured for x in claims(m)}
    cols = ["t_cut", "target_step", "accuracy", "fraction", "horizon", "real_accuracy"]
    return {
        "base_accuracy": float(m.real.accuracy.iloc[0]),
        "full_rl_final_accuracy": float(m.real.accuracy.iloc[-1]),
        "rank1_explained_variance_median": c["nb06.rank1"],
        "reconstruction_gain_kept": c["nb06.reconstruction_keeps_gain"],
        "paper_prefix_fraction": paper_fraction(m.grid.fraction.unique()),
        "relex_paper_prefix_final_minus_full": c["nb06.prefix_matches_full"],
        "relex_far_minus_prefix": c["nb06.horizon_improves"],
        "ablation_rank_best_gain": c["nb06.rank_k_no_gain"],
        "ablation_non_linear_best_gain": c["nb06.nonlinear_fit_no_gain"],
        "relex_minus_two_point_mean": c["nb06.denoising"],
        "reconstruction_minus_raw_mean": reconstruction_minus_raw(m),
        "relex_bent_fit_minus_linear": c["nb06.bent_fit"],
        "relex_bent_chosen": bent_chosen(m.bent).to_dict("records"),
        "relex": records(m.grid[m.grid.method == "relex"], cols),
        "two_point": records(m.grid[m.grid.method == "two_point"], cols),
        "ablations": records(
            m.ablations, ["rank", "fit", "t_cut", "target_step", "accuracy", "window", "effective_rank", "note"]
        ),
        "denoising": records(m.denoise, ["step", "rank", "accuracy", "raw_accuracy"]),
        "coefficients": m.coefficients.to_dict("records"),
        "alignment": m.alignment.to_dict("records"),
        "bent_fits": m.bent.drop(columns=["per_item", "chosen", "reason"]).to_dict("records"),
    }
