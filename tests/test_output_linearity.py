import inspect

import numpy as np
import pytest

from helpers.experiments import nb02_output_linearity as OL
from helpers.lib import config, linearity
from helpers.lib import probes as P


def test_uses_the_one_r2_implementation():
    assert OL.r2 is linearity.r2
    src = inspect.getsource(OL) + inspect.getsource(P)
    for second in ("corrcoef", "pearsonr", "linregress", "def r2", "polyfit", "lstsq"):
        assert second not in src, f"second R² / fit implementation: {second}"


def test_categories_are_a_pure_function_of_change_and_r2():
    change = np.array([0.5, -0.5, 0.5, 0.2, -0.21, 0.0, 0.3, 0.1])
    r2 = np.array([0.9, 0.7, 0.69, 0.99, 0.1, np.nan, np.nan, 0.0])
    got = OL.categorize(change, r2, min_change=0.2, r2_threshold=0.7)
    assert got.tolist() == ["behaviour", "behaviour", "erratic", "stable", "erratic", "stable", "erratic", "stable"]
    # elementwise: a token's category does not depend on the other tokens, and thresholds move it as expected
    for i in range(len(change)):
        assert OL.categorize(change[i : i + 1], r2[i : i + 1], 0.2, 0.7)[0] == got[i]
    assert OL.categorize([0.5], [0.69], 0.2, 0.6).tolist() == ["behaviour"]
    assert OL.categorize([0.5], [0.9], 0.6, 0.7).tolist() == ["stable"]
    with pytest.raises(ValueError, match="same shape"):
        OL.categorize([0.1, 0.2], [0.5], 0.2, 0.7)


def synthetic(seed=0):
    """Probes with 3 tokens each; token kinds: big linear drift, big noisy change, tiny change."""
    g = np.random.default_rng(seed)
    n_probes, T = 40, 8
    probes = P.Probes(
        [[5, 1, 2, 3]] * n_probes, [1] * n_probes, list(range(n_probes)), [""] * n_probes, [""] * n_probes
    )
    steps = np.arange(T) * 10.0
    N = probes.n_tokens
    kind = np.tile([0, 1, 2], n_probes)
    size = g.uniform(0.5, 3.0, N)
    lp = np.empty((T, N))
    t = steps / steps[-1]
    lp[:, kind == 0] = -3 + np.outer(t, size[kind == 0]) + 0.02 * g.standard_normal((T, (kind == 0).sum()))
    noisy = g.standard_normal((T, (kind == 1).sum()))
    noisy[-1] = noisy[0] + 1.0  # net change 1.0, no trend in between
    lp[:, kind == 1] = -3 + noisy
    lp[:, kind == 2] = -1 + 0.01 * g.standard_normal((T, (kind == 2).sum()))
    # hidden states: layer 0 = noise, layers 1-2 = linear drift + small noise
    L, Pn, D = 3, 10, 4
    hidden = np.empty((T, L, Pn, D))
    hidden[:, 0] = g.standard_normal((T, Pn, D))
    drift = g.standard_normal((Pn, D))
    for layer in (1, 2):
        hidden[:, layer] = t[:, None, None] * drift + 0.01 * g.standard_normal((T, Pn, D))
    forced = P.TrajectoryForced(
        steps.astype(int),
        lp.astype(np.float32),
        (lp + 7).astype(np.float32),
        hidden.astype(np.float32),
        (np.arange(Pn), np.arange(D)),
    )
    return probes, forced, kind


