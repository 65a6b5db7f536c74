"""Notebook 00's claims: RL's held-out gain is paired over items and covers every seed; token entropy falls."""

import numpy as np
import pandas as pd
import pytest

from helpers.experiments import nb00_trajectory as nb
from helpers.lib.scoring import PerItem
from tests.test_training import micro_cfg


def scores_table(base, finals, base_entropy=1.0, entropies=None):
    """A scores table as `nb00_trajectory.endpoint_scores` gives it: greedy per-item hits and entropy per model."""
    entropies = entropies or [0.5] * len(finals)
    rows = {"base": {"greedy_per_item": list(base), "entropy": base_entropy}}
    rows |= {
        f"seed {s}": {"greedy_per_item": PerItem(np.asarray(f)), "entropy": e}
        for s, (f, e) in enumerate(zip(finals, entropies))
    }
    return pd.DataFrame.from_dict(rows, orient="index")


def hits(n, p, seed):
    return (np.random.default_rng(seed).random(n) < p).astype(int)


@pytest.mark.parametrize(
    "finals, verdict",
    [
        (lambda b: [b | hits(500, 0.5, 1), b | hits(500, 0.4, 2)], "holds"),  # every seed gains ~ +0.2
        (lambda b: [b, b & hits(500, 0.9, 1)], "does not hold"),  # no gain, or a loss
        (lambda b: [b | hits(500, 0.5, 1), b & hits(500, 0.9, 2)], "inconclusive"),  # the seeds disagree
    ],
)
def test_rl_gain_claim_pairs_items_and_covers_every_seed(finals, verdict):
    base = hits(500, 0.4, 0)
    got = {c.id: c for c in nb.claims(scores_table(base, finals(base)), micro_cfg())}
    c = got["nb00.rl_gain"]
    assert c.verdict == verdict and "hull over 2 seeds" in c.how and "500 held-out items" in c.how
    assert c.measured == pytest.approx(np.mean([f.mean() - base.mean() for f in finals(base)]))


def test_rl_gain_claim_is_inconclusive_on_few_items():
    base = hits(20, 0.4, 0)
    c = nb.claims(scores_table(base, [base | hits(20, 0.15, 1)]), micro_cfg())[0]
    assert c.verdict == "inconclusive" and "hull" not in c.how


@pytest.mark.parametrize(
    "entropies, verdict",
    [
        ([0.6, 0.8], "holds"),
        ([1.2, 1.1], "does not hold"),
        ([0.8, 1.1], "inconclusive"),
        ([None, 0.8], "inconclusive"),
    ],
)
def test_entropy_claim_spans_the_seeds(entropies, verdict):
    base = hits(50, 0.4, 0)
    c = nb.claims(scores_table(base, [base, base], 1.0, entropies), micro_cfg())[1]
    assert c.id == "nb00.entropy_falls" and c.verdict == verdict
    if None not in entropies:
        assert c.measured == pytest.approx(np.mean(entropies) - 1.0)
        assert c.interval == pytest.approx((min(entropies) - 1.0, max(entropies) - 1.0))
