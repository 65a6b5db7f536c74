"""Linearity of a training trajectory: the one R² implementation, and weight-space statistics (LIN §3.1).

`r2(y, t)` is the R² of every column of `y` against steps `t` (squared Pearson correlation = OLS R² with an intercept,
in float64). Every notebook that reports an R² calls it.

`weight_r2(traj, ...)` samples entries of every `.weight` tensor of a `helpers.lib.trajectory.Trajectory`, keeps the
ones that really moved, and returns their R² against the training step as a `WeightLinearity` (every kept entry with
its tensor, layer and module type; per tensor what was sampled, dropped and why). It streams one tensor at a time, so
memory is bounded by one tensor read plus its samples × checkpoints, whatever the model size. Tables, intervals and
claims over it are notebook 01's (`helpers.experiments.nb01_weight_linearity`).

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from helpers.lib.cache import stable_hash

AUTO_RANGE_ULPS = 2  # min_range="auto": an entry must move by at least this many steps of its dtype's resolution

# Module types in display order; `parse_name` maps tensor names onto them.
MODULES = (
    "embed",
    "q",
    "k",
    "v",
    "o",
    "q_norm",
    "k_norm",
    "input_norm",
    "gate",
    "up",
    "down",
    "post_attn_norm",
    "final_norm",
    "head",
)
_LEAF = {
    "embed_tokens": "embed",
    "wte": "embed",
    "q_proj": "q",
    "k_proj": "k",
    "v_proj": "v",
    "o_proj": "o",
    "q_norm": "q_norm",
    "k_norm": "k_norm",
    "input_layernorm": "input_norm",
    "gate_proj": "gate",
    "up_proj": "up",
    "down_proj": "down",
    "post_attention_layernorm": "post_attn_norm",
    "norm": "final_norm",
    "lm_head": "head",
}
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


def distribution(v: np.ndarray, threshold: float) -> dict:
    """The summary of an R² distribution every notebook reports: median, quartiles, mean, and the share above
    `threshold` (`frac_above`; NaN for no values), with the threshold."""
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75]) if v.size else (np.nan,) * 3
    return {
        "median": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "mean": float(v.mean()) if v.size else np.nan,
        "frac_above": int((v > threshold).sum()) / v.size if v.size else np.nan,
        "threshold": threshold,
    }


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


def entry_filters(
    y, dtype: torch.dtype, min_range: float | str = "auto", min_distinct: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """(moved, varied) boolean masks over the columns of `y` (T, k): the two tests an entry must pass to be kept.

    moved: with `min_range="auto"`, range ≥ AUTO_RANGE_ULPS × resolution(dtype, max |value|); with a number,
    range > min_range. varied: at least `min_distinct` distinct values.
    """
    y = _as_f64(y)
    return moved_mask(y, dtype, min_range), n_distinct(y) >= min_distinct


def moved_mask(y, dtype: torch.dtype, min_range: float | str = "auto") -> np.ndarray:
    """Boolean mask over the columns of `y` (T, k): entries whose range passes `entry_filters`' moved test."""
    y = _as_f64(y)
    span = np.ptp(y, axis=0)
    if min_range == "auto":
        return span >= AUTO_RANGE_ULPS * resolution(np.abs(y).max(axis=0), dtype)
    return span > _threshold(min_range)


def _threshold(min_range) -> float:
    """A number, or a string YAML left unparsed (`1e-4`)."""
    try:
        if isinstance(min_range, bool):
            raise TypeError
        return float(min_range)
    except (TypeError, ValueError):
        raise ValueError(f"min_range must be 'auto' or a number, got {min_range!r}") from None


# --------------------------------------------------------------------------------------------- trajectory statistics
ENTRY_COLUMNS = ("tensor", "layer", "module", "index", "r2", "slope")
TENSOR_COLUMNS = (
    "tensor",
    "layer",
    "module",
    "dtype",
    "numel",
    "sampled",
    "dropped_range",
    "dropped_distinct",
    "kept",
    "r2_median",
    "r2_mean",
)
_DTYPES = {
    "tensor": object,
    "layer": float,
    "module": object,
    "dtype": object,
    "numel": np.int64,
    "sampled": np.int64,
    "dropped_range": np.int64,
    "dropped_distinct": np.int64,
    "kept": np.int64,
    "r2_median": float,
    "r2_mean": float,
}


