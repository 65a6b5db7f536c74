"""Benchmark: the linearity monitor's (helpers.lib.monitor) cost in step time and the memory of its sketch.

    nice -n 10 .venv/bin/python benchmarks/monitor.py [--steps 36] [--every N] [--window N] [--out DIR]

Overhead: N GRPO steps of the embedded default's RL settings (params/default.yaml, from its cached SFT base) are
trained twice, single-threaded (OMP_NUM_THREADS=1), without and then with the monitor at the `monitor` section's
knobs (--every / --window override them). Reported: the median step time of each run (intervals between `on_step_end`
calls, so the step-0 held-out evaluation does not count), the time spent inside the monitor's callbacks (snapshots
and statistics, measured directly), and that time per step as a fraction of the median step without the monitor.
Target: ≤ 1 % at the default knobs.

Memory: the sketch the monitor would keep, at the default knobs, for every `.weight` tensor of a 1.5 B Qwen2
(DeepSeek-R1-Distill-Qwen-1.5B's shape, untied head: 1.78 B parameters), built on the meta device (no download):
entries, effective fraction, bytes of snapshots + indices (`monitor.sketch_bytes`) against `budget_mb`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback

from helpers.lib import config, monitor, training
from helpers.lib.monitor import LinearityMonitor
from helpers.lib.synthetic import R1_DISTILL_QWEN_1_5B


class Clock(TrainerCallback):
    """Wall time at every `on_step_end`."""

    def __init__(self):
        self.at: list[float] = []

    def on_step_end(self, args, state, control, **kw):
        self.at.append(time.perf_counter())

    def median_step(self) -> float:
        return statistics.median(b - a for a, b in zip(self.at, self.at[1:]))


class TimedMonitor(LinearityMonitor):
    """The monitor, with the time spent in its snapshot / statistics callbacks summed in `seconds`."""

    def __init__(self, **knobs):
        super().__init__(**knobs)
        self.seconds = 0.0

    def on_train_begin(self, *a, **kw):
        t = time.perf_counter()
        super().on_train_begin(*a, **kw)
        self.seconds += time.perf_counter() - t

    def on_step_end(self, *a, **kw):
        t = time.perf_counter()
        super().on_step_end(*a, **kw)
        self.seconds += time.perf_counter() - t


def overhead(steps: int, every: int | None, window: int | None, out: str) -> None:
    cfg = config.load("params/default.yaml", "default")
    cfg = config.derive(cfg, {"rl.steps": steps, "rl.save_every": steps, "eval.heldout_during_training": 1})
    knobs = dict(cfg.monitor) | {k: v for k, v in (("every", every), ("window", window)) if v is not None}
    base = training.base_model(cfg)
    plain, clocked = Clock(), Clock()
    mon = TimedMonitor(**knobs, seed=cfg.seed)
    t = time.perf_counter()
    training.train_rl(cfg, f"{out}/without", callbacks=[plain], base_dir=base)
    t_without = time.perf_counter() - t
    t = time.perf_counter()
    training.train_rl(cfg, f"{out}/with", callbacks=[clocked, mon], base_dir=base)
    t_with = time.perf_counter() - t
    without, with_ = plain.median_step(), clocked.median_step()
    entries = sum(len(i) for i in mon.index.values())
    print(f"embedded default RL, {steps} steps, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 1)}, {knobs}")
    print(f"  model: {entries} sampled entries, effective fraction {mon.effective_fraction:g}")
    print(f"  median step: without {without:.3f} s, with {with_:.3f} s ({with_ / without - 1:+.1%}, noise included)")
    print(f"  whole runs: without {t_without:.1f} s, with {t_with:.1f} s")
    print(
        f"  monitor callbacks: {mon.seconds:.3f} s over {steps} steps = {mon.seconds / steps * 1e3:.2f} ms/step "
        f"= {mon.seconds / steps / without:.3%} of a step; windows computed: {len(mon.history)}"
    )


def memory(knobs: dict) -> None:
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**R1_DISTILL_QWEN_1_5B))
    numels = {n: p.numel() for n, p in model.named_parameters() if n.endswith(".weight")}
    mon = LinearityMonitor(**knobs)
    t = time.perf_counter()
    mon.plan(numels)
    seconds = time.perf_counter() - t
    entries = sum(len(i) for i in mon.index.values())
    total = monitor.sketch_bytes(entries, mon.window)
    print(f"1.5 B Qwen2 (R1-Distill shape, {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B params), {knobs}")
    print(
        f"  {len(numels)} .weight tensors, {entries} sampled entries (effective fraction {mon.effective_fraction:g}), "
        f"one snapshot {entries * 4 / 2**20:.1f} MiB, sketch {total / 2**20:.1f} MiB (window {mon.window} + indices) "
        f"of budget {mon.budget_mb:g} MiB; sampling took {seconds:.1f} s"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=36)
    p.add_argument("--every", type=int, default=None)
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--out", default=None, help="where the two runs go (default: a new temporary directory)")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    memory(dict(config.load("params/default.yaml", "default").monitor))
    overhead(a.steps, a.every, a.window, a.out or tempfile.mkdtemp(prefix="monitor-benchmark-"))


if __name__ == "__main__":
    main()
