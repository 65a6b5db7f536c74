"""Origin of linearity: the exact first/second-order split, the SNR of the injected noise, hook capture on probes, and
SFT / RL runs sharing one layout."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.experiments import claims as C
from helpers.experiments import nb03_origin as O
from helpers.experiments.training_log import read_log
from helpers.lib import cache, config, tiny, training
from helpers.lib import probes as P
from helpers.lib.scoring import PerItem
from helpers.lib.trajectory import Trajectory

TINY = dict(
    arch="llama",
    hidden_size=64,
    heads=2,
    kv_heads=1,
    layers=2,
    intermediate_size=64,
    max_positions=32,
    tie_embeddings=True,
)


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
    t = O.decompose(W, W, x, x + 1)  # weights unchanged: all of Δy is the input term
    assert float(t["weight"].abs().max()) == 0 and float(t["second"].abs().max()) == 0
    t = O.decompose(W, W + 1, x, x)  # inputs unchanged: all of Δy is the weight term
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
    assert p_noise == pytest.approx(sigma**2 * p_total, rel=1e-12)  # the requested noise power
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
    labels[:, :4] = -100  # prompt
    labels[0, -2:] = -100  # padding
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
    ell = torch.nn.functional.cross_entropy(
        out.logits[:, :-1][labels[:, 1:] != -100], labels[:, 1:][labels[:, 1:] != -100], reduction="none"
    )
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
            for j in np.flatnonzero(flat["probe"] == i):
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


def test_sft_and_rl_runs_share_training_checkpointing_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "outputs"))
    cfg = config.load(
        "params/default.yaml",
        "default",
        overrides={
            **{f"model.{k}": v for k, v in TINY.items()},
            "task.train_size": 200,
            "task.heldout_size": 8,
            "sft.base_steps": 2,
            "rl.steps": 2,
            "rl.save_every": 1,
            "rl.batch": 2,
            "rl.rollouts": 2,
            "rl.max_completion_length": 4,
            "eval.max_new_tokens": 4,
            "eval.heldout_during_training": 4,
            "origin.sgd_lr": 0.5,
        },
    )
    study = O.Study(cfg, probes=None)
    sft_dir, rl_dir = study.run(study.noisy(-10)), study.run(study.rl)
    sft, rl = Trajectory(sft_dir), Trajectory(rl_dir)
    assert sft.steps == rl.steps == [0, 1, 2] and sft.names == rl.names
    assert (sft.path(0) / "model.safetensors").read_bytes() == (rl.path(0) / "model.safetensors").read_bytes()
    assert list(read_log(sft_dir).columns) == list(read_log(rl_dir).columns) == training.LOG_COLUMNS
    info = cache.build_info(sft_dir)  # the SFT parameters and noise, as trained
    assert info["steps"] == 2 and info["snr_db"] == "-10" and info["version"] == O.SFT_VERSION and info["seconds"] > 0
    assert sft_dir.name.startswith(f"sft-run-v{O.SFT_VERSION}-") and study.cached(study.noisy(-10))
    assert {p.name for p in sft.path(2).iterdir()} == {p.name for p in rl.path(2).iterdir()}
    assert O.Study(cfg, probes=None).run(study.noisy(-10)) == sft_dir  # cached
    assert study.sft_params()["batch"] == 4 and study.sgd.rl_changes == {"lr": 0.5, "optimizer": "sgd"}
    m = O.measure_run(cfg, rl_dir, _probes())  # medians with their intervals, values kept out of results
    for space, n in (("weight", m["weight_entries"]), ("token", m["tokens_kept"])):
        lo, hi = m[f"{space}_r2_median_ci"]
        assert len(m[f"{space}_r2_values"].values) == n and (n == 0 or lo <= m[f"{space}_r2_median"] <= hi)
    assert not any(isinstance(v, PerItem) for v in O._numbers(m).values())


# ------------------------------------------------------------------------------------------------------- claims

ST = C.Settings(bootstrap=400)


def _dec(cells):
    """A Decomposition of {module: [(input share, weight share), ...] per checkpoint}."""
    rows = [
        {
            "module": mod,
            "step": step + 1,
            "share_input": i,
            "share_weight": w,
            "share_second": 1 - i - w,
            "second_token_p99": 1 - i - w,
        }
        for mod, shares in cells.items()
        for step, (i, w) in enumerate(shares)
    ]
    return O.Decomposition(pd.DataFrame(rows))


def _run(median, lo, hi, token=(math.nan, math.nan, math.nan), values=None, **kw):
    """A `Study.measure` dict with a weight (and token) R² median and interval."""
    return {
        "weight_r2_median": median,
        "weight_r2_median_ci": (lo, hi),
        "token_r2_median": token[0],
        "token_r2_median_ci": token[1:],
        "weight_entries": 100,
        "weight_r2_values": PerItem(np.asarray(values if values is not None else [median])),
        **kw,
    }


def test_input_term_claim_bootstraps_over_modules():
    steps = 10
    holds = O.input_term_dominates(_dec({m: [(0.7, 0.25)] * steps for m in "abcd"}), ST)
    assert holds.verdict == "holds" and holds.measured == pytest.approx(0.45) and "over the 4 modules" in holds.how
    fails = O.input_term_dominates(_dec({m: [(0.2, 0.75)] * steps for m in "abcd"}), ST)
    assert fails.verdict == "does not hold"
    # input-dominant in two of three modules: the cell medians favour the input term, but a resample of modules may
    # draw the weight-dominant one twice, so the module bootstrap cannot decide (a bootstrap over the 30 cells would)
    mixed = O.input_term_dominates(
        _dec({"a": [(0.6, 0.35)] * steps, "b": [(0.35, 0.6)] * steps, "c": [(0.55, 0.4)] * steps}), ST
    )
    assert mixed.measured > 0 and mixed.verdict == "inconclusive" and mixed.ci_low < 0 < mixed.ci_high
    still = O.input_term_dominates(_dec({"a": [(math.nan, math.nan)] * 2}), ST)  # Δy = 0 everywhere
    assert still.verdict == "inconclusive" and math.isnan(still.measured)


def test_second_order_claim_is_the_maximum_with_no_interval():
    tiny = O.second_order_tiny(_dec({"a": [(0.6, 0.38), (0.6, 0.37)], "b": [(0.5, 0.49)]}))
    assert tiny.verdict == "holds" and tiny.measured == pytest.approx(0.03) and tiny.interval == (tiny.measured,) * 2
    assert "maximum over all 3" in tiny.how and "no sampling interval" in tiny.how
    big = O.second_order_tiny(_dec({"a": [(0.6, 0.38), (0.5, 0.42)]}))
    assert big.verdict == "does not hold" and big.measured == pytest.approx(0.08)
    assert O.second_order_tiny(_dec({"a": [(math.nan, math.nan)]})).verdict == "inconclusive"  # Δy = 0


@pytest.mark.parametrize(
    "run, verdict",
    [
        (_run(0.8, 0.75, 0.85), "holds"),
        (_run(0.5, 0.45, 0.55), "does not hold"),
        (_run(0.72, 0.65, 0.78), "inconclusive"),
        (_run(math.nan, math.nan, math.nan), "inconclusive"),
    ],
)
def test_rl_linear_claim(run, verdict):
    c = O.rl_linear(run, ST)
    assert c.verdict == verdict and c.id == "nb03.rl_linear" and c.rule.threshold == ST.r2_threshold


def test_rl_vs_sft_claims_per_space():
    rl, sft = _run(0.8, 0.78, 0.82, token=(0.4, 0.38, 0.42)), _run(0.45, 0.43, 0.47, token=(0.42, 0.4, 0.44))
    weight, token = O.rl_more_linear_than_sft(rl, sft, ST)
    assert (weight.id, weight.verdict) == ("nb03.rl_more_linear_than_sft_weight", "holds")
    assert weight.measured == pytest.approx(0.35) and weight.ci_low == pytest.approx(0.35 - math.hypot(0.02, 0.02))
    assert (token.id, token.verdict) == ("nb03.rl_more_linear_than_sft_token", "does not hold")  # −0.02: no effect
    wide = O.rl_more_linear_than_sft(_run(0.6, 0.4, 0.8, token=(0.6, 0.4, 0.8)), sft, ST)
    assert [c.verdict for c in wide] == ["inconclusive", "inconclusive"]


def _levels(spread, centres, n):
    """Noisy SFT runs at three SNR levels: weight R² values around each centre."""
    rng = np.random.default_rng(0)
    return {
        key: _run(float(np.median(v)), math.nan, math.nan, values=v)
        for key, c in zip(("0", "-10", O.ZERO_SIGNAL), centres)
        for v in [np.clip(c + spread * rng.standard_normal(n), -1, 1)]
    }


def test_noise_peak_claim_uses_bonferroni_intervals():
    sft = _run(0.45, 0.44, 0.46)
    noisy = _levels(0.2, (0.5, 0.7, 0.6), 2000)
    c = O.noise_raises_sft_linearity(sft, noisy, ST)
    assert c.verdict == "holds" and "peak at -10 dB" in c.detail and "Bonferroni over 3 candidates" in c.how
    level = C.bonferroni(ST.level, 3)
    peak = noisy["-10"]
    want = C.difference(
        peak["weight_r2_median"], C.median_interval(peak["weight_r2_values"].values, level), 0.45, (0.44, 0.46)
    )
    assert (c.measured, c.interval) == (pytest.approx(want[0]), pytest.approx(want[1]))
    plain = C.median_interval(peak["weight_r2_values"].values, ST.level)
    assert C.difference(peak["weight_r2_median"], plain, 0.45, (0.44, 0.46))[1][0] > c.ci_low  # wider than 95 %
    assert O.noise_raises_sft_linearity(sft, _levels(0.2, (0.4, 0.45, 0.42), 2000), ST).verdict == "does not hold"
    wide = O.noise_raises_sft_linearity(sft, _levels(0.3, (0.5, 0.48, 0.47), 15), ST)
    assert wide.verdict == "inconclusive" and wide.ci_low < 0 < wide.measured
    none = O.noise_raises_sft_linearity(sft, {"0": _run(math.nan, math.nan, math.nan, values=[])}, ST)
    assert none.verdict == "inconclusive" and "no noisy SFT run" in none.detail


def test_noise_peak_correction_can_change_the_verdict():
    """The same peak clears the margin as the only level, but not as the best of 7 (Bonferroni-wide interval)."""
    sft = _run(0.45, 0.45, 0.45)  # a point: the difference's low end is the peak's − 0.45
    v = np.random.default_rng(1).normal(0.6, 0.3, 200)
    lo95, lo7 = C.median_interval(v, ST.level)[0], C.median_interval(v, C.bonferroni(ST.level, 7))[0]
    assert lo7 < lo95
    v = v + 0.45 - (lo95 + lo7) / 2  # plain SFT's 0.45 falls between the two low ends
    peak = _run(float(np.median(v)), math.nan, math.nan, values=v)
    assert O.noise_raises_sft_linearity(sft, {"-10": peak}, ST).verdict == "holds"
    others = {str(k): _run(0.0, math.nan, math.nan, values=v - 1) for k in range(6)}
    c = O.noise_raises_sft_linearity(sft, {**others, "-10": peak}, ST)
    assert c.verdict == "inconclusive" and "peak at -10 dB" in c.detail and "best of 7" in c.how


def _sgd(median, lo, hi):
    return _run(median, lo, hi, heldout_first=0.2, heldout_last=0.3, reward_first=0.3, reward_last=0.4)


@pytest.mark.parametrize(
    "sgd, verdict",
    [
        (_sgd(0.78, 0.76, 0.80), "holds"),
        (_sgd(0.5, 0.48, 0.52), "does not hold"),
        (_sgd(0.7, 0.55, 0.85), "inconclusive"),
    ],
)
def test_sgd_claim_is_non_inferiority(sgd, verdict):
    c = O.sgd_persists(sgd, _sgd(0.8, 0.78, 0.82), 0.1, ST)
    assert c.verdict == verdict and c.rule.threshold == -ST.r2_margin and "SGD (lr 0.1)" in c.detail


def test_lr_claim_takes_the_least_linear_lr():
    c = O.lr_linear({"1e-4": _run(0.8, 0.76, 0.84), "3e-4": _run(0.75, 0.72, 0.9)}, ST)
    assert c.verdict == "holds" and c.measured == 0.75 and c.interval == (0.72, 0.84)
    c = O.lr_linear({"1e-4": _run(0.8, 0.76, 0.84), "3e-4": _run(0.6, 0.55, 0.65)}, ST)
    assert c.verdict == "does not hold" and c.interval == (0.55, 0.65)
    assert O.lr_linear({"1e-4": _run(0.8, 0.76, 0.84), "3e-4": _run(0.72, 0.68, 0.76)}, ST).verdict == "inconclusive"
    assert (
        O.lr_linear({"1e-4": _run(0.8, 0.76, 0.84), "3e-4": _run(math.nan, math.nan, math.nan)}, ST).verdict
        == "inconclusive"
    )


def test_claims_of_a_study_in_order():
    """`claims(study, dec)` reads every setting of the study once and returns notebook 03's claims in order."""
    from types import SimpleNamespace

    cfg = config.load("params/default.yaml", "smoke")
    runs = {"rl": _sgd(0.8, 0.78, 0.82), "sft": _sgd(0.45, 0.43, 0.47), "sgd": _sgd(0.78, 0.76, 0.8)}
    for r in runs.values():
        r |= {"token_r2_median": r["weight_r2_median"], "token_r2_median_ci": r["weight_r2_median_ci"]}
    study = SimpleNamespace(
        cfg=cfg,
        rl="rl",
        sft="sft",
        sgd="sgd",
        sgd_lr=lambda: 0.1,
        noisy=lambda x: "sft",
        adamw_at=lambda x: "rl",
        measure=runs.__getitem__,
    )
    got = O.claims(study, _dec({m: [(0.7, 0.25)] * 3 for m in "ab"}))
    assert [c.id for c in got] == [
        "nb03.input_term_dominates",
        "nb03.second_order_tiny",
        "nb03.rl_linear",
        "nb03.rl_more_linear_than_sft_weight",
        "nb03.rl_more_linear_than_sft_token",
        "nb03.noise_raises_sft_linearity",
        "nb03.sgd_persists",
        "nb03.lr_linear",
    ]
    assert f"best of {len(cfg.origin.snr_db)} SNR levels" in got[5].how
    assert all(c.paper.source for c in got)
