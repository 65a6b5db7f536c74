"""Run resolution: a config's trajectory, its seeds (each its own cached RL run from the shared base), a user's run."""

import pytest

from helpers.lib import runs, training
from tests.test_training import micro_cfg


def test_seed_list_and_config_for():
    cfg = micro_cfg(**{"rl.seed": 5, "rl.seeds": 3})
    assert runs.seed_list(cfg) == [5, 6, 7]
    other = runs.config_for(cfg, 6)
    assert other.rl.seed == 6 and cfg.rl.seed == 5 and other.task == cfg.task
    with pytest.raises(ValueError, match="rl.seeds must be at least 1"):
        runs.seed_list(micro_cfg(**{"rl.seeds": 0}))


def test_a_users_run_is_one_seed(tmp_path):
    cfg = micro_cfg(**{"rl.seeds": 3, "trajectory.dir": str(tmp_path)})
    assert runs.seed_list(cfg) == [0]
    assert runs.run_dirs(cfg) == {0: tmp_path}


def test_seeds_share_the_base_and_differ_in_rl(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path))
    cfg = micro_cfg(**{"rl.seeds": 2})
    dirs = runs.run_dirs(cfg, workers=1)
    assert list(dirs) == [0, 1] and dirs[0] != dirs[1]
    assert dirs[0] == training.cached_trajectory(cfg) == training.embedded_trajectory(cfg)
    assert training.cached_trajectory(runs.config_for(cfg, 2)) is None
    # the number of seeds is not part of a run's identity: the same seed-0 run with rl.seeds 1
    assert training.cached_trajectory(micro_cfg(**{"rl.seeds": 1})) == dirs[0]
    ends = runs.endpoints(cfg)
    assert list(ends) == ["base", "seed 0", "seed 1"]
    assert (ends["base"] / "model.safetensors").read_bytes() == (
        dirs[1] / "checkpoint-0" / "model.safetensors"
    ).read_bytes()
    assert ends["seed 1"] == dirs[1] / "checkpoint-2"
    steps = runs.per_seed(cfg, lambda traj: traj.steps)
    assert steps == {0: [0, 1, 2], 1: [0, 1, 2]}
