"""Origin of linearity (LIN §3.3 and the v3 additions): where the straight lines of RLVR training come from.

Four measurements, all on the embedded default:

1. First- vs second-order decomposition of a linear layer's output change. For y = x Wᵀ (+ b), W = W0 + ΔW,
   x = x0 + Δx, exactly

       Δy = (x0 ΔWᵀ + Δb)  +  Δx W0ᵀ  +  Δx ΔWᵀ
            weight term       input term  second-order term

   `decompose` computes the three terms in float64; `decompose_trajectory` captures x (forward pre-hooks on the probe
   set of notebook 02) and W at the base and at every later checkpoint. Share of a term = its Frobenius norm over the
   sampled tokens divided by the sum of the three terms' norms (in [0, 1], the three shares sum to 1). Norms, not
   projections: the weight and input terms may partly cancel, which would make projection shares negative or > 1.

2. SFT vs RL: `Study` trains SFT from the same base with the same step count, checkpoint spacing, optimizer and lr as
   the RL run (only the training signal differs), then measures weight R² (`helpers.lib.linearity.weight_r2`) and token
   log-prob R² (`helpers.experiments.nb02_output_linearity`) of every run with the same code.

3. Noise injection into SFT at a controlled SNR (`NoisyLoss`). With ℓ_i the per-token SFT loss (cross-entropy of the
   reference token) over the n supervised tokens of a batch, the loss becomes

       L = (1/n) Σ_i (s + σ ε_i) ℓ_i,     ε_i = ±1 independent fair random signs, fresh at every step,

   i.e. signal terms s·ℓ_i plus noise terms σ·ε_i·ℓ_i. Powers are measured on those per-token terms:
   P_signal = mean_i (s ℓ_i)², P_noise = mean_i (σ ε_i ℓ_i)² = σ² mean_i ℓ_i², so SNR_dB = 10 log10(P_signal / P_noise)
   = 10 log10(s² / σ²) holds exactly for every batch, not only in expectation. s² + σ² = 1 keeps the total power of the
   per-token terms equal to that of plain SFT (s = 1, σ = 0) at every SNR; "signal=0" is noise only (s = 0, σ = 1).
   The gradient is Σ_i (s + σ ε_i) ∇ℓ_i / n: the SFT gradient plus random-sign token-level noise, like an RL update
   whose per-token advantages are mostly noise.

4. Optimizer and lr: RL runs with SGD and with AdamW at several lr. SGD's lr is, unless given, matched to the step
   length the AdamW run actually took: SGD moves by lr_sgd·min(‖g‖, max_grad_norm) per step, so
   lr_sgd = L / mean_t min(‖g_t‖, max_grad_norm), with L = the mean over checkpoint intervals of ‖θ_b − θ_a‖ / (b − a)
   and the AdamW run's logged gradient norms (the mean, not the median: RL steps whose groups all got the same reward
   have a zero gradient; with no gradient logged at all, ‖g‖ = max_grad_norm is assumed, with a warning). AdamW's
   nominal step, lr·√N for N parameters, is reached only when gradient signs persist; an SGD lr matched to it was
   ~3.5x larger on the embedded default and made the reward fall instead of rise.

Extra runs are cached under outputs/cache/ by everything they depend on (RL runs through
`helpers.lib.training.embedded_trajectory`, SFT runs as `sft-run-v<SFT_VERSION>-<hash>` builds of `helpers.lib.cache`).
The module also holds the notebook's tables, figures, claims and `results`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from helpers.experiments import claims as C
from helpers.experiments import nb01_weight_linearity as weight_linearity
from helpers.experiments import nb02_output_linearity as output_linearity
from helpers.experiments import paper
from helpers.experiments.training_log import read_log
from helpers.lib import cache, config, linearity, training
from helpers.lib import probes as P
from helpers.lib.device import pick
from helpers.lib.scoring import PerItem
from helpers.lib.trajectory import Trajectory

TERMS = ("weight", "input", "second")
TERM_LABELS = {"weight": "weight term ΔW·x0", "input": "input term W0·Δx", "second": "second-order ΔW·Δx"}
ZERO_SIGNAL = "signal=0"
MAX_GRAD_NORM = 1.0  # transformers' / TRL's default gradient clipping, which helpers.lib.training keeps
SECOND_ORDER_TINY = 0.05  # "tiny": the second-order term's share stays below this everywhere
SFT_VERSION = 1  # `cache` version of the SFT runs (bump when how they are trained changes)


def _finite(*xs) -> bool:
    return all(x is not None and math.isfinite(x) for x in xs)


def _f(x, fmt: str = ".2f") -> str:
    return format(x, fmt) if _finite(x) else "n/a"


# ------------------------------------------------------------------------------------- 1. first- vs second-order terms


def decompose(
    W0: torch.Tensor,
    W1: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    b0: torch.Tensor | None = None,
    b1: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The exact split of Δy = y1 − y0 for y = x Wᵀ + b (x: (N, d_in), W: (d_out, d_in)), in float64.

    Returns weight = x0 ΔWᵀ + Δb, input = Δx W0ᵀ, second = Δx ΔWᵀ, and delta = y1 − y0 computed directly, so
    weight + input + second − delta is float error only.
    """
    W0, W1, x0, x1 = (t.detach().to("cpu", torch.float64) for t in (W0, W1, x0, x1))
    if W0.shape != W1.shape or x0.shape != x1.shape or x0.shape[-1] != W0.shape[-1]:
        raise ValueError(
            f"shapes do not fit y = x Wᵀ: W0 {tuple(W0.shape)}, W1 {tuple(W1.shape)}, "
            f"x0 {tuple(x0.shape)}, x1 {tuple(x1.shape)}"
        )
    dW, dx = W1 - W0, x1 - x0
    y0, y1 = x0 @ W0.T, x1 @ W1.T
    weight = x0 @ dW.T
    if b0 is not None:
        b0, b1 = b0.detach().to("cpu", torch.float64), b1.detach().to("cpu", torch.float64)
        y0, y1, weight = y0 + b0, y1 + b1, weight + (b1 - b0)
    return {"weight": weight, "input": dx @ W0.T, "second": dx @ dW.T, "delta": y1 - y0}


