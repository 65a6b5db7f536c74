"""helpers.lib.linearity: the R² core, the entry filters, tensor naming, and weight R² over synthetic trajectories."""

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from helpers.lib import linearity as L
from helpers.lib import synthetic as S
from helpers.lib.trajectory import Trajectory

STEPS = list(range(0, 151, 10))  # 16 checkpoints, like the embedded run
TINY = dict(hidden_size=32, vocab_size=64, num_hidden_layers=2)


def tiny_run(path, **kw):
    args = dict(n_params=0, steps=STEPS, dtype=torch.float32, drift=1e-2, noise=0.0, seed=0) | TINY | kw
    return Trajectory(S.write_synthetic_trajectory(path, **args))


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A perfectly linear run, stored in float64 so storage rounding adds nothing."""
    return tiny_run(tmp_path_factory.mktemp("linear") / "run", dtype=torch.float64)


# ------------------------------------------------------------------------------------------------------------ r2
def test_r2_matches_scipy_linregress():
    rng = np.random.default_rng(0)
    t = np.sort(rng.choice(5000, 13, replace=False))
    y = rng.standard_normal((13, 4, 5)) + rng.standard_normal((4, 5)) * 1e-3 * t[:, None, None]
    ref = np.array([[stats.linregress(t, y[:, i, j]).rvalue ** 2 for j in range(5)] for i in range(4)])
    got = L.r2(y, t)
    assert got.shape == (4, 5) and got.dtype == np.float64
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(L.r2(torch.tensor(y, dtype=torch.float32), t), ref, atol=1e-5)  # torch input


def test_r2_small_moves_on_large_values_in_float64():
    t = np.arange(16.0)
    y = 0.03 + 1e-9 * t + 1e-11 * np.random.default_rng(1).standard_normal(16)
    assert L.r2(y[:, None], t)[0] == pytest.approx(stats.linregress(t, y).rvalue ** 2, rel=1e-9)


def test_r2_constant_column_is_nan_and_bad_steps_raise():
    y = np.random.default_rng(0).standard_normal((5, 3))
    y[:, 1] = 0.1
    r = L.r2(y, np.arange(5))
    assert np.isnan(r[1]) and np.isfinite(r[[0, 2]]).all()
    with pytest.raises(ValueError, match="not all equal"):
        L.r2(y, np.ones(5))
    with pytest.raises(ValueError, match="shape"):
        L.r2(y, np.arange(4))


def test_fit_line_matches_polyfit():
    rng = np.random.default_rng(2)
    t = np.array([0, 3, 10, 11, 40.0])
    y = rng.standard_normal((5, 7))
    slope, intercept = L.fit_line(y, t)
    ref = np.polyfit(t, y, 1)
    np.testing.assert_allclose(slope, ref[0], atol=1e-12)
    np.testing.assert_allclose(intercept, ref[1], atol=1e-12)


# ----------------------------------------------------------------------------------------------- naming, sampling
@pytest.mark.parametrize(
    "name, expected",
    [
        ("model.embed_tokens.weight", (None, "embed")),
        ("model.layers.0.self_attn.q_proj.weight", (0, "q")),
        ("model.layers.12.self_attn.k_proj.weight", (12, "k")),
        ("model.layers.3.self_attn.v_proj.bias", (3, "v")),
        ("model.layers.27.self_attn.o_proj.weight", (27, "o")),
        ("model.layers.5.self_attn.q_norm.weight", (5, "q_norm")),
        ("model.layers.1.mlp.gate_proj.weight", (1, "gate")),
        ("model.layers.1.mlp.up_proj.weight", (1, "up")),
        ("model.layers.31.mlp.down_proj.weight", (31, "down")),
        ("model.layers.4.input_layernorm.weight", (4, "input_norm")),
        ("model.layers.4.post_attention_layernorm.weight", (4, "post_attn_norm")),
        ("model.norm.weight", (None, "final_norm")),
        ("lm_head.weight", (None, "head")),
        ("model.language_model.layers.2.mlp.down_proj.weight", (2, "down")),
        ("model.rotary_emb.inv_freq", (None, "inv_freq")),
    ],
)
def test_parse_name_qwen2_and_llama(name, expected):
    assert L.parse_name(name) == expected


def test_parse_name_covers_every_weight_of_a_qwen2_model():
    config = S.qwen2_config(0, **TINY)
    parsed = [L.parse_name(n) for n in S.qwen2_shapes(config) if n.endswith(".weight")]
    assert {m for _, m in parsed} == {
        "embed",
        "q",
        "k",
        "v",
        "o",
        "gate",
        "up",
        "down",
        "input_norm",
        "post_attn_norm",
        "final_norm",
        "head",
    }
    assert sorted({layer for layer, _ in parsed if layer is not None}) == [0, 1]


def test_sample_index_size_determinism_and_memory():
    idx = L.sample_index("model.layers.0.mlp.up_proj.weight", 200_000, fraction=0.001, min_samples=50, seed=3)
    assert len(idx) == 200 and len(set(idx.tolist())) == 200 and torch.all(idx[1:] > idx[:-1])
    assert torch.equal(idx, L.sample_index("model.layers.0.mlp.up_proj.weight", 200_000, 0.001, 50, 3))
    assert not torch.equal(idx, L.sample_index("model.layers.1.mlp.up_proj.weight", 200_000, 0.001, 50, 3))
    assert not torch.equal(idx, L.sample_index("model.layers.0.mlp.up_proj.weight", 200_000, 0.001, 50, 4))
    assert len(L.sample_index("n.weight", 1000, 0.001, 50)) == 50  # min_samples wins
    assert len(L.sample_index("n.weight", 30, 0.001, 50)) == 30  # never more than the tensor
    assert len(L.sample_index("big.weight", 10**10, 1e-6, 50)) == 10_000  # O(k) memory, no 10^10 permutation
    assert L.tensor_seed(0, "model.norm.weight") == 301792021039251606  # pinned: stable across runs and machines


# ------------------------------------------------------------------------------------------------------- filters
def test_resolution_is_one_ulp_of_the_dtype():
    res = L.resolution([0.03, -0.01, 1.0, 0.0], torch.bfloat16)
    np.testing.assert_allclose(res[:3], [2.0**-13, 2.0**-14, 2.0**-7])
    assert 0 < res[3] < 1e-38
    for x in (0.03, 0.5, 3.0):  # the spacing torch itself uses
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            v = torch.tensor(x, dtype=dtype)
            ulp = float(torch.nextafter(v, torch.tensor(np.inf, dtype=dtype)) - v)
            assert L.resolution([x], dtype)[0] == pytest.approx(ulp)


def test_entry_filters_drop_exactly_frozen_and_three_valued_entries():
    t = np.arange(16)
    ulp = L.resolution([0.02], torch.bfloat16)[0]
    y = np.full((16, 5), 0.02)  # 0: frozen
    y[:, 1] = 0.02 + ulp * (t % 2)  # 1: flickers by one ulp (2 values) -> too little range
    y[:, 2] = 0.02 + 5 * ulp * (t % 3)  # 2: moves far, 3 distinct values
    y[:, 3] = 0.02 + ulp * t  # 3: moves, 16 values
    y[:, 4] = 0.02 + 2 * ulp * (t % 4)  # 4: range exactly 6 ulps, 4 values
    y = torch.tensor(y, dtype=torch.bfloat16).double().numpy()  # values as stored
    moved, varied = L.entry_filters(y, torch.bfloat16)
    assert moved.tolist() == [False, False, True, True, True]
    assert varied.tolist() == [False, False, False, True, True]
    assert L.n_distinct(y).tolist() == [1, 2, 3, 16, 4]
    # absolute thresholds (range > min_range); ranges are 0, 1, 10, 15 and 6 ulps (ulp = 2^-13 ≈ 1.2e-4)
    assert L.entry_filters(y, torch.bfloat16, min_range=1e-3)[0].tolist() == [False, False, True, True, False]
    assert L.entry_filters(y, torch.bfloat16, min_range=1e-4)[0].tolist() == [False, True, True, True, True]
    assert L.entry_filters(y, torch.bfloat16, min_range="1e-3")[0].tolist() == [False, False, True, True, False]
    with pytest.raises(ValueError, match="min_range"):  # YAML leaves `1e-3` a string; other strings are errors
        L.entry_filters(y, torch.bfloat16, min_range="big")


def test_weight_r2_filters_count_exactly_on_a_trajectory(tmp_path):
    config = S.qwen2_config(0, **TINY)

    def values(name, shape, step):  # entry i: frozen if i % 4 == 0, three values if i % 4 == 1, else linear
        n = int(np.prod(shape))
        i = torch.arange(n)
        base = 0.05 + 0.01 * torch.sin(i.double())
        v = base + 1e-3 * step * (i % 4 >= 2)
        v = v + 1e-2 * ((step // 10) % 3) * (i % 4 == 1)
        return v.reshape(shape)

    traj = Trajectory(S.write_trajectory(tmp_path / "run", config, STEPS, values, torch.float32))
    wl = L.weight_r2(traj, fraction=1.0, progress=False)
    numel = wl.tensors["numel"]
    assert (wl.tensors["sampled"] == numel).all()
    np.testing.assert_array_equal(wl.tensors["dropped_range"], (numel + 3) // 4)
    np.testing.assert_array_equal(wl.tensors["dropped_distinct"], (numel + 2) // 4)
    assert (wl.entries["index"] % 4 >= 2).all()
    np.testing.assert_allclose(wl.entries["r2"], 1.0, atol=1e-9)
    s = wl.summary(0.7)
    assert s["dropped"] == s["dropped_range"] + s["dropped_distinct"] == s["sampled"] - s["kept"]


# -------------------------------------------------------------------------------------------- weight R² end to end
def test_perfectly_linear_trajectory_gives_r2_one(linear):
    wl = L.weight_r2(linear, fraction=0.05, progress=False)
    assert wl.summary(0.7)["kept"] > 1000
    assert wl.entries["r2"].min() > 1 - 1e-12
    weights = [n for n in linear.names if n.endswith(".weight")]
    assert list(wl.tensors["tensor"]) == weights  # biases are not analysed
    # slope = drift·u / t_max: std over entries ≈ drift / t_max
    assert wl.entries["slope"].std() == pytest.approx(1e-2 / STEPS[-1], rel=0.1)


def test_same_seed_same_results_other_seed_other_entries(linear):
    a = L.weight_r2(linear, fraction=0.01, seed=7, progress=False)
    b = L.weight_r2(linear, fraction=0.01, seed=7, progress=False)
    c = L.weight_r2(linear, fraction=0.01, seed=8, progress=False)
    pd.testing.assert_frame_equal(pd.DataFrame(a.entries), pd.DataFrame(b.entries))
    pd.testing.assert_frame_equal(pd.DataFrame(a.tensors), pd.DataFrame(b.tensors))
    assert not np.array_equal(a.entries["index"], c.entries["index"])


@pytest.mark.parametrize(
    "drift, noise, walk, low, high",
    [
        (0.0, 0.0, 1e-3, 0.3, 0.6),  # pure random walk: spurious trends, but a low median
        (0.0, 1e-3, 0.0, 0.0, 0.12),  # pure noise: R² ≈ 1/(T-1)
        (1e-2, 2e-3, 0.0, 0.45, 0.75),  # drift + noise
    ],
)
def test_measured_r2_matches_the_known_answer(tmp_path, drift, noise, walk, low, high):
    wl = L.weight_r2(tiny_run(tmp_path / "run", drift=drift, noise=noise, walk=walk), fraction=0.1, progress=False)
    s = wl.summary(0.7)
    ref = S.reference_r2(STEPS, drift, noise, walk, n=100_000)
    assert s["kept"] > 3000 and s["dropped"] == 0
    assert low < s["median"] < high
    assert s["median"] == pytest.approx(np.median(ref), abs=0.03)
    assert s["frac_above"] == pytest.approx(np.mean(ref > 0.7), abs=0.03)


def test_examples_are_kept_entries_with_their_lines(linear):
    wl = L.weight_r2(linear, fraction=0.05, progress=False)
    ex = L.examples(linear, wl, n=4, seed=1)
    assert len(ex) == 4 and all(e["r2"] > 1 - 1e-9 and len(e["values"]) == len(STEPS) for e in ex)


def test_too_few_checkpoints_is_an_error(tmp_path):
    traj = tiny_run(tmp_path / "run", steps=[0, 10])
    with pytest.raises(ValueError, match="at least 3 checkpoints"):
        L.weight_r2(traj, progress=False)


def test_nan_in_the_last_fp8_checkpoint_names_that_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    traj = tiny_run(tmp_path / "run", steps=[0, 10, 20, 30], dtype=torch.float8_e4m3fn, drift=1e-1)
    name = "model.layers.0.mlp.up_proj.weight"
    last = traj.path(30) / "model.safetensors"
    weights = load_file(last)
    t = weights[name].float()
    t.view(-1)[7] = float("nan")
    weights[name] = t.to(torch.float8_e4m3fn)
    save_file(weights, last, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{last} \(step 30\): tensor '{name}' has 1 non-finite value"):
        L.weight_r2(Trajectory(traj.path(0).parent), names=[name], fraction=1.0)
