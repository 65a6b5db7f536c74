"""Notebook 06's experiments (helpers.experiments.nb06_relex): decompositions of a run, claims, results, alignment."""

import numpy as np
import pytest

from helpers.experiments import nb06_relex as nb
from helpers.lib import config, relex
from tests.test_relex import make_trajectory


@pytest.fixture(autouse=True)
def _outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "outputs"))


def test_a_run_that_never_moved_is_an_error(tmp_path):
    traj, _ = make_trajectory(tmp_path / "run", [0, 1, 2], noise=0.0, scale=0.0)
    with pytest.raises(ValueError, match="checkpoint-2: no tensor moved"):
        nb.full_decomposition(traj, config.load(profile="default").relex)


N = 400  # synthetic held-out items


def _knob(ref, knob, seed):
    """ref + delta (+ centred Gaussian noise of sd `noise` per item: the mean shift is exactly delta) for a knob
    delta or (delta, noise)."""
    delta, noise = knob if isinstance(knob, tuple) else (knob, 0.0)
    e = np.random.default_rng(seed).standard_normal(len(ref))
    return ref + delta + noise * (e - e.mean())


def measured(
    ev=None,
    gain=0.4,
    kept=0.9,
    prefix=0.0,
    horizon=0.1,
    rank_k=-0.05,
    nonlinear=-0.05,
    denoise=0.1,
    ablation=None,
):
    """Synthetic notebook-06 tables whose claims all hold by default; each knob moves one claim's quantity (a delta,
    or (delta, per-item noise sd)). Steps 0 / 10 / 20 / 100; prefixes 10 % (T_cut 10) and 15 % (T_cut 20)."""
    import pandas as pd

    from helpers.experiments import claims
    from helpers.lib.scoring import PerItem

    ev = np.linspace(0.6, 1.0, 41) if ev is None else ev
    base = np.random.default_rng(0).random(N) * 0.4
    real_items = {0: base, 10: base + 0.1, 20: base + 0.2, 100: base + gain}
    row = lambda x, **k: {**k, "accuracy": float(np.mean(x)), "per_item": PerItem(np.asarray(x))}  # noqa: E731
    real = pd.DataFrame([row(x, step=s) for s, x in real_items.items()])
    relex_items = {
        (0.10, 10, 20): base + 0.2,
        (0.10, 10, 100): _knob(real_items[10], horizon, 1),
        (0.15, 20, 40): base + 0.3,
        (0.15, 20, 100): _knob(real_items[100], prefix, 2),
    }
    grid = pd.DataFrame(
        [
            row(x, method="relex", fraction=f, t_cut=t, target_step=s, horizon=s / t, real_accuracy=0.5)
            for (f, t, s), x in relex_items.items()
        ]
        + [
            row(
                2 * x - _knob(x, denoise, 3 + i),  # relex − two-point = the knob
                method="two_point",
                fraction=f,
                t_cut=t,
                target_step=s,
                horizon=s / t,
                real_accuracy=0.5,
            )
            for i, ((f, t, s), x) in enumerate(relex_items.items())
        ]
    )
    final = real_items[100]
    ablation = ablation or {
        (1, "linear"): final,
        (2, "linear"): _knob(final, rank_k, 7),
        (5, "linear"): _knob(final, rank_k, 8) - 0.05,
        (1, "polynomial"): _knob(final, nonlinear, 9),
        (1, "sinusoid"): _knob(final, nonlinear, 10) - 0.05,
    }
    ablations = pd.DataFrame(
        [
            row(x, rank=r, fit=f, window=None, t_cut=50, target_step=100, effective_rank=r, note="")
            for (r, f), x in ablation.items()
        ]
        + [
            row(
                final + 0.5, rank=1, fit="linear", window=3, t_cut=50, target_step=100, effective_rank=1, note=""
            ),  # a window variant: in neither ablation claim
            {
                "rank": 5,
                "fit": "sinusoid",
                "window": None,
                "t_cut": 50,
                "target_step": 100,
                "accuracy": np.nan,
                "per_item": None,
                "effective_rank": 5,
                "note": "too short",
            },
        ]
    )
    reconstructed = base + _knob(np.full(N, 0.0), kept, 11) * gain if gain else base + 0.1
    denoise = pd.DataFrame(
        [
            {**row(reconstructed, step=100, rank=1), "raw_accuracy": final.mean(), "raw_per_item": PerItem(final)},
            {**row(final, step=100, rank=5), "raw_accuracy": final.mean(), "raw_per_item": PerItem(final)},
        ]
    )
    ev = pd.DataFrame({"explained_variance": ev, "module": "q"})
    return nb.Measured(
        claims.Settings(bootstrap=500), ev, real, grid, ablations, denoise, pd.DataFrame(), pd.DataFrame()
    )


