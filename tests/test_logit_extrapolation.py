import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from helpers.lib import backends, sampling, scoring, tasks, tiny
from helpers.lib.logit_extrapolation import LogitExtrapolationSampler, make_sampler

PROMPTS = ["12+7=", "3-45+6=", "1=", "40-4-4=", "9+9+9+9="]
SETTINGS = dict(n=4, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def qwen2(seed, tok):
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=2,
        intermediate_size=96,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # make EOS likely, so rows finish at different steps and get dropped from the caches
        model.model.embed_tokens.weight[tok.eos_token_id] *= 3
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return tiny.make_tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    return qwen2(0, tok), qwen2(1, tok)


def test_alpha_one_reproduces_t1_and_alpha_zero_t0(models, tok):
    m0, m1 = models
    for alpha, model in ((1.0, m1), (0.0, m0)):
        ref = sampling.HFSampler(model, tok, batch_size=7)
        mixed = LogitExtrapolationSampler(m0, m1, tok, alpha, batch_size=7)
        want, got = ref.generate(PROMPTS, **SETTINGS), mixed.generate(PROMPTS, **SETTINGS)
        assert got == want
        assert mixed.last_entropy == ref.last_entropy
    lengths = {len(c) for row in want for c in row}
    assert min(lengths) < 11 and max(lengths) == 12  # some rows finished early, some ran to the end
    assert LogitExtrapolationSampler(m0, m1, tok, 1.5, 7).generate(PROMPTS, **SETTINGS) != want


@torch.no_grad()
def test_batched_cached_decoding_matches_naive_mixing(models, tok):
    """Greedy α = 1.5: the batched, KV-cached, row-dropping loop gives what full-sequence forwards give."""
    m0, m1 = models
    got = LogitExtrapolationSampler(m0, m1, tok, 1.5, batch_size=3).generate(
        PROMPTS, n=1, temperature=0.0, max_new_tokens=10
    )
    for prompt, (completion,) in zip(PROMPTS, got):
        ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        for _ in range(10):
            l0, l1 = m0(ids).logits[0, -1], m1(ids).logits[0, -1]
            nxt = int((l0 + 1.5 * (l1 - l0)).argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            if nxt == tok.eos_token_id:
                break
        new = ids[0, len(tok(prompt, add_special_tokens=False).input_ids) :]
        assert completion == tok.decode(new, skip_special_tokens=True)


def test_shared_loop_greedy_matches_hf_generate(models, tok):
    m1 = models[1]
    got = sampling.HFSampler(m1, tok, batch_size=8).generate(PROMPTS, n=1, temperature=0.0, max_new_tokens=10)
    enc = tok(PROMPTS, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    gen = m1.generate(
        **enc, do_sample=False, max_new_tokens=10, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    assert [g[0] for g in got] == tok.batch_decode(gen[:, enc.input_ids.shape[1] :], skip_special_tokens=True)


def test_registered_backend_from_directories(models, tok, tmp_path):
    for i, m in enumerate(models):
        m.save_pretrained(tmp_path / f"m{i}")
        tok.save_pretrained(tmp_path / f"m{i}")
    sampler = backends.make_sampler("logit-extrapolation", (tmp_path / "m0", tmp_path / "m1"), alpha=2.0, device="cpu")
    assert isinstance(sampler, LogitExtrapolationSampler) and sampler.alpha == 2.0
    items = [tasks.Item(p, 0, "0") for p in PROMPTS]
    res = scoring.evaluate(sampler, items, k=2, max_new_tokens=6, greedy=False)
    assert res["avg@2"] == 0.0 and res["entropy"] > 0
    with pytest.raises(ValueError, match="tokenizer"):
        make_sampler(models, alpha=1.5)
    other = AutoModelForCausalLM.from_config(
        Qwen2Config(
            vocab_size=99,
            hidden_size=64,
            num_attention_heads=2,
            num_key_value_heads=1,
            num_hidden_layers=1,
            intermediate_size=8,
        )
    )
    with pytest.raises(ValueError, match="one vocabulary"):
        LogitExtrapolationSampler(other, models[1], tok, 1.5)
