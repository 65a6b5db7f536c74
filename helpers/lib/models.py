"""The one way to load a model and its tokenizer from a directory (a checkpoint, a base model, an extrapolation).

    model, tokenizer = load_model("outputs/run/checkpoint-100", device="auto")

Weights come from safetensors; pickle (`.bin`) weights only with `allow_pickle` (the params knob
`trajectory.allow_pickle`), because unpickling can run code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from helpers.lib.device import pick


def refuse_pickle_only(model_dir: Path) -> None:
    """An error for a model directory whose weights are pickle (`.bin`) files only: unpickling can run code."""
    if model_dir.is_dir() and not any(model_dir.glob("*.safetensors")) and any(model_dir.glob("*.bin")):
        raise ValueError(
            f"{model_dir}: only pickle weights (.bin) found, and loading them can run code; convert them "
            f"to safetensors, or set trajectory.allow_pickle: true in the params file to load them"
        )


def load_weights(
    path: str | Path,
    device: str | torch.device = "auto",
    dtype=torch.float32,
    allow_pickle: bool = False,
    config_dir: str | Path | None = None,
):
    """The HF causal LM in `path`, in eval mode on `device`; its architecture from `config_dir` when given (a
    checkpoint saved without config.json), else from `path`."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    path = Path(path)
    if not allow_pickle:
        refuse_pickle_only(path)
    hf_logging.disable_progress_bar()
    device = pick(device) if isinstance(device, str) else device
    config = AutoConfig.from_pretrained(config_dir) if config_dir is not None else None
    model = AutoModelForCausalLM.from_pretrained(
        path, config=config, dtype=dtype, use_safetensors=None if allow_pickle else True
    )
    return model.to(device).eval()


def load_model(path: str | Path, device: str | torch.device = "auto", dtype=torch.float32, allow_pickle: bool = False):
    """(model in eval mode, tokenizer) of an HF model directory (`load_weights` + its tokenizer)."""
    from transformers import AutoTokenizer

    return load_weights(path, device, dtype, allow_pickle), AutoTokenizer.from_pretrained(path)
