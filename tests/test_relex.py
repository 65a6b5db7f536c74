import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers.lib import relex, tiny
from helpers.lib.trajectory import Trajectory

MODEL = {
    "arch": "llama",
    "hidden_size": 64,
    "heads": 2,
    "kv_heads": 1,
    "layers": 1,
    "intermediate_size": 96,
    "max_positions": 64,
    "tie_embeddings": True,
}
FROZEN = "model.norm.weight"


@pytest.fixture(autouse=True)
def _outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "outputs"))


def make_trajectory(root, steps, tied=True, noise=1e-4, scale=1e-3, seed=0, curve=lambda s: s):
    """Checkpoints θ_s = θ_0 + curve(s)·d + noise per tensor (d fixed per tensor; curve(s) = s: a straight drift),
    FROZEN never moves. Returns (traj, d)."""
    base = tiny.init_model({**MODEL, "tie_embeddings": tied}, seed, root / "checkpoint-0")
    theta0 = load_file(base / "model.safetensors")
    gen = torch.Generator().manual_seed(seed + 1)
    d = {n: scale * torch.randn(t.shape, generator=gen) for n, t in theta0.items() if n != FROZEN}
    for s in steps[1:]:
        out = root / f"checkpoint-{s}"
        out.mkdir()
        state = {
            n: t if n == FROZEN else t + curve(s) * d[n] + noise * torch.randn(t.shape, generator=gen)
            for n, t in theta0.items()
        }
        save_file(state, out / "model.safetensors")
        for f in base.glob("*.json"):  # config, generation config, tokenizer
            shutil.copy(f, out / f.name)
    return Trajectory(root), d


def cos(a, b):
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float(a @ b / (a.norm() * b.norm()))


def assert_rank3_svd_of(m: np.ndarray, f, v) -> None:
    """`relex.tensor_svd`'s rank-3 factors `f` and directions `v` are numpy's SVD of the delta matrix `m`."""
    _, s_ref, vt_ref = np.linalg.svd(m, full_matrices=False)
    np.testing.assert_allclose(f.s, s_ref[:3], rtol=1e-9)
    np.testing.assert_allclose(f.eigenvalues, s_ref**2, rtol=1e-9, atol=1e-12 * s_ref[0] ** 2)
    for r in range(3):
        assert abs(cos(v[r], torch.from_numpy(vt_ref[r]))) > 1 - 1e-6
    np.testing.assert_allclose(f.coefficients, m @ v.reshape(3, -1).double().numpy().T, rtol=1e-5, atol=1e-9)


def test_recovers_direction_and_predicts_future(tmp_path):
    traj, d = make_trajectory(tmp_path / "run", list(range(0, 17)))
    dec = relex.decompose(traj, t_cut=8, rank=1)
    assert dec.steps == list(range(1, 9))
    for name, direction in d.items():
        assert abs(cos(dec.v(name)[0], direction)) > 0.99, name
        assert dec.factors[name].explained_variance > 0.99
    out = relex.extrapolate(dec, 16, tmp_path / "at16")
    pred = load_file(out / "model.safetensors")
    for name in d:
        true_delta = traj.tensor(name, 16) - traj.tensor(name, 0)
        err = (pred[name] - traj.tensor(name, 16)).norm() / true_delta.norm()
        assert err < 0.05, (name, float(err))


def test_chunked_gram_matches_in_memory_svd(tmp_path):
    traj, _ = make_trajectory(tmp_path / "run", list(range(0, 7)), noise=1e-3)
    name = "model.layers.0.mlp.up_proj.weight"
    steps = relex.observed_steps(traj)
    budget = 8 * traj.shape(name)[1] * 8 * (len(steps) + 1)  # 8 rows of M (+ the base) per chunk
    assert len(relex._row_chunks(traj.shape(name), len(steps) + 1, budget)) == 12
    f, v = relex.tensor_svd(traj, name, steps, rank=3, chunk_bytes=budget)
    m = np.stack([(traj.tensor(name, s) - traj.tensor(name, 0)).double().reshape(-1).numpy() for s in steps])
    assert_rank3_svd_of(m, f, v)
    whole, v_whole = relex.tensor_svd(traj, name, steps, rank=3)  # one chunk: the same numbers
    np.testing.assert_allclose(whole.s, f.s, rtol=1e-12)
    torch.testing.assert_close(v_whole, v)


