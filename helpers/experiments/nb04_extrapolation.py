"""Notebook 04 (LIN §4.2): held-out scores of real, weight-extrapolated and logit-extrapolated models.

Snapping of fractions of the run to saved steps (`snap`, `snap_pair`, `target_steps`), the cached `Scorer`, the score
tables (`real_curve`, `weight_curve`, `logit_table`, `table1`), the α = 1 check, the figures, and the notebook's
claims and results (`Measured`, `claims`, `results`).
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from helpers.experiments import claims as claims_mod
from helpers.experiments import paper
from helpers.lib import runs
from helpers.lib.backends import make_sampler
from helpers.lib.cache import dir_fingerprint
from helpers.lib.extrapolation import coefficient, extrapolate
from helpers.lib.paths import outputs_root
from helpers.lib.scoring import CachedScorer, PerItem
from helpers.lib.trajectory import nearest_step

METRICS = ("avg_at_k", "pass_at_k", "entropy", "greedy_accuracy", "completion_length")


def snap(traj, fraction: float) -> int:
    """The saved step nearest to `fraction` × the last step (the earlier one on a tie)."""
    return nearest_step(traj.steps, float(fraction) * traj.steps[-1])


def snap_pair(traj, pair) -> tuple[int, int]:
    """(t0, t1) of a pair of fractions, snapped to saved steps; t1 > t0 even when both snap to the same step."""
    if len(traj.steps) < 2:
        raise ValueError(f"{traj.path(traj.steps[0])}: extrapolation needs at least two checkpoints")
    t0, t1 = snap(traj, pair[0]), snap(traj, pair[1])
    if t1 <= t0:
        i = traj.steps.index(t0)
        t0, t1 = (traj.steps[i - 1], t0) if i == len(traj.steps) - 1 else (t0, traj.steps[i + 1])
    return t0, t1


def target_steps(traj, fractions, after: int) -> list[int]:
    """Target steps t' > `after` of fractions of the last step; those within the run are snapped to saved steps."""
    last = traj.steps[-1]
    steps = {snap(traj, f) if f <= 1 else int(round(f * last)) for f in fractions}
    return sorted(s for s in steps if s > after)


class Scorer(CachedScorer):
    """`scoring.CachedScorer` on the first `extrapolation.eval_items` held-out problems, reporting the notebook's
    metric columns (`METRICS`), plus weight- and logit-extrapolated models."""

    def __init__(self, cfg):
        CachedScorer.__init__(self, cfg, runs.heldout_items(cfg), cfg.extrapolation.eval_items)

    def metrics(self, res: dict) -> dict:
        """The notebook's columns of an `evaluate` dict, plus `per_item` (each item's share of its k samples correct,
        an `scoring.PerItem`) for the claims' intervals."""
        return {
            "avg_at_k": res[f"avg@{self.k}"],
            "pass_at_k": res[f"pass@{self.k}"],
            "entropy": res["entropy"],
            "greedy_accuracy": res["greedy_accuracy"],
            "completion_length": res["completion_length"],
            "per_item": PerItem.of(res),
        }

    def checkpoint(self, path) -> dict:
        """Scores of one model directory (`eval.backend` sampler)."""
        return self.metrics(super().checkpoint(path))

    def extrapolated(self, traj, t0: int, t1: int, target_step: int, norms: str) -> dict:
        """Scores of the weight-extrapolated checkpoint (written to a temporary directory, deleted once the
        `eval.backend` sampler has loaded it)."""

        def sampler():
            outputs_root().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=outputs_root(), prefix=".extrapolated-") as tmp:
                out = extrapolate(traj, t0, t1, target_step, Path(tmp) / "model", norms)
                return make_sampler(self.cfg.eval.backend, out, **self.sampler_kwargs())  # weights now in memory

        identity = {
            "weight_extrapolation": [dir_fingerprint(traj.path(t0)), dir_fingerprint(traj.path(t1))],
            "t0": t0,
            "t1": t1,
            "target_step": target_step,
            "norms": norms,
        }
        return self.metrics(self.score(identity, sampler))

    def logit_extrapolated(self, path_t0, path_t1, alpha: float) -> dict:
        """Scores of the logit-extrapolated sampler of two model directories (hf decoding loop)."""
        identity = {"logit_extrapolation": [dir_fingerprint(path_t0), dir_fingerprint(path_t1)], "alpha": float(alpha)}
        return self.metrics(
            self.score(
                identity,
                lambda: make_sampler("logit-extrapolation", (path_t0, path_t1), alpha=alpha, **self.sampler_kwargs()),
            )
        )


