"""helpers.lib.synthetic: Qwen2-shaped synthetic trajectories in TRL layout, with a known answer."""

import json

import numpy as np
import pytest
import torch

from helpers.lib import linearity as L
from helpers.lib import synthetic as S
from helpers.lib.trajectory import Trajectory

STEPS = [0, 10, 20, 30, 40]
TINY = dict(hidden_size=32, vocab_size=64, num_hidden_layers=2)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "run"
    return S.write_synthetic_trajectory(
        out, n_params=0, steps=STEPS, dtype=torch.bfloat16, drift=1e-2, noise=1e-3, seed=3, **TINY
    )


def test_trl_layout_read_by_trajectory(run):
    assert sorted(p.name for p in run.iterdir()) == [f"checkpoint-{s}" for s in sorted(STEPS, key=str)]
    for s in STEPS:
        assert {p.name for p in (run / f"checkpoint-{s}").iterdir()} == {"config.json", "model.safetensors"}
    traj = Trajectory(run)
    assert traj.steps == STEPS and not traj.tied_embeddings
    assert set(traj.names) == set(S.qwen2_shapes(S.qwen2_config(0, **TINY)))
    assert all(traj.dtype(n) == torch.bfloat16 for n in traj.names)
    assert json.loads((run / "checkpoint-0" / "config.json").read_text())["num_hidden_layers"] == 2


def test_values_follow_the_model(run):
    traj = Trajectory(run)
    emb = "model.embed_tokens.weight"
    base = traj.tensor(emb, 0, torch.float64)
    assert base.std().item() == pytest.approx(S.INIT_STD, rel=0.1)
    assert torch.equal(traj.tensor("model.norm.weight", 0), torch.ones(32, dtype=torch.bfloat16))
    assert torch.equal(traj.tensor("model.layers.0.self_attn.q_proj.bias", 0), torch.zeros(32, dtype=torch.bfloat16))
    moved = (traj.tensor(emb, 40, torch.float64) - base).std().item()  # ≈ sqrt(drift² + noise²)
    assert moved == pytest.approx(np.hypot(1e-2, 1e-3), rel=0.15)


def test_same_seed_same_bytes_other_seed_differs(run, tmp_path):
    again = S.write_synthetic_trajectory(
        tmp_path / "again", n_params=0, steps=STEPS, dtype=torch.bfloat16, drift=1e-2, noise=1e-3, seed=3, **TINY
    )
    other = S.write_synthetic_trajectory(
        tmp_path / "other", n_params=0, steps=STEPS, dtype=torch.bfloat16, drift=1e-2, noise=1e-3, seed=4, **TINY
    )
    f = "checkpoint-30/model.safetensors"
    assert (run / f).read_bytes() == (again / f).read_bytes()
    assert (run / f).read_bytes() != (other / f).read_bytes()


def test_noise_free_float64_run_is_exactly_linear(tmp_path):
    out = S.write_synthetic_trajectory(
        tmp_path / "run", n_params=0, steps=[0, 5, 10, 30], dtype=torch.float64, drift=1e-2, noise=0.0, **TINY
    )
    with pytest.warns(UserWarning, match="uneven step spacing"):
        traj = Trajectory(out)
    y = traj.series("model.layers.1.mlp.up_proj.weight").numpy()
    t = np.array(traj.steps, dtype=float)
    slope, intercept = L.fit_line(y, t)
    np.testing.assert_allclose(y, intercept + np.outer(t, slope), atol=1e-15)


def test_param_count_and_shapes_match_transformers():
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config = S.qwen2_config(5e6, hidden_size=128, vocab_size=1000)
    shapes = S.qwen2_shapes(config)
    assert sum(int(np.prod(s)) for s in shapes.values()) == pytest.approx(5e6, rel=0.1)
    hf_config = Qwen2Config(**{k: v for k, v in config.items() if k not in ("architectures", "model_type")})
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    with torch.device("meta"):
        llama = AutoModelForCausalLM.from_config(
            LlamaConfig(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=1,
                tie_word_embeddings=False,
            )
        )
    modules = {L.parse_name(n)[1] for n in llama.state_dict()}  # Llama names parse like Qwen2's
    assert modules == {
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


def test_loads_as_a_transformers_model(run):
    model = Trajectory(run).load_model(20)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    out = model(torch.tensor([[1, 2, 3]])).logits
    assert out.shape == (1, 3, 64) and torch.isfinite(out).all()


def test_tied_embeddings_write_no_head(tmp_path):
    traj = Trajectory(
        S.write_synthetic_trajectory(tmp_path / "run", n_params=0, steps=[0, 1, 2], tie_word_embeddings=True, **TINY)
    )
    assert traj.tied_embeddings and "lm_head.weight" not in traj.names


def test_reference_r2_limits():
    steps = list(range(0, 151, 10))
    assert np.all(S.reference_r2(steps, 1e-2, 0.0, n=100) > 1 - 1e-12)
    assert np.median(S.reference_r2(steps, 0.0, 1.0, n=20_000)) < 0.06  # pure noise: ≈ Beta(1/2, 7) median
    with pytest.raises(ValueError, match="include 0"):
        S.write_synthetic_trajectory("/nonexistent", steps=[10, 20])


def test_cli(tmp_path, capsys):
    S.main(
        [
            str(tmp_path / "cli"),
            "--n-params",
            "0",
            "--steps",
            "0:20:10",
            "--dtype",
            "fp32",
            "--hidden-size",
            "32",
            "--vocab-size",
            "64",
        ]
    )
    traj = Trajectory(tmp_path / "cli")
    assert traj.steps == [0, 10, 20] and traj.dtype("model.norm.weight") == torch.float32
    assert "3 checkpoints" in capsys.readouterr().out