def term_stats(terms: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Norms and shares of one decomposition: Frobenius norms over all tokens, share = norm / (sum of the three
    norms); `second_token_p99` = the 99th percentile over tokens of the per-token second-order share; `residual` =
    ‖weight + input + second − delta‖ / ‖delta‖ (float error of the exact identity)."""
    norms = {k: float(torch.linalg.norm(terms[k])) for k in (*TERMS, "delta")}
    total = sum(norms[k] for k in TERMS)
    per_token = torch.stack([torch.linalg.norm(terms[k], dim=-1) for k in TERMS])
    token_share = per_token[2] / per_token.sum(0).clamp_min(torch.finfo(torch.float64).tiny)
    rest = terms["weight"] + terms["input"] + terms["second"] - terms["delta"]
    out = {f"norm_{k}": norms[k] for k in (*TERMS, "delta")}
    out |= {f"share_{k}": norms[k] / total if total > 0 else math.nan for k in TERMS}
    out["second_token_p99"] = float(torch.quantile(token_share, 0.99)) if token_share.numel() else math.nan
    out["residual"] = float(torch.linalg.norm(rest)) / norms["delta"] if norms["delta"] > 0 else math.nan
    return out


def linear_modules(model, layers: Sequence[int] | None, modules: Sequence[str]) -> dict[str, torch.nn.Linear]:
    """The model's `nn.Linear` modules of the given module types (`helpers.lib.linearity.MODULES` names: q, o, up, down,
    ...) in the given transformer layers (negative = from the end; None = all), by module name."""
    n_layers = int(model.config.num_hidden_layers)
    wanted = None if layers is None else {int(i) % n_layers for i in layers}
    out = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        layer, kind = linearity.parse_name(name + ".weight")
        if kind in modules and layer is not None and (wanted is None or layer in wanted):
            out[name] = mod
    if not out:
        raise ValueError(
            f"no linear module of types {list(modules)} in layers {layers} (the model has {n_layers} layers)"
        )
    return out


def capture_inputs(
    model, probes: P.Probes, names: Iterable[str], tokens: np.ndarray, batch_size: int
) -> dict[str, torch.Tensor]:
    """Inputs x of the named modules at the positions predicting the response tokens `tokens` (flat indices of
    `probes`, sorted), via forward pre-hooks during `helpers.lib.probes.forward`:
    {name: (len(tokens), d_in) float32}."""
    mods = dict(model.named_modules())
    slot = torch.full((probes.n_tokens,), -1, dtype=torch.long)
    slot[torch.as_tensor(tokens, dtype=torch.long)] = torch.arange(len(tokens))
    last: dict[str, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    hooks = [mods[n].register_forward_pre_hook(lambda m, args, n=n: last.__setitem__(n, args[0])) for n in names]
    try:
        for batch, _ in P.forward(model, probes, batch_size):
            dst = slot[batch.flat]
            keep = dst >= 0
            if not keep.any():
                continue
            rows, cols = batch.rows[keep.to(batch.rows.device)], batch.cols[keep.to(batch.cols.device)]
            for n, x in last.items():
                if n not in out:
                    out[n] = torch.empty(len(tokens), x.shape[-1], dtype=torch.float32)
                out[n][dst[keep]] = x[rows, cols].float().cpu()
    finally:
        for h in hooks:
            h.remove()
    return out


@dataclass
class Decomposition:
    """Norms and shares of the three terms per linear module (rows) and checkpoint.

    table: one row per (module, step) — module, layer, type, step, norm_{weight,input,second,delta},
    share_{weight,input,second}, second_token_p99, residual.
    """

    table: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        t = self.table
        return {
            "second_order_share_max": float(t["share_second"].max()),
            "second_order_share_median": float(t["share_second"].median()),
            "second_order_token_p99_max": float(t["second_token_p99"].max()),
            "input_term_share_median": float(t["share_input"].median()),
            "weight_term_share_median": float(t["share_weight"].median()),
            "input_term_dominant_fraction": float((t["share_input"] > t["share_weight"]).mean()),
            "decomposition_residual_max": float(t["residual"].max()),
            "decomposition_rows": len(t),
        }

    def at_step(self, step: int | None = None) -> pd.DataFrame:
        """Shares and norms per module at `step` (default: the last checkpoint)."""
        step = int(self.table["step"].max()) if step is None else step
        cols = [
            "module",
            "layer",
            "type",
            *(f"share_{k}" for k in TERMS),
            *(f"norm_{k}" for k in (*TERMS, "delta")),
            "second_token_p99",
            "residual",
        ]
        return self.table[self.table["step"] == step][cols].set_index("module")

    def by_step(self) -> pd.DataFrame:
        """Median (over modules) share of each term per checkpoint."""
        return self.table.groupby("step")[[f"share_{k}" for k in TERMS]].median()


def decompose_trajectory(
    traj,
    probes: P.Probes,
    layers: Sequence[int] | None = None,
    modules: Sequence[str] = ("q", "o", "up", "down"),
    tokens: int | None = None,
    batch_size: int = 64,
    device=None,
    seed: int = 0,
    steps: Sequence[int] | None = None,
) -> Decomposition:
    """`term_stats` of every chosen linear module between the base (step 0) and each later checkpoint, on the
    response tokens of `probes` (`tokens` of them sampled with `seed`; None = all). One model in memory at a time,
    torch threads as in training (`helpers.lib.training.cpu_threads`: on shared cores one thread is ~10x faster)."""
    with training.cpu_threads():
        return _decompose_trajectory(traj, probes, layers, modules, tokens, batch_size, device, seed, steps)


def _decompose_trajectory(traj, probes, layers, modules, tokens, batch_size, device, seed, steps) -> Decomposition:
    steps = [s for s in (traj.steps if steps is None else steps) if s != traj.steps[0]]
    n = probes.n_tokens
    picked = (
        np.arange(n)
        if tokens is None or tokens >= n
        else np.sort(np.random.default_rng(seed).choice(n, size=int(tokens), replace=False))
    )
    device = device or "cpu"
    base = traj.load_model(traj.steps[0], device=device)
    mods = linear_modules(base, layers, modules)
    W0 = {
        k: (m.weight.detach().cpu().clone(), None if m.bias is None else m.bias.detach().cpu().clone())
        for k, m in mods.items()
    }
    x0 = capture_inputs(base, probes, mods, picked, batch_size)
    del base
    rows = []
    for step in tqdm(steps, desc="decomposition", unit="ckpt"):
        model = traj.load_model(step, device=device)
        mm = dict(model.named_modules())
        x1 = capture_inputs(model, probes, mods, picked, batch_size)
        for name in mods:
            layer, kind = linearity.parse_name(name + ".weight")
            m = mm[name]
            terms = decompose(W0[name][0], m.weight, x0[name], x1[name], W0[name][1], m.bias)
            rows.append({"module": name, "layer": layer, "type": kind, "step": int(step), **term_stats(terms)})
        del model, x1
    settings = {
        "layers": None if layers is None else list(layers),
        "modules": list(modules),
        "tokens": len(picked),
        "share": "Frobenius norm of the term / sum of the three terms' norms",
    }
    return Decomposition(pd.DataFrame(rows), settings)


# ------------------------------------------------------------------------------------------------ 3. noise at an SNR


def noise_scales(level) -> tuple[float, float]:
    """(s, σ) of the per-token weights s + σ·ε for an SNR level: a number of dB (10 log10 s²/σ² = dB, s² + σ² = 1),
    "signal=0" (noise only: 0, 1), or None (plain SFT: 1, 0)."""
    if level is None:
        return 1.0, 0.0
    if level == ZERO_SIGNAL:
        return 0.0, 1.0
    try:
        db = float(level)
    except (TypeError, ValueError):
        raise ValueError(f"SNR level must be a number of dB, {ZERO_SIGNAL!r} or None, got {level!r}") from None
    r = 10.0 ** (db / 10.0)
    return math.sqrt(r / (1.0 + r)), math.sqrt(1.0 / (1.0 + r))


def level_key(level) -> str:
    """Results key of an SNR level: "10", "-5", "2.5", "signal=0"."""
    if level is None or level == ZERO_SIGNAL:
        return "none" if level is None else ZERO_SIGNAL
    x = float(level)
    return str(int(x)) if x.is_integer() else str(x)


def power_db(signal: torch.Tensor, noise: torch.Tensor) -> float:
    """10 log10(P_signal / P_noise) with P = mean of squares (±inf when one power is 0)."""
    ps, pn = float(signal.double().pow(2).mean()), float(noise.double().pow(2).mean())
    with np.errstate(divide="ignore"):
        return float(10 * np.log10(np.float64(ps) / np.float64(pn))) if pn > 0 else math.inf


class NoisyLoss:
    """SFT loss with random-sign token-level noise at a controlled SNR (module docstring, item 3): a
    `compute_loss_func(outputs, labels, num_items_in_batch)` for `helpers.lib.training.train_sft`.

    Signs come from a torch generator seeded with `seed`, one fresh draw per token per call (one call per step).
    """

    def __init__(self, level, seed: int = 0):
        self.level = level
        self.s, self.sigma = noise_scales(level)
        self.generator = torch.Generator().manual_seed(int(seed))

    def signs(self, n: int) -> torch.Tensor:
        return torch.randint(0, 2, (n,), generator=self.generator, dtype=torch.int64).mul_(2).sub_(1)

    def components(self, token_loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(signal terms s·ℓ_i, noise terms σ·ε_i·ℓ_i) of 1-D per-token losses ℓ (fresh signs each call)."""
        eps = self.signs(token_loss.numel()).to(token_loss.device, token_loss.dtype)
        return self.s * token_loss, self.sigma * eps * token_loss

    def __call__(self, outputs, labels, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
        shift_logits, shift_labels = logits[:, :-1].float(), labels[:, 1:].to(logits.device)
        mask = shift_labels != -100
        token_loss = torch.nn.functional.cross_entropy(shift_logits[mask], shift_labels[mask], reduction="none")
        signal, noise = self.components(token_loss)
        n = num_items_in_batch if num_items_in_batch is not None else mask.sum()
        return (signal + noise).sum() / n


# ---------------------------------------------------------------------------------------------- 2-4. extra runs


@dataclass(frozen=True)
class Setting:
    """One training run of the study: RL (a variant of the `rl` section) or SFT (optionally with noise)."""

    label: str
    kind: str  # "rl" | "sft"
    rl: tuple = ()  # rl section changes, as sorted (key, value) pairs
    snr: Any = None  # SFT noise level (None = plain SFT)

    @property
    def rl_changes(self) -> dict:
        return dict(self.rl)


def significant(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant digits: derived learning rates stay readable, and the same rounding as
    notebook 07's design (`helpers.experiments.nb07_robustness`) lets both notebooks share the cached runs."""
    return float(f"{x:.{digits}g}")


def _fmt_lr(x: float) -> str:
    return f"{x:.3g}"


def sgd_lr(cfg, adamw_run: Path) -> float:
    """SGD lr matched to the AdamW run's measured step length (module docstring, item 4), or `origin.sgd_lr`."""
    if cfg.origin.sgd_lr != "auto":
        return float(cfg.origin.sgd_lr)
    traj = Trajectory(adamw_run)
    length = np.mean([distance(traj, a, b) / (b - a) for a, b in zip(traj.steps[:-1], traj.steps[1:])])
    g = float(read_log(adamw_run)["grad_norm"].dropna().clip(upper=MAX_GRAD_NORM).mean())
    if not g > 0:
        warnings.warn(
            f"{adamw_run / 'log.csv'}: no non-zero gradient norm logged; SGD's lr assumes ‖g‖ = "
            f"{MAX_GRAD_NORM} (set origin.sgd_lr to choose it)",
            stacklevel=2,
        )
        g = MAX_GRAD_NORM
    return significant(float(length) / g)


class Study:
    """The extra runs of notebook 03 and their linearity, each built (or reused from the cache) and measured once.

    Every run starts from the embedded default's base model and uses `origin.steps` / `origin.save_every` (null = the
    `rl` section's), so RL and SFT runs are matched step for step.
    """

    def __init__(self, cfg, probes: P.Probes):
        self.cfg, self.probes = cfg, probes
        o = cfg.origin
        self.steps = int(o.steps if o.steps is not None else cfg.rl.steps)
        self.save_every = int(o.save_every if o.save_every is not None else cfg.rl.save_every)
        self._runs: dict[Setting, Path] = {}
        self._measured: dict[Path, dict] = {}
        self._sgd_lr: float | None = None

    # --- the settings of each experiment ------------------------------------------------------------------------
    @property
    def rl(self) -> Setting:
        return Setting(f"RL ({self.cfg.rl.optimizer}, lr {_fmt_lr(self.cfg.rl.lr)})", "rl")

    @property
    def sft(self) -> Setting:
        return Setting("SFT", "sft")

    def noisy(self, level) -> Setting:
        return Setting(f"SFT + noise, {level_key(level)}" + ("" if level == ZERO_SIGNAL else " dB"), "sft", snr=level)

    @property
    def sgd(self) -> Setting:
        lr = self.sgd_lr()
        return Setting(f"RL (sgd, lr {_fmt_lr(lr)})", "rl", rl=(("lr", lr), ("optimizer", "sgd")))

    def adamw_at(self, scale: float) -> Setting:
        if scale == 1:
            return Setting(f"RL (adamw, lr {_fmt_lr(self.cfg.rl.lr)})", "rl", rl=(("optimizer", "adamw"),))
        lr = significant(float(self.cfg.rl.lr) * float(scale))
        return Setting(f"RL (adamw, lr {_fmt_lr(lr)})", "rl", rl=(("lr", lr), ("optimizer", "adamw")))

    def experiments(self) -> dict[str, list[Setting]]:
        o = self.cfg.origin
        return {
            "sft_vs_rl": [self.rl, self.sft],
            "noise": [self.sft, *(self.noisy(x) for x in o.snr_db)],
            "optimizer": [self.adamw_at(1), self.sgd],
            "lr": [self.adamw_at(x) for x in o.lr_scales],
        }

    # --- building runs ------------------------------------------------------------------------------------------
    def _rl_cfg(self, setting: Setting):
        changes = {"rl.steps": self.steps, "rl.save_every": self.save_every}
        return config.derive(self.cfg, changes | {f"rl.{k}": v for k, v in setting.rl_changes.items()})

    def run(self, setting: Setting) -> Path:
        """The run directory of `setting` (trained on a cache miss)."""
        if setting not in self._runs:
            if setting.kind == "rl":
                self._runs[setting] = training.embedded_trajectory(self._rl_cfg(setting))
            else:
                self._runs[setting] = self._sft_run(setting.snr)
        return self._runs[setting]

    def cached(self, setting: Setting) -> bool:
        """Whether the run of `setting` is built (`run` would not train)."""
        if setting.kind == "rl":
            return training.cached_trajectory(self._rl_cfg(setting)) is not None
        return cache.cached("sft-run", self._sft_key(setting.snr), SFT_VERSION) is not None

    def build(self, workers: int = 2) -> None:
        """Train every missing run of `experiments()`, `workers` at a time, each in its own single-threaded process
        (`training.in_processes`). The AdamW run at rl.lr comes first: the SGD lr is derived from it."""
        self.run(self.adamw_at(1))
        todo = list(dict.fromkeys(s for v in self.experiments().values() for s in v))
        missing = [s for s in todo if not self.cached(s)]
        training.in_processes(_build, [(self.cfg, s) for s in missing], workers)

    def sgd_lr(self) -> float:
        if self._sgd_lr is None:
            self._sgd_lr = sgd_lr(self.cfg, self.run(self.adamw_at(1)))
        return self._sgd_lr

    def sft_params(self) -> dict:
        """Step count, spacing, lr, batch and optimizer of every SFT run (matched to the RL run unless set)."""
        s, rl = self.cfg.origin.sft, self.cfg.rl
        return {
            "steps": self.steps,
            "save_every": self.save_every,
            "lr": float(s.lr if s.lr is not None else rl.lr),
            "batch": int(s.batch if s.batch is not None else int(rl.batch) * int(rl.rollouts)),
            "optimizer": rl.optimizer,
            "demonstrations": s.demonstrations,
        }

    def sft_task_cfg(self):
        """The config SFT runs read their demonstrations from: `correct` = the task's reference solutions without the
        slips the base learned (`task.slip` 0: the same problems, every solution right, the behaviour RL is rewarded
        for); `task` = the base's own demonstrations, slips included."""
        kind = self.cfg.origin.sft.demonstrations
        if kind not in ("correct", "task"):
            raise ValueError(f"{self.cfg.source}: origin.sft.demonstrations must be correct or task, not {kind!r}")
        return (
            config.derive(self.cfg, {"task.slip": 0.0})
            if kind == "correct" and self.cfg.task.kind == "arithmetic"
            else self.cfg
        )

    def _noise(self, level) -> dict:
        return {"snr_db": level_key(level), "noise_seed": int(self.cfg.origin.noise_seed)} if level is not None else {}

    def _sft_key(self, level) -> dict:
        return training.run_key(self.cfg, ("task", "model", "sft", "eval")) | self.sft_params() | self._noise(level)

    def _sft_run(self, level) -> Path:
        """The SFT run at noise `level` (cached as `sft-run`; build.json records its SFT parameters and noise)."""
        p, noise = self.sft_params(), self._noise(level)

        def build(tmp: Path) -> dict:
            base = training.base_model(self.cfg)
            loss = NoisyLoss(level, int(self.cfg.origin.noise_seed)) if level is not None else None
            cfg = config.derive(
                self.sft_task_cfg(), {"sft.optimizer": p["optimizer"], "sft.lr": p["lr"], "sft.batch": p["batch"]}
            )
            training.train_sft(cfg, base, tmp, steps=p["steps"], save_every=p["save_every"], compute_loss_func=loss)
            return {**p, **noise}

        return cache.cached_build("sft-run", self._sft_key(level), build, SFT_VERSION)

    # --- measuring ----------------------------------------------------------------------------------------------
    def measure(self, setting: Setting) -> dict:
        """Weight and token R² (median with its interval, quartiles, the values), relative displacement
        ‖θ_T − θ_0‖ / ‖θ_0‖, held-out accuracy at the first and last checkpoint, mean training reward over the first
        and last tenth of the steps (RL), training seconds (`measure_run`)."""
        path = self.run(setting)
        if path not in self._measured:
            self._measured[path] = measure_run(self.cfg, path, self.probes)
        return self._measured[path]

    def table(self, experiments: str | Sequence[str] | None = None) -> pd.DataFrame:
        """Measured rows (weight / token R² median and quartiles, ...) of the settings of one experiment, several, or
        all (None); a run shared by several experiments is one row, its `experiment` naming them all."""
        names = (
            list(self.experiments())
            if experiments is None
            else ([experiments] if isinstance(experiments, str) else list(experiments))
        )
        rows: dict[str, dict] = {}
        for name in names:
            for s in self.experiments()[name]:
                if s.label in rows:
                    rows[s.label]["experiment"] += f", {name}"
                else:
                    rows[s.label] = {"setting": s.label, "experiment": name, **self.measure(s)}
        return pd.DataFrame(list(rows.values())).set_index("setting")


def _build(cfg, setting: Setting) -> Path:
    """One run of the study, for `Study.build`'s worker processes."""
    return Study(cfg, probes=None).run(setting)


def distance(traj, a: int, b: int) -> float:
    """‖θ_b − θ_a‖ over all tensors, streamed one tensor at a time (float64)."""
    return math.sqrt(
        sum(
            float((traj.tensor(n, b, torch.float64) - traj.tensor(n, a, torch.float64)).pow(2).sum())
            for n in traj.names
        )
    )


def displacement(traj) -> float:
    """‖θ_T − θ_0‖ / ‖θ_0‖ over all tensors (first vs last checkpoint)."""
    first = traj.steps[0]
    norm = math.sqrt(sum(float(traj.tensor(n, first, torch.float64).pow(2).sum()) for n in traj.names))
    return distance(traj, first, traj.steps[-1]) / norm


def measure_run(cfg, run_dir: Path, probes: P.Probes) -> dict:
    """The linearity numbers of one run directory (see `Study.measure`), with `helpers.lib.training.cpu_threads`.
    `{weight,token}_r2_median_ci` are the `claims.level` exact bootstrap intervals of the medians and
    `{weight,token}_r2_values` the R² of every kept entry / token (`scoring.PerItem`, kept out of results)."""
    with training.cpu_threads():
        return _measure_run(cfg, run_dir, probes)


def _measure_run(cfg, run_dir: Path, probes: P.Probes) -> dict:
    traj = Trajectory(run_dir)
    st = C.Settings.of(cfg)
    wl = linearity.weight_r2(traj, seed=cfg.seed, progress=False, **cfg.weight_linearity.entries)
    w = weight_linearity.summary(wl, st.r2_threshold, st.level)
    o = cfg.output_linearity
    forced = P.over_trajectory(traj, probes, batch_size=int(o.batch_size), device=pick(cfg.device))
    ol = output_linearity.analyse(forced, probes, min_change=float(o.min_change), r2_threshold=st.r2_threshold)
    t = ol.summary(st.level)
    log = read_log(run_dir)
    acc, reward = log["heldout_accuracy"].dropna(), log["reward"].dropna()
    tenth = max(1, len(reward) // 10)
    seconds = float(cache.build_info(run_dir).get("seconds", math.nan))
    return {
        "weight_r2_median": w["median"],
        "weight_r2_q1": w["q1"],
        "weight_r2_q3": w["q3"],
        "weight_r2_median_ci": w["median_ci"],
        "weight_r2_values": PerItem(wl.values),
        "weight_entries": w["kept"],
        "token_r2_median": t["median"],
        "token_r2_q1": t["q1"],
        "token_r2_q3": t["q3"],
        "token_r2_median_ci": t["median_ci"],
        "token_r2_values": PerItem(ol.kept["r2"].to_numpy()),
        "tokens_kept": t["kept"],
        "displacement": displacement(traj),
        "heldout_first": float(acc.iloc[0]),
        "heldout_last": float(acc.iloc[-1]),
        "reward_first": float(reward.iloc[:tenth].mean()) if len(reward) else math.nan,
        "reward_last": float(reward.iloc[-tenth:].mean()) if len(reward) else math.nan,
        "steps": int(traj.steps[-1]),
        "checkpoints": len(traj.steps),
        "train_seconds": seconds,
    }


def fig2_table(table: pd.DataFrame) -> pd.DataFrame:
    """The Fig-2-style view: median and IQR (q1 – q3) of weight and token R², displacement, held-out accuracy, and
    (RL) training reward."""
    iqr = lambda a, b: [f"{x:.2f} – {y:.2f}" for x, y in zip(table[a], table[b])]  # noqa: E731
    return pd.DataFrame(
        {
            "experiment": table["experiment"],
            "weight R² median": table["weight_r2_median"].round(3),
            "weight R² IQR": iqr("weight_r2_q1", "weight_r2_q3"),
            "token R² median": table["token_r2_median"].round(3),
            "token R² IQR": iqr("token_r2_q1", "token_r2_q3"),
            "‖θ_T−θ_0‖/‖θ_0‖": table["displacement"].map(lambda x: f"{x:.2e}"),
            "held-out acc (first → last)": [
                f"{a:.2f} → {b:.2f}" for a, b in zip(table["heldout_first"], table["heldout_last"])
            ],
            "reward (first → last tenth)": [
                f"{_f(a)} → {_f(b)}" if _finite(a) else "—" for a, b in zip(table["reward_first"], table["reward_last"])
            ],
        },
        index=table.index,
    )


# --------------------------------------------------------------------------------------------------- results, claims

NAN_INTERVAL = (math.nan, math.nan)


def _numbers(measured: Mapping) -> dict:
    """A `Study.measure` dict without its per-entry values (for results JSON)."""
    return {k: v for k, v in measured.items() if not isinstance(v, PerItem)}


def results(study: Study, dec: Decomposition) -> dict:
    """The keys notebook 03 saves, measured."""
    ex = study.experiments()
    med = lambda s, space="weight": study.measure(s)[f"{space}_r2_median"]  # noqa: E731
    o = study.cfg.origin
    return {
        **dec.summary(),
        "rl_weight_r2_median": med(study.rl),
        "sft_weight_r2_median": med(study.sft),
        "rl_token_r2_median": med(study.rl, "token"),
        "sft_token_r2_median": med(study.sft, "token"),
        "snr_weight_r2_median": {level_key(x): med(study.noisy(x)) for x in o.snr_db},
        "snr_token_r2_median": {level_key(x): med(study.noisy(x), "token") for x in o.snr_db},
        "sgd_weight_r2_median": med(study.sgd),
        "adamw_weight_r2_median": med(study.adamw_at(1)),
        "sgd_token_r2_median": med(study.sgd, "token"),
        "adamw_token_r2_median": med(study.adamw_at(1), "token"),
        "sgd_lr": study.sgd_lr(),
        **{
            f"{name}_{k}": study.measure(s)[k]
            for name, s in (("sgd", study.sgd), ("adamw", study.adamw_at(1)))
            for k in ("displacement", "heldout_first", "heldout_last", "reward_first", "reward_last")
        },
        "lr_weight_r2_median": {_fmt_lr(float(study.cfg.rl.lr) * x): med(study.adamw_at(x)) for x in o.lr_scales},
        "settings": {s.label: _numbers(study.measure(s)) for v in ex.values() for s in v},
        "sft_params": study.sft_params(),
        "decomposition_settings": dec.settings,
    }


def claims(study: Study, dec: Decomposition) -> list[C.Claim]:
    """Notebook 03's claims (`helpers.experiments.claims`): the decomposition, then SFT vs RL, noise, optimizer and
    lr."""
    st, o, m = C.Settings.of(study.cfg), study.cfg.origin, study.measure
    return [
        input_term_dominates(dec, st),
        second_order_tiny(dec),
        rl_linear(m(study.rl), st),
        *rl_more_linear_than_sft(m(study.rl), m(study.sft), st),
        noise_raises_sft_linearity(m(study.sft), {level_key(x): m(study.noisy(x)) for x in o.snr_db}, st),
        sgd_persists(m(study.sgd), m(study.adamw_at(1)), study.sgd_lr(), st),
        lr_linear({_fmt_lr(float(study.cfg.rl.lr) * x): m(study.adamw_at(x)) for x in o.lr_scales}, st),
    ]


def _pct(level: float) -> str:
    return f"{100 * level:.4g} %"


def _shares(dec: Decomposition) -> pd.DataFrame:
    """The module × checkpoint cells whose shares are defined (Δy ≠ 0)."""
    return dec.table.dropna(subset=["share_input", "share_weight", "share_second"])


def _median_gap(cells: np.ndarray) -> float:
    """median(input share) − median(weight share) of an (n, 2) array of cells."""
    return float(np.median(cells[:, 0]) - np.median(cells[:, 1]))


def input_term_dominates(dec: Decomposition, st: C.Settings, seed: int = 0) -> C.Claim:
    """Input-term share median − weight-term share median over the module × checkpoint cells, with a bootstrap over
    modules (each resampled module brings all its checkpoints: a module's cells are not independent)."""
    t = _shares(dec)
    groups = [g[["share_input", "share_weight"]].to_numpy() for _, g in t.groupby("module")]
    gap, interval = math.nan, NAN_INTERVAL
    if groups:
        gap = _median_gap(np.concatenate(groups))
        rng = np.random.default_rng(seed)
        boot = [
            _median_gap(np.concatenate([groups[i] for i in rng.integers(0, len(groups), len(groups))]))
            for _ in range(st.bootstrap)
        ]
        a = 1 - st.level
        interval = tuple(float(q) for q in np.quantile(boot, [a / 2, 1 - a / 2]))
    return C.Claim(
        "nb03.input_term_dominates",
        "the input term W0·Δx dominates Δy (input − weight share median)",
        paper.get("input_term_dominates"),
        gap,
        interval,
        C.above(0),
        f"{_pct(st.level)} bootstrap over the {len(groups)} modules (each with all its checkpoints), "
        f"{st.bootstrap} resamples",
        f"input {t['share_input'].median():.3f} vs weight {t['share_weight'].median():.3f} over {len(t)} cells"
        if len(t)
        else "no output changed (Δy = 0)",
    )


def second_order_tiny(dec: Decomposition) -> C.Claim:
    """The largest second-order share over all cells, below `SECOND_ORDER_TINY`; the maximum is the claim itself."""
    t = _shares(dec)
    top = float(t["share_second"].max()) if len(t) else math.nan
    return C.Claim(
        "nb03.second_order_tiny",
        f"the second-order term ΔW·Δx is tiny (largest share < {SECOND_ORDER_TINY})",
        paper.get("second_order_tiny"),
        top,
        (top, top),
        C.below(SECOND_ORDER_TINY),
        f"maximum over all {len(t)} module × checkpoint cells; no sampling interval — the interval is the point",
        f"median share {t['share_second'].median():.3f}, largest per-token 99th percentile "
        f"{t['second_token_p99'].max():.3f}"
        if len(t)
        else "no output changed (Δy = 0)",
    )


def _median(m: Mapping, space: str = "weight") -> tuple[float, tuple[float, float]]:
    """(median, interval) of one measured run in weight or token space."""
    return float(m[f"{space}_r2_median"]), tuple(m[f"{space}_r2_median_ci"])


def _ci(x: float, interval: tuple[float, float]) -> str:
    return f"{x:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _exact(st: C.Settings, level: float | None = None) -> str:
    return f"exact bootstrap interval of the median at {_pct(st.level if level is None else level)}"


def rl_linear(rl: Mapping, st: C.Settings) -> C.Claim:
    """The RL run's weight R² median above the bar (`claims.r2_threshold`)."""
    med, interval = _median(rl)
    return C.Claim(
        "nb03.rl_linear",
        f"RL weight R² median above the bar ({st.r2_threshold:g})",
        paper.get("rl_r2_range"),
        med,
        interval,
        C.above(st.r2_threshold),
        f"{_exact(st)} over the run's {rl.get('weight_entries', 'kept')} weight entries",
    )


def rl_more_linear_than_sft(rl: Mapping, sft: Mapping, st: C.Settings) -> list[C.Claim]:
    """RL − SFT R² median in weight and in token space."""
    out = []
    for space, key in (("weight", "sft_weight_r2"), ("token", "sft_token_r2")):
        (a, ai), (b, bi) = _median(rl, space), _median(sft, space)
        d, interval = C.difference(a, ai, b, bi)
        out.append(
            C.Claim(
                f"nb03.rl_more_linear_than_sft_{space}",
                f"RL more linear than SFT ({space} R² median, RL − SFT)",
                paper.get(key),
                d,
                interval,
                C.above(0, tolerance=st.r2_margin),
                f"RL − SFT of each run's {_exact(st)}, half-widths in quadrature",
                f"RL {_ci(a, ai)}, SFT {_ci(b, bi)}",
            )
        )
    return out


def noise_raises_sft_linearity(sft: Mapping, noisy: Mapping[str, Mapping], st: C.Settings) -> C.Claim:
    """The most linear noisy SFT run (weight R² median, peak over the SNR levels) − plain SFT. The peak is a best of
    K, so each level's interval is made at the Bonferroni level `claims.bonferroni(level, K)`."""
    k = len(noisy)
    level = C.bonferroni(st.level, k)
    medians = {key: float(m["weight_r2_median"]) for key, m in noisy.items()}
    finite = {key: v for key, v in medians.items() if math.isfinite(v)}
    base, base_interval = _median(sft)
    d, interval, detail = math.nan, NAN_INTERVAL, "no noisy SFT run has a weight R²"
    if finite:
        peak = max(finite, key=finite.get)
        peak_interval = C.median_interval(noisy[peak]["weight_r2_values"].values, level)
        d, interval = C.difference(finite[peak], peak_interval, base, base_interval)
        detail = (
            f"peak at {peak}{'' if peak == ZERO_SIGNAL else ' dB'}: {_ci(finite[peak], peak_interval)}; plain "
            f"SFT {_ci(base, base_interval)}"
        )
    return C.Claim(
        "nb03.noise_raises_sft_linearity",
        "token-level noise raises SFT's weight R² median (peak over SNR levels − plain SFT)",
        paper.get("noise_peak"),
        d,
        interval,
        C.above(0, tolerance=st.r2_margin),
        f"best of {k} SNR levels: each level's {_exact(st, level)} (Bonferroni over {k} candidates), "
        f"minus plain SFT's at {_pct(st.level)}, half-widths in quadrature",
        detail,
    )


def sgd_persists(sgd: Mapping, adamw: Mapping, lr: float, st: C.Settings) -> C.Claim:
    """Non-inferiority: SGD's weight R² median − AdamW's is above −r2_margin."""
    (a, ai), (b, bi) = _median(sgd), _median(adamw)
    d, interval = C.difference(a, ai, b, bi)
    return C.Claim(
        "nb03.sgd_persists",
        "linearity persists with SGD (weight R² median, SGD − AdamW)",
        paper.get("sgd_persists"),
        d,
        interval,
        C.above(-st.r2_margin),
        f"SGD − AdamW of each run's {_exact(st)}, half-widths in quadrature; "
        f"holds if not worse by more than {st.r2_margin:g}",
        f"SGD (lr {lr:.3g}) {_ci(a, ai)}, AdamW {_ci(b, bi)}; SGD held-out accuracy "
        f"{_f(sgd['heldout_first'])} → {_f(sgd['heldout_last'])}, reward {_f(sgd['reward_first'])} → "
        f"{_f(sgd['reward_last'])}",
    )


def lr_linear(by_lr: Mapping[str, Mapping], st: C.Settings) -> C.Claim:
    """The least linear lr's weight R² median above the bar: interval [min of lows, min of highs] (every lr's
    interval above the bar ⇔ the minimum's is; NaN when an lr has none)."""
    runs = {lr: _median(m) for lr, m in by_lr.items()}
    if not runs:
        raise ValueError("lr_linear needs at least one learning rate (origin.lr_scales is empty)")
    table = np.array([(med, *iv) for med, iv in runs.values()], dtype=np.float64)  # NaN propagates: inconclusive
    low, interval = float(table[:, 0].min()), (float(table[:, 1].min()), float(table[:, 2].min()))
    return C.Claim(
        "nb03.lr_linear",
        f"RL linear at every learning rate (least linear lr's weight R² median above {st.r2_threshold:g})",
        paper.get("lr_linear"),
        low,
        interval,
        C.above(st.r2_threshold),
        f"each lr's {_exact(st)}; the least linear lr's [min of the lows, min of the highs]",
        "; ".join(f"lr {lr}: {_ci(med, iv)}" for lr, (med, iv) in runs.items()),
    )


# ----------------------------------------------------------------------------------------------------------- figures


def plot_decomposition(dec: Decomposition):
    """(a) norms of the three terms and of Δy per module at the last checkpoint; (b) median share per checkpoint."""
    last = dec.at_step()
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    x = np.arange(len(last))
    width = 0.2
    for i, k in enumerate((*TERMS, "delta")):
        a.bar(
            x + (i - 1.5) * width,
            last[f"norm_{k}"],
            width,
            label=TERM_LABELS.get(k, "Δy"),
            color=f"C{i}" if k != "delta" else "0.4",
        )
    a.set_yscale("log")
    a.set_xticks(x, [f"{int(r.layer)}.{r.type}" for r in last.itertuples()], rotation=60, fontsize=8)
    a.set(
        xlabel="layer.module",
        ylabel="Frobenius norm over tokens",
        title=f"Terms of Δy at step {int(dec.table['step'].max())}",
    )
    a.legend(fontsize=8)
    t = dec.table
    for i, k in enumerate(TERMS):
        g = t.groupby("step")[f"share_{k}"]
        b.plot(g.median().index, g.median(), "o-", color=f"C{i}", label=TERM_LABELS[k])
        b.fill_between(g.min().index, g.min(), g.max(), color=f"C{i}", alpha=0.15)
    b.set(ylim=(0, 1), xlabel="step", ylabel="share of Σ‖term‖", title="Share per checkpoint (median, min–max)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_settings(table: pd.DataFrame, title: str, cfg):
    """Median and IQR of weight and token R² per setting (LIN Fig. 2 style), the R² bar of `cfg`."""
    fig, ax = plt.subplots(figsize=(max(6.4, 1.3 * len(table) + 2), 4.0))
    x = np.arange(len(table))
    for i, (space, label) in enumerate((("weight", "weights"), ("token", "token log-probs"))):
        med, q1, q3 = (table[f"{space}_r2_{k}"].to_numpy(float) for k in ("median", "q1", "q3"))
        ax.errorbar(
            x + (i - 0.5) * 0.2,
            med,
            yerr=[med - q1, q3 - med],
            fmt="o",
            capsize=4,
            color=f"C{i}",
            label=f"{label} (median, IQR)",
        )
    ax.axhline(C.r2_threshold(cfg), color="k", ls="--", lw=1)
    ax.set_xticks(x, table.index, rotation=20, ha="right")
    ax.set(xlim=(-0.5, len(table) - 0.5), ylim=(0, 1.02), ylabel="R² vs step", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_snr(study: Study):
    """Weight and token R² (median, IQR band) against SNR; plain SFT at the right, zero signal at the left, RL as a
    dashed line (LIN v3 Fig. 3)."""
    levels = [x for x in study.cfg.origin.snr_db if x != ZERO_SIGNAL]
    dbs = np.array(sorted(float(x) for x in levels))
    lo, hi = (dbs.min(), dbs.max()) if len(dbs) else (0.0, 0.0)
    gap = max(5.0, (hi - lo) / 6)
    pos = {float(x): float(x) for x in levels}
    ticks = {hi + gap: "no noise"}
    if ZERO_SIGNAL in study.cfg.origin.snr_db:
        ticks[lo - gap] = ZERO_SIGNAL
    settings = [(hi + gap, study.sft)] + [(pos[float(x)], study.noisy(x)) for x in levels]
    if ZERO_SIGNAL in study.cfg.origin.snr_db:
        settings.append((lo - gap, study.noisy(ZERO_SIGNAL)))
    settings.sort(key=lambda p: p[0])
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs = np.array([p for p, _ in settings])
    for i, space in enumerate(("weight", "token")):
        m = [study.measure(s) for _, s in settings]
        med, q1, q3 = (np.array([r[f"{space}_r2_{k}"] for r in m]) for k in ("median", "q1", "q3"))
        ax.plot(xs, med, "o-", color=f"C{i}", label=f"SFT {space} R² (median, IQR)")
        ax.fill_between(xs, q1, q3, color=f"C{i}", alpha=0.15)
        ax.axhline(
            study.measure(study.rl)[f"{space}_r2_median"], color=f"C{i}", ls=":", lw=1.2, label=f"RL {space} R² median"
        )
    ax.axhline(C.r2_threshold(study.cfg), color="k", ls="--", lw=1)
    tick_pos = sorted(set(dbs.tolist()) | set(ticks))
    ax.set_xticks(tick_pos, [ticks.get(p, f"{p:g}") for p in tick_pos], rotation=30)
    ax.set(ylim=(0, 1.02), xlabel="SNR (dB)", ylabel="R² vs step", title="Noise injection into SFT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