# ---------------------------------------------------------------------------------------------------------------------
# Score tables


def real_curve(traj, scorer: Scorer) -> pd.DataFrame:
    """Scores of every saved checkpoint (step 0 = base)."""
    return pd.DataFrame([{"step": s, **scorer.checkpoint(traj.path(s))} for s in traj.steps])


def weight_curve(traj, cfg, scorer: Scorer, real) -> pd.DataFrame:
    """Scores of W_{t0} + β (W_{t1} − W_{t0}) for every (t0, t1) of `extrapolation.weight_pairs` and every target step
    beyond t1; `real_avg_at_k` is the real checkpoint's at that step when the run has one."""
    xc = cfg.extrapolation
    real_at = dict(zip(real.step, real.avg_at_k))
    rows = []
    for pair in xc.weight_pairs:
        t0, t1 = snap_pair(traj, pair)
        for target in target_steps(traj, xc.weight_targets, after=t1):
            rows.append(
                {
                    "t0": t0,
                    "t1": t1,
                    "target_step": target,
                    "beta": coefficient(t0, t1, target),
                    **scorer.extrapolated(traj, t0, t1, target, xc.norms),
                    "real_avg_at_k": real_at.get(target, float("nan")),
                }
            )
    return pd.DataFrame(rows)


def logit_table(traj, cfg, scorer: Scorer, real) -> pd.DataFrame:
    """Scores of the logit-extrapolated sampler for each α of `extrapolation.logit_alphas` (t0, t1 from
    `extrapolation.logit_pair`); t' = t0 + α (t1 − t0), and `real_*` = the real checkpoint at t' when the run has
    one."""
    xc = cfg.extrapolation
    t0, t1 = snap_pair(traj, xc.logit_pair)
    real_at = real.set_index("step")
    rows = []
    for alpha in xc.logit_alphas:
        target = t0 + float(alpha) * (t1 - t0)
        target = int(target) if float(target).is_integer() else target
        have = target in real_at.index
        rows.append(
            {
                "alpha": float(alpha),
                "t0": t0,
                "t1": t1,
                "target_step": target,
                **scorer.logit_extrapolated(traj.path(t0), traj.path(t1), alpha),
                "real_avg_at_k": real_at.avg_at_k.get(target, float("nan")) if have else float("nan"),
                "real_entropy": real_at.entropy.get(target, float("nan")) if have else float("nan"),
            }
        )
    return pd.DataFrame(rows)


def table1(real, logit) -> pd.DataFrame:
    """The paper's Table 1 analogue: standard RL (last checkpoint), each logit-extrapolated sampler, and under it the
    real checkpoint at its t' when the run has one (for α = 1: θ_t1, which the α = 1 row must equal —
    `check_alpha_one`)."""
    cols = ["avg_at_k", "pass_at_k", "entropy", "greedy_accuracy"]
    last = real.iloc[-1]
    rows = [
        {
            "model": f"standard RL (last checkpoint, step {int(last.step)})",
            "step": int(last.step),
            **last[cols].to_dict(),
        }
    ]
    for _, r in logit.iterrows():
        rows.append({"model": _row_name(r), "step": r.target_step, **r[cols].to_dict()})
        if r.real_avg_at_k == r.real_avg_at_k:
            rows.append(
                {
                    "model": f"  real checkpoint at t' = {r.target_step:g}",
                    "step": r.target_step,
                    **real[real.step == r.target_step].iloc[0][cols].to_dict(),
                }
            )
    return pd.DataFrame(rows).set_index("model").astype({"step": "float"})


CHECKED = ("avg_at_k", "pass_at_k", "greedy_accuracy")


