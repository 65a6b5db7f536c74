"""Notebook 08's rules: which fixed run is chosen, the probe-inclusive step gap, the claims' verdicts and the decision
counts, on hand-made tables (the notebook itself runs under nbval)."""

import math

import numpy as np
import pandas as pd
import pytest

from helpers.experiments import claims as cl
from helpers.experiments import nb08_adaptive as nb


def test_pick_takes_the_fewest_steps_then_the_higher_final_and_never_reached_last():
    t = pd.DataFrame(
        {
            "label": ["a", "b", "c", "d"],
            "select_steps_to_target": [math.nan, 72.0, 72.0, 96.0],
            "select_final": [0.9, 0.55, 0.58, 0.6],
        }
    )
    assert nb.pick(t) == 2
    assert nb.pick(t.iloc[[0, 3]]) == 3
    assert nb.pick(t.iloc[[0]]) == 0  # nothing reaches the target: the only candidate


STEPS = [0, 36, 72, 108, 144, 180, 216]


def analysis(acc: dict, items: int = 400, seeds=(0, 1)):
    """An Analysis whose per-item scores give each (method, step) the accuracy `acc[method][step]` (default 0.5) on
    `items` items, the same on every seed: the first round(acc × items) items right."""
    scores, rows = {}, []
    for seed in seeds:
        for m in nb.METHODS:
            for s in STEPS:
                p = acc.get(m, {}).get(s, 0.5)
                scores[(seed, m, s)] = (np.arange(items) < round(p * items)).astype(float)
                rows.append({"seed": seed, "label": m, "rl_steps": s, "accuracy": p})
    curves = pd.DataFrame(rows)
    per_seed = pd.DataFrame(
        {
            "target": [acc.get(nb.STANDARD, {}).get(216, 0.5)] * len(seeds),
            **{f"{m} steps": [216.0] * len(seeds) for m in nb.METHODS},
            "adaptive probe steps": [2.0] * len(seeds),
        },
        index=pd.Index(seeds, name="seed"),
    )
    budget = curves[curves.rl_steps.isin([0, 72, 216])].pivot_table(
        index="rl_steps", columns="label", values="accuracy"
    )
    return nb.Analysis(
        fixed={"label": "RL-Extra(3,17) reset", "m": 3, "n": 17, "optimizer": "reset"},
        candidates=pd.DataFrame(),
        policies=pd.DataFrame(),
        runs=pd.DataFrame(),
        curves=curves,
        scores=scores,
        per_seed=per_seed,
        budget=budget,
        wall=pd.DataFrame(),
        decisions=pd.DataFrame(),
        posthoc=pd.DataFrame(),
        items=items,
        settings=cl.Settings(),
    )


def test_the_goal_compares_the_adaptive_run_at_a_third_of_the_steps_with_the_standard_final():
    assert nb.third_step(STEPS) == 72 and nb.third_step([0, 12, 24, 36, 48, 60, 72, 84, 240]) == 72
    reached = nb.claims(analysis({nb.STANDARD: {216: 0.6}, nb.ADAPTIVE: {72: 0.62}}))[0]
    assert reached.id == "nb08.adaptive_speedup" and reached.measured == pytest.approx(0.02)
    assert reached.ci_low > -0.02 and reached.verdict == "holds"  # paired: only the 8 items that differ vary
    short = nb.claims(analysis({nb.STANDARD: {216: 0.6}, nb.ADAPTIVE: {72: 0.5}}))[0]
    assert short.measured == pytest.approx(-0.1) and short.verdict == "does not hold"
    assert "step 72" in short.how and "seed 1: standard 216" in short.detail


def test_the_fixed_comparison_averages_the_budgets_after_step_0():
    a = analysis({nb.ADAPTIVE: {72: 0.6, 216: 0.6}, nb.FIXED: {72: 0.5, 216: 0.55}})
    c = nb.claims(a)[1]
    assert c.id == "nb08.adaptive_vs_fixed" and c.measured == pytest.approx((0.1 + 0.05) / 2)
    assert c.verdict == "holds" and "[72, 216]" in c.how and "probes cost 2.0–2.0" in c.detail
    tie = nb.claims(analysis({}))[1]
    assert tie.measured == 0 and tie.verdict == "does not hold"  # identical scores: the interval is [0, 0] < margin


def test_decision_counts_split_the_holds_by_reason():
    a = analysis({})
    a.decisions = pd.DataFrame(
        [
            {"seed": 0, "step": 6, "kind": "jump", "reason": None},
            {"seed": 0, "step": 12, "kind": "kept", "reason": None},
            {"seed": 0, "step": 15, "kind": "hold", "reason": "gate"},
            {"seed": 1, "step": 6, "kind": "hold", "reason": "gate"},
            {"seed": 1, "step": 9, "kind": "hold", "reason": "cap"},
        ]
    )
    t = nb.decision_counts(a)
    assert t.loc[0].to_dict() == {"hold (cap)": 0, "hold (gate)": 1, "jump": 1, "kept": 1}
    assert t.loc[1, "hold (cap)"] == 1 and t.loc[1, "jump"] == 0
