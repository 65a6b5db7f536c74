"""RL-Extra (LIN §4.3): cycles of m real RL steps and n extrapolated ones, as a `TrainerCallback` for TRL's GRPOTrainer.

    trainer = GRPOTrainer(..., callbacks=[RLExtra(m=10, n=10)])
    helpers.lib.training.train_rl(cfg, out_dir, callbacks=[RLExtra(m=10, n=10)])   # the same, on the embedded default

Cycle c covers real (optimizer) steps c·m … (c+1)·m. At `on_step_end` of step (c+1)·m the trainable tensors are moved
in place to W ← P + (m+n)/m · (Q − P) (P = the weights at the phase start, kept as a CPU fp32 copy; Q = the weights
now), computed per tensor in fp32 with `helpers.lib.extrapolation.lerp`; the result is the next phase's P. Norm policy as in
the extrapolation tool (`helpers.lib.extrapolation.is_norm`): ``copy-from-t1`` leaves norm weights at Q (not extrapolated,
no copy kept), ``extrapolate`` moves every trainable tensor. Optimizer state after an extrapolation: ``reset`` (the
paper's reference restarts a fresh job per cycle: Adam moments and step counts are dropped) or ``keep``. With n = 0 the
weights are rewritten with themselves (β = 1 is exact) and the optimizer is left alone: standard training, bit for bit.
The lr schedule is not restarted (one continuous run, SPEC §5).

Generation boundary. TRL 1.16's GRPOTrainer generates rollouts at micro-step s when s % (steps_per_generation ×
num_iterations) == 0 (s counts from 0 at each `train()` call, also on resume) and buffers them for the following
micro-steps; an optimizer step is gradient_accumulation_steps micro-steps. So rollouts are regenerated after optimizer
step k iff (k − k0) is a multiple of the generation period p = G / gcd(G, gradient_accumulation_steps), G =
steps_per_generation × num_iterations, k0 = the step training (re)started from. m (and k0) must be multiples of p —
checked at `on_train_begin` — so no buffered rollout ever comes from the pre-extrapolation policy.

Counters. Real RL steps = `state.global_step`; effective steps = real + n × completed cycles. Every checkpoint gets
`rl_extra.json` (both counters, m, n, β, policies); `log.csv` of the run directory (helpers.lib.training) gets the columns
`rl_steps` and `effective_steps` (the model's position after that row's step).

Resume. A checkpoint saved mid-cycle also holds P as `rl_extra_anchor.safetensors` (fp32); one saved at a cycle
boundary holds none (P is the checkpoint's own weights). On resume (`state.global_step` > 0 at `on_train_begin`) the
anchor is read from `resume_from` (default: `<output_dir>/checkpoint-<step>`), and its record must match m, n, norms.

Multiple processes (accelerate):
- DDP (replicated parameters): supported — every rank applies the same in-place update to identical replicas; every
  rank keeps its own P (one fp32 copy of the extrapolated tensors in CPU RAM per process); rank 0 writes the files.
- FSDP1 (`FullyShardedDataParallel` root): parameters are gathered with `summon_full_params(writeback=True)` for each
  read and write; every rank keeps a full P.
- DeepSpeed ZeRO-1/2/3: ZeRO-3 parameters are gathered with `deepspeed.zero.GatheredParameters` (modifier_rank=0);
  values are read from / written to the optimizer's fp32 master weights with `deepspeed.utils.safe_get_full_fp32_param`
  / `safe_set_full_fp32_param` (else the next step would overwrite the extrapolation), and ``reset`` zeroes exp_avg /
  exp_avg_sq with `safe_set_full_optimizer_state` (DeepSpeed's Adam step count is not reset).
  Written against DeepSpeed's documented API; not exercised by this repository's tests (CPU only).
- Not supported (error at `on_train_begin`): FSDP2 / DTensor parameters, and TP/PP-sharded models.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import TrainerCallback

from helpers.experiments import claims as cl
from helpers.experiments import paper
from helpers.lib.extrapolation import NORM_POLICIES, is_norm, lerp
from helpers.lib.paths import atomic_write_json, atomic_write_text

OPTIMIZER_POLICIES = ("reset", "keep")
RECORD = "rl_extra.json"
ANCHOR = "rl_extra_anchor.safetensors"
STEP_COLUMNS = ("rl_steps", "effective_steps")


def generation_period(args) -> int:
    """Optimizer steps between two rollout generations of TRL's GRPOTrainer for these `GRPOConfig` args."""
    if getattr(args, "steps_per_generation", None) is None:
        raise ValueError(f"RL-Extra needs TRL GRPOConfig arguments (steps_per_generation); got {type(args).__name__}")
    every = int(args.steps_per_generation) * int(args.num_iterations)
    return every // math.gcd(every, int(args.gradient_accumulation_steps))


