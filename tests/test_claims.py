"""The claims protocol: rules, verdicts, intervals (coverage on simulated data), the held-out split."""

import math

import numpy as np
import pytest

from helpers.experiments import claims as C
from helpers.experiments import paper


def claim(lo, hi, rule):
    return C.Claim("nb99.x", "x", paper.get("rl_gain"), (lo + hi) / 2, (lo, hi), rule, "test")


@pytest.mark.parametrize(
    "interval, verdict", [((0.72, 0.80), "holds"), ((0.60, 0.69), "does not hold"), ((0.65, 0.75), "inconclusive")]
)
def test_above_decides_on_the_interval(interval, verdict):
    assert claim(*interval, C.above(0.7)).verdict == verdict


@pytest.mark.parametrize(
    "interval, verdict",
    [
        ((0.001, 0.05), "holds"),
        ((-0.03, 0.015), "does not hold"),
        ((-0.01, 0.04), "inconclusive"),
        ((0.001, 0.015), "holds"),
    ],
)
def test_a_gain_fails_when_its_interval_rules_out_the_smallest_effect(interval, verdict):
    assert claim(*interval, C.above(0.0, tolerance=0.02)).verdict == verdict


@pytest.mark.parametrize(
    "interval, verdict", [((0.01, 0.04), "holds"), ((0.06, 0.2), "does not hold"), ((0.03, 0.07), "inconclusive")]
)
def test_below(interval, verdict):
    assert claim(*interval, C.below(0.05)).verdict == verdict


def test_an_undefined_interval_is_inconclusive_and_stored_as_null():
    c = C.Claim("nb99.x", "x", paper.get("rl_gain"), math.nan, (math.nan, math.nan), C.above(0), "test")
    assert c.verdict == "inconclusive"
    rec = c.record()
    assert rec["measured"] is None and rec["ci_low"] is None and rec["verdict"] == "inconclusive"
    assert set(rec) >= {"id", "paper", "measured", "ci_low", "ci_high", "verdict", "rule"}
    assert "not measured" in c.sentence()


def test_sentence_and_table_carry_the_verdict_and_the_paper():
    c = claim(0.60, 0.69, C.above(0.7))
    assert "DOES NOT HOLD" in c.sentence() and paper.get("rl_gain").text in c.sentence()
    t = C.table([c, c.record() | {"id": "nb99.y", "claim": "y"}])
    assert list(t.index) == ["x", "y"] and set(t["verdict"]) == {"does not hold"}


def test_bad_rules_are_refused():
    with pytest.raises(ValueError, match="op"):
        C.Rule("=", 0.0)
    with pytest.raises(ValueError, match="tolerance"):
        C.above(0.0, tolerance=-1)


def test_bootstrap_interval_covers_a_known_proportion_at_the_stated_rate():
    rng = np.random.default_rng(1)
    p, n, sims = 0.3, 200, 400
    hits = 0
    for i in range(sims):
        lo, hi = C.bootstrap_mean(rng.random(n) < p, level=0.95, n_boot=400, seed=i)
        hits += lo <= p <= hi
    assert 0.92 <= hits / sims <= 0.98


def test_exact_median_and_share_intervals_cover_at_the_stated_rate():
    rng = np.random.default_rng(2)
    sims, med_hits, share_hits = 400, 0, 0
    for _ in range(sims):
        x = rng.normal(size=301)  # true median 0, true share above 1.0 = 0.1587
        lo, hi = C.median_interval(x, 0.95)
        med_hits += lo <= 0 <= hi
        lo, hi = C.share_interval(int((x > 1).sum()), x.size, 0.95)
        share_hits += lo <= 0.158655 <= hi
    assert 0.92 <= med_hits / sims <= 0.99
    assert 0.91 <= share_hits / sims <= 0.98


def test_paired_difference_is_tighter_than_unpaired_on_correlated_items():
    rng = np.random.default_rng(3)
    a = rng.random(500) < 0.6
    b = a.copy()
    b[rng.choice(500, 15, replace=False)] = False  # b loses 15 items a got right
    d, (lo, hi) = C.paired_difference(a, b, n_boot=1000)
    assert d == pytest.approx(a.mean() - b.mean())
    assert lo > 0  # paired: clearly positive
    wa, wb = C.binomial_interval(a.mean(), 500), C.binomial_interval(b.mean(), 500)
    _, (ulo, _) = C.difference(a.mean(), wa, b.mean(), wb)
    assert ulo < 0  # unpaired cannot tell
    with pytest.raises(ValueError, match="same items"):
        C.paired_difference(a, b[:10])


def test_across_seeds_is_the_mean_and_the_hull():
    m, (lo, hi) = C.across_seeds([0.2, 0.4], [(0.1, 0.3), (0.35, 0.5)])
    assert m == pytest.approx(0.3) and (lo, hi) == (0.1, 0.5)
    m, (lo, hi) = C.across_seeds([0.2, 0.4, math.nan], [(0.1, 0.3), (0.35, 0.5), (math.nan, math.nan)])
    assert math.isnan(lo) and math.isnan(hi)  # an undefined seed is not silently left out
    assert math.isnan(C.across_seeds([], [])[0])


def test_a_point_without_an_interval_renders_and_is_inconclusive():
    c = C.Claim("nb99.x", "x", paper.get("rl_gain"), 0.5, (math.nan, math.nan), C.above(0), "test")
    assert c.verdict == "inconclusive" and "[interval undefined]" in c.sentence()
    assert C.table([c.record()])["measured [interval]"].iloc[0] == "0.500 [interval undefined]"


def test_bonferroni_widens_each_interval():
    assert C.bonferroni(0.95, 5) == pytest.approx(0.99)
    x = np.random.default_rng(4).random(100)
    lo1, hi1 = C.median_interval(x, 0.95)
    lo5, hi5 = C.median_interval(x, C.bonferroni(0.95, 5))
    assert lo5 <= lo1 and hi5 >= hi1 and (lo5, hi5) != (lo1, hi1)


def test_split_gives_disjoint_halves_covering_every_item():
    sel, rep = C.split(501, seed=7)
    assert not set(sel) & set(rep) and len(sel) + len(rep) == 501 and abs(len(sel) - len(rep)) <= 1
    assert np.array_equal(C.split(501, seed=7)[0], sel) and not np.array_equal(C.split(501, seed=8)[0], sel)
    with pytest.raises(ValueError, match="at least 2"):
        C.split(1)


def test_settings_follow_the_params_and_null_threshold_is_the_papers_bar():
    from helpers.lib import config

    cfg = config.load("params/default.yaml", profile="default")
    assert C.Settings.of(cfg).r2_threshold == paper.R2_BAR
    cfg = config.load("params/default.yaml", profile="default", overrides={"claims.r2_threshold": 0.8})
    assert C.r2_threshold(cfg) == 0.8


def test_every_paper_number_has_a_source():
    assert all(n.text and n.source for n in paper.NUMBERS.values())
    with pytest.raises(KeyError, match="known"):
        paper.get("nope")


def test_an_unbounded_side_still_decides():
    assert claim(1.5, math.inf, C.above(1)).verdict == "holds"
    assert claim(0.5, math.inf, C.above(1)).verdict == "inconclusive"
    c = C.Claim("nb99.x", "x", paper.get("rl_gain"), 2.4, (0.5, math.inf), C.above(1), "test")
    assert "2.400 [0.500, ∞]" in c.sentence() and c.record()["ci_high"] is None
    assert C.table([c.record()])["measured [interval]"].iloc[0] == "2.400 [0.500, ∞]"  # as stored in JSON
