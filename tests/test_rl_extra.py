"""RL-Extra callback on tiny real GRPO runs: n = 0 is standard training bit for bit, a phase end applies
W = P + (m+n)/m (Q − P) exactly (P, Q captured by spy callbacks), the counters, and a mid-cycle resume."""
import csv
import json
import math
from functools import partialmethod
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers.lib import config
from helpers.lib import training
from helpers.lib.extrapolation import is_norm
from helpers.lib.rl_extra import ANCHOR, RECORD, RLExtra, effective_steps, generation_period

# an easy task (2 operands below 4) so the tiny base model earns some reward and RL moves the weights
TINY = {"task.operands": 2, "task.max_value": 4, "task.chain": False, "task.train_size": 200, "task.heldout_size": 8,
        "model.hidden_size": 64, "model.heads": 2, "model.kv_heads": 1, "model.layers": 1,
        "model.intermediate_size": 64, "model.max_positions": 32, "sft.base_steps": 40, "sft.batch": 16,
        "rl.batch": 4, "rl.rollouts": 4, "rl.steps": 6, "rl.save_every": 3, "rl.max_completion_length": 4,
        "eval.heldout_during_training": 8, "eval.batch_size": 64, "eval.max_new_tokens": 4}
M, N = 2, 3   # boundaries at steps 2, 4, 6; checkpoint-3 is mid-cycle


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("rl_extra")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RLVR_OUTPUTS", str(out / "outputs"))
        cfg = config.load("params/default.yaml", "default", TINY)
        yield cfg, training.base_model(cfg), out


