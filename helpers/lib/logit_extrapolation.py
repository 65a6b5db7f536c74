"""Logit extrapolation (LIN §4.2.1): sample from l_{t'} = l_{t0} + α (l_{t1} − l_{t0}) at every decoding step.

    sampler = make_sampler((dir_t0, dir_t1), alpha=1.5)      # or backends.make_sampler("logit-extrapolation", ...)
    scoring.evaluate(sampler, items, k=8, temperature=0.6, top_p=0.95)

Two models decode side by side, each with its own KV cache (finished rows are dropped from both). The mixing is done in
fp32 with `torch.lerp`, so α = 1 gives the t1 logits bit for bit; temperature then top-p are applied to the mixed
logits. Decoding is the hf sampler's own loop (`sampling.decode`) with a different next-token-logits source, so with
α = 1 this sampler reproduces the t1 model's samples exactly for a fixed seed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers.lib.models import load_model
from helpers.lib.sampling import HFSampler, ModelLogits


class MixedLogits:
    """Next-token logits l_{t0} + α (l_{t1} − l_{t0}) (fp32) of two models, each with its own KV cache."""

    def __init__(self, model_t0, model_t1, alpha: float):
        self.pair = (ModelLogits(model_t0), ModelLogits(model_t1))
        self.alpha = float(alpha)

    def _mix(self, l0: torch.Tensor, l1: torch.Tensor) -> torch.Tensor:
        return torch.lerp(l0, l1, self.alpha)

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._mix(*(m.start(input_ids, attention_mask) for m in self.pair))

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._mix(*(m.step(tokens, attention_mask) for m in self.pair))

    def keep(self, rows: torch.Tensor) -> None:
        for m in self.pair:
            m.keep(rows)


class LogitExtrapolationSampler(HFSampler):
    """A `Sampler` drawing from the logit-extrapolated policy of two checkpoints; `last_entropy` is the mean token
    entropy of the mixed (temperature-scaled) distributions."""

    def __init__(self, model_t0, model_t1, tokenizer, alpha: float, batch_size: int = 512):
        super().__init__(model_t1, tokenizer, batch_size)
        if model_t0.config.vocab_size != model_t1.config.vocab_size:
            raise ValueError(
                f"logit extrapolation needs one vocabulary (vocab sizes {model_t0.config.vocab_size} "
                f"and {model_t1.config.vocab_size})"
            )
        self.model_t0, self.alpha = model_t0, float(alpha)

    def logits_source(self) -> MixedLogits:
        return MixedLogits(self.model_t0, self.model, self.alpha)


def make_sampler(
    models, alpha: float, tokenizer=None, device: str = "auto", batch_size: int = 512, allow_pickle: bool = False, **_
) -> LogitExtrapolationSampler:
    """The sampler of a (t0, t1) pair of model directories, or of loaded models with `tokenizer=` (t1's is used)."""
    m0, m1 = models
    if isinstance(m1, (str, Path)):
        m1, tokenizer = load_model(m1, device, allow_pickle=allow_pickle)
    if isinstance(m0, (str, Path)):
        m0, _ = load_model(m0, next(m1.parameters()).device, allow_pickle=allow_pickle)
    if tokenizer is None:
        raise ValueError("logit-extrapolation sampler: pass `tokenizer=` along with already loaded models")
    return LogitExtrapolationSampler(m0, m1, tokenizer, alpha, batch_size)
