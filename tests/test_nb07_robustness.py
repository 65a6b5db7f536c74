"""Notebook 07's experiment: the design in the params, and the table, claims and results computed from what the grid's
runs measured (handed over as a `Grid`, built here in memory)."""

import json
import math

import pandas as pd
import pytest

from helpers.experiments import claims
from helpers.experiments import nb07_robustness as R
from helpers.lib import config, training


def params_with(tmp_path, settings, extra=""):
    """A params file inheriting the default, with its own robustness settings."""
    p = tmp_path / "grid.yaml"
    p.write_text(f"name: grid\n{extra}robustness:\n  settings: {json.dumps(settings)}\n")
    return p


# ------------------------------------------------------------------------------------------------------ the design


def test_default_design_is_one_factor_at_a_time_around_the_default():
    cfg = config.load("params/default.yaml", "default")
    settings = R.design(cfg)
    by = {}
    for s in settings:
        by.setdefault(s.factor, []).append(s)
    assert [s.label for s in settings if s.is_reference] == ["reference=default"]
    assert {k: len(v) for k, v in by.items()} == {
        "reference": 1,
        "algorithm": 2,
        "lr": 2,
        "rollouts": 2,
        "optimizer": 1,
        "model": 2,
        "training": 1,
    }
    assert {s.overrides["rl.algorithm"] for s in by["algorithm"]} == {"gspo", "reinforce++"} <= set(training.ALGORITHMS)
    assert sorted(s.scale["rl.lr"] for s in by["lr"]) == [pytest.approx(1 / 3, rel=1e-5), 3]
    assert sorted(s.overrides["rl.rollouts"] for s in by["rollouts"]) == [4, 16] and cfg.rl.rollouts == 8
    assert by["optimizer"][0].overrides == {"rl.optimizer": "sgd", "rl.lr": R.SGD_LR}
    assert by["training"][0].trajectory == "sft"
    for s in settings:  # every setting's knobs load (the SGD lr token aside)
        config.load("params/default.yaml", "default", {k: v for k, v in s.overrides.items() if v != R.SGD_LR})
    smoke = R.design(config.load("params/default.yaml", "smoke"))
    assert [(s.label, s.trajectory) for s in smoke] == [("reference=default", "rl"), ("training=SFT", "sft")]
    table = R.design_table(cfg)
    assert table.loc[3, "changes"] == "rl.lr × 0.333333" and table.loc[10, "run directory"] == "robustness/training=SFT"


@pytest.mark.parametrize(
    "settings, message",
    [
        ([{"factor": "a"}], "expected a mapping with at least `factor` and `value`"),
        ([{"factor": "a", "value": 1, "override": {}}], "unknown keys ['override']"),
        ([{"factor": "a", "value": 1, "overrides": {"rl.lrr": 1}}], "(a=1): no parameter 'rl.lrr'"),
        ([{"factor": "a", "value": 1, "scale": {"rl.algorithm": 2}}], "scale rl.algorithm: 2 needs a number"),
        ([{"factor": "a", "value": 1, "trajectory": "dpo"}], "trajectory must be one of"),
        (
            [
                {"factor": "a", "value": "x y", "overrides": {"seed": 1}},
                {"factor": "a", "value": "x-y", "overrides": {"seed": 2}},
            ],
            "share a run directory name",
        ),
        ([{"factor": "a", "value": 1}, {"factor": "b", "value": 2}], "more than one setting without changes"),
    ],
)
def test_bad_designs_name_the_file_and_the_setting(tmp_path, settings, message):
    p = params_with(tmp_path, settings)
    with pytest.raises(ValueError) as e:
        R.design(config.load(p, "default"))
    assert str(p) in str(e.value) and message in str(e.value)


# ------------------------------------------------------------------------------------------ what the runs measured

NOTEBOOKS = ("00_trajectory", "01_weight_linearity", "02_output_linearity")