def test_analyse_recovers_known_categories_and_numbers():
    probes, forced, kind = synthetic()
    res = OL.analyse(forced, probes, tokenizer=None, min_change=0.2, r2_threshold=0.7)
    tok = res.tokens
    assert (tok["category"][kind == 0] == "behaviour").all()
    assert (tok["category"][kind == 2] == "stable").all()
    assert (tok["category"][kind == 1] == "erratic").mean() > 0.8
    assert res.summary()["kept"] == (kind != 2).sum()
    assert tok["label"][kind == 0].unique().tolist() == ["#1"]
    out = res.results()
    for key in (
        "token_r2_median",
        "token_r2_q1",
        "token_r2_q3",
        "token_r2_frac_above_0_7",
        "tokens_kept",
        "change_r2_correlation",
        "activation_r2_median_by_layer",
    ):
        assert key in out
    assert out["tokens_kept"] == 80 and out["tokens_total"] == 120
    assert out["token_r2_q1"] <= out["token_r2_median"] <= out["token_r2_q3"]
    assert abs(out["token_r2_frac_above_0_7"] - (tok[tok.kept]["r2"] > 0.7).mean()) < 1e-12
    np.testing.assert_allclose(
        out["token_r2_median"], np.median(linearity.r2(forced.logprobs, forced.steps)[kind != 2])
    )
    # logits = log-probs + constant here, so their R² are the log-prob R²
    np.testing.assert_allclose(tok["logit_r2"], tok["r2"], atol=1e-4)
    layers = out["activation_r2_median_by_layer"]
    assert len(layers) == 3 and layers[0] < 0.5 and min(layers[1:]) > 0.95
    assert res.layers()["layer"].tolist() == ["embeddings", "block 1", "block 2"]
    assert res.settings["probes"] == 40 and res.settings["probes_distinct"] == 1  # 40 samples of one sequence
    assert res.categories().loc["behaviour", "tokens"] == 40
    assert len(res.movers(6)) == 2  # one per distinct (sequence, position) that moved
    lo, hi = out["token_r2_median_ci"]
    assert lo <= out["token_r2_median"] <= hi and out["r2_threshold"] == 0.7
    assert out["token_r2_frac_above_threshold"] == out["token_r2_frac_above_0_7"]
    assert verdicts(res)["nb02.activations_linear"].verdict == "holds"  # blocks 2+ drift linearly


def test_probe_table_has_one_row_per_probe():
    probes = P.Probes([[5, 1, 2], [5, 6, 7, 8]], [1, 2], [0, 3], ["p", "q"], ["r", "s"])
    t = OL.probe_table(probes)
    assert list(t.columns) == ["prompt_index", "prompt", "response", "response_tokens"]
    assert t["prompt_index"].tolist() == [0, 3] and t["response_tokens"].tolist() == [2, 2]


def test_change_r2_correlation_sign():
    """Bigger movers more linear -> positive Spearman ρ; the reverse -> negative."""
    g = np.random.default_rng(1)
    T, N = 10, 200
    t = np.arange(T, dtype=float)
    size = np.linspace(0.3, 3.0, N)
    noise = g.standard_normal((T, N))
    probes = P.Probes([[0] + [1] * N], [1], [0], [""], [""])
    for sign in (+1, -1):
        scale = 0.3 if sign > 0 else 0.3 * size**2  # noise / change falls (+) or grows (-) with the change
        lp = np.outer(t / t[-1], size) + noise * scale
        lp[-1] = lp[0] + size  # exact net change = size (all kept)
        forced = P.TrajectoryForced(t.astype(int), lp, lp, None, None)
        res = OL.analyse(forced, probes)
        c = res.correlation()
        assert c["method"] == "spearman" and np.sign(c["kept"]) == sign and abs(c["kept"]) > 0.3
        claim = verdicts(res)["nb02.change_vs_r2"]
        assert claim.verdict == ("holds" if sign > 0 else "does not hold") and claim.measured == c["kept"]
    small = P.TrajectoryForced(t.astype(int), lp[:, :5], lp[:, :5], None, None)  # 5 tokens: too few to decide
    res = OL.analyse(small, P.Probes([[0] * 6], [1], [0], [""], [""]))
    assert verdicts(res)["nb02.change_vs_r2"].verdict == "inconclusive"


def test_analyse_needs_three_checkpoints():
    probes, forced, _ = synthetic()
    forced.steps, forced.logprobs, forced.logits = forced.steps[:2], forced.logprobs[:2], forced.logits[:2]
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        OL.analyse(forced, probes)


