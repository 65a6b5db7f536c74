"""Two-point weight extrapolation (LIN §4.2.2): W_{t'} = W_{t0} + β (W_{t1} − W_{t0}), β = (t' − t0) / (t1 − t0).

Computed tensor by tensor in fp32 with `torch.lerp` (exact at β = 0 and β = 1) and saved in the checkpoint's dtype;
only one tensor pair is in memory at a time. Norm policy:

- ``extrapolate``  — every tensor is extrapolated (ExPO);
- ``copy-from-t1`` — norm weights are copied from θ_{t1}, everything else (embeddings, lm_head, biases) is extrapolated
  (the paper's reference code).

A tied lm_head follows the extrapolated embedding. Command line::

    python -m helpers.extrapolation --from A --to B --target-step T --out DIR [--norms extrapolate|copy-from-t1]
                                    [--from-step t0 --to-step t1] [--overwrite]

The steps of A and B come from their trainer_state.json or directory names unless given. The second half of the module
holds notebook 04's scoring, curves and paper-vs-measured claims.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterator

import torch

from .evaluation import CachedScorer, make_sampler
from .paths import dir_fingerprint

NORM_POLICIES = ("copy-from-t1", "extrapolate")
_NORM_MODULE = re.compile(r"(norm|^ln(_|$)|^ln\d)", re.IGNORECASE)


def coefficient(t0: float, t1: float, target_step: float) -> float:
    """β = (t' − t0) / (t1 − t0): the multiple of the observed update (β > 1 extrapolates)."""
    if t1 == t0:
        raise ValueError(f"extrapolation needs two different steps (both are {t0})")
    return (target_step - t0) / (t1 - t0)


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


def extrapolate(traj, t0: int, t1: int, target_step: float, out: str | Path, norms: str = "copy-from-t1") -> Path:
    """Write the checkpoint extrapolated from steps t0, t1 of `traj` to `target_step` into `out` (atomically), with
    config and tokenizer of θ_{t1} and an `extrapolation.json` record of the inputs and β."""
    from .checkpoint_io import write_checkpoint

    beta = coefficient(t0, t1, target_step)
    record = {"method": "two-point weight extrapolation", "from": str(traj.path(t0)), "to": str(traj.path(t1)),
              "t0": t0, "t1": t1, "target_step": target_step, "beta": beta, "norms": norms,
              "tied_embeddings": bool(traj.tied_embeddings),
              "copied_from_t1": [n for n in traj.names if norms == "copy-from-t1" and is_norm(n)]}
    return write_checkpoint(out, extrapolated_tensors(traj, t0, t1, beta, norms), like=traj.path(t1), record=record)


def pair(src0: str | Path, src1: str | Path, t0: int | None = None, t1: int | None = None):
    """A two-checkpoint `Trajectory` of `src0`, `src1`; their steps are read from the directories (trainer_state.json /
    names) unless given. Returns (trajectory, t0, t1)."""
    from .trajectory import Trajectory, step_of

    t0 = step_of(src0) if t0 is None else int(t0)
    t1 = step_of(src1) if t1 is None else int(t1)
    if t0 == t1:
        raise ValueError(f"{src0} and {src1} are both at step {t0}; pass --from-step / --to-step")
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
    """`evaluation.CachedScorer` on the first `extrapolation.eval_items` held-out problems, reporting the notebook's
    metric columns (`METRICS`), plus weight- and logit-extrapolated models."""

    def __init__(self, cfg):
        super().__init__(cfg, cfg.extrapolation.eval_items)

    def metrics(self, res: dict) -> dict:
        """The notebook's columns of an `evaluate` dict."""
        return {"avg_at_k": res[f"avg@{self.k}"], "pass_at_k": res[f"pass@{self.k}"], "entropy": res["entropy"],
                "greedy_accuracy": res["greedy_accuracy"], "completion_length": res["completion_length"]}

    def checkpoint(self, path) -> dict:
        """Scores of one model directory (`eval.backend` sampler)."""
        return self.metrics(super().checkpoint(path))

    def extrapolated(self, traj, t0: int, t1: int, target_step: int, norms: str) -> dict:
        """Scores of the weight-extrapolated checkpoint (written to a temporary directory, deleted once the
        `eval.backend` sampler has loaded it)."""
        import tempfile

        from .paths import outputs_root

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


def _vs(diff: float, margin: float) -> str:
    if diff != diff:
        return "not measured"
    return "higher than" if diff > margin else "lower than" if diff < -margin else "within noise of"


def _weight_claims(real, curve, margin: float) -> tuple[list, list, dict]:
    real_at = dict(zip(real.step, real.avg_at_k))
    rows, verdicts, peaks = [], [], []
    for (t0, t1), g in curve.groupby(["t0", "t1"]):
        g = g.sort_values("target_step")
        peak = g.loc[g.avg_at_k.idxmax()]
        at_t1, far = real_at[t1], g.iloc[-1]
        rises = peak.avg_at_k - at_t1 > margin
        falls = peak.target_step < far.target_step and peak.avg_at_k - far.avg_at_k > margin
        peaks.append({"t0": int(t0), "t1": int(t1), "peak_step": int(peak.target_step), "peak_beta": float(peak.beta),
                      "peak_avg_at_k": float(peak.avg_at_k), "t1_avg_at_k": float(at_t1),
                      "farthest_step": int(far.target_step), "farthest_avg_at_k": float(far.avg_at_k),
                      "inverted_u": bool(rises and falls)})
    n_u = sum(p["inverted_u"] for p in peaks)
    rows.append(("Accuracy vs target step is an inverted U (Fig. 5)",
                 "t1 = 300 / 600 / 1400: peaks at t' ≈ 900 / 1100 / 1800 (0.357 / 0.373 / 0.415), then declines",
                 "; ".join(f"t1 = {p['t1']}: peak t' = {p['peak_step']} ({p['peak_avg_at_k']:.3f}, θ_t1 "
                           f"{p['t1_avg_at_k']:.3f}, t' = {p['farthest_step']}: {p['farthest_avg_at_k']:.3f})"
                           for p in peaks)))
    verdicts.append(f"Weight extrapolation traces an inverted U (rises above θ_t1, then falls, both beyond the noise "
                    f"margin {margin:.3f}) for {n_u} of {len(peaks)} (t0, t1) pairs: "
                    + ("as in the paper." if n_u == len(peaks) else "partly as in the paper." if n_u else
                       "not reproduced here."))
    ratios = [p["peak_step"] / p["t1"] for p in peaks]
    rows.append(("The best target moves closer to t1 as t1 grows (t'/t1 ≈ 3 → 1.8 → 1.3)", "3.0 / 1.8 / 1.3",
                 " / ".join(f"{r:.2f}" + ("" if p["inverted_u"] else " (no interior peak)")
                            for r, p in zip(ratios, peaks))))
    u_ratios = [r for r, p in zip(ratios, peaks) if p["inverted_u"]]
    verdicts.append("The peak's position can only be compared for pairs with an inverted U: "
                    + ("there are none here (accuracy is highest at the first target or keeps rising)." if not u_ratios
                       else "only one pair has one." if len(u_ratios) == 1 else
                       f"t'/t1 = {' → '.join(f'{r:.2f}' for r in u_ratios)} as t1 grows, "
                       + ("shrinking, as in the paper." if all(a >= b for a, b in zip(u_ratios, u_ratios[1:]))
                          else "not shrinking monotonically, unlike the paper.")))
    inside = curve[curve.real_avg_at_k.notna()]
    if len(inside):
        diff = float((inside.avg_at_k - inside.real_avg_at_k).mean())
        rows.append(("Extrapolated checkpoints vs real ones at the same step", "not reported (Fig. 5 has no overlay)",
                     f"mean difference {diff:+.3f} over {len(inside)} targets within the run"))
        verdicts.append(f"Within the run, extrapolated checkpoints are on average {_vs(diff, margin)} the real "
                        f"checkpoints at the same steps ({diff:+.3f}).")
    best = max(peaks, key=lambda p: p["peak_avg_at_k"])
    return rows, verdicts, {"weight_extrapolation_peaks": peaks, "weight_extrapolation_peak_step": best["peak_step"],
                            "weight_extrapolation_peak_avg_at_k": best["peak_avg_at_k"]}


def _logit_claims(real, logit, margin: float) -> tuple[list, list, dict]:
    final, last = float(real.avg_at_k.iloc[-1]), int(real.step.iloc[-1])
    extra = logit[logit.alpha > 1] if (logit.alpha > 1).any() else logit
    best = extra.loc[extra.avg_at_k.idxmax()]
    diff = float(best.avg_at_k) - final
    rows = [("Logit extrapolation beats standard RL (Table 1)",
             "+4.2 % on average; AIME24 avg@64 0.419 → 0.446 (t0 = 200, t1 = 1400, α = 1.5)",
             f"best α = {best.alpha:g} (t' = {best.target_step:g}): avg@k {best.avg_at_k:.3f} vs RL step {last} "
             f"{final:.3f} ({diff:+.3f})")]
    verdicts = [f"The best logit-extrapolated sampler (α = {best.alpha:g}) is {_vs(diff, margin)} the last RL "
                f"checkpoint ({diff:+.3f}, noise margin {margin:.3f}): "
                + ("agrees with the paper." if diff > margin else "a tie, not the paper's gain." if diff >= -margin
                   else "contradicts the paper.")]
    s = {"logit_extrapolation_best_avg_at_k": float(best.avg_at_k), "logit_extrapolation_best_alpha": float(best.alpha),
         "logit_extrapolation_best_target_step": float(best.target_step)}
    with_real = extra[extra.real_avg_at_k.notna()]
    if len(with_real):
        d = with_real.avg_at_k - with_real.real_avg_at_k
        rows.append(("Logit extrapolation to t' vs the real checkpoint at t'", "not reported (no real t' = 2000)",
                     "; ".join(f"α = {a:g} (t' = {t:g}): {x:+.3f}" for a, t, x in zip(with_real.alpha,
                                                                                     with_real.target_step, d))))
        verdicts.append(f"Logit extrapolation to t' is on average {_vs(float(d.mean()), margin)} the real checkpoint "
                        f"at t' ({float(d.mean()):+.3f}).")
    e_final, e_first = float(real.entropy.iloc[-1]), float(real.entropy.iloc[0])
    real_e = dict(zip(real.step, real.entropy))
    same_t = real_e.get(best.target_step, float("nan"))
    rows.append(("It avoids the late entropy collapse of RL (§4.2.1)", "claimed cause of the gain (no number)",
                 f"entropy: RL step 0 {e_first:.3f} → step {last} {e_final:.3f}; best extrapolated (α = "
                 f"{best.alpha:g}) {best.entropy:.3f}" + (f", real at t' {same_t:.3f}" if same_t == same_t else "")))
    fall = 1 - e_final / float(real.entropy.max())
    keeps = best.entropy > (same_t if same_t == same_t else e_final)
    verdicts.append(f"RL entropy ends {fall:.0%} below its maximum ({e_first:.3f} at step 0, {e_final:.3f} at step "
                    f"{last}); the best extrapolated sampler's entropy ({best.entropy:.3f}) is "
                    + ("above" if keeps else "not above")
                    + (f" the real checkpoint's at t' = {best.target_step:g} ({same_t:.3f})" if same_t == same_t else
                       " the final RL checkpoint's")
                    + (": consistent with the claim." if keeps and fall > 0.1 else
                       ": but RL's own entropy barely falls, so there is little collapse to avoid." if keeps else
                       ": extrapolation does not keep entropy higher here."))
    s.update(rl_final_entropy=e_final, logit_extrapolation_best_entropy=float(best.entropy))
    return rows, verdicts, s


def claims(real, curve, logit, scorer: Scorer) -> tuple[list[tuple[str, str, str]], list[str], dict]:
    """(paper-vs-measured rows, verdict sentences, summary numbers) for LIN §4.2 (SPEC §4). A difference counts only
    beyond the noise margin of two accuracies near the final one (√2 × `scorer.margin`)."""
    import math

    final = float(real.avg_at_k.iloc[-1])
    margin = math.sqrt(2) * scorer.margin(final)
    summary = {"rl_final_step": int(real.step.iloc[-1]), "rl_final_avg_at_k": final, "noise_margin": margin,
               "eval_items": len(scorer.items), "k": scorer.k}
    rows, verdicts = [], []
    for part in (_logit_claims(real, logit, margin), _weight_claims(real, curve, margin)):
        rows += part[0]
        verdicts += part[1]
        summary.update(part[2])
    return rows, verdicts, summary


def results(summary: dict, real, curve, logit, verdicts: list[str]) -> dict:
    """The notebook's results.json: the summary numbers plus every measured curve and table."""
    return {**summary,
            "weight_extrapolation_curve": curve[["t0", "t1", "target_step", "beta", *METRICS, "real_avg_at_k"]]
            .to_dict("records"),
            "logit_extrapolation": logit.to_dict("records"),
            "real_curve": real.to_dict("records"),
            "verdicts": verdicts}


# ---------------------------------------------------------------------------------------------------------------------
# Command line

def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m helpers.extrapolation", description=__doc__.split("\n")[0])
    p.add_argument("--from", dest="src0", required=True, help="checkpoint directory at step t0")
    p.add_argument("--to", dest="src1", required=True, help="checkpoint directory at step t1")
    p.add_argument("--target-step", type=float, required=True, help="the step t' to extrapolate to")
    p.add_argument("--out", required=True, help="output directory (created atomically)")
    p.add_argument("--norms", choices=NORM_POLICIES, default="copy-from-t1", help="norm-weight policy")
    p.add_argument("--from-step", type=int, help="step of --from (default: read from the directory)")
    p.add_argument("--to-step", type=int, help="step of --to (default: read from the directory)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    a = p.parse_args(argv)
    if Path(a.out).exists() and not a.overwrite:
        p.error(f"{a.out} exists; pass --overwrite to replace it")
    traj, t0, t1 = pair(a.src0, a.src1, a.from_step, a.to_step)
    target = int(a.target_step) if float(a.target_step).is_integer() else a.target_step
    out = extrapolate(traj, t0, t1, target, a.out, a.norms)
    print(f"wrote {out} (t0={t0}, t1={t1}, target={target}, beta={coefficient(t0, t1, target):.4g}, norms={a.norms})")
    return out


if __name__ == "__main__":
    main()