def weights(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class Spy(TrainerCallback):
    """Weights at train begin and at every step end (as seen at this callback's place in the list), optimizer state."""

    def __init__(self):
        self.begin, self.at, self.opt_entries = None, {}, {}

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.begin = weights(model)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        self.at[state.global_step] = weights(model)
        self.opt_entries[state.global_step] = len(optimizer.state)


def train(setup, name, *callbacks):
    cfg, base, out = setup
    return training.train_rl(cfg, out / name, callbacks=callbacks, base_dir=base)


@pytest.fixture(scope="module")
def extra_run(setup):
    before, cb, after = Spy(), RLExtra(M, N), Spy()
    return train(setup, "extra", before, cb, after), before, cb, after


def test_n0_is_standard_training_bit_for_bit(setup):
    std = train(setup, "std")
    cb = RLExtra(M, 0, optimizer="reset")
    n0 = train(setup, "n0", cb)
    moved = False
    for step in (3, 6):
        a = load_file(std / f"checkpoint-{step}" / "model.safetensors")
        b = load_file(n0 / f"checkpoint-{step}" / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        base = load_file(std / "checkpoint-0" / "model.safetensors")
        moved |= any(not torch.equal(a[k], base[k]) for k in a)
    assert moved                                                   # RL really changed the weights
    assert (cb.rl_steps, cb.effective_steps, cb.extrapolations) == (6, 6, 0)


@pytest.mark.parametrize("norms,optimizer", [("copy-from-t1", "reset"), ("extrapolate", "keep")])
def test_phase_end_applies_the_formula_exactly(setup, extra_run, norms, optimizer):
    if (norms, optimizer) == ("copy-from-t1", "reset"):
        _, before, cb, after = extra_run
    else:
        before, cb, after = Spy(), RLExtra(M, N, norms=norms, optimizer=optimizer), Spy()
        train(setup, f"extra-{norms}-{optimizer}", before, cb, after)
    beta = (M + N) / M
    anchor = after.begin                                           # P of cycle 0: the weights at train begin
    for step in range(1, 7):
        q, w = before.at[step], after.at[step]
        if step % M:                                               # inside a phase: the callback does nothing
            assert all(torch.equal(q[k], w[k]) for k in q)
            continue
        moved = 0
        for k in q:
            expect = q[k] if norms == "copy-from-t1" and is_norm(k) else torch.lerp(anchor[k], q[k], beta)
            assert torch.equal(w[k], expect), (step, k)
            moved += not torch.equal(w[k], q[k])
        assert moved > len(q) // 2                                 # the extrapolation really moved the weights
        assert (after.opt_entries[step] == 0) == (optimizer == "reset")
        assert before.opt_entries[step] > 0
        anchor = w                                                 # the next phase starts at the extrapolated W
    assert (cb.rl_steps, cb.effective_steps, cb.extrapolations) == (6, 6 + 3 * N, 3)


def test_counters_in_checkpoints_and_log(extra_run):
    run, *_ = extra_run
    for step, eff, anchor in ((3, 3 + N, ANCHOR), (6, 6 + 3 * N, None)):
        rec = json.loads((run / f"checkpoint-{step}" / RECORD).read_text())
        assert (rec["rl_steps"], rec["effective_steps"], rec["anchor"], rec["beta"]) == (step, eff, anchor, 2.5)
        assert (run / f"checkpoint-{step}" / ANCHOR).is_file() == (anchor is not None)
    rows = list(csv.DictReader((run / "log.csv").open()))
    logged = [(int(r["rl_steps"]), int(r["effective_steps"])) for r in rows]
    assert logged == [(s, effective_steps(s, M, N)) for s in range(7)]
    assert logged == [(0, 0), (1, 1), (2, 5), (3, 6), (4, 10), (5, 11), (6, 15)]
    assert rows[3]["heldout_accuracy"] != "" and rows[6]["heldout_accuracy"] != ""


def test_resume_mid_cycle_restores_the_anchor(setup, extra_run, monkeypatch):
    from trl import GRPOTrainer

    run, before_a, _, after_a = extra_run
    ckpt = run / "checkpoint-3"
    monkeypatch.setattr(GRPOTrainer, "train", partialmethod(GRPOTrainer.train, resume_from_checkpoint=str(ckpt)))
    before, cb, after = Spy(), RLExtra(M, N, resume_from=ckpt), Spy()
    train(setup, "resumed", before, cb, after)
    p = after_a.at[2]                                              # run A's P of the cycle holding step 3
    assert all(torch.equal(v, p[k]) for k, v in load_file(ckpt / ANCHOR).items())   # P saved mid-cycle
    assert all(torch.equal(before.begin[k], before_a.at[3][k]) for k in p)   # resumed from step 3's weights
    q, w = before.at[4], after.at[4]
    for k in q:
        assert torch.equal(w[k], q[k] if is_norm(k) else torch.lerp(p[k], q[k], 2.5)), k
    assert sorted(before.at) == [4, 5, 6]
    assert (cb.rl_steps, cb.effective_steps) == (6, 6 + 3 * N)
    assert json.loads((setup[2] / "resumed" / "checkpoint-6" / RECORD).read_text())["effective_steps"] == 15

    with pytest.raises(ValueError, match="written by RL-Extra"):
        train(setup, "resumed-wrong", RLExtra(M, N + 1, resume_from=ckpt))


def test_m_must_be_a_multiple_of_the_generation_period():
    args = SimpleNamespace(steps_per_generation=4, num_iterations=1, gradient_accumulation_steps=2, output_dir=".")
    assert generation_period(args) == 2                            # 4 micro-steps = 2 optimizer steps
    assert generation_period(SimpleNamespace(steps_per_generation=1, num_iterations=3,
                                             gradient_accumulation_steps=1)) == 3
    state = SimpleNamespace(global_step=0)
    with pytest.raises(ValueError, match="not a multiple of GRPOTrainer's generation period 2"):
        RLExtra(3, 1).on_train_begin(args, state, None, model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="generation period"):
        RLExtra(4, 1).on_train_begin(args, SimpleNamespace(global_step=3), None, model=torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="GRPOConfig"):
        generation_period(SimpleNamespace(gradient_accumulation_steps=1))
    for bad in (dict(m=0, n=1), dict(m=2, n=-1), dict(m=2, n=1, norms="all"), dict(m=2, n=1, optimizer="zero")):
        with pytest.raises(ValueError):
            RLExtra(**bad)


# --------------------------------------------------------------------------------------------------------------------
# Notebook 05's analysis and claims on synthetic accuracy curves (no training)

STEPS = list(range(0, 141, 10))
STD = [0.2 + 0.2 * s / 140 for s in STEPS]                    # 0.2 -> 0.4, linear; targets 0.3 / 0.36 / 0.4
FAST = [min(0.2 + 0.2 * s / 35, 0.45) for s in STEPS]          # 4x faster, saturating above the standard best
SLOW = [0.2 + 0.1 * s / 140 for s in STEPS]                    # half the standard slope: never reaches 0.36


def _cfg(items=2000, **over):
    return config.load("params/default.yaml", "default", {
        "rl.steps": 140, "rl.save_every": 10, "rl_extra.configs": [[20, 100], [100, 100]], "task.heldout_size": items,
        "eval.heldout_during_training": items, **over})


def _analyse(cfg, extra, keep=STD):
    """Standard = STD; both main runs follow `extra`; the ablation twin (keep) follows `keep`."""
    import pandas as pd

    from helpers.lib import rl_extra as R

    plan = R.plan(cfg)
    runs = pd.DataFrame([{"label": "standard", "m": None, "n": 0, "optimizer": None, "beta": 1.0, "train_seconds": 1.0}]
                        + [{**r, "train_seconds": 2.0} for r in plan])
    acc = {"standard": STD} | {r["label"]: (keep if r["optimizer"] == "keep" else extra) for r in plan}
    table = pd.concat([pd.DataFrame({"label": lab, "rl_steps": STEPS, "accuracy": a, "effective_steps": STEPS})
                       for lab, a in acc.items()], ignore_index=True)
    return R.analyse(cfg, runs, table)


def test_steps_to_target_speedup_and_fixed_budget_on_known_curves():
    from helpers.lib import rl_extra as R

    cfg = _cfg()
    assert [(r["label"], r["beta"]) for r in R.plan(cfg)] == [
        ("RL-Extra(2,10) reset", 6.0), ("RL-Extra(10,10) reset", 2.0), ("RL-Extra(10,10) keep", 2.0)]
    assert R.plan(_cfg(**{"rl_extra.paper_steps": None})) == R.plan(cfg)   # null: the paper's run length
    a = _analyse(cfg, FAST)
    assert a.goals == pytest.approx([0.3, 0.36, 0.4])
    assert a.main == ["RL-Extra(2,10) reset", "RL-Extra(10,10) reset"]
    steps = a.reach.steps.unstack("target")
    assert steps.loc["standard"].tolist() == [70, 120, 140]
    assert steps.loc["RL-Extra(2,10) reset"].tolist() == [20, 30, 40]
    speed = a.speed.speedup.unstack("target")
    assert speed.loc["RL-Extra(2,10) reset"].tolist() == pytest.approx([3.5, 4.0, 3.5])
    assert speed.loc["RL-Extra(10,10) keep"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert a.budget.rl_steps.tolist() == [20, 40, 80, 120]           # 200/400/800/1200 of 1400 -> 20/40/80/120
    assert a.budget.gain.tolist() == pytest.approx([FAST[s // 10] - STD[s // 10] for s in (20, 40, 80, 120)])


def test_speedup_interval_on_a_hand_made_example():
    import pandas as pd

    from helpers.lib import rl_extra as R

    # 100 items, 95 % Wilson: 0.3 -> [0.219, 0.396], 0.5 -> [0.404, 0.596], 0.7 -> [0.604, 0.781]; target 0.45
    curves = pd.DataFrame({"label": ["standard"] * 5 + ["rx"] * 5, "rl_steps": [0, 10, 20, 30, 40] * 2,
                           "accuracy": [0.1, 0.2, 0.3, 0.5, 0.7] + [0.1, 0.5, 0.7, 0.7, 0.7]})
    reach = R.reach_bounds(curves, [0.45], 100, 0.95)
    assert reach.loc[("standard", "0.450")].tolist() == [30, 30, 40]     # steps, optimistic, pessimistic
    assert reach.loc[("rx", "0.450")].tolist() == [10, 10, 20]
    speed = R.speed_bounds(curves, reach, ["0.450"]).loc[("rx", "0.450")]
    assert (speed.speedup, speed.low, speed.high, speed.informative) == (3.0, 30 / 20, 40 / 10, True)
    nan = math.nan
    assert R.speedup_interval(30, 40, nan, nan, 50, 50) == (0.0, 40 / 50)       # RL-Extra never reaches the target
    lo, hi = R.speedup_interval(nan, nan, 10, 20, 50, 50)                       # standard never reaches it
    assert lo == 50 / 20 and hi == math.inf
    assert R.speedup_interval(0, 40, 0, 10, 50, 50)[1] == math.inf              # RL-Extra there at step 0


EXPECT = {  # scenario -> verdict of speedup, every budget, on_track, optimizer_reset_vs_keep
    "faster": (FAST, 2000, ("holds",) * 4),
    "slower": (SLOW, 2000, ("does not hold",) * 4),
    "same": (STD, 2000, ("inconclusive", "inconclusive", "inconclusive", "does not hold")),  # no effect worth claiming
    "same, 100 items": (STD, 100, ("inconclusive",) * 4),
}


@pytest.mark.parametrize("scenario", EXPECT)
def test_claims_verdicts(scenario):
    from helpers.lib import rl_extra as R

    extra, items, (speed, budget, on_track, optimizer) = EXPECT[scenario]
    cs = {c.id: c for c in R.claims(_analyse(_cfg(items), extra, keep=STD))}
    assert list(cs) == ["nb05.speedup", "nb05.budget_20", "nb05.budget_40", "nb05.budget_80", "nb05.budget_120",
                        "nb05.on_track", "nb05.optimizer_reset_vs_keep"]
    assert cs["nb05.speedup"].verdict == speed
    assert {cs[f"nb05.budget_{b}"].verdict for b in (20, 40, 80, 120)} == {budget}
    assert cs["nb05.on_track"].verdict == on_track
    assert cs["nb05.optimizer_reset_vs_keep"].verdict == optimizer
    if scenario == "same, 100 items":                                # too noisy to confirm any standard crossing
        assert "reaches no upper target" in cs["nb05.speedup"].detail
        assert cs["nb05.speedup"].ci_high == math.inf                # no upper bound, yet measured and shown


def test_best_of_k_uses_the_bonferroni_level():
    from helpers.experiments import claims
    from helpers.lib import rl_extra as R

    a = _analyse(_cfg(500), FAST)
    assert a.speed_level == claims.bonferroni(0.95, 2 * 2)          # 2 main runs × 2 upper targets
    c = next(c for c in R.claims(a) if c.id == "nb05.budget_40")
    p, q = FAST[4], STD[4]
    at = lambda lvl: claims.difference(p, claims.binomial_interval(p, 500, lvl), q,  # noqa: E731
                                       claims.binomial_interval(q, 500, lvl))[1]
    assert c.interval == pytest.approx(at(claims.bonferroni(0.95, 2)))
    assert c.interval[0] < at(0.95)[0]                               # wider than one comparison's interval
    low = R.reach_bounds(a.curves, a.goals, 500, a.speed_level)
    assert low.equals(a.reach)


def test_results_keep_their_keys_and_serialise():
    import json

    from helpers.lib import rl_extra as R

    res = R.results(_analyse(_cfg(), FAST))
    json.dumps(res)
    for key in ("standard_final_accuracy", "steps_to_target", "speedups", "best_speedup", "best_speedup_config",
                "best_speedup_target", "fixed_budget", "fixed_budget_mean_gain", "final_accuracy", "heldout_items",
                "runs", "curves", "reset_minus_keep_mean", "interval_level"):
        assert key in res, key
    assert "noise_margin" not in res
    assert (res["best_speedup"], res["best_speedup_target"]) == (pytest.approx(4.0), "0.360")
    no_twin = R.claims(_analyse(_cfg(**{"rl_extra.ablation": None}), FAST))
    assert "nb05.optimizer_reset_vs_keep" not in [c.id for c in no_twin]
