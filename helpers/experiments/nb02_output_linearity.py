"""Output linearity (LIN §3.2, Fig. 1b/1d, Fig. 7, Fig. 9): R² against step of token log-probs, logits, activations.

Input: the teacher-forced outputs of every checkpoint on the base model's own responses (`helpers.lib.probes`). Per
response token: the change of its log-prob between the first and last checkpoint, and the R² of its log-prob (and of its
raw logit) against step (`helpers.lib.linearity.r2`). Tokens whose |change| ≤ `min_change` (0.2 in the reference) are
"stable" and left out of the headline R² distribution; the moved ones are "behaviour" tokens when their R² ≥
`r2_threshold` and "erratic" otherwise (`categorize`). Per layer, the R² of hidden states at a fixed sample of
positions × dimensions (Fig. 7). The magnitude-of-change vs R² relation is measured by Spearman's rank correlation over
the kept tokens (ranks, because neither quantity is near-normal).

Notebook 02's analysis (`analyse` -> `OutputLinearity`), its tables (`probe_table`, ...), figures, claims and results.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from scipy.stats import norm, spearmanr

from helpers.experiments import claims as claims_mod
from helpers.experiments import paper, seeds
from helpers.lib.linearity import distribution, fit_line, r2
from helpers.lib.probes import Probes, over_trajectory

MIN_CHANGE = 0.2  # LIN's |Δ log-prob| filter
CATEGORIES = ("behaviour", "erratic", "stable")


def categorize(change, r2_values, min_change: float = MIN_CHANGE, r2_threshold: float = paper.R2_BAR) -> np.ndarray:
    """Category of each token from its log-prob change and R² alone.

    |change| > min_change and R² ≥ r2_threshold -> "behaviour"; |change| > min_change otherwise (including an
    undefined R²) -> "erratic"; |change| ≤ min_change -> "stable".
    """
    change, r2_values = np.asarray(change, dtype=np.float64), np.asarray(r2_values, dtype=np.float64)
    if change.shape != r2_values.shape:
        raise ValueError(f"change {change.shape} and R² {r2_values.shape} must have the same shape")
    moved = np.abs(change) > min_change
    linear = np.nan_to_num(r2_values, nan=-1.0) >= r2_threshold
    return np.where(moved, np.where(linear, "behaviour", "erratic"), "stable").astype(object)


def probe_table(probes: Probes) -> pd.DataFrame:
    """One row per probe: prompt index, prompt, response text, response length in tokens."""
    return pd.DataFrame(
        {
            "prompt_index": probes.prompt_index,
            "prompt": probes.prompts,
            "response": probes.responses,
            "response_tokens": probes.response_lens,
        }
    )


def token_label(tokenizer, token_id: int) -> str:
    """A token as readable text: its decoded string, quoted, so whitespace and special tokens show."""
    if tokenizer is None:
        return f"#{token_id}"
    return repr(tokenizer.decode([int(token_id)], skip_special_tokens=False))


@dataclass
class OutputLinearity:
    """Token- and activation-level R² of one trajectory on one probe set.

    tokens: one row per response token (flat layout of `helpers.lib.probes`) — probe, position, token, label, lp_first,
            lp_last, change, abs_change, r2, logit_r2, kept, category.
    activation_r2: (L+1, P·D) R² of hidden states per layer (row 0 = embeddings, row i = output of block i).
    logprobs: (T, N) the teacher-forced log-probs (for example curves).
    """

    steps: np.ndarray
    tokens: pd.DataFrame
    activation_r2: np.ndarray | None
    logprobs: np.ndarray
    settings: dict = field(default_factory=dict)

    @property
    def kept(self) -> pd.DataFrame:
        return self.tokens[self.tokens["kept"]]

    def summary(self, level: float = 0.95) -> dict:
        """Distribution of token R² over the kept tokens: the share above the R² bar of `analyse` (`frac_above`) and
        above the papers' 0.7 (`frac_above_bar`), `level` intervals of the median and of `frac_above` (exact
        bootstraps over the kept tokens, `helpers.experiments.claims`); and of logit R²."""
        v = self.kept["r2"].to_numpy()
        lg = self.kept["logit_r2"].dropna().to_numpy()
        thr = self.settings["r2_threshold"]
        above = int((v > thr).sum())
        return {
            **distribution(v, thr),
            "level": level,
            "frac_above_bar": float((v > paper.R2_BAR).mean()) if v.size else np.nan,
            "median_ci": claims_mod.median_interval(v, level),
            "frac_above_ci": claims_mod.share_interval(above, v.size, level),
            "kept": int(v.size),
            "total": len(self.tokens),
            "logit_median": float(np.median(lg)) if lg.size else np.nan,
        }

    def correlation(self) -> dict:
        """Spearman rank correlation of |Δ log-prob| with R² over the kept tokens (and over all tokens with an R²)."""
        out = {"method": "spearman"}
        for key, df in (("kept", self.kept), ("all", self.tokens.dropna(subset=["r2"]))):
            rho, p = spearmanr(df["abs_change"], df["r2"]) if len(df) > 2 else (np.nan, np.nan)
            out[key], out[f"{key}_p"] = float(rho), float(p)
        return out

    def by_change(self, bins: int = 4) -> pd.DataFrame:
        """Kept tokens in `bins` quantile groups of |Δ log-prob|: size, |Δ| range, median R² (LIN's grouping)."""
        k = self.kept
        if len(k) < bins:
            return pd.DataFrame(columns=["tokens", "abs_change_from", "abs_change_to", "r2_median"])
        group = pd.qcut(k["abs_change"], bins, duplicates="drop")
        g = k.groupby(group, observed=True)
        return pd.DataFrame(
            {
                "tokens": g.size(),
                "abs_change_from": g["abs_change"].min(),
                "abs_change_to": g["abs_change"].max(),
                "r2_median": g["r2"].median(),
            }
        ).reset_index(drop=True)

    def categories(self, top: int = 8, min_count: int = 3) -> pd.DataFrame:
        """Per category: token count, share, median |Δ| and R², the `top` most frequent tokens (share of the category's
        occurrences) and the `top` most over-represented ones (share in the category ÷ share among all response
        tokens, among tokens seen ≥ `min_count` times in the category)."""
        overall = self.tokens["label"].value_counts(normalize=True)
        rows = []
        for cat in CATEGORIES:
            c = self.tokens[self.tokens["category"] == cat]
            counts = c["label"].value_counts()
            lift = (counts / max(len(c), 1) / overall[counts.index])[counts >= min_count]
            lift = lift.sort_values(ascending=False, kind="stable").head(top)
            rows.append(
                {
                    "category": cat,
                    "tokens": len(c),
                    "share": len(c) / max(len(self.tokens), 1),
                    "abs_change_median": c["abs_change"].median(),
                    "r2_median": c["r2"].median(),
                    "most frequent": ", ".join(f"{lab} {n / len(c):.0%}" for lab, n in counts.head(top).items()),
                    "over-represented": ", ".join(f"{lab} ×{x:.1f} (n={counts[lab]})" for lab, x in lift.items()),
                }
            )
        return pd.DataFrame(rows).set_index("category")

    def layers(self) -> pd.DataFrame:
        """Per layer (embeddings, block 1 … L): median, IQR, share above the threshold of activation R²."""
        a = self.activation_r2
        if a is None:
            return pd.DataFrame(columns=["layer", "median", "q1", "q3", "frac_above"])
        names = ["embeddings"] + [f"block {i}" for i in range(1, len(a))]
        with warnings.catch_warnings():  # a layer whose sampled states never moved has only NaN R²
            warnings.simplefilter("ignore", RuntimeWarning)
            q = np.nanquantile(a, [0.25, 0.5, 0.75], axis=1)
            frac = np.nanmean(np.where(np.isnan(a), np.nan, a > self.settings["r2_threshold"]), axis=1)
        return pd.DataFrame({"layer": names, "median": q[1], "q1": q[0], "q3": q[2], "frac_above": frac})

    def movers(self, n: int = 6) -> pd.DataFrame:
        """The `n` kept tokens with the largest |Δ log-prob|, one per distinct (sequence, position)."""
        return self.kept.drop_duplicates(["sequence", "position"]).nlargest(n, "abs_change")

    def examples(self, n: int = 6) -> list[dict[str, Any]]:
        """The `n` biggest movers as dicts for `helpers.experiments.plots.series_fits`: label, steps, values, slope,
        intercept, r2."""
        out = []
        for i, row in self.movers(n).iterrows():
            y = self.logprobs[:, i].astype(np.float64)
            slope, intercept = fit_line(y, self.steps)
            out.append(
                {
                    "label": f"{row['label']} (probe {row['probe']}, position {row['position']})",
                    "steps": self.steps,
                    "values": y,
                    "slope": float(slope),
                    "intercept": float(intercept),
                    "r2": float(row["r2"]),
                }
            )
        return out

    def results(self, level: float = 0.95) -> dict:
        """The numbers notebook 02 saves, measured: `token_r2_frac_above_0_7` is the share of kept tokens above the
        papers' 0.7, `token_r2_frac_above_threshold` the share above the R² bar of `analyse` (stored as
        `r2_threshold`), `token_r2_median_ci` the `level` interval of the median."""
        s, c, lay = self.summary(level), self.correlation(), self.layers()
        cats = self.categories(top=5)
        return {
            "token_r2_median": s["median"],
            "token_r2_q1": s["q1"],
            "token_r2_q3": s["q3"],
            "token_r2_median_ci": list(s["median_ci"]),
            "token_r2_frac_above_0_7": s["frac_above_bar"],
            "token_r2_frac_above_threshold": s["frac_above"],
            "r2_threshold": s["threshold"],
            "token_r2_mean": s["mean"],
            "tokens_kept": s["kept"],
            "tokens_total": s["total"],
            "logit_r2_median": s["logit_median"],
            "change_r2_correlation": c["kept"],
            "change_r2_correlation_method": c["method"],
            "change_r2_correlation_p": c["kept_p"],
            "change_r2_correlation_all_tokens": c["all"],
            "r2_median_by_change_quartile": self.by_change()["r2_median"].tolist(),
            "category_counts": cats["tokens"].to_dict(),
            "category_frequent_tokens": cats["most frequent"].to_dict(),
            "category_over_represented_tokens": cats["over-represented"].to_dict(),
            "activation_r2_median_by_layer": lay["median"].tolist(),
            "activation_layers": lay["layer"].tolist(),
            "n_checkpoints": len(self.steps),
            "steps": [int(x) for x in self.steps],
            "settings": self.settings,
        }


def analyse(
    forced, probes: Probes, tokenizer=None, min_change: float = MIN_CHANGE, r2_threshold: float = paper.R2_BAR
) -> OutputLinearity:
    """Token and activation R² against step from `helpers.lib.probes.over_trajectory` outputs on `probes`."""
    steps = np.asarray(forced.steps, dtype=np.float64)
    if len(steps) < 3:
        raise ValueError(f"need at least 3 checkpoints for an R², got steps {steps.astype(int).tolist()}")
    lp = forced.logprobs.astype(np.float64)
    tok = pd.DataFrame(probes.tokens())
    labels = {t: token_label(tokenizer, t) for t in np.unique(tok["token"])}
    change = lp[-1] - lp[0]
    token_r2 = r2(lp, steps)
    tok = tok.assign(
        label=tok["token"].map(labels),
        lp_first=lp[0],
        lp_last=lp[-1],
        change=change,
        abs_change=np.abs(change),
        r2=token_r2,
        logit_r2=r2(forced.logits, steps),
        kept=np.abs(change) > min_change,
        category=categorize(change, token_r2, min_change, r2_threshold),
    )
    act = None
    if forced.hidden is not None:
        h = forced.hidden
        act = r2(h.reshape(h.shape[0], h.shape[1], -1), steps)
    index = forced.hidden_index
    settings = {
        "min_change": min_change,
        "r2_threshold": r2_threshold,
        "probes": len(probes),
        "probes_distinct": probes.n_distinct,
        "activation_positions": 0 if index is None else len(index[0]),
        "activation_dims": 0 if index is None else len(index[1]),
    }
    return OutputLinearity(steps, tok, act, forced.logprobs, settings)


# ----------------------------------------------------------------------------------------------------------- figures


def plot_change_vs_r2(result: OutputLinearity):
    t = result.tokens.dropna(subset=["r2"])
    c = result.correlation()
    fig, ax = plt.subplots()
    sns.scatterplot(
        data=t, x="abs_change", y="r2", hue="category", hue_order=list(CATEGORIES), s=10, alpha=0.5, linewidth=0, ax=ax
    )
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlim(0, float(np.max(np.append(t["abs_change"].to_numpy(), result.settings["min_change"]))) * 1.2)
    ax.axvline(result.settings["min_change"], color="0.3", ls="--")
    ax.axhline(result.settings["r2_threshold"], color="0.3", ls=":")
    ax.set(
        xlabel="|Δ log-prob| (first → last checkpoint)",
        ylabel="R² vs step",
        title=f"Change vs linearity: Spearman ρ = {c['kept']:+.2f} (kept tokens)",
    )
    return fig


def plot_activation_r2(result: OutputLinearity):
    """Distribution of hidden-state R² per layer (LIN Fig. 7)."""
    a = result.activation_r2 if result.activation_r2 is not None else np.empty((0, 0))
    short = ["emb"] + [str(i) for i in range(1, len(a))] if len(a) else []
    df = pd.DataFrame({"layer": np.repeat(short, a.shape[1]), "R²": a.reshape(-1)}).dropna()
    fig, ax = plt.subplots(figsize=(max(6.4, 0.35 * len(a)), 4.0))
    if len(df):
        sns.boxplot(data=df, x="layer", y="R²", order=short, color="C0", fliersize=1, ax=ax)
    else:
        ax.text(0.5, 0.5, "no hidden state moved", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(result.settings["r2_threshold"], color="0.3", ls="--")
    ax.set(ylim=(0, 1.02), xlabel="embeddings, then output of block i", title="Hidden-state R² vs step per layer")
    return fig


def token_r2(traj, probes, cfg, device="cpu") -> dict:
    """`OutputLinearity.summary()` of token log-prob R² on `traj` with the config's `output_linearity` knobs and
    `claims` R² bar and level (no activations): the per-seed headline of notebook 02."""
    o, st = cfg.output_linearity, claims_mod.Settings.of(cfg)
    forced = over_trajectory(traj, probes, batch_size=int(o["batch_size"]), device=device)
    return analyse(forced, probes, min_change=float(o["min_change"]), r2_threshold=st.r2_threshold).summary(st.level)


# ------------------------------------------------------------------------------------------------------------ claims


def claims(result: OutputLinearity, by_seed: Mapping[int, dict], cfg) -> list[claims_mod.Claim]:
    """Notebook 02's claims: the median token R² on every seed (`by_seed` = {seed: `token_r2(...)`}, made at the
    config's `claims` bar and level), and on `result` (the run of rl.seed) the change-vs-R² correlation and the
    linearity of the hidden states after the first block."""
    st = claims_mod.Settings.of(cfg)
    seeds.check_made_at(by_seed, threshold=st.r2_threshold, level=st.level)
    med, med_iv, detail = seeds.across(by_seed, "median", "median_ci")
    how = f"{st.level * 100:g} % exact bootstrap interval of the median over kept tokens"
    return [
        claims_mod.Claim(
            "nb02.token_r2_median",
            f"median token log-prob R² is above {st.r2_threshold:g}",
            paper.get("token_r2_median"),
            med,
            med_iv,
            claims_mod.above(st.r2_threshold),
            seeds.hull_how(how, len(by_seed)),
            detail,
        ),
        _change_claim(result, st.level, cfg.rl.seed),
        _activations_claim(result, st.r2_threshold, st.level, cfg.rl.seed),
    ]


def spearman_interval(rho: float, n: int, level: float = 0.95) -> tuple[float, float]:
    """Interval of a Spearman ρ over n pairs: Fisher z transform with SE 1.03 / √(n − 3) (Fieller et al. 1957)."""
    if n <= 3 or not math.isfinite(rho):
        return math.nan, math.nan
    z, half = math.atanh(min(max(rho, -1 + 1e-12), 1 - 1e-12)), norm.ppf(1 - (1 - level) / 2) * 1.03 / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def _change_claim(result: OutputLinearity, level: float, rl_seed: int) -> claims_mod.Claim:
    rho, n = result.correlation()["kept"], len(result.kept)
    return claims_mod.Claim(
        "nb02.change_vs_r2",
        "Spearman ρ between |Δ log-prob| and R² over kept tokens",
        paper.get("change_vs_r2"),
        rho,
        spearman_interval(rho, n, level),
        claims_mod.above(0),
        f"{level * 100:g} % Fisher z interval (SE 1.03/√(n−3)) over {n:,} kept tokens",
        f"RL seed {rl_seed}",
    )


def _activations_claim(result: OutputLinearity, threshold: float, level: float, rl_seed: int) -> claims_mod.Claim:
    """The least linear layer after the first block: the minimum of the per-layer median hidden-state R² (NaN when
    the model has fewer than 2 blocks or a layer has no R²)."""
    a = result.activation_r2
    later = [] if a is None else [row[np.isfinite(row)] for row in a[2:]]
    meds = [float(np.median(v)) if v.size else math.nan for v in later]
    ivs = [claims_mod.median_interval(v, level) for v in later]
    if later:
        measured = float(np.min(meds))
        iv = (float(np.min([lo for lo, _ in ivs])), float(np.min([hi for _, hi in ivs])))
        undefined = [f"block {i}" for i, m in enumerate(meds, start=2) if not math.isfinite(m)]
        i = int(np.argmin(meds))
        detail = f"RL seed {rl_seed}, blocks 2–{len(a) - 1}: " + (
            f"no R² in {', '.join(undefined)}"
            if undefined
            else f"least linear block {i + 2}: {meds[i]:.3f} [{ivs[i][0]:.3f}, {ivs[i][1]:.3f}]"
        )
    else:
        measured, iv = math.nan, (math.nan, math.nan)
        detail = (
            "no hidden states recorded"
            if a is None
            else f"the model has {len(a) - 1} block(s): no layer after the first"
        )
    return claims_mod.Claim(
        "nb02.activations_linear",
        f"lowest per-layer median hidden-state R² after block 1 is above {threshold:g}",
        paper.get("activations_linear"),
        measured,
        iv,
        claims_mod.above(threshold),
        f"minimum over layers of {level * 100:g} % exact bootstrap intervals of each layer's "
        f"median (over sampled positions × dimensions)",
        detail,
    )
