"""Sampling: one `Sampler` interface and the batched step-by-step decoding loop of the `hf` backend.

    sampler = HFSampler(model, tokenizer)                        # or backends.make_sampler("hf", model_dir)
    sampler.generate(prompts, n=8, temperature=0.6, top_p=0.95, max_new_tokens=16, seed=0)

`decode` is parameterised by where the next-token logits come from (`ModelLogits`: one model and its KV cache), with
left padding, so a logit-extrapolated pair of models (helpers.lib.logit_extrapolation) samples through the very same
loop. A sampler may also set `last_entropy` (mean token entropy of the distributions it sampled from in its last call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class Sampler(Protocol):
    def generate(
        self, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        """n completions per prompt (temperature 0 = greedy)."""
        ...


class ModelLogits:
    """Next-token logits of one model with its own KV cache — the logits source of `decode`.

    `start` runs the (left-padded) prompts, `step` feeds one token per row, `keep(rows)` drops finished rows from the
    cache. Position ids follow the attention mask, as in HF `generate`, so left padding does not shift positions.
    """

    def __init__(self, model):
        self.model, self.cache, self.pos = model, None, None

    def _forward(self, ids, mask, pos):
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )  # the last position only: no (B, L, vocab) prefill logits
        self.cache = out.past_key_values
        return out.logits[:, -1].float()

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self.pos = pos[:, -1]
        return self._forward(input_ids, attention_mask, pos)

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.pos = self.pos + 1
        return self._forward(tokens[:, None], attention_mask, self.pos[:, None])

    def keep(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.pos = self.pos[rows]


def _top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the tokens outside the smallest set whose probability reaches `top_p` (the top token stays)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop = probs.cumsum(-1) - probs > top_p
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


@torch.no_grad()
def decode(
    source,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    eos_id: int | Sequence[int],
    pad_id: int,
    generator: torch.Generator | None = None,
):
    """Batched decoding from any logits source (`ModelLogits` or a mix of models): temperature, then top-p, then a
    multinomial draw (argmax when temperature is 0); rows that emit a stop token (`eos_id`: one id or several) leave
    the batch.

    Returns (new tokens (B, max_new_tokens) padded with `pad_id`, sum of token entropies, number of tokens); the
    entropy is that of the temperature-scaled distribution at every generated position (EOS included).
    """
    b = input_ids.shape[0]
    out = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=input_ids.device)
    rows = torch.arange(b, device=input_ids.device)
    mask = attention_mask
    logits = source.start(input_ids, attention_mask)
    ent_sum, ent_n = 0.0, 0
    stop = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), dtype=torch.long, device=out.device)
    for t in range(max_new_tokens):
        scaled = logits / temperature if temperature > 0 else logits
        logp = scaled.log_softmax(-1)
        ent_sum += float(-(logp.exp() * logp).nan_to_num().sum())
        ent_n += len(rows)
        if temperature > 0:
            probs = _top_p(scaled, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = scaled.argmax(-1)
        out[rows, t] = nxt
        live = ~torch.isin(nxt, stop)
        if t == max_new_tokens - 1 or not live.any():
            break
        if not live.all():
            keep = live.nonzero().squeeze(1)
            source.keep(keep)
            rows, nxt, mask = rows[keep], nxt[keep], mask[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], 1)
        logits = source.step(nxt, mask)
    return out, ent_sum, ent_n


class HFSampler:
    """Batched decoding of an HF causal LM with left padding and a KV cache (`decode`); one seed gives the same
    completions. Subclasses change only `logits_source` (e.g. two models mixed)."""

    def __init__(self, model, tokenizer, batch_size: int = 512):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.last_entropy: float | None = None

    def logits_source(self):
        return ModelLogits(self.model)

    def stop_ids(self) -> list[int]:
        """Token ids that end a completion: the tokenizer's EOS and every `eos_token_id` of the model's generation
        config (real chat/reasoning models list several, e.g. `<|im_end|>` and `<|endoftext|>`), as vLLM does."""
        ids = {self.tokenizer.eos_token_id}
        config = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(config if isinstance(config, (list, tuple)) else [config])
        ids.discard(None)
        if not ids:
            raise ValueError(
                "the tokenizer and the model's generation config name no EOS token: completions would never stop"
            )
        return sorted(int(i) for i in ids)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 16,
        seed: int = 0,
    ) -> list[list[str]]:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(int(seed))
        flat = [p for p in prompts for _ in range(n)]
        out, ent_sum, ent_n = [], 0.0, 0
        for i in range(0, len(flat), self.batch_size):
            enc = tok(
                flat[i : i + self.batch_size],
                return_tensors="pt",
                padding=True,
                padding_side="left",
                add_special_tokens=False,
            ).to(device)
            new, es, en = decode(
                self.logits_source(),
                enc["input_ids"],
                enc["attention_mask"],
                max_new_tokens,
                temperature,
                top_p,
                self.stop_ids(),
                tok.pad_token_id,
                gen,
            )
            ent_sum, ent_n = ent_sum + es, ent_n + en
            out.extend(tok.batch_decode(new, skip_special_tokens=True))
        self.last_entropy = ent_sum / max(ent_n, 1)
        return [out[j * n : (j + 1) * n] for j in range(len(prompts))]
