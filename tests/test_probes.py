import json

import numpy as np
import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from helpers.lib import probes as P

VOCAB = 40


def tiny_qwen(seed=0):
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg).eval()


def random_probes(n=5, seed=0):
    g = np.random.default_rng(seed)
    ids, plens = [], []
    for _ in range(n):
        p, r = int(g.integers(1, 6)), int(g.integers(1, 9))  # different prompt and response lengths
        ids.append(g.integers(0, VOCAB, p + r).tolist())
        plens.append(p)
    return P.Probes(ids, plens, list(range(n)), [""] * n, [""] * n)


def unbatched_logprobs(model, probes):
    out = []
    with torch.no_grad():
        for ids, p in zip(probes.input_ids, probes.prompt_lens):
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
            lsm = torch.log_softmax(logits, -1)
            out.append(lsm[torch.arange(p - 1, len(ids) - 1), torch.tensor(ids[p:])].numpy())
    return np.concatenate(out)


def test_batched_teacher_forcing_equals_unbatched_forward():
    model, probes = tiny_qwen(), random_probes(7)
    ref = unbatched_logprobs(model, probes)
    for bs in (1, 3, 7):
        got = P.teacher_force(model, probes, batch_size=bs, chunk=4)
        assert got.logprobs.shape == (probes.n_tokens,)
        np.testing.assert_allclose(got.logprobs, ref, atol=2e-5)
        assert (got.logprobs < 0).all()


def test_logits_and_log_softmax_rows_normalise():
    model, probes = tiny_qwen(1), random_probes(4, seed=3)
    batch, out = next(P.forward(model, probes, batch_size=4))
    lsm, raw = P.log_softmax_rows(model, out.last_hidden_state[batch.rows, batch.cols])
    assert lsm.dtype == torch.float32 and lsm.shape == (probes.n_tokens, VOCAB)
    torch.testing.assert_close(lsm.exp().sum(-1), torch.ones(len(lsm)), atol=1e-5, rtol=0)
    # the kept raw logit minus logsumexp is the kept log-prob
    forced = P.teacher_force(model, probes, batch_size=2)
    with torch.no_grad():
        full = model(input_ids=torch.tensor([probes.input_ids[0]])).logits[0]
    p = probes.prompt_lens[0]
    chosen = full[torch.arange(p - 1, len(probes.input_ids[0]) - 1), torch.tensor(probes.input_ids[0][p:])]
    np.testing.assert_allclose(forced.logits[: len(chosen)], chosen.numpy(), atol=2e-5)


def test_hidden_states_at_sampled_positions():
    model, probes = tiny_qwen(2), random_probes(6, seed=5)
    pos, dims = P.activation_index(probes, 32, positions=10, dims=5, seed=0)
    forced = P.teacher_force(model, probes, batch_size=4, hidden_index=(pos, dims))
    assert forced.hidden.shape == (3, len(pos), 5)  # embeddings + 2 layers
    tok = probes.tokens()
    for j, flat in enumerate(pos[:4]):
        i, position = int(tok["probe"][flat]), int(tok["position"][flat])
        with torch.no_grad():
            hs = model(input_ids=torch.tensor([probes.input_ids[i]]), output_hidden_states=True).hidden_states
        for layer in range(3):
            np.testing.assert_allclose(forced.hidden[layer, j], hs[layer][0, position - 1, dims].numpy(), atol=2e-5)


class StubTrajectory:
    """Duck-typed Trajectory: model at step s is the base plus s × a fixed direction."""

    def __init__(self, steps):
        self.steps = steps
        self.base = tiny_qwen(0)
        torch.manual_seed(1)
        self.direction = {k: 1e-3 * torch.randn_like(v) for k, v in self.base.state_dict().items()}

    def load_model(self, step, dtype=torch.float32, device=None):
        m = tiny_qwen(0)
        m.load_state_dict({k: v + step * self.direction[k] for k, v in self.base.state_dict().items()})
        return m.eval()


def test_over_trajectory_streams_every_step():
    traj, probes = StubTrajectory([0, 2, 4]), random_probes(5)
    out = P.over_trajectory(traj, probes, batch_size=2, activation_positions=6, activation_dims=4, seed=0)
    assert out.logprobs.shape == (3, probes.n_tokens) and out.hidden.shape == (3, 3, 6, 4)
    np.testing.assert_allclose(out.logprobs[0], unbatched_logprobs(traj.load_model(0), probes), atol=2e-5)
    np.testing.assert_allclose(out.logprobs[2], unbatched_logprobs(traj.load_model(4), probes), atol=2e-5)
    assert not np.allclose(out.logprobs[0], out.logprobs[2])


class CharTokenizer:
    eos_token_id = 1

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [2 + ord(c) % 30 for c in text]}


def test_from_samples_save_load_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "out"))
    probes = P.from_samples(CharTokenizer(), ["1+2=", "3-1="], [["3", ""], ["2", "123"]], max_new_tokens=3)
    assert len(probes) == 4 and probes.prompt_index == [0, 0, 1, 1]
    assert probes.input_ids[0] == [2 + ord(c) % 30 for c in "1+2="] + [2 + ord("3") % 30, 1]
    # an empty response is EOS alone; one that hit max_new_tokens gets no EOS
    assert probes.input_ids[1][-1] == 1 and probes.response_lens.tolist() == [2, 1, 2, 3]
    assert P.from_samples(CharTokenizer(), ["1="], [[""]]).input_ids == []

    calls = []

    def build():
        calls.append(1)
        return probes

    a, where = P.cached({"base": "x", "k": 2}, build, keep_in=tmp_path / "run" / "probes")
    b, _ = P.cached({"base": "x", "k": 2}, build, keep_in=tmp_path / "run" / "probes")
    assert len(calls) == 1 and b.input_ids == probes.input_ids and b.meta["key"] == {"base": "x", "k": 2}
    assert (tmp_path / "run" / "probes" / P.PROBES_FILE).is_file()
    assert a.fingerprint() == b.fingerprint()
    (where / P.PROBES_FILE).write_text(json.dumps({"input_ids": [1, 2]}) + "\n")
    with pytest.raises(P.ProbeError, match="probes.jsonl:1: missing prompt_len"):
        P.Probes.load(where)


def test_bad_probe_is_named():
    with pytest.raises(P.ProbeError, match="probe 0: prompt length 3"):
        P.Probes([[1, 2, 3]], [3], [0], ["a"], ["b"])


def test_forward_lets_callers_hook_layer_inputs():
    model, probes = tiny_qwen(3), random_probes(5, seed=2)
    seen = []
    layer = model.model.layers[1].mlp.down_proj
    handle = layer.register_forward_hook(lambda mod, args, out: seen.append(args[0]))
    try:
        captured = [seen[-1][b.rows, b.cols] for b, _ in P.forward(model, probes, batch_size=2)]
    finally:
        handle.remove()
    assert sum(len(c) for c in captured) == probes.n_tokens and captured[0].shape[1] == 64


def test_repeated_samples_share_a_sequence_id():
    probes = P.Probes([[1, 2], [1, 3], [1, 2]], [1, 1, 1], [0, 0, 0], ["1"] * 3, ["2", "3", "2"])
    assert probes.sequence_ids().tolist() == [0, 1, 0] and probes.n_distinct == 2
    assert probes.tokens()["sequence"].tolist() == [0, 1, 0]
