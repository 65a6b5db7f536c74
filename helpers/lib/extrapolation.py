"""Two-point weight extrapolation (LIN §4.2.2): W_{t'} = W_{t0} + β (W_{t1} − W_{t0}), β = (t' − t0) / (t1 − t0).

Computed tensor by tensor in fp32 with `torch.lerp` (exact at β = 0 and β = 1) and saved in the checkpoint's dtype;
only one tensor pair is in memory at a time. Norm policy:

- ``extrapolate``  — every tensor is extrapolated (ExPO);
- ``copy-from-t1`` — norm weights are copied from θ_{t1}, everything else (embeddings, lm_head, biases) is extrapolated
  (the paper's reference code).

A tied lm_head follows the extrapolated embedding. Command line::

    python -m helpers.lib.extrapolation --from A --to B --target-step T --out DIR [--norms extrapolate|copy-from-t1]
                                    [--from-step t0 --to-step t1] [--overwrite]

The steps of A and B come from their trainer_state.json or directory names unless given. `--overwrite` replaces only
an earlier extrapolation (a directory holding `extrapolation.json`), never an input or a directory holding one. The
second half of the module holds notebook 04's scoring, curves and claims (`Measured`, `claims`, `results`).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from helpers.experiments import claims as claims_mod
from helpers.lib import cli
from helpers.experiments import paper
from helpers.lib.backends import make_sampler
from helpers.lib.scoring import CachedScorer, PerItem
from helpers.lib.cache import dir_fingerprint

if TYPE_CHECKING:
    import pandas as pd

NORM_POLICIES = ("copy-from-t1", "extrapolate")
FP32_MAX = float(torch.finfo(torch.float32).max)  # the weights are extrapolated in float32
_NORM_MODULE = re.compile(r"(norm|^ln(_|$)|^ln\d)", re.IGNORECASE)


def coefficient(t0: float, t1: float, target_step: float) -> float:
    """β = (t' − t0) / (t1 − t0): the multiple of the observed update (β > 1 extrapolates)."""
    if t1 == t0:
        raise ValueError(f"extrapolation needs two different steps (both are {t0})")
    beta = (target_step - t0) / (t1 - t0)
    if not abs(beta) <= FP32_MAX:  # also NaN
        raise ValueError(f"β = {beta:g} (t0 = {t0}, t1 = {t1}, target step {target_step:g}) is beyond float32's range "
                         f"(|β| ≤ {FP32_MAX:.3g}), in which the weights are extrapolated; choose a nearer target step")
    return beta


def is_norm(name: str) -> bool:
    """A normalisation weight/bias (`input_layernorm.weight`, `model.norm.weight`, `q_norm`, GPT-2 `ln_f`, ...)."""
    parts = name.split(".")
    return len(parts) >= 2 and bool(_NORM_MODULE.search(parts[-2]))


def lerp(w0: torch.Tensor, w1: torch.Tensor, beta: float) -> torch.Tensor:
    """W_{t0} + β (W_{t1} − W_{t0}) in fp32, returned in W_{t1}'s dtype; β = 0 / 1 give the endpoints bit for bit."""
    if w0.shape != w1.shape:
        raise ValueError(f"shape mismatch {tuple(w0.shape)} vs {tuple(w1.shape)}")
    return torch.lerp(w0.to(torch.float32), w1.to(torch.float32), float(beta)).to(w1.dtype)


def extrapolated_tensors(traj, t0: int, t1: int, beta: float, norms: str = "copy-from-t1"
                         ) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the extrapolated checkpoint, one at a time, in the trajectory's canonical order."""
    if norms not in NORM_POLICIES:
        raise ValueError(f"norms: unknown policy {norms!r} (known: {', '.join(NORM_POLICIES)})")
    for name in traj.names:
        w1 = traj.tensor(name, t1)
        if not w1.is_floating_point() or (norms == "copy-from-t1" and is_norm(name)):
            yield name, w1
            continue
        try:
            yield name, lerp(traj.tensor(name, t0), w1, beta)
        except ValueError as e:
            raise ValueError(f"{traj.path(t0)} vs {traj.path(t1)}: tensor {name}: {e}") from None


def check_not_input(out: Path, traj) -> None:
    """`out` is none of `traj`'s checkpoints and holds none of them (e.g. the run directory): a ValueError if it is."""
    where = out.resolve()
    for step in traj.steps:
        ckpt = Path(traj.path(step)).resolve()
        if where == ckpt or where in ckpt.parents:
            what = "is the input checkpoint" if where == ckpt else f"holds the input checkpoint {ckpt}"
            raise ValueError(f"{out}: {what} (step {step}); an extrapolation is never written over its inputs, "
                             "choose another output directory")


def extrapolate(traj, t0: int, t1: int, target_step: float, out: str | Path, norms: str = "copy-from-t1",
                overwrite: bool = False) -> Path:
    """Write the checkpoint extrapolated from steps t0, t1 of `traj` to `target_step` into `out` (atomically), with
    config and tokenizer of θ_{t1} and an `extrapolation.json` record of the inputs and β. An existing `out` is
    replaced only with `overwrite`, only if it is an earlier extrapolation, and never if it is or holds a checkpoint
    of `traj`."""
    from helpers.lib.checkpoint_io import write_checkpoint

    check_not_input(Path(out), traj)
    beta = coefficient(t0, t1, target_step)
    record = {"method": "two-point weight extrapolation", "from": str(traj.path(t0)), "to": str(traj.path(t1)),
              "t0": t0, "t1": t1, "target_step": target_step, "beta": beta, "norms": norms,
              "tied_embeddings": bool(traj.tied_embeddings),
              "copied_from_t1": [n for n in traj.names if norms == "copy-from-t1" and is_norm(n)]}
    return write_checkpoint(out, extrapolated_tensors(traj, t0, t1, beta, norms), like=traj.path(t1), record=record,
                            overwrite=overwrite)


def pair(src0: str | Path, src1: str | Path, t0: int | None = None, t1: int | None = None):
    """A two-checkpoint `Trajectory` of `src0`, `src1`; their steps are read from the directories (trainer_state.json /
    names) unless given. Returns (trajectory, t0, t1); warns when t0 > t1."""
    from helpers.lib.trajectory import Trajectory, TrajectoryWarning, step_of

    for src in (src0, src1):
        if not Path(src).is_dir():
            raise FileNotFoundError(f"{src}: no such checkpoint directory")
    t0 = step_of(src0) if t0 is None else int(t0)
    t1 = step_of(src1) if t1 is None else int(t1)
    if t0 == t1:
        raise ValueError(f"{src0} and {src1} are both at step {t0}; pass --from-step / --to-step")
    if t0 > t1:
        warnings.warn(f"--from {src0} (step {t0}) is newer than --to {src1} (step {t1}): t0 > t1, so config, tokenizer "
                      "and copied norms come from the older checkpoint; swap --from and --to unless that is meant",
                      TrajectoryWarning, stacklevel=2)
    return Trajectory({t0: Path(src0), t1: Path(src1)}), t0, t1


# ---------------------------------------------------------------------------------------------------------------------
# Notebook 04: held-out scores of real and extrapolated models, the inverted-U curve, paper vs measured

METRICS = ("avg_at_k", "pass_at_k", "entropy", "greedy_accuracy", "completion_length")


def snap(traj, fraction: float) -> int:
    """The saved step nearest to `fraction` × the last step (the earlier one on a tie)."""
    target = float(fraction) * traj.steps[-1]
    return min(traj.steps, key=lambda s: (abs(s - target), s))


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
        super().__init__(cfg, cfg.extrapolation.eval_items)

    def metrics(self, res: dict) -> dict:
        """The notebook's columns of an `evaluate` dict, plus `per_item` (each item's share of its k samples correct,
        an `scoring.PerItem`) for the claims' intervals."""
        return {"avg_at_k": res[f"avg@{self.k}"], "pass_at_k": res[f"pass@{self.k}"], "entropy": res["entropy"],
                "greedy_accuracy": res["greedy_accuracy"], "completion_length": res["completion_length"],
                "per_item": PerItem.of(res)}

    def checkpoint(self, path) -> dict:
        """Scores of one model directory (`eval.backend` sampler)."""
        return self.metrics(super().checkpoint(path))

    def extrapolated(self, traj, t0: int, t1: int, target_step: int, norms: str) -> dict:
        """Scores of the weight-extrapolated checkpoint (written to a temporary directory, deleted once the
        `eval.backend` sampler has loaded it)."""
        import tempfile

        from helpers.lib.paths import outputs_root

        def sampler():
            outputs_root().mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=outputs_root(), prefix=".extrapolated-") as tmp:
                out = extrapolate(traj, t0, t1, target_step, Path(tmp) / "model", norms)
                return make_sampler(self.cfg.eval.backend, out, **self.sampler_kwargs())  # weights now in memory

        identity = {"weight_extrapolation": [dir_fingerprint(traj.path(t0)), dir_fingerprint(traj.path(t1))],
                    "t0": t0, "t1": t1, "target_step": target_step, "norms": norms}
        return self.metrics(self.score(identity, sampler))

    def logit_extrapolated(self, path_t0, path_t1, alpha: float) -> dict:
        """Scores of the logit-extrapolated sampler of two model directories (hf decoding loop)."""
        identity = {"logit_extrapolation": [dir_fingerprint(path_t0), dir_fingerprint(path_t1)],
                    "alpha": float(alpha)}
        return self.metrics(self.score(identity, lambda: make_sampler(
            "logit-extrapolation", (path_t0, path_t1), alpha=alpha, **self.sampler_kwargs())))


