"""Notebook 08's rules: which fixed run is chosen, the probe-inclusive step gap, the claims' verdicts and the decision
counts, on hand-made tables (the notebook itself runs under nbval)."""

import math

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


def seed_row(std, fixed, ada, probe=0.0, opt=None, pess=None):
    """One per-seed row: each method's (steps, optimistic, pessimistic) crossing; speedups as `analyse` makes them."""
    row = {"target": 0.5, "adaptive probe steps": probe}
    for m, v in zip(nb.METHODS, (std, fixed, ada)):
        row |= {f"{m} steps": v[0], f"{m} optimistic": v[1], f"{m} pessimistic": v[2]}
    for m, v in ((nb.FIXED, fixed), (nb.ADAPTIVE, ada)):
        row[f"{m} speedup"] = std[0] / v[0]
        row[f"{m} speedup low"], row[f"{m} speedup high"] = std[1] / v[2], std[2] / v[1]
    row["adaptive net steps"] = ada[0] + probe
    return row


def analysis(rows):
    per_seed = pd.DataFrame(rows, index=pd.Index(range(len(rows)), name="seed"))
    return nb.Analysis(
        fixed={"label": "RL-Extra(3,17) reset", "m": 3, "n": 17, "optimizer": "reset"},
        candidates=pd.DataFrame(),
        policies=pd.DataFrame(),
        runs=pd.DataFrame(),
        curves=pd.DataFrame(),
        per_seed=per_seed,
        budget=pd.DataFrame(),
        wall=pd.DataFrame(),
        decisions=pd.DataFrame(),
        posthoc=pd.DataFrame(),
        items=250,
        settings=cl.Settings(),
    )


def test_the_speedup_claim_reads_the_hull_over_seeds():
    fast = analysis(
        [seed_row((240, 216, 240), (72, 60, 84), (48, 36, 60)), seed_row((216, 204, 228), (72, 60, 84), (36, 24, 48))]
    )
    c = nb.claims(fast)[0]
    assert c.id == "nb08.adaptive_speedup" and c.measured == pytest.approx((240 / 48 + 216 / 36) / 2)
    assert c.interval == pytest.approx((216 / 60, 228 / 24)) and c.verdict == "holds"
    slow = analysis([seed_row((240, 216, 240), (72, 60, 84), (120, 108, 132))])
    assert nb.claims(slow)[0].verdict == "does not hold"  # [216/132, 240/108] = [1.6, 2.2] < 3
    unsure = analysis([seed_row((240, 216, 240), (72, 60, 84), (72, 60, math.nan))])
    assert nb.claims(unsure)[0].verdict == "inconclusive"  # the adaptive run never surely crosses: no bound


def test_the_fixed_gap_counts_the_probe_steps():
    rows = [
        seed_row((240, 216, 240), (72, 60, 84), (48, 36, 60), probe=2.0),
        seed_row((240, 216, 240), (72, 60, 84), (60, 48, 72), probe=1.0),
    ]
    gap, (lo, hi) = nb._net_gap(rows[0])
    assert gap == 72 - 48 - 2 and lo == 60 - 60 - 2 and hi == 84 - 36 - 2
    c = nb.claims(analysis(rows))[1]
    assert c.measured == pytest.approx((22 + 11) / 2) and c.interval == (-13.0, 46.0) and c.verdict == "inconclusive"
    never = seed_row((240, 216, 240), (72, 60, math.nan), (48, 36, 60), probe=2.0)
    assert nb._net_gap(never)[1][1] == math.inf


def test_decision_counts_split_the_holds_by_reason():
    a = analysis([])
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
