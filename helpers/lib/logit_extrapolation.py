"""Logit extrapolation (LIN §4.2.1): sample from l_{t'} = l_{t0} + α (l_{t1} − l_{t0}) at every decoding step.

    sampler = make_sampler((dir_t0, dir_t1), alpha=1.5)      # or backends.make_sampler("logit-extrapolation", ...)
    scoring.evaluate(sampler, items, k=8, temperature=0.6, top_p=0.95)

Two models decode side by side, each with its own KV cache (finished rows are dropped from both). The mixing is done in
fp32 with `torch.lerp`, so α = 1 gives the t1 logits bit for bit; temperature then top-p are applied to the mixed logits.
Decoding is the hf sampler's own loop (`sampling.decode`) with a different next-token-logits source, so with α = 1
this sampler reproduces the t1 model's samples exactly for a fixed seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from helpers.lib.models import load_model
from helpers.lib.sampling import HFSampler, ModelLogits


class MixedLogits:
    """Next-token logits l_{t0} + α (l_{t1} − l_{t0}) (fp32) of two models, each with its own KV cache."""

    def __init__(self, model_t0, model_t1, alpha: float):
        self.pair = (ModelLogits(model_t0), ModelLogits(model_t1))
        self.alpha = float(alpha)

    def _mix(self, l0: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
        return torch.lerp(l0, l1, self.alpha)

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._mix(*(m.start(input_ids, attention_mask) for m in self.pair))

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._mix(*(m.step(tokens, attention_mask) for m in self.pair))

    def keep(self, rows: torch.Tensor) -> None:
        for m in self.pair:
            m.keep(rows)


class LogitExtrapolationSampler(HFSampler):
    """A `Sampler` drawing from the logit-extrapolated policy of two checkpoints; `last_entropy` is the mean token
    entropy of the mixed (temperature-scaled) distributions."""

    def __init__(self, model_t0, model_t1, tokenizer, alpha: float, batch_size: int = 512):
        super().__init__(model_t1, tokenizer, batch_size)
        if model_t0.config.vocab_size != model_t1.config.vocab_size:
            raise ValueError(f"logit extrapolation needs one vocabulary (vocab sizes {model_t0.config.vocab_size} "
                             f"and {model_t1.config.vocab_size})")
        self.model_t0, self.alpha = model_t0, float(alpha)

    def logits_source(self) -> MixedLogits:
        return MixedLogits(self.model_t0, self.model, self.alpha)


def make_sampler(models, alpha: float, tokenizer=None, device: str = "auto", batch_size: int = 512,
                 allow_pickle: bool = False, **_) -> LogitExtrapolationSampler:
    """The sampler of a (t0, t1) pair of model directories, or of loaded models with `tokenizer=` (t1's is used)."""
    m0, m1 = models
    if isinstance(m1, (str, Path)):
        m1, tokenizer = load_model(m1, device, allow_pickle=allow_pickle)
    if isinstance(m0, (str, Path)):
        m0, _ = load_model(m0, next(m1.parameters()).device, allow_pickle=allow_pickle)
    if tokenizer is None:
        raise ValueError("logit-extrapolation sampler: pass `tokenizer=` along with already loaded models")
    return LogitExtrapolationSampler(m0, m1, tokenizer, alpha, batch_size)


# ---------------------------------------------------------------------------------------------------------------------
# Notebook 04: the Table 1 analogue and entropy vs step

def logit_table(traj, cfg, scorer, real):
    """Scores of the logit-extrapolated sampler for each α of `extrapolation.logit_alphas` (t0, t1 from
    `extrapolation.logit_pair`); t' = t0 + α (t1 − t0), and `real_*` = the real checkpoint at t' when the run has one."""
    import pandas as pd

    from helpers.lib.extrapolation import snap_pair

    xc = cfg.extrapolation
    t0, t1 = snap_pair(traj, xc.logit_pair)
    real_at = real.set_index("step")
    rows = []
    for alpha in xc.logit_alphas:
        target = t0 + float(alpha) * (t1 - t0)
        target = int(target) if float(target).is_integer() else target
        have = target in real_at.index
        rows.append({"alpha": float(alpha), "t0": t0, "t1": t1, "target_step": target,
                     **scorer.logit_extrapolated(traj.path(t0), traj.path(t1), alpha),
                     "real_avg_at_k": real_at.avg_at_k.get(target, float("nan")) if have else float("nan"),
                     "real_entropy": real_at.entropy.get(target, float("nan")) if have else float("nan")})
    return pd.DataFrame(rows)


def table1(real, logit):
    """The paper's Table 1 analogue: standard RL (last checkpoint), each logit-extrapolated sampler, and under it the
    real checkpoint at its t' when the run has one (for α = 1: θ_t1, which the α = 1 row must equal —
    `check_alpha_one`)."""
    import pandas as pd

    cols = ["avg_at_k", "pass_at_k", "entropy", "greedy_accuracy"]
    last = real.iloc[-1]
    rows = [{"model": f"standard RL (last checkpoint, step {int(last.step)})", "step": int(last.step),
             **last[cols].to_dict()}]
    for _, r in logit.iterrows():
        rows.append({"model": _row_name(r), "step": r.target_step, **r[cols].to_dict()})
        if r.real_avg_at_k == r.real_avg_at_k:
            rows.append({"model": f"  real checkpoint at t' = {r.target_step:g}", "step": r.target_step,
                         **real[real.step == r.target_step].iloc[0][cols].to_dict()})
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
        print(f"α = 1 check ({backend} backend, not the hf loop of the logit sampler, so not asserted): {names}: "
              + ", ".join(f"{k} {v:+.4f}" for k, v in diff.items()))
        return diff
    unequal = [c for c in CHECKED if row[c] != t1[c]] + ([] if np.array_equal(a, b) else ["per-item scores"])
    if unequal:
        raise ValueError(f"α = 1 check failed: {names} differ in {', '.join(unequal)} (α = 1 − real: "
                         + ", ".join(f"{k} {v:+.4f}" for k, v in diff.items()) + "); the same hf decode loop and "
                         "seed should give identical samples")
    print(f"α = 1 check passed: {names} are equal ({', '.join(CHECKED)} and every item's score)")
    return diff


def _row_name(r) -> str:
    return f"logit extrapolation α = {r.alpha:g} (t0 = {r.t0:g}, t1 = {r.t1:g})"


def plot_logit(real, logit, curve):
    """Two panels against the step: held-out avg@k and the mean token entropy of the sampled distributions, for the
    real checkpoints, the logit-extrapolated samplers (at t') and the weight-extrapolated checkpoints."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, col, label in ((axes[0], "avg_at_k", "held-out avg@k"), (axes[1], "entropy", "mean token entropy (nats)")):
        ax.plot(real.step, real[col], "o-", color="gray", ms=3, label="real RL checkpoints")
        ax.plot(logit.target_step, logit[col], "D", color="C3", ms=7, label="logit extrapolation (at t')")
        for _, r in logit.iterrows():
            ax.annotate(f"α={r.alpha:g}", (r.target_step, r[col]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.plot(curve.target_step, curve[col], "s", color="C0", mfc="none", label="weight extrapolation (at t')")
        ax.axvline(real.step.iloc[-1], color="k", ls=":", lw=1)
        ax.set(xlabel="step (t' for extrapolations)", ylabel=label)
    axes[0].set_title("Accuracy")
    axes[1].set_title("Entropy of the sampled distributions")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig
