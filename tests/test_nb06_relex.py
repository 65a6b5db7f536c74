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
    bent=0.1,
    bent_validated=True,
):
    """Synthetic notebook-06 tables whose claims all hold by default; each knob moves one claim's quantity (a delta,
    or (delta, per-item noise sd)). Steps 0 / 10 / 20 / 100; prefixes 10 % (T_cut 10) and 15 % (T_cut 20).
    `bent`: the best-validated bending fit − the line on the 15 % prefix (`bent_validated` False: no bending fit
    could be validated there)."""
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
    line = relex_items[(0.15, 20, 100)]
    errors = {"linear": 0.3, "power": 0.1, "saturating": 0.2} if bent_validated else {"linear": 0.3}
    bent_items = {  # saturating, validated worse than power, is far better on the items: not the one compared
        "linear": line,
        "power": _knob(line, bent, 12),
        "saturating": line + 0.3,
    }
    bent = pd.DataFrame(
        [
            {
                **row(x, fraction=f, t_cut=t, observed=2, kind=k, target_step=100),
                "chosen": min(errors, key=errors.get),
                "reason": "lowest validation error" if bent_validated else "too few checkpoints for validation",
                "validation_error": errors.get(k, np.nan),
                "note": "" if k in errors else "needs 4 fitted checkpoints, has 2",
            }
            for f, t in ((0.10, 10), (0.15, 20))
            for k, x in bent_items.items()
        ]
    )
    return nb.Measured(
        claims.Settings(bootstrap=500), ev, real, grid, ablations, denoise, pd.DataFrame(), pd.DataFrame(), bent
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
    ("nb06.bent_fit", {}, "holds"),
    ("nb06.bent_fit", {"bent": 0.0}, "does not hold"),  # no gain as large as the margin
    ("nb06.bent_fit", {"bent": (0.01, 0.4)}, "inconclusive"),
    ("nb06.bent_fit", {"bent_validated": False}, "inconclusive"),  # not measured
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


def test_bent_fit_compares_the_best_validated_bending_kind():
    c = {c.id: c for c in nb.claims(measured(bent=0.04))}["nb06.bent_fit"]
    assert c.measured == pytest.approx(0.04)  # power (validation error 0.1), not saturating (0.2, +0.3 on the items)
    assert "power (validation error 0.1 vs linear 0.3; chosen: power)" in c.detail
    missing = {c.id: c for c in nb.claims(measured(bent_validated=False))}["nb06.bent_fit"]
    assert np.isnan(missing.measured)
    assert missing.detail == (
        "not measured (T_cut = 20, 2 checkpoints): too few checkpoints for validation; "
        "power: needs 4 fitted checkpoints, has 2; saturating: needs 4 fitted checkpoints, has 2"
    )
    out = nb.results(measured(bent=0.04))
    assert out["relex_bent_fit_minus_linear"] == pytest.approx(0.04)
    assert [r["chosen"] for r in out["relex_bent_chosen"]] == ["power", "power"]
    assert out["relex_bent_chosen"][1]["accuracy_chosen"] - out["relex_bent_chosen"][1]["accuracy_linear"] == (
        pytest.approx(0.04)
    )


class StubScorer:
    """Scores a model directory by a hash of its path (no sampling): a stand-in for `Scorer` in shape only."""

    def scored(self, path):
        import zlib

        from helpers.lib.scoring import PerItem

        items = np.random.default_rng(zlib.crc32(str(path).encode())).random(20)
        return {"accuracy": float(items.mean()), "per_item": PerItem(items)}


def test_bent_fits_table_and_curves(tmp_path):
    import matplotlib.pyplot as plt
    import pandas as pd

    from tests.test_relex import make_trajectory

    traj, _ = make_trajectory(tmp_path / "run", list(range(0, 17)), noise=0.0, curve=lambda s: np.sqrt(s))
    rc = config.derive(
        config.load(profile="default"), {"relex.t_cut_fractions": [0.12], "relex.ablation.t_cut_fraction": 0.75}
    ).relex
    bent = nb.bent_fits(traj, rc, StubScorer())
    assert list(bent.kind.unique()) == ["linear", "power", "saturating"]
    short, long = bent[bent.fraction == 0.12], bent[bent.fraction == 0.75]
    assert short.t_cut.iloc[0] == 2 and set(short.chosen) == {"linear"}  # 2 checkpoints: nothing validated
    assert short.reason.iloc[0].startswith("too few checkpoints for validation")
    assert short.note.iloc[1] == (
        "refit: the line stands in on every tensor (2 points: a power fit needs at least 4 (parameters + 1))"
    )
    assert short[short.kind != "linear"].accuracy.isna().all()  # the line stands in on every tensor: not scored
    assert long.t_cut.iloc[0] == 12 and long.chosen.iloc[0] in ("power", "saturating")  # c ∝ √t bends
    assert long.validation_error.notna().all() and long.accuracy.notna().all()
    real = pd.DataFrame({"step": traj.steps, "accuracy": 0.5})
    ablations = pd.DataFrame(
        [{"rank": 1, "fit": "polynomial", "window": None, "t_cut": 12, "target_step": 16, "accuracy": 0.4}]
    )
    table = nb.bent_table(bent, ablations, real)
    assert table.loc[(0.75, 12), "ablation polynomial"] == 0.4 and np.isnan(table.loc[(0.12, 2), "ablation sinusoid"])
    assert table.loc[(0.12, 2), "chosen"] == "linear" and table.loc[(0.75, 12), "fitted / held out"] == "8 / 4"
    curves = nb.bent_curves(traj, rc, bent)
    assert [c.t_cut for c in curves] == [2, 12] and set(curves[0].fits) == {"linear"}
    assert set(curves[1].fits) == {"linear", "power", "saturating"}
    plt.close(nb.plot_bent_fits(curves))
