"""Seeds: every seed's run is its own cached RL run from the shared base; per-seed tables and spreads are exact."""
import math

import pytest

from helpers import seeds, training
from tests.test_training import micro_cfg


def test_seed_list_and_config_for():
    cfg = micro_cfg(**{"rl.seed": 5, "rl.seeds": 3})
    assert seeds.seed_list(cfg) == [5, 6, 7]
    other = seeds.config_for(cfg, 6)
    assert other.rl.seed == 6 and cfg.rl.seed == 5 and other.task == cfg.task
    with pytest.raises(ValueError, match="rl.seeds must be at least 1"):
        seeds.seed_list(micro_cfg(**{"rl.seeds": 0}))


def test_a_users_run_is_one_seed(tmp_path):
    cfg = micro_cfg(**{"rl.seeds": 3, "trajectory.dir": str(tmp_path)})
    assert seeds.seed_list(cfg) == [0]
    assert seeds.run_dirs(cfg) == {0: tmp_path}


def test_seeds_share_the_base_and_differ_in_rl(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path))
    cfg = micro_cfg(**{"rl.seeds": 2})
    dirs = seeds.run_dirs(cfg, workers=1)
    assert list(dirs) == [0, 1] and dirs[0] != dirs[1]
    assert dirs[0] == training.cached_trajectory(cfg) == training.embedded_trajectory(cfg)
    assert training.cached_trajectory(seeds.config_for(cfg, 2)) is None
    # the number of seeds is not part of a run's identity: the same seed-0 run with rl.seeds 1
    assert training.cached_trajectory(micro_cfg(**{"rl.seeds": 1})) == dirs[0]
    ends = seeds.endpoints(cfg)
    assert list(ends) == ["base", "seed 0", "seed 1"]
    assert (ends["base"] / "model.safetensors").read_bytes() == \
        (dirs[1] / "checkpoint-0" / "model.safetensors").read_bytes()
    assert ends["seed 1"] == dirs[1] / "checkpoint-2"
    steps = seeds.per_seed(cfg, lambda traj: traj.steps)
    assert steps == {0: [0, 1, 2], 1: [0, 1, 2]}


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
