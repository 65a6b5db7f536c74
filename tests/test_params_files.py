"""Every params file parses, changes only knobs params/default.yaml defines (the notebooks' knobs), with values the code
accepts; the papers' settings carry the papers' numbers."""

import pytest
import yaml

from helpers.lib import backends, config, training
from helpers.lib.paths import REPO

PARAMS = sorted((REPO / "params").glob("*.yaml"))
PAPER = [p for p in PARAMS if p.name != "default.yaml"]
DEFAULT = yaml.safe_load((REPO / "params" / "default.yaml").read_text())


def knob_values(node: dict, prefix: str = "") -> dict:
    """{dotted knob: value} of a nested params mapping."""
    out = {}
    for key, val in node.items():
        out |= knob_values(val, f"{prefix}{key}.") if isinstance(val, dict) else {f"{prefix}{key}": val}
    return out


def knob_paths(node: dict) -> list[str]:
    return list(knob_values(node))


def test_the_papers_settings_are_there():
    assert {p.stem for p in PAPER} >= {
        "lin-r1-distill-1.5b-grpo",
        "lin-r1-distill-1.5b-gspo",
        "lin-r1-distill-1.5b-reinforce-pp",
        "relex-qwen2.5-math-1.5b",
    }


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.stem)
def test_parses_with_every_profile_and_values_the_code_accepts(path):
    raw = yaml.safe_load(path.read_text())
    for profile in ["default", *(raw.get("profiles") or {})]:
        cfg = config.load(path, profile)
        assert cfg.name == path.stem
        assert cfg.rl.algorithm in training.ALGORITHMS and cfg.rl.optimizer in training.OPTIMIZERS
        assert cfg.eval.backend in backends.BACKENDS
        assert cfg.task.kind in ("arithmetic", "math")
        assert cfg.task.kind == "arithmetic" or cfg.math.dataset, "task.kind math needs math.dataset"


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_changes_only_knobs_the_notebooks_define(path):
    raw = yaml.safe_load(path.read_text())
    raw.pop("name", None)
    known = set(knob_paths({k: v for k, v in DEFAULT.items() if k != "profiles"}))
    profiles = raw.pop("profiles", None) or {}
    unknown = sorted(set(knob_paths(raw)).union(*(knob_paths(b) for b in profiles.values())) - known)
    assert not unknown, f"{path}: knobs params/default.yaml does not define: {unknown}"


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_points_at_a_user_run_and_says_what_hardware_it_needs(path):
    text = path.read_text()
    header = text.split("\nname:")[0]
    assert "Hardware:" in header and "GPU" in header
    cfg = config.load(path, "default")
    assert cfg.trajectory.dir and cfg.trajectory.base  # the user's run and its step-0 model
    assert cfg.task.kind == "math" and cfg.eval.backend == "vllm"


def test_lin_reference_and_variants():
    cfgs = {p.stem: config.load(p, "default") for p in PAPER if p.stem.startswith("lin-r1-distill-1.5b-")}
    assert {c.rl.algorithm for c in cfgs.values()} == {"grpo", "gspo", "reinforce++"}
    for name, c in cfgs.items():
        rl, ev = c.rl, c.eval
        assert (rl.lr, rl.batch, rl.rollouts, rl.epsilon, rl.epsilon_high) == (1e-6, 128, 16, 0.2, 0.28), name
        assert list(range(0, rl.steps + 1, rl.save_every)) == list(range(0, 1301, 100)), name  # 14 checkpoints
        assert (ev.k, ev.temperature, ev.top_p, ev.max_new_tokens) == (64, 0.6, 0.95, 32768), name
        assert "DeepSeek-R1-Distill-Qwen-1.5B" in c.trajectory.base and "aime24" in c.math.dataset, name
        assert (c.output_linearity.prompts, c.output_linearity.samples_per_prompt) == (30, 64), name
    # the variants differ from the reference only in the algorithm, the run directory and the name
    ref = cfgs["lin-r1-distill-1.5b-grpo"]
    for name, c in cfgs.items():
        diff = {k for k in ref if k not in ("name", "source") and ref[k] != c[k]}
        assert diff <= {"rl", "trajectory"}, (name, diff)
        assert {**c.rl, "algorithm": "grpo"} == ref.rl and c.trajectory.base == ref.trajectory.base


