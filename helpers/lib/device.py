"""Device choice: CUDA when present, else CPU — so one notebook serves a laptop and a GPU box."""
from __future__ import annotations

import torch


def pick(requested: str = "auto") -> torch.device:
    """`auto` → cuda if available else cpu; otherwise the named device (an unavailable CUDA is an error)."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this machine")
    return dev