def bf16_trajectory(root, steps, noise=1e-3):
    """make_trajectory's run with every checkpoint stored in bf16."""
    make_trajectory(root, steps, noise=noise)
    for f in root.glob("checkpoint-*/model.safetensors"):
        save_file({n: t.to(torch.bfloat16) for n, t in load_file(f).items()}, f)
    return Trajectory(root)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_read_once_matches_two_passes(tmp_path, monkeypatch, dtype):
    """A tensor whose delta matrix fits the budget is read once, in several chunks kept for the projection; the
    two-pass fallback (same chunks, read again) gives the same factors: bit for bit on float32 checkpoints."""
    steps = list(range(0, 7))
    traj = (
        make_trajectory(tmp_path / "run", steps, noise=1e-3)[0]
        if dtype == torch.float32
        else bf16_trajectory(tmp_path / "run", steps)
    )
    name = "model.layers.0.mlp.up_proj.weight"
    steps = relex.observed_steps(traj)
    itemsize = relex.delta_dtype(traj.dtype(name)).itemsize
    assert itemsize == (8 if dtype == torch.float32 else 4)
    budget = len(steps) * traj.numel(name) * itemsize  # exactly the whole delta matrix
    n_chunks = len(relex._row_chunks(traj.shape(name), len(steps) + 1, budget, itemsize))
    assert n_chunks > 1
    reads = []
    flat = traj.flat
    monkeypatch.setattr(traj, "flat", lambda *a: reads.append(a) or flat(*a))
    once, v_once = relex.tensor_svd(traj, name, steps, rank=3, chunk_bytes=budget)
    assert len(reads) == n_chunks * (len(steps) + 1)
    monkeypatch.setattr(relex, "_read_once", lambda *a: False)
    twice, v_twice = relex.tensor_svd(traj, name, steps, rank=3, chunk_bytes=budget)
    assert len(reads) == 3 * n_chunks * (len(steps) + 1)
    if dtype == torch.float32:
        for a, b in [(once.s, twice.s), (once.u, twice.u), (once.eigenvalues, twice.eigenvalues)]:
            np.testing.assert_array_equal(a, b)
        assert torch.equal(v_once, v_twice)
    else:
        np.testing.assert_allclose(once.s, twice.s, rtol=1e-6)
        np.testing.assert_allclose(once.eigenvalues, twice.eigenvalues, rtol=1e-6, atol=1e-6 * twice.eigenvalues[0])
        torch.testing.assert_close(v_once, v_twice, rtol=1e-6, atol=1e-6 * float(v_twice.abs().max()))


def test_bf16_matches_float64_reference(tmp_path):
    """bf16 checkpoints: deltas held in float32 (the differences are exact there, or within float32's rounding), the
    Gram in float64 — the same SVD as in float64 throughout."""
    traj = bf16_trajectory(tmp_path / "run", list(range(0, 7)))
    name = "model.layers.0.mlp.up_proj.weight"
    steps = relex.observed_steps(traj)
    m = np.stack([(traj.tensor(name, s).double() - traj.tensor(name, 0).double()).reshape(-1).numpy() for s in steps])
    m32 = relex._delta_chunk(traj, name, steps, 0, traj.shape(name)[0], relex.delta_dtype(traj.dtype(name)))
    assert m32.dtype == torch.float32
    np.testing.assert_allclose(m32.double().numpy(), m, rtol=2.0**-24, atol=0)
    f, v = relex.tensor_svd(traj, name, steps, rank=3, chunk_bytes=8 * traj.shape(name)[1] * 4 * (len(steps) + 1))
    assert_rank3_svd_of(m, f, v)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_products_match_cpu(tmp_path):
    traj = bf16_trajectory(tmp_path / "run", list(range(0, 7)))
    steps = relex.observed_steps(traj)
    for name in ["model.layers.0.mlp.up_proj.weight", "model.embed_tokens.weight"]:
        cpu, v_cpu = relex.tensor_svd(traj, name, steps, rank=2, device="cpu")
        gpu, v_gpu = relex.tensor_svd(traj, name, steps, rank=2, device="cuda")
        np.testing.assert_allclose(gpu.s, cpu.s, rtol=1e-9)
        torch.testing.assert_close(v_gpu, v_cpu, rtol=1e-5, atol=1e-6)


