"""Device choice: CUDA when present, else CPU — so one notebook serves a laptop and a GPU box; CPU threads."""

from __future__ import annotations

import contextlib
import os

import torch


def pick(requested: str = "auto") -> torch.device:
    """`auto` → cuda if available else cpu; otherwise the named device (an unavailable CUDA is an error)."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available on this machine")
    return dev


@contextlib.contextmanager
def cpu_threads():
    """Torch CPU threads for training and scoring: $OMP_NUM_THREADS, else 1 — the tiny model's matmuls gain little
    from a second thread, and multi-threaded kernels slow down ~10x when the cores are shared with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
