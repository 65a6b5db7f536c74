import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from helpers.experiments import nb04_extrapolation as nb
from helpers.lib.scoring import PerItem


class Steps:
    steps = [0, 10, 20, 30, 40]


def test_snapping_to_saved_steps():
    assert nb.snap(Steps, 0.26) == 10 and nb.snap(Steps, 0.0) == 0 and nb.snap(Steps, 0.125) == 0
    assert nb.snap_pair(Steps, [0.2, 0.6]) == (10, 20)
    assert nb.snap_pair(Steps, [0.5, 0.5]) == (20, 30) and nb.snap_pair(Steps, [1.0, 1.0]) == (30, 40)
    assert nb.target_steps(Steps, [0.4, 1.0, 1.5, 2.0, 0.1], after=10) == [20, 40, 60, 80]


N = 200
SETTINGS = {
    "level": 0.95,
    "bootstrap": 500,
    "accuracy_margin": 0.02,
    "r2_margin": 0.05,
    "r2_threshold": None,
    "split_seed": 0,
}


def per_item(values):
    return PerItem(np.asarray(values, dtype=float))


def row(scores, **cols):
    scores = np.asarray(scores, dtype=float)
    return {
        **cols,
        "avg_at_k": scores.mean(),
        "pass_at_k": 0.0,
        "entropy": 0.5,
        "greedy_accuracy": 0.0,
        "completion_length": 9.0,
        "per_item": per_item(scores),
    }


def measured(real, curve=None, logit=None):
    """A `Measured` of synthetic per-item scores: `real` {step: scores}, `curve` [(t1, target, scores)] (t0 = 0),
    `logit` [(alpha, scores)] (t0 = 10, t1 = 20)."""
    scorer = SimpleNamespace(items=[None] * N, k=8, cfg={"claims": SETTINGS})
    real_t = pd.DataFrame([row(v, step=s) for s, v in real.items()])
    curve_t = pd.DataFrame(
        [row(v, t0=0, t1=t1, target_step=t, beta=t / t1, real_avg_at_k=np.nan) for t1, t, v in curve or []],
        columns=["t0", "t1", "target_step", "beta", *nb.METRICS, "per_item", "real_avg_at_k"],
    )
    logit_t = pd.DataFrame(
        [
            row(v, alpha=a, t0=10, t1=20, target_step=10 + a * 10, real_avg_at_k=np.nan, real_entropy=np.nan)
            for a, v in logit or []
        ],
        columns=["alpha", "t0", "t1", "target_step", *nb.METRICS, "per_item", "real_avg_at_k", "real_entropy"],
    )
    return nb.Measured(scorer, real_t, curve_t, logit_t)


def by_id(m):
    return {c.id: c for c in nb.claims(m)}


RNG = np.random.default_rng(0)
BASE = RNG.uniform(0.3, 0.5, N)
NOISE = np.where(np.arange(N) % 2, 0.3, -0.3)  # mean 0, large per-item spread


def test_select_and_report_halves_are_disjoint():
    sel, rep = measured({0: BASE}).halves
    assert not set(sel) & set(rep) and sorted([*sel, *rep]) == list(range(N)) and abs(len(sel) - len(rep)) <= 1


@pytest.mark.parametrize(
    "extrapolated, verdict", [(BASE + 0.2, "holds"), (BASE, "does not hold"), (BASE + NOISE, "inconclusive")]
)
def test_logit_gain_verdicts(extrapolated, verdict):
    c = by_id(measured({0: BASE - 0.2, 20: BASE}, logit=[(1.0, BASE), (1.5, extrapolated)]))["nb04.logit_gain"]
    assert c.verdict == verdict and "α = 1.5" in c.how and "selection items" in c.how


def test_logit_alpha_is_chosen_on_the_select_half_and_scored_on_the_report_half():
    m = measured({0: BASE})
    sel, rep = m.halves
    good_on_select, good_on_report = BASE.copy(), BASE.copy()
    good_on_select[sel] += 0.3  # α = 2: best on all items together, but only on the select half
    good_on_report[rep] += 0.2  # α = 3: better on the report half
    m = measured({0: BASE}, logit=[(2.0, good_on_select), (3.0, good_on_report)])
    c = by_id(m)["nb04.logit_gain"]
    assert "α = 2" in c.how and c.measured == pytest.approx(0.0) and c.verdict == "does not hold"
    r = nb.results(m)
    assert r["logit_extrapolation_best_alpha"] == 2.0
    assert (r["split_seed"], r["select_items"], r["report_items"]) == (0, len(sel), len(rep))


def test_no_alpha_above_one_is_not_measured():
    c = by_id(measured({0: BASE}, logit=[(1.0, BASE)]))["nb04.logit_gain"]
    assert c.verdict == "inconclusive" and c.measured != c.measured