@dataclass
class WeightLinearity:
    """R² against step of sampled, moved entries of every `.weight` tensor of a trajectory, as columns (numpy arrays).

    entries: one value per kept entry — tensor (name), layer (float, NaN outside the layers), module, index (flat),
             r2, slope (per step); `ENTRY_COLUMNS`.
    tensors: one value per tensor — tensor, layer, module, dtype, numel, sampled, dropped_range, dropped_distinct,
             kept, r2_median, r2_mean; `TENSOR_COLUMNS`.
    """

    steps: list[int]
    entries: dict[str, np.ndarray]
    tensors: dict[str, np.ndarray]
    settings: dict = field(default_factory=dict)

    @property
    def values(self) -> np.ndarray:
        """R² of every kept entry."""
        return self.entries["r2"]

    def summary(self, threshold: float) -> dict:
        """Global distribution of R² (median, quartiles, mean), the share above `threshold` (`frac_above`), and the
        filter counts: entries sampled, kept, dropped (by the range filter, by the distinct-values filter)."""
        v = self.values
        sampled = int(self.tensors["sampled"].sum())
        return {
            **distribution(v, threshold),
            "kept": int(v.size),
            "sampled": sampled,
            "dropped": sampled - int(v.size),
            "dropped_range": int(self.tensors["dropped_range"].sum()),
            "dropped_distinct": int(self.tensors["dropped_distinct"].sum()),
        }

    def norm_summary(self) -> dict:
        """Kept entries and median R² of all norm weights together (LIN Fig. 8: the least linear)."""
        v = self.values[self.norm_mask()]
        return {"kept": int(len(v)), "median": float(np.median(v)) if len(v) else np.nan}

    def norm_mask(self) -> np.ndarray:
        """Which kept entries belong to a norm weight."""
        return np.array([is_norm(m) for m in self.entries["module"]], dtype=bool)


def _columns(rows: list[dict], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row dicts as one numpy array per column; a layer of None (a tensor outside the layers) becomes NaN."""
    return {c: np.array([np.nan if r[c] is None else r[c] for r in rows], dtype=_DTYPES[c]) for c in names}


def weight_r2(
    traj,
    *,
    fraction: float = 0.001,
    min_samples: int = 50,
    min_range: float | str = "auto",
    min_distinct: int = 4,
    seed: int = 0,
    names: Iterable[str] | None = None,
    progress: bool = True,
) -> WeightLinearity:
    """R² against step of sampled, moved entries of every `.weight` tensor of `traj` (LIN §3.1).

    Per tensor: `sample_index` entries (seeded by `seed` and the tensor name), read at every checkpoint with
    `traj.series`, filtered by `entry_filters`, R² in float64. One tensor at a time; a tqdm bar counts tensors.
    """
    steps = np.asarray(traj.steps, dtype=np.float64)
    if len(steps) < 3:
        raise ValueError(
            f"{traj.path(traj.steps[0]).parent}: need at least 3 checkpoints for an R², found steps {list(traj.steps)}"
        )
    names = [n for n in (traj.names if names is None else names) if n.endswith(".weight")]
    rows, parts = [], []
    for code, name in enumerate(tqdm(names, desc="weight R²", unit="tensor", disable=not progress)):
        layer, module = parse_name(name)
        idx = sample_index(name, traj.numel(name), fraction, min_samples, seed)
        y = traj.series(name, idx, dtype=torch.float64).numpy()
        moved, varied = entry_filters(y, traj.dtype(name), min_range, min_distinct)
        keep = moved & varied
        r = r2(y[:, keep], steps)
        rows.append(
            {
                "tensor": name,
                "layer": layer,
                "module": module,
                "dtype": str(traj.dtype(name)).split(".")[-1],
                "numel": traj.numel(name),
                "sampled": idx.numel(),
                "dropped_range": int((~moved).sum()),
                "dropped_distinct": int((moved & ~varied).sum()),
                "kept": int(keep.sum()),
                "r2_median": float(np.median(r)) if r.size else np.nan,
                "r2_mean": float(r.mean()) if r.size else np.nan,
            }
        )
        parts.append((np.full(r.size, code), idx.numpy()[keep], r, fit_line(y[:, keep], steps)[0]))
    code, index, values, slope = [np.concatenate(c) for c in zip(*parts)] if parts else [np.zeros(0, int)] * 4
    tensors = _columns(rows, TENSOR_COLUMNS)
    entries = {
        "tensor": tensors["tensor"][code],
        "layer": tensors["layer"][code],
        "module": tensors["module"][code],
        "index": index.astype(np.int64),
        "r2": values.astype(float),
        "slope": slope.astype(float),
    }
    settings = {
        "fraction": fraction,
        "min_samples": min_samples,
        "min_range": min_range,
        "min_distinct": min_distinct,
        "seed": seed,
        "auto_range_ulps": AUTO_RANGE_ULPS,
    }
    return WeightLinearity(list(traj.steps), entries, tensors, settings)


def examples(traj, result: WeightLinearity, n: int = 6, seed: int = 0) -> list[dict[str, Any]]:
    """`n` randomly chosen kept entries (sorted by R²) with their series and fitted line: dicts with tensor, index,
    module, steps, values, r2, slope, intercept (for `helpers.experiments.plots.series_fits`)."""
    e = result.entries
    if not e["r2"].size:
        return []
    rows = np.random.RandomState(seed % 2**32).choice(e["r2"].size, size=min(n, e["r2"].size), replace=False)
    rows = rows[np.argsort(e["r2"][rows], kind="quicksort")]
    steps = np.asarray(traj.steps, dtype=np.float64)
    out = []
    for i in rows:
        y = traj.series(str(e["tensor"][i]), torch.tensor([e["index"][i]]), dtype=torch.float64).numpy()[:, 0]
        slope, intercept = fit_line(y, steps)
        out.append(
            {
                "tensor": str(e["tensor"][i]),
                "index": int(e["index"][i]),
                "module": e["module"][i],
                "steps": steps,
                "values": y,
                "r2": float(r2(y[:, None], steps)[0]),
                "slope": float(slope),
                "intercept": float(intercept),
            }
        )
    return out