def test_relex_setting():
    c = config.load(REPO / "params" / "relex-qwen2.5-math-1.5b.yaml", "default")
    assert (c.rl.steps, c.rl.save_every) == (500, 1)  # every step saved
    assert [round(f * c.rl.steps) for f in c.relex.t_cut_fractions] == [75]
    assert c.relex.rank == 1 and c.relex.fit == "linear"
    assert (c.eval.temperature, c.eval.k, c.eval.max_new_tokens) == (0.0, 1, 4096)  # greedy, 4K tokens
    assert "Qwen2.5-Math-1.5B" in c.trajectory.base and "math500" in c.math.dataset


def test_a_knob_the_notebooks_do_not_define_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval:\n  backend: vllm\n  sampler: vllm\n")
    with pytest.raises(config.ConfigError, match=r"bad\.yaml\.eval: unknown parameter 'sampler'"):
        config.load(bad, "default")


# ------------------------------------------------------------------------------------------------- the rule table


def test_every_rule_names_a_knob_and_every_null_default_has_a_rule():
    knobs = knob_values(config._defaults()[0])
    assert not set(config.RULES) - set(knobs), "rules for knobs params/default.yaml does not define"
    untyped = sorted(k for k, v in knobs.items() if v is None and k not in config.RULES)
    assert not untyped, f"null defaults without a rule (their type is unknown): {untyped}"


def test_the_rules_fixed_choices_are_the_codes():
    from helpers.lib import extrapolation, linearity, relex, rl_extra, tiny

    def allowed(key, values):
        return {v for v in values if config.RULES[key].complaint(key, v) is None}

    assert allowed("rl.algorithm", [*training.ALGORITHMS, "ppo"]) == set(training.ALGORITHMS)
    for key in ("rl.optimizer", "sft.optimizer"):
        assert allowed(key, [*training.OPTIMIZERS, "adam"]) == set(training.OPTIMIZERS)
    assert allowed("eval.backend", backends.BACKENDS) == set(backends.BACKENDS) - {"logit-extrapolation"}
    for key in ("extrapolation.norms", "rl_extra.norms", "relex.norms"):
        assert allowed(key, [*extrapolation.NORM_POLICIES, "copy"]) == set(extrapolation.NORM_POLICIES)
    assert allowed("rl_extra.optimizer", [*rl_extra.OPTIMIZER_POLICIES, "x"]) == set(rl_extra.OPTIMIZER_POLICIES)
    assert allowed("relex.fit", [*relex.FITS, "cubic"]) == set(relex.FITS)
    assert allowed("model.arch", [*tiny.ARCHS, "gpt2"]) == set(tiny.ARCHS)
    assert config.RULES["relex.representative"].complaint("k", list(linearity.MODULES)) is None
    assert config.RULES["relex.representative"].complaint("k", ["mlp"]) is not None


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.stem)
def test_every_robustness_setting_of_every_profile_loads(path):
    from helpers.experiments import nb07_robustness as robustness

    raw = yaml.safe_load(path.read_text())
    for profile in ["default", *(raw.get("profiles") or {})]:
        for s in robustness.design(config.load(path, profile)):
            config.load(path, profile, {k: v for k, v in s.overrides.items() if v != robustness.SGD_LR})


@pytest.mark.parametrize("path", sorted((REPO / "params" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_sweep_setting_loads(path):
    from helpers.pipeline import regime

    sweep = regime.load_sweep(path)  # builds every setting's config (helpers.pipeline.regime.setting_config)
    for s in sweep["settings"]:
        for seed in sweep["seeds"]:
            assert regime.setting_config(sweep, s["name"], seed).rl.seed == seed
