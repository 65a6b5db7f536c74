"""RL-Extra callback on tiny real GRPO runs: n = 0 is standard training bit for bit, a phase end applies
W = P + (m+n)/m (Q − P) exactly (P, Q captured by spy callbacks), the counters, and a mid-cycle resume (that it
imports without the notebook stack: tests/test_layers.py)."""

import csv
import json
from functools import partialmethod
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from helpers.lib import config, training
from helpers.lib.extrapolation import is_norm
from helpers.lib.rl_extra import ANCHOR, RECORD, RLExtra, effective_steps, generation_period

# an easy task (2 operands below 4) so the tiny base model earns some reward and RL moves the weights
TINY = {
    "task.operands": 2,
    "task.max_value": 4,
    "task.chain": False,
    "task.train_size": 200,
    "task.heldout_size": 8,
    "model.hidden_size": 64,
    "model.heads": 2,
    "model.kv_heads": 1,
    "model.layers": 1,
    "model.intermediate_size": 64,
    "model.max_positions": 32,
    "sft.base_steps": 40,
    "sft.batch": 16,
    "rl.batch": 4,
    "rl.rollouts": 4,
    "rl.steps": 6,
    "rl.save_every": 3,
    "rl.max_completion_length": 4,
    "eval.heldout_during_training": 8,
    "eval.batch_size": 64,
    "eval.max_new_tokens": 4,
}
M, N = 2, 3  # boundaries at steps 2, 4, 6; checkpoint-3 is mid-cycle


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
    assert moved  # RL really changed the weights
    assert (cb.rl_steps, cb.effective_steps, cb.extrapolations) == (6, 6, 0)


@pytest.mark.parametrize("norms,optimizer", [("copy-from-t1", "reset"), ("extrapolate", "keep")])
def test_phase_end_applies_the_formula_exactly(setup, extra_run, norms, optimizer):
    if (norms, optimizer) == ("copy-from-t1", "reset"):
        _, before, cb, after = extra_run
    else:
        before, cb, after = Spy(), RLExtra(M, N, norms=norms, optimizer=optimizer), Spy()
        train(setup, f"extra-{norms}-{optimizer}", before, cb, after)
    beta = (M + N) / M
    anchor = after.begin  # P of cycle 0: the weights at train begin
    for step in range(1, 7):
        q, w = before.at[step], after.at[step]
        if step % M:  # inside a phase: the callback does nothing
            assert all(torch.equal(q[k], w[k]) for k in q)
            continue
        moved = 0
        for k in q:
            expect = q[k] if norms == "copy-from-t1" and is_norm(k) else torch.lerp(anchor[k], q[k], beta)
            assert torch.equal(w[k], expect), (step, k)
            moved += not torch.equal(w[k], q[k])
        assert moved > len(q) // 2  # the extrapolation really moved the weights
        assert (after.opt_entries[step] == 0) == (optimizer == "reset")
        assert before.opt_entries[step] > 0
        anchor = w  # the next phase starts at the extrapolated W
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
    p = after_a.at[2]  # run A's P of the cycle holding step 3
    assert all(torch.equal(v, p[k]) for k, v in load_file(ckpt / ANCHOR).items())  # P saved mid-cycle
    assert all(torch.equal(before.begin[k], before_a.at[3][k]) for k in p)  # resumed from step 3's weights
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
    assert generation_period(args) == 2  # 4 micro-steps = 2 optimizer steps
    assert (
        generation_period(SimpleNamespace(steps_per_generation=1, num_iterations=3, gradient_accumulation_steps=1)) == 3
    )
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
