"""Adaptive extrapolation: jump along the weight trajectory when the online monitor finds it linear, by a factor probed
at run time, and roll back when the next real steps' reward falls. A `TrainerCallback` for TRL's GRPOTrainer.

    probe = greedy_probe(probe_items(train, 128, seed), tokenizer, max_new_tokens=16)
    policy = AdaptiveExtra.from_config(cfg, probe)      # the `adaptive` and `monitor` sections of the params file
    helpers.lib.training.train_rl(cfg, out_dir, callbacks=[policy])

Phases. A phase starts at train begin and after every jump or rollback: P = the extrapolated weights then (CPU fp32,
RL-Extra's norm policy `norms`), and the window of the linearity monitor (`helpers.lib.monitor.LinearityMonitor`,
which this class extends) restarts there. Every `every` optimizer steps the window gets a snapshot and its statistics;
once it holds ≥ 3 snapshots the policy decides, at that step's `on_step_end`:

1. Gate: a jump is considered only if weight_r2_median ≥ `min_weight_r2`, rank1_ev ≥ `min_rank1_ev` and cosine ≥
   `min_cosine` (NaN fails). Otherwise the decision is `hold`.
2. Probe: `probe(model)` (per-prompt rewards, e.g. `greedy_probe` on a fixed sample of training prompts) scores Q, the
   weights now, then W(β) = P + β (Q − P) for each β of `betas` in ascending order up to the current cap, stopping at
   the first rejected one. β is accepted when the mean paired difference r(β) − r(Q) ≥ −`noise_z` × its standard
   error. The largest accepted β is taken (`jump`); none accepted: `no-jump`, and the weights are set back to Q
   exactly. Probes run in `torch.random.fork_rng`, so they do not move the trainer's random stream.
3. Jump: W ← W(β) (the two-point direction of the phase, as RL-Extra), and the optimizer state is `reset` (Adam
   moments dropped) or `keep`. The model is then (β − 1)·L effective steps ahead of its real steps (L = the phase's
   real steps). Q (every trainable tensor) and a copy of the optimizer state are kept until the rollback check.
4. Rollback check, `rollback_after` real steps later, at that step's `on_log` (its reward is known then): the mean
   training reward (TRL's `reward` log) of those steps against the same number of steps before the jump. If it fell
   by more than `noise_z` × the standard error of the difference of the two means, the weights go back to Q and the
   optimizer state to its pre-jump copy, bit for bit (the lr schedule is not rewound), and the cap on β drops below
   the rejected β (none left: no jumps) for `cooldown` real steps (None: for the rest of the run). The effective
   steps go back to the jump's (its gain and the real steps after it are withdrawn); the real-step count keeps those
   steps: they were spent. Decisions wait while a check is pending.

Every decision (step, kind, window statistics, candidates with their probe rewards, chosen β, rollback verdicts) is kept
in `decisions` and written with `jumps` ({step, beta, accepted}), the effective steps of every step and the probe and
monitor seconds to `<output_dir>/adaptive.json` at every checkpoint and at train end; log.csv gets the columns
`COLUMNS`. `every` and `rollback_after` must be multiples of GRPOTrainer's generation period (`rl_extra.generation_
period`), so no buffered rollout comes from a policy that was jumped away from. One process only; FSDP, DeepSpeed
and resuming mid-run are refused at `on_train_begin`.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from helpers.lib.extrapolation import NORM_POLICIES
from helpers.lib.monitor import LinearityMonitor
from helpers.lib.paths import atomic_write_json
from helpers.lib.rl_extra import OPTIMIZER_POLICIES, Weights, add_log_columns, generation_period
from helpers.lib.sampling import HFSampler

RECORD = "adaptive.json"
COLUMNS = ("effective_steps", "adaptive/beta", "adaptive/rollback")
KNOBS = (  # the policy's knobs in the `adaptive` params section
    "every",
    "window",
    "min_weight_r2",
    "min_rank1_ev",
    "min_cosine",
    "betas",
    "noise_z",
    "rollback_after",
    "cooldown",
    "optimizer",
    "norms",
)
GATES = {"weight_r2_median": "min_weight_r2", "rank1_ev": "min_rank1_ev", "cosine": "min_cosine"}

Probe = Callable[[torch.nn.Module], np.ndarray]


def probe_items(train: Sequence, n: int, seed: int) -> list:
    """A fixed sample of `n` training problems (seeded), the prompts every probe of a run scores."""
    if not 0 < int(n) <= len(train):
        raise ValueError(f"adaptive.probe_prompts = {n}: needs 1 .. {len(train)} (the training problems)")
    return random.Random(int(seed)).sample(list(train), int(n))


def greedy_probe(items: Sequence, tokenizer, max_new_tokens: int, batch_size: int = 512) -> Probe:
    """A probe: each item's greedy reward (1 if `item.is_correct(completion)`, else 0) under the model as it is."""
    prompts = [it.prompt for it in items]

    def probe(model) -> np.ndarray:
        outs = HFSampler(model, tokenizer, batch_size).generate(
            prompts, n=1, temperature=0.0, max_new_tokens=int(max_new_tokens)
        )
        return np.array([float(it.is_correct(o[0])) for it, o in zip(items, outs)])

    return probe


