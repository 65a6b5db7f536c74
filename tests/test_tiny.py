"""Tiny model: the character tokenizer round-trips and reloads through AutoTokenizer; the model loads like any other."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.lib import tasks, tiny

MODEL = dict(
    arch="llama",
    hidden_size=64,
    heads=2,
    kv_heads=1,
    layers=1,
    intermediate_size=64,
    max_positions=32,
    tie_embeddings=True,
)


def test_tokenizer_round_trip():
    tok = tiny.make_tokenizer()
    for text in ["12+7-30=", "19-30=-11", "0", tasks.ALPHABET]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text)  # one token per character
        assert tok.unk_token_id not in ids
        assert tok.decode(ids) == text
    ids = tok("5+5=", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, tok.pad_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "5+5="


def test_saved_model_and_tokenizer_load_with_auto_classes(tmp_path):
    path = tiny.init_model(MODEL, 0, tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("19-30=-11")["input_ids"] == tiny.make_tokenizer()("19-30=-11")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.hidden_size // model.config.num_attention_heads == 32
    assert model.config.tie_word_embeddings and model.config.vocab_size == len(tok)
    assert (path / "model.safetensors").is_file()


def test_bad_head_size_and_arch_are_errors():
    tok = tiny.make_tokenizer()
    with pytest.raises(ValueError, match="head size"):
        tiny.make_config({**MODEL, "heads": 4}, tok)
    with pytest.raises(ValueError, match="unknown architecture"):
        tiny.make_config({**MODEL, "arch": "gpt9"}, tok)