CASES = [  # (claim id, knobs, verdict)
    ("nb06.rank1", {}, "holds"),
    ("nb06.rank1", {"ev": np.linspace(0.1, 0.4, 41)}, "does not hold"),
    ("nb06.rank1", {"ev": np.linspace(0.2, 0.8, 9)}, "inconclusive"),
    ("nb06.reconstruction_keeps_gain", {}, "holds"),
    ("nb06.reconstruction_keeps_gain", {"kept": 0.1}, "does not hold"),
    ("nb06.reconstruction_keeps_gain", {"kept": (0.5, 0.75)}, "inconclusive"),
    ("nb06.reconstruction_keeps_gain", {"gain": 0.0}, "inconclusive"),  # no RL gain: the share is not identified
    ("nb06.prefix_matches_full", {}, "holds"),
    ("nb06.prefix_matches_full", {"prefix": -0.1}, "does not hold"),
    ("nb06.prefix_matches_full", {"prefix": (-0.02, 0.4)}, "inconclusive"),
    ("nb06.horizon_improves", {}, "holds"),
    ("nb06.horizon_improves", {"horizon": 0.0}, "does not hold"),  # no gain as large as the margin
    ("nb06.horizon_improves", {"horizon": (0.01, 0.4)}, "inconclusive"),
    ("nb06.rank_k_no_gain", {}, "holds"),
    ("nb06.rank_k_no_gain", {"rank_k": 0.1}, "does not hold"),
    ("nb06.rank_k_no_gain", {"rank_k": (0.01, 0.4)}, "inconclusive"),
    ("nb06.nonlinear_fit_no_gain", {}, "holds"),
    ("nb06.nonlinear_fit_no_gain", {"nonlinear": 0.1}, "does not hold"),
    ("nb06.nonlinear_fit_no_gain", {"nonlinear": (0.01, 0.4)}, "inconclusive"),
    ("nb06.denoising", {}, "holds"),
    ("nb06.denoising", {"denoise": -0.05}, "does not hold"),
    ("nb06.denoising", {"denoise": (0.01, 0.4)}, "inconclusive"),
]


@pytest.mark.parametrize("claim_id, knobs, verdict", CASES)
def test_claim_verdicts(claim_id, knobs, verdict):
    c = {c.id: c for c in nb.claims(measured(**knobs))}[claim_id]
    assert c.verdict == verdict, c.sentence()


def test_claim_numbers():
    c = {c.id: c for c in nb.claims(measured(kept=0.75, prefix=-0.01, horizon=0.03, denoise=0.05))}
    assert c["nb06.reconstruction_keeps_gain"].measured == pytest.approx(0.75)
    assert c["nb06.prefix_matches_full"].measured == pytest.approx(-0.01)  # the 15 % prefix at the final step
    assert c["nb06.horizon_improves"].measured == pytest.approx(0.03)  # the 10 % prefix, 10x, vs step 10
    assert c["nb06.denoising"].measured == pytest.approx(0.05)
    rank_k = c["nb06.rank_k_no_gain"]
    assert rank_k.measured == pytest.approx(-0.05) and "rank 2 linear" in rank_k.detail  # rank 5 is worse


def test_best_variant_is_chosen_on_one_half_and_reported_on_the_other():
    from helpers.experiments import claims

    select, report = claims.split(N, 0)
    assert not set(select) & set(report) and len(select) + len(report) == N
    final = measured().real.per_item.iloc[-1].values
    flip = np.where(np.isin(np.arange(N), select), 0.1, -0.1)  # +0.1 on the selection half, −0.1 on the report half
    m = measured(
        ablation={
            (1, "linear"): final,
            (2, "linear"): final + flip,
            (5, "linear"): final + 0.05,
            (1, "polynomial"): final,
        }
    )
    label, _, reported_on = nb.best_variant(m, "rank_k_no_gain")
    assert label == "rank 2 linear at step 100" and np.array_equal(reported_on, report)
    rank_k = {c.id: c for c in nb.claims(m)}["nb06.rank_k_no_gain"]
    assert rank_k.measured == pytest.approx(-0.1)  # on all items rank 2 gains 0 and rank 5 would be picked


def test_results_keep_per_item_scores_out():
    import json

    from helpers.pipeline.results import to_jsonable

    m = measured()
    out = nb.results(m)
    text = json.dumps(to_jsonable(out))
    assert "per_item" not in text and "items>" not in text
    assert out["ablation_rank_best_gain"] == {c.id: c.measured for c in nb.claims(m)}["nb06.rank_k_no_gain"]
    assert out["paper_prefix_fraction"] == 0.15 and len(out["relex"]) == 4
    assert f"<{N} items>" in m.real.to_string()  # a displayed table shows the size, not the scores


def test_alignment_after_the_prefix(tmp_path):
    traj, _ = make_trajectory(tmp_path / "run", list(range(0, 9)), noise=0.0)
    rc = config.load(profile="default").relex
    table = nb.alignment(relex.decompose(traj, t_cut=4), rc)
    assert sorted(table.step.unique()) == [5, 6, 7, 8] and set(table.method) == {"relex", "two_point"}
    np.testing.assert_allclose(table.cosine, 1.0, atol=1e-5)  # pure drift: both predict the real delta
    np.testing.assert_allclose(table.norm_ratio, 1.0, atol=1e-4)
