"""RELEX (arXiv 2605.21468): rank-r SVD of each tensor's delta trajectory, fits of its coefficients, extrapolation.

For one tensor, the observed deltas δ_t = θ_t − θ_0 (t = the prefix's real step numbers, base excluded) form the rows
of M ∈ R^{T×d}. Its truncated SVD comes from the Gram matrix G = M Mᵀ (T×T, float64), accumulated over column chunks
of M so that memory is bounded by `chunk_bytes` whatever the tensor size; the right singular vectors
v_r = Mᵀ u_r / s_r come from the chunks kept from that pass when the whole of M fits in the budget (each checkpoint
read once), else from a second chunked pass. M is held in float32 for bf16/fp16 checkpoints (their differences are
exact there in practice) and in float64 otherwise; the products are float64, on a GPU when there is one. The
coefficients c_t = ⟨δ_t, v_r⟩ = s_r u_r[t] are then fitted against the step (`fit`: linear by default, or polynomial,
sinusoid, or the bending kinds power and saturating; `choose_fit` picks a kind by validation in time on the prefix's
own later checkpoints) and the checkpoint at any step t* is θ_0 + Σ_r ĉ_r(t*) v_r. Directions with s ≤ 1e-6·s_0 are
dropped, so a tensor that never moved stays at θ_0 exactly.

A decomposition lives in a cache directory (one per trajectory + prefix + rank): `factors.json` (per tensor: singular
values, left vectors, explained variance) and `v/<i>.safetensors` (the right vectors, one tensor-sized file each).
Notebook 06's experiments on top of it are in `helpers.experiments.nb06_relex`.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy.optimize import OptimizeWarning, curve_fit

from helpers.lib.cache import cache_dir, cached_build, dir_fingerprint
from helpers.lib.checkpoint_io import write_checkpoint
from helpers.lib.device import cpu_threads, pick
from helpers.lib.paths import atomic_write_json

DEFAULT_CHUNK_BYTES = 256 << 20
VERSION = 1  # `cache` version of the SVD factors and RELEX checkpoints (bump when their computation changes)
REL_CUTOFF = 1e-6  # directions with s <= REL_CUTOFF * s_0 are dropped (the paper's threshold)


# ----------------------------------------------------------------------------------------------------------------------
# Reading column chunks of one tensor across the checkpoints


def delta_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the SVD holds deltas of `dtype` checkpoints in: float32 for ≤ 16-bit floats (bf16, fp16): the
    difference of two such values is exact in float32 unless their magnitudes differ by more than 2^16 (bf16) or 2^13
    (fp16), and then off by at most float32's rounding; float64 otherwise."""
    return torch.float32 if dtype.is_floating_point and dtype.itemsize <= 2 else torch.float64