def measured(weight=None, token=None, acc=(0.2, 0.4), ci=0.02) -> dict:
    """Results of notebooks 00-02 as the notebooks write them; the medians' intervals are median ± `ci`."""

    def interval(q):
        return {} if ci is None or not q else {"median_ci": [q[1] - ci, q[1] + ci]}

    return {
        "00_trajectory": {"base_accuracy": acc[0], "final_accuracy": acc[1], "train_seconds": 60.0},
        "01_weight_linearity": dict(zip(("weight_r2_q1", "weight_r2_median", "weight_r2_q3"), weight or ()))
        | {"weight_r2_frac_above_0_7": 0.6}
        | {f"weight_r2_{k}": v for k, v in interval(weight).items()},
        "02_output_linearity": dict(zip(("token_r2_q1", "token_r2_median", "token_r2_q3"), token or ()))
        | {f"token_r2_{k}": v for k, v in interval(token).items()},
    }


# (setting, its knobs, weight R² quartiles, token R² quartiles): a reference, a non-linear lr setting, SGD, SFT, and a
# setting with no results from its own params
SPECS = [
    (R.Setting("reference", "default"), {"optimizer": "adamw", "lr": 3e-4}, (0.6, 0.85, 0.95), (0.8, 0.9, 0.97)),
    (
        R.Setting("lr", "3x", scale={"rl.lr": 3}),
        {"optimizer": "adamw", "lr": 9e-4},
        (0.3, 0.55, 0.8),
        (0.7, 0.88, 0.95),
    ),
    (
        R.Setting("optimizer", "SGD", {"rl.optimizer": "sgd"}),
        {"optimizer": "sgd", "lr": 0.4},
        (0.5, 0.78, 0.9),
        (0.6, 0.8, 0.9),
    ),
    (
        R.Setting("training", "SFT", trajectory="sft"),
        {"optimizer": "adamw", "lr": 3e-4},
        (0.2, 0.45, 0.7),
        (0.1, 0.35, 0.6),
    ),
    (R.Setting("model", "2 layers", {"model.layers": 2}), {"optimizer": "adamw", "lr": 3e-4}, None, None),
]


@pytest.fixture
def fake_grid(tmp_path):
    """A reference, a non-linear lr setting, SGD, SFT, and a setting with no results from its own params; each
    notebook's last execution took 20 s."""
    run_dir = tmp_path / "outputs" / "default"
    runs = []
    for s, knobs, w, t in SPECS:
        d = run_dir if s.is_reference else run_dir / "robustness" / s.dirname
        found = measured(w, t) if w else {}
        runs.append(R.SettingRun(s, d, dict(s.overrides), "complete", knobs, found, {nb: 20.0 for nb in found}))
    return R.Grid(run_dir, list(NOTEBOOKS), runs, 1.0)


CFG = config.load("params/default.yaml", "default")


def test_table_reads_the_results_and_marks_the_linear_regime(fake_grid):
    t = R.collect(fake_grid, CFG)
    assert list(t.index) == ["reference=default", "lr=3x", "optimizer=SGD", "training=SFT", "model=2 layers"]
    ref = t.loc["reference=default"]
    assert (ref.weight_r2_median, ref.weight_r2_q1, ref.token_r2_q3, ref.final_accuracy) == (0.85, 0.6, 0.97, 0.4)
    assert ref.seconds == 60.0 and ref.measured and ref.linear
    assert ref.weight_r2_median_ci == pytest.approx((0.83, 0.87))
    assert ref.token_r2_median_ci == pytest.approx((0.88, 0.92))
    assert list(t["linear"]) == [True, False, True, False, False]
    stale = t.loc["model=2 layers"]
    assert not stale.measured and math.isnan(stale.weight_r2_median) and math.isnan(stale.seconds)
    assert all(math.isnan(x) for x in stale.weight_r2_median_ci)
    shown = R.fig2_table(t)
    assert (
        shown.loc["lr=3x", "weight R² IQR"] == "0.30 – 0.80" and shown.loc["model=2 layers", "linear"] == "not measured"
    )


def _table(*rows):
    """A `collect`-like table of (label, trajectory, reference, weight (median, lo, hi), token (median, lo, hi))."""
    return pd.DataFrame(
        [
            {
                "trajectory": traj,
                "reference": ref,
                "weight_r2_median": w[0],
                "weight_r2_median_ci": w[1:],
                "token_r2_median": k[0],
                "token_r2_median_ci": k[1:],
            }
            for _, traj, ref, w, k in rows
        ],
        index=[r[0] for r in rows],
    )


