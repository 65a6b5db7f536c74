"""The science guard: the embedded default's RL run (seed `rl.seed`, default profile) must learn and move in straight
lines, so a change that stops RL from learning cannot land green. It trains the real default run (base SFT + RL, about
3 minutes on one core; reused from outputs/cache/ when built) and measures it as the regime search does
(`helpers.pipeline.regime.measure`).

The floors sit well inside what every seed of the regime search measured (docs/regime_search.md): the held-out gain was
+0.23 to +0.24 on seeds 0–2 over 500 problems (noise margin of one accuracy ±0.045), the share of weight entries with
R² > 0.7 0.61–0.62, and the token log-prob R² median 0.89.
"""

import pytest

from helpers.lib import config
from helpers.pipeline import regime

pytestmark = pytest.mark.slow  # trains models / executes notebooks: left out of `make test-fast`

MIN_GAIN = 0.10  # held-out greedy gain, final − base
WEIGHT_SHARE = (0.45, 0.85)  # share of moved weight entries with R² > 0.7
MIN_TOKEN_MEDIAN = 0.75  # token log-prob R² median


@pytest.fixture(scope="module")
def measured(one_thread):
    return regime.measure(config.load("params/default.yaml", profile="default"))


def test_the_default_rl_run_learns(measured):
    assert measured["heldout_items"] >= 500
    assert measured["gain"] >= MIN_GAIN, f"held-out gain {measured['gain']:+.3f} < {MIN_GAIN}: RL no longer learns"
    assert measured["end_drop"] <= 0.05, (
        f"the curve collapses: final {measured['final']:.3f}, peak {measured['peak']:.3f}"
    )


def test_the_default_rl_run_moves_in_straight_lines(measured):
    share = measured["weight_r2_frac_above_0_7"]
    assert WEIGHT_SHARE[0] <= share <= WEIGHT_SHARE[1], f"weight R² share {share:.2f} outside {WEIGHT_SHARE}"
    assert measured["token_r2_median"] >= MIN_TOKEN_MEDIAN