def _row_chunks(shape: Sequence[int], n_rows_read: int, chunk_bytes: int, itemsize: int = 8) -> list[tuple[int, int]]:
    """Ranges of dim-0 indices such that `n_rows_read` copies of one range (`itemsize` bytes an entry) fit in
    `chunk_bytes`.

    A 2-D weight is chunked by rows, a 1-D tensor by flat ranges; at least one row per chunk.
    """
    if len(shape) == 0:
        return [(0, 1)]
    per_row = math.prod(shape[1:]) * itemsize * n_rows_read
    rows = max(1, chunk_bytes // max(per_row, 1))
    return [(a, min(a + rows, shape[0])) for a in range(0, shape[0], rows)]


def _convert(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`out` ← `x` in out's dtype; bf16 → float32 by shifting the bits (exact, several times faster than a cast)."""
    if x.dtype == torch.bfloat16 and out.dtype == torch.float32:
        bits = out.numpy().view(np.uint32)
        np.copyto(bits, x.view(torch.int16).numpy().view(np.uint16))
        np.left_shift(bits, 16, out=bits)
        return out
    return out.copy_(x)


def _delta_chunk(
    traj,
    name: str,
    steps: Sequence[int],
    start: int,
    stop: int,
    dtype: torch.dtype = torch.float64,
    buffer: torch.Tensor | None = None,
) -> torch.Tensor:
    """M_c: the (T, cols) block of deltas θ_t − θ_0 in `dtype` for rows [start, stop) of `name` (slice reads only,
    each read converted once), in the first T·cols entries of `buffer` (1-D, ≥ (T + 1)·cols entries of `dtype`;
    the base goes after them) when given."""
    row = math.prod(traj.shape(name)[1:])
    a, b = start * row, stop * row
    n = len(steps) * (b - a)
    if buffer is None:
        buffer = torch.empty(n + b - a, dtype=dtype)
    with cpu_threads():  # torch's finite check of each read: a second thread costs more than it gains on busy cores
        base = _convert(traj.flat(name, 0, a, b), buffer[n : n + b - a])
        m = buffer[:n].view(len(steps), b - a)
        for i, s in enumerate(steps):
            _convert(traj.flat(name, s, a, b), m[i]).sub_(base)
    return m


class Workspace:
    """Memory reused for the delta chunks of one tensor after another: filling pages used before skips the page faults
    of a fresh allocation, which cost as much as converting bf16 to float32."""

    def __init__(self):
        self._data = torch.empty(0, dtype=torch.uint8)

    def take(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """A 1-D tensor of `n` entries of `dtype` (contents undefined; valid until the next `take`)."""
        nbytes = n * dtype.itemsize
        if self._data.numel() < nbytes:
            self._data = torch.empty(0, dtype=torch.uint8)  # free the old block first
            self._data = torch.empty(nbytes, dtype=torch.uint8)
        return self._data[:nbytes].view(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Truncated SVD through the Gram matrix


@dataclass
class Factors:
    """The truncated SVD of one tensor's delta matrix M (T observed steps × numel)."""

    name: str
    shape: tuple[int, ...]
    s: np.ndarray  # (r,) kept singular values, descending (r = 0: the tensor never moved)
    u: np.ndarray  # (T, r) left singular vectors
    eigenvalues: np.ndarray  # (T,) all eigenvalues of G = M Mᵀ (= s² of the full SVD), descending, clamped ≥ 0

    @property
    def rank(self) -> int:
        return len(self.s)

    @property
    def coefficients(self) -> np.ndarray:
        """(T, r): c_t = ⟨δ_t, v_r⟩ = s_r u_r[t]."""
        return self.u * self.s

    @property
    def explained_variance(self) -> float:
        """λ_1 / Σλ — the share of the trajectory's squared norm on the top direction (NaN when it never moved)."""
        total = float(self.eigenvalues.sum())
        return float(self.eigenvalues[0] / total) if total > 0 else float("nan")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "s": self.s.tolist(),
            "u": self.u.tolist(),
            "eigenvalues": self.eigenvalues.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> Factors:
        s = np.asarray(d["s"], dtype=np.float64)
        u = np.asarray(d["u"], dtype=np.float64).reshape(len(d["eigenvalues"]), len(s))
        return cls(d["name"], tuple(d["shape"]), s, u, np.asarray(d["eigenvalues"], dtype=np.float64))


def top_eigen(gram: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, u, eigenvalues) of a Gram matrix: the top `rank` singular values above REL_CUTOFF·s_0 and their vectors.

    Signs are fixed so that the coefficient at the last observed step is ≥ 0 (deterministic, and plots read upwards).
    """
    lam, vec = np.linalg.eigh(gram)
    lam, vec = np.clip(lam[::-1], 0.0, None), vec[:, ::-1]
    s = np.sqrt(lam)
    keep = 0 if s[0] <= 0 else int(min(rank, np.sum(s > REL_CUTOFF * s[0])))
    u = vec[:, :keep].copy()
    u *= np.where(u[-1] < 0, -1.0, 1.0)
    return s[:keep].copy(), u, lam


BLOCK_COLUMNS = 1 << 15  # columns of float32 deltas converted to float64 at a time for the products on the CPU


def _float64_blocks(m: torch.Tensor, device: torch.device) -> Iterator[tuple[int, torch.Tensor]]:
    """(first column, block) of M_c in float64 on `device`: float64 deltas on the CPU as they are (one block), float32
    ones in column blocks (whole on a GPU), each converted once: their products are then exact in float64."""
    if m.dtype == torch.float64 or device.type != "cpu":
        yield 0, m.to(device, torch.float64)
        return
    for j in range(0, m.shape[1], BLOCK_COLUMNS):
        yield j, m[:, j : j + BLOCK_COLUMNS].to(torch.float64)


def _read_once(n_chunks: int, delta_bytes: int, chunk_bytes: int) -> bool:
    """Whether a tensor's chunks are kept from the Gram pass for the projection: its whole delta matrix fits in the
    memory budget (or it is one chunk anyway)."""
    return n_chunks == 1 or delta_bytes <= chunk_bytes


def tensor_svd(
    traj,
    name: str,
    steps: Sequence[int],
    rank: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: str | torch.device | None = None,
    workspace: Workspace | None = None,
) -> tuple[Factors, torch.Tensor]:
    """Rank-`rank` SVD of `name`'s deltas at `steps`, streaming column chunks; returns (factors, v (r, *shape) fp32).

    Deltas are held in `delta_dtype` (float32 for bf16/fp16 checkpoints, float64 otherwise), the Gram matrix is summed
    in float64. When the whole delta matrix fits in `chunk_bytes`, each chunk is read and converted once and kept for
    the projection; a larger tensor is read twice (Gram pass, then projection pass), one chunk at a time. The products
    run on `device` (None/"auto": CUDA when present, else the CPU). Chunks live in `workspace` (pass the same one to
    successive calls to reuse its memory). Peak memory: the delta matrix or one chunk of it (≤ chunk_bytes) plus v
    (rank × the tensor size, float32).
    """
    shape, numel, dev = tuple(traj.shape(name)), traj.numel(name), pick(device)
    dtype = delta_dtype(traj.dtype(name))
    chunks = _row_chunks(shape, len(steps) + 1, chunk_bytes, dtype.itemsize)
    row, t = math.prod(shape[1:]), len(steps)
    widest = max((b - a for a, b in chunks), default=0) * row
    keep = _read_once(len(chunks), t * numel * dtype.itemsize, chunk_bytes)
    buffer = (workspace or Workspace()).take(t * numel + widest if keep else (t + 1) * widest, dtype)

    # float64 products run on the caller's torch threads: their last bits depend on the thread count
    threads = contextlib.nullcontext if dtype == torch.float64 else cpu_threads

    def chunk(a: int, b: int) -> torch.Tensor:  # kept: chunk after chunk; else all at the start of the buffer
        return _delta_chunk(traj, name, steps, a, b, dtype, buffer[t * a * row :] if keep else buffer)

    gram = np.zeros((t, t))
    with threads():
        for a, b in chunks:
            for _, block in _float64_blocks(chunk(a, b), dev):
                gram += (block @ block.T).cpu().numpy()
    s, u, lam = top_eigen(gram, rank)
    v = torch.empty((len(s), numel), dtype=torch.float32)
    if len(s):
        proj = torch.from_numpy(u / s).to(dev)  # (T, r): v_r = Mᵀ u_r / s_r
        with threads():
            for a, b in chunks:
                m = buffer[t * a * row : t * b * row].view(t, -1) if keep else chunk(a, b)
                for j, block in _float64_blocks(m, dev):
                    v[:, a * row + j : a * row + j + block.shape[1]] = (proj.T @ block).to(torch.float32).cpu()
    return Factors(name, shape, s, u, lam), v.reshape((len(s), *shape))


# ----------------------------------------------------------------------------------------------------------------------
# A decomposition of a whole trajectory prefix, cached on disk


def observed_steps(traj, t_cut: int | None = None) -> list[int]:
    """The checkpoint steps in (0, t_cut] (all non-base steps when `t_cut` is None) — the rows of M."""
    steps = [s for s in traj.steps if s > 0 and (t_cut is None or s <= t_cut)]
    if not steps:
        raise ValueError(f"{traj.path(0)}: no checkpoint after the base at or before step {t_cut}")
    return steps


def prefix_step(traj, fraction: float, min_points: int = 2) -> int:
    """T_cut for a prefix `fraction` of the trajectory: the last checkpoint at or before fraction × the final step,
    but no earlier than the `min_points`-th checkpoint after the base (a fit needs that many points)."""
    steps = observed_steps(traj)
    if len(steps) < min_points:
        raise ValueError(f"{traj.path(0)}: {len(steps)} checkpoints after the base, need at least {min_points}")
    within = [s for s in steps if s <= fraction * steps[-1]]
    return max(within[-1] if within else steps[0], steps[min_points - 1])


def fingerprint(traj, steps: Sequence[int]) -> list:
    """What identifies the checkpoints a decomposition was made from."""
    return [[s, *dir_fingerprint(traj.path(s))] for s in steps]


@dataclass
class Decomposition:
    """Per-tensor rank-r SVD of a trajectory prefix; v lives on disk under `dir`, one file per moving tensor."""

    traj: object
    dir: Path
    steps: list[int]  # observed steps (the rows of M), base excluded
    rank: int  # the rank asked for (a tensor may keep fewer directions)
    factors: dict[str, Factors]

    @property
    def t_cut(self) -> int:
        return self.steps[-1]

    def v(self, name: str, rank: int | None = None) -> torch.Tensor:
        """Right singular vectors of `name`, (r, *shape) float32 (r = 0 rows when the tensor never moved)."""
        f = self.factors[name]
        r = f.rank if rank is None else min(rank, f.rank)
        if r == 0:
            return torch.zeros((0, *f.shape))
        with safe_open(self.dir / "v" / f"{self.traj.names.index(name):05d}.safetensors", "pt") as fh:
            return fh.get_slice("v")[:r]

    def explained_variance(self) -> dict[str, float]:
        """λ_1 / Σλ per tensor (tensors that never moved are left out)."""
        return {n: f.explained_variance for n, f in self.factors.items() if f.rank}


def decompose(
    traj,
    t_cut: int | None = None,
    rank: int = 1,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    device: str | torch.device | None = None,
) -> Decomposition:
    """Rank-`rank` SVD of every tensor's deltas over the prefix (0, t_cut] (`tensor_svd`, products on `device`);
    cached per trajectory + prefix + rank."""
    steps = observed_steps(traj, t_cut)
    key = {"trajectory": fingerprint(traj, [0, *steps]), "steps": steps, "rank": rank}

    def build(tmp: Path) -> None:
        (tmp / "v").mkdir()
        table, workspace = [], Workspace()
        for i, name in enumerate(traj.names):
            f, v = tensor_svd(traj, name, steps, rank, chunk_bytes, device, workspace)
            if f.rank:
                save_file({"v": v.contiguous()}, str(tmp / "v" / f"{i:05d}.safetensors"))
            table.append(f.to_json())
            del v
        atomic_write_json(tmp / "factors.json", {"steps": steps, "rank": rank, "tensors": table})

    final = cached_build("relex-svd", key, build, VERSION)
    data = json.loads((final / "factors.json").read_text())
    factors = {d["name"]: Factors.from_json(d) for d in data["tensors"]}
    return Decomposition(traj, final, data["steps"], data["rank"], factors)


def project(
    dec: Decomposition, name: str, steps: Sequence[int], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """(c, gram) at any `steps` (e.g. beyond the prefix), in column chunks: c[i, r] = ⟨δ_{steps[i]}, v_r⟩ and
    gram[i, j] = ⟨δ_{steps[i]}, δ_{steps[j]}⟩ (its diagonal: the squared norms)."""
    f = dec.factors[name]
    v = dec.v(name).reshape(f.rank, -1).to(torch.float64)
    row = math.prod(f.shape[1:])
    c, gram = np.zeros((len(steps), f.rank)), np.zeros((len(steps), len(steps)))
    for a, b in _row_chunks(f.shape, len(steps) + 1, chunk_bytes):
        m = _delta_chunk(dec.traj, name, steps, a, b)
        c += (m @ v[:, a * row : b * row].T).numpy()
        gram += (m @ m.T).numpy()
        del m
    return c, gram


# ----------------------------------------------------------------------------------------------------------------------
# Fits of the coefficients against the real step numbers


def _sinusoid(t: np.ndarray, c: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """c ≈ a·sin(ω x + φ) + b·x + e with x = (t − t_0)/span: a drifting oscillation (5 parameters, ≥ 5 points).

    Initialisation: for a grid of periods (2 sampling intervals … 4 spans) the model is linear in (A, B, b, e) with
    A·sin ωx + B·cos ωx = a·sin(ωx + φ); the best grid point seeds `scipy.optimize.curve_fit`, whose result is kept
    only if it lowers the squared error.
    """
    t0, span = t[0], max(float(t[-1] - t[0]), 1.0)
    x = (t - t0) / span

    def model(x, a, w, phi, b, e):
        return a * np.sin(w * x + phi) + b * x + e

    best = None
    for period in np.geomspace(2 * float(np.median(np.diff(x))), 4.0, 64):
        w = 2 * np.pi / period
        design = np.stack([np.sin(w * x), np.cos(w * x), x, np.ones_like(x)], 1)
        coef, *_ = np.linalg.lstsq(design, c, rcond=None)
        rss = float(np.sum((design @ coef - c) ** 2))
        if best is None or rss < best[0]:
            best = (rss, [math.hypot(coef[0], coef[1]), w, math.atan2(coef[1], coef[0]), coef[2], coef[3]])
    rss, p = best
    try:
        q, _ = curve_fit(model, x, c, p0=p, maxfev=5000)
        if np.all(np.isfinite(q)) and np.sum((model(x, *q) - c) ** 2) < rss:
            p = q
    except RuntimeError:  # no convergence: keep the grid solution
        pass
    return lambda t_new: model((np.asarray(t_new, dtype=np.float64) - t0) / span, *p)


# name -> (minimum number of points (None: degree + 1), fit(t, c, degree) -> predictor). Polynomial.fit works on a
# scaled domain, so it stays well conditioned at large step numbers.
FITS: dict[str, tuple[int | None, Callable]] = {
    "linear": (2, lambda t, c, degree: np.polynomial.Polynomial.fit(t, c, 1)),
    "polynomial": (None, lambda t, c, degree: np.polynomial.Polynomial.fit(t, c, degree)),
    "sinusoid": (5, lambda t, c, degree: _sinusoid(t, c)),
}


@dataclass(frozen=True)
class Bent:
    """A bending fit (`BENDING`); call it with step(s). `params` in step units — (a, p, b) for power, (a, τ, d, b) for
    saturating —, or empty when the linear fit stands in for it: `fallback` then says why ("" otherwise)."""

    kind: str
    params: tuple[float, ...]
    predict: Callable[[np.ndarray], np.ndarray]
    fallback: str = ""

    def __call__(self, t) -> np.ndarray:
        return self.predict(np.asarray(t, dtype=np.float64))


def _profiled(
    model: Callable, basis: Callable, grid: np.ndarray, bounds: tuple[float, float], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Least squares of y ≈ model(x, *q) where q = (*linear coefficients, θ) and, for fixed θ, the model is linear:
    y ≈ basis(x, θ) @ coefficients. Each θ of `grid` gets its exact linear solution; the best grid point seeds a
    bounded `scipy.optimize.curve_fit` (θ within `bounds`, the coefficients free) — deterministic."""
    best = None
    for theta in grid:
        design = basis(x, theta)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        rss = float(np.sum((design @ coef - y) ** 2))
        if best is None or rss < best[0]:
            best = (rss, [*coef, theta])
    k = len(best[1]) - 1
    lower, upper = [-np.inf] * k + [bounds[0]], [np.inf] * k + [bounds[1]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)  # an unidentified covariance does not matter here
        q, _ = curve_fit(model, x, y, p0=best[1], bounds=(lower, upper), max_nfev=2000)
    return q


def _power(t: np.ndarray, c: np.ndarray) -> tuple[tuple[float, ...], Callable]:
    """c ≈ a·t^p + b, p ∈ [1e-3, 10], t the real step (the base is step 0). Fitted on x = t / t_max and c / max|c|
    (the same curve, well scaled), seeded by the exact (a, b) of each p on a grid."""
    ts, cs = float(np.max(t)), max(float(np.max(np.abs(c))), 1e-300)

    def model(x, a, b, p):
        return a * np.power(x, p) + b

    a, b, p = _profiled(
        model,
        lambda x, p: np.stack([np.power(x, p), np.ones_like(x)], 1),
        np.geomspace(0.05, 5.0, 48),
        (1e-3, 10.0),
        t / ts,
        c / cs,
    )
    return (a * cs / ts**p, p, b * cs), lambda t_new: cs * model(t_new / ts, a, b, p)


def _saturating(t: np.ndarray, c: np.ndarray) -> tuple[tuple[float, ...], Callable]:
    """c ≈ a·(1 − exp(−t/τ)) + d·t + b: a fast phase of time scale τ ∈ [1e-3, 2]·t_max, then a drift of slope d.
    Fitted on x = t / t_max and c / max|c|, seeded by the exact (a, d, b) of each τ on a grid."""
    ts, cs = float(np.max(t)), max(float(np.max(np.abs(c))), 1e-300)

    def model(x, a, d, b, tau):
        return a * -np.expm1(-x / tau) + d * x + b

    a, d, b, tau = _profiled(
        model,
        lambda x, tau: np.stack([-np.expm1(-x / tau), x, np.ones_like(x)], 1),
        np.geomspace(0.01, 1.5, 48),
        (1e-3, 2.0),
        t / ts,
        c / cs,
    )
    return (a * cs, tau * ts, d * cs / ts, b * cs), lambda t_new: cs * model(t_new / ts, a, d, b, tau)


# name -> (number of parameters, fit(t, c) -> (parameters in step units, predictor)). A bending fit needs at least
# parameters + 1 points; with fewer, or when the optimizer fails, the linear fit stands in (`Bent.fallback`).
BENDING: dict[str, tuple[int, Callable]] = {"power": (3, _power), "saturating": (4, _saturating)}
KINDS = (*FITS, *BENDING)


def min_points(kind: str, degree: int = 2) -> int:
    """How many points a `kind` fit needs (a bending kind: its parameters + 1)."""
    if kind in BENDING:
        return BENDING[kind][0] + 1
    if kind in FITS:
        return FITS[kind][0] or degree + 1
    raise ValueError(f"unknown fit {kind!r} (have: {', '.join(KINDS)})")


def _bend(t: np.ndarray, c: np.ndarray, kind: str) -> Bent:
    """The `kind` bending fit, or the linear fit with the reason it stands in."""
    need = min_points(kind)
    if len(t) < need:
        reason = f"{len(t)} points: a {kind} fit needs at least {need} (parameters + 1)"
    else:
        try:
            params, predict = BENDING[kind][1](t, c)
            if np.all(np.isfinite(params)):
                return Bent(kind, tuple(float(p) for p in params), predict)
            reason = "the optimizer returned non-finite parameters"
        except (RuntimeError, ValueError) as e:
            reason = f"the optimizer failed ({e})"
    return Bent(kind, (), fit(t, c, "linear"), reason)


def fit(
    steps: Sequence[int], c: np.ndarray, kind: str = "linear", degree: int = 2, window: int | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Fit c (T,) against the real `steps` (T,); returns step(s) -> predicted c. `window` = use only the last w points.

    Kinds: linear (least squares with intercept), polynomial(`degree`), sinusoid (see `_sinusoid`) — fewer points than
    `min_points` is a ValueError —, and the bending kinds (`BENDING`, a `Bent`): power a·t^p + b and saturating
    a·(1 − exp(−t/τ)) + d·t + b, least squares by `scipy.optimize.curve_fit` from deterministic starting points; with
    fewer points than parameters + 1, or when the optimizer fails, the linear fit stands in (`Bent.fallback` says why).
    """
    need = min_points(kind, degree)
    t, c = np.asarray(steps, dtype=np.float64), np.asarray(c, dtype=np.float64)
    if window:
        t, c = t[-window:], c[-window:]
    if kind in BENDING:
        return _bend(t, c, kind)
    if len(t) < need:
        raise ValueError(f"a {kind} fit needs at least {need} points, the prefix has {len(t)} (steps {t.tolist()})")
    return FITS[kind][1](t, c, degree)


# ----------------------------------------------------------------------------------------------------------------------
# Validation in time: which fit predicts the prefix's own later checkpoints best

TIE = 1e-9  # validation errors within TIE·(1 + the lowest) of the lowest count as equal


@dataclass(frozen=True)
class Choice:
    """What `choose_fit` found: the chosen kind and why, and every candidate's validation error (NaN when it could not
    be validated: `notes` says why, unless nothing could be and `reason` says why; else the notes say how many tensors
    the linear fit stood in for)."""

    kind: str
    reason: str
    errors: dict[str, float]
    notes: dict[str, str]
    n_train: int  # the earlier checkpoints each candidate is fitted on
    n_holdout: int  # the later checkpoints it predicts


def holdout_split(n: int, holdout: float) -> tuple[int, int]:
    """(fitted, held out) of n checkpoints: the last ⌊holdout·n⌋ are held out, at least 1."""
    h = max(1, int(holdout * n + 1e-9))
    return n - h, h


def choose_fit(
    steps: Sequence[int],
    c_by_tensor: Mapping[str, np.ndarray],
    kinds: Sequence[str] = KINDS,
    holdout: float = 1 / 3,
    degree: int = 2,
) -> Choice:
    """The fit kind that best predicts the prefix's own later checkpoints from its earlier ones (validation in time).

    `c_by_tensor`: each tensor's coefficients c (T,) at the prefix's `steps` (e.g. its rank-1 coefficients). The last
    ⌊holdout·T⌋ checkpoints (at least 1) are held out; each candidate is fitted per tensor on the earlier ones
    (`fit`, the linear fit standing in where a bending fit falls back) and predicts the held-out ones. Its error is
    the square root of Σ_i Σ_held-out (ĉ_i − c_i)² / (h · Σ_i s_i²) with s_i² = Σ_t c_i(t)² over the whole prefix
    (the tensor's squared singular value when c = s·u): the s²-weighted mean over tensors of each tensor's mean
    squared held-out error relative to its s², so tensors that move more count more — equivalently the rank-r part's
    weight-space error pooled over tensors relative to the prefix trajectory's pooled norm. Tensors that never moved
    (c ≡ 0) are left out. The lowest error wins; errors within `TIE` are equal and a tie goes to linear (always a
    candidate, the first), then to the order of `kinds`. With fewer than 2 fitted checkpoints nothing is validated and
    the choice is linear. Deterministic.
    """
    if not 0 < holdout < 1:
        raise ValueError(f"holdout is the share of the prefix's checkpoints held out, in (0, 1), not {holdout}")
    kinds = list(dict.fromkeys(["linear", *kinds]))
    needs = {k: min_points(k, degree) for k in kinds}  # unknown kinds fail here
    t = np.asarray(steps, dtype=np.float64)
    n_train, h = holdout_split(len(t), holdout)
    c = {n: np.asarray(v, dtype=np.float64) for n, v in c_by_tensor.items()}
    c = {n: v for n, v in c.items() if np.any(v)}
    if n_train < needs["linear"] or not c:
        why = (
            f"too few checkpoints for validation: {len(t)} observed, the last {h} held out leaves {n_train}"
            if c
            else "no tensor moved"
        )
        return Choice("linear", why, {k: math.nan for k in kinds}, {k: "" for k in kinds}, max(n_train, 0), h)
    total = sum(float(v @ v) for v in c.values())
    errors, notes = {}, {}
    for kind in kinds:
        if n_train < needs[kind]:
            errors[kind], notes[kind] = math.nan, f"needs {needs[kind]} fitted checkpoints, has {n_train}"
            continue
        sq, fallbacks = 0.0, []
        for v in c.values():
            f = fit(t[:n_train], v[:n_train], kind, degree)
            sq += float(np.sum((np.asarray(f(t[n_train:])) - v[n_train:]) ** 2))
            if getattr(f, "fallback", ""):
                fallbacks.append(f.fallback)
        errors[kind] = math.sqrt(sq / (h * total)) if math.isfinite(sq) else math.nan
        notes[kind] = f"linear stands in for {len(fallbacks)} of {len(c)} tensors ({fallbacks[0]})" if fallbacks else ""
        if not math.isfinite(sq):
            notes[kind] = "non-finite predictions"
    valid = {k: e for k, e in errors.items() if math.isfinite(e)}
    best = min(valid.values())
    kind = next(k for k in kinds if k in valid and valid[k] <= best + TIE * (1 + best))
    why = f"lowest validation error ({valid[kind]:.3g}) on the last {h} of {len(t)} checkpoints"
    if len(valid) == 1:
        why = f"the only candidate with enough fitted checkpoints ({n_train}; the last {h} of {len(t)} held out)"
    elif kind == "linear" and any(valid[k] < valid["linear"] for k in valid):
        why = f"tied with the lowest validation error ({best:.3g}): linear wins ties"
    return Choice(kind, why, errors, notes, n_train, h)


def predicted_coefficients(
    dec: Decomposition,
    name: str,
    step: float,
    rank: int | None = None,
    kind: str = "linear",
    degree: int = 2,
    window: int | None = None,
) -> np.ndarray:
    """ĉ_r(step) for the first `rank` directions of `name`, each fitted separately on the observed prefix (`fit`;
    `kind` any of `KINDS`)."""
    f = dec.factors[name]
    r = f.rank if rank is None else min(rank, f.rank)
    return np.array([float(fit(dec.steps, f.coefficients[:, i], kind, degree, window)(step)) for i in range(r)])


# ----------------------------------------------------------------------------------------------------------------------
# Writing checkpoints


def _tensors(dec: Decomposition, coefficients: Callable[[str], np.ndarray]) -> Iterator[tuple[str, torch.Tensor]]:
    """θ_0 + Σ_r c_r v_r per tensor (fp32 arithmetic, saved in θ_0's dtype); a tensor with no direction is θ_0 as is."""
    for name in dec.traj.names:
        base = dec.traj.tensor(name, 0)
        c = coefficients(name)
        if len(c) == 0:
            yield name, base
            continue
        v = dec.v(name, len(c))
        delta = torch.einsum("r,r...->...", torch.as_tensor(c, dtype=torch.float32), v)
        yield name, (base.to(torch.float32) + delta).to(base.dtype)
        del v, delta


def _write(
    dec: Decomposition, out_dir, coefficients: Callable[[str], np.ndarray], record: dict, overwrite: bool = False
) -> Path:
    """The checkpoint in `out_dir` (an existing one replaced only with `overwrite`, and only if it is an earlier
    extrapolation: `checkpoint_io.write_checkpoint`), or, for `out_dir` None, in its cache directory."""
    record = {"method": "relex", "svd_cache": str(dec.dir), "observed_steps": dec.steps, **record}
    out = Path(out_dir) if out_dir else cache_dir("relex-ckpt", {"svd": dec.dir.name, **record}, VERSION)
    if (out / "extrapolation.json").is_file() and out_dir is None:
        return out
    with cpu_threads():  # elementwise work on one thread (the same bits, faster on busy cores)
        return write_checkpoint(
            out, _tensors(dec, coefficients), like=Path(dec.traj.path(0)), record=record, overwrite=overwrite
        )


def extrapolate(
    dec: Decomposition,
    step: int,
    out_dir=None,
    rank: int | None = None,
    kind: str = "linear",
    degree: int = 2,
    window: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the RELEX checkpoint θ_0 + Σ_r ĉ_r(step) v_r (a loadable HF model dir), ĉ_r from a `kind` fit (any of
    `KINDS`); `out_dir` None = cached. An existing `out_dir` is replaced only with `overwrite`, and only if it is an
    earlier extrapolation."""
    rank = dec.rank if rank is None else rank
    record = {"mode": "extrapolate", "target_step": step, "rank": rank, "fit": kind, "window": window}
    if kind == "polynomial":
        record["degree"] = degree
    return _write(
        dec, out_dir, lambda n: predicted_coefficients(dec, n, step, rank, kind, degree, window), record, overwrite
    )


def reconstruct(dec: Decomposition, step: int, out_dir=None, rank: int | None = None) -> Path:
    """Write the rank-r projection θ_0 + Σ_r c_r(step) v_r of an observed checkpoint (the denoising experiment)."""
    if step not in dec.steps:
        raise ValueError(f"step {step} is not one of the decomposition's observed steps {dec.steps}")
    rank = dec.rank if rank is None else rank
    i = dec.steps.index(step)
    return _write(
        dec,
        out_dir,
        lambda n: dec.factors[n].coefficients[i, :rank],
        {"mode": "reconstruct", "target_step": step, "rank": rank},
    )
