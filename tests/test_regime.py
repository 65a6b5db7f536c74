"""Regime search: the sweep file is checked, each setting's config is base + common + its overrides + the seed, and
the curve statistics and criteria verdicts are computed as documented."""

import json

import pytest

from helpers.lib import config
from helpers.pipeline import regime

SWEEP = """
name: t
base: params/default.yaml
seeds: [0, 1]
criteria: {min_gain: 0.15, max_end_drop: 0.05, min_weight_frac: 0.7, min_token_median: 0.8, max_rl_seconds: 300}
common: {task.heldout_size: 50}
settings:
  - name: a
    overrides: {rl.lr: 3.0e-5}
  - name: b
    overrides: {task.heldout_size: 20}
"""


def sweep_file(tmp_path, text=SWEEP):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_setting_config_layers_common_overrides_and_seed(tmp_path):
    sweep = regime.load_sweep(sweep_file(tmp_path))
    a = regime.setting_config(sweep, "a", 1)
    assert a.rl.lr == 3e-5 and a.rl.seed == 1 and a.task.heldout_size == 50
    assert regime.setting_config(sweep, "b", 0).task.heldout_size == 20  # a setting overrides `common`


@pytest.mark.parametrize(
    "edit, message",
    [
        (("min_rl_seconds", "max_rl_seconds"), "criteria lacks max_rl_seconds"),
        (("name: b", "name: a"), "setting names must be unique"),
        (("rl.lr: 3.0e-5", "rl.lrr: 3.0e-5"), "lrr"),
    ],
)
def test_bad_sweep_files_name_the_problem(tmp_path, edit, message):
    text = SWEEP.replace("max_rl_seconds", "min_rl_seconds") if edit[1] == "max_rl_seconds" else SWEEP.replace(*edit)
    with pytest.raises(config.ConfigError, match=message):
        regime.load_sweep(sweep_file(tmp_path, text))


def test_curve_stats():
    steps = [0, 10, 20, 30, 40, 50, 60]
    linear = regime.curve_stats(steps, [0.2 + 0.05 * i for i in range(7)])
    assert linear["gain"] == pytest.approx(0.3) and linear["end_drop"] == pytest.approx(0)
    assert linear["late_gain"] == pytest.approx(0.1) and linear["accuracy_r2"] == pytest.approx(1)
    assert linear["early_share"] == pytest.approx(0.25, abs=0.1)  # the checkpoint nearest a quarter: step 20
    jump = regime.curve_stats(steps, [0.2, 0.5, 0.5, 0.5, 0.5, 0.5, 0.4])
    assert jump["peak"] == 0.5 and jump["end_drop"] == pytest.approx(0.1) and jump["early_share"] == pytest.approx(1.5)
    assert jump["late_gain"] < 0


def test_collect_applies_every_criterion_to_every_seed(tmp_path):
    sweep = regime.load_sweep(sweep_file(tmp_path))
    good = {
        "base": 0.3,
        "final": 0.6,
        "gain": 0.3,
        "peak": 0.6,
        "end_drop": 0.0,
        "late_gain": 0.05,
        "early_share": 0.4,
        "accuracy_r2": 0.9,
        "weight_r2_median": 0.85,
        "weight_r2_frac_above_0_7": 0.75,
        "token_r2_median": 0.9,
        "tokens_kept": 100,
        "rl_seconds": 100.0,
    }
    for name, seed, change in [("a", 0, {}), ("a", 1, {}), ("b", 0, {}), ("b", 1, {"weight_r2_frac_above_0_7": 0.6})]:
        d = tmp_path / "out" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / f"seed-{seed}.json").write_text(json.dumps({**good, **change, "seed": seed}))
    rows = {r["name"]: r for r in regime.collect(sweep, tmp_path / "out")}
    assert (rows["a"]["a"], rows["a"]["b"], rows["a"]["c"]) == (True, True, True)
    assert (rows["b"]["a"], rows["b"]["b"]) == (True, False) and rows["b"]["weight_frac_min"] == 0.6
    text = regime.markdown(sweep, list(rows.values()))
    assert "| a | 2 |" in text and "| b | 1 | 0.300 → 0.600" in text


def test_the_default_is_the_searchs_chosen_setting():
    """params/default.yaml and the sweep's `chosen` setting train the same run (same cache key sections)."""
    from helpers.lib import training

    sweep = regime.load_sweep("params/sweeps/regime_search.yaml")
    chosen = regime.setting_config(sweep, sweep["chosen"], 0)
    default = config.load("params/default.yaml", profile="default")
    for section in ("task", "model", "sft", "eval"):
        assert chosen[section] == default[section], section
    assert training.run_key(chosen, ("rl",)) == training.run_key(default, ("rl",))


def test_measure_and_payoffs_on_a_micro_run(tmp_path, monkeypatch, one_thread):
    """Stage 1 and stage 2 of one micro config: the numbers come from the run's own log and checkpoints."""
    from helpers.experiments.training_log import read_log
    from helpers.lib import tasks, training
    from tests.test_training import micro_cfg

    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path))  # reward that varies within a group (as tests/test_training)
    monkeypatch.setattr(tasks, "reward", lambda prompts, completions, **kw: [float(len(c) % 2) for c in completions])
    cfg = micro_cfg(
        **{
            "rl.steps": 4,
            "rl.save_every": 1,
            "output_linearity.prompts": 2,
            "output_linearity.samples_per_prompt": 2,
            "weight_linearity.entries.min_samples": 50,
        }
    )
    m = regime.measure(cfg)
    log = read_log(training.embedded_trajectory(cfg)).dropna(subset=["heldout_accuracy"])
    assert m["base"] == log["heldout_accuracy"].iloc[0] and m["final"] == log["heldout_accuracy"].iloc[-1]
    assert m["heldout_items"] == 8 and 0 <= m["weight_r2_frac_above_0_7"] <= 1
    p = regime.payoffs(cfg)
    assert p["final"] == m["final"] and p["weight_t1"] == 1 and p["rl_extra"] == "(1,1)"
    for key in ("weight_extrapolated", "relex_15", "relex_25", "rl_extra_final"):
        assert 0 <= p[key] <= 1
    assert p["standard_steps_to_final"] <= 4