NAN3 = (math.nan,) * 3


def test_claims_from_the_grid(fake_grid):
    rl, sft_w, sft_k = R.claims(R.collect(fake_grid, CFG), CFG)
    assert [c.id for c in (rl, sft_w, sft_k)] == [
        "nb07.rl_settings_linear",
        "nb07.sft_less_linear_weight",
        "nb07.sft_less_linear_token",
    ]
    # lr=3x is the least linear RL setting (weight 0.55 ± 0.02); model=2 layers has no results: no interval
    assert rl.measured == 0.55 and "least linear: lr=3x (weight)" in rl.detail and rl.verdict == "inconclusive"
    assert "no median or interval for model=2 layers (weight), model=2 layers (token)" in rl.detail
    assert sft_w.measured == pytest.approx(0.4) and sft_w.verdict == "holds" and sft_k.verdict == "holds"
    assert "reference=default 0.850 [0.830, 0.870], training=SFT 0.450" in sft_w.detail


REF = ("ref", "rl", True, (0.85, 0.8, 0.9), (0.9, 0.85, 0.95))


@pytest.mark.parametrize(
    "rows, verdict",
    [
        ([REF, ("lr", "rl", False, (0.78, 0.75, 0.8), (0.8, 0.77, 0.85))], "holds"),
        ([REF, ("lr", "rl", False, (0.78, 0.75, 0.8), (0.6, 0.55, 0.65))], "does not hold"),
        ([REF, ("lr", "rl", False, (0.72, 0.65, 0.8), (0.8, 0.77, 0.85))], "inconclusive"),
        ([("ref", "rl", True, (0.85, 0.8, 0.9), (0.9, math.nan, math.nan))], "inconclusive"),  # an interval missing
        ([("sft", "sft", False, (0.4, 0.35, 0.45), (0.3, 0.25, 0.35))], "inconclusive"),  # no RL setting
    ],
)
def test_rl_settings_claim_takes_the_least_linear_setting_and_space(rows, verdict):
    c = R.claims(_table(*rows), CFG)[0]
    assert c.verdict == verdict and c.rule.threshold == claims.r2_threshold(CFG)
    if verdict == "holds":  # [min of the lows, min of the highs]
        assert c.interval == (0.75, 0.8) and c.measured == 0.78 and c.detail == "least linear: lr (weight)"


@pytest.mark.parametrize(
    "sft, verdicts",
    [
        (((0.45, 0.43, 0.47), (0.35, 0.3, 0.4)), ("holds", "holds")),
        (((0.84, 0.82, 0.86), (0.84, 0.74, 0.94)), ("does not hold", "inconclusive")),  # no gap / a wide one
        (None, ("inconclusive", "inconclusive")),  # no SFT setting
    ],
)
def test_sft_claims_compare_the_reference_with_sft(sft, verdicts):
    rows = [("ref", "rl", True, (0.85, 0.84, 0.86), (0.9, 0.86, 0.94)), ("lr", "rl", False, (0.2, 0.1, 0.3), NAN3)]
    if sft:
        rows.append(("sft", "sft", False, *sft))
    _, w, k = R.claims(_table(*rows), CFG)
    assert (w.verdict, k.verdict) == verdicts and w.rule.tolerance == claims.Settings.of(CFG).r2_margin


def test_results_hold_the_issue_keys(fake_grid):
    res = R.results(fake_grid, R.collect(fake_grid, CFG))
    first = res["settings"][0]
    for key in (
        "factor",
        "value",
        "weight_r2_median",
        "weight_r2_q1",
        "weight_r2_q3",
        "token_r2_median",
        "token_r2_q1",
        "token_r2_q3",
        "weight_r2_median_ci",
        "token_r2_median_ci",
    ):
        assert key in first
    assert first["run"] == "." and res["settings"][1]["run"] == "robustness/lr=3x"
    assert (res["sft_weight_r2_median"], res["sft_token_r2_median"]) == (0.45, 0.35)
    assert (res["rl_weight_r2_median_min"], res["rl_weight_r2_median_max"]) == (0.55, 0.85)
    assert res["n_measured"] == 4 and res["nonlinear_settings"] == ["lr=3x", "training=SFT"]
