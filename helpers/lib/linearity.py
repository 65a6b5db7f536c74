"""Linearity of a training trajectory: the one R² implementation, and weight-space statistics (LIN §3.1).

`r2(y, t)` is the R² of every column of `y` against steps `t` (squared Pearson correlation = OLS R² with an intercept,
in float64). Every notebook that reports an R² calls it.

`weight_r2(traj, ...)` samples entries of every `.weight` tensor of a `helpers.lib.trajectory.Trajectory`, keeps the ones
that really moved, and returns their R² against the training step as a `WeightLinearity` (global distribution, per
layer × module type, what was dropped and why). It streams one tensor at a time, so memory is bounded by one tensor
read plus its samples × checkpoints, whatever the model size.

Which entries count as "moved" (LIN samples 0.1 % per tensor, then drops entries with range ≤ 1e-4 or < 4 distinct
values — 1e-4 is tuned to bf16). Here the range threshold is a parameter; `min_range="auto"` means the entry must move
by at least `AUTO_RANGE_ULPS` = 2 representable steps of its storage dtype at its own magnitude (the largest |value|
it takes), i.e. 2 × eps(dtype) × 2^⌊log2|θ|⌋. For bf16 weights of magnitude 0.01–0.03 that is 1.2e-4–2.4e-4, the
scale of the reference's 1e-4; for fp32 it only rejects movement at the rounding level. A number is an absolute
threshold (keep range > it, the reference's rule). Entries are dropped by the first filter they fail, range then
distinct values, and both counts are reported.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from helpers.experiments import claims as claims_mod
from helpers.experiments import paper
from helpers.experiments import seeds
from helpers.lib.cache import stable_hash

AUTO_RANGE_ULPS = 2     # min_range="auto": an entry must move by at least this many steps of its dtype's resolution

# Module types in display order; `parse_name` maps tensor names onto them.
MODULES = ("embed", "q", "k", "v", "o", "q_norm", "k_norm", "input_norm", "gate", "up", "down", "post_attn_norm",
           "final_norm", "head")
_LEAF = {"embed_tokens": "embed", "wte": "embed", "q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o",
         "q_norm": "q_norm", "k_norm": "k_norm", "input_layernorm": "input_norm", "gate_proj": "gate",
         "up_proj": "up", "down_proj": "down", "post_attention_layernorm": "post_attn_norm", "norm": "final_norm",
         "lm_head": "head"}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


# ---------------------------------------------------------------------------------------------------------- R² core
def _as_f64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _steps(t, n: int) -> np.ndarray:
    t = _as_f64(t)
    if t.shape != (n,):
        raise ValueError(f"steps must have shape ({n},) to match y, got {t.shape}")
    if not np.all(np.isfinite(t)) or np.ptp(t) == 0:
        raise ValueError(f"steps must be finite and not all equal, got {t.tolist()}")
    return t


def r2(y, t) -> np.ndarray:
    """R² of each column of `y` (shape (T, ...)) against steps `t` (shape (T,)), float64, shape y.shape[1:].

    Squared Pearson correlation = R² of an OLS line with intercept. A column whose values are all equal has no
    defined R² and gives NaN: filter such columns first (`weight_r2` does).
    """
    y = _as_f64(y)
    t = _steps(t, y.shape[0])
    tc = t - t.mean()
    yc = y - y.mean(axis=0)
    sxy = np.tensordot(tc, yc, axes=1)
    syy = np.einsum("i...,i...->...", yc, yc)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.clip(sxy * sxy / ((tc @ tc) * syy), 0.0, 1.0)
    return np.where(np.ptp(y, axis=0) == 0, np.nan, out)


def fit_line(y, t) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares line y ≈ slope·t + intercept for each column of `y` (T, ...), float64: (slope, intercept)."""
    y = _as_f64(y)
    t = _steps(t, y.shape[0])
    tc = t - t.mean()
    slope = np.tensordot(tc, y - y.mean(axis=0), axes=1) / (tc @ tc)
    return slope, y.mean(axis=0) - slope * t.mean()