def check_alpha_one(real, logit, backend: str) -> dict:
    """The α = 1 row against the real θ_t1 checkpoint: α = 1 mixes to the t1 logits bit for bit and decodes through
    the hf loop, so with `eval.backend` "hf" (same loop, same seed) avg@k, pass@k, greedy accuracy and every item's
    score must be equal — a ValueError naming both rows otherwise. With another backend the real checkpoint was
    sampled differently: the differences (α = 1 − real) are printed and returned instead. Returns {} when
    `extrapolation.logit_alphas` has no α = 1."""
    one = logit[logit.alpha == 1]
    if one.empty:
        print("no α = 1 row (extrapolation.logit_alphas): the check against the real θ_t1 is not made")
        return {}
    row = one.iloc[0]
    t1 = real[real.step == row.t1]
    if t1.empty:
        raise ValueError(f"{_row_name(row)}: the real curve has no checkpoint at t1 = {row.t1:g}")
    t1 = t1.iloc[0]
    a, b = np.asarray(row.per_item.values), np.asarray(t1.per_item.values)
    diff = {c: float(row[c]) - float(t1[c]) for c in CHECKED}
    diff["per_item_mean_abs"] = float(np.abs(a - b).mean()) if a.shape == b.shape else float("nan")
    names = f"'{_row_name(row)}' vs 'real checkpoint θ_t1 (step {int(t1.step)})'"
    if backend != "hf":
        print(
            f"α = 1 check ({backend} backend, not the hf loop of the logit sampler, so not asserted): {names}: "
            + ", ".join(f"{k} {v:+.4f}" for k, v in diff.items())
        )
        return diff
    unequal = [c for c in CHECKED if row[c] != t1[c]] + ([] if np.array_equal(a, b) else ["per-item scores"])
    if unequal:
        raise ValueError(
            f"α = 1 check failed: {names} differ in {', '.join(unequal)} (α = 1 − real: "
            + ", ".join(f"{k} {v:+.4f}" for k, v in diff.items())
            + "); the same hf decode loop and "
            "seed should give identical samples"
        )
    print(f"α = 1 check passed: {names} are equal ({', '.join(CHECKED)} and every item's score)")
    return diff


def _row_name(r) -> str:
    return f"logit extrapolation α = {r.alpha:g} (t0 = {r.t0:g}, t1 = {r.t1:g})"


# ---------------------------------------------------------------------------------------------------------------------
# Figures


