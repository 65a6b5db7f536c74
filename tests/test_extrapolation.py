import json
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from helpers import extrapolation as ex
from helpers.trajectory import Trajectory

TINY = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, num_hidden_layers=2, intermediate_size=96,
            vocab_size=40)
NORM = "model.layers.0.input_layernorm.weight"
BIAS = "model.layers.1.self_attn.q_proj.bias"
EMBED = "model.embed_tokens.weight"



pytestmark = pytest.mark.usefixtures("one_thread")

def checkpoint(path, step, tied=False, dtype=torch.float32, trainer_state=True):
    """A tiny Qwen2 moved by `step` × a fixed random direction (norms included), saved in `dtype`."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(tie_word_embeddings=tied, **TINY))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * step * torch.randn(p.shape, generator=g))
    model.to(dtype).save_pretrained(path)
    if trainer_state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def state(path):
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module", params=[torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    for step in (0, 10, 20):
        checkpoint(root / f"checkpoint-{step}", step, dtype=request.param)
    return root


def test_coefficient_and_norm_names():
    assert ex.coefficient(0, 300, 900) == 3.0 and ex.coefficient(200, 1400, 2000) == 0.5 + 1.0
    with pytest.raises(ValueError, match="two different steps"):
        ex.coefficient(5, 5, 9)
    norms = ["model.layers.3.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight",
             "model.norm.weight", "model.layers.2.self_attn.q_norm.weight", "transformer.ln_f.bias", "h.0.ln_1.weight"]
    others = [EMBED, "lm_head.weight", BIAS, "model.layers.0.mlp.down_proj.weight", "model.layers.0.self_attn.o_proj.weight"]
    assert all(map(ex.is_norm, norms)) and not any(map(ex.is_norm, others))


@pytest.mark.parametrize("beta_step, norms, endpoint", [(10, "extrapolate", 10), (20, "extrapolate", 20),
                                                         (20, "copy-from-t1", 20)])
def test_endpoints_bit_for_bit(run, tmp_path, beta_step, norms, endpoint):
    traj = Trajectory(run)
    out = ex.extrapolate(traj, 10, 20, beta_step, tmp_path / "out", norms)
    got, want = state(out), state(run / f"checkpoint-{endpoint}")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def test_extrapolated_values_load_and_record(run, tmp_path):
    traj = Trajectory(run)
    out = ex.extrapolate(traj, 10, 20, 40, tmp_path / "out", "copy-from-t1")  # beta = 3
    model = AutoModelForCausalLM.from_pretrained(out)
    w0, w1, got = state(run / "checkpoint-10"), state(run / "checkpoint-20"), model.state_dict()
    dtype = w1[EMBED].dtype
    for name in (EMBED, BIAS, "lm_head.weight", "model.layers.1.mlp.up_proj.weight"):
        want = (w0[name].float() + 3.0 * (w1[name].float() - w0[name].float())).to(dtype)
        assert torch.allclose(got[name].to(dtype).float(), want.float(), atol=1e-6, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5), name
        assert not torch.equal(got[name], w1[name].to(got[name].dtype)), name  # really moved past t1
    assert torch.equal(got[NORM].to(dtype), w1[NORM])  # norms copied from t1 exactly
    assert torch.equal(got["model.norm.weight"].to(dtype), w1["model.norm.weight"])
    assert state(out)[EMBED].dtype == dtype  # saved in the source dtype
    record = json.loads((out / "extrapolation.json").read_text())
    assert record["beta"] == 3.0 and (record["t0"], record["t1"], record["target_step"]) == (10, 20, 40)
    assert NORM in record["copied_from_t1"] and EMBED not in record["copied_from_t1"]
    assert (out / "config.json").exists()


def test_tied_embeddings_round_trip(tmp_path):
    a = checkpoint(tmp_path / "checkpoint-0", 0, tied=True)
    b = checkpoint(tmp_path / "checkpoint-4", 4, tied=True)
    out = ex.extrapolate(Trajectory([a, b]), 0, 4, 10, tmp_path / "out", "extrapolate")
    assert "lm_head.weight" not in state(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings
    emb = (state(a)[EMBED] + 2.5 * (state(b)[EMBED] - state(a)[EMBED]))
    assert torch.allclose(model.get_input_embeddings().weight, emb, atol=1e-6)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_cli_end_to_end(tmp_path):
    base = checkpoint(tmp_path / "sft", 0, trainer_state=False)  # no step in name or state: pass --from-step
    later = checkpoint(tmp_path / "run" / "checkpoint-20", 20)
    out = tmp_path / "e0-20-50"
    assert ex.main(["--from", str(base), "--to", str(later), "--target-step", "50", "--out", str(out),
                    "--from-step", "0", "--norms", "extrapolate"]) == out
    record = json.loads((out / "extrapolation.json").read_text())
    assert (record["t0"], record["t1"], record["beta"], record["norms"]) == (0, 20, 2.5, "extrapolate")
    got, w0, w1 = state(out), state(base), state(later)
    assert torch.allclose(got[NORM], w0[NORM] + 2.5 * (w1[NORM] - w0[NORM]), atol=1e-6)
    AutoModelForCausalLM.from_pretrained(out)
    with pytest.raises(SystemExit):  # refuses to replace an existing directory without --overwrite
        ex.main(["--from", str(base), "--to", str(later), "--target-step", "60", "--out", str(out), "--from-step", "0"])
    assert json.loads((out / "extrapolation.json").read_text())["target_step"] == 50
    with pytest.raises(Exception, match="cannot tell the step"):
        ex.main(["--from", str(base), "--to", str(later), "--target-step", "50", "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


class Steps:
    steps = [0, 10, 20, 30, 40]


def test_snapping_to_saved_steps():
    assert ex.snap(Steps, 0.26) == 10 and ex.snap(Steps, 0.0) == 0 and ex.snap(Steps, 0.125) == 0
    assert ex.snap_pair(Steps, [0.2, 0.6]) == (10, 20)
    assert ex.snap_pair(Steps, [0.5, 0.5]) == (20, 30) and ex.snap_pair(Steps, [1.0, 1.0]) == (30, 40)
    assert ex.target_steps(Steps, [0.4, 1.0, 1.5, 2.0, 0.1], after=10) == [20, 40, 60, 80]


def test_claims_find_the_inverted_u_and_the_best_alpha():
    import pandas as pd

    real = pd.DataFrame({"step": [0, 10, 20, 30, 40], "avg_at_k": [0.1, 0.2, 0.3, 0.35, 0.36],
                         "entropy": [1.0, 0.9, 0.7, 0.5, 0.3]})
    curve = pd.DataFrame({"t0": [0] * 4 + [0] * 3, "t1": [10] * 4 + [20] * 3,
                          "target_step": [20, 40, 60, 80, 40, 60, 80], "beta": [2, 4, 6, 8, 2, 3, 4],
                          "avg_at_k": [0.3, 0.5, 0.4, 0.1, 0.3, 0.31, 0.32],  # an inverted U; a flat line
                          "real_avg_at_k": [0.3, 0.36, None, None, 0.36, None, None]})
    logit = pd.DataFrame({"alpha": [1.0, 1.5, 2.0], "target_step": [20, 25, 30], "avg_at_k": [0.3, 0.45, 0.4],
                          "entropy": [0.7, 0.8, 0.9], "real_avg_at_k": [0.3, None, 0.35]})
    scorer = ex.Scorer.__new__(ex.Scorer)
    scorer.items, scorer.k = [None] * 100, 8  # margin ≈ 0.048 near 0.36
    rows, verdicts, s = ex.claims(real, curve, logit, scorer)
    assert [p["inverted_u"] for p in s["weight_extrapolation_peaks"]] == [True, False]
    assert s["weight_extrapolation_peak_step"] == 40 and s["weight_extrapolation_peak_avg_at_k"] == 0.5
    assert s["logit_extrapolation_best_alpha"] == 1.5 and s["logit_extrapolation_best_avg_at_k"] == 0.45
    assert s["rl_final_avg_at_k"] == 0.36 and 0.047 < s["noise_margin"] < 0.049
    assert "higher than the last RL checkpoint" in verdicts[0] and "agrees with the paper" in verdicts[0]
    assert any("1 of 2 (t0, t1) pairs" in v for v in verdicts)
    assert len(rows) == len(verdicts) and all(len(r) == 3 for r in rows)
