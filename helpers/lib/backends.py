"""Sampler backends by name: `hf` (helpers.lib.sampling), `logit-extrapolation` (helpers.lib.logit_extrapolation),
`vllm` (helpers.lib.vllm_backend, GPU); another backend registers itself with `register_backend`.

    sampler = make_sampler("hf", model_dir)               # or an already loaded model + tokenizer=
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from helpers.lib import logit_extrapolation
from helpers.lib.models import load_model, refuse_pickle_only
from helpers.lib.sampling import HFSampler, Sampler


def _hf(
    model_or_path, tokenizer=None, device: str = "auto", batch_size: int = 512, allow_pickle: bool = False, **_
) -> HFSampler:
    if isinstance(model_or_path, (str, Path)):
        model, tokenizer = load_model(model_or_path, device, allow_pickle=allow_pickle)
    else:
        model = model_or_path
        if tokenizer is None:
            raise ValueError("hf sampler: pass `tokenizer=` along with an already loaded model")
    return HFSampler(model, tokenizer, batch_size)


def _vllm(model_or_path, allow_pickle: bool = False, **kwargs) -> Sampler:
    from helpers.lib.vllm_backend import make

    if not allow_pickle and isinstance(model_or_path, (str, Path)):
        refuse_pickle_only(Path(model_or_path))  # vLLM would load .bin weights too
    return make(model_or_path, **kwargs)


BACKENDS: dict[str, Callable[..., Sampler]] = {
    "hf": _hf,
    "vllm": _vllm,
    "logit-extrapolation": logit_extrapolation.make_sampler,
}


def register_backend(name: str, factory: Callable[..., Sampler]) -> None:
    BACKENDS[name] = factory


def make_sampler(backend: str, model_or_path: Any, **kwargs) -> Sampler:
    """A sampler of the named backend for a model directory (or a loaded model + `tokenizer=`)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown sampler backend {backend!r} (known: {', '.join(BACKENDS)})")
    return BACKENDS[backend](model_or_path, **kwargs)