def real_curve(traj, scorer: Scorer):
    """Scores of every saved checkpoint (step 0 = base)."""
    import pandas as pd

    return pd.DataFrame([{"step": s, **scorer.checkpoint(traj.path(s))} for s in traj.steps])


def weight_curve(traj, cfg, scorer: Scorer, real):
    """Scores of W_{t0} + β (W_{t1} − W_{t0}) for every (t0, t1) of `extrapolation.weight_pairs` and every target step
    beyond t1; `real_avg_at_k` is the real checkpoint's at that step when the run has one."""
    import pandas as pd

    xc = cfg.extrapolation
    real_at = dict(zip(real.step, real.avg_at_k))
    rows = []
    for pair in xc.weight_pairs:
        t0, t1 = snap_pair(traj, pair)
        for target in target_steps(traj, xc.weight_targets, after=t1):
            rows.append({"t0": t0, "t1": t1, "target_step": target, "beta": coefficient(t0, t1, target),
                         **scorer.extrapolated(traj, t0, t1, target, xc.norms),
                         "real_avg_at_k": real_at.get(target, float("nan"))})
    return pd.DataFrame(rows)


def plot_weight_curve(curve, real):
    """Accuracy vs target step, one line per (t0, t1) (starting at θ_t1 itself), real checkpoints for comparison."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(real.step, real.avg_at_k, "o-", color="gray", ms=3, label="real RL checkpoints")
    real_at = dict(zip(real.step, real.avg_at_k))
    for i, ((t0, t1), g) in enumerate(curve.groupby(["t0", "t1"])):
        ax.plot([t1, *g.target_step], [real_at[t1], *g.avg_at_k], "s--", color=f"C{i}", label=f"t0={t0}, t1={t1}")
        peak = g.loc[g.avg_at_k.idxmax()]
        ax.plot(peak.target_step, peak.avg_at_k, "*", color=f"C{i}", ms=14)
    ax.axvline(real.step.iloc[-1], color="k", ls=":", lw=1, label="end of the run")
    ax.set(xlabel="target step t'", ylabel=f"held-out avg@k",
           title="Weight extrapolation W_t0 + β (W_t1 − W_t0) vs target step")
    ax.legend(fontsize=8)
    return fig


@dataclass(frozen=True, eq=False)
class Measured:
    """Notebook 04's measurements: the scorer and the real, weight-extrapolated (`weight_curve`) and logit-extrapolated
    (`logit_extrapolation.logit_table`) score tables, each row with its `per_item` scores on `scorer.items`."""
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
        """Position in `rows` (a table's rows) of the best mean per-item score on the select half (earliest on a tie)."""
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
        return (f"{chosen} chosen on {len(sel)} selection items, split seed {st.split_seed}; scored on the other "
                f"{len(rep)} items with a {st.level:.0%} paired bootstrap")


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
        peaks.append({"t0": int(t0), "t1": int(t1), "peak_step": int(peak.target_step), "peak_beta": float(peak.beta),
                      "peak_avg_at_k": float(peak.avg_at_k), "t1_avg_at_k": float(at_t1.avg_at_k),
                      "farthest_step": int(far.target_step), "farthest_avg_at_k": float(far.avg_at_k),
                      "peak_minus_t1": rise, "peak_minus_t1_interval": list(rise_iv),
                      "peak_minus_farthest": fall, "peak_minus_farthest_interval": list(fall_iv),
                      "inverted_u": rule.decide(*rise_iv) == "holds" and rule.decide(*fall_iv) == "holds"})
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
    rise, rise_iv = claims_mod.across_seeds([p["peak_minus_t1"] for p in peaks],
                                            [p["peak_minus_t1_interval"] for p in peaks])
    fall, fall_iv = claims_mod.across_seeds([p["peak_minus_farthest"] for p in peaks],
                                            [p["peak_minus_farthest_interval"] for p in peaks])
    if any(p["peak_step"] == p["farthest_step"] for p in peaks):  # a pair with no decline to measure decides nothing
        fall, fall_iv = math.nan, (math.nan, math.nan)
    per_pair = m.split_text("per (t0, t1) pair the peak target t'") + "; mean over pairs, hull of their intervals"
    return [
        claims_mod.Claim("nb04.logit_gain", f"logit extrapolation beats the last RL checkpoint (step {int(last.step)}) "
                         "in avg@k (difference)", paper.get("logit_gain"), gain, gain_iv, margin, how),
        claims_mod.Claim("nb04.weight_peak", "the weight-extrapolation peak rises above θ_t1 in avg@k (difference)",
                         paper.get("weight_peak"), rise, rise_iv, margin, per_pair,
                         "; ".join(f"t1 = {p['t1']}: peak t' = {p['peak_step']} "
                                   f"{_diff_text(p['peak_minus_t1'], p['peak_minus_t1_interval'])}" for p in peaks)),
        claims_mod.Claim("nb04.weight_declines", "beyond its peak, weight extrapolation declines (peak − farthest "
                         "target t', avg@k)", paper.get("weight_peak"), fall, fall_iv, margin,
                         per_pair + "; not measured when a pair peaks at its farthest target (no decline to see)",
                         "; ".join(f"t1 = {p['t1']}: " + (
                             f"peak t' = {p['peak_step']} vs t' = {p['farthest_step']} "
                             f"{_diff_text(p['peak_minus_farthest'], p['peak_minus_farthest_interval'])}"
                             if p["peak_step"] < p["farthest_step"] else
                             f"peak at the farthest target t' = {p['farthest_step']}") for p in peaks)),
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
    out = {"rl_final_step": int(last.step), "rl_final_avg_at_k": float(last.avg_at_k),
           "rl_final_entropy": float(last.entropy), "eval_items": len(m.scorer.items), "k": m.scorer.k,
           "split_seed": m.settings.split_seed, "select_items": len(sel), "report_items": len(rep),
           "weight_extrapolation_peaks": peaks, "weight_extrapolation_peak_step": top.get("peak_step"),
           "weight_extrapolation_peak_avg_at_k": top.get("peak_avg_at_k"),
           "logit_extrapolation_best_alpha": None, "logit_extrapolation_best_avg_at_k": None,
           "logit_extrapolation_best_target_step": None, "logit_extrapolation_best_entropy": None,
           "logit_extrapolation_best_real_entropy": None}
    if best is not None:
        out.update(logit_extrapolation_best_alpha=float(best.alpha),
                   logit_extrapolation_best_avg_at_k=float(best.avg_at_k),
                   logit_extrapolation_best_target_step=float(best.target_step),
                   logit_extrapolation_best_entropy=float(best.entropy),
                   logit_extrapolation_best_real_entropy=real_entropy.get(best.target_step))
    return {**out,
            "weight_extrapolation_curve": m.curve[["t0", "t1", "target_step", "beta", *METRICS, "real_avg_at_k"]]
            .to_dict("records"),
            "logit_extrapolation": _records(m.logit),
            "real_curve": _records(real)}


def _records(table) -> list[dict]:
    return table.drop(columns=["per_item"], errors="ignore").to_dict("records")


# ---------------------------------------------------------------------------------------------------------------------
# Command line

def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m helpers.lib.extrapolation", description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="src0", required=True, help="checkpoint directory at step t0")
    p.add_argument("--to", dest="src1", required=True, help="checkpoint directory at step t1")
    p.add_argument("--target-step", type=float, required=True, help="the step t' to extrapolate to")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument("--norms", choices=NORM_POLICIES, default="copy-from-t1", help="norm-weight policy")
    p.add_argument("--from-step", type=int, help="step of --from (default: read from the directory)")
    p.add_argument("--to-step", type=int, help="step of --to (default: read from the directory)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it is an earlier extrapolation (never an input or a directory holding one)")
    a = p.parse_args(argv)
    if Path(a.out).exists() and not a.overwrite:
        p.error(f"{a.out} exists; pass --overwrite to replace it")
    with warnings.catch_warnings(record=True) as caught:  # shown as one line each
        warnings.simplefilter("always")
        traj, t0, t1 = pair(a.src0, a.src1, a.from_step, a.to_step)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    target = int(a.target_step) if float(a.target_step).is_integer() else a.target_step
    out = extrapolate(traj, t0, t1, target, a.out, a.norms, overwrite=a.overwrite)
    print(f"wrote {out} (t0={t0}, t1={t1}, target={target}, beta={coefficient(t0, t1, target):.4g}, norms={a.norms})")
    return out


def cli_main() -> None:
    """The `rlvr-extrapolate` command."""
    cli.run(main)


if __name__ == "__main__":
    cli_main()
