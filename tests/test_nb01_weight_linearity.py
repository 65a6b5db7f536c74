"""Notebook 01: weight R² tables (per module type, layer × module grid), summaries with intervals, saved results and
the claims (share and median over seeds, norms the least linear)."""

import numpy as np
import pytest
import torch

from helpers.experiments import nb01_weight_linearity as nb
from helpers.experiments import plots
from helpers.lib import config
from helpers.lib import linearity as L
from tests.test_linearity import tiny_run


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A perfectly linear run, stored in float64 so storage rounding adds nothing."""
    return tiny_run(tmp_path_factory.mktemp("linear") / "run", dtype=torch.float64)


def test_bf16_norms_that_barely_move_are_dropped(tmp_path):
    # norms sit at 1.0 where one bf16 step is 2^-7: a 1e-3 drift never moves them by 2 steps
    traj = tiny_run(tmp_path / "run", dtype=torch.bfloat16, drift=1e-3, noise=1e-4)
    wl = L.weight_r2(traj, fraction=0.05, progress=False)
    tensors = nb.tensors_table(wl)
    norms = tensors[tensors["module"].str.endswith("norm")]
    assert len(norms) == 5 and (norms["kept"] == 0).all() and (norms["dropped_range"] == norms["sampled"]).all()
    assert nb.summary(wl)["kept"] > 0 and wl.norm_summary()["kept"] == 0
    mods = nb.by_module(wl)
    assert mods.loc["final_norm", "dropped_range"] == mods.loc["final_norm", "sampled"] == 32
    assert np.isnan(mods.loc["final_norm", "median"]) and nb.least_linear_module(wl) != "final_norm"
    norms = verdicts(wl, {0: nb.summary(wl, 0.7, 0.95)})["nb01.norms_least_linear"]
    assert norms.verdict == "inconclusive" and "no norm entry moved enough" in norms.detail


def test_result_tables_and_saved_keys(linear):
    wl = L.weight_r2(linear, fraction=0.05, progress=False)
    res = nb.results(wl)
    for key in (
        "weight_r2_median",
        "weight_r2_q1",
        "weight_r2_q3",
        "weight_r2_frac_above_0_7",
        "entries_kept",
        "entries_dropped",
    ):
        assert key in res
    assert res["weight_r2_frac_above_0_7"] == 1.0 and res["entries_kept"] == len(wl.values)
    grid = nb.grid(wl)
    assert list(grid.index) == ["0", "1", "—"] and grid.index.name == "layer"
    assert list(grid.columns) == [
        "embed",
        "q",
        "k",
        "v",
        "o",
        "input_norm",
        "gate",
        "up",
        "down",
        "post_attn_norm",
        "final_norm",
        "head",
    ]
    assert np.isnan(grid.loc["0", "embed"]) and grid.loc["—", "head"] == pytest.approx(1.0)
    assert list(nb.by_layer(wl).index) == [0, 1]


def test_nothing_moved(tmp_path):
    wl = L.weight_r2(tiny_run(tmp_path / "run", drift=0.0), progress=False)
    assert nb.summary(wl)["kept"] == 0 and nb.summary(wl)["dropped_range"] == nb.summary(wl)["sampled"] > 0
    assert nb.least_linear_module(wl) == "none" and nb.results(wl)["entries_kept"] == 0
    got = verdicts(wl, {0: nb.summary(wl, 0.7, 0.95)})
    assert {c.verdict for c in got.values()} == {"inconclusive"}


def test_saved_shares_are_above_the_papers_bar_and_the_knob(tmp_path):
    wl = L.weight_r2(tiny_run(tmp_path / "run", drift=1e-2, noise=2e-3), fraction=0.1, progress=False)
    v = wl.values
    res = nb.results(wl, threshold=0.5, level=0.9)
    assert res["weight_r2_frac_above_0_7"] == pytest.approx(np.mean(v > 0.7))
    assert res["weight_r2_frac_above_threshold"] == pytest.approx(np.mean(v > 0.5)) and res["r2_threshold"] == 0.5
    assert res["weight_r2_frac_above_0_7"] < res["weight_r2_frac_above_threshold"]
    lo, hi = res["weight_r2_median_ci"]
    assert lo < res["weight_r2_median"] < hi and hi - lo < 0.05


def test_histogram_draws_the_given_bar():
    fig = plots.r2_histogram([0.1, 0.5, 0.9], threshold=0.4)
    assert "R² = 0.4: 67% above" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


# ------------------------------------------------------------------------------------------------------------ claims
def fake(r2_by_module: dict) -> L.WeightLinearity:
    """A WeightLinearity whose kept entries have the given R² per module type."""
    names = np.array(list(r2_by_module), dtype=object)
    counts = np.array([len(xs) for xs in r2_by_module.values()])
    modules = np.repeat(names, counts)
    entries = {
        "tensor": modules,
        "layer": np.zeros(len(modules)),
        "module": modules,
        "index": np.concatenate([np.arange(n) for n in counts]),
        "r2": np.concatenate([np.asarray(xs, dtype=float) for xs in r2_by_module.values()]),
        "slope": np.ones(len(modules)),
    }
    tensors = {
        "tensor": names,
        "layer": np.zeros(len(names)),
        "module": names,
        "sampled": counts,
        "dropped_range": np.zeros_like(counts),
        "dropped_distinct": np.zeros_like(counts),
        "kept": counts,
    }
    return L.WeightLinearity([0, 1, 2], entries, tensors)


def verdicts(wl, by_seed, threshold=0.7):
    cfg = config.load("params/default.yaml", profile="default", overrides={"claims.r2_threshold": threshold})
    return {c.id: c for c in nb.claims(wl, by_seed, cfg)}


def spread(n, centre, width, seed=0):
    return np.clip(centre + width * np.random.default_rng(seed).uniform(-1, 1, n), 0, 1)


@pytest.mark.parametrize(
    "seeds_r2, verdict",
    [
        ([spread(2000, 0.90, 0.05), spread(2000, 0.92, 0.05, 1)], "holds"),  # every entry above 0.7
        ([spread(2000, 0.55, 0.30), spread(2000, 0.50, 0.30, 1)], "does not hold"),  # ~ 40 % above
        ([spread(2000, 0.90, 0.05), spread(2000, 0.50, 0.30, 1)], "inconclusive"),  # the seeds disagree
    ],
)
def test_share_and_median_claims(seeds_r2, verdict):
    by_seed = {s: nb.summary(fake({"q": r}), 0.7, 0.95) for s, r in enumerate(seeds_r2)}
    got = verdicts(fake({"q": seeds_r2[0]}), by_seed)
    assert got["nb01.weight_r2_share"].verdict == verdict and got["nb01.weight_r2_median"].verdict == verdict
    share = got["nb01.weight_r2_share"]
    assert share.measured == pytest.approx(np.mean([np.mean(r > 0.7) for r in seeds_r2]))
    assert "hull over 2 seeds" in share.how


def test_share_claim_is_inconclusive_on_few_entries():
    r = spread(30, 0.75, 0.1)  # share ≈ 0.7 … 0.75 of 30 entries: the interval straddles the 0.7 share bar
    got = verdicts(fake({"q": r}), {0: nb.summary(fake({"q": r}), 0.7, 0.95)})
    assert got["nb01.weight_r2_share"].verdict == "inconclusive"


@pytest.mark.parametrize(
    "norms, rest, verdict",
    [
        (spread(500, 0.3, 0.1), spread(2000, 0.9, 0.05), "holds"),
        (spread(500, 0.95, 0.03), spread(2000, 0.5, 0.2), "does not hold"),
        (spread(20, 0.85, 0.1), spread(2000, 0.85, 0.1), "inconclusive"),
    ],
)
def test_norms_claim(norms, rest, verdict):
    wl = fake({"input_norm": norms, "q": rest})
    c = verdicts(wl, {0: nb.summary(wl, 0.7, 0.95)})["nb01.norms_least_linear"]
    assert c.verdict == verdict
    assert c.measured == pytest.approx(np.median(norms) - np.median(rest))


def test_claims_refuse_summaries_made_at_another_bar():
    wl = fake({"q": spread(100, 0.9, 0.05)})
    with pytest.raises(ValueError, match="seed 0: measured at"):
        verdicts(wl, {0: nb.summary(wl, 0.5, 0.95)}, threshold=0.7)
    assert verdicts(wl, {0: nb.summary(wl, 0.5, 0.95)}, threshold=0.5)["nb01.weight_r2_share"].claim.endswith("> 0.5")
