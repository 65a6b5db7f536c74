"""Notebook 05's experiment: the RL-Extra runs' cache (`train_run`, `train_all`, with training stubbed) and the analysis
and claims on synthetic accuracy curves (no training)."""

import json
import math

import pandas as pd
import pytest

from helpers.experiments import claims
from helpers.experiments import nb05_rl_extra as R
from helpers.lib import cache, config, training

STEPS = list(range(0, 141, 10))
STD = [0.2 + 0.2 * s / 140 for s in STEPS]  # 0.2 -> 0.4, linear; targets 0.3 / 0.36 / 0.4
FAST = [min(0.2 + 0.2 * s / 35, 0.45) for s in STEPS]  # 4x faster, saturating above the standard best
SLOW = [0.2 + 0.1 * s / 140 for s in STEPS]  # half the standard slope: never reaches 0.36


def _cfg(items=2000, **over):
    return config.load(
        "params/default.yaml",
        "default",
        {
            "rl.steps": 140,
            "rl.save_every": 10,
            "rl_extra.configs": [[20, 100], [100, 100]],
            "task.heldout_size": items,
            "eval.heldout_during_training": items,
            **over,
        },
    )


def _analyse(cfg, extra, keep=STD):
    """Standard = STD; both main runs follow `extra`; the ablation twin (keep) follows `keep`."""
    plan = R.plan(cfg)
    runs = pd.DataFrame(
        [{"label": "standard", "m": None, "n": 0, "optimizer": None, "beta": 1.0, "train_seconds": 1.0}]
        + [{**r, "train_seconds": 2.0} for r in plan]
    )
    acc = {"standard": STD} | {r["label"]: (keep if r["optimizer"] == "keep" else extra) for r in plan}
    table = pd.concat(
        [
            pd.DataFrame({"label": lab, "rl_steps": STEPS, "accuracy": a, "effective_steps": STEPS})
            for lab, a in acc.items()
        ],
        ignore_index=True,
    )
    return R.analyse(cfg, runs, table)