def picked_then_noise():
    """Best on the select half, a wide spread around no difference on the report half."""
    sel, rep = measured({0: BASE}).halves
    out = BASE.copy()
    out[sel] += 0.1
    out[rep] += NOISE[: len(rep)]
    return out


@pytest.mark.parametrize("peak, verdict", [(0.3, "holds"), (0.0, "does not hold"), (None, "inconclusive")])
def test_weight_peak_and_decline_verdicts(peak, verdict):
    top = picked_then_noise() if peak is None else BASE + peak  # the middle target; θ_t1, the farthest target: BASE
    real = {0: BASE - 0.1, 10: BASE}
    claims = by_id(measured(real, curve=[(10, 20, BASE), (10, 30, top), (10, 40, BASE)]))
    assert claims["nb04.weight_peak"].verdict == verdict and claims["nb04.weight_declines"].verdict == verdict


def test_weight_claims_hull_over_pairs_and_no_decline_without_an_interior_peak():
    real = {0: BASE - 0.1, 10: BASE, 20: BASE}
    m = measured(
        real,
        curve=[
            (10, 20, BASE + 0.3),
            (10, 30, BASE),  # an inverted U
            (20, 30, BASE + 0.1),
            (20, 40, BASE + 0.2),
        ],
    )  # still rising at the end
    claims = by_id(m)
    rise = claims["nb04.weight_peak"]
    assert rise.verdict == "holds" and rise.interval == pytest.approx((0.2, 0.3))  # the hull of both pairs
    assert "t1 = 10: peak t' = 20" in rise.detail and "t1 = 20: peak t' = 40" in rise.detail
    falls = claims["nb04.weight_declines"]  # one pair still rises at its farthest target: no decline to judge
    assert falls.verdict == "inconclusive" and falls.measured != falls.measured
    assert "t1 = 10: peak t' = 20 vs t' = 30 +0.300" in falls.detail and "t1 = 20: peak at the farthest" in falls.detail
    r = nb.results(m)
    assert [p["inverted_u"] for p in r["weight_extrapolation_peaks"]] == [True, False]
    assert (r["weight_extrapolation_peak_step"], r["rl_final_avg_at_k"]) == (20, pytest.approx(BASE.mean()))


def test_results_keep_per_item_scores_out_of_json():
    from helpers.pipeline.results import to_jsonable

    m = measured(
        {0: BASE - 0.1, 10: BASE}, curve=[(10, 20, BASE + 0.1), (10, 30, BASE)], logit=[(1.0, BASE), (1.5, BASE + 0.1)]
    )
    text = json.dumps(to_jsonable(nb.results(m)))
    assert "per_item" not in text and "PerItem" not in text


def tables(alpha_one_scores, t1_scores):
    """A real curve (steps 0, 10, 20) and a logit table (t0 = 10, t1 = 20) with the α = 1 row's per-item scores."""

    def row(scores, **cols):
        scores = np.asarray(scores, dtype=float)
        return {
            **cols,
            "avg_at_k": scores.mean(),
            "pass_at_k": float(scores.max()),
            "entropy": 0.4,
            "greedy_accuracy": 0.5,
            "per_item": PerItem(scores),
        }

    real = pd.DataFrame([row([0, 0, 0, 0], step=0), row([0, 0.5, 0, 0], step=10), row(t1_scores, step=20)])
    logit = pd.DataFrame(
        [
            row(alpha_one_scores, alpha=1.0, t0=10, t1=20, target_step=20, real_avg_at_k=0.3),
            row([1, 1, 1, 1], alpha=1.5, t0=10, t1=20, target_step=25, real_avg_at_k=float("nan")),
        ]
    )
    return real, logit


def test_alpha_one_check_and_table1_keeps_theta_t1():
    real, logit = tables([0.25, 0.5, 0.5, 0], [0.25, 0.5, 0.5, 0])
    assert nb.check_alpha_one(real, logit, "hf") == {
        "avg_at_k": 0.0,
        "pass_at_k": 0.0,
        "greedy_accuracy": 0.0,
        "per_item_mean_abs": 0.0,
    }
    assert "  real checkpoint at t' = 20" in nb.table1(real, logit).index
    real, logit = tables([0.5, 0.25, 0.5, 0], [0.25, 0.5, 0.5, 0])  # same mean, different items
    with pytest.raises(
        ValueError,
        match=r"α = 1 check failed: 'logit extrapolation α = 1 .*' vs 'real checkpoint "
        r"θ_t1 \(step 20\)' differ in per-item scores",
    ):
        nb.check_alpha_one(real, logit, "hf")
    diff = nb.check_alpha_one(real, logit, "vllm")  # another sampler: reported, not asserted
    assert diff["avg_at_k"] == 0.0 and diff["per_item_mean_abs"] == 0.125
    assert nb.check_alpha_one(real, logit[logit.alpha != 1], "hf") == {}
