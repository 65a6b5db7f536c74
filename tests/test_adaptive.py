"""Adaptive extrapolation: the probe and rollback rules, and on micro GRPO runs: probes that reject leave training bit
for bit unchanged, a jump moves the weights to P + β(Q − P), a rollback restores the exact pre-jump weights and
optimizer state, and the decisions are the same on a second run with the same seed."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers.lib import adaptive, config, models, tasks, training
from helpers.lib.adaptive import AdaptiveExtra, accepts, fell, probe_items
from tests.test_monitor import micro_grpo
from tests.test_training import MICRO as TRAINING_MICRO


def test_accepts_allows_a_drop_within_noise_and_refuses_a_clear_one():
    ref = np.array([1.0, 0, 1, 0, 1, 0, 1, 0])
    same, diff, se = accepts(ref, ref, 1.0)
    assert same and diff == 0 and se == 0
    one_lost = ref.copy()
    one_lost[0] = 0  # −1/8 mean, SE = 0.125
    ok, diff, se = accepts(one_lost, ref, 1.0)
    assert ok and diff == -0.125 and se == pytest.approx(0.125)
    assert not accepts(one_lost, ref, 0.5)[0]
    assert not accepts(np.zeros(8), np.ones(8), 3.0)[0]  # every prompt lost: SE 0, any drop refused


def test_fell_compares_means_against_their_noise():
    assert fell([0.5, 0.6, 0.5], [0.1, 0.2, 0.1], 1.0)[0]
    assert not fell([0.5, 0.6, 0.5], [0.5, 0.7, 0.6], 1.0)[0]
    down, se = fell([0.5, 0.9], [0.4, 0.8], 1.0)  # a 0.1 drop within an SE of 0.4
    assert not down and se == pytest.approx(math.sqrt(0.08 / 2 * 2))


def test_probe_items_are_a_seeded_sample_and_their_size_is_checked():
    train = list(range(100))
    assert probe_items(train, 10, 3) == probe_items(train, 10, 3) != probe_items(train, 10, 4)
    with pytest.raises(ValueError, match="probe_prompts = 101"):
        probe_items(train, 101, 0)


def test_from_config_reads_the_adaptive_and_monitor_sections():
    cfg = config.load("params/default.yaml", "default", {"adaptive.betas": [2, 4], "monitor.budget_mb": 64})
    p = AdaptiveExtra.from_config(cfg, probe=lambda model: np.zeros(1))
    assert p.betas == [2.0, 4.0] and p.budget_mb == 64 and p.every == cfg.adaptive.every
    assert p.thresholds["min_cosine"] == cfg.adaptive.min_cosine and p.rollback_after == cfg.adaptive.rollback_after
    with pytest.raises(ValueError, match="betas must all be > 1"):
        AdaptiveExtra(lambda m: np.zeros(1), betas=[1.0, 2.0])


# --------------------------------------------------------------------------------------------------- micro GRPO runs
MICRO = {**TRAINING_MICRO, "rl.steps": 8, "rl.save_every": 2}
OPEN = {"min_weight_r2": -math.inf, "min_rank1_ev": 0.0, "min_cosine": -1.0}  # every window passes the gate
KNOBS = {"every": 1, "window": 3, "fraction": 0.02, "min_samples": 50, "budget_mb": 16, "rollback_after": 2}


def scripted(values):
    """A probe that returns the next of `values` (a reward for each of 4 prompts; cycling) at each call, and records
    the weights it saw."""
    calls = []

    def probe(model):
        calls.append({n: p.detach().clone() for n, p in model.named_parameters()})
        return np.full(4, values[(len(calls) - 1) % len(values)], dtype=float)

    probe.calls = calls
    return probe


class Watched(AdaptiveExtra):
    """Records the full weights and optimizer state right before each decision and right after each rollback."""

    def _decide(self, state, stats, model, optimizer):
        self.before = (
            {n: p.detach().clone() for n, p in model.named_parameters()},
            copy.deepcopy(optimizer.state_dict()),
        )
        super()._decide(state, stats, model, optimizer)

    def on_log(self, args, state, control, logs=None, model=None, optimizer=None, **kw):
        n = len(self.decisions)
        super().on_log(args, state, control, logs=logs, model=model, optimizer=optimizer, **kw)
        if len(self.decisions) > n and self.decisions[-1]["kind"] == "rollback":
            self.after_rollback = (
                {n: p.detach().clone() for n, p in model.named_parameters()},
                copy.deepcopy(optimizer.state_dict()),
            )


def train(cfg, base, out, policy=None):
    return training.train_rl(cfg, out, callbacks=[policy] if policy else [], base_dir=base)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptive")
    with micro_grpo(out, MICRO) as (cfg, base, mp):
        yield cfg, base, out, mp


@pytest.mark.slow
def test_probes_that_reject_leave_training_bit_for_bit_unchanged(micro):
    cfg, base, out, _ = micro
    plain = train(cfg, base, out / "plain")
    probe = scripted([1.0, 0.0])  # Q scores 1, the first candidate 0: rejected at every decision
    policy = AdaptiveExtra(probe, **KNOBS, **OPEN, betas=[2.0, 3.0], seed=cfg.seed)
    run = train(cfg, base, out / "rejecting", policy)
    assert [d["kind"] for d in policy.decisions] == ["no-jump"] * 7  # steps 2 .. 8
    assert all(len(d["candidates"]) == 1 and not d["candidates"][0]["accepted"] for d in policy.decisions)
    for step in (2, 4, 6, 8):
        a = load_file(plain / f"checkpoint-{step}" / "model.safetensors")
        b = load_file(run / f"checkpoint-{step}" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not policy.jumps and policy.effective[8] == 8 and policy.probe_calls == 14


@pytest.mark.slow
@pytest.mark.parametrize("cooldown", [None, 2])
def test_a_jump_goes_to_the_largest_accepted_beta_and_a_rollback_restores_weights_and_optimizer(micro, cooldown):
    cfg, base, out, mp = micro
    mp.setattr(adaptive, "fell", lambda before, after, z: (True, 0.0))  # every jump's reward "falls"
    probe = scripted([0.5, 0.5, 0.5, 0.0])  # Q 0.5; β = 2, 3 equal (accepted); β = 5 worse; cycling
    policy = Watched(probe, **KNOBS, **OPEN, betas=[2.0, 3.0, 5.0], cooldown=cooldown, seed=cfg.seed)
    run = train(cfg, base, out / f"rollback-{cooldown}", policy)
    kinds = [(d["step"], d["kind"]) for d in policy.decisions]
    # step 2: jump (β 3); step 4: its rollback check (decisions wait), the cap drops to β 2; step 6: a jump, at β 2
    # under the cap, or, once a 2-step cooldown has lifted it, at β 3 again; step 8: rolled back too
    assert kinds == [(2, "jump"), (4, "rollback"), (6, "jump"), (8, "rollback")]
    assert [j["beta"] for j in policy.jumps] == [3.0, 2.0 if cooldown is None else 3.0]
    assert not any(j["accepted"] for j in policy.jumps)
    first = policy.decisions[0]
    assert [c["beta"] for c in first["candidates"]] == [2.0, 3.0, 5.0] and first["beta"] == 3.0

    # the probe of β saw P + β (Q − P) on the extrapolated tensors and Q on the norms (copy-from-t1)
    q, beta3 = probe.calls[0], probe.calls[2]
    p0 = load_file(base / "model.safetensors")
    for n, w in q.items():
        want = w if "norm" in n else p0[n] + 3.0 * (w - p0[n])
        assert torch.allclose(beta3[n], want, atol=1e-6), n
    # the rollback put back exactly the weights and optimizer state seen right before the jump's decision
    weights, opt = policy.after_rollback
    w0, o0 = policy.before
    assert all(torch.equal(weights[n], w0[n]) for n in w0)
    assert opt["state"].keys() == o0["state"].keys() and opt["param_groups"] == o0["param_groups"]
    for i, s in o0["state"].items():
        assert all(torch.equal(opt["state"][i][k], s[k]) for k in s)
    # effective steps: +(β − 1)·L at a jump (L = 2), back to the jump's after its rollback (real steps go on)
    second = 2 if cooldown is None else 4  # (β − 1)·L of the jump at step 6, L = 2
    assert [policy.effective[s] for s in range(9)] == [0, 1, 6, 7, 2, 3, 4 + second, 5 + second, 4]

    record = json.loads((run / "adaptive.json").read_text())
    assert record["jumps"] == policy.jumps and len(record["decisions"]) == 4
    rows = {int(r.split(",")[0]): r for r in (run / "log.csv").read_text().splitlines()[1:]}
    assert rows[2].split(",")[-3:] == ["6.0", "3.0", ""] and rows[4].split(",")[-3:] == ["2.0", "", "1"]


@pytest.mark.slow
def test_decisions_are_the_same_for_the_same_seed(micro):
    cfg, base, out, _ = micro
    _, tok = models.load_model(base, "cpu")
    items = probe_items(tasks.split(cfg.task)[0], 8, cfg.seed)
    runs = []
    for name in ("a", "b"):
        policy = AdaptiveExtra(
            adaptive.greedy_probe(items, tok, 6), **KNOBS, **OPEN, betas=[1.5, 2.0], noise_z=1.0, seed=cfg.seed
        )
        train(cfg, base, out / f"same-{name}", policy)
        runs.append(policy)
    untimed = [[{k: v for k, v in d.items() if k != "probe_seconds"} for d in p.decisions] for p in runs]
    assert untimed[0] and untimed[0] == untimed[1] and runs[0].jumps == runs[1].jumps
    assert {d["kind"] for d in untimed[0]} >= {"jump", "rollback"}  # the run exercised both