def test_steps_to_target_speedup_and_fixed_budget_on_known_curves():
    cfg = _cfg()
    assert [(r["label"], r["beta"]) for r in R.plan(cfg)] == [
        ("RL-Extra(2,10) reset", 6.0),
        ("RL-Extra(10,10) reset", 2.0),
        ("RL-Extra(10,10) keep", 2.0),
    ]
    assert R.plan(_cfg(**{"rl_extra.paper_steps": None})) == R.plan(cfg)  # null: the paper's run length
    a = _analyse(cfg, FAST)
    assert a.goals == pytest.approx([0.3, 0.36, 0.4])
    assert a.main == ["RL-Extra(2,10) reset", "RL-Extra(10,10) reset"]
    steps = a.reach.steps.unstack("target")
    assert steps.loc["standard"].tolist() == [70, 120, 140]
    assert steps.loc["RL-Extra(2,10) reset"].tolist() == [20, 30, 40]
    speed = a.speed.speedup.unstack("target")
    assert speed.loc["RL-Extra(2,10) reset"].tolist() == pytest.approx([3.5, 4.0, 3.5])
    assert speed.loc["RL-Extra(10,10) keep"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert a.budget.rl_steps.tolist() == [20, 40, 80, 120]  # 200/400/800/1200 of 1400 -> 20/40/80/120
    assert a.budget.gain.tolist() == pytest.approx([FAST[s // 10] - STD[s // 10] for s in (20, 40, 80, 120)])


def test_speedup_interval_on_a_hand_made_example():
    # 100 items, 95 % Wilson: 0.3 -> [0.219, 0.396], 0.5 -> [0.404, 0.596], 0.7 -> [0.604, 0.781]; target 0.45
    curves = pd.DataFrame(
        {
            "label": ["standard"] * 5 + ["rx"] * 5,
            "rl_steps": [0, 10, 20, 30, 40] * 2,
            "accuracy": [0.1, 0.2, 0.3, 0.5, 0.7] + [0.1, 0.5, 0.7, 0.7, 0.7],
        }
    )
    reach = R.reach_bounds(curves, [0.45], 100, 0.95)
    assert reach.loc[("standard", "0.450")].tolist() == [30, 30, 40]  # steps, optimistic, pessimistic
    assert reach.loc[("rx", "0.450")].tolist() == [10, 10, 20]
    speed = R.speed_bounds(curves, reach, ["0.450"]).loc[("rx", "0.450")]
    assert (speed.speedup, speed.low, speed.high, speed.informative) == (3.0, 30 / 20, 40 / 10, True)
    nan = math.nan
    assert R.speedup_interval(30, 40, nan, nan, 50, 50) == (0.0, 40 / 50)  # RL-Extra never reaches the target
    lo, hi = R.speedup_interval(nan, nan, 10, 20, 50, 50)  # standard never reaches it
    assert lo == 50 / 20 and hi == math.inf
    assert R.speedup_interval(0, 40, 0, 10, 50, 50)[1] == math.inf  # RL-Extra there at step 0


EXPECT = {  # scenario -> verdict of speedup, every budget, on_track, optimizer_reset_vs_keep
    "faster": (FAST, 2000, ("holds",) * 4),
    "slower": (SLOW, 2000, ("does not hold",) * 4),
    "same": (STD, 2000, ("inconclusive", "inconclusive", "inconclusive", "does not hold")),  # no effect worth claiming
    "same, 100 items": (STD, 100, ("inconclusive",) * 4),
}


@pytest.mark.parametrize("scenario", EXPECT)
def test_claims_verdicts(scenario):
    extra, items, (speed, budget, on_track, optimizer) = EXPECT[scenario]
    cs = {c.id: c for c in R.claims(_analyse(_cfg(items), extra, keep=STD))}
    assert list(cs) == [
        "nb05.speedup",
        "nb05.budget_20",
        "nb05.budget_40",
        "nb05.budget_80",
        "nb05.budget_120",
        "nb05.on_track",
        "nb05.optimizer_reset_vs_keep",
    ]
    assert cs["nb05.speedup"].verdict == speed
    assert {cs[f"nb05.budget_{b}"].verdict for b in (20, 40, 80, 120)} == {budget}
    assert cs["nb05.on_track"].verdict == on_track
    assert cs["nb05.optimizer_reset_vs_keep"].verdict == optimizer
    if scenario == "same, 100 items":  # too noisy to confirm any standard crossing
        assert "reaches no upper target" in cs["nb05.speedup"].detail
        assert cs["nb05.speedup"].ci_high == math.inf  # no upper bound, yet measured and shown


def test_best_of_k_uses_the_bonferroni_level():
    a = _analyse(_cfg(500), FAST)
    assert a.speed_level == claims.bonferroni(0.95, 2 * 2)  # 2 main runs × 2 upper targets
    c = next(c for c in R.claims(a) if c.id == "nb05.budget_40")
    p, q = FAST[4], STD[4]

    def at(lvl):
        return claims.difference(p, claims.binomial_interval(p, 500, lvl), q, claims.binomial_interval(q, 500, lvl))[1]

    assert c.interval == pytest.approx(at(claims.bonferroni(0.95, 2)))
    assert c.interval[0] < at(0.95)[0]  # wider than one comparison's interval
    low = R.reach_bounds(a.curves, a.goals, 500, a.speed_level)
    assert low.equals(a.reach)


def test_results_keep_their_keys_and_serialise():
    res = R.results(_analyse(_cfg(), FAST))
    json.dumps(res)
    for key in (
        "standard_final_accuracy",
        "steps_to_target",
        "speedups",
        "best_speedup",
        "best_speedup_config",
        "best_speedup_target",
        "fixed_budget",
        "fixed_budget_mean_gain",
        "final_accuracy",
        "heldout_items",
        "runs",
        "curves",
        "reset_minus_keep_mean",
        "interval_level",
    ):
        assert key in res, key
    assert "noise_margin" not in res
    assert (res["best_speedup"], res["best_speedup_target"]) == (pytest.approx(4.0), "0.360")
    no_twin = R.claims(_analyse(_cfg(**{"rl_extra.ablation": None}), FAST))
    assert "nb05.optimizer_reset_vs_keep" not in [c.id for c in no_twin]


def test_train_run_is_a_versioned_cached_build(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "outputs"))
    cfg = _cfg()
    trained = []

    def fake_train_rl(cfg, out_dir, callbacks=(), base_dir=None):
        (cb,) = callbacks
        trained.append((cb.m, cb.n, cb.norms, cb.optimizer, base_dir))
        (out_dir / "log.csv").write_text("step,heldout_accuracy\n0,0.1\n")
        return out_dir

    monkeypatch.setattr(training, "base_model", lambda cfg: tmp_path / "base")
    monkeypatch.setattr(training, "train_rl", fake_train_rl)
    assert R.cached_run(cfg, 10, 10, "keep") is None
    run = R.train_run(cfg, 10, 10, "keep")  # the ablation twin of the plan
    key = training.run_key(cfg, ("task", "model", "sft", "rl", "eval")) | {
        "m": 10,
        "n": 10,
        "norms": cfg.rl_extra.norms,
        "optimizer": "keep",
    }
    assert run == cache.cache_dir("rl_extra", key, R.VERSION) and run.name.startswith("rl_extra-v1-")
    info = cache.build_info(run)
    assert {k: info[k] for k in ("m", "n", "optimizer", "norms", "version")} == {
        "m": 10,
        "n": 10,
        "optimizer": "keep",
        "norms": cfg.rl_extra.norms,
        "version": 1,
    }
    assert "seconds" in info and "train_seconds" not in info
    assert R.train_run(cfg, 10, 10, "keep") == run == R.cached_run(cfg, 10, 10, "keep")
    assert trained == [(10, 10, cfg.rl_extra.norms, "keep", tmp_path / "base")]  # built once, then reused

    std = tmp_path / "standard"
    std.mkdir()
    (std / cache.BUILD_FILE).write_text(json.dumps({"seconds": 3.5, "version": 1}))
    monkeypatch.setattr(training, "embedded_trajectory", lambda cfg: std)
    monkeypatch.setattr(training, "in_processes", lambda fn, arg_lists: [fn(*a) for a in arg_lists])
    runs = R.train_all(cfg)
    assert runs.label.tolist() == ["standard"] + [r["label"] for r in R.plan(cfg)]
    assert runs.train_seconds.iloc[0] == 3.5 and runs.train_seconds.notna().all()
    assert sorted(trained) == sorted(
        (r["m"], r["n"], cfg.rl_extra.norms, r["optimizer"], tmp_path / "base") for r in R.plan(cfg)
    )  # the missing ones only, once


def test_logged_items_are_the_first_heldout_during_training_problems():
    assert R.logged_items(_cfg(2000, **{"eval.heldout_during_training": 500})) == 500
    assert R.logged_items(_cfg(100, **{"eval.heldout_during_training": 500})) == 100
    assert _analyse(_cfg(), FAST).items == 2000
