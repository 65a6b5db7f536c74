"""RL-Extra (LIN §4.3): cycles of m real RL steps and n extrapolated ones, as a `TrainerCallback` for TRL's GRPOTrainer.

    trainer = GRPOTrainer(..., callbacks=[RLExtra(m=10, n=10)])
    helpers.lib.training.train_rl(cfg, out_dir, callbacks=[RLExtra(m=10, n=10)])   # the same, on the embedded default

Cycle c covers real (optimizer) steps c·m … (c+1)·m. At `on_step_end` of step (c+1)·m the trainable tensors are moved
in place to W ← P + (m+n)/m · (Q − P) (P = the weights at the phase start, kept as a CPU fp32 copy; Q = the weights
now), computed per tensor in fp32 with `helpers.lib.extrapolation.lerp`; the result is the next phase's P. Norm policy
as in the extrapolation tool (`helpers.lib.extrapolation.is_norm`): ``copy-from-t1`` leaves norm weights at Q (not
extrapolated, no copy kept), ``extrapolate`` moves every trainable tensor. Optimizer state after an extrapolation:
``reset`` (the paper's reference restarts a fresh job per cycle: Adam moments and step counts are dropped) or
``keep``. With n = 0 the weights are rewritten with themselves (β = 1 is exact) and the optimizer is left alone:
standard training, bit for bit. The lr schedule is not restarted (one continuous run, SPEC §5).

Generation boundary. TRL 1.16's GRPOTrainer generates rollouts at micro-step s when s % (steps_per_generation ×
num_iterations) == 0 (s counts from 0 at each `train()` call, also on resume) and buffers them for the following
micro-steps; an optimizer step is gradient_accumulation_steps micro-steps. So rollouts are regenerated after optimizer
step k iff (k − k0) is a multiple of the generation period p = G / gcd(G, gradient_accumulation_steps), G =
steps_per_generation × num_iterations, k0 = the step training (re)started from. m (and k0) must be multiples of p —
checked at `on_train_begin` — so no buffered rollout ever comes from the pre-extrapolation policy.

Counters. Real RL steps = `state.global_step`; effective steps = real + n × completed cycles. Every checkpoint gets
`rl_extra.json` (both counters, m, n, β, policies); `log.csv` of the run directory (helpers.lib.training) gets the
columns `rl_steps` and `effective_steps` (the model's position after that row's step).

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

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


class Weights:
    """Full fp32 values of the trainable tensors, read and written wherever they live (plain, FSDP1, DeepSpeed).

    Shared by the callbacks that touch the weights during training (RL-Extra, `helpers.lib.monitor`). Every process
    must make the same calls (gathering is collective under FSDP1 and ZeRO-3). `norms` = ``copy-from-t1`` leaves norm
    weights out (RL-Extra's norm policy); ``extrapolate`` covers every trainable tensor.
    """

    def __init__(self, model, norms: str = "extrapolate"):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.tensor import DTensor

        self.model, self.norms = model, norms
        params = [p for _, p in model.named_parameters()]
        if any(isinstance(p, DTensor) for p in params):
            raise NotImplementedError("DTensor parameters (FSDP2 / tensor parallel) are not supported")
        self.fsdp = isinstance(model, FSDP)
        self.deepspeed = any(hasattr(p, "ds_id") or getattr(p, "_hp_mapping", None) is not None for p in params)
        self.zero3 = any(hasattr(p, "ds_id") for p in params)

    def extrapolated(self, name: str) -> bool:
        return not (self.norms == "copy-from-t1" and is_norm(name))

    @contextlib.contextmanager
    def full(self, modify: bool = False) -> Iterator[list[tuple[str, torch.nn.Parameter]]]:
        """(name, parameter) of the covered trainable tensors, gathered to full size for the block."""
        if self.zero3:
            import deepspeed

            ctx = deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=0 if modify else None)
        elif self.fsdp:
            ctx = type(self.model).summon_full_params(self.model, writeback=modify)
        else:
            ctx = contextlib.nullcontext()
        with torch.no_grad(), ctx:
            yield [(n, p) for n, p in self.model.named_parameters() if p.requires_grad and self.extrapolated(n)]

    def value(self, p) -> torch.Tensor:
        """The full value of a parameter inside `full()`: DeepSpeed's fp32 master copy, else the parameter itself."""
        if self.deepspeed:
            from deepspeed.utils import safe_get_full_fp32_param

            return safe_get_full_fp32_param(p)
        return p

    def read(self, index: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """{name: CPU fp32 copy}; with `index` ({name: flat indices}) only those tensors, only those entries."""
        with self.full() as params:
            if index is None:
                return {n: self.value(p).detach().to("cpu", torch.float32, copy=True) for n, p in params}
            out = {}
            for n, p in params:
                if n in index:
                    v = self.value(p).detach().reshape(-1)
                    out[n] = v[index[n].to(v.device)].to("cpu", torch.float32, copy=True)
            return out

    def extrapolate(self, anchor: dict[str, torch.Tensor], beta: float) -> None:
        """W ← P + β (W − P) in place, tensor by tensor (fp32)."""
        with self.full(modify=True) as params:
            for n, p in params:
                self._set(p, lerp(anchor[n].to(p.device), self.value(p), beta))  # fp32 (DeepSpeed's master dtype)

    def load(self, values: dict[str, torch.Tensor]) -> None:
        """Set the covered tensors to `values` ({name: full value}, e.g. from `read`) in place."""
        with self.full(modify=True) as params:
            for n, p in params:
                self._set(p, values[n].to(p.device))

    def _set(self, p, w: torch.Tensor) -> None:
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

        with self.full() as params:
            for _, p in params:
                zeros = torch.zeros_like(safe_get_full_fp32_param(p))
                for key in ("exp_avg", "exp_avg_sq"):
                    safe_set_full_optimizer_state(p, zeros, key)


class RLExtra(TrainerCallback):
    """m real RL steps, then n extrapolated steps, repeated (module docstring: boundaries, counters, resume, multi-GPU).

    Attributes after each event: `rl_steps`, `effective_steps`, `extrapolations` (completed cycles with n > 0 this
    `train()` call), `anchor` ({name: CPU fp32 P}).
    """

    def __init__(
        self,
        m: int,
        n: int,
        norms: str = "copy-from-t1",
        optimizer: str = "reset",
        resume_from: str | Path | None = None,
    ):
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
        self._weights: Weights | None = None
        self._start = 0

    def record(self, step: int) -> dict:
        """What a checkpoint at real step `step` carries in `rl_extra.json`."""
        cycle_start = step - step % self.m
        return {
            "rl_steps": step,
            "effective_steps": effective_steps(step, self.m, self.n),
            "m": self.m,
            "n": self.n,
            "beta": self.beta,
            "norms": self.norms,
            "optimizer": self.optimizer,
            "cycle": step // self.m,
            "phase_start": cycle_start,
            "anchor": ANCHOR if step % self.m else None,
        }

    def _count(self, step: int) -> None:
        self.rl_steps, self.effective_steps = step, effective_steps(step, self.m, self.n)

    def on_train_begin(self, args, state, control, model=None, **kw):
        period = generation_period(args)
        if self.m % period:
            raise ValueError(
                f"RL-Extra: m = {self.m} is not a multiple of GRPOTrainer's generation period {period} "
                f"(steps_per_generation {args.steps_per_generation} × num_iterations {args.num_iterations}"
                f" micro-steps, gradient_accumulation_steps {args.gradient_accumulation_steps}): an "
                f"extrapolation would leave rollouts of the old policy in the buffer"
            )
        self._start = int(state.global_step)
        if self._start % period:
            raise ValueError(
                f"RL-Extra: resuming at step {self._start}, not a multiple of the generation period "
                f"{period}: later cycle boundaries would not be generation boundaries"
            )
        self._weights = Weights(model, self.norms)
        self._count(self._start)
        self.anchor = self._weights.read() if self._start % self.m == 0 else self._load_anchor(args)

    def _load_anchor(self, args) -> dict[str, torch.Tensor]:
        ckpt = self.resume_from or Path(args.output_dir) / f"checkpoint-{self._start}"
        rec_path, path = ckpt / RECORD, ckpt / ANCHOR
        if not (rec_path.is_file() and path.is_file()):
            raise FileNotFoundError(
                f"{ckpt}: resuming RL-Extra mid-cycle (step {self._start}, m = {self.m}) needs "
                f"{RECORD} and {ANCHOR} there (pass resume_from= the checkpoint directory)"
            )
        rec = json.loads(rec_path.read_text())
        mine = {"m": self.m, "n": self.n, "norms": self.norms, "rl_steps": self._start}
        if any(rec.get(k) != v for k, v in mine.items()):
            raise ValueError(
                f"{rec_path}: written by RL-Extra { ({k: rec.get(k) for k in mine}) }, resuming with {mine}"
            )
        anchor = load_file(path)
        now = self._weights.read()
        if set(anchor) != set(now) or any(anchor[k].shape != now[k].shape for k in now):
            raise ValueError(f"{path}: anchor tensors do not match the model's extrapolated parameters")
        return anchor

    def on_step_end(self, args, state, control, optimizer=None, **kw):
        step = int(state.global_step)
        if step % self.m == 0:
            if (step - self._start) % generation_period(args):  # guarded at on_train_begin; never silent
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
            tmp = ckpt / f".{ANCHOR}.tmp"
            save_file({k: v.contiguous() for k, v in self.anchor.items()}, str(tmp))
            os.replace(tmp, ckpt / ANCHOR)
        atomic_write_json(ckpt / RECORD, self.record(step))
        self._add_log_columns(args)

    def on_train_end(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self._add_log_columns(args)

    def _add_log_columns(self, args) -> None:
        """`rl_steps`, `effective_steps` columns in the run's log.csv (helpers.lib.training's, when present)."""
        add_step_columns(Path(args.output_dir) / "log.csv", self.m, self.n)


def add_step_columns(log_csv: Path, m: int, n: int) -> None:
    """Add (or refresh) the `rl_steps` and `effective_steps` columns of a helpers.lib.training log.csv."""
    add_log_columns(log_csv, STEP_COLUMNS, lambda s: {"rl_steps": s, "effective_steps": effective_steps(s, m, n)})


def add_log_columns(log_csv: Path, columns: Sequence[str], values: Callable[[int], Mapping]) -> None:
    """Add (or refresh) `columns` at the end of a helpers.lib.training log.csv, written by a callback after the log's
    own write: the row of step s gets `values(s)` (a column it lacks stays empty). No file or no rows: nothing to do."""
    if not log_csv.is_file():
        return
    rows = list(csv.DictReader(io.StringIO(log_csv.read_text())))
    if not rows:
        return
    cols = [c for c in rows[0] if c not in columns] + list(columns)
    for r in rows:
        new = values(int(r["step"]))
        r.update({c: new.get(c, "") for c in columns})
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(log_csv, buf.getvalue())
