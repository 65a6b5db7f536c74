"""Origin of linearity: the exact first/second-order split, the SNR of the injected noise, hook capture on probes, and
SFT / RL runs sharing one layout."""
import math

import numpy as np
import pytest
import torch

from helpers import config, origin as O, probes as P, tiny, training
from helpers.trajectory import Trajectory

TINY = dict(arch="llama", hidden_size=64, heads=2, kv_heads=1, layers=2, intermediate_size=64, max_positions=32,
            tie_embeddings=True)


def test_decomposition_sums_exactly_to_the_output_change():
    g = torch.Generator().manual_seed(0)
    lin0 = torch.nn.Linear(24, 16).double()
    lin1 = torch.nn.Linear(24, 16).double()
    with torch.no_grad():
        lin1.weight.copy_(lin0.weight + 0.05 * torch.randn(16, 24, generator=g, dtype=torch.float64))
        lin1.bias.copy_(lin0.bias + 0.05 * torch.randn(16, generator=g, dtype=torch.float64))
    x0 = torch.randn(50, 24, generator=g, dtype=torch.float64)
    x1 = x0 + 0.1 * torch.randn(50, 24, generator=g, dtype=torch.float64)
    t = O.decompose(lin0.weight, lin1.weight, x0, x1, lin0.bias, lin1.bias)
    with torch.no_grad():
        true_delta = lin1(x1) - lin0(x0)
    torch.testing.assert_close(t["delta"], true_delta, rtol=0, atol=1e-12)
    torch.testing.assert_close(t["weight"] + t["input"] + t["second"], true_delta, rtol=0, atol=1e-12)
    # each term is what it claims to be
    dW = (lin1.weight - lin0.weight).detach()
    torch.testing.assert_close(t["second"], (x1 - x0) @ dW.T)
    torch.testing.assert_close(t["input"], (x1 - x0) @ lin0.weight.detach().T)
    s = O.term_stats(t)
    assert s["residual"] < 1e-12
    assert abs(s["share_weight"] + s["share_input"] + s["share_second"] - 1) < 1e-12
    assert 0 < s["share_second"] < s["share_input"] and s["share_second"] <= s["second_token_p99"] * 2


def test_decomposition_edge_cases_and_float32_inputs():
    W = torch.randn(4, 3)
    x = torch.randn(5, 3)
    t = O.decompose(W, W, x, x + 1)                      # weights unchanged: all of Δy is the input term
    assert float(t["weight"].abs().max()) == 0 and float(t["second"].abs().max()) == 0
    t = O.decompose(W, W + 1, x, x)                      # inputs unchanged: all of Δy is the weight term
    assert float(t["input"].abs().max()) == 0 and float(t["second"].abs().max()) == 0
    assert O.term_stats(t)["share_weight"] == 1.0
    assert t["delta"].dtype == torch.float64
    with pytest.raises(ValueError, match="shapes"):
        O.decompose(W, W, torch.randn(5, 4), torch.randn(5, 4))


@pytest.mark.parametrize("db", [10, 5, 0, -5, -10, -20, 2.5])
def test_noise_has_the_requested_power(db):
    loss = O.NoisyLoss(db, seed=3)
    ell = torch.rand(4096, dtype=torch.float64) * 3
    signal, noise = loss.components(ell)
    assert O.power_db(signal, noise) == pytest.approx(db, abs=1e-9)
    s, sigma = O.noise_scales(db)
    p_noise, p_total = float(noise.pow(2).mean()), float(ell.pow(2).mean())
    assert p_noise == pytest.approx(sigma ** 2 * p_total, rel=1e-12)               # the requested noise power
    assert float(signal.pow(2).mean()) + p_noise == pytest.approx(p_total, rel=1e-12)  # total power kept
    eps = noise / (sigma * ell)
    assert set(eps.round().unique().tolist()) == {-1.0, 1.0} and abs(float(eps.mean())) < 0.05