def accepts(candidate: np.ndarray, reference: np.ndarray, noise_z: float) -> tuple[bool, float, float]:
    """(accepted, mean paired difference, its standard error): is `candidate`'s reward not worse than `reference`'s
    beyond noise_z standard errors of the paired per-prompt differences?"""
    d = np.asarray(candidate, dtype=np.float64) - np.asarray(reference, dtype=np.float64)
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    return bool(d.mean() >= -noise_z * se), float(d.mean()), se


def fell(before: Sequence[float], after: Sequence[float], noise_z: float) -> tuple[bool, float]:
    """(fell, standard error): is the mean of `after` below the mean of `before` by more than noise_z standard errors
    of the difference of the two means (per-step rewards as independent values)?"""
    var = lambda x: float(np.var(x, ddof=1)) / len(x) if len(x) > 1 else 0.0  # noqa: E731
    se = math.sqrt(var(before) + var(after))
    return bool(np.mean(before) - np.mean(after) > noise_z * se), se


class AdaptiveExtra(LinearityMonitor):
    """The monitor plus a jump policy (module docstring). Attributes: `decisions`, `jumps`, `effective` ({real step:
    effective steps}), `probe_seconds`, `probe_calls`, and the monitor's (`history`, `seconds`, ...)."""

    def __init__(
        self,
        probe: Probe,
        *,
        every: int = 3,
        window: int = 8,
        min_weight_r2: float = 0.7,
        min_rank1_ev: float = 0.9,
        min_cosine: float = 0.8,
        betas: Sequence[float] = (1.5, 2, 3, 5, 8, 13),
        noise_z: float = 1.0,
        rollback_after: int = 6,
        cooldown: int | None = None,
        optimizer: str = "reset",
        norms: str = "copy-from-t1",
        fraction: float = 0.001,
        min_samples: int = 1000,
        budget_mb: float = 256,
        seed: int = 0,
    ):
        super().__init__(every, window, fraction, min_samples, budget_mb, seed)
        betas = sorted(float(b) for b in betas)
        if any(b <= 1 for b in betas):
            raise ValueError(f"adaptive.betas must all be > 1 (β = 1 is the weights as they are), got {betas}")
        if int(rollback_after) < 1 or float(noise_z) < 0 or (cooldown is not None and int(cooldown) < 1):
            raise ValueError(
                f"adaptive: rollback_after ≥ 1, noise_z ≥ 0 and cooldown ≥ 1 or null (got {rollback_after}, "
                f"{noise_z}, {cooldown})"
            )
        if optimizer not in OPTIMIZER_POLICIES or norms not in NORM_POLICIES:
            raise ValueError(f"adaptive: optimizer in {OPTIMIZER_POLICIES} and norms in {NORM_POLICIES}")
        self.probe, self.betas, self.noise_z = probe, betas, float(noise_z)
        self.thresholds = {"min_weight_r2": min_weight_r2, "min_rank1_ev": min_rank1_ev, "min_cosine": min_cosine}
        self.rollback_after, self.optimizer, self.norms = int(rollback_after), optimizer, norms
        self.cooldown = None if cooldown is None else int(cooldown)
        self.decisions: list[dict] = []
        self.jumps: list[dict] = []
        self.effective: dict[int, float] = {}
        self.probe_seconds, self.probe_calls = 0.0, 0
        self._rewards: dict[int, float] = {}
        self._cap = math.inf
        self._cap_until: int | None = None  # the step the cap lifts (cooldown), None: never
        self._offset = 0.0
        self._check: dict | None = None
        self._t0 = 0.0

    @classmethod
    def from_config(cls, cfg, probe: Probe) -> AdaptiveExtra:
        """The policy of a config's `adaptive` section (its sketch: the `monitor` section's sample and budget)."""
        knobs = {k: cfg.adaptive[k] for k in KNOBS}
        sketch = {k: cfg.monitor[k] for k in ("fraction", "min_samples", "budget_mb")}
        return cls(probe, **knobs, **sketch, seed=cfg.seed)

    def knobs(self) -> dict:
        return {
            "every": self.every,
            "window": self.window,
            **self.thresholds,
            "betas": self.betas,
            "noise_z": self.noise_z,
            "rollback_after": self.rollback_after,
            "cooldown": self.cooldown,
            "optimizer": self.optimizer,
            "norms": self.norms,
        }

    # ---------------------------------------------------------------------------------------------------- events
    def on_train_begin(self, args, state, control, model=None, **kw):
        if int(state.global_step):
            raise NotImplementedError(f"adaptive: resuming at step {state.global_step} is not supported")
        if int(getattr(args, "world_size", 1)) > 1:
            raise NotImplementedError("adaptive: one process only (probes and rollbacks are not collective)")
        period = generation_period(args)
        for knob, value in (("every", self.every), ("rollback_after", self.rollback_after)):
            if value % period:
                raise ValueError(
                    f"adaptive.{knob} = {value} is not a multiple of GRPOTrainer's generation period {period}: a "
                    f"jump or rollback would leave rollouts of another policy in the buffer"
                )
        super().on_train_begin(args, state, control, model=model, **kw)
        self._moving, self._all = Weights(model, self.norms), Weights(model)
        if self._all.fsdp or self._all.deepspeed:
            raise NotImplementedError("adaptive: FSDP / DeepSpeed models are not supported")
        self._t0 = time.perf_counter()
        self._phase(state, restart=False)  # the monitor's window has just started

    def _phase(self, state, restart: bool = True) -> None:
        """Start a phase here: P = the weights now, the monitor's window restarts."""
        self._anchor = self._moving.read()
        self._phase_start = int(state.global_step)
        self.effective[self._phase_start] = self._phase_start + self._offset
        if restart:
            self.restart(state)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kw):
        super().on_step_end(args, state, control, **kw)
        step = int(state.global_step)
        self.effective[step] = step + self._offset
        if step % self.every or self._check is not None or len(self.snapshots) < 3:
            return
        stats = self.history[-1]
        if stats["step"] != step:
            raise RuntimeError(f"adaptive: the monitor's last window is of step {stats['step']}, not {step}")
        self._decide(state, {k: stats[k] for k in GATES}, model, optimizer)

    def _decide(self, state, stats: dict, model, optimizer) -> None:
        step = int(state.global_step)
        record = {"step": step, **stats, "phase_steps": step - self._phase_start, "candidates": [], "beta": None}
        passed = all(stats[k] >= self.thresholds[t] for k, t in GATES.items())  # NaN compares False
        if self._cap_until is not None and step >= self._cap_until:
            self._cap, self._cap_until = math.inf, None
        betas = [b for b in self.betas if b <= self._cap]
        if not passed or not betas:
            self.decisions.append(record | {"kind": "hold", "reason": "gate" if not passed else "cap"})
            return
        spent = self.probe_seconds
        q_all = self._all.read()
        q = {n: q_all[n] for n in self._anchor}
        reference = self._probe(model)
        record["reward"] = float(reference.mean())
        best = None
        for beta in betas:
            self._moving.load(q)
            self._moving.extrapolate(self._anchor, beta)
            rewards = self._probe(model)
            ok, diff, se = accepts(rewards, reference, self.noise_z)
            record["candidates"].append(
                {"beta": beta, "reward": float(rewards.mean()), "diff": diff, "se": se, "accepted": ok}
            )
            if not ok:
                break
            best = beta
        self._moving.load(q)
        record["probe_seconds"] = self.probe_seconds - spent
        if best is None:
            self.decisions.append(record | {"kind": "no-jump"})
            return
        self._moving.extrapolate(self._anchor, best)
        saved = copy.deepcopy(optimizer.state_dict())
        if self.optimizer == "reset":
            self._moving.reset_optimizer(optimizer)
        gain = (best - 1) * (step - self._phase_start)
        self._offset += gain
        self.jumps.append({"step": step, "beta": best, "accepted": True})
        self.decisions.append(record | {"kind": "jump", "beta": best, "gain": gain})
        self._check = {"step": step, "weights": q_all, "optimizer": saved, "gain": gain, "beta": best}
        self._pending["adaptive/beta"] = best
        self._phase(state)

    def _probe(self, model) -> np.ndarray:
        t, was_training = time.perf_counter(), model.training
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            out = np.asarray(self.probe(model), dtype=np.float64)
        model.train(was_training)
        self.probe_seconds += time.perf_counter() - t
        self.probe_calls += 1
        return out

    def on_log(self, args, state, control, logs=None, model=None, optimizer=None, **kw):
        super().on_log(args, state, control, logs=logs, **kw)
        step = int(state.global_step)
        if logs and "reward" in logs:
            self._rewards[step] = float(logs["reward"])
        c = self._check
        if c is None or step < c["step"] + self.rollback_after:
            return
        self._check = None
        k = self.rollback_after
        before = [self._rewards[s] for s in range(c["step"] - k + 1, c["step"] + 1) if s in self._rewards]
        after = [self._rewards[s] for s in range(c["step"] + 1, step + 1) if s in self._rewards]
        down, se = fell(before, after, self.noise_z) if before and after else (False, math.nan)
        verdict = {"step": step, "kind": "rollback" if down else "kept", "jump_step": c["step"], "beta": c["beta"]}
        self.decisions.append(verdict | {"reward_before": _mean(before), "reward_after": _mean(after), "se": se})
        if not down:
            return
        self._all.load(c["weights"])
        optimizer.load_state_dict(c["optimizer"])
        self._offset -= c["gain"] + (step - c["step"])  # the model is back where it was at the jump
        self.jumps[-1]["accepted"] = False
        self._cap = max((b for b in self.betas if b < c["beta"]), default=0.0)
        self._cap_until = None if self.cooldown is None else step + self.cooldown
        self._phase(state)

    def on_save(self, args, state, control, **kw):
        super().on_save(args, state, control, **kw)
        self._write(args)

    def on_train_end(self, args, state, control, **kw):
        super().on_train_end(args, state, control, **kw)
        self._write(args)

    # ------------------------------------------------------------------------------------------------------ output
    def record(self) -> dict:
        """What `adaptive.json` holds."""
        return {
            "knobs": self.knobs(),
            "decisions": self.decisions,
            "jumps": self.jumps,
            "effective_steps": {str(s): e for s, e in sorted(self.effective.items())},
            "probe_seconds": self.probe_seconds,
            "probe_calls": self.probe_calls,
            "monitor_seconds": self.seconds,
            "seconds": time.perf_counter() - self._t0,
            "monitor_history": self.history,
        }

    def _write(self, args) -> None:
        out = Path(args.output_dir)
        atomic_write_json(out / RECORD, self.record())
        jumps = {j["step"]: j["beta"] for j in self.jumps}
        rolled = {d["step"] for d in self.decisions if d["kind"] == "rollback"}
        add_log_columns(
            out / "log.csv",
            COLUMNS,
            lambda s: {
                "effective_steps": self.effective.get(s, ""),
                "adaptive/beta": jumps.get(s, ""),
                "adaptive/rollback": 1 if s in rolled else "",
            },
        )


def _mean(x: Sequence[float]) -> float:
    return float(np.mean(x)) if len(x) else math.nan