def plot_weight_curve(curve, real):
    """Accuracy vs target step, one line per (t0, t1) (starting at θ_t1 itself), real checkpoints for comparison."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(real.step, real.avg_at_k, "o-", color="gray", ms=3, label="real RL checkpoints")
    real_at = dict(zip(real.step, real.avg_at_k))
    for i, ((t0, t1), g) in enumerate(curve.groupby(["t0", "t1"])):
        ax.plot([t1, *g.target_step], [real_at[t1], *g.avg_at_k], "s--", color=f"C{i}", label=f"t0={t0}, t1={t1}")
        peak = g.loc[g.avg_at_k.idxmax()]
        ax.plot(peak.target_step, peak.avg_at_k, "*", color=f"C{i}", ms=14)
    ax.axvline(real.step.iloc[-1], color="k", ls=":", lw=1, label="end of the run")
    ax.set(
        xlabel="target step t'",
        ylabel="held-out avg@k",
        title="Weight extrapolation W_t0 + β (W_t1 − W_t0) vs target step",
    )
    ax.legend(fontsize=8)
    return fig


def plot_logit(real, logit, curve):
    """Two panels against the step: held-out avg@k and the mean token entropy of the sampled distributions, for the
    real checkpoints, the logit-extrapolated samplers (at t') and the weight-extrapolated checkpoints."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, label in ((axes[0], "avg_at_k", "held-out avg@k"), (axes[1], "entropy", "mean token entropy (nats)")):
        ax.plot(real.step, real[col], "o-", color="gray", ms=3, label="real RL checkpoints")
        ax.plot(logit.target_step, logit[col], "D", color="C3", ms=7, label="logit extrapolation (at t')")
        for _, r in logit.iterrows():
            ax.annotate(
                f"α={r.alpha:g}", (r.target_step, r[col]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.plot(curve.target_step, curve[col], "s", color="C0", mfc="none", label="weight extrapolation (at t')")
        ax.axvline(real.step.iloc[-1], color="k", ls=":", lw=1)
        ax.set(xlabel="step (t' for extrapolations)", ylabel=label)
    axes[0].set_title("Accuracy")
    axes[1].set_title("Entropy of the sampled distributions")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------------
# Claims and results


@dataclass(frozen=True, eq=False)
class Measured:
    """Notebook 04's measurements: the scorer and the real, weight-extrapolated (`weight_curve`) and logit-extrapolated
    (`logit_table`) score tables, each row with its `per_item` scores on `scorer.items`."""

    scorer: Scorer
    real: pd.DataFrame
    curve: pd.DataFrame
    logit: pd.DataFrame

    @property
    def settings(self) -> claims_mod.Settings:
        return claims_mod.Settings.of(self.scorer.cfg)

    @property
    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """(select, report) item indices: a best α / target is chosen on `select`, its score reported on `report`."""
        return claims_mod.split(len(self.scorer.items), self.settings.split_seed)

    def selected(self, rows) -> int:
        """Position in `rows` (a table's rows) of the best mean per-item score on the select half (earliest on a
        tie)."""
        sel = self.halves[0]
        return int(np.argmax([PerItem.scores(r)[sel].mean() for r in rows.per_item]))

    def paired(self, a, b) -> tuple[float, tuple[float, float]]:
        """mean(a − b) of two rows' per-item scores on the report half, with its paired bootstrap interval."""
        rep, st = self.halves[1], self.settings
        a, b = (PerItem.scores(r.per_item)[rep] for r in (a, b))
        return claims_mod.paired_difference(a, b, st.level, st.bootstrap)

    def split_text(self, chosen: str) -> str:
        """`how` of a difference whose `chosen` setting was picked on the select half."""
        (sel, rep), st = self.halves, self.settings
        return (
            f"{chosen} chosen on {len(sel)} selection items, split seed {st.split_seed}; scored on the other "
            f"{len(rep)} items with a {st.level:.0%} paired bootstrap"
        )


def _logit_best(m: Measured):
    """The α > 1 row chosen on the select half (None when `logit_alphas` has no α > 1)."""
    extra = m.logit[m.logit.alpha > 1]
    return None if extra.empty else extra.iloc[m.selected(extra)]


def _weight_peaks(m: Measured) -> list[dict]:
    """Per (t0, t1): the peak target chosen on the select half; peak − θ_t1 and peak − farthest target on the report
    half (the latter only when the peak is not the farthest target)."""
    rule = claims_mod.above(0)
    real_at = m.real.set_index("step")
    peaks = []
    for (t0, t1), g in m.curve.groupby(["t0", "t1"]):
        g = g.sort_values("target_step")
        peak, far, at_t1 = g.iloc[m.selected(g)], g.iloc[-1], real_at.loc[t1]
        rise, rise_iv = m.paired(peak, at_t1)
        interior = peak.target_step < far.target_step
        fall, fall_iv = m.paired(peak, far) if interior else (math.nan, (math.nan, math.nan))
        peaks.append(
            {
                "t0": int(t0),
                "t1": int(t1),
                "peak_step": int(peak.target_step),
                "peak_beta": float(peak.beta),
                "peak_avg_at_k": float(peak.avg_at_k),
                "t1_avg_at_k": float(at_t1.avg_at_k),
                "farthest_step": int(far.target_step),
                "farthest_avg_at_k": float(far.avg_at_k),
                "peak_minus_t1": rise,
                "peak_minus_t1_interval": list(rise_iv),
                "peak_minus_farthest": fall,
                "peak_minus_farthest_interval": list(fall_iv),
                "inverted_u": rule.decide(*rise_iv) == "holds" and rule.decide(*fall_iv) == "holds",
            }
        )
    return peaks


def _diff_text(d: float, iv) -> str:
    return f"{d:+.3f} [{iv[0]:+.3f}, {iv[1]:+.3f}]"


def claims(m: Measured) -> list[claims_mod.Claim]:
    """Notebook 04's claims (LIN §4.2): logit extrapolation beats standard RL; the weight-extrapolation curve rises
    above θ_t1 and then declines. Every best α / peak target is chosen on one half of the held-out items and scored
    on the other. (The entropy explanation is no claim: entropy is one number per model, with no interval; its
    numbers are in `results`.)"""
    st, last = m.settings, m.real.iloc[-1]
    margin = claims_mod.above(0, tolerance=st.accuracy_margin)
    best = _logit_best(m)
    if best is None:
        gain, gain_iv, how = math.nan, (math.nan, math.nan), "no α > 1 in extrapolation.logit_alphas"
    else:
        gain, gain_iv = m.paired(best, last)
        n_alpha = int((m.logit.alpha > 1).sum())
        how = m.split_text(f"best of {n_alpha} α > 1, α = {best.alpha:g},")
    peaks = _weight_peaks(m)
    rise, rise_iv = claims_mod.across_seeds(
        [p["peak_minus_t1"] for p in peaks], [p["peak_minus_t1_interval"] for p in peaks]
    )
    fall, fall_iv = claims_mod.across_seeds(
        [p["peak_minus_farthest"] for p in peaks], [p["peak_minus_farthest_interval"] for p in peaks]
    )
    if any(p["peak_step"] == p["farthest_step"] for p in peaks):  # a pair with no decline to measure decides nothing
        fall, fall_iv = math.nan, (math.nan, math.nan)
    per_pair = m.split_text("per (t0, t1) pair the peak target t'") + "; mean over pairs, hull of their intervals"
    return [
        claims_mod.Claim(
            "nb04.logit_gain",
            f"logit extrapolation beats the last RL checkpoint (step {int(last.step)}) in avg@k (difference)",
            paper.get("logit_gain"),
            gain,
            gain_iv,
            margin,
            how,
        ),
        claims_mod.Claim(
            "nb04.weight_peak",
            "the weight-extrapolation peak rises above θ_t1 in avg@k (difference)",
            paper.get("weight_peak"),
            rise,
            rise_iv,
            margin,
            per_pair,
            "; ".join(
                f"t1 = {p['t1']}: peak t' = {p['peak_step']} "
                f"{_diff_text(p['peak_minus_t1'], p['peak_minus_t1_interval'])}"
                for p in peaks
            ),
        ),
        claims_mod.Claim(
            "nb04.weight_declines",
            "beyond its peak, weight extrapolation declines (peak − farthest target t', avg@k)",
            paper.get("weight_peak"),
            fall,
            fall_iv,
            margin,
            per_pair + "; not measured when a pair peaks at its farthest target (no decline to see)",
            "; ".join(
                f"t1 = {p['t1']}: "
                + (
                    f"peak t' = {p['peak_step']} vs t' = {p['farthest_step']} "
                    f"{_diff_text(p['peak_minus_farthest'], p['peak_minus_farthest_interval'])}"
                    if p["peak_step"] < p["farthest_step"]
                    else f"peak at the farthest target t' = {p['farthest_step']}"
                )
                for p in peaks
            ),
        ),
    ]


def results(m: Measured) -> dict:
    """The notebook's results.json: headline numbers (the best α and the peaks as chosen on the select half), the
    split, and every measured table without its per-item scores."""
    real, last = m.real, m.real.iloc[-1]
    sel, rep = m.halves
    peaks = _weight_peaks(m)
    top = max(peaks, key=lambda p: p["peak_avg_at_k"]) if peaks else {}
    best = _logit_best(m)
    real_entropy = dict(zip(real.step, real.entropy))
    out = {
        "rl_final_step": int(last.step),
        "rl_final_avg_at_k": float(last.avg_at_k),
        "rl_final_entropy": float(last.entropy),
        "eval_items": len(m.scorer.items),
        "k": m.scorer.k,
        "split_seed": m.settings.split_seed,
        "select_items": len(sel),
        "report_items": len(rep),
        "weight_extrapolation_peaks": peaks,
        "weight_extrapolation_peak_step": top.get("peak_step"),
        "weight_extrapolation_peak_avg_at_k": top.get("peak_avg_at_k"),
        "logit_extrapolation_best_alpha": None,
        "logit_extrapolation_best_avg_at_k": None,
        "logit_extrapolation_best_target_step": None,
        "logit_extrapolation_best_entropy": None,
        "logit_extrapolation_best_real_entropy": None,
    }
    if best is not None:
        out.update(
            logit_extrapolation_best_alpha=float(best.alpha),
            logit_extrapolation_best_avg_at_k=float(best.avg_at_k),
            logit_extrapolation_best_target_step=float(best.target_step),
            logit_extrapolation_best_entropy=float(best.entropy),
            logit_extrapolation_best_real_entropy=real_entropy.get(best.target_step),
        )
    return {
        **out,
        "weight_extrapolation_curve": m.curve[["t0", "t1", "target_step", "beta", *METRICS, "real_avg_at_k"]].to_dict(
            "records"
        ),
        "logit_extrapolation": _records(m.logit),
        "real_curve": _records(real),
    }


def _records(table) -> list[dict]:
    return table.drop(columns=["per_item"], errors="ignore").to_dict("records")