def test_noise_levels_signal_zero_plain_sft_and_seeds():
    ell = torch.rand(1000) + 0.5
    signal, noise = O.NoisyLoss(O.ZERO_SIGNAL).components(ell)
    assert float(signal.abs().max()) == 0 and float(noise.pow(2).mean()) == pytest.approx(float(ell.pow(2).mean()))
    assert O.power_db(signal, noise) == -math.inf
    signal, noise = O.NoisyLoss(None).components(ell)
    assert float(noise.abs().max()) == 0 and torch.equal(signal, ell)
    a, b, c = (O.NoisyLoss(0, seed).components(ell)[1] for seed in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert [O.level_key(x) for x in (10, -5.0, 2.5, O.ZERO_SIGNAL)] == ["10", "-5", "2.5", "signal=0"]
    with pytest.raises(ValueError, match="SNR level"):
        O.noise_scales("loud")


def _batch(tokenizer, n=3):
    ids = torch.randint(3, len(tokenizer), (n, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[:, :4] = -100                                 # prompt
    labels[0, -2:] = -100                                # padding
    return ids, labels


def test_noisy_loss_is_the_model_loss_plus_signed_token_noise(tmp_path):
    from transformers import AutoModelForCausalLM

    path = tiny.init_model(TINY, 0, tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(path)
    ids, labels = _batch(tiny.make_tokenizer())
    out = model(input_ids=ids)
    ref = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(O.NoisyLoss(None)(out, labels), ref)
    n = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(O.NoisyLoss(None)(out, labels, num_items_in_batch=torch.tensor(n)), ref)
    # noise: the same per-token losses, reweighted by s + σ·ε with the signs the seed gives
    ell = torch.nn.functional.cross_entropy(out.logits[:, :-1][labels[:, 1:] != -100],
                                            labels[:, 1:][labels[:, 1:] != -100], reduction="none")
    s, sigma = O.noise_scales(-10)
    eps = O.NoisyLoss(-10, seed=5).signs(n).float()
    torch.testing.assert_close(O.NoisyLoss(-10, seed=5)(out, labels), ((s + sigma * eps) * ell).sum() / n)


@pytest.fixture(scope="module")
def traj(tmp_path_factory):
    """checkpoint-0 = a tiny model, checkpoint-1/2 = every weight moved by 1x / 2x a fixed random direction."""
    from transformers import AutoModelForCausalLM

    tmp_path = tmp_path_factory.mktemp("origin")
    path = tiny.init_model(TINY, 0, tmp_path / "run" / "checkpoint-0")
    base = AutoModelForCausalLM.from_pretrained(path)
    g = torch.Generator().manual_seed(1)
    direction = {k: 0.002 * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()}
    for step in (1, 2):
        m = AutoModelForCausalLM.from_pretrained(path)
        m.load_state_dict({k: v + step * direction[k] for k, v in base.state_dict().items()})
        m.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    return Trajectory(tmp_path / "run")


def _probes():
    seqs = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14], [7, 7, 9, 10, 11, 12, 13]]
    return P.Probes(seqs, [3, 2, 4], [0, 1, 2], ["", "", ""], ["", "", ""])


def test_capture_takes_module_inputs_at_the_response_positions(traj):
    probes = _probes()
    model = traj.load_model(2)
    mods = O.linear_modules(model, [-1], ["q", "down"])
    assert sorted(mods) == ["model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    tokens = np.array([0, 2, 3, 7])
    x = O.capture_inputs(model, probes, mods, tokens, batch_size=2)
    # the same module's outputs, captured independently at the same (probe, position) cells
    outs, cells = {}, {}
    flat = probes.tokens()
    hook = mods["model.layers.1.mlp.down_proj"].register_forward_hook(lambda m, a, y: outs.__setitem__("y", y))
    with torch.inference_mode():
        for i in range(len(probes)):
            model(input_ids=torch.tensor([probes.input_ids[i]]))
            for j in np.flatnonzero(flat["probe"].to_numpy() == i):
                cells[j] = outs["y"][0, flat["position"][j] - 1]
    hook.remove()
    W = mods["model.layers.1.mlp.down_proj"].weight.detach()
    want = torch.stack([cells[j] for j in tokens])
    torch.testing.assert_close(x["model.layers.1.mlp.down_proj"] @ W.T, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no linear module"):
        O.linear_modules(model, None, ["nonexistent"])


def test_decompose_trajectory_closes_exactly_and_is_quadratic_in_the_step(traj):
    dec = O.decompose_trajectory(traj, _probes(), layers=None, modules=["q", "o", "up", "down"], batch_size=2)
    t = dec.table
    assert len(t) == 2 * 4 * 2 and sorted(t["step"].unique()) == [1, 2]
    assert t["residual"].max() < 1e-10
    np.testing.assert_allclose(t[["share_weight", "share_input", "share_second"]].sum(axis=1), 1.0)
    # layer 0's q/up see inputs that changed only through the embedding and input norm; with weights moved
    # linearly in the step, the weight term doubles and the second-order term roughly quadruples from step 1 to 2
    q0 = t[t["module"] == "model.layers.0.self_attn.q_proj"].set_index("step")
    assert q0.loc[2, "norm_weight"] / q0.loc[1, "norm_weight"] == pytest.approx(2.0, rel=0.05)
    assert q0.loc[2, "norm_second"] / q0.loc[1, "norm_second"] == pytest.approx(4.0, rel=0.15)
    s = dec.summary()
    assert s["second_order_share_max"] == t["share_second"].max() and s["decomposition_rows"] == 16
    assert "input" in dec.verdict() and len(dec.paper_rows()) == 2


def test_sft_and_rl_runs_share_training_checkpointing_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "outputs"))
    cfg = config.load("params/default.yaml", "default", overrides={
        **{f"model.{k}": v for k, v in TINY.items()}, "task.train_size": 200, "task.heldout_size": 8,
        "sft.base_steps": 2, "rl.steps": 2, "rl.save_every": 1, "rl.batch": 2, "rl.rollouts": 2,
        "rl.max_completion_length": 4, "eval.max_new_tokens": 4, "eval.heldout_during_training": 4,
        "origin.sgd_lr": 0.5})
    study = O.Study(cfg, probes=None)
    sft_dir, rl_dir = study.run(study.noisy(-10)), study.run(study.rl)
    sft, rl = Trajectory(sft_dir), Trajectory(rl_dir)
    assert sft.steps == rl.steps == [0, 1, 2] and sft.names == rl.names
    assert (sft.path(0) / "model.safetensors").read_bytes() == (rl.path(0) / "model.safetensors").read_bytes()
    assert list(training.read_log(sft_dir).columns) == list(training.read_log(rl_dir).columns) == training.LOG_COLUMNS
    assert {p.name for p in sft.path(2).iterdir()} == {p.name for p in rl.path(2).iterdir()}
    assert O.Study(cfg, probes=None).run(study.noisy(-10)) == sft_dir          # cached
    assert study.sft_params()["batch"] == 4 and study.sgd.rl_changes == {"lr": 0.5, "optimizer": "sgd"}


def _res(**kw):
    res = {"rl_weight_r2_median": 0.8, "sft_weight_r2_median": 0.45, "rl_token_r2_median": 0.85,
           "sft_token_r2_median": 0.35, "snr_weight_r2_median": {"0": 0.5, "-10": 0.6, "signal=0": 0.55},
           "snr_token_r2_median": {"0": 0.4, "-10": 0.5, "signal=0": 0.3},
           "sgd_weight_r2_median": 0.75, "adamw_weight_r2_median": 0.8, "sgd_lr": 0.1,
           "lr_weight_r2_median": {"3e-05": 0.72, "0.0001": 0.8}}
    for name in ("sgd", "adamw"):
        res |= {f"{name}_displacement": 0.01, f"{name}_heldout_first": 0.2, f"{name}_heldout_last": 0.3,
                f"{name}_reward_first": 0.3, f"{name}_reward_last": 0.4}
    return {**res, **kw}


def test_verdicts_follow_the_numbers():
    v = O.verdicts(_res())
    assert "this run agrees" in v[0] and "0.60 at -10 dB" in v[1] and "does raise" in v[1]
    assert "noise only it is 0.55" in v[1] and "token space the peak is 0.50 at -10 dB" in v[1]
    v = O.verdicts(_res(rl_weight_r2_median=0.47, snr_weight_r2_median={"-10": 0.49}))   # within the margin
    assert "about as linear" in v[0] and "disagrees" in v[0] and "does not raise" in v[1]
    assert "SGD at lr 0.1 learns" in v[2] and "persists with SGD" in v[2] and "all above" in v[3]
    assert "falls as lr grows" not in v[3] and "rises as lr grows" in v[3]
    assert "does not learn" in O.verdicts(_res(sgd_reward_last=0.2))[2]
    v = O.verdicts(_res(rl_token_r2_median=0.3, snr_weight_r2_median={"0": 0.4}, sgd_weight_r2_median=0.5,
                        lr_weight_r2_median={"3e-05": 0.6, "0.0001": 0.8}))
    assert "disagrees" in v[0] and "does not raise" in v[1] and "does not persist" in v[2] and "not all" in v[3]
    assert "persists with SGD" in O.verdicts(_res(sgd_weight_r2_median=0.6, adamw_weight_r2_median=0.62))[2]
    assert "falls as lr grows" in O.verdicts(_res(lr_weight_r2_median={"3e-05": 0.8, "0.0001": 0.72}))[3]
    v = O.verdicts(_res(sft_token_r2_median=math.nan))     # token space undefined: judged on weights
    assert "this run agrees" in v[0] and "not comparable in token space" in v[0] and "does raise" in v[1]
    v = O.verdicts(_res(sft_weight_r2_median=math.nan, sgd_weight_r2_median=None))
    assert "cannot be judged" in v[0] and "cannot be judged" in v[1] and "cannot be judged" in v[2]
    rows = dict((claim, measured) for claim, _, measured in O.paper_rows(_res(sft_weight_r2_median=math.nan)))
    assert rows["SFT weight / token R² median"] == "n/a / 0.35"


def test_sft_demonstrations_rule():
    """`correct`: SFT learns the same problems with every solution right (the slips the base learned removed);
    `task`: the base's own demonstrations; anything else is an error naming the knob."""
    from helpers import tasks

    over = {"task.slip": 0.3, "task.train_size": 200, "task.heldout_size": 8}
    cfg = config.load("params/default.yaml", "default", overrides=over)
    clean = O.Study(cfg, probes=None).sft_task_cfg()
    assert clean.task.slip == 0.0 and cfg.task.slip == 0.3
    mixed, right = tasks.split(cfg.task)[0], tasks.split(clean.task)[0]
    assert [it.prompt for it in mixed] == [it.prompt for it in right]
    assert all(tasks.parse_answer(it.solution) == it.answer for it in right)
    assert any(tasks.parse_answer(it.solution) != it.answer for it in mixed)
    own = config.load("params/default.yaml", "default", overrides={**over, "origin.sft.demonstrations": "task"})
    assert O.Study(own, probes=None).sft_task_cfg().task.slip == 0.3
    bad = config.load("params/default.yaml", "default", overrides={**over, "origin.sft.demonstrations": "x"})
    with pytest.raises(ValueError, match="origin.sft.demonstrations"):
        O.Study(bad, probes=None).sft_task_cfg()