def effective_steps(rl_steps: int, m: int, n: int) -> int:
    """Steps the model has advanced after `rl_steps` real steps of RL-Extra(m, n): RL plus extrapolated."""
    return int(rl_steps) + int(n) * (int(rl_steps) // int(m))


class _Weights:
    """Full fp32 values of the trainable tensors, read and written wherever they live (plain, FSDP1, DeepSpeed)."""

    def __init__(self, model, norms: str):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.tensor import DTensor

        self.model, self.norms = model, norms
        params = [p for _, p in model.named_parameters()]
        if any(isinstance(p, DTensor) for p in params):
            raise NotImplementedError("RL-Extra: DTensor parameters (FSDP2 / tensor parallel) are not supported")
        self.fsdp = isinstance(model, FSDP)
        self.deepspeed = any(hasattr(p, "ds_id") or getattr(p, "_hp_mapping", None) is not None for p in params)
        self.zero3 = any(hasattr(p, "ds_id") for p in params)

    def extrapolated(self, name: str) -> bool:
        return not (self.norms == "copy-from-t1" and is_norm(name))

    @contextlib.contextmanager
    def _full(self, modify: bool) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
        """(name, parameter) of the extrapolated trainable tensors, gathered to full size for the block."""
        if self.zero3:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=0 if modify else None)
        elif self.fsdp:
            ctx = type(self.model).summon_full_params(self.model, writeback=modify)
        else:
            ctx = contextlib.nullcontext()
        with torch.no_grad(), ctx:
            yield [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and self.extrapolated(n)]

    def _value(self, p) -> torch.Tensor:
        if self.deepspeed:
            from deepspeed.utils import safe_get_full_fp32_param

            return safe_get_full_fp32_param(p)
        return p

    def read(self) -> dict[str, torch.Tensor]:
        """{name: CPU fp32 copy}."""
        with self._full(modify=False) as params:
            return {n: self._value(p).detach().to("cpu", torch.float32, copy=True) for n, p in params}

    def extrapolate(self, anchor: dict[str, torch.Tensor], beta: float) -> None:
        """W ← P + β (W − P) in place, tensor by tensor (fp32)."""
        with self._full(modify=True) as params:
            for n, p in params:
                w = lerp(anchor[n].to(p.device), self._value(p), beta)   # fp32 (the master's dtype under DeepSpeed)
                if self.deepspeed:
                    from deepspeed.utils import safe_set_full_fp32_param

                    safe_set_full_fp32_param(p, w)
                p.copy_(w)

    def reset_optimizer(self, optimizer) -> None:
        """Drop Adam moments (and step counts, except under DeepSpeed)."""
        if not self.deepspeed:
            optimizer.state.clear()
            return
        from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_optimizer_state

        with self._full(modify=False) as params:
            for _, p in params:
                zeros = torch.zeros_like(safe_get_full_fp32_param(p))
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(p, zeros, key)


