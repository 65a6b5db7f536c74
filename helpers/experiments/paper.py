"""Every paper number the notebooks compare against, each with its source: the one place they are written.

    from helpers.experiments import paper
    paper.get("weight_r2_share")          # Number(text=..., source="LIN v1 §3.1, Fig. 1a; v3 §3.1", value=0.7)

`text` is what the paper states (shown in the "paper" column of every claims table), `source` the paper, section and
table/figure, `value` the number a rule compares with when there is one. LIN = "Not All Steps are Informative: On the
Linearity of LLMs' RLVR Training" (arXiv 2601.04537; v3 "Linear Dynamics in the RLVR Training of Large Language
Models"); RELEX = "You Only Need Minimal RLVR Training: Extrapolating LLMs via Rank-1 Trajectories" (arXiv 2605.21468).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Number:
    text: str
    source: str
    value: float | None = None

    def __str__(self) -> str:
        return f"{self.text} ({self.source})"


NUMBERS: dict[str, Number] = {
    # the line both papers draw for "linear"
    "r2_bar": Number("R² > 0.7 counts as linear", "LIN §3.1", 0.7),
    # notebook 00: the trajectory
    "rl_gain": Number("every run improves held-out accuracy on its base", "LIN Table 1; RELEX §4"),
    "entropy_falls": Number("token entropy falls during RL (late entropy collapse)", "LIN §4.2.1"),
    # notebook 01: weight linearity
    "weight_r2_share": Number(
        "> 80 % of weights have R² > 0.7 (v1); > 70 % in the DeepScaleR setting (v3)", "LIN §3.1, Fig. 1a", 0.7
    ),
    "weight_r2_median": Number("weight R² concentrated around 0.9", "LIN §3.1, Fig. 1a", 0.9),
    "norms_least_linear": Number("LayerNorm weights are the least linear module type", "LIN Fig. 8"),
    # notebook 02: output linearity
    "token_r2_median": Number(
        "token log-prob R² centred ≈ 0.9, > 0.7 in every setting", "LIN §3.2, Fig. 1b, Fig. 2", 0.9
    ),
    "change_vs_r2": Number("tokens that change more are more linear (positive correlation)", "LIN §3.2, Fig. 9"),
    "activations_linear": Number("hidden states of every layer but the first are strongly linear", "LIN Fig. 7"),
    # notebook 03: origin
    "input_term_dominates": Number("the input term W0·Δx dominates the output change", "LIN Fig. 3 (v1) / Fig. 4 (v3)"),
    "second_order_tiny": Number("the second-order term ΔW·Δx is uniformly tiny", "LIN Fig. 3 (v1) / Fig. 4 (v3)"),
    "rl_r2_range": Number("RL: median R² 0.73–0.87 in weight and output space", "LIN v3 Fig. 2", 0.73),
    "sft_weight_r2": Number("SFT: weight R² median ≈ 0.43", "LIN v3 Fig. 2", 0.43),
    "sft_token_r2": Number("SFT: output R² median ≈ 0.34", "LIN v3 Fig. 2", 0.34),
    "noise_peak": Number(
        "token-level noise raises SFT's weight R² median from 0.43 to ≈ 0.58 at −10 dB", "LIN v3 Fig. 3", 0.58
    ),
    "sgd_persists": Number("linearity persists with SGD instead of AdamW", "LIN v3 Fig. 2"),
    "lr_linear": Number("linear at lr 1e-6, 3e-6 and 1e-5", "LIN v3 Fig. 2"),
    # notebook 04: direct extrapolation
    "logit_gain": Number(
        "logit extrapolation (t0 = 200, t1 = 1400, α = 1.5) beats standard RL: +4.2 % on average; "
        "AIME24 avg@64 0.4193 → 0.4458",
        "LIN v3 Table 1",
        0.042,
    ),
    "weight_peak": Number(
        "accuracy vs target step is an inverted U: t1 = 300 / 600 / 1400 peak at t' ≈ 900 / 1100 / "
        "1800 (AIME24 0.357 / 0.373 / 0.415), then decline",
        "LIN §4.2.2, Fig. 5",
    ),
    # notebook 05: RL-Extra
    "rl_extra_speedup": Number(
        "RL-Extra(20,100) reaches ≥ 0.38 in 180 RL steps vs 1100 (6.1×); (100,100) 1.6×", "LIN §4.3, Fig. 6", 6.1
    ),
    "rl_extra_budget": Number(
        "at fixed RL budgets 200 / 400 / 800 / 1200: +5.2 / +6.3 / +5.7 / +2.3 %", "LIN §4.3, Table 3"
    ),
    "rl_extra_on_track": Number("every RL-Extra setting ends at or above standard RL", "LIN §4.3"),
    "rl_extra_optimizer": Number(
        "the reference restarts a fresh job (fresh Adam moments) every cycle; keeping them is not reported",
        "LIN reference code",
    ),
    "rl_extra_paper_steps": Number("standard RL ran ~1400 steps", "LIN §4.3", 1400),
    # notebook 06: RELEX
    "relex_rank1": Number("each tensor's delta trajectory is essentially rank 1", "RELEX Finding 1, §3"),
    "relex_reconstruction": Number("the rank-1 reconstruction keeps most of the RL gain", "RELEX Fig. 2"),
    "relex_prefix": Number(
        "extrapolating from a 15 % prefix (T_cut = 75 of 500) matches full RLVR", "RELEX §4, Table 1", 0.15
    ),
    "relex_horizon": Number("predictions 10–20× beyond the prefix still improve", "RELEX §4"),
    "relex_rank_k": Number("rank k > 1 does not help extrapolation", "RELEX §5 ablations"),
    "relex_nonlinear_fit": Number("polynomial / sinusoid fits do not help extrapolation", "RELEX §5 ablations"),
    "relex_denoising": Number(
        "the gain is denoising: the rank-1 projection removes harmful off-direction noise", "RELEX §5"
    ),
    "relex_bent_fit": Number(
        "neither paper tests a bending fit of the coefficients chosen by validation in time",
        "beyond the papers; NExt arXiv 2604.11446 argues the rank-1 subspace is not linear in time",
    ),
    # notebook 08: adaptive extrapolation (beyond the papers)
    "adaptive_speedup": Number(
        "no published method decides online when and how far to jump; the goal set here: reach standard RL's final "
        "accuracy in ≤ 1/3 of its real RL steps",
        "beyond the papers (LIN §4.3's fixed schedules reach it in 1/6–1/1.6)",
        3.0,
    ),
    "adaptive_vs_fixed": Number(
        "an adaptive schedule needs fewer real steps than the best fixed RL-Extra (m, n), probe compute included",
        "beyond the papers",
        0.0,
    ),
    # notebook 07: robustness
    "robust_rl": Number(
        "RL: median R² 0.73–0.87 in weight and output space for every algorithm, optimizer, lr, "
        "rollout count and scale",
        "LIN v3 Fig. 2",
        0.73,
    ),
    "robust_sft": Number("SFT far less linear: ≈ 0.43 (weight) / 0.34 (output)", "LIN v3 Fig. 2"),
}


def get(key: str) -> Number:
    """The paper number `key` (a KeyError naming the known keys otherwise)."""
    try:
        return NUMBERS[key]
    except KeyError:
        raise KeyError(f"no paper number {key!r} (known: {', '.join(NUMBERS)})") from None


R2_BAR: float = NUMBERS["r2_bar"].value  # the papers' line for "linear"
