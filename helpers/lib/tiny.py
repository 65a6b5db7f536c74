"""The tiny model of the embedded default: a character tokenizer (`tokenizers`) and a Llama-architecture causal LM.

Both are saved with `save_pretrained`, so `AutoTokenizer` / `AutoModelForCausalLM` (and vLLM: head size 32) load them
like any real model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from helpers.lib.tasks import ALPHABET

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Llama only: for model_type "qwen2", transformers' AutoTokenizer forces its own byte-level Qwen2Tokenizer over the
# saved character tokenizer, so a Qwen2 config would load with a different tokenizer than it was trained with.
ARCHS = {"llama": LlamaConfig}


def make_tokenizer(alphabet: str = ALPHABET) -> PreTrainedTokenizerFast:
    """One token per character, plus <pad>, <eos>, <unk>; decoding concatenates characters."""
    vocab = {t: i for i, t in enumerate([PAD, EOS, UNK, *alphabet])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left"
    )


def make_config(model: Mapping[str, Any], tokenizer) -> Any:
    """The HF config of the model section (arch, hidden_size, heads, kv_heads, layers, intermediate_size, ...)."""
    if model["arch"] not in ARCHS:
        raise ValueError(f"model.arch: unknown architecture {model['arch']!r} (known: {', '.join(ARCHS)})")
    hidden, heads = int(model["hidden_size"]), int(model["heads"])
    if hidden % heads or hidden // heads not in (32, 64, 128):
        raise ValueError(f"model: head size hidden_size/heads = {hidden}/{heads} must be 32, 64 or 128")
    return ARCHS[model["arch"]](
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=int(model["kv_heads"]),
        num_hidden_layers=int(model["layers"]),
        intermediate_size=int(model["intermediate_size"]),
        max_position_embeddings=int(model["max_positions"]),
        tie_word_embeddings=bool(model["tie_embeddings"]),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        dtype="float32",
    )


def init_model(model: Mapping[str, Any], seed: int, out_dir: str | Path, alphabet: str = ALPHABET) -> Path:
    """Write a randomly initialised model (seeded) + tokenizer (one token per character of `alphabet`) to
    `out_dir`; return it."""
    from transformers import AutoModelForCausalLM

    tok = make_tokenizer(alphabet)
    cfg = make_config(model, tok)
    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_config(cfg)
    net.generation_config.pad_token_id = tok.pad_token_id
    net.generation_config.eos_token_id = tok.eos_token_id
    net.generation_config.bos_token_id = None
    out_dir = Path(out_dir)
    net.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def load_tokenizer(path: str | Path):
    return AutoTokenizer.from_pretrained(path)
