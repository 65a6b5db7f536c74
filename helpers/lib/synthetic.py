"""Synthetic training trajectories whose answer is known, for tests and benchmarks.

    write_synthetic_trajectory(out_dir, n_params=100e6, steps=range(0, 1501, 100), drift=2e-3, noise=2e-4)

writes a Qwen2-architecture model (an HF config.json and Qwen2ForCausalLM's tensor names and shapes) as a TRL-layout
run `out_dir/checkpoint-N/`
(model.safetensors + config.json, checkpoint-0 = base) whose entries follow

    θ_t = θ_0 + drift · u · t / t_max + noise · ε_t + walk · W_t

with u ~ N(0, 1) fixed per entry, ε_t ~ N(0, 1) independent per checkpoint (ε_0 = 0), and W_t a Gaussian random walk
over checkpoints (W_0 = 0). `reference_r2` simulates the R² distribution this gives (the known answer);
noise = walk = 0 is a perfectly linear trajectory. θ_0 follows the Qwen2 init (matrices N(0, 0.02²), norms 1,
biases 0). Tensors are generated and written one at a time (every value is reproducible from the seed, the tensor
name and the step), so memory stays at one tensor whatever the model size.

CLI: `python -m helpers.lib.synthetic OUT_DIR --n-params 1e8 --steps 0:1500:100 --dtype bf16`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from helpers.lib.checkpoint_io import write_checkpoint
from helpers.lib.linearity import tensor_seed
from helpers.lib.paths import atomic_dir, atomic_write_json

INIT_STD = 0.02
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}

ValueFn = Callable[[str, tuple, int], torch.Tensor]  # (tensor name, shape, step) -> values at that step


# The Qwen2 shape of DeepSeek-R1-Distill-Qwen-1.5B (LIN's model): a real size for memory figures, no download
R1_DISTILL_QWEN_1_5B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=False,
)


def qwen2_config(
    n_params: float = 100e6,
    hidden_size: int = 512,
    vocab_size: int = 32000,
    tie_word_embeddings: bool = False,
    **overrides,
) -> dict:
    """A Qwen2 `config.json` (as a dict) with about `n_params` parameters: head dim 64 (or hidden_size when smaller),
    4 query heads per KV head, intermediate 3 × hidden; the number of layers (≥ 1) makes up the count."""
    head_dim = min(64, hidden_size)
    heads = max(1, hidden_size // head_dim)
    kv_heads = max(1, heads // 4)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "intermediate_size": 3 * hidden_size,
        "num_hidden_layers": 1,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tie_word_embeddings,
        "use_cache": True,
    }
    config.update(overrides)
    if "num_hidden_layers" not in overrides:
        shapes = qwen2_shapes(config)
        per_layer = sum(int(np.prod(v)) for k, v in shapes.items() if ".layers.0." in k)
        outer = sum(int(np.prod(v)) for k, v in shapes.items() if ".layers." not in k)
        config["num_hidden_layers"] = max(1, round((float(n_params) - outer) / per_layer))
    return config


def qwen2_shapes(config: dict) -> dict[str, tuple]:
    """{tensor name: shape} of a Qwen2ForCausalLM with this config, in the model's order (no lm_head when tied)."""
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = config.get("head_dim") or h // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * hd, config["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (v, h)}
    for n in range(config["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes.update(
            {
                p + "self_attn.q_proj.weight": (q, h),
                p + "self_attn.q_proj.bias": (q,),
                p + "self_attn.k_proj.weight": (kv, h),
                p + "self_attn.k_proj.bias": (kv,),
                p + "self_attn.v_proj.weight": (kv, h),
                p + "self_attn.v_proj.bias": (kv,),
                p + "self_attn.o_proj.weight": (h, q),
                p + "mlp.gate_proj.weight": (i, h),
                p + "mlp.up_proj.weight": (i, h),
                p + "mlp.down_proj.weight": (h, i),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    shapes["model.norm.weight"] = (h,)
    if not config.get("tie_word_embeddings"):
        shapes["lm_head.weight"] = (v, h)
    return shapes


def write_trajectory(
    out_dir,
    config: dict,
    steps: Sequence[int],
    values: ValueFn,
    dtype: torch.dtype = torch.bfloat16,
    shapes: dict[str, tuple] | None = None,
) -> Path:
    """Write `out_dir/checkpoint-<step>/` (model.safetensors + config.json) for every step: tensor `name` at `step`
    is `values(name, shape, step)` stored as `dtype`; `shapes` defaults to `qwen2_shapes(config)`. The directory
    appears only when complete."""
    shapes = qwen2_shapes(config) if shapes is None else shapes
    config = {**config, "dtype": str(dtype).removeprefix("torch.")}
    with tempfile.TemporaryDirectory() as like, atomic_dir(out_dir) as tmp:
        atomic_write_json(Path(like) / "config.json", config)
        for step in sorted(int(s) for s in steps):
            write_checkpoint(
                tmp / f"checkpoint-{step}",
                ((name, values(name, shape, step)) for name, shape in shapes.items()),
                like=Path(like),
                dtype_of=lambda _: dtype,
            )
    return Path(out_dir)


def _randn(seed: int, name: str, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(tensor_seed(seed, name)), dtype=dtype)


def drift_noise_walk(
    steps: Sequence[int],
    drift: float,
    noise: float,
    walk: float = 0.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> ValueFn:
    """The value function of the module docstring's model, computed in `dtype`."""
    steps = sorted(int(s) for s in steps)
    t_max = max(steps) or 1
    position = {s: i for i, s in enumerate(steps)}

    def values(name: str, shape: tuple, step: int) -> torch.Tensor:
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("norm.weight"):
            theta = torch.ones(shape, dtype=dtype)
        elif leaf == "bias":
            theta = torch.zeros(shape, dtype=dtype)
        else:
            theta = INIT_STD * _randn(seed, f"{name}/init", shape, dtype)
        if step == steps[0]:
            return theta
        if drift:
            theta += (drift * step / t_max) * _randn(seed, f"{name}/direction", shape, dtype)
        if noise:
            theta += noise * _randn(seed, f"{name}/noise@{step}", shape, dtype)
        if walk:
            for s in steps[1 : position[step] + 1]:
                theta += walk * _randn(seed, f"{name}/walk@{s}", shape, dtype)
        return theta

    return values


def write_synthetic_trajectory(
    out_dir,
    n_params: float = 100e6,
    steps: Sequence[int] = range(0, 1501, 100),
    dtype: torch.dtype = torch.bfloat16,
    drift: float = 2e-3,
    noise: float = 2e-4,
    walk: float = 0.0,
    seed: int = 0,
    **shape,
) -> Path:
    """A Qwen2-shaped synthetic run of ≈ `n_params` parameters (`shape` overrides `qwen2_config` arguments) with
    linear drift + noise (+ random walk) as in the module docstring. Returns `out_dir`."""
    steps = list(steps)
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    if len(steps) < 2 or 0 not in steps:
        raise ValueError(f"steps must include 0 (the base) and at least one more step, got {steps}")
    return write_trajectory(
        out_dir,
        qwen2_config(n_params, **shape),
        steps,
        drift_noise_walk(steps, drift, noise, walk, seed, compute),
        dtype,
    )


def reference_r2(
    steps: Sequence[int], drift: float, noise: float, walk: float = 0.0, n: int = 100_000, seed: int = 0
) -> np.ndarray:
    """R² of `n` entries drawn from the same model as `drift_noise_walk`, simulated in float64 without storage
    rounding or filters: the known answer a measurement on a synthetic trajectory should reproduce."""
    from helpers.lib.linearity import r2

    t = np.asarray(sorted(steps), dtype=np.float64)
    rng = np.random.default_rng(seed)
    y = drift * np.outer(t / (t.max() or 1), rng.standard_normal(n))
    y[1:] += noise * rng.standard_normal((len(t) - 1, n))
    y[1:] += walk * np.cumsum(rng.standard_normal((len(t) - 1, n)), axis=0)
    return r2(y, t)


def _steps_arg(text: str) -> list[int]:
    if ":" in text:
        start, stop, step = (int(x) for x in text.split(":"))
        return list(range(start, stop + 1, step))
    return [int(x) for x in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a synthetic Qwen2-shaped TRL-layout trajectory with a known answer.")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n-params", type=float, default=100e6)
    p.add_argument("--steps", type=_steps_arg, default=list(range(0, 1501, 100)), help="start:stop:step or a,b,c")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--drift", type=float, default=2e-3)
    p.add_argument("--noise", type=float, default=2e-4)
    p.add_argument("--walk", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--vocab-size", type=int, default=32000)
    a = p.parse_args(argv)
    out = write_synthetic_trajectory(
        a.out_dir,
        a.n_params,
        a.steps,
        DTYPES[a.dtype],
        a.drift,
        a.noise,
        a.walk,
        a.seed,
        hidden_size=a.hidden_size,
        vocab_size=a.vocab_size,
    )
    cfg = json.loads((out / "checkpoint-0" / "config.json").read_text())
    print(f"{out}: {len(a.steps)} checkpoints, {cfg['num_hidden_layers']} layers × hidden {cfg['hidden_size']}")


if __name__ == "__main__":
    from helpers.lib import cli

    cli.run(main)