class RLExtra(TrainerCallback):
    """m real RL steps, then n extrapolated steps, repeated (module docstring: boundaries, counters, resume, multi-GPU).

    Attributes after each event: `rl_steps`, `effective_steps`, `extrapolations` (completed cycles with n > 0 this
    `train()` call), `anchor` ({name: CPU fp32 P}).
    """

    def __init__(self, m: int, n: int, norms: str = "copy-from-t1", optimizer: str = "reset",
                 resume_from: str | Path | None = None):
        if int(m) < 1 or int(n) < 0:
            raise ValueError(f"RL-Extra needs m >= 1 real and n >= 0 extrapolated steps per cycle (got m={m}, n={n})")
        if norms not in NORM_POLICIES:
            raise ValueError(f"norms: unknown policy {norms!r} (known: {', '.join(NORM_POLICIES)})")
        if optimizer not in OPTIMIZER_POLICIES:
            raise ValueError(f"optimizer: unknown policy {optimizer!r} (known: {', '.join(OPTIMIZER_POLICIES)})")
        self.m, self.n, self.norms, self.optimizer = int(m), int(n), norms, optimizer
        self.beta = (self.m + self.n) / self.m
        self.resume_from = Path(resume_from) if resume_from is not None else None
        self.rl_steps = self.effective_steps = self.extrapolations = 0
        self.anchor: dict[str, torch.Tensor] = {}
        self._weights: _Weights | None = None
        self._start = 0

    def record(self, step: int) -> dict:
        """What a checkpoint at real step `step` carries in `rl_extra.json`."""
        cycle_start = step - step % self.m
        return {"rl_steps": step, "effective_steps": effective_steps(step, self.m, self.n), "m": self.m, "n": self.n,
                "beta": self.beta, "norms": self.norms, "optimizer": self.optimizer, "cycle": step // self.m,
                "phase_start": cycle_start, "anchor": ANCHOR if step % self.m else None}

    def _count(self, step: int) -> None:
        self.rl_steps, self.effective_steps = step, effective_steps(step, self.m, self.n)

    def on_train_begin(self, args, state, control, model=None, **kw):
        period = generation_period(args)
        if self.m % period:
            raise ValueError(f"RL-Extra: m = {self.m} is not a multiple of GRPOTrainer's generation period {period} "
                             f"(steps_per_generation {args.steps_per_generation} × num_iterations {args.num_iterations}"
                             f" micro-steps, gradient_accumulation_steps {args.gradient_accumulation_steps}): an "
                             f"extrapolation would leave rollouts of the old policy in the buffer")
        self._start = int(state.global_step)
        if self._start % period:
            raise ValueError(f"RL-Extra: resuming at step {self._start}, not a multiple of the generation period "
                             f"{period}: later cycle boundaries would not be generation boundaries")
        self._weights = _Weights(model, self.norms)
        self._count(self._start)
        self.anchor = self._weights.read() if self._start % self.m == 0 else self._load_anchor(args)

    def _load_anchor(self, args) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        ckpt = self.resume_from or Path(args.output_dir) / f"checkpoint-{self._start}"
        rec_path, path = ckpt / RECORD, ckpt / ANCHOR
        if not (rec_path.is_file() and path.is_file()):
            raise FileNotFoundError(f"{ckpt}: resuming RL-Extra mid-cycle (step {self._start}, m = {self.m}) needs "
                                    f"{RECORD} and {ANCHOR} there (pass resume_from= the checkpoint directory)")
        rec = json.loads(rec_path.read_text())
        mine = {"m": self.m, "n": self.n, "norms": self.norms, "rl_steps": self._start}
        if any(rec.get(k) != v for k, v in mine.items()):
            raise ValueError(f"{rec_path}: written by RL-Extra {({k: rec.get(k) for k in mine})}, resuming with {mine}")
        anchor = load_file(path)
        now = self._weights.read()
        if set(anchor) != set(now) or any(anchor[k].shape != now[k].shape for k in now):
            raise ValueError(f"{path}: anchor tensors do not match the model's extrapolated parameters")
        return anchor

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        step = int(state.global_step)
        if step % self.m == 0:
            if (step - self._start) % generation_period(args):   # guarded at on_train_begin; never silent
                raise RuntimeError(f"RL-Extra: step {step} is not a generation boundary")
            self._weights.extrapolate(self.anchor, self.beta)
            if self.n:
                self.extrapolations += 1
                if self.optimizer == "reset":
                    self._weights.reset_optimizer(optimizer)
            self.anchor = self._weights.read()
        self._count(step)

    def on_save(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        step = int(state.global_step)
        ckpt = Path(args.output_dir) / f"checkpoint-{step}"
        if step % self.m:
            from safetensors.torch import save_file

            tmp = ckpt / f".{ANCHOR}.tmp"
            save_file({k: v.contiguous() for k, v in self.anchor.items()}, str(tmp))
            os.replace(tmp, ckpt / ANCHOR)
        atomic_write_json(ckpt / RECORD, self.record(step))
        self._add_log_columns(args)

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self._add_log_columns(args)

    def _add_log_columns(self, args) -> None:
        """`rl_steps`, `effective_steps` columns in the run's log.csv (written by helpers.lib.training, when present)."""
        add_step_columns(Path(args.output_dir) / "log.csv", self.m, self.n)


def add_step_columns(log_csv: Path, m: int, n: int) -> None:
    """Add (or refresh) the `rl_steps` and `effective_steps` columns of a helpers.lib.training log.csv."""
    if not log_csv.is_file():
        return
    rows = list(csv.DictReader(io.StringIO(log_csv.read_text())))
    if not rows:
        return
    cols = [c for c in rows[0] if c not in STEP_COLUMNS] + list(STEP_COLUMNS)
    for r in rows:
        r.update(rl_steps=int(r["step"]), effective_steps=effective_steps(int(r["step"]), m, n))
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(log_csv, buf.getvalue())


# ---------------------------------------------------------------------------------------------------------------------
# Notebook 05: standard GRPO (the embedded run) vs RL-Extra runs; steps to target, fixed budgets, reset vs keep.
# `analyse` gathers the tables, `claims` decides (Wilson intervals of the logged accuracies), `results` stores them.

STANDARD = "standard"


def scaled(cfg, paper_steps: float) -> int:
    """A step count of the paper's run mapped onto this run: × rl.steps / rl_extra.paper_steps (null: the paper's run
    length, `paper.get("rl_extra_paper_steps")`), rounded."""
    length = cfg.rl_extra.paper_steps
    length = paper.get("rl_extra_paper_steps").value if length is None else length
    return int(round(float(paper_steps) * int(cfg.rl.steps) / float(length)))


def plan(cfg) -> list[dict]:
    """The RL-Extra runs: each (m, n) of `rl_extra.configs` scaled to this run (m ≥ 1, n ≥ 1 unless 0) with the
    `optimizer` policy, plus the `ablation` config with the other policy. Labels name (m, n) and the policy."""
    rx = cfg.rl_extra
    mn = [(max(1, scaled(cfg, m)), max(1 if n else 0, scaled(cfg, n))) for m, n in rx.configs]
    runs = [{"m": m, "n": n, "optimizer": rx.optimizer} for m, n in dict.fromkeys(mn)]
    if rx.ablation is not None:
        if not 0 <= int(rx.ablation) < len(mn):
            raise ValueError(f"{cfg.source}: rl_extra.ablation = {rx.ablation} is not an index into rl_extra.configs")
        other = next(p for p in OPTIMIZER_POLICIES if p != rx.optimizer)
        runs.append({"m": mn[int(rx.ablation)][0], "n": mn[int(rx.ablation)][1], "optimizer": other})
    for r in runs:
        r.update(label=f"RL-Extra({r['m']},{r['n']}) {r['optimizer']}", beta=(r["m"] + r["n"]) / r["m"])
    return runs


def run_dir(cfg, m: int, n: int, optimizer: str) -> Path:
    """Where `train_run` caches the RL-Extra(m, n) run of `cfg` (built when it holds build.json)."""
    from helpers.lib import training
    from helpers.lib.paths import cache_dir

    made_from = training.run_key(cfg, ("task", "model", "sft", "rl", "eval")) | {
        "m": int(m), "n": int(n), "norms": cfg.rl_extra.norms, "optimizer": optimizer}
    return cache_dir("rl_extra", made_from)


def train_run(cfg, m: int, n: int, optimizer: str) -> Path:
    """One RL-Extra(m, n) run with the rl section's settings from `base_model(cfg)`, cached under
    outputs/cache/rl_extra-<hash>/ (key: task, model, sft, rl, eval, seed, device, m, n, norms, optimizer);
    `build.json` records its training seconds."""
    import time

    from helpers.lib import training
    from helpers.lib.paths import atomic_dir

    base = training.base_model(cfg)
    final = run_dir(cfg, m, n, optimizer)
    if (final / "build.json").is_file():
        return final
    t0 = time.time()
    with atomic_dir(final) as tmp:
        training.train_rl(cfg, tmp, callbacks=[RLExtra(m, n, cfg.rl_extra.norms, optimizer)], base_dir=base)
        atomic_write_json(tmp / "build.json", {"train_seconds": round(time.time() - t0, 2), "m": int(m), "n": int(n),
                                               "optimizer": optimizer, "norms": cfg.rl_extra.norms})
    return final


def train_all(cfg):
    """Every run of `plan(cfg)` (trained or reused) plus the standard one, as a table: label, m, n, β, optimizer,
    dir, train_seconds."""
    import pandas as pd

    from helpers.lib import training

    std = training.embedded_trajectory(cfg)
    missing = [(cfg, r["m"], r["n"], r["optimizer"]) for r in plan(cfg)
               if not (run_dir(cfg, r["m"], r["n"], r["optimizer"]) / "build.json").is_file()]
    training.in_processes(train_run, missing)           # two at a time, one thread each
    rows = [{"label": STANDARD, "m": None, "n": 0, "optimizer": None, "beta": 1.0, "dir": std}]
    rows += [{**r, "dir": train_run(cfg, r["m"], r["n"], r["optimizer"])} for r in plan(cfg)]
    for r in rows:
        r["train_seconds"] = json.loads((Path(r["dir"]) / "build.json").read_text())["train_seconds"]
    return pd.DataFrame(rows)


def curves(runs):
    """Held-out greedy accuracy at every checkpoint of every run (from log.csv): label, rl_steps, effective_steps,
    accuracy."""
    import pandas as pd

    from helpers.lib.training import read_log

    parts = []
    for r in runs.itertuples():
        log = read_log(r.dir).dropna(subset=["heldout_accuracy"])
        steps = log["step"].astype(int)
        parts.append(pd.DataFrame({"label": r.label, "rl_steps": steps, "accuracy": log["heldout_accuracy"],
                                   "effective_steps": [s if r.label == STANDARD else effective_steps(s, r.m, r.n)
                                                       for s in steps]}))
    return pd.concat(parts, ignore_index=True)


def targets(curves, fractions) -> list[float]:
    """Accuracy targets base + f × (best − base) of the standard run's curve."""
    std = curves[curves.label == STANDARD].sort_values("rl_steps")
    base, best = float(std.accuracy.iloc[0]), float(std.accuracy.max())
    return [round(base + float(f) * (best - base), 6) for f in fractions]


def steps_to_target(curves, goals, column: str = "accuracy"):
    """RL steps of the first checkpoint whose `column` is at or above each target, per run (NaN: never reached);
    rows = runs, columns = the targets as text (`0.523`)."""
    import pandas as pd

    rows = {}
    for label, g in curves.groupby("label", sort=False):
        g = g.sort_values("rl_steps")
        rows[label] = {f"{t:.3f}": next((float(s) for s, a in zip(g.rl_steps, g[column]) if a >= t - 1e-9),
                                        math.nan) for t in goals}
    return pd.DataFrame.from_dict(rows, orient="index")


def fixed_budget(cfg, curves):
    """Accuracy at equal real RL steps: the paper's budgets scaled to this run, snapped to the standard run's
    checkpoints; per budget the standard run, the best RL-Extra run (`optimizer` policy) and every run."""
    import pandas as pd

    saved = sorted(set(curves[curves.label == STANDARD].rl_steps) - {0})
    budgets = sorted({min(saved, key=lambda s: (abs(s - scaled(cfg, b)), s)) for b in cfg.rl_extra.budgets})
    wide = curves.pivot_table(index="rl_steps", columns="label", values="accuracy")
    main = _main_runs(cfg, wide.columns)
    rows = []
    for b in budgets:
        at = wide.loc[b] if b in wide.index else pd.Series(dtype=float)
        extra = at.reindex(main).dropna()
        best = extra.idxmax() if len(extra) else None
        rows.append({"rl_steps": b, "standard": at.get(STANDARD, math.nan), "rl_extra": extra.get(best, math.nan),
                     "rl_extra_config": best, "gain": extra.get(best, math.nan) - at.get(STANDARD, math.nan),
                     **{c: at.get(c) for c in wide.columns if c != STANDARD}})
    return pd.DataFrame(rows)


def optimizer_ablation(runs, curves):
    """Reset vs keep side by side for the (m, n) run with both policies: accuracy per checkpoint (empty if none)."""
    twins = runs.dropna(subset=["m"]).groupby(["m", "n"]).filter(lambda g: len(g) == 2)
    if twins.empty:
        return None
    sub = curves[curves.label.isin(twins.label)]
    wide = sub.pivot_table(index="rl_steps", columns="label", values="accuracy")
    by_policy = {r.optimizer: r.label for r in twins.itertuples()}
    table = wide.rename(columns={v: k for k, v in by_policy.items()})[list(OPTIMIZER_POLICIES)]
    table.columns.name = f"RL-Extra({int(twins.m.iloc[0])},{int(twins.n.iloc[0])})"
    table["reset − keep"] = table["reset"] - table["keep"]
    return table


def plot_curves(curves, goals=()):
    """Held-out accuracy vs real RL steps (left; targets dotted) and vs effective steps (right), one line per run."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for i, (label, g) in enumerate(curves.groupby("label", sort=False)):
        g = g.sort_values("rl_steps")
        style = (dict(color="k", lw=2, marker="o", ms=3, zorder=5) if label == STANDARD else
                 dict(color=f"C{i}", marker="s", ms=3, ls="--" if "keep" in label else "-"))
        for ax, x in zip(axes, ("rl_steps", "effective_steps")):
            ax.plot(g[x], g.accuracy, label=label, **style)
    for t in goals:
        axes[0].axhline(t, color="gray", ls=":", lw=1)
    axes[0].set(xlabel="real RL steps", ylabel="held-out accuracy (greedy)", title="Accuracy vs RL steps")
    axes[1].set(xlabel="effective steps (RL + extrapolated)", title="Accuracy vs effective steps")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _main_runs(cfg, labels) -> list[str]:
    """The RL-Extra runs with the `rl_extra.optimizer` policy (the ablation twin excluded)."""
    return [lab for lab in labels if lab != STANDARD and lab.endswith(f" {cfg.rl_extra.optimizer}")]


def heldout_items(cfg) -> int:
    """Held-out problems behind each logged accuracy: min(eval.heldout_during_training, task.heldout_size)."""
    return min(int(cfg.eval.heldout_during_training), int(cfg.task.heldout_size))


def reach_bounds(curves, goals, items: int, level: float):
    """Steps to each target per run with the range the accuracy noise allows, indexed by (run, target): `steps` = the
    first checkpoint at or above it, `optimistic` = the first whose upper Wilson bound (`items` problems, `level`)
    reaches it, `pessimistic` = the first whose lower bound does (NaN: never)."""
    import pandas as pd

    low, high = zip(*(cl.binomial_interval(p, items, level) for p in curves.accuracy))
    c = curves.assign(low=low, high=high)
    wide = {"steps": steps_to_target(c, goals), "optimistic": steps_to_target(c, goals, "high"),
            "pessimistic": steps_to_target(c, goals, "low")}
    rows = [{"run": run, "target": t, **{k: float(w.at[run, t]) for k, w in wide.items()}}
            for run in wide["steps"].index for t in wide["steps"].columns]
    return pd.DataFrame(rows).set_index(["run", "target"])


def speedup_interval(std_opt: float, std_pess: float, rx_opt: float, rx_pess: float, std_after: float,
                     rx_after: float) -> tuple[float, float]:
    """Bounds of standard steps / RL-Extra steps to one target from each run's optimistic … pessimistic steps:
    [std_opt / rx_pess, std_pess / rx_opt]. A run that never reaches the target (NaN) would reach it at the earliest
    at the checkpoint after its last one (`*_after`): RL-Extra never reaching it pessimistically gives the lower bound 0,
    never optimistically the upper bound std_pess / rx_after; the standard run never reaching it optimistically gives
    the lower bound std_after / rx_pess, never pessimistically no upper bound (∞), as does RL-Extra reaching it
    optimistically at step 0."""
    reached = math.isfinite
    lo = (std_opt if reached(std_opt) else std_after) / rx_pess if reached(rx_pess) and rx_pess > 0 else 0.0
    hi = std_pess / (rx_opt if reached(rx_opt) else rx_after) if reached(std_pess) and rx_opt != 0 else math.inf
    return float(lo), float(hi)


def _after(curves) -> dict:
    """Per run, the checkpoint that would follow its last one (last + the last spacing)."""
    out = {}
    for label, g in curves.groupby("label"):
        s = sorted(set(g.rl_steps))
        out[label] = float(s[-1] + (s[-1] - s[-2] if len(s) > 1 else 1))
    return out


def speed_bounds(curves, reach, upper):
    """Per RL-Extra run and target, indexed by (run, target): the point speedup (standard steps / RL-Extra steps;
    NaN when either never reaches the target or needs 0 steps), its `low` … `high` bounds (`speedup_interval`) and
    `informative`: an upper target whose standard crossing the noise brackets inside the run (optimistic > 0 and
    pessimistic reached; the `nb05.speedup` claim uses these, or, when there are none, every upper target with an
    unbounded interval)."""
    import pandas as pd

    after, std = _after(curves), reach.loc[STANDARD]
    rows = []
    for (run, t), r in reach.drop(index=STANDARD, level="run").iterrows():
        s = std.loc[t]
        point = s.steps / r.steps if min(s.steps, r.steps) > 0 else math.nan   # NaN compares False
        lo, hi = speedup_interval(s.optimistic, s.pessimistic, r.optimistic, r.pessimistic, after[STANDARD],
                                  after[run])
        rows.append({"run": run, "target": t, "speedup": point, "low": lo, "high": hi,
                     "upper": t in upper, "informative": t in upper and s.optimistic > 0 and math.isfinite(s.pessimistic)})
    return pd.DataFrame(rows).set_index(["run", "target"])


@dataclass
class Analysis:
    """Notebook 05 step by step (`analyse`): `runs` (train_all), `curves` (accuracy per checkpoint), `goals`
    (accuracy targets), `reach` (steps to each target with their noise range), `speed` (speedups with intervals),
    `budget` (accuracy at equal RL steps), `ablation` (reset vs keep, None without a twin); `main` = the runs with the
    `rl_extra.optimizer` policy, `items` the held-out problems behind each accuracy, `speed_level` the Bonferroni level
    of `reach` and `speed` (best of main runs × upper targets)."""
    runs: object
    curves: object
    goals: list
    reach: object
    speed: object
    budget: object
    ablation: object
    main: list
    items: int
    settings: cl.Settings
    steps: int
    speed_level: float


def _upper(goals) -> list[str]:
    """The targets the paper measures its speedups at: all but the lowest (its middle and top targets)."""
    names = list(dict.fromkeys(f"{t:.3f}" for t in goals))
    return names[1:] or names


def analyse(cfg, runs, table=None) -> Analysis:
    """Everything notebook 05 shows and claims, from `train_all`'s runs (their accuracy curves read from log.csv, or
    `table`: a `curves`-like frame)."""
    c = curves(runs) if table is None else table
    goals = targets(c, cfg.rl_extra.target_fractions)
    main = _main_runs(cfg, c.label.unique())
    settings, items = cl.Settings.of(cfg), heldout_items(cfg)
    level = cl.bonferroni(settings.level, len(main) * len(_upper(goals)))
    reach = reach_bounds(c, goals, items, level)
    return Analysis(runs=runs, curves=c, goals=goals, reach=reach, speed=speed_bounds(c, reach, _upper(goals)),
                    budget=fixed_budget(cfg, c), ablation=optimizer_ablation(runs, c), main=main, items=items,
                    settings=settings, steps=int(cfg.rl.steps), speed_level=level)


def _known(x) -> bool:
    return x is not None and math.isfinite(x)


def _gap(p: float, q: float, items: int, level: float) -> tuple[float, tuple[float, float]]:
    """p − q of two accuracies on `items` problems: Wilson intervals combined as independent (claims.difference)."""
    return cl.difference(p, cl.binomial_interval(p, items, level), q, cl.binomial_interval(q, items, level))


def _extreme(gaps: dict, worst: bool = False) -> tuple[float, tuple[float, float]]:
    """The best (or worst) of several differences and its interval: [max low, max high] ([min low, min high]), which
    holds when every difference's interval does (hence their Bonferroni level)."""
    if not gaps:
        return math.nan, (math.nan, math.nan)
    pick = min if worst else max
    return (pick(d for d, _ in gaps.values()),
            (pick(lo for _, (lo, _) in gaps.values()), pick(hi for _, (_, hi) in gaps.values())))