def test_frozen_tensor_stays_at_base(tmp_path):
    traj, _ = make_trajectory(tmp_path / "run", [0, 1, 2, 3, 4])
    dec = relex.decompose(traj, rank=2)
    assert dec.factors[FROZEN].rank == 0 and FROZEN not in dec.explained_variance()
    out = relex.extrapolate(dec, 40, tmp_path / "x")
    assert torch.equal(load_file(out / "model.safetensors")[FROZEN], traj.tensor(FROZEN, 0))


def test_step_axis_uses_real_steps(tmp_path):
    traj, d = make_trajectory(tmp_path / "run", [0, 2, 4, 6, 8, 10, 12], noise=0.0)
    dec = relex.decompose(traj, t_cut=8)
    assert dec.steps == [2, 4, 6, 8] and relex.prefix_step(traj, 0.5) == 6
    pred = load_file(relex.extrapolate(dec, 12, tmp_path / "x") / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(pred[name], traj.tensor(name, 12), rtol=0, atol=1e-6)
    rec = load_file(relex.reconstruct(dec, 4, tmp_path / "r") / "model.safetensors")
    torch.testing.assert_close(rec[name], traj.tensor(name, 4), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="step 5 is not one of"):
        relex.reconstruct(dec, 5, tmp_path / "r5")


@pytest.mark.parametrize("tied", [True, False])
def test_written_checkpoint_loads(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    traj, _ = make_trajectory(tmp_path / "run", [0, 1, 2, 3], tied=tied)
    assert ("lm_head.weight" in traj.names) == (not tied)
    out = relex.extrapolate(relex.decompose(traj), 10)  # cached location
    assert relex.extrapolate(relex.decompose(traj), 10) == out
    model = AutoModelForCausalLM.from_pretrained(out)
    written = load_file(out / "model.safetensors")
    assert ("lm_head.weight" in written) == (not tied)
    head, embed = model.lm_head.weight, model.model.embed_tokens.weight
    assert torch.equal(head, embed) == tied
    torch.testing.assert_close(embed, written["model.embed_tokens.weight"])
    assert model(torch.tensor([[3, 4, 5]])).logits.isfinite().all()


def test_decomposition_is_cached(tmp_path, monkeypatch):
    traj, _ = make_trajectory(tmp_path / "run", [0, 1, 2, 3])
    first = relex.decompose(traj, t_cut=2)
    monkeypatch.setattr(relex, "tensor_svd", lambda *a, **k: pytest.fail("recomputed"))
    again = relex.decompose(traj, t_cut=2)
    assert again.dir == first.dir and again.steps == [1, 2]
    assert again.explained_variance() == first.explained_variance()


def test_project_beyond_prefix(tmp_path):
    traj, d = make_trajectory(tmp_path / "run", list(range(0, 9)), noise=0.0)
    dec = relex.decompose(traj, t_cut=4)
    name = "model.layers.0.mlp.down_proj.weight"
    c, gram = relex.project(dec, name, [6, 8], chunk_bytes=4096)  # 2 rows per chunk
    norm = np.sqrt(np.diag(gram))
    np.testing.assert_allclose(np.abs(c[:, 0]), norm, rtol=1e-5)  # pure drift: δ_t lies on v
    np.testing.assert_allclose(gram[0, 1], norm[0] * norm[1], rtol=1e-5)
    np.testing.assert_allclose(norm, [6 * d[name].double().norm(), 8 * d[name].double().norm()], rtol=1e-5)


def test_fits():
    t = np.arange(10, 110, 10, dtype=float)
    np.testing.assert_allclose(relex.fit(t, 3 * t + 1)(500), 1501)
    np.testing.assert_allclose(relex.fit(t, 0.01 * t**2 - t, "polynomial", degree=2)(200), 200.0)
    y = 0.5 * np.sin(0.08 * t + 0.3) + 0.02 * t + 1
    future = np.array([130.0, 160.0])
    np.testing.assert_allclose(
        relex.fit(t, y, "sinusoid")(future), 0.5 * np.sin(0.08 * future + 0.3) + 0.02 * future + 1, atol=1e-3
    )
    kink = np.where(t <= 50, t, 50 + 3 * (t - 50))  # slope 1 then 3: a window of the last 4 points sees only slope 3
    np.testing.assert_allclose(relex.fit(t, kink, window=4)(200), 50 + 3 * 150)
    with pytest.raises(ValueError, match="sinusoid fit needs at least 5 points"):
        relex.fit(t[:4], y[:4], "sinusoid")
    with pytest.raises(ValueError, match="unknown fit"):
        relex.fit(t, y, "spline")


def test_extrapolate_replaces_only_its_own_output_and_only_when_asked(tmp_path):
    """Issue 18 item 1: `extrapolate(out_dir=)` refuses an existing directory, unless it is an earlier extrapolation
    and overwrite=True (it replaced any directory silently)."""
    traj, _ = make_trajectory(tmp_path / "run", [0, 1, 2, 3])
    dec = relex.decompose(traj)
    with pytest.raises(
        FileExistsError,
        match=r"checkpoint-3: exists and is not a checkpoint written by this tool "
        r"\(no extrapolation.json\); not replaced",
    ):
        relex.extrapolate(dec, 10, tmp_path / "run" / "checkpoint-3", overwrite=True)
    assert Trajectory(tmp_path / "run").steps == [0, 1, 2, 3]
    out = relex.extrapolate(dec, 10, tmp_path / "x")
    with pytest.raises(FileExistsError, match="x: exists .*pass overwrite=True"):
        relex.extrapolate(dec, 20, out)
    relex.extrapolate(dec, 20, out, overwrite=True)
    assert (out / "extrapolation.json").read_text().count('"target_step": 20') == 1


STEPS = np.arange(12, 132, 12, dtype=float)  # a prefix of 10 checkpoints, every 12 steps


def decelerating(t):
    """A fast start then a creep: 2·(1 − e^(−t/30)) + 0.004·t."""
    return 2.0 * (1 - np.exp(-np.asarray(t, dtype=float) / 30.0)) + 0.004 * np.asarray(t, dtype=float)


def test_bending_fits_recover_known_parameters():
    power = relex.fit(STEPS, 0.8 * STEPS**0.4 + 0.3, "power")
    assert power.kind == "power" and power.fallback == ""
    np.testing.assert_allclose(power.params, (0.8, 0.4, 0.3), rtol=1e-6)
    saturating = relex.fit(STEPS, 1.5 * (1 - np.exp(-STEPS / 25.0)) - 0.002 * STEPS + 0.1, "saturating")
    np.testing.assert_allclose(saturating.params, (1.5, 25.0, -0.002, 0.1), rtol=1e-6)
    np.testing.assert_allclose(saturating(600.0), 1.5 * (1 - np.exp(-24.0)) - 1.2 + 0.1, rtol=1e-6)
    again = relex.fit(STEPS, 1.5 * (1 - np.exp(-STEPS / 25.0)) - 0.002 * STEPS + 0.1, "saturating")
    assert again.params == saturating.params  # deterministic


def test_bending_fits_predict_a_decelerating_curve_far_ahead():
    prefix, far = STEPS[:5], 240.0  # steps 12..60, then 4x the prefix
    truth = decelerating(far)
    line = abs(relex.fit(prefix, decelerating(prefix))(far) - truth)
    for kind in relex.BENDING:
        bent = abs(relex.fit(prefix, decelerating(prefix), kind)(far) - truth)
        assert bent < line / 5, (kind, bent, line)


def test_bending_fit_falls_back_to_the_line(monkeypatch):
    y = decelerating(STEPS[:3])
    short = relex.fit(STEPS[:3], y, "power")
    assert short.fallback == "3 points: a power fit needs at least 4 (parameters + 1)" and short.params == ()
    np.testing.assert_allclose(short([100.0, 200.0]), relex.fit(STEPS[:3], y)([100.0, 200.0]))
    assert relex.fit(STEPS[:4], decelerating(STEPS[:4]), "saturating").fallback.startswith("4 points")

    def fail(*a, **k):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(relex, "curve_fit", fail)
    broken = relex.fit(STEPS, decelerating(STEPS), "saturating")
    assert broken.fallback == "the optimizer failed (Optimal parameters not found)"
    np.testing.assert_allclose(broken(300.0), relex.fit(STEPS, decelerating(STEPS))(300.0))
    with pytest.raises(ValueError, match="linear fit needs at least 2 points"):
        relex.fit(STEPS[:1], y[:1], "power")
    with pytest.raises(ValueError, match="unknown fit 'cubic'"):
        relex.fit(STEPS, y.repeat(4)[:10], "cubic")


def test_choose_fit_picks_a_bending_fit_on_decelerating_data():
    c = {"big": 3 * decelerating(STEPS), "small": 0.1 * np.sqrt(STEPS), "frozen": np.zeros_like(STEPS)}
    choice = relex.choose_fit(STEPS, c, ["linear", "power", "saturating"])
    assert choice.kind in relex.BENDING and (choice.n_train, choice.n_holdout) == (7, 3)
    assert choice.errors[choice.kind] < choice.errors["linear"] / 3
    assert choice == relex.choose_fit(STEPS, c, ["linear", "power", "saturating"])  # deterministic
    # the error: held-out squared errors pooled over tensors, relative to the pooled s² = Σ c² (frozen left out)
    sq = sum(np.sum((relex.fit(STEPS[:7], v[:7])(STEPS[7:]) - v[7:]) ** 2) for v in c.values() if np.any(v))
    np.testing.assert_allclose(choice.errors["linear"], np.sqrt(sq / (3 * sum(v @ v for v in c.values()))))


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_choose_fit_keeps_the_line_on_linear_data(noise):
    rng = np.random.default_rng(0)
    c = {n: k * STEPS + b + noise * rng.standard_normal(len(STEPS)) for n, k, b in (("a", 0.01, 0.2), ("b", -0.03, 0))}
    choice = relex.choose_fit(STEPS, c, ["power", "saturating"])  # linear is always a candidate, the first
    assert choice.kind == "linear" and list(choice.errors) == ["linear", "power", "saturating"]


def test_choose_fit_with_too_few_checkpoints():
    c = {"a": decelerating(STEPS)}
    two = relex.choose_fit(STEPS[:2], {"a": c["a"][:2]})
    assert two.kind == "linear" and two.reason.startswith("too few checkpoints for validation: 2 observed")
    assert all(np.isnan(e) for e in two.errors.values())
    three = relex.choose_fit(STEPS[:3], {"a": c["a"][:3]}, ["linear", "power", "saturating"])
    assert three.kind == "linear" and three.reason.startswith("the only candidate")
    assert np.isfinite(three.errors["linear"]) and np.isnan(three.errors["power"])
    assert three.notes["power"] == "needs 4 fitted checkpoints, has 2"
    five = relex.choose_fit(STEPS[:5], {"a": c["a"][:5]}, ["linear", "power", "saturating"])
    assert five.kind == "power" and five.notes["saturating"] == "needs 5 fitted checkpoints, has 4"
    with pytest.raises(ValueError, match="holdout"):
        relex.choose_fit(STEPS, c, holdout=1.0)


def test_extrapolate_with_a_bending_fit(tmp_path):
    traj, d = make_trajectory(tmp_path / "run", [0, 2, 4, 6, 8, 10], noise=0.0, curve=lambda s: np.sqrt(s))
    dec = relex.decompose(traj, t_cut=10)
    name = "model.layers.0.mlp.down_proj.weight"
    c = relex.predicted_coefficients(dec, name, 40, rank=1, kind="power")
    np.testing.assert_allclose(abs(c[0]), np.sqrt(40) * d[name].double().norm(), rtol=1e-3)
    out = relex.extrapolate(dec, 40, tmp_path / "at40", rank=1, kind="saturating")
    assert '"fit": "saturating"' in (out / "extrapolation.json").read_text()