# --------------------------------------------------------------------------------------------- per-entry statistics
def parse_name(name: str) -> tuple[int | None, str]:
    """(layer index or None, module type) of a Qwen2/Llama-style tensor name.

    `model.layers.3.self_attn.q_proj.weight` -> (3, "q"); `model.norm.weight` -> (None, "final_norm");
    `lm_head.weight` -> (None, "head"). A leaf not in `MODULES` keeps its own name (e.g. "rotary_emb").
    """
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    parts = name.split(".")
    leaf = parts[-2] if len(parts) >= 2 and parts[-1] in ("weight", "bias") else parts[-1]
    module = _LEAF.get(leaf, leaf)
    if module == "final_norm" and layer is not None:  # a bare `norm` inside a layer is not the final norm
        module = "norm"
    return layer, module


def is_norm(module: str) -> bool:
    return module.endswith("norm")


def tensor_seed(seed: int, name: str) -> int:
    """A seed for one tensor, from the global seed and the tensor name; stable across runs and machines."""
    return int(stable_hash([int(seed), name], length=15), 16)


def sample_index(name: str, numel: int, fraction: float = 0.001, min_samples: int = 50, seed: int = 0) -> torch.Tensor:
    """Sorted flat indices of k = min(numel, max(min_samples, ⌈fraction·numel⌉)) distinct entries of tensor `name`.

    Memory O(k) for large tensors (numpy's Floyd sampler), so a 10⁹-entry embedding costs nothing extra.
    """
    k = min(numel, max(int(min_samples), math.ceil(fraction * numel)))
    idx = np.random.default_rng(tensor_seed(seed, name)).choice(numel, size=k, replace=False)
    return torch.from_numpy(np.sort(idx).astype(np.int64))


def resolution(values, dtype: torch.dtype) -> np.ndarray:
    """Spacing of representable numbers of `dtype` at |values| (one ulp), float64, elementwise."""
    info = torch.finfo(dtype)
    mag = np.maximum(np.abs(_as_f64(values)), info.tiny)
    return info.eps * np.exp2(np.floor(np.log2(mag)))


def n_distinct(y) -> np.ndarray:
    """Number of distinct values in each column of `y` (T, k)."""
    s = np.sort(_as_f64(y), axis=0)
    return 1 + np.count_nonzero(np.diff(s, axis=0), axis=0)


