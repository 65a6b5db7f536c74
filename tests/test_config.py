import json
import os

import pytest

from helpers.lib import config, paths
from helpers.pipeline import results


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


# ------------------------------------------------------------------------- types, ranges and shapes (issue #18, 2-3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rl.lr": "fast"}, "overrides: rl.lr must be a number > 0, not the string 'fast'"),
        ({"rl.steps": -5}, "overrides: rl.steps must be at least 1, not -5"),
        ({"rl.save_every": 0}, "overrides: rl.save_every must be at least 1, not 0"),
        ({"rl.lr": None}, "overrides: rl.lr must be a number > 0, not null"),
        ({"sft.lr": None}, "overrides: sft.lr must be a number > 0, not null"),
        ({"relex.rank": 0}, "overrides: relex.rank must be at least 1, not 0"),
        ({"relex.rank": -1}, "overrides: relex.rank must be at least 1, not -1"),
        ({"rl.steps": 240.0}, "overrides: rl.steps must be an integer ≥ 1, not 240.0"),
        (
            {"trajectory.allow_pickle": "false"},
            "overrides: trajectory.allow_pickle must be true or false, not the string 'false'",
        ),
        (
            {"rl": 1e-5},
            "overrides: rl is a section (rl.algorithm, rl.optimizer, rl.lr, …): set one of its knobs, "
            "not the whole section to 1e-05",
        ),
        ({"rl.lr.x": 1}, "overrides: rl.lr must be a number > 0, not a section ({'x': 1})"),
        ({"eval.backend": "vlm"}, "overrides: eval.backend must be hf or vllm, not 'vlm'"),
        ({"rl.algorithm": "ppo"}, "overrides: rl.algorithm must be grpo, gspo or reinforce++, not 'ppo'"),
        ({"claims.r2_threshold": 1.0}, "overrides: claims.r2_threshold must be a number in (0, 1) or null, not 1.0"),
        ({"claims.level": 95}, "overrides: claims.level must be in (0, 1), not 95"),
        ({"eval.top_p": 0}, "overrides: eval.top_p must be in (0, 1], not 0"),
        ({"relex.eval_items": 0}, "overrides: relex.eval_items must be an integer ≥ 1 or null, not 0"),
        ({"trajectory.dir": 3}, "overrides: trajectory.dir must be a path or null, not 3"),
        (
            {"relex.ablation.fits": ["linear", "cubic"]},
            "overrides: relex.ablation.fits must be a list of linear, polynomial or sinusoid, not ['linear', 'cubic']",
        ),
        (
            {"extrapolation.weight_pairs": [[0.0, 2.0]]},
            "overrides: extrapolation.weight_pairs must be a list of pairs of numbers in [0, 1], not [[0.0, 2.0]]",
        ),
        ({"origin.sgd_lr": "fast"}, "overrides: origin.sgd_lr must be auto or a number > 0, not 'fast'"),
        ({"rl.lr": 1e-5, "rl": 1}, "overrides: rl is a section"),
        ({"rl": 1, "rl.lr": 1e-5}, "overrides: rl.lr and rl are both set"),
    ],
)
def test_a_bad_value_names_the_key_the_value_and_what_is_allowed(overrides, message):
    with pytest.raises(config.ConfigError) as e:
        config.load(profile="default", overrides=overrides)
    assert str(e.value).startswith(message)


def test_every_bad_key_is_reported_at_once():
    with pytest.raises(config.ConfigError) as e:
        config.load(profile="default", overrides={"rl.lr": "fast", "rl.steps": -5, "seed": 1})
    assert str(e.value) == (
        "overrides: rl.lr must be a number > 0, not the string 'fast'; rl.steps must be at least 1, not -5"
    )


def test_a_quoted_boolean_in_a_file_names_the_file(tmp_path):
    bad = write(tmp_path, "mine.yaml", 'trajectory:\n  allow_pickle: "false"\n')
    with pytest.raises(
        config.ConfigError,
        match=r"mine\.yaml: trajectory\.allow_pickle must be true or false, "
        r"not the string 'false'",
    ):
        config.load(bad, profile="default")
    assert (
        config.load(
            write(tmp_path, "ok.yaml", "trajectory:\n  allow_pickle: true\n"), "default"
        ).trajectory.allow_pickle
        is True
    )


def test_a_bad_profile_value_names_the_profile(tmp_path):
    p = write(tmp_path, "mine.yaml", "rl: {lr: 1e-5}\nprofiles:\n  tiny: {rl: {steps: 0}}\n")
    assert config.load(p, "default").rl.lr == 1e-5  # the file itself is fine; only the profile is checked here
    with pytest.raises(config.ConfigError, match=r"mine\.yaml profiles\.tiny: rl\.steps must be at least 1, not 0"):
        config.load(p, "tiny")
    empty = write(tmp_path, "empty.yaml", "profiles:\n  tiny: 5\n")
    with pytest.raises(
        config.ConfigError, match=r"empty\.yaml profiles\.tiny: expected a mapping of parameters, not 5"
    ):
        config.load(empty, "tiny")
    whole = write(tmp_path, "whole.yaml", "eval: 3\n")
    with pytest.raises(config.ConfigError, match=r"whole\.yaml: eval is a section"):
        config.load(whole, "default")


def test_ints_count_as_floats_and_nullable_knobs_take_null():
    cfg = config.load(
        profile="default",
        overrides={
            "rl.lr": 1,
            "relex.eval_items": None,
            "rl_extra.ablation": None,
            "origin.sgd_lr": 0.1,
            "weight_linearity.entries.min_range": 0,
            "device": "cuda:1",
            "origin.snr_db": [3, "signal=0"],
        },
    )
    assert cfg.rl.lr == 1 and cfg.rl_extra.ablation is None and cfg.device == "cuda:1"


def test_derive_applies_dotted_changes_with_the_same_checks():
    cfg = config.load(profile="default")
    d = config.derive(cfg, {"rl.steps": 6, "task.slip": 0.0})
    assert isinstance(d, config.Config) and (d.rl.steps, d.task.slip) == (6, 0.0)
    assert (d.name, d.profile, d.source) == (cfg.name, cfg.profile, cfg.source) and cfg.rl.steps == 240
    assert config.derive(cfg, {}).hash() == cfg.hash()
    with pytest.raises(config.ConfigError, match=r"\(derived\): rl\.save_every must be at least 1, not 0"):
        config.derive(cfg, {"rl.save_every": 0})
    with pytest.raises(config.ConfigError, match=r"\(derived\)\.rl: unknown parameter 'stepz'"):
        config.derive(cfg, {"rl.stepz": 1})


def test_origin_variant_is_a_checked_derived_config():
    cfg = config.load(profile="default")
    v = config.derive(cfg, {"rl.optimizer": "sgd", "rl.lr": 0.5})
    assert isinstance(v, config.Config) and (v.rl.optimizer, v.rl.lr) == ("sgd", 0.5) and cfg.rl.optimizer == "adamw"
    with pytest.raises(config.ConfigError, match=r"rl\.optimizer must be adamw or sgd, not 'adam'"):
        config.derive(cfg, {"rl.optimizer": "adam"})
