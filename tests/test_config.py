import json
import os

import pytest

from helpers import config, paths, results


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_default_loads_with_profiles(monkeypatch):
    monkeypatch.delenv("RLVR_PROFILE", raising=False)
    cfg = config.load()
    assert cfg.profile == "default" and cfg.run_name == cfg.name
    monkeypatch.setenv("RLVR_PROFILE", "smoke")
    smoke = config.load()
    assert smoke.profile == "smoke" and smoke.run_name.endswith("-smoke")


def test_other_params_inherit_and_reject_unknown(tmp_path):
    ok = write(tmp_path, "ok.yaml", "name: mine\nseed: 7\n")
    cfg = config.load(ok, profile="default")
    assert cfg.seed == 7 and cfg.name == "mine"
    assert cfg.trajectory.allow_pickle is False  # inherited from params/default.yaml
    bad = write(tmp_path, "bad.yaml", "seeed: 7\n")
    with pytest.raises(config.ConfigError, match="bad.yaml.*seeed"):
        config.load(bad, profile="default")


def test_overrides_and_hash():
    a = config.load(profile="default")
    b = config.load(profile="default", overrides={"seed": a.seed + 1})
    assert b.seed == a.seed + 1 and a.hash() != b.hash()
    assert a.hash("trajectory") == b.hash("trajectory")
    with pytest.raises(config.ConfigError, match="overrides.*nope"):
        config.load(profile="default", overrides={"trajectory.nope": 1})


def test_unknown_profile_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="no profile 'huge'"):
        config.load(profile="huge")
    broken = write(tmp_path, "broken.yaml", "a: [1, 2\n")
    with pytest.raises(config.ConfigError, match="broken.yaml: not valid YAML"):
        config.load(broken)
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "missing.yaml")


def test_results_are_atomic_and_json_clean(tmp_path):
    import numpy as np

    path = results.save(tmp_path, "nb", {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(3)}, {"k": 1})
    data = json.loads(path.read_text())
    assert data == {"a": 0.5, "b": None, "c": [0, 1, 2], "_meta": {"k": 1}}
    assert [p.name for p in path.parent.iterdir()] == ["nb.json"]  # no temp file left behind
    path.write_text("{not json")
    with pytest.raises(ValueError, match="corrupt results"):
        results.load(tmp_path, "nb")


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    final = tmp_path / "artefact"
    with pytest.raises(RuntimeError):
        with paths.atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not final.exists() and os.listdir(tmp_path) == []
    with paths.atomic_dir(final) as tmp:
        (tmp / "whole.txt").write_text("x")
    assert (final / "whole.txt").exists()


def test_yaml_reads_exponent_floats():
    assert config.parse_yaml("lr: 1e-6\nn: 3\nx: 1.5e-5") == {"lr": 1e-6, "n": 3, "x": 1.5e-5}