def entry_filters(y, dtype: torch.dtype, min_range: float | str = "auto", min_distinct: int = 4
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(moved, varied) boolean masks over the columns of `y` (T, k): the two tests an entry must pass to be kept.

    moved: with `min_range="auto"`, range ≥ AUTO_RANGE_ULPS × resolution(dtype, max |value|); with a number,
    range > min_range. varied: at least `min_distinct` distinct values.
    """
    y = _as_f64(y)
    span = np.ptp(y, axis=0)
    if min_range == "auto":
        moved = span >= AUTO_RANGE_ULPS * resolution(np.abs(y).max(axis=0), dtype)
    else:
        moved = span > _threshold(min_range)
    return moved, n_distinct(y) >= min_distinct


def _threshold(min_range) -> float:
    """A number, or a string YAML left unparsed (`1e-4`)."""
    try:
        if isinstance(min_range, bool):
            raise TypeError
        return float(min_range)
    except (TypeError, ValueError):
        raise ValueError(f"min_range must be 'auto' or a number, got {min_range!r}") from None


# --------------------------------------------------------------------------------------------- trajectory statistics
@dataclass
class WeightLinearity:
    """R² against step of sampled, moved entries of every `.weight` tensor of a trajectory.

    entries: one row per kept entry — tensor, layer, module, index (flat), r2, slope (per step).
    tensors: one row per tensor — tensor, layer, module, dtype, numel, sampled, dropped_range, dropped_distinct,
             kept, r2_median, r2_mean.
    """
    steps: list[int]
    entries: pd.DataFrame
    tensors: pd.DataFrame
    settings: dict = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        return self.entries["r2"].to_numpy()

    def summary(self, threshold: float = paper.R2_BAR, level: float = 0.95) -> dict:
        """Global distribution of R², the share above `threshold` (`frac_above`) and above the papers' 0.7
        (`frac_above_bar`), the filter counts, and `level` intervals of the median and of the share above `threshold`
        (exact bootstraps over the kept entries, `helpers.experiments.claims`)."""
        v = self.values
        q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75]) if v.size else (np.nan,) * 3
        above = int((v > threshold).sum())
        sampled = int(self.tensors["sampled"].sum())
        return {"median": float(med), "q1": float(q1), "q3": float(q3),
                "mean": float(v.mean()) if v.size else np.nan,
                "frac_above": above / v.size if v.size else np.nan, "threshold": threshold, "level": level,
                "frac_above_bar": float((v > paper.R2_BAR).mean()) if v.size else np.nan,
                "median_ci": claims_mod.median_interval(v, level),
                "frac_above_ci": claims_mod.share_interval(above, v.size, level),
                "kept": int(v.size), "sampled": sampled, "dropped": sampled - int(v.size),
                "dropped_range": int(self.tensors["dropped_range"].sum()),
                "dropped_distinct": int(self.tensors["dropped_distinct"].sum())}

    def by_module(self, threshold: float = paper.R2_BAR) -> pd.DataFrame:
        """Per module type: entries sampled / dropped (by reason) / kept, median and mean R², share above
        `threshold` (module types in `MODULES` order)."""
        counts = self.tensors.groupby("module")[["sampled", "dropped_range", "dropped_distinct", "kept"]].sum()
        g = self.entries.groupby("module", observed=True)["r2"]
        out = counts.join(pd.DataFrame({"median": g.median(), "mean": g.mean(),
                                        "frac_above": g.apply(lambda s: float((s > threshold).mean()))}))
        order = [m for m in MODULES if m in out.index] + sorted(set(out.index) - set(MODULES))
        return out.loc[order]

    def by_layer(self) -> pd.DataFrame:
        """Per transformer layer: kept entries, median / mean R² (tensors outside the layers left out)."""
        e = self.entries.dropna(subset=["layer"])
        g = e.groupby(e["layer"].astype(int))["r2"]
        return pd.DataFrame({"kept": g.size(), "median": g.median(), "mean": g.mean()})

    def grid(self, stat: str = "mean") -> pd.DataFrame:
        """Layer × module type table of `stat` ("mean" as in LIN Fig. 8, or "median") of R²; row "—" holds tensors
        outside the layers (embedding, final norm, head)."""
        e = self.entries.assign(row=self.entries["layer"].map(lambda x: "—" if pd.isna(x) else str(int(x))))
        table = e.pivot_table(index="row", columns="module", values="r2", aggfunc=stat, observed=True)
        rows = sorted((r for r in table.index if r != "—"), key=int) + (["—"] if "—" in table.index else [])
        cols = [m for m in MODULES if m in table.columns] + sorted(set(table.columns) - set(MODULES))
        return table.loc[rows, cols].rename_axis(index="layer", columns="module type")

    def least_linear_module(self) -> str:
        """The module type with the lowest median R² ("none" when nothing was kept)."""
        medians = self.by_module()["median"].dropna()
        return str(medians.idxmin()) if len(medians) else "none"

    def results(self, threshold: float = paper.R2_BAR, level: float = 0.95) -> dict:
        """The numbers notebook 01 saves (`weight_r2_*`, `entries_*`), measured: `weight_r2_frac_above_0_7` is the
        share above the papers' 0.7, `weight_r2_frac_above_threshold` the share above `threshold` (the
        `claims.r2_threshold` knob, stored as `r2_threshold`), `weight_r2_median_ci` the `level` interval of the
        median."""
        s = self.summary(threshold, level)
        mods = self.by_module(threshold)
        layers = self.by_layer()["median"]
        return {"weight_r2_median": s["median"], "weight_r2_q1": s["q1"], "weight_r2_q3": s["q3"],
                "weight_r2_median_ci": list(s["median_ci"]),
                "weight_r2_frac_above_0_7": s["frac_above_bar"],
                "weight_r2_frac_above_threshold": s["frac_above"], "r2_threshold": threshold,
                "weight_r2_mean": s["mean"],
                "entries_kept": s["kept"], "entries_dropped": s["dropped"], "entries_sampled": s["sampled"],
                "entries_dropped_range": s["dropped_range"], "entries_dropped_distinct": s["dropped_distinct"],
                "weight_r2_median_by_module": mods["median"].to_dict(),
                "entries_by_module": mods[["sampled", "dropped_range", "dropped_distinct", "kept"]].to_dict("index"),
                "weight_r2_median_by_layer": {str(k): v for k, v in layers.items()},
                "least_linear_module": self.least_linear_module(),
                "n_checkpoints": len(self.steps), "steps": list(self.steps), "settings": self.settings}

    def norm_summary(self) -> dict:
        """Kept entries and median R² of all norm weights together (LIN Fig. 8: the least linear)."""
        v = self.entries.loc[self.entries["module"].map(is_norm), "r2"]
        return {"kept": int(len(v)), "median": float(v.median()) if len(v) else np.nan}


def weight_r2(traj, *, fraction: float = 0.001, min_samples: int = 50, min_range: float | str = "auto",
              min_distinct: int = 4, seed: int = 0, names: Iterable[str] | None = None,
              progress: bool = True) -> WeightLinearity:
    """R² against step of sampled, moved entries of every `.weight` tensor of `traj` (LIN §3.1).

    Per tensor: `sample_index` entries (seeded by `seed` and the tensor name), read at every checkpoint with
    `traj.series`, filtered by `entry_filters`, R² in float64. One tensor at a time; a tqdm bar counts tensors.
    """
    from tqdm.auto import tqdm

    steps = np.asarray(traj.steps, dtype=np.float64)
    if len(steps) < 3:
        raise ValueError(f"{traj.path(traj.steps[0]).parent}: need at least 3 checkpoints for an R², "
                         f"found steps {list(traj.steps)}")
    names = [n for n in (traj.names if names is None else names) if n.endswith(".weight")]
    rows, parts = [], []
    for code, name in enumerate(tqdm(names, desc="weight R²", unit="tensor", disable=not progress)):
        layer, module = parse_name(name)
        idx = sample_index(name, traj.numel(name), fraction, min_samples, seed)
        y = traj.series(name, idx, dtype=torch.float64).numpy()
        moved, varied = entry_filters(y, traj.dtype(name), min_range, min_distinct)
        keep = moved & varied
        r = r2(y[:, keep], steps)
        rows.append({"tensor": name, "layer": layer, "module": module, "dtype": str(traj.dtype(name)).split(".")[-1],
                     "numel": traj.numel(name), "sampled": idx.numel(), "dropped_range": int((~moved).sum()),
                     "dropped_distinct": int((moved & ~varied).sum()), "kept": int(keep.sum()),
                     "r2_median": float(np.median(r)) if r.size else np.nan,
                     "r2_mean": float(r.mean()) if r.size else np.nan})
        parts.append((np.full(r.size, code), idx.numpy()[keep], r, fit_line(y[:, keep], steps)[0]))
    code, index, values, slope = [np.concatenate(c) for c in zip(*parts)] if parts else [np.zeros(0, int)] * 4
    tensors = pd.DataFrame(rows, columns=["tensor", "layer", "module", "dtype", "numel", "sampled", "dropped_range",
                                          "dropped_distinct", "kept", "r2_median", "r2_mean"])
    entries = pd.DataFrame({"tensor": pd.Categorical.from_codes(code, categories=names),
                            "layer": tensors["layer"].to_numpy(dtype=float, na_value=np.nan)[code],
                            "module": tensors["module"].to_numpy(dtype=object)[code],
                            "index": index.astype(np.int64), "r2": values.astype(float), "slope": slope.astype(float)})
    settings = {"fraction": fraction, "min_samples": min_samples, "min_range": min_range,
                "min_distinct": min_distinct, "seed": seed, "auto_range_ulps": AUTO_RANGE_ULPS}
    return WeightLinearity(list(traj.steps), entries, tensors, settings)


def examples(traj, result: WeightLinearity, n: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """`n` randomly chosen kept entries with their series and fitted line: dicts with tensor, index, module, steps,
    values, r2, slope, intercept (for `helpers.experiments.plots.series_fits`)."""
    e = result.entries
    if e.empty:
        return []
    pick = e.sample(n=min(n, len(e)), random_state=np.random.RandomState(seed % 2**32)).sort_values("r2")
    steps = np.asarray(traj.steps, dtype=np.float64)
    out = []
    for _, row in pick.iterrows():
        y = traj.series(str(row["tensor"]), torch.tensor([row["index"]]), dtype=torch.float64).numpy()[:, 0]
        slope, intercept = fit_line(y, steps)
        out.append({"tensor": str(row["tensor"]), "index": int(row["index"]), "module": row["module"],
                    "steps": steps, "values": y, "r2": float(r2(y[:, None], steps)[0]),
                    "slope": float(slope), "intercept": float(intercept)})
    return out


# ------------------------------------------------------------------------------------------------------------ claims
def claims(wl: WeightLinearity, by_seed: Mapping[int, dict], cfg) -> list[claims_mod.Claim]:
    """Notebook 01's claims: the share of moved entries above the R² bar and their median R² on every seed
    (`by_seed` = {seed: `summary(threshold, level)`} at the config's `claims` bar and level), and whether norm
    weights are the least linear (`wl`: the run of rl.seed)."""
    st = claims_mod.Settings.of(cfg)
    seeds.check_made_at(by_seed, threshold=st.r2_threshold, level=st.level)
    thr, pct, n = st.r2_threshold, f"{st.level * 100:g} %", len(by_seed)
    share, share_iv, share_detail = seeds.across(by_seed, "frac_above", "frac_above_ci")
    med, med_iv, med_detail = seeds.across(by_seed, "median", "median_ci")
    share_paper = paper.get("weight_r2_share")
    return [
        claims_mod.Claim("nb01.weight_r2_share", f"share of moved weight entries with R² > {thr:g}", share_paper,
                         share, share_iv, claims_mod.above(share_paper.value),
                         seeds.hull_how(f"{pct} exact bootstrap interval of the share over moved entries", n),
                         share_detail),
        claims_mod.Claim("nb01.weight_r2_median", f"median R² of moved weight entries is above {thr:g}",
                         paper.get("weight_r2_median"), med, med_iv, claims_mod.above(thr),
                         seeds.hull_how(f"{pct} exact bootstrap interval of the median over moved entries", n),
                         med_detail),
        _norms_claim(wl, st.level, cfg.rl.seed),
    ]


def _norms_claim(wl: WeightLinearity, level: float, rl_seed: int) -> claims_mod.Claim:
    """Median R² of norm entries minus that of the other entries (< 0: norms are the least linear)."""
    r = wl.entries["r2"].to_numpy()
    norm = wl.entries["module"].map(is_norm).to_numpy(dtype=bool)
    norms, rest = r[norm], r[~norm]
    med = lambda v: float(np.median(v)) if v.size else math.nan  # noqa: E731
    d, iv = claims_mod.difference(med(norms), claims_mod.median_interval(norms, level),
                                  med(rest), claims_mod.median_interval(rest, level))
    detail = (f"RL seed {rl_seed}: norms {med(norms):.3f} over {norms.size:,} entries, other modules "
              f"{med(rest):.3f} over {rest.size:,}" if norms.size else
              f"RL seed {rl_seed}: no norm entry moved enough to be kept")
    return claims_mod.Claim("nb01.norms_least_linear", "median R² of norm weights minus that of the other weights",
                            paper.get("norms_least_linear"), d, iv, claims_mod.below(0),
                            f"{level * 100:g} % exact bootstrap intervals of the two medians, combined in quadrature",
                            detail)

