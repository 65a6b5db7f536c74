"""Scoring: the pass@k estimator against brute-force enumeration, the sampler registry, avg@k on a fake sampler."""

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from helpers.lib import backends, models, runs, sampling, scoring, tasks, tiny
from tests.test_tiny import MODEL as TINY


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_matches_enumeration(n, c, k):
    # the probability that a uniformly drawn k-subset of n samples (c of them correct) holds at least one correct one
    flags = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(flags[i] for i in s) for s in subsets) / len(subsets)
    assert scoring.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError, match="k <= n"):
        scoring.pass_at_k(3, 1, 4)


class Fake:
    """Returns the right answer for the first `good` samples of every prompt, garbage otherwise."""

    def __init__(self, items, good):
        self.answers = {it.prompt: it.answer for it in items}
        self.good, self.last_entropy = good, 0.5

    def generate(self, prompts, n, temperature, top_p, max_new_tokens, seed):
        if temperature == 0:
            return [[str(self.answers[p])] for p in prompts]
        return [[str(self.answers[p]) if j < self.good else "x" for j in range(n)] for p in prompts]


def test_evaluate_metrics():
    items = tasks.split(dict(operands=2, max_value=10, ops="+", chain=False, train_size=1, heldout_size=5, seed=0))[1]
    res = scoring.evaluate(Fake(items, good=2), items, k=4)
    assert res["avg@4"] == 0.5
    assert res["pass@1"] == pytest.approx(0.5)
    assert res["pass@2"] == pytest.approx(1 - math.comb(2, 2) / math.comb(4, 2))
    assert res["pass@4"] == 1.0
    assert res["greedy_accuracy"] == 1.0 and res["entropy"] == 0.5


def test_registry():
    with pytest.raises(ImportError, match="vllm"):  # not installed here (tests/test_backends.py: the vllm backend)
        backends.make_sampler("vllm", "some/dir")
    with pytest.raises(ValueError, match="unknown sampler backend 'nope'"):
        backends.make_sampler("nope", "some/dir")


def test_hf_sampler_is_seeded_and_left_padded(tmp_path):
    model = dict(TINY)
    path = tiny.init_model(model, 0, tmp_path / "m")
    sampler = backends.make_sampler("hf", path, device="cpu", batch_size=3)
    prompts = ["1+2=", "10+20+3="]
    a = sampler.generate(prompts, n=4, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=1)
    b = sampler.generate(prompts, n=4, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=1)
    c = sampler.generate(prompts, n=4, temperature=1.0, top_p=1.0, max_new_tokens=5, seed=2)
    assert a == b and a != c and len(a) == 2 and all(len(r) == 4 for r in a)
    assert sampler.last_entropy > 0
    # greedy on a prompt alone equals greedy on it inside a left-padded batch
    alone = sampler.generate(["1+2="], n=1, temperature=0, top_p=1.0, max_new_tokens=5, seed=0)
    batch = sampler.generate(["1+2=", "10+20+3="], n=1, temperature=0, top_p=1.0, max_new_tokens=5, seed=0)
    assert alone[0] == batch[0]


def test_cached_scorer_scores_once_and_closes(tmp_path, monkeypatch):
    from helpers.lib import config
    from helpers.lib.cache import dir_fingerprint

    monkeypatch.setenv("RLVR_OUTPUTS", str(tmp_path / "out"))
    cfg = config.load("params/default.yaml", profile="smoke", overrides={"eval.k": 4})
    scorer = scoring.CachedScorer(cfg, runs.heldout_items(cfg), 3)
    assert scorer.items == scoring.heldout_items(cfg)[:3]
    made, closed = [], []

    class Closing(Fake):
        def close(self):
            closed.append(True)

    def make():
        made.append(True)
        return Closing(scorer.items, good=1)

    res = scorer.score({"model": "a"}, make)
    assert res["avg@4"] == 0.25 and made == [True] and closed == [True]
    again = scoring.CachedScorer(cfg, runs.heldout_items(cfg), 3)
    assert again.score({"model": "a"}, make) == res and made == [True]  # from disk
    assert scorer.score({"model": "b"}, make)["n_items"] == 3 and len(made) == 2
    d = tmp_path / "m"
    d.mkdir()
    (d / "tokenizer.json").write_text("{}")
    before = dir_fingerprint(d)
    (d / "model.bin").write_bytes(b"x")
    assert before[0] == str(d.resolve()) and [f[0] for f in dir_fingerprint(d)[1]] == ["model.bin", "tokenizer.json"]


class Scripted:
    """A logits source whose row i emits `scripts[i]` token by token (one-hot logits), then token 0."""

    def __init__(self, scripts, vocab=10):
        self.scripts, self.vocab, self.rows, self.t = scripts, vocab, list(range(len(scripts))), 0

    def logits(self):
        out = torch.zeros(len(self.rows), self.vocab)
        for j, r in enumerate(self.rows):
            s = self.scripts[r]
            out[j, s[self.t] if self.t < len(s) else 0] = 1.0
        return out

    def start(self, input_ids, attention_mask):
        return self.logits()

    def step(self, nxt, mask):
        self.t += 1
        return self.logits()

    def keep(self, idx):
        self.rows = [self.rows[i] for i in idx.tolist()]


@pytest.mark.parametrize(
    "stop,expected", [(7, [[5, 7, -1, -1], [6, 6, 8, 1]]), ([7, 8], [[5, 7, -1, -1], [6, 6, 8, -1]])]
)
def test_decode_stops_at_any_stop_token(stop, expected):
    ids, mask = torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    out, _, n = sampling.decode(Scripted([[5, 7, 2, 2], [6, 6, 8, 1]]), ids, mask, 4, 0.0, 1.0, stop, -1)
    assert out.tolist() == expected
    assert n == sum(t != -1 for row in expected for t in row)


def test_stop_ids_join_tokenizer_and_generation_config():
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[3, 9]))
    assert sampling.HFSampler(model, SimpleNamespace(eos_token_id=9)).stop_ids() == [3, 9]
    model.generation_config.eos_token_id = 4
    assert sampling.HFSampler(model, SimpleNamespace(eos_token_id=9)).stop_ids() == [4, 9]
    model.generation_config.eos_token_id = None
    with pytest.raises(ValueError, match="never stop"):
        sampling.HFSampler(model, SimpleNamespace(eos_token_id=None)).stop_ids()


def pickle_only_model(path):
    """A tiny model directory whose weights are `pytorch_model.bin` only (no safetensors)."""
    model = dict(TINY)
    path = tiny.init_model(model, 0, path)
    from safetensors.torch import load_file

    weights = path / "model.safetensors"
    torch.save(load_file(weights), path / "pytorch_model.bin")
    weights.unlink()
    return path


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    path = pickle_only_model(tmp_path / "m")
    for load in (
        lambda: models.load_model(path, "cpu"),
        lambda: backends.make_sampler("hf", path, device="cpu"),
        lambda: backends.make_sampler("vllm", path),
    ):  # refused before vLLM is even imported
        with pytest.raises(ValueError, match=rf"{path}: only pickle weights \(.bin\).*trajectory.allow_pickle: true"):
            load()
    model, tok = models.load_model(path, "cpu", allow_pickle=True)
    assert not model.training and tok("1+2=")["input_ids"]