def test_a_trajectory_that_never_moves_is_reported_not_crashed():
    probes, forced, _ = synthetic()
    forced.logprobs[:] = forced.logprobs[0]
    forced.logits[:] = forced.logits[0]
    forced.hidden[:] = forced.hidden[0]
    res = OL.analyse(forced, probes)
    out = res.results()
    assert out["tokens_kept"] == 0 and np.isnan(out["token_r2_median"])
    assert np.isnan(out["activation_r2_median_by_layer"]).all()
    assert {c.verdict for c in verdicts(res).values()} == {"inconclusive"}
    assert res.categories().loc["stable", "tokens"] == probes.n_tokens
    OL.plot_change_vs_r2(res)
    OL.plot_activation_r2(res)


# ------------------------------------------------------------------------------------------------------------ claims
def verdicts(result, by_seed=None, threshold=0.7):
    """`OL.claims` by id; `by_seed` defaults to the result's own summary as the only seed."""
    cfg = config.load("params/default.yaml", profile="default", overrides={"claims.r2_threshold": threshold})
    return {c.id: c for c in OL.claims(result, by_seed or {0: result.summary(0.95)}, cfg)}


def seed(median, lo, hi):
    return {"median": median, "median_ci": (lo, hi), "threshold": 0.7, "level": 0.95}


@pytest.mark.parametrize(
    "by_seed, verdict",
    [
        ({0: seed(0.90, 0.88, 0.92), 1: seed(0.85, 0.82, 0.87)}, "holds"),
        ({0: seed(0.50, 0.45, 0.55), 1: seed(0.60, 0.58, 0.65)}, "does not hold"),
        ({0: seed(0.90, 0.88, 0.92), 1: seed(0.60, 0.58, 0.65)}, "inconclusive"),  # the seeds disagree
    ],
)
def test_token_median_claim_covers_every_seed(by_seed, verdict):
    probes, forced, _ = synthetic()
    c = verdicts(OL.analyse(forced, probes), by_seed)["nb02.token_r2_median"]
    assert c.verdict == verdict and "hull over 2 seeds" in c.how
    assert c.interval == (
        min(s["median_ci"][0] for s in by_seed.values()),
        max(s["median_ci"][1] for s in by_seed.values()),
    )


def test_token_median_claim_refuses_another_level():
    probes, forced, _ = synthetic()
    res = OL.analyse(forced, probes)
    with pytest.raises(ValueError, match="level"):
        verdicts(res, {0: res.summary(0.9)})


def test_spearman_interval_is_the_fisher_z_interval():
    lo, hi = OL.spearman_interval(0.0, 103, 0.95)
    assert hi == pytest.approx(np.tanh(1.959964 * 1.03 / 10)) and lo == pytest.approx(-hi)
    assert OL.spearman_interval(0.5, 50, 0.9)[1] < OL.spearman_interval(0.5, 50, 0.99)[1]
    assert np.isnan(OL.spearman_interval(0.9, 3)).all()


@pytest.mark.parametrize(
    "layer2, verdict, detail",
    [
        ("drift", "holds", "least linear block 2"),
        ("noise", "does not hold", "least linear block 2"),
        ("frozen", "inconclusive", "no R² in block 2"),
        (None, "inconclusive", "1 block"),
    ],
)
def test_activation_claim_takes_the_least_linear_layer_after_block_1(layer2, verdict, detail):
    probes, forced, _ = synthetic()
    if layer2 == "noise":
        forced.hidden[:, 2] = np.random.default_rng(3).standard_normal(forced.hidden[:, 2].shape)
    if layer2 == "frozen":
        forced.hidden[:, 2] = forced.hidden[0, 2]
    if layer2 is None:  # one block: no layer after the first
        forced.hidden = forced.hidden[:, :2]
    c = verdicts(OL.analyse(forced, probes))["nb02.activations_linear"]
    assert c.verdict == verdict and detail in c.detail