def _detail(gaps: dict) -> str:
    return "; ".join(f"{lab}: {d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for lab, (d, (lo, hi)) in gaps.items())


_INDEPENDENT = "Wilson intervals of the two runs combined as independent (claims.difference), though both are scored " \
               "on the same items"


def _best_speedup(a: Analysis):
    """The (main run × informative upper target) pairs and the best point speedup among them: (pairs, value, run,
    target)."""
    speed = a.speed[a.speed.index.get_level_values("run").isin(a.main)]
    pairs = speed[speed.informative] if speed.informative.any() else speed[speed.upper]
    if pairs.speedup.notna().any():
        run, t = pairs.speedup.idxmax()
        return pairs, float(pairs.speedup.max()), run, t
    return pairs, math.nan, None, None


def _speedup_claim(a: Analysis) -> cl.Claim:
    pairs, best, _, _ = _best_speedup(a)
    if len(pairs):
        interval = (float(pairs.low.max()), float(pairs.high.max()))
        unsure = "" if pairs.informative.any() else "the standard run reaches no upper target beyond its accuracy " \
                                                    "noise, so the speedup has no upper bound; "
        detail = unsure + "; ".join(f"{run} at {t}: " + ("never reached" if r.speedup != r.speedup else f"{r.speedup:.2f}×")
                           + f" [{r.low:.2f}, {r.high:.2f}]" for (run, t), r in pairs.iterrows())
    else:
        interval, detail = (math.nan, math.nan), "no upper target"
    k = len(a.main) * len(_upper(a.goals))
    how = (f"steps to a target lie between the first checkpoints whose upper / lower Wilson bound ({a.items} items) "
           f"reaches it; speedup in [standard optimistic / RL-Extra pessimistic, standard pessimistic / RL-Extra "
           f"optimistic] (∞ when the standard run never surely reaches it); best of {k} (main run, upper target) "
           f"pairs, Bonferroni level {a.speed_level:.4f}; targets the standard run surely crosses, when it has any")
    return cl.Claim("nb05.speedup", "RL-Extra reaches the upper accuracy targets in fewer RL steps than standard RL "
                    "(best speedup)", paper.get("rl_extra_speedup"), best, interval, cl.above(1), how, detail)


def _budget_claims(a: Analysis) -> list[cl.Claim]:
    level = cl.bonferroni(a.settings.level, len(a.main))
    how = f"best of {len(a.main)} main runs − standard, Bonferroni level {level:.4f}; {_INDEPENDENT}"
    out = []
    for rec in a.budget.to_dict("records"):
        b = int(rec["rl_steps"])
        gaps = {lab: _gap(rec[lab], rec["standard"], a.items, level) for lab in a.main
                if _known(rec.get(lab)) and _known(rec["standard"])}
        d, interval = _extreme(gaps)
        out.append(cl.Claim(f"nb05.budget_{b}", f"at {b} of {a.steps} RL steps the best RL-Extra run beats standard RL",
                            paper.get("rl_extra_budget"), d, interval, cl.above(0, a.settings.accuracy_margin), how,
                            _detail(gaps)))
    return out


def _finals(a: Analysis) -> dict:
    """The last checkpoint's accuracy of every run."""
    return a.curves.sort_values("rl_steps").groupby("label", sort=False).accuracy.last().astype(float).to_dict()


def _on_track_claim(a: Analysis) -> cl.Claim:
    last = _finals(a)
    level = cl.bonferroni(a.settings.level, len(a.main))
    gaps = {lab: _gap(last[lab], last[STANDARD], a.items, level) for lab in a.main}
    d, interval = _extreme(gaps, worst=True)
    return cl.Claim("nb05.on_track", "the worst RL-Extra run ends no worse than standard RL (final accuracy "
                    "difference)", paper.get("rl_extra_on_track"), d, interval,
                    cl.above(-a.settings.accuracy_margin),
                    f"worst of {len(a.main)} main runs − standard at the last checkpoint, Bonferroni level "
                    f"{level:.4f}; {_INDEPENDENT}", _detail(gaps))


def _optimizer_claim(a: Analysis) -> cl.Claim:
    t = a.ablation.drop(index=0, errors="ignore").dropna(subset=["reset", "keep"])
    gaps = [_gap(r, k, a.items, a.settings.level) for r, k in zip(t["reset"], t["keep"])]
    if gaps:
        d = sum(g for g, _ in gaps) / len(gaps)
        interval = (d - math.sqrt(sum((g - lo) ** 2 for g, (lo, _) in gaps)) / len(gaps),
                    d + math.sqrt(sum((hi - g) ** 2 for g, (_, hi) in gaps)) / len(gaps))
    else:
        d, interval = math.nan, (math.nan, math.nan)
    return cl.Claim("nb05.optimizer_reset_vs_keep", f"resetting Adam's moments after each extrapolation beats keeping "
                    f"them ({a.ablation.columns.name}, mean over checkpoints of reset − keep)",
                    paper.get("rl_extra_optimizer"), d, interval, cl.above(0, a.settings.accuracy_margin),
                    f"mean of {len(gaps)} per-checkpoint differences; Wilson intervals ({a.items} items) combined in "
                    f"quadrature, runs and checkpoints treated as independent, though the same items are scored at "
                    f"every checkpoint")


def claims(a: Analysis) -> list[cl.Claim]:
    """Paper vs measured for LIN §4.3: `nb05.speedup`, `nb05.budget_<steps>` per budget, `nb05.on_track` and, with
    the ablation twin, `nb05.optimizer_reset_vs_keep`. Accuracies come from the training logs (greedy, `a.items`
    problems, means only), so every interval is binomial (Wilson); a best or worst of K runs (× targets) is decided on
    intervals at the Bonferroni level for K. Speedup: a run's steps to a target lie between the first checkpoint whose
    upper Wilson bound reaches it (optimistic) and the first whose lower bound does (pessimistic), so the speedup lies
    in [standard optimistic / RL-Extra pessimistic, standard pessimistic / RL-Extra optimistic] (`speedup_interval`).
    Differences of two runs treat them as independent (`claims.difference`)."""
    out = [_speedup_claim(a), *_budget_claims(a), _on_track_claim(a)]
    return out + ([_optimizer_claim(a)] if a.ablation is not None else [])


def results(a: Analysis) -> dict:
    """The measured numbers of notebook 05 for results/05_rl_extra.json (the claims are added by run.save_results)."""
    std = a.curves[a.curves.label == STANDARD].sort_values("rl_steps")
    num = lambda x: float(x) if math.isfinite(x) else None  # noqa: E731
    _, best, best_run, best_target = _best_speedup(a)
    out = dict(
        standard_final_accuracy=float(std.accuracy.iloc[-1]), standard_final_step=int(std.rl_steps.iloc[-1]),
        targets=list(a.goals),
        steps_to_target=_nested(a.reach.steps, int), speedups=_nested(a.speed.speedup, float),
        best_speedup=num(best), best_speedup_config=best_run, best_speedup_target=best_target,
        fixed_budget=[{"rl_steps": int(r["rl_steps"]), "standard": r["standard"], "rl_extra": r["rl_extra"],
                       "rl_extra_config": r["rl_extra_config"]} for r in a.budget.to_dict("records")],
        fixed_budget_mean_gain=num(float(a.budget.gain.mean())), final_accuracy=_finals(a),
        heldout_items=a.items, interval_level=a.settings.level,
        runs=[{"label": r.label, "m": int(r.m), "n": int(r.n), "beta": float(r.beta), "optimizer": r.optimizer,
               "train_seconds": float(r.train_seconds), "final_effective_steps": effective_steps(a.steps, r.m, r.n)}
              for r in a.runs.dropna(subset=["m"]).itertuples()],
        curves=a.curves.to_dict("records"))
    if a.ablation is not None:
        diff = a.ablation["reset − keep"].drop(index=0, errors="ignore")
        out.update(reset_minus_keep_mean=float(diff.mean()), reset_minus_keep_final=float(diff.iloc[-1]))
    return out


def _nested(column, cast) -> dict:
    """{run: {target: value or None}} of a (run, target)-indexed column."""
    return {run: {t: (None if v != v else cast(v)) for (_, t), v in g.items()}
            for run, g in column.groupby(level="run", sort=False)}
