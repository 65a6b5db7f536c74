"""Reporting over seeds: per-seed tables, spreads and hulls are exact."""

import math

import pytest

from helpers.experiments import seeds


def test_spread_describe_table_results():
    s = seeds.spread([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["sd"] == pytest.approx(0.1) and (s["min"], s["max"]) == (0.1, 0.3)
    assert seeds.describe([0.5]) == "0.500 (1 seed)"
    assert seeds.describe([0.1, 0.2, 0.3]) == "0.200 ± 0.100 (min 0.100, max 0.300; 3 seeds)"
    assert seeds.describe([float("nan"), 0.2, 0.4]) == "0.300 ± 0.141 (min 0.200, max 0.400; 2 seeds; 1 undefined)"
    assert seeds.describe([float("nan"), 0.5]) == "0.500 (1 seed; 1 undefined)"
    assert seeds.describe([float("nan")]) == "undefined on every seed (1)"
    by_seed = {0: {"median": 0.8, "frac_above": 0.6}, 1: {"median": 0.9, "frac_above": 0.8}}
    t = seeds.table(by_seed, {"median": "R² median"})
    assert list(t.index) == ["seed 0", "seed 1", "mean", "sd"]
    assert t.loc["mean", "R² median"] == pytest.approx(0.85)
    assert t.loc["sd", "R² median"] == pytest.approx(math.sqrt(0.005))
    assert seeds.results(by_seed, {"frac_above": "share_by_seed"}) == {"seeds": [0, 1], "share_by_seed": [0.6, 0.8]}


def test_across_seeds_mean_hull_detail_and_settings_check():
    by_seed = {0: {"m": 0.8, "ci": (0.7, 0.9), "level": 0.95}, 3: {"m": 0.6, "ci": (0.5, 0.65), "level": 0.95}}
    mean, hull, detail = seeds.across(by_seed, "m", "ci")
    assert mean == pytest.approx(0.7) and hull == (0.5, 0.9)
    assert detail == "seed 0: 0.800 [0.700, 0.900]; seed 3: 0.600 [0.500, 0.650]"
    assert seeds.hull_how("exact interval", 1) == "exact interval"
    assert seeds.hull_how("exact interval", 3) == "exact interval; hull over 3 seeds"
    seeds.check_made_at(by_seed, level=0.95)
    with pytest.raises(ValueError, match=r"seed 0: measured at \{'level': 0.95\}"):
        seeds.check_made_at(by_seed, level=0.9)
